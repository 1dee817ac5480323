"""clq.batching.padded_batches: the one batching loop of the frozen stage, the evaluation and the quant report."""

import numpy as np
import pytest

from clq.batching import padded_batches


@pytest.mark.parametrize("fill", ["zeros", "repeat"])
def test_batches_cover_every_row_once_with_a_padded_last_batch(fill):
    rows = np.arange(7 * 2, dtype=np.uint8).reshape(7, 2) + 1
    out = list(padded_batches(rows, 3, fill))
    assert [(s, m) for s, _, m in out] == [(0, 3), (3, 3), (6, 1)]
    assert all(b.shape == (3, 2) and b.dtype == np.uint8 for _, b, _ in out)
    np.testing.assert_array_equal(np.concatenate([b[:m] for _, b, m in out]), rows)
    last = out[-1][1]
    expected_pad = np.zeros((2, 2), np.uint8) if fill == "zeros" else np.repeat(rows[6:7], 2, axis=0)
    np.testing.assert_array_equal(last[1:], expected_pad)


def test_exact_multiple_and_empty():
    rows = np.ones((6, 1), np.float32)
    assert [m for _, _, m in padded_batches(rows, 3)] == [3, 3]
    assert list(padded_batches(rows[:0], 3)) == []


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="fill must be 'zeros' or 'repeat'"):
        list(padded_batches(np.ones((2, 1)), 1, "edge"))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        list(padded_batches(np.ones((2, 1)), 0))
