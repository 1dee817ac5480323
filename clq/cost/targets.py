"""Hardware targets of the cost model: one YAML file per target under ``conf/target/``.

A target is everything the cost model needs to know about a device, as plain numbers: clock, average power,
memory tiers with capacities, DMA/bus bandwidths, and the measured efficiency (MAC/cycle) of each training
kernel. ``docs/cost_model.md`` documents every field and where each default value comes from; the YAML files
(`conf/target/vega.yaml`, `conf/target/stm32l4.yaml`) cite their sources inline.

Memory tiers (the same four names for every target, so that a placement is comparable across targets):

* ``l1``  -- software-managed scratchpad that kernels compute from (VEGA: 128 kB cluster TCDM). Tensors never
  live there; it holds double-buffered tiles. ``0`` means the target has none (a Cortex-M computes straight
  out of its SRAM), which switches off tiling, tiling overhead and the L2<->L1 DMA bound.
* ``l2``  -- main volatile on-chip SRAM (VEGA: 1.5 MB + 64 kB; STM32L4: 96 kB).
* ``nvm`` -- on-chip non-volatile memory (VEGA: 4 MB MRAM; STM32L4: 1 MB Flash).
* ``ext`` -- external memory (Flash/DRAM over OctaSPI/HyperBus/QSPI), one tier for both kinds.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from clq.model.specs import LAYER_KINDS

__all__ = [
    "Target",
    "KERNEL_PASSES",
    "TIERS",
    "TARGET_DIR",
    "available_targets",
    "load_target",
    "target_from_dict",
]

#: The three training kernels of a layer (paper.md §6): forward, backward-error (dL/dx), backward-gradient
#: (dL/dw).
KERNEL_PASSES = ("forward", "backward_error", "backward_gradient")

#: Memory tiers, fastest first (see the module docstring).
TIERS = ("l1", "l2", "nvm", "ext")

#: Kernel kinds that have an efficiency table; `pool` runs as element-wise work, `conv` may be omitted
#: (im2col + matmul, like `pw`; it only ever runs in an FP32 frozen stage since layer 0 is always frozen).
_TABLE_KINDS = ("pw", "dw", "linear", "conv")

#: `conf/target/` of this repository (the package is installed editable, so this is the source tree).
TARGET_DIR = Path(__file__).resolve().parents[2] / "conf" / "target"


@dataclasses.dataclass(frozen=True)
class Target:
    """One device, as the cost model sees it. All sizes in bytes, rates per clock cycle.

    Attributes:
      name: short identifier, e.g. ``vega``.
      description: one line for reports.
      clock_hz: clock frequency of the cores that run the kernels, Hz.
      power_w: average power while learning, W (energy = latency x power).
      compute_cores: cores that run the training kernels (informational; the efficiencies include it).
      memory_bytes: capacity of each tier in `TIERS`, bytes (``l1 = 0``: no scratchpad).
      bw_l2_l1: L2<->L1 DMA bandwidth, bytes/cycle in *each* direction (full duplex).
      bw_nvm: on-chip non-volatile memory -> L2 bandwidth, bytes/cycle.
      bw_ext: external memory <-> L2 bandwidth, bytes/cycle (half duplex: reads and writes share it).
      tiling_overhead: fractional slow-down of a kernel that needs more than one L1 tile, relative to its
        single-tile efficiency (paper.md §6: ~7 %).
      kernel_call_overhead_cycles: fixed cycles per kernel call (fork/join, DMA programming). A fittable
        parameter; 0 in the shipped targets (nothing was fitted, see docs/cost_model.md).
      elementwise_ops_per_cycle: FP32 element-wise throughput (optimizer step, (de)quantization, pooling).
      frozen_int8_macs_per_cycle: end-to-end 8-bit integer inference rate of the frozen stage, MAC/cycle.
      samples_per_pass: samples the training kernels process together (forward then backward) before the
        gradient is accumulated. 1 = PULP-TrainLib style per-sample training; ``None`` = the whole mini-batch.
        It sets how many samples' activations are kept for backprop, and over how many samples a weight
        fetch is amortised.
      kernel_l1_bytes: L1 sizes (bytes) of the columns of `kernel_macs_per_cycle`, increasing. One column
        means the efficiency does not depend on L1.
      kernel_macs_per_cycle: ``{kind: {pass: (MAC/cycle per column)}}`` for kinds pw, dw, linear
        (and optionally conv).
      source: file the target was read from, if any.
    """

    name: str
    description: str
    clock_hz: float
    power_w: float
    compute_cores: int
    memory_bytes: Mapping[str, int]
    bw_l2_l1: float
    bw_nvm: float
    bw_ext: float
    tiling_overhead: float
    kernel_call_overhead_cycles: float
    elementwise_ops_per_cycle: float
    frozen_int8_macs_per_cycle: float
    samples_per_pass: int | None
    kernel_l1_bytes: tuple[int, ...]
    kernel_macs_per_cycle: Mapping[str, Mapping[str, tuple[float, ...]]]
    source: str | None = None

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def l1_bytes(self) -> int:
        return int(self.memory_bytes["l1"])

    def with_l1(self, l1_bytes: int) -> "Target":
        """The same target with another L1 size (ignored, i.e. kept at 0, for targets without an L1)."""
        if self.l1_bytes == 0:
            return self
        mem = dict(self.memory_bytes)
        mem["l1"] = int(l1_bytes)
        return dataclasses.replace(self, memory_bytes=mem)

    def macs_per_cycle(self, kind: str, kernel_pass: str, l1_bytes: int | None = None) -> float:
        """Kernel efficiency (MAC/cycle) of `kind` x `kernel_pass` at an L1 size (default: the target's)."""
        l1 = self.l1_bytes if l1_bytes is None else l1_bytes
        return float(efficiency_table(self, l1)[LAYER_KINDS.index(kind), KERNEL_PASSES.index(kernel_pass)])


def efficiency_table(target: Target, l1_bytes: float) -> np.ndarray:
    """MAC/cycle for every (kind, pass) at one L1 size.

    Between table columns the efficiency is interpolated linearly in log2(L1 size); outside the table it is
    held at the nearest column (no extrapolation: a bigger L1 than measured is not assumed to help more).
    `conv` falls back to `pw` when absent (both are im2col + matmul); `pool` has no MACs (its work is
    element-wise) and gets 1.0 as a harmless placeholder.

    Returns:
      float64 array [len(LAYER_KINDS), len(KERNEL_PASSES)].
    """
    cols = np.asarray(target.kernel_l1_bytes, dtype=np.float64)
    out = np.ones((len(LAYER_KINDS), len(KERNEL_PASSES)))
    table = dict(target.kernel_macs_per_cycle)
    table.setdefault("conv", table["pw"])
    for ki, kind in enumerate(LAYER_KINDS):
        if kind == "pool":
            continue
        for pi, p in enumerate(KERNEL_PASSES):
            vals = np.asarray(table[kind][p], dtype=np.float64)
            if len(cols) == 1 or l1_bytes <= 0:
                out[ki, pi] = vals[0]
            else:
                out[ki, pi] = np.interp(np.log2(l1_bytes), np.log2(cols), vals)
    return out


def _require(cond: bool, field: str, allowed: str, got: Any, where: str | None) -> None:
    if not cond:
        src = f" in {where}" if where else ""
        raise ValueError(f"target field {field!r}{src} must be {allowed}, got {got!r}")


def _validate(t: Target) -> None:
    w = t.source
    _require(isinstance(t.name, str) and t.name != "", "name", "a non-empty string", t.name, w)
    for f in ("clock_hz", "power_w", "bw_l2_l1", "bw_nvm", "bw_ext", "elementwise_ops_per_cycle",
              "frozen_int8_macs_per_cycle"):
        v = getattr(t, f)
        _require(isinstance(v, (int, float)) and math.isfinite(v) and v > 0, f, "a positive number", v, w)
    _require(isinstance(t.compute_cores, int) and t.compute_cores >= 1, "compute_cores", "an integer >= 1",
             t.compute_cores, w)
    _require(0 <= t.tiling_overhead < 10, "tiling_overhead", "a fraction in [0, 10)", t.tiling_overhead, w)
    _require(t.kernel_call_overhead_cycles >= 0, "kernel_call_overhead_cycles", ">= 0",
             t.kernel_call_overhead_cycles, w)
    _require(t.samples_per_pass is None or (isinstance(t.samples_per_pass, int) and t.samples_per_pass >= 1),
             "samples_per_pass", "an integer >= 1 or null (whole mini-batch)", t.samples_per_pass, w)
    _require(set(t.memory_bytes) == set(TIERS), "memory_bytes", f"a mapping with exactly the keys {list(TIERS)}",
             sorted(t.memory_bytes), w)
    for tier in TIERS:
        v = t.memory_bytes[tier]
        _require(isinstance(v, int) and v >= 0, f"memory_bytes.{tier}", "an integer >= 0", v, w)
    for tier in ("l2", "ext"):
        _require(t.memory_bytes[tier] > 0, f"memory_bytes.{tier}", "> 0", t.memory_bytes[tier], w)
    cols = t.kernel_l1_bytes
    _require(len(cols) >= 1 and all(c > 0 for c in cols) and list(cols) == sorted(set(cols)),
             "kernel_macs_per_cycle.l1_kib", "a non-empty increasing list of positive sizes", cols, w)
    for kind in ("pw", "dw", "linear"):
        _require(kind in t.kernel_macs_per_cycle, f"kernel_macs_per_cycle.{kind}", "present", None, w)
    for kind, passes in t.kernel_macs_per_cycle.items():
        _require(kind in _TABLE_KINDS, "kernel_macs_per_cycle", f"keyed by kinds in {list(_TABLE_KINDS)}",
                 kind, w)
        _require(set(passes) == set(KERNEL_PASSES), f"kernel_macs_per_cycle.{kind}",
                 f"a mapping with the keys {list(KERNEL_PASSES)}", sorted(passes), w)
        for p, vals in passes.items():
            _require(len(vals) == len(cols) and all(isinstance(v, (int, float)) and v > 0 for v in vals),
                     f"kernel_macs_per_cycle.{kind}.{p}", f"{len(cols)} positive numbers (one per l1_kib column)",
                     list(vals), w)


def _as_int(v: Any) -> Any:
    # YAML gives 1.0e6 as float; capacities are integral byte counts.
    return int(v) if isinstance(v, float) and v.is_integer() else v


def target_from_dict(d: Mapping[str, Any], source: str | None = None) -> Target:
    """Build a `Target` from the YAML schema of ``conf/target/*.yaml`` (a plain dict, not a DictConfig).

    Raises:
      ValueError naming the missing or bad field.
    """
    required = ("name", "clock_hz", "power_w", "compute_cores", "memory_bytes", "bandwidth_bytes_per_cycle",
                "tiling_overhead", "elementwise_ops_per_cycle", "frozen_int8_macs_per_cycle",
                "kernel_macs_per_cycle")
    for f in required:
        _require(f in d, f, "present", None, source)
    bw = d["bandwidth_bytes_per_cycle"]
    for f in ("l2_l1", "nvm", "ext"):
        _require(isinstance(bw, Mapping) and f in bw, f"bandwidth_bytes_per_cycle.{f}", "present", None, source)
    table = dict(d["kernel_macs_per_cycle"])
    _require("l1_kib" in table, "kernel_macs_per_cycle.l1_kib", "present (list of L1 sizes in KiB)", None, source)
    l1_kib = table.pop("l1_kib")
    _require(isinstance(l1_kib, (list, tuple)), "kernel_macs_per_cycle.l1_kib", "a list", l1_kib, source)
    mem = d["memory_bytes"]
    _require(isinstance(mem, Mapping), "memory_bytes", "a mapping", mem, source)
    spp = d.get("samples_per_pass", 1)
    return Target(
        name=str(d["name"]),
        description=str(d.get("description", "")),
        clock_hz=float(d["clock_hz"]),
        power_w=float(d["power_w"]),
        compute_cores=_as_int(d["compute_cores"]),
        memory_bytes={k: _as_int(v) for k, v in mem.items()},
        bw_l2_l1=float(bw["l2_l1"]),
        bw_nvm=float(bw["nvm"]),
        bw_ext=float(bw["ext"]),
        tiling_overhead=float(d["tiling_overhead"]),
        kernel_call_overhead_cycles=float(d.get("kernel_call_overhead_cycles", 0.0)),
        elementwise_ops_per_cycle=float(d["elementwise_ops_per_cycle"]),
        frozen_int8_macs_per_cycle=float(d["frozen_int8_macs_per_cycle"]),
        samples_per_pass=None if spp is None else _as_int(spp),
        kernel_l1_bytes=tuple(int(round(float(k) * 1024)) for k in l1_kib),
        kernel_macs_per_cycle={
            kind: {p: tuple(float(v) for v in (vals if isinstance(vals, (list, tuple)) else [vals]))
                   for p, vals in dict(passes).items()}
            for kind, passes in table.items()
        },
        source=source,
    )


def available_targets() -> tuple[str, ...]:
    """Names of the targets shipped in ``conf/target/``."""
    return tuple(sorted(p.stem for p in TARGET_DIR.glob("*.yaml")))


def load_target(name_or_path: str) -> Target:
    """Read ``conf/target/<name>.yaml``, or a YAML file at a path (anything ending in .yaml/.yml).

    Raises:
      ValueError naming `target` and the available names when the name is unknown.
    """
    import yaml  # PyYAML ships with Hydra/OmegaConf; imported lazily to keep `import clq.cost` light.

    s = str(name_or_path)
    path = Path(s) if s.endswith((".yaml", ".yml")) or "/" in s else TARGET_DIR / f"{s}.yaml"
    if not path.is_file():
        raise ValueError(
            f"target must be one of {list(available_targets())} or a path to a target YAML file, got {s!r}"
        )
    with open(path) as f:
        d = yaml.safe_load(f)
    if not isinstance(d, Mapping):
        raise ValueError(f"target file {str(path)!r} must hold a mapping, got {type(d).__name__}")
    return target_from_dict(_fix_yaml_floats(d), source=str(path))


def _fix_yaml_floats(x: Any) -> Any:
    # PyYAML (YAML 1.1) reads "375.0e6" as a string; accept it as a number like OmegaConf/Hydra do.
    if isinstance(x, Mapping):
        return {k: _fix_yaml_floats(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_fix_yaml_floats(v) for v in x]
    if isinstance(x, str) and _FLOAT_RE.match(x.strip()):
        return float(x)
    return x


_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
