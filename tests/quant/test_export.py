"""The deployable frozen stage: `clq-run ... export=true`, its C header, and `clq-export RUN_DIR`.

One tiny run (module fixture) exports its frozen stage; the tests reload it, run the integer reference on the
stream's images against the run's own frozen stage, read the C header back (as text and compiled with gcc), and
rebuild the export from the run's checkpoint with `clq-export`.
"""

import hashlib
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from tiny import HAVE_FMNIST, TINY, run_module

from clq.config import experiment_config
from clq.export_run import main as clq_export
from clq.quant import QuantConfig, frozen_forward_codes, integer_forward, requantize
from clq.quant.c_header import c_header_source
from clq.quant.export import VERSION, export_frozen_stage, frozen_stage_tensors, load_frozen_stage, tensors_sha256
from clq.run import load_stream, run_fingerprint
from clq.train.loop import restore_frozen_stage

LATENT_LAYER = 23  # TINY cuts MobileNet-V1 0.25/16 px at l=23


def _sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished tiny `clq-run ... export=true` (checkpoint after events 0, 5, 10, 15): (run dir, results)."""
    if not HAVE_FMNIST:
        pytest.skip("dataset-fashion-mnist not installed (scripts/setup.sh installs it)")
    tmp = tmp_path_factory.mktemp("export_run")
    run_dir = tmp / "run"
    p = run_module("clq", [*TINY, "export=true", "tracking=none", "checkpoint_every=5", f"hydra.run.dir={run_dir}"],
                   tmp)
    assert p.returncode == 0, p.stderr[-3000:]
    return run_dir, json.loads((run_dir / "results.json").read_text())


@pytest.fixture(scope="module")
def rebuilt(tiny_run):
    """The run's frozen stage rebuilt in this process from its checkpoint, and its stream."""
    run_dir, res = tiny_run
    exp = experiment_config(res["config"])
    stream = load_stream(exp)
    event, frozen = restore_frozen_stage(str(run_dir / "checkpoints"), run_fingerprint(res["config"]), stream,
                                         exp.model.specs(), exp.latent_layer, exp.train, exp.quant)
    return exp, stream, event, frozen


def test_run_writes_the_export_and_records_its_paths_and_checksums(tiny_run):
    run_dir, res = tiny_run
    rec = res["export"]
    export = run_dir / "export"
    assert (rec["npz"], rec["json"], rec["c_header"]) == tuple(
        str(export / f"frozen_stage.{ext}") for ext in ("npz", "json", "h"))
    manifest = json.loads((export / "frozen_stage.json").read_text())
    assert manifest["version"] == VERSION
    assert _sha256(rec["npz"]) == rec["npz_sha256"] == manifest["npz_sha256"]
    assert _sha256(rec["c_header"]) == rec["c_header_sha256"] == manifest["c_header"]["sha256"]
    assert rec["tensors_sha256"] == manifest["tensors_sha256"]
    loaded = load_frozen_stage(rec["json"])
    exp = experiment_config(res["config"])
    assert loaded.specs == tuple(exp.model.specs()[: LATENT_LAYER + 1]) and loaded.config == exp.quant
    # The run recorded its latent scale independently of the export: the export's last layer has it.
    assert float(loaded.layers[-1].out_scale) == res["latent"]["frozen_scale"]
    # Every tensor's shape is in the manifest, and per-layer quantities are 0-d in this paper-default stage.
    assert manifest["layers"][5]["tensors"]["layer05.act_max"] == {"dtype": "int32", "shape": []}


def test_exported_stage_reproduces_the_runs_latents_bit_for_bit(tiny_run, rebuilt):
    run_dir, res = tiny_run
    exp, stream, event, frozen = rebuilt
    assert event == len(res["accuracy_per_event"]) - 1  # the newest checkpoint, after the last event
    loaded = load_frozen_stage(run_dir / "export" / "frozen_stage.json")
    later = stream.experiences[3]
    px = np.concatenate([stream.test_images[:48], stream.train_images[later]])
    codes = frozen.latents(px)  # what the run's jitted frozen stage computes
    assert codes.dtype == np.uint8 and codes.max() > 0 and len(np.unique(codes)) > 8
    np.testing.assert_array_equal(integer_forward(loaded.specs, loaded.layers, px), codes)
    np.testing.assert_array_equal(np.asarray(frozen_forward_codes(loaded.specs, loaded.layers, px)), codes)
    rebuilt_sha256 = tensors_sha256(frozen_stage_tensors(loaded.specs, frozen.layers, exp.quant))
    assert rebuilt_sha256 == res["export"]["tensors_sha256"]


