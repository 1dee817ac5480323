"""Functional latent-replay buffers."""

from clq.replay.buffer import POLICIES, BufferState, ReplayBuffer, buffer_nbytes, make_replay_buffer
from clq.replay.packing import PACK_BITS, pack, packed_words, unpack

__all__ = ["POLICIES", "BufferState", "ReplayBuffer", "buffer_nbytes", "make_replay_buffer", "PACK_BITS", "pack",
           "packed_words", "unpack"]
