"""Quantization error report: per-layer SQNR, latent SQNR for lr_bits 2..8, table, plot, top-1 agreement."""

import jax
import jax.numpy as jnp
import numpy as np

from clq.model import forward
from clq.quant import INPUT_SCALE, QuantConfig, quant_error_report, top1_agreement
from clq.quant.report import format_report, photo_set, plot_report


def test_report_on_a_small_network(network, tmp_path):
    specs, folded, px = network(0.25, 32)
    n = 10  # layers 0..9 keep the compiled graphs small; the CLI analyses 0..27
    rep = quant_error_report(specs[:n], folded[:n], px[:16], px[16:], QuantConfig(), batch_size=8)
    assert rep.layer_sqnr_db.shape == (n,) and rep.latent_sqnr_db.shape == (n, 7)
    assert list(rep.lr_bits) == list(range(2, 9))
    # UINT-8 replays of the 8-bit codes are the codes themselves.
    np.testing.assert_allclose(rep.latent_sqnr_db[:, -1], rep.layer_sqnr_db, atol=1e-4)
    # More latent bits never hurt much, and for an FP32 frozen stage each bit buys ~6 dB.
    assert np.all(np.diff(rep.latent_sqnr_db, axis=1) > -0.5)
    gain = rep.fp32_latent_sqnr_db[:, -1] - rep.fp32_latent_sqnr_db[:, 2]  # 8 bits vs 4 bits
    assert 18 < gain.mean() < 30 and np.all(gain > 10), gain
    assert rep.layer_sqnr_db[0] > 30 and np.all(np.isfinite(rep.layer_sqnr_db))
    table = format_report(rep)
    assert len(table.splitlines()) == 2 + n and "U8+U2" in table and "FP32+U8" in table
    assert plot_report(rep, tmp_path / "r.png").stat().st_size > 10_000

    agree, top_fp, preds, p_fp = top1_agreement(specs, folded, rep.layers, [5, 9], px[16:], lr_bits=(None, 2),
                                          batch_size=8)
    with jax.default_matmul_precision("highest"):  # the report's FP32 reference is full float32
        logits = jax.jit(forward, static_argnums=0)(specs, folded, jnp.asarray(px[16:].astype(np.float32) * INPUT_SCALE))
    np.testing.assert_array_equal(top_fp, np.argmax(np.asarray(logits), -1))
    np.testing.assert_allclose(p_fp, np.max(np.asarray(jax.nn.softmax(logits)), -1), rtol=1e-4)
    for l in (5, 9):
        assert set(agree[l]) == {None, 2} and preds[l][None].shape == (8,)
        assert agree[l][None] == np.mean(preds[l][None] == top_fp)


def test_photo_set_is_deterministic_real_images():
    a, b = photo_set(17, 24, seed=3), photo_set(17, 24, seed=3)
    assert a.dtype == np.uint8 and a.shape == (17, 24, 24, 3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, photo_set(17, 24, seed=4))
    assert a.std() > 20 and len({img.tobytes() for img in a}) == 17


def test_comparison_table_says_which_sample_photos_keep_their_class(tmp_path):
    from clq.quant.report import _key_value_args, format_comparison, plot_comparison

    def scheme(chelsea, coffee, exact):
        return {"layer_index": [0, 1], "layer_sqnr_db": [30.0, 20.0],
                "top1_agreement": {"19": {"own": 0.8}}, "top1_agreement_confident": {"19": {"own": 0.9}},
                "sample_top1": {"19": {"chelsea": chelsea, "coffee": coffee}},
                "sample_top1_kept": {"19": exact},
                "sample_class_kept": {"19": chelsea in range(282, 287) and coffee == 968}}

    result = {"bits": 8, "views": 10, "confident_views": 7, "fp32_sample_top1": {"chelsea": 286, "coffee": 968},
              "schemes": {"a": scheme(286, 968, True), "b": scheme(282, 968, False), "c": scheme(530, 507, False)}}
    rows = {line.split("|")[1].strip(): line for line in format_comparison(result).splitlines() if line.startswith("| ")}
    assert "top-1 kept" in rows["a"] and "80.0 % (90.0 %)" in rows["a"]
    assert "class kept (chelsea 282" in rows["b"]
    assert "lost (chelsea 530, coffee 507)" in rows["c"]
    assert plot_comparison(result, tmp_path / "c.png").stat().st_size > 1000
    assert _key_value_args(["format=json", "latent_layers=19,27", "--bits", "8"]) == [
        "--format", "json", "--latent-layers", "19", "27", "--bits", "8"]
