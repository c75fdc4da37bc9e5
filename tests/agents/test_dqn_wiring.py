"""Every DQN option changes what it claims to change, observed inside real ``train()`` runs.

Each test spies on the pieces the loop calls (``gradient_step``, ``td_loss``,
``update_target``, ``ReplayBuffer``, ``DeviceStep.step``, ``clip_grad_norm_``,
``torch.compile``) and checks what reached them against a hand computation on the same batch,
so an option that ``train()`` silently ignored fails here even though the pieces' own unit
tests (tests/agents/test_dqn.py) pass. Runs are short CartPole runs (about 60 updates) on one
CPU thread.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rlgen.agents.dqn as dqn
from rlgen.agents.dqn import DQNConfig
from rlgen.agents.qnetwork import linear_schedule
from rlgen.agents.replay import ReplayBuffer

LEARNING_STARTS, TOTAL = 100, 160
BASE = dict(env_id="CartPole-v1", total_timesteps=TOTAL, learning_starts=LEARNING_STARTS,
            buffer_size=1_000, batch_size=16, train_frequency=1, learning_rate=1e-2,
            target_network_frequency=10_000,  # no target sync unless a test asks for one
            log_frequency=10_000, seed=1, device="cpu", torch_threads=1, progress=False,
            eval_episodes=0, checkpoint_frequency=0, prefetch_targets=False)


def train(tmp_path, **overrides) -> tuple[dict, DQNConfig]:
    config = DQNConfig(**{**BASE, **overrides, "run_dir": str(tmp_path / "run")})
    return dqn.train(config), config


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-5)


def _head_parts(net: torch.nn.Module, obs: torch.Tensor) -> dict[str, torch.Tensor]:
    """The outputs of the Q-network's head streams (value / advantage, or the plain head)."""
    features = net.features(obs)
    names = ("value", "advantage") if hasattr(net, "value") else ("head",)
    return {name: getattr(net, name)(features).float() for name in names if hasattr(net, name)}


