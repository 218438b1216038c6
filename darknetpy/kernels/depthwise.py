"""Direct (im2col-free) convolution for groups with few channels: depthwise layers above all, and first
layers reading 1-4 image channels.

A depthwise 3x3 convolution is 9 multiply-adds per output; as im2col + a batch of tiny matrix products it is
dominated by writing and re-reading the patch matrix and by per-group BLAS call overhead. Here each task owns
whole output planes and reads its input planes through a zero-padded scratch copy split into stride phases:

    phases[qy, qx, r, j] = padded[r*stride_y + qy, j*stride_x + qx]      (padded = input with zero border)

so tap (ky, kx) of output (oy, ox) is phases[(ky*dil) % sy, (kx*dil) % sx] at flat position
    (oy + (ky*dil) // sy) * Wq + ox + (kx*dil) // sx.
Only the phases some tap reads are kept: min(stride, extent + 1) per axis, so a stride far beyond the image
(a valid 1x1 output) needs no more scratch than a stride equal to the kernel's extent.
Computing every output of a plane on the Wq-wide grid (the columns ox >= OW are garbage and dropped) turns
each tap into ONE long contiguous loop over the whole plane: rows as short as 10 pixels no longer leave LLVM
with a scalar remainder loop per row, and no loop needs bounds checks. 3x3 kernels with stride 1 or 2 get an
unrolled loop that writes each output once, 5x5 stride-1 kernels one pass per kernel row.

With padding 1 and stride 2 on planes of even width (the downsampling layers) the phases are filled from
a column split instead: the phase fill's stride-2 gathers in rows of 10-80 values ran scalar (a 40x40 plane
cost more than at stride 1, with a quarter of the outputs). Because the width is even, the parity of a
value's flat index in its plane is the parity of its column, so ONE long loop splits the whole plane into
its even and odd columns (a vectorised interleaved load), and each phase row is then a contiguous copy of
half an image row: phases[qy, 1, r, j] = even[y, j] and phases[qy, 0, r, j + 1] = odd[y, j] for image row
y = 2r + qy - 1.

The backward walks the same grid: each weight gradient is a long dot product of dy with a tap's phase
plane, kept as LANES partial sums (vectorised; summed in float64 at the end), and dL/dx is accumulated tap by
tap into a phase-layout scratch that is scattered back onto the image once per plane.

Shapes: x (B, C, H, W); weights (F, C/groups, K, K); out / dy (B, F, OH, OW); F = groups * out_per_group.
Output (oy, ox) reads input (oy*stride_y - pad + ky*dilation, ox*stride_x - pad + kx*dilation). `out` and
`dy` may be strided views (the convolution layer passes its channel-major buffers as (B, F, OH, OW)).
Summation order differs from im2col + GEMM (float32 rounding only).
"""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np
from numba import prange

from . import depthwise_same3x3, depthwise_same5x5, depthwise_stride2, jit
from .activations import leaky_float32
from .scratch import thread_scratch
from .threads import thread_count, threads_pay

# Work (multiply-adds) below which starting the thread team costs more than it saves: ~0.5 ms of serial
# work at 0.15-0.4 ns per multiply-add (see threads.threads_pay).
PARALLEL_MIN_MACS = 1 << 21
LANES = 64  # partial sums per weight gradient
FILTER_BLOCK = 4  # filters of a group convolved per pass over its input planes (3x3 patterns)
# Tap patterns with a plane function of their own (the rest: _plane_any)
# (TAPS_3X3_STRIDE2_SPLIT: TAPS_3X3_STRIDE2 with the phases filled from a column split)
TAPS_ANY, TAPS_3X3_STRIDE1, TAPS_3X3_STRIDE2, TAPS_5X5_STRIDE1, TAPS_3X3_STRIDE2_SPLIT = 0, 1, 2, 3, 4


