"""DCGAN: Radford, Metz, Chintala, "Unsupervised Representation Learning with Deep Convolutional
Generative Adversarial Networks" (ICLR 2016), trained as in Goodfellow et al., "Generative
Adversarial Nets" (NeurIPS 2014) with the non-saturating generator loss.

- Generator: a latent ``z`` ``(N, 100, 1, 1)`` goes through a transposed convolution to an
  ``s x s`` map (``s`` = 4 for 32 / 64, 7 for 28), then 4x4 stride-2 transposed convolutions,
  each doubling the side and halving the channels, with batch norm and ReLU; the last one has
  no batch norm and a tanh. At 64x64, 3 channels, width 64 it is pytorch/examples' ``netG``
  (3,576,704 parameters, same ``main.N`` parameter names).
- Discriminator: a convolutional trunk, registered as the backbone ``dcgan_discriminator``
  (4x4 stride-2 convolutions, LeakyReLU 0.2, batch norm on every layer but the first), then a
  flatten whose size is measured with one dummy forward and a linear layer to one logit (the
  same map as pytorch/examples' last 4x4 convolution). Any registered backbone can replace the
  trunk: ``--discriminator resnet18``.
- No sigmoid at the end of the discriminator: losses use ``BCEWithLogitsLoss`` (stable, and
  allowed under CUDA autocast where ``BCELoss`` is not).
- Weights from N(0, 0.02), batch-norm scales from N(1, 0.02); Adam, lr 2e-4, betas (0.5, 0.999).
- Mixed precision with one ``rlgen.runtime.Precision`` (one loss scaler) per optimizer.

Images are in [-1, 1] inside the GAN (tanh); ``generate`` / ``sample`` return them in [0, 1].
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from rlgen.distributed import no_sync
from rlgen.errors import InputError
from rlgen.generative.config import GenerativeTrainConfig, load_split, make_batches
from rlgen.generative.model import GenerativeModel, model_meta, register_generative
from rlgen.generative.nets import upsampling_plan
from rlgen.registry import TRAINERS
from rlgen.training import TrainingRun, check, total_steps
from rlgen.vision.backbones import create_backbone
from rlgen.vision.backbones.base import Backbone
from rlgen.vision.backbones.dcgan_discriminator import (
    DEFAULT_DISCRIMINATOR,
    DCGANDiscriminatorTrunk,
    dcgan_init,
)

# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------


class DCGANGenerator(nn.Module):
    """``z`` ``(N, latent_dim)`` or ``(N, latent_dim, 1, 1)`` -> images in [-1, 1].

    ``batch_norm=False`` drops the batch norms (biased transposed convolutions instead): the
    "DCGAN without batch normalization" of Arjovsky et al. 2017's comparisons."""

    def __init__(
        self, latent_dim: int = 100, out_channels: int = 3, image_size: int = 64, width: int = 64,
        batch_norm: bool = True,
    ):
        super().__init__()
        if latent_dim < 1 or out_channels < 1 or width < 1:
            raise ValueError(
                f"latent_dim, out_channels and width must be >= 1, got {latent_dim}, "
                f"{out_channels}, {width}"
            )
        start, ups = upsampling_plan(image_size)
        self.latent_dim, self.image_size = latent_dim, image_size
        channels = width * 2 ** (ups - 1)

        def norm(c: int) -> list[nn.Module]:
            return [nn.BatchNorm2d(c)] if batch_norm else []

        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, channels, start, 1, 0, bias=not batch_norm),
            *norm(channels),
            nn.ReLU(True),
        ]
        for _ in range(ups - 1):
            layers += [
                nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1, bias=not batch_norm),
                *norm(channels // 2),
                nn.ReLU(True),
            ]
            channels //= 2
        layers += [nn.ConvTranspose2d(channels, out_channels, 4, 2, 1, bias=False), nn.Tanh()]
        # One Sequential named `main`, as in pytorch/examples, so its netG state dicts load.
        self.main = nn.Sequential(*layers)
        dcgan_init(self)

    def latent_map(self, z: torch.Tensor) -> torch.Tensor:
        """``(N, latent_dim)`` or ``(N, latent_dim, 1, 1)`` -> ``(N, latent_dim, 1, 1)``."""
        if z.dim() == 2:
            z = z[:, :, None, None]
        if z.dim() != 4 or z.shape[1:] != (self.latent_dim, 1, 1):
            raise ValueError(
                f"the generator takes latents (N, {self.latent_dim}) or (N, {self.latent_dim}, "
                f"1, 1), got {tuple(z.shape)}"
            )
        return z

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(self.latent_map(z))


