"""Quantization error analysis of the frozen stage: per-layer SQNR, latent SQNR vs `lr_bits`, top-1 agreement.

For a folded network, a quantization config and two image sets (calibration, evaluation):

* ``layer_sqnr_db[i]``: SQNR of layer i's dequantized 8-bit (``config.bits``) output codes, produced by the
  integer-exact frozen stage, against the FP32 network's output of layer i (error accumulated over 0..i; with
  ``config.equalize``, the equalized network's, which computes the same function with rescaled channels);
* ``latent_sqnr_db[i, j]``: SQNR of the latent at candidate ``latent_layer = i`` stored as UINT-``lr_bits[j]``
  replays (`clq.quant.latent.make_latent_codec`), for a quantized frozen stage ("U8 + U_Q" in paper.md §4)
  and for an FP32 frozen stage (``fp32_latent_sqnr_db``, "FP32 + U_Q");
* ``top1_agreement[l][q]``: fraction of images whose top-1 class with the frozen stage 0..l quantized and
  UINT-q latents equals the FP32 network's top-1 (the adaptive stage and classifier stay FP32).

SQNR = 10 log10(sum ref^2 / sum (ref - quantized)^2) over all images and elements, in dB.

`photo_set` builds a small set of real images from scikit-image's bundled photos with random crops, flips
and photometric jitter; `main` (console script ``clq-quant-report``) runs everything on the ImageNet
MobileNet-V1 weights for each weight scheme (`SCHEMES`) and writes a Markdown report and a JSON file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from clq.batching import padded_batches
from clq.model.forward import forward
from clq.model.specs import LayerSpec
from clq.quant.frozen import (
    INPUT_SCALE,
    LayerQuant,
    QuantConfig,
    frozen_forward_codes,
    frozen_forward_fp32,
)
from clq.quant.ptq import calibrate_and_quantize
from clq.quant.latent import make_latent_codec

__all__ = [
    "QuantReport",
    "photo_set",
    "center_crop_resize",
    "quant_error_report",
    "top1_agreement",
    "format_report",
    "plot_report",
    "scheme_report",
    "format_comparison",
    "plot_comparison",
    "SCHEMES",
    "SAMPLE_CLASSES",
    "main",
    "PHOTO_NAMES",
]

#: scikit-image photos bundled with the wheel (no download): colour, then greyscale (stacked to RGB).
PHOTO_NAMES = (
    "astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "motorcycle_right",
    "camera", "clock", "coins", "moon", "page", "text", "brick", "grass", "gravel",
)


class QuantReport(NamedTuple):
    """Result of `quant_error_report`.

    Fields:
      layer_index: int [L], paper indices of the analysed layers.
      layer_name: list of L names.
      layer_sqnr_db: float [L], quantized frozen-stage output vs FP32, per layer.
      lr_bits: int [Q], the latent bit-widths analysed.
      latent_sqnr_db: float [L, Q], quantized frozen stage + UINT-lr_bits latent vs FP32.
      fp32_latent_sqnr_db: float [L, Q], FP32 frozen stage + UINT-lr_bits latent vs FP32.
      a_max: float [L], calibrated activation ranges.
      config: the QuantConfig used.
      layers: the per-layer quantization (LayerQuant tuple).
    """

    layer_index: np.ndarray
    layer_name: list
    layer_sqnr_db: np.ndarray
    lr_bits: np.ndarray
    latent_sqnr_db: np.ndarray
    fp32_latent_sqnr_db: np.ndarray
    a_max: np.ndarray
    config: QuantConfig
    layers: tuple


def _photo(name: str) -> np.ndarray:
    from skimage import data

    if name.startswith("motorcycle_"):
        img = data.stereo_motorcycle()[0 if name.endswith("left") else 1]
    else:
        img = getattr(data, name)()
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


def center_crop_resize(img: np.ndarray, size: int, central_fraction: float = 0.875) -> np.ndarray:
    """TF-slim evaluation preprocessing: central square crop of `central_fraction` of the short side, resized.

    Args:
      img: uint8 [H, W, 3].
    Returns:
      uint8 [size, size, 3].
    """
    from skimage.transform import resize

    h, w = img.shape[:2]
    s = max(1, int(min(h, w) * central_fraction))
    y0, x0 = (h - s) // 2, (w - s) // 2
    crop = img[y0 : y0 + s, x0 : x0 + s]
    out = resize(crop, (size, size), anti_aliasing=True, preserve_range=True)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def photo_set(n: int, size: int, seed: int = 0, names: Sequence[str] = PHOTO_NAMES) -> np.ndarray:
    """`n` augmented views of scikit-image's photos: uint8 [n, size, size, 3].

    View i uses photo ``names[i % len(names)]`` (so the first ``len(names)`` views cover every photo once)
    with a random square crop of 40-100 % of the short side, a random horizontal flip, and brightness /
    contrast jitter of +-15 %.
    """
    from skimage.transform import resize

    rng = np.random.default_rng(seed)
    photos = [_photo(nm) for nm in names]
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        s = max(8, int(min(h, w) * rng.uniform(0.4, 1.0)))
        y0, x0 = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
        crop = img[y0 : y0 + s, x0 : x0 + s].astype(np.float64)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        view = resize(crop, (size, size), anti_aliasing=True, preserve_range=True)
        view = (view - 127.5) * rng.uniform(0.85, 1.15) + 127.5 * rng.uniform(0.85, 1.15)
        out[i] = np.clip(np.round(view), 0, 255).astype(np.uint8)
    return out


def _sqnr_db(signal: np.ndarray, noise: np.ndarray) -> np.ndarray:
    return 10.0 * np.log10(np.maximum(signal, 1e-30) / np.maximum(noise, 1e-30))


def quant_error_report(
    specs: Sequence[LayerSpec],
    params: Sequence[dict],
    calib_pixels: np.ndarray,
    eval_pixels: np.ndarray,
    config: QuantConfig = QuantConfig(),
    lr_bits: Sequence[int] = tuple(range(2, 9)),
    batch_size: int = 32,
) -> QuantReport:
    """Quantize the frozen stage `specs` on `calib_pixels` and measure its error on `eval_pixels`.

    Args:
      specs, params: the layers to analyse (a frozen stage, typically layers 0..27) in folded form.
      calib_pixels, eval_pixels: uint8 [N, H, W, C] images.
      config: frozen-stage quantization.
      lr_bits: latent replay bit-widths to analyse (each in 1..16).
      batch_size: images per compiled call.
    Returns:
      `QuantReport`.
    """
    specs, params, lr_bits = tuple(specs), tuple(params), tuple(int(b) for b in lr_bits)
    cal = [xb.astype(np.float32) * INPUT_SCALE for _, xb, _ in padded_batches(calib_pixels, batch_size, fill="repeat")]
    # With equalization the codes of layer i approximate the *equalized* network's layer i (channels rescaled,
    # same function), which is then the reference.
    layers, a_max, params = calibrate_and_quantize(specs, params, cal, config)
    # A quantized latent spans what its codes can represent (pool layers inherit their input's scale); the
    # UINT-Q codecs are `make_latent_codec`'s, applied for all Q at once (broadcast over a trailing axis).
    q_amax = [float(lq.out_scale) * (2**config.bits - 1) for lq in layers]
    top = np.asarray([2.0**b - 1 for b in lr_bits], np.float32)
    scales_q = [np.asarray([make_latent_codec(b, q_amax[i]).scale for b in lr_bits], np.float32) for i in range(len(specs))]
    scales_f = [np.asarray([make_latent_codec(b, float(a_max[i])).scale for b in lr_bits], np.float32)
                for i in range(len(specs))]

    def energies(px, valid):
        mask = (jnp.arange(px.shape[0]) < valid).astype(jnp.float32)
        ref_all = frozen_forward_fp32(specs, params, px.astype(jnp.float32) * INPUT_SCALE)
        codes_all = frozen_forward_codes(specs, layers, px, config.bits, return_all=True)

        def err(ref, hat):  # sum over valid images of squared errors; hat may carry a trailing Q axis
            d = (ref.reshape(ref.shape[0], -1, *([1] * (hat.ndim - ref.ndim))) - hat.reshape(ref.shape[0], -1, *hat.shape[ref.ndim:])) ** 2
            return jnp.einsum("b...,b->...", d.sum(1), mask)

        def lr(x, scale):  # UINT-Q encode + decode for every Q: [..., Q]
            return jnp.clip(jnp.round(x[..., None] / scale), 0, top) * scale

        sig, frozen_noise, lat_noise, fp_noise = [], [], [], []
        for i, (ref, codes) in enumerate(zip(ref_all, codes_all)):
            deq = codes * layers[i].out_scale
            sig.append(err(ref, jnp.zeros_like(ref)))
            frozen_noise.append(err(ref, deq))
            lat_noise.append(err(ref, lr(deq, scales_q[i])))
            fp_noise.append(err(ref, lr(ref, scales_f[i])))
        return jnp.stack(sig), jnp.stack(frozen_noise), jnp.stack(lat_noise), jnp.stack(fp_noise)

    fn = jax.jit(energies)
    tot = None
    for _, xb, m in padded_batches(eval_pixels, batch_size, fill="repeat"):
        with jax.default_matmul_precision("highest"):  # a true FP32 reference on accelerators too (no TF32)
            out = [np.asarray(v, np.float64) for v in fn(jnp.asarray(xb), m)]
        tot = out if tot is None else [a + b for a, b in zip(tot, out)]
    sig, frozen_noise, lat_noise, fp_noise = tot
    return QuantReport(
        layer_index=np.asarray([s.index for s in specs]),
        layer_name=[s.name for s in specs],
        layer_sqnr_db=_sqnr_db(sig, frozen_noise),
        lr_bits=np.asarray(lr_bits),
        latent_sqnr_db=_sqnr_db(sig[:, None], lat_noise),
        fp32_latent_sqnr_db=_sqnr_db(sig[:, None], fp_noise),
        a_max=np.asarray(a_max, np.float64),
        config=config,
        layers=layers,
    )


def top1_agreement(
    specs: Sequence[LayerSpec],
    params: Sequence[dict],
    layers: Sequence[LayerQuant],
    latent_layers: Sequence[int],
    pixels: np.ndarray,
    bits: int = 8,
    lr_bits: Sequence[int | None] = (None,),
    batch_size: int = 32,
) -> tuple[dict, np.ndarray, dict, np.ndarray]:
    """Top-1 agreement of quantized-frozen-stage predictions with the FP32 network's.

    Args:
      specs, params: the whole network (0..28) in folded form.
      layers: quantization of (at least) layers 0..max(latent_layers).
      latent_layers: candidate latent layers l; layers 0..l run quantized, l+1..28 in FP32.
      pixels: uint8 [N, H, W, C].
      bits: frozen-stage bits.
      lr_bits: latent storage bit-widths; None keeps the frozen stage's own codes.
    Returns:
      (agreement {l: {lr_bits: fraction}}, FP32 top-1 int [N], quantized top-1 {l: {lr_bits: int [N]}},
      FP32 top-1 probability float [N] (to split confident predictions from near-ties)).
    """
    specs, params = tuple(specs), tuple(params)
    last = max(latent_layers)
    frozen_specs, frozen_layers = specs[: last + 1], tuple(layers[: last + 1])

    def predict(params, quant, px):  # weights and quantization are arguments: as constants, ~1.4x the compile time
        logits = forward(specs, params, px.astype(jnp.float32) * INPUT_SCALE)
        top_fp = jnp.argmax(logits, -1), jnp.max(jax.nn.softmax(logits), -1)
        codes = frozen_forward_codes(frozen_specs, quant, px, bits, return_all=True)
        out = {}
        for l in latent_layers:
            lat = codes[l] * quant[l].out_scale
            per_bits = []  # in lr_bits order (pytree dict keys must sort; None and ints do not)
            for q in lr_bits:
                z = lat
                if q is not None:
                    c = make_latent_codec(q, float(frozen_layers[l].out_scale) * (2**bits - 1))
                    z = c.decode(c.encode(lat))
                per_bits.append(jnp.argmax(forward(specs[l + 1 :], params[l + 1 :], z), -1))
            out[l] = per_bits
        return top_fp, out

    fn = jax.jit(predict)
    tops_fp, probs_fp, tops_q = [], [], {l: {q: [] for q in lr_bits} for l in latent_layers}
    for _, xb, m in padded_batches(pixels, batch_size, fill="repeat"):
        with jax.default_matmul_precision("highest"):  # a true FP32 reference on accelerators too (no TF32)
            top_fp, out = fn(params, frozen_layers, jnp.asarray(xb))
        tops_fp.append(np.asarray(top_fp[0])[:m])
        probs_fp.append(np.asarray(top_fp[1])[:m])
        for l in latent_layers:
            for j, q in enumerate(lr_bits):
                tops_q[l][q].append(np.asarray(out[l][j])[:m])
    top_fp = np.concatenate(tops_fp)
    preds = {l: {q: np.concatenate(v) for q, v in d.items()} for l, d in tops_q.items()}
    agree = {l: {q: float(np.mean(p == top_fp)) for q, p in d.items()} for l, d in preds.items()}
    return agree, top_fp, preds, np.concatenate(probs_fp)


def format_report(report: QuantReport) -> str:
    """Markdown table: one row per layer with its SQNR and the latent SQNR per lr_bits (U8 and FP32 frozen)."""
    fb = report.config.bits
    head = ["l", "name", f"a_max", f"U{fb} SQNR dB"]
    head += [f"U{fb}+U{b}" for b in report.lr_bits] + [f"FP32+U{b}" for b in report.lr_bits]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, (idx, name) in enumerate(zip(report.layer_index, report.layer_name)):
        row = [str(idx), name, f"{report.a_max[i]:.3g}", f"{report.layer_sqnr_db[i]:.1f}"]
        row += [f"{v:.1f}" for v in report.latent_sqnr_db[i]] + [f"{v:.1f}" for v in report.fp32_latent_sqnr_db[i]]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot_report(report: QuantReport, path: str | Path) -> Path:
    """Two panels: per-layer SQNR of the quantized frozen stage; latent SQNR vs lr_bits per latent layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(13, 4.5))
    ax0.plot(report.layer_index, report.layer_sqnr_db, "o-")
    ax0.set_xlabel("layer l")
    ax0.set_ylabel("SQNR vs FP32 [dB]")
    ax0.set_title(f"U{report.config.bits} frozen stage, output of each layer")
    ax0.grid(alpha=0.3)
    cmap = plt.get_cmap("viridis")
    for j, b in enumerate(report.lr_bits):
        ax1.plot(report.layer_index, report.latent_sqnr_db[:, j], "o-", ms=3,
                 color=cmap(j / max(len(report.lr_bits) - 1, 1)), label=f"U{report.config.bits}+U{b}")
    ax1.set_xlabel("latent_layer l")
    ax1.set_ylabel("latent SQNR vs FP32 [dB]")
    ax1.set_title("latent replays at lr_bits")
    ax1.legend(fontsize=7, ncol=2)
    ax1.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


