"""Datasets and continual-learning scenarios."""

from clq.data.arrays import load_arrays
from clq.data.fashion_mnist import load_fashion_mnist
from clq.data.sessions import SESSIONS, render_session
from clq.data.stream import Stream, build_nic_stream

__all__ = ["load_arrays", "load_fashion_mnist", "SESSIONS", "render_session", "Stream", "build_nic_stream", "DATASETS"]

#: Names accepted by `data.name`.
DATASETS = ("fashion_mnist", "arrays", "core50")
