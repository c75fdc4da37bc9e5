"""DQN end to end on CPU: learning on CartPole (MLP) and on a pixel game (Nature CNN), a short
Atari run that logs CleanRL's tags and checkpoints, evaluation, and resuming a stopped run."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rlgen.agents.dqn import DQNConfig, train
from rlgen.agents.dqn_eval import DQNEvalConfig, evaluate, load_q_network, run_episodes
from rlgen.checkpoint import load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from catch_env import CATCH_ID  # noqa: E402  (registers the pixel game with gymnasium)

CPU = dict(device="cpu", torch_threads=1, progress=False)


def _stop_at(monkeypatch, step: int) -> None:
    """Press Ctrl-C (SIGINT) during the ``step``-th env step of the next run."""
    from rlgen.agents.envs import VecEnv

    env_step, calls = VecEnv.step, [0]

    def step_and_interrupt(self, actions):
        calls[0] += 1
        if calls[0] == step:
            signal.raise_signal(signal.SIGINT)
        return env_step(self, actions)

    monkeypatch.setattr(VecEnv, "step", step_and_interrupt)


# -- learning ----------------------------------------------------------------------------------
def random_policy(env_id: str, episodes: int, seed: int) -> dict:
    """The trivial baseline: uniformly random actions (epsilon 1: the Q-network is never
    asked) on the same evaluation episodes, seeded, so it does not depend on test order."""
    return run_episodes(torch.nn.Identity(), env_id, episodes=episodes, epsilon=1.0, seed=seed)


# Offline check of this budget (eval mean over 20 episodes, epsilon 0.05) for seeds 1, 2, 3:
# 500.0, 222.0, 349.4; the test uses seed 1.
CARTPOLE = dict(env_id="CartPole-v1", total_timesteps=12_000, learning_rate=1e-3,
                buffer_size=10_000, target_network_frequency=200, batch_size=64, end_e=0.05,
                exploration_fraction=0.2, learning_starts=1_000, train_frequency=1, n_step=3,
                checkpoint_frequency=0, eval_episodes=20, seed=1)


def test_cartpole_mlp_solves_the_task(tmp_path):
    metrics = train(DQNConfig(**CARTPOLE, run_dir=str(tmp_path / "cartpole"), **CPU))
    # the episodes the run evaluated on (seeds seed + 10,000 + k), played at random
    baseline = random_policy("CartPole-v1", 20, CARTPOLE["seed"] + 10_000)
    print(f"CartPole-v1 DQN (mlp), {CARTPOLE['total_timesteps']} steps, seed 1: eval mean "
          f"{metrics['eval_mean']:.1f} over 20 episodes (min {metrics['eval_min']:.0f}), "
          f"random policy {baseline['mean']:.1f}")
    assert metrics["global_step"] == CARTPOLE["total_timesteps"]
    # Random play: 22.6 (sd 12, so a standard error of 2.7 over 20 episodes). The bar is Gym's
    # "solved" return, 195 (of 500): more than 8x random play, and 150 above it at least.
    assert metrics["eval_mean"] >= max(195.0, baseline["mean"] + 150), (metrics, baseline)


# Offline check (greedy score over 40 games, optimum 1.0) for seeds 1, 2, 3: 0.85, 0.90,
# 1.00; the test uses seed 2.
def test_catch_pixels_nature_cnn_beats_random(tmp_path):
    config = DQNConfig(env_id=CATCH_ID, backbone="nature_cnn", total_timesteps=3_000,
                       learning_rate=5e-4, buffer_size=5_000, target_network_frequency=100,
                       batch_size=32, exploration_fraction=0.3, end_e=0.05, learning_starts=500,
                       train_frequency=4, checkpoint_frequency=0, eval_episodes=0, seed=2,
                       capture_video=True, run_dir=str(tmp_path / "catch"), **CPU)
    metrics = train(config)
    videos = sorted(p.name for p in (tmp_path / "catch" / "videos").iterdir())
    assert videos[:2] in (["episode_0.mp4", "episode_1.mp4"], ["episode_0.gif", "episode_1.gif"])
    q_network, _ = load_q_network(metrics["checkpoint"])
    assert q_network.backbone.name == "nature_cnn" and q_network.obs_shape == (4, 84, 84)
    trained = run_episodes(q_network, CATCH_ID, episodes=40, epsilon=0.0, seed=100)
    baseline = random_policy(CATCH_ID, 40, 100)  # the same 40 games
    print(f"catch (84x84 frames, nature_cnn), 3000 steps: trained {trained['mean']:.2f}, "
          f"random {baseline['mean']:.2f} (optimum 1.0)")
    # Random play: -0.65 (a catch in about 1 game of 5; standard error 0.12 over 40 games).
    # Winning by 1.0 is half the score range [-1, 1], 8 standard errors; 0.5 means catching
    # at least 3 balls in 4.
    assert trained["mean"] >= 0.5
    assert trained["mean"] >= baseline["mean"] + 1.0, (trained, baseline)


# -- Atari: logging, checkpoints, evaluation, resume -------------------------------------------
ATARI = dict(env_id="ALE/Breakout-v5", total_timesteps=1_200, buffer_size=2_000,
             learning_starts=800, train_frequency=4, target_network_frequency=200,
             batch_size=16, checkpoint_frequency=1_000, eval_episodes=0, seed=0,
             save_replay=True)


@pytest.fixture(scope="module")
def atari_run(tmp_path_factory):
    pytest.importorskip("ale_py")
    run_dir = tmp_path_factory.mktemp("atari") / "breakout"
    metrics = train(DQNConfig(**ATARI, run_dir=str(run_dir), **CPU))
    return run_dir, metrics


def _event_tags(run_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            found.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return found


def test_atari_run_logs_cleanrl_tags_and_checkpoints(atari_run):
    run_dir, metrics = atari_run
    assert metrics["global_step"] == 1_200
    assert metrics["num_updates"] == (1_200 - 800) // 4
    # the learning phase's time split (benchmarks/dqn_atari.py prints it)
    parts = [metrics[f"time_fraction_{k}"] for k in ("env", "act", "sample", "wait", "update")]
    assert all(0.0 < p < 1.0 for p in parts[:3] + parts[4:])
    assert sum(parts) <= 1.0  # the timed phases do not overlap ("other" = 1 - their sum)
    assert parts[3] == 0.0  # one torch thread: no target Q-values computed beside acting
    tags = _event_tags(run_dir)
    for tag in ("charts/episodic_return", "charts/episodic_length", "charts/SPS",
                "charts/epsilon", "losses/td_loss", "losses/q_values"):
        assert tags.get(tag), f"TensorBoard tag {tag} missing; found {sorted(tags)}"
    assert max(step for step, _ in tags["losses/td_loss"]) == 1_200  # global_step on the x-axis
    assert all(step > 800 for step, _ in tags["losses/td_loss"])
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"charts/episodic_return", "losses/td_loss"} <= {rec["tag"] for rec in lines}
    names = sorted(p.name for p in (run_dir / "checkpoints").glob("*.*"))
    # the replay is kept (compact) beside the newest checkpoint only
    assert names == ["ckpt_000001000.pt", "ckpt_000001200.pt", "replay_000001200.npz"]
    state = load_checkpoint(run_dir)
    assert state["step"] == 1_200 and state["config"]["env_id"] == "ALE/Breakout-v5"
    assert state["state"]["loop"]["global_step"] == 1_200


def test_atari_resume_continues_the_run(atari_run):
    run_dir, _ = atari_run
    before = load_checkpoint(run_dir)
    metrics = train(DQNConfig(resume=str(run_dir), total_timesteps=1_400, **CPU))
    assert metrics["global_step"] == 1_400
    # the replay came back: learning goes on at once
    assert metrics["num_updates"] == before["state"]["loop"]["num_updates"] + 200 // 4
    after = load_checkpoint(run_dir)
    assert after["step"] == 1_400 and after["config"]["total_timesteps"] == 1_400
    assert after["config"]["learning_starts"] == 800  # the saved config, not the defaults
    tags = _event_tags(run_dir)
    assert max(step for step, _ in tags["losses/td_loss"]) == 1_400
    with pytest.raises(ValueError, match="--dueling cannot change"):
        train(DQNConfig(resume=str(run_dir), dueling=True, **CPU))


def test_evaluate_cli_prints_one_line_and_writes_gif(atari_run, tmp_path, capsys):
    run_dir, _ = atari_run
    video = tmp_path / "best.gif"
    # epsilon 0.5: half the actions random, so the barely trained agent scores a point or two
    # (returns 0 and 2 here; at epsilon 0.05 both games score 0, and any summary passes)
    result = evaluate(DQNEvalConfig(checkpoint=str(run_dir), episodes=2, device="cpu",
                                    epsilon=0.5, max_episode_frames=400, video=str(video), seed=3))
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("eval dqn ALE/Breakout-v5") and "mean" in line and "max" in line
    returns = result["returns"]
    assert len(returns) == 2 and len(result["lengths"]) == 2
    for name, value in (("mean", np.mean(returns)), ("min", min(returns)), ("max", max(returns))):
        assert f"{name} {value:.2f}" in line, (name, returns, line)  # the games played
    from PIL import Image

    with Image.open(video) as gif:
        assert gif.n_frames > 10 and gif.size == (160, 210)  # full RGB screen of the best game


# -- resume: exact continuation ----------------------------------------------------------------
RESUME = dict(env_id="CartPole-v1", total_timesteps=1_200, learning_rate=1e-3, buffer_size=2_000,
              target_network_frequency=100, batch_size=32, learning_starts=300,
              train_frequency=1, checkpoint_frequency=0, eval_episodes=0, seed=3,
              save_replay=True, save_env_state=True)


# Two torch threads switch on the default prefetch of target Q-values (a second thread
# computes the next update's targets while the agent acts): the batch it has drawn at the save
# point is in the checkpoint, so the continuation is exact with it too.
@pytest.mark.parametrize("threads,prefetch", [(1, False), (2, True)])
def test_ctrl_c_saves_a_checkpoint_and_resume_matches_an_uninterrupted_run(
        tmp_path, monkeypatch, threads, prefetch):
    cpu = {**CPU, "torch_threads": threads}
    full = train(DQNConfig(**RESUME, run_dir=str(tmp_path / "full"), **cpu))
    assert full["prefetch_targets"] is prefetch

    _stop_at(monkeypatch, 600)
    with pytest.raises(KeyboardInterrupt):
        train(DQNConfig(**RESUME, run_dir=str(tmp_path / "part"), **cpu))
    monkeypatch.undo()
    saved = load_checkpoint(tmp_path / "part")
    assert saved["step"] == 600  # saved at the end of the interrupted step
    assert (tmp_path / "part" / "checkpoints" / saved["state"]["replay"]["file"]).is_file()
    assert (saved["state"]["prefetch"]["indices"] is not None) is prefetch

    # The checkpoint holds the state at the save point: network outputs, epsilon position.
    q_saved, _ = load_q_network(tmp_path / "part")
    probe = torch.linspace(-1, 1, 4 * 5).reshape(5, 4)
    resumed = train(DQNConfig(resume=str(tmp_path / "part"), **cpu))
    assert resumed["global_step"] == full["global_step"] == 1_200
    assert resumed["num_updates"] == full["num_updates"]
    assert resumed["episodes"] == full["episodes"]

    # ... and continuing from it gives exactly the uninterrupted run: same losses at the same
    # steps after the save point, same final network and exploration state.
    def losses(run: str) -> list:
        records = (json.loads(line) for line in (tmp_path / run / "metrics.jsonl").open())
        return [(r["step"], r["value"]) for r in records
                if r["tag"] in ("losses/td_loss", "charts/epsilon") and r["step"] > 600]

    assert losses("part") and losses("part") == losses("full")
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "part")
    for key in a["state"]["q_network"]:
        assert torch.equal(a["state"]["q_network"][key], b["state"]["q_network"][key]), key
    assert a["state"]["loop"]["explore_rng"] == b["state"]["loop"]["explore_rng"]
    q_full, _ = load_q_network(tmp_path / "full")
    assert not torch.equal(q_saved(probe), q_full(probe))  # it did learn after the save point


# -- options wiring ----------------------------------------------------------------------------
def test_options_double_dueling_prioritized_nstep_bf16_soft_target(tmp_path):
    config = DQNConfig(env_id="CartPole-v1", total_timesteps=300, buffer_size=1_000,
                       learning_starts=100, train_frequency=2, batch_size=16, double=True,
                       dueling=True, prioritized=True, n_step=3, precision="bf16-mixed",
                       tau=0.05, target_network_frequency=1, max_grad_norm=10.0,
                       checkpoint_frequency=0, eval_episodes=2, run_dir=str(tmp_path / "opts"),
                       **CPU)
    metrics = train(config)
    assert metrics["num_updates"] == (300 - 100) // 2
    # CartPole pays 1 per step: the evaluation's returns are its episode lengths
    assert metrics["eval_mean"] == pytest.approx(np.mean(metrics["eval_lengths"]))
    state = load_checkpoint(tmp_path / "opts")
    assert state["state"]["precision"]["precision"] == "bf16-mixed"
    assert any(k.startswith("advantage.") for k in state["state"]["q_network"])  # dueling
    q_network, _ = load_q_network(tmp_path / "opts")
    assert q_network.dueling and q_network(torch.zeros(3, 4)).shape == (3, 2)
