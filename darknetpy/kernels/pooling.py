"""Max and (global) average pooling over (B, C, H, W) float32 arrays, spec §2.4–2.5.

Max pooling keeps Darknet's geometry: the window origin is shifted by `offset` (C-truncated
-padding/2, so padding 1 puts all padding on the right/bottom), taps outside the image read -FLT_MAX,
and the first strict maximum in row-then-column order wins. The winner's position inside its plane
(y*W + x) is stored for the backward pass; -1 means no tap beat -FLT_MAX (all taps outside the image,
or NaN), and such outputs pass no gradient.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from . import jit

NEG_FLT_MAX = np.float32(-3.4028234663852886e38)


# Below this many elements starting the thread team costs more than the work (memory-bound loops).
PARALLEL_MIN_ELEMENTS = 1 << 14


def use_threads(elements: int, planes: int) -> bool:
    return elements >= PARALLEL_MIN_ELEMENTS and planes > 1 and numba.get_num_threads() > 1


@jit
def _maxpool_plane(x, b, c, size, stride_y, stride_x, offset, out, argmax):
    height, width = x.shape[2], x.shape[3]
    out_h, out_w = out.shape[2], out.shape[3]
    for oy in range(out_h):
        top = offset + oy * stride_y
        for ox in range(out_w):
            left = offset + ox * stride_x
            best = NEG_FLT_MAX
            best_index = -1
            for ky in range(size):
                iy = top + ky
                if iy < 0 or iy >= height:
                    continue  # -FLT_MAX never beats the running maximum, which starts there
                for kx in range(size):
                    ix = left + kx
                    if ix < 0 or ix >= width:
                        continue
                    v = x[b, c, iy, ix]
                    if v > best:
                        best = v
                        best_index = iy * width + ix
            out[b, c, oy, ox] = best
            argmax[b, c, oy, ox] = best_index


@jit
def _maxpool_forward_serial(x, size, stride_y, stride_x, offset, out, argmax):
    channels = x.shape[1]
    for plane in range(x.shape[0] * channels):
        _maxpool_plane(x, plane // channels, plane % channels, size, stride_y, stride_x, offset, out, argmax)


@jit(parallel=True)
def _maxpool_forward_parallel(x, size, stride_y, stride_x, offset, out, argmax):
    channels = x.shape[1]
    for plane in prange(x.shape[0] * channels):
        _maxpool_plane(x, plane // channels, plane % channels, size, stride_y, stride_x, offset, out, argmax)


def maxpool_forward(x: np.ndarray, size: int, stride_y: int, stride_x: int, offset: int, out: np.ndarray,
                    argmax: np.ndarray) -> None:
    """out[b, c, oy, ox] = max over the size x size window at (offset + oy*stride_y, offset + ox*stride_x);
    argmax (int32, shaped like out) receives the winning in-plane index or -1."""
    kernel = _maxpool_forward_parallel if use_threads(x.size, x.shape[0] * x.shape[1]) \
        else _maxpool_forward_serial
    kernel(x, size, stride_y, stride_x, offset, out, argmax)


@jit
def _maxpool_backward_plane(dy, argmax, dx, b, c):
    width = dx.shape[3]
    for oy in range(dy.shape[2]):
        for ox in range(dy.shape[3]):
            index = argmax[b, c, oy, ox]
            if index >= 0:
                iy = index // width
                dx[b, c, iy, index - iy * width] += dy[b, c, oy, ox]


@jit
def _maxpool_backward_serial(dy, argmax, dx):
    channels = dy.shape[1]
    for plane in range(dy.shape[0] * channels):
        _maxpool_backward_plane(dy, argmax, dx, plane // channels, plane % channels)


@jit(parallel=True)
def _maxpool_backward_parallel(dy, argmax, dx):
    channels = dy.shape[1]
    for plane in prange(dy.shape[0] * channels):
        _maxpool_backward_plane(dy, argmax, dx, plane // channels, plane % channels)


def maxpool_backward(dy: np.ndarray, argmax: np.ndarray, dx: np.ndarray) -> None:
    """dx[b, c, winner] += dy[b, c, oy, ox] for every output with a winner."""
    kernel = _maxpool_backward_parallel if use_threads(dx.size, dx.shape[0] * dx.shape[1]) \
        else _maxpool_backward_serial
    kernel(dy, argmax, dx)


@jit
def avgpool_forward(x, out):
    """out[b, c, 0, 0] = (sequential float32 sum of the plane) / (H*W), as Darknet computes it."""
    batch, channels, height, width = x.shape
    count = np.float32(height * width)
    for b in range(batch):
        for c in range(channels):
            total = np.float32(0.0)
            for y in range(height):
                for xx in range(width):
                    total += x[b, c, y, xx]
            out[b, c, 0, 0] = total / count


@jit
def avgpool_backward(dy, dx):
    """dx[b, c, :, :] += dy[b, c, 0, 0] / (H*W)."""
    batch, channels, height, width = dx.shape
    count = np.float32(height * width)
    for b in range(batch):
        for c in range(channels):
            share = dy[b, c, 0, 0] / count
            for y in range(height):
                for xx in range(width):
                    dx[b, c, y, xx] += share
