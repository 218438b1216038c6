"""Slow references for [route] and [shortcut] written straight from spec §2.8–2.9 and AlexeyAB's groups."""
from __future__ import annotations

import numpy as np


def route(xs, groups=1, group_id=0):
    """Per batch item: concatenate, in list order, slice `group_id` of `groups` equal contiguous slices of
    each input's flattened output. Returns (B, N)."""
    batch = xs[0].shape[0]
    rows = []
    for b in range(batch):
        parts = []
        for x in xs:
            flat = x[b].reshape(-1)
            part = flat.size // groups
            parts.append(flat[group_id * part:(group_id + 1) * part])
        rows.append(np.concatenate(parts))
    return np.stack(rows)


def shortcut(prev, add, alpha, beta):
    """out = prev; out[k, j*sample, i*sample] = alpha*prev + beta*add[k, j*stride, i*stride] over the
    common channels/rows/columns (before the activation). float64."""
    out = prev.astype(np.float64).copy()
    _, c2, h2, w2 = prev.shape
    _, c1, h1, w1 = add.shape
    stride = max(w1 // w2, 1)
    sample = max(w2 // w1, 1)
    for b in range(prev.shape[0]):
        for k in range(min(c1, c2)):
            for j in range(min(h1, h2)):
                for i in range(min(w1, w2)):
                    o = (b, k, j * sample, i * sample)
                    out[o] = alpha * out[o] + beta * float(add[b, k, j * stride, i * stride])
    return out


def leaky(x):
    return np.where(x > 0, x, 0.1 * x)
