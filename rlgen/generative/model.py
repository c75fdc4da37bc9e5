"""The generative model base, the registry of generative kinds, and loading from checkpoints.

``GenerativeModel`` is an ``nn.Module`` with ``latent_dim``, ``latent_shape``, ``image_shape``,
``model_config`` (its constructor's keyword arguments, plain Python values) and
``generate(z)`` -> images in [0, 1] ``(N, C, H, W)``; on top of that it gives every model
``sample(n, seed=0, batch_size=256, device=None)`` and ``interpolate(steps=8, seed=0, rows=1)``.
``z`` is drawn on the CPU from a seeded ``torch.Generator`` and then moved, so a seed gives the
same images on CPU and GPU (up to kernel rounding) and sampling never touches the global RNG
(resumed runs stay identical); ``sample(k, seed)`` is the first k images of ``sample(n, seed)``.

``@register_generative(kind)`` registers a subclass; ``build_from_config(kind, model_config)``
rebuilds it; ``load(path)`` (``rlgen.generative.load``) rebuilds the model of any checkpoint a
generative trainer wrote (``meta``: ``{"kind", "model_config"}``, ``state["model"]``) and raises
``CheckpointError`` for a foreign or corrupt file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rlgen.registry import Registry, UnknownNameError

GENERATIVE_MODELS = Registry(
    "generative models",
    builtins=("rlgen.generative.vae", "rlgen.generative.autoencoder", "rlgen.generative.dcgan"),
    list_command="rlgen list trainers",
)


def register_generative(kind: str) -> Callable[[type], type]:
    """Class decorator: register a ``GenerativeModel`` subclass under ``kind``.

    The class must accept its ``model_config`` dict as keyword arguments (``cls(**config)``).
    """

    def decorator(cls: type) -> type:
        GENERATIVE_MODELS.register(kind)(cls)
        cls.kind = kind
        return cls

    return decorator


def build_from_config(kind: str, model_config: Mapping[str, Any]) -> GenerativeModel:
    """Rebuild a model of ``kind`` from its ``model_config`` (as stored in checkpoints)."""
    return GENERATIVE_MODELS.get(kind)(**model_config)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """Spherical interpolation between rows of ``a`` and ``b`` (White 2016, 'Sampling
    Generative Networks'): stays in the typical shell of a Gaussian, unlike linear mixing.

    ``a``, ``b``: ``(N, *S)``; ``t``: scalar or ``(N,)``. Falls back to linear interpolation
    where the two vectors are (nearly) parallel.
    """
    shape = a.shape
    a2, b2 = a.reshape(shape[0], -1).float(), b.reshape(shape[0], -1).float()
    t = torch.as_tensor(t, dtype=a2.dtype, device=a2.device).reshape(-1, 1)
    cos = F.cosine_similarity(a2, b2, dim=1).clamp(-1.0, 1.0).unsqueeze(1)
    omega = torch.acos(cos)
    sin = torch.sin(omega)
    safe = sin.abs() > 1e-6
    sin_safe = torch.where(safe, sin, torch.ones_like(sin))
    spherical = (torch.sin((1 - t) * omega) * a2 + torch.sin(t * omega) * b2) / sin_safe
    linear = (1 - t) * a2 + t * b2
    return torch.where(safe, spherical, linear).reshape(shape).to(a.dtype)



@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside the block (batch norm uses its running statistics and does not update
    them), the previous mode after it."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


LATENT_BLOCK = 1024


class GenerativeModel(nn.Module):
    """Base of rlgen's generative models: latent sampling, batched deterministic ``sample``,
    latent interpolation. Subclasses set ``latent_dim``, ``image_shape`` (C, H, W),
    ``model_config`` and implement ``generate(z)``."""

    kind: str = "generative"
    latent_dim: int
    image_shape: tuple[int, int, int]
    model_config: dict[str, Any]

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one latent vector (DCGAN overrides it with ``(nz, 1, 1)``)."""
        return (self.latent_dim,)

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``(N, *latent_shape)`` -> images in [0, 1], ``(N, C, H, W)``."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Alias of ``generate`` (the VAE / autoencoder vocabulary)."""
        return self.generate(z)

    def prior_latents(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` latents from the prior N(0, I), drawn on the CPU from ``seed``.

        Drawn in fixed blocks of ``LATENT_BLOCK`` so that the first k of n latents are the k
        latents of the same seed (torch's vectorized normal sampler gives different numbers
        for different request sizes).
        """
        if n < 0:
            raise ValueError(f"number of samples must be >= 0, got {n}")
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        blocks = [torch.randn(LATENT_BLOCK, *self.latent_shape, generator=generator)
                  for _ in range(-(-n // LATENT_BLOCK))]
        if not blocks:
            return torch.empty(0, *self.latent_shape)
        return torch.cat(blocks)[:n]

    def _device(self, device: str | torch.device | None) -> torch.device:
        if device is not None:
            return torch.device(device)
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @torch.inference_mode()
    def generate_batched(
        self, z: torch.Tensor, batch_size: int = 256, device: str | torch.device | None = None
    ) -> torch.Tensor:
        """``generate`` in eval mode, ``batch_size`` latents at a time; float32 CPU result."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        device = self._device(device)
        with evaluating(self):
            out = [self.generate(chunk.to(device)).float().cpu() for chunk in z.split(batch_size)]
        if not out:
            return torch.empty(0, *self.image_shape)
        return torch.cat(out)

    def sample(
        self,
        n: int,
        seed: int = 0,
        batch_size: int = 256,
        device: str | torch.device | None = None,
    ) -> torch.Tensor:
        """``n`` images in [0, 1] ``(n, C, H, W)`` (float32, CPU) from the prior; the same
        seed gives the same images whatever ``batch_size`` or device."""
        return self.generate_batched(self.prior_latents(n, seed), batch_size, device)

    def interpolate(
        self,
        steps: int = 8,
        seed: int = 0,
        rows: int = 1,
        device: str | torch.device | None = None,
    ) -> torch.Tensor:
        """``rows`` strips of ``steps`` images each, ``(rows * steps, C, H, W)``: slerp between
        two prior latents per row (save with ``nrow=steps``)."""
        if steps < 2:
            raise ValueError(f"interpolation needs steps >= 2, got {steps}")
        if rows < 1:
            raise ValueError(f"interpolation needs rows >= 1, got {rows}")
        ends = self.prior_latents(2 * rows, seed)
        a, b = ends[:rows], ends[rows:]
        t = torch.linspace(0.0, 1.0, steps)
        z = torch.stack([slerp(a, b, float(ti)) for ti in t], dim=1)  # (rows, steps, *latent)
        return self.generate_batched(z.reshape(rows * steps, *self.latent_shape), device=device)


def model_meta(model: GenerativeModel) -> dict[str, Any]:
    """What ``load`` needs besides the weights: ``{"kind", "model_config"}`` (a checkpoint's
    ``meta``)."""
    return {"kind": model.kind, "model_config": dict(model.model_config)}


def model_checkpoint(model: GenerativeModel) -> dict[str, Any]:
    """The smallest checkpoint ``load`` accepts (weights + meta), for sharing a model alone."""
    from rlgen.training import CHECKPOINT_FORMAT

    return {"format": CHECKPOINT_FORMAT, "task": model.kind, "meta": model_meta(model),
            "state": {"model": model.state_dict()}}


def load_generative(source: str | Path | Mapping[str, Any],
                    device: str | torch.device = "cpu") -> GenerativeModel:
    """Rebuild the generative model of a checkpoint (a file, a run directory, or a checkpoint
    dict already loaded), in eval mode on ``device``."""
    from rlgen.checkpoint import CheckpointError, load_checkpoint

    if isinstance(source, Mapping):
        state, where = source, "the checkpoint"
    else:
        state, where = load_checkpoint(source, map_location="cpu"), str(source)
    meta, weights = state.get("meta") or {}, (state.get("state") or {}).get("model")
    if "kind" not in meta or "model_config" not in meta or weights is None:
        raise CheckpointError(
            f"{where} is not an rlgen generative-model checkpoint (found keys "
            f"{sorted(state)[:8]}); expected a file written by `rlgen train "
            f"vae|autoencoder|dcgan`"
        )
    kind = meta["kind"]
    try:
        model = build_from_config(kind, meta["model_config"])
    except UnknownNameError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: cannot rebuild the {kind!r} model: {exc}") from None
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError) as exc:
        raise CheckpointError(
            f"{where}: the stored {kind!r} weights do not fit the stored model_config: {exc}"
        ) from None
    return model.to(device).eval()


load = load_generative
