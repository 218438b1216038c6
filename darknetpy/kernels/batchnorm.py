"""Batch normalisation kernels over (B, C, S) float32 arrays (S = spatial size), spec §4.2.

Darknet normalises with (x - mean) / (sqrt(var) + 1e-6) in both inference and training, but its backward
uses sqrt(var + 1e-5); the training variance is unbiased (N - 1). Both are replicated on purpose.

Every per-channel sum is kept as LANES float64 partial sums (a vectorisable loop; one running sum would be a
latency-bound chain of dependent additions) and added up at the end, so sums are more accurate than
Darknet's sequential float32 ones; that is the only difference from its arithmetic.

Besides the (B, C, S) kernels used by [batchnorm], [connected] and the BN block, the convolution's training
path has "channel-major" variants: its matrix product is (C, B*S), so statistics run over one contiguous row
per channel, the normalised, activated result is written straight into the (B, C, S) layer output (the
transpose costs no extra pass), and the backward writes dL/d(product) back as (C, B*S) for the next two
matrix products. The raw product doubles as BN's saved input. `leaky` fuses Darknet's leaky activation and
its gradient g(y) = 1 if y > 0 else 0.1 (other activations are applied by the caller).
"""
from __future__ import annotations

import math

import numpy as np
from numba import prange

from . import jit
from .activations import leaky_float32
from .threads import threads_pay

FORWARD_EPSILON = np.float32(1e-6)   # added to the standard deviation
BACKWARD_EPSILON = np.float32(1e-5)  # added to the variance
ROLLING_KEEP = np.float32(0.99)
ROLLING_NEW = np.float32(0.01)
LEAKY_SLOPE = np.float32(0.1)  # Darknet's leaky gradient (a float constant there)
LANES = 32
BLOCK = 256  # elements per float32 partial sum before it is added in float64 (rounding stays ~1e-7 relative)
# Elements below which starting the thread team costs more than it saves (~0.5 ms of serial work, see
# threads.threads_pay).
PARALLEL_MIN_ELEMENTS = 1 << 19


@jit
def fold_inference(scale, bias, rolling_mean, rolling_var, a, b):
    """a, b such that BN(x) = a*x + b at inference."""
    for c in range(scale.shape[0]):
        a[c] = scale[c] / (np.float32(math.sqrt(rolling_var[c])) + FORWARD_EPSILON)
        b[c] = bias[c] - rolling_mean[c] * a[c]


@jit(inline="always")
def _term(v, m, squared):
    if squared:
        d = v - m
        return d * d
    return v


@jit(inline="always")
def _add_terms(lanes, row, m, squared):
    """lanes += partial sums of row (or of (row - m)^2): eight float32 partial sums (one AVX2 register, no
    memory traffic) per BLOCK elements, each block's total added in float64; a shorter tail goes into the
    float64 lanes. `squared` is a constant at every call, so the branch in _term folds away."""
    n = row.shape[0]
    full = n - n % BLOCK
    total = 0.0
    for block in range(0, full, BLOCK):
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
        for j in range(block, block + BLOCK, 8):  # a constant trip count: a variable one is not vectorised
            a0 += _term(row[j], m, squared)
            a1 += _term(row[j + 1], m, squared)
            a2 += _term(row[j + 2], m, squared)
            a3 += _term(row[j + 3], m, squared)
            a4 += _term(row[j + 4], m, squared)
            a5 += _term(row[j + 5], m, squared)
            a6 += _term(row[j + 6], m, squared)
            a7 += _term(row[j + 7], m, squared)
        total += np.float64((a0 + a1) + (a2 + a3)) + np.float64((a4 + a5) + (a6 + a7))
    lanes[0] += total
    tail = row[full:]
    full_lanes = tail.shape[0] // LANES * LANES
    for start in range(0, full_lanes, LANES):
        part = tail[start:start + LANES]
        for i in range(LANES):
            lanes[i] += _term(part[i], m, squared)
    for i in range(full_lanes, tail.shape[0]):
        lanes[i - full_lanes] += _term(tail[i], m, squared)


