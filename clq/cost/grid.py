"""Vectorized evaluation of the cost model over a grid of configurations, for sweeps and plots.

The grid is the Cartesian product latent layer x LR bits x buffer size x L1 size x target; all of it goes
through one call of `clq.cost.engine.evaluate` (the same code as a single `cost_report`), so a 10,000-point
grid takes a few tens of milliseconds (``bench/bench_cost.py``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from clq.cost import engine
from clq.cost.report import resolve_target, config_arrays
from clq.cost.targets import Target
from clq.cost.validate import check_backward_error, check_bits, check_count, check_event, check_latent_layer
from clq.model.specs import LayerSpec

__all__ = ["evaluate_grid"]


def evaluate_grid(
    specs: Sequence[LayerSpec],
    targets: Sequence[Target | str],
    latent_layers: Sequence[int],
    lr_bits: Sequence[int | None],
    buffer_sizes: Sequence[int],
    l1_bytes: Sequence[int] | None = None,
    *,
    new_images: int = 300,
    epochs: int = 4,
    batch_size: int = 128,
    frozen_bits: int | None = 8,
    optimizer_slots: int = 1,
    backward_error: str = "all_but_first",
) -> dict[str, np.ndarray]:
    """Cost of every configuration in targets x L1 sizes x latent layers x LR bits x buffer sizes.

    Args:
      specs: layer specs of the network.
      targets: `Target`s or target names/paths.
      latent_layers: values of l (each validated like ``latent_layer``).
      lr_bits: values of Q_LR (1..16) or None for FP32 latents.
      buffer_sizes: values of N_LR (>= 0).
      l1_bytes: L1 sizes in bytes; None = each target's own. Targets without L1 (``memory_bytes.l1 = 0``)
        ignore this axis: their rows repeat with ``l1_bytes = 0``.
      new_images, epochs, batch_size, frozen_bits, optimizer_slots, backward_error: as in `cost_report`, shared
        by all grid points.

    Returns:
      Columns of equal length G = product of the axis lengths (order: target, L1, latent layer, bits, buffer
      size, the last varying fastest), ready for ``pandas.DataFrame``: ``target`` (str), ``l1_bytes``,
      ``latent_layer``, ``lr_bits`` (float, NaN = FP32), ``buffer_size``, ``memory_<key>`` for every memory key
      of `cost_report` (bytes), ``ext_overflow_bytes``, ``fits`` (bool), ``samples``, ``iterations``,
      ``macs_{frozen,adaptive}``, ``cycles_{frozen,adaptive,total}``, ``latency_s_{...}``, ``energy_j_{...}``.

    Raises:
      ValueError naming the bad axis value, before any compute.
    """
    # NumPy integers (np.arange axes) are accepted as plain ints.
    as_py = lambda xs: [int(v) if isinstance(v, np.integer) else v for v in xs]  # noqa: E731
    latent_layers, lr_bits, buffer_sizes = as_py(latent_layers), as_py(lr_bits), as_py(buffer_sizes)
    l1_bytes = None if l1_bytes is None else as_py(l1_bytes)
    tg = [resolve_target(t) for t in targets]
    if not tg:
        raise ValueError("targets must name at least one target, got an empty list")
    for name, axis in (("latent_layers", latent_layers), ("lr_bits", lr_bits), ("buffer_sizes", buffer_sizes)):
        if len(axis) == 0:
            raise ValueError(f"{name} must hold at least one value, got an empty list")
    for l in latent_layers:
        check_latent_layer(specs, l)
    for b in lr_bits:
        check_bits(b, "lr_bits (replay.bits)", 1, 16)
    for n in buffer_sizes:
        check_count(n, "buffer_sizes (replay.size)", 0)
    if l1_bytes is not None:
        if len(l1_bytes) == 0:
            raise ValueError("l1_bytes must hold at least one value or be None, got an empty list")
        for v in l1_bytes:
            check_count(v, "l1_bytes", 0)
    check_event(new_images, 0, epochs, batch_size)
    check_bits(frozen_bits, "frozen_bits (quant.frozen_bits)", 2, 8)
    check_count(optimizer_slots, "optimizer_slots", 0)
    check_backward_error(backward_error)

    # Expand targets x L1 into (target index, effective L1) pairs, then the product with the other axes.
    pairs = []
    for i, t in enumerate(tg):
        for l1 in ([t.l1_bytes] if l1_bytes is None else l1_bytes):
            pairs.append((i, t.with_l1(l1).l1_bytes))
    pair_idx, lat_idx, bit_idx, buf_idx = (a.reshape(-1) for a in np.meshgrid(
        np.arange(len(pairs)), np.arange(len(latent_layers)), np.arange(len(lr_bits)),
        np.arange(len(buffer_sizes)), indexing="ij"))
    pair_arr = np.asarray(pairs, dtype=np.float64)
    bits_obj = np.asarray(list(lr_bits), dtype=object)[bit_idx]
    cfg = config_arrays(
        pair_arr[pair_idx, 0].astype(np.int64), pair_arr[pair_idx, 1],
        np.asarray(latent_layers, dtype=np.int64)[lat_idx], bits_obj,
        np.asarray(buffer_sizes, dtype=np.float64)[buf_idx], new_images, epochs, batch_size, frozen_bits,
        optimizer_slots)
    ev = engine.evaluate(specs, tg, cfg, backward_error)

    t = ev.totals
    out: dict[str, np.ndarray] = {
        "target": np.asarray([x.name for x in tg], dtype=object)[cfg["target"]],
        "l1_bytes": cfg["l1_bytes"].copy(),
        "latent_layer": cfg["latent_layer"].copy(),
        "lr_bits": np.where(cfg["lr_quantized"], cfg["lr_bits"], np.nan),
        "buffer_size": cfg["buffer_size"].copy(),
    }
    for k, v in ev.memory.items():
        out[f"memory_{k}"] = v
    out["ext_overflow_bytes"] = np.maximum(0.0, ev.tier_used["ext"] - ev.tier_capacity["ext"])
    out["fits"] = ev.fits
    out["samples"] = ev.event["samples"]
    out["iterations"] = ev.event["iterations"]
    out["macs_frozen"], out["macs_adaptive"] = t["macs_frozen"], t["macs_adaptive"]
    for part in ("frozen", "adaptive", "total"):
        cyc = t[f"cycles_{part}"]
        out[f"cycles_{part}"] = cyc
        out[f"latency_s_{part}"] = cyc / ev.clock_hz
        out[f"energy_j_{part}"] = cyc / ev.clock_hz * ev.power_w
    return out