def phase_shape(in_per_group: int, ksize: int, stride_y: int, stride_x: int, dilation: int, out_h: int,
                out_w: int) -> tuple[int, int, int, int, int]:
    """(in_per_group, phases_y, phases_x, Hq, Wq) of the phase scratch. Taps read phases (k*dil) % stride,
    all below min(stride, extent + 1). Hq has one spare row because the garbage columns of the last output
    row read up to (kx*dil)//sx - 1 cells past the rows they need."""
    extent = (ksize - 1) * dilation
    return (in_per_group, min(stride_y, extent + 1), min(stride_x, extent + 1),
            out_h + extent // stride_y + 1, out_w + extent // stride_x)


@jit
def _fill_phases_from_split(x, b, c, halves, phases):
    """phases (2, 2, Hq, Wq) of image plane (b, c) for padding 1 and stride 2 on an even width, through
    halves (2, H*W/2), which receives the plane's even and odd columns. Cells outside the image are left
    untouched, as in _fill_phases."""
    height, half = x.shape[2], x.shape[3] // 2
    src = x[b, c].ravel()
    even, odd = halves[0], halves[1]
    for k in range(height * half):
        even[k] = src[2 * k]
        odd[k] = src[2 * k + 1]
    for qy in range(2):
        for r in range(phases.shape[2]):
            y = 2 * r + qy - 1
            if y < 0 or y >= height:
                continue
            # padded column 2j + 1 is image column 2j; padded column 2j is image column 2j - 1
            even_row, odd_row = even[y * half:(y + 1) * half], odd[y * half:(y + 1) * half]
            to_even, to_odd = phases[qy, 1, r], phases[qy, 0, r, 1:]
            for j in range(half):
                to_even[j] = even_row[j]
            for j in range(half):
                to_odd[j] = odd_row[j]


@jit
def _fill_phases(x, b, c, stride_y, stride_x, pad, phases):
    """phases (phases_y, phases_x, Hq, Wq) of image plane (b, c); cells outside the image are left untouched
    (they were zeroed at allocation and no plane of the same geometry ever writes them)."""
    rows, cols = phases.shape[2], phases.shape[3]
    height, width = x.shape[2], x.shape[3]
    for qx in range(phases.shape[1]):
        # phase column j holds image column j*sx + qx - pad, valid for j in [j0, j1); the integer divisions
        # are hoisted out of the row loop (they cost more than copying a short row)
        first = pad - qx
        j0 = (first + stride_x - 1) // stride_x if first > 0 else 0
        j1 = min((width - 1 + pad - qx) // stride_x + 1, cols)
        if j1 <= j0:
            continue
        start = j0 * stride_x + qx - pad
        count = j1 - j0
        for qy in range(phases.shape[0]):
            for r in range(rows):
                y = r * stride_y + qy - pad
                if y < 0 or y >= height:
                    continue
                src = x[b, c, y, start:]
                dst = phases[qy, qx, r, j0:j1]
                if stride_x == 1:
                    for i in range(count):
                        dst[i] = src[i]
                elif stride_x == 2:
                    for i in range(count):
                        dst[i] = src[2 * i]
                else:
                    for i in range(count):
                        dst[i] = src[i * stride_x]


@jit(inline="always")
def _axpy(dst, src, w):
    # indices run from 0 on slices: no negative-index wraparound checks, so the loop vectorises
    for i in range(dst.shape[0]):
        dst[i] += w * src[i]


@jit(inline="always")
def _sum9(o, accumulate, start, w, a0, a1, a2, b0, b1, b2, c0, c1, c2):
    w00, w01, w02 = w[0, 0], w[0, 1], w[0, 2]
    w10, w11, w12 = w[1, 0], w[1, 1], w[1, 2]
    w20, w21, w22 = w[2, 0], w[2, 1], w[2, 2]
    if accumulate:
        for i in range(o.shape[0]):
            o[i] += (w00 * a0[i] + w01 * a1[i] + w02 * a2[i]
                     + w10 * b0[i] + w11 * b1[i] + w12 * b2[i]
                     + w20 * c0[i] + w21 * c1[i] + w22 * c2[i])
    else:
        for i in range(o.shape[0]):
            o[i] = (start + w00 * a0[i] + w01 * a1[i] + w02 * a2[i]
                    + w10 * b0[i] + w11 * b1[i] + w12 * b2[i]
                    + w20 * c0[i] + w21 * c1[i] + w22 * c2[i])


@jit(inline="always")
def _sum9x4(o, accumulate, starts, w, a0, a1, a2, b0, b1, b2, c0, c1, c2):
    """_sum9 for four filters w[0..3] at once into o[0..3]: each input value is loaded once for all four
    (3 channels -> 16 filters at 416x416: 0.68 of four separate passes, the same float32 results)."""
    o0, o1, o2, o3 = o[0], o[1], o[2], o[3]
    p00, p01, p02, p10, p11, p12, p20, p21, p22 = (w[0, 0, 0], w[0, 0, 1], w[0, 0, 2], w[0, 1, 0], w[0, 1, 1],
                                                   w[0, 1, 2], w[0, 2, 0], w[0, 2, 1], w[0, 2, 2])
    q00, q01, q02, q10, q11, q12, q20, q21, q22 = (w[1, 0, 0], w[1, 0, 1], w[1, 0, 2], w[1, 1, 0], w[1, 1, 1],
                                                   w[1, 1, 2], w[1, 2, 0], w[1, 2, 1], w[1, 2, 2])
    r00, r01, r02, r10, r11, r12, r20, r21, r22 = (w[2, 0, 0], w[2, 0, 1], w[2, 0, 2], w[2, 1, 0], w[2, 1, 1],
                                                   w[2, 1, 2], w[2, 2, 0], w[2, 2, 1], w[2, 2, 2])
    s00, s01, s02, s10, s11, s12, s20, s21, s22 = (w[3, 0, 0], w[3, 0, 1], w[3, 0, 2], w[3, 1, 0], w[3, 1, 1],
                                                   w[3, 1, 2], w[3, 2, 0], w[3, 2, 1], w[3, 2, 2])
    if accumulate:
        for i in range(o0.shape[0]):
            x0, x1, x2, x3, x4, x5, x6, x7, x8 = a0[i], a1[i], a2[i], b0[i], b1[i], b2[i], c0[i], c1[i], c2[i]
            o0[i] += p00 * x0 + p01 * x1 + p02 * x2 + p10 * x3 + p11 * x4 + p12 * x5 + p20 * x6 + p21 * x7 + p22 * x8
            o1[i] += q00 * x0 + q01 * x1 + q02 * x2 + q10 * x3 + q11 * x4 + q12 * x5 + q20 * x6 + q21 * x7 + q22 * x8
            o2[i] += r00 * x0 + r01 * x1 + r02 * x2 + r10 * x3 + r11 * x4 + r12 * x5 + r20 * x6 + r21 * x7 + r22 * x8
            o3[i] += s00 * x0 + s01 * x1 + s02 * x2 + s10 * x3 + s11 * x4 + s12 * x5 + s20 * x6 + s21 * x7 + s22 * x8
    else:
        t0, t1, t2, t3 = starts[0], starts[1], starts[2], starts[3]
        for i in range(o0.shape[0]):
            x0, x1, x2, x3, x4, x5, x6, x7, x8 = a0[i], a1[i], a2[i], b0[i], b1[i], b2[i], c0[i], c1[i], c2[i]
            o0[i] = (t0 + p00 * x0 + p01 * x1 + p02 * x2 + p10 * x3
                     + p11 * x4 + p12 * x5 + p20 * x6 + p21 * x7 + p22 * x8)
            o1[i] = (t1 + q00 * x0 + q01 * x1 + q02 * x2 + q10 * x3
                     + q11 * x4 + q12 * x5 + q20 * x6 + q21 * x7 + q22 * x8)
            o2[i] = (t2 + r00 * x0 + r01 * x1 + r02 * x2 + r10 * x3
                     + r11 * x4 + r12 * x5 + r20 * x6 + r21 * x7 + r22 * x8)
            o3[i] = (t3 + s00 * x0 + s01 * x1 + s02 * x2 + s10 * x3
                     + s11 * x4 + s12 * x5 + s20 * x6 + s21 * x7 + s22 * x8)


@jit(inline="always")
def _taps9(o, accumulate, starts, w, a0, a1, a2, b0, b1, b2, c0, c1, c2):
    """o[k] (+)= starts[k] + the nine taps of filter w[k], for a block of FILTER_BLOCK filters or one."""
    if o.shape[0] == FILTER_BLOCK:
        _sum9x4(o, accumulate, starts, w, a0, a1, a2, b0, b1, b2, c0, c1, c2)
    else:
        _sum9(o[0], accumulate, starts[0], w[0], a0, a1, a2, b0, b1, b2, c0, c1, c2)


@jit
def _plane_3x3_stride1(phases, w, accumulate, bias_values, o):
    # three row bases with literal column offsets: LLVM sees constant distances, needs few aliasing checks
    # and vectorises; each specialisation is its own function so no branch merges the pointers
    wq = phases.shape[3]
    flat = phases[0, 0].ravel()
    a, b, c = flat[0:], flat[wq:], flat[2 * wq:]
    _taps9(o, accumulate, bias_values, w, a[0:], a[1:], a[2:], b[0:], b[1:], b[2:], c[0:], c[1:], c[2:])


@jit
def _plane_3x3_stride2(phases, w, accumulate, bias_values, o):
    # padded row 2*oy + ky, column 2*ox + kx: ky, kx = 0, 1, 2 -> phase 0 (+0), phase 1 (+0), phase 0 (+1)
    wq = phases.shape[3]
    ee, eo = phases[0, 0].ravel(), phases[0, 1].ravel()
    oe, oo = phases[1, 0].ravel(), phases[1, 1].ravel()
    _taps9(o, accumulate, bias_values, w, ee[0:], eo[0:], ee[1:], oe[0:], oo[0:], oe[1:],
           ee[wq:], eo[wq:], ee[wq + 1:])


@jit(inline="always")
def _row5(o, accumulate, start, w, a):
    """One kernel row of a 5x5 stride-1 tap set: o (+)= start + sum_k w[k] * a[i + k], five taps per pass."""
    w0, w1, w2, w3, w4 = w[0], w[1], w[2], w[3], w[4]
    a0, a1, a2, a3, a4 = a[0:], a[1:], a[2:], a[3:], a[4:]
    if accumulate:
        for i in range(o.shape[0]):
            o[i] += w0 * a0[i] + w1 * a1[i] + w2 * a2[i] + w3 * a3[i] + w4 * a4[i]
    else:
        for i in range(o.shape[0]):
            o[i] = start + w0 * a0[i] + w1 * a1[i] + w2 * a2[i] + w3 * a3[i] + w4 * a4[i]


@jit
def _plane_5x5_stride1(phases, w, accumulate, bias_value, o):
    # Yolo-Fastest's depthwise 5x5: five passes over the plane instead of the 25 of _plane_any
    wq = phases.shape[3]
    flat = phases[0, 0].ravel()
    _row5(o, accumulate, bias_value, w[0], flat[0:])
    for ky in range(1, 5):
        _row5(o, True, bias_value, w[ky], flat[ky * wq:])


@jit
def _plane_any(phases, w, stride_y, stride_x, dilation, accumulate, bias_value, o):
    ksize = w.shape[0]
    wq = phases.shape[3]
    if not accumulate:
        for i in range(o.shape[0]):
            o[i] = bias_value
    for ky in range(ksize):
        ty = ky * dilation
        for kx in range(ksize):
            tx = kx * dilation
            flat = phases[ty % stride_y, tx % stride_x].ravel()
            offset = (ty // stride_y) * wq + tx // stride_x
            _axpy(o, flat[offset:offset + o.shape[0]], w[ky, kx])


@jit(inline="always")
def _fill_group_phases(x, b, g, in_per_group, stride_y, stride_x, pad, phases, halves, taps):
    for ci in range(in_per_group):
        if taps == TAPS_3X3_STRIDE2_SPLIT:
            _fill_phases_from_split(x, b, g * in_per_group + ci, halves, phases[ci])
        else:
            _fill_phases(x, b, g * in_per_group + ci, stride_y, stride_x, pad, phases[ci])


@jit(inline="always")
def _filter_units(out_per_group, taps):
    """(units, full blocks): a group's filters in units of FILTER_BLOCK (3x3 patterns), the rest one by one."""
    if taps in (TAPS_3X3_STRIDE1, TAPS_3X3_STRIDE2, TAPS_3X3_STRIDE2_SPLIT):
        full = out_per_group // FILTER_BLOCK
        return full + out_per_group - full * FILTER_BLOCK, full
    return out_per_group, 0


@jit(inline="always")
def _convolve_units(x, weights, bias, leaky, b, g, out_per_group, stride_y, stride_x, dilation, phases, planes,
                    out, taps, first, stop):
    """Filter units [first, stop) of group g of image b from its filled phases; `planes` holds their grids."""
    in_per_group = weights.shape[1]
    out_h, out_w = out.shape[2], out.shape[3]
    pitch = phases.shape[4]
    full = _filter_units(out_per_group, taps)[1]
    for unit in range(first, stop):
        fi, count = (unit * FILTER_BLOCK, FILTER_BLOCK) if unit < full else (unit - full + full * FILTER_BLOCK, 1)
        f = g * out_per_group + fi
        block = planes[:count]
        for ci in range(in_per_group):
            w = weights[f:f + count, ci]
            if taps == TAPS_3X3_STRIDE1:
                _plane_3x3_stride1(phases[ci], w, ci > 0, bias[f:f + count], block)
            elif taps == TAPS_3X3_STRIDE2 or taps == TAPS_3X3_STRIDE2_SPLIT:
                _plane_3x3_stride2(phases[ci], w, ci > 0, bias[f:f + count], block)
            elif taps == TAPS_5X5_STRIDE1:
                _plane_5x5_stride1(phases[ci], w[0], ci > 0, bias[f], block[0])
            else:
                _plane_any(phases[ci], w[0], stride_y, stride_x, dilation, ci > 0, bias[f], block[0])
        for k in range(count):
            for oy in range(out_h):
                src = block[k, oy * pitch:]
                dst = out[b, f + k, oy]
                if leaky:
                    for ox in range(out_w):
                        dst[ox] = leaky_float32(src[ox])
                else:
                    for ox in range(out_w):
                        dst[ox] = src[ox]


@jit(inline="always")
def _convolve_group_image(x, weights, bias, leaky, b, g, stride_y, stride_x, pad, dilation, phases, halves,
                          planes, out, taps):
    """Output planes of group g of image b; `taps` is one of the TAPS_* constants (a closure constant of
    the calling kernel, so only its plane functions are compiled in). The 3x3 patterns convolve
    FILTER_BLOCK filters per pass over the input where a group has that many; `planes` holds their grids."""
    in_per_group = weights.shape[1]
    out_per_group = out.shape[1] // (x.shape[1] // in_per_group)
    _fill_group_phases(x, b, g, in_per_group, stride_y, stride_x, pad, phases, halves, taps)
    units = _filter_units(out_per_group, taps)[0]
    _convolve_units(x, weights, bias, leaky, b, g, out_per_group, stride_y, stride_x, dilation, phases, planes,
                    out, taps, 0, units)


def splits_columns(ksize: int, stride_y: int, stride_x: int, pad: int, dilation: int, width: int) -> bool:
    """Whether a convolution of this shape fills its phases from a column split (given a C-contiguous
    input)."""
    return ksize == 3 and dilation == 1 and stride_y == stride_x == 2 and pad == 1 and width % 2 == 0


def _taps(x: np.ndarray, weights: np.ndarray, stride_y: int, stride_x: int, pad: int, dilation: int) -> int:
    ksize = weights.shape[2]
    if splits_columns(ksize, stride_y, stride_x, pad, dilation, x.shape[3]) and x.flags.c_contiguous:
        return TAPS_3X3_STRIDE2_SPLIT
    if ksize == 3 and dilation == 1 and stride_y == stride_x and stride_x in (1, 2):
        return TAPS_3X3_STRIDE1 if stride_x == 1 else TAPS_3X3_STRIDE2
    if ksize == 5 and dilation == 1 and stride_y == stride_x == 1:
        return TAPS_5X5_STRIDE1
    return TAPS_ANY


@functools.cache
def _forward_kernels(taps: int) -> tuple[Callable, Callable, Callable]:
    """(serial, parallel over group-images, parallel over the filters of a single group-image) forward
    kernels of one tap pattern. `taps` is a closure constant, so a network compiles only the plane functions
    it uses (one kernel holding all four compiled for 10 s; a closure over plain values is cached on disk like
    a module-level kernel)."""

    @jit
    def serial(x, weights, bias, leaky, stride_y, stride_x, pad, dilation, phases, halves, planes, out):
        groups = x.shape[1] // weights.shape[1]
        for task in range(x.shape[0] * groups):
            b = task // groups
            _convolve_group_image(x, weights, bias, leaky, b, task - b * groups, stride_y, stride_x, pad,
                                  dilation, phases[0], halves[0], planes[0], out, taps)

    @jit(parallel=True)
    def parallel(x, weights, bias, leaky, stride_y, stride_x, pad, dilation, phases, halves, planes, out):
        # one run of tasks per thread, each with its own scratch
        groups = x.shape[1] // weights.shape[1]
        tasks = x.shape[0] * groups
        runs = phases.shape[0]
        for run in prange(runs):
            for task in range(run * tasks // runs, (run + 1) * tasks // runs):
                b = task // groups
                _convolve_group_image(x, weights, bias, leaky, b, task - b * groups, stride_y, stride_x, pad,
                                      dilation, phases[run], halves[run], planes[run], out, taps)

    @jit(parallel=True)
    def parallel_units(x, weights, bias, leaky, stride_y, stride_x, pad, dilation, phases, halves, planes, out):
        # one group of one image (an ungrouped layer at batch 1): its phases filled once, its filter units
        # shared out, each run with its own grids
        in_per_group = weights.shape[1]
        out_per_group = out.shape[1]
        _fill_group_phases(x, 0, 0, in_per_group, stride_y, stride_x, pad, phases[0], halves[0], taps)
        units = _filter_units(out_per_group, taps)[0]
        runs = planes.shape[0]
        for run in prange(runs):
            _convolve_units(x, weights, bias, leaky, 0, 0, out_per_group, stride_y, stride_x, dilation, phases[0],
                            planes[run], out, taps, run * units // runs, (run + 1) * units // runs)

    return serial, parallel, parallel_units


# ---- layers that run straight from the image (kernels/depthwise_same3x3.py, _same5x5.py, _stride2.py) --------
def _flat_planes(out: np.ndarray) -> tuple[np.ndarray, bool] | None:
    """out (B, F, H, W) as C-contiguous (B, F, H*W) planes, or as (F, B, H*W) (True) when it is a view of the
    training's channel-major product; None if its planes are laid out otherwise."""
    batch, filters, height, width = out.shape
    if out.flags.c_contiguous:
        return out.reshape(batch, filters, height * width), False
    channel_major = out.transpose(1, 0, 2, 3)
    if channel_major.flags.c_contiguous:
        return channel_major.reshape(filters, batch, height * width), True
    return None


def _straight_planes(suits: Callable[..., bool], x: np.ndarray, weights: np.ndarray, stride_y: int,
                     stride_x: int, pad: int, dilation: int, out: np.ndarray) -> tuple[np.ndarray, bool] | None:
    """out's flat planes (see _flat_planes) when a kernel that reads straight from the image takes the
    layer (`suits`: the `suits` of depthwise_same3x3, depthwise_same5x5 or depthwise_stride2), else None."""
    groups = x.shape[1] // weights.shape[1]
    if not (suits(weights.shape[1], weights.shape[0] // groups, weights.shape[2], stride_y, stride_x, pad,
                  dilation, x.shape[2], x.shape[3], out.shape[2], out.shape[3])
            and x.flags.c_contiguous):
        return None
    return _flat_planes(out)


def writes_same_3x3_directly(x: np.ndarray, weights: np.ndarray, stride_y: int, stride_x: int, pad: int,
                             dilation: int, out: np.ndarray) -> bool:
    """Whether grouped_conv_forward takes the same-size 3x3 kernel that reads straight from the image."""
    return _straight_planes(depthwise_same3x3.suits, x, weights, stride_y, stride_x, pad, dilation, out) is not None


def _macs(weights: np.ndarray, out: np.ndarray) -> int:
    return out.size * weights.shape[1] * weights.shape[2] * weights.shape[3]


def grouped_conv_forward(x: np.ndarray, weights: np.ndarray, bias: np.ndarray, stride_y: int, stride_x: int,
                         pad: int, dilation: int, out: np.ndarray, leaky: bool = False) -> None:
    """out[b, f] = bias[f] + the convolution of input group f // (F / groups) with weights[f] (the number
    of groups is C / weights.shape[1]), then Darknet's leaky if `leaky`; other activations are left to the
    caller."""
    for suits, straight_forward in ((depthwise_same3x3.suits, depthwise_same3x3.forward),
                                    (depthwise_same5x5.suits, depthwise_same5x5.forward),
                                    (depthwise_stride2.suits, depthwise_stride2.forward)):
        planes = _straight_planes(suits, x, weights, stride_y, stride_x, pad, dilation, out)
        if planes is not None:
            straight_forward(x, weights, bias, leaky, *planes)
            return
    groups = x.shape[1] // weights.shape[1]
    taps = _taps(x, weights, stride_y, stride_x, pad, dilation)
    dims = phase_shape(weights.shape[1], weights.shape[2], stride_y, stride_x, dilation, out.shape[2],
                       out.shape[3])
    serial, parallel, parallel_units = _forward_kernels(taps)
    tasks = x.shape[0] * groups
    macs = _macs(weights, out)
    kernel, runs = serial, 1
    if threads_pay(macs, tasks, PARALLEL_MIN_MACS):
        kernel, runs = parallel, min(thread_count(), tasks)
    elif tasks == 1:
        # a single group-image (an ungrouped first layer at batch 1): share out its filters instead
        units = _filter_units(out.shape[1], taps)[0]
        if threads_pay(macs, units, PARALLEL_MIN_MACS):
            kernel, runs = parallel_units, min(thread_count(), units)
    placement = (taps, dims, x.shape[2], x.shape[3], stride_y, stride_x, pad, dilation)
    phases, halves, planes = _forward_scratch(runs, placement, min(FILTER_BLOCK, out.shape[1] // groups),
                                              out.shape[2] * dims[4])
    kernel(x, weights, bias, leaky, stride_y, stride_x, pad, dilation, phases, halves, planes, out)


def _forward_scratch(runs: int, placement: tuple, block: int, grid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(phases, halves, planes) scratch of `runs` runs for convolutions placed as `placement` (tap pattern,
    phase shape, image size, strides, padding, dilation), kept per thread and shared by the layers placed
    alike. Allocating it per call cost more than the convolution: the arrays are large enough for the C
    library to map fresh pages for them each time (a grey 320x320 first layer at stride 2: 637 us per call
    against 161 us with the scratch kept, and 226 us for the kernel before the column split). The phases'
    border cells are zero from allocation and never written (the fills write only the image's cells, the
    same ones for the same placement), so sharing them keeps them zero."""
    taps, dims, height, width = placement[:4]
    split = height * width // 2 if taps == TAPS_3X3_STRIDE2_SPLIT else 1
    return thread_scratch(("direct convolution", runs, placement, block, grid),
                          lambda: (np.zeros((runs,) + dims, np.float32), np.empty((runs, 2, split), np.float32),
                                   np.empty((runs, block, grid), np.float32)))


@jit(inline="always")
def _zero(flat):
    # a flat loop: slice assignment on an n-d array goes through a slow generic iterator
    for i in range(flat.shape[0]):
        flat[i] = 0.0


@jit(inline="always")
def _dot_into_lanes(lanes, a, b):
    """lanes[i % 64] += a[i] * b[i]: a dot product kept as 64 partial sums, so the loop is vectorised
    multiply-adds instead of one latency-bound chain of dependent additions."""
    n = a.shape[0]
    full = n // LANES * LANES
    for start in range(0, full, LANES):
        pa = a[start:start + LANES]
        pb = b[start:start + LANES]
        for i in range(LANES):
            lanes[i] += pa[i] * pb[i]
    for i in range(full, n):
        lanes[i - full] += a[i] * b[i]


@jit(inline="always")
def _sum_lanes(lanes):
    total = 0.0
    for i in range(lanes.shape[0]):
        total += lanes[i]
    return total


@jit
def _backward_group(x, weights, dy, g, stride_y, stride_x, pad, dilation, grad_weights, dx, want_dx, phases,
                    dphases, dy_plane, taps):
    """Weight gradients of group g's filters and (if want_dx) its input gradients. dy_plane holds dy on the
    Wq-wide grid with zero garbage columns; `taps` (in, out, K*K, LANES) keeps the weight gradients as
    partial sums; dphases collects dx in the phase layout before it is scattered back onto the image."""
    in_per_group = weights.shape[1]
    ksize = weights.shape[2]
    rows, wq = phases.shape[3], phases.shape[4]
    height, width = x.shape[2], x.shape[3]
    out_h, out_w = dy.shape[2], dy.shape[3]
    out_per_group = dy.shape[1] // (x.shape[1] // in_per_group)
    # where each tap reads in the phase layout (integer divisions hoisted out of the loops)
    tap_phase_y = np.empty(ksize * ksize, np.int64)
    tap_phase_x = np.empty(ksize * ksize, np.int64)
    tap_offset = np.empty(ksize * ksize, np.int64)
    for ky in range(ksize):
        for kx in range(ksize):
            ty, tx = ky * dilation, kx * dilation
            tap_phase_y[ky * ksize + kx] = ty % stride_y
            tap_phase_x[ky * ksize + kx] = tx % stride_x
            tap_offset[ky * ksize + kx] = (ty // stride_y) * wq + tx // stride_x
    _zero(taps.ravel())
    for b in range(x.shape[0]):
        if want_dx:
            _zero(dphases.ravel())
        for ci in range(in_per_group):
            _fill_phases(x, b, g * in_per_group + ci, stride_y, stride_x, pad, phases[ci])
        for fi in range(out_per_group):
            f = g * out_per_group + fi
            for oy in range(out_h):
                src = dy[b, f, oy]
                dst = dy_plane[oy * wq:]
                for ox in range(out_w):
                    dst[ox] = src[ox]
            for ci in range(in_per_group):
                for tap in range(ksize * ksize):
                    qy, qx, offset = tap_phase_y[tap], tap_phase_x[tap], tap_offset[tap]
                    flat = phases[ci, qy, qx].ravel()
                    _dot_into_lanes(taps[ci, fi, tap], dy_plane, flat[offset:offset + dy_plane.shape[0]])
                    if want_dx:
                        dflat = dphases[ci, qy, qx].ravel()
                        _axpy(dflat[offset:offset + dy_plane.shape[0]], dy_plane,
                              weights[f, ci, tap // ksize, tap % ksize])
        if want_dx:
            for ci in range(in_per_group):
                c = g * in_per_group + ci
                for qy in range(phases.shape[1]):
                    for r in range(rows):
                        y = r * stride_y + qy - pad
                        if y < 0 or y >= height:
                            continue
                        dst_row = dx[b, c, y]
                        for qx in range(phases.shape[2]):
                            src_row = dphases[ci, qy, qx, r]
                            first = pad - qx
                            j0 = (first + stride_x - 1) // stride_x if first > 0 else 0
                            j1 = min((width - 1 + pad - qx) // stride_x + 1, wq)
                            for j in range(j0, j1):
                                dst_row[j * stride_x + qx - pad] += src_row[j]
    for ci in range(in_per_group):
        for fi in range(out_per_group):
            f = g * out_per_group + fi
            for tap in range(ksize * ksize):
                grad_weights[f, ci, tap // ksize, tap % ksize] += np.float32(_sum_lanes(taps[ci, fi, tap]))


@jit
def _backward_serial(x, weights, dy, stride_y, stride_x, pad, dilation, grad_weights, dx, want_dx, phase_dims,
                     taps_dims):
    phases = np.zeros(phase_dims, np.float32)
    dphases = np.zeros(phase_dims if want_dx else (1, 1, 1, 1, 1), np.float32)
    dy_plane = np.zeros(dy.shape[2] * phase_dims[4], np.float32)
    taps = np.empty(taps_dims, np.float32)
    for g in range(x.shape[1] // weights.shape[1]):
        _backward_group(x, weights, dy, g, stride_y, stride_x, pad, dilation, grad_weights, dx, want_dx, phases,
                        dphases, dy_plane, taps)


@jit(parallel=True)
def _backward_parallel(x, weights, dy, stride_y, stride_x, pad, dilation, grad_weights, dx, want_dx,
                       phase_dims, taps_dims):
    for g in prange(x.shape[1] // weights.shape[1]):
        phases = np.zeros(phase_dims, np.float32)
        dphases = np.zeros(phase_dims if want_dx else (1, 1, 1, 1, 1), np.float32)
        dy_plane = np.zeros(dy.shape[2] * phase_dims[4], np.float32)
        taps = np.empty(taps_dims, np.float32)
        _backward_group(x, weights, dy, g, stride_y, stride_x, pad, dilation, grad_weights, dx, want_dx, phases,
                        dphases, dy_plane, taps)


def grouped_conv_backward(x: np.ndarray, weights: np.ndarray, dy: np.ndarray, stride_y: int, stride_x: int,
                          pad: int, dilation: int, grad_weights: np.ndarray, dx: np.ndarray | None) -> None:
    """grad_weights += dL/dweights; dx (if not None) += dL/dx, for dy = dL/d(convolution output)."""
    want_dx = dx is not None
    groups = x.shape[1] // weights.shape[1]
    dims = phase_shape(weights.shape[1], weights.shape[2], stride_y, stride_x, dilation, dy.shape[2],
                       dy.shape[3])
    taps_dims = (weights.shape[1], dy.shape[1] // groups, weights.shape[2] * weights.shape[3], LANES)
    parallel = threads_pay(_macs(weights, dy), groups, PARALLEL_MIN_MACS)
    kernel = _backward_parallel if parallel else _backward_serial
    kernel(x, weights, dy, stride_y, stride_x, pad, dilation, grad_weights, dx if want_dx else x, want_dx, dims,
           taps_dims)
