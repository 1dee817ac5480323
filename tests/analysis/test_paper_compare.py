"""The paper's table and the comparison of a sweep's findings with it."""

import pandas as pd
import pytest

from clq.analysis import PAPER_ACCURACY, compare_with_paper, paper_accuracy, precision_drops


def test_paper_table_is_paper_md_section_4():
    p = paper_accuracy()
    assert len(p) == 25 and sorted(p["latent_layer"].unique()) == [19, 21, 23, 25, 27]
    row = p[(p["latent_layer"] == 19) & (p["precision"] == "U8 + U7")].iloc[0]
    assert row["final_accuracy"] == pytest.approx(0.752) and row["lr_precision"] == "U7"
    assert PAPER_ACCURACY[23]["FP32"] == 75.0 and PAPER_ACCURACY[27]["U8 + U8"] == 69.2


def _agg(rows):
    """An aggregate_seeds-like frame from (layer, precision, size, accuracy); "FP32" = FP32 frozen + LRs."""
    return pd.DataFrame([{"latent_layer": l, "lr_precision": "FP32" if p == "FP32" else f"U{p}",
                          "precision": "FP32" if p == "FP32" else f"U8 + U{p}", "buffer_size": n,
                          "final_accuracy_mean": a, "n_seeds": 1} for l, p, n, a in rows])


def test_precision_drops_and_findings_agree():
    agg = _agg([(19, "FP32", 1500, 0.80), (19, 8, 1500, 0.79), (19, 6, 1500, 0.60),
                (27, "FP32", 1500, 0.70), (27, 8, 1500, 0.69), (27, 6, 1500, 0.55),
                (19, "FP32", 375, 0.75), (19, 8, 375, 0.74), (27, "FP32", 375, 0.60), (27, 8, 375, 0.61)])
    d = precision_drops(agg)
    assert d.loc[19, "U8 + U8"] == pytest.approx(1.0) and d.loc[27, "U8 + U6"] == pytest.approx(15.0)
    assert list(d.columns) == ["U8 + U8", "U8 + U6"]
    f = compare_with_paper(agg).set_index("finding")
    by = {k.split(" ")[0]: v for k, v in f["agrees"].items()}
    assert by["8-bit"] is True and by["6-bit"] is True and by["7-bit"] is None
    assert by["earlier"] is True  # l=19 (0.80) beats l=27 (0.70)
    assert by["a"] is True  # N=1500 beats N=375 on average
    assert "rho = -1.00" in f.loc[[k for k in f.index if k.startswith("earlier")][0], "ours"]


def test_drops_fall_back_to_fp32_latents_behind_the_same_frozen_stage():
    agg = pd.DataFrame([{"latent_layer": 23, "lr_precision": lr, "precision": f"U8 + {lr}", "buffer_size": 40,
                         "final_accuracy_mean": a} for lr, a in (("FP32", 0.5), ("U8", 0.5), ("U6", 0.4))])
    d = precision_drops(agg)
    assert d.loc[23, "U8 + U8"] == 0 and d.loc[23, "U8 + U6"] == pytest.approx(10.0)


def test_findings_disagree_when_the_sweep_contradicts_the_paper():
    agg = _agg([(19, "FP32", 1500, 0.60), (19, 8, 1500, 0.40), (27, "FP32", 1500, 0.70), (27, 8, 1500, 0.50)])
    f = compare_with_paper(agg)
    agrees = dict(zip(f["finding"].str.split(" ").str[0], f["agrees"]))
    assert agrees["8-bit"] is False  # a 20-point drop is not "costs little"
    assert agrees["earlier"] is False  # here the later layer is better
    assert agrees["a"] is None  # one buffer size