def fold_batch_norm(layers: nn.Sequential) -> nn.Sequential:
    """A copy of ``layers`` for inference where each ``BatchNorm2d`` right after a (transposed)
    convolution is folded into it: ``bn(conv(x)) = conv'(x)`` with the running statistics.

    Saves the batch-norm passes over every activation; the result equals the eval-mode
    original up to float rounding.
    """
    modules = list(layers)
    folded: list[nn.Module] = []
    i = 0
    while i < len(modules):
        m = modules[i]
        nxt = modules[i + 1] if i + 1 < len(modules) else None
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(nxt, nn.BatchNorm2d) \
                and nxt.track_running_stats and m.groups == 1:  # fmt: skip
            scale = nxt.weight / torch.sqrt(nxt.running_var + nxt.eps)
            shift = nxt.bias - nxt.running_mean * scale
            conv = copy.deepcopy(m)
            # Conv2d weights are (out, in, kh, kw), ConvTranspose2d weights (in, out, kh, kw).
            view = (1, -1, 1, 1) if isinstance(m, nn.ConvTranspose2d) else (-1, 1, 1, 1)
            conv.weight = nn.Parameter(m.weight * scale.view(view), requires_grad=False)
            bias = shift if m.bias is None else m.bias * scale + shift
            conv.bias = nn.Parameter(bias, requires_grad=False)
            folded.append(conv)
            i += 2
        else:
            folded.append(copy.deepcopy(m))
            i += 1
    return nn.Sequential(*folded).eval().requires_grad_(False)


