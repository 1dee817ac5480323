"""The deployable frozen stage of a run: what ``clq-run ... export=true`` writes, and ``clq-export RUN_DIR``.

    clq-run export=true                           # writes <run dir>/export/frozen_stage.{npz,json,h}
    clq-export outputs/2025-01-01/12-00-00        # the same files from a finished run's checkpoint
    clq-export RUN_DIR --out fw/model --c-prefix qlr

The export (`clq.quant.export`, docs/quantization.md §4) is ``frozen_stage.npz`` (integer weights, int32
biases, requantization multipliers and shifts, clamps, scales), ``frozen_stage.json`` (format, conventions,
layer specs, tensor dtypes and shapes, SHA-256s) and ``frozen_stage.h`` (the same tensors as a C header).

``clq-export`` rebuilds the frozen stage exactly as the run did: the run's resolved config (results.json),
its stream (the first experience's images calibrate), the folded network from its newest checkpoint, and
`clq.train.loop.calibrate_frozen_stage`, the function the run itself called. Calibration is deterministic,
so when the run already exported, the rebuilt tensors must have the same SHA-256; the command checks that.
Exit status 0 on success, 2 for a run dir it cannot export (no results.json, no checkpoint, an FP32 frozen
stage, an invalid config or a missing dataset), 1 when the rebuilt tensors differ from the run's export.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from clq.quant.export import EXPORT_DIR, EXPORT_NAME, write_export

__all__ = ["EXPORT_DIR", "EXPORT_NAME", "ExportError", "write_export", "export_run", "main"]


class ExportError(Exception):
    """A run dir cannot be exported; `exit_code` is 2 for unusable input, 1 for a non-reproducible stage."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def _read_results(run_dir: str) -> dict:
    path = os.path.join(run_dir, "results.json")
    if not os.path.isdir(run_dir):
        raise ExportError(f"{run_dir} is not a directory")
    if not os.path.exists(path):
        raise ExportError(f"{run_dir} has no results.json: not a clq-run run dir (or the run never started)")
    try:
        with open(path) as f:
            results = json.load(f)
    except (OSError, ValueError) as e:
        raise ExportError(f"{path} cannot be read: {e}") from None
    if not isinstance(results, dict) or not isinstance(results.get("config"), dict):
        raise ExportError(f"{path} holds no resolved config (key 'config')")
    return results


def export_run(run_dir: str, out_dir: str | None = None, c_prefix: str = "clq") -> dict:
    """Rebuild a run's quantized frozen stage from its checkpoint and export it.

    Args:
      run_dir: a ``clq-run`` run dir (results.json and checkpoints/).
      out_dir: where to write ``frozen_stage.{npz,json,h}`` (default ``<run_dir>/export``).
      c_prefix: identifier prefix of the C header.
    Returns:
      `write_export`'s record plus ``checkpoint_event`` and ``matches_run_export`` (True, or None when the run
      had not exported; a mismatch raises `ExportError` with exit code 1).
    Raises:
      ExportError: the run cannot be exported (exit_code 2), or the rebuilt tensors differ from the run's own
        export (exit_code 1; nothing is written).
    """
    from clq.config import ConfigError, experiment_config
    from clq.model.specs import split_specs
    from clq.quant.c_header import check_c_prefix
    from clq.quant.export import frozen_stage_tensors, tensors_sha256
    from clq.run import load_stream, run_fingerprint
    from clq.train.checkpoint import CheckpointError
    from clq.train.loop import restore_frozen_stage

    try:
        check_c_prefix(c_prefix)
    except ValueError as e:
        raise ExportError(f"--c-prefix: {e}") from None
    results = _read_results(run_dir)
    try:
        exp = experiment_config(results["config"])
    except ConfigError as e:
        raise ExportError(f"the run's config is invalid: {e}") from None
    if exp.quant is None:
        raise ExportError("the run's frozen stage is FP32 (quant.frozen_bits=null): there is no integer frozen "
                          "stage to export; run with a quantized frozen stage (quant=int8)")
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    if not glob.glob(os.path.join(ckpt_dir, "ckpt-*.json")):
        why = ("the run wrote no checkpoints (checkpoint_every=0)" if exp.checkpoint_every == 0
               else f"{ckpt_dir} holds no checkpoint")
        raise ExportError(f"{why}, so its folded network is gone; re-run it with checkpoint_every>=1 (or "
                          "export=true)")
    try:
        stream = load_stream(exp)
        specs = exp.model.specs()
        event, frozen = restore_frozen_stage(ckpt_dir, run_fingerprint(results["config"]), stream, specs,
                                             exp.latent_layer, exp.train, exp.quant)
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        raise ExportError(str(e)) from None
    frozen_specs, _ = split_specs(specs, exp.latent_layer)
    rebuilt = tensors_sha256(frozen_stage_tensors(frozen_specs, frozen.layers, exp.quant))
    matches = None
    run_manifest = Path(run_dir) / EXPORT_DIR / f"{EXPORT_NAME}.json"
    if run_manifest.exists():
        try:
            theirs = json.loads(run_manifest.read_text()).get("tensors_sha256")
        except (OSError, ValueError) as e:
            theirs = f"unreadable ({e})"
        matches = theirs == rebuilt
        if not matches:
            raise ExportError(f"the rebuilt frozen stage differs from the run's export {run_manifest}: tensors "
                              f"SHA-256 {rebuilt} vs {theirs}; nothing was written", exit_code=1)
    record = write_export(out_dir or Path(run_dir) / EXPORT_DIR, frozen_specs, frozen.layers, exp.quant, c_prefix)
    return {**record, "checkpoint_event": event, "matches_run_export": matches}


def main(argv: Sequence[str] | None = None) -> int:
    """``clq-export RUN_DIR [--out DIR] [--c-prefix NAME]``."""
    ap = argparse.ArgumentParser(prog="clq-export", description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", help="a clq-run run dir (results.json, checkpoints/)")
    ap.add_argument("--out", default=None, help=f"output folder (default: RUN_DIR/{EXPORT_DIR})")
    ap.add_argument("--c-prefix", default="clq", help="prefix of the C header's identifiers (default: clq)")
    args = ap.parse_args(argv)
    try:
        rec = export_run(args.run_dir, args.out, args.c_prefix)
    except ExportError as e:
        print(f"clq-export: error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"clq-export: frozen stage of {args.run_dir}, rebuilt from the checkpoint of event {rec['checkpoint_event']}")
    for key in ("npz", "json", "c_header"):
        sha = rec.get(f"{key}_sha256")
        print(f"  {rec[key]}" + (f"  sha256 {sha}" if sha else ""))
    print(f"  tensors sha256 {rec['tensors_sha256']}" + {
        True: ": equal to the run's export", None: " (the run had not exported)"}[rec["matches_run_export"]])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
