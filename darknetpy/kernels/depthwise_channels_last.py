"""Depthwise convolution of small planes, computed channels-last.

kernels/depthwise.py convolves one plane at a time, with several short loops per plane (the zero-padded
copy, the taps, the copy-out). On the 10x10 and 20x20 planes of Yolo-Fastest's later layers those loops are
a few vector iterations each, and their fixed costs make a 3x3 plane take ~400-900 ns for 900 multiply-adds.
Here the image is first copied into a zero-bordered channels-last scratch, padded[y, x, c], so that each tap
of one output pixel is a contiguous run of C channels: the inner loop runs over channels, whatever the size
of the plane, and each output row is transposed back into the (B, C, OH, OW) output.

Only depthwise layers (one input and one output channel per group). Shapes: x (B, C, H, W); the weights are
given per tap, (K*K, C) with tap ky*K + kx; out (B, C, OH, OW). Output (oy, ox) reads input
(oy*stride_y - pad + ky*dilation, ox*stride_x - pad + kx*dilation); padded holds that input at
(y + pad, x + pad) and is (Hp, Wp, C), see `padded_shape`.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from . import jit
from .activations import leaky_float32
from .threads import threads_pay

# Work (multiply-adds) below which starting the thread team costs more than it saves (see threads_pay).
PARALLEL_MIN_MACS = 1 << 21


def padded_shape(channels: int, height: int, width: int, ksize: int, stride_y: int, stride_x: int, pad: int,
                 dilation: int, out_h: int, out_w: int) -> tuple[int, int, int]:
    """(Hp, Wp, C) of the scratch: the image with its zero border, and at least the rows and columns the
    last output reads."""
    extent = (ksize - 1) * dilation
    return (max(height + 2 * pad, (out_h - 1) * stride_y + extent + 1),
            max(width + 2 * pad, (out_w - 1) * stride_x + extent + 1), channels)


@jit(inline="always")
def _fill_row(x, b, y, pad, padded):
    """Image row y of every channel into padded[y + pad, pad:pad + W, :] (a transpose of a (C, W) block).
    Gathering reads, contiguous writes: 2-3x faster than reading rows and scattering the writes."""
    channels, width = x.shape[1], x.shape[3]
    row = padded[y + pad]
    for i in range(width):
        dst = row[i + pad]
        for c in range(channels):
            dst[c] = x[b, c, y, i]


@jit(inline="always")
def _row_3x3(flat, base, offsets, taps, bias, leaky, stride_x, out_w, channels, row):
    """row (OW*C) = the 3x3 taps of one output row; base: flat index of its first tap (0, 0)."""
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = (taps[0], taps[1], taps[2], taps[3], taps[4], taps[5], taps[6],
                                          taps[7], taps[8])
    for ox in range(out_w):
        at = base + ox * stride_x * channels
        a0, a1, a2 = flat[at + offsets[0]:], flat[at + offsets[1]:], flat[at + offsets[2]:]
        a3, a4, a5 = flat[at + offsets[3]:], flat[at + offsets[4]:], flat[at + offsets[5]:]
        a6, a7, a8 = flat[at + offsets[6]:], flat[at + offsets[7]:], flat[at + offsets[8]:]
        o = row[ox * channels:(ox + 1) * channels]
        if leaky:
            for c in range(channels):
                o[c] = leaky_float32(bias[c] + w0[c] * a0[c] + w1[c] * a1[c] + w2[c] * a2[c]
                              + w3[c] * a3[c] + w4[c] * a4[c] + w5[c] * a5[c]
                              + w6[c] * a6[c] + w7[c] * a7[c] + w8[c] * a8[c])
        else:
            for c in range(channels):
                o[c] = (bias[c] + w0[c] * a0[c] + w1[c] * a1[c] + w2[c] * a2[c]
                        + w3[c] * a3[c] + w4[c] * a4[c] + w5[c] * a5[c]
                        + w6[c] * a6[c] + w7[c] * a7[c] + w8[c] * a8[c])


@jit(inline="always")
def _row_any(flat, base, offsets, taps, bias, leaky, stride_x, out_w, channels, row):
    """row (OW*C) = any tap set, one tap at a time into the row (which stays in L1)."""
    for ox in range(out_w):
        o = row[ox * channels:(ox + 1) * channels]
        for c in range(channels):
            o[c] = bias[c]
        at = base + ox * stride_x * channels
        for t in range(taps.shape[0]):
            w = taps[t]
            a = flat[at + offsets[t]:]
            for c in range(channels):
                o[c] += w[c] * a[c]
        if leaky:
            for c in range(channels):
                o[c] = leaky_float32(o[c])


@jit(inline="always")
def _output_row(padded, offsets, taps, bias, leaky, stride_y, stride_x, b, oy, row, out):
    """Output row oy of image b: computed channels-last into `row`, then transposed into out[b, :, oy]."""
    wp, channels = padded.shape[1], padded.shape[2]
    out_w = out.shape[3]
    flat = padded.ravel()
    base = oy * stride_y * wp * channels
    if taps.shape[0] == 9:
        _row_3x3(flat, base, offsets, taps, bias, leaky, stride_x, out_w, channels, row)
    else:
        _row_any(flat, base, offsets, taps, bias, leaky, stride_x, out_w, channels, row)
    for c in range(channels):
        dst = out[b, c, oy]
        for ox in range(out_w):
            dst[ox] = row[ox * channels + c]


@jit
def _forward_serial(x, taps, offsets, bias, leaky, stride_y, stride_x, pad, padded, out):
    row = np.empty(out.shape[3] * x.shape[1], np.float32)
    for b in range(x.shape[0]):
        for y in range(x.shape[2]):
            _fill_row(x, b, y, pad, padded)
        for oy in range(out.shape[2]):
            _output_row(padded, offsets, taps, bias, leaky, stride_y, stride_x, b, oy, row, out)


@jit(parallel=True)
def _forward_parallel(x, taps, offsets, bias, leaky, stride_y, stride_x, pad, padded, out):
    for b in range(x.shape[0]):
        for y in prange(x.shape[2]):
            _fill_row(x, b, y, pad, padded)
        for oy in prange(out.shape[2]):
            row = np.empty(out.shape[3] * x.shape[1], np.float32)
            _output_row(padded, offsets, taps, bias, leaky, stride_y, stride_x, b, oy, row, out)


def tap_offsets(ksize: int, dilation: int, padded_shape: tuple[int, int, int]) -> np.ndarray:
    """Flat offset of each tap ky*K + kx in the padded scratch, from the output pixel's tap (0, 0)."""
    _, wp, channels = padded_shape
    return np.array([(ky * dilation * wp + kx * dilation) * channels
                     for ky in range(ksize) for kx in range(ksize)], np.int64)


def taps_of(weights: np.ndarray) -> np.ndarray:
    """(K*K, C) per-tap weights of depthwise weights (C, 1, K, K)."""
    return np.ascontiguousarray(weights.reshape(weights.shape[0], -1).T)


def depthwise_channels_last_forward(x: np.ndarray, taps: np.ndarray, offsets: np.ndarray, bias: np.ndarray,
                                    stride_y: int, stride_x: int, pad: int, padded: np.ndarray,
                                    out: np.ndarray, leaky: bool = False) -> None:
    """out[b, c] = bias[c] + the depthwise convolution of x[b, c] (then Darknet's leaky if `leaky`).
    `padded` is a scratch of `padded_shape` whose border cells are zero and stay so (only the image's cells
    are written); `taps` and `offsets` come from taps_of and tap_offsets."""
    macs = out.size * taps.shape[0]
    kernel = _forward_parallel if threads_pay(macs, out.shape[2], PARALLEL_MIN_MACS) else _forward_serial
    kernel(x, taps, offsets, bias, leaky, stride_y, stride_x, pad, padded, out)
