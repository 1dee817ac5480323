"""Generated CORe50 trees: real PNG files and file lists in the official layout, synthetic pixels.

CORe50 cannot be downloaded everywhere (not on the CI machine), yet its loader must be exercised on the real
layout. These helpers write

* an image tree ``<root>/core50_128x128/s{s}/o{o}/C_{ss}_{oo}_{fff}.png`` for any list of paths, each image a
  deterministic function of (session, object, frame): a session-coloured background, an object-coloured
  shape with a category-specific stripe texture, moved and lit a little differently in every frame, so the
  classes are learnable and every session is a different nuisance;
* file lists in the official formats (NICv2 zip layout, or the Latent Replay layout with
  ``test_filelist_20.txt`` beside the scenario folders).

`write_nicv2_protocol` makes a small NICv2-style protocol (batch 0 = one session, later batches one object
from one session each) for tests; the benchmark writes every path of the real NICv2-391 lists instead.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from clq.data.core50.layout import ARCHIVE_FOLDER, IMAGE_SIZE, image_path, parse_image_path

__all__ = ["synthetic_image", "write_image_tree", "write_filelist", "write_nicv2_protocol", "png_bytes"]


def synthetic_image(session: int, obj: int, frame: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """One synthetic CORe50 frame, uint8 [size, size, 3], a pure function of its ids."""
    rng = np.random.default_rng([session, obj])  # per (session, object): the pose/lighting of the take
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    bg = np.array([(37 * session) % 256, (91 * session + 60) % 256, (53 * session + 120) % 256], np.float32)
    img = np.empty((size, size, 3), np.float32)
    img[:] = bg * (0.6 + 0.4 * yy[..., None])  # session: background colour and a vertical light gradient
    hue = np.array([(53 * obj) % 256, (101 * obj + 30) % 256, (197 * obj + 90) % 256], np.float32)
    cat = (obj - 1) // 5
    # The object moves on a small circle over the frames of a take.
    t = 2 * np.pi * frame / 300 + rng.uniform(0, 2 * np.pi)
    cy, cx = 0.5 + 0.12 * np.sin(t), 0.5 + 0.12 * np.cos(t)
    r = 0.18 + 0.02 * (obj % 5)
    mask = ((yy - cy) ** 2 + (xx - cx) ** 2 * (0.6 + 0.1 * (obj % 7))) < r * r
    angle = np.pi * cat / 10
    stripes = 0.75 + 0.25 * np.sign(np.sin(2 * np.pi * 6 * (np.cos(angle) * yy + np.sin(angle) * xx)))
    light = 0.85 + 0.15 * np.cos(t * 3)
    img[mask] = (hue * stripes[..., None] * light)[mask]
    return np.clip(img, 0, 255).astype(np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    """Encode uint8 [H, W, 3] as PNG (fast compression level: the trees are written, not archived)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _write_chunk(args) -> int:
    folder, paths, size = args
    for p in paths:
        sid = parse_image_path(p)
        full = os.path.join(folder, p)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(png_bytes(synthetic_image(sid.session, sid.object, sid.frame, size)))
    return len(paths)


def write_image_tree(root: str, paths: Iterable[str], image_size: int = IMAGE_SIZE, processes: int = 1,
                     skip_existing: bool = True, progress=None) -> str:
    """Write synthetic PNGs for `paths` under ``<root>/core50_128x128/``.

    Args:
      paths: relative CORe50 image paths (duplicates are written once).
      processes: worker processes (PNG encoding is CPU-bound).
      skip_existing: leave files that already exist (so an interrupted benchmark tree resumes).
      progress: optional callable(number written so far, total).
    Returns:
      the image folder ``<root>/core50_128x128``.
    """
    folder = os.path.join(root, ARCHIVE_FOLDER)
    todo = list(dict.fromkeys(paths))
    if skip_existing:
        todo = [p for p in todo if not os.path.exists(os.path.join(folder, p))]
    chunks = [(folder, todo[i : i + 500], image_size) for i in range(0, len(todo), 500)]
    done = 0
    if processes > 1 and len(chunks) > 1:
        with ProcessPoolExecutor(processes) as ex:
            for n in ex.map(_write_chunk, chunks):
                done += n
                if progress:
                    progress(done, len(todo))
    else:
        for c in chunks:
            done += _write_chunk(c)
            if progress:
                progress(done, len(todo))
    return folder


def write_filelist(path: str, entries: Sequence[tuple[str, int]]) -> None:
    """Write ``<path> <label>`` lines (the official format) to `path`."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{p} {label}\n" for p, label in entries)


def write_nicv2_protocol(
    root: str,
    objects: Sequence[int] = (1, 2, 6, 7),
    train_sessions: Sequence[int] = (1, 2, 4),
    test_sessions: Sequence[int] = (3,),
    frames: int = 6,
    runs: Sequence[int] = (0,),
    scenario_dir: str = "NIC_v2_391",
    layout: str = "nicv2_zip",
    image_size: int = IMAGE_SIZE,
    test_every: int = 20,
) -> dict:
    """Write a small NICv2-style protocol: images and file lists in an official layout.

    Batch 0 holds every object of the first training session; each later batch holds one object from one
    other training session, in a random order per run (seed = run). The test list holds every frame of the
    test sessions; the 1-in-20 list every `test_every`-th line of it.

    Args:
      root: output folder; images go to ``root/core50_128x128``, lists to ``root/<scenario_dir>/run<r>/``
        (``layout='nicv2_zip'``, test lists in each run folder) or ``root/core50-filelists/<scenario_dir>/``
        (``layout='latent_replay'``, test lists beside the scenario folders).
      objects: object ids 1..50; frames: frames 0..frames-1 per (session, object).
    Returns:
      dict with ``images`` (image folder), ``filelists`` (the lists' root), ``batches`` (run -> list of
      batches of (path, label)), ``test`` (the full test list).
    """
    if layout not in ("nicv2_zip", "latent_replay"):
        raise ValueError(f"layout must be 'nicv2_zip' or 'latent_replay', got {layout!r}")
    lists_root = root if layout == "nicv2_zip" else os.path.join(root, "core50-filelists")
    test = [(image_path(s, o, f), o - 1) for s in test_sessions for o in objects for f in range(frames)]
    all_batches, paths = {}, [p for p, _ in test]
    for run in runs:
        first, later = train_sessions[0], [(s, o) for s in train_sessions[1:] for o in objects]
        order = np.random.default_rng(run).permutation(len(later))
        batches = [[(image_path(first, o, f), o - 1) for o in objects for f in range(frames)]]
        batches += [[(image_path(*later[k], f), later[k][1] - 1) for f in range(frames)] for k in order]
        run_dir = os.path.join(lists_root, scenario_dir, f"run{run}")
        for i, b in enumerate(batches):
            write_filelist(os.path.join(run_dir, f"train_batch_{i:02d}_filelist.txt"), b)
            paths += [p for p, _ in b]
        if layout == "nicv2_zip":
            write_filelist(os.path.join(run_dir, "test_filelist.txt"), test)
        all_batches[run] = batches
    if layout == "latent_replay":
        write_filelist(os.path.join(lists_root, "test_filelist.txt"), test)
        write_filelist(os.path.join(lists_root, "test_filelist_20.txt"), test[::test_every])
    images = write_image_tree(root, paths, image_size)
    return {"images": images, "filelists": lists_root, "batches": all_batches, "test": test}
