"""Collect sweep members (Hydra multirun folders, single runs, or offline wandb runs) into a pandas DataFrame.

One row per member. A member is any folder that holds a ``results.json`` or a Hydra ``.hydra/overrides.yaml``
(a job that started), so a member that crashed is listed too, with its ``status`` and ``error``:

* ``completed``: ``results.json`` says so;
* ``failed``: ``results.json`` has ``status: failed`` and the error (``clq-run`` writes it, with the events
  completed so far), or ``job_failure.json`` holds the exception Hydra caught (written by
  `clq.analysis.callbacks.SweepSummary` when the member raised before writing ``results.json``);
* ``missing``: neither file: the member was killed (out of memory, SIGKILL, a node lost), or is still running.

Columns (`PARAM_COLUMNS` describe the configuration, the rest are measurements):

=====================  ===============================================================================
run_dir, job           member folder; Hydra job number (None for a single run)
status, error          see above; error is None for completed members
overrides              the member's Hydra overrides, space-separated
latent_layer           l (int)
lr_bits, frozen_bits   float; NaN = FP32 (the convention of `clq.cost.evaluate_grid`)
lr_precision           "FP32" or "U<bits>"; precision: "frozen + LR" in paper.md §4's naming ("U8 + U7")
buffer_size, seed      N_LR, seed (int); data_run: CORe50 file-list run (data.run), None otherwise
policy, strategy       replay policy, training strategy
model, dataset         e.g. "mobilenet_v1 x0.5 32px", "fashion_mnist"; target: cost model target name
group                  tracking.group (the wandb group of the sweep)
final_accuracy, ...    final_accuracy, average_accuracy, forgetting (per class), forgetting_session,
                       joint_accuracy (NaN when not run), in [0, 1]
accuracy_per_event     list[float] (one per learning event, the events completed so far for failures)
n_events               len(accuracy_per_event)
memory_<key>           bytes, every key of results.json ``memory_bytes`` (memory_lr_buffer, memory_total, ...)
latency_s, energy_j    per learning event on the target, totals (cost model); also *_adaptive, *_frozen
fits                   bool: the cost model's placement fits the target's memories
wall_time_s            seconds the member took
=====================  ===============================================================================
"""

from __future__ import annotations

import glob
import json
import math
import os
import struct
from typing import Any, Iterable, Mapping

import numpy as np

from clq.atomic import atomic_file

__all__ = [
    "PARAM_COLUMNS",
    "REPLICATE_COLUMNS",
    "METRIC_COLUMNS",
    "FAILURE_FILE",
    "collect_runs",
    "collect_wandb",
    "find_members",
    "member_row",
    "paper_names",
    "params_from_config",
    "precision_label",
    "read_wandb_offline",
    "write_csv",
]

#: Columns that describe a member's configuration (`aggregate_seeds` groups by those present, minus the
#: `REPLICATE_COLUMNS`).
PARAM_COLUMNS = ("latent_layer", "lr_bits", "lr_precision", "frozen_bits", "precision", "buffer_size", "policy",
                 "strategy", "model", "dataset", "target", "seed", "data_run")
#: Repetitions of one configuration, averaged over by `aggregate_seeds`: the seed and, for CORe50, the
#: official file-list run (data.run; paper.md §4 averages runs 0..4).
REPLICATE_COLUMNS = ("seed", "data_run")
#: Scalar measurements per member (memory_* columns are added for every key of ``memory_bytes``).
METRIC_COLUMNS = ("final_accuracy", "average_accuracy", "forgetting", "forgetting_session", "joint_accuracy",
                  "latency_s", "energy_j", "latency_s_adaptive", "energy_j_adaptive", "latency_s_frozen",
                  "energy_j_frozen", "wall_time_s", "n_events")
#: Written in a member's run dir by `clq.analysis.callbacks.SweepSummary` when Hydra caught an exception.
FAILURE_FILE = "job_failure.json"
#: Written in the run dir of a `clq-vsweep` (clq/vsweep.py); its members are the sub-folders.
VSWEEP_FILE = "vsweep.json"

_MISSING = ("no results.json: the member crashed before writing it, was killed (e.g. out of memory), "
            "or is still running")


def _bits(value) -> float:
    """A bit-width from a config (int, None, 'fp32', 'null') as float; NaN = FP32."""
    if value is None or (isinstance(value, str) and value.lower() in ("fp32", "null", "none", "")):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def precision_label(bits: float) -> str:
    """'FP32' for NaN/None, else 'U<bits>' (paper.md §4's naming of a UINT-Q precision)."""
    return "FP32" if bits is None or (isinstance(bits, float) and math.isnan(bits)) else f"U{int(bits)}"


