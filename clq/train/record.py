"""The results record of a run's learning phase: one builder for a single run and for every member of a group.

`History` collects, event by event, the metrics row and the per-class / per-session accuracies (as
`clq.train.loop.run_continual` and `clq.train.group.run_group` produce them), says when accuracy sits at chance,
and turns into the learning part of results.json (`History.record`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from clq.replay.buffer import buffer_nbytes
from clq.train.metrics import accuracy_record, at_chance, nan_to_none

__all__ = ["History", "buffer_record", "event_fields", "latent_record"]


def event_fields(n_new: int, train_loss: float, train_accuracy: float, composition, epochs: int) -> dict:
    """A learning event's fields of its metrics row: size, last step's loss and accuracy, mini-batch split."""
    return {"n_new": n_new, "train_loss": train_loss, "train_accuracy": train_accuracy,
            "new_per_batch": composition.new_per_batch, "replays_per_batch": composition.replays_per_batch,
            "iterations": composition.iterations_per_epoch * epochs}


def latent_record(latent_layer: int, latent_shape, frozen, lr_scale: float, lr_bits: int | None) -> dict:
    """results.json's ``latent``: where the stage is cut, the latents' shape, scales and bit-widths."""
    return {"layer": latent_layer, "shape": [int(d) for d in latent_shape], "elements": int(np.prod(latent_shape)),
            "a_max": float(frozen.a_max), "frozen_scale": float(frozen.scale), "lr_scale": float(lr_scale),
            "lr_bits": lr_bits, "frozen_bits": frozen.bits}


def buffer_record(buffer_state, size: int, num_classes: int) -> dict:
    """results.json's ``buffer`` from one run's `BufferState` (NumPy or JAX arrays, no member axis)."""
    filled = np.asarray(buffer_state.filled)
    return {"filled": int(filled.sum()), "size": size,
            "class_histogram": np.bincount(np.asarray(buffer_state.labels)[filled], minlength=num_classes).tolist(),
            # Measured: the arrays this process holds (packed words), not the cost model's device bytes.
            "ram_bytes": buffer_nbytes(buffer_state)}


class History:
    """Rows of one run, event by event.

    Args:
      stream: the `clq.data.stream.Stream`.
      on_event: called with (event index, metrics row, detail) as each row is added (sinks: events.jsonl, wandb);
        detail: {"per_class": [accuracy or None per class], "per_session": {session name: accuracy or None}}.
      lr_hint: the learning rates, quoted by the chance-level warning.
      log: told the warning when it is raised.
    """

    def __init__(self, stream, on_event: Callable[[int, dict, dict], None] | None = None, lr_hint: str = "",
                 log: Callable[[str], None] = lambda msg: None):
        self.stream, self.on_event, self.lr_hint, self.log = stream, on_event, lr_hint, log
        self.rows: list[dict] = []  # {"per_class", "per_session", "row"}; a checkpoint's meta holds them
        self.warnings: list[str] = []
        self._chance_warned = False
        self.quantization_warning: str | None = None  # `quantized`'s warning, quoted if a learning event diverges

    def add(self, i: int, evaluation, **fields) -> dict:
        """Record event `i` (`evaluation`: a `clq.train.evaluate.Evaluation`); returns its metrics row."""
        s = self.stream
        row = {"event": i, "classes": s.experience_classes[i].tolist(), "session": int(s.experience_sessions[i]),
               "accuracy": evaluation["accuracy"], **fields}
        self.restore({"per_class": nan_to_none(np.asarray(evaluation["per_class"], float)),
                      "per_session": nan_to_none(np.asarray(evaluation["per_session"], float)), "row": row})
        return row

    def restore(self, entry: dict) -> None:
        """Add an entry as `add` stores it (from a checkpoint): the sinks see its row again, and the chance-level
        check runs on it as it did then, so a resumed run warns exactly as an uninterrupted one."""
        self.rows.append(entry)
        if self.on_event is not None:
            detail = {"per_class": entry["per_class"],
                      "per_session": dict(zip(self.stream.session_names, entry["per_session"]))}
            self.on_event(entry["row"]["event"], entry["row"], detail)
        self._check_chance(entry["row"]["event"])

    def _check_chance(self, i: int) -> None:
        k = self.stream.num_classes
        since = at_chance([r["row"]["accuracy"] for r in self.rows], k)
        if since is not None and not self._chance_warned:
            self._chance_warned = True
            self.warn(
                f"accuracy has stayed at chance level (1/{k}) for {i - since + 1} learning events, since event "
                f"{since}: the adaptive stage has diverged or collapsed onto one class. The usual cause is the "
                f"learning rate for these weights ({self.lr_hint}): pretrained weights need the paper's 5e-5 / 1e-3 "
                "(+experiment=fashion_mnist_imagenet), a network trained from scratch on the offline stream 0.01 / "
                "0.05")

    def quantized(self, warning: str | None, announce: bool = True) -> None:
        """The warning of `clq.train.frozen_stage.check_quantization` (None: the frozen stage held up); `announce`:
        also tell it to the log (a group's members share one frozen stage, told once)."""
        self.quantization_warning = warning
        if warning and announce:
            self.warn(warning)
        elif warning:
            self.warnings.append(warning)

    def warn(self, message: str) -> None:
        """Record a warning of the run (results.json's ``warnings``) and tell it to the log."""
        self.warnings.append(message)
        self.log("warning: " + message)

    def non_finite(self, i: int, lr, step: tuple[int, int] | None = None) -> str:
        """The error message of learning event `i` having produced a non-finite loss or state (`NonFiniteError`).

        A diverging learning event usually means the learning rate `lr` is too high for these weights. When the
        frozen stage's quantization check failed (`quantized`), the network broke before any learning event, and
        the message quotes what the check measured (docs/quantization.md, "When quantization breaks event 0's
        network").

        Args:
          step: (step, steps) of the event where known.
        """
        where = f"learning event {i}" + (f", step {step[0]} of {step[1]}" if step else "")
        msg = f"non-finite loss or parameters in {where}; lower train.lr ({lr})"
        return f"{msg}. Before it, {self.quantization_warning}" if self.quantization_warning else msg

    def record(self, history0, latent: dict, buffer: dict, compiled_event_shapes: int, resumed_from) -> dict:
        """The learning part of results.json.

        Args:
          history0: [(loss, accuracy)] of event 0's epochs.
          latent, buffer: `latent_record`, `buffer_record`.
          resumed_from: the checkpoint's event, or None.
        """
        rows = self.rows
        return {
            **accuracy_record(self.stream, [r["row"]["accuracy"] for r in rows],
                              np.asarray([r["per_class"] for r in rows], dtype=float),
                              np.asarray([r["per_session"] for r in rows], dtype=float)),
            "events": [r["row"] for r in rows],
            "first_event_history": [{"loss": l, "accuracy": a} for l, a in history0],
            "latent": latent,
            "buffer": buffer,
            "compiled_event_shapes": compiled_event_shapes,
            "warnings": list(self.warnings),
            "resumed_from_event": resumed_from,
        }
