"""The official CORe50 batch file lists, parsed into continual-learning scenarios.

The CORe50 authors publish each protocol as plain-text file lists, one per training batch and run, plus a
test list (paper.md §3). Each line is ``<image path relative to core50_128x128/> <label>``, e.g.
``s2/o21/C_02_21_230.png 20``. They come in three published layouts, all read here:

* ``batches_filelists_NICv2.zip`` (https://vlomonaco.github.io/core50/data/batches_filelists_NICv2.zip):
  ``NIC_v2_{79,196,391}/run{0..9}/train_batch_{NN}_filelist.txt`` and ``.../run{r}/test_filelist.txt``;
* ``batches_filelists.zip`` (https://vlomonaco.github.io/core50/data/batches_filelists.zip):
  ``batches_filelists/{NI,NC,NIC}_inc/run{r}/...`` (NI: 8 batches, NC: 9, NIC: 79);
* the Latent Replay code's ``batch_filelists`` (lrzpellegrini/Latent-Replay): ``sIII_v2_{79,196,391}/run{r}/
  ...`` with ``test_filelist.txt`` and ``test_filelist_20.txt`` (the 1-in-20 subset the papers evaluate on)
  beside the scenario folders.

A source is a folder or a ``.zip``/``.tar``/``.tar.gz`` archive holding any of these; the scenario folder is
found by name anywhere inside it. ``test_filelist_20.txt`` is exactly every 20th line of
``test_filelist.txt`` (checked against the published lists by the tests), so it is derived from the full list
when only that one is present.
"""

from __future__ import annotations

import os
import re
import tarfile
import zipfile
from dataclasses import dataclass

import numpy as np

from clq.data.core50.checksums import OFFICIAL_FILES, verify_md5
from clq.data.core50.layout import parse_image_path

__all__ = [
    "SCENARIOS",
    "NUM_RUNS",
    "TEST_LISTS",
    "FileList",
    "Scenario",
    "FileListSource",
    "parse_filelist",
    "load_scenario",
    "find_filelists",
]

#: scenario name -> (number of training batches, folder names it is published under).
SCENARIOS = {
    "nicv2_391": (391, ("NIC_v2_391", "sIII_v2_391")),
    "nicv2_196": (196, ("NIC_v2_196", "sIII_v2_196")),
    "nicv2_79": (79, ("NIC_v2_79", "sIII_v2_79")),
    "ni": (8, ("NI_inc",)),
    "nc": (9, ("NC_inc",)),
    "nic": (79, ("NIC_inc",)),
}
NUM_RUNS = 10
#: The published test lists: the full one and the 1-in-20 subset (every 20th line of the full one).
TEST_LISTS = ("test_filelist_20.txt", "test_filelist.txt")
_SUBSAMPLE = {"test_filelist_20.txt": ("test_filelist.txt", 20)}

#: Archives that may hold the lists, looked for beside the image folder when no source is given.
_ARCHIVE_NAMES = ("batches_filelists_NICv2.zip", "batches_filelists.zip", "core50-filelists.tar.gz")
# Folders never descended into while looking for lists: the image trees are 164k files.
_SKIP_DIR = re.compile(r"core50_128x128|core50_350x350|s\d+|o\d+|\..*")


@dataclass(frozen=True)
class FileList:
    """One parsed file list.

    Attributes:
      name: where it was read from (``<folder>/<path>`` or ``<archive>:<member>``), for error messages.
      paths: n image paths relative to ``core50_128x128/``.
      labels: int32 [n], the listed labels (object level 0..49, or category level 0..9 for ``_cat`` lists).
      ids: int32 [n, 3], (session 1..11, object 1..50, frame) of each path.
    """

    name: str
    paths: tuple[str, ...]
    labels: np.ndarray
    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def object_labels(self) -> np.ndarray:
        """int32 [n], object-level labels 0..49 taken from the paths."""
        return (self.ids[:, 1] - 1).astype(np.int32)

    def subsample(self, every: int, name: str) -> "FileList":
        """Every `every`-th line, starting with the first."""
        return FileList(name, self.paths[::every], self.labels[::every], self.ids[::every])


@dataclass(frozen=True)
class Scenario:
    """A CORe50 protocol for one run: training batches in order (batch 0 first) and the test list."""

    name: str
    run: int
    batches: tuple[FileList, ...]
    test: FileList
    source: str

    @property
    def num_batches(self) -> int:
        return len(self.batches)


