"""Shared pieces of rlgen's generative models (autoencoder, VAE, DCGAN) and their trainers.

Stable API (used by ``vae.py``, ``autoencoder.py``, ``dcgan.py``, ``sampling.py``):

Configuration
    ``GenerativeTrainConfig`` -- dataclass base of every generative trainer config. Training
    length is counted in **epochs** (``--epochs``, as pytorch/examples does); ``--max-steps``
    optionally stops earlier (smoke tests, benchmarks). One *step* is one optimizer update
    (one batch); ``log_every`` / ``sample_every`` / ``checkpoint_every`` count steps.
    Subclasses add their fields and call ``super().__post_init__()``.

Models and checkpoints
    ``GenerativeModel`` -- ``nn.Module`` base: ``latent_dim``, ``latent_shape``,
    ``image_shape``, ``model_config`` (constructor kwargs, plain Python values), ``generate(z)``
    -> images in [0, 1] ``(N, C, H, W)``, ``sample(n, seed=0, batch_size=256, device=None)``,
    ``interpolate(steps=8, seed=0, rows=1)``. ``z`` is drawn on the CPU from a seeded
    ``torch.Generator`` and then moved, so a seed gives the same images on CPU and GPU (up to
    kernel rounding) and sampling never touches the global RNG (resumed runs stay identical);
    ``sample(k, seed)`` is the first k images of ``sample(n, seed)``.
    ``@register_generative(kind)`` on a ``GenerativeModel`` subclass; ``build_from_config(kind,
    model_config)`` rebuilds it; ``model_state(kind, model)`` gives the checkpoint head
    ``{"kind", "model_config", "model"}``; ``load_generative(path, device)`` (exported as
    ``rlgen.generative.load``) rebuilds a model from any checkpoint of that format and raises
    ``CheckpointError`` for a foreign or corrupt file. ``slerp(a, b, t)`` interpolates latents.

Encoders
    ``build_encoder(name, in_channels, width=32)`` -- ``"conv"`` (default: ``SmallConvEncoder``, a
    3-layer stride-2 conv net, no registry needed) or any backbone registered in
    ``rlgen.registry.BACKBONES`` (``"resnet18"``, a user's plugin, ...). ``flat_features(encoder,
    image_shape)`` measures the flattened feature size with one dummy forward pass.
    ``ConvDecoder(latent_dim, image_shape, width=32)`` -- transposed-conv decoder for square images
    of side 28, 32 or 64 (any ``side = s0 * 2**k`` works; s0 in 4..7), batch norm + ReLU
    between layers, outputs *logits*.

Data
    ``load_split(config, train)`` -> the configured ``rlgen.data`` dataset split;
    ``load_images(config, train)`` -> its uint8 ``(N, C, H, W)`` tensor.
    ``make_batches(config, dataset, device)`` -> ``TensorBatches`` (default, ``--loader tensor``:
    the uint8 split lives on the device and a batch is an index into it: 880k images/s
    against 63k for a single-process DataLoader on the mnist-subset, 1 CPU thread, measured by
    benchmarks/vae_nll.py) or ``LoaderBatches`` (``--loader dataloader``, ``--num-workers``). Both
    expose ``steps_per_epoch``, ``num_images``, ``batch_size`` and ``batches(start_step)``
    yielding float batches in [0, 1] on the device. Batch order depends only on (seed, epoch),
    so a resumed run sees the same batches as an uninterrupted one, through either loader.
    ``total_steps(config, steps_per_epoch)`` -> optimizer steps of the run.

Run scaffolding
    ``GenerativeRun(kind, config, model, optimizers, precisions, total_steps, progress=None)``
    -- context manager owning the run directory, ``RunLogger`` (TensorBoard + metrics.jsonl +
    progress bar), ``CheckpointManager`` and resume (``--resume`` a checkpoint file or a run
    directory; ``run.start_step`` is then the steps already done). In the loop:
    ``run.should(step, every)``, ``run.log(step, metrics, **postfix)`` (adds
    ``charts/images_per_s``), ``run.save_grid(tag, images, step)`` (TensorBoard
    ``samples/<tag>`` + ``{run_dir}/samples/<tag>_<step>.png``), ``run.checkpoint(step)``;
    ``run.extra`` is a dict saved in and restored from checkpoints; ``run.finish(step,
    metrics)`` writes the last checkpoint and hparams. Checkpoints hold ``{"kind",
    "model_config", "model", "config", "step", "optimizers", "precisions", "rng", "extra"}``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from rlgen.registry import Registry, UnknownNameError
from rlgen.vision.backbones.base import Backbone, FeatureInfo

PrecisionName = Literal["32", "16-mixed", "bf16-mixed"]


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass
class GenerativeTrainConfig:
    """Fields every generative trainer shares (data, length, optimizer, runtime, logging)."""

    dataset: str = "mnist"
    """dataset name (mnist, fashion-mnist, cifar10, folder, mnist-subset, shapes)"""
    data_root: str = "data"
    """directory holding the dataset files (for `folder`: the image folder)"""
    download: bool = False
    """download the dataset if it is missing"""
    image_size: int | None = None
    """resize images to this square size (None: the dataset's native size)"""
    batch_size: int = 128
    """images per optimizer step"""
    epochs: int = 10
    """passes over the training split"""
    max_steps: int | None = None
    """stop after this many optimizer steps in total (None: run all --epochs)"""
    learning_rate: float = 1e-3
    """Adam learning rate"""
    precision: PrecisionName = "32"
    """numeric precision: 32, 16-mixed (fp16 autocast + loss scaling) or bf16-mixed"""
    device: str = "auto"
    """cpu, cuda, cuda:1, mps or auto (cuda, else mps, else cpu)"""
    seed: int = 0
    """random seed (weights, batch order, noise)"""
    run_dir: str | None = None
    """run directory (None: runs/{kind}__{dataset}__{seed}__{time}, or the resumed run's)"""
    log_every: int = 50
    """log training scalars every this many steps"""
    sample_every: int = 500
    """write a grid of samples every this many steps (0: only at the end)"""
    checkpoint_every: int = 1000
    """save a checkpoint every this many steps (0: only at the end)"""
    resume: str | None = None
    """checkpoint file or run directory to resume from (its latest checkpoint)"""
    channels_last: bool = False
    """use the channels_last memory format (faster convolutions on recent GPUs)"""
    compile: bool = False
    """wrap the model with torch.compile"""
    loader: Literal["tensor", "dataloader"] = "tensor"
    """tensor: batches indexed from the in-memory uint8 split; dataloader: torch DataLoader"""
    num_workers: int = 0
    """DataLoader worker processes (only with --loader dataloader)"""

    def __post_init__(self) -> None:
        _check(self.batch_size > 0, f"--batch-size must be > 0, got {self.batch_size}")
        _check(self.epochs > 0, f"--epochs must be > 0, got {self.epochs}")
        _check(
            self.max_steps is None or self.max_steps > 0,
            f"--max-steps must be > 0 (or omitted), got {self.max_steps}",
        )
        _check(
            self.learning_rate > 0 and math.isfinite(self.learning_rate),
            f"--learning-rate must be a finite number > 0, got {self.learning_rate}",
        )
        _check(
            self.precision in ("32", "16-mixed", "bf16-mixed"),
            f"--precision must be one of 32, 16-mixed, bf16-mixed, got {self.precision!r}",
        )
        _check(
            self.image_size is None or self.image_size >= 8,
            f"--image-size must be >= 8 (or omitted for the native size), got {self.image_size}",
        )
        _check(self.log_every > 0, f"--log-every must be > 0, got {self.log_every}")
        _check(self.sample_every >= 0, f"--sample-every must be >= 0, got {self.sample_every}")
        _check(
            self.checkpoint_every >= 0,
            f"--checkpoint-every must be >= 0, got {self.checkpoint_every}",
        )
        _check(
            self.loader in ("tensor", "dataloader"),
            f"--loader must be tensor or dataloader, got {self.loader!r}",
        )
        _check(self.num_workers >= 0, f"--num-workers must be >= 0, got {self.num_workers}")
        _check(bool(self.dataset), "--dataset must name a dataset, got an empty string")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


# --------------------------------------------------------------------------------------------
# Models, registry of generative kinds, checkpoints
# --------------------------------------------------------------------------------------------

GENERATIVE_MODELS = Registry("generative models")
# Built-in kinds are imported on first use so `rlgen.generative.load` works for any of them
# without importing every model module up front.
_BUILTIN_MODULES = {
    "vae": "rlgen.generative.vae",
    "autoencoder": "rlgen.generative.autoencoder",
    "dcgan": "rlgen.generative.dcgan",
}


def register_generative(kind: str) -> Callable[[type], type]:
    """Class decorator: register a ``GenerativeModel`` subclass under ``kind``.

    The class must accept its ``model_config`` dict as keyword arguments (``cls(**config)``).
    """

    def decorator(cls: type) -> type:
        GENERATIVE_MODELS.register(kind)(cls)
        cls.kind = kind
        return cls

    return decorator


def generative_class(kind: str) -> type:
    """The class registered as ``kind`` (importing the built-in module that defines it)."""
    import importlib

    if kind in _BUILTIN_MODULES and kind not in GENERATIVE_MODELS._entries:
        importlib.import_module(_BUILTIN_MODULES[kind])
    if kind not in GENERATIVE_MODELS._entries:
        for module in _BUILTIN_MODULES.values():  # so the message lists every known kind
            with contextlib.suppress(ImportError):
                importlib.import_module(module)
        known = ", ".join(sorted(GENERATIVE_MODELS._entries)) or "none"
        raise UnknownNameError(f"unknown generative model kind {kind!r}; known: {known}")
    return GENERATIVE_MODELS.get(kind)


def build_from_config(kind: str, model_config: dict[str, Any]) -> GenerativeModel:
    """Rebuild a model of ``kind`` from its ``model_config`` (as stored in checkpoints)."""
    return generative_class(kind)(**model_config)


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


LATENT_BLOCK = 1024


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


def model_state(kind: str, model: GenerativeModel) -> dict[str, Any]:
    """The part of a checkpoint that ``load_generative`` needs."""
    model = unwrap(model)
    return {
        "kind": kind,
        "model_config": dict(model.model_config),
        "model": model.state_dict(),
    }


def unwrap(module: nn.Module) -> nn.Module:
    """The original module behind a ``torch.compile`` wrapper."""
    return getattr(module, "_orig_mod", module)


def load_generative(path: str | Path, device: str | torch.device = "cpu") -> GenerativeModel:
    """Rebuild the generative model saved in checkpoint ``path`` (eval mode, on ``device``)."""
    from rlgen.checkpoint import CheckpointError, load_checkpoint

    state = load_checkpoint(path, map_location="cpu")
    missing = [k for k in ("kind", "model_config", "model") if k not in state]
    if not isinstance(state, dict) or missing:
        keys = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path} is not an rlgen generative-model checkpoint: missing {missing} "
            f"(found {keys}); expected a file written by `rlgen train vae|autoencoder|dcgan`"
        )
    kind = state["kind"]
    try:
        model = build_from_config(kind, state["model_config"])
    except KeyError as exc:  # UnknownNameError
        raise CheckpointError(f"{path}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild the {kind!r} model: {exc}") from None
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError) as exc:
        raise CheckpointError(
            f"{path}: the stored {kind!r} weights do not fit the stored model_config: {exc}"
        ) from None
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------
# Encoders and decoders
# --------------------------------------------------------------------------------------------


