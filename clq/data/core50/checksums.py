"""Where the official CORe50 files live, their published MD5 checksums, and a verifying downloader.

The addresses and MD5 sums are the ones the CORe50 authors publish (https://vlomonaco.github.io/core50/)
and that the reference loaders (ar1-pytorch, Avalanche) check. MD5 is what is published, so MD5 is what
is checked; it guards against truncated or corrupted downloads, not against tampering.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request

from clq.atomic import atomic_file

__all__ = ["OFFICIAL_FILES", "md5sum", "verify_md5", "download"]

#: file name -> (download address, MD5 of the file).
OFFICIAL_FILES = {
    # The 128x128 images (164,866 PNGs), unpacks to core50_128x128/.
    "core50_128x128.zip": (
        "http://bias.csr.unibo.it/maltoni/download/core50/core50_128x128.zip",
        "745f3373fed08d69343f1058ee559e13",
    ),
    # NI, NC and NIC (v1) batch file lists: batches_filelists/{NI,NC,NIC}_{inc,cum}/run*/...
    "batches_filelists.zip": (
        "https://vlomonaco.github.io/core50/data/batches_filelists.zip",
        "e3297508a8998ba0c99a83d6b36bde62",
    ),
    # NICv2-79/196/391 batch file lists: NIC_v2_{79,196,391}/run*/...
    "batches_filelists_NICv2.zip": (
        "https://vlomonaco.github.io/core50/data/batches_filelists_NICv2.zip",
        "460f980a6c85b86b1ec8e7c6067bb7a3",
    ),
}


def md5sum(path: str, chunk_bytes: int = 1 << 22) -> str:
    """MD5 hex digest of a file, read in chunks (the 128x128 archive is several GB)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_bytes), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_md5(path: str, expected: str | None = None) -> None:
    """Check a file against its MD5 (by default the published one for its file name).

    Raises:
      FileNotFoundError naming the file when it does not exist; ValueError naming the file, the expected
      and the actual digest on a mismatch (a truncated or corrupted download).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: file not found")
    if expected is None:
        name = os.path.basename(path)
        if name not in OFFICIAL_FILES:
            raise ValueError(f"{path}: no published checksum for {name!r}; known files: {sorted(OFFICIAL_FILES)}")
        expected = OFFICIAL_FILES[name][1]
    got = md5sum(path)
    if got != expected.lower():
        raise ValueError(f"{path}: MD5 {got} does not match the expected {expected}; the file is corrupted or "
                         f"truncated, download it again")


def download(name: str, dest_dir: str, url: str | None = None, expected_md5: str | None = None,
             timeout: float = 60.0) -> str:
    """Download one official file into `dest_dir` and verify its MD5 (skipped if a verified copy exists).

    The file is written to a temporary name and renamed only after it verifies, so an interrupted download
    never leaves a file that looks complete.

    Args:
      name: a key of `OFFICIAL_FILES` (or any name when `url` and `expected_md5` are given).
      timeout: seconds without data before the download fails.
    Returns:
      the path of the verified file.
    """
    if url is None or expected_md5 is None:
        if name not in OFFICIAL_FILES:
            raise ValueError(f"unknown CORe50 file {name!r}; known files: {sorted(OFFICIAL_FILES)}")
        url = url or OFFICIAL_FILES[name][0]
        expected_md5 = expected_md5 or OFFICIAL_FILES[name][1]
    dest_dir = os.path.expanduser(dest_dir)
    os.makedirs(dest_dir, exist_ok=True)
    path = os.path.join(dest_dir, name)
    if os.path.isfile(path):
        verify_md5(path, expected_md5)
        return path
    with atomic_file(path) as out:  # committed only once the MD5 verifies
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    out.write(chunk)
        except OSError as e:  # URLError, timeouts, connection resets
            raise OSError(f"{name}: cannot download {url} ({e}); on a machine without internet put the file in "
                          f"{dest_dir} (MD5 {expected_md5})") from e
        out.flush()
        try:
            verify_md5(out.name, expected_md5)
        except ValueError as e:
            raise ValueError(f"{name} downloaded from {url}: {e}") from None
    return path