def parse_filelist(text: str, name: str) -> FileList:
    """Parse a file list's text: one ``<relative path> <label>`` per line (blank lines ignored).

    Raises:
      ValueError naming the file and the line number for a malformed line, a path outside the CORe50 layout,
      or a label that is neither the path's object (0..49) nor its category (0..9).
    """
    paths, labels, ids = [], [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise ValueError(f"{name}:{lineno}: expected '<image path> <label>', got {line!r}")
        path, label = parts
        try:
            image = parse_image_path(path)
            label = int(label)
        except ValueError as e:
            raise ValueError(f"{name}:{lineno}: {e}") from None
        # Official lists label objects (0..49); the '_cat' variants label categories (0..9).
        if label != image.label and label != image.category:
            raise ValueError(f"{name}:{lineno}: label {label} is neither the object label {image.label} nor the "
                             f"category {image.category} of {path}")
        paths.append(path)
        labels.append(label)
        ids.append(image)
    if not paths:
        raise ValueError(f"{name}: the file list is empty")
    return FileList(name, tuple(paths), np.asarray(labels, np.int32), np.asarray(ids, np.int32).reshape(-1, 3))


class FileListSource:
    """Read-only access to file lists in a folder, a ``.zip``, or a ``.tar``/``.tar.gz`` archive.

    Members are named by '/'-separated paths relative to the folder or archive root.
    """

    def __init__(self, location: str, verify: bool = True):
        """Args:
          location: folder or archive path.
          verify: check an archive that carries an official file name (`OFFICIAL_FILES`) against its MD5.
        Raises:
          FileNotFoundError naming `location` when it does not exist; ValueError naming it when it is not a
          folder or a readable archive, or when its checksum is wrong.
        """
        self.location = os.path.abspath(os.path.expanduser(location))
        if not os.path.exists(self.location):
            raise FileNotFoundError(f"{self.location}: CORe50 file lists not found")
        if os.path.isdir(self.location):
            self.kind = "dir"
        elif zipfile.is_zipfile(self.location):
            self.kind = "zip"
        elif tarfile.is_tarfile(self.location):
            self.kind = "tar"
        else:
            raise ValueError(f"{self.location}: not a folder, .zip or .tar(.gz) of CORe50 file lists")
        if verify and self.kind != "dir" and os.path.basename(self.location) in OFFICIAL_FILES:
            verify_md5(self.location)
        self._names: list[str] | None = None

    def describe(self, member: str) -> str:
        return os.path.join(self.location, member) if self.kind == "dir" else f"{self.location}:{member}"

    def names(self) -> list[str]:
        """All member file paths (for a folder: down to 5 levels, skipping image folders)."""
        if self._names is None:
            if self.kind == "zip":
                with zipfile.ZipFile(self.location) as z:
                    self._names = [n for n in z.namelist() if not n.endswith("/")]
            elif self.kind == "tar":
                with tarfile.open(self.location) as t:
                    self._names = [m.name.lstrip("./") for m in t.getmembers() if m.isfile()]
            else:
                self._names = []
                for dirpath, dirnames, filenames in os.walk(self.location):
                    rel = os.path.relpath(dirpath, self.location)
                    depth = 0 if rel == "." else rel.count(os.sep) + 1
                    dirnames[:] = [] if depth >= 5 else [d for d in dirnames if not _SKIP_DIR.fullmatch(d)]
                    prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
                    self._names.extend(prefix + f for f in filenames if f.endswith(".txt"))
        return self._names

    def read(self, members: list[str]) -> dict[str, str]:
        """Read several members as text (one pass over a tar archive).

        Raises:
          FileNotFoundError naming the member when it is absent.
        """
        out: dict[str, str] = {}
        if self.kind == "dir":
            for m in members:
                path = os.path.join(self.location, m)
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"{path}: file list not found")
                with open(path, encoding="utf-8") as f:
                    out[m] = f.read()
        elif self.kind == "zip":
            with zipfile.ZipFile(self.location) as z:
                have = set(z.namelist())
                for m in members:
                    if m not in have:
                        raise FileNotFoundError(f"{self.describe(m)}: file list not found in the archive")
                    out[m] = z.read(m).decode("utf-8")
        else:
            want = set(members)
            with tarfile.open(self.location) as t:
                for info in t:
                    name = info.name.lstrip("./")
                    if name in want and info.isfile():
                        out[name] = t.extractfile(info).read().decode("utf-8")
            for m in members:
                if m not in out:
                    raise FileNotFoundError(f"{self.describe(m)}: file list not found in the archive")
        return out


