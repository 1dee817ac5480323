"""Every sweep definition opens with the command that runs it, composes, and expands into valid members."""

import glob
import os
import re

import pytest
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from clq.config import experiment_config

from sweeputil import CONF, SWEEPS, compose_sweep, member_config, sweep_members

FILES = sorted(glob.glob(os.path.join(SWEEPS, "*.yaml")))
NAMES = [os.path.splitext(os.path.basename(f))[0] for f in FILES]


def test_the_sweeps_exist():
    assert {"offline_grid", "core50_paper", "tiny", "offline_bits"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_sweep_file_opens_with_its_command(name):
    first = open(os.path.join(SWEEPS, f"{name}.yaml")).readline()
    assert re.match(rf"# \.venv/bin/clq-run -m --config-dir sweeps --config-name {name}( |$)", first), first
    assert "hydra/launcher=clq_" in first  # names the launcher it is meant for


def _params(name):
    return yaml.safe_load(open(os.path.join(SWEEPS, f"{name}.yaml")))["hydra"]["sweeper"]["params"]


def test_paper_grid_is_the_papers():
    members = sweep_members(_params("core50_paper"))
    assert len(members) == 5 * 4 * 4 * 5
    assert sorted({int(m["latent_layer"]) for m in members}) == [19, 21, 23, 25, 27]
    assert {m["replay.bits"] for m in members} == {"fp32", "8", "7", "6"}
    assert sorted({int(m["replay.size"]) for m in members}) == [375, 750, 1500, 3000]
    assert sorted({int(m["data.run"]) for m in members}) == [0, 1, 2, 3, 4]  # the paper's 5 file-list runs


def test_offline_grid_size():
    members = sweep_members(_params("offline_grid"))
    assert len(members) == 24 and len({tuple(sorted(m.items())) for m in members}) == 24
    assert {m["precision"] for m in members} == {"fp32", "u8_u8", "u8_u7", "u8_u6"}


@pytest.fixture
def hydra_config_reset():
    """The test sets Hydra's global HydraConfig (as a job would); leave it unset for other tests."""
    yield
    HydraConfig.instance().cfg = None


def _is_group(key):
    return "." not in key and any(os.path.isdir(os.path.join(d, key)) for d in (SWEEPS, CONF))


@pytest.mark.parametrize("name", NAMES)
def test_every_member_is_a_valid_config(name, hydra_config_reset):
    cfg = yaml.safe_load(open(os.path.join(SWEEPS, f"{name}.yaml")))
    for d in (d for d in cfg["defaults"] if isinstance(d, dict)):  # e.g. {"override data": "core50"}
        (group_key, option), = d.items()
        group = group_key.split()[-1].lstrip("/")
        if not any(os.path.exists(os.path.join(root, group, f"{option}.yaml")) for root in (CONF, SWEEPS)):
            pytest.skip(f"conf/{group}/{option}.yaml is not in this checkout yet")
    hydra_cfg = compose_sweep(name)
    assert hydra_cfg.hydra.callbacks.sweep_summary._target_ == "clq.analysis.callbacks.SweepSummary"
    assert str(hydra_cfg.hydra.sweep.dir).startswith(f"multirun/{name}/")
    members = sweep_members(dict(hydra_cfg.hydra.sweeper.params))
    # Config-group choices (e.g. precision=u8_u7) need a composition each; plain values are set on the result.
    composed = {}
    for m in members:
        groups = tuple(sorted((k, v) for k, v in m.items() if _is_group(k)))
        if groups not in composed:
            c = compose_sweep(name, [f"{k}={v}" for k, v in groups])
            HydraConfig.instance().set_config(c)  # as in a job: ${hydra:...} resolves against it
            assert c.tracking.group == c.hydra.sweep.dir  # the wandb group: the sweep's folder
            assert c.progress is False
            composed[groups] = OmegaConf.masked_copy(c, [k for k in c if k != "hydra"])
        exp = experiment_config(member_config(composed[groups], {k: v for k, v in m.items() if not _is_group(k)}))
        for k, v in m.items():  # the member is what the sweep says it is
            if k == "latent_layer":
                assert exp.latent_layer == int(v)
            elif k == "replay.bits":
                assert exp.replay.bits == (None if v == "fp32" else int(v))
            elif k == "replay.size":
                assert exp.replay.size == int(v)
            elif k == "data.run":
                assert exp.seed == int(v)  # core50_paper: seed follows the file-list run
            elif k == "precision":
                frozen, lr = (v.split("_") + [v])[:2] if "_" in v else (v, v)
                bits = lambda p: None if p == "fp32" else int(p[1:])  # noqa: E731
                assert (None if exp.quant is None else exp.quant.bits, exp.replay.bits) == (bits(frozen), bits(lr))