#: The weight schemes `clq-quant-report` compares: the paper's per-layer scales, the same after cross-layer
#: equalization and bias correction (`clq.quant.equalize`), and per-channel scales.
SCHEMES = {
    "per_layer": dict(weight_granularity="per_layer", equalize=False),
    "per_layer_equalized": dict(weight_granularity="per_layer", equalize=True, bias_correction=True),
    "per_channel": dict(weight_granularity="per_channel", equalize=False),
}

#: The two sample photos whose top-1 class the report follows (scikit-image's chelsea: a tabby / Egyptian cat;
#: coffee: an espresso).
SAMPLE_PHOTOS = ("chelsea", "coffee")

#: What each sample photo shows, as the 1001-way ImageNet classes that name it: chelsea is a cat that the FP32
#: network itself calls a tabby (282) at 224 px and an Egyptian cat (286, with tabby second) at 128 px; coffee
#: is an espresso (968). 'class kept' in the report means the quantized top-1 stays in this set.
SAMPLE_CLASSES = {"chelsea": (282, 283, 284, 285, 286), "coffee": (968,)}  # tabby, tiger, Persian, Siamese, Egyptian


def scheme_report(
    specs: Sequence[LayerSpec],
    params: Sequence[dict],
    config: QuantConfig,
    calib: np.ndarray,
    evals: np.ndarray,
    samples: np.ndarray,
    latent_layers: Sequence[int],
    batch_size: int = 32,
) -> dict:
    """Everything `clq-quant-report` says about one quantization config, as a JSON-ready dict.

    With equalization the frozen stage is quantized once per latent layer l (layers 0..l, as a run does:
    equalization never rescales the latent layer's outputs, so the stages for different l differ); without it,
    every l's stage is a prefix of one quantized stage, measured in one pass.

    Args:
      specs, params: the whole network in folded form.
      config: the quantization.
      calib, evals, samples: uint8 [N, H, W, 3] calibration views, evaluation views, sample photos.
      latent_layers: the l to measure top-1 agreement at.
    Returns:
      dict with 'config', per-layer 'layer_sqnr_db' (stage 0..27), 'latent_sqnr_db' [L][Q] for lr_bits 2..8,
      'top1_agreement' / 'top1_agreement_confident' {l: {'own'|'U7'|'U6': fraction}}, 'sample_top1' {l: {photo:
      class}}, 'sample_top1_kept' {l: bool} (both equal FP32's top-1), 'sample_class_kept' {l: bool} (both in
      `SAMPLE_CLASSES`), and the numbers of views.
    """
    last = max(s.index for s in specs if s.kind != "linear")
    rep = quant_error_report(specs[: last + 1], params[: last + 1], calib, evals, config, batch_size=batch_size)
    cal = [xb.astype(np.float32) * INPUT_SCALE for _, xb, _ in padded_batches(calib, batch_size, fill="repeat")]
    out = {"config": dataclasses.asdict(config), "layer_index": rep.layer_index.tolist(),
           "layer_sqnr_db": rep.layer_sqnr_db.round(2).tolist(), "lr_bits": rep.lr_bits.tolist(),
           "latent_sqnr_db": rep.latent_sqnr_db.round(2).tolist(), "top1_agreement": {},
           "top1_agreement_confident": {}, "sample_top1": {}, "sample_top1_kept": {}, "sample_class_kept": {}}
    def agreement(ls, layers):
        """top1_agreement on the held-out views (own codes, U7, U6) and on the sample photos, for latent layers ls."""
        return (top1_agreement(specs, params, layers, ls, evals, config.bits, lr_bits=(None, 7, 6),
                               batch_size=batch_size),
                top1_agreement(specs, params, layers, ls, samples, config.bits, batch_size=batch_size))

    if config.equalize:
        # Equalization leaves layer l's outputs alone, which changes the stage: quantized again per l.
        per_l = {l: agreement([l], calibrate_and_quantize(specs[: l + 1], params[: l + 1], cal, config)[0])
                 for l in latent_layers}
    else:
        # Without equalization each stage 0..l is a prefix of the report's stage 0..27 (calibration and bias
        # correction of a layer depend only on the layers below it): one pass serves every l.
        both = agreement(list(latent_layers), rep.layers)
        per_l = {l: both for l in latent_layers}
    name = {None: "own", 7: "U7", 6: "U6"}
    for l in latent_layers:
        (agree, top_fp, preds, p_fp), (_, s_fp, s_preds, _) = per_l[l]
        confident = p_fp > 0.5
        out["top1_agreement"][str(l)] = {name[q]: round(v, 4) for q, v in agree[l].items()}
        out["top1_agreement_confident"][str(l)] = {
            name[q]: round(float(np.mean(p[confident] == top_fp[confident])), 4) for q, p in preds[l].items()}
        out["sample_top1"][str(l)] = {n: int(c) for n, c in zip(SAMPLE_PHOTOS, s_preds[l][None])}
        out["sample_top1_kept"][str(l)] = bool(np.all(s_preds[l][None] == s_fp))
        out["sample_class_kept"][str(l)] = bool(all(
            int(c) in SAMPLE_CLASSES[n] for n, c in zip(SAMPLE_PHOTOS, s_preds[l][None])))
    out["views"], out["confident_views"] = len(evals), int(confident.sum())  # FP32 confidence: the same for every l
    return out