class Recorder:
    """Spies on one ``dqn.train`` run. For every gradient step it records (before the
    optimizer changes anything) the batch, the next-state Q-values the loop computed, the
    hand-computed Q-values of the online and target networks, and what reached ``td_loss``
    (TD target, Q of the taken actions, loss name, weights); it also records target syncs,
    priority updates, replay sampling and the loop's ``global_step`` at each of those
    moments."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.nets: tuple[torch.nn.Module, ...] = ()
        self.loop: Any = None
        self.updates: list[dict[str, Any]] = []
        self.syncs: list[dict[str, Any]] = []
        self.priority_updates: list[tuple[np.ndarray, np.ndarray]] = []
        self.sample_betas: list[tuple[int, float | None]] = []
        self.transitions: list[dict[str, Any]] = []  # env 0's stream of (obs, a, r, ...)
        self.backward_losses: list[torch.Tensor] = []
        spy = self

        real_build = dqn.build_networks

        def build_networks(*args, **kwargs):
            spy.nets = real_build(*args, **kwargs)
            return spy.nets

        class LoopState(dqn.LoopState):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                spy.loop = self

        real_step = dqn.gradient_step

        def gradient_step(q_net, optimizer, precision, batch, next_q, config):
            online, target = spy.nets[0], spy.nets[1]
            with torch.no_grad():
                record = {
                    "step": spy.loop.global_step, "batch": batch, "q_net": q_net,
                    "loop_next_q": tuple(None if t is None else t.clone() for t in next_q),
                    "online_next": online(batch.next_obs).float(),
                    "target_next": target(batch.next_obs).float(),
                    "online_obs": online(batch.obs).float(),
                    "parts": _head_parts(online, batch.obs),
                    "params_before": [p.detach().clone() for p in online.parameters()],
                }
            spy.updates.append(record)
            loss, q_taken, td_errors = real_step(q_net, optimizer, precision, batch, next_q,
                                                 config)
            record["loss"] = loss.detach()
            return loss, q_taken, td_errors

        real_td_loss = dqn.td_loss

        def td_loss(q_taken, target, loss="huber", weights=None):
            out = real_td_loss(q_taken, target, loss, weights)
            spy.updates[-1].update(
                q_taken=q_taken.detach().clone(), loss_target=target.detach().clone(),
                loss_name=loss, loss_weights=None if weights is None else weights.clone(),
                loss_value=out[0].detach().clone(), loss_object=out[0])
            return out

        real_update_target = dqn.update_target

        def update_target(target, online, tau=1.0):
            before = [p.detach().clone() for p in target.parameters()]
            real_update_target(target, online, tau)
            spy.syncs.append({
                "step": spy.loop.global_step, "target": target, "online": online,
                "before": before,
                "online_params": [p.detach().clone() for p in online.parameters()],
                "after": [p.detach().clone() for p in target.parameters()]})

        real_priorities = ReplayBuffer.update_priorities

        def update_priorities(self, indices, td_errors):
            spy.priority_updates.append((np.array(indices), np.array(td_errors)))
            return real_priorities(self, indices, td_errors)

        real_sample = ReplayBuffer.sample

        def sample(self, batch_size, beta=None):
            spy.sample_betas.append((spy.loop.global_step, beta))
            return real_sample(self, batch_size, beta)

        real_add = ReplayBuffer.add

        def add(self, obs, actions, rewards, next_obs, terminations, truncations):
            spy.transitions.append({
                "obs": np.array(obs, np.float32), "action": np.array(actions),
                "reward": np.array(rewards, np.float64), "next_obs": np.array(next_obs, np.float32),
                "terminated": np.array(terminations), "truncated": np.array(truncations)})
            return real_add(self, obs, actions, rewards, next_obs, terminations, truncations)

        from rlgen.agents.device_step import DeviceStep

        real_precision_step = DeviceStep.step

        def precision_step(self, loss, optimizer, clip_grad_norm=None):
            spy.backward_losses.append(loss)
            return real_precision_step(self, loss, optimizer, clip_grad_norm)

        monkeypatch.setattr(dqn, "build_networks", build_networks)
        monkeypatch.setattr(dqn, "LoopState", LoopState)
        monkeypatch.setattr(dqn, "gradient_step", gradient_step)
        monkeypatch.setattr(dqn, "td_loss", td_loss)
        monkeypatch.setattr(dqn, "update_target", update_target)
        monkeypatch.setattr(ReplayBuffer, "update_priorities", update_priorities)
        monkeypatch.setattr(ReplayBuffer, "sample", sample)
        monkeypatch.setattr(ReplayBuffer, "add", add)
        monkeypatch.setattr(DeviceStep, "step", precision_step)

    def check_loop_used_the_target_network(self) -> None:
        """The next-state Q-values the loop used are the target network's (the one synced)."""
        assert self.updates
        for u in self.updates:
            assert close(u["loop_next_q"][0], u["target_next"])


# -- --double ------------------------------------------------------------------------------------
@pytest.mark.parametrize("double", [True, False])
def test_double_target_scores_the_online_argmax_with_the_target_network(
        tmp_path, monkeypatch, double):
    """--double: y = r + d * Q_target(s', argmax Q_online(s')); without it y = r + d * max
    Q_target(s') -- checked on every update's batch against the networks' own outputs."""
    spy = Recorder(monkeypatch)
    metrics, _ = train(tmp_path, double=double)
    assert metrics["num_updates"] == len(spy.updates) == TOTAL - LEARNING_STARTS
    spy.check_loop_used_the_target_network()
    rows_that_differ = 0
    for u in spy.updates:
        b, target_next, online_next = u["batch"], u["target_next"], u["online_next"]
        double_value = target_next.gather(1, online_next.argmax(1, keepdim=True)).squeeze(1)
        plain_value = target_next.max(1).values
        expected = b.rewards + b.discounts * (double_value if double else plain_value)
        assert close(u["loss_target"], expected), (double, u["step"])
        # the online network's Q-values reach td_target only with --double
        assert (u["loop_next_q"][1] is not None) is double
        rows_that_differ += int(((double_value - plain_value).abs() > 1e-4).sum())
    # the online net drifted from the (never synced) target net, so the two rules disagree
    assert rows_that_differ > 0


