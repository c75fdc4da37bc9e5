"""Training on CUDA in every precision, and the precision state across a resume.

Run on a machine with a GPU, from the repo root: `python -m pytest -q gpu_tests`. Like every
test in gpu_tests/, these fail (not skip) without CUDA. Each takes seconds on a GPU.

- DQN (CartPole-v1, 400 agent steps, 300 updates) and the VAE, autoencoder and DCGAN
  (mnist-subset, tiny widths, 5 steps) train on ``cuda`` in 32, 16-mixed and bf16-mixed: every
  logged loss is finite, the run's checkpoint holds each ``Precision``'s state (under 16-mixed
  the GradScaler's scale and growth tracker, and the scale is 2**16 halved once per skipped
  step), and ``--resume`` restores it: the checkpoint's scale is replaced by a planted value
  no fresh scaler can have, the restored ``Precision`` must hold exactly that value, and the
  resumed run's checkpoint must continue from it.
- DQN's optimizer on CUDA is ``torch.optim.Adam(..., fused=True)``, and the fused step equals
  the for-loop (single-tensor) Adam's step on DQN's CartPole network.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from rlgen.agents.dqn import DQNConfig, build_q_network
from rlgen.agents.dqn import train as train_dqn
from rlgen.checkpoint import load_checkpoint, save_checkpoint
from rlgen.generative.autoencoder import AutoencoderConfig
from rlgen.generative.autoencoder import train as train_autoencoder
from rlgen.generative.dcgan import DCGANConfig
from rlgen.generative.dcgan import train as train_dcgan
from rlgen.generative.vae import VAEConfig
from rlgen.generative.vae import train as train_vae
from rlgen.runtime import Precision

DEVICE = "cuda"
PRECISIONS = ("32", "16-mixed", "bf16-mixed")
INITIAL_SCALE = 2.0**16  # torch.amp.GradScaler's default init_scale
# Planted into a 16-mixed checkpoint before resuming: 3 * 2**10 and 5 * 2**8 are no power-of-two
# multiple of 2**16 (what any fresh scaler shows) nor of each other (the DCGAN's two scalers
# cannot be swapped unseen). A restored scaler keeps the value or halves it once per overflowing
# step (growing needs 2000 good steps in a row).
PLANTED_SCALE = {"precision": 3072.0, "precision_g": 3072.0, "precision_d": 1280.0}


@pytest.fixture(autouse=True)
def _needs_cuda():
    assert torch.cuda.is_available(), "gpu_tests need a CUDA device"


@pytest.fixture
def restored(monkeypatch) -> list[dict]:
    """What every ``Precision.load_state_dict`` (a resume) left in its ``Precision``."""
    calls: list[dict] = []
    load = Precision.load_state_dict

    def spy(self, state):
        load(self, state)
        calls.append({"precision": self.name, "device": self.device.type,
                      "enabled": self.scaler.is_enabled(), "scale": self.scaler.get_scale(),
                      "skipped_steps": self.skipped_steps})

    monkeypatch.setattr(Precision, "load_state_dict", spy)
    return calls


@pytest.fixture
def adams(monkeypatch) -> list[torch.optim.Adam]:
    """Every ``torch.optim.Adam`` built while the test runs (DQN's optimizer)."""
    built: list[torch.optim.Adam] = []

    class RecordingAdam(torch.optim.Adam):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(torch.optim, "Adam", RecordingAdam)
    return built


def read_metrics(run_dir: str | Path) -> list[dict]:
    with open(Path(run_dir) / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def finite_values(records: list[dict], tag: str, after: int = 0) -> list[float]:
    """The logged values of ``tag`` past step ``after``, each checked to be a finite float
    (metrics.jsonl writes NaN / inf as strings)."""
    values = [r["value"] for r in records if r["tag"] == tag and r["step"] > after]
    bad = [v for v in values if not (isinstance(v, float) and math.isfinite(v))]
    assert not bad, f"{tag}: non-finite values {bad}"
    return values


def halvings(before: float, after: float) -> int:
    """k where ``after == before / 2**k`` exactly (k >= 0); fails otherwise."""
    k = round(math.log2(before / after))
    assert k >= 0 and after * 2.0**k == before, f"scale {after} is not {before} halved k times"
    return k


def check_saved_precision(state: dict, precision: str, steps: int) -> None:
    """A ``Precision.state_dict()`` from a checkpoint of ``steps`` optimizer steps."""
    assert state["precision"] == precision
    if precision == "16-mixed":
        scaler = state["scaler"]
        assert {"scale", "_growth_tracker", "growth_interval", "backoff_factor"} <= set(scaler)
        # every overflowing step was skipped, counted, and halved the scale (backoff 0.5)
        assert halvings(INITIAL_SCALE, scaler["scale"]) == state["skipped_steps"]
        assert state["skipped_steps"] < steps, "the loss scaler skipped every step"
    else:  # no loss scaling: an empty scaler state, nothing skipped
        assert state["scaler"] == {} and state["skipped_steps"] == 0


def plant_scales(checkpoint: str | Path, keys: tuple[str, ...]) -> dict[str, float]:
    """Replace the loss scale of each 16-mixed ``Precision`` state in ``checkpoint``."""
    state = load_checkpoint(checkpoint)
    planted = {}
    for key in keys:
        if state["state"][key]["precision"] == "16-mixed":
            state["state"][key]["scaler"]["scale"] = planted[key] = PLANTED_SCALE[key]
    save_checkpoint(state, checkpoint)
    return planted


def check_restored(restored: list[dict], saved: dict, keys: tuple[str, ...], precision: str,
                   planted: dict[str, float], resumed: dict, new_skips_allowed: int) -> None:
    """The resume restored each saved ``Precision`` (in the order the trainer lists them) and
    the resumed run's checkpoint continues from the restored state."""
    assert len(restored) == len(keys), restored
    for key, got in zip(keys, restored, strict=True):
        assert got["precision"] == precision and got["device"] == DEVICE
        assert got["skipped_steps"] == saved["state"][key]["skipped_steps"]
        after = resumed["state"][key]
        assert after["precision"] == precision
        if precision == "16-mixed":
            assert got["enabled"] and got["scale"] == planted[key], (key, got)
            new_skips = after["skipped_steps"] - got["skipped_steps"]
            assert 0 <= new_skips < new_skips_allowed
            assert halvings(planted[key], after["scaler"]["scale"]) == new_skips, key
        else:
            assert not got["enabled"] and got["scale"] == 1.0
            assert after["scaler"] == {} and after["skipped_steps"] == 0


def all_finite(state_dict: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state_dict.values() if v.is_floating_point())


# -- DQN ---------------------------------------------------------------------------------------
DQN_TINY = dict(env_id="CartPole-v1", total_timesteps=400, learning_starts=100,
                train_frequency=1, buffer_size=1_000, batch_size=32, learning_rate=1e-3,
                target_network_frequency=100, log_frequency=50, checkpoint_frequency=0,
                eval_episodes=0, seed=1, device=DEVICE, progress=False)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_dqn_trains_with_fused_adam_and_resumes_its_precision_state(tmp_path, precision,
                                                                    restored, adams):
    run_dir = tmp_path / "dqn"
    first = train_dqn(DQNConfig(**DQN_TINY, precision=precision, run_dir=str(run_dir)))
    assert first["global_step"] == 400 and first["num_updates"] == 300  # steps 101 .. 400
    records = read_metrics(run_dir)
    assert len(finite_values(records, "losses/td_loss")) == 6  # logged at 150, 200, .. 400
    finite_values(records, "losses/q_values")

    # the optimizer: fused Adam on the GPU, in every precision (16-mixed: the GradScaler hands
    # the fused kernel its inf flag)
    (optimizer,) = adams
    assert optimizer.defaults["fused"] is True
    params = [p for group in optimizer.param_groups for p in group["params"]]
    assert params and all(p.device.type == DEVICE for p in params)

    saved = load_checkpoint(first["checkpoint"])
    assert saved["step"] == 400 and saved["config"]["device"] == DEVICE
    assert saved["state"]["optimizer"]["param_groups"][0]["fused"] is True
    assert all_finite(saved["state"]["q_network"])
    check_saved_precision(saved["state"]["precision"], precision, steps=300)

    # resume with a longer budget: the replay (not saved) refills for 100 steps, then 100 updates
    planted = plant_scales(first["checkpoint"], ("precision",))
    saved = load_checkpoint(first["checkpoint"])
    second = train_dqn(DQNConfig(resume=str(run_dir), total_timesteps=600, device=DEVICE,
                                 progress=False))
    assert second["global_step"] == 600 and second["num_updates"] == 400
    assert second["run_dir"] == str(run_dir)
    assert len(finite_values(read_metrics(run_dir), "losses/td_loss", after=400)) == 2
    resumed = load_checkpoint(second["checkpoint"])
    assert resumed["step"] == 600 and all_finite(resumed["state"]["q_network"])
    check_restored(restored, saved, ("precision",), precision, planted, resumed,
                   new_skips_allowed=100)
    assert len(adams) == 2 and adams[1].defaults["fused"] is True


def test_fused_adam_steps_equal_the_for_loop_adam_on_cuda():
    """DQN's CartPole network, DQN's default Adam settings: three steps of the fused CUDA
    kernel against three of the single-tensor for-loop, from the same weights and gradients.
    Tolerance: float32 rounding of the update (~1e-7 on weights of size ~0.5), far below a
    step (lr = 1e-4 per weight), so a wrong bias correction or moment update shows."""
    torch.manual_seed(0)
    lr = DQNConfig().learning_rate
    fused_net = build_q_network((4,), 2, hidden=64).to(DEVICE)
    loop_net = copy.deepcopy(fused_net)
    fused = torch.optim.Adam(fused_net.parameters(), lr=lr, fused=True)
    loop = torch.optim.Adam(loop_net.parameters(), lr=lr, foreach=False, fused=False)
    assert fused.defaults["fused"] is True and not loop.defaults["fused"]
    before = [p.detach().clone() for p in fused_net.parameters()]
    for _ in range(3):
        obs = torch.randn(32, 4, device=DEVICE)
        actions = torch.randint(0, 2, (32,), device=DEVICE)
        targets = torch.randn(32, device=DEVICE)
        fused.zero_grad(set_to_none=True)
        loop.zero_grad(set_to_none=True)
        q = fused_net(obs).gather(1, actions[:, None]).squeeze(1)
        torch.nn.functional.smooth_l1_loss(q, targets).backward()
        for a, b in zip(fused_net.parameters(), loop_net.parameters(), strict=True):
            b.grad = a.grad.detach().clone()
        fused.step()
        loop.step()
        for a, b in zip(fused_net.parameters(), loop_net.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
            sa, sb = fused.state[a], loop.state[b]
            assert int(sa["step"]) == int(sb["step"])
            torch.testing.assert_close(sa["exp_avg"], sb["exp_avg"], rtol=1e-5, atol=1e-10)
            torch.testing.assert_close(sa["exp_avg_sq"], sb["exp_avg_sq"], rtol=1e-5,
                                       atol=1e-12)
    moved = max((a - b).abs().max().item() for a, b in zip(fused_net.parameters(), before))
    assert moved > 100 * 1e-7  # the steps really changed the weights (about lr each)


# -- VAE, autoencoder, DCGAN -----------------------------------------------------------------
GENERATIVE_COMMON = dict(dataset="mnist-subset", device=DEVICE, batch_size=32, max_steps=5,
                         log_every=1, sample_every=0, checkpoint_every=0)
# kind: (config class, train, tiny settings, loss tags, Precision state keys in the checkpoint)
GENERATIVE = {
    "vae": (VAEConfig, train_vae, dict(width=8, latent_dim=8, eval_images=0, eval_k=0),
            ("train/loss",), ("precision",)),
    "autoencoder": (AutoencoderConfig, train_autoencoder,
                    dict(width=8, latent_dim=8, eval_images=0, prior_images=256),
                    ("train/loss",), ("precision",)),
    "dcgan": (DCGANConfig, train_dcgan,
              dict(generator_width=8, discriminator_width=8, latent_dim=16),
              ("train/loss_d", "train/loss_g"), ("precision_g", "precision_d")),
}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("kind", sorted(GENERATIVE))
def test_generative_trains_and_resumes_its_precision_state(tmp_path, kind, precision, restored):
    config_class, train, settings, loss_tags, keys = GENERATIVE[kind]
    run_dir = tmp_path / kind
    first = train(config_class(**GENERATIVE_COMMON, **settings, precision=precision,
                               run_dir=str(run_dir)), progress=False)
    assert first["step"] == 5
    records = read_metrics(run_dir)
    for tag in loss_tags:
        assert len(finite_values(records, tag)) == 5, tag
    for tag in {r["tag"] for r in records if r["tag"].startswith("train/")}:
        finite_values(records, tag)

    saved = load_checkpoint(first["checkpoint"])
    assert saved["step"] == 5 and saved["config"]["precision"] == precision
    assert all_finite(saved["state"]["model"])
    for key in keys:
        check_saved_precision(saved["state"][key], precision, steps=5)

    planted = plant_scales(first["checkpoint"], keys)
    saved = load_checkpoint(first["checkpoint"])
    second = train(config_class(resume=str(run_dir), max_steps=8, device=DEVICE),
                   progress=False)
    assert second["step"] == 8 and second["run_dir"] == str(run_dir)
    records = read_metrics(run_dir)
    for tag in loss_tags:
        assert len(finite_values(records, tag, after=5)) == 3, tag
    resumed = load_checkpoint(second["checkpoint"])
    assert resumed["step"] == 8 and all_finite(resumed["state"]["model"])
    check_restored(restored, saved, keys, precision, planted, resumed, new_skips_allowed=3)