def _state_key(module: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer is modified in place (optimizer steps, batch-norm
    statistics, load_state_dict) or replaced (``.to(device)``)."""
    return tuple(
        (t.data_ptr(), t._version, t.dtype, t.device)
        for t in itertools.chain(module.parameters(), module.buffers())
    )


class DCGANDiscriminator(nn.Module):
    """A backbone, a flatten of its measured size, and a linear layer to one logit.

    The head has no bias, as pytorch/examples' last convolution, which it equals exactly for
    the DCGAN trunk (2,765,568 parameters at 64x64, 3 channels, width 64).
    """

    def __init__(self, trunk: Backbone, image_shape: tuple[int, int, int]):
        super().__init__()
        self.trunk = trunk
        name = getattr(trunk, "name", type(trunk).__name__)
        try:
            shape = trunk.feature_shape(tuple(image_shape))
        except ValueError as exc:  # BackboneInputError: too small an image for this backbone
            raise InputError(
                f"--discriminator {name} cannot take the {image_shape[1]}x{image_shape[2]} "
                f"images of this DCGAN: {exc}"
            ) from None
        self.num_features = int(math.prod(shape))
        self.head = nn.Linear(self.num_features, 1, bias=False)
        nn.init.normal_(self.head.weight, 0.0, 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> logits ``(N,)``."""
        return self.head(self.trunk.forward_features(x).flatten(1)).squeeze(1)


def discriminator_stages(image_size: int) -> int:
    """Halve the image down to a 3x3..5x5 map: 64 -> 4 stages (4x4), 32 -> 3 (4x4),
    28 -> 3 (3x3)."""
    stages = 0
    while image_size // 2 ** (stages + 1) >= 3:
        stages += 1
    return max(stages, 1)


def build_discriminator(
    name: str, channels: int, image_size: int, width: int = 64, batch_norm: bool = True
) -> DCGANDiscriminator:
    """The DCGAN trunk sized to mirror the generator, or any registered backbone ``name``."""
    if name == DEFAULT_DISCRIMINATOR:
        trunk = create_backbone(
            name, in_channels=channels, width=width, num_stages=discriminator_stages(image_size),
            batch_norm=batch_norm,
        )
    else:
        # Other backbones keep their own initialization (He init for ResNets, ...).
        trunk = create_backbone(name, in_channels=channels)
    return DCGANDiscriminator(trunk, (channels, image_size, image_size))


@register_generative("dcgan")
class DCGAN(GenerativeModel):
    """Generator + discriminator; ``generate(z)`` gives images in [0, 1]."""

    def __init__(
        self,
        latent_dim: int = 100,
        channels: int = 3,
        image_size: int = 64,
        generator_width: int = 64,
        discriminator: str = DEFAULT_DISCRIMINATOR,
        discriminator_width: int = 64,
        batch_norm: bool = True,
    ):
        super().__init__()
        self.latent_dim = latent_dim
        self.image_shape = (channels, image_size, image_size)
        self.model_config = {
            "latent_dim": latent_dim,
            "channels": channels,
            "image_size": image_size,
            "generator_width": generator_width,
            "discriminator": discriminator,
            "discriminator_width": discriminator_width,
            "batch_norm": batch_norm,
        }
        self.generator = DCGANGenerator(latent_dim, channels, image_size, generator_width,
                                        batch_norm)
        self.discriminator = build_discriminator(
            discriminator, channels, image_size, discriminator_width, batch_norm
        )

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.latent_dim, 1, 1)

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [0, 1].

        When sampling (eval mode, no autograd: ``sample``, ``interpolate``, ``rlgen sample``)
        this runs ``fast_generator()``: the same function with batch norm folded into the
        convolutions, in channels_last (1.3x faster than the plain generator on CPU, see
        benchmarks/generative.py).
        """
        if self.training or torch.is_grad_enabled():
            images = self.generator(z)
        else:
            images = self.fast_generator()(self.generator.latent_map(z))
        return images.float().add_(1.0).mul_(0.5)

    def fast_generator(self) -> nn.Sequential:
        """An inference copy of the generator (batch norm folded, channels_last), rebuilt
        whenever a parameter or batch-norm statistic changed since it was made."""
        key = _state_key(self.generator)
        cached = self.__dict__.get("_fast_generator")  # not a submodule: no state_dict entry
        if cached is None or cached[0] != key:
            with torch.no_grad():
                net = fold_batch_norm(self.generator.main)
            # Measured on CPU (benchmarks/generative.py); on CUDA channels_last is cuDNN's
            # preferred layout for tensor cores. Other devices keep the default layout.
            if net[0].weight.device.type in ("cpu", "cuda"):
                net = net.to(memory_format=torch.channels_last)
            self.__dict__["_fast_generator"] = cached = (key, net)
        return cached[1]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generate(z)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass
class DCGANConfig(GenerativeTrainConfig):
    """Train a DCGAN (Radford et al. 2015) on an image dataset."""

    fixed_on_resume: ClassVar[tuple[str, ...]] = (
        *GenerativeTrainConfig.fixed_on_resume, "latent_dim", "generator_width",
        "discriminator", "discriminator_width")

    learning_rate: float = 2e-4
    """Adam learning rate of both networks (Radford et al.: 0.0002)"""
    batch_size: int = 128
    """images per step (Radford et al.: 128; pytorch/examples: 64)"""
    epochs: int = 25
    """passes over the training split (pytorch/examples: 25)"""
    latent_dim: int = 100
    """size of the noise vector z"""
    generator_width: int = 64
    """channels of the generator's last hidden layer (ngf); earlier layers have 2x, 4x, 8x"""
    discriminator: str = DEFAULT_DISCRIMINATOR
    """discriminator trunk: dcgan_discriminator or any registered backbone (resnet18, ...)"""
    discriminator_width: int = 64
    """channels of the first discriminator layer (ndf; only for dcgan_discriminator)"""
    beta1: float = 0.5
    """Adam beta1 (Radford et al.: 0.5, the default 0.9 oscillated)"""
    beta2: float = 0.999
    """Adam beta2"""
    num_grid_samples: int = 64
    """images in the samples/generated grid, drawn from one fixed noise batch"""
    channels_last: bool = True
    """channels_last memory format (on by default: faster for the DCGAN on CPU, see
    benchmarks/generative.py; --no-channels-last to turn it off)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.latent_dim >= 1, f"--latent-dim must be >= 1, got {self.latent_dim}")
        check(self.generator_width >= 1 and self.discriminator_width >= 1,
              f"--generator-width and --discriminator-width must be >= 1, got "
              f"{self.generator_width} and {self.discriminator_width}")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            check(0.0 <= value < 1.0, f"--{name} must be in [0, 1), got {value}")
        check(self.num_grid_samples >= 1,
              f"--num-grid-samples must be >= 1, got {self.num_grid_samples}")
        if self.image_size is not None:
            upsampling_plan(self.image_size)
        from rlgen.registry import BACKBONES

        BACKBONES.get(self.discriminator)  # an unknown name fails now, listing the closest


def gan_losses_d(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator loss: -log D(x) - log(1 - D(G(z))), on logits."""
    return F.binary_cross_entropy_with_logits(
        logits_real, torch.ones_like(logits_real)
    ) + F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake))


