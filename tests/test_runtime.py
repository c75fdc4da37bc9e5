import random

import numpy as np
import pytest
import torch
from torch import nn

from rlgen.runtime import (
    PRECISIONS,
    NonFiniteLossError,
    Precision,
    prepare_module,
    resolve_device,
    seed_everything,
    to_memory_format,
)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    expected = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    assert resolve_device("auto").type == expected  # the best device present, CUDA first
    with pytest.raises(ValueError, match="--device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_unknown_precision_is_a_clear_error():
    with pytest.raises(ValueError, match="--precision must be one of 32, 16-mixed, bf16-mixed"):
        Precision("fp8")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_precision_trains_a_small_regression(precision):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    x = torch.randn(256, 8)
    y = x[:, :1] * 2 - x[:, 1:2]
    prec = Precision(precision)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        opt.zero_grad(set_to_none=True)
        with prec.autocast():
            out = model(x)
            if precision != "32":
                assert out.dtype == prec.dtype  # the matmuls really ran in low precision
            loss = (out.float() - y).pow(2).mean()
        prec.step(loss, opt, clip_grad_norm=1.0)
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    assert prec.skipped_steps == 0


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_an_inf_gradient_without_a_loss_scaler_raises_and_leaves_the_weights(precision, clip):
    model = nn.Linear(4, 1)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    prec = Precision(precision)
    with prec.autocast():
        loss = model(torch.ones(2, 4)).float().sum() * float("nan")
    with pytest.raises(NonFiniteLossError, match=f"--precision {precision}.*diverged"):
        prec.step(loss, opt, clip_grad_norm=clip)
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)


@pytest.mark.parametrize("clip", [None, 1.0])
def test_fp16_step_is_skipped_when_a_gradient_is_inf(clip):
    precision = "16-mixed"
    model = nn.Linear(4, 1)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    prec = Precision(precision)
    with prec.autocast():
        loss = model(torch.ones(2, 4)).float().sum() * float("inf")
    assert prec.step(loss, opt, clip_grad_norm=clip) is False
    assert prec.skipped_steps == 1
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)
    # A finite step afterwards goes through and changes the weights (small inputs, so the
    # fp16 gradients stay below 65504 under the loss scale).
    opt.zero_grad()
    with prec.autocast():
        loss = model(torch.full((1, 4), 0.01)).float().sum()
    assert prec.step(loss, opt, clip_grad_norm=clip) is True
    assert not torch.equal(model.weight, before[0])
    assert prec.skipped_steps == 1


def test_fp16_scaler_shrinks_after_overflow_and_state_round_trips():
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    prec = Precision("16-mixed")
    scale = prec.scaler.get_scale()
    loss = model(torch.ones(1, 4)).sum() * float("inf")
    prec.step(loss, opt)
    assert prec.scaler.get_scale() < scale
    restored = Precision("16-mixed")
    restored.load_state_dict(prec.state_dict())
    assert restored.scaler.get_scale() == prec.scaler.get_scale()
    assert restored.skipped_steps == 1
    with pytest.raises(ValueError, match="trained with --precision 16-mixed"):
        Precision("32").load_state_dict(prec.state_dict())


def test_seed_everything_repeats_all_generators():
    def draw():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    seed_everything(123)
    first = draw()
    seed_everything(123)
    assert draw() == first
    seed_everything(124)
    assert draw() != first


def test_channels_last_and_compile_switches():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    x = torch.randn(2, 3, 16, 16)
    expected = model(x)
    cl = prepare_module(model, device="cpu", channels_last=True)
    assert cl[0].weight.is_contiguous(memory_format=torch.channels_last)
    xc = to_memory_format(x, True)
    assert xc.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl(xc), expected, rtol=1e-4, atol=1e-5)
    assert to_memory_format(torch.zeros(3, 4), True).shape == (3, 4)
    compiled = prepare_module(nn.Linear(4, 2), device="cpu", compile=True)
    assert hasattr(compiled, "_orig_mod")