@jit(inline="always")
def _add_row(lanes, row):
    _add_terms(lanes, row, np.float32(0.0), False)


@jit(inline="always")
def _add_squared_deviation(lanes, row, m):
    _add_terms(lanes, row, m, True)


@jit(inline="always")
def _take_total(lanes):
    """Sum of the partial sums, which are reset to zero."""
    total = 0.0
    for i in range(LANES):
        total += lanes[i]
        lanes[i] = 0.0
    return total


@jit(inline="always")
def _inverse_std(v):
    """1 / (std + 1e-6), the forward's normaliser."""
    return np.float32(1.0) / (np.float32(math.sqrt(v)) + FORWARD_EPSILON)


@jit(inline="always")
def _store_statistics(c, m, squares, count, rolling_mean, rolling_var, mean, var):
    """Store channel c's batch mean/variance, update the rolling ones; returns 1/(std + eps)."""
    v = np.float32(squares / (count - 1)) if count > 1 else np.float32(0.0)
    mean[c] = m
    var[c] = v
    rolling_mean[c] = ROLLING_KEEP * rolling_mean[c] + ROLLING_NEW * m
    rolling_var[c] = ROLLING_KEEP * rolling_var[c] + ROLLING_NEW * v
    return _inverse_std(v)


@jit
def _forward_channel(y, c, scale, bias, rolling_mean, rolling_var, mean, var, x_saved, x_norm, lanes):
    batch, spatial = y.shape[0], y.shape[2]
    count = batch * spatial
    for n in range(batch):
        _add_row(lanes, y[n, c])
    m = np.float32(_take_total(lanes) / count)
    for n in range(batch):
        _add_squared_deviation(lanes, y[n, c], m)
    inv = _store_statistics(c, m, _take_total(lanes), count, rolling_mean, rolling_var, mean, var)
    sc, sh = scale[c], bias[c]
    keep_norm = x_norm.shape[0] > 0
    for n in range(batch):
        row = y[n, c]
        saved = x_saved[n, c]
        for s in range(spatial):
            saved[s] = row[s]
        if keep_norm:
            norm = x_norm[n, c]
            for s in range(spatial):
                norm[s] = (row[s] - m) * inv
        for s in range(spatial):
            row[s] = ((row[s] - m) * inv) * sc + sh


@jit
def _forward_serial(y, scale, bias, rolling_mean, rolling_var, mean, var, x_saved, x_norm):
    lanes = np.zeros(LANES, np.float64)
    for c in range(y.shape[1]):
        _forward_channel(y, c, scale, bias, rolling_mean, rolling_var, mean, var, x_saved, x_norm, lanes)


@jit(parallel=True)
def _forward_parallel(y, scale, bias, rolling_mean, rolling_var, mean, var, x_saved, x_norm):
    for c in prange(y.shape[1]):
        lanes = np.zeros(LANES, np.float64)
        _forward_channel(y, c, scale, bias, rolling_mean, rolling_var, mean, var, x_saved, x_norm, lanes)


def train_forward(y: np.ndarray, scale: np.ndarray, bias: np.ndarray, rolling_mean: np.ndarray,
                  rolling_var: np.ndarray, mean: np.ndarray, var: np.ndarray, x_saved: np.ndarray,
                  x_norm: np.ndarray) -> None:
    """In place on y (B, C, S): keep x, batch statistics, rolling update, normalise, scale, shift.
    x_norm receives the normalised values unless it is empty (nothing reads them back)."""
    kernel = _forward_parallel if threads_pay(y.size, y.shape[1], PARALLEL_MIN_ELEMENTS) else _forward_serial
    kernel(y, scale, bias, rolling_mean, rolling_var, mean, var, x_saved, x_norm)


