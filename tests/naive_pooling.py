"""Slow, obviously-correct pooling written straight from spec §2.4–2.5 (float64 where it sums)."""
from __future__ import annotations

import numpy as np

FLT_MAX = float(np.finfo(np.float32).max)


def c_trunc_div(a: int, b: int) -> int:
    """C integer division: truncation toward zero."""
    return int(a / b)


def maxpool(x, size, stride_y, stride_x, padding):
    """Darknet max pooling -> (out, winner) where winner holds the in-plane index y*W + x of the first
    strict maximum in row-then-column order, or -1."""
    batch, channels, height, width = x.shape
    out_h = c_trunc_div(height + padding - size, stride_y) + 1
    out_w = c_trunc_div(width + padding - size, stride_x) + 1
    offset = c_trunc_div(-padding, 2)
    out = np.empty((batch, channels, out_h, out_w), np.float32)
    winner = np.full(out.shape, -1)
    for b in range(batch):
        for c in range(channels):
            for oy in range(out_h):
                for ox in range(out_w):
                    best, best_index = -FLT_MAX, -1
                    for ky in range(size):
                        for kx in range(size):
                            iy = offset + oy * stride_y + ky
                            ix = offset + ox * stride_x + kx
                            inside = 0 <= iy < height and 0 <= ix < width
                            value = x[b, c, iy, ix] if inside else -FLT_MAX
                            if value > best:
                                best, best_index = value, iy * width + ix
                    out[b, c, oy, ox] = best
                    winner[b, c, oy, ox] = best_index
    return out, winner


def global_average(x):
    """(B, C, H, W) -> (B, C, 1, 1): the mean of every channel."""
    batch, channels, height, width = x.shape
    out = np.empty((batch, channels, 1, 1))
    for b in range(batch):
        for c in range(channels):
            out[b, c, 0, 0] = sum(float(v) for v in x[b, c].ravel()) / (height * width)
    return out
