"""The product of a [connected] layer's weights with a few images at inference: out[b] = weights @ x[b].

At batch 1 the product reads every weight once for one multiply-add: it runs at memory speed, and VGG-16's
first connected layer streams 411 MB of weights. numpy's matmul (OpenBLAS) reached 16 GB/s of them at 1
thread on this project's AMD EPYC (25.6 ms) and 26 GB/s at 2; here four weight rows are read side by side
with vector loads, each against the same vector of the image, into four vector accumulators: 23 and 31 GB/s
(17.9 and 13.4 ms). On 2-8 images its matmul of the transposed weights ran at 4-5 GB/s (85-94 ms at 1
thread, against 21-51 ms here). Each row's sum: its LANES lane sums, added lane by lane, then the columns
past the last whole vector; float32 rounding differs from BLAS's order only.

Shapes: weights (N, K), x (B, K), out (B, N), C-contiguous float32; B up to MAX_BATCH (a step's rows stay
in the caches while every image of the batch reads them; at 16 images numpy is as fast).
"""
from __future__ import annotations

import numpy as np

from . import jit
from .handoff import finish_share, share_out_when_it_pays, start_share
from .simd import LANES, fma, load, splat, store

MAX_BATCH = 8
ROWS = 4                     # weight rows per task step
# Shared out among the helper threads (kernels/handoff.py) from this many multiply-adds per call.
PARALLEL_MIN_MACS = 1 << 20


@jit(inline="always")
def _finish_row(lanes, weights, x, out, row, b, whole):
    """out[b, row] = the sum of the LANES values in `lanes` (lane by lane), plus the columns from `whole`."""
    total = np.float32(0.0)
    for lane in range(LANES):
        total += lanes[lane]
    for column in range(whole, weights.shape[1]):
        total += weights[row, column] * x[b, column]
    out[b, row] = total


@jit
def gemv_share(flags, ticket, first_flag, flag_count, before, weights, x, out, first, last):
    """Row blocks first..last-1 (block j: rows ROWS*j .. ROWS*j + ROWS - 1, fewer at the end) of every image;
    a share function of kernels/handoff.py."""
    start_share(flags, ticket, first_flag, flag_count, before)
    rows, columns = weights.shape
    whole = columns - columns % LANES
    lanes = np.empty(ROWS * LANES, np.float32)
    for block in range(first, last):
        r = block * ROWS
        count = min(ROWS, rows - r)
        for b in range(x.shape[0]):
            image = x[b]
            if count == ROWS:
                w0, w1, w2, w3 = weights[r], weights[r + 1], weights[r + 2], weights[r + 3]
                a0 = splat(0.0)
                a1 = splat(0.0)
                a2 = splat(0.0)
                a3 = splat(0.0)
                for j in range(0, whole, LANES):
                    xv = load(image, j)
                    a0 = fma(load(w0, j), xv, a0)
                    a1 = fma(load(w1, j), xv, a1)
                    a2 = fma(load(w2, j), xv, a2)
                    a3 = fma(load(w3, j), xv, a3)
                store(lanes, 0, a0)
                store(lanes, LANES, a1)
                store(lanes, 2 * LANES, a2)
                store(lanes, 3 * LANES, a3)
                for i in range(ROWS):
                    _finish_row(lanes[i * LANES:(i + 1) * LANES], weights, x, out, r + i, b, whole)
            else:
                for i in range(count):
                    w = weights[r + i]
                    a = splat(0.0)
                    for j in range(0, whole, LANES):
                        a = fma(load(w, j), load(image, j), a)
                    store(lanes, 0, a)
                    _finish_row(lanes[:LANES], weights, x, out, r + i, b, whole)
    finish_share(flags, ticket, first_flag, flag_count, before)


def suits(batch: int) -> bool:
    return 1 <= batch <= MAX_BATCH


def gemv(weights: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    """out (B, N) = x (B, K) @ weights (N, K).T for B <= MAX_BATCH, on the threads when they pay."""
    rows, columns = weights.shape
    batch = x.shape[0]
    if (not suits(batch) or x.shape != (batch, columns) or out.shape != (batch, rows)
            or not (weights.flags.c_contiguous and x.flags.c_contiguous and out.flags.c_contiguous)):
        raise ValueError(f"gemv: weights {weights.shape}, x {x.shape}, out {out.shape}")
    blocks = -(-rows // ROWS)
    share_out_when_it_pays(gemv_share, (weights, x, out), blocks, batch * rows * columns, PARALLEL_MIN_MACS)
