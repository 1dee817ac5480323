"""Fixtures of the sweep tests (helpers live in sweeputil.py)."""

import os

import pytest


@pytest.fixture
def have_fmnist():
    from clq.data.fashion_mnist import DEFAULT_PATH, FILES

    if not all(os.path.exists(os.path.join(DEFAULT_PATH, f)) for f in FILES):
        pytest.skip("dataset-fashion-mnist not installed (scripts/setup.sh installs it)")
    return DEFAULT_PATH
