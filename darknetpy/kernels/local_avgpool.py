"""Windowed average pooling ([local_avgpool], AlexeyAB) over (B, C, H, W) float32 arrays.

Geometry as AlexeyAB's maxpool family: window origin at `offset` (C-truncated -padding/2), strides per
axis. Each output is the mean of the window's taps that fall inside the image (the divisor is that count,
not size*size), so border outputs are not darkened by the padding.

The backward pass is the exact derivative of that forward pass: every in-image tap receives dy / count.
AlexeyAB's CPU backward divides by size*size instead, which is not the gradient of its own forward at
the borders (the same numbers in the interior).
"""
from __future__ import annotations

import numpy as np
from numba import prange

from . import jit


@jit(inline="always")
def _span(origin, size, extent):
    """The part [lo, hi) of a window [origin, origin + size) that lies inside an axis of `extent`."""
    return max(origin, 0), min(origin + size, extent)


@jit(parallel=True)
def local_avgpool_forward(x, size, stride_y, stride_x, offset, y):
    batch, channels, in_h, in_w = x.shape
    out_h, out_w = y.shape[2], y.shape[3]
    for plane in prange(batch * channels):
        b = plane // channels
        c = plane % channels
        for i in range(out_h):
            y0, y1 = _span(offset + i * stride_y, size, in_h)
            for j in range(out_w):
                x0, x1 = _span(offset + j * stride_x, size, in_w)
                total = np.float32(0.0)
                count = 0
                for r in range(y0, y1):
                    for q in range(x0, x1):
                        total += x[b, c, r, q]
                        count += 1
                # a window entirely in the padding has no taps: Darknet divides 0 by 0 there
                y[b, c, i, j] = total / np.float32(count) if count > 0 else np.float32(0.0)


# The window walk above is repeated rather than shared with a pass flag: one kernel for both passes
# measured ~15% slower in both directions.
@jit(parallel=True)
def local_avgpool_backward(dy, size, stride_y, stride_x, offset, dx):
    """dx += d(mean over in-image taps)/dx · dy."""
    batch, channels, in_h, in_w = dx.shape
    out_h, out_w = dy.shape[2], dy.shape[3]
    for plane in prange(batch * channels):
        b = plane // channels
        c = plane % channels
        for i in range(out_h):
            y0, y1 = _span(offset + i * stride_y, size, in_h)
            for j in range(out_w):
                x0, x1 = _span(offset + j * stride_x, size, in_w)
                if y1 <= y0 or x1 <= x0:
                    continue
                share = dy[b, c, i, j] / np.float32((y1 - y0) * (x1 - x0))
                for r in range(y0, y1):
                    for q in range(x0, x1):
                        dx[b, c, r, q] += share
