import gzip
import os
import shutil

import numpy as np
import pytest

from clq.data import SESSIONS, build_nic_stream, load_arrays, load_fashion_mnist, render_session
from clq.data.fashion_mnist import DEFAULT_PATH, FILES

HAVE_FMNIST = all(os.path.exists(os.path.join(DEFAULT_PATH, f)) for f in FILES)


def _toy(n_per_class=40, classes=4, size=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n_per_class * classes, size, size), dtype=np.uint8)
    y = np.repeat(np.arange(classes), n_per_class).astype(np.int32)
    return x, y, x[:30], y[:30]


def test_stream_structure_and_determinism():
    x, y, xt, yt = _toy()
    kw = dict(num_classes=4, sessions=SESSIONS[:3], initial_classes=2, initial_images_per_class=6,
              images_per_event=5, test_size=24, image_size=16)
    s = build_nic_stream(x, y, xt, yt, seed=3, **kw)
    assert s.num_events == 1 + 4 * 3 - 2
    assert len(s.experiences[0]) == 12 and len(set(s.train_labels[s.experiences[0]])) == 2
    assert np.all(s.experience_sessions[0] == 0)
    pairs = set()
    for e, cls, sess in zip(s.experiences[1:], s.experience_classes[1:], s.experience_sessions[1:]):
        assert len(e) == 5 and set(s.train_labels[e]) == {int(cls[0])}  # one class ...
        assert set(s.train_sessions[e]) == {int(sess)}  # ... from one session
        pairs.add((int(cls[0]), int(sess)))
    assert len(pairs) == s.num_events - 1  # every (class, session) pair once
    assert s.train_images.dtype == np.uint8 and s.train_images.shape[1:] == (16, 16, 3)
    assert sorted(np.bincount(s.test_sessions)) == [8, 8, 8]
    s2 = build_nic_stream(x, y, xt, yt, seed=3, **kw)
    np.testing.assert_array_equal(s.train_images, s2.train_images)
    assert [e.tolist() for e in s.experience_classes] == [e.tolist() for e in s2.experience_classes]
    s3 = build_nic_stream(x, y, xt, yt, seed=4, **kw)
    assert [int(c[0]) for c in s.experience_classes[1:]] != [int(c[0]) for c in s3.experience_classes[1:]]


def test_images_rendered_on_threads_are_those_of_one_thread_and_of_one_render_each(monkeypatch):
    """`build_nic_stream` renders its sessions on `usable_cores()` threads (NPROC when set: one for a clq_joblib
    member).
    The stream is the same on 1 and on 3 threads, and every image is `render_session` of one raw image, in its
    session."""
    from clq.perf import usable_cores

    x, y, xt, yt = _toy()
    kw = dict(num_classes=4, sessions=SESSIONS, initial_classes=2, initial_images_per_class=6, images_per_event=4,
              test_size=24, image_size=16, seed=5)
    streams = []
    for nproc in ("1", "3"):
        monkeypatch.setenv("NPROC", nproc)
        assert usable_cores() == int(nproc)
        streams.append(build_nic_stream(x, y, xt, yt, **kw))
    one, three = streams
    np.testing.assert_array_equal(one.train_images, three.train_images)
    np.testing.assert_array_equal(one.test_images, three.test_images)
    for sess, name in enumerate(SESSIONS):
        for raw, images, sessions in ((x, three.train_images, three.train_sessions),
                                      (xt, three.test_images, three.test_sessions)):
            rendered = render_session(raw, name, 16)
            for img in images[sessions == sess]:
                assert (rendered == img).all(axis=(1, 2, 3)).any(), name


def test_stream_errors_name_the_field():
    x, y, xt, yt = _toy()
    with pytest.raises(ValueError, match="data.images_per_event"):
        build_nic_stream(x, y, xt, yt, 4, initial_classes=2, images_per_event=100)
    with pytest.raises(ValueError, match="data.sessions"):
        build_nic_stream(x, y, xt, yt, 4, initial_classes=2, sessions=("clean", "underwater"))
    with pytest.raises(ValueError, match="data.initial_classes"):
        build_nic_stream(x, y, xt, yt, 4, initial_classes=9)
    with pytest.raises(ValueError, match="data.num_classes"):
        build_nic_stream(x, y, xt, yt, 3, initial_classes=2)


@pytest.mark.parametrize("session", SESSIONS)
def test_sessions_are_distinct_nuisances(session):
    x = np.zeros((2, 28, 28), np.uint8)
    x[:, 8:20, 10:16] = 200
    out = render_session(x, session, 32)
    assert out.shape == (2, 32, 32, 3) and out.dtype == np.uint8
    clean = render_session(x, "clean", 32)
    assert (session == "clean") == np.array_equal(out, clean)


@pytest.mark.parametrize("session", SESSIONS)
@pytest.mark.parametrize("size", [32, 19])
def test_grey_images_render_as_their_rgb_copies(session, size):
    """Grey images are rendered on one channel until the end (a third of the work); the pixels must be those of
    the same images given as RGB with three equal channels, which take the three-channel path throughout."""
    grey = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    np.testing.assert_array_equal(render_session(grey, session, size),
                                  render_session(np.repeat(grey[..., None], 3, axis=-1), session, size))


def test_arrays_dataset(tmp_path):
    x, y, xt, yt = _toy()
    p = tmp_path / "d.npz"
    np.savez(p, x_train=x, y_train=y, x_test=xt, y_test=yt)
    got = load_arrays(str(p))
    np.testing.assert_array_equal(got[0], x)
    np.savez(tmp_path / "bad.npz", x_train=x, y_train=y)
    with pytest.raises(ValueError, match="missing arrays"):
        load_arrays(str(tmp_path / "bad.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz"):
        load_arrays(str(tmp_path / "junk.npz"))
    with pytest.raises(FileNotFoundError, match="data.path"):
        load_arrays(str(tmp_path / "nope.npz"))


@pytest.mark.skipif(not HAVE_FMNIST, reason="dataset-fashion-mnist not installed (scripts/setup.sh installs it)")
def test_fashion_mnist_and_corruption(tmp_path):
    x, y, xt, yt = load_fashion_mnist()
    assert x.shape == (60000, 28, 28) and xt.shape == (10000, 28, 28) and set(np.unique(y)) == set(range(10))
    for f in FILES:
        shutil.copy(os.path.join(DEFAULT_PATH, f), tmp_path / f)
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-10])  # truncated
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz"):
        load_fashion_mnist(str(tmp_path))
    os.remove(bad)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist(str(tmp_path))
