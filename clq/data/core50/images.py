"""Lazy CORe50 images: PNGs decoded on demand, so no step needs the ~120k training images in memory.

An **image store** maps a relative CORe50 path (``s1/o1/C_01_01_000.png``) to pixels; it reads the extracted
folder or the official zip directly (the TFDS-prepared dataset has its own store, `clq.data.tfds`).
`LazyImages` puts a store behind the array interface the learning-event loop uses: ``.shape``, ``.dtype``,
``len()`` and ``[int | slice | int array | bool mask]``, each access decoding only the requested images (in
a few threads: PIL releases the GIL while it inflates a PNG).
"""

from __future__ import annotations

import io
import os
import re
import threading
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, Sequence

import numpy as np
from PIL import Image

from clq.data.core50.checksums import OFFICIAL_FILES, verify_md5
from clq.perf import usable_cores

__all__ = ["ImageStore", "FolderStore", "ZipStore", "LazyImages", "decode_png", "resize_image"]

_IMAGE_RE = re.compile(r"(.*?)(s\d{1,2}/o\d{1,2}/C_\d{2}_\d{2}_\d{3}\.png)")


class ImageStore(Protocol):
    """Where CORe50 images come from."""

    location: str

    def load(self, path: str) -> np.ndarray:
        """uint8 [H, W, 3] pixels of one relative path (raises naming the file)."""

    def missing(self, paths: Sequence[str]) -> list[str]:
        """The given relative paths that the store does not hold."""

    def describe(self, path: str) -> str:
        """Where a relative path lives, for error messages."""

    def paths(self) -> list[str]:
        """Every image path the store holds, sorted."""


def decode_png(data: bytes, name: str) -> np.ndarray:
    """Decode a PNG (or any image PIL reads) to uint8 [H, W, 3] RGB.

    Raises:
      ValueError naming `name` when the bytes are not a complete, decodable image.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # force the full decode: a truncated file must fail here, not later
            rgb = img.convert("RGB")
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, UnidentifiedImageError...
        raise ValueError(f"{name}: cannot decode image ({type(e).__name__}: {e})") from None
    return np.asarray(rgb, np.uint8)


def resize_image(pixels: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [image_size, image_size, 3] (PIL bilinear, antialiased when shrinking)."""
    if pixels.shape[:2] == (image_size, image_size):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((image_size, image_size), Image.Resampling.BILINEAR))


def _missing_in_folder(root: str, paths: Sequence[str]) -> list[str]:
    # One listdir per s*/o* folder instead of one stat per image (120k stats are slow on network disks).
    listing: dict[str, set] = {}
    out = []
    for p in paths:
        d, f = p.rsplit("/", 1)
        if d not in listing:
            full = os.path.join(root, d)
            listing[d] = set(os.listdir(full)) if os.path.isdir(full) else set()
        if f not in listing[d]:
            out.append(p)
    return out


class FolderStore:
    """The extracted ``core50_128x128/`` folder (or any folder in its layout)."""

    def __init__(self, root: str):
        self.location = os.path.abspath(root)

    def describe(self, path: str) -> str:
        return os.path.join(self.location, path)

    def load(self, path: str) -> np.ndarray:
        full = self.describe(path)
        try:
            with open(full, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"{full}: image not found") from None
        return decode_png(data, full)

    def missing(self, paths: Sequence[str]) -> list[str]:
        return _missing_in_folder(self.location, paths)

    def paths(self) -> list[str]:
        out = []
        for s in sorted(d for d in os.listdir(self.location) if re.fullmatch(r"s\d{1,2}", d)):
            for o in sorted(d for d in os.listdir(os.path.join(self.location, s)) if re.fullmatch(r"o\d{1,2}", d)):
                out += [f"{s}/{o}/{f}" for f in sorted(os.listdir(os.path.join(self.location, s, o)))
                        if _IMAGE_RE.fullmatch(f"{s}/{o}/{f}")]
        return out


