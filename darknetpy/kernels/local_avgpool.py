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
def _each_window(image, pooled, size, stride_y, stride_x, offset, backward):
    """One walk over the windows for both passes, so that they agree on which taps a window has.
    Forward: pooled = the mean of the window's in-image taps of image. Backward (image is dx, pooled is
    dy): each of those taps receives pooled / count."""
    batch, channels, in_h, in_w = image.shape
    for plane in prange(batch * channels):
        b, c = plane // channels, plane % channels
        for i in range(pooled.shape[2]):
            y0, y1 = _span(offset + i * stride_y, size, in_h)
            for j in range(pooled.shape[3]):
                x0, x1 = _span(offset + j * stride_x, size, in_w)
                count = max(y1 - y0, 0) * max(x1 - x0, 0)
                if count == 0:
                    # a window entirely in the padding has no taps: Darknet divides 0 by 0 there
                    if not backward:
                        pooled[b, c, i, j] = np.float32(0.0)
                elif backward:
                    share = pooled[b, c, i, j] / np.float32(count)
                    for r in range(y0, y1):
                        for q in range(x0, x1):
                            image[b, c, r, q] += share
                else:
                    total = np.float32(0.0)
                    for r in range(y0, y1):
                        for q in range(x0, x1):
                            total += image[b, c, r, q]
                    pooled[b, c, i, j] = total / np.float32(count)


def local_avgpool_forward(x: np.ndarray, size: int, stride_y: int, stride_x: int, offset: int,
                          y: np.ndarray) -> None:
    """y = the mean of each window's in-image taps of x."""
    _each_window(x, y, size, stride_y, stride_x, offset, False)


def local_avgpool_backward(dy: np.ndarray, size: int, stride_y: int, stride_x: int, offset: int,
                           dx: np.ndarray) -> None:
    """dx += d(mean over in-image taps)/dx · dy."""
    _each_window(dx, dy, size, stride_y, stride_x, offset, True)
