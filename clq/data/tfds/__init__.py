"""TensorFlow-free TFDS builders for clq's datasets (importing this module registers them).

* ``core50``: the official CORe50 128x128 images (`Core50`); `TfdsCore50Store` serves them to
  `clq.data.core50.load_core50_stream` (pass the TFDS data dir as its ``root``).
* ``fashion_mnist_nic``: the spine's offline NICv2-style Fashion-MNIST stream (`FashionMnistNic`);
  `load_fashion_mnist_nic_stream` reads it back as a `Stream`.

Both write ``array_record`` files with `tfds.features.Tensor` features only, so `download_and_prepare` and
`tfds.data_source` work without TensorFlow installed.
"""

from clq.data.tfds.common import TfdsArray
from clq.data.tfds.core50 import Core50, TfdsCore50Store, find_prepared_core50, prepare_core50
from clq.data.tfds.fashion_mnist import (
    FashionMnistNic,
    FashionMnistNicConfig,
    fashion_mnist_nic_config,
    load_fashion_mnist_nic_stream,
)

__all__ = [
    "TfdsArray", "Core50", "TfdsCore50Store", "find_prepared_core50", "prepare_core50", "FashionMnistNic",
    "FashionMnistNicConfig", "fashion_mnist_nic_config", "load_fashion_mnist_nic_stream",
]
