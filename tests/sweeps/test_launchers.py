"""Launcher configs compose into real, installed Hydra launchers, and their JAX thread settings take effect."""

import glob
import os
import subprocess
import sys

import pytest
from hydra.plugins.launcher import Launcher
from hydra.utils import get_class

from sweeputil import CONF, compose_sweep

LAUNCHERS = sorted(os.path.splitext(os.path.basename(p))[0]
                   for p in glob.glob(os.path.join(CONF, "hydra", "launcher", "*.yaml")))


def test_launcher_set():
    assert {"clq_joblib", "clq_ray", "clq_slurm", "clq_submitit_local", "clq_vectorized"} <= set(LAUNCHERS)


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_composes_into_an_installed_launcher(name):
    cfg = compose_sweep("tiny", [f"hydra/launcher={name}"])
    cls = get_class(cfg.hydra.launcher._target_)  # ImportError if the plugin is not installed
    assert issubclass(cls, Launcher)
    env = cfg.hydra.job.env_set
    if name == "clq_vectorized":  # one process, every core: no per-member thread settings
        assert cls.__name__ == "VectorizedLauncher" and cfg.hydra.launcher.events_per_chunk >= 1
        return
    assert "NPROC" in env  # XLA's intra-op pool sized to the member's CPUs
    if name == "clq_slurm":
        assert env.NPROC == str(cfg.hydra.launcher.cpus_per_task)
        assert cls.__name__ == "SlurmLauncher"
    if name == "clq_joblib":
        assert cfg.hydra.launcher.n_jobs == 2 and env.NPROC == "1"
    if name == "clq_ray":
        assert cfg.hydra.launcher.ray.remote.num_cpus == 1
        assert cfg.hydra.launcher.ray.init.object_store_memory is None  # joinable: Ray refuses it when joining


_PROBE = """
import collections, os
import jax, jax.numpy as jnp
x = jnp.ones((256, 256))
jax.jit(lambda a: (a @ a).sum())(x).block_until_ready()
names = collections.Counter(open(f'/proc/self/task/{t}/comm').read().strip() for t in os.listdir('/proc/self/task'))
print(names.get('tf_XLAEigen', 0))
"""


def _xla_pool(env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("NPROC", "XLA_FLAGS")}
    env.update(JAX_PLATFORMS="cpu", **env_extra)
    p = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return int(p.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc to count threads")
def test_joblib_thread_settings_shrink_the_xla_pool():
    """The env that clq_joblib sets in each worker gives XLA:CPU one intra-op thread instead of one per core."""
    env = dict(compose_sweep("tiny", ["hydra/launcher=clq_joblib"]).hydra.job.env_set)
    cores = len(os.sched_getaffinity(0))
    assert _xla_pool(env) == 1
    if cores > 1:  # on a 1-core machine both are 1 and there is nothing to shrink
        assert _xla_pool({}) == cores
