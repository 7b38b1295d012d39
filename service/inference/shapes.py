"""The few batch sizes a graph runs at when batches are padded: powers of two up to the largest batch.

onnxruntime's CUDA provider picks convolution algorithms (and plans memory) per new input shape, so a GPU fed
batches of every size from 1 to 256 keeps paying for shapes it has not seen. Padded to 1, 2, 4, ..., 256 (and
`max_batch_size` itself when it is no power of two), a graph sees at most nine shapes, all run at load.
A padded batch costs at most twice the rows it carries, which a GPU runs in about the time of the real ones.
"""

from __future__ import annotations

import numpy as np


def batch_shapes(max_batch_size: int) -> tuple[int, ...]:
    """(1, 2, 4, ..., max_batch_size): the powers of two below the largest batch, and the largest batch."""
    sizes = []
    size = 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return (*sizes, max_batch_size)


def padded_size(n: int, shapes: tuple[int, ...]) -> int:
    """The smallest of `shapes` that holds n rows (n itself beyond the largest, which batches never are)."""
    for size in shapes:
        if size >= n:
            return size
    return n


def pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """`x` (n, ...) followed by zero rows up to `rows` (x itself when it has them already)."""
    if len(x) >= rows:
        return x
    padded = np.zeros((rows, *x.shape[1:]), dtype=x.dtype)
    padded[: len(x)] = x
    return padded
