import numpy as np

from clq.train.cwr import cwr_apply, cwr_consolidate, cwr_init, cwr_reset


def _fc(rows):
    rows = np.asarray(rows, np.float32)
    return {"w": rows[:, :-1].T, "b": rows[:, -1]}


def test_cwr_star_follows_ar1_rules():
    fc = _fc(np.zeros((4, 3)))
    st = cwr_init(fc)
    # Event A: classes 0 and 1, 10 samples each.
    trained = _fc([[1, 1, 1], [3, 3, 3], [9, 9, 9], [9, 9, 9]])
    st = cwr_consolidate(trained, st, np.array([0, 1]), np.array([10, 10, 0, 0], np.float32))
    np.testing.assert_allclose(st.consolidated[:2], [[-1, -1, -1], [1, 1, 1]])  # minus the mean over present
    assert list(st.seen) == [True, True, False, False] and list(st.past) == [10, 10, 0, 0]
    applied = cwr_apply(trained, st)
    np.testing.assert_allclose(np.asarray(applied["b"]), [-1, 1, 0, 0])  # unseen classes stay zero
    # Event B: reset keeps only present & seen classes.
    r = cwr_reset(applied, st, np.array([1, 2]))
    np.testing.assert_allclose(np.asarray(r["b"]), [0, 1, 0, 0])
    # Class 1 again with 40 samples: weighted by sqrt(past/cur) = sqrt(10/40) = 0.5.
    trained = _fc([[0, 0, 0], [5, 5, 5], [1, 1, 1], [0, 0, 0]])
    st = cwr_consolidate(trained, st, np.array([1, 2]), np.array([0, 40, 40, 0], np.float32))
    np.testing.assert_allclose(st.consolidated[1], (np.ones(3) * 0.5 + 2.0) / 1.5)  # new = 5 - 3
    np.testing.assert_allclose(st.consolidated[2], [-2, -2, -2])
    assert list(st.past) == [10, 50, 40, 0]