# -- --n-step ------------------------------------------------------------------------------------
def test_n_step_returns_and_discounts_reach_the_target(tmp_path, monkeypatch):
    """--n-step 3: each sampled row's reward is sum_j gamma^j r_{t+j} over the recorded
    trajectory, its discount gamma^3 (0 after a termination), its next obs 3 steps later,
    and the loss target is that return + discount * max Q_target(next obs)."""
    gamma, n = 0.9, 3
    spy = Recorder(monkeypatch)
    train(tmp_path, n_step=n, gamma=gamma)
    traj = spy.transitions  # one env: env 0 of every add()
    where = {t["obs"][0].tobytes(): i for i, t in enumerate(traj)}
    assert len(where) == len(traj)  # CartPole states do not repeat: obs identify transitions
    seen = set()
    for u in spy.updates:
        b = u["batch"]
        for row in range(b.rewards.shape[0]):
            i = where[b.obs[row].numpy().astype(np.float32).tobytes()]
            ret, discount, next_obs = 0.0, None, None
            for j in range(n):
                t = traj[i + j]
                ret += gamma**j * float(t["reward"][0])
                if t["terminated"][0]:
                    discount, next_obs = 0.0, t["next_obs"][0]
                    break
                if t["truncated"][0] or j == n - 1:
                    discount, next_obs = gamma ** (j + 1), t["next_obs"][0]
                    break
            assert int(b.actions[row]) == int(traj[i]["action"][0])
            assert b.rewards[row].item() == pytest.approx(ret, rel=1e-6)
            assert b.discounts[row].item() == pytest.approx(discount, rel=1e-6)
            assert np.array_equal(b.next_obs[row].numpy(), next_obs)
            seen.add((round(ret, 4), round(discount, 4)))
        # the n-step return and discount are what reached the loss
        expected = b.rewards + b.discounts * u["target_next"].max(1).values
        assert close(u["loss_target"], expected)
    full = (round(1 + gamma + gamma**2, 4), round(gamma**3, 4))
    assert full in seen  # complete 3-step windows...
    assert any(d == 0.0 and r < full[0] for r, d in seen)  # ...and windows cut by a termination


# -- --tau ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [0.25, 1.0])
def test_target_sync_is_polyak_with_tau_and_a_copy_without(tmp_path, monkeypatch, tau):
    """--tau 0.25: after each sync target = tau * online + (1 - tau) * old target (not a copy);
    --tau 1: target = online exactly. The loop's next-state Q-values come from that target."""
    spy = Recorder(monkeypatch)
    train(tmp_path, tau=tau, target_network_frequency=10)
    assert [s["step"] for s in spy.syncs] == list(range(110, TOTAL + 1, 10))
    assert spy.syncs[0]["target"] is spy.nets[1] and spy.syncs[0]["online"] is spy.nets[0]
    for s in spy.syncs:
        triples = list(zip(s["before"], s["online_params"], s["after"]))
        for before, online, after in triples:
            assert close(after, tau * online + (1 - tau) * before)
        assert any(not close(online, before) for before, online, _ in triples)  # a real sync
        copied = all(torch.equal(after, online) for _, online, after in triples)
        assert copied is (tau == 1.0)  # Polyak averaging is not a copy
    spy.check_loop_used_the_target_network()


# -- --max-grad-norm -----------------------------------------------------------------------------
@pytest.mark.parametrize("max_grad_norm", [1e-3, None])
def test_max_grad_norm_clips_every_update(tmp_path, monkeypatch, max_grad_norm):
    """--max-grad-norm 1e-3: every update clips the Q-network's gradient with that limit, and
    the gradient the optimizer then sees has norm <= the limit; without it nothing clips."""
    calls: list[tuple[float, float, float, list]] = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def clip_grad_norm_(parameters, max_norm, *args, **kwargs):
        params = list(parameters)
        total = real_clip(params, max_norm, *args, **kwargs)
        after = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad) for p in params if p.grad is not None]))
        calls.append((max_norm, float(total), float(after), params))
        return total

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_grad_norm_)
    spy = Recorder(monkeypatch)
    metrics, _ = train(tmp_path, max_grad_norm=max_grad_norm)
    if max_grad_norm is None:
        assert calls == []
        return
    assert len(calls) == metrics["num_updates"] == len(spy.updates) > 0
    online = list(spy.nets[0].parameters())
    for max_norm, before, after, params in calls:
        assert max_norm == max_grad_norm
        assert len(params) == len(online) and all(a is b for a, b in zip(params, online))
        assert before > max_grad_norm  # a real clip: the raw gradient was larger
        assert after <= max_grad_norm * (1 + 1e-4)