def paper_names(config: Mapping[str, Any], *, default_bits: Any = None) -> dict:
    """The paper's names of a resolved config's main knobs (paper.md §4): l, Q_LR (None: FP32), N_LR, Q_frozen
    (None when ``quant`` is not a mapping: an FP32 frozen stage), as the config spells them.

    A run's wandb config gets them (`clq.tracking.sinks.make_tracker`), and `params_from_config` derives its columns
    from them. `default_bits` stands for a ``replay.bits`` or ``quant.frozen_bits`` that the config lacks: None for
    wandb (it shows what the config says), the config's default 8 for the tables.
    """
    replay, quant = config.get("replay") or {}, config.get("quant")
    bits = replay.get("bits", default_bits)
    return {"l": config.get("latent_layer"), "Q_LR": None if bits in (None, "fp32") else bits,
            "N_LR": replay.get("size"),
            "Q_frozen": quant.get("frozen_bits", default_bits) if isinstance(quant, Mapping) else None}


def params_from_config(config: Mapping[str, Any] | None) -> dict:
    """The `PARAM_COLUMNS` (and group) of one member from its resolved (or composed) config dict."""
    c = dict(config or {})
    get = lambda group, key, default=None: (c.get(group) or {}).get(key, default)  # noqa: E731
    # The knobs as the wandb config names them, a bit-width the config lacks standing for its default 8.
    names = paper_names(c, default_bits=8)
    lr_bits, frozen_bits = _bits(names["Q_LR"]), _bits(names["Q_frozen"])
    lr, fr = precision_label(lr_bits), precision_label(frozen_bits)
    target = c.get("target")
    width, size = get("model", "width"), get("model", "input_size")
    return {
        "latent_layer": names["l"],
        "lr_bits": lr_bits,
        "lr_precision": lr,
        "frozen_bits": frozen_bits,
        # paper.md §4: "A + B" = frozen-stage + LR precision; all-FP32 is just "FP32".
        "precision": "FP32" if lr == fr == "FP32" else f"{fr} + {lr}",
        "buffer_size": names["N_LR"],
        "policy": get("replay", "policy"),
        "strategy": get("train", "strategy", "qlr"),
        "model": f"{get('model', 'name', 'model')} x{width} {size}px" if width is not None else None,
        "dataset": get("data", "name"),
        "target": target.get("name") if isinstance(target, Mapping) else target,
        "seed": c.get("seed"),
        "data_run": get("data", "run"),
        "group": get("tracking", "group"),
    }


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _read_yaml(path: str):
    import yaml  # ships with Hydra/OmegaConf

    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return None


def find_members(root: str) -> list[str]:
    """Run dirs under `root` (itself included): folders holding results.json or .hydra/overrides.yaml.

    Skips wandb, submitit and checkpoint folders. The run dir of a `clq-vsweep` (it holds ``vsweep.json``) is not
    a member itself; its ``bits<Q>_seed<s>`` folders are. Sorted by Hydra job number where the folder name is one.
    """
    members = []
    skip = {"wandb", ".submitit", "checkpoints", ".hydra", "__pycache__"}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if d not in skip and not d.startswith(".tmp")]
        if "results.json" in filenames:
            members.append(dirpath)
        elif os.path.isfile(os.path.join(dirpath, ".hydra", "overrides.yaml")) and VSWEEP_FILE not in filenames:
            members.append(dirpath)
    def key(p):
        rel = os.path.relpath(p, root)
        parts = rel.split(os.sep)
        return [(0, int(s), "") if s.isdigit() else (1, 0, s) for s in parts]
    return sorted(members, key=key)


