"""Softmax and the loss kernels of the cost-bearing layers ([softmax], [cost], [logistic]); spec §2.6, §2.13, §2.17.

Arrays are (B, N) float32 views of the flattened CHW tensors. Arithmetic follows Darknet's C: float32
operands, `exp`/`log` in double with the result rounded to float, sums accumulated sequentially in float32
(so the reported cost matches Darknet's `sum_array`).

The loss kernels write Darknet's `delta` (the *negative* gradient, e.g. truth - p); the layers flip its sign.
"""
from __future__ import annotations

import math

import numpy as np
from numba import prange

from . import jit
from .handoff import finish_share, share_out_when_it_pays, start_share

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


# ---- pixel-wise heads ---------------------------------------------------------------------------------------
# Segmentation truth holds one class index per pixel (as float32); IGNORE_INDEX marks pixels that give no loss
# and no gradient (borders, unlabelled regions). Losses are computed from the logits, so a confident and
# correct pixel costs ~0 instead of 0·log 0 = NaN, and a confident wrong one a large finite number.
IGNORE_INDEX = 255


#: pixels per parallel task of softmax_channels (a few KiB per channel row, so the rows stay in cache)
PIXEL_CHUNK = 1024
# 2^f on [0, 1): Taylor coefficients of exp(f ln 2), highest first; relative error < 2e-7 in float32
_EXP2_COEFFICIENTS = (1.5403530393381606e-04, 1.3333558146428443e-03, 9.6181291076284772e-03,
                      5.5504108664821580e-02, 2.4022650695910071e-01, 6.9314718055994531e-01, 1.0)


@jit
def _exp_non_positive(v, mantissa, exponent_bits):
    """exp(v) for v <= 0 as mantissa * 2^k with 2^k's float32 bits in exponent_bits (view them as float32):
    v·log2(e) = k + f, 2^f by a polynomial. A loop LLVM vectorises, unlike calls to libm's exp (6x faster
    here); arguments below -126·ln 2 give 2^-126 times the polynomial (far below any softmax share)."""
    for i in range(v.shape[0]):
        t = v[i] * np.float32(1.4426950408889634)
        if t < np.float32(-126.0):
            t = np.float32(-126.0)
        k = np.floor(t)
        f = t - k
        p = np.float32(_EXP2_COEFFICIENTS[0])
        p = p * f + np.float32(_EXP2_COEFFICIENTS[1])
        p = p * f + np.float32(_EXP2_COEFFICIENTS[2])
        p = p * f + np.float32(_EXP2_COEFFICIENTS[3])
        p = p * f + np.float32(_EXP2_COEFFICIENTS[4])
        p = p * f + np.float32(_EXP2_COEFFICIENTS[5])
        p = p * f + np.float32(_EXP2_COEFFICIENTS[6])
        mantissa[i] = p
        exponent_bits[i] = (np.int32(k) + np.int32(127)) << 23


@jit
def _exponent_sums(x, b, start, inverse_t, largest, total, exponentials):
    """For pixels start .. start+n of image b of a (B, C, H*W) array: largest[k] = max over channels of x/T,
    exponentials[c, k] = exp(x/T - largest[k]) by the vectorised exp above, total[k] = their sum."""
    channels = x.shape[1]
    n = largest.shape[0]
    shifted = np.empty(n, np.float32)
    mantissa = np.empty(n, np.float32)
    exponent_bits = np.empty(n, np.int32)
    scale = exponent_bits.view(np.float32)
    # loops over 1-D row views, the maximum as a select: through x[b, c, start + k] and a conditional store
    # they did not vectorise (11 channels of 1024 pixels: 15.1 -> 6.1 us)
    first = x[b, 0, start:start + n]
    for k in range(n):   # the largest x/T (a negative temperature flips which x that is)
        largest[k] = first[k] * inverse_t
    for c in range(1, channels):
        row = x[b, c, start:start + n]
        for k in range(n):
            v = row[k] * inverse_t
            largest[k] = v if v > largest[k] else largest[k]
    for k in range(n):
        total[k] = np.float32(0.0)
    for c in range(channels):
        row = x[b, c, start:start + n]
        for k in range(n):
            shifted[k] = row[k] * inverse_t - largest[k]
        _exp_non_positive(shifted, mantissa, exponent_bits)
        out = exponentials[c]
        for k in range(n):
            e = mantissa[k] * scale[k]
            out[k] = e
            total[k] += e


@jit
def _softmax_channel_share(flags, ticket, first_flag, flag_count, before, x, inverse_t, y, first, last):
    """Tasks first..last-1 of softmax_channels, a task being a chunk of PIXEL_CHUNK pixels of one image; a
    share function of kernels/handoff.py."""
    start_share(flags, ticket, first_flag, flag_count, before)
    channels, plane = x.shape[1], x.shape[2]
    chunks = (plane + PIXEL_CHUNK - 1) // PIXEL_CHUNK
    for task in range(first, last):
        b = task // chunks
        start = (task % chunks) * PIXEL_CHUNK
        n = min(start + PIXEL_CHUNK, plane) - start
        largest = np.empty(n, np.float32)
        total = np.empty(n, np.float32)
        # a contiguous scratch: writing the exponentials through a (C, n) view of y instead made this kernel
        # 2-3x slower (16 x 11 x 128x128: 3.9 -> 7-14 ms)
        exponentials = np.empty((channels, n), np.float32)
        _exponent_sums(x, b, start, inverse_t, largest, total, exponentials)
        for k in range(n):
            total[k] = np.float32(1.0) / total[k]
        for c in range(channels):
            row, shares = exponentials[c], y[b, c, start:start + n]
            for k in range(n):
                shares[k] = row[k] * total[k]
    finish_share(flags, ticket, first_flag, flag_count, before)


