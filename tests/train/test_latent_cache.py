"""The on-disk latent cache: hits skip the frozen stage, keys follow content, shards are atomic and verified."""

import multiprocessing as mp
import os
import warnings

import numpy as np
import pytest

import clq.train.latent_cache as lc
from clq.train.latent_cache import frozen_stage_key, image_keys, make_latent_cache, prune_cache, with_latent_cache


class _Counting:
    """A stand-in frozen stage: latents = per-image channel sums as uint8 [N, 2, 2, 3]; counts images seen."""

    def __init__(self, offset=0):
        self.seen, self.offset = 0, offset

    def __call__(self, px):
        self.seen += len(px)
        out = (px.reshape(len(px), 2, px.shape[1] // 2, 2, px.shape[2] // 2, 3).sum(axis=(2, 4)) + self.offset)
        return (out % 256).astype(np.uint8)


def _pixels(n, seed=0, size=8):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_second_call_hits_and_returns_identical_codes(tmp_path):
    fn = _Counting()
    cache = make_latent_cache(fn, "stageA", str(tmp_path), chunk=16)
    px = _pixels(40)
    first = cache.latents(px)
    assert fn.seen == 40 and cache.stats.misses == 40 and cache.stats.hits == 0
    again = cache.latents(px)
    assert fn.seen == 40 and cache.stats.hits == 40  # no frozen-stage work the second time
    np.testing.assert_array_equal(first, again)
    assert again.dtype == np.uint8 and again.shape == (40, 2, 2, 3)
    assert len([f for f in os.listdir(cache.directory) if f.endswith(".npz")]) == 3  # 16 + 16 + 8
    # A new process-level cache on the same folder (another run of a sweep) hits too.
    fn2 = _Counting()
    np.testing.assert_array_equal(make_latent_cache(fn2, "stageA", str(tmp_path), chunk=16).latents(px), first)
    assert fn2.seen == 0


def test_keys_follow_stage_and_image_content(tmp_path):
    px = _pixels(10)
    a = make_latent_cache(_Counting(0), "stageA", str(tmp_path))
    b_fn = _Counting(1)
    b = make_latent_cache(b_fn, "stageB", str(tmp_path))  # another frozen stage: never A's latents
    a.latents(px)
    np.testing.assert_array_equal(b.latents(px), _Counting(1)(px))
    assert b_fn.seen == 10
    changed = px.copy()
    changed[3, 0, 0, 0] ^= 1  # one bit of one image changed: a miss, not a stale latent
    fn = _Counting()
    c = make_latent_cache(fn, "stageA", str(tmp_path))
    np.testing.assert_array_equal(c.latents(changed), _Counting()(changed))
    assert fn.seen == 10
    k = image_keys(px)
    assert k.shape == (10, 16) and k.dtype == np.uint8 and len({r.tobytes() for r in k}) == 10


def test_frozen_stage_key_hashes_values():
    specs = ("conv", 3, (8, 8, 3))
    params = ({"w": np.ones((3, 3), np.float32), "b": np.zeros(3, np.float32)},)
    k = frozen_stage_key(specs, params, None)
    assert k == frozen_stage_key(specs, ({"b": np.zeros(3, np.float32), "w": np.ones((3, 3), np.float32)},), None)
    other = ({"w": np.ones((3, 3), np.float32), "b": np.full(3, 1e-7, np.float32)},)
    assert frozen_stage_key(specs, other, None) != k
    assert frozen_stage_key(specs, params, "int8") != k
    assert len(k) == 32


def test_corrupt_shard_is_recomputed(tmp_path):
    px = _pixels(12)
    cache = make_latent_cache(_Counting(), "s", str(tmp_path))
    ref = cache.latents(px)
    (shard,) = [os.path.join(cache.directory, f) for f in os.listdir(cache.directory)]
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) // 2)
    fn = _Counting()
    again = make_latent_cache(fn, "s", str(tmp_path))
    with pytest.warns(UserWarning, match="unreadable cache shard"):
        np.testing.assert_array_equal(again.latents(px), ref)
    assert fn.seen == 12 and again.stats.corrupt == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(make_latent_cache(_Counting(), "s", str(tmp_path)).latents(px), ref)


def _writer(args):
    cache_dir, seed, reps = args
    cache = make_latent_cache(_Counting(), "shared", cache_dir, chunk=8)
    px = _pixels(24, seed=seed)
    for _ in range(reps):
        np.testing.assert_array_equal(cache.latents(px), _Counting()(px))
        for f in os.listdir(cache.directory):  # force rewrites: every repetition races the other writer
            if f.endswith(".npz"):
                try:
                    os.remove(os.path.join(cache.directory, f))
                except FileNotFoundError:
                    pass
    return True


def test_concurrent_writers_never_expose_partial_shards(tmp_path):
    with mp.get_context("spawn").Pool(2) as pool:
        assert all(pool.map(_writer, [(str(tmp_path), 0, 15), (str(tmp_path), 0, 15)]))
    d = os.path.join(tmp_path, "shared")
    assert not [f for f in os.listdir(d) if f.endswith(".tmp")]  # no temporary file left behind


def test_wraps_a_real_frozen_stage_and_lazy_images(tmp_path):
    import jax

    from clq.model import fold_batch_norm, init_params, mobilenet_v1_specs
    from clq.quant import QuantConfig
    from clq.train.frozen_stage import make_frozen_stage

    specs = mobilenet_v1_specs(0.25, 16, 10)[:2]  # a two-layer frozen stage keeps compilation short
    params, stats = init_params(specs, jax.random.PRNGKey(0))
    folded = fold_batch_norm(specs, params, stats)
    px = _pixels(20, size=16)
    frozen = make_frozen_stage(specs, folded, px, QuantConfig(), batch_size=8)
    cached, cache = with_latent_cache(frozen, str(tmp_path), specs, chunk=8)
    np.testing.assert_array_equal(cached.latents(px), frozen.latents(px))
    np.testing.assert_array_equal(cached.latents(px), frozen.latents(px))
    assert cache.stats.hits == 20 and cache.stats.misses == 20
    assert cached.scale == frozen.scale and cached.bits == 8

    class Lazy:  # any array-like with len() and slicing, as the lazy CORe50 images
        shape, dtype = px.shape, px.dtype

        def __len__(self):
            return len(px)

        def __getitem__(self, k):
            return px[k]

    np.testing.assert_array_equal(cached.latents(Lazy()), frozen.latents(px))
    assert cache.stats.hits == 40


def _entry(root, name, size, mtime):
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "data.npz"), "wb") as f:
        f.write(b"x" * size)
    os.utime(d, (mtime, mtime))
    return d


