"""CORe50 (Lomonaco & Maltoni 2017): official layout, batch file lists, lazy images, NICv2 streams.

The paper's workload (paper.md §3): CORe50 NICv2-391, 50 objects, 128x128 images, the official batch file
lists. See docs/core50.md for where to get the data and how to run the paper experiment.
"""

from clq.data.core50.checksums import OFFICIAL_FILES, download, md5sum, verify_md5
from clq.data.core50.filelists import (
    NUM_RUNS,
    SCENARIOS,
    TEST_LISTS,
    FileList,
    FileListSource,
    Scenario,
    find_filelists,
    load_scenario,
    parse_filelist,
)
from clq.data.core50.images import FolderStore, ImageStore, LazyImages, ZipStore, decode_png
from clq.data.core50.layout import (
    ARCHIVE_FOLDER,
    CATEGORY_NAMES,
    IMAGE_SIZE,
    NUM_CATEGORIES,
    NUM_OBJECTS,
    NUM_SESSIONS,
    SESSION_NAMES,
    TEST_SESSIONS,
    TRAIN_SESSIONS,
    ImageId,
    category_of,
    image_path,
    parse_image_path,
)
from clq.data.core50.stream import LABELS, Core50Stream, load_core50_stream, open_image_store, stream_from_scenario
from clq.data.core50.synthetic import synthetic_image, write_filelist, write_image_tree, write_nicv2_protocol

__all__ = [
    "OFFICIAL_FILES", "download", "md5sum", "verify_md5",
    "NUM_RUNS", "SCENARIOS", "TEST_LISTS", "FileList", "FileListSource", "Scenario", "find_filelists",
    "load_scenario", "parse_filelist",
    "FolderStore", "ImageStore", "LazyImages", "ZipStore", "decode_png", "open_image_store",
    "ARCHIVE_FOLDER", "CATEGORY_NAMES", "IMAGE_SIZE", "NUM_CATEGORIES", "NUM_OBJECTS", "NUM_SESSIONS",
    "SESSION_NAMES", "TEST_SESSIONS", "TRAIN_SESSIONS", "ImageId", "category_of", "image_path",
    "parse_image_path",
    "LABELS", "Core50Stream", "load_core50_stream", "stream_from_scenario",
    "synthetic_image", "write_filelist", "write_image_tree", "write_nicv2_protocol",
]