# Maps from this many values are shared out among the helper threads (kernels/handoff.py, a hand-over of a
# few microseconds; through Numba's parallel loop, whose sleeping workers take ~100 us to wake, digits-seg's
# 11 x 128x128 head took 89 us at 2 threads against 103 at 1).
SOFTMAX_PARALLEL_MIN_VALUES = 1 << 16


def softmax_channels(x: np.ndarray, temperature: float, y: np.ndarray) -> None:
    """y[b, :, k] = softmax(x[b, :, k] / T) for every pixel k of (B, C, H*W) arrays: a softmax over the
    channels of every pixel (Darknet's GPU `spatial=1`, which computes in float: so float32 here too, with
    the vectorised exp above; shares agree with a double-precision softmax to ~1e-6 relative).
    Runs along contiguous channel rows, a chunk of pixels at a time."""
    chunks = -(-x.shape[2] // PIXEL_CHUNK)
    share_out_when_it_pays(_softmax_channel_share, (x, np.float32(1.0) / np.float32(temperature), y),
                           x.shape[0] * chunks, x.size, SOFTMAX_PARALLEL_MIN_VALUES)


@jit
def count_bad_class_indices(truth, classes):
    """How many truth entries are neither a whole class index in [0, classes) nor IGNORE_INDEX."""
    bad = 0
    for b in range(truth.shape[0]):
        for k in range(truth.shape[1]):
            t = truth[b, k]
            if t == IGNORE_INDEX:
                continue
            if not (t >= 0 and t < classes and t == math.floor(t)):
                bad += 1
    return bad


@jit(parallel=True)
def pixel_softmax_cross_entropy(x, temperature, p, truth, delta, errors):
    """Per-pixel cross-entropy of softmax(x / T) against class indices truth[b, k] of (B, C, H*W) arrays.

    error = logsumexp(x/T) - x_t/T, from the logits: a confident wrong pixel costs a large finite number,
    never -log 0. The sum of exponentials runs in float32 (_exponent_sums, shared with softmax_channels), so
    an error is exact to ~1e-7 absolute (a double-precision libm exp per value cost 10x the whole loss).
    delta = onehot(t) - p (Darknet's sign and its softmax convention: the unit softmax + cross-entropy, no
    1/T factor), same layout as x; IGNORE_INDEX pixels get error 0 and delta 0. `errors` is (B, H*W).
    Returns the float32 sum of the errors. Indices must have been checked (count_bad_class_indices)."""
    batch, channels, plane = x.shape
    chunks = (plane + PIXEL_CHUNK - 1) // PIXEL_CHUNK
    inverse_t = np.float32(1.0 / temperature)
    for task in prange(batch * chunks):
        b = task // chunks
        start = (task % chunks) * PIXEL_CHUNK
        n = min(start + PIXEL_CHUNK, plane) - start
        largest = np.empty(n, np.float32)
        total = np.empty(n, np.float32)
        exponentials = np.empty((channels, n), np.float32)
        _exponent_sums(x, b, start, inverse_t, largest, total, exponentials)
        for c in range(channels):
            for k in range(n):
                delta[b, c, start + k] = -p[b, c, start + k]
        for k in range(n):
            t = truth[b, start + k]
            if t == IGNORE_INDEX:
                errors[b, start + k] = np.float32(0.0)
                for c in range(channels):
                    delta[b, c, start + k] = np.float32(0.0)
                continue
            target = int(t)
            errors[b, start + k] = np.float32(math.log(np.float64(total[k])) + np.float64(largest[k])
                                              - np.float64(x[b, target, start + k] * inverse_t))
            delta[b, target, start + k] += np.float32(1.0)
    cost = np.float32(0.0)
    for b in range(batch):
        for k in range(plane):
            cost += errors[b, k]
    return cost


@jit(parallel=True)
def logistic_cross_entropy_logits(x, p, truth, delta, errors):
    """[logistic] loss per value from the logits: error = max(x, 0) - x·t + log(1 + exp(-|x|)) (equal to
    -t log p - (1-t) log(1-p), spec §12.3, but finite when p rounds to 0 or 1), delta = t - p; truth
    IGNORE_INDEX: no error, no delta. Rows are (B, N) views. Returns the float32 sum of the errors."""
    batch, n = x.shape
    for b in prange(batch):
        for k in range(n):
            t = truth[b, k]
            if t == IGNORE_INDEX:
                errors[b, k] = np.float32(0.0)
                delta[b, k] = np.float32(0.0)
                continue
            v = np.float64(x[b, k])
            errors[b, k] = np.float32(max(v, 0.0) - v * np.float64(t) + math.log1p(math.exp(-abs(v))))
            delta[b, k] = t - p[b, k]
    cost = np.float32(0.0)
    for b in range(batch):
        for k in range(n):
            cost += errors[b, k]
    return cost
