"""Upsample / downsample and Darknet's reorg permutation, spec §2.10–2.11.

Arrays are (B, C, H, W) for the resampling kernels and (B, N) flat views for reorg, all float32.
`accumulate` selects `+=` (backward passes, which add into the previous layer's gradient) over `=`.
Each kernel works plane by plane (one batch item and channel), serially for small tensors and over
threads for large ones; the results are identical.
"""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np
from numba import prange

from . import jit
from .pooling import use_threads


# The loops walk each stride x stride block by (row, column) offsets instead of dividing every index by the
# stride: an integer division per element cost 7x a memory copy. Within a block the order of the adds is
# big's row-major order, as in Darknet's upsample_cpu.

# ---- nearest-neighbour expansion (upsample forward, downsample backward) -----------------------------------
@jit(inline="always")
def _expand_plane(small, stride, scale, big, accumulate, b, c, row, step):
    """Darknet writes the small map's stride-fold area of big only (rows/columns past it stay as they were).
    One expanded row (`row`, at least W*stride long) serves the stride rows of big it repeats into. `step` is
    the stride as a literal (a closure constant, with which the repeat vectorises: 2x upsampling took 0.8 ns
    per output with the stride read at run time) or 0 to read `stride`."""
    fold = step if step else stride
    width = small.shape[3] * fold
    for sy in range(small.shape[2]):
        src = small[b, c, sy]
        for sx in range(small.shape[3]):
            value = scale * src[sx]
            for dx in range(fold):
                row[sx * fold + dx] = value
        for dy in range(fold):
            dst = big[b, c, sy * fold + dy]
            if accumulate:
                for x in range(width):
                    dst[x] += row[x]
            else:
                for x in range(width):
                    dst[x] = row[x]


# ---- block sums (downsample forward, upsample backward) ----------------------------------------------------
@jit
def _block_sum_plane(big, stride, scale, small, accumulate, b, c):
    out_h, out_w = small.shape[2], small.shape[3]
    for sy in range(out_h):
        if not accumulate:
            for sx in range(out_w):
                small[b, c, sy, sx] = np.float32(0.0)
        for dy in range(stride):
            y = sy * stride + dy
            for sx in range(out_w):
                total = small[b, c, sy, sx]
                x0 = sx * stride
                for dx in range(stride):
                    total += scale * big[b, c, y, x0 + dx]
                small[b, c, sy, sx] = total


# ---- the two resampling directions, plane by plane ---------------------------------------------------------
@jit(inline="always")
def _resample_plane(src, stride, scale, dst, accumulate, expand, plane, row, step):
    channels = dst.shape[1]
    b, c = plane // channels, plane % channels
    if expand:
        _expand_plane(src, stride, scale, dst, accumulate, b, c, row, step)
    else:
        _block_sum_plane(src, stride, scale, dst, accumulate, b, c)


@functools.cache
def _resample_kernels(expand: bool, step: int) -> tuple[Callable, Callable]:
    """(serial, parallel) resampling in one direction; `expand` and `step` (the expansion's stride when it is
    2, else 0) are closure constants, so inference (upsample forward) does not compile the block sums."""

    @jit
    def serial(src, stride, scale, dst, accumulate):
        row = np.empty(dst.shape[3], np.float32)
        for plane in range(dst.shape[0] * dst.shape[1]):
            _resample_plane(src, stride, scale, dst, accumulate, expand, plane, row, step)

    @jit(parallel=True)
    def parallel(src, stride, scale, dst, accumulate):
        for plane in prange(dst.shape[0] * dst.shape[1]):
            row = np.empty(dst.shape[3], np.float32)
            _resample_plane(src, stride, scale, dst, accumulate, expand, plane, row, step)

    return serial, parallel


def _resample(src, stride, scale, dst, accumulate, expand):
    big = dst if expand else src
    serial, parallel = _resample_kernels(bool(expand), 2 if expand and stride == 2 else 0)
    kernel = parallel if use_threads(big.size, dst.shape[0] * dst.shape[1]) else serial
    kernel(src, stride, scale, dst, accumulate)


def nearest_expand(small: np.ndarray, stride: int, scale: np.float32, big: np.ndarray, accumulate: bool) -> None:
    """big[b, c, y, x] (+)= scale * small[b, c, y // stride, x // stride] over all of big."""
    _resample(small, stride, scale, big, accumulate, True)


def block_sum(big: np.ndarray, stride: int, scale: np.float32, small: np.ndarray, accumulate: bool) -> None:
    """small[b, c, Y, X] (+)= the sum over its stride x stride block of scale * big, added in row-major
    order of big as Darknet does."""
    _resample(big, stride, scale, small, accumulate, False)


# ---- reorg -------------------------------------------------------------------------------------------------
@jit
def _reorg_plane(src, dst, channels, height, width, stride, gather, accumulate, plane):
    """For a = (k, j, i) in the (C, H, W) view and P(a) its position in the (C/s², H·s, W·s) view — the
    permutation of Darknet's reorg_cpu — gather: dst[b, a] (+)= src[b, P(a)]; else dst[b, P(a)] (+)= src[b, a].
    P is a bijection, so different planes never write the same element."""
    b = plane // channels
    k = plane - b * channels
    out_channels = channels // (stride * stride)
    c2 = k % out_channels
    offset = k // out_channels
    base = k * height * width
    for j in range(height):
        h2 = j * stride + offset // stride
        for i in range(width):
            w2 = i * stride + offset % stride
            p = w2 + width * stride * (h2 + height * stride * c2)
            a = base + j * width + i
            if gather:
                if accumulate:
                    dst[b, a] += src[b, p]
                else:
                    dst[b, a] = src[b, p]
            else:
                if accumulate:
                    dst[b, p] += src[b, a]
                else:
                    dst[b, p] = src[b, a]


@jit
def _reorg_serial(src, dst, channels, height, width, stride, gather, accumulate):
    for plane in range(src.shape[0] * channels):
        _reorg_plane(src, dst, channels, height, width, stride, gather, accumulate, plane)


@jit(parallel=True)
def _reorg_parallel(src, dst, channels, height, width, stride, gather, accumulate):
    for plane in prange(src.shape[0] * channels):
        _reorg_plane(src, dst, channels, height, width, stride, gather, accumulate, plane)


def _reorg(src, dst, channels, height, width, stride, gather, accumulate):
    kernel = _reorg_parallel if use_threads(src.size, src.shape[0] * channels) else _reorg_serial
    kernel(src, dst, channels, height, width, stride, gather, accumulate)


def reorg_gather(src: np.ndarray, dst: np.ndarray, channels: int, height: int, width: int, stride: int,
                 accumulate: bool) -> None:
    """dst[b, a] (+)= src[b, P(a)] (non-reverse forward; backward of the reverse reorg). src, dst: (B, N)."""
    _reorg(src, dst, channels, height, width, stride, True, accumulate)


def reorg_scatter(src: np.ndarray, dst: np.ndarray, channels: int, height: int, width: int, stride: int,
                  accumulate: bool) -> None:
    """dst[b, P(a)] (+)= src[b, a] (reverse forward; backward of the non-reverse reorg). src, dst: (B, N)."""
    _reorg(src, dst, channels, height, width, stride, False, accumulate)
