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
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from rlgen.cli_spec import TrainerSpec
from rlgen.errors import InputError
from rlgen.generative.config import (
    GenerativeTrainConfig,
    dataset_images,
    load_for_evaluation,
    load_split,
    make_batches,
)
from rlgen.generative.model import (
    GenerativeModel,
    evaluating,
    model_meta,
    register_generative,
)
from rlgen.generative.nets import ConvDecoder, build_encoder
from rlgen.generative.sampling import SampleConfig, sample_command
from rlgen.registry import TRAINERS
from rlgen.training import TrainingRun, check, total_steps
from rlgen.vision.backbones.base import feature_shape


@register_generative("autoencoder")
class ConvAutoencoder(GenerativeModel):
    """Encoder backbone -> linear code -> transposed-conv decoder (logits)."""

    def __init__(
        self,
        image_shape: tuple[int, int, int] | list[int] = (1, 28, 28),
        latent_dim: int = 32,
        encoder: str = "conv",
        width: int = 32,
        batch_norm: bool = True,
    ):
        super().__init__()
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 3:
            raise InputError(f"image_shape must be (C, H, W), got {image_shape}")
        if latent_dim < 1:
            raise InputError(f"--latent-dim must be >= 1, got {latent_dim}")
        if width < 1:
            raise InputError(f"--width must be >= 1, got {width}")
        self.model_config = {"image_shape": list(image_shape), "latent_dim": latent_dim,
                             "encoder": encoder, "width": width, "batch_norm": batch_norm}
        self.image_shape = image_shape
        self.latent_dim = latent_dim
        self.encoder = build_encoder(encoder, image_shape[0], width, batch_norm)
        self.fc = nn.Linear(math.prod(feature_shape(self.encoder, image_shape)), latent_dim)
        self.decoder = ConvDecoder(latent_dim, image_shape, width, batch_norm)
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


def corruption_draws(noise: str, shape: tuple[int, ...], device: torch.device | str = "cpu",
                     generator: torch.Generator | None = None) -> torch.Tensor | None:
    """The random numbers ``corrupt`` needs: U(0, 1) for masking, N(0, 1) for gaussian."""
    if noise == "masking":
        return torch.rand(shape, generator=generator, device=device)
    if noise == "gaussian":
        return torch.randn(shape, generator=generator, device=device)
    return None


