"""Where and how a model runs: device choice, mixed precision, seeding, memory format, compile.

Every trainer goes through these few functions, so precision and device behave the same in DQN,
the VAE and the DCGAN. ``Precision.step`` follows the usual mixed-precision recipe
(Micikevicius et al. 2018): scale the loss for fp16, unscale before clipping, skip the step
when a gradient overflowed, and let the scaler adapt.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from rlgen.errors import InputError

PRECISIONS = ("32", "16-mixed", "bf16-mixed")
_DTYPES = {"32": torch.float32, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA, else Apple MPS, else the CPU; anything else is checked."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise InputError(
            f"--device must be auto, cpu, cuda, cuda:N or mps, got {device!r}"
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device} was asked for but CUDA is not available here")
    if dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise InputError(f"--device {device} was asked for but MPS is not available here")
    return dev


class NonFiniteLossError(FloatingPointError):
    """A NaN / inf gradient where no loss scaler can skip the step (fp32, bf16): training
    diverged. The run stops without checkpointing the broken state."""


class Precision:
    """Autocast context and optimizer step for one of ``"32"``, ``"16-mixed"``, ``"bf16-mixed"``.

    Use one ``Precision`` per optimizer (a GAN has two), because each owns its loss scaler.
    Under fp16 a step whose gradients overflowed is skipped and counted (``skipped_steps``), as
    loss scaling expects; in fp32 and bf16 nothing overflows by design, so a NaN / inf gradient
    means the training diverged and ``step`` raises ``NonFiniteLossError`` before the optimizer
    touches the weights.
    """

    def __init__(self, precision: str = "32", device: str | torch.device = "cpu"):
        if precision not in PRECISIONS:
            raise InputError(
                f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
            )
        self.name = precision
        self.device = resolve_device(device)
        self.dtype = _DTYPES[precision]
        # Only fp16 needs loss scaling: bf16 has fp32's exponent range.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "16-mixed")
        self.skipped_steps = 0

    @property
    def mixed(self) -> bool:
        return self.name != "32"

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.mixed:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def step(
        self,
        loss: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        clip_grad_norm: float | None = None,
        parameters: Iterable[torch.Tensor] | None = None,
    ) -> bool:
        """Backward, unscale, clip, step unless a gradient is inf/NaN; True if it stepped.

        An inf/NaN gradient skips the step under fp16 and raises ``NonFiniteLossError`` in
        fp32 / bf16."""
        self.scaler.scale(loss).backward()
        return self.step_optimizer(optimizer, clip_grad_norm, parameters)

    def step_optimizer(
        self,
        optimizer: torch.optim.Optimizer,
        clip_grad_norm: float | None = None,
        parameters: Iterable[torch.Tensor] | None = None,
    ) -> bool:
        """The part of ``step`` after backward, for loops that accumulate gradients themselves."""
        params = list(parameters) if parameters is not None else [
            p for group in optimizer.param_groups for p in group["params"]
        ]
        grads = [p.grad for p in params if p.grad is not None]
        if self.scaler.is_enabled():
            self.scaler.unscale_(optimizer)
        if clip_grad_norm is not None:
            total = torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
            finite = bool(torch.isfinite(total))
        else:
            finite = _all_finite(grads)
        if self.scaler.is_enabled():
            scale_before = self.scaler.get_scale()
            self.scaler.step(optimizer)  # skips by itself when it found inf/NaN while unscaling
            self.scaler.update()
            stepped = finite and self.scaler.get_scale() >= scale_before
        else:
            if not finite:
                raise NonFiniteLossError(
                    f"a gradient is NaN or inf under --precision {self.name}, where no loss "
                    "scaler can skip the step: the training diverged (lower the learning rate, "
                    "clip gradients, or check the data)"
                )
            stepped = True
            optimizer.step()
        if not stepped:
            self.skipped_steps += 1
        return stepped

    def state_dict(self) -> dict:
        return {"precision": self.name, "scaler": self.scaler.state_dict(),
                "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        if state.get("precision", self.name) != self.name:
            raise InputError(
                f"checkpoint was trained with --precision {state['precision']}, "
                f"this run asks for {self.name}"
            )
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.skipped_steps = int(state.get("skipped_steps", 0))

    def __repr__(self) -> str:
        return f"Precision({self.name!r}, device={self.device})"


def _all_finite(grads: list[torch.Tensor]) -> bool:
    """Whether every gradient is finite: one fused norm over all of them (a NaN or inf in any
    element makes its norm non-finite), then a single host read."""
    if not grads:
        return True
    norms = torch._foreach_norm([g.detach() for g in grads])
    return bool(torch.isfinite(torch.stack([n.float() for n in norms])).all())


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (all devices); optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def to_memory_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Channels-last layout for 4-D tensors when asked; other tensors pass through."""
    if channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def prepare_module(
    module: nn.Module,
    *,
    device: str | torch.device = "cpu",
    channels_last: bool = False,
    compile: bool = False,
) -> nn.Module:
    """Move to ``device``, optionally to channels_last and through ``torch.compile``.

    The returned module may be a compiled wrapper: keep the original for ``state_dict``.
    """
    module = module.to(resolve_device(device))
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    if compile:
        module = torch.compile(module)
    return module


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily set the number of intra-op threads (None leaves torch's default)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
