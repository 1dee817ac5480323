"""The layout of the official CORe50 128x128 release (Lomonaco & Maltoni 2017; paper.md §3).

``core50_128x128.zip`` unpacks to a folder ``core50_128x128/`` holding one PNG per frame::

    core50_128x128/s{session}/o{object}/C_{ss}_{oo}_{fff}.png

with ``session`` 1..11 (``ss`` its two-digit form), ``object`` 1..50 (``oo``) and ``fff`` the three-digit
frame number (0..299 in the released set; a few frames are missing). Images are 128x128 RGB.

* 50 objects in 10 categories of 5 consecutive objects: object ``o`` (1-based) has class label ``o - 1``
  (the label in the official batch file lists) and category ``(o - 1) // 5``.
* 11 sessions, each a different background/lighting; sessions 3, 7 and 10 are the test sessions, the other
  8 are the training sessions.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = [
    "ARCHIVE_FOLDER",
    "IMAGE_SIZE",
    "NUM_OBJECTS",
    "NUM_CATEGORIES",
    "NUM_SESSIONS",
    "TEST_SESSIONS",
    "TRAIN_SESSIONS",
    "SESSION_NAMES",
    "CATEGORY_NAMES",
    "ImageId",
    "parse_image_path",
    "image_path",
    "category_of",
]

#: Folder the official 128x128 archive unpacks to; file-list paths are relative to it.
ARCHIVE_FOLDER = "core50_128x128"
IMAGE_SIZE = 128
NUM_OBJECTS = 50
NUM_CATEGORIES = 10
NUM_SESSIONS = 11
TEST_SESSIONS = (3, 7, 10)
TRAIN_SESSIONS = tuple(s for s in range(1, NUM_SESSIONS + 1) if s not in TEST_SESSIONS)
#: Session names indexed by session id - 1 (``Stream.session_names``).
SESSION_NAMES = tuple(f"s{s}" for s in range(1, NUM_SESSIONS + 1))
#: Category names indexed by category id (object o belongs to category (o - 1) // 5).
CATEGORY_NAMES = (
    "plug_adapter", "mobile_phone", "scissor", "light_bulb", "can",
    "glass", "ball", "marker", "cup", "remote_control",
)

_PATH_RE = re.compile(r"s(\d{1,2})/o(\d{1,2})/C_(\d{2})_(\d{2})_(\d{3})\.png")


class ImageId(NamedTuple):
    """One CORe50 frame: ``session`` 1..11, ``object`` 1..50, ``frame`` >= 0 (all 1-based as in the paths)."""

    session: int
    object: int
    frame: int

    @property
    def label(self) -> int:
        """Object-level class label 0..49 (the official file lists' label)."""
        return self.object - 1

    @property
    def category(self) -> int:
        """Category label 0..9."""
        return category_of(self.object - 1)


def parse_image_path(path: str) -> ImageId:
    """Parse ``s{session}/o{object}/C_{ss}_{oo}_{fff}.png``.

    Raises:
      ValueError naming the path when it does not follow the layout, when the folder and file name disagree
      on the session or object, or when an id is out of range.
    """
    m = _PATH_RE.fullmatch(path)
    if m is None:
        raise ValueError(f"{path!r} is not a CORe50 image path (expected s<session>/o<object>/C_<ss>_<oo>_<fff>.png)")
    s, o, ss, oo, f = (int(g) for g in m.groups())
    if (s, o) != (ss, oo):
        raise ValueError(f"{path!r}: folder says session {s} object {o}, file name says session {ss} object {oo}")
    if not (1 <= s <= NUM_SESSIONS and 1 <= o <= NUM_OBJECTS):
        raise ValueError(f"{path!r}: session must be 1..{NUM_SESSIONS} and object 1..{NUM_OBJECTS}")
    return ImageId(s, o, f)


def image_path(session: int, obj: int, frame: int) -> str:
    """Relative path of one frame, e.g. ``image_path(2, 21, 230) == 's2/o21/C_02_21_230.png'``."""
    return f"s{session}/o{obj}/C_{session:02d}_{obj:02d}_{frame:03d}.png"


def category_of(label: int) -> int:
    """Category 0..9 of an object-level label 0..49."""
    return label // (NUM_OBJECTS // NUM_CATEGORIES)
