"""Helpers for the sweep tests: compose a sweep file the way `clq-run -m --config-dir sweeps` does, expand its
members, and run a sweep through `python -m clq -m` as a user would."""

import itertools
import os

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONF = os.path.join(ROOT, "conf")
SWEEPS = os.path.join(ROOT, "sweeps")


def compose_sweep(name, overrides=(), hydra_config=True):
    """The composed config of sweeps/<name>.yaml (conf/ on the search path, as with --config-dir sweeps)."""
    with initialize_config_dir(config_dir=SWEEPS, version_base="1.3"):
        return compose(config_name=name, overrides=[f"hydra.searchpath=[file://{CONF}]", *overrides],
                       return_hydra_config=hydra_config)


def sweep_members(params):
    """Expand Hydra sweeper params ({key: "a,b"}) into the list of member override dicts, in Hydra's order."""
    parser = OverridesParser.create()
    keys, values = [], []
    for k, v in params.items():
        (ov,) = parser.parse_overrides([f"{k}={v}"])
        keys.append(k)
        values.append(list(ov.sweep_string_iterator()) if ov.is_sweep_override() else [ov.get_value_element_as_str()])
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def member_config(job_cfg, member):
    """The job config (a plain dict) with one member's overrides applied (dotted keys, YAML-typed values)."""
    cfg = OmegaConf.create(OmegaConf.to_container(job_cfg, resolve=False))  # interpolations see the overrides
    for k, v in member.items():
        OmegaConf.update(cfg, k, yaml.safe_load(v), merge=False)  # "8" -> 8, "fp32" stays a string
    return OmegaConf.to_container(cfg, resolve=True)


def run_sweep(name, args, cwd, timeout=900, prog=("-m", "clq"), env=None):
    """`python -m clq -m --config-dir sweeps --config-name <name> *args` in `cwd`, as a user runs a sweep
    (`prog`: another entry script instead of ``-m clq``; `env`: more environment variables)."""
    import subprocess
    import sys

    env = {**os.environ, "JAX_PLATFORMS": "cpu", "WANDB_MODE": "offline", "WANDB_SILENT": "true", **(env or {})}
    return subprocess.run([sys.executable, *prog, "-m", "--config-dir", SWEEPS, "--config-name", name, *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