def build_encoder(name: str, in_channels: int, width: int = 32) -> nn.Module:
    """The image encoder ``name``: ``"conv"`` (``SmallConvEncoder`` with channels ``width``,
    ``2 * width``, ``4 * width``) or a registered backbone (``width`` is then unused).

    Either way the result follows the backbone contract (``forward_features`` -> feature map).
    """
    if name == "conv":
        return SmallConvEncoder(in_channels, widths=(width, 2 * width, 4 * width))
    from rlgen.vision.backbones import create_backbone

    encoder = create_backbone(name, in_channels=in_channels)
    if getattr(encoder, "input_ndim", 4) != 4:
        raise ValueError(
            f"--encoder {name} is a vector backbone (input (N, D)); an image encoder is needed "
            f"(conv, resnet18, lenet5_modern, ... see `rlgen list backbones`)"
        )
    return encoder


def flat_features(encoder: nn.Module, image_shape: tuple[int, int, int]) -> int:
    """Number of features ``encoder.forward_features`` gives for one image, flattened
    (measured with a dummy forward pass, so any backbone works)."""
    if hasattr(encoder, "feature_shape"):
        shape = encoder.feature_shape(tuple(image_shape))
    else:
        was_training = encoder.training
        encoder.eval()
        with torch.no_grad():
            shape = encoder.forward_features(torch.zeros(1, *image_shape)).shape[1:]
        encoder.train(was_training)
    return int(math.prod(shape))


