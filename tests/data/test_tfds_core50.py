"""The ``core50`` TFDS builder: prepared from a generated tree without TensorFlow, read with tfds.data_source."""

import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from clq.data.core50 import load_core50_stream, parse_image_path, synthetic_image, write_nicv2_protocol  # noqa: E402
from clq.data.tfds import Core50, TfdsCore50Store, find_prepared_core50, prepare_core50  # noqa: E402

OBJECTS, TRAIN_SESSIONS, TEST_SESSIONS, FRAMES = (1, 6, 11), (1, 2), (3, 10), 3


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds_core50")
    info = write_nicv2_protocol(str(root / "raw"), OBJECTS, TRAIN_SESSIONS, TEST_SESSIONS, FRAMES)
    data_dir = str(root / "tfds")
    version_dir = prepare_core50(data_dir, source=str(root / "raw"))
    return info, data_dir, version_dir


def test_prepares_array_record_and_reads_with_data_source(prepared):
    info, data_dir, version_dir = prepared
    files = os.listdir(version_dir)
    assert any(f.startswith("core50-train.array_record") for f in files)
    assert any(f.startswith("core50-test.array_record") for f in files)
    src = tfds.data_source("core50", data_dir=data_dir)
    n_train = len(OBJECTS) * len(TRAIN_SESSIONS) * FRAMES
    assert len(src["train"]) == n_train and len(src["test"]) == len(OBJECTS) * len(TEST_SESSIONS) * FRAMES
    ex = src["train"][4]
    path = ex["path"].decode()
    i = parse_image_path(path)
    assert ex["image"].dtype == np.uint8 and ex["image"].shape == (128, 128, 3)
    np.testing.assert_array_equal(ex["image"], synthetic_image(i.session, i.object, i.frame))
    assert (ex["label"], ex["category"], ex["session"], ex["frame"]) == (i.label, i.category, i.session, i.frame)
    assert {int(e["session"]) for e in src["test"]} == set(TEST_SESSIONS)
    paths = [e["path"].decode() for e in src["train"]]
    assert paths == sorted(paths)  # written in path order, shuffling disabled
    assert "tensorflow" not in sys.modules


def test_reads_from_files_without_the_builder_class(prepared):
    """A process that never imports clq reads the prepared dataset from its files alone."""
    _, _, version_dir = prepared
    code = ("import sys, tensorflow_datasets as tfds; b = tfds.builder_from_directory(sys.argv[1]); "
            "s = b.as_data_source(split='test'); print(len(s), s[0]['image'].shape, 'tensorflow' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code, version_dir], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split()[-5:] == [str(len(OBJECTS) * len(TEST_SESSIONS) * FRAMES), "(128,", "128,", "3)", "False"]


def test_stream_from_the_prepared_dataset_equals_the_png_tree(prepared):
    info, data_dir, version_dir = prepared
    assert find_prepared_core50(data_dir) == version_dir == find_prepared_core50(version_dir)
    kw = dict(strict=False, test_list="test_filelist.txt", filelists=info["filelists"])
    from_tfds = load_core50_stream(data_dir, **kw)
    from_png = load_core50_stream(os.path.dirname(info["images"]), **kw)
    assert isinstance(from_tfds.train_images.store, TfdsCore50Store)
    assert from_tfds.train_images.paths == from_png.train_images.paths
    idx = np.arange(len(from_png.train_images))
    np.testing.assert_array_equal(from_tfds.train_images[idx], from_png.train_images[idx])
    np.testing.assert_array_equal(from_tfds.test_images[:], from_png.test_images[:])
    np.testing.assert_array_equal(from_tfds.train_labels, from_png.train_labels)
    with pytest.raises(FileNotFoundError, match="not in the prepared CORe50 dataset"):
        from_tfds.train_images.store.load("s5/o1/C_05_01_000.png")


def test_prepare_from_zip_and_manual_dir(tmp_path, prepared):
    info, _, version_dir = prepared
    manual = tmp_path / "manual"
    manual.mkdir()
    archive = manual / "core50_128x128.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for dirpath, _, files in os.walk(info["images"]):
            for f in files:
                full = os.path.join(dirpath, f)
                z.write(full, os.path.join("core50_128x128", os.path.relpath(full, info["images"])))
    # The manual dir's archive carries the official name, so it is checked against the published MD5.
    with pytest.raises(ValueError, match=rf"{archive}: MD5 [0-9a-f]{{32}} does not match the expected"):
        prepare_core50(str(tmp_path / "tfds"), manual_dir=str(manual))
    v = prepare_core50(str(tmp_path / "tfds"), manual_dir=str(manual), verify_archive=False)
    a = tfds.data_source("core50", data_dir=str(tmp_path / "tfds"))["train"]
    b = tfds.builder_from_directory(version_dir).as_data_source(split="train")
    assert len(a) == len(b) and os.path.basename(v) == "1.0.0"
    np.testing.assert_array_equal(a[3]["image"], b[3]["image"])


def test_prepare_fails_naming_a_corrupt_image(tmp_path):
    info = write_nicv2_protocol(str(tmp_path / "raw"), (1,), (1, 2), (3,), 2)
    victim = os.path.join(info["images"], "s2", "o1", "C_02_01_001.png")
    with open(victim, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match=rf"{victim}: cannot decode image"):
        prepare_core50(str(tmp_path / "tfds"), source=str(tmp_path / "raw"))


def test_builder_is_registered_and_tensorflow_free():
    assert issubclass(tfds.builder_cls("core50"), Core50)
    with pytest.raises(ImportError):
        import tensorflow  # noqa: F401  (the point: none of this needs it)
