"""The official CORe50 NICv2 batch file lists (../shared/data/core50-filelists.tar.gz) read as scenarios.

These lists are the real protocol definitions; users do not have this folder, so the tests skip without it.
"""

import os
import tarfile

import numpy as np
import pytest

from clq.data.core50 import NUM_RUNS, TEST_SESSIONS, FileListSource, load_scenario

ARCHIVE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "core50-filelists.tar.gz")
ARCHIVE = os.path.abspath(os.environ.get("CLQ_CORE50_FILELISTS", ARCHIVE))
pytestmark = pytest.mark.skipif(not os.path.isfile(ARCHIVE),
                                reason=f"official CORe50 file lists not available at {ARCHIVE} "
                                       "(set CLQ_CORE50_FILELISTS to core50-filelists.tar.gz)")


@pytest.fixture(scope="module")
def lists_dir(tmp_path_factory):
    # Unpacked once: a folder source reads one run in ~0.2 s, the .tar.gz needs a full pass per read.
    d = tmp_path_factory.mktemp("filelists")
    with tarfile.open(ARCHIVE) as t:
        t.extractall(d, filter="data")
    return str(d)


def _check_nicv2(sc, n_batches, per_batch_sizes, classes_per_batch_max, sessions_per_batch_max):
    assert sc.num_batches == n_batches
    b0 = sc.batches[0]
    assert len(b0) == 2999
    assert sorted(set(b0.labels.tolist())) == list(range(0, 50, 5))  # one object per category
    assert set(b0.ids[:, 0].tolist()) == {1}  # batch 0 is session 1
    sizes = [len(b) for b in sc.batches[1:]]
    assert per_batch_sizes[0] <= min(sizes) and max(sizes) <= per_batch_sizes[1]
    assert max(len(set(b.labels.tolist())) for b in sc.batches[1:]) <= classes_per_batch_max
    assert max(len(set(b.ids[:, 0].tolist())) for b in sc.batches[1:]) <= sessions_per_batch_max
    train = [p for b in sc.batches for p in b.paths]
    assert len(train) == len(set(train)) == 119_894  # every training frame exactly once
    assert not set(np.concatenate([b.ids[:, 0] for b in sc.batches]).tolist()) & set(TEST_SESSIONS)
    for b in sc.batches:
        np.testing.assert_array_equal(b.labels, b.object_labels)  # official lists label objects


def test_nicv2_391_run0_matches_the_paper(lists_dir):
    sc = load_scenario(lists_dir, "nicv2_391", 0)
    _check_nicv2(sc, 391, (293, 300), 1, 1)  # later batches: one class from one session
    # Every (object, training session) pair not in batch 0 is exactly one batch: 50 x 8 - 10 = 390.
    pairs = {(int(b.ids[0, 1]), int(b.ids[0, 0])) for b in sc.batches[1:]}
    assert len(pairs) == 390
    assert len(sc.test) == 2249 and set(sc.test.ids[:, 0].tolist()) == set(TEST_SESSIONS)
    assert sc.test.name.endswith("test_filelist_20.txt")


def test_one_in_twenty_is_every_twentieth_line_of_the_full_test_list(lists_dir):
    full = load_scenario(lists_dir, "nicv2_391", 0, test_list="test_filelist.txt").test
    assert len(full) == 44_972
    sub = load_scenario(lists_dir, "nicv2_391", 0).test
    assert sub.paths == full.paths[::20]  # so it can be derived where only the full list is published


@pytest.mark.parametrize("run", range(NUM_RUNS))
def test_nicv2_391_every_run(lists_dir, run):
    sc = load_scenario(lists_dir, "nicv2_391", run)
    assert sc.num_batches == 391 and len(sc.batches[0]) == 2999
    assert all(len(set(b.labels.tolist())) == 1 for b in sc.batches[1:])
    assert sum(len(b) for b in sc.batches) == 119_894


def test_runs_differ(lists_dir):
    a, b = (load_scenario(lists_dir, "nicv2_391", r) for r in (0, 1))
    assert [x.paths[0] for x in a.batches[1:]] != [x.paths[0] for x in b.batches[1:]]


@pytest.mark.parametrize("scenario,n,sizes,ncls,nsess", [
    ("nicv2_196", 196, (593, 600), 2, 2),
    ("nicv2_79", 79, (1492, 1500), 5, 5),
])
def test_nicv2_196_and_79(lists_dir, scenario, n, sizes, ncls, nsess):
    _check_nicv2(load_scenario(lists_dir, scenario, 0), n, sizes, ncls, nsess)


def test_reads_the_tar_archive_directly():
    src = FileListSource(ARCHIVE)
    sc = load_scenario(src, "nicv2_79", 2)
    assert sc.num_batches == 79 and sc.source == os.path.abspath(ARCHIVE)
    assert sc.batches[0].name.startswith(os.path.abspath(ARCHIVE) + ":core50-filelists/sIII_v2_79/run2/")
