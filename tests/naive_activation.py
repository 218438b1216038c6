"""Element-wise activations written from spec §3 (and AlexeyAB's mish/swish definitions), float64."""
from __future__ import annotations

import numpy as np

FORMULAS = {
    "linear": lambda x: x,
    "logistic": lambda x: 1 / (1 + np.exp(-x)),
    "relu": lambda x: np.where(x > 0, x, 0.0),
    "leaky": lambda x: np.where(x > 0, x, 0.1 * x),
    "tanh": np.tanh,
    "elu": lambda x: np.where(x >= 0, x, np.exp(x) - 1),
    "mish": lambda x: x * np.tanh(np.log1p(np.exp(x))),
    "swish": lambda x: x / (1 + np.exp(-x)),
}


def activate(name, x):
    return FORMULAS[name](np.asarray(x, np.float64))
