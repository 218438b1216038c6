"""Slow reference for [local], the unshared convolution of spec §2.15, in float64 loops."""
from __future__ import annotations

import numpy as np


def local(x, weights, biases, size, stride, pad):
    """weights (L, F, C*size*size) in (c, ky, kx) order, biases (F, OH, OW); zero padding of `pad` pixels."""
    batch, channels, height, width = x.shape
    filters, out_h, out_w = biases.shape
    out = np.zeros((batch, filters, out_h, out_w))
    for b in range(batch):
        for oy in range(out_h):
            for ox in range(out_w):
                loc = oy * out_w + ox
                for f in range(filters):
                    acc = float(biases[f, oy, ox])
                    for c in range(channels):
                        for ky in range(size):
                            for kx in range(size):
                                iy = oy * stride - pad + ky
                                ix = ox * stride - pad + kx
                                if 0 <= iy < height and 0 <= ix < width:
                                    k = (c * size + ky) * size + kx
                                    acc += float(weights[loc, f, k]) * float(x[b, c, iy, ix])
                    out[b, f, oy, ox] = acc
    return out
