"""ReplayBuffer against ground truth: synthetic frame streams whose pixels encode (env, game, t),
with terminations, truncations, lost lives (episode ends, stack goes on), several envs and a
ring small enough to wrap. Every sampled transition is checked field by field."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlgen.agents.replay import ReplayBatch, ReplayBuffer
from rlgen.agents.sumtree import SumTree

K = 4
FRAME = (2, 2)


def frame(env: int, game: int, t: int) -> np.ndarray:
    return np.array([[env + 1, game + 1], [t % 250 + 1, t // 250 + 1]], dtype=np.uint8)


def reset_stack(env: int, game: int) -> np.ndarray:
    stack = np.zeros((K, *FRAME), dtype=np.uint8)  # zero padding, as the Atari envs do
    stack[-1] = frame(env, game, 0)
    return stack


def make_stream(num_envs: int, steps: int, seed: int, p_end: float = 0.08):
    """Batched add() arguments and a per-env list of ground-truth transitions.

    The action of each transition is its unique id, so a sampled batch names its transitions.
    """
    rng = np.random.default_rng(seed)
    games = [0] * num_envs
    times = [0] * num_envs
    stacks = [reset_stack(e, 0) for e in range(num_envs)]
    truth: list[list[dict]] = [[] for _ in range(num_envs)]
    batches = []
    next_id = 0
    for _ in range(steps):
        obs = np.stack(stacks)
        next_obs = np.empty_like(obs)
        actions = np.zeros(num_envs, dtype=np.int64)
        rewards = rng.normal(size=num_envs).astype(np.float32)
        terms = np.zeros(num_envs, dtype=bool)
        truncs = np.zeros(num_envs, dtype=bool)
        for e in range(num_envs):
            times[e] += 1
            nxt = np.concatenate([stacks[e][1:], frame(e, games[e], times[e])[None]])
            next_obs[e] = nxt
            kind = rng.choice(["none", "term", "trunc", "life"],
                              p=[1 - p_end, p_end / 3, p_end / 3, p_end / 3])
            terms[e] = kind in ("term", "life")
            truncs[e] = kind == "trunc"
            actions[e] = next_id
            truth[e].append(dict(id=next_id, obs=obs[e].copy(), next_obs=nxt, reward=rewards[e],
                                 term=terms[e], trunc=truncs[e]))
            next_id += 1
            if kind in ("term", "trunc"):  # game over or time limit: a real reset
                games[e] += 1
                times[e] = 0
                stacks[e] = reset_stack(e, games[e])
            else:  # no end, or a lost life: the game (and its frame stack) goes on
                stacks[e] = nxt
        batches.append((obs, actions, rewards, next_obs, terms, truncs))
    return batches, truth


def expected(truth: list[list[dict]], slots: int, k: int, n: int, gamma: float) -> dict:
    """Ground truth of every transition that should be sampleable, keyed by id."""
    out = {}
    for env_truth in truth:
        # slot accounting: a transition takes one slot, a stack that does not continue the
        # previous next_obs takes k more
        count, slot_of, prev_next = 0, [], None
        for tr in env_truth:
            if prev_next is None or not np.array_equal(prev_next, tr["obs"]):
                count += k
            slot_of.append(count)
            count += 1
            prev_next = tr["next_obs"]
        for i, tr in enumerate(env_truth):
            if slot_of[i] - k < count - slots:
                continue  # its history was overwritten
            ret, m, complete = 0.0, 0, False
            for j in range(n):
                if i + j >= len(env_truth):
                    break
                step = env_truth[i + j]
                ret += gamma**j * float(step["reward"])
                m = j + 1
                if step["term"] or step["trunc"]:
                    complete = True
                    break
            else:
                complete = True
            if not complete:
                continue  # n-step window not there yet
            last = env_truth[i + m - 1]
            out[tr["id"]] = dict(obs=tr["obs"], next_obs=last["next_obs"], reward=ret,
                                 discount=0.0 if last["term"] else gamma**m)
    return out


def check_batch(batch: ReplayBatch, truth: dict) -> list[int]:
    """Checks every row of the batch against the ground truth (vectorized over the rows)."""
    ids = batch.actions.numpy().tolist()
    unknown = [i for i in ids if i not in truth]
    assert not unknown, f"transitions {unknown[:5]} should not be sampleable"
    rows = [truth[i] for i in ids]
    np.testing.assert_array_equal(batch.obs.numpy(), np.stack([t["obs"] for t in rows]))
    np.testing.assert_array_equal(batch.next_obs.numpy(), np.stack([t["next_obs"] for t in rows]))
    np.testing.assert_allclose(batch.rewards.numpy(), [t["reward"] for t in rows],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batch.discounts.numpy(), [t["discount"] for t in rows], rtol=1e-6)
    return ids


@pytest.mark.parametrize("num_envs,n_step,capacity,prioritized", [
    (1, 1, 10_000, False),     # no wrap-around
    (3, 1, 3 * 40, False),     # wrap-around, several envs
    (3, 3, 3 * 40, False),     # n-step across episode ends and the wrap
    (2, 5, 2 * 60, True),      # prioritized: overwritten transitions leave the sum tree
])
def test_every_sampled_transition_matches_ground_truth(num_envs, n_step, capacity, prioritized):
    gamma = 0.9
    batches, truth = make_stream(num_envs, 300, seed=num_envs * 10 + n_step)
    buf = ReplayBuffer(capacity, (K, *FRAME), num_envs, n_step=n_step, gamma=gamma,
                       prioritized=prioritized, seed=0)
    for args in batches:
        buf.add(*args)
    want = expected(truth, buf.slots, K, n_step, gamma)
    assert len(buf) == len(want)
    seen: set[int] = set()
    for _ in range(40):
        seen.update(check_batch(buf.sample(256), want))
    assert seen == set(want)  # every valid transition is reachable, nothing else is


def test_checks_hold_while_filling():
    batches, truth = make_stream(2, 120, seed=5)
    buf = ReplayBuffer(2 * 30, (K, *FRAME), 2, n_step=2, gamma=0.5, seed=1)
    for i, args in enumerate(batches):
        buf.add(*args)
        partial = [t[:i + 1] for t in truth]
        want = expected(partial, buf.slots, K, 2, 0.5)
        assert len(buf) == len(want)
        if want:
            check_batch(buf.sample(64), want)


def _episode(env, game, rewards, end):
    """Transitions of one game of len(rewards) steps ending with 'term' or 'trunc'."""
    stack = reset_stack(env, game)
    steps = []
    for t, r in enumerate(rewards):
        nxt = np.concatenate([stack[1:], frame(env, game, t + 1)[None]])
        last = t == len(rewards) - 1
        steps.append((stack, r, nxt, last and end == "term", last and end == "trunc"))
        stack = nxt
    return steps


def _add_all(buf, steps):
    for i, (obs, r, nxt, term, trunc) in enumerate(steps):
        buf.add(obs[None], np.array([i]), np.array([r], np.float32), nxt[None],
                np.array([term]), np.array([trunc]))


def _by_action(buf, draws=400):
    batch = buf.sample(draws)
    out = {}
    for b, a in enumerate(batch.actions.tolist()):
        out[a] = (batch.obs[b].numpy(), batch.rewards[b].item(), batch.next_obs[b].numpy(),
                  batch.discounts[b].item())
    return out


def test_truncation_bootstraps_from_the_true_final_obs():
    # SB3's optimize_memory_usage takes next_obs from the following slot, i.e. the next game's
    # reset observation, and so bootstraps a truncated episode from the wrong state.
    gamma = 0.9
    steps = _episode(0, 0, [1.0, 2.0, 3.0], "trunc") + _episode(0, 1, [4.0, 5.0], "term")
    buf = ReplayBuffer(100, (K, *FRAME), n_step=1, gamma=gamma, seed=0)
    _add_all(buf, steps)
    got = _by_action(buf)
    assert sorted(got) == [0, 1, 2, 3, 4]
    final_obs = steps[2][2]
    obs, reward, next_obs, discount = got[2]
    np.testing.assert_array_equal(next_obs, final_obs)
    assert not np.array_equal(next_obs, reset_stack(0, 1))
    assert discount == pytest.approx(gamma)  # truncation keeps bootstrapping
    assert got[4][3] == 0.0  # termination does not
    np.testing.assert_array_equal(got[3][0], reset_stack(0, 1))  # no frame of game 0 leaks in


def test_n_step_returns_by_hand():
    g = 0.5
    steps = _episode(0, 0, [1.0, 2.0, 3.0, 4.0], "term") + _episode(0, 1, [10.0, 20.0], "trunc")
    buf = ReplayBuffer(100, (K, *FRAME), n_step=3, gamma=g, seed=0)
    _add_all(buf, steps)
    got = _by_action(buf)
    hand = {  # action: (return, discount, next_obs = next_obs of transition ...)
        0: (1 + g * 2 + g**2 * 3, g**3, 2),
        1: (2 + g * 3 + g**2 * 4, 0.0, 3),
        2: (3 + g * 4, 0.0, 3),
        3: (4.0, 0.0, 3),
        4: (10 + g * 20, g**2, 5),
        5: (20.0, g, 5),
    }
    assert sorted(got) == sorted(hand)
    for a, (ret, disc, nxt) in hand.items():
        assert got[a][1] == pytest.approx(ret)
        assert got[a][3] == pytest.approx(disc)
        np.testing.assert_array_equal(got[a][2], steps[nxt][2])


def test_last_transitions_wait_for_their_n_step_window():
    steps = _episode(0, 0, [1.0] * 6, "term")
    buf = ReplayBuffer(100, (K, *FRAME), n_step=3, gamma=0.9, seed=0)
    _add_all(buf, steps[:4])
    assert len(buf) == 2  # transitions 0, 1 have 3 steps after them; 2, 3 not yet
    assert set(_by_action(buf)) == {0, 1}
    _add_all(buf, steps[4:])
    assert len(buf) == 6


def test_discontinuous_stream_ends_the_previous_episode_as_truncated():
    a = _episode(0, 0, [1.0, 1.0, 1.0], "term")[:2]  # game 0 stops without an end flag
    b = _episode(0, 1, [2.0, 2.0], "term")
    buf = ReplayBuffer(100, (K, *FRAME), n_step=2, gamma=0.5, seed=0)
    _add_all(buf, a + b)
    got = _by_action(buf)
    np.testing.assert_array_equal(got[1][2], a[1][2])  # bootstraps from its own next obs
    assert got[1][3] == pytest.approx(0.5)
    assert got[0][1] == pytest.approx(1 + 0.5 * 1)  # does not run into game 1's rewards


def test_vector_observations_frame_stack_1():
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(50, (3,), 2, obs_dtype=np.float32, gamma=0.9, seed=0)
    assert buf.frame_stack == 1
    obs = rng.normal(size=(2, 3))  # float64 from the env is stored as float32
    truth = {}
    for i in range(80):
        nxt = rng.normal(size=(2, 3))
        term = rng.random(2) < 0.1
        trunc = ~term & (rng.random(2) < 0.1)
        acts = np.array([2 * i, 2 * i + 1])
        buf.add(obs, acts, np.ones(2), nxt, term, trunc)
        for e in range(2):
            truth[acts[e]] = (obs[e].astype(np.float32), nxt[e].astype(np.float32), term[e])
        obs = np.where((term | trunc)[:, None], rng.normal(size=(2, 3)), nxt)
    batch = buf.sample(500)
    assert batch.obs.dtype == torch.float32 and batch.obs.shape == (500, 3)
    for b, a in enumerate(batch.actions.tolist()):
        o, n, term = truth[a]
        assert a >= 2 * (80 - 25)  # 25 slots per env: older transitions were overwritten
        np.testing.assert_array_equal(batch.obs[b].numpy(), o)
        np.testing.assert_array_equal(batch.next_obs[b].numpy(), n)
        assert batch.discounts[b].item() == pytest.approx(0.0 if term else 0.9)


def test_batch_types_and_shapes():
    batches, _ = make_stream(2, 30, seed=3)
    buf = ReplayBuffer(200, (K, *FRAME), 2, seed=0)
    for args in batches:
        buf.add(*args)
    batch = buf.sample(8)
    assert batch.obs.dtype == torch.uint8 and batch.obs.shape == (8, K, *FRAME)
    assert batch.next_obs.shape == (8, K, *FRAME)
    assert batch.actions.dtype == torch.int64 and batch.actions.shape == (8,)
    for t in (batch.rewards, batch.discounts, batch.weights):
        assert t.dtype == torch.float32 and t.shape == (8,)
    assert torch.all(batch.weights == 1)
    assert batch.indices.shape == (8,)


def test_gather_of_draw_is_sample_and_refuses_overwritten_slots():
    batches, _ = make_stream(1, 40, seed=2, p_end=0.0)
    a, b = (ReplayBuffer(20, (K, *FRAME), n_step=2, gamma=0.9, seed=5) for _ in range(2))
    for args in batches[:15]:
        a.add(*args)
        b.add(*args)
    sampled = a.sample(6)
    indices, weights = b.draw(6)
    gathered = b.gather(indices, weights)
    np.testing.assert_array_equal(indices, sampled.indices)
    for field in ("obs", "actions", "rewards", "next_obs", "discounts", "weights"):
        assert torch.equal(getattr(gathered, field), getattr(sampled, field)), field
    assert torch.equal(b.gather(indices).weights, torch.ones(6))  # weights default to ones
    for args in batches[15:]:  # the ring wraps
        b.add(*args)
    # the newest slot waits for its 2-step window; the next one lost its frame history
    stale = int(np.flatnonzero((b._flags.reshape(-1) & 8) == 0)[0])
    with pytest.raises(ValueError, match=f"slot {stale} holds no sampleable transition"):
        b.gather([stale])
    with pytest.raises(ValueError, match=r"slot ids must be in \[0, 20\)"):
        b.gather([20])


def test_prioritized_sampling_proportions_and_weights():
    alpha, beta = 0.7, 0.5
    batches, truth = make_stream(1, 60, seed=9, p_end=0.0)
    buf = ReplayBuffer(1000, (K, *FRAME), prioritized=True, alpha=alpha, beta=beta, seed=0)
    for args in batches:
        buf.add(*args)
    n = len(buf)
    assert n == 60
    first = buf.sample(n * 10)
    assert torch.allclose(first.weights, torch.ones(n * 10))  # all at max priority
    # give every transition a known priority via update_priorities
    by_id = {}
    for idx, a in zip(first.indices, first.actions.tolist()):
        by_id[a] = idx
    assert len(by_id) == n
    ids = np.array(sorted(by_id))
    td = 0.1 + (ids % 7).astype(float)
    buf.update_priorities(np.array([by_id[i] for i in ids]), td)
    p = (td + buf.eps) ** alpha
    probs = p / p.sum()
    draws = 30_000
    batch = buf.sample(draws)
    counts = np.bincount(np.searchsorted(ids, batch.actions.numpy()), minlength=n)
    chi2 = ((counts - draws * probs) ** 2 / (draws * probs)).sum()
    assert chi2 < 110  # 59 degrees of freedom: mean 59, sd ~11; stratified sampling is tighter
    w = batch.weights.numpy()
    pi = p[np.searchsorted(ids, batch.actions.numpy())]
    np.testing.assert_allclose(w, (pi / p.min()) ** (-beta), rtol=1e-5)
    assert w.max() == pytest.approx(1.0)
    b2 = buf.sample(10, beta=1.0)
    pi2 = p[np.searchsorted(ids, b2.actions.numpy())]
    np.testing.assert_allclose(b2.weights.numpy(), p.min() / pi2, rtol=1e-5)
    # new transitions enter with the largest priority seen so far
    assert buf.max_priority == pytest.approx(td.max() + buf.eps)


def test_update_priorities_skips_overwritten_slots():
    batches, _ = make_stream(1, 40, seed=2, p_end=0.0)
    buf = ReplayBuffer(20, (K, *FRAME), prioritized=True, seed=0)
    for args in batches[:15]:
        buf.add(*args)
    old = buf.sample(32).indices
    for args in batches[15:]:
        buf.add(*args)
    buf.update_priorities(old, np.full(old.shape, 100.0))  # most of them are gone by now
    live = {int(i) for i in buf.sample(4000).indices}
    assert all((buf._flags.reshape(-1)[i] & 8) for i in live)


def test_save_load_round_trip(tmp_path):
    batches, truth = make_stream(2, 150, seed=4)
    kw = dict(n_step=3, gamma=0.9, prioritized=True, seed=0)
    buf = ReplayBuffer(2 * 50, (K, *FRAME), 2, **kw)
    for args in batches[:100]:
        buf.add(*args)
    s = buf.sample(16)
    buf.update_priorities(s.indices, np.arange(16.0))
    path = buf.save(tmp_path / "replay.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["replay.npz"]  # no temp file left behind
    other = ReplayBuffer(2 * 50, (K, *FRAME), 2, **{**kw, "seed": 123})
    other.load(path)
    assert len(other) == len(buf)
    for a, b in zip((buf.sample(64), buf.sample(64)), (other.sample(64), other.sample(64))):
        for field in ("obs", "actions", "rewards", "next_obs", "discounts", "weights"):
            assert torch.equal(getattr(a, field), getattr(b, field))
    for args in batches[100:]:  # both go on identically after the restore
        buf.add(*args)
        other.add(*args)
    assert torch.equal(buf.sample(32).obs, other.sample(32).obs)
    check_batch(other.sample(256), expected(truth, buf.slots, K, 3, 0.9))


def test_save_load_errors(tmp_path):
    buf = ReplayBuffer(100, (K, *FRAME), seed=0)
    wrong = ReplayBuffer(100, (K, *FRAME), n_step=3, seed=0)
    path = buf.save(tmp_path / "r.npz")
    with pytest.raises(ValueError, match="n_step"):
        wrong.load(path)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a replay buffer"):
        buf.load(bad)
    with pytest.raises(FileNotFoundError):
        buf.load(tmp_path / "missing.npz")


def test_nbytes_counts_one_frame_per_slot():
    buf = ReplayBuffer(1000, (4, 84, 84), num_envs=4)
    arrays = (buf._frames, buf._actions, buf._rewards, buf._flags, buf._count)
    assert buf.nbytes == sum(a.nbytes for a in arrays)
    per_slot = 84 * 84 + 4 + 4 + 1  # frame, int32 action, float32 reward, flags
    assert buf.nbytes == 1000 * per_slot + 4 * 8
    pri = ReplayBuffer(1000, (4, 84, 84), prioritized=True)
    assert pri.nbytes == buf.nbytes - 3 * 8 + 2 * 1024 * (8 + 4)  # + sum tree + min tree


def test_bad_input_errors():
    buf = ReplayBuffer(100, (K, *FRAME), 2, seed=0)
    with pytest.raises(ValueError, match="no sampleable"):
        buf.sample(4)
    ok = (np.zeros((2, K, *FRAME), np.uint8), np.zeros(2, int), np.zeros(2), None,
          np.zeros(2, bool), np.zeros(2, bool))
    with pytest.raises(ValueError, match="next_obs must have shape"):
        buf.add(*ok[:3], np.zeros((1, K, *FRAME), np.uint8), *ok[4:])
    with pytest.raises(ValueError, match="dtype float"):
        buf.add(np.zeros((2, K, *FRAME)), *ok[1:3], np.zeros((2, K, *FRAME)), *ok[4:])
    with pytest.raises(ValueError, match="too small"):
        ReplayBuffer(8, (K, *FRAME))
    with pytest.raises(ValueError, match="stack axis"):
        ReplayBuffer(100, (3, 84, 84), frame_stack=4)
    with pytest.raises(RuntimeError, match="prioritized=True"):
        buf.update_priorities([0], [1.0])


def test_sum_tree_prefix_search():
    tree = SumTree(5)
    tree.update([0, 1, 2, 3, 4], [1.0, 2.0, 0.0, 3.0, 4.0])
    assert tree.total == 10.0 and tree.min == 1.0
    prefixes = np.array([0, 0.99, 1, 2.99, 3, 5.99, 6, 9.99])
    np.testing.assert_array_equal(tree.find(prefixes), [0, 0, 1, 1, 3, 3, 4, 4])
    tree.update([4], [0.0])
    assert tree.total == 6.0
    assert 4 not in set(tree.sample(1000, np.random.default_rng(0)).tolist())