def member_row(run_dir: str) -> dict:
    """One row of `collect_runs` for one run dir (see the module docstring for the columns)."""
    res = _read_json(os.path.join(run_dir, "results.json"))
    overrides = _read_yaml(os.path.join(run_dir, ".hydra", "overrides.yaml")) or []
    name = os.path.basename(os.path.normpath(run_dir))
    row: dict[str, Any] = {"run_dir": run_dir, "job": int(name) if name.isdigit() else None}
    if isinstance(res, Mapping):
        row["status"] = res.get("status", "completed")
        row["error"] = res.get("error") if row["status"] != "completed" else None
        config = res.get("config")
    else:
        failure = _read_json(os.path.join(run_dir, FAILURE_FILE))
        row["status"] = "failed" if failure else "missing"
        row["error"] = (failure or {}).get("error", _MISSING)
        config = None
        res = {}
    if not isinstance(config, Mapping):  # no resolved config: the composed one Hydra saved for this job
        config = _read_yaml(os.path.join(run_dir, ".hydra", "config.yaml")) or {}
    row["overrides"] = " ".join(str(o) for o in overrides)
    row.update(params_from_config(config))

    acc = [math.nan if a is None else float(a) for a in res.get("accuracy_per_event", [])]
    forgetting = res.get("forgetting") or {}
    # absent or None -> NaN so numeric columns stay float (results.json stores non-finite numbers as null)
    num = lambda v: math.nan if v is None else v  # noqa: E731
    row.update({
        "final_accuracy": num(res.get("final_accuracy")),
        "average_accuracy": num(res.get("average_accuracy")),
        "forgetting": num(forgetting.get("per_class")),
        "forgetting_session": num(forgetting.get("per_session")),
        "joint_accuracy": num(res.get("joint_accuracy")),
        "accuracy_per_event": acc,
        "n_events": len(acc),
        "wall_time_s": num(res.get("wall_time_s")),
    })
    for k, v in (res.get("memory_bytes") or {}).items():
        row[f"memory_{k}"] = v
    cost = res.get("cost") or {}
    for quantity in ("latency_s", "energy_j"):
        q = cost.get(quantity) or {}
        row[quantity] = q.get("total", math.nan)
        row[f"{quantity}_adaptive"] = q.get("adaptive", math.nan)
        row[f"{quantity}_frozen"] = q.get("frozen", math.nan)
    row["fits"] = cost.get("fits")
    if cost.get("config", {}).get("target") and not row["target"]:
        row["target"] = cost["config"]["target"]
    return row


def _frame(rows: list[dict]):
    import pandas as pd

    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=["run_dir", "job", "status", "error", *PARAM_COLUMNS, *METRIC_COLUMNS])
    for col in ("latent_layer", "buffer_size", "seed", "job", "data_run"):
        if col in df:
            df[col] = df[col].astype("Int64")  # nullable: a member whose config could not be read has <NA>
    return df


def collect_runs(roots: str | Iterable[str]):
    """Collect every member under one or more roots (a multirun folder, ``outputs/``, a run dir) into a DataFrame.

    Args:
      roots: folder(s) to search; each member is found by `find_members`.

    Returns:
      ``pandas.DataFrame`` with one row per member and the columns of the module docstring, in job order.
      Failed and missing members are rows too (status/error set, metrics NaN), so nothing disappears silently.
    """
    roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
    rows = [member_row(d) for r in roots for d in find_members(os.fspath(r))]
    return _frame(rows)


# --- wandb offline runs --------------------------------------------------------------------------------------
# wandb >= 0.20 writes offline runs only as a binary `run-<id>.wandb` file (no files/wandb-summary.json), read by
# its Go core. The format is LevelDB's log format with a 7-byte file header: 32 KiB blocks of records, each
# `crc32 (u32) | length (u16) | type (u8) | payload`, type FULL=1 or FIRST=2/MIDDLE=3/LAST=4 for payloads split
# over blocks; a block tail shorter than a header is zero padding. Payloads are `wandb_internal_pb2.Record`s.
_WANDB_HEADER = b":W&B"
_BLOCK = 32768


