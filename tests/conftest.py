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

# Tests that run whole experiments in subprocesses (20-40 s each) go first. Under `pytest -n 2` a long test that
# starts last leaves the other worker idle at the end; first, the short ones fill in around it. The order within
# each group stays the collection order.
_LONG_FIRST = ("tests/test_run.py", "tests/test_reliability.py", "tests/sweeps/", "tests/test_core50_run.py",
               "tests/test_vsweep.py", "tests/test_newcomer.py", "tests/test_perf.py")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: not item.nodeid.startswith(_LONG_FIRST))
