"""Detection-augmentation resampling: an axis-aligned scale and shift of a planar float32 image onto a
canvas (Darknet's place_image for pjreddie's jitter, AlexeyAB's crop-and-resize, letterboxing).

Coordinates are continuous with pixel i covering [i, i + 1): canvas position X shows source position
(X − offset) / scale. Each canvas pixel reads its centre (X + ½) that way, bilinear between source pixel
centres (clamped at the edges, so a shrunken image keeps its border colour), and takes `fill` where that
source position lies outside the image. Because boxes move with the same formula (box edge e → scale·e +
offset), a box stays on its object to a fraction of a pixel.
"""
from __future__ import annotations

import math

import numpy as np

from darknetpy.kernels import jit


@jit
def _source_taps(count, scale, offset, size, lower, frac, inside):
    """Per canvas row or column: the lower source pixel, the weight of the upper one, and whether the
    centre falls on the image."""
    for i in range(count):
        position = (i + 0.5 - offset) / scale
        inside[i] = 0.0 <= position < size
        centre = min(max(position - 0.5, 0.0), size - 1.0)
        low = min(int(math.floor(centre)), size - 1)
        lower[i] = low
        frac[i] = np.float32(centre - low)


@jit
def place(src, scale_x, offset_x, scale_y, offset_y, fill, flip, dst):
    """dst[c, Y, X] = bilinear(src, ((X + ½ − offset_x)/scale_x, (Y + ½ − offset_y)/scale_y)), or
    fill[c] where that point is off the image; with `flip` the row is written mirrored (X → w − 1 − X)."""
    channels, height, width = src.shape
    out_h = dst.shape[1]
    out_w = dst.shape[2]
    col_low = np.empty(out_w, np.int64)
    col_frac = np.empty(out_w, np.float32)
    col_in = np.empty(out_w, np.bool_)
    row_low = np.empty(out_h, np.int64)
    row_frac = np.empty(out_h, np.float32)
    row_in = np.empty(out_h, np.bool_)
    _source_taps(out_w, scale_x, offset_x, width, col_low, col_frac, col_in)
    _source_taps(out_h, scale_y, offset_y, height, row_low, row_frac, row_in)
    one = np.float32(1.0)
    for c in range(channels):
        for y in range(out_h):
            if not row_in[y]:
                for x in range(out_w):
                    dst[c, y, x] = fill[c]
                continue
            top = row_low[y]
            bottom = min(top + 1, height - 1)
            fy = row_frac[y]
            for x in range(out_w):
                target = out_w - 1 - x if flip else x
                if not col_in[x]:
                    dst[c, y, target] = fill[c]
                    continue
                left = col_low[x]
                right = min(left + 1, width - 1)
                fx = col_frac[x]
                upper = (one - fx) * src[c, top, left] + fx * src[c, top, right]
                lower = (one - fx) * src[c, bottom, left] + fx * src[c, bottom, right]
                dst[c, y, target] = (one - fy) * upper + fy * lower
