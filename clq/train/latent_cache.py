"""On-disk cache of frozen-stage latents, keyed by the frozen stage's content and the images' content.

After event 0 the frozen stage never changes (paper.md §1), so an image's latent is a pure function of
(frozen stage, image). Runs that share a frozen stage (the same event 0: a sweep over ``replay.bits`` or
``replay.size`` at one seed, a re-run after a crash) can reuse each other's latents instead of pushing every
image through layers 0..l again: at the paper's size that is ~125 M MAC per image, 120k images per run.

* **Keys.** The stage key is a BLAKE2b hash of the frozen stage's specs, parameters and quantization
  (`frozen_stage_key`); an image's key is a hash of its uint8 pixels, so the same file read through any
  path, archive or TFDS copy hits the same entry and a changed image never returns a stale latent.
* **Layout.** ``<cache_dir>/<stage key>/<shard key>.npz``: one shard per chunk of at most `chunk` images of
  a call (a run's calls are the test set, event 0's images and windows of later events, `latents_ahead`),
  holding the codes, the images' keys and a digest of the codes.
* **Writes** go to a temporary file in the same folder and are renamed into place (`os.replace` is atomic
  on POSIX), so concurrent writers of the same shard (two runs of a sweep) never expose a partial file:
  each rename installs a complete, identical shard.
* **Reads** are verified: keys, shape, dtype and the codes' digest must match, else the shard is treated as
  a miss, recomputed and rewritten (with a warning).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import os
import shutil
import warnings
import zipfile
from typing import Callable, NamedTuple, Sequence

import numpy as np

from clq.atomic import atomic_file

__all__ = ["CacheStats", "LatentCache", "content_key", "code_version", "frozen_stage_key", "image_keys",
           "make_latent_cache", "with_latent_cache", "prune_cache", "LATENT_CACHE_BYTES"]

#: Bumped when the cache's file format or the meaning of a key changes (2: keys include the code's version).
CACHE_FORMAT = 2

#: Bound of a latent cache folder on disk: when a run starts using it, least recently used frozen stages go
#: until the rest fits (`prune_cache`). One stage of the default experiment is ~36 MB; the paper-size CORe50
#: protocol's (120k latents of 8x8x512 codes) is ~4 GB.
LATENT_CACHE_BYTES = 8 << 30


def _update(h, obj) -> None:
    """Feed a pytree-ish object into a hash: arrays by dtype/shape/bytes, containers recursively."""
    if hasattr(obj, "__array__") and not isinstance(obj, (str, bytes)):
        a = np.asarray(obj)
        h.update(f"array{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    elif isinstance(obj, dict):
        h.update(b"dict")
        for k in sorted(obj, key=repr):
            _update(h, k)
            _update(h, obj[k])
    elif isinstance(obj, (list, tuple)):  # NamedTuples (LayerSpec, LayerQuant) too
        h.update(f"{type(obj).__name__}{len(obj)}".encode())
        for v in obj:
            _update(h, v)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        h.update(type(obj).__name__.encode())
        for f in dataclasses.fields(obj):
            _update(h, f.name)
            _update(h, getattr(obj, f.name))
    else:
        h.update(f"{type(obj).__name__}:{obj!r}".encode())


def frozen_stage_key(*parts) -> str:
    """Content hash of a frozen stage, e.g. ``frozen_stage_key(frozen_specs, frozen_params, quant_config)``.

    Args:
      parts: anything that determines the stage's function: layer specs, parameter pytrees (NumPy/JAX
        arrays, hashed by value), the quantization config (None for FP32), the quantized layers.
    Returns:
      32 hex characters.
    """
    return content_key(f"clq-latent-cache-{CACHE_FORMAT}", *parts)


def content_key(tag: str, *parts) -> str:
    """BLAKE2b-128 of `tag` and `parts` (arrays by dtype, shape and bytes; containers recursively): 32 hex
    characters. The key of every content-addressed cache of clq (latents here, event 0 in `clq.train.event0`)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(tag.encode())
    for p in parts:
        _update(h, p)
    return h.hexdigest()


