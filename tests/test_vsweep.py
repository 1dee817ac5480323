"""`clq-vsweep` is an alias of `clq-run -m hydra/launcher=clq_vectorized`: its arguments translate, it runs as a
vectorized multirun, and a grouped member with AR1's choices equals clq-run."""

import json

import numpy as np
import pytest

from clq.analysis import collect_runs
from clq.vsweep import translate
from tiny import TINY, needs_fmnist, run_module


def test_arguments_translate_to_a_vectorized_multirun():
    assert translate(["vsweep.bits=[8,7]", "vsweep.seeds=[0, 1]", "latent_layer=23"]) == [
        "-m", "hydra/launcher=clq_vectorized", "replay.bits=8,7", "seed=0,1", "latent_layer=23"]
    assert translate([])[2:4] == ["replay.bits=8,6,4", "seed=0,1,2,3,4"]
    assert "hydra.launcher.members_per_batch=2" in translate(["vsweep.members_per_batch=2"])


@pytest.mark.parametrize("override,needle", [
    ("vsweep.bits=[]", "vsweep.bits must be a non-empty list"),
    ("vsweep.bits=8", "vsweep.bits must be a non-empty list"),
    ("vsweep.extra=1", "vsweep.extra is not a key of vsweep"),
])
def test_bad_vsweep_value_exits_2(tmp_path, override, needle):
    p = run_module("clq.vsweep", [override], tmp_path)
    assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr


@needs_fmnist
def test_vsweep_runs_ar1_choices_like_clq_run(tmp_path):
    """CWR*, batch renormalization above the latent layer and a fresh optimizer state per event: a grouped member
    is clq-run with the same choices (both run the learner step of clq.learn)."""
    ar1 = ["train.strategy=ar1star", "train.adaptive_norm=brn", "train.norm_momentum=0.05", "train.reset_momentum=true"]
    sweep = tmp_path / "vsweep"
    p = run_module("clq.vsweep", [*TINY, *ar1, "vsweep.bits=[8,4]", "vsweep.seeds=[0]", "tracking=none",
                                  f"hydra.sweep.dir={sweep}"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "2 members: 2 in 1 compiled group(s)" in p.stdout
    df = collect_runs(str(sweep))
    assert list(df["lr_bits"]) == [8, 4] and set(df["status"]) == {"completed"}
    member = json.loads((sweep / "0" / "results.json").read_text())
    p = run_module("clq", [*TINY, *ar1, "replay.bits=8", "seed=0", "checkpoint_every=0", "tracking=none",
                           f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    ref = json.loads((tmp_path / "run" / "results.json").read_text())
    np.testing.assert_allclose(member["accuracy_per_event"], ref["accuracy_per_event"], atol=1e-6, rtol=0)
    assert member["buffer"]["class_histogram"] == ref["buffer"]["class_histogram"]
    for group in ("per_class", "per_session"):
        np.testing.assert_allclose(np.asarray(member["accuracy_matrix"][group], float),
                                   np.asarray(ref["accuracy_matrix"][group], float), atol=1e-6, rtol=0)
