"""Unshared ("locally connected") convolution, spec §2.15, one image at a time.

weights (L, F, K): one F x K filter bank per output location l (K = C*size*size in im2col row order);
columns (K, L) from im2col; biases and outputs (F, L).
"""
from __future__ import annotations

import numpy as np
from numba import prange

from . import jit


@jit(parallel=True)
def local_forward(weights, columns, biases, out):
    """out[f, l] = biases[f, l] + sum_k weights[l, f, k] * columns[k, l]."""
    locations, filters, depth = weights.shape
    for loc in prange(locations):
        for f in range(filters):
            acc = np.float32(0.0)
            for k in range(depth):
                acc += weights[loc, f, k] * columns[k, loc]
            out[f, loc] = biases[f, loc] + acc


@jit(parallel=True)
def local_backward(weights, columns, dy, grad_weights, dcolumns):
    """grad_weights[l, f, k] += dy[f, l] * columns[k, l]; dcolumns[k, l] = sum_f weights[l, f, k] dy[f, l]."""
    locations, filters, depth = weights.shape
    for loc in prange(locations):
        for k in range(depth):
            dcolumns[k, loc] = np.float32(0.0)
        for f in range(filters):
            g = dy[f, loc]
            for k in range(depth):
                grad_weights[loc, f, k] += g * columns[k, loc]
                dcolumns[k, loc] += weights[loc, f, k] * g
