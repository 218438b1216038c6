"""Geometry of segmentation masks: (H, W) uint8 class-index maps that follow their image through resizing,
sampled by nearest neighbour (a class index cannot be interpolated), and per-pixel class decisions.

Positions map exactly as in the image kernels; where the image reads bilinear weights of the pixels around
(sx, sy), the mask takes the pixel nearest to it, floor(s + 0.5). The rotate-crop of a mask lives beside
the image's in kernels/augment.py, so that both read one source-position function.
"""
from __future__ import annotations

import math

import numpy as np

from . import jit


@jit
def resize_region_nearest(src, x0, y0, region_w, region_h, dst):
    """The region (x0, y0, region_w, region_h) of src resized into dst with the align-corners positions of
    Darknet's resize_image (output i reads i·(region-1)/(out-1)), nearest pixel."""
    out_h, out_w = dst.shape
    x_step = np.float32(region_w - 1) / np.float32(out_w - 1) if out_w > 1 else np.float32(0.0)
    y_step = np.float32(region_h - 1) / np.float32(out_h - 1) if out_h > 1 else np.float32(0.0)
    for y in range(out_h):
        sy = int(math.floor(np.float32(y) * y_step + np.float32(0.5)))
        for x in range(out_w):
            sx = int(math.floor(np.float32(x) * x_step + np.float32(0.5)))
            dst[y, x] = src[y0 + min(sy, region_h - 1), x0 + min(sx, region_w - 1)]


@jit
def argmax_channels(p, out):
    """out[k] = the channel of p (C, N) with the largest value at k, the lowest channel on ties (as
    numpy's argmax), along contiguous rows."""
    channels, n = p.shape
    best = np.empty(n, np.float32)
    for k in range(n):
        best[k] = p[0, k]
        out[k] = 0
    for c in range(1, channels):
        for k in range(n):
            if p[c, k] > best[k]:
                best[k] = p[c, k]
                out[k] = c
