"""Sampling determinism across devices: the README's "same images for a seed on CPU or GPU".

Run on a machine with a GPU, from the repo root: `python -m pytest -q gpu_tests`. Like every
test in gpu_tests/, these fail (not skip) without CUDA.

``model.sample(16, seed=3)`` draws its latents on the CPU from the seed, so the CPU and the GPU
decode the same latents; the images may differ only by kernel rounding. Tolerances (images in
[0, 1], absolute, per pixel):
- ATOL = 1/255, one 8-bit grey level (the README's promise is about pictures), with PyTorch's
  default settings, where cuDNN runs convolutions in TF32 (inputs rounded to 10 mantissa bits,
  ~5e-4 relative per layer; estimated worst pixel ~2e-3 for these decoders);
- ATOL_FP32 = 1e-4 with TF32 off (``torch.backends.cudnn.allow_tf32 = False``): float32
  kernels that differ from the CPU's only in summation order and algorithm.
The check is not vacuous: the images of another seed differ from these by more than 10 x ATOL.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn

from rlgen.generative.autoencoder import ConvAutoencoder
from rlgen.generative.dcgan import DCGAN
from rlgen.generative.vae import VAE

DEVICE = "cuda"
ATOL = 1 / 255  # PyTorch's defaults: TF32 convolutions
ATOL_FP32 = 1e-4  # TF32 off


@pytest.fixture(autouse=True)
def _needs_cuda():
    assert torch.cuda.is_available(), "gpu_tests need a CUDA device"


@contextlib.contextmanager
def tf32_off():
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def calibrate_batch_norm(model: nn.Module, batches: int = 4, n: int = 64) -> None:
    """Running batch-norm statistics from a few seeded batches of prior latents (cumulative
    averages), as training would leave them: the DCGAN's N(0, 0.02) initial weights with the
    default statistics make images that hardly depend on z (a seed-to-seed spread ~1e-3)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    generator = torch.Generator().manual_seed(1)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model.generate(torch.randn(n, *model.latent_shape, generator=generator))
    model.eval()


def build(kind: str) -> nn.Module:
    """A small MNIST-shaped model built and calibrated from fixed seeds, on the CPU."""
    torch.manual_seed(0)
    if kind == "vae":
        model = VAE((1, 28, 28), latent_dim=8, width=8)
    elif kind == "autoencoder":
        model = ConvAutoencoder((1, 28, 28), latent_dim=8, width=8)
    else:
        model = DCGAN(latent_dim=16, channels=1, image_size=28, generator_width=8,
                      discriminator_width=8)
    calibrate_batch_norm(model)
    return model


@pytest.mark.parametrize("kind", ["vae", "autoencoder", "dcgan"])
def test_a_seed_gives_the_same_images_on_cpu_and_cuda(kind):
    model = build(kind)
    on_cpu = model.sample(16, seed=3)
    gpu_model = copy.deepcopy(model).to(DEVICE)
    on_gpu = gpu_model.sample(16, seed=3)  # the model's device
    assert on_gpu.shape == on_cpu.shape == (16, 1, 28, 28)
    assert on_gpu.device.type == "cpu" and on_gpu.dtype == torch.float32
    if kind == "dcgan":  # sampling ran the batch-norm-folded copy, on the GPU
        assert gpu_model.fast_generator()[0].weight.device.type == "cuda"
    torch.testing.assert_close(on_gpu, on_cpu, rtol=0, atol=ATOL)
    # the same through the explicit device argument, and for another batch size
    torch.testing.assert_close(gpu_model.sample(16, seed=3, device=DEVICE), on_cpu, rtol=0,
                               atol=ATOL)
    torch.testing.assert_close(gpu_model.sample(16, seed=3, batch_size=5), on_cpu, rtol=0,
                               atol=ATOL)
    with tf32_off():
        torch.testing.assert_close(gpu_model.sample(16, seed=3), on_cpu, rtol=0,
                                   atol=ATOL_FP32)
    spread = (model.sample(16, seed=4) - on_cpu).abs().max().item()
    assert spread > 10 * ATOL, f"images hardly depend on the seed ({spread:.2g}): vacuous"
