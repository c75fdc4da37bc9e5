"""rlgen: a PyTorch research framework for reinforcement learning and generative models."""

__version__ = "0.1.0"