class ZipStore:
    """Images read straight from ``core50_128x128.zip`` (no extraction needed).

    The zip is opened lazily in each process; reads of the shared handle are serialised by a lock while
    the PNG decode runs outside it.
    """

    def __init__(self, path: str, verify: bool = True, md5: str | None = None):
        """Args:
          path: the archive.
          verify: check the archive's MD5: `md5` if given, else the published one for its file name
            (`OFFICIAL_FILES`); an archive with another name and no `md5` is not checked.
        Raises:
          FileNotFoundError / ValueError naming the archive (missing, not a zip, wrong checksum, no images).
        """
        self.location = os.path.abspath(path)
        if not os.path.isfile(self.location):
            raise FileNotFoundError(f"{self.location}: archive not found")
        if not zipfile.is_zipfile(self.location):
            raise ValueError(f"{self.location}: not a zip archive")
        if verify and (md5 is not None or os.path.basename(self.location) in OFFICIAL_FILES):
            verify_md5(self.location, md5)
        with zipfile.ZipFile(self.location) as z:
            names = z.namelist()
        prefixes = {m.group(1) for m in map(_IMAGE_RE.fullmatch, names) if m}
        if not prefixes:
            raise ValueError(f"{self.location}: holds no CORe50 images (s*/o*/C_*.png)")
        # The official archive stores core50_128x128/s*/...; take the shortest prefix if several.
        self.prefix = min(prefixes, key=len)
        self._names = {n[len(self.prefix):] for n in names if n.startswith(self.prefix)}
        self._zip: zipfile.ZipFile | None = None
        self._pid = None
        self._lock = threading.Lock()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_zip"], state["_pid"], state["_lock"] = None, None, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def describe(self, path: str) -> str:
        return f"{self.location}:{self.prefix}{path}"

    def load(self, path: str) -> np.ndarray:
        if path not in self._names:
            raise FileNotFoundError(f"{self.describe(path)}: image not found in the archive")
        with self._lock:
            if self._zip is None or self._pid != os.getpid():
                self._zip, self._pid = zipfile.ZipFile(self.location), os.getpid()
            try:
                data = self._zip.read(self.prefix + path)
            except (zipfile.BadZipFile, OSError, EOFError) as e:  # CRC error, truncated member
                raise ValueError(f"{self.describe(path)}: cannot read from the archive ({e})") from None
        return decode_png(data, self.describe(path))

    def missing(self, paths: Sequence[str]) -> list[str]:
        return [p for p in paths if p not in self._names]

    def paths(self) -> list[str]:
        return sorted(self._names)


class LazyImages:
    """A read-only uint8 [N, S, S, 3] array whose rows are image files decoded when indexed.

    ``images[i]`` is uint8 [S, S, 3]; ``images[idx]`` for a slice, an int array or a bool mask is a new
    uint8 [len(idx), S, S, 3] NumPy array. Memory is only what the caller asks for at once.
    """

    ndim = 4
    dtype = np.dtype(np.uint8)

    def __init__(self, store: ImageStore, paths: Sequence[str], image_size: int, num_workers: int | None = None):
        """Args:
          store: where the images come from.
          paths: N relative paths, row i is paths[i].
          image_size: S; images of another size are resized (bilinear).
          num_workers: decoding threads (default: min(4, `clq.perf.usable_cores()`)).
        """
        self.store = store
        self.paths = tuple(paths)
        self.image_size = int(image_size)
        self.num_workers = num_workers or min(4, usable_cores())
        self._pool: ThreadPoolExecutor | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_pool"] = None
        return state

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.image_size, self.image_size, 3)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"LazyImages(shape={self.shape}, dtype=uint8, store={self.store.location!r})"

    def _one(self, i: int) -> np.ndarray:
        px = self.store.load(self.paths[i])
        if px.ndim != 3 or px.shape[2] != 3:
            raise ValueError(f"{self.store.describe(self.paths[i])}: expected an RGB image, got shape {px.shape}")
        return resize_image(px, self.image_size)

    def _indices(self, key) -> np.ndarray | int:
        n = len(self.paths)
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            i = int(key) + (n if key < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"index {int(key)} out of range for {n} images")
            return i
        if isinstance(key, slice):
            return np.arange(n)[key]
        idx = np.asarray(key)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise IndexError(f"boolean index of shape {idx.shape} for {n} images")
            return np.flatnonzero(idx)
        if not np.issubdtype(idx.dtype, np.integer) or idx.ndim != 1:
            raise IndexError(f"LazyImages supports an int, a slice, a 1-D int array or a bool mask, got {key!r}")
        idx = np.where(idx < 0, idx + n, idx)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"index out of range for {n} images")
        return idx

    def __getitem__(self, key) -> np.ndarray:
        idx = self._indices(key)
        if isinstance(idx, int):
            return self._one(idx)
        out = np.empty((len(idx), self.image_size, self.image_size, 3), np.uint8)
        if len(idx) < 8 or self.num_workers <= 1:
            for j, i in enumerate(idx):
                out[j] = self._one(int(i))
            return out
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="core50-decode")

        def fill(j_i):
            out[j_i[0]] = self._one(int(j_i[1]))

        # list() re-raises the first worker exception (which names its file) in the caller.
        list(self._pool.map(fill, enumerate(idx)))
        return out

    def __array__(self, dtype=None, copy=None):
        warnings.warn(f"materialising all {len(self)} lazy CORe50 images ({self.size / 1e9:.2f} GB)", stacklevel=2)
        out = self[:]
        return out if dtype is None else out.astype(dtype)