def format_comparison(result: dict) -> str:
    """Markdown: top-1 agreement and sample photos per scheme and l, then per-layer SQNR per scheme."""
    schemes = result["schemes"]
    ls = list(next(iter(schemes.values()))["top1_agreement"])
    fp = ", ".join(f"{n} {c}" for n, c in result["fp32_sample_top1"].items())
    lines = [f"## Top-1 agreement with FP32 (frozen 0..l quantized at {result['bits']} bit, the rest FP32)", "",
             f"{result['views']} augmented views; in brackets the {result['confident_views']} whose FP32 top-1 "
             f"probability exceeds 0.5. Sample photos: FP32 top-1 {fp}; 'top-1 kept' when both keep it exactly, "
             "'class kept' when both stay what they show (a domestic cat 282-286, an espresso 968).", "",
             "| scheme | " + " | ".join(f"l = {l}" for l in ls) + " |", "|---|" + "---|" * len(ls)]
    for name, r in schemes.items():
        cells = []
        for l in ls:
            a, c = r["top1_agreement"][l]["own"], r["top1_agreement_confident"][l]["own"]
            photos = ", ".join(f"{n} {v}" for n, v in r["sample_top1"][l].items())
            photos = ("top-1 kept" if r["sample_top1_kept"][l] else
                      "class kept" if r["sample_class_kept"][l] else "lost") + f" ({photos})"
            cells.append(f"{100 * a:.1f} % ({100 * c:.1f} %), photos {photos}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    idx = next(iter(schemes.values()))["layer_index"]
    lines += ["", "## SQNR of each layer's quantized output against FP32 [dB]", "",
              "| layer | " + " | ".join(schemes) + " |", "|---|" + "---|" * len(schemes)]
    for i, li in enumerate(idx):
        lines.append(f"| {li} | " + " | ".join(f"{r['layer_sqnr_db'][i]:.1f}" for r in schemes.values()) + " |")
    return "\n".join(lines)


def plot_comparison(result: dict, path: str | Path) -> Path:
    """Two panels: per-layer SQNR for each scheme; top-1 agreement per scheme and latent layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    schemes = result["schemes"]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(13, 4.5))
    for name, r in schemes.items():
        ax0.plot(r["layer_index"], r["layer_sqnr_db"], "o-", ms=3, label=name)
    ax0.set_xlabel("layer")
    ax0.set_ylabel("SQNR vs FP32 [dB]")
    ax0.set_title(f"{result['bits']}-bit frozen stage, output of each layer")
    ax0.legend(fontsize=8)
    ax0.grid(alpha=0.3)
    ls = list(next(iter(schemes.values()))["top1_agreement"])
    width = 0.8 / len(schemes)
    for j, (name, r) in enumerate(schemes.items()):
        ax1.bar(np.arange(len(ls)) + j * width, [100 * r["top1_agreement"][l]["own"] for l in ls], width, label=name)
    ax1.set_xticks(np.arange(len(ls)) + 0.4 - width / 2, [f"l = {l}" for l in ls])
    ax1.set_ylabel("top-1 agreement with FP32 [%]")
    ax1.set_title(f"{result['views']} augmented photo views")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _key_value_args(argv: Sequence[str]) -> list[str]:
    """Accept ``name=value`` (as clq-run and clq-cost take them) besides ``--name value``."""
    out = []
    for a in argv:
        if not a.startswith("-") and "=" in a:
            k, v = a.split("=", 1)
            out += ["--" + k.replace("_", "-"), *v.split(",")]
        else:
            out.append(a)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``clq-quant-report``: per-layer SQNR, top-1 agreement and the sample photos' top-1 on ImageNet
    MobileNet-V1 weights, for each weight scheme in `SCHEMES`.

    Options take ``--name value`` or ``name=value``; ``format=json`` prints the JSON instead of the tables. Bad
    values are reported in one line naming the option, with exit code 2.
    """
    import sys

    from clq.model.forward import fold_batch_norm
    from clq.model.imagenet import load_imagenet_mobilenet_v1

    ap = argparse.ArgumentParser(prog="clq-quant-report", description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=None, help="TF-slim GraphDef (default: .cache/weights, see fetch_weights.sh)")
    ap.add_argument("--input-size", type=int, default=128)
    ap.add_argument("--calib-images", type=int, default=16)
    ap.add_argument("--eval-images", type=int, default=256)
    ap.add_argument("--latent-layers", type=int, nargs="+", default=[19, 23, 27])
    ap.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES))
    ap.add_argument("--bits", type=int, default=8)
    ap.add_argument("--weight-mode", default="asymmetric")
    ap.add_argument("--activation-range", default="minmax")
    ap.add_argument("--percentile", type=float, default=99.99)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--format", default="text", choices=["text", "json"])
    ap.add_argument("--out", default="outputs/quant_report")
    args = ap.parse_args(_key_value_args(sys.argv[1:] if argv is None else argv))

    try:
        configs = {n: QuantConfig(bits=args.bits, weight_mode=args.weight_mode, activation_range=args.activation_range,
                                  percentile=args.percentile, **SCHEMES[n]) for n in args.schemes}
        specs, params, stats = load_imagenet_mobilenet_v1(args.weights, input_size=args.input_size)
    except (ValueError, FileNotFoundError) as e:
        print(f"clq-quant-report: {e}", file=sys.stderr)
        return 2
    bad = [l for l in args.latent_layers if not 0 <= l <= 27]
    if bad:
        print(f"clq-quant-report: latent-layers must be in 0..27, got {bad}", file=sys.stderr)
        return 2
    folded = fold_batch_norm(specs, params, stats)
    calib = photo_set(args.calib_images, args.input_size, seed=1)
    evals = photo_set(args.eval_images, args.input_size, seed=2)
    samples = np.stack([center_crop_resize(_photo(n), args.input_size) for n in SAMPLE_PHOTOS])
    logits = forward(specs, folded, jnp.asarray(samples, jnp.float32) * INPUT_SCALE)
    result = {"input_size": args.input_size, "bits": args.bits, "calib_images": args.calib_images,
              "eval_images": args.eval_images, "calibration_seed": 1, "evaluation_seed": 2,
              "fp32_sample_top1": {n: int(c) for n, c in zip(SAMPLE_PHOTOS, np.argmax(np.asarray(logits), -1))},
              "schemes": {}}
    for name, config in configs.items():
        print(f"[clq-quant-report] {name} ...", file=sys.stderr, flush=True)
        result["schemes"][name] = scheme_report(specs, folded, config, calib, evals, samples, args.latent_layers,
                                                args.batch_size)
    result["views"] = len(evals)
    result["confident_views"] = next(iter(result["schemes"].values()))["confident_views"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = "\n".join([f"# Frozen-stage quantization, ImageNet MobileNet-V1 1.0 at {args.input_size} px", "",
                      f"calibration: {args.calib_images} augmented photos (seed 1); evaluation: {args.eval_images} "
                      "others (seed 2)", "", format_comparison(result)])
    (out / "report.md").write_text(text + "\n")
    (out / "report.json").write_text(json.dumps(result, indent=1))
    plot_comparison(result, out / "report.png")
    print(json.dumps(result, indent=1) if args.format == "json" else text)
    print(f"written: {out / 'report.md'}, {out / 'report.json'}, {out / 'report.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