def code_version(tag: str, modules: Sequence[str]) -> str:
    """Content key of the code that computes a cached value: the source of the named modules (dotted names;
    names, because a package may re-export a function under a module's name, as ``clq.model.forward``) and
    what runs them (JAX, jaxlib and optax versions, the backend, x64 and the default matmul precision; a GPU's
    numbers are not a CPU's), and XLA's CPU thread settings (``XLA_FLAGS``, ``NPROC``, the core count: a reduction
    sums in another order on one thread than on the whole pool, so a joblib member with one thread and a default
    run never share an entry). Part of every cache key, so that a changed implementation never returns a stale
    entry and a cached value is the one this process would compute."""
    import importlib

    import jax
    import jaxlib
    import optax

    sources = (inspect.getsource(importlib.import_module(m)) for m in modules)
    return content_key(tag, *sources, jax.__version__, jaxlib.__version__,
                       optax.__version__, jax.default_backend(), bool(jax.config.jax_enable_x64),
                       str(jax.config.jax_default_matmul_precision), os.environ.get("XLA_FLAGS", ""),
                       os.environ.get("NPROC", ""), os.cpu_count())


def _folder_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except OSError:  # removed meanwhile by another run's pruning
                pass
    return total


def prune_cache(root: str, max_bytes: int, keep: str) -> list[str]:
    """Keep a cache folder under `max_bytes`: mark the entry `keep` used, then remove the least recently used
    other entries until the rest fits.

    An entry is a sub-folder of `root` (a frozen stage's latents, one event 0); its last use is its
    modification time (a written shard or file updates it, a hit sets it here). The entry in use is never
    removed, even when it alone exceeds the bound. Safe with concurrent runs: a run whose entry is removed
    meanwhile only misses (reads are verified, writes recreate the folder).

    Returns:
      the removed folders, least recently used first.
    """
    keep = os.path.abspath(keep)
    try:
        os.utime(keep)
    except OSError:
        pass
    entries = []
    for name in os.listdir(root):
        path = os.path.abspath(os.path.join(root, name))
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                entries.append((os.stat(path).st_mtime, path, _folder_bytes(path)))
        except OSError:
            continue
    total = sum(size for _, _, size in entries)
    removed = []
    for _, path, size in sorted(entries):
        if total <= max_bytes:
            break
        if path == keep:
            continue
        shutil.rmtree(path, ignore_errors=True)
        total -= size
        removed.append(path)
    return removed


def image_keys(pixels: np.ndarray) -> np.ndarray:
    """Content keys of images: uint8 [N, ...] -> uint8 [N, 16] (BLAKE2b-128 of each image's bytes+shape)."""
    pixels = np.ascontiguousarray(pixels)
    out = np.empty((len(pixels), 16), np.uint8)
    tag = f"{pixels.dtype.str}{pixels.shape[1:]}".encode()
    for i, img in enumerate(pixels):
        h = hashlib.blake2b(img.tobytes(), digest_size=16)
        h.update(tag)
        out[i] = np.frombuffer(h.digest(), np.uint8)
    return out


@dataclasses.dataclass
class CacheStats:
    """Counters of one cache (per process)."""

    hits: int = 0  # images whose latents came from disk
    misses: int = 0  # images pushed through the frozen stage
    corrupt: int = 0  # shards that failed verification and were rewritten
    bytes_written: int = 0


class LatentCache(NamedTuple):
    """A cached latent function.

    Fields:
      latents(pixels uint8 [N, H, W, C] or a lazy array) -> codes [N, *latent_shape]: drop-in for
        `FrozenStage.latents`; pixels are read `chunk` images at a time.
      stats: the `CacheStats` of this cache (mutable counters).
      directory: ``<cache_dir>/<stage key>``.
    """

    latents: Callable[[np.ndarray], np.ndarray]
    stats: CacheStats
    directory: str


def _digest(codes: np.ndarray) -> np.ndarray:
    return np.frombuffer(hashlib.blake2b(np.ascontiguousarray(codes).tobytes(), digest_size=16).digest(), np.uint8)


