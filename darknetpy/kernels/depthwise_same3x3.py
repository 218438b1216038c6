"""Depthwise 3x3 convolution at stride 1 with padding 1, output the size of the input (Yolo-Fastest's twenty
stride-1 layers, MobileNets'), straight from the image with explicit vectors (kernels/simd.py).

On a flat H x W plane output i reads the image at i - W - 1 .. i + W + 1, so LANES outputs take nine unaligned
vector loads and nine multiply-adds, kept as three partial sums: the left taps, the centre taps (with the
bias) and the right taps. One long loop runs over the inner rows as one flat range (rows of 10 to 40 columns
are too short for a loop each) and one over the top and bottom rows each. In a flat range the left taps of
column 0 and the right taps of the last column read the neighbouring row: those partial sums are dropped
lane by lane by a select on column masks (a select, not a multiplication by zero: a wrapped inf or NaN never
enters a sum). The masks repeat with the row, so they are W + LANES values per plane width, read at the
column where the vector starts. The ranges start one pixel inside and stop one pixel short of the plane's
ends, so no load leaves the plane; the six pixels they leave out (four corners, the first pixel of row 1 and
the last of row H-2) take a bounded scalar sum, and a range's last, partial vector loads and stores only its
own pixels.

The phase grid of kernels/depthwise.py, which these layers took before, summed tap by tap without fused
multiply-adds: results differ from it in the last bits. Shapes: x (B, C, H, W) C-contiguous with H, W >= 3;
weights (C, 1, 3, 3); bias (C,); out as flat planes: (B, C, H*W), or (C, B, H*W) for the training's
channel-major product.
"""
from __future__ import annotations

import functools

import numpy as np

from . import jit
from .activations import leaky_float32
from .handoff import finish_share, share_out_when_it_pays, start_share
from .simd import LANES, add, fma, keep_where, load, load_first, splat, store_outputs

# Shared out among the awake helper threads of kernels/handoff.py from 1M multiply-adds: with an OpenMP team
# (woken per call) the threshold had to be 8M, as in yolo-fastest-xl's 2-thread pass its 3-4M layers lost
# what a second thread saved them alone. Helpers from 1M against OpenMP from 8M, whole passes at 2 threads in
# one process, measured with the scalar loop this kernel replaced (the threshold was kept): yolo-fastest-1.1-xl
# 0.93 (batch 1) and 0.94 (batch 8), from 2M 0.95; yolo-fastest-1.1 1.00.
PARALLEL_MIN_MACS = 1 << 20


def is_same_size_depthwise(size: int, in_per_group: int, out_per_group: int, ksize: int, stride_y: int,
                           stride_x: int, pad: int, dilation: int, height: int, width: int, out_h: int,
                           out_w: int) -> bool:
    """Whether a convolution of this shape is depthwise by a `size` x `size` kernel at stride 1 with padding
    size // 2, its output the size of its input, on planes of at least `size` x `size`."""
    return (in_per_group == 1 and out_per_group == 1 and ksize == size and stride_y == stride_x == 1
            and pad == size // 2 and dilation == 1 and (out_h, out_w) == (height, width) and height >= size
            and width >= size)


# Whether a convolution of this shape runs here (given C-contiguous images and flat output planes).
suits = functools.partial(is_same_size_depthwise, 3)


@functools.lru_cache(maxsize=32)
def column_masks(width: int) -> tuple[np.ndarray, np.ndarray]:
    """(left, right): 1 where flat position k of a plane `width` wide has a column to its left / right, else 0,
    for k = 0 .. width + LANES - 1 (a vector starting in column c reads them from c)."""
    column = np.arange(width + LANES) % width
    left, right = (column != 0).astype(np.float32), (column != width - 1).astype(np.float32)
    left.flags.writeable = right.flags.writeable = False
    return left, right


@jit(inline="always")
def _taps(xf, at, count, weight):
    """weight * the image values from xf[at], for `count` lanes."""
    if count == LANES:
        return fma(weight, load(xf, at), splat(0.0))
    return fma(weight, load_first(xf, at, count), splat(0.0))


@jit(inline="always")
def add_taps(xf, at, count, weight, acc):
    """acc + weight * the image values from xf[at], for `count` lanes."""
    if count == LANES:
        return fma(weight, load(xf, at), acc)
    return fma(weight, load_first(xf, at, count), acc)