def find_filelists(root: str, scenario: str | None = None) -> str:
    """Find the file lists for an image folder when none are given: the folder itself, its parent, or an
    archive with a published name (`batches_filelists_NICv2.zip`, ...) in either.

    Args:
      scenario: if given, the first candidate that holds this scenario's folder (NI/NC lists and NICv2 lists
        come in different archives).
    Raises:
      FileNotFoundError listing where it looked and the download addresses.
    """
    root = os.path.abspath(os.path.expanduser(root))
    base = root if os.path.isdir(root) else os.path.dirname(root)
    folders = ("batches_filelists", "core50-filelists", *(a for _, al in SCENARIOS.values() for a in al))
    candidates = []
    for d in (base, os.path.dirname(base)):
        candidates += [os.path.join(d, n) for n in _ARCHIVE_NAMES if os.path.isfile(os.path.join(d, n))]
        if any(os.path.isdir(os.path.join(d, n)) for n in folders):
            candidates.append(d)
    aliases = SCENARIOS[scenario][1] if scenario in SCENARIOS else None
    for c in candidates:
        if aliases is None or any(f"{a}/run" in n for n in FileListSource(c, verify=False).names() for a in aliases):
            return c
    urls = ", ".join(OFFICIAL_FILES[n][0] for n in ("batches_filelists_NICv2.zip", "batches_filelists.zip"))
    what = "CORe50 batch file lists" if aliases is None else f"file lists of scenario {scenario!r}"
    raise FileNotFoundError(f"no {what} found in {sorted({base, os.path.dirname(base)})} (looked at "
                            f"{candidates or 'nothing matching'}); download them ({urls}) and pass their folder or "
                            f"archive as `filelists`")


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def load_scenario(filelists: str | FileListSource, scenario: str = "nicv2_391", run: int = 0,
                  test_list: str = "test_filelist_20.txt", strict: bool = True) -> Scenario:
    """Read one run of a CORe50 scenario from the official file lists.

    Args:
      filelists: folder or archive holding the lists (see the module docstring), or an open source.
      scenario: one of `SCENARIOS` (``nicv2_391`` is the paper's protocol).
      run: 0..9, the published batch order.
      test_list: ``test_filelist_20.txt`` (the papers' 1-in-20 test set), ``test_filelist.txt``, or a path to
        a list file of your own.
      strict: require the scenario's published number of batches. With False, any run of batch files
        0..n-1 is accepted (generated test protocols with a few batches).
    Raises:
      ValueError naming the field for a bad scenario/run; FileNotFoundError naming the missing list (e.g. a
      batch file absent from the run); ValueError naming the file and line of a malformed list.
    """
    _check_choice("data.scenario", scenario, SCENARIOS)
    if isinstance(run, bool) or not isinstance(run, (int, np.integer)) or not 0 <= run < NUM_RUNS:
        raise ValueError(f"data.run must be an integer in 0..{NUM_RUNS - 1}, got {run!r}")
    src = filelists if isinstance(filelists, FileListSource) else FileListSource(filelists)
    num_batches, aliases = SCENARIOS[scenario]
    pat = re.compile(rf"(?:(.*)/)?({'|'.join(aliases)})/run{run}/train_batch_(\d+)_filelist\.txt")
    found: dict[str, dict[int, str]] = {}
    for name in src.names():
        m = pat.fullmatch(name)
        if m:
            found.setdefault(name[: m.end(2) + 1], {})[int(m.group(3))] = name
    if not found:
        raise FileNotFoundError(f"{src.location}: no '{'/'.join(aliases)}/run{run}/train_batch_*_filelist.txt' "
                                f"for scenario {scenario!r}")
    # A source holding one layout twice (an archive unpacked inside its own folder) is still unambiguous:
    # take the shallowest copy.
    scen_dir = min(found, key=lambda d: (d.count("/"), d))
    batch_names = found[scen_dir]
    if not strict:
        num_batches = max(batch_names) + 1
    missing = [i for i in range(num_batches) if i not in batch_names]
    if missing:
        raise FileNotFoundError(
            f"{src.describe(scen_dir + f'run{run}/train_batch_{missing[0]:02d}_filelist.txt')}: missing; scenario "
            f"{scenario!r} has {num_batches} batches, {len(missing)} of them are absent")
    extra = sorted(set(batch_names) - set(range(num_batches)))
    if extra:
        raise ValueError(f"{src.describe(batch_names[extra[0]])}: scenario {scenario!r} has only {num_batches} "
                         f"batches")

    test_member, every = _find_test_list(src, scen_dir, run, test_list)
    ordered = [batch_names[i] for i in range(num_batches)]
    texts = src.read(ordered + ([test_member] if test_member else []))
    batches = tuple(parse_filelist(texts[n], src.describe(n)) for n in ordered)
    if test_member is None:  # a list file of the user's own
        with open(test_list, encoding="utf-8") as f:
            test = parse_filelist(f.read(), os.path.abspath(test_list))
    else:
        test = parse_filelist(texts[test_member], src.describe(test_member))
        if every > 1:
            test = test.subsample(every, f"{test.name}[::{every}]")
    return Scenario(scenario, int(run), batches, test, src.location)


def _find_test_list(src: FileListSource, scen_dir: str, run: int, test_list: str) -> tuple[str | None, int]:
    """Member holding the test list and the subsampling step (1, or 20 when derived from the full list)."""
    if test_list not in TEST_LISTS:
        if os.path.isfile(test_list):
            return None, 1
        raise FileNotFoundError(f"data.test_list={test_list!r}: neither one of {list(TEST_LISTS)} nor an existing "
                                f"file")
    names = set(src.names())
    parent = scen_dir.rsplit("/", 2)[0] + "/" if scen_dir.count("/") > 1 else ""
    places = (f"{scen_dir}run{run}/", scen_dir, parent, "")
    for name, every in ((test_list, 1), _SUBSAMPLE.get(test_list, (None, 0))):
        for place in places:
            if name and place + name in names:
                return place + name, every
    raise FileNotFoundError(f"{src.location}: no {test_list!r} (nor test_filelist.txt) in "
                            f"{[src.describe(p) for p in dict.fromkeys(places)]}")

