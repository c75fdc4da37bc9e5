"""Deterministic sampling, interpolation strips and `rlgen sample` (grid, files, strips)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from rlgen.checkpoint import save_checkpoint
from rlgen.generative.model import model_checkpoint
from rlgen.generative.sampling import SampleConfig, sample_command
from rlgen.generative.vae import VAE
from rlgen.runtime import torch_threads


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small models: one thread is about as fast, and immune to a busy shared CPU (OpenMP
    threads spinning against other processes made a 2-thread run up to 20x slower here)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = VAE((1, 28, 28), latent_dim=6, width=4)
    with torch.no_grad():  # give the decoder's batch norms non-trivial running statistics
        m.train()
        for _ in range(3):
            m.decoder(torch.randn(32, 6))
    return m.eval()


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    return save_checkpoint(model_checkpoint(model), tmp_path_factory.mktemp("ckpt") / "vae.pt")


def test_sample_is_deterministic_for_a_seed_and_batch_size_free(model):
    a = model.sample(10, seed=7)
    assert a.shape == (10, 1, 28, 28) and a.dtype == torch.float32
    assert torch.equal(a, model.sample(10, seed=7))
    assert torch.allclose(a, model.sample(10, seed=7, batch_size=3), atol=1e-6)
    assert not torch.allclose(a, model.sample(10, seed=8))
    assert torch.equal(model.sample(4, seed=7), a[:4])  # a prefix of the same latents


def test_sampling_leaves_global_rng_and_training_mode_alone(model):
    state = torch.get_rng_state()
    model.train()
    try:
        model.sample(5, seed=1)
        assert model.training
    finally:
        model.eval()
    assert torch.equal(state, torch.get_rng_state())


def test_interpolation_strips_run_between_prior_draws(model):
    strips = model.interpolate(steps=5, seed=2, rows=3)
    assert strips.shape == (15, 1, 28, 28)
    ends = model.prior_latents(6, seed=2)
    starts = model.generate_batched(ends[:3])
    finishes = model.generate_batched(ends[3:])
    assert torch.allclose(strips[0::5], starts, atol=1e-5)
    assert torch.allclose(strips[4::5], finishes, atol=1e-5)
    with pytest.raises(ValueError, match="steps >= 2"):
        model.interpolate(steps=1)


def test_sample_command_writes_a_grid(checkpoint, tmp_path, model):
    out = tmp_path / "grid.png"
    result = sample_command(SampleConfig(checkpoint=str(checkpoint), num=12, seed=3,
                                         out=str(out), device="cpu"), kind="vae")
    assert torch.equal(result["images"], model.sample(12, seed=3))
    width, height = Image.open(out).size
    assert (width, height) == (8 * 30 + 2, 2 * 30 + 2)  # 8 per row, 2-pixel padding


def test_sample_command_writes_individual_files(checkpoint, tmp_path):
    out = tmp_path / "files"
    sample_command(SampleConfig(checkpoint=str(checkpoint), num=5, out=str(out), format="png",
                                device="cpu"))
    files = sorted(p.name for p in out.iterdir())
    assert files == [f"{i:05d}.png" for i in range(5)]
    assert Image.open(out / files[0]).size == (28, 28)


def test_sample_command_interpolation_strips(checkpoint, tmp_path):
    out = tmp_path / "strips.png"
    result = sample_command(SampleConfig(checkpoint=str(checkpoint), num=20, steps=10,
                                         interpolate=True, out=str(out), device="cpu"))
    assert result["images"].shape[0] == 20
    assert Image.open(out).size == (10 * 30 + 2, 2 * 30 + 2)  # one strip per row


def test_sample_command_checks_kind_and_output(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="use `rlgen sample vae`"):
        sample_command(SampleConfig(checkpoint=str(checkpoint), out=str(tmp_path / "a.png"),
                                    device="cpu"), kind="dcgan")
    with pytest.raises(ValueError, match="must be an image file"):
        sample_command(SampleConfig(checkpoint=str(checkpoint), out=str(tmp_path / "dir"),
                                    device="cpu"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({}, "--checkpoint is required"), ({"checkpoint": "x", "num": 0}, "--num must be >= 1"),
     ({"checkpoint": "x", "steps": 1}, "--steps must be >= 2"),
     ({"checkpoint": "x", "format": "gif"}, "--format must be grid, png or jpg")],
)
def test_sample_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SampleConfig(**kwargs)


def test_cli_sample(checkpoint, tmp_path, capsys):
    from rlgen.cli import main

    out = tmp_path / "cli.png"
    assert main(["sample", "vae", "--checkpoint", str(checkpoint), "--num", "8", "--seed", "1",
                 "--out", str(out), "--device", "cpu"]) == 0
    assert out.exists() and "wrote 8 vae images" in capsys.readouterr().out
    assert main(["sample", "vae", "--checkpoint", str(checkpoint), "--num", "0"]) == 2
    assert "--num must be >= 1" in capsys.readouterr().err
