"""TFDS builder ``fashion_mnist_nic``: the spine's offline NICv2-style Fashion-MNIST stream, served by
`tfds.data_source` (TensorFlow-free, ``array_record``).

The stream is exactly `clq.data.stream.build_nic_stream` over Debian's Fashion-MNIST (checked against its
SHA-256), for the builder config's parameters. The ``train`` split holds the stream's training images in
stream order (event 0's images first), each with its label, session and experience index; ``test`` holds the
rendered test set. The experience boundaries and classes are in the dataset's metadata, so
`load_fashion_mnist_nic_stream` rebuilds the `Stream` without reading any image.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from clq.data.fashion_mnist import DEFAULT_PATH, load_fashion_mnist
from clq.data.sessions import SESSIONS
from clq.data.stream import Stream, build_nic_stream
from clq.data.tfds.common import FILE_FORMAT, CodePathMixin, TfdsArray, image_feature, scalar_feature

__all__ = ["FashionMnistNic", "FashionMnistNicConfig", "fashion_mnist_nic_config", "load_fashion_mnist_nic_stream"]


@dataclasses.dataclass(eq=False)
class FashionMnistNicConfig(tfds.core.BuilderConfig):
    """`build_nic_stream` parameters (the defaults are the spine's default stream, conf/data/fashion_mnist_nic)."""

    seed: int = 0
    image_size: int = 32
    sessions: tuple = SESSIONS
    initial_classes: int = 5
    initial_images_per_class: int = 600
    images_per_event: int = 300
    test_size: int = 10000


def fashion_mnist_nic_config(**kwargs) -> FashionMnistNicConfig:
    """A config whose name encodes its parameters (so different streams prepare to different folders)."""
    cfg = FashionMnistNicConfig(name="default", **kwargs)
    default = FashionMnistNicConfig(name="default")
    changed = [f"{f.name}={getattr(cfg, f.name)}" for f in dataclasses.fields(FashionMnistNicConfig)
               if f.name in kwargs and getattr(cfg, f.name) != getattr(default, f.name)]
    if not changed:
        return cfg
    name = "_".join(c.replace("=", "").replace(",", "-").replace("(", "").replace(")", "").replace("'", "")
                    .replace(" ", "") for c in changed)
    return dataclasses.replace(cfg, name=name, description=", ".join(changed))


class FashionMnistNic(CodePathMixin, tfds.core.GeneratorBasedBuilder):
    """The offline NICv2-style Fashion-MNIST stream of clq (see `clq.data.stream`)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Stream of clq.data.stream.build_nic_stream, uint8 tensors, array_record."}
    BUILDER_CONFIGS = [FashionMnistNicConfig(name="default", description="the spine's default stream")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    `apt-get install dataset-fashion-mnist` (files in {DEFAULT_PATH}), or put the four IDX gzip files in the
    manual dir.
    """

    def __init__(self, *, fashion_mnist_path: str | None = None, **kwargs):
        kwargs.setdefault("file_format", FILE_FORMAT)
        self._fmnist_path = fashion_mnist_path
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        s = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description="Fashion-MNIST arranged as a NICv2-style stream (8 rendered sessions).",
            features=tfds.features.FeaturesDict({
                "image": image_feature(s),
                "label": scalar_feature(),
                "session": scalar_feature(),
                "experience": scalar_feature(),  # -1 in the test split
            }),
            supervised_keys=("image", "label"),
            disable_shuffling=True,  # stream order is the protocol
            homepage="https://github.com/zalandoresearch/fashion-mnist",
            metadata=tfds.core.MetadataDict(),
        )

    def _source_path(self, dl_manager) -> str:
        if self._fmnist_path is not None:
            return self._fmnist_path
        try:
            manual = str(dl_manager.manual_dir)
        except (AssertionError, ValueError):
            manual = None
        return manual if manual and os.path.isfile(os.path.join(manual, "train-images-idx3-ubyte.gz")) else DEFAULT_PATH

    def _split_generators(self, dl_manager):
        c = self.builder_config
        x, y, xt, yt = load_fashion_mnist(self._source_path(dl_manager))
        stream = build_nic_stream(x, y, xt, yt, 10, c.sessions, c.initial_classes, c.initial_images_per_class,
                                  c.images_per_event, c.test_size, c.image_size, c.seed)
        # experiences are consecutive ranges in stream order (build_nic_stream), so their bounds suffice.
        bounds = [0] + [int(e[-1]) + 1 for e in stream.experiences]
        if any(not np.array_equal(e, np.arange(bounds[i], bounds[i + 1])) for i, e in enumerate(stream.experiences)):
            raise AssertionError("build_nic_stream experiences are expected to be consecutive ranges")
        self.info.metadata.update(
            experience_bounds=bounds,
            experience_classes=[c_.tolist() for c_ in stream.experience_classes],
            experience_sessions=stream.experience_sessions.tolist(),
            session_names=list(stream.session_names),
            num_classes=stream.num_classes,
            # Labels and sessions are small; in the metadata a reader gets them without decoding any image.
            train_labels=stream.train_labels.tolist(), train_sessions=stream.train_sessions.tolist(),
            test_labels=stream.test_labels.tolist(), test_sessions=stream.test_sessions.tolist(),
        )
        exp_of = np.repeat(np.arange(len(stream.experiences)), np.diff(bounds))
        return {
            "train": self._generate_examples(stream.train_images, stream.train_labels, stream.train_sessions, exp_of),
            "test": self._generate_examples(stream.test_images, stream.test_labels, stream.test_sessions, None),
        }

    def _generate_examples(self, images, labels, sessions, experience):
        for i in range(len(images)):
            yield i, {"image": images[i], "label": int(labels[i]), "session": int(sessions[i]),
                      "experience": -1 if experience is None else int(experience[i])}


def load_fashion_mnist_nic_stream(data_dir: str, config: str | FashionMnistNicConfig = "default",
                                  prepare: bool = True, fashion_mnist_path: str | None = None) -> Stream:
    """The Fashion-MNIST stream read from its TFDS dataset (prepared first if needed and `prepare`).

    Returns:
      a `Stream` equal to `build_nic_stream(...)` for the config, whose train/test images are `TfdsArray`s
      (uint8 [N, S, S, 3], read on demand); labels and sessions int32 arrays.
    """
    builder = FashionMnistNic(data_dir=data_dir, config=config, fashion_mnist_path=fashion_mnist_path)
    if prepare:
        builder.download_and_prepare()
    meta = builder.info.metadata
    src = builder.as_data_source()
    s = builder.builder_config.image_size

    def column(split, key):
        return np.asarray(meta[f"{split}_{key}s"], np.int32)

    bounds = meta["experience_bounds"]
    return Stream(
        train_images=TfdsArray(src["train"], "image", (s, s, 3)),
        train_labels=column("train", "label"),
        train_sessions=column("train", "session"),
        experiences=[np.arange(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)],
        experience_classes=[np.asarray(c, np.int32) for c in meta["experience_classes"]],
        experience_sessions=np.asarray(meta["experience_sessions"], np.int32),
        test_images=TfdsArray(src["test"], "image", (s, s, 3)),
        test_labels=column("test", "label"),
        test_sessions=column("test", "session"),
        num_classes=int(meta["num_classes"]),
        session_names=tuple(meta["session_names"]),
    )