@jit(inline="always")
def _flat_range(xf, image, width, w, bias, leaky_out, above, below, start, stop, left_mask, right_mask, of, target):
    """Outputs start..stop-1 of the plane at xf[image] into of[target], from the row above and the row below
    where `above` / `below`; the left and right partial sums kept where the column masks say so."""
    w00, w01, w02 = splat(w[0, 0]), splat(w[0, 1]), splat(w[0, 2])
    w10, w11, w12 = splat(w[1, 0]), splat(w[1, 1]), splat(w[1, 2])
    w20, w21, w22 = splat(w[2, 0]), splat(w[2, 1]), splat(w[2, 2])
    bias_lanes = splat(bias)
    column = start % width
    for i in range(start, stop, LANES):
        count = min(LANES, stop - i)
        at = image + i
        left = _taps(xf, at - 1, count, w10)
        centre = add_taps(xf, at, count, w11, bias_lanes)
        right = _taps(xf, at + 1, count, w12)
        if above:
            left = add_taps(xf, at - width - 1, count, w00, left)
            centre = add_taps(xf, at - width, count, w01, centre)
            right = add_taps(xf, at - width + 1, count, w02, right)
        if below:
            left = add_taps(xf, at + width - 1, count, w20, left)
            centre = add_taps(xf, at + width, count, w21, centre)
            right = add_taps(xf, at + width + 1, count, w22, right)
        value = add(add(centre, keep_where(load(left_mask, column), left)), keep_where(load(right_mask, column), right))
        store_outputs(of, target + i, count, value, leaky_out)
        column = next_column(column, width)


@jit(inline="always")
def plane_place(plane, channels, batch, in_pixels, out_pixels, channel_major):
    """(channel, flat start of the image plane, flat start of its output plane) of plane p = image p // C,
    channel p % C; the output planes laid out (B, C) or, for the training's product, (C, B)."""
    b, c = plane // channels, plane % channels
    return c, plane * in_pixels, (c * batch + b if channel_major else plane) * out_pixels


@jit(inline="always")
def next_column(column, width):
    """The column of the flat position LANES after one in `column`."""
    column += LANES
    while column >= width:
        column -= width
    return column


@jit(inline="always")
def bounded_pixel(xf, image, w, bias, height, width, y, x, half, of, target, leaky_out):
    """of[target + y * width + x] = output (y, x) of a same-size convolution by the (2 half + 1)-square kernel w,
    from the taps inside the image only (leaky where leaky_out). `half` is a constant at the call (1 or 2): the
    loops then unroll (read from w's shape, they did not, and the pixel cost the small planes 15-60%)."""
    v = bias
    for ky in range(2 * half + 1):
        yy = y + ky - half
        if 0 <= yy < height:
            for kx in range(2 * half + 1):
                xx = x + kx - half
                if 0 <= xx < width:
                    v += w[ky, kx] * xf[image + yy * width + xx]
    of[target + y * width + x] = leaky_float32(v) if leaky_out else v


@jit
def depthwise_3x3_same_planes(flags, ticket, first_flag, flag_count, before, xf, weights, bias, leaky_out, height,
                              width, left_mask, right_mask, of, channel_major, first, last):
    """Planes first..last-1 (plane p = image p // C, channel p % C) of the convolution; xf and of are the flat
    images and output planes; a share function of kernels/handoff.py."""
    start_share(flags, ticket, first_flag, flag_count, before)
    channels = weights.shape[0]
    batch = xf.size // (channels * height * width)
    pixels = height * width
    for plane in range(first, last):
        c, image, target = plane_place(plane, channels, batch, pixels, pixels, channel_major)
        w = weights[c, 0]
        _flat_range(xf, image, width, w, bias[c], leaky_out, True, True, width + 1, pixels - width - 1, left_mask,
                    right_mask, of, target)
        _flat_range(xf, image, width, w, bias[c], leaky_out, False, True, 1, width - 1, left_mask, right_mask, of,
                    target)
        _flat_range(xf, image, width, w, bias[c], leaky_out, True, False, pixels - width + 1, pixels - 1, left_mask,
                    right_mask, of, target)
        for y, x in ((0, 0), (0, width - 1), (height - 1, 0), (height - 1, width - 1), (1, 0),
                     (height - 2, width - 1)):
            bounded_pixel(xf, image, w, bias[c], height, width, y, x, 1, of, target, leaky_out)
    finish_share(flags, ticket, first_flag, flag_count, before)


def forward(x: np.ndarray, weights: np.ndarray, bias: np.ndarray, leaky_out: bool, planes: np.ndarray,
            channel_major: bool) -> None:
    """The same-size 3x3 convolution of x into `planes`, on the threads when they pay."""
    batch, channels, height, width = x.shape
    xf, of = x.reshape(-1), planes.reshape(-1)
    left_mask, right_mask = column_masks(width)
    tasks = batch * channels
    share_out_when_it_pays(depthwise_3x3_same_planes,
                           (xf, weights, bias, leaky_out, height, width, left_mask, right_mask, of, channel_major),
                           tasks, tasks * height * width * 9, PARALLEL_MIN_MACS)
