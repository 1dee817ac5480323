"""The ``fashion_mnist_nic`` TFDS builder serves the spine's offline stream through tfds.data_source."""

import os

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from clq.data import build_nic_stream, load_fashion_mnist  # noqa: E402
from clq.data.fashion_mnist import DEFAULT_PATH, FILES  # noqa: E402
from clq.data.tfds import TfdsArray, fashion_mnist_nic_config, load_fashion_mnist_nic_stream  # noqa: E402

HAVE_FMNIST = all(os.path.exists(os.path.join(DEFAULT_PATH, f)) for f in FILES)
pytestmark = pytest.mark.skipif(not HAVE_FMNIST, reason="dataset-fashion-mnist not installed")

SMALL = dict(sessions=("clean", "dim", "tint"), initial_classes=3, initial_images_per_class=12,
             images_per_event=8, test_size=60, image_size=16, seed=2)


def test_config_names_encode_parameters():
    assert fashion_mnist_nic_config().name == "default"
    a, b = fashion_mnist_nic_config(seed=1), fashion_mnist_nic_config(seed=2)
    assert a.name != b.name and "seed1" in a.name


def test_tfds_stream_equals_the_in_memory_stream(tmp_path):
    cfg = fashion_mnist_nic_config(**SMALL)
    s = load_fashion_mnist_nic_stream(str(tmp_path), cfg)
    x, y, xt, yt = load_fashion_mnist()
    ref = build_nic_stream(x, y, xt, yt, 10, **SMALL)
    assert isinstance(s.train_images, TfdsArray) and s.train_images.shape == ref.train_images.shape
    assert s.train_images.dtype == np.uint8
    np.testing.assert_array_equal(s.train_images[np.arange(len(ref.train_images))], ref.train_images)
    np.testing.assert_array_equal(s.test_images[:], ref.test_images)
    for name in ("train_labels", "train_sessions", "experience_sessions", "test_labels", "test_sessions"):
        np.testing.assert_array_equal(getattr(s, name), getattr(ref, name))
    assert [e.tolist() for e in s.experiences] == [e.tolist() for e in ref.experiences]
    assert [c.tolist() for c in s.experience_classes] == [c.tolist() for c in ref.experience_classes]
    assert s.session_names == ref.session_names and s.num_classes == 10
    idx = ref.experiences[3]
    np.testing.assert_array_equal(s.train_images[idx], ref.train_images[idx])
    # The same dataset through the plain TFDS reader; the experience index is a feature of every record.
    src = tfds.data_source("fashion_mnist_nic", data_dir=str(tmp_path), builder_kwargs={"config": cfg})
    assert int(src["train"][int(idx[0])]["experience"]) == 3 and int(src["test"][0]["experience"]) == -1
