"""Slow references for [upsample] and [reorg] written straight from spec §2.10–2.11."""
from __future__ import annotations

import numpy as np


def upsample(x, stride, scale):
    batch, channels, height, width = x.shape
    out = np.empty((batch, channels, height * stride, width * stride))
    for b in range(batch):
        for c in range(channels):
            for y in range(height * stride):
                for xx in range(width * stride):
                    out[b, c, y, xx] = scale * x[b, c, y // stride, xx // stride]
    return out


def downsample(x, stride, scale):
    """stride > 0 here: each output is scale times the sum (not mean) of its stride x stride block."""
    batch, channels, height, width = x.shape
    out = np.zeros((batch, channels, height // stride, width // stride))
    for b in range(batch):
        for c in range(channels):
            for y in range(height // stride):
                for xx in range(width // stride):
                    block = x[b, c, y * stride:(y + 1) * stride, xx * stride:(xx + 1) * stride]
                    out[b, c, y, xx] = scale * float(np.sum(block, dtype=np.float64))
    return out


def reorg(x, stride):
    """The spec's literal rule for one batch item x (C, H, W): read the flat input as X[oc][H*s][W*s],
    write O[k][j][i] = X[k mod oc][j*s + (k div oc) div s][i*s + (k div oc) mod s]; return O flat."""
    channels, height, width = x.shape
    s = stride
    oc = channels // (s * s)
    big = x.reshape(oc, height * s, width * s)
    out = np.empty((channels, height, width), x.dtype)
    for k in range(channels):
        for j in range(height):
            for i in range(width):
                q = k // oc
                out[k, j, i] = big[k % oc, j * s + q // s, i * s + q % s]
    return out.reshape(-1)


def reorg_reverse(x, stride):
    """The inverse mapping of `reorg` for the same (C, H, W) view: element O[k][j][i] of the input goes
    to X[k mod oc][j*s + (k div oc) div s][i*s + (k div oc) mod s] of the output; return it flat."""
    channels, height, width = x.shape
    s = stride
    oc = channels // (s * s)
    big = np.empty((oc, height * s, width * s), x.dtype)
    for k in range(channels):
        for j in range(height):
            for i in range(width):
                q = k // oc
                big[k % oc, j * s + q // s, i * s + q % s] = x[k, j, i]
    return big.reshape(-1)


def flatten(x, reverse):
    """(C, H*W) <-> (H*W, C) transpose of one batch item, returned flat."""
    channels, height, width = x.shape
    flat = x.reshape(-1)
    out = np.empty_like(flat)
    spatial = height * width
    for c in range(channels):
        for i in range(spatial):
            if reverse:
                out[c * spatial + i] = flat[i * channels + c]
            else:
                out[i * channels + c] = flat[c * spatial + i]
    return out
