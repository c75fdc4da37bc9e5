"""The generative model base: slerp, the registry of kinds, and loading checkpoints (clear
errors for foreign, corrupt and mismatched files)."""

from __future__ import annotations

import pytest
import torch

from rlgen.checkpoint import CheckpointError, save_checkpoint
from rlgen.generative.model import (
    build_from_config,
    load_generative,
    model_checkpoint,
    slerp,
)
from rlgen.registry import UnknownNameError
from rlgen.runtime import torch_threads


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


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


def test_unknown_kind_and_foreign_checkpoints(tmp_path):
    with pytest.raises(UnknownNameError, match="generative model 'gan9'.*rlgen list trainers"):
        build_from_config("gan9", {})
    foreign = save_checkpoint({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an rlgen generative-model checkpoint"):
        load_generative(foreign)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="truncated or not a torch checkpoint"):
        load_generative(junk)
    unknown = save_checkpoint({"meta": {"kind": "gan9", "model_config": {}},
                               "state": {"model": {}}}, tmp_path / "unknown.pt")
    with pytest.raises(CheckpointError, match="gan9"):
        load_generative(unknown)


def test_mismatched_weights_give_a_checkpoint_error(tmp_path):
    from rlgen.generative.vae import VAE

    state = model_checkpoint(VAE((1, 28, 28), latent_dim=4, width=4))
    state["meta"]["model_config"]["latent_dim"] = 5
    path = save_checkpoint(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="do not fit the stored model_config"):
        load_generative(path)


def test_model_checkpoint_round_trips_and_loads_from_a_loaded_dict(tmp_path):
    from rlgen.generative.vae import VAE

    model = VAE((1, 28, 28), latent_dim=3, width=4, batch_norm=False)
    state = model_checkpoint(model)
    path = save_checkpoint(state, tmp_path / "vae.pt")
    for source in (path, state):
        loaded = load_generative(source)
        assert loaded.model_config == model.model_config and not loaded.training
        torch.testing.assert_close(loaded.sample(3, seed=2), model.sample(3, seed=2))
