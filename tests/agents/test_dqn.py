"""Unit tests of DQN's pure pieces: TD targets, losses, schedules, target updates, the Q-network,
epsilon-greedy action selection, config validation and registration."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from rlgen.agents.dqn import DQNConfig, build_q_network, select_actions
from rlgen.agents.dqn_eval import DQNEvalConfig, write_video
from rlgen.agents.qnetwork import (
    QNetwork,
    linear_schedule,
    td_loss,
    td_target,
    to_channels_last,
    update_target,
)
from rlgen.registry import AGENTS, TRAINERS
from rlgen.vision.backbones import create_backbone, register_backbone
from rlgen.vision.backbones.base import Backbone, FeatureInfo

torch.set_num_threads(1)


# -- schedules ---------------------------------------------------------------------------------
def test_linear_schedule_matches_cleanrl_epsilon():
    duration = 0.1 * 10_000_000  # exploration_fraction * total_timesteps
    assert linear_schedule(1.0, 0.01, duration, 0) == 1.0
    assert linear_schedule(1.0, 0.01, duration, duration / 2) == pytest.approx(0.505)
    assert linear_schedule(1.0, 0.01, duration, duration) == pytest.approx(0.01)
    assert linear_schedule(1.0, 0.01, duration, 5 * duration) == pytest.approx(0.01)


def test_linear_schedule_increasing_and_degenerate():
    assert linear_schedule(0.4, 1.0, 100, 50) == pytest.approx(0.7)  # PER beta annealing
    assert linear_schedule(0.4, 1.0, 100, 1000) == pytest.approx(1.0)
    assert linear_schedule(1.0, 0.05, 0, 0) == 0.05  # no exploration phase


# -- TD targets and losses ---------------------------------------------------------------------
def test_td_target_dqn_takes_the_target_max():
    rewards = torch.tensor([1.0, 0.0, -1.0])
    discounts = torch.tensor([0.99, 0.99, 0.0])  # the last transition ended the episode
    next_q_target = torch.tensor([[1.0, 3.0], [-2.0, -1.0], [10.0, 20.0]])
    y = td_target(rewards, discounts, next_q_target)
    assert torch.allclose(y, torch.tensor([1.0 + 0.99 * 3.0, 0.99 * -1.0, -1.0]))


def test_td_target_double_uses_online_argmax_scored_by_target():
    rewards = torch.tensor([0.5, 0.5])
    discounts = torch.tensor([0.9, 0.9])
    next_q_target = torch.tensor([[1.0, 3.0, 0.0], [4.0, 5.0, 6.0]])
    next_q_online = torch.tensor([[9.0, 0.0, 0.0], [0.0, 0.0, 7.0]])  # picks a=0, a=2
    y = td_target(rewards, discounts, next_q_target, next_q_online)
    assert torch.allclose(y, torch.tensor([0.5 + 0.9 * 1.0, 0.5 + 0.9 * 6.0]))
    # plain DQN would have taken max = 3.0 for the first one: Double DQN is lower here
    assert y[0] < td_target(rewards, discounts, next_q_target)[0]


def test_td_target_n_step_discount_is_passed_through():
    # n-step: rewards are the discounted n-step return, discounts gamma^n (from the replay)
    y = td_target(torch.tensor([2.0]), torch.tensor([0.99**3]), torch.tensor([[1.0, 4.0]]))
    assert y.item() == pytest.approx(2.0 + 0.99**3 * 4.0)


def test_td_target_rejects_mismatched_double_shapes():
    with pytest.raises(ValueError, match="same shape"):
        td_target(torch.zeros(2), torch.ones(2), torch.zeros(2, 3), torch.zeros(2, 4))


def test_td_loss_huber_mse_and_weights():
    q = torch.tensor([0.0, 0.0, 0.0], requires_grad=True)
    y = torch.tensor([0.5, 3.0, -2.0])
    huber, errors = td_loss(q, y, "huber")
    # smooth L1 (delta 1): 0.5 * 0.5^2, 3 - 0.5, 2 - 0.5
    assert huber.item() == pytest.approx((0.125 + 2.5 + 1.5) / 3)
    assert torch.equal(errors, y)
    huber.backward()
    assert torch.allclose(q.grad, torch.tensor([-0.5, -1.0, 1.0]) / 3)  # clipped to [-1, 1]
    mse, _ = td_loss(q, y, "mse")
    assert mse.item() == pytest.approx((0.25 + 9 + 4) / 3)
    weighted, _ = td_loss(q, y, "mse", weights=torch.tensor([1.0, 0.0, 0.0]))
    assert weighted.item() == pytest.approx(0.25 / 3)
    with pytest.raises(ValueError, match="--loss"):
        td_loss(q, y, "l1")


# -- target network ----------------------------------------------------------------------------
def _pair():
    torch.manual_seed(0)
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    return online, target


def test_update_target_hard_copy():
    online, target = _pair()
    update_target(target, online, tau=1.0)
    for a, b in zip(target.parameters(), online.parameters()):
        assert torch.equal(a, b)
    with torch.no_grad():
        online.weight.add_(1.0)  # a copy, not shared storage
    assert not torch.equal(target.weight, online.weight)


def test_update_target_soft():
    online, target = _pair()
    before = target.weight.detach().clone()
    update_target(target, online, tau=0.25)
    assert torch.allclose(target.weight, 0.75 * before + 0.25 * online.weight.detach())
    with pytest.raises(ValueError, match="tau"):
        update_target(target, online, tau=0.0)


# -- Q-network ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dueling", [False, True])
def test_qnetwork_nature_shapes_and_parameters(dueling):
    q = QNetwork(create_backbone("nature_cnn", in_channels=4), 6, obs_shape=(4, 84, 84),
                 dueling=dueling)
    assert q.num_features == 3136  # measured with a dummy forward, not hard-coded
    out = q(torch.randint(0, 256, (5, 4, 84, 84), dtype=torch.uint8))
    assert out.shape == (5, 6)
    convs = 8224 + 32832 + 36928
    head = (3136 * 512 + 512 + 512 * 6 + 6) if not dueling else (
        (3136 * 512 + 512 + 512 + 1) + (3136 * 512 + 512 + 512 * 6 + 6))
    assert sum(p.numel() for p in q.parameters()) == convs + head


def test_qnetwork_measures_feature_size_for_other_inputs():
    q = QNetwork(create_backbone("nature_cnn", in_channels=1), 3, obs_shape=(1, 64, 64))
    assert q.num_features == 64 * 4 * 4  # 64 -> 15 -> 6 -> 4
    assert q(torch.zeros(2, 1, 64, 64, dtype=torch.uint8)).shape == (2, 3)


def test_dueling_head_is_value_plus_centered_advantage():
    torch.manual_seed(0)
    q = QNetwork(create_backbone("mlp", in_channels=4), 3, dueling=True, hidden=16)
    x = torch.randn(7, 4)
    out = q(x)
    features = q.features(x)
    assert torch.allclose(out.mean(dim=1, keepdim=True), q.value(features), atol=1e-6)
    advantage = q.advantage(features)
    assert torch.allclose(out - out.mean(1, keepdim=True),
                          advantage - advantage.mean(1, keepdim=True), atol=1e-6)


class _Tiny(Backbone):
    """A plain backbone that does not scale its input (to check the network does)."""

    def __init__(self, in_channels: int = 2):
        super().__init__()
        self.in_channels = in_channels
        self.feature_info = [FeatureInfo("conv", 3, 2)]
        self.conv = nn.Conv2d(in_channels, 3, 3, stride=2)

    def forward_stages(self, x):
        return [self.conv(x)]


def test_qnetwork_scales_uint8_once():
    torch.manual_seed(0)
    q = QNetwork(_Tiny(2), 4, obs_shape=(2, 9, 9))
    frames = torch.randint(0, 256, (3, 2, 9, 9), dtype=torch.uint8)
    assert torch.allclose(q(frames), q(frames.float() / 255), atol=1e-6)
    nature = QNetwork(create_backbone("nature_cnn", in_channels=1), 2, obs_shape=(1, 36, 36))
    frames = torch.randint(0, 256, (2, 1, 36, 36), dtype=torch.uint8)
    # nature_cnn divides by 255 itself: the network must not divide again
    assert torch.allclose(nature(frames), nature(frames.float()), atol=1e-6)


def test_to_channels_last_equals_torch_reorder_and_network_outputs_match():
    stacks = torch.randint(0, 256, (5, 6, 84, 84), dtype=torch.uint8)[:, 1:5]  # replay-style view
    fast = to_channels_last(stacks, torch.float32)
    assert fast.is_contiguous(memory_format=torch.channels_last) and fast.dtype == torch.float32
    assert torch.equal(fast, stacks.float())
    torch.manual_seed(0)
    plain = build_q_network((4, 84, 84), 3)
    fast_net = build_q_network((4, 84, 84), 3).to(memory_format=torch.channels_last)
    fast_net.load_state_dict(plain.state_dict())
    fast_net.channels_last = True
    floats = stacks.float()  # float input: scaled out of place, the caller's tensor untouched
    assert torch.allclose(fast_net(stacks), plain(stacks), atol=1e-5)
    assert torch.allclose(fast_net(floats), plain(stacks), atol=1e-5)
    assert torch.equal(floats, stacks.float())


def test_qnetwork_rejects_wrong_observation_shape():
    q = QNetwork(create_backbone("nature_cnn", in_channels=4), 4)
    with pytest.raises(ValueError, match=r"\(N, 4, 84, 84\)"):
        q(torch.zeros(1, 3, 84, 84, dtype=torch.uint8))
    with pytest.raises(ValueError, match="n_actions"):
        QNetwork(create_backbone("mlp", in_channels=4), 0)


def test_build_q_network_auto_backbone_and_plugin():
    vector = build_q_network((4,), 2)
    assert vector.backbone.name == "mlp" and vector.hidden == 0  # CleanRL's 120-84-2
    image = build_q_network((4, 84, 84), 4)
    assert image.backbone.name == "nature_cnn" and image.hidden == 512
    assert AGENTS.get("dqn") is build_q_network

    @register_backbone("test_tiny_dqn_plugin")
    def tiny(in_channels: int = 2, **kwargs):
        return _Tiny(in_channels)

    try:
        q = build_q_network((2, 9, 9), 3, backbone="test_tiny_dqn_plugin", dueling=True)
        assert q(torch.zeros(1, 2, 9, 9, dtype=torch.uint8)).shape == (1, 3)
    finally:
        from rlgen.registry import BACKBONES

        BACKBONES.unregister("test_tiny_dqn_plugin")
    with pytest.raises(ValueError, match=r"\(C, H, W\) or vector"):
        build_q_network((4, 84), 2)


# -- acting ------------------------------------------------------------------------------------
class _Fixed(nn.Module):
    def __init__(self, best: int, n: int = 4):
        super().__init__()
        self.best, self.n, self.calls = best, n, 0

    def forward(self, x):
        self.calls += 1
        q = torch.zeros(x.shape[0], self.n)
        q[:, self.best] = 1.0
        return q


def test_select_actions_greedy_and_random():
    rng = np.random.default_rng(0)
    net = _Fixed(best=2)
    obs = torch.zeros(16, 3)
    assert (select_actions(net, obs, 0.0, rng, 4) == 2).all()
    net.calls = 0
    actions = select_actions(net, obs, 1.0, rng, 4)
    assert net.calls == 0  # all envs explore: no forward pass
    assert set(actions.tolist()) <= {0, 1, 2, 3} and len(set(actions.tolist())) > 1
    # the same generator state gives the same actions whatever the network is
    a = select_actions(_Fixed(0), obs, 0.5, np.random.default_rng(1), 4)
    b = select_actions(_Fixed(0), obs, 0.5, np.random.default_rng(1), 4)
    assert np.array_equal(a, b)


# -- configuration -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value, flag",
    [
        ("total_timesteps", 0, "--total-timesteps"),
        ("learning_rate", -1.0, "--learning-rate"),
        ("buffer_size", 0, "--buffer-size"),
        ("gamma", 1.5, "--gamma"),
        ("tau", 0.0, "--tau"),
        ("batch_size", 0, "--batch-size"),
        ("start_e", 2.0, "--start-e"),
        ("exploration_fraction", -0.1, "--exploration-fraction"),
        ("learning_starts", -1, "--learning-starts"),
        ("train_frequency", 0, "--train-frequency"),
        ("num_envs", 0, "--num-envs"),
        ("n_step", 0, "--n-step"),
        ("loss", "l1", "--loss"),
        ("precision", "64", "--precision"),
        ("max_grad_norm", 0.0, "--max-grad-norm"),
        ("torch_threads", 0, "--torch-threads"),
        ("checkpoint_frequency", -5, "--checkpoint-frequency"),
        ("env_id", "", "--env-id"),
    ],
)
def test_config_errors_name_the_flag(field, value, flag):
    with pytest.raises(ValueError, match=flag):
        DQNConfig(**{field: value})


def test_config_batch_larger_than_buffer():
    with pytest.raises(ValueError, match="--batch-size"):
        DQNConfig(buffer_size=16, batch_size=32)


def test_config_defaults_are_nature_dqn_as_in_cleanrl():
    c = DQNConfig()
    assert (c.total_timesteps, c.learning_rate, c.buffer_size, c.gamma, c.tau) == (
        10_000_000, 1e-4, 1_000_000, 0.99, 1.0)
    assert (c.target_network_frequency, c.batch_size, c.start_e, c.end_e) == (1000, 32, 1.0, 0.01)
    assert (c.exploration_fraction, c.learning_starts, c.train_frequency) == (0.1, 80_000, 4)


def test_every_config_field_has_help_text():
    from rlgen.cli import field_docs

    for cls in (DQNConfig, DQNEvalConfig):
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not missing, f"{cls.__name__} fields without a docstring: {missing}"


def test_eval_config_errors():
    with pytest.raises(ValueError, match="--video"):
        DQNEvalConfig(checkpoint="x", video="best.avi")
    with pytest.raises(ValueError, match="--episodes"):
        DQNEvalConfig(checkpoint="x", episodes=0)


def test_trainer_spec_is_registered():
    spec = TRAINERS.create("dqn")
    assert spec.config is DQNConfig
    assert spec.evaluate[0] is DQNEvalConfig


def test_cli_help_lists_the_flags(capsys):
    from rlgen.cli import main

    assert main(["train", "dqn", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--env-id", "--double", "--dueling", "--loss", "--resume", "--save-replay"):
        assert flag in out
    assert main(["train", "dqn", "--gamma", "2"]) == 2
    assert "--gamma must be in [0, 1]" in capsys.readouterr().err


def test_write_gif(tmp_path):
    from PIL import Image

    frames = [np.full((10, 12, 3), i * 40, np.uint8) for i in range(5)]
    path = write_video(frames, tmp_path / "ep.gif", fps=10)
    with Image.open(path) as gif:
        assert gif.size == (12, 10) and gif.n_frames == 5
    with pytest.raises(ValueError, match=".gif or .mp4"):
        write_video(frames, tmp_path / "ep.avi")


def test_write_mp4(tmp_path):
    cv2 = pytest.importorskip("cv2")
    frames = [np.full((64, 48, 3), i * 20, np.uint8) for i in range(6)]
    path = write_video(frames, tmp_path / "ep.mp4", fps=10)
    capture = cv2.VideoCapture(str(path))
    try:
        assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
        assert int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)) == 48
    finally:
        capture.release()