# -- --prioritized -------------------------------------------------------------------------------
@pytest.mark.parametrize("prioritized", [True, False])
def test_prioritized_weights_enter_the_loss_and_priorities_follow_td_errors(
        tmp_path, monkeypatch, prioritized):
    """--prioritized: the batch's IS weights multiply the per-sample loss, the sampled rows'
    priorities are updated with |TD error| after every update, beta is annealed from
    --prioritized-beta to 1, and the weights become non-uniform; without it: no weights, no
    priority updates."""
    spy = Recorder(monkeypatch)
    metrics, config = train(tmp_path, prioritized=prioritized, prioritized_beta=0.4)
    if not prioritized:
        assert spy.priority_updates == []
        assert all(u["loss_weights"] is None for u in spy.updates)
        return
    assert len(spy.priority_updates) == len(spy.updates) == metrics["num_updates"]
    for u, (indices, td_errors) in zip(spy.updates, spy.priority_updates):
        b = u["batch"]
        assert u["loss_weights"] is not None and torch.equal(u["loss_weights"], b.weights)
        per_sample = F.smooth_l1_loss(u["q_taken"], u["loss_target"], reduction="none")
        assert u["loss_value"].item() == pytest.approx(
            (b.weights * per_sample).mean().item(), rel=1e-5)
        assert np.array_equal(indices, b.indices)
        assert np.allclose(np.abs(td_errors), (u["loss_target"] - u["q_taken"]).abs().numpy(),
                           atol=1e-6)
    weights = torch.cat([u["batch"].weights for u in spy.updates[-20:]])
    assert weights.max() <= 1.0 and weights.min() < 0.99  # priorities shaped the sampling
    for step, beta in spy.sample_betas:
        assert beta == pytest.approx(linear_schedule(0.4, 1.0, config.total_timesteps, step))


# -- --dueling -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dueling", [True, False])
def test_dueling_q_is_value_plus_centred_advantage(tmp_path, monkeypatch, dueling):
    """--dueling: the Q-network has value and advantage streams, both trained, and the Q of the
    taken actions that reaches the loss is V + A - mean(A); without it, one plain head."""
    spy = Recorder(monkeypatch)
    train(tmp_path, dueling=dueling)
    q_network, target_network = spy.nets[:2]
    for net in (q_network, target_network):
        assert net.dueling is dueling
        assert hasattr(net, "value") is dueling and hasattr(net, "advantage") is dueling
        assert hasattr(net, "head") is not dueling
    for u in spy.updates:
        parts, b = u["parts"], u["batch"]
        if dueling:
            assert parts["value"].shape == (b.obs.shape[0], 1)
            q = parts["value"] + parts["advantage"] - parts["advantage"].mean(1, keepdim=True)
        else:
            q = parts["head"]
        assert close(u["online_obs"], q)
        assert close(u["q_taken"], q.gather(1, b.actions[:, None]).squeeze(1))
    names = [n for n, _ in q_network.named_parameters()]
    start = dict(zip(names, spy.updates[0]["params_before"]))
    for prefix in ("value.", "advantage.") if dueling else ("head.",):
        trained = [n for n, p in q_network.named_parameters()
                   if n.startswith(prefix) and not torch.equal(p.detach(), start[n])]
        assert trained, f"the {prefix} stream was not trained"