def gan_loss_g(logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: -log D(G(z)) (Goodfellow et al. 2014, section 3)."""
    return F.binary_cross_entropy_with_logits(logits_fake, torch.ones_like(logits_fake))


def train_step(
    generator: nn.Module,
    discriminator: nn.Module,
    real: torch.Tensor,
    z: torch.Tensor,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    prec_g: Any,
    prec_d: Any,
) -> dict[str, torch.Tensor]:
    """One DCGAN step on ``real`` images in [-1, 1] and latents ``z`` (one per image);
    returns detached scalar tensors.

    Real and fake images go through the discriminator as separate batches (their batch-norm
    statistics stay separate, as in the paper). The fake batch of the discriminator step is
    reused for the generator step, as pytorch/examples does.
    """
    # (1) discriminator: push D(x) -> 1 and D(G(z)) -> 0
    with prec_g.autocast():
        fake = generator(z)
    with prec_d.autocast():
        logits_real = discriminator(real)
        logits_fake = discriminator(fake.detach())
        loss_d = gan_losses_d(logits_real.float(), logits_fake.float())
    opt_d.zero_grad(set_to_none=True)
    prec_d.step(loss_d, opt_d)

    # (2) generator: push D(G(z)) -> 1. The discriminator's weights need no gradient here;
    # freezing them skips a third of its backward pass (the weight gradients), and under DDP
    # `no_sync` keeps this pass out of the discriminator's gradient exchange.
    discriminator.requires_grad_(False)
    try:
        with no_sync(discriminator), prec_g.autocast():
            logits_gen = discriminator(fake)
            loss_g = gan_loss_g(logits_gen.float())
        opt_g.zero_grad(set_to_none=True)
        prec_g.step(loss_g, opt_g)
    finally:
        discriminator.requires_grad_(True)
    return {
        "loss_d": loss_d.detach(),
        "loss_g": loss_g.detach(),
        "D_x": torch.sigmoid(logits_real.detach().float()).mean(),
        "D_G_z": torch.sigmoid(logits_fake.detach().float()).mean(),
        "D_G_z2": torch.sigmoid(logits_gen.detach().float()).mean(),
    }


def build_model(config: DCGANConfig, channels: int, image_size: int) -> DCGAN:
    return DCGAN(
        latent_dim=config.latent_dim,
        channels=channels,
        image_size=image_size,
        generator_width=config.generator_width,
        discriminator=config.discriminator,
        discriminator_width=config.discriminator_width,
        batch_norm=config.batch_norm,
    )


def train(config: DCGANConfig, progress: bool | None = None) -> dict[str, Any]:
    """Train a DCGAN; returns the final metrics, the run directory and the last checkpoint."""
    from rlgen.runtime import Precision, to_memory_format

    with TrainingRun("dcgan", config, progress=progress) as run:
        config = run.config  # with --resume: the saved config and the flags given now
        dataset = load_split(config, train=True)
        channels, height, width = (int(s) for s in dataset.images.shape[1:])
        if height != width:
            raise InputError(f"DCGAN needs square images, {config.dataset} has "
                             f"{height}x{width}; pass --image-size")
        upsampling_plan(height)  # a clear error for an unsupported native size
        model = build_model(config, channels, height).to(run.device)
        betas = (config.beta1, config.beta2)
        opt_g = torch.optim.Adam(model.generator.parameters(), lr=config.learning_rate,
                                 betas=betas)
        opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=config.learning_rate,
                                 betas=betas)
        # One Precision per optimizer: each loss scaler tracks its own network's overflows.
        prec_g = Precision(config.precision, run.device)
        prec_d = Precision(config.precision, run.device)
        data = make_batches(config, dataset, run)
        batch = data.batch_size  # global batch
        fixed_noise = model.prior_latents(config.num_grid_samples, seed=config.seed)

        run.start(total_steps(config, data.steps_per_epoch),
                  {"model": model, "optimizer_g": opt_g, "optimizer_d": opt_d,
                   "precision_g": prec_g, "precision_d": prec_d},
                  meta=model_meta(model), items_per_step=batch)
        # The optimizers hold the original parameters; the wrappers (DDP, compile) run them.
        generator = run.prepare(model.generator)
        discriminator = run.prepare(model.discriminator)
        model.train()
        step, metrics = run.start_step, {}
        for step, (images, _) in run.steps(data):
            real = to_memory_format(images * 2.0 - 1.0, config.channels_last)
            # Latents for the global batch, each process keeps its rows (rlgen.distributed).
            z = run.shard(torch.randn(batch, config.latent_dim, 1, 1, device=run.device))
            out = train_step(generator, discriminator, real, z, opt_g, opt_d, prec_g, prec_d)
            if run.due(step, config.log_every):
                metrics = run.log(step, {
                    **{f"train/{k}": v for k, v in out.items()},
                    "train/skipped_steps_g": prec_g.skipped_steps,
                    "train/skipped_steps_d": prec_d.skipped_steps,
                }, show=("train/loss_d", "train/loss_g"))
            if run.due(step, config.sample_every):
                run.save_grid("generated", model.generate_batched(fixed_noise), step)
                model.train()
        return run.finish(step, {k: v for k, v in metrics.items() if k.startswith("train/")})


# --------------------------------------------------------------------------------------------
# The CLI entry (`rlgen train|eval|sample dcgan`)
# --------------------------------------------------------------------------------------------


@TRAINERS.register("dcgan", description="DCGAN (Radford et al. 2015) on image datasets")
def dcgan_trainer():
    """DCGAN (Radford et al. 2015) on image datasets."""
    from rlgen.cli_spec import TrainerSpec
    from rlgen.generative.metrics import GenerativeEvalConfig, evaluate_checkpoint
    from rlgen.generative.sampling import SampleConfig, sample_command

    return TrainerSpec(
        config=DCGANConfig,
        train=train,
        evaluate=(GenerativeEvalConfig, evaluate_checkpoint),
        sample=(SampleConfig, functools.partial(sample_command, kind="dcgan")),
    )


__all__ = [
    "DCGAN",
    "DCGANConfig",
    "DCGANDiscriminator",
    "DCGANDiscriminatorTrunk",
    "DCGANGenerator",
    "build_discriminator",
    "dcgan_init",
    "train",
    "train_step",
]