def test_prune_removes_least_recently_used_entries_but_never_the_one_in_use(tmp_path):
    root = str(tmp_path)
    for i, name in enumerate("abcd"):
        _entry(root, name, 1000, 1_000_000 + i)  # a is the least recently used, d the most
    assert prune_cache(root, 4000, keep=os.path.join(root, "a")) == []  # fits: nothing goes, a is marked used
    assert os.stat(os.path.join(root, "a")).st_mtime > 1_000_003
    removed = prune_cache(root, 2500, keep=os.path.join(root, "c"))
    assert [os.path.basename(p) for p in removed] == ["b", "d"]  # c is in use, a was just used
    assert sorted(os.listdir(root)) == ["a", "c"]
    # An entry in use larger than the bound stays; every other goes.
    assert [os.path.basename(p) for p in prune_cache(root, 10, keep=os.path.join(root, "c"))] == ["a"]
    assert os.listdir(root) == ["c"]


def test_a_stage_starting_to_use_the_cache_prunes_it_to_its_bound(tmp_path):
    px = _pixels(16)
    old = make_latent_cache(_Counting(), "old", str(tmp_path))
    old.latents(px)
    os.utime(old.directory, (1, 1))
    size = sum(os.path.getsize(os.path.join(old.directory, f)) for f in os.listdir(old.directory))
    make_latent_cache(_Counting(), "old", str(tmp_path), max_bytes=size)  # fits its bound: nothing goes
    assert os.listdir(tmp_path) == ["old"]
    new = make_latent_cache(_Counting(), "new", str(tmp_path), max_bytes=size - 1)
    assert os.listdir(tmp_path) == ["new"]
    np.testing.assert_array_equal(new.latents(px), old.latents(px))


