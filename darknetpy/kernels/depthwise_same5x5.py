"""Depthwise 5x5 convolution at stride 1 with padding 2, output the size of the input (the 5x5 layers of
Yolo-Fastest, MobileNetV3 and EfficientNet), straight from the image with explicit vectors (kernels/simd.py),
on the pattern of kernels/depthwise_same3x3.py.

Output i of a flat H x W plane reads the image at i + dy*W + dx for dy, dx in -2..2: LANES outputs take 25
unaligned vector loads and multiply-adds, kept as five partial sums by column offset dx. In a flat range the
taps of offsets -2 and -1 wrap into the row above in the first two columns, those of +1 and +2 into the row
below in the last two, so four column masks (W + LANES floats each, repeating with the row) drop those partial
sums by a select. One long loop runs over rows 2 .. H-3 as one flat range and one over each of the two top
and two bottom rows (with the rows above or below that exist); the ranges start two pixels inside and stop
two short, so no load leaves the plane, and the 20 pixels they leave out take a bounded scalar sum. Small
planes (outputs up to 16x16) go channels-last instead (layers/conv_engines.py): there those 20 pixels are a
fifth of the plane.

Shapes: x (B, C, H, W) C-contiguous with H, W >= 5; weights (C, 1, 5, 5); bias (C,); out as flat planes:
(B, C, H*W), or (C, B, H*W) for the training's channel-major product.
"""
from __future__ import annotations

import functools

import numpy as np

from . import jit
from .depthwise_same3x3 import add_taps, bounded_pixel, is_same_size_depthwise, next_column, plane_place
from .handoff import finish_share, share_out_when_it_pays, start_share
from .simd import LANES, add, keep_where, load, splat, store_outputs

# As the 3x3 kernel's (kernels/depthwise_same3x3.py): shared out among the awake helper threads from 1M
# multiply-adds.
PARALLEL_MIN_MACS = 1 << 20


# Whether a convolution of this shape runs here (given C-contiguous images and flat output planes).
suits = functools.partial(is_same_size_depthwise, 5)


@functools.lru_cache(maxsize=32)
def column_masks(width: int) -> np.ndarray:
    """(4, width + LANES): 1 where flat position k of a plane `width` wide has a column at offset -2, -1, +1, +2
    inside the plane, else 0 (a vector starting in column c reads them from c)."""
    column = np.arange(width + LANES) % width
    masks = np.stack([(column + offset >= 0) & (column + offset < width) for offset in (-2, -1, 1, 2)])
    masks = masks.astype(np.float32)
    masks.flags.writeable = False
    return masks


@jit(inline="always")
def _flat_range(xf, image, width, w, bias, leaky_out, dy_lo, dy_hi, start, stop, masks, of, target):
    """Outputs start..stop-1 of the plane at xf[image] into of[target], from image rows dy_lo..dy_hi around
    each output's; the partial sums of offsets -2, -1, +1, +2 kept where the column masks say so."""
    zero = splat(0.0)
    bias_lanes = splat(bias)
    column = start % width
    for i in range(start, stop, LANES):
        count = min(LANES, stop - i)
        left2, left1, centre, right1, right2 = zero, zero, bias_lanes, zero, zero
        for dy in range(dy_lo, dy_hi + 1):
            at = image + i + dy * width
            row = w[dy + 2]
            left2 = add_taps(xf, at - 2, count, splat(row[0]), left2)
            left1 = add_taps(xf, at - 1, count, splat(row[1]), left1)
            centre = add_taps(xf, at, count, splat(row[2]), centre)
            right1 = add_taps(xf, at + 1, count, splat(row[3]), right1)
            right2 = add_taps(xf, at + 2, count, splat(row[4]), right2)
        near = add(keep_where(load(masks[1], column), left1), keep_where(load(masks[2], column), right1))
        far = add(keep_where(load(masks[0], column), left2), keep_where(load(masks[3], column), right2))
        store_outputs(of, target + i, count, add(add(centre, near), far), leaky_out)
        column = next_column(column, width)


@jit
def depthwise_5x5_same_planes(flags, ticket, first_flag, flag_count, before, xf, weights, bias, leaky_out, height,
                              width, masks, of, channel_major, first, last):
    """Planes first..last-1 (plane p = image p // C, channel p % C) of the convolution; xf and of are the flat
    images and output planes; a share function of kernels/handoff.py."""
    start_share(flags, ticket, first_flag, flag_count, before)
    channels = weights.shape[0]
    batch = xf.size // (channels * height * width)
    pixels = height * width
    for plane in range(first, last):
        c, image, target = plane_place(plane, channels, batch, pixels, pixels, channel_major)
        w = weights[c, 0]
        _flat_range(xf, image, width, w, bias[c], leaky_out, -2, 2, 2 * width + 2, pixels - 2 * width - 2, masks,
                    of, target)
        for y, dy_lo, dy_hi in ((0, 0, 2), (1, -1, 2), (height - 2, -2, 1), (height - 1, -2, 0)):
            _flat_range(xf, image, width, w, bias[c], leaky_out, dy_lo, dy_hi, y * width + 2, y * width + width - 2,
                        masks, of, target)
        for y in (0, 1, height - 2, height - 1):
            for x in (0, 1, width - 2, width - 1):
                bounded_pixel(xf, image, w, bias[c], height, width, y, x, 2, of, target, leaky_out)
        for y, x in ((2, 0), (2, 1), (height - 3, width - 2), (height - 3, width - 1)):
            bounded_pixel(xf, image, w, bias[c], height, width, y, x, 2, of, target, leaky_out)
    finish_share(flags, ticket, first_flag, flag_count, before)


def forward(x: np.ndarray, weights: np.ndarray, bias: np.ndarray, leaky_out: bool, planes: np.ndarray,
            channel_major: bool) -> None:
    """The same-size 5x5 convolution of x into `planes`, on the threads when they pay."""
    batch, channels, height, width = x.shape
    tasks = batch * channels
    share_out_when_it_pays(depthwise_5x5_same_planes,
                           (x.reshape(-1), weights, bias, leaky_out, height, width, column_masks(width),
                            planes.reshape(-1), channel_major), tasks, tasks * height * width * 25, PARALLEL_MIN_MACS)
