"""TFDS builder ``core50``: the official CORe50 128x128 images as a TensorFlow-free ``array_record`` dataset.

Prepare it once from the official archive (or its extracted folder) and read it with `tfds.data_source`::

    import clq.data.tfds  # registers the builders
    builder = tfds.builder("core50", data_dir="~/tensorflow_datasets")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir="~/core50"))
    train = tfds.data_source("core50", data_dir="~/tensorflow_datasets")["train"]

The source is found, in order: the builder's ``source=`` argument (a folder or zip), then ``manual_dir``
(``core50_128x128/`` or ``core50_128x128.zip``), then the official download address (MD5-verified). An
official archive is always checked against its published MD5 unless ``verify_archive=False``.

Splits: ``train`` (sessions 1, 2, 4, 5, 6, 8, 9, 11: 119,894 frames in the release) and ``test`` (sessions
3, 7, 10: 44,972 frames). Examples are written in sorted path order (shuffling disabled) and
the dataset's metadata lists each split's paths, so `TfdsCore50Store` maps a file-list path to its record
without reading any image; every read checks the record's ``path``.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from clq.data.core50.checksums import OFFICIAL_FILES, download
from clq.data.core50.images import FolderStore, ZipStore, resize_image
from clq.data.core50.layout import (
    ARCHIVE_FOLDER,
    IMAGE_SIZE,
    NUM_CATEGORIES,
    NUM_OBJECTS,
    TEST_SESSIONS,
    parse_image_path,
)
from clq.data.tfds.common import (
    FILE_FORMAT,
    CodePathMixin,
    image_feature,
    latest_version_dir,
    path_feature,
    scalar_feature,
)

__all__ = ["Core50", "TfdsCore50Store", "find_prepared_core50", "prepare_core50"]

_ARCHIVE = ARCHIVE_FOLDER + ".zip"


class Core50(CodePathMixin, tfds.core.GeneratorBasedBuilder):
    """CORe50 128x128: 50 objects, 10 categories, 11 sessions (3, 7, 10 = test)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "uint8 image tensors (array_record), object/category/session/frame/path."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Download {OFFICIAL_FILES[_ARCHIVE][0]}
    (MD5 {OFFICIAL_FILES[_ARCHIVE][1]}) and place `{_ARCHIVE}` or its extracted `{ARCHIVE_FOLDER}/` folder in
    the manual dir (or pass `source=` to the builder).
    """

    def __init__(self, *, source: str | None = None, verify_archive: bool = True, **kwargs):
        """Args:
          source: the archive or the extracted folder (overrides manual_dir).
          verify_archive: check an official archive against its published MD5.
        """
        # Only array_record reads back without TensorFlow (random access through tfds.data_source).
        kwargs.setdefault("file_format", FILE_FORMAT)
        self._source, self._verify = source, verify_archive
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="CORe50: 50 domestic objects in 10 categories filmed in 11 sessions, 128x128 RGB.",
            features=tfds.features.FeaturesDict({
                "image": image_feature(IMAGE_SIZE),
                "label": scalar_feature(),  # object 0..49 (the official file lists' label)
                "category": scalar_feature(),  # 0..9
                "session": scalar_feature(),  # 1..11
                "frame": scalar_feature(),
                "path": path_feature(),  # s{session}/o{object}/C_{ss}_{oo}_{fff}.png
            }),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
            homepage="https://vlomonaco.github.io/core50/",
            citation="Lomonaco, Maltoni. CORe50: a New Dataset and Benchmark for Continuous Object Recognition. "
                     "CoRL 2017.",
            metadata=tfds.core.MetadataDict(num_objects=NUM_OBJECTS, num_categories=NUM_CATEGORIES,
                                            test_sessions=list(TEST_SESSIONS)),
        )

    def _open_source(self, dl_manager):
        if self._source is not None:
            src = os.path.abspath(os.path.expanduser(self._source))
            if os.path.isdir(os.path.join(src, ARCHIVE_FOLDER)):
                src = os.path.join(src, ARCHIVE_FOLDER)
            if os.path.isdir(src):
                return FolderStore(src)
            return ZipStore(src, verify=self._verify)
        try:
            manual = str(dl_manager.manual_dir)
        except AssertionError:  # TFDS raises this when the manual dir is unset, missing or empty
            manual = None
        if manual is not None:
            if os.path.isdir(os.path.join(manual, ARCHIVE_FOLDER)):
                return FolderStore(os.path.join(manual, ARCHIVE_FOLDER))
            if os.path.isfile(os.path.join(manual, _ARCHIVE)):
                return ZipStore(os.path.join(manual, _ARCHIVE), verify=self._verify)
        return ZipStore(download(_ARCHIVE, str(dl_manager.download_dir)), verify=False)  # download() verified it

    def _split_generators(self, dl_manager):
        store = self._open_source(dl_manager)
        paths = store.paths()
        if not paths:
            raise FileNotFoundError(f"{store.location}: no CORe50 images (s*/o*/C_*.png)")
        ids = {p: parse_image_path(p) for p in paths}
        splits = {
            "train": [p for p in paths if ids[p].session not in TEST_SESSIONS],
            "test": [p for p in paths if ids[p].session in TEST_SESSIONS],
        }
        # The path -> record map for readers; saved with the dataset info.
        for name, ps in splits.items():
            self.info.metadata[f"{name}_paths"] = "\n".join(ps)
        return {name: self._generate_examples(store, ps) for name, ps in splits.items() if ps}

    def _generate_examples(self, store, paths):
        for p in paths:
            image = store.load(p)  # raises naming the file when it is missing or corrupt
            if image.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
                image = resize_image(image, IMAGE_SIZE)
            i = parse_image_path(p)
            yield p, {"image": image, "label": i.label, "category": i.category, "session": i.session,
                      "frame": i.frame, "path": p}


def prepare_core50(data_dir: str, source: str | None = None, manual_dir: str | None = None,
                   verify_archive: bool = True) -> str:
    """Prepare the ``core50`` TFDS dataset under `data_dir`; returns its version folder."""
    expand = lambda p: None if p is None else os.path.expanduser(p)  # noqa: E731
    builder = Core50(data_dir=expand(data_dir), source=expand(source), verify_archive=verify_archive)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=expand(manual_dir)))
    return str(builder.data_path)


def find_prepared_core50(root: str) -> str | None:
    """The version folder of a prepared ``core50`` dataset at `root` (a TFDS data dir, its ``core50/``
    folder, or the version folder itself), or None."""
    root = os.path.abspath(os.path.expanduser(root))
    if os.path.isfile(os.path.join(root, "dataset_info.json")) and os.path.basename(os.path.dirname(root)) == "core50":
        return root
    for d in (os.path.join(root, "core50"), root):
        v = latest_version_dir(d)
        if v is not None and os.path.basename(os.path.dirname(v)) == "core50":
            return v
    return None


class TfdsCore50Store:
    """An image store (`clq.data.core50.images.ImageStore`) over the prepared ``core50`` TFDS dataset."""

    def __init__(self, version_dir: str):
        self.location = os.path.abspath(version_dir)
        self._builder = tfds.builder_from_directory(self.location)
        meta = self._builder.info.metadata or {}
        self._index: dict[str, tuple[str, int]] = {}
        for split in ("train", "test"):
            text = meta.get(f"{split}_paths", "")
            for i, p in enumerate(text.split("\n") if text else ()):
                self._index[p] = (split, i)
        if not self._index:
            raise ValueError(f"{self.location}: the dataset's metadata lists no image paths; prepare it with "
                             f"clq.data.tfds (builder 'core50')")
        self._sources: dict = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_sources"] = {}
        return state

    def describe(self, path: str) -> str:
        if path not in self._index:
            return f"{path} (not in the prepared dataset {self.location})"
        split, i = self._index[path]
        return f"{self.location}[{split}][{i}] ({path})"

    def paths(self) -> list[str]:
        return sorted(self._index)

    def missing(self, paths) -> list[str]:
        return [p for p in paths if p not in self._index]

    def load(self, path: str) -> np.ndarray:
        if path not in self._index:
            raise FileNotFoundError(f"{path}: not in the prepared CORe50 dataset {self.location}")
        split, i = self._index[path]
        if split not in self._sources:
            self._sources[split] = self._builder.as_data_source(split=split)
        ex = self._sources[split][i]
        got = ex["path"].decode() if isinstance(ex["path"], bytes) else str(ex["path"])
        if got != path:
            raise ValueError(f"{self.describe(path)}: the record holds {got!r}; the dataset does not match its "
                             f"metadata, prepare it again")
        return np.asarray(ex["image"], np.uint8)