@jit(inline="always")
def _backward_constants(c, sum_dy, sum_dy_centered, count, var, scale, grad_scale, grad_bias):
    """Accumulate the parameter gradients of channel c; returns (dy multiplier, (x - mean) multiplier,
    constant) of its input gradient dx = a*dy + b*(x - mean) + k (Darknet's formulas, float64 sums)."""
    inv_std_forward = 1.0 / (np.float64(np.float32(math.sqrt(var[c]))) + np.float64(FORWARD_EPSILON))
    grad_bias[c] += np.float32(sum_dy)
    grad_scale[c] += np.float32(sum_dy_centered * inv_std_forward)
    denom = np.float64(var[c] + BACKWARD_EPSILON)
    inv_std = 1.0 / math.sqrt(denom)
    sc = np.float64(scale[c])
    mean_delta = -sum_dy * sc * inv_std
    var_delta = sum_dy_centered * sc * (-0.5 * math.pow(denom, -1.5))
    return (np.float32(sc * inv_std), np.float32(var_delta * 2.0 / count), np.float32(mean_delta / count))


@jit
def _backward_channel(dy, x_saved, mean, var, scale, grad_scale, grad_bias, c, lanes, lanes2):
    batch, spatial = dy.shape[0], dy.shape[2]
    m = mean[c]
    for n in range(batch):
        g = dy[n, c]
        x = x_saved[n, c]
        _add_row(lanes, g)
        full = spatial // LANES * LANES
        for start in range(0, full, LANES):
            pg = g[start:start + LANES]
            px = x[start:start + LANES]
            for i in range(LANES):
                lanes2[i] += pg[i] * (px[i] - m)
        for i in range(full, spatial):
            lanes2[i - full] += g[i] * (x[i] - m)
    a, b, k = _backward_constants(c, _take_total(lanes), _take_total(lanes2), batch * spatial, var, scale,
                                  grad_scale, grad_bias)
    for n in range(batch):
        g = dy[n, c]
        x = x_saved[n, c]
        for s in range(spatial):
            g[s] = g[s] * a + (x[s] - m) * b + k


@jit
def _backward_serial(dy, x_saved, mean, var, scale, grad_scale, grad_bias):
    lanes = np.zeros(LANES, np.float64)
    lanes2 = np.zeros(LANES, np.float64)
    for c in range(dy.shape[1]):
        _backward_channel(dy, x_saved, mean, var, scale, grad_scale, grad_bias, c, lanes, lanes2)


@jit(parallel=True)
def _backward_parallel(dy, x_saved, mean, var, scale, grad_scale, grad_bias):
    for c in prange(dy.shape[1]):
        lanes = np.zeros(LANES, np.float64)
        lanes2 = np.zeros(LANES, np.float64)
        _backward_channel(dy, x_saved, mean, var, scale, grad_scale, grad_bias, c, lanes, lanes2)


def train_backward(dy: np.ndarray, x_saved: np.ndarray, mean: np.ndarray, var: np.ndarray, scale: np.ndarray,
                   grad_scale: np.ndarray, grad_bias: np.ndarray) -> None:
    """In place: dy (dL/d output of BN) becomes dL/d input of BN, following Darknet's backward formulas
    (with the standard gradient sign). Accumulates grad_scale and grad_bias."""
    kernel = _backward_parallel if threads_pay(dy.size, dy.shape[1], PARALLEL_MIN_ELEMENTS) else _backward_serial
    kernel(dy, x_saved, mean, var, scale, grad_scale, grad_bias)


# ------------------------------------------------------------------------ channel-major (convolution) variants
@jit(inline="always")
def _normalized(x, m, inv, sc, sh):
    # the one expression of the channel-major forward; the backward re-evaluates it bit for bit to know
    # leaky's side instead of reading the layer output back
    return ((x - m) * inv) * sc + sh


