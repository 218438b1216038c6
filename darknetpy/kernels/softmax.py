"""Softmax and the loss kernels of the cost-bearing layers ([softmax], [cost], [logistic]); spec §2.6, §2.13, §2.17.

Arrays are (B, N) float32 views of the flattened CHW tensors. Arithmetic follows Darknet's C: float32
operands, `exp`/`log` in double with the result rounded to float, sums accumulated sequentially in float32
(so the reported cost matches Darknet's `sum_array`).

The loss kernels write Darknet's `delta` (the *negative* gradient, e.g. truth - p); the layers flip its sign.
"""
from __future__ import annotations

import math

import numpy as np

from . import jit

LARGEST_NEGATIVE = np.float32(-3.4028234663852886e38)  # -FLT_MAX, Darknet's starting maximum
MASK_VALUE = np.float32(-1234.0)  # Darknet's SECRET_NUM: truth entries to ignore in a masked cost

SSE, MASKED, SMOOTH, L1 = 0, 1, 2, 3


@jit
def softmax_groups(x, groups, temperature, y):
    """y[b, chunk] = softmax(x[b, chunk] / T) for each of `groups` contiguous chunks of every row."""
    batch, n = x.shape
    size = n // groups
    for b in range(batch):
        for g in range(groups):
            start = g * size
            stop = start + size
            largest = LARGEST_NEGATIVE
            for i in range(start, stop):
                if x[b, i] > largest:
                    largest = x[b, i]
            shift = largest / temperature
            total = np.float32(0.0)
            for i in range(start, stop):
                e = np.float32(math.exp(np.float64(x[b, i] / temperature - shift)))
                total += e
                y[b, i] = e
            for i in range(start, stop):
                y[b, i] = y[b, i] / total


@jit
def softmax_cross_entropy(p, truth, delta, errors):
    """Darknet's softmax_x_ent: error = -log(p) where truth != 0 (truth is not a weight), delta = t - p.
    Returns the float32 sum of the errors."""
    batch, n = p.shape
    cost = np.float32(0.0)
    for b in range(batch):
        for i in range(n):
            t = truth[b, i]
            err = np.float32(-math.log(np.float64(p[b, i]))) if t != 0 else np.float32(0.0)
            errors[b, i] = err
            delta[b, i] = t - p[b, i]
    for b in range(batch):
        for i in range(n):
            cost += errors[b, i]
    return cost


@jit
def logistic_cross_entropy(p, truth, delta, errors):
    """Darknet's logistic_x_ent: error = -t log p - (1-t) log(1-p), delta = t - p. Returns the float32 sum."""
    batch, n = p.shape
    cost = np.float32(0.0)
    for b in range(batch):
        for i in range(n):
            t = np.float64(truth[b, i])
            q = np.float64(p[b, i])
            one_minus_t = np.float64(np.float32(1.0) - truth[b, i])
            one_minus_p = np.float64(np.float32(1.0) - p[b, i])
            errors[b, i] = np.float32(-t * math.log(q) - one_minus_t * math.log(one_minus_p))
            delta[b, i] = truth[b, i] - p[b, i]
    for b in range(batch):
        for i in range(n):
            cost += errors[b, i]
    return cost


@jit
def cost_errors(pred, truth, kind, errors, delta):
    """Per-element error and Darknet delta of a [cost] layer (spec §2.13). Returns the float32 sum.

    SMOOTH keeps Darknet's sign bug: in the linear branch (|d| >= 1) delta is +1 for d < 0 and -1 otherwise,
    the opposite sign of the quadratic branch (whose delta is d itself).
    """
    batch, n = pred.shape
    for b in range(batch):
        for i in range(n):
            t = truth[b, i]
            p = pred[b, i]
            if kind == MASKED and t == MASK_VALUE:
                p = MASK_VALUE  # Darknet overwrites the input with the mask value, so the difference is 0
            d = t - p
            if kind == L1:
                errors[b, i] = abs(d)
                delta[b, i] = np.float32(1.0) if d > 0 else np.float32(-1.0)
            elif kind == SMOOTH and abs(d) >= 1:
                errors[b, i] = np.float32(2.0) * abs(d) - np.float32(1.0)
                delta[b, i] = np.float32(1.0) if d < 0 else np.float32(-1.0)
            else:
                errors[b, i] = d * d
                delta[b, i] = d
    cost = np.float32(0.0)
    for b in range(batch):
        for i in range(n):
            cost += errors[b, i]
    return cost