def test_a_pruned_or_unwritable_stage_folder_costs_the_cache_never_the_run(tmp_path):
    import shutil

    px = _pixels(20)
    cache = make_latent_cache(_Counting(), "stage", str(tmp_path), chunk=10)
    shutil.rmtree(cache.directory)  # another run pruned this stage meanwhile
    np.testing.assert_array_equal(cache.latents(px), _Counting()(px))
    assert cache.stats.misses == 20 and len(os.listdir(cache.directory)) == 2  # folder recreated, shards written
    blocked = make_latent_cache(_Counting(), "blocked", str(tmp_path), chunk=10)
    shutil.rmtree(blocked.directory)
    open(blocked.directory, "w").close()  # a file where the folder should be: no write can succeed
    with pytest.warns(UserWarning, match="not written"):
        np.testing.assert_array_equal(blocked.latents(px), _Counting()(px))
    assert blocked.stats.bytes_written == 0
    root_file = os.path.join(tmp_path, "not-a-folder")
    open(root_file, "w").close()  # a cache root that cannot be created (as a read-only home): no cache, no error
    with pytest.warns(UserWarning, match="unusable"):
        nowhere = make_latent_cache(_Counting(), "stage", root_file, chunk=10)
    np.testing.assert_array_equal(nowhere.latents(px), _Counting()(px))
    assert nowhere.stats.misses == 20 and nowhere.stats.bytes_written == 0


def test_the_stage_key_holds_the_code_that_computes_latents(tmp_path, monkeypatch):
    """Two versions of the latent code never share an entry (the cache is on by default)."""
    import jax

    from clq.model import fold_batch_norm, init_params, mobilenet_v1_specs
    from clq.quant import QuantConfig
    from clq.train.frozen_stage import make_frozen_stage

    specs = mobilenet_v1_specs(0.25, 16, 10)[:1]
    params, stats = init_params(specs, jax.random.PRNGKey(0))
    frozen = make_frozen_stage(specs, fold_batch_norm(specs, params, stats), _pixels(8, size=16), QuantConfig(),
                               batch_size=8)
    seen = []
    real = lc.code_version
    monkeypatch.setattr(lc, "code_version", lambda tag, modules: seen.append(modules) or real(tag, modules))
    _, a = with_latent_cache(frozen, str(tmp_path), specs)
    assert set(seen[0]) >= {"clq.train.frozen_stage", "clq.quant.frozen", "clq.model.forward"}
    monkeypatch.setattr(lc, "code_version", lambda tag, modules: "another version")
    _, b = with_latent_cache(frozen, str(tmp_path), specs)
    assert a.directory != b.directory


def test_code_version_follows_xla_thread_settings(monkeypatch):
    """A joblib member (one XLA thread) sums in another order than a default run: their entries must differ."""
    monkeypatch.delenv("NPROC", raising=False)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    base = lc.code_version("t", ("clq.batching",))
    assert lc.code_version("t", ("clq.batching",)) == base
    monkeypatch.setenv("NPROC", "1")
    one_thread = lc.code_version("t", ("clq.batching",))
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    assert len({base, one_thread, lc.code_version("t", ("clq.batching",))}) == 3
    assert lc.code_version("t", ("clq.replay.buffer",)) != lc.code_version("t", ("clq.batching",))
