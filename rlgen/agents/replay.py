"""Memory-lean experience replay with n-step returns and prioritized sampling.

Replay as in Mnih et al. (Nature 2015), storing each 84x84 frame once as the DeepMind code
did, n-step returns (Sutton 1988; Hessel et al., "Rainbow", 2018) and proportional prioritized
replay (Schaul et al., "Prioritized Experience Replay", ICLR 2016).

Layout: one ring of ``ceil(capacity / num_envs)`` *slots* per env, so each env keeps its own
frame stream. A slot holds one frame plus (action, reward, flags). Adding the transition
``(obs, a, r, next_obs)`` of env ``e`` writes one slot whose frame is the newest frame of
``next_obs``; its ``action`` / ``reward`` / ``terminated`` / ``truncated`` go beside it. The
invariant that makes sampling simple:

    for a transition stored in slot p, slots p-k .. p-1 hold exactly the k frames of its obs
    (so slots p-k+1 .. p hold its next obs).

Before writing a transition the buffer checks that the last k frames of the ring equal the
given ``obs``; when they do not (the first step of a new game, whose stack is zero-padded by
the env, or any discontinuity) it first writes the k frames of ``obs`` as *start* slots,
which are never sampled themselves. So a stack never mixes frames of two episodes unless the
env's own observation did (after a lost life with episodic life the game goes on and the
stack is the one the agent saw), and whatever padding the env used at reset is reproduced.
A game over costs k extra slots; a lost life none.

A transition becomes sampleable ("valid") once its n-step window is complete: n - 1 later
transitions of the same episode exist, or the episode ended. Writing slot p (overwriting the
oldest data) invalidates the old transitions in slots p .. p+k, whose history is gone.

Returns at sample time: ``R = sum_{j<m} gamma^j r_{t+j}`` with ``m = n`` or fewer steps when
the episode ends first; ``discounts = 0`` if it ended by *termination*, ``gamma^m`` otherwise,
and ``next_obs`` is the observation after those m steps: on a truncation the true final
observation, from which the target still bootstraps (the bug of Stable-Baselines3's
``optimize_memory_usage`` buffer, which has no final observation to bootstrap from).

Vector observations (CartPole) use ``frame_stack=1``: a slot holds a whole observation and
``obs`` of slot p is slot p-1, so obs and next obs are still stored once each.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rlgen.agents.sumtree import SumTree

_TRANSITION = 1  # the slot holds a transition (else: a start frame)
_TERMINATED = 2
_TRUNCATED = 4
_VALID = 8  # sampleable: n-step window complete and history not overwritten
_ENDED = _TERMINATED | _TRUNCATED
STORAGES = ("cpu", "pinned", "cuda")  # where frames live / how batches reach a CUDA learner


def replay_storage(replay_device: str, device: torch.device) -> str:
    """The buffer's ``storage`` for ``--replay-device`` (auto: pinned for a CUDA learner, cpu
    otherwise); an ``InputError`` when pinned / cuda are asked for without a CUDA learner."""
    from rlgen.errors import InputError

    device = torch.device(device)
    if replay_device == "auto":
        return "pinned" if device.type == "cuda" else "cpu"
    if replay_device not in STORAGES:
        raise InputError(f"--replay-device must be auto, {', '.join(STORAGES)}, "
                         f"got {replay_device!r}")
    if replay_device != "cpu" and device.type != "cuda":
        raise InputError(
            f"--replay-device {replay_device} serves a CUDA learner (page-locked staging, or "
            f"the frames on the GPU), but this run learns on {device}: use --replay-device cpu "
            "(or auto)")
    return replay_device


@dataclass
class ReplayBatch:
    """A sampled batch; tensors on the buffer's device.

    ``obs`` and ``next_obs`` may be (non-contiguous) views of one gathered block of frames:
    read them, do not write into them."""

    obs: torch.Tensor  # (B, *obs_shape), dtype of the buffer (uint8 stays uint8)
    actions: torch.Tensor  # (B,) int64
    rewards: torch.Tensor  # (B,) float32, n-step discounted return
    next_obs: torch.Tensor  # (B, *obs_shape) observation m <= n steps later (or final obs)
    discounts: torch.Tensor  # (B,) float32, gamma^m, 0 where the episode terminated
    weights: torch.Tensor  # (B,) float32 importance weights (ones unless prioritized)
    indices: np.ndarray  # (B,) int64 slot ids for update_priorities


class ReplayBuffer:
    """Ring buffer of transitions from ``num_envs`` parallel envs (see the module docstring).

    ``capacity`` counts slots over all envs (about one per transition; a new game takes
    ``frame_stack`` more). ``frame_stack`` defaults to ``obs_shape[0]`` for uint8 image
    observations ``(k, H, W)`` or ``(k, H, W, 3)`` and to 1 (no stacking) otherwise.

    ``storage`` (for batches on a CUDA ``device``): ``"cpu"`` keeps the frames in host memory
    and stages each batch through page-locked memory; ``"pinned"`` gathers a batch straight
    into page-locked memory (one host copy fewer); ``"cuda"`` also keeps a copy of every frame
    on the GPU (``capacity`` frames of GPU memory: 7 GB for 1M Atari frames) and gathers
    batches there, so only slot ids cross the bus. Batches are the same in all three.
    """

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], num_envs: int = 1, *,
                 frame_stack: int | None = None, obs_dtype=np.uint8, device="cpu",
                 n_step: int = 1, gamma: float = 0.99, prioritized: bool = False,
                 alpha: float = 0.6, beta: float = 0.4, eps: float = 1e-6,
                 seed: int | None = None, storage: str = "cpu") -> None:
        obs_shape = tuple(int(d) for d in obs_shape)
        obs_dtype = np.dtype(obs_dtype)
        if not obs_shape or min(obs_shape) < 1:
            raise ValueError("obs_shape must be a non-empty tuple of positive sizes, "
                             f"got {obs_shape}")
        if frame_stack is None:
            # (k, H, W) grayscale or (k, H, W, 3) colour stacks of uint8 frames
            frame_stack = obs_shape[0] if obs_dtype == np.uint8 and len(obs_shape) >= 3 else 1
        if frame_stack < 1:
            raise ValueError(f"frame_stack must be >= 1, got {frame_stack}")
        if frame_stack > 1 and obs_shape[0] != frame_stack:
            raise ValueError(f"with frame_stack={frame_stack} obs_shape must start with the "
                             f"stack axis ({frame_stack}, ...), got {obs_shape}")
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
        if storage != "cpu" and torch.device(device).type != "cuda":
            raise ValueError(
                f"replay storage {storage!r} serves a CUDA learner (page-locked staging or a "
                f"copy of the frames on the GPU), but the batches go to {torch.device(device)}; "
                "use storage 'cpu' (--replay-device cpu) there")
        if n_step < 1:
            raise ValueError(f"n_step must be >= 1, got {n_step}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        if prioritized and (alpha < 0 or beta < 0 or eps <= 0):
            raise ValueError(f"need alpha >= 0, beta >= 0, eps > 0; got {alpha}, {beta}, {eps}")
        slots = math.ceil(capacity / num_envs) if capacity > 0 else 0
        if slots < 2 * frame_stack + n_step + 1:
            raise ValueError(f"capacity {capacity} is too small for {num_envs} envs: each env's "
                             f"ring needs at least {2 * frame_stack + n_step + 1} slots")
        self.capacity = capacity
        self.obs_shape = obs_shape
        self.obs_dtype = obs_dtype
        self.num_envs = num_envs
        self.frame_stack = frame_stack
        self.frame_shape = obs_shape[1:] if frame_stack > 1 else obs_shape
        self.slots = slots  # per env
        self.device = torch.device(device)
        self.n_step = n_step
        self.gamma = gamma
        self.prioritized = prioritized
        self.alpha = alpha
        self.beta = beta
        self.eps = eps
        self._rng = np.random.default_rng(seed)
        # np.zeros maps fresh zero pages lazily: a 1M-slot buffer costs memory as it fills.
        self._frames = np.zeros((num_envs, slots, *self.frame_shape), dtype=obs_dtype)
        self._actions = np.zeros((num_envs, slots), dtype=np.int32)
        self._rewards = np.zeros((num_envs, slots), dtype=np.float32)
        self._flags = np.zeros((num_envs, slots), dtype=np.uint8)
        self._flat = self._frames.reshape(num_envs * slots, -1)  # a view: one row per slot
        self._count = np.zeros(num_envs, dtype=np.int64)  # slots ever written, per env
        self._pending: list[list[int]] = [[] for _ in range(num_envs)]  # absolute positions
        self._num_valid = 0
        self._tree = SumTree(num_envs * slots) if prioritized else None
        self.max_priority = 1.0
        self._tree_updates: list[tuple[int, float]] = []
        self.storage = storage
        # storage "cuda": a copy of every frame on the GPU, written as frames are added, so a
        # batch is gathered there and only slot ids cross the bus (the host arrays stay the
        # reference, for history checks and saving).
        self._gpu_frames = torch.zeros((num_envs * slots, *self.frame_shape),
                                       dtype=torch.from_numpy(self._flat[:0]).dtype,
                                       device=self.device) if storage == "cuda" else None
        self._gpu_rows: list[int] = []

    # ------------------------------------------------------------------ sizes

    def __len__(self) -> int:
        """Number of transitions that can be sampled now."""
        return self._num_valid

    @property
    def nbytes(self) -> int:
        """Bytes of the numpy arrays allocated for storage (and the priority trees)."""
        arrays = (self._frames, self._actions, self._rewards, self._flags, self._count)
        total = sum(a.nbytes for a in arrays)
        return total + (self._tree.nbytes if self._tree is not None else 0)

    # ------------------------------------------------------------------ adding

    def _check(self, name: str, value, shape: tuple[int, ...]) -> np.ndarray:
        value = np.asarray(value)
        if value.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {value.shape}")
        return value

    def add(self, obs, actions, rewards, next_obs, terminations, truncations) -> None:
        """Adds one step of every env: arrays of shape (num_envs, ...). ``next_obs`` must be
        the true next observation (``final_obs`` for envs whose episode ended this step)."""
        n = self.num_envs
        obs = self._check("obs", obs, (n, *self.obs_shape))
        next_obs = self._check("next_obs", next_obs, (n, *self.obs_shape))
        for name, arr in (("obs", obs), ("next_obs", next_obs)):
            if arr.dtype != self.obs_dtype and not np.can_cast(arr.dtype, self.obs_dtype,
                                                               "same_kind"):
                raise ValueError(f"{name} has dtype {arr.dtype} but the buffer stores "
                                 f"{self.obs_dtype}; pass obs_dtype={arr.dtype} to ReplayBuffer")
        # Compare and store in the buffer's dtype (float64 CartPole obs -> float32).
        obs = obs.astype(self.obs_dtype, copy=False)
        next_obs = next_obs.astype(self.obs_dtype, copy=False)
        actions = self._check("actions", actions, (n,))
        rewards = self._check("rewards", rewards, (n,))
        terms = self._check("terminations", terminations, (n,)).astype(bool)
        truncs = self._check("truncations", truncations, (n,)).astype(bool)
        k = self.frame_stack
        for e in range(n):
            if not self._history_matches(e, obs[e]):
                self._end_pending_episode(e)
                for j in range(k):
                    self._write(e, obs[e][j] if k > 1 else obs[e], 0, 0.0, 0)
            flags = _TRANSITION | (_TERMINATED if terms[e] else 0)
            flags |= _TRUNCATED if truncs[e] and not terms[e] else 0
            pos = self._write(e, next_obs[e][-1] if k > 1 else next_obs[e],
                              int(actions[e]), float(rewards[e]), flags)
            pending = self._pending[e]
            pending.append(pos)
            if flags & _ENDED:
                while pending:
                    self._validate(e, pending.pop(0))
            elif len(pending) >= self.n_step:
                self._validate(e, pending.pop(0))
        self._flush_tree()
        self._flush_gpu()

    def _flush_gpu(self) -> None:
        """Copy the frames written since the last flush to the GPU copy (storage "cuda"): one
        pinned host block, one non-blocking copy, one indexed write."""
        if self._gpu_frames is None or not self._gpu_rows:
            return
        rows = np.array(self._gpu_rows, dtype=np.int64)
        self._gpu_rows.clear()
        frames = torch.from_numpy(np.take(self._flat, rows, axis=0)).pin_memory()
        rows_t = torch.from_numpy(rows).pin_memory().to(self.device, non_blocking=True)
        self._gpu_frames.view(self._gpu_frames.shape[0], -1).index_copy_(
            0, rows_t, frames.to(self.device, non_blocking=True))

    def _history_matches(self, e: int, obs: np.ndarray) -> bool:
        k, count = self.frame_stack, int(self._count[e])
        if count < k:
            return False
        start = (count - k) % self.slots
        if start + k <= self.slots:
            recent = self._frames[e, start:start + k]
        else:
            recent = self._frames[e, (start + np.arange(k)) % self.slots]
        # Bitwise comparison (memcmp of the bytes: ~3x faster than np.array_equal here).
        return (recent if k > 1 else recent[0]).tobytes() == obs.tobytes()

    def _end_pending_episode(self, e: int) -> None:
        # A new stack while the last transition did not end its episode (a discontinuity in
        # the stream): its own next obs is stored, so end it as a truncation.
        if self._pending[e]:
            last = self._pending[e][-1] % self.slots
            self._flags[e, last] |= _TRUNCATED
            while self._pending[e]:
                self._validate(e, self._pending[e].pop(0))

    def _write(self, e: int, frame: np.ndarray, action: int, reward: float, flags: int) -> int:
        absolute = int(self._count[e])
        pos = absolute % self.slots
        if absolute >= self.slots:
            # Overwrites the oldest slot: it and the k slots after it lose their history.
            for j in range(self.frame_stack + 1):
                self._invalidate(e, (pos + j) % self.slots)
        self._frames[e, pos] = frame
        if self._gpu_frames is not None:
            self._gpu_rows.append(e * self.slots + pos)
        self._actions[e, pos] = action
        self._rewards[e, pos] = reward
        self._flags[e, pos] = flags
        self._count[e] = absolute + 1
        return absolute

    def _invalidate(self, e: int, pos: int) -> None:
        if self._flags[e, pos] & _VALID:
            self._flags[e, pos] &= ~np.uint8(_VALID)
            self._num_valid -= 1
            if self._tree is not None:
                self._tree_updates.append((e * self.slots + pos, 0.0))

    def _validate(self, e: int, absolute: int) -> None:
        pos = absolute % self.slots
        self._flags[e, pos] |= _VALID
        self._num_valid += 1
        if self._tree is not None:
            self._tree_updates.append((e * self.slots + pos, self.max_priority ** self.alpha))

    def _flush_tree(self) -> None:
        if self._tree is not None and self._tree_updates:
            idx, val = zip(*self._tree_updates, strict=True)
            self._tree.update(np.array(idx), np.array(val))
        self._tree_updates.clear()

    # ------------------------------------------------------------------ sampling

    def _sample_uniform(self, batch_size: int) -> np.ndarray:
        filled = np.minimum(self._count, self.slots)
        ends = np.cumsum(filled)
        chosen: list[np.ndarray] = []
        need = batch_size
        while need > 0:
            u = self._rng.integers(0, ends[-1], size=max(2 * need, 16))
            env = np.searchsorted(ends, u, side="right")
            pos = u - (ends[env] - filled[env])  # filled slots are always 0 .. filled-1
            ok = (self._flags[env, pos] & _VALID) != 0
            hit = (env * self.slots + pos)[ok][:need]
            chosen.append(hit)
            need -= hit.size
        return np.concatenate(chosen)

    def sample(self, batch_size: int, beta: float | None = None) -> ReplayBatch:
        """``batch_size`` transitions, uniformly or by priority (with replacement)."""
        return self.gather(*self.draw(batch_size, beta))

    def draw(self, batch_size: int, beta: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The slot ids of a batch and their importance weights (ones unless prioritized),
        without reading any frames: ``sample`` is ``gather(*draw(...))``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if self._num_valid == 0:
            raise ValueError("the replay buffer has no sampleable transitions yet (a transition "
                             f"needs its {self.n_step}-step window); add more steps first")
        if self._tree is not None:
            indices = self._tree.sample(batch_size, self._rng)
            beta = self.beta if beta is None else beta
            # w_i = (N P(i))^-beta / max_j w_j = (p_i / p_min)^-beta
            weights = (self._tree.get(indices) / self._tree.min) ** (-beta)
        else:
            indices = self._sample_uniform(batch_size)
            weights = np.ones(batch_size, dtype=np.float64)
        return indices, weights

    def gather(self, indices, weights=None) -> ReplayBatch:
        """The batch of the transitions at slot ids ``indices`` (from ``draw``), as tensors on
        the buffer's device; ``weights`` default to ones. Every slot must still hold a
        sampleable transition (a ValueError names the first that does not)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        batch_size = indices.size
        if batch_size == 0:
            raise ValueError("gather needs at least one slot id")
        if indices.min() < 0 or indices.max() >= self.num_envs * self.slots:
            raise ValueError(f"slot ids must be in [0, {self.num_envs * self.slots}), got "
                             f"{indices.min()} .. {indices.max()}")
        weights = (np.ones(batch_size, dtype=np.float64) if weights is None
                   else np.asarray(weights, dtype=np.float64).reshape(batch_size))
        env, pos = np.divmod(indices, self.slots)
        stale = (self._flags[env, pos] & _VALID) == 0
        if stale.any():
            raise ValueError(f"slot {indices[stale][0]} holds no sampleable transition (never "
                             "written, or overwritten since it was drawn)")
        k, n, s = self.frame_stack, self.n_step, self.slots
        if n == 1:
            steps = np.ones(batch_size, dtype=np.int64)
            returns = self._rewards[env, pos].astype(np.float64)
            terminated = (self._flags[env, pos] & _TERMINATED) != 0
        else:
            window = (pos[:, None] + np.arange(n)) % s
            ended = (self._flags[env[:, None], window] & _ENDED) != 0
            # step j counts when no episode end happened at an earlier step of the window
            include = (np.cumsum(ended, axis=1) - ended) == 0
            steps = include.sum(axis=1)
            returns = (self._rewards[env[:, None], window] * include
                       * self.gamma ** np.arange(n)).sum(axis=1)
            last = (pos + steps - 1) % s
            terminated = (self._flags[env, last] & _TERMINATED) != 0
        discounts = np.where(terminated, 0.0, self.gamma ** steps)
        # One gather of the k + n frames from slot pos-k on holds both stacks: obs are the
        # first k, next_obs the k starting at offset `steps` (k=1: the slots pos-1 and last).
        rows = env[:, None] * s + (pos[:, None] + np.arange(-k, n)) % s
        scalars = np.stack([self._actions[env, pos], returns, discounts, weights], axis=1)
        aligned = n == 1 or bool((steps == n).all())  # then next_obs is a plain slice
        if self.device.type == "cuda":
            # Host-to-device copies from pinned staging memory, taken from torch's caching
            # host allocator, which does not reuse a block before its copy is done; the
            # stacks are then cut out on the device.
            span_t = self._gather_frames_cuda(rows.reshape(-1)).view(
                batch_size, k + n, *self.frame_shape)
            scalars_t = torch.from_numpy(scalars).pin_memory().to(self.device, non_blocking=True)
            if aligned:
                next_obs = span_t[:, n:n + k] if k > 1 else span_t[:, n]
            else:
                steps_t = torch.from_numpy(steps).to(self.device, non_blocking=True)
                rows_t = torch.arange(batch_size, device=self.device)
                if k > 1:
                    offsets = steps_t[:, None] + torch.arange(k, device=self.device)
                    next_obs = span_t[rows_t[:, None], offsets]
                else:
                    next_obs = span_t[rows_t, steps_t]
        else:
            span = np.take(self._flat, rows.reshape(-1), axis=0).reshape(
                batch_size, k + n, *self.frame_shape)
            span_t, scalars_t = torch.from_numpy(span), torch.from_numpy(scalars)
            if aligned:
                next_obs = span_t[:, n:n + k] if k > 1 else span_t[:, n]
            else:  # numpy's fancy indexing is ~20x faster than torch's on CPU here
                rows = np.arange(batch_size)
                picked = (span[rows[:, None], steps[:, None] + np.arange(k)] if k > 1
                          else span[rows, steps])
                next_obs = torch.from_numpy(picked)
        obs = span_t[:, :k] if k > 1 else span_t[:, 0]
        return ReplayBatch(
            obs=obs, actions=scalars_t[:, 0].long(), rewards=scalars_t[:, 1].float(),
            next_obs=next_obs, discounts=scalars_t[:, 2].float(),
            weights=scalars_t[:, 3].float(), indices=indices)

    def _gather_frames_cuda(self, rows: np.ndarray) -> torch.Tensor:
        """The frames of slots ``rows`` on the GPU, ``(len(rows), *frame_shape)``: storage
        "cuda" gathers them there (only the slot ids are copied); "pinned" gathers them on the
        host straight into page-locked memory, then one non-blocking copy; "cpu" gathers into
        pageable memory and stages that through page-locked memory (one host copy more)."""
        if self._gpu_frames is not None:
            rows_t = torch.from_numpy(rows).pin_memory().to(self.device, non_blocking=True)
            return self._gpu_frames.index_select(0, rows_t)
        if self.storage == "pinned":
            staged = torch.empty((rows.size, *self.frame_shape),
                                 dtype=torch.from_numpy(self._flat[:0]).dtype, pin_memory=True)
            np.take(self._flat, rows, axis=0, out=staged.numpy().reshape(rows.size, -1))
        else:
            staged = torch.from_numpy(np.take(self._flat, rows, axis=0)).pin_memory()
        return staged.view(rows.size, *self.frame_shape).to(self.device, non_blocking=True)

    def update_priorities(self, indices, td_errors) -> None:
        """Sets priorities ``(|td_error| + eps) ** alpha`` of sampled transitions (skipping any
        overwritten since they were sampled)."""
        if self._tree is None:
            raise RuntimeError("update_priorities needs ReplayBuffer(..., prioritized=True)")
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if isinstance(td_errors, torch.Tensor):
            td_errors = td_errors.detach().float().cpu().numpy()
        priorities = np.abs(np.asarray(td_errors, dtype=np.float64)).reshape(-1) + self.eps
        if priorities.shape != indices.shape:
            raise ValueError(f"got {indices.size} indices but {priorities.size} td_errors")
        if not np.all(np.isfinite(priorities)):
            raise ValueError("td_errors must be finite")
        env, pos = np.divmod(indices, self.slots)
        live = (self._flags[env, pos] & _VALID) != 0
        self.max_priority = max(self.max_priority, float(priorities.max()))
        self._tree.update(indices[live], priorities[live] ** self.alpha)

    # ------------------------------------------------------------------ saving

    def _config(self) -> dict:
        return {"capacity": self.capacity, "obs_shape": list(self.obs_shape),
                "obs_dtype": self.obs_dtype.str, "num_envs": self.num_envs,
                "frame_stack": self.frame_stack, "n_step": self.n_step,
                "prioritized": self.prioritized, "alpha": self.alpha}

    def state_dict(self) -> dict[str, np.ndarray]:
        """The filled part of the buffer as numpy arrays (for ``np.savez``, not torch.save)."""
        used = int(min(self._count.max(), self.slots))
        pending = np.full((self.num_envs, self.n_step), -1, dtype=np.int64)
        for e, p in enumerate(self._pending):
            pending[e, :len(p)] = p
        state = {
            "config": np.array(json.dumps(self._config())),
            "frames": self._frames[:, :used], "actions": self._actions[:, :used],
            "rewards": self._rewards[:, :used], "flags": self._flags[:, :used],
            "count": self._count.copy(), "pending": pending,
            "max_priority": np.array(self.max_priority),
            "rng": np.array(json.dumps(self._rng.bit_generator.state)),
        }
        if self._tree is not None:
            state["priorities"] = self._tree.leaves().reshape(self.num_envs, self.slots)[:, :used]
        return state

    def load_state_dict(self, state) -> None:
        config = json.loads(str(state["config"]))
        if config != self._config():
            diff = {k: (v, self._config().get(k)) for k, v in config.items()
                    if self._config().get(k) != v}
            raise ValueError(f"replay state does not fit this buffer (saved, this): {diff}")
        used = int(state["frames"].shape[1])
        self._frames[:, :used] = state["frames"]
        self._actions[:, :used] = state["actions"]
        self._rewards[:, :used] = state["rewards"]
        self._flags[:, :used] = state["flags"]
        self._flags[:, used:] = 0
        self._count[:] = state["count"]
        self._pending = [[int(p) for p in row if p >= 0] for row in state["pending"]]
        self._num_valid = int(((self._flags & _VALID) != 0).sum())
        self.max_priority = float(state["max_priority"])
        self._rng.bit_generator.state = json.loads(str(state["rng"]))
        if self._tree is not None:
            leaves = np.zeros((self.num_envs, self.slots))
            leaves[:, :used] = state["priorities"]
            self._tree = SumTree(self.num_envs * self.slots)
            live = np.flatnonzero(leaves.reshape(-1) > 0)
            self._tree.update(live, leaves.reshape(-1)[live])
        if self._gpu_frames is not None:  # the GPU copy follows the loaded frames
            self._gpu_rows.clear()
            self._gpu_frames.copy_(torch.from_numpy(self._flat).view(self._gpu_frames.shape))

    def save(self, path: str | os.PathLike) -> Path:
        """Writes ``state_dict()`` to ``path`` (.npz) atomically: temp file, fsync, rename."""
        from rlgen.checkpoint import atomic_write

        return atomic_write(path, lambda f: np.savez(f, **self.state_dict()))

    def load(self, path: str | os.PathLike) -> None:
        """Restores a buffer written by :meth:`save` into this (identically built) buffer."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no replay buffer file at {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                state = {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path} is not a replay buffer saved by ReplayBuffer.save: {exc}"
                             ) from exc
        missing = {"config", "frames", "count"} - set(state)
        if missing:
            raise ValueError(f"{path} is not a replay buffer file (missing {sorted(missing)})")
        self.load_state_dict(state)
