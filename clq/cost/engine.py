"""The cost model proper, vectorized over configurations: memory, placement and cycles in one NumPy pass.

`clq.cost.cost_report` (one configuration) and `clq.cost.evaluate_grid` (many) both call `evaluate`, so the
single report and the sweep can never disagree. Everything is plain NumPy over the layer-spec list
(`clq.model.specs`); nothing here is traced. Shapes: ``C`` configurations, ``L`` layers (29 for MobileNet-V1:
paper indices 0..27 plus the classifier 28), passes in `KERNEL_PASSES` order.

The model, in one place (docs/cost_model.md explains each choice):

Memory (bytes; FP32 = 4 B):
  lr_buffer        N * ceil(E_l * Q / 8) + 4 (one FP32 scale; none for FP32 latents)    E_l = elements at layer l
  lr_labels        N * 1 (uint8 label; 2 B beyond 256 classes)
  new_latents      n_new * ceil(E_l * Q / 8): this event's latents, computed once, read every epoch
  frozen_weights   sum_{k<=l} ceil(weights_k * Q_f / 8)
  frozen_biases    sum_{k<=l} out_channels_k * 4 (int32 after quantization, FP32 otherwise; BN folded)
  frozen_requant   8 B per frozen layer with weights (int32 multiplier + shift), only when quantized
  adaptive_weights sum_{k>l} params_k * 4; gradients the same; optimizer_state = slots x that
  activations      P * (sum_{k>l} in_elems_k + out_elems_last) * 4: every adaptive layer's input (the
                   dequantized latent included) and the logits, for the P samples of one pass; backward errors
                   overwrite these buffers in place, so they need no extra storage
  l1_tiles         2 x the largest tile (a tile uses at most half of L1): copies, not counted in `total`

Placement: non-volatile tensors (frozen stage, then LR buffer + labels) go to `nvm` if they fit, else `ext`;
volatile tensors go first-fit into `l2` in a fixed priority order (activations; then weights and gradients
layer by layer, smallest layer first; then optimizer state; then the new latents), else `ext`. The
configuration fits iff `ext` does not overflow (the other tiers are filled only up to their capacity).

Cycles, per sample, for adaptive layer k and pass p (a kernel processes P samples per call):
  compute   = P * MACs / eff[kind, p](L1)  x (1 + tiling_overhead if the working set needs > 1 tile)
  l1_dma    = max(bytes L2->L1, bytes L1->L2) / bw_l2_l1         (full duplex)
  slow_dma  = bytes of ext-resident tensors / bw_ext              (+ nvm-resident / bw_nvm)
  kernel    = max(compute, l1_dma, slow_dma) + first-tile-in/last-tile-out (exposed by double buffering)
              + kernel_call_overhead,  divided by P
The event adds one optimizer step per mini-batch and the latent I/O (quantize + store the new latents, load
and dequantize every training sample's latent); the frozen stage runs once per new image.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from clq.cost.event import event_arrays
from clq.cost.targets import KERNEL_PASSES, Target, efficiency_table
from clq.model.specs import LAYER_KINDS, LayerSpec

__all__ = ["LayerArrays", "Evaluation", "layer_arrays", "evaluate", "BOUNDS", "TIER_CODES"]

FP32_BYTES = 4
#: What limits a kernel: index into this tuple in `Evaluation.*_bound`.
BOUNDS = ("compute", "l1_dma", "slow_dma")
#: Tier codes used in the placement arrays.
TIER_CODES = {"l2": 1, "nvm": 2, "ext": 3}
_POOL = LAYER_KINDS.index("pool")


class LayerArrays(NamedTuple):
    """Static per-layer numbers of a spec list, as float64 arrays of length L (int for `kind`)."""

    kind: np.ndarray  # [L] int, index into LAYER_KINDS
    macs: np.ndarray  # [L] forward MACs per sample
    params: np.ndarray  # [L] weights + biases
    weights: np.ndarray  # [L] weight elements only
    biases: np.ndarray  # [L] bias elements (= output channels for layers with parameters)
    in_elems: np.ndarray  # [L] input elements per sample
    out_elems: np.ndarray  # [L] output elements per sample
    trainable: np.ndarray  # [L] bool, has parameters
    first_trainable_above: np.ndarray  # [L] int, lowest trainable index > l for latent layer l (L if none)
    placement_order: np.ndarray  # [L] int, layer indices by ascending params (placement priority)


def layer_arrays(specs: Sequence[LayerSpec]) -> LayerArrays:
    """Read the spec list once into arrays (the only place the cost model touches `LayerSpec`)."""
    f = lambda xs: np.asarray(xs, dtype=np.float64)  # noqa: E731
    trainable = np.array([s.has_params for s in specs])
    n = len(specs)
    fta = np.full(n, n, dtype=np.int64)
    for l in range(n):
        above = [k for k in range(l + 1, n) if trainable[k]]
        fta[l] = above[0] if above else n
    params = f([s.params for s in specs])
    return LayerArrays(
        kind=np.array([LAYER_KINDS.index(s.kind) for s in specs], dtype=np.int64),
        macs=f([s.macs for s in specs]),
        params=params,
        weights=f([int(np.prod(s.weight_shape)) if s.has_params else 0 for s in specs]),
        biases=f([s.out_channels if s.has_params else 0 for s in specs]),
        in_elems=f([int(np.prod(s.in_shape)) for s in specs]),
        out_elems=f([s.out_elements for s in specs]),
        trainable=trainable,
        first_trainable_above=fta,
        placement_order=np.argsort(params, kind="stable"),
    )


class Evaluation(NamedTuple):
    """Everything `evaluate` computes. [C] per configuration, [C, L] per layer, [3, C, L] per pass and layer.

    Cycles of adaptive kernels are per training sample; frozen-layer cycles are per new image; optimizer
    cycles are per mini-batch (optimizer step); `cycles` holds per-event totals.
    """

    event: dict  # name -> [C] (see clq.cost.event.event_arrays)
    memory: dict  # name -> [C] bytes
    tier_used: dict  # tier -> [C] bytes
    tier_capacity: dict  # tier -> [C] bytes
    fits: np.ndarray  # [C] bool
    placement: dict  # tensor -> [C] or [C, L] tier code (TIER_CODES), 0 = absent
    adaptive: np.ndarray  # [C, L] bool
    macs: np.ndarray  # [3, C, L] MACs per sample (adaptive layers)
    cycles: np.ndarray  # [3, C, L] cycles per sample (adaptive layers)
    bound: np.ndarray  # [3, C, L] int, index into BOUNDS
    tiles: np.ndarray  # [3, C, L] L1 tiles per kernel call
    frozen_cycles: np.ndarray  # [C, L] cycles per image (frozen layers)
    frozen_bound: np.ndarray  # [C, L] int
    optimizer_cycles: np.ndarray  # [C, L] cycles per optimizer step
    totals: dict  # name -> [C]: macs_frozen, macs_adaptive, cycles_{frozen,training,optimizer,latent_io,adaptive,total}
    clock_hz: np.ndarray  # [C]
    power_w: np.ndarray  # [C]


def _kernel(compute, rd, wr, slow, l1, bw_l1, overhead, call, active):
    """Cycles of one kernel call from its compute, L2<->L1 traffic and slow-link time (all broadcastable).

    A kernel's operands stream through L1 in tiles of at most half of L1 (the other half receives the next
    tile: double buffering). More than one tile costs the target's tiling overhead on top of single-tile
    compute. DMA and compute overlap, so the body takes the slower of compute, L2<->L1 DMA (full duplex: the
    larger direction) and the slow link; the first tile in and the last tile out cannot overlap anything and
    are added (a pipeline fill/drain that is derived from L1 size and bandwidth, not fitted).

    Returns:
      (cycles, bound index, tiles, tile bytes), each broadcast to the common shape; zero where not active.
    """
    has_l1 = l1 > 0
    ws = rd + wr
    half = np.where(has_l1, l1 / 2.0, 1.0)
    tiles = np.where(has_l1 & (ws > 0), np.ceil(ws / half), 1.0)
    comp = compute * (1.0 + overhead * (tiles > 1))
    l1dma = np.where(has_l1, np.maximum(rd, wr) / bw_l1, 0.0)
    body = np.maximum(np.maximum(comp, l1dma), slow)
    bound = np.where(body == comp, 0, np.where(body == l1dma, 1, 2))
    exposed = np.where(has_l1, ws / tiles / bw_l1, 0.0)
    cyc = np.where(active, body + exposed + call, 0.0)
    tile_bytes = np.where(active & has_l1, np.minimum(ws, half), 0.0)
    return cyc, bound, tiles * active, tile_bytes


def _gather_targets(targets: Sequence[Target], t: np.ndarray) -> dict:
    g = lambda f: np.array([f(tg) for tg in targets], dtype=np.float64)[t]  # noqa: E731
    return {
        "clock": g(lambda x: x.clock_hz),
        "power": g(lambda x: x.power_w),
        "l2": g(lambda x: x.memory_bytes["l2"]),
        "nvm": g(lambda x: x.memory_bytes["nvm"]),
        "ext": g(lambda x: x.memory_bytes["ext"]),
        "bw_l1": g(lambda x: x.bw_l2_l1),
        "bw_nvm": g(lambda x: x.bw_nvm),
        "bw_ext": g(lambda x: x.bw_ext),
        "ovh": g(lambda x: x.tiling_overhead),
        "call": g(lambda x: x.kernel_call_overhead_cycles),
        "ew": g(lambda x: x.elementwise_ops_per_cycle),
        "int8": g(lambda x: x.frozen_int8_macs_per_cycle),
        "spp": g(lambda x: 0 if x.samples_per_pass is None else x.samples_per_pass),
    }


def _efficiencies(targets: Sequence[Target], t: np.ndarray, l1: np.ndarray) -> np.ndarray:
    """[C, kinds, passes] MAC/cycle; tables are built once per distinct (target, L1) pair."""
    pairs, inv = np.unique(np.stack([t.astype(np.float64), l1]), axis=1, return_inverse=True)
    tables = np.stack([efficiency_table(targets[int(ti)], li) for ti, li in pairs.T])
    return tables[inv.reshape(-1)]


def evaluate(
    specs: Sequence[LayerSpec],
    targets: Sequence[Target],
    cfg: dict,
    backward_error: str = "all_but_first",
) -> Evaluation:
    """Evaluate the cost model for C configurations at once.

    Args:
      specs: the network's layer specs (`clq.model.specs.mobilenet_v1_specs`).
      targets: the distinct targets referenced by ``cfg['target']``.
      cfg: already-validated arrays of length C: ``target`` (int index into `targets`), ``l1_bytes`` (L1 size
        actually used, 0 for targets without L1), ``latent_layer`` (int), ``lr_bits`` (32 for FP32),
        ``lr_quantized`` (bool), ``buffer_size``, ``new_images``, ``epochs``, ``batch_size``, ``frozen_bits``
        (32 for FP32), ``frozen_quantized`` (bool), ``optimizer_slots``.
      backward_error: one of `clq.cost.validate.BACKWARD_ERROR_POLICIES`.

    Returns:
      `Evaluation`.
    """
    la = layer_arrays(specs)
    n_layers = len(specs)
    ti = np.asarray(cfg["target"], dtype=np.int64)
    tg = _gather_targets(targets, ti)
    l1 = np.asarray(cfg["l1_bytes"], dtype=np.float64)
    lat = np.asarray(cfg["latent_layer"], dtype=np.int64)
    bits = np.asarray(cfg["lr_bits"], dtype=np.float64)
    lq = np.asarray(cfg["lr_quantized"], dtype=bool)
    fbits = np.asarray(cfg["frozen_bits"], dtype=np.float64)
    fq = np.asarray(cfg["frozen_quantized"], dtype=bool)
    slots = np.asarray(cfg["optimizer_slots"], dtype=np.float64)
    ev = event_arrays(cfg["new_images"], cfg["buffer_size"], cfg["epochs"], cfg["batch_size"])
    n_new, n_lr, batch = ev["new_images"], ev["buffer_size"], ev["batch_size"]
    p = np.where(tg["spp"] > 0, tg["spp"], batch)  # samples per kernel call
    c = lambda x: x[:, None]  # noqa: E731  [C] -> [C, 1] to broadcast against layers

    k = np.arange(n_layers)[None, :]
    frozen = k <= c(lat)  # [C, L]
    adaptive = ~frozen
    trainable = adaptive & la.trainable[None, :]
    if backward_error == "none":
        need_err = np.zeros_like(adaptive)
    else:
        # The error below the lowest trainable adaptive layer feeds nothing, so it is not computed there.
        need_err = adaptive & (k > c(la.first_trainable_above[lat]))
    is_pool = (la.kind == _POOL)[None, :]

    # ---------------- memory -------------------------------------------------------------------------
    lr_elems = la.out_elems[lat]
    per_latent = np.ceil(lr_elems * bits / 8.0)
    label_bytes = 1.0 if specs[-1].out_channels <= 256 else 2.0
    w_bytes = la.params * FP32_BYTES  # [L]
    mem = {
        "lr_buffer": n_lr * per_latent + np.where(lq & (n_lr > 0), FP32_BYTES, 0.0),
        "lr_labels": n_lr * label_bytes,
        "new_latents": n_new * per_latent,
        "frozen_weights": (frozen * np.ceil(la.weights[None, :] * c(fbits) / 8.0)).sum(1),
        "frozen_biases": (frozen * la.biases[None, :]).sum(1) * FP32_BYTES,
        "frozen_requant": (frozen & la.trainable[None, :]).sum(1) * 8.0 * fq,
        "adaptive_weights": (trainable * w_bytes[None, :]).sum(1),
    }
    mem["gradients"] = mem["adaptive_weights"].copy()
    mem["optimizer_state"] = slots * mem["adaptive_weights"]
    mem["activations"] = p * ((adaptive * la.in_elems[None, :]).sum(1) + la.out_elems[-1]) * FP32_BYTES

    # ---------------- placement ----------------------------------------------------------------------
    used = {t: np.zeros_like(n_new) for t in ("l2", "nvm", "ext")}

    def put(size, tiers):
        """First fit of a tensor of `size` bytes [C] into `tiers` (ext always takes the rest)."""
        code = np.zeros(size.shape, dtype=np.int64)
        left = size > 0
        for tier in tiers:
            ok = left & (used[tier] + size <= tg[tier])
            used[tier] += np.where(ok, size, 0.0)
            code[ok] = TIER_CODES[tier]
            left &= ~ok
        used["ext"] += np.where(left, size, 0.0)
        code[left] = TIER_CODES["ext"]
        return code

    frozen_total = mem["frozen_weights"] + mem["frozen_biases"] + mem["frozen_requant"]
    place = {
        "frozen": put(frozen_total, ("nvm",)),
        "lr_buffer": put(mem["lr_buffer"] + mem["lr_labels"], ("nvm",)),
        "activations": put(mem["activations"], ("l2",)),
    }
    w_tier = np.zeros(adaptive.shape, dtype=np.int64)
    g_tier = np.zeros_like(w_tier)
    m_tier = np.zeros_like(w_tier)
    for kk in la.placement_order:
        size = trainable[:, kk] * w_bytes[kk]
        w_tier[:, kk] = put(size, ("l2",))
        g_tier[:, kk] = put(size, ("l2",))
    for kk in la.placement_order:
        m_tier[:, kk] = put(trainable[:, kk] * w_bytes[kk] * slots, ("l2",))
    place.update(weights=w_tier, gradients=g_tier, optimizer_state=m_tier)
    place["new_latents"] = put(mem["new_latents"], ("l2",))

    # ---------------- adaptive-stage kernels (per group of p samples, then per sample) ---------------
    eff = _efficiencies(targets, ti, l1)  # [C, kinds, 3]
    x = c(p) * la.in_elems[None, :] * FP32_BYTES
    y = c(p) * la.out_elems[None, :] * FP32_BYTES
    wb = trainable * w_bytes[None, :]
    ext_act = c(place["activations"] == TIER_CODES["ext"])
    w_ext, g_ext = w_tier == TIER_CODES["ext"], g_tier == TIER_CODES["ext"]
    pool_ops = is_pool * la.in_elems[None, :]  # average pool: one add per input element (and back)
    kb = {
        # pass: (active mask, MACs per sample, read bytes, written bytes, ext bytes)
        "forward": (adaptive, adaptive * la.macs, x + wb, y, ext_act * (x + y) + w_ext * wb),
        "backward_error": (need_err, need_err * la.macs, y + wb, x, ext_act * (x + y) + w_ext * wb),
        "backward_gradient": (trainable, trainable * la.macs, x + y + wb, wb, ext_act * (x + y) + g_ext * 2 * wb),
    }
    macs = np.zeros((3,) + adaptive.shape)
    cycles = np.zeros_like(macs)
    bound = np.zeros(macs.shape, dtype=np.int64)
    tiles = np.zeros_like(macs)
    tile_max = np.zeros_like(n_new)
    kinds = la.kind[None, :]
    rows = np.arange(len(ti))[:, None]
    for pi, name in enumerate(KERNEL_PASSES):
        active, m, rd, wr, ext_b = kb[name]
        e = eff[rows, kinds, pi]  # [C, L]
        ew_ops = pool_ops * (adaptive if name == "forward" else need_err if name == "backward_error" else 0)
        compute = c(p) * (m / e + ew_ops / c(tg["ew"]))
        cyc, bnd, tl, tb = _kernel(compute, rd * active, wr * active, ext_b * active / c(tg["bw_ext"]),
                                   c(l1), c(tg["bw_l1"]), c(tg["ovh"]), c(tg["call"]), active)
        macs[pi], cycles[pi], bound[pi], tiles[pi] = m, cyc / c(p), bnd, tl
        tile_max = np.maximum(tile_max, tb.max(1))

    # One optimizer step per mini-batch: weight decay + (momentum) + update + zeroing the accumulated gradient.
    opt_ops = trainable * la.params[None, :] * (2.0 + 2.0 * c(slots))
    opt_rw = (2.0 + c(slots)) * wb  # read w, g, m; write w, m, g := 0
    opt_ext = wb * (2.0 * w_ext + 2.0 * g_ext + 2.0 * c(slots) * (m_tier == TIER_CODES["ext"]))
    opt_cyc, _, _, opt_tb = _kernel(opt_ops / c(tg["ew"]), opt_rw, opt_rw, opt_ext / c(tg["bw_ext"]),
                                    c(l1), c(tg["bw_l1"]), c(tg["ovh"]), c(tg["call"]), trainable)
    tile_max = np.maximum(tile_max, opt_tb.max(1))

    # Latent I/O: quantize and store this event's latents once; load (+ dequantize) every sample's latent.
    def tier_bw(code):
        l2_bw = np.where(l1 > 0, tg["bw_l1"], np.inf)  # without L1 the core reads L2 directly
        return np.select([code == 1, code == 2], [l2_bw, tg["bw_nvm"]], tg["bw_ext"])

    new_reads = ev["epochs"] * n_new
    io_cycles = (n_new + new_reads) * per_latent / tier_bw(place["new_latents"]) + ev["replays_drawn"] * (
        per_latent / tier_bw(place["lr_buffer"]))
    q_ops = lq * lr_elems * (2.0 * n_new + ev["samples"])
    latent_io = np.maximum(q_ops / tg["ew"], io_cycles)

    # ---------------- frozen stage (per new image) ---------------------------------------------------
    fw_bytes = np.ceil(la.weights[None, :] * c(fbits) / 8.0) + la.biases[None, :] * FP32_BYTES + 8.0 * c(fq) * (
        la.trainable[None, :])
    fz_slow_bw = np.where(place["frozen"] == TIER_CODES["nvm"], tg["bw_nvm"], tg["bw_ext"])
    fz_pool = frozen * pool_ops / c(tg["ew"])
    fz_fp32_e = eff[rows, kinds, 0]
    fz_compute = np.where(c(fq), frozen * la.macs / c(tg["int8"]), frozen * la.macs / fz_fp32_e) + fz_pool
    # The int8 rate is end-to-end (DORY tiles internally): no separate L1 terms for it. FP32 frozen layers
    # run the same forward kernels as the adaptive stage, one image at a time.
    xf, yf = la.in_elems[None, :] * FP32_BYTES, la.out_elems[None, :] * FP32_BYTES
    fz_rd = np.where(c(fq), 0.0, xf + fw_bytes) * frozen
    fz_wr = np.where(c(fq), 0.0, yf) * frozen
    fz_cyc, fz_bound, _, fz_tb = _kernel(fz_compute, fz_rd, fz_wr, frozen * fw_bytes / c(fz_slow_bw),
                                         c(l1), c(tg["bw_l1"]), c(tg["ovh"]), c(tg["call"]), frozen)
    tile_max = np.maximum(tile_max, fz_tb.max(1))
    mem["l1_tiles"] = 2.0 * tile_max

    mem["total"] = sum(v for kk, v in mem.items() if kk != "l1_tiles")
    capacity = {"l1": l1, "l2": tg["l2"], "nvm": tg["nvm"], "ext": tg["ext"]}
    used_all = {"l1": mem["l1_tiles"], **used}

    s = ev["samples"]
    training = s * cycles.sum(axis=(0, 2))
    optimizer = ev["iterations"] * opt_cyc.sum(1)
    totals = {
        "macs_frozen": n_new * (frozen * la.macs).sum(1),
        "macs_adaptive": s * macs.sum(axis=(0, 2)),
        "cycles_frozen": n_new * fz_cyc.sum(1),
        "cycles_training": training,
        "cycles_optimizer": optimizer,
        "cycles_latent_io": latent_io,
        "cycles_adaptive": training + optimizer + latent_io,
    }
    totals["cycles_total"] = totals["cycles_frozen"] + totals["cycles_adaptive"]
    return Evaluation(
        event=ev,
        memory=mem,
        tier_used=used_all,
        tier_capacity=capacity,
        fits=used["ext"] <= tg["ext"],
        placement=place,
        adaptive=adaptive,
        macs=macs,
        cycles=cycles,
        bound=bound,
        tiles=tiles,
        frozen_cycles=fz_cyc,
        frozen_bound=fz_bound,
        optimizer_cycles=opt_cyc,
        totals=totals,
        clock_hz=tg["clock"],
        power_w=tg["power"],
    )
