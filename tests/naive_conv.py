"""Slow, obviously-correct convolution and batch norm written straight from spec §2.1, §4.1, §4.2."""
from __future__ import annotations

import numpy as np


def conv2d(x, weights, biases, stride_y, stride_x, pad, groups=1, dilation=1):
    """x (B, C, H, W), weights (F, C/groups, K, K) -> (B, F, OH, OW), float64 loops."""
    batch, channels, height, width = x.shape
    filters, per_group, k, _ = weights.shape
    extent = dilation * (k - 1) + 1
    out_h = (height + 2 * pad - extent) // stride_y + 1
    out_w = (width + 2 * pad - extent) // stride_x + 1
    out = np.zeros((batch, filters, out_h, out_w))
    fpg = filters // groups
    for b in range(batch):
        for f in range(filters):
            g = f // fpg
            for oy in range(out_h):
                for ox in range(out_w):
                    acc = 0.0
                    for c in range(per_group):
                        for ky in range(k):
                            for kx in range(k):
                                iy = oy * stride_y - pad + ky * dilation
                                ix = ox * stride_x - pad + kx * dilation
                                if 0 <= iy < height and 0 <= ix < width:
                                    acc += weights[f, c, ky, kx] * x[b, g * per_group + c, iy, ix]
                    out[b, f, oy, ox] = acc + biases[f]
    return out


def batchnorm_inference(x, scales, biases, mean, var):
    """(x - mean) / (sqrt(var) + 1e-6) * scale + bias, per channel (epsilon on the std, spec §4.2)."""
    sh = (1, -1, 1, 1)
    return (x - mean.reshape(sh)) / (np.sqrt(var.reshape(sh)) + 1e-6) * scales.reshape(sh) + biases.reshape(sh)


def leaky(x):
    return np.where(x > 0, x, 0.1 * x)