def _read_shard(path: str, keys: np.ndarray):
    """codes, or None if absent; raises ValueError if present but not a valid shard for `keys`."""
    try:
        with np.load(path, allow_pickle=False) as z:
            codes, stored_keys, digest = z["codes"], z["keys"], z["digest"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: unreadable cache shard ({type(e).__name__}: {e})") from None
    if not np.array_equal(stored_keys, keys) or len(codes) != len(keys):
        raise ValueError(f"{path}: cache shard holds other images")
    if not np.array_equal(_digest(codes), digest):
        raise ValueError(f"{path}: cache shard's codes do not match their digest")
    return codes


def _write_shard(path: str, codes: np.ndarray, keys: np.ndarray) -> int:
    with atomic_file(path) as f:  # readers see the old shard or the complete new one
        np.savez(f, codes=codes, keys=keys, digest=_digest(codes))
        size = f.tell()
    return size


def make_latent_cache(latents: Callable[[np.ndarray], np.ndarray], stage_key: str, cache_dir: str,
                      chunk: int = 1024, max_bytes: int = LATENT_CACHE_BYTES) -> LatentCache:
    """Wrap a latent function with the on-disk cache.

    Args:
      latents: pixels uint8 [N, H, W, C] -> codes [N, *latent_shape] (`FrozenStage.latents`); must be a pure
        function of the pixels for a given `stage_key`.
      stage_key: identifies the function, e.g. `frozen_stage_key(frozen_specs, frozen_params, quant)`.
      cache_dir: root folder (created if needed); shared safely by concurrent runs.
      chunk: images per shard; bounds the memory of one call to `chunk` images + their codes.
      max_bytes: bound of `cache_dir` (`prune_cache`, applied here, when this stage starts using it).
    """
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    root = os.path.abspath(os.path.expanduser(cache_dir))
    directory = os.path.join(root, stage_key)
    stats = CacheStats()
    unwritable = []
    try:
        os.makedirs(directory, exist_ok=True)
        prune_cache(root, max_bytes, keep=directory)
    except OSError as e:  # a read-only or full disk (the cache is on by default): the run goes on without it
        unwritable.append(e)
        warnings.warn(f"latent cache {directory} unusable ({e}); this run goes on without storing latents",
                      stacklevel=2)

    def store(path, codes, keys):
        if unwritable:
            return
        try:
            os.makedirs(directory, exist_ok=True)  # another run may have pruned this stage meanwhile
            stats.bytes_written += _write_shard(path, codes, keys)
        except OSError as e:  # a full or read-only disk costs the cache, never the run
            unwritable.append(e)
            warnings.warn(f"latent cache {directory} not written ({e}); this run goes on without storing latents",
                          stacklevel=3)

    def cached(pixels) -> np.ndarray:
        n = len(pixels)
        parts = []
        for s in range(0, n, chunk):
            px = np.asarray(pixels[s : s + chunk])
            keys = image_keys(px)
            path = os.path.join(directory, hashlib.blake2b(keys.tobytes(), digest_size=16).hexdigest() + ".npz")
            try:
                codes = _read_shard(path, keys)
            except ValueError as e:
                warnings.warn(f"{e}; recomputing it", stacklevel=2)
                stats.corrupt += 1
                codes = None
            if codes is None:
                codes = np.asarray(latents(px))
                stats.misses += len(px)
                store(path, codes, keys)
            else:
                stats.hits += len(px)
            parts.append(codes)
        if not parts:
            return np.asarray(latents(np.asarray(pixels[0:0])))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    return LatentCache(cached, stats, directory)


#: The modules whose code computes a latent from pixels (`code_version`).
LATENT_CODE = ("clq.train.frozen_stage", "clq.quant.frozen", "clq.quant.requant", "clq.quant.uniform",
               "clq.model.forward", "clq.batching")


def with_latent_cache(frozen, cache_dir: str, *key_parts, chunk: int = 1024):
    """A `FrozenStage` whose ``latents`` go through the cache.

    Args:
      frozen: a `clq.train.frozen_stage.FrozenStage`.
      key_parts: what determines the stage beyond its quantized layers: at least the frozen specs and, for
        an FP32 stage (``frozen.layers == ()``), the frozen parameters.
    Returns:
      (the wrapped FrozenStage, its LatentCache)
    """
    # The code that turns pixels into latents is part of the key: a changed implementation misses.
    code = code_version("clq-latents-code", LATENT_CODE)
    key = frozen_stage_key(code, frozen.layers, frozen.bits, float(frozen.scale), *key_parts)
    cache = make_latent_cache(frozen.latents, key, cache_dir, chunk)
    return frozen._replace(latents=cache.latents), cache
