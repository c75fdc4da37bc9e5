"""Variational autoencoder: Kingma & Welling, "Auto-Encoding Variational Bayes" (ICLR 2014),
with beta weighting of the KL term (Higgins et al., "beta-VAE", ICLR 2017) and the importance
weighted bound of Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders" (ICLR 2016)
to estimate log p(x).

- Encoder: any backbone (``--encoder conv`` by default, ``resnet18``, a plugin's ...); its
  feature map is flattened (size measured with one dummy pass) and two linear layers give the
  mean and log-variance of the Gaussian q(z|x).
- Decoder: linear layer + transposed convolutions (``ConvDecoder``) giving logits for 28x28,
  32x32 or 64x64 images.
- Likelihood p(x|z): ``bernoulli`` (``BCEWithLogits`` on the logits: numerically stable and
  allowed under CUDA autocast, unlike sigmoid + ``BCELoss``) or ``gaussian`` (mean =
  sigmoid(logits), one learned scalar standard deviation, a density in nats).
- Data for the Bernoulli likelihood (``--binarize``): ``none`` treats grey levels in [0, 1] as
  Bernoulli means (pytorch/examples' "test loss" convention; *not* a proper likelihood, so its
  NLL is not comparable to published binarized-MNIST NLLs), ``dynamic`` draws x ~ Bernoulli(grey
  level) afresh each batch and once with a fixed seed for evaluation (the IWAE paper's
  protocol; Pythae's and IWAE's figures are on binarized MNIST), ``threshold`` uses x > 0.5.
- All quantities are in nats per image: ``train/recon`` = E_q[-log p(x|z)], ``train/kl`` =
  KL(q(z|x) || N(0, I)) (analytic), ``train/elbo`` = -(recon + kl), ``train/loss`` = recon +
  beta * kl (backpropagated divided by the number of pixels, which Adam does not notice and
  which keeps fp16 loss scaling in range).
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

LOG_2PI = math.log(2 * math.pi)


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


@register_generative("vae")
class VAE(GenerativeModel):
    """Gaussian-latent VAE whose encoder is any registered backbone."""

    def __init__(
        self,
        image_shape: tuple[int, int, int] | list[int] = (1, 28, 28),
        latent_dim: int = 20,
        encoder: str = "conv",
        likelihood: str = "bernoulli",
        binarize: str = "none",
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
        if likelihood not in ("bernoulli", "gaussian"):
            raise InputError(f"--likelihood must be bernoulli or gaussian, got {likelihood!r}")
        if binarize not in ("none", "dynamic", "threshold"):
            raise InputError(f"--binarize must be none, dynamic or threshold, got {binarize!r}")
        self.model_config = {
            "image_shape": list(image_shape), "latent_dim": latent_dim, "encoder": encoder,
            "likelihood": likelihood, "binarize": binarize, "width": width,
            "batch_norm": batch_norm,
        }
        self.image_shape = image_shape
        self.latent_dim = latent_dim
        self.likelihood = likelihood
        self.binarize = binarize
        self.encoder = build_encoder(encoder, image_shape[0], width, batch_norm)
        features = math.prod(feature_shape(self.encoder, image_shape))
        self.fc_mu = nn.Linear(features, latent_dim)
        self.fc_logvar = nn.Linear(features, latent_dim)
        self.decoder = ConvDecoder(latent_dim, image_shape, width, batch_norm)
        if likelihood == "gaussian":
            # One learned output scale (a "calibrated" Gaussian decoder); starts at sigma = 0.1.
            self.log_sigma = nn.Parameter(torch.tensor(math.log(0.1)))

    # -- the two halves ----------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images -> (mu, logvar) of q(z|x), each ``(N, latent_dim)``."""
        h = self.encoder.forward_features(x).flatten(1)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> the decoder's mean image in [0, 1]."""
        return torch.sigmoid(self.decode_logits(z).float())

    def forward(
        self, x: torch.Tensor, eps: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One reparameterized pass: (logits of p(x|z), mu, logvar), z = mu + sigma * eps with
        ``eps`` ~ N(0, I) drawn here unless given (the trainer draws it for the global batch)."""
        mu, logvar = self.encode(x)
        if eps is None:
            eps = torch.randn_like(mu)
        z = mu + eps.to(mu.dtype) * torch.exp(0.5 * logvar)
        return self.decode_logits(z), mu, logvar

    @torch.inference_mode()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder mean at the posterior mean (eval mode): images in [0, 1]."""
        with evaluating(self):
            return self.generate(self.encode(x)[0])

    # -- densities (float32, per image, nats) --------------------------------------------------
    def binarize_input(
        self, x: torch.Tensor, uniform: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The data the likelihood models: grey levels, a Bernoulli draw, or a threshold.

        The Bernoulli draw is ``uniform < x`` with ``uniform`` ~ U(0, 1) of ``x``'s shape,
        drawn here (from ``generator``) unless given."""
        if self.binarize == "dynamic":
            if uniform is None:
                uniform = torch.rand(x.shape, generator=generator, device=x.device)
            return (uniform < x).to(x.dtype)
        if self.binarize == "threshold":
            return (x > 0.5).to(x.dtype)
        return x

    def log_px_given_z(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over pixels; ``x`` and ``logits`` (..., C, H, W) broadcast."""
        x, logits = torch.broadcast_tensors(x.float(), logits.float())
        if self.likelihood == "bernoulli":
            ll = -F.binary_cross_entropy_with_logits(logits, x, reduction="none")
        else:
            sigma = self.log_sigma.float()
            ll = -0.5 * ((x - torch.sigmoid(logits)) / sigma.exp()) ** 2 - sigma - 0.5 * LOG_2PI
        return ll.flatten(-3).sum(-1)

    def loss_terms(
        self, x: torch.Tensor, logits: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(E_q[-log p(x|z)], KL(q || p)) averaged over the batch, in nats per image."""
        recon = -self.log_px_given_z(x, logits).mean()
        return recon, gaussian_kl(mu.float(), logvar.float()).mean()

    @torch.inference_mode()
    def elbo(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-image ELBO (one posterior sample, analytic KL), ``(N,)`` nats."""
        mu, logvar = (t.float() for t in self.encode(x))
        eps = torch.randn(mu.shape, generator=generator, device=mu.device)
        z = mu + eps * torch.exp(0.5 * logvar)
        return self.log_px_given_z(x, self.decode_logits(z)) - gaussian_kl(mu, logvar)

    @torch.inference_mode()
    def log_likelihood(
        self,
        x: torch.Tensor,
        k: int = 1000,
        batch_size: int = 4096,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Importance-sampled estimate of log p(x), ``(N,)`` nats (Burda et al. 2016):

            log p(x) >= log (1/k) sum_i p(x, z_i) / q(z_i | x),   z_i ~ q(z|x)

        a lower bound that equals the ELBO in expectation at k=1 and tightens as k grows.
        ``x`` must already be in the likelihood's domain (see ``binarize_input``).
        ``batch_size`` bounds the number of images decoded at once.
        """
        if k < 1:
            raise ValueError(f"the number of importance samples k must be >= 1, got {k}")
        mu, logvar = (t.float() for t in self.encode(x))
        std = torch.exp(0.5 * logvar)
        n = x.shape[0]
        chunk = max(1, batch_size // max(n, 1))
        log_w = []
        for start in range(0, k, chunk):
            m = min(chunk, k - start)
            eps = torch.randn((m, *mu.shape), generator=generator, device=mu.device)
            z = mu + std * eps  # (m, N, D)
            logits = self.decode_logits(z.reshape(m * n, -1)).reshape(m, n, *self.image_shape)
            log_px = self.log_px_given_z(x, logits)
            log_pz = standard_normal_logpdf(z)
            log_qz = -0.5 * (eps**2 + logvar + LOG_2PI).sum(-1)
            log_w.append(log_px + log_pz - log_qz)
        return torch.logsumexp(torch.cat(log_w), dim=0) - math.log(k)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row (Kingma & Welling 2014, appendix B)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def standard_normal_logpdf(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass
class VAEConfig(GenerativeTrainConfig):
    """Train a VAE (Kingma & Welling 2014; beta-VAE weighting) on an image dataset."""

    fixed_on_resume: ClassVar[tuple[str, ...]] = (
        *GenerativeTrainConfig.fixed_on_resume, "latent_dim", "encoder", "width", "likelihood",
        "binarize")

    latent_dim: int = 20
    """dimension of the Gaussian latent z"""
    encoder: str = "conv"
    """encoder: conv (small built-in conv net) or any backbone of `rlgen list backbones`"""
    width: int = 32
    """channels of the conv encoder's first layer and the decoder's last (doubling inward)"""
    likelihood: Literal["bernoulli", "gaussian"] = "bernoulli"
    """p(x|z): bernoulli (BCE with logits) or gaussian (learned scalar sigma)"""
    binarize: Literal["none", "dynamic", "threshold"] = "none"
    """none: grey levels as Bernoulli means; dynamic: x ~ Bernoulli(grey) each batch;
    threshold: x > 0.5"""
    beta: float = 1.0
    """weight of the KL term (beta-VAE; 1 = the ELBO)"""
    eval_images: int = 1000
    """held-out images for the end-of-run ELBO and NLL (0: skip)"""
    eval_k: int = 100
    """importance samples for the end-of-run NLL estimate (0: skip the NLL)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.latent_dim >= 1, f"--latent-dim must be >= 1, got {self.latent_dim}")
        check(self.width >= 1, f"--width must be >= 1, got {self.width}")
        check(self.beta >= 0, f"--beta must be >= 0, got {self.beta}")
        check(self.eval_images >= 0, f"--eval-images must be >= 0, got {self.eval_images}")
        check(self.eval_k >= 0, f"--eval-k must be >= 0, got {self.eval_k}")
        check(self.likelihood in ("bernoulli", "gaussian"),
              f"--likelihood must be bernoulli or gaussian, got {self.likelihood!r}")
        check(self.binarize in ("none", "dynamic", "threshold"),
              f"--binarize must be none, dynamic or threshold, got {self.binarize!r}")


def train(config: VAEConfig, progress: bool | None = None) -> dict[str, Any]:
    """Train, then report held-out negative ELBO and NLL; returns the final metrics."""
    from rlgen.runtime import Precision
    from rlgen.runtime import to_memory_format as fmt

    with TrainingRun("vae", config, progress=progress) as run:
        config = run.config  # with --resume: the saved config and the flags given now
        train_set = load_split(config, train=True)
        model = VAE(tuple(train_set.images.shape[1:]), config.latent_dim, config.encoder,
                    config.likelihood, config.binarize, config.width, config.batch_norm)
        model.to(run.device)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
        precision = Precision(config.precision, run.device)
        data = make_batches(config, train_set, run)
        batch, pixels = data.batch_size, math.prod(model.image_shape)  # global batch
        eval_x = _eval_images(config, run.device)
        shown = eval_x[:32] if eval_x is not None else None

        run.start(total_steps(config, data.steps_per_epoch),
                  {"model": model, "optimizer": optimizer, "precision": precision},
                  meta=model_meta(model), items_per_step=batch)
        net = run.prepare(model)
        step = run.start_step
        for step, (x, _) in run.steps(data):
            # Noise is drawn for the global batch and each process keeps its rows, so a
            # torchrun job computes what one process would.
            uniform = run.shard(torch.rand(batch, *model.image_shape, device=run.device))
            eps = run.shard(torch.randn(batch, config.latent_dim, device=run.device))
            x = fmt(model.binarize_input(x, uniform), config.channels_last)
            with precision.autocast():
                logits, mu, logvar = net(x, eps)
            recon, kl = model.loss_terms(x, logits, mu, logvar)
            loss = recon + config.beta * kl
            optimizer.zero_grad(set_to_none=True)
            # Backpropagate the loss per pixel: Adam is blind to the scale, and fp16 loss
            # scaling then starts in range instead of skipping its first ~9 steps (a 784-pixel
            # sum times the initial scale 2**16 overflows fp16 gradients).
            precision.step(loss / pixels, optimizer)

            if run.due(step, config.log_every):
                run.log(step, {"train/loss": loss, "train/recon": recon, "train/kl": kl,
                               "train/elbo": -(recon + kl),
                               "train/skipped_steps": precision.skipped_steps},
                        show=("train/elbo",))
            if run.due(step, config.sample_every):
                run.save_grid("generated", model.sample(64, seed=config.seed), step)
                if shown is not None:
                    pairs = torch.cat([shown.cpu(), model.reconstruct(shown).cpu()])
                    run.save_grid("reconstructions", pairs, step)

        metrics: dict[str, float] = {}
        if eval_x is not None:
            metrics = evaluate_model(model, eval_x, k=config.eval_k, seed=config.seed)
            run.log(step, metrics)
        return run.finish(step, metrics)


def _eval_images(config: VAEConfig, device: torch.device) -> torch.Tensor | None:
    if config.eval_images == 0:
        return None
    test_set = load_split(config, train=False)
    return test_set.images[: config.eval_images].to(device).float().div_(255.0)


def evaluate_model(
    model: VAE, x: torch.Tensor, k: int = 100, seed: int = 0, batch_size: int = 100
) -> dict[str, float]:
    """Held-out ``eval/neg_elbo`` and (k > 0) ``eval/nll`` (IWAE, k samples), nats per image.

    Data in [0, 1] is binarized as the model was trained (dynamic: one fixed draw from
    ``seed``); all noise comes from a generator seeded with ``seed``, so the figures repeat.
    """
    generator = torch.Generator(device=x.device).manual_seed(seed)
    elbos, nlls = [], []
    with evaluating(model):
        for chunk in x.split(batch_size):
            target = model.binarize_input(chunk, generator=generator)
            elbos.append(model.elbo(target, generator=generator))
            if k > 0:
                nlls.append(-model.log_likelihood(target, k=k, generator=generator))
    metrics = {"eval/neg_elbo": torch.cat(elbos).mean().neg().item()}
    if k > 0:
        metrics["eval/nll"] = torch.cat(nlls).mean().item()
    return metrics


# --------------------------------------------------------------------------------------------
# Evaluation command
# --------------------------------------------------------------------------------------------


@dataclass
class VAEEvalConfig:
    """Held-out negative ELBO and importance-sampled NLL (nats per image) of a VAE checkpoint."""

    checkpoint: str = ""
    """checkpoint file (or run directory: its latest checkpoint)"""
    k: int = 1000
    """importance samples per image for the NLL (IWAE bound; 5000 in the IWAE paper)"""
    num_images: int | None = None
    """held-out images to evaluate (None: the whole test split)"""
    split: Literal["test", "train"] = "test"
    """which split to evaluate"""
    dataset: str | None = None
    """dataset (None: the one the checkpoint was trained on)"""
    data_root: str | None = None
    """dataset directory (None: the one the checkpoint was trained with)"""
    batch_size: int = 100
    """images per evaluation batch"""
    device: str = "auto"
    """cpu, cuda, mps or auto"""
    seed: int = 0
    """seed of the posterior samples and of the binarization draw"""

    def __post_init__(self) -> None:
        check(bool(self.checkpoint), "--checkpoint is required (a checkpoint file or run dir)")
        check(self.k >= 1, f"--k must be >= 1, got {self.k}")
        check(
            self.num_images is None or self.num_images > 0,
            f"--num-images must be > 0 (or omitted), got {self.num_images}",
        )
        check(self.batch_size > 0, f"--batch-size must be > 0, got {self.batch_size}")


def evaluate(config: VAEEvalConfig) -> dict[str, Any]:
    """``rlgen eval vae``: prints one JSON line with the figures and returns them."""
    model, x, dataset = load_for_evaluation(
        config.checkpoint, "vae", device=config.device, dataset=config.dataset,
        data_root=config.data_root, split=config.split, num_images=config.num_images,
    )
    metrics = evaluate_model(model, x, k=config.k, seed=config.seed, batch_size=config.batch_size)
    result = {
        "checkpoint": str(config.checkpoint), "dataset": dataset,
        "split": config.split, "images": int(x.shape[0]), "k": config.k,
        "binarize": model.binarize, "likelihood": model.likelihood,
        "neg_elbo_nats": metrics["eval/neg_elbo"], "nll_nats": metrics["eval/nll"],
    }
    print(json.dumps(result))
    return result


@TRAINERS.register("vae", description="Variational autoencoder (Kingma & Welling 2014, beta-VAE)")
def vae_trainer() -> TrainerSpec:
    return TrainerSpec(
        config=VAEConfig,
        train=train,
        evaluate=(VAEEvalConfig, evaluate),
        sample=(SampleConfig, functools.partial(sample_command, kind="vae")),
    )
