"""[shortcut] arithmetic over (B, C, H, W) float32 arrays with Darknet's shape-mismatch rule (spec §2.9).

With `out` (C2, H2, W2) and `add` (C1, H1, W1): stride = W1/W2 and sample = W2/W1 (each at least 1); for
k < min(C), j < min(H), i < min(W) the output element (k, j*sample, i*sample) meets the added element
(k, j*stride, i*stride). Every other output element is the previous layer's value unchanged. The kernels
work plane by plane, serially for small tensors and over threads for large ones.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from . import jit
from .pooling import use_threads


@jit
def _geometry(out_shape, add_shape):
    out_c, out_h, out_w = out_shape[1], out_shape[2], out_shape[3]
    add_c, add_h, add_w = add_shape[1], add_shape[2], add_shape[3]
    stride = max(add_w // out_w, 1)
    sample = max(out_w // add_w, 1)
    return stride, sample, min(out_c, add_c), min(out_h, add_h), min(out_w, add_w)


# ---- forward -----------------------------------------------------------------------------------------------
@jit
def _forward_plane(prev, add, alpha, beta, out, plane):
    channels = out.shape[1]
    b = plane // channels
    k = plane - b * channels
    for y in range(out.shape[2]):
        for x in range(out.shape[3]):
            out[b, k, y, x] = prev[b, k, y, x]
    stride, sample, min_c, min_h, min_w = _geometry(out.shape, add.shape)
    if k < min_c:
        for j in range(min_h):
            for i in range(min_w):
                oy = j * sample
                ox = i * sample
                out[b, k, oy, ox] = alpha * out[b, k, oy, ox] + beta * add[b, k, j * stride, i * stride]


@jit
def _forward_serial(prev, add, alpha, beta, out):
    for plane in range(out.shape[0] * out.shape[1]):
        _forward_plane(prev, add, alpha, beta, out, plane)


@jit(parallel=True)
def _forward_parallel(prev, add, alpha, beta, out):
    for plane in prange(out.shape[0] * out.shape[1]):
        _forward_plane(prev, add, alpha, beta, out, plane)


# Same shapes (every residual block of ResNets, Darknet-53 and Yolo-Fastest): one flat loop per plane. The
# general loop above copies the plane first and walks rows of W values; on Yolo-Fastest-XL's 96x10x10 blocks
# that took 6.8 us per call against 1.5 for numpy's add.
@jit
def _same_shape_plane(prev, add, alpha, beta, out, plane):
    p, a, o = prev[plane], add[plane], out[plane]
    for i in range(o.shape[0]):
        o[i] = alpha * p[i] + beta * a[i]


@jit
def _same_shape_serial(prev, add, alpha, beta, out):
    for plane in range(out.shape[0]):
        _same_shape_plane(prev, add, alpha, beta, out, plane)


@jit(parallel=True)
def _same_shape_parallel(prev, add, alpha, beta, out):
    for plane in prange(out.shape[0]):
        _same_shape_plane(prev, add, alpha, beta, out, plane)


def shortcut_forward(prev: np.ndarray, add: np.ndarray, alpha: np.float32, beta: np.float32,
                     out: np.ndarray) -> None:
    """out = prev, then out[visited] = alpha * prev + beta * add[matching] (float32, as Darknet)."""
    threaded = use_threads(out.size, out.shape[0] * out.shape[1])
    if prev.shape == add.shape == out.shape and prev.flags.c_contiguous and add.flags.c_contiguous \
            and out.flags.c_contiguous:
        planes = out.shape[0] * out.shape[1]
        kernel = _same_shape_parallel if threaded else _same_shape_serial
        kernel(prev.reshape(planes, -1), add.reshape(planes, -1), alpha, beta, out.reshape(planes, -1))
        return
    kernel = _forward_parallel if threaded else _forward_serial
    kernel(prev, add, alpha, beta, out)


# ---- backward ----------------------------------------------------------------------------------------------
@jit
def _backward_prev_plane(dy, add_shape, alpha, dprev, plane):
    channels, height, width = dy.shape[1], dy.shape[2], dy.shape[3]
    b = plane // channels
    k = plane - b * channels
    stride, sample, min_c, min_h, min_w = _geometry(dy.shape, add_shape)
    for y in range(height):
        row_mixed = k < min_c and y % sample == 0 and y // sample < min_h
        for x in range(width):
            if row_mixed and x % sample == 0 and x // sample < min_w:
                dprev[b, k, y, x] += alpha * dy[b, k, y, x]
            else:
                dprev[b, k, y, x] += dy[b, k, y, x]


@jit
def _backward_prev_serial(dy, add_shape, alpha, dprev):
    for plane in range(dy.shape[0] * dy.shape[1]):
        _backward_prev_plane(dy, add_shape, alpha, dprev, plane)


@jit(parallel=True)
def _backward_prev_parallel(dy, add_shape, alpha, dprev):
    for plane in prange(dy.shape[0] * dy.shape[1]):
        _backward_prev_plane(dy, add_shape, alpha, dprev, plane)


def shortcut_backward_prev(dy: np.ndarray, add_shape: tuple[int, int, int, int], alpha: np.float32,
                           dprev: np.ndarray) -> None:
    """dprev += alpha * dy where the forward mixed in the added layer, dy elsewhere. This is the true
    gradient; Darknet scales everything by alpha, which only differs when alpha != 1 and shapes differ."""
    kernel = _backward_prev_parallel if use_threads(dy.size, dy.shape[0] * dy.shape[1]) \
        else _backward_prev_serial
    kernel(dy, add_shape, alpha, dprev)


@jit
def _backward_add_plane(dy, beta, dadd, plane):
    stride, sample, min_c, min_h, min_w = _geometry(dy.shape, dadd.shape)
    b = plane // min_c
    k = plane - b * min_c
    for j in range(min_h):
        for i in range(min_w):
            dadd[b, k, j * stride, i * stride] += beta * dy[b, k, j * sample, i * sample]


@jit
def _backward_add_serial(dy, beta, dadd):
    planes = dy.shape[0] * min(dy.shape[1], dadd.shape[1])
    for plane in range(planes):
        _backward_add_plane(dy, beta, dadd, plane)


@jit(parallel=True)
def _backward_add_parallel(dy, beta, dadd):
    planes = dy.shape[0] * min(dy.shape[1], dadd.shape[1])
    for plane in prange(planes):
        _backward_add_plane(dy, beta, dadd, plane)


def shortcut_backward_add(dy: np.ndarray, beta: np.float32, dadd: np.ndarray) -> None:
    """dadd[matching] += beta * dy[visited]; the index map is injective, so planes never collide."""
    kernel = _backward_add_parallel if use_threads(dy.size, dy.shape[0] * dy.shape[1]) \
        else _backward_add_serial
    kernel(dy, beta, dadd)
