"""Slow reference for [deconvolutional] (spec §2.2): every input pixel scatters its weighted kernel."""
from __future__ import annotations

import numpy as np


def deconv2d(x, weights, biases, stride, pad):
    """x (B, C, H, W), weights (C, F, K, K) -> (B, F, (H-1)*stride + K - 2*pad, ...), no kernel flip."""
    batch, channels, height, width = x.shape
    _, filters, k, _ = weights.shape
    out_h = (height - 1) * stride + k - 2 * pad
    out_w = (width - 1) * stride + k - 2 * pad
    out = np.zeros((batch, filters, out_h, out_w))
    for b in range(batch):
        for i in range(channels):
            for y in range(height):
                for xx in range(width):
                    for o in range(filters):
                        for ky in range(k):
                            for kx in range(k):
                                oy = y * stride + ky - pad
                                ox = xx * stride + kx - pad
                                if 0 <= oy < out_h and 0 <= ox < out_w:
                                    out[b, o, oy, ox] += float(weights[i, o, ky, kx]) * float(x[b, i, y, xx])
    return out + np.asarray(biases, np.float64).reshape(1, -1, 1, 1)
