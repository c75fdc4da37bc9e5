"""A tiny pixel game for tests: catch a falling ball with a paddle (after the "Catch" task of
Mnih et al., "Recurrent Models of Visual Attention", 2014, and DeepMind's bsuite).

The board is ``columns x rows`` cells drawn as ``size x size`` uint8 frames (84x84 by default,
the Atari input size, so the Nature CNN sees the same shapes as on Atari). A ball starts in a
random column of the top row and falls one row per step; the paddle on the bottom row moves
left, stays or moves right. When the ball reaches the bottom the episode ends with reward +1
(caught) or -1 (missed). Observations are the last ``frame_stack`` frames, ``(frame_stack,
size, size)`` uint8, as the Atari preprocessing produces.

A random policy scores about -0.6 on average; the optimal policy scores +1.
Importing this module registers it with gymnasium as ``CATCH_ID``.
"""

from __future__ import annotations

from collections import deque

import gymnasium as gym
import numpy as np

CATCH_ID = "RlgenTest/Catch-v0"


class CatchEnv(gym.Env):
    """Falling ball, bottom paddle, actions 0 = left, 1 = stay, 2 = right."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, columns: int = 7, rows: int = 7, size: int = 84, frame_stack: int = 4,
                 render_mode: str | None = None):
        if size % columns or size % rows:
            raise ValueError(f"size {size} must be a multiple of columns {columns} and rows {rows}")
        self.columns, self.rows, self.size, self.frame_stack = columns, rows, size, frame_stack
        self.cell_w, self.cell_h = size // columns, size // rows
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(0, 255, (frame_stack, size, size), np.uint8)
        self.action_space = gym.spaces.Discrete(3)
        self._frames: deque[np.ndarray] = deque(maxlen=frame_stack)
        self.ball_row = self.ball_col = self.paddle = 0

    def _frame(self) -> np.ndarray:
        frame = np.zeros((self.size, self.size), np.uint8)
        h, w = self.cell_h, self.cell_w
        row, col = self.ball_row, self.ball_col
        frame[row * h:(row + 1) * h, col * w:(col + 1) * w] = 255
        frame[(self.rows - 1) * h:, self.paddle * w:(self.paddle + 1) * w] = 128
        return frame

    def _obs(self) -> np.ndarray:
        return np.stack(self._frames)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.ball_row = 0
        self.ball_col = int(self.np_random.integers(self.columns))
        self.paddle = int(self.np_random.integers(self.columns))
        first = self._frame()
        for _ in range(self.frame_stack):
            self._frames.append(first)
        return self._obs(), {}

    def step(self, action):
        if not self.action_space.contains(int(action)):
            raise ValueError(f"CatchEnv action must be 0, 1 or 2, got {action!r}")
        self.paddle = int(np.clip(self.paddle + int(action) - 1, 0, self.columns - 1))
        self.ball_row += 1
        terminated = self.ball_row == self.rows - 1
        reward = 0.0
        if terminated:
            reward = 1.0 if self.ball_col == self.paddle else -1.0
        self._frames.append(self._frame())
        return self._obs(), reward, terminated, False, {}

    def render(self):
        return np.repeat(self._frame()[:, :, None], 3, axis=2)


if CATCH_ID not in gym.registry:
    gym.register(CATCH_ID, entry_point=CatchEnv, max_episode_steps=100)
