"""Generative models on the shared backbones: autoencoder, VAE, DCGAN.

``rlgen.generative.load(path)`` rebuilds any of them from a checkpoint written by
``rlgen train vae|autoencoder|dcgan``::

    model = rlgen.generative.load("runs/vae__mnist__0__1700000000/checkpoints/ckpt_000004680.pt")
    images = model.sample(64, seed=0)          # (64, C, H, W) float in [0, 1], CPU
    strip = model.interpolate(steps=10, seed=1)

The model modules are imported on first use (``load`` imports the one a checkpoint needs).
"""

from rlgen.generative.common import (
    GENERATIVE_MODELS,
    GenerativeModel,
    GenerativeTrainConfig,
    build_from_config,
    load_generative,
    register_generative,
    slerp,
)

load = load_generative

__all__ = [
    "GENERATIVE_MODELS",
    "GenerativeModel",
    "GenerativeTrainConfig",
    "build_from_config",
    "load",
    "load_generative",
    "register_generative",
    "slerp",
]
