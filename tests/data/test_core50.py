"""CORe50 loading on generated trees in the official layout (real PNG files, official list formats)."""

import os
import shutil
import zipfile

import numpy as np
import pytest

from clq.data.core50 import (
    SESSION_NAMES,
    Core50Stream,
    LazyImages,
    category_of,
    find_filelists,
    image_path,
    load_core50_stream,
    md5sum,
    parse_filelist,
    parse_image_path,
    synthetic_image,
    verify_md5,
    write_filelist,
    write_nicv2_protocol,
)

OBJECTS, TRAIN_SESSIONS, TEST_SESSIONS, FRAMES = (1, 2, 6, 7), (1, 2, 4), (3,), 5


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("core50"))
    info = write_nicv2_protocol(root, OBJECTS, TRAIN_SESSIONS, TEST_SESSIONS, FRAMES, runs=(0, 1))
    return root, info


def _load(root, **kw):
    kw = {"strict": False, "test_list": "test_filelist.txt", **kw}
    return load_core50_stream(root, **kw)


def test_layout_paths():
    assert image_path(2, 21, 230) == "s2/o21/C_02_21_230.png"
    i = parse_image_path("s11/o50/C_11_50_299.png")
    assert (i.session, i.object, i.frame, i.label, i.category) == (11, 50, 299, 49, 9)
    assert [category_of(k) for k in (0, 4, 5, 49)] == [0, 0, 1, 9]
    for bad in ("s2/o21/C_02_22_230.png", "s2/o21/C_02_21_23.png", "s12/o1/C_12_01_000.png", "x.png"):
        with pytest.raises(ValueError, match="s|x"):
            parse_image_path(bad)


def test_parse_filelist_errors_name_file_and_line():
    fl = parse_filelist("s1/o6/C_01_06_000.png 5\n\ns1/o6/C_01_06_001.png 1\n", "lists/b.txt")
    assert fl.paths == ("s1/o6/C_01_06_000.png", "s1/o6/C_01_06_001.png")
    assert fl.labels.tolist() == [5, 1]  # object-level and category-level labels are both official formats
    assert fl.object_labels.tolist() == [5, 5] and fl.ids.tolist() == [[1, 6, 0], [1, 6, 1]]
    with pytest.raises(ValueError, match=r"lists/b.txt:2: label 7 is neither"):
        parse_filelist("s1/o6/C_01_06_000.png 5\ns1/o6/C_01_06_001.png 7\n", "lists/b.txt")
    with pytest.raises(ValueError, match=r"lists/b.txt:1: expected '<image path> <label>'"):
        parse_filelist("s1/o6/C_01_06_000.png\n", "lists/b.txt")
    with pytest.raises(ValueError, match=r"lists/b.txt:1: .*not a CORe50 image path"):
        parse_filelist("img/001.png 3\n", "lists/b.txt")
    with pytest.raises(ValueError, match="lists/b.txt: the file list is empty"):
        parse_filelist("\n", "lists/b.txt")


def test_stream_follows_the_file_lists(tree):
    root, info = tree
    s = _load(root)
    batches = info["batches"][0]
    assert isinstance(s, Core50Stream) and s.scenario == "nicv2_391" and s.run == 0
    assert s.num_events == len(batches) == 1 + len(OBJECTS) * (len(TRAIN_SESSIONS) - 1)
    assert s.num_classes == 50 and s.session_names == SESSION_NAMES
    for e, cls, sess, batch in zip(s.experiences, s.experience_classes, s.experience_sessions, batches):
        assert [s.train_images.paths[i] for i in e] == [p for p, _ in batch]  # batch order, batch 0 first
        assert s.train_labels[e].tolist() == [label for _, label in batch]
        assert cls.tolist() == sorted({label for _, label in batch})
        assert SESSION_NAMES[sess] == batch[0][0].split("/")[0]
    assert len(s.experience_classes[0]) == len(OBJECTS)
    assert all(len(c) == 1 for c in s.experience_classes[1:])  # NICv2: later batches one class each
    assert set(s.test_sessions.tolist()) == {t - 1 for t in TEST_SESSIONS}
    assert len(s.test_labels) == len(OBJECTS) * FRAMES * len(TEST_SESSIONS)
    assert "9 learning events" in s.summary() and "20 test images" in s.summary()
    # A different run is a different batch order of the same images.
    s1 = _load(root, run=1)
    assert sorted(s1.train_images.paths) == sorted(s.train_images.paths)
    assert s1.train_images.paths != s.train_images.paths


