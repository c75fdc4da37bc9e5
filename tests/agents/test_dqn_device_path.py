"""The GPU fast path's pieces that a CPU can check: the update path reads nothing back from the
device between log steps (rlgen.agents.device_step), DeviceStep makes the same step as
Precision.step and skips or reports non-finite gradients, and --cuda-graph / --replay-device
refuse clearly where they cannot work. gpu_tests/test_dqn_gpu.py runs the CUDA side."""

from __future__ import annotations

import sys
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from torch import nn

import rlgen.agents.dqn as dqn
from rlgen.agents.cuda_graph import check_cuda_graph, make_capturable
from rlgen.agents.device_step import DeviceStep
from rlgen.agents.replay import ReplayBuffer, replay_storage
from rlgen.errors import InputError
from rlgen.runtime import NonFiniteLossError, Precision
from rlgen.training import TrainingRun

sys.path.insert(0, str(Path(__file__).parent))
from catch_env import CatchEnv  # noqa: E402

SMALL_CATCH_ID = "RlgenTest/CatchSmall-v0"  # 42x42 Catch, as in test_dqn_num_envs.py
if SMALL_CATCH_ID not in gym.registry:
    gym.register(SMALL_CATCH_ID, entry_point=CatchEnv, kwargs={"size": 42},
                 max_episode_steps=100)

BASE = dict(env_id=SMALL_CATCH_ID, total_timesteps=160, learning_starts=40, train_frequency=1,
            target_network_frequency=25, buffer_size=1_000, batch_size=8, seed=2, device="cpu",
            torch_threads=1, progress=False, eval_episodes=0, checkpoint_frequency=0,
            log_frequency=40, prefetch_targets=False)
READS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist")


