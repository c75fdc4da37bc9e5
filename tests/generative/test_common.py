"""Shared generative pieces: config validation, slerp, encoder/decoder shapes, batch schedules
(resumable, identical through a DataLoader), the kind registry and checkpoint loading errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rlgen.checkpoint import CheckpointError, save_checkpoint
from rlgen.generative.common import (
    ConvDecoder,
    GenerativeTrainConfig,
    LoaderBatches,
    SmallConvEncoder,
    TensorBatches,
    build_encoder,
    build_from_config,
    flat_features,
    load_generative,
    model_state,
    slerp,
    total_steps,
)
from rlgen.registry import UnknownNameError
from rlgen.runtime import torch_threads
from rlgen.vision.backbones.base import BackboneInputError


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small models: one thread is about as fast, and immune to a busy shared CPU (OpenMP
    threads spinning against other processes made a 2-thread run up to 20x slower here)."""
    with torch_threads(1):
        yield


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("batch_size", 0, "--batch-size must be > 0, got 0"),
        ("epochs", 0, "--epochs must be > 0, got 0"),
        ("max_steps", 0, "--max-steps must be > 0"),
        ("learning_rate", -1.0, "--learning-rate must be a finite number > 0, got -1.0"),
        ("learning_rate", float("nan"), "--learning-rate must be a finite number"),
        ("precision", "fp8", "--precision must be one of 32, 16-mixed, bf16-mixed"),
        ("image_size", 4, "--image-size must be >= 8"),
        ("log_every", 0, "--log-every must be > 0"),
        ("sample_every", -1, "--sample-every must be >= 0"),
        ("checkpoint_every", -5, "--checkpoint-every must be >= 0"),
        ("loader", "magic", "--loader must be tensor or dataloader"),
        ("num_workers", -1, "--num-workers must be >= 0"),
    ],
)
def test_config_validation_names_the_flag(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("+", r"\+")):
        GenerativeTrainConfig(**{field: value})


def test_every_config_field_has_help_text():
    from rlgen.cli import field_docs

    docs = field_docs(GenerativeTrainConfig)
    missing = [f.name for f in dataclasses.fields(GenerativeTrainConfig) if not docs.get(f.name)]
    assert missing == []


def test_total_steps_counts_epochs_and_respects_max_steps():
    assert total_steps(GenerativeTrainConfig(epochs=3), steps_per_epoch=10) == 30
    assert total_steps(GenerativeTrainConfig(epochs=3, max_steps=7), steps_per_epoch=10) == 7
    assert total_steps(GenerativeTrainConfig(epochs=1, max_steps=70), steps_per_epoch=10) == 10


def test_slerp_endpoints_and_norm():
    torch.manual_seed(0)
    a, b = torch.randn(4, 16), torch.randn(4, 16)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-5)
    assert torch.allclose(slerp(a, b, 1.0), b, atol=1e-5)
    # orthogonal unit vectors: every point of the arc has unit norm (a lerp midpoint has 0.707)
    e1, e2 = torch.eye(2)[:1], torch.eye(2)[1:]
    for t in (0.25, 0.5, 0.75):
        assert slerp(e1, e2, t).norm().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(slerp(a, a, 0.3), a, atol=1e-5)  # parallel: falls back to lerp


@pytest.mark.parametrize(("side", "features"), [(28, 128 * 3 * 3), (32, 128 * 4 * 4),
                                                (64, 128 * 8 * 8)])
def test_small_conv_encoder_contract(side, features):
    encoder = build_encoder("conv", in_channels=3)
    assert isinstance(encoder, SmallConvEncoder)
    x = torch.rand(2, 3, side, side)
    stages = encoder.forward_stages(x)
    assert [s.shape[1] for s in stages] == [fi.channels for fi in encoder.feature_info]
    assert [side // s.shape[-1] for s in stages][:2] == [2, 4]
    assert flat_features(encoder, (3, side, side)) == features
    with pytest.raises(BackboneInputError, match="3 input channels"):
        encoder(torch.rand(1, 1, side, side))


@pytest.mark.parametrize("side", [28, 32, 64])
def test_conv_decoder_shapes(side):
    decoder = ConvDecoder(7, (3, side, side), width=4)
    assert decoder(torch.randn(2, 7)).shape == (2, 3, side, side)


def test_conv_decoder_rejects_unsupported_sizes():
    with pytest.raises(ValueError, match="28, 32 or 64"):
        ConvDecoder(7, (1, 30, 30))
    with pytest.raises(ValueError, match="square"):
        ConvDecoder(7, (1, 28, 32))


def _images(n=50):
    return torch.arange(n, dtype=torch.uint8).reshape(n, 1, 1, 1).expand(n, 1, 2, 2).clone()


def _ids(batch):  # recover the image index stored in each pixel
    return (batch[:, 0, 0, 0] * 255).round().long().tolist()


def test_tensor_batches_shuffle_each_epoch_and_resume_exactly():
    data = TensorBatches(_images(50), batch_size=16, seed=3)
    assert data.steps_per_epoch == 3  # the incomplete last batch is dropped
    stream = data.batches(0)
    run = [_ids(next(stream)) for _ in range(9)]
    epoch0 = sum(run[:3], [])
    assert len(set(epoch0)) == 48 and run[0] != run[3]  # distinct images, reshuffled
    resumed = data.batches(4)  # from the middle of epoch 1
    assert [_ids(next(resumed)) for _ in range(5)] == run[4:]
    again = TensorBatches(_images(50), batch_size=16, seed=3).batches(0)
    assert _ids(next(again)) == run[0]
    other_seed = TensorBatches(_images(50), batch_size=16, seed=4).batches(0)
    assert _ids(next(other_seed)) != run[0]


def test_tensor_batches_are_floats_in_unit_range():
    batch = next(TensorBatches(torch.full((4, 1, 2, 2), 255, dtype=torch.uint8), 2).batches())
    assert batch.dtype == torch.float32 and batch.max().item() == 1.0


def test_dataloader_batches_match_tensor_batches():
    from rlgen.data.base import ImageDataset

    dataset = ImageDataset(_images(40), torch.zeros(40, dtype=torch.long))
    tensor = TensorBatches(dataset.images, 8, seed=1).batches(3)
    loader = LoaderBatches(dataset, 8, seed=1).batches(3)
    for _ in range(7):
        assert torch.equal(next(tensor), next(loader))


def test_unknown_kind_and_foreign_checkpoints(tmp_path):
    with pytest.raises(UnknownNameError, match="unknown generative model kind 'gan9'; known:.*vae"):
        build_from_config("gan9", {})
    foreign = save_checkpoint({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an rlgen generative-model checkpoint"):
        load_generative(foreign)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="truncated or not a torch checkpoint"):
        load_generative(junk)
    unknown = save_checkpoint({"kind": "gan9", "model_config": {}, "model": {}},
                              tmp_path / "unknown.pt")
    with pytest.raises(CheckpointError, match="gan9"):
        load_generative(unknown)


def test_mismatched_weights_give_a_checkpoint_error(tmp_path):
    from rlgen.generative.vae import VAE

    state = model_state("vae", VAE((1, 28, 28), latent_dim=4, width=4))
    state["model_config"]["latent_dim"] = 5
    path = save_checkpoint(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="do not fit the stored model_config"):
        load_generative(path)