def test_lazy_images_decode_on_demand(tree):
    root, _ = tree
    s = _load(root)
    imgs = s.train_images
    assert isinstance(imgs, LazyImages) and imgs.dtype == np.uint8
    assert imgs.shape == (len(s.train_labels), 128, 128, 3) and len(imgs) == imgs.shape[0]
    p = parse_image_path(imgs.paths[7])
    np.testing.assert_array_equal(imgs[7], synthetic_image(p.session, p.object, p.frame))  # PNG is lossless
    idx = np.array([7, 0, 7, len(imgs) - 1])
    batch = imgs[idx]
    assert batch.shape == (4, 128, 128, 3) and batch.dtype == np.uint8
    np.testing.assert_array_equal(batch[0], batch[2])
    np.testing.assert_array_equal(imgs[-1], batch[3])
    np.testing.assert_array_equal(imgs[2:5], imgs[np.arange(2, 5)])
    mask = np.zeros(len(imgs), bool)
    mask[[1, 3]] = True
    np.testing.assert_array_equal(imgs[mask], imgs[[1, 3]])
    big = imgs[np.arange(20)]  # threaded path, same pixels as one by one
    np.testing.assert_array_equal(big[13], imgs[13])
    with pytest.raises(IndexError):
        imgs[len(imgs)]
    small = _load(root, image_size=32)
    assert small.train_images[[0, 1]].shape == (2, 32, 32, 3) and small.test_images.shape[1:] == (32, 32, 3)


@pytest.mark.parametrize("nproc", ["1", "3"])
def test_lazy_images_decode_on_the_cores_the_process_should_use(tree, monkeypatch, nproc):
    """Decoding threads default to min(4, `clq.perf.usable_cores()`): one in a clq_joblib member (NPROC=1)."""
    monkeypatch.setenv("NPROC", nproc)
    imgs = _load(tree[0]).train_images
    assert imgs.num_workers == int(nproc)
    np.testing.assert_array_equal(imgs[np.arange(20)][13], imgs[13])


def test_category_labels(tree):
    root, _ = tree
    s = _load(root, labels="category")
    assert s.num_classes == 10
    assert s.experience_classes[0].tolist() == sorted({category_of(o - 1) for o in OBJECTS})
    np.testing.assert_array_equal(s.test_labels, category_of(_load(root).test_labels))


def test_scenario_checks(tree):
    root, info = tree
    with pytest.raises(FileNotFoundError, match=r"train_batch_09_filelist.txt: missing; scenario 'nicv2_391' has 391"):
        load_core50_stream(root, test_list="test_filelist.txt")  # strict: the published batch count
    with pytest.raises(ValueError, match="data.scenario"):
        _load(root, scenario="nicv3")
    with pytest.raises(ValueError, match="data.run"):
        _load(root, run=10)
    with pytest.raises(ValueError, match="data.labels"):
        _load(root, labels="colour")
    with pytest.raises(ValueError, match="data.max_events"):
        _load(root, max_events=0)
    s = _load(root, max_events=3)
    assert s.num_events == 3 and len(s.train_labels) == sum(len(b) for b in info["batches"][0][:3])


def test_one_in_twenty_test_list(tmp_path, tree):
    root, info = tree
    s = _load(root, test_list="test_filelist_20.txt")  # derived: every 20th line of test_filelist.txt
    assert list(s.test_images.paths) == [p for p, _ in info["test"][::20]]
    # Latent Replay layout: the 1-in-20 list is a file of its own beside the scenario folders.
    lr = write_nicv2_protocol(str(tmp_path), OBJECTS, TRAIN_SESSIONS, TEST_SESSIONS, 2, layout="latent_replay",
                              scenario_dir="sIII_v2_391", test_every=3)
    s = load_core50_stream(str(tmp_path), strict=False, filelists=lr["filelists"])
    assert list(s.test_images.paths) == [p for p, _ in lr["test"][::3]]
    own = tmp_path / "mine.txt"
    write_filelist(str(own), lr["test"][:2])
    s = load_core50_stream(str(tmp_path), strict=False, filelists=lr["filelists"], test_list=str(own))
    assert len(s.test_labels) == 2
    with pytest.raises(FileNotFoundError, match="data.test_list='nope.txt'"):
        load_core50_stream(str(tmp_path), strict=False, filelists=lr["filelists"], test_list="nope.txt")


