"""Published DQN settings: presets under explicit flags, RMSProp as the papers use it, and the
warm-up + annealing epsilon schedule of MinAtar / the Nature code."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import rlgen.agents.dqn as dqn
from rlgen import cli
from rlgen.agents.dqn import DQNConfig, build_optimizer, exploration_duration
from rlgen.agents.dqn_presets import DQN_PRESETS
from rlgen.agents.qnetwork import exploration_epsilon
from rlgen.presets import with_preset

PROG = "rlgen train dqn"


# -- resolution order: defaults < preset < explicit ---------------------------------------------
def test_preset_sets_its_fields_and_leaves_the_others_at_their_defaults():
    config = DQNConfig.from_preset("minatar", env_id="MinAtar/Breakout-v1")
    for name, value in DQN_PRESETS["minatar"].values.items():
        assert getattr(config, name) == value, name
    assert config.preset == "minatar" and config.env_id == "MinAtar/Breakout-v1"
    assert config.n_step == DQNConfig.n_step and config.dueling is False  # untouched fields
    assert (config.optimizer, config.momentum, config.train_frequency) == ("rmsprop", 0.95, 1)


def test_explicit_values_override_the_preset_even_when_they_equal_the_defaults():
    config = DQNConfig.from_preset("minatar", learning_rate=1e-3, optimizer="adam",
                                   momentum=0.0)  # adam and 0.0 are the dataclass defaults
    assert (config.learning_rate, config.optimizer, config.momentum) == (1e-3, "adam", 0.0)
    assert config.buffer_size == 100_000  # the rest stays the preset's


def test_cli_lays_the_preset_under_the_flags_given():
    config = cli.parse_config(DQNConfig, ["--preset", "nature", "--optimizer", "adam",
                                          "--target-network-frequency", "1000"], PROG)
    assert config.optimizer == "adam" and config.target_network_frequency == 1000
    assert config.learning_rate == 2.5e-4 and config.random_steps == 50_000
    assert config.exploration_steps == 1_000_000 and config.preset == "nature"
    plain = cli.parse_config(DQNConfig, ["--learning-rate", "3e-4"], PROG)
    assert plain.preset is None and plain.optimizer == "adam" and plain.learning_rate == 3e-4


def test_unknown_preset_is_a_usage_error(capsys):
    assert cli.main(["train", "dqn", "--preset", "rainbow"]) == cli.EXIT_USAGE
    assert "--preset" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--preset must be one of nature, cleanrl, minatar"):
        with_preset(DQNConfig, "rainbow")


def test_each_preset_names_its_source_and_help_shows_every_field(capsys):
    assert "Mnih" in DQN_PRESETS["nature"].source
    assert "CleanRL" in DQN_PRESETS["cleanrl"].source
    assert "Young & Tian" in DQN_PRESETS["minatar"].source
    with pytest.raises(SystemExit):
        cli.parse_config(DQNConfig, ["--help"], PROG)
    text = " ".join(capsys.readouterr().out.split())
    for name, preset in DQN_PRESETS.items():
        for field, value in preset.values.items():
            assert f"{field}={value}" in text, (name, field)
    assert "[presets: nature 0.00025, cleanrl 0.0001, minatar 0.00025]" in text


def test_cleanrl_preset_is_the_default_config_except_cleanrls_mse_loss():
    defaults = DQNConfig()
    differing = {k for k, v in DQN_PRESETS["cleanrl"].values.items()
                 if getattr(defaults, k) != v}
    assert differing == {"loss"} and DQN_PRESETS["cleanrl"].values["loss"] == "mse"


def test_config_json_holds_the_resolved_values(tmp_path):
    run_dir = tmp_path / "run"
    status = cli.main(["train", "dqn", "--preset", "minatar", "--env-id", "CartPole-v1",
                       "--total-timesteps", "40", "--learning-rate", "0.001",
                       "--eval-episodes", "0", "--no-progress", "--torch-threads", "1",
                       "--device", "cpu", "--run-dir", str(run_dir)])
    assert status == 0
    saved = json.loads((run_dir / "config.json").read_text())
    saved = saved.get("config", saved)
    assert saved["preset"] == "minatar" and saved["learning_rate"] == 0.001
    assert (saved["optimizer"], saved["momentum"], saved["buffer_size"]) == \
        ("rmsprop", 0.95, 100_000)


# -- RMSProp as the DQN papers use it ------------------------------------------------------------
def test_rmsprop_flags_map_to_torch_rmsprop_arguments():
    config = DQNConfig(optimizer="rmsprop", learning_rate=2.5e-4, rmsprop_alpha=0.9,
                       rmsprop_eps=0.02, rmsprop_centered=False, momentum=0.5)
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(3))], config,
                                torch.device("cpu"))
    assert type(optimizer) is torch.optim.RMSprop
    d = optimizer.defaults
    assert (d["lr"], d["alpha"], d["eps"], d["centered"], d["momentum"]) == \
        (2.5e-4, 0.9, 0.02, False, 0.5)
    adam = build_optimizer([torch.nn.Parameter(torch.zeros(3))], DQNConfig(),
                           torch.device("cpu"))
    assert type(adam) is torch.optim.Adam and adam.defaults["lr"] == 1e-4


def test_minatar_rmsprop_step_equals_centered_rmsprop_with_momentum_by_hand():
    """Three steps of the preset's optimizer against the update written out: mean square and
    mean of the gradient decayed by alpha, divided by sqrt(E[g^2] - E[g]^2) + eps, with a
    momentum buffer."""
    config = DQNConfig.from_preset("minatar")
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    optimizer = build_optimizer([param], config, torch.device("cpu"))
    lr, alpha, eps, mu = 2.5e-4, 0.95, 0.01, 0.95
    p = param.detach().clone()
    square, mean, buf = torch.zeros_like(p), torch.zeros_like(p), torch.zeros_like(p)
    for _ in range(3):
        grad = torch.randn(5, dtype=torch.float64)
        param.grad = grad.clone()
        optimizer.step()
        square = alpha * square + (1 - alpha) * grad**2
        mean = alpha * mean + (1 - alpha) * grad
        buf = mu * buf + grad / ((square - mean**2).sqrt() + eps)
        p = p - lr * buf
        assert torch.allclose(param.detach(), p, rtol=0, atol=1e-12)


# -- epsilon: uniform random warm-up, then annealing over a number of steps -----------------------
def test_exploration_epsilon_matches_minatars_schedule():
    def minatar(t):  # MinAtar examples/dqn.py, REPLAY_START_SIZE 5000, FIRST_N_FRAMES 100000
        if t < 5000:
            return 1.0
        if t - 5000 >= 100_000:
            return 0.1
        return ((0.1 - 1.0) / 100_000) * (t - 5000) + 1.0

    for t in (0, 4999, 5000, 5001, 30_000, 104_999, 105_000, 2_000_000):
        ours = exploration_epsilon(t, start_e=1.0, end_e=0.1, duration=100_000,
                                   random_steps=5000)
        assert math.isclose(ours, minatar(t), abs_tol=1e-12), t


def test_random_steps_are_uniform_even_when_start_e_is_lower():
    assert exploration_epsilon(99, start_e=0.5, end_e=0.1, duration=10, random_steps=100) == 1.0
    assert exploration_epsilon(100, start_e=0.5, end_e=0.1, duration=10,
                               random_steps=100) == 0.5
    # Without a warm-up it is CleanRL's fraction-of-total schedule from step 0.
    config = DQNConfig(total_timesteps=1000, exploration_fraction=0.5)
    assert exploration_duration(config) == 500
    assert exploration_duration(DQNConfig(exploration_steps=77)) == 77


def test_the_loop_acts_with_the_warm_up_schedule(tmp_path, monkeypatch):
    seen: list[float] = []
    real = dqn.select_actions

    def spy(net, obs, epsilon, rng, n_actions):
        seen.append(float(np.asarray(epsilon).ravel()[0]))
        return real(net, obs, epsilon, rng, n_actions)

    monkeypatch.setattr(dqn, "select_actions", spy)
    config = DQNConfig(env_id="CartPole-v1", total_timesteps=60, random_steps=20,
                       exploration_steps=20, start_e=0.6, end_e=0.2, learning_starts=30,
                       buffer_size=100, batch_size=8, seed=0, device="cpu", torch_threads=1,
                       progress=False, eval_episodes=0, checkpoint_frequency=0,
                       prefetch_targets=False, run_dir=str(tmp_path / "run"))
    dqn.train(config)
    expected = [exploration_epsilon(s, start_e=0.6, end_e=0.2, duration=20, random_steps=20)
                for s in range(60)]
    assert np.allclose(seen, expected)
    assert seen[19] == 1.0 and seen[20] == 0.6 and seen[-1] == pytest.approx(0.2)