class SmallConvEncoder(Backbone):
    """Default encoder of the VAE and autoencoder: three 4x4 stride-2 convolutions with ReLU
    and batch norm after all but the first (the DCGAN discriminator's pattern), 32-64-128
    channels by default. 28x28 -> 128x3x3, 32 -> 128x4x4, 64 -> 128x8x8. Batch norm makes the
    VAE learn markedly faster here (held-out negative ELBO 144 vs 170 nats after 5 epochs of
    the mnist-subset at width 16/32)."""

    def __init__(self, in_channels: int = 1, widths: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        self.in_channels = in_channels
        self.min_input_size = (2 ** len(widths), 2 ** len(widths))
        layers, feature_info, c = [], [], in_channels
        for i, w in enumerate(widths):
            if i == 0:
                stage = nn.Sequential(nn.Conv2d(c, w, 4, 2, 1), nn.ReLU(inplace=True))
            else:
                stage = nn.Sequential(nn.Conv2d(c, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w),
                                      nn.ReLU(inplace=True))
            layers.append(stage)
            feature_info.append(FeatureInfo(f"conv{i + 1}", w, 2 ** (i + 1)))
            c = w
        self.stages = nn.ModuleList(layers)
        self.feature_info = feature_info
        self.name = "conv"

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_input(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs




def _decoder_plan(side: int) -> tuple[int, int]:
    """(start side, number of x2 upsamplings) for a square output of ``side`` pixels."""
    for ups in range(6, 0, -1):
        start, rem = divmod(side, 2**ups)
        if rem == 0 and 4 <= start <= 7:
            return start, ups
    raise ValueError(
        f"the transposed-conv decoder supports square images of side s * 2**k with s in 4..7 "
        f"(28, 32, 64, 56, 128, ...), got {side}; pass --image-size 28, 32 or 64"
    )


class ConvDecoder(nn.Module):
    """Latent ``(N, D)`` -> logits ``(N, C, H, W)``: a linear layer to a ``(w0, s, s)`` map,
    then 4x4 stride-2 transposed convolutions, doubling the side and halving the channels each
    time (28 = 7 * 2**2, 32 = 4 * 2**3, 64 = 4 * 2**4; the last layer has ``width`` inputs, so
    28x28 is 2w -> w -> C). Batch norm + ReLU after every layer but the last, as in the DCGAN
    generator: without it a ReLU decoder at PyTorch's default init sits for a few hundred steps
    on the mean image. Returns logits: apply sigmoid for images."""

    def __init__(self, latent_dim: int, image_shape: tuple[int, int, int], width: int = 32):
        super().__init__()
        c, h, w = image_shape
        if h != w:
            raise ValueError(f"the decoder needs square images, got {h}x{w}; pass --image-size")
        self.start, ups = _decoder_plan(h)
        widths = [width * 2 ** (ups - 1 - i) for i in range(ups)]  # e.g. [4w, 2w, w]
        self.start_channels = widths[0]
        self.fc = nn.Linear(latent_dim, widths[0] * self.start * self.start, bias=False)
        layers: list[nn.Module] = [nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)]
        for i in range(ups):
            if i + 1 < ups:
                layers += [nn.ConvTranspose2d(widths[i], widths[i + 1], 4, 2, 1, bias=False),
                           nn.BatchNorm2d(widths[i + 1]), nn.ReLU(inplace=True)]
            else:
                layers.append(nn.ConvTranspose2d(widths[i], c, 4, 2, 1))
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], self.start_channels, self.start, self.start)
        return self.deconv(h)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def load_split(config: GenerativeTrainConfig, train: bool = True):
    """The configured dataset split (an ``rlgen.data`` dataset with ``.images`` uint8)."""
    from rlgen.data import load_dataset

    return load_dataset(
        config.dataset,
        root=config.data_root,
        train=train,
        download=config.download,
        image_size=config.image_size,
    )