@jit
def _forward_cm_channel(product, c, scale, bias, rolling_mean, rolling_var, mean, var, normalize, leaky, lanes,
                        out):
    batch, spatial = out.shape[0], out.shape[2]
    row = product[c]
    if normalize:
        count = batch * spatial
        _add_row(lanes, row)
        m = np.float32(_take_total(lanes) / count)
        _add_squared_deviation(lanes, row, m)
        inv = _store_statistics(c, m, _take_total(lanes), count, rolling_mean, rolling_var, mean, var)
        sc = scale[c]
    sh = bias[c]
    for n in range(batch):
        src = row[n * spatial:(n + 1) * spatial]
        dst = out[n, c]
        if normalize and leaky:
            for s in range(spatial):
                dst[s] = leaky_float32(_normalized(src[s], m, inv, sc, sh))
        elif normalize:
            for s in range(spatial):
                dst[s] = _normalized(src[s], m, inv, sc, sh)
        elif leaky:
            for s in range(spatial):
                dst[s] = leaky_float32(src[s] + sh)
        else:
            for s in range(spatial):
                dst[s] = src[s] + sh


@jit
def _forward_cm_serial(product, scale, bias, rolling_mean, rolling_var, mean, var, normalize, leaky, out):
    lanes = np.zeros(LANES, np.float64)
    for c in range(out.shape[1]):
        _forward_cm_channel(product, c, scale, bias, rolling_mean, rolling_var, mean, var, normalize, leaky,
                            lanes, out)


@jit(parallel=True)
def _forward_cm_parallel(product, scale, bias, rolling_mean, rolling_var, mean, var, normalize, leaky, out):
    for c in prange(out.shape[1]):
        lanes = np.zeros(LANES, np.float64)
        _forward_cm_channel(product, c, scale, bias, rolling_mean, rolling_var, mean, var, normalize, leaky,
                            lanes, out)


def train_forward_channel_major(product: np.ndarray, scale: np.ndarray, bias: np.ndarray,
                                rolling_mean: np.ndarray, rolling_var: np.ndarray, mean: np.ndarray,
                                var: np.ndarray, normalize: bool, leaky: bool, out: np.ndarray) -> None:
    """out (B, C, S) = [leaky](BN(product) + bias) from product (C, B*S), left untouched (it is BN's saved
    input). Without `normalize` only the bias is added (a convolution without batch norm; scale and the
    statistics arrays are then ignored)."""
    parallel = threads_pay(out.size, out.shape[1], PARALLEL_MIN_ELEMENTS)
    kernel = _forward_cm_parallel if parallel else _forward_cm_serial
    kernel(product, scale, bias, rolling_mean, rolling_var, mean, var, normalize, leaky, out)


@jit(inline="always")
def _through_leaky(dy, z, leaky):
    # leaky(z) > 0 exactly when z > 0 (NaN: neither), so the pre-activation z decides the gradient
    if leaky and not z > np.float32(0.0):
        return dy * LEAKY_SLOPE
    return dy


