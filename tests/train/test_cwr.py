import jax
import numpy as np

from clq.train.cwr import class_counts, cwr_apply, cwr_consolidate, cwr_init, cwr_reset


def _fc(rows):
    rows = np.asarray(rows, np.float32)
    return {"w": rows[:, :-1].T, "b": rows[:, -1]}


def test_cwr_star_follows_ar1_rules():
    fc = _fc(np.zeros((4, 3)))
    st = cwr_init(fc)
    # Event A: classes 0 and 1, 10 samples each.
    trained = _fc([[1, 1, 1], [3, 3, 3], [9, 9, 9], [9, 9, 9]])
    st = cwr_consolidate(trained, st, np.array([1, 1, 0, 0], bool), np.array([10, 10, 0, 0], np.float32))
    np.testing.assert_allclose(np.asarray(st.consolidated)[:2], [[-1, -1, -1], [1, 1, 1]])  # minus the mean over present
    assert list(st.seen) == [True, True, False, False] and list(st.past) == [10, 10, 0, 0]
    applied = cwr_apply(trained, st)
    np.testing.assert_allclose(np.asarray(applied["b"]), [-1, 1, 0, 0])  # unseen classes stay zero
    # Event B: reset keeps only present & seen classes.
    r = cwr_reset(applied, st, np.array([0, 1, 1, 0], bool))
    np.testing.assert_allclose(np.asarray(r["b"]), [0, 1, 0, 0])
    # Class 1 again with 40 samples: weighted by sqrt(past/cur) = sqrt(10/40) = 0.5.
    trained = _fc([[0, 0, 0], [5, 5, 5], [1, 1, 1], [0, 0, 0]])
    st = cwr_consolidate(trained, st, np.array([0, 1, 1, 0], bool), np.array([0, 40, 40, 0], np.float32))
    np.testing.assert_allclose(np.asarray(st.consolidated)[1], (np.ones(3) * 0.5 + 2.0) / 1.5)  # new = 5 - 3
    np.testing.assert_allclose(np.asarray(st.consolidated)[2], [-2, -2, -2])
    assert list(st.past) == [10, 50, 40, 0]


def test_cwr_is_pure_jax_and_counts_classes():
    """Jittable (it runs inside the learner's compiled step); counts ignore padding rows."""
    fc = _fc(np.arange(12, dtype=np.float32).reshape(4, 3))
    counts = class_counts(np.array([0, 2, 2, 3]), np.array([True, True, True, False]), 4)
    np.testing.assert_array_equal(np.asarray(counts), [1, 0, 2, 0])
    st = jax.jit(cwr_consolidate)(fc, cwr_init(fc), counts > 0, counts)
    eager = cwr_consolidate(fc, cwr_init(fc), counts > 0, counts)
    np.testing.assert_allclose(np.asarray(st.consolidated), np.asarray(eager.consolidated))
    assert list(np.asarray(st.seen)) == [True, False, True, False]