def corrupt(x: torch.Tensor, noise: str, level: float, draws: torch.Tensor | None = None,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Denoising-autoencoder input corruption: ``none``, ``masking`` (each pixel zeroed with
    probability ``level``) or ``gaussian`` (``+ level * N(0, 1)``, clipped to [0, 1]), with
    ``draws`` from ``corruption_draws`` (drawn here from ``generator`` unless given)."""
    if noise not in ("none", "masking", "gaussian"):
        raise InputError(f"--noise must be none, masking or gaussian, got {noise!r}")
    if noise == "none" or level == 0:
        return x
    if draws is None:
        draws = corruption_draws(noise, tuple(x.shape), x.device, generator)
    if noise == "masking":
        return x * (draws >= level)
    return (x + level * draws).clamp_(0.0, 1.0)


def reconstruction_loss(logits: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-pixel mean of BCE-with-logits or of the squared error of sigmoid(logits)."""
    logits, target = logits.float(), target.float()
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    return F.mse_loss(torch.sigmoid(logits), target)


@dataclass
class AutoencoderConfig(GenerativeTrainConfig):
    """Train a convolutional (denoising) autoencoder on an image dataset."""

    fixed_on_resume: ClassVar[tuple[str, ...]] = (
        *GenerativeTrainConfig.fixed_on_resume, "latent_dim", "encoder", "width")

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
        check(self.latent_dim >= 1, f"--latent-dim must be >= 1, got {self.latent_dim}")
        check(self.width >= 1, f"--width must be >= 1, got {self.width}")
        check(self.loss in ("bce", "mse"), f"--loss must be bce or mse, got {self.loss!r}")
        check(
            self.noise in ("none", "masking", "gaussian"),
            f"--noise must be none, masking or gaussian, got {self.noise!r}",
        )
        check(self.noise_level >= 0, f"--noise-level must be >= 0, got {self.noise_level}")
        check(
            self.noise != "masking" or self.noise_level < 1,
            f"--noise-level must be < 1 for masking noise, got {self.noise_level}",
        )
        check(self.prior_images >= 1, f"--prior-images must be >= 1, got {self.prior_images}")
        check(self.eval_images >= 0, f"--eval-images must be >= 0, got {self.eval_images}")


def train(config: AutoencoderConfig, progress: bool | None = None) -> dict[str, Any]:
    """Train, fit the sampling Gaussian, report held-out reconstruction error."""
    from rlgen.runtime import Precision
    from rlgen.runtime import to_memory_format as fmt

    with TrainingRun("autoencoder", config, progress=progress) as run:
        config = run.config  # with --resume: the saved config and the flags given now
        train_set = load_split(config, train=True)
        model = ConvAutoencoder(tuple(train_set.images.shape[1:]), config.latent_dim,
                                config.encoder, config.width, config.batch_norm)
        model.to(run.device)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
        precision = Precision(config.precision, run.device)
        data = make_batches(config, train_set, run)
        batch = data.batch_size  # global batch
        prior_x = dataset_images(train_set)[: config.prior_images].to(run.device)
        prior_x = prior_x.float().div_(255.0)
        eval_x = None
        if config.eval_images:
            test = load_split(config, train=False).images[: config.eval_images]
            eval_x = test.to(run.device).float().div_(255.0)
        shown = (eval_x if eval_x is not None else prior_x)[:32]
        shown_noisy = corrupt(shown, config.noise, config.noise_level, generator=torch.Generator(
            device=run.device).manual_seed(config.seed))

        run.start(total_steps(config, data.steps_per_epoch),
                  {"model": model, "optimizer": optimizer, "precision": precision},
                  meta=model_meta(model), items_per_step=batch)
        net = run.prepare(model)
        step = run.start_step
        for step, (x, _) in run.steps(data):
            # Drawn for the global batch, each process keeps its rows (see rlgen.distributed).
            draws = corruption_draws(config.noise, (batch, *model.image_shape), run.device)
            draws = run.shard(draws) if draws is not None else None
            noisy = fmt(corrupt(x, config.noise, config.noise_level, draws), config.channels_last)
            with precision.autocast():
                logits = net(noisy)
            loss = reconstruction_loss(logits, x, config.loss)
            optimizer.zero_grad(set_to_none=True)
            precision.step(loss, optimizer)

            if run.due(step, config.log_every):
                with torch.no_grad():
                    mse = F.mse_loss(torch.sigmoid(logits.float()), x)
                run.log(step, {"train/loss": loss, "train/mse": mse,
                               "train/skipped_steps": precision.skipped_steps},
                        show=("train/mse",))
            if run.due(step, config.sample_every):
                rows = [shown.cpu(), model.reconstruct(shown).cpu()]
                if config.noise != "none":
                    rows = [shown_noisy.cpu(), model.reconstruct(shown_noisy).cpu(), shown.cpu()]
                run.save_grid("reconstructions", torch.cat(rows), step)
                model.fit_latent_prior(prior_x)
                run.save_grid("generated", model.sample(64, seed=config.seed), step)

        model.fit_latent_prior(prior_x)
        run.checkpoint(step)  # with the fitted sampling Gaussian
        metrics: dict[str, float] = {}
        if eval_x is not None:
            metrics = evaluate_model(model, eval_x)
            run.log(step, metrics)
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
            logits = model(corrupt(chunk, noise, noise_level, generator=generator)).float()
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
        check(bool(self.checkpoint), "--checkpoint is required (a checkpoint file or run dir)")
        check(
            self.num_images is None or self.num_images > 0,
            f"--num-images must be > 0 (or omitted), got {self.num_images}",
        )
        check(self.batch_size > 0, f"--batch-size must be > 0, got {self.batch_size}")
        check(self.noise_level >= 0, f"--noise-level must be >= 0, got {self.noise_level}")


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