def test_file_list_naming_a_missing_image(tmp_path):
    info = write_nicv2_protocol(str(tmp_path), (1, 6), (1, 2), (3,), 3)
    victim = info["batches"][0][2][1][0]  # batch 2, second line
    os.remove(os.path.join(info["images"], victim))
    with pytest.raises(FileNotFoundError, match=rf"train_batch_02_filelist.txt:2 names {victim}, which is missing"):
        _load(str(tmp_path))
    # Without the up-front check the error comes when the image is read, naming the file.
    s = _load(str(tmp_path), check_files=False)
    i = s.train_images.paths.index(victim)
    with pytest.raises(FileNotFoundError, match=os.path.join(info["images"], victim)):
        s.train_images[np.arange(len(s.train_images))]
    s.train_images[i - 1]  # the others still read


def test_corrupt_image_names_the_file(tmp_path):
    info = write_nicv2_protocol(str(tmp_path), (1, 6), (1, 2), (3,), 3)
    victim = os.path.join(info["images"], info["batches"][0][1][0][0])
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)
    s = _load(str(tmp_path))
    with pytest.raises(ValueError, match=rf"{victim}: cannot decode image"):
        s.train_images[s.experiences[1]]
    with open(victim, "wb") as f:
        f.write(b"not a png at all")
    with pytest.raises(ValueError, match=rf"{victim}: cannot decode image"):
        s.train_images[s.experiences[1][0]]


def test_missing_batch_file_and_missing_lists(tmp_path):
    info = write_nicv2_protocol(str(tmp_path / "data"), (1, 6), (1, 2, 4), (3,), 2)
    os.remove(os.path.join(info["filelists"], "NIC_v2_391", "run0", "train_batch_01_filelist.txt"))
    with pytest.raises(FileNotFoundError, match=r"run0/train_batch_01_filelist.txt: missing"):
        _load(str(tmp_path / "data"))
    with pytest.raises(FileNotFoundError, match=r"no 'NIC_v2_391/sIII_v2_391/run3/"):
        _load(str(tmp_path / "data"), run=3)
    lone = tmp_path / "lone"
    shutil.copytree(info["images"], lone / "core50_128x128")
    with pytest.raises(FileNotFoundError, match="batches_filelists_NICv2.zip"):
        find_filelists(str(lone))
    with pytest.raises(FileNotFoundError, match="CORe50 data not found"):
        load_core50_stream(str(tmp_path / "nowhere"))


def _zip_tree(images_dir: str, dest: str) -> None:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as z:
        for dirpath, _, files in os.walk(images_dir):
            for f in sorted(files):
                full = os.path.join(dirpath, f)
                z.write(full, os.path.join("core50_128x128", os.path.relpath(full, images_dir)))


def test_zip_archive_and_checksums(tmp_path, tree):
    root, info = tree
    # The lists as an archive too: both read straight from zips.
    lists_zip = str(tmp_path / "lists.zip")
    with zipfile.ZipFile(lists_zip, "w") as z:
        for dirpath, _, files in os.walk(os.path.join(info["filelists"], "NIC_v2_391")):
            for f in files:
                full = os.path.join(dirpath, f)
                z.write(full, os.path.relpath(full, info["filelists"]))
    archive = str(tmp_path / "my_core50.zip")
    _zip_tree(info["images"], archive)
    from_zip = load_core50_stream(archive, strict=False, filelists=lists_zip, test_list="test_filelist.txt")
    from_dir = _load(root)
    assert from_zip.train_images.paths == from_dir.train_images.paths
    idx = np.arange(len(from_dir.train_images))
    np.testing.assert_array_equal(from_zip.train_images[idx], from_dir.train_images[idx])
    # An archive under the official name is checked against the published MD5, and fails naming the file.
    official = str(tmp_path / "core50_128x128.zip")
    shutil.copy(archive, official)
    with pytest.raises(ValueError, match=rf"{official}: MD5 {md5sum(official)} does not match the expected "
                                         "745f3373fed08d69343f1058ee559e13"):
        load_core50_stream(official, strict=False, filelists=lists_zip)
    s = load_core50_stream(official, strict=False, filelists=lists_zip, verify_archive=False,
                           test_list="test_filelist.txt")
    assert s.num_events == from_dir.num_events
    verify_md5(archive, md5sum(archive))
    with pytest.raises(ValueError, match="does not match"):
        verify_md5(archive, "0" * 32)


