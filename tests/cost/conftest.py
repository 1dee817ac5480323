"""Shared fixtures of the cost-model tests: the paper's network and targets (read once per session)."""

import pytest

from clq.cost import load_target
from clq.model.specs import mobilenet_v1_specs


@pytest.fixture(scope="session")
def specs():
    """MobileNet-V1 1.0, 128 px, 50 classes (paper.md §2)."""
    return mobilenet_v1_specs(width=1.0, input_size=128, num_classes=50)


@pytest.fixture(scope="session")
def vega():
    return load_target("vega")


@pytest.fixture(scope="session")
def stm32l4():
    return load_target("stm32l4")


@pytest.fixture()
def paper_event():
    """The paper's learning event (paper.md §3): 300 new images, 1500 LRs, 4 epochs, mini-batch 128."""
    return dict(buffer_size=1500, lr_bits=8, new_images=300, epochs=4, batch_size=128)