_DEFINE = re.compile(r"^#define (\w+) (-?\d+)\b", re.M)
_ARRAY = re.compile(r"static const (\w+) (\w+)\[(\w+)\] = \{(.*?)\};", re.S)


def _parse_header(text):
    defines = {k: int(v) for k, v in _DEFINE.findall(text)}
    arrays = {}
    for ctype, name, length, body in _ARRAY.findall(text):
        vals = [v.strip() for v in body.replace("\n", " ").split(",") if v.strip()]
        if ctype == "float":
            arr = np.array([np.float32(v.rstrip("f")) for v in vals], np.float32)
        else:
            arr = np.array([-(2**31) if v == "INT32_MIN" else int(v) for v in vals], np.int64)
        assert len(arr) == defines[length], name
        arrays[name] = (ctype, arr)
    return defines, arrays


def _c_name(key, prefix="clq"):
    layer, field = key.split(".")
    return f"{prefix}_{layer}_{field}"


def test_c_header_holds_the_npz_tensors(tiny_run):
    run_dir, _ = tiny_run
    export = run_dir / "export"
    text = (export / "frozen_stage.h").read_text()
    manifest = json.loads((export / "frozen_stage.json").read_text())
    defines, arrays = _parse_header(text)
    assert text.startswith("/*") and "#ifndef CLQ_FROZEN_STAGE_H" in text and text.rstrip().endswith("*/")
    assert manifest["npz_sha256"] in text and manifest["tensors_sha256"] in text
    assert defines["CLQ_NUM_LAYERS"] == LATENT_LAYER + 1 == defines["CLQ_LATENT_LAYER"] + 1
    assert defines["CLQ_BITS"] == 8 and defines["CLQ_INPUT_SCALE_DEN"] == 255 and defines["CLQ_ROUNDING_SINGLE"] == 1
    assert (defines["CLQ_LATENT_H"], defines["CLQ_LATENT_W"], defines["CLQ_LATENT_C"]) == (1, 1, 128)
    ctypes = {"uint8": "uint8_t", "int8": "int8_t", "int32": "int32_t", "float32": "float"}
    with np.load(export / "frozen_stage.npz") as npz:
        assert len(arrays) == len(npz.files)
        for key in npz.files:
            a = npz[key]
            ctype, values = arrays[_c_name(key)]
            assert ctype == ctypes[a.dtype.name], key
            np.testing.assert_array_equal(values.astype(a.dtype), a.reshape(-1), err_msg=key)
            assert np.array_equal(values, a.reshape(-1).astype(values.dtype)), key  # no wrap-around in the cast
            macro = f"CLQ_{key.split('.')[0].upper()}_{key.split('.')[1].upper()}"
            assert defines[f"{macro}_RANK"] == a.ndim and defines[f"{macro}_LEN"] == a.size, key
            assert tuple(defines[f"{macro}_DIM{d}"] for d in range(a.ndim)) == a.shape, key
            if key.endswith((".act_min", ".act_max")) and a.ndim == 0:
                assert defines[macro] == int(a), key
    for entry in manifest["layers"]:
        s = entry["spec"]
        L = f"CLQ_LAYER{s['index']:02d}"
        assert (defines[f"{L}_KERNEL"], defines[f"{L}_STRIDE"]) == (s["kernel"], s["stride"])
        assert [defines[f"{L}_OUT_{d}"] for d in "HWC"] == s["out_shape"]


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc on this machine")
def test_c_header_compiles_and_holds_the_npz_values_and_rounding(tiny_run, tmp_path):
    """A C program that includes the header prints every array and the requantization of test values."""
    run_dir, _ = tiny_run
    export = run_dir / "export"
    with np.load(export / "frozen_stage.npz") as npz:
        tensors = {k: npz[k] for k in npz.files}
    rng = np.random.default_rng(0)
    acc = rng.integers(-(2**31), 2**31, 400, dtype=np.int64).astype(np.int32)
    acc[:4] = [-(2**31), 2**31 - 1, 0, -1]
    mult = rng.integers(2**30, 2**31, 400, dtype=np.int64).astype(np.int32)
    shift = rng.integers(1, 63, 400).astype(np.int32)
    def c_array(name, a):
        return f"static const int32_t {name}[{len(a)}] = {{{', '.join(map(str, a.tolist()))}}};"

    lines = ["#include <stdio.h>", '#include "frozen_stage.h"', "#include <stdint.h>",
             c_array("acc", acc).replace(str(-(2**31)), "INT32_MIN"), c_array("mult", mult), c_array("shift", shift),
             "int main(void) {", "    int i;"]
    for key, a in tensors.items():
        name, macro = _c_name(key), f"CLQ_{key.split('.')[0].upper()}_{key.split('.')[1].upper()}_LEN"
        fmt, cast = ('" %.9g"', "(double)") if a.dtype == np.float32 else ('" %ld"', "(long)")
        lines += [f'    printf("{key} %d", (int)(sizeof({name}) / sizeof({name}[0])));',
                  f"    for (i = 0; i < {macro}; i++) printf({fmt}, {cast}{name}[i]);", '    printf("\\n");']
    lines += ['    printf("requantize");',
              "    for (i = 0; i < 400; i++)",
              '        printf(" %ld", (long)clq_requantize(acc[i], mult[i], shift[i], -100000, 100000));',
              '    printf("\\n");', "    return 0;", "}"]
    (tmp_path / "check.c").write_text("\n".join(lines) + "\n")
    shutil.copy(export / "frozen_stage.h", tmp_path / "frozen_stage.h")
    flags = ["-std=c99", "-O0", "-Wall", "-Wextra", "-pedantic", "-Werror"]
    cc = subprocess.run(["gcc", *flags, "check.c", "-o", "check"], cwd=tmp_path, capture_output=True, text=True,
                        timeout=300)
    assert cc.returncode == 0, cc.stderr[-3000:]
    out = subprocess.run(["./check"], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True).stdout
    printed = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
    for key, a in tensors.items():
        n, *vals = printed[key]
        assert int(n) == a.size == len(vals), key
        got = np.array([np.float32(v) for v in vals], np.float32) if a.dtype == np.float32 else np.array(
            [int(v) for v in vals], np.int64)
        np.testing.assert_array_equal(got, a.reshape(-1), err_msg=key)
    want = requantize(acc, mult, shift, -100000, 100000)
    np.testing.assert_array_equal(np.array([int(v) for v in printed["requantize"]]), want)