class ReadCounter:
    """Counts host reads of tensors (``.item()``, ``bool``, ``float``, ``int``, ``tolist``):
    on a GPU each one waits for the device. Reads inside ``DeviceStep.check`` and
    ``log_scalars`` (the log step) are counted apart."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.in_loop = self.at_log = 0
        self.where: list[str] = []
        self._logging = False
        self._active = False
        counter = self
        for name in READS:
            real = getattr(torch.Tensor, name)

            def read(tensor, *args, _real=real, _name=name, **kwargs):
                if counter._active:
                    if counter._logging:
                        counter.at_log += 1
                    else:
                        counter.in_loop += 1
                        counter.where.append(_name)
                return _real(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, read)

        def paused(function):
            def wrapper(*args, **kwargs):
                counter._logging = True
                try:
                    return function(*args, **kwargs)
                finally:
                    counter._logging = False
            return wrapper

        real_select = dqn.select_actions

        def select_actions(*args, **kwargs):  # the loop has begun
            counter._active = True
            return real_select(*args, **kwargs)

        monkeypatch.setattr(dqn, "select_actions", select_actions)
        monkeypatch.setattr(dqn, "log_scalars", paused(dqn.log_scalars))
        monkeypatch.setattr(DeviceStep, "check", paused(DeviceStep.check))
        monkeypatch.setattr(TrainingRun, "save_final", paused(TrainingRun.save_final))


@pytest.mark.parametrize("overrides", [
    {}, {"double": True, "max_grad_norm": 1.0, "dueling": True}, {"prefetch_targets": True},
    {"n_step": 3, "num_envs": 2}])
def test_the_update_path_reads_nothing_from_the_device_between_log_steps(
        tmp_path, monkeypatch, overrides):
    counter = ReadCounter(monkeypatch)
    config = dqn.DQNConfig(**{**BASE, **overrides, "run_dir": str(tmp_path / "run")})
    metrics = dqn.train(config)
    assert metrics["num_updates"] == 120
    assert counter.in_loop == 0, f"host reads inside the loop: {counter.where[:10]}"
    assert counter.at_log > 0  # the counter sees reads: the log steps read the loss


def test_the_read_counter_sees_a_per_update_read(tmp_path, monkeypatch):
    """What the test above guards against: Precision.step's finiteness check reads once per
    update, and the counter catches it."""
    counter = ReadCounter(monkeypatch)
    real_step = DeviceStep.step

    def reading_step(self, loss, optimizer, clip_grad_norm=None):
        real_step(self, loss, optimizer, clip_grad_norm)
        bool(torch.isfinite(loss))  # a per-update read, as Precision.step does

    monkeypatch.setattr(DeviceStep, "step", reading_step)
    dqn.train(dqn.DQNConfig(**{**BASE, "run_dir": str(tmp_path / "run")}))
    assert counter.in_loop == 120


def _net_and_data(seed: int = 0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    return net, torch.randn(32, 6), torch.randn(32, 3)


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
@pytest.mark.parametrize("clip", [None, 0.05])
def test_device_step_makes_the_same_steps_as_precision_step(optimizer, clip):
    def build(net):
        if optimizer == "adam":
            return torch.optim.Adam(net.parameters(), lr=1e-2, fused=True)
        return torch.optim.RMSprop(net.parameters(), lr=1e-2, alpha=0.95, eps=0.01,
                                   centered=True, momentum=0.9)

    ours, x, y = _net_and_data()
    theirs = _net_and_data()[0]
    opt_ours, opt_theirs = build(ours), build(theirs)
    step = DeviceStep(Precision("32", "cpu"), opt_ours)
    precision = Precision("32", "cpu")
    for _ in range(5):
        for net, opt, stepper in ((ours, opt_ours, step), (theirs, opt_theirs, precision)):
            opt.zero_grad(set_to_none=True)
            stepper.step(nn.functional.mse_loss(net(x), y), opt, clip_grad_norm=clip)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    step.check()  # all finite: no error


def test_fused_adam_skips_a_non_finite_step_on_the_device_and_check_reports_it():
    net, x, y = _net_and_data()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, fused=True)
    step = DeviceStep(Precision("32", "cpu"), opt)
    step.step(nn.functional.mse_loss(net(x), y), opt)
    before = [p.detach().clone() for p in net.parameters()]
    state_before = {k: v.clone() for k, v in opt.state[net[0].weight].items()}
    opt.zero_grad(set_to_none=True)
    step.step(nn.functional.mse_loss(net(x), y) * float("nan"), opt)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    for k, v in opt.state[net[0].weight].items():
        assert torch.equal(v, state_before[k]), k  # the step count too
    with pytest.raises(NonFiniteLossError, match="1 of the last 2 updates.*skipped"):
        step.check()
    step.check()  # reset by the read


def test_an_optimizer_that_cannot_skip_is_reported_at_check():
    net, x, y = _net_and_data()
    opt = torch.optim.RMSprop(net.parameters(), lr=1e-2)
    step = DeviceStep(Precision("32", "cpu"), opt)
    step.step(nn.functional.mse_loss(net(x), y) * float("inf"), opt)
    with pytest.raises(NonFiniteLossError, match="cannot skip"):
        step.check()


def test_cuda_graph_and_replay_device_refuse_clearly_without_cuda(tmp_path):
    with pytest.raises(InputError, match="--cuda-graph needs a CUDA device"):
        dqn.train(dqn.DQNConfig(**{**BASE, "cuda_graph": True,
                                   "run_dir": str(tmp_path / "graph")}))
    cuda = torch.device("cuda")
    with pytest.raises(InputError, match="--compile"):
        check_cuda_graph(cuda, compile=True, precision="32")
    with pytest.raises(InputError, match="16-mixed"):
        check_cuda_graph(cuda, compile=False, precision="16-mixed")
    check_cuda_graph(cuda, compile=False, precision="bf16-mixed")  # allowed
    for name in ("pinned", "cuda"):
        with pytest.raises(InputError, match=f"--replay-device {name} serves a CUDA learner"):
            dqn.train(dqn.DQNConfig(**{**BASE, "replay_device": name,
                                       "run_dir": str(tmp_path / name)}))
        with pytest.raises(ValueError, match="serves a CUDA learner"):
            ReplayBuffer(100, (4, 42, 42), storage=name, device="cpu")
    assert replay_storage("auto", torch.device("cpu")) == "cpu"
    assert replay_storage("auto", cuda) == "pinned"
    with pytest.raises(InputError, match="--replay-device must be"):
        dqn.DQNConfig(**{**BASE, "replay_device": "gpu"})


def test_make_capturable_sets_the_flag_and_refuses_optimizers_without_it():
    net, _, _ = _net_and_data()
    opt = torch.optim.RMSprop(net.parameters(), lr=1e-2)
    make_capturable(opt)
    assert all(group["capturable"] for group in opt.param_groups)
    with pytest.raises(InputError, match="capturable"):
        make_capturable(torch.optim.SGD(net.parameters(), lr=0.1))
