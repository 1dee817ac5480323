"""CORe50 scenarios as a `clq.data.stream.Stream` whose images are decoded lazily.

``load_core50_stream(root)`` reads one run of an official protocol (NICv2-391 by default, paper.md §3) and
returns a `Core50Stream`: experience i is training batch i of the file lists (batch 0 first), and the image
arrays are `LazyImages`, so the learning-event loop decodes a bounded window of events' PNGs at a time
(`clq.train.frozen_stage.latents_ahead`) and the test set in slices. Only paths, labels and session ids (a few
MB) are held in memory.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field

import numpy as np

from clq.data.core50.filelists import FileList, FileListSource, Scenario, find_filelists, load_scenario
from clq.data.core50.images import FolderStore, ImageStore, LazyImages, ZipStore
from clq.data.core50.layout import ARCHIVE_FOLDER, NUM_CATEGORIES, NUM_OBJECTS, SESSION_NAMES, category_of
from clq.data.stream import Stream

__all__ = ["Core50Stream", "load_core50_stream", "stream_from_scenario", "open_image_store", "LABELS"]

#: `labels` choices: 50 objects (the papers) or 10 categories.
LABELS = ("object", "category")


def open_image_store(root: str, verify: bool = True) -> ImageStore:
    """The image store for `root`, which may be

    * the extracted ``core50_128x128/`` folder, or a folder that contains it;
    * ``core50_128x128.zip``, or a folder that contains it (and no extracted copy);
    * a TFDS data dir holding the prepared ``core50`` dataset (`clq.data.tfds`).

    Raises:
      FileNotFoundError naming `root` and the layouts looked for.
    """
    root = os.path.abspath(os.path.expanduser(root))
    if os.path.isfile(root):
        return ZipStore(root, verify)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: CORe50 data not found (data.path)")
    if os.path.isdir(os.path.join(root, ARCHIVE_FOLDER)):
        return FolderStore(os.path.join(root, ARCHIVE_FOLDER))
    if os.path.isfile(os.path.join(root, ARCHIVE_FOLDER + ".zip")):
        return ZipStore(os.path.join(root, ARCHIVE_FOLDER + ".zip"), verify)
    if any(re.fullmatch(r"s\d{1,2}", d) and os.path.isdir(os.path.join(root, d)) for d in os.listdir(root)):
        return FolderStore(root)
    from clq.data.tfds.core50 import find_prepared_core50  # TFDS is only imported when it is needed

    prepared = find_prepared_core50(root)
    if prepared is not None:
        from clq.data.tfds.core50 import TfdsCore50Store

        return TfdsCore50Store(prepared)
    raise FileNotFoundError(
        f"{root}: no CORe50 images found; expected {ARCHIVE_FOLDER}/ (s1..s11/o1..o50/C_*.png), "
        f"{ARCHIVE_FOLDER}.zip, or a TFDS data dir with the prepared 'core50' dataset")


@dataclass
class Core50Stream(Stream):
    """A `Stream` over CORe50 with lazy images and the protocol's provenance.

    Extra attributes:
      scenario, run: the protocol and its run (0..9).
      experience_session_sets: list of int32 arrays, every session in each experience (NICv2-79/196, NI and
        NC batches mix sessions; `experience_sessions` then holds the most frequent one).
      source: where the file lists were read from.
    """

    scenario: str = ""
    run: int = 0
    experience_session_sets: list = field(default_factory=list)
    source: str = ""

    def summary(self) -> str:
        sizes = [len(e) for e in self.experiences]
        later = self.experience_classes[1:]
        ncls = sorted({len(c) for c in later}) or [0]
        return (
            f"CORe50 {self.scenario} run {self.run}: {self.num_events} learning events (event 0: {sizes[0]} images "
            f"of {len(self.experience_classes[0])} classes; then {min(sizes[1:], default=0)}-"
            f"{max(sizes[1:], default=0)} images of {ncls[0]}{'' if len(ncls) == 1 else f'-{ncls[-1]}'} "
            f"class(es) each), {len(self.test_labels)} test images, {self.num_classes} classes, "
            f"{len(self.session_names)} sessions"
        )


def _labels(fl: FileList, labels: str) -> np.ndarray:
    obj = fl.object_labels
    return obj if labels == "object" else category_of(obj).astype(np.int32)


def _check_present(store: ImageStore, fl: FileList) -> None:
    missing = store.missing(fl.paths)
    if missing:
        line = fl.paths.index(missing[0]) + 1
        raise FileNotFoundError(
            f"{fl.name}:{line} names {missing[0]}, which is missing: {store.describe(missing[0])} "
            f"({len(missing)} of the {len(fl)} images of this list are missing)")


def stream_from_scenario(scenario: Scenario, store: ImageStore, image_size: int = 128, labels: str = "object",
                         check_files: bool = True, num_workers: int | None = None) -> Core50Stream:
    """Arrange a parsed scenario over an image store (see `load_core50_stream`)."""
    if labels not in LABELS:
        raise ValueError(f"data.labels must be one of {list(LABELS)}, got {labels!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 8:
        raise ValueError(f"data.image_size must be an integer >= 8, got {image_size!r}")
    if check_files:
        for fl in (*scenario.batches, scenario.test):
            _check_present(store, fl)
    train_paths = [p for b in scenario.batches for p in b.paths]
    bounds = np.cumsum([0] + [len(b) for b in scenario.batches])
    train_labels = np.concatenate([_labels(b, labels) for b in scenario.batches])
    # Session ids are 1..11 in the paths; streams index sessions from 0 (session_names[0] == 's1').
    train_sessions = np.concatenate([b.ids[:, 0] - 1 for b in scenario.batches]).astype(np.int32)
    experiences = [np.arange(bounds[i], bounds[i + 1]) for i in range(len(scenario.batches))]
    session_sets = [np.unique(train_sessions[e]).astype(np.int32) for e in experiences]
    main_session = [int(np.bincount(train_sessions[e]).argmax()) for e in experiences]
    return Core50Stream(
        train_images=LazyImages(store, train_paths, image_size, num_workers),
        train_labels=train_labels.astype(np.int32),
        train_sessions=train_sessions,
        experiences=experiences,
        experience_classes=[np.unique(train_labels[e]).astype(np.int32) for e in experiences],
        experience_sessions=np.asarray(main_session, np.int32),
        test_images=LazyImages(store, scenario.test.paths, image_size, num_workers),
        test_labels=_labels(scenario.test, labels),
        test_sessions=(scenario.test.ids[:, 0] - 1).astype(np.int32),
        num_classes=NUM_OBJECTS if labels == "object" else NUM_CATEGORIES,
        session_names=SESSION_NAMES,
        scenario=scenario.name,
        run=scenario.run,
        experience_session_sets=session_sets,
        source=scenario.source,
    )


def load_core50_stream(
    root: str,
    scenario: str = "nicv2_391",
    run: int = 0,
    image_size: int = 128,
    test_list: str = "test_filelist_20.txt",
    filelists: str | None = None,
    labels: str = "object",
    check_files: bool = True,
    verify_archive: bool = True,
    num_workers: int | None = None,
    strict: bool = True,
    max_events: int | None = None,
) -> Core50Stream:
    """Load one run of a CORe50 protocol as a lazily decoded stream.

    Args:
      root: the CORe50 images: the extracted ``core50_128x128/`` folder or a folder containing it, the
        official ``core50_128x128.zip``, or a TFDS data dir with the prepared ``core50`` dataset.
      scenario: ``nicv2_391`` (paper), ``nicv2_196``, ``nicv2_79``, ``ni``, ``nc`` or ``nic``.
      run: 0..9.
      image_size: S, side of the images fed to the network (128 = native; others are resized).
      test_list: ``test_filelist_20.txt`` (1-in-20, the papers' test set), ``test_filelist.txt``, or a path.
      filelists: folder or archive with the official batch file lists; default: looked for in and beside
        `root` (``batches_filelists_NICv2.zip``, ``NIC_v2_391/``, ...).
      labels: ``object`` (50 classes, the papers) or ``category`` (10).
      check_files: check that every listed image exists before returning (one directory listing per
        object folder), so a bad list fails now and not hours into a run.
      verify_archive: check an official archive's MD5 before reading it.
      num_workers: PNG decoding threads.
      strict: require the scenario's published number of batches (False: any batches 0..n-1 present, for
        generated test protocols).
      max_events: keep only the first `max_events` batches (batch 0 included), e.g. to time a sample of the
        protocol; None keeps all. The whole run's lists are still read and checked.
    Returns:
      a `Core50Stream`: train_images `LazyImages` uint8 [M, S, S, 3] (M = all images of the run's batches,
      batch order), train_labels/train_sessions int32 [M], experiences = index ranges of the batches,
      experience_classes (unique labels per batch), experience_sessions int32 [E] (session index 0..10,
      ``session_names[k] == f's{k+1}'``), test_images `LazyImages` uint8 [T, S, S, 3], test_labels/
      test_sessions int32 [T].
    Raises:
      ValueError naming the field for bad arguments; FileNotFoundError naming the missing file list or image
      (and the list line naming it); ValueError naming a corrupt file or an archive with a wrong checksum.
    """
    store = open_image_store(root, verify=verify_archive)
    src = FileListSource(filelists if filelists is not None else find_filelists(root, scenario),
                         verify=verify_archive)
    sc = load_scenario(src, scenario, run, test_list, strict)
    if max_events is not None:
        if isinstance(max_events, bool) or not isinstance(max_events, (int, np.integer)) or max_events < 1:
            raise ValueError(f"data.max_events must be a positive integer or null, got {max_events!r}")
        sc = dataclasses.replace(sc, batches=sc.batches[:max_events])
    return stream_from_scenario(sc, store, image_size, labels, check_files, num_workers)
