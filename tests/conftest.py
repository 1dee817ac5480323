import os

# Tests run on the CPU with a single-threaded-friendly setup; keep JAX from grabbing an accelerator.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# The on-disk caches of event 0 and of latents are on by default (conf/config.yaml); tests that go through the
# config get them only where they ask for them, so that one test's event 0 or latents never stand in for another's
# computation. The tests of the defaults themselves set these variables per test.
os.environ.setdefault("CLQ_EVENT0_CACHE_DIR", "")
os.environ.setdefault("CLQ_LATENT_CACHE_DIR", "")
# Programs kept traced on disk (`clq.programs`) are off: the suite's programs are mostly distinct and each would be
# exported once for nothing (~40 s of the suite). tests/test_programs.py turns them on, and checks that a run gives
# the same numbers with them.
os.environ.setdefault("CLQ_PROGRAMS", "0")


def _cache_large_programs() -> None:
    """A persistent compilation cache for this test process, in a folder of its own that goes with it.

    A process keeps a run's programs for later runs of the same settings (`clq.train.loop`), but the tests build
    many others: other settings, shapes and networks, and programs of their own that are traced again, whose
    executables then come from here instead of being compiled again (a tiny run compiled for ~5.6 s of its ~7 s on
    2 cores). The same executable is loaded, so no number changes (the determinism and resume tests compare runs bit
    for bit either way). Programs that took 0.1 s or more to compile are written:
    the in-process runs' smaller programs too (with every program written, tests/test_reliability.py, tests/train,
    tests/replay, test_equalize.py and test_forward.py took 330 s under `-n 2`; with 0.1 s 336 s; with only the
    programs of 1 s or more, 369 s). No size bound, hence no LRU file lock; one folder per pytest-xdist worker, so
    no two processes write the same entry. clq-run subprocesses keep their own cache (CLQ_COMPILE_CACHE_DIR).
    """
    import atexit
    import shutil
    import tempfile

    import jax

    folder = tempfile.mkdtemp(prefix=f"clq-tests-xla-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-")
    atexit.register(shutil.rmtree, folder, True)
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_compilation_cache_max_size", -1)


_cache_large_programs()

# Tests that run whole experiments in subprocesses (20-40 s each) go first. Under `pytest -n 2` a long test that
# starts last leaves the other worker idle at the end; first, the short ones fill in around it. The order within
# each group stays the collection order.
_LONG_FIRST = ("tests/test_run.py", "tests/test_reliability.py", "tests/sweeps/", "tests/test_core50_run.py",
               "tests/test_vsweep.py", "tests/test_newcomer.py", "tests/test_perf.py")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: not item.nodeid.startswith(_LONG_FIRST))
