"""Experiment tracking: an always-on JSON sink in the run dir plus an optional wandb run (offline by default)."""

from clq.tracking.sinks import Tracker, make_tracker, write_json_atomic

__all__ = ["Tracker", "make_tracker", "write_json_atomic"]
