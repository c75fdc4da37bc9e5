"""Convolutional (denoising) autoencoder.

- Autoencoder: an encoder (any registered backbone, ``--encoder conv`` by default) flattened to
  a linear code of ``--latent-dim`` numbers, and a transposed-conv decoder (``ConvDecoder``)
  back to logits; loss ``bce`` (BCE with logits on [0, 1] targets) or ``mse`` (on sigmoid
  outputs), per pixel.
- Denoising: Vincent, Larochelle, Bengio & Manzagol, "Extracting and Composing Robust Features
  with Denoising Autoencoders" (ICML 2008) -- the encoder sees a corrupted input (``masking``:
  each pixel zeroed with probability ``--noise-level``; ``gaussian``: additive N(0,
  level^2), clipped to [0, 1]) and the loss compares the output with the clean image.
- Sampling: a plain autoencoder has no prior, so after training (and before every sample grid)
  a Gaussian is fitted to the codes of training images (mean + Cholesky factor of the
  covariance, stored as buffers): ``generate(eps)`` decodes ``mean + L @ eps`` for eps ~ N(0, I).
  This is the ex-post density estimation of Ghosh et al., "From Variational to Deterministic
  Autoencoders" (ICLR 2020), with a single Gaussian. ``decode(code)`` decodes raw codes.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from rlgen.cli_spec import TrainerSpec
from rlgen.generative.common import (
    ConvDecoder,
    GenerativeModel,
    GenerativeRun,
    GenerativeTrainConfig,
    _check,
    build_encoder,
    dataset_images,
    evaluating,
    flat_features,
    load_for_evaluation,
    load_split,
    make_batches,
    register_generative,
    total_steps,
)
from rlgen.generative.sampling import SampleConfig, sample_command
from rlgen.registry import TRAINERS


@register_generative("autoencoder")
class ConvAutoencoder(GenerativeModel):
    """Encoder backbone -> linear code -> transposed-conv decoder (logits)."""

    def __init__(
        self,
        image_shape: tuple[int, int, int] | list[int] = (1, 28, 28),
        latent_dim: int = 32,
        encoder: str = "conv",
        width: int = 32,
    ):
        super().__init__()
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {image_shape}")
        if latent_dim < 1:
            raise ValueError(f"--latent-dim must be >= 1, got {latent_dim}")
        if width < 1:
            raise ValueError(f"--width must be >= 1, got {width}")
        self.model_config = {"image_shape": list(image_shape), "latent_dim": latent_dim,
                             "encoder": encoder, "width": width}
        self.image_shape = image_shape
        self.latent_dim = latent_dim
        self.encoder = build_encoder(encoder, in_channels=image_shape[0], width=width)
        self.fc = nn.Linear(flat_features(self.encoder, image_shape), latent_dim)
        self.decoder = ConvDecoder(latent_dim, image_shape, width=width)
        # Gaussian fitted to training codes (see fit_latent_prior); identity until then.
        self.register_buffer("latent_mean", torch.zeros(latent_dim))
        self.register_buffer("latent_scale_tril", torch.eye(latent_dim))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder.forward_features(x).flatten(1))

    def decode_logits(self, code: torch.Tensor) -> torch.Tensor:
        return self.decoder(code)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        """Raw codes -> images in [0, 1]."""
        return torch.sigmoid(self.decode_logits(code).float())

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Standard-normal latents -> images, through the Gaussian fitted to training codes."""
        code = self.latent_mean + z.to(self.latent_scale_tril.dtype) @ self.latent_scale_tril.T
        return self.decode(code)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction logits of ``x``."""
        return self.decode_logits(self.encode(x))

    @torch.inference_mode()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstructions (eval mode) in [0, 1]."""
        with evaluating(self):
            return self.decode(self.encode(x))

    @torch.inference_mode()
    def fit_latent_prior(self, images: torch.Tensor, batch_size: int = 500) -> None:
        """Fit the sampling Gaussian to the codes of ``images`` (float in [0, 1])."""
        with evaluating(self):
            codes = torch.cat([self.encode(x).float() for x in images.split(batch_size)])
        mean = codes.mean(0)
        centered = codes - mean
        cov = centered.T @ centered / max(codes.shape[0] - 1, 1)
        # A little jitter keeps the Cholesky factorization defined for degenerate codes.
        jitter = 1e-5 * cov.diagonal().mean().clamp_min(1e-8)
        eye = torch.eye(self.latent_dim, device=cov.device)
        scale = torch.linalg.cholesky(cov + jitter * eye)
        self.latent_mean.copy_(mean)
        self.latent_scale_tril.copy_(scale)


