"""Equal-shape batches over the rows of an array, for jitted functions that must compile once."""

from __future__ import annotations

from typing import Iterator

import numpy as np

__all__ = ["padded_batches"]


def padded_batches(rows: np.ndarray, batch_size: int, fill: str = "zeros") -> Iterator[tuple[int, np.ndarray, int]]:
    """Consecutive batches of `batch_size` rows, the last one padded to full size, with their offset and valid count.

    Args:
      rows: [N, ...] array (images, latent codes).
      batch_size: rows per batch (>= 1).
      fill: 'zeros' pads with zero rows (the padded outputs are sliced off); 'repeat' repeats the batch's first
        row, for consumers that also pool statistics over the padding (calibration ranges stay unchanged).
    Yields:
      (s, batch [batch_size, ...] of rows.dtype, m): the first m rows of the batch are rows[s : s + m].
    """
    if fill not in ("zeros", "repeat"):
        raise ValueError(f"fill must be 'zeros' or 'repeat', got {fill!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for s in range(0, len(rows), batch_size):
        chunk = rows[s : s + batch_size]
        m = len(chunk)
        if m < batch_size:
            pad = (np.zeros((batch_size - m, *chunk.shape[1:]), chunk.dtype) if fill == "zeros"
                   else np.repeat(chunk[:1], batch_size - m, axis=0))
            chunk = np.concatenate([chunk, pad])
        yield s, chunk, m
