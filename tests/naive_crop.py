"""Slow reference for [crop] (spec §2.14): the index arithmetic of Darknet's forward, element by element."""
from __future__ import annotations

import numpy as np


def crop(x, crop_h, crop_w, dh, dw, flip, noadjust=False):
    batch, channels, height, width = x.shape
    scale, shift = (1.0, 0.0) if noadjust else (2.0, -1.0)
    out = np.zeros((batch, channels, crop_h, crop_w))
    for b in range(batch):
        for c in range(channels):
            for i in range(crop_h):
                for j in range(crop_w):
                    col = width - dw - j - 1 if flip else j + dw
                    out[b, c, i, j] = float(x[b, c, i + dh, col]) * scale + shift
    return out
