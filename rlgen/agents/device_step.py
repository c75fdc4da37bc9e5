"""The optimizer step of a DQN update without reading anything back to the host.

A host read of a device value (``.item()``, ``float(t)``, ``bool(t)``) makes the CPU wait until
every kernel queued on a GPU is done, so a loop that reads once per update leaves the GPU idle
while Python prepares the next launch, and a CUDA graph cannot hold such a read at all.
``rlgen.runtime.Precision.step`` reads one: the check that every gradient is finite, before the
optimizer may touch the weights. :class:`DeviceStep` does the same step with that check kept on
the device:

- the check is one fused norm of the gradients (the clipped total norm with
  ``--max-grad-norm``), turned into a ``found_inf`` flag on the device;
- an optimizer whose step takes that flag (fused Adam, ``_step_supports_amp_scaling``: the
  mechanism ``GradScaler`` uses) skips the update on the device, its step count included: the
  weights never see a non-finite gradient, as with ``Precision.step``;
- an optimizer without it (``torch.optim.RMSprop`` has no fused kernel in torch 2.13) steps
  regardless, so a non-finite gradient reaches its weights;
- either way the flags are summed on the device and :meth:`DeviceStep.check`, called where the
  loop reads anyway (logging, before a checkpoint, at the end), raises ``NonFiniteLossError``
  in fp32 / bf16 if any step since had a non-finite gradient (``Precision.step`` raises at once):
  the run stops before it writes a checkpoint of that state;
- fp16 (``16-mixed``): ``GradScaler`` scales, unscales and updates its scale on the device;
  with fused Adam its step reads nothing either (other optimizers make it read ``found_inf``
  once per step). Skipped fp16 steps are counted into ``Precision.skipped_steps`` at
  ``check()``.

On a CPU nothing waits for a read, but the path is the same, so the CPU tests check that it
reads nothing.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from rlgen.runtime import NonFiniteLossError


class DeviceStep:
    """``Precision.step`` without host reads (see the module docstring).

    Has the ``Precision`` methods a DQN update calls (``autocast()`` and
    ``step(loss, optimizer, clip_grad_norm=...)``), so it can stand in for one. ``graph_safe``
    autocasts without the weight-cast cache, as CUDA graph capture requires."""

    def __init__(self, precision: Any, optimizer: torch.optim.Optimizer,
                 graph_safe: bool = False):
        self.precision = precision
        self.optimizer = optimizer
        self.graph_safe = graph_safe
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        if not self.params:
            raise ValueError("the optimizer has no parameters")
        self.skips_on_device = bool(getattr(optimizer, "_step_supports_amp_scaling", False))
        device = self.params[0].device
        # Steps whose gradient was not finite (fp32 / bf16) or that fp16 skipped, since check().
        self.nonfinite = torch.zeros((), device=device)
        self.steps = torch.zeros((), device=device)  # on the device: counted in CUDA graphs too

    @property
    def name(self) -> str:
        return self.precision.name

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.graph_safe and self.precision.mixed:
            return torch.autocast(self.precision.device.type, dtype=self.precision.dtype,
                                  cache_enabled=False)
        return self.precision.autocast()

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
             clip_grad_norm: float | None = None) -> None:
        """Backward, (unscale,) clip, and the optimizer step, skipped on the device when a
        gradient is not finite and the optimizer can skip."""
        if optimizer is not self.optimizer:
            raise ValueError("DeviceStep.step got another optimizer than it was built for")
        self.steps += 1
        scaler = self.precision.scaler
        if scaler.is_enabled():
            scaler.scale(loss).backward()
            if clip_grad_norm is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(self.params, clip_grad_norm, foreach=True)
            # The scale shrinks exactly when the step was skipped (found_inf); read lazily.
            before = scaler._get_scale_async().clone()
            scaler.step(optimizer)
            scaler.update()
            self.nonfinite += (scaler._get_scale_async() < before).float()
            return
        loss.backward()
        if clip_grad_norm is not None:
            total = torch.nn.utils.clip_grad_norm_(self.params, clip_grad_norm, foreach=True)
        else:
            grads = [p.grad.detach() for p in self.params if p.grad is not None]
            total = torch.stack([n.float() for n in torch._foreach_norm(grads)])
        found_inf = (~torch.isfinite(total).all()).float()
        self.nonfinite += found_inf
        if not self.skips_on_device:
            optimizer.step()
            return
        optimizer.found_inf, optimizer.grad_scale = found_inf, None
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf, optimizer.grad_scale

    def check(self) -> None:
        """The one host read: raise ``NonFiniteLossError`` (fp32 / bf16) if a step since the last
        check had a non-finite gradient; count fp16's skipped steps."""
        count, steps = (int(v) for v in torch.stack([self.nonfinite, self.steps]).tolist())
        self.nonfinite.zero_()
        self.steps.zero_()
        if count == 0:
            return
        if self.precision.scaler.is_enabled():
            self.precision.skipped_steps += count
            return
        what = "skipped on the device" if self.skips_on_device else \
            "taken (this optimizer cannot skip on the device)"
        raise NonFiniteLossError(
            f"{count} of the last {steps} updates had a NaN or inf gradient under --precision "
            f"{self.precision.name} (their steps were {what}): the training diverged (lower "
            "the learning rate, clip gradients, or check the data)")