@jit
def _backward_cm_channel(dy, x_saved, mean, var, scale, bias, grad_scale, grad_bias, normalize, leaky, c, lanes,
                         lanes2, dx_t):
    """Two passes over channel c (sums, then dL/d(product)); leaky's side comes from re-evaluating the
    forward's pre-activation from the saved input, so the layer output is never read: on a first layer's
    large maps this pass is bound by memory traffic."""
    batch, spatial = dy.shape[0], dy.shape[2]
    count = batch * spatial
    xrow = x_saved[c]
    m = mean[c] if normalize else np.float32(0.0)
    inv = _inverse_std(var[c]) if normalize else np.float32(1.0)
    sc = scale[c] if normalize else np.float32(1.0)
    sh = bias[c]
    for n in range(batch):
        g_row = dy[n, c]
        x = xrow[n * spatial:(n + 1) * spatial]
        full = spatial // LANES * LANES
        for start in range(0, full, LANES):
            pg, px = g_row[start:start + LANES], x[start:start + LANES]
            for i in range(LANES):
                z = _normalized(px[i], m, inv, sc, sh) if normalize else px[i] + sh
                g = _through_leaky(pg[i], z, leaky)
                lanes[i] += g
                lanes2[i] += g * (px[i] - m)
        for i in range(full, spatial):
            z = _normalized(x[i], m, inv, sc, sh) if normalize else x[i] + sh
            g = _through_leaky(g_row[i], z, leaky)
            lanes[i - full] += g
            lanes2[i - full] += g * (x[i] - m)
    sum_dy = _take_total(lanes)
    sum_dy_centered = _take_total(lanes2)
    if normalize:
        a, b, k = _backward_constants(c, sum_dy, sum_dy_centered, count, var, scale, grad_scale, grad_bias)
    else:
        grad_bias[c] += np.float32(sum_dy)
        a, b, k = np.float32(1.0), np.float32(0.0), np.float32(0.0)
    for n in range(batch):
        g_row = dy[n, c]
        x = xrow[n * spatial:(n + 1) * spatial]
        dst = dx_t[c, n * spatial:(n + 1) * spatial]
        if normalize:
            for s in range(spatial):
                g = _through_leaky(g_row[s], _normalized(x[s], m, inv, sc, sh), leaky)
                dst[s] = g * a + (x[s] - m) * b + k
        else:
            for s in range(spatial):
                dst[s] = _through_leaky(g_row[s], x[s] + sh, leaky)


@jit
def _backward_cm_serial(dy, x_saved, mean, var, scale, bias, grad_scale, grad_bias, normalize, leaky, dx_t):
    lanes = np.zeros(LANES, np.float64)
    lanes2 = np.zeros(LANES, np.float64)
    for c in range(dy.shape[1]):
        _backward_cm_channel(dy, x_saved, mean, var, scale, bias, grad_scale, grad_bias, normalize, leaky, c,
                             lanes, lanes2, dx_t)


@jit(parallel=True)
def _backward_cm_parallel(dy, x_saved, mean, var, scale, bias, grad_scale, grad_bias, normalize, leaky, dx_t):
    for c in prange(dy.shape[1]):
        lanes = np.zeros(LANES, np.float64)
        lanes2 = np.zeros(LANES, np.float64)
        _backward_cm_channel(dy, x_saved, mean, var, scale, bias, grad_scale, grad_bias, normalize, leaky, c,
                             lanes, lanes2, dx_t)


def train_backward_channel_major(dy: np.ndarray, x_saved: np.ndarray, mean: np.ndarray, var: np.ndarray,
                                 scale: np.ndarray, bias: np.ndarray, grad_scale: np.ndarray,
                                 grad_bias: np.ndarray, normalize: bool, leaky: bool, dx_t: np.ndarray) -> None:
    """dx_t (C, B*S) = dL/d(product) for dy (B, C, S) = dL/d(layer output) after train_forward_channel_major
    of the same product (x_saved) and parameters: through leaky's gradient (if `leaky`; otherwise dy must
    already be dL/d(BN output)), then BN's backward (if `normalize`; else only the bias). dx_t may be
    x_saved itself. Accumulates grad_bias (and grad_scale)."""
    parallel = threads_pay(dy.size, dy.shape[1], PARALLEL_MIN_ELEMENTS)
    kernel = _backward_cm_parallel if parallel else _backward_cm_serial
    kernel(dy, x_saved, mean, var, scale, bias, grad_scale, grad_bias, normalize, leaky, dx_t)


@jit(parallel=True)
def affine_channels(y, a, b):
    """y[n, c, :] = a[c] * y[n, c, :] + b[c] in place."""
    batch, channels, spatial = y.shape
    for nc in prange(batch * channels):
        n = nc // channels
        c = nc - n * channels
        for s in range(spatial):
            y[n, c, s] = y[n, c, s] * a[c] + b[c]
