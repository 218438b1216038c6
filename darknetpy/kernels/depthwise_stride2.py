"""Depthwise 3x3 convolution at stride 2 with padding 1 on planes of even width (the downsampling layers of
depthwise-separable networks), straight from the image with explicit vectors (kernels/simd.py).

Output (oy, ox) reads image rows 2oy-1..2oy+1 and columns 2ox-1..2ox+1. For LANES outputs ox0.. of a row,
the two vectors of image columns 2ox0..2ox0+2*LANES-1 hold, split by parity, the centre taps (even columns)
and the right taps (odd columns); the left taps (columns 2ox-1) are the right taps moved up one lane, with the
last column before 2ox0 in front (zero at the image's left edge). So each image row costs two vector loads, one
for the column before, three shuffles and three multiply-adds per LANES outputs, with no copy of the plane:
the phase grid of kernels/depthwise.py copied every plane into four padded phase planes first, and on planes
of 10-40 columns its rows were too short to vectorise. Rows above and below the image are skipped; a row's
last, partial vector loads and stores only its own columns (masked). Sums per output: image rows top to
bottom, in each left, centre, right, with fused multiply-adds; then the bias and Darknet's leaky.

Shapes: x (B, C, H, W) C-contiguous with W even; weights (C, 1, 3, 3); bias (C,); out (B, C, H', W/2) with
H' = (H + 1) // 2, as flat planes: (B, C, H'*W/2), or (C, B, H'*W/2) for the training's channel-major product.
"""
from __future__ import annotations

import numpy as np

from . import jit
from .depthwise_same3x3 import plane_place
from .handoff import finish_share, share_out_when_it_pays, start_share
from .simd import LANES, add, evens, fma, load, load_first, odds, shifted_in, splat, store_outputs

# Shared out among the awake helper threads (kernels/handoff.py) from 2M multiply-adds (~60 us at one thread):
# whole passes at 2 threads, taking turns in one process, against 8M: yolo-fastest-1.1-xl 0.97 (1M: 0.98),
# yolo-fastest-1.1 0.99 (1M).
PARALLEL_MIN_MACS = 1 << 21


def suits(in_per_group: int, out_per_group: int, ksize: int, stride_y: int, stride_x: int, pad: int,
          dilation: int, height: int, width: int, out_h: int, out_w: int) -> bool:
    """Whether a convolution of this shape runs here (given C-contiguous images and flat output planes)."""
    return (in_per_group == 1 and out_per_group == 1 and ksize == 3 and stride_y == stride_x == 2 and pad == 1
            and dilation == 1 and width % 2 == 0 and out_w == width // 2 and out_h == (height + 1) // 2)


@jit(inline="always")
def _image_row(xf, start, ox0, count, w_left, w_centre, w_right, acc):
    """acc + the three taps of image row `start` (flat index of column 2*ox0) for `count` outputs."""
    if count == LANES:
        a = load(xf, start)
        b = load(xf, start + LANES)
    else:
        values = 2 * count
        a = load_first(xf, start, min(values, LANES))
        b = load_first(xf, start + LANES, max(values - LANES, 0))
    centre = evens(a, b)
    right = odds(a, b)
    before = splat(0.0) if ox0 == 0 else load(xf, start - LANES)
    acc = fma(splat(w_left), shifted_in(before, right), acc)
    acc = fma(splat(w_centre), centre, acc)
    return fma(splat(w_right), right, acc)


@jit
def depthwise_3x3_stride2_planes(flags, ticket, first_flag, flag_count, before, xf, weights, bias, leaky_out, height,
                                 width, of, channel_major, first, last):
    """Planes first..last-1 (plane p = image p // C, channel p % C) of the convolution; xf and of are the flat
    images and output planes; a share function of kernels/handoff.py."""
    start_share(flags, ticket, first_flag, flag_count, before)
    channels = weights.shape[0]
    batch = xf.size // (channels * height * width)
    out_h, out_w = (height + 1) // 2, width // 2
    for plane in range(first, last):
        c, image, target = plane_place(plane, channels, batch, height * width, out_h * out_w, channel_major)
        w = weights[c, 0]
        bias_lanes = splat(bias[c])
        for oy in range(out_h):
            top = 2 * oy - 1
            for ox0 in range(0, out_w, LANES):
                count = min(LANES, out_w - ox0)
                row = image + top * width + 2 * ox0
                acc = splat(0.0)
                if top >= 0:
                    acc = _image_row(xf, row, ox0, count, w[0, 0], w[0, 1], w[0, 2], acc)
                acc = _image_row(xf, row + width, ox0, count, w[1, 0], w[1, 1], w[1, 2], acc)
                if top + 2 < height:
                    acc = _image_row(xf, row + 2 * width, ox0, count, w[2, 0], w[2, 1], w[2, 2], acc)
                store_outputs(of, target + oy * out_w + ox0, count, add(acc, bias_lanes), leaky_out)
    finish_share(flags, ticket, first_flag, flag_count, before)


def forward(x: np.ndarray, weights: np.ndarray, bias: np.ndarray, leaky_out: bool, planes: np.ndarray,
            channel_major: bool) -> None:
    """The stride-2 3x3 convolution of x into `planes`, on the threads when they pay."""
    batch, channels, height, width = x.shape
    xf, of = x.reshape(-1), planes.reshape(-1)
    tasks = batch * channels
    macs = tasks * ((height + 1) // 2) * (width // 2) * 9
    share_out_when_it_pays(depthwise_3x3_stride2_planes,
                           (xf, weights, bias, leaky_out, height, width, of, channel_major), tasks, macs,
                           PARALLEL_MIN_MACS)
