"""Functional latent-replay buffers."""

from clq.replay.buffer import POLICIES, BufferState, ReplayBuffer, make_replay_buffer

__all__ = ["POLICIES", "BufferState", "ReplayBuffer", "make_replay_buffer"]
