"""Slow references for [connected] (spec §2.3, §4.3) and its batch norm (§4.2), in float64."""
from __future__ import annotations

import numpy as np


def connected(x, weights, biases):
    """y[b, o] = sum_i W[o, i] x[b, i] + bias[o], x flattened CHW per batch item."""
    flat = x.reshape(x.shape[0], -1).astype(np.float64)
    out = np.zeros((flat.shape[0], weights.shape[0]))
    for b in range(flat.shape[0]):
        for o in range(weights.shape[0]):
            out[b, o] = sum(float(weights[o, i]) * flat[b, i] for i in range(flat.shape[1])) + biases[o]
    return out


def batchnorm_train(z, scales, biases):
    """Batch statistics per unit over the batch: unbiased variance, epsilon added to the std."""
    mean = z.mean(axis=0)
    var = ((z - mean) ** 2).sum(axis=0) / (z.shape[0] - 1)
    return (z - mean) / (np.sqrt(var) + 1e-6) * scales + biases, mean, var


def batchnorm_inference(z, scales, biases, mean, var):
    return (z - mean) / (np.sqrt(var) + 1e-6) * scales + biases
