"""Slow references for [normalization] (Darknet's LRN recurrence, spec §2.19) and [l2norm] (§2.18)."""
from __future__ import annotations

import numpy as np


def lrn_norms(x, size, alpha, kappa):
    """norm per (b, c, y, x) by the spec's recurrence, written out index by index in float64."""
    batch, channels = x.shape[:2]
    s = x.astype(np.float64) ** 2
    norms = np.zeros_like(s)
    for b in range(batch):
        norms[b, 0] = kappa
        for j in range(size // 2):
            norms[b, 0] += alpha * s[b, j]
        for k in range(1, channels):
            norms[b, k] = norms[b, k - 1]
            prev = k - (size - 1) // 2 - 1
            nxt = k + size // 2
            if prev >= 0:
                norms[b, k] -= alpha * s[b, prev]
            if nxt < channels:
                norms[b, k] += alpha * s[b, nxt]
    return norms


def lrn(x, size, alpha, beta, kappa):
    return x.astype(np.float64) * lrn_norms(x, size, alpha, kappa) ** (-beta)


def l2norm(x):
    x = x.astype(np.float64)
    out = np.empty_like(x)
    for b in range(x.shape[0]):
        for i in range(x.shape[2]):
            for j in range(x.shape[3]):
                v = x[b, :, i, j]
                out[b, :, i, j] = v / np.sqrt(np.sum(v * v))
    return out