def _wandb_records(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        buf = f.read()
    if not buf.startswith(_WANDB_HEADER):
        raise ValueError(f"{path}: not a wandb run file (no ':W&B' header)")
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(buf):
        left = _BLOCK - pos % _BLOCK
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", buf[pos:pos + 7])
        if kind == 0 and length == 0:  # padding / preallocated tail
            pos += left
            continue
        data = buf[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            records.append(data)
        elif kind == 2:
            pending = data
        elif kind == 3:
            pending += data
        elif kind == 4:
            records.append(pending + data)
    return records


def _item_key(item) -> str:
    return ".".join(item.nested_key) if len(item.nested_key) else item.key


def read_wandb_offline(run_path: str) -> dict:
    """Read one offline wandb run (its ``offline-run-*`` folder or ``.wandb`` file) without the wandb service.

    Returns:
      ``{"run_id", "project", "group", "name", "config": dict, "summary": dict, "history": list[dict],
      "exit_code": int | None, "step_metrics": {metric or glob: its step metric}, "artifacts": [{"name", "type",
      "files"}]}``; values are decoded from their JSON encoding. (wandb has no reader of its run files in the
      installed version other than its upload service, so the records are read here; `wandb_table` reads a
      logged table.)
    """
    from wandb.proto import wandb_internal_pb2 as pb

    if os.path.isdir(run_path):
        files = glob.glob(os.path.join(run_path, "*.wandb"))
        if not files:
            raise FileNotFoundError(f"{run_path}: no .wandb file")
        run_path = files[0]
    out: dict[str, Any] = {"run_id": None, "project": None, "group": None, "name": None, "config": {},
                           "summary": {}, "history": [], "exit_code": None, "step_metrics": {}, "artifacts": []}
    loads = lambda s: json.loads(s) if s else None  # noqa: E731
    for data in _wandb_records(run_path):
        rec = pb.Record()
        try:
            rec.ParseFromString(data)
        except Exception:  # a torn record at the end of a run that was killed
            continue
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run  # may repeat (run updates); keep the fields a later record leaves empty
            for k, v in (("run_id", r.run_id), ("project", r.project), ("group", r.run_group),
                         ("name", r.display_name)):
                if v:
                    out[k] = v
            out["config"].update({_item_key(i): loads(i.value_json) for i in r.config.update})
        elif kind == "config":
            out["config"].update({_item_key(i): loads(i.value_json) for i in rec.config.update})
        elif kind == "history":
            out["history"].append({_item_key(i): loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            out["summary"].update({k: v for i in rec.summary.update if (k := _item_key(i))
                                   for v in [loads(i.value_json)]})
        elif kind == "exit":
            out["exit_code"] = rec.exit.exit_code
        elif kind == "metric":  # define_metric: a metric (or glob) and the metric it is plotted against
            out["step_metrics"][rec.metric.name or rec.metric.glob_name] = rec.metric.step_metric or None
        elif kind == "artifact":
            out["artifacts"].append({"name": rec.artifact.name, "type": rec.artifact.type,
                                     "files": [e.path for e in rec.artifact.manifest.contents]})
    out["config"].pop("_wandb", None)
    return out


def wandb_table(run_path: str, key: str) -> "pd.DataFrame":
    """A table a run logged (e.g. ``accuracy_matrix/per_class``) as a DataFrame, from its offline folder.

    wandb writes a logged `wandb.Table` as ``files/<path>`` (JSON with ``columns`` and ``data``) and records the
    path in the summary (``<key>.path``).
    """
    import pandas as pd

    w = read_wandb_offline(run_path)
    path = w["summary"].get(f"{key}.path")
    if path is None:
        raise KeyError(f"{run_path}: no table {key!r} (tables: "
                       f"{sorted(k[:-5] for k in w['summary'] if k.endswith('.path'))})")
    with open(os.path.join(run_path, "files", path)) as f:
        t = json.load(f)
    return pd.DataFrame(t["data"], columns=t["columns"])


def collect_wandb(root: str):
    """Collect the offline wandb runs under `root` (``**/wandb/offline-run-*``) into a DataFrame.

    The columns match `collect_runs` where wandb has the value: the parameters from the run's config, the
    summary metrics `clq-run` logs (final_accuracy, average_accuracy, forgetting, memory_lr_buffer,
    memory_total, latency_s, energy_j, wall_time_s), accuracy_per_event from the history, plus run_id, group
    and wandb_dir. status: completed (exit code 0), failed (non-zero), missing (no exit record: killed).
    """
    rows = []
    for run in sorted(glob.glob(os.path.join(root, "**", "wandb", "offline-run-*"), recursive=True)):
        if not os.path.isdir(run):
            continue
        w = read_wandb_offline(run)
        if w["config"].get("clq_sweep_summary"):  # the sweep's own summary run (clq.analysis.wandb_summary)
            continue
        s = w["summary"]
        row = {"run_dir": os.path.dirname(os.path.dirname(run)), "wandb_dir": run, "run_id": w["run_id"],
               "status": {None: "missing", 0: "completed"}.get(w["exit_code"], "failed"),
               "error": None if w["exit_code"] == 0 else f"wandb exit code {w['exit_code']}"}
        row.update(params_from_config(w["config"]))
        row["group"] = w["group"]
        hist = sorted((h for h in w["history"] if "accuracy" in h), key=lambda h: h.get("_step", 0))
        row["accuracy_per_event"] = [float(h["accuracy"]) for h in hist]
        row["n_events"] = len(hist)
        for k in ("final_accuracy", "average_accuracy", "forgetting", "memory_lr_buffer", "memory_total",
                  "latency_s", "energy_j", "wall_time_s", "joint_accuracy"):
            row[k] = math.nan if s.get(k) is None else s[k]
        rows.append(row)
    return _frame(rows)


def _jsonable_cell(v):
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v)
    if isinstance(v, np.generic):
        return v.item()
    return v


def write_csv(df, path: str) -> str:
    """Write a collected DataFrame as CSV (list columns such as accuracy_per_event as JSON strings), atomically.

    Returns the path. The CSV needs neither wandb nor clq to read: ``pandas.read_csv(path)``.
    """
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object:
            out[col] = out[col].map(_jsonable_cell)
    with atomic_file(path, "w", newline="") as f:
        out.to_csv(f, index=False)
    return path
