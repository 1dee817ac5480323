"""Cost report of one configuration: a JSON-able dict (``clq-cost format=json``) and its table rendering.

Entry points: `cost_report` (the dict that every ``clq-run`` result carries), `memory_bytes` (the memory
breakdown alone) and `format_table`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from clq.cost import engine
from clq.cost.targets import KERNEL_PASSES, Target, load_target
from clq.cost.validate import check_backward_error, check_bits, check_count, check_event, check_latent_layer
from clq.model.specs import LayerSpec

__all__ = ["cost_report", "memory_bytes", "format_table", "config_arrays", "resolve_target"]

_TIER_NAMES = {v: k for k, v in engine.TIER_CODES.items()}
_MEMORY_KEYS = ("lr_buffer", "lr_labels", "new_latents", "frozen_weights", "frozen_biases", "frozen_requant",
                "adaptive_weights", "gradients", "optimizer_state", "activations", "l1_tiles", "total")


def resolve_target(target: Target | str, field: str = "target") -> Target:
    """A `Target`, or one loaded by name or path (`load_target`); `field` names the argument in the error."""
    if isinstance(target, Target):
        return target
    if isinstance(target, str):
        return load_target(target)
    raise ValueError(f"{field} must be a Target or a target name/path, got {type(target).__name__}")


def config_arrays(
    target_index: Any,
    l1_bytes: Any,
    latent_layer: Any,
    lr_bits: Any,
    buffer_size: Any,
    new_images: Any,
    epochs: Any,
    batch_size: Any,
    frozen_bits: Any,
    optimizer_slots: Any,
) -> dict[str, np.ndarray]:
    """Pack already-validated per-configuration values (scalars or equal-length sequences) for `engine.evaluate`.

    ``lr_bits``/``frozen_bits`` may hold None (FP32), encoded as 32 bits + a `*_quantized` flag.
    """
    def col(v, dtype):
        return np.atleast_1d(np.asarray(v, dtype=dtype))

    def bits(v):
        a = col(v, object)
        return np.array([32.0 if b is None else float(b) for b in a]), np.array([b is not None for b in a])

    lb, lq = bits(lr_bits)
    fb, fq = bits(frozen_bits)
    out = {
        "target": col(target_index, np.int64),
        "l1_bytes": col(l1_bytes, np.float64),
        "latent_layer": col(latent_layer, np.int64),
        "lr_bits": lb,
        "lr_quantized": lq,
        "buffer_size": col(buffer_size, np.float64),
        "new_images": col(new_images, np.float64),
        "epochs": col(epochs, np.float64),
        "batch_size": col(batch_size, np.float64),
        "frozen_bits": fb,
        "frozen_quantized": fq,
        "optimizer_slots": col(optimizer_slots, np.float64),
    }
    n = max(len(v) for v in out.values())
    return {k: np.broadcast_to(v, (n,)) for k, v in out.items()}


def _validate(specs, latent_layer, buffer_size, lr_bits, new_images, epochs, batch_size, frozen_bits,
              optimizer_slots, backward_error, l1_bytes) -> None:
    check_latent_layer(specs, latent_layer)
    check_bits(lr_bits, "lr_bits (replay.bits)", 1, 16)
    check_bits(frozen_bits, "frozen_bits (quant.frozen_bits)", 2, 8)
    check_event(new_images, buffer_size, epochs, batch_size)
    check_count(optimizer_slots, "optimizer_slots", 0)
    check_backward_error(backward_error)
    if l1_bytes is not None:
        check_count(l1_bytes, "l1_bytes (l1_kib)", 0)


def _py(x: Any) -> Any:
    """NumPy scalar -> int (when integral) or float, for JSON."""
    v = float(x)
    return int(v) if v.is_integer() and abs(v) < 2**53 else v


def cost_report(
    specs: Sequence[LayerSpec],
    latent_layer: int,
    buffer_size: int,
    lr_bits: int | None,
    new_images: int,
    epochs: int,
    batch_size: int,
    target: Target | str,
    frozen_bits: int | None = 8,
    *,
    optimizer_slots: int = 1,
    backward_error: str = "all_but_first",
    l1_bytes: int | None = None,
    compare: Sequence[Target | str] = (),
) -> dict:
    """Memory, placement, cycles, latency and energy of one learning event, as a JSON-able dict.

    Args:
      specs: layer specs of the network (`clq.model.specs.mobilenet_v1_specs(...)`).
      latent_layer: l; the replay is the output of layer l, layers 0..l are frozen, l+1.. adapt.
      buffer_size: N_LR, latent replays in the buffer (>= 0).
      lr_bits: Q_LR in 1..16, or None for FP32 latents.
      new_images: new images per learning event (>= 1).
      epochs: epochs per learning event (>= 1).
      batch_size: mini-batch size (new + replays, >= 1).
      target: a `Target` or a target name/path for `load_target`.
      frozen_bits: frozen-stage weight bits 2..8 (integer inference), or None for an FP32 frozen stage.
      optimizer_slots: FP32 state tensors per adaptive weight (SGD with momentum, the paper's: 1; plain SGD: 0).
      backward_error: `all_but_first` (complete backprop) or `none` (the paper's per-event accounting).
      l1_bytes: override the target's L1 size (ignored for targets without L1); None keeps the target's.
      compare: other targets to evaluate the same configuration on; the report gives other/this ratios.

    Returns:
      dict with keys ``config``, ``event``, ``memory_bytes``, ``placement``, ``fits``, ``overflow``, ``macs``,
      ``cycles``, ``latency_s``, ``energy_j``, ``kernels``, ``layers``, ``comparison``. Bytes are integers,
      cycles floats, latency in seconds, energy in joules.

    Raises:
      ValueError naming the bad argument before any compute.
    """
    _validate(specs, latent_layer, buffer_size, lr_bits, new_images, epochs, batch_size, frozen_bits,
              optimizer_slots, backward_error, l1_bytes)
    main = resolve_target(target)
    others = [resolve_target(t, "compare") for t in compare]
    others = [t for t in others if t.name != main.name]
    if l1_bytes is not None:
        main = main.with_l1(l1_bytes)
    targets = [main, *others]
    cfg = config_arrays(np.arange(len(targets)), [t.l1_bytes for t in targets], latent_layer, lr_bits,
                        buffer_size, new_images, epochs, batch_size, frozen_bits, optimizer_slots)
    ev = engine.evaluate(specs, targets, cfg, backward_error)
    rep = _single(specs, ev, 0, main, backward_error, latent_layer, lr_bits, frozen_bits, optimizer_slots)
    rep["comparison"] = []
    for i, other in enumerate(others, start=1):
        o = _totals(ev, i)
        entry = {"target": other.name, "latency_s": o["latency_s"], "energy_j": o["energy_j"],
                 "fits": bool(ev.fits[i]), "ratio_definition": f"{other.name} / {main.name}"}
        for q in ("latency_s", "energy_j"):
            entry[q.split("_")[0] + "_ratio"] = {
                part: (o[q][part] / rep[q][part] if rep[q][part] > 0 else math.nan)
                for part in ("frozen", "adaptive", "total")
            }
        rep["comparison"].append(entry)
    return rep


def memory_bytes(
    specs: Sequence[LayerSpec],
    latent_layer: int,
    buffer_size: int,
    lr_bits: int | None,
    new_images: int = 300,
    batch_size: int = 128,
    target: Target | str = "vega",
    frozen_bits: int | None = 8,
    *,
    optimizer_slots: int = 1,
) -> dict[str, int]:
    """The memory breakdown alone (bytes per tensor class, see `clq.cost.engine`), e.g. ``['lr_buffer']``."""
    _validate(specs, latent_layer, buffer_size, lr_bits, new_images, 1, batch_size, frozen_bits,
              optimizer_slots, "all_but_first", None)
    tgt = resolve_target(target)
    cfg = config_arrays(0, tgt.l1_bytes, latent_layer, lr_bits, buffer_size, new_images, 1, batch_size,
                        frozen_bits, optimizer_slots)
    ev = engine.evaluate(specs, [tgt], cfg)
    return {k: _py(ev.memory[k][0]) for k in _MEMORY_KEYS}


def _totals(ev: engine.Evaluation, i: int) -> dict:
    t = ev.totals
    clock, power = ev.clock_hz[i], ev.power_w[i]
    cyc = {"frozen": t["cycles_frozen"][i], "adaptive": t["cycles_adaptive"][i], "total": t["cycles_total"][i]}
    lat = {k: float(v / clock) for k, v in cyc.items()}
    return {"cycles": {k: float(v) for k, v in cyc.items()}, "latency_s": lat,
            "energy_j": {k: v * float(power) for k, v in lat.items()}}


def _single(specs, ev: engine.Evaluation, i: int, target: Target, backward_error, latent_layer, lr_bits,
            frozen_bits, optimizer_slots) -> dict:
    clock, power = float(ev.clock_hz[i]), float(ev.power_w[i])
    sec = lambda cyc: float(cyc) / clock  # noqa: E731
    tot = _totals(ev, i)
    t = ev.totals
    event = {k: _py(v[i]) for k, v in ev.event.items()}
    event["replays"] = event["buffer_size"]
    s, n_new, steps = ev.event["samples"][i], ev.event["new_images"][i], ev.event["iterations"][i]

    # Placement: tier -> capacity / used / tensors (summed over layers for per-layer tensors).
    tiers: dict[str, Any] = {}
    for tier in ("l1", "l2", "nvm", "ext"):
        cap, used = float(ev.tier_capacity[tier][i]), float(ev.tier_used[tier][i])
        tiers[tier] = {"capacity_bytes": _py(cap), "used_bytes": _py(used),
                       "overflow_bytes": _py(max(0.0, used - cap)), "tensors": {}}
    tiers["l1"]["tensors"]["tiles (double-buffered)"] = _py(ev.memory["l1_tiles"][i])
    p = ev.placement
    whole = {"frozen": ("frozen_weights", "frozen_biases", "frozen_requant"),
             "lr_buffer": ("lr_buffer", "lr_labels"), "activations": ("activations",),
             "new_latents": ("new_latents",)}
    for key, names in whole.items():
        code = int(p[key][i])
        for nm in names:
            if code and ev.memory[nm][i] > 0:
                tiers[_TIER_NAMES[code]]["tensors"][nm] = _py(ev.memory[nm][i])
    la = engine.layer_arrays(specs)
    wbytes = la.params * engine.FP32_BYTES
    for key, mem_key, scale in (("weights", "adaptive_weights", 1.0), ("gradients", "gradients", 1.0),
                                ("optimizer_state", "optimizer_state", float(optimizer_slots))):
        for code, tier in _TIER_NAMES.items():
            b = float((wbytes * (p[key][i] == code)).sum() * scale)
            if b > 0:
                tiers[tier]["tensors"][mem_key] = _py(b)
    overflow = {k: v["overflow_bytes"] for k, v in tiers.items() if v["overflow_bytes"] > 0}

    # Per layer.
    layers = []
    for k, sp in enumerate(specs):
        entry: dict[str, Any] = {"index": sp.index, "name": sp.name, "kind": sp.kind,
                                 "stage": "adaptive" if ev.adaptive[i, k] else "frozen", "params": sp.params}
        if ev.adaptive[i, k]:
            entry["macs"] = {ps: _py(ev.macs[pi, i, k]) for pi, ps in enumerate(KERNEL_PASSES)}
            entry["cycles"] = {ps: float(ev.cycles[pi, i, k]) for pi, ps in enumerate(KERNEL_PASSES)}
            entry["bound"] = {ps: (engine.BOUNDS[ev.bound[pi, i, k]] if ev.cycles[pi, i, k] > 0 else None)
                              for pi, ps in enumerate(KERNEL_PASSES)}
            entry["tiles"] = {ps: _py(ev.tiles[pi, i, k]) for pi, ps in enumerate(KERNEL_PASSES)}
            per_event = {ps: float(ev.cycles[pi, i, k] * s) for pi, ps in enumerate(KERNEL_PASSES)}
            per_event["optimizer"] = float(ev.optimizer_cycles[i, k] * steps)
            if sp.has_params:
                for key in ("weights", "gradients", "optimizer_state"):
                    code = int(p[key][i, k])
                    entry[f"{key}_tier"] = _TIER_NAMES.get(code)
        else:
            entry["macs"] = {"forward": _py(sp.macs), "backward_error": 0, "backward_gradient": 0}
            entry["cycles"] = {"forward": float(ev.frozen_cycles[i, k]), "backward_error": 0.0,
                               "backward_gradient": 0.0}
            entry["bound"] = {"forward": engine.BOUNDS[ev.frozen_bound[i, k]]}
            per_event = {"forward": float(ev.frozen_cycles[i, k] * n_new)}
        per_event["total"] = sum(per_event.values())
        entry["cycles_per_event"] = per_event
        entry["latency_s"] = sec(per_event["total"])
        entry["energy_j"] = sec(per_event["total"]) * power
        layers.append(entry)

    # Per kernel (kind x pass over the adaptive layers), plus the non-MAC work.
    kernels = []
    kinds = np.array([sp.kind for sp in specs])
    for kind in dict.fromkeys(kinds[ev.adaptive[i]]):
        sel = ev.adaptive[i] & (kinds == kind)
        for pi, ps in enumerate(KERNEL_PASSES):
            cyc = float(ev.cycles[pi, i][sel].sum() * s)
            if cyc > 0:
                kernels.append({"kernel": f"{kind}_{ps}", "stage": "adaptive",
                                "macs": _py(ev.macs[pi, i][sel].sum() * s), "cycles": cyc,
                                "latency_s": sec(cyc), "energy_j": sec(cyc) * power})
    for name, cyc, stage in (("optimizer_step", t["cycles_optimizer"][i], "adaptive"),
                             ("latent_io", t["cycles_latent_io"][i], "adaptive"),
                             ("frozen_int8_inference" if frozen_bits is not None else "frozen_fp32_inference",
                              t["cycles_frozen"][i], "frozen")):
        kernels.append({"kernel": name, "stage": stage,
                        "macs": _py(t["macs_frozen"][i]) if stage == "frozen" else 0,
                        "cycles": float(cyc), "latency_s": sec(cyc), "energy_j": sec(cyc) * power})

    cycles = dict(tot["cycles"])
    cycles["adaptive_breakdown"] = {"training": float(t["cycles_training"][i]),
                                    "optimizer": float(t["cycles_optimizer"][i]),
                                    "latent_io": float(t["cycles_latent_io"][i])}
    return {
        "config": {
            "model": {"layers": len(specs), "input_size": specs[0].in_shape[0],
                      "num_classes": specs[-1].out_channels, "params": sum(sp.params for sp in specs),
                      "forward_macs": sum(sp.macs for sp in specs)},
            "latent_layer": latent_layer,
            "latent_elements": specs[latent_layer].out_elements,
            "lr_bits": lr_bits,
            "buffer_size": event["buffer_size"],
            "frozen_bits": frozen_bits,
            "optimizer_slots": optimizer_slots,
            "backward_error": backward_error,
            "target": target.name,
            "target_description": target.description,
            "l1_bytes": target.l1_bytes,
            "samples_per_pass": target.samples_per_pass,
            "clock_hz": clock,
            "power_w": power,
        },
        "event": event,
        "memory_bytes": {k: _py(ev.memory[k][i]) for k in _MEMORY_KEYS},
        "placement": tiers,
        "fits": bool(ev.fits[i]),
        "overflow": overflow,
        "macs": {"frozen": _py(t["macs_frozen"][i]), "adaptive": _py(t["macs_adaptive"][i]),
                 "total": _py(t["macs_frozen"][i] + t["macs_adaptive"][i])},
        "cycles": cycles,
        "latency_s": tot["latency_s"],
        "energy_j": tot["energy_j"],
        "kernels": kernels,
        "layers": layers,
    }


# ---------------------------------------------------------------------------------------------------------
# Table rendering
# ---------------------------------------------------------------------------------------------------------

def _b(x: float) -> str:
    """Bytes in the paper's units (MB = 1e6 B)."""
    x = float(x)
    if x >= 1e6:
        return f"{x / 1e6:,.3f} MB"
    if x >= 1e3:
        return f"{x / 1e3:,.1f} kB"
    return f"{x:,.0f} B"


def _t(s: float) -> str:
    if s >= 1:
        return f"{s:,.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:,.2f} ms"
    return f"{s * 1e6:,.1f} us"


def _e(j: float) -> str:
    return f"{j:,.3f} J" if j >= 0.1 else f"{j * 1e3:,.2f} mJ"


def _n(x: float) -> str:
    x = float(x)
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:,.2f}{suf}"
    return f"{x:,.0f}"


def format_table(rep: dict) -> str:
    """Human-readable rendering of a `cost_report` dict."""
    c, ev, mem = rep["config"], rep["event"], rep["memory_bytes"]
    bits = "FP32" if c["lr_bits"] is None else f"UINT-{c['lr_bits']}"
    fbits = "FP32" if c["frozen_bits"] is None else f"INT-{c['frozen_bits']}"
    out = []
    w = out.append
    w(f"clq-cost: {c['target']} ({c['target_description']})")
    w(f"  model: {c['model']['layers']} layers, {c['model']['input_size']} px, {c['model']['num_classes']} classes, "
      f"{_n(c['model']['params'])} params, {_n(c['model']['forward_macs'])} MAC/image")
    w(f"  latent layer l={c['latent_layer']} ({c['latent_elements']:,} elements), LRs {bits}, frozen stage {fbits}, "
      f"L1 {c['l1_bytes'] // 1024} kB, samples per kernel pass {c['samples_per_pass'] or 'mini-batch'}, "
      f"backward-error: {c['backward_error']}")
    w(f"  event: {ev['new_images']} new images + {ev['replays']} LRs, {ev['epochs']} epochs, mini-batch "
      f"{ev['batch_size']} = {ev['new_per_batch']} new + {ev['replays_per_batch']} replays, "
      f"{ev['iterations_per_epoch']} iterations/epoch ({ev['iterations']} steps), {ev['samples']:,} training samples")
    w("")
    w("Memory on the device (cost model: bytes = elements x bits / 8, latent replays bit-packed; MB = 1e6 B)")
    for k in _MEMORY_KEYS:
        if k == "total":
            w(f"  {'total (excl. L1 tile copies)':30s} {_b(mem[k]):>14s}   {mem[k]:>14,d} B")
        else:
            w(f"  {k:30s} {_b(mem[k]):>14s}   {mem[k]:>14,d} B")
    w("")
    w("Placement")
    for tier, d in rep["placement"].items():
        if d["capacity_bytes"] == 0 and d["used_bytes"] == 0:
            continue
        over = f"  OVERFLOW by {_b(d['overflow_bytes'])}" if d["overflow_bytes"] else ""
        w(f"  {tier:4s} {_b(d['used_bytes']):>13s} of {_b(d['capacity_bytes']):>13s}{over}")
        for name, b in d["tensors"].items():
            w(f"         {name:28s} {_b(b):>13s}")
    fits = "yes" if rep["fits"] else "NO (" + ", ".join(f"{k} over by {_b(v)}" for k, v in rep["overflow"].items()) + ")"
    w(f"  fits: {fits}")
    w("")
    w("Adaptive layers, per training sample (MACs / cycles; bound: c=compute, d=L2<->L1 DMA, s=slow link)")
    w(f"  {'idx':>3s} {'name':12s} {'kind':6s} {'fwd MAC':>9s} {'fwd cyc':>9s} {'err MAC':>9s} {'err cyc':>9s} "
      f"{'grad MAC':>9s} {'grad cyc':>9s} {'bound':5s} {'W in':4s} {'event':>10s} {'share':>6s}")
    ad_total = rep["cycles"]["adaptive"] or 1.0
    short = {"compute": "c", "l1_dma": "d", "slow_dma": "s", None: "-"}
    for L in rep["layers"]:
        if L["stage"] != "adaptive":
            continue
        m, cy, b = L["macs"], L["cycles"], L["bound"]
        bnd = "".join(short[b[p]] for p in KERNEL_PASSES)
        w(f"  {L['index']:>3d} {L['name']:12s} {L['kind']:6s} {_n(m['forward']):>9s} {_n(cy['forward']):>9s} "
          f"{_n(m['backward_error']):>9s} {_n(cy['backward_error']):>9s} {_n(m['backward_gradient']):>9s} "
          f"{_n(cy['backward_gradient']):>9s} {bnd:5s} {L.get('weights_tier') or '-':4s} "
          f"{_t(L['latency_s']):>10s} {100 * L['cycles_per_event']['total'] / ad_total:5.1f}%")
    w("")
    w("Per kernel, per event")
    for k in rep["kernels"]:
        w(f"  {k['kernel']:28s} {_n(k['macs']):>9s} MAC {_n(k['cycles']):>9s} cyc {_t(k['latency_s']):>10s} "
          f"{_e(k['energy_j']):>10s}")
    w("")
    w(f"Per learning event at {c['clock_hz'] / 1e6:g} MHz, {c['power_w'] * 1e3:g} mW")
    for part in ("frozen", "adaptive", "total"):
        w(f"  {part:9s} {_n(rep['cycles'][part]):>9s} cycles {_t(rep['latency_s'][part]):>11s} "
          f"{_e(rep['energy_j'][part]):>10s}")
    for cmp in rep.get("comparison", []):
        w("")
        o, me = cmp["target"], c["target"]
        w(f"Compared with {o} (same configuration; fits there: {cmp['fits']})")

        def ratio(r: float) -> str:  # always print the ratio >= 1, naming its direction
            return f"{o}/{me} = {r:,.2f}x" if r >= 1 else f"{me}/{o} = {1 / r:,.2f}x"

        for part in ("frozen", "adaptive", "total"):
            lr, er = cmp["latency_ratio"][part], cmp["energy_ratio"][part]
            w(f"  {part:9s} {o}: {_t(cmp['latency_s'][part]):>11s} {_e(cmp['energy_j'][part]):>10s}   "
              f"latency {ratio(lr)}, energy {ratio(er)}")
        lr, er = cmp["latency_ratio"]["adaptive"], cmp["energy_ratio"]["adaptive"]
        fast, eff = (me, o) if lr >= 1 else (o, me)
        w(f"  adaptive stage: {fast} is {max(lr, 1 / lr):,.1f}x faster than {eff}; "
          f"{me if er >= 1 else o} is {max(er, 1 / er):,.1f}x more energy-efficient")
    return "\n".join(out)