def corrupt(
    x: torch.Tensor, noise: str, level: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Denoising-autoencoder input corruption: ``none``, ``masking`` or ``gaussian``."""
    if noise == "none" or level == 0:
        return x
    if noise == "masking":
        keep = torch.rand(x.shape, generator=generator, device=x.device) >= level
        return x * keep
    if noise == "gaussian":
        eps = torch.randn(x.shape, generator=generator, device=x.device)
        return (x + level * eps).clamp_(0.0, 1.0)
    raise ValueError(f"--noise must be none, masking or gaussian, got {noise!r}")


def reconstruction_loss(logits: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-pixel mean of BCE-with-logits or of the squared error of sigmoid(logits)."""
    logits, target = logits.float(), target.float()
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    return F.mse_loss(torch.sigmoid(logits), target)


@dataclass
class AutoencoderConfig(GenerativeTrainConfig):
    """Train a convolutional (denoising) autoencoder on an image dataset."""

    latent_dim: int = 32
    """size of the code"""
    encoder: str = "conv"
    """encoder: conv (small built-in conv net) or any backbone of `rlgen list backbones`"""
    width: int = 32
    """channels of the conv encoder's first layer and the decoder's last (doubling inward)"""
    loss: Literal["bce", "mse"] = "bce"
    """reconstruction loss: bce (with logits) or mse (on sigmoid outputs)"""
    noise: Literal["none", "masking", "gaussian"] = "none"
    """input corruption for a denoising autoencoder"""
    noise_level: float = 0.3
    """masking: probability a pixel is zeroed; gaussian: noise standard deviation"""
    prior_images: int = 10000
    """training images used to fit the sampling Gaussian to the codes"""
    eval_images: int = 1000
    """held-out images for the end-of-run reconstruction error (0: skip)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.latent_dim >= 1, f"--latent-dim must be >= 1, got {self.latent_dim}")
        _check(self.width >= 1, f"--width must be >= 1, got {self.width}")
        _check(self.loss in ("bce", "mse"), f"--loss must be bce or mse, got {self.loss!r}")
        _check(
            self.noise in ("none", "masking", "gaussian"),
            f"--noise must be none, masking or gaussian, got {self.noise!r}",
        )
        _check(self.noise_level >= 0, f"--noise-level must be >= 0, got {self.noise_level}")
        _check(
            self.noise != "masking" or self.noise_level < 1,
            f"--noise-level must be < 1 for masking noise, got {self.noise_level}",
        )
        _check(self.prior_images >= 1, f"--prior-images must be >= 1, got {self.prior_images}")
        _check(self.eval_images >= 0, f"--eval-images must be >= 0, got {self.eval_images}")


def train(config: AutoencoderConfig, progress: bool | None = None) -> dict[str, Any]:
    """Train, fit the sampling Gaussian, report held-out reconstruction error."""
    from rlgen.runtime import Precision, prepare_module, resolve_device, seed_everything
    from rlgen.runtime import to_memory_format as fmt

    device = resolve_device(config.device)
    seed_everything(config.seed)
    train_set = load_split(config, train=True)
    c, h, w = (int(s) for s in train_set.images.shape[1:])
    model = ConvAutoencoder((c, h, w), config.latent_dim, config.encoder, config.width)
    net = prepare_module(model, device=device, channels_last=config.channels_last,
                         compile=config.compile)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    precision = Precision(config.precision, device)
    data = make_batches(config, train_set, device)
    steps = total_steps(config, data.steps_per_epoch)
    prior_x = dataset_images(train_set)[: config.prior_images].to(device).float().div_(255.0)
    eval_x = None
    if config.eval_images:
        test = load_split(config, train=False).images[: config.eval_images]
        eval_x = test.to(device).float().div_(255.0)
    shown = (eval_x if eval_x is not None else prior_x)[:32]
    shown_noisy = corrupt(shown, config.noise, config.noise_level,
                          torch.Generator(device=device).manual_seed(config.seed))

    with GenerativeRun("autoencoder", config, model, {"model": optimizer},
                       {"model": precision}, steps, progress=progress) as run:
        step = run.start_step
        for x in data.batches(step):
            if step >= steps:
                break
            noisy = fmt(corrupt(x, config.noise, config.noise_level), config.channels_last)
            with precision.autocast():
                logits = net(noisy)
            loss = reconstruction_loss(logits, x, config.loss)
            optimizer.zero_grad(set_to_none=True)
            precision.step(loss, optimizer)
            step += 1

            if run.should(step, config.log_every):
                with torch.no_grad():
                    mse = F.mse_loss(torch.sigmoid(logits.float()), x).item()
                run.log(step, {"train/loss": loss.item(), "train/mse": mse,
                               "train/skipped_steps": precision.skipped_steps}, mse=mse)
            if run.should(step, config.sample_every):
                rows = [shown.cpu(), model.reconstruct(shown).cpu()]
                if config.noise != "none":
                    rows = [shown_noisy.cpu(), model.reconstruct(shown_noisy).cpu(), shown.cpu()]
                run.save_grid("reconstructions", torch.cat(rows), step)
                model.fit_latent_prior(prior_x)
                run.save_grid("generated", model.sample(64, seed=config.seed), step)
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                run.checkpoint(step)

        model.fit_latent_prior(prior_x)
        metrics: dict[str, float] = {}
        if eval_x is not None:
            metrics = evaluate_model(model, eval_x)
            run.logger.scalars(metrics, step)
        return run.finish(step, metrics)


@torch.inference_mode()
def evaluate_model(
    model: ConvAutoencoder,
    x: torch.Tensor,
    noise: str = "none",
    noise_level: float = 0.0,
    seed: int = 0,
    batch_size: int = 500,
) -> dict[str, float]:
    """Per-pixel ``eval/mse`` and ``eval/bce`` of reconstructions of (corrupted) ``x``."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    se, bce, n = 0.0, 0.0, 0
    with evaluating(model):
        for chunk in x.split(batch_size):
            logits = model(corrupt(chunk, noise, noise_level, generator)).float()
            se += F.mse_loss(torch.sigmoid(logits), chunk, reduction="sum").item()
            bce += F.binary_cross_entropy_with_logits(logits, chunk, reduction="sum").item()
            n += chunk.numel()
    return {"eval/mse": se / n, "eval/bce": bce / n}


@dataclass
class AutoencoderEvalConfig:
    """Held-out reconstruction error (per-pixel MSE and BCE) of an autoencoder checkpoint."""

    checkpoint: str = ""
    """checkpoint file (or run directory: its latest checkpoint)"""
    num_images: int | None = None
    """images to evaluate (None: the whole split)"""
    split: Literal["test", "train"] = "test"
    """which split to evaluate"""
    dataset: str | None = None
    """dataset (None: the one the checkpoint was trained on)"""
    data_root: str | None = None
    """dataset directory (None: the one the checkpoint was trained with)"""
    noise: Literal["none", "masking", "gaussian"] = "none"
    """corrupt the inputs (measures denoising; targets stay clean)"""
    noise_level: float = 0.3
    """masking probability or Gaussian standard deviation"""
    batch_size: int = 500
    """images per batch"""
    device: str = "auto"
    """cpu, cuda, mps or auto"""
    seed: int = 0
    """seed of the input corruption"""

    def __post_init__(self) -> None:
        _check(bool(self.checkpoint), "--checkpoint is required (a checkpoint file or run dir)")
        _check(
            self.num_images is None or self.num_images > 0,
            f"--num-images must be > 0 (or omitted), got {self.num_images}",
        )
        _check(self.batch_size > 0, f"--batch-size must be > 0, got {self.batch_size}")
        _check(self.noise_level >= 0, f"--noise-level must be >= 0, got {self.noise_level}")


def evaluate(config: AutoencoderEvalConfig) -> dict[str, Any]:
    """``rlgen eval autoencoder``: prints one JSON line with the figures and returns them."""
    model, x, dataset = load_for_evaluation(
        config.checkpoint, "autoencoder", device=config.device, dataset=config.dataset,
        data_root=config.data_root, split=config.split, num_images=config.num_images,
    )
    metrics = evaluate_model(model, x, config.noise, config.noise_level, config.seed,
                             config.batch_size)
    result = {
        "checkpoint": str(config.checkpoint), "dataset": dataset,
        "split": config.split, "images": int(x.shape[0]), "noise": config.noise,
        "mse_per_pixel": metrics["eval/mse"], "bce_per_pixel": metrics["eval/bce"],
    }
    print(json.dumps(result))
    return result


@TRAINERS.register("autoencoder", description="Convolutional (denoising) autoencoder")
def autoencoder_trainer() -> TrainerSpec:
    return TrainerSpec(
        config=AutoencoderConfig,
        train=train,
        evaluate=(AutoencoderEvalConfig, evaluate),
        sample=(SampleConfig, functools.partial(sample_command, kind="autoencoder")),
    )
