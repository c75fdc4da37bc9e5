"""The published DQN settings, as presets of ``DQNConfig`` (``rlgen train dqn --preset NAME``).

Each preset sets the fields its source fixes; fields given explicitly override it, and the
resolved values are what ``config.json`` stores (see ``rlgen.presets``). Step counts are agent
steps (one Atari agent step = 4 emulator frames; one MinAtar step = one frame).

- ``nature``: Mnih et al., "Human-level control through deep reinforcement learning", Nature
  518, 2015, Extended Data Table 1: minibatch 32, replay 1M, target update every 10,000, discount
  0.99, update every 4 steps, RMSProp (lr 2.5e-4, squared-gradient momentum 0.95, gradient
  momentum 0.95 = the decay of the centering mean, min squared gradient 0.01), epsilon 1 -> 0.1
  over 1M steps, replay start 50,000 (played with epsilon 1, a uniform random policy), 50M frames
  = 12.5M agent steps, errors clipped to [-1, 1] (Huber loss). The table counts the target
  period in parameter updates; DeepMind's released code (``NeuralQLearner.lua``) counts it, and
  the epsilon schedule after the replay start, in agent steps, as here. That code adds the 0.01
  inside the square root (``sqrt(E[g^2] - E[g]^2 + 0.01)``); torch's RMSprop, used here, adds its
  eps after it (``sqrt(E[g^2] - E[g]^2) + 0.01``).
- ``cleanrl``: CleanRL's ``dqn_atari.py`` defaults (its Nature-DQN reproduction): Adam lr 1e-4,
  replay 1M, target copy every 1,000 steps, batch 32, epsilon 1 -> 0.01 over the first 10% of
  10M steps, learning from step 80,000, an update every 4 steps, MSE loss.
- ``minatar``: Young & Tian, "MinAtar", arXiv:1903.03176, 2019, and its ``examples/dqn.py``:
  replay 100,000, batch 32, one update per step, target copy every 1,000 steps, 5,000 uniform
  random steps first (the replay start), then epsilon 1 -> 0.1 over 100,000 steps, centered
  RMSProp (lr 2.5e-4, alpha 0.95, eps 0.01, momentum 0.95: ``torch.optim.RMSprop`` with exactly
  these arguments, as that script builds it), Huber loss, discount 0.99, 5M frames. Its network
  (``minatar_cnn`` + a 128-unit layer) is what ``--backbone auto`` picks for MinAtar grids.
"""

from __future__ import annotations

from rlgen.presets import Preset

NATURE = Preset(
    source="Mnih et al. 2015 (Nature), Extended Data Table 1, steps as DeepMind's code counts",
    values=dict(total_timesteps=12_500_000, buffer_size=1_000_000, batch_size=32,
                target_network_frequency=10_000, gamma=0.99, train_frequency=4,
                optimizer="rmsprop", learning_rate=2.5e-4, rmsprop_alpha=0.95,
                rmsprop_eps=0.01, rmsprop_centered=True, momentum=0.0, start_e=1.0, end_e=0.1,
                random_steps=50_000, exploration_steps=1_000_000, learning_starts=50_000,
                loss="huber", tau=1.0),
)

CLEANRL = Preset(
    source="CleanRL dqn_atari.py defaults",
    values=dict(total_timesteps=10_000_000, buffer_size=1_000_000, batch_size=32,
                target_network_frequency=1000, gamma=0.99, train_frequency=4, optimizer="adam",
                learning_rate=1e-4, start_e=1.0, end_e=0.01, exploration_fraction=0.10,
                random_steps=0, exploration_steps=None, learning_starts=80_000, loss="mse",
                tau=1.0),
)

MINATAR = Preset(
    source="Young & Tian 2019 (MinAtar, arXiv:1903.03176), examples/dqn.py",
    values=dict(total_timesteps=5_000_000, buffer_size=100_000, batch_size=32,
                target_network_frequency=1000, gamma=0.99, train_frequency=1,
                optimizer="rmsprop", learning_rate=2.5e-4, rmsprop_alpha=0.95,
                rmsprop_eps=0.01, rmsprop_centered=True, momentum=0.95, start_e=1.0, end_e=0.1,
                random_steps=5000, exploration_steps=100_000, learning_starts=5000,
                loss="huber", tau=1.0),
)

DQN_PRESETS = {"nature": NATURE, "cleanrl": CLEANRL, "minatar": MINATAR}
