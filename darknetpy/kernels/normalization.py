"""Local response normalisation ([normalization], spec §2.19) and [l2norm] (spec §2.18) over (B, C, S) float32.

LRN follows Darknet's running-window recurrence literally (it is *not* the textbook window: the first sum
stops one channel short, so some channels are subtracted without ever having been added). The recurrence
is linear in the squares, so norm_k = kappa + alpha * sum_j coef[k, j] * x_j^2 with integer coefficients;
the backward uses those coefficients, given as a sparse (row, col, value) list, for the true gradient.
"""
from __future__ import annotations

import math

import numpy as np
from numba import prange

from . import jit


def lrn_coefficients(channels: int, size: int) -> np.ndarray:
    """coef[k, j]: how often channel j's square is counted in norm_k by Darknet's recurrence."""
    coef = np.zeros((channels, channels), np.int64)
    for j in range(min(size // 2, channels)):
        coef[0, j] += 1
    for k in range(1, channels):
        coef[k] = coef[k - 1]
        prev = k - (size - 1) // 2 - 1
        nxt = k + size // 2
        if prev >= 0:
            coef[k, prev] -= 1
        if nxt < channels:
            coef[k, nxt] += 1
    return coef


@jit(parallel=True)
def lrn_forward(x, size, alpha, beta, kappa, squared, norms, y):
    """norms and y (B, C, S) from x; alpha, beta, kappa float32; squared is scratch of x's shape."""
    batch, channels, spatial = x.shape
    half = size // 2
    back = (size - 1) // 2 + 1
    exponent = -np.float64(beta)
    for b in prange(batch):
        for c in range(channels):
            for s in range(spatial):
                squared[b, c, s] = x[b, c, s] * x[b, c, s]
        for s in range(spatial):
            norms[b, 0, s] = kappa
        for k in range(half):
            for s in range(spatial):
                norms[b, 0, s] += alpha * squared[b, k, s]
        for k in range(1, channels):
            prev = k - back
            nxt = k + half
            for s in range(spatial):
                norms[b, k, s] = norms[b, k - 1, s]
            if prev >= 0:
                for s in range(spatial):
                    norms[b, k, s] += -alpha * squared[b, prev, s]
            if nxt < channels:
                for s in range(spatial):
                    norms[b, k, s] += alpha * squared[b, nxt, s]
        for c in range(channels):
            for s in range(spatial):
                y[b, c, s] = np.float32(math.pow(np.float64(norms[b, c, s]), exponent)) * x[b, c, s]


@jit(parallel=True)
def lrn_backward(dy, x, y, norms, alpha, beta, coef_rows, coef_cols, coef_vals, dx):
    """dx += dL/dx of y_k = x_k * norm_k^-beta, norm_k = kappa + alpha * sum_j coef[k, j] x_j^2.

    dL/dx_j = dy_j norm_j^-beta + 2 alpha x_j sum_k coef[k, j] (-beta) dy_k y_k / norm_k.
    """
    batch, channels, spatial = dy.shape
    exponent = -np.float64(beta)
    scale = -2.0 * np.float64(alpha) * np.float64(beta)
    nnz = coef_rows.shape[0]
    for b in prange(batch):
        for s in range(spatial):
            for j in range(channels):
                dx[b, j, s] += np.float32(np.float64(dy[b, j, s]) * math.pow(np.float64(norms[b, j, s]), exponent))
            for e in range(nnz):
                k = coef_rows[e]
                j = coef_cols[e]
                g = np.float64(dy[b, k, s]) * np.float64(y[b, k, s]) / np.float64(norms[b, k, s])
                dx[b, j, s] += np.float32(scale * coef_vals[e] * g * np.float64(x[b, j, s]))


@jit(parallel=True)
def l2norm_forward(x, y, norms):
    """y[b, :, s] = x[b, :, s] / sqrtf(sum_c x^2) (no epsilon, as Darknet); norms (B, S) kept for backward."""
    batch, channels, spatial = x.shape
    for b in prange(batch):
        for s in range(spatial):
            total = np.float32(0.0)
            for c in range(channels):
                total += x[b, c, s] * x[b, c, s]
            norm = np.float32(math.sqrt(total))
            norms[b, s] = norm
            for c in range(channels):
                y[b, c, s] = x[b, c, s] / norm


@jit(parallel=True)
def l2norm_backward(dy, y, norms, dx):
    """dx += (dy - y (y . dy)) / |x|, the true gradient of y = x / |x| per pixel."""
    batch, channels, spatial = dy.shape
    for b in prange(batch):
        for s in range(spatial):
            dot = 0.0
            for c in range(channels):
                dot += np.float64(y[b, c, s]) * np.float64(dy[b, c, s])
            inv = 1.0 / np.float64(norms[b, s])
            for c in range(channels):
                dx[b, c, s] += np.float32((np.float64(dy[b, c, s]) - np.float64(y[b, c, s]) * dot) * inv)