@pytest.mark.slow
def test_end_to_end_learning_events_on_the_lazy_stream(tree):
    """The learning-event loop runs on a lazy CORe50 stream (a few events, a tiny network)."""
    from clq.model.specs import mobilenet_v1_specs
    from clq.quant.frozen import QuantConfig
    from clq.train.loop import ReplayConfig, TrainConfig, run_continual

    root, _ = tree
    s = _load(root, image_size=16, max_events=4)
    specs = mobilenet_v1_specs(0.25, 16, 50)
    train = TrainConfig(epochs=1, batch_size=16, lr=1e-3, first_epochs=1, first_batch_size=8, eval_batch_size=16)
    res = run_continual(s, specs, 23, train, ReplayConfig(size=12, bits=8, policy="ar1"), QuantConfig(), seed=0)
    assert len(res["accuracy_per_event"]) == 4
    assert all(0.0 <= a <= 1.0 for a in res["accuracy_per_event"])
    assert res["buffer"]["filled"] == 12
    assert len(res["final_accuracy_per_session"]) == 11


def test_lists_found_beside_the_images_per_scenario(tmp_path):
    """NI/NC and NICv2 lists ship in different archives; the one holding the scenario is used."""
    root = tmp_path / "core50"
    write_nicv2_protocol(str(root), (1, 6), (1, 2), (3,), 2)  # NIC_v2_391/ beside core50_128x128/
    ni = write_nicv2_protocol(str(tmp_path / "ni"), (1, 6), (1, 2), (3,), 2, scenario_dir="batches_filelists/NI_inc")
    with zipfile.ZipFile(root / "batches_filelists.zip", "w") as z:
        for dirpath, _, files in os.walk(os.path.join(ni["filelists"], "batches_filelists")):
            for f in files:
                full = os.path.join(dirpath, f)
                z.write(full, os.path.relpath(full, ni["filelists"]))
    assert find_filelists(str(root), "nicv2_391") == str(root)
    assert find_filelists(str(root), "ni") == str(root / "batches_filelists.zip")
    s = _load(str(root / "core50_128x128"), scenario="ni", verify_archive=False)  # lists found in the parent
    assert s.scenario == "ni" and s.source == str(root / "batches_filelists.zip")
    # Under its official name the archive is checked against the published MD5 (this one is generated).
    with pytest.raises(ValueError, match="batches_filelists.zip: MD5 .* does not match the expected "
                                         "e3297508a8998ba0c99a83d6b36bde62"):
        _load(str(root), scenario="ni")
    with pytest.raises(FileNotFoundError, match="file lists of scenario 'nc'"):
        _load(str(root), scenario="nc")


def test_download_verifies_and_never_leaves_partial_files(tmp_path, monkeypatch):
    import io
    import urllib.error
    import urllib.request

    from clq.data.core50 import download

    payload = b"file lists"
    good = __import__("hashlib").md5(payload).hexdigest()
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(payload))
    path = download("lists.zip", str(tmp_path), "https://example.invalid/lists.zip", good)
    assert open(path, "rb").read() == payload
    with pytest.raises(ValueError, match=r"other.zip downloaded from https://example.invalid/o: .* MD5"):
        download("other.zip", str(tmp_path), "https://example.invalid/o", "0" * 32)

    def offline(url, timeout):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(OSError, match=r"core50_128x128.zip: cannot download http://bias.csr.unibo.it/.*"
                                      r"745f3373fed08d69343f1058ee559e13"):
        download("core50_128x128.zip", str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["lists.zip"]  # no partial file left behind