def load_for_evaluation(
    checkpoint: str | Path,
    kind: str,
    *,
    device: str | torch.device = "cpu",
    dataset: str | None = None,
    data_root: str | None = None,
    split: str = "test",
    num_images: int | None = None,
) -> tuple[GenerativeModel, torch.Tensor, str]:
    """The model of a ``kind`` checkpoint and the images of a split (float in [0, 1], on
    ``device``) of the dataset it was trained on, unless ``dataset`` / ``data_root`` override.
    Returns ``(model, images, dataset_name)``; used by ``rlgen eval vae|autoencoder``."""
    from rlgen.checkpoint import load_checkpoint
    from rlgen.runtime import resolve_device

    device = resolve_device(device)
    state = load_checkpoint(checkpoint)
    model = load_generative(checkpoint, device=device)
    if model.kind != kind:
        raise ValueError(f"{checkpoint} holds a {model.kind!r} model, not a {kind!r} one; "
                         f"use `rlgen eval {model.kind}`")
    trained = state.get("config", {})
    data_config = GenerativeTrainConfig(
        dataset=dataset or trained.get("dataset", "mnist"),
        data_root=data_root or trained.get("data_root", "data"),
        image_size=trained.get("image_size"),
    )
    x = load_split(data_config, train=split == "train").images
    if num_images is not None:
        x = x[:num_images]
    x = x.to(device).float().div_(255.0)
    if tuple(x.shape[1:]) != tuple(model.image_shape):
        raise ValueError(f"the data's images are {tuple(x.shape[1:])}, the model expects "
                         f"{tuple(model.image_shape)}; pass the dataset it was trained on")
    return model, x, data_config.dataset