def test_export_handles_per_channel_clamps_is_deterministic_and_checks_shapes(tiny_run, tmp_path):
    """act_min/act_max of shape (C,) (cross-layer equalization) are exported, reloaded and written to C
    generically; the same tensors give byte-identical files; a clamp of another shape is refused."""
    run_dir, _ = tiny_run
    loaded = load_frozen_stage(run_dir / "export" / "frozen_stage.json")
    i = 2  # a pointwise layer
    c = loaded.specs[i].out_channels
    per_channel = loaded.layers[i]._replace(act_max=(int(loaded.layers[i].act_max) - np.arange(c) % 3).astype(np.int32))
    layers = loaded.layers[:i] + (per_channel,) + loaded.layers[i + 1 :]
    files = []
    for name in ("a", "b"):
        npz, js = export_frozen_stage(tmp_path / name / "stage", loaded.specs, layers, loaded.config)
        files.append([p.read_bytes() for p in (npz, js, js.with_suffix(".h"))])
    assert files[0] == files[1]
    manifest = json.loads(js.read_text())
    assert manifest["layers"][i]["tensors"]["layer02.act_max"]["shape"] == [c]
    back = load_frozen_stage(js)
    np.testing.assert_array_equal(back.layers[i].act_max, per_channel.act_max)
    assert back.layers[i].act_max.shape == (c,) and np.asarray(back.layers[i + 1].act_max).shape == ()
    header = js.with_suffix(".h").read_text()
    defines, arrays = _parse_header(header)
    assert defines["CLQ_LAYER02_ACT_MAX_LEN"] == c and "CLQ_LAYER02_ACT_MAX" not in defines
    assert defines["CLQ_LAYER03_ACT_MAX"] == int(layers[3].act_max)
    np.testing.assert_array_equal(arrays["clq_layer02_act_max"][1], per_channel.act_max)
    with pytest.raises(ValueError, match=rf"layer 2 \(conv2_1_pw\): act_max is int32\({c + 1},\)"):
        bad = loaded.layers[i]._replace(act_max=np.full(c + 1, 255, np.int32))
        export_frozen_stage(tmp_path / "bad", loaded.specs, loaded.layers[:i] + (bad,) + loaded.layers[i + 1 :],
                            loaded.config)
    with pytest.raises(ValueError, match="C identifier"):
        c_header_source(manifest, {}, prefix="2fast")


