import random

import numpy as np
import pytest
import torch
from torch import nn

from rlgen.checkpoint import (
    CheckpointError,
    CheckpointManager,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from rlgen.runtime import Precision, seed_everything


def _build():
    model = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.2), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    return model, opt


def _train(model, opt, prec, start, stop):
    """Each step draws its data from python, numpy and torch RNGs, so any RNG that is not
    restored on resume changes the result."""
    for _ in range(start, stop):
        noise = random.random() + float(np.random.rand())
        x = torch.randn(16, 6)
        y = x.sum(dim=1, keepdim=True) + noise
        opt.zero_grad(set_to_none=True)
        with prec.autocast():
            loss = (model(x).float() - y).pow(2).mean()
        prec.step(loss, opt, clip_grad_norm=5.0)


def _state(model, opt, prec, step):
    return {"model": model.state_dict(), "optimizer": opt.state_dict(),
            "precision": prec.state_dict(), "step": step, "rng": rng_state(),
            "config": {"lr": 1e-2, "name": "toy"}}


@pytest.mark.parametrize("precision", ["32", "16-mixed"])
def test_resumed_run_matches_uninterrupted_run(tmp_path, precision):
    n = 15
    seed_everything(7)
    model, opt = _build()
    prec = Precision(precision)
    _train(model, opt, prec, 0, 2 * n)
    uninterrupted = [p.detach().clone() for p in model.parameters()]

    seed_everything(7)
    model, opt = _build()
    prec = Precision(precision)
    _train(model, opt, prec, 0, n)
    manager = CheckpointManager(tmp_path / "checkpoints")
    manager.save(_state(model, opt, prec, n), step=n)
    del model, opt, prec
    # Scramble every generator: resuming must not depend on the process's current state.
    seed_everything(999)

    state = manager.load_latest()
    model, opt = _build()
    prec = Precision(precision)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    prec.load_state_dict(state["precision"])
    set_rng_state(state["rng"])
    assert state["step"] == n and state["config"]["name"] == "toy"
    _train(model, opt, prec, state["step"], 2 * n)
    for p, q in zip(model.parameters(), uninterrupted):
        assert torch.equal(p, q)


def test_keep_last_and_latest(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    assert manager.latest() is None and manager.load_latest() is None
    for step in (5, 10, 100, 1000):
        manager.save({"step": step}, step)
    assert [p.name for p in manager.checkpoints()] == ["ckpt_000000100.pt", "ckpt_000001000.pt"]
    assert load_checkpoint(tmp_path)["step"] == 1000  # a directory loads its latest checkpoint
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointManager(tmp_path, keep_last=0)


def test_crash_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def crashing_save(obj, f):
        f.write(b"PK\x03\x04 partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left behind


class ForeignObject:
    """Not a tensor or plain data: weights_only loading must refuse it."""


def test_truncated_foreign_and_missing_files_name_the_file(tmp_path):
    good = save_checkpoint({"w": torch.randn(1000)}, tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="truncated.pt: it is truncated"):
        load_checkpoint(truncated)

    torch.save({"obj": ForeignObject()}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="foreign.pt holds objects other than tensors"):
        load_checkpoint(tmp_path / "foreign.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="list.pt holds a list"):
        load_checkpoint(tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="missing.pt does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "empty")