# -- --loss --------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["huber", "mse"])
def test_loss_option_picks_huber_or_mse_on_the_same_batch(tmp_path, monkeypatch, loss):
    """--loss: the loss backpropagated in each update equals the chosen function of (Q of the
    taken actions, TD target) on that batch, and differs from the other one."""
    spy = Recorder(monkeypatch)
    train(tmp_path, loss=loss)
    assert len(spy.backward_losses) == len(spy.updates) > 0
    functions = {"huber": functools.partial(F.smooth_l1_loss, beta=1.0), "mse": F.mse_loss}
    other = "mse" if loss == "huber" else "huber"
    for u, backward in zip(spy.updates, spy.backward_losses):
        assert backward is u["loss_object"]  # the td_loss result is what was backpropagated
        chosen = functions[loss](u["q_taken"], u["loss_target"]).item()
        assert u["loss_value"].item() == pytest.approx(chosen, rel=1e-5)
        assert u["loss_value"].item() != pytest.approx(
            functions[other](u["q_taken"], u["loss_target"]).item(), rel=1e-3)


# -- --compile -----------------------------------------------------------------------------------
@pytest.fixture
def aot_eager_compile(monkeypatch):
    """torch.compile with the aot_eager backend (inductor needs a C++ toolchain and is slow);
    records the modules compiled and counts the graphs dynamo actually compiled."""
    from torch._dynamo.backends.debugging import aot_eager

    real_compile = torch.compile
    seen = {"modules": [], "graphs": 0}

    def counting_backend(gm, example_inputs):
        seen["graphs"] += 1
        return aot_eager(gm, example_inputs)

    def compile(model=None, **kwargs):
        seen["modules"].append(model)
        return real_compile(model, **{**kwargs, "backend": counting_backend})

    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", compile)
    yield seen
    torch._dynamo.reset()


def test_compile_trains_through_compiled_networks(tmp_path, monkeypatch, aot_eager_compile):
    """--compile: both Q-networks go through torch.compile, dynamo compiles graphs while the
    loop runs, and the compiled run makes real updates: finite losses, changed weights."""
    spy = Recorder(monkeypatch)
    metrics, _ = train(tmp_path, compile=True, total_timesteps=112, train_frequency=4,
                       exploration_fraction=0.1, end_e=0.5)
    q_network, target_network = spy.nets[:2]
    compiled = aot_eager_compile["modules"]
    assert len(compiled) == 2 and compiled[0] is q_network and compiled[1] is target_network
    assert aot_eager_compile["graphs"] > 0
    assert metrics["num_updates"] == len(spy.updates) == 3
    for u in spy.updates:  # the updates run the compiled wrapper of the online network
        assert isinstance(u["q_net"], torch._dynamo.eval_frame.OptimizedModule)
        assert u["q_net"]._orig_mod is q_network
    assert all(math.isfinite(u["loss"].item()) for u in spy.updates)
    assert any(not torch.equal(p.detach(), before)
               for p, before in zip(q_network.parameters(), spy.updates[0]["params_before"]))


# -- --num-envs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("num_envs", [4, 1])
def test_num_envs_keeps_the_single_env_schedule_in_agent_steps(tmp_path, monkeypatch, num_envs):
    """--num-envs 4 (sync backend): every step adds 4 transitions and counts 4 agent steps; one
    update per --train-frequency agent steps (several in one step when it crosses several
    multiples) and a target sync when global_step crosses a multiple of
    --target-network-frequency: the single-env schedule, at the vector step that reaches it."""
    train_frequency, target_frequency, total = 3, 10, 200
    spy = Recorder(monkeypatch)
    metrics, _ = train(tmp_path, num_envs=num_envs, env_backend="sync", total_timesteps=total,
                       train_frequency=train_frequency, target_network_frequency=target_frequency)

    def reached_at(multiple: int) -> int:  # the first vector step whose global_step >= it
        return -(-multiple // num_envs) * num_envs

    agent_steps = range(LEARNING_STARTS + 1, total + 1)
    expected_updates = [reached_at(m) for m in agent_steps if m % train_frequency == 0]
    expected_syncs = [reached_at(m) for m in agent_steps if m % target_frequency == 0]
    assert metrics["global_step"] == total
    assert len(spy.transitions) == total // num_envs
    assert all(t["obs"].shape == (num_envs, 4) for t in spy.transitions)
    assert [u["step"] for u in spy.updates] == expected_updates
    assert metrics["num_updates"] == len(expected_updates) == (total - LEARNING_STARTS) // 3
    assert [s["step"] for s in spy.syncs] == expected_syncs
