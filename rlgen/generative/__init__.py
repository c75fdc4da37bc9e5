"""Generative models on the shared backbones: autoencoder, VAE, DCGAN.

``rlgen.generative.load(path)`` rebuilds any of them from a checkpoint written by
``rlgen train vae|autoencoder|dcgan`` (a file or a run directory)::

    model = rlgen.generative.load("runs/vae__mnist__0__1700000000")
    images = model.sample(64, seed=0)          # (64, C, H, W) float in [0, 1], CPU
    strip = model.interpolate(steps=10, seed=1)

Rooms: ``model.py`` (the base class, the registry of kinds, ``load``), ``nets.py`` (the conv
encoder / decoder), ``config.py`` (the trainers' shared config and data), one module per model
(``vae.py``, ``autoencoder.py``, ``dcgan.py``, each with its training loop), ``sampling.py``
(``rlgen sample``) and ``metrics.py`` (FID / IS). The model modules are imported on first use.
"""

from rlgen.generative.config import GenerativeTrainConfig
from rlgen.generative.model import (
    GENERATIVE_MODELS,
    GenerativeModel,
    build_from_config,
    load,
    load_generative,
    model_checkpoint,
    register_generative,
    slerp,
)

__all__ = [
    "GENERATIVE_MODELS",
    "GenerativeModel",
    "GenerativeTrainConfig",
    "build_from_config",
    "load",
    "load_generative",
    "model_checkpoint",
    "register_generative",
    "slerp",
]
