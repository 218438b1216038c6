"""Slow references for [softmax], [cost] and [logistic] (spec §2.6, §2.13, §2.17), in float64."""
from __future__ import annotations

import math

import numpy as np


def softmax_groups(x, groups, temperature=1.0):
    """Softmax of each of `groups` contiguous chunks of every flattened batch item."""
    flat = x.reshape(x.shape[0], -1).astype(np.float64)
    out = np.empty_like(flat)
    size = flat.shape[1] // groups
    for b in range(flat.shape[0]):
        for g in range(groups):
            chunk = flat[b, g * size:(g + 1) * size] / temperature
            e = np.array([math.exp(v - chunk.max()) for v in chunk])
            out[b, g * size:(g + 1) * size] = e / e.sum()
    return out


def softmax_cost(p, truth):
    """Darknet's softmax loss: -log(p) wherever truth != 0, whatever the truth value."""
    return sum(-math.log(pv) for pv, tv in zip(p.ravel(), truth.ravel()) if tv != 0)


def logistic(x):
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def logistic_cost(p, t):
    p = p.astype(np.float64)
    return float(np.sum(-t * np.log(p) - (1 - t) * np.log(1 - p)))


def cost_error(kind, pred, truth):
    """Per-element error of a [cost] layer with d = truth - pred."""
    d = truth.astype(np.float64) - pred
    if kind == "L1":
        return np.abs(d)
    if kind == "smooth":
        return np.where(np.abs(d) < 1, d * d, 2 * np.abs(d) - 1)
    if kind == "masked":
        return np.where(truth == -1234, 0.0, d * d)
    return d * d
