"""Batch normalisation kernels over (B, C, S) float32 arrays (S = spatial size), spec §4.2.

Darknet normalises with (x - mean) / (sqrt(var) + 1e-6) in both inference and training, but its backward
uses sqrt(var + 1e-5); the training variance is unbiased (N - 1). Both are replicated on purpose.
"""
from __future__ import annotations

import math

import numpy as np
from numba import prange

from . import jit

FORWARD_EPSILON = np.float32(1e-6)   # added to the standard deviation
BACKWARD_EPSILON = np.float32(1e-5)  # added to the variance
ROLLING_KEEP = np.float32(0.99)
ROLLING_NEW = np.float32(0.01)


@jit
def fold_inference(scale, bias, rolling_mean, rolling_var, a, b):
    """a, b such that BN(x) = a*x + b at inference."""
    for c in range(scale.shape[0]):
        a[c] = scale[c] / (np.float32(math.sqrt(rolling_var[c])) + FORWARD_EPSILON)
        b[c] = bias[c] - rolling_mean[c] * a[c]


@jit(parallel=True)
def train_forward(y, scale, bias, rolling_mean, rolling_var, mean, var, x_saved, x_norm):
    """In place on y (B, C, S): keep x, batch statistics, rolling update, normalise, scale, shift."""
    batch, channels, spatial = y.shape
    count = batch * spatial
    for c in prange(channels):
        total = np.float32(0.0)
        for n in range(batch):
            for s in range(spatial):
                total += y[n, c, s]
        m = total * np.float32(1.0 / count)
        sq = np.float32(0.0)
        for n in range(batch):
            for s in range(spatial):
                d = np.float64(y[n, c, s] - m)
                sq += np.float32(d * d)
        v = sq * np.float32(1.0 / (count - 1)) if count > 1 else np.float32(0.0)
        mean[c] = m
        var[c] = v
        rolling_mean[c] = ROLLING_KEEP * rolling_mean[c] + ROLLING_NEW * m
        rolling_var[c] = ROLLING_KEEP * rolling_var[c] + ROLLING_NEW * v
        inv = np.float32(1.0) / (np.float32(math.sqrt(v)) + FORWARD_EPSILON)
        for n in range(batch):
            for s in range(spatial):
                x = y[n, c, s]
                x_saved[n, c, s] = x
                xn = (x - m) * inv
                x_norm[n, c, s] = xn
                y[n, c, s] = xn * scale[c] + bias[c]


@jit(parallel=True)
def train_backward(dy, x_saved, mean, var, scale, grad_scale, grad_bias):
    """In place: dy (dL/d output of BN) becomes dL/d input of BN, following Darknet's backward formulas
    (with the standard gradient sign). Accumulates grad_scale and grad_bias."""
    batch, channels, spatial = dy.shape
    count = batch * spatial
    for c in prange(channels):
        inv_std_fwd = np.float32(1.0) / (np.float32(math.sqrt(var[c])) + FORWARD_EPSILON)
        sum_dy = np.float32(0.0)
        sum_dy_xn = np.float32(0.0)
        for n in range(batch):
            for s in range(spatial):
                g = dy[n, c, s]
                sum_dy += g
                sum_dy_xn += g * (x_saved[n, c, s] - mean[c]) * inv_std_fwd
        grad_bias[c] += sum_dy
        grad_scale[c] += sum_dy_xn
        denom = var[c] + BACKWARD_EPSILON
        inv_std = np.float32(1.0 / math.sqrt(denom))
        mean_delta = np.float32(0.0)
        var_delta = np.float32(0.0)
        for n in range(batch):
            for s in range(spatial):
                g = dy[n, c, s] * scale[c]
                dy[n, c, s] = g
                mean_delta += g
                var_delta += g * (x_saved[n, c, s] - mean[c])
        mean_delta = -mean_delta * inv_std
        var_delta = var_delta * np.float32(-0.5 * math.pow(denom, -1.5))
        for n in range(batch):
            for s in range(spatial):
                dy[n, c, s] = (dy[n, c, s] * inv_std
                               + var_delta * np.float32(2.0) * (x_saved[n, c, s] - mean[c]) / np.float32(count)
                               + mean_delta / np.float32(count))


@jit(parallel=True)
def affine_channels(y, a, b):
    """y[n, c, :] = a[c] * y[n, c, :] + b[c] in place."""
    batch, channels, spatial = y.shape
    for nc in prange(batch * channels):
        n = nc // channels
        c = nc - n * channels
        for s in range(spatial):
            y[n, c, s] = y[n, c, s] * a[c] + b[c]


@jit
def channel_sums(dy, out):
    """out[c] += sum over batch and space of dy[:, c, :] (bias gradients)."""
    batch, channels, spatial = dy.shape
    for n in range(batch):
        for c in range(channels):
            t = np.float32(0.0)
            for s in range(spatial):
                t += dy[n, c, s]
            out[c] += t