def test_clq_export_rebuilds_the_same_tensors_from_the_checkpoint(tiny_run, tmp_path):
    run_dir, res = tiny_run
    out = tmp_path / "fw"
    p = run_module("clq.export_run", [str(run_dir), "--out", str(out), "--c-prefix", "qlr"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "equal to the run's export" in p.stdout and res["export"]["tensors_sha256"] in p.stdout
    manifest = json.loads((out / "frozen_stage.json").read_text())
    assert manifest["tensors_sha256"] == res["export"]["tensors_sha256"]
    assert manifest["npz_sha256"] == res["export"]["npz_sha256"]  # deterministic .npz: the very same bytes
    assert (out / "frozen_stage.npz").read_bytes() == (run_dir / "export" / "frozen_stage.npz").read_bytes()
    assert "#ifndef QLR_FROZEN_STAGE_H" in (out / "frozen_stage.h").read_text()


def _fake_run(tmp_path, tiny_run, name, edit=None, checkpoints=True, export=True):
    """A copy of the tiny run dir (results.json edited by `edit(config)`), for the refusals."""
    run_dir, res = tiny_run
    d = tmp_path / name
    d.mkdir()
    cfg = json.loads(json.dumps(res["config"]))
    if edit:
        edit(cfg)
    (d / "results.json").write_text(json.dumps({**res, "config": cfg}))
    if checkpoints:
        shutil.copytree(run_dir / "checkpoints", d / "checkpoints")
    if export:
        shutil.copytree(run_dir / "export", d / "export")
    return d


def test_clq_export_refuses_what_it_cannot_export(tiny_run, tmp_path, capsys):
    def fails(args, code, *needles):
        assert clq_export([str(a) for a in args]) == code
        err = capsys.readouterr().err
        assert err.startswith("clq-export: error: ") and "Traceback" not in err, err
        for needle in needles:
            assert needle in err, err

    (tmp_path / "empty").mkdir()
    fails([tmp_path / "empty"], 2, "has no results.json")
    fails([tmp_path / "missing"], 2, "is not a directory")
    no_cfg = tmp_path / "no_cfg"
    no_cfg.mkdir()
    (no_cfg / "results.json").write_text("{}")
    fails([no_cfg], 2, "no resolved config")

    def fp32(c):
        c["quant"]["frozen_bits"], c["export"] = None, False

    fails([_fake_run(tmp_path, tiny_run, "fp32", fp32)], 2, "FP32", "quant.frozen_bits")
    fails([_fake_run(tmp_path, tiny_run, "no_ckpt", lambda c: c.update(checkpoint_every=0), checkpoints=False)], 2,
          "checkpoint_every=0")
    fails([tiny_run[0], "--c-prefix", "a-b"], 2, "--c-prefix", "C identifier")
    # A checkpoint of another configuration (here another seed) is not this run's frozen stage.
    fails([_fake_run(tmp_path, tiny_run, "other_seed", lambda c: c.update(seed=1))], 2, "different configuration")
    # Rebuilt tensors that differ from the run's export: exit 1, nothing written.
    tampered = _fake_run(tmp_path, tiny_run, "tampered")
    m = json.loads((tampered / "export" / "frozen_stage.json").read_text())
    (tampered / "export" / "frozen_stage.json").write_text(json.dumps({**m, "tensors_sha256": "0" * 64}))
    fails([tampered, "--out", tmp_path / "never"], 1, "differs from the run's export", "0" * 64)
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("override,needles", [
    ("quant=fp32", ("export", "quant.frozen_bits")),
    ("export=maybe", ("export must be true or false",)),
])
def test_export_config_errors_before_compute(tmp_path, override, needles):
    p = run_module("clq", [override, "export=true" if override == "quant=fp32" else "progress=false",
                           f"hydra.run.dir={tmp_path / 'r'}"], tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert all(n in p.stderr for n in needles), p.stderr
    assert not (tmp_path / "r" / "results.json").exists()


def test_export_defaults_to_false_and_is_checked_with_the_quantization():
    from hydra import compose, initialize_config_dir

    from clq.config import ConfigError
    from clq.run import CONF_DIR
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        def cfg(*ov):
            return OmegaConf.to_container(compose("config", overrides=list(ov)), resolve=True)

        assert experiment_config(cfg()).export is False
        assert experiment_config(cfg("export=true")).export is True and QuantConfig() == experiment_config(
            cfg("export=true")).quant
        with pytest.raises(ConfigError, match=r"export=true .* quant\.frozen_bits is null"):
            experiment_config(cfg("export=true", "quant=fp32"))