def dataset_images(dataset) -> torch.Tensor:
    """The uint8 ``(N, C, H, W)`` images of a dataset (``.images`` or stacked items)."""
    images = getattr(dataset, "images", None)
    if images is None:  # a plain torch Dataset of (float image, label) pairs
        images = torch.stack([(dataset[i][0] * 255).round().to(torch.uint8)
                              for i in range(len(dataset))])
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(
            f"expected uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    return images


def load_images(config: GenerativeTrainConfig, train: bool = True) -> torch.Tensor:
    """uint8 ``(N, C, H, W)`` images of the configured split."""
    return dataset_images(load_split(config, train))


def _epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g)


class TensorBatches:
    """Shuffled batches indexed out of an in-memory uint8 tensor kept on ``device``.

    Step ``s`` is batch ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``; an epoch's
    order is a permutation seeded by (seed, epoch). The incomplete last batch is dropped
    (BatchNorm layers dislike tiny batches); a split smaller than a batch is one batch.
    """

    def __init__(self, images: torch.Tensor, batch_size: int, seed: int = 0,
                 device: str | torch.device = "cpu"):
        if images.shape[0] == 0:
            raise ValueError("the training split is empty")
        self.images = images.to(device)
        self.device = torch.device(device)
        self.num_images = int(images.shape[0])
        self.batch_size = min(batch_size, self.num_images)
        self.steps_per_epoch = self.num_images // self.batch_size
        self.seed = seed

    def batches(self, start_step: int = 0) -> Iterator[torch.Tensor]:
        """Float batches in [0, 1] on the device, from ``start_step`` on (endless)."""
        for epoch in itertools.count(start_step // self.steps_per_epoch):
            perm = _epoch_permutation(self.num_images, self.seed, epoch).to(self.device)
            first = start_step % self.steps_per_epoch if epoch == start_step // \
                self.steps_per_epoch else 0
            for i in range(first, self.steps_per_epoch):
                idx = perm[i * self.batch_size:(i + 1) * self.batch_size]
                yield self.images[idx].float().div_(255.0)


class _ImagesOnly(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.dataset[i][0]


class LoaderBatches:
    """The same batch schedule as ``TensorBatches`` through a ``torch.utils.data.DataLoader``
    (worker processes, datasets with transforms). Resuming mid-epoch skips batches."""

    def __init__(self, dataset, batch_size: int, seed: int = 0,
                 device: str | torch.device = "cpu", num_workers: int = 0):
        if len(dataset) == 0:
            raise ValueError("the training split is empty")
        self.dataset = _ImagesOnly(dataset)
        self.device = torch.device(device)
        self.num_images = len(dataset)
        self.batch_size = min(batch_size, self.num_images)
        self.steps_per_epoch = self.num_images // self.batch_size
        self.seed = seed
        self.num_workers = num_workers

    def batches(self, start_step: int = 0) -> Iterator[torch.Tensor]:
        for epoch in itertools.count(start_step // self.steps_per_epoch):
            perm = _epoch_permutation(self.num_images, self.seed, epoch).tolist()
            loader = torch.utils.data.DataLoader(
                self.dataset, batch_size=self.batch_size, sampler=perm, drop_last=True,
                num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
            )
            first = start_step % self.steps_per_epoch if epoch == start_step // \
                self.steps_per_epoch else 0
            for batch in itertools.islice(loader, first, None):
                yield batch.to(self.device, non_blocking=True)


def make_batches(config: GenerativeTrainConfig, dataset, device: str | torch.device):
    """``TensorBatches`` or ``LoaderBatches`` for ``dataset`` per ``config.loader``."""
    if config.loader == "dataloader":
        return LoaderBatches(dataset, config.batch_size, config.seed, device, config.num_workers)
    return TensorBatches(dataset_images(dataset), config.batch_size, config.seed, device)


def total_steps(config: GenerativeTrainConfig, steps_per_epoch: int) -> int:
    """Optimizer steps of the whole run: ``epochs * steps_per_epoch``, capped by max_steps."""
    steps = config.epochs * steps_per_epoch
    return min(steps, config.max_steps) if config.max_steps is not None else steps


# --------------------------------------------------------------------------------------------
# Run scaffolding
# --------------------------------------------------------------------------------------------


def resolve_resume(path: str | Path) -> Path:
    """A checkpoint file, or the latest checkpoint of a run directory."""
    from rlgen.checkpoint import CheckpointError, CheckpointManager

    p = Path(path)
    if p.is_dir():
        directory = p / "checkpoints" if (p / "checkpoints").is_dir() else p
        latest = CheckpointManager(directory).latest()
        if latest is None:
            raise CheckpointError(f"--resume {path}: no checkpoint (ckpt_*.pt) in {directory}")
        return latest
    if not p.exists():
        raise CheckpointError(f"--resume {path}: no such file or directory")
    return p


class GenerativeRun:
    """Everything around a generative training loop, so the loop itself reads top to bottom.

    ``optimizers`` / ``precisions``: dicts by name (``{"model": adam}``; a GAN passes
    ``{"generator": ..., "discriminator": ...}``). Entering the context creates (or reopens,
    on resume) the run directory, restores the training state, and opens the logger;
    ``start_step`` is then the number of steps already done.
    """

    def __init__(
        self,
        kind: str,
        config: GenerativeTrainConfig,
        model: GenerativeModel,
        optimizers: dict[str, torch.optim.Optimizer],
        precisions: dict[str, Any],
        total_steps: int,
        progress: bool | None = None,
    ):
        self.kind = kind
        self.config = config
        self.model = unwrap(model)
        self.optimizers = optimizers
        self.precisions = precisions
        self.total_steps = total_steps
        self.progress_enabled = progress
        self.start_step = 0
        self.extra: dict[str, Any] = {}
        self.logger = None
        self.checkpoints = None
        self.last_checkpoint: Path | None = None
        self._last_saved_step = -1
        self._resume_path = resolve_resume(config.resume) if config.resume else None
        self._t0 = time.perf_counter()
        self._t0_step = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> GenerativeRun:
        from rlgen.checkpoint import CheckpointManager
        from rlgen.logger import RunLogger, make_run_dir

        if self.config.run_dir:
            run_dir = Path(self.config.run_dir)
        elif self._resume_path is not None:
            # .../run_dir/checkpoints/ckpt_X.pt -> keep logging into the resumed run
            parent = self._resume_path.parent
            run_dir = parent.parent if parent.name == "checkpoints" else parent
        else:
            run_dir = make_run_dir(self.kind, name=self.config.dataset, seed=self.config.seed)
        if self._resume_path is not None:
            self._restore(self._resume_path)
        self.checkpoints = CheckpointManager(run_dir / "checkpoints")
        self.logger = RunLogger(
            run_dir, task=self.kind, name=self.config.dataset, seed=self.config.seed,
            config=self.config, total_steps=self.total_steps, progress=self.progress_enabled,
            initial_step=self.start_step,
        )
        self.logger.__enter__()
        self.run_dir = Path(self.logger.run_dir)
        self._t0, self._t0_step = time.perf_counter(), self.start_step
        return self

    def __exit__(self, *exc) -> None:
        if self.logger is not None:
            self.logger.__exit__(*exc)

    # -- checkpoints -------------------------------------------------------------------------
    def state(self, step: int) -> dict[str, Any]:
        from rlgen.checkpoint import rng_state

        state = model_state(self.kind, self.model)
        state.update(
            config=dataclasses.asdict(self.config),
            step=int(step),
            optimizers={k: o.state_dict() for k, o in self.optimizers.items()},
            precisions={k: p.state_dict() for k, p in self.precisions.items()},
            rng=rng_state(),
            extra=dict(self.extra),
        )
        return state

    def checkpoint(self, step: int) -> Path:
        """Save the full training state after ``step`` steps (atomic; keeps the last 3)."""
        self.last_checkpoint = self.checkpoints.save(self.state(step), step)
        self._last_saved_step = step
        return self.last_checkpoint

    def _restore(self, path: Path) -> None:
        from rlgen.checkpoint import CheckpointError, load_checkpoint, set_rng_state

        state = load_checkpoint(path, map_location="cpu")
        if not isinstance(state, dict) or state.get("kind") != self.kind:
            found = state.get("kind") if isinstance(state, dict) else type(state).__name__
            raise CheckpointError(
                f"--resume {path}: expected a {self.kind!r} training checkpoint, found {found!r}"
            )
        if "optimizers" not in state:
            raise CheckpointError(f"--resume {path}: holds no training state (optimizers)")
        if dict(state["model_config"]) != dict(self.model.model_config):
            raise ValueError(
                f"--resume {path}: the checkpoint's model {state['model_config']} differs from "
                f"the configured one {self.model.model_config}; use the same model options"
            )
        self.model.load_state_dict(state["model"])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        for name, prec in self.precisions.items():
            if name in state.get("precisions", {}):
                prec.load_state_dict(state["precisions"][name])
        set_rng_state(state["rng"])
        self.extra = dict(state.get("extra", {}))
        self.start_step = int(state["step"])

    # -- logging -----------------------------------------------------------------------------
    def should(self, step: int, every: int) -> bool:
        """True every ``every`` steps and at the last step (``every == 0``: last step only)."""
        return step == self.total_steps or (every > 0 and step % every == 0)

    def log(self, step: int, metrics: dict[str, float], **postfix: Any) -> None:
        """Log scalars (adds ``charts/images_per_s``) and move the progress bar."""
        elapsed = time.perf_counter() - self._t0
        done = step - self._t0_step
        metrics = dict(metrics)
        if done > 0 and elapsed > 0:
            metrics["charts/images_per_s"] = done * self.config.batch_size / elapsed
        self.logger.scalars(metrics, step)
        self.logger.progress(step, **postfix)

    def save_grid(self, tag: str, images: torch.Tensor, step: int, nrow: int = 8) -> Path:
        """``samples/<tag>`` in TensorBoard and ``{run_dir}/samples/<tag>_<step>.png``."""
        from rlgen.data.images import save_image

        self.logger.image_grid(f"samples/{tag}", images, step, nrow=nrow)
        return save_image(images, self.run_dir / "samples" / f"{tag}_{step:07d}.png", nrow=nrow)

    def finish(self, step: int, metrics: dict[str, float]) -> dict[str, Any]:
        """Final checkpoint (unless just saved) and hparams; returns the metrics + paths."""
        if self._last_saved_step != step:
            self.checkpoint(step)
        self.logger.hparams({k: float(v) for k, v in metrics.items()})
        figures = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        self.logger.print(f"{self.kind}: {step} steps{', ' + figures if figures else ''}; "
                          f"checkpoint {self.last_checkpoint}")
        return {**metrics, "step": step, "run_dir": str(self.run_dir),
                "checkpoint": str(self.last_checkpoint)}
