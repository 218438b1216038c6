"""Max and (global) average pooling over (B, C, H, W) float32 arrays, spec §2.4–2.5.

Max pooling keeps Darknet's geometry: the window origin is shifted by `offset` (C-truncated
-padding/2, so padding 1 puts all padding on the right/bottom), taps outside the image read -FLT_MAX,
and the first strict maximum in row-then-column order wins. The winner's position inside its plane
(y*W + x) is stored for the backward pass; -1 means no tap beat -FLT_MAX (all taps outside the image,
or NaN), and such outputs pass no gradient. Inference keeps no winners, only values (the maximum of the
taps that are not NaN, never below -FLT_MAX, in whatever order they are visited), so its tap loops carry no
index arithmetic.

Speed: windows that may leave the image read a -FLT_MAX-padded copy of the plane, so no loop has bounds
checks. Every output keeps its running maximum in registers, one output per loop iteration, with the tap
loops unrolled for the usual windows (literal sizes and column strides), so the loop over an output row
vectorises. Windows larger than 3x3 (and 3x3 at stride 2) are separable: the first maximum in
row-then-column order is the first maximum down the rows of each row's first maximum along it, so 2k taps
replace k*k; the column pass is the same register loop over the plane of row maxima. That is what training
runs. At inference, 3x3 windows at stride 2 have a kernel of their own, windows of 2x2 and larger at stride 1
double spans in long loops over a padded plane, and other windows at column strides >= 2 go columns first
(see the sections on them below).
Windows larger than the image visit only the taps inside it (the others cannot win), so their cost is bounded
by the image, not by the window: size=99999999999 costs what a window the size of the image does.
"""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np
from numba import prange

from . import jit
from .threads import thread_count, threads_pay

NEG_FLT_MAX = np.float32(-3.4028234663852886e38)
# the argmax argument of the kernels that keep no winners (never read or written)
_NO_WINNERS = np.full((1, 1, 1, 1), -1, np.int32)


# Below this many input elements starting the thread team costs more than the work (memory-bound loops,
# 0.3-1 ns per element: ~0.5 ms of serial work, see threads.threads_pay).
PARALLEL_MIN_ELEMENTS = 1 << 20
# Parallel plane loops hand each thread this many chunks of planes (balance; scratch is made per chunk).
CHUNKS_PER_THREAD = 4


def use_threads(elements: int, planes: int) -> bool:
    return threads_pay(elements, planes, PARALLEL_MIN_ELEMENTS)


@jit(inline="always")
def _first_max_2x2(best, best_index, r0, r1, index0, index1, step, track):
    """One output row of a 2x2 window with column stride `step`: output i reads r0[i*step], r0[i*step + 1],
    r1[i*step], r1[i*step + 1] in row-then-column order, whose in-plane indices are index0 + i*step (+1) and
    index1 + i*step (+1) (kept only when `track`: untracked, the index arithmetic is dead code and compiled
    away). Plain indexing (strided row views are several times slower), the running maximum in registers and
    each output stored once: a read-compare-store on the output row would be turned into masked stores, which
    are very slow on some x86 CPUs."""
    for i in range(best.shape[0]):
        j = i * step
        b = NEG_FLT_MAX
        k = np.int32(-1)
        v = r0[j]
        if v > b:
            b = v
            k = np.int32(index0 + j)
        v = r0[j + 1]
        if v > b:
            b = v
            k = np.int32(index0 + j + 1)
        v = r1[j]
        if v > b:
            b = v
            k = np.int32(index1 + j)
        v = r1[j + 1]
        if v > b:
            b = v
            k = np.int32(index1 + j + 1)
        best[i] = b
        if track:
            best_index[i] = k


@jit(inline="always")
def _maxpool_rows_2x2(src, origin, width, stride_y, step, out_plane, index_plane, track):
    """out_plane/index_plane (OH, OW) of a 2x2 window with column stride `step` from `src`, a plane in which
    every window tap is readable; src[py, px] is image pixel (py + origin, px + origin), so its in-plane
    index is (py + origin)*width + px + origin (taps outside the image hold -FLT_MAX there and never win)."""
    for oy in range(out_plane.shape[0]):
        top = oy * stride_y
        index0, index1 = (top + origin) * width + origin, (top + 1 + origin) * width + origin
        _first_max_2x2(out_plane[oy], index_plane[oy if track else 0], src[top], src[top + 1], index0, index1,
                       step, track)


@jit(inline="always")
def _fill(values, start, stop, value):
    for j in range(start, stop):
        values[j] = value


@jit(inline="always")
def _image_columns(width, offset, length):
    """[start, stop): the entries p of a padded row of `length` whose column p + offset is in the image."""
    stop = max(0, min(length, width - offset))
    return min(max(0, -offset), stop), stop


@jit
def _pad_plane(x, b, c, origin, padded):
    """padded[py, px] = x[b, c, py + origin, px + origin], -FLT_MAX outside the image."""
    height = x.shape[2]
    cols = padded.shape[1]
    left, right = _image_columns(x.shape[3], origin, cols)
    for py in range(padded.shape[0]):
        iy = py + origin
        row = padded[py]
        if iy < 0 or iy >= height:
            _fill(row, 0, cols, NEG_FLT_MAX)
            continue
        src = x[b, c, iy]
        _fill(row, 0, left, NEG_FLT_MAX)
        for px in range(left, right):
            row[px] = src[px + origin]
        _fill(row, right, cols, NEG_FLT_MAX)


@jit(inline="always")
def _maxpool_plane_2x2(x, b, c, stride_y, stride_x, offset, out, argmax, scratch, step, padded, track):
    """Plane (b, c) of a 2x2 window; step, padded and track are the calling kernel's closure constants
    (untracked: argmax is a placeholder, never written)."""
    column_step = step if step else stride_x
    index_plane = argmax[b, c] if track else argmax[0, 0]
    if padded:
        _pad_plane(x, b, c, offset, scratch)
        _maxpool_rows_2x2(scratch, offset, x.shape[3], stride_y, column_step, out[b, c], index_plane, track)
    else:
        _maxpool_rows_2x2(x[b, c], 0, x.shape[3], stride_y, column_step, out[b, c], index_plane, track)


@functools.cache
def _maxpool_2x2_kernels(step: int, padded: bool, track: bool) -> tuple[Callable, Callable]:
    """(serial, parallel) kernels of a 2x2 window. `step` (the column stride, 0 for one read at run time),
    `padded` (windows may leave the image: read a -FLT_MAX-padded copy) and `track` (keep the winners for a
    backward pass) are closure constants, so the column loads see a literal stride and vectorise, and a
    network compiles only the variant it uses (one kernel holding all six compiled in 2.8 s; the README's
    MNIST command needs one). Closures over plain values are cached on disk like module-level kernels."""

    @jit
    def serial(x, stride_y, stride_x, offset, out, argmax, padded_shape):
        channels = x.shape[1]
        scratch = np.empty(padded_shape, np.float32)
        for plane in range(x.shape[0] * channels):
            _maxpool_plane_2x2(x, plane // channels, plane % channels, stride_y, stride_x, offset, out, argmax,
                               scratch, step, padded, track)

    @jit(parallel=True)
    def parallel(x, stride_y, stride_x, offset, out, argmax, padded_shape, chunks):
        channels = x.shape[1]
        planes = x.shape[0] * channels
        for chunk in prange(chunks):
            # scratch per chunk of planes, not per plane: an allocation per 14x14 plane costs as much as the work
            scratch = np.empty(padded_shape, np.float32)
            for plane in range(chunk * planes // chunks, (chunk + 1) * planes // chunks):
                _maxpool_plane_2x2(x, plane // channels, plane % channels, stride_y, stride_x, offset, out,
                                   argmax, scratch, step, padded, track)

    return serial, parallel


# ---- any other window --------------------------------------------------------------------------------------
@jit(inline="always")
def _window_rows(src, origin, width, rows, size, stride_y, stride_x, out_plane, index_plane, track):
    """out_plane/index_plane (OH, OW) of rows x size windows from `src`, a plane in which every window tap is
    readable (src[py, px] is image pixel (py + origin, px + origin)); the running maximum in registers: with
    literal `rows`, `size` and `stride_x` the tap loops unroll and the loop over outputs vectorises. Without
    `track` only the maxima are written (the same values: the same taps in the same order; the index
    arithmetic is dead code then and compiled away)."""
    out_h, out_w = out_plane.shape
    for oy in range(out_h):
        top = oy * stride_y
        best = out_plane[oy]
        best_index = index_plane[oy if track else 0]
        for ox in range(out_w):
            left = ox * stride_x
            b = NEG_FLT_MAX
            k = np.int32(-1)
            for ky in range(rows):
                row = src[top + ky]
                # int32 index arithmetic: as wide a vector as the float32 values
                first = np.int32((top + ky + origin) * width + left + origin)
                for kx in range(size):
                    v = row[left + kx]
                    if v > b:
                        b = v
                        k = first + np.int32(kx)
            best[ox] = b
            if track:
                best_index[ox] = k


@jit(inline="always")
def _separable_rows(src, origin, width, size, stride_y, stride_x, out_plane, index_plane, row_v, row_i,
                    track):
    """The first maximum in row-then-column order is the first maximum down the window's rows of each row's
    first maximum along it: 2*size taps per output instead of size*size. row_v/row_i receive the row maxima
    of every row of `src`; the column pass runs on them as a plane of size x 1 windows, and its winners
    (positions in row_v) are then looked up in row_i."""
    _window_rows(src, origin, width, 1, size, 1, stride_x, row_v, row_i, track)
    out_w = out_plane.shape[1]
    _window_rows(row_v, 0, out_w, size, 1, stride_y, 1, out_plane, index_plane, track)
    if not track:
        return
    row_indices = row_i.ravel()
    for oy in range(out_plane.shape[0]):
        winners = index_plane[oy]
        for ox in range(out_w):
            if winners[ox] >= 0:
                winners[ox] = row_indices[winners[ox]]


# Windows with literal sizes and column strides (size, stride_x) -> separable: 3x3 at stride 1 takes every
# tap; 3x3 at stride 2 and SPP's 5x5, 9x9 and 13x13 go separable (measured faster at these sizes). Other
# windows up to 3x3 take every tap, larger ones go separable, with sizes read at run time.
LITERAL_WINDOWS = {(3, 1): False, (3, 2): True, (5, 1): True, (9, 1): True, (13, 1): True}


@jit(inline="always")
def _window_plane(x, b, c, window, stride_y, stride_x, offset, out, argmax, scratch, row_v, row_i, size, step,
                  separable, padded, track):
    """Plane (b, c); size, step, separable, padded and track are the calling kernel's closure constants
    (untracked: argmax is a placeholder and row_i scratch, neither read)."""
    k = size if size else window
    column_step = step if step else stride_x
    index_plane = argmax[b, c] if track else argmax[0, 0]
    if padded:
        _pad_plane(x, b, c, offset, scratch)
        src, origin = scratch, offset
    else:
        src, origin = x[b, c], 0
    if separable:
        _separable_rows(src, origin, x.shape[3], k, stride_y, column_step, out[b, c], index_plane, row_v, row_i,
                        track)
    else:
        _window_rows(src, origin, x.shape[3], k, k, stride_y, column_step, out[b, c], index_plane, track)


@functools.cache
def _window_kernels(size: int, step: int, separable: bool, padded: bool,
                    track: bool) -> tuple[Callable, Callable]:
    """(serial, parallel) max pooling with a size x size window (any size but 2), from the padded copy
    unless the windows stay inside the image, keeping the winners when `track`. `size` and `step` (the
    column stride) are literal when nonzero, read at run time when 0; all five are closure constants, so a
    network compiles only the windows it uses (one kernel holding every variant compiled for 7.6 s)."""

    @jit
    def serial(x, window, stride_y, stride_x, offset, out, argmax, padded_shape, rows):
        channels = x.shape[1]
        scratch = np.empty(padded_shape, np.float32)
        row_v = np.empty((rows, out.shape[3]), np.float32)
        row_i = np.empty((rows, out.shape[3]), np.int32)
        for p in range(x.shape[0] * channels):
            _window_plane(x, p // channels, p % channels, window, stride_y, stride_x, offset, out, argmax,
                          scratch, row_v, row_i, size, step, separable, padded, track)

    @jit(parallel=True)
    def parallel(x, window, stride_y, stride_x, offset, out, argmax, padded_shape, rows, chunks):
        channels = x.shape[1]
        planes = x.shape[0] * channels
        for chunk in prange(chunks):
            scratch = np.empty(padded_shape, np.float32)
            row_v = np.empty((rows, out.shape[3]), np.float32)
            row_i = np.empty((rows, out.shape[3]), np.int32)
            for p in range(chunk * planes // chunks, (chunk + 1) * planes // chunks):
                _window_plane(x, p // channels, p % channels, window, stride_y, stride_x, offset, out, argmax,
                              scratch, row_v, row_i, size, step, separable, padded, track)

    return serial, parallel


def _window_variant(size: int, stride_x: int) -> tuple[int, int, bool]:
    """(literal size or 0, literal column stride or 0, separable) of a window."""
    if (size, stride_x) in LITERAL_WINDOWS:
        return size, stride_x, LITERAL_WINDOWS[size, stride_x]
    return 0, 0, size > 3


# ---- inference at column strides >= 2: values only, columns first -----------------------------------------
# Without winners the order of the taps does not matter (the maximum of the taps that are not NaN, never below
# -FLT_MAX, whatever the order), so these kernels go columns first, which the tracked path cannot: per output
# row, the maxima down each column of the window's rows into `line` (a -FLT_MAX-padded row: no padded copy of
# the plane), then the maxima along `line`, first split into s phases (phase r holds line[s*j + r]) so that
# every load of the tap loop is contiguous: taps at stride 2 are what kept the row-first 3x3/2 loop from
# vectorising (6 -> 4 ns per output on 64x104x104, 9 -> 5 on 256x26x26). At stride 1 the row-first kernels
# were faster (SPP's 13x13: 3 against 6-10 ns); those windows now double spans (below).
@jit(inline="always")
def _column_maxima(x, b, c, top, k, offset, line, start, stop):
    """line[p] = the maximum down column p + offset of image rows top .. top+k-1 (those inside the image),
    for p in [start, stop); -FLT_MAX where no row is inside. Three rows per pass over `line` (a group of
    fewer repeats its last row: values only, so a repeated tap changes nothing): few enough pointers that the
    column loop vectorises behind LLVM's run-time overlap checks, which it gives up on past eight."""
    height = x.shape[2]
    y, last = max(top, 0), min(top + k, height)
    if y >= last:
        for p in range(start, stop):
            line[p] = NEG_FLT_MAX
        return
    fresh = True
    while y < last:
        r0 = x[b, c, y]
        r1 = x[b, c, min(y + 1, last - 1)]
        r2 = x[b, c, min(y + 2, last - 1)]
        for p in range(start, stop):
            m = NEG_FLT_MAX if fresh else line[p]
            q = p + offset
            v = r0[q]
            m = v if v > m else m
            v = r1[q]
            m = v if v > m else m
            v = r2[q]
            m = v if v > m else m
            line[p] = m
        fresh = False
        y += 3


@jit(inline="always")
def _line_maxima(line, phases, out_row, k, stride_x, size, step):
    """out_row[i] = the maximum of line[i*stride_x .. i*stride_x + k - 1]; size and step (>= 2) are literal or
    0."""
    out_w = out_row.shape[0]
    if step:
        for j in range(phases.shape[1]):
            for r in range(step):
                phases[r, j] = line[step * j + r]
        for i in range(out_w):
            m = NEG_FLT_MAX
            for t in range(size):
                v = phases[t % step, i + t // step]
                m = v if v > m else m
            out_row[i] = m
    else:
        for i in range(out_w):
            m = NEG_FLT_MAX
            for t in range(i * stride_x, i * stride_x + k):
                v = line[t]
                m = v if v > m else m
            out_row[i] = m


@jit(inline="always")
def _inference_window_plane(x, b, c, window, stride_y, stride_x, offset, out, line, phases, size, step):
    """Plane (b, c) of a window's values; size and step are the calling kernel's closure constants. line's
    entries outside [start, stop) are -FLT_MAX from its allocation and are never written."""
    k = size if size else window
    start, stop = _image_columns(x.shape[3], offset, line.shape[0])
    for oy in range(out.shape[2]):
        _column_maxima(x, b, c, oy * stride_y + offset, k, offset, line, start, stop)
        _line_maxima(line, phases, out[b, c, oy], k, stride_x, size, step)


@functools.cache
def _inference_window_kernels(size: int, step: int) -> tuple[Callable, Callable]:
    """(serial, parallel) max pooling values of a size x size window (any size but 2) at a column stride >= 2;
    `size` and `step` (the column stride) are closure constants, literal when nonzero (the windows of
    LITERAL_WINDOWS), read at run time when 0."""

    @jit
    def serial(x, window, stride_y, stride_x, offset, out, line_length, phase_length):
        channels = x.shape[1]
        line = np.full(line_length, NEG_FLT_MAX, np.float32)
        phases = np.empty((max(step, 1), phase_length), np.float32)
        for p in range(x.shape[0] * channels):
            _inference_window_plane(x, p // channels, p % channels, window, stride_y, stride_x, offset, out,
                                    line, phases, size, step)

    @jit(parallel=True)
    def parallel(x, window, stride_y, stride_x, offset, out, line_length, phase_length, chunks):
        channels = x.shape[1]
        planes = x.shape[0] * channels
        for chunk in prange(chunks):
            line = np.full(line_length, NEG_FLT_MAX, np.float32)
            phases = np.empty((max(step, 1), phase_length), np.float32)
            for p in range(chunk * planes // chunks, (chunk + 1) * planes // chunks):
                _inference_window_plane(x, p // channels, p % channels, window, stride_y, stride_x, offset, out,
                                        line, phases, size, step)

    return serial, parallel


# ---- inference, 3x3 windows at stride 2: values only, phases first -----------------------------------------
# The most common larger window (ResNet-style stems, Darknet's 3x3/2 pools) gets a kernel of its own. Per output
# row, its three image rows (a row outside the image replaced by one inside the window: values only, so a
# repeated tap changes nothing) are reduced column by column into two phases, even[i] = the maximum down column
# 2i + offset, odd[i] = down column 2i + offset + 1 (stride-2 loads that LLVM turns into permutes of
# contiguous vectors), and each output is max(even[i], odd[i], even[i + 1]) from contiguous loads. Reading the
# third column straight from the rows instead (2i + 2, a second stride-2 stream) compiled to gathers; scalar
# edge entries written into the phases kept both loops from vectorising, so the outputs whose window leaves the
# image through a side read the image directly. 1 thread, ns per output, against the rows-first kernel this
# replaced, alternating in one process, medians of three runs: 64x104x104 1.57 -> 0.87, 256x26x26
# 2.96 -> 2.09, 512x19x19 3.72 -> 2.56, 512x13x13 4.83 -> 3.70 (2x2/2 in the same runs: 0.29, 0.75, 4.3, 5.6).
@jit(inline="always")
def _larger(m, v):
    return v if v > m else m


@jit(inline="always")
def _edge_window_3(r0, r1, r2, left, width):
    """The maximum over columns left .. left+2 (those inside the image) of three rows."""
    m = NEG_FLT_MAX
    for q in range(max(left, 0), min(left + 3, width)):
        m = _larger(_larger(_larger(m, r0[q]), r1[q]), r2[q])
    return m


@jit(inline="always")
def _window_3x3_stride2_plane(x, b, c, offset, out, even, odd):
    height, width = x.shape[2], x.shape[3]
    out_w = out.shape[3]
    # phase entries [ia, ib) read columns 2i + offset and 2i + offset + 1, both inside the image; outputs
    # [ia, ib - 1) read only those entries
    ia = min(out_w, max(0, (1 - offset) // 2))
    ib = max(ia, min(out_w + 1, (width - 2 - offset) // 2 + 1))
    inner_stop = max(ia, ib - 1)
    for oy in range(out.shape[2]):
        dst = out[b, c, oy]
        top = 2 * oy + offset
        y0, y1 = max(top, 0), min(top + 3, height)
        if y0 >= y1:
            for i in range(out_w):
                dst[i] = NEG_FLT_MAX
            continue
        r0, r1, r2 = x[b, c, y0], x[b, c, min(y0 + 1, y1 - 1)], x[b, c, min(y0 + 2, y1 - 1)]
        start = 2 * ia + offset
        a0, a1, a2 = r0[start:], r1[start:], r2[start:]
        even_in, odd_in = even[ia:ib], odd[ia:ib]
        for i in range(ib - ia):
            j = 2 * i
            even_in[i] = _larger(_larger(_larger(NEG_FLT_MAX, a0[j]), a1[j]), a2[j])
            odd_in[i] = _larger(_larger(_larger(NEG_FLT_MAX, a0[j + 1]), a1[j + 1]), a2[j + 1])
        inner = dst[ia:inner_stop]
        first, second, third = even[ia:], odd[ia:], even[ia + 1:]
        for i in range(inner_stop - ia):
            inner[i] = _larger(_larger(first[i], second[i]), third[i])
        for i in range(ia):
            dst[i] = _edge_window_3(r0, r1, r2, 2 * i + offset, width)
        for i in range(inner_stop, out_w):
            dst[i] = _edge_window_3(r0, r1, r2, 2 * i + offset, width)


@jit
def _window_3x3_stride2_serial(x, offset, out):
    channels = x.shape[1]
    even = np.empty(out.shape[3] + 1, np.float32)
    odd = np.empty(out.shape[3] + 1, np.float32)
    for p in range(x.shape[0] * channels):
        _window_3x3_stride2_plane(x, p // channels, p % channels, offset, out, even, odd)


@jit(parallel=True)
def _window_3x3_stride2_parallel(x, offset, out, chunks):
    channels = x.shape[1]
    planes = x.shape[0] * channels
    for chunk in prange(chunks):
        even = np.empty(out.shape[3] + 1, np.float32)
        odd = np.empty(out.shape[3] + 1, np.float32)
        for p in range(chunk * planes // chunks, (chunk + 1) * planes // chunks):
            _window_3x3_stride2_plane(x, p // channels, p % channels, offset, out, even, odd)


# ---- inference, windows at stride 1: values only, spans doubled --------------------------------------------
# SPP's 5x5, 9x9 and 13x13 windows (and 3x3, and yolov3-tiny's 2x2, at stride 1) read k*k taps per output, 2k
# when separable. Without winners, the maximum over a span of 2s rows is that of two spans of s rows (over 4s
# rows, that of four), and a window of k rows that of two overlapping spans of `top` rows (the largest power
# of two up to k): a 13x13 window takes 3 passes down the columns and 3 along the rows instead of 13 taps
# each. The plane is first copied into `padded` (its rows and columns outside the image -FLT_MAX, NaN and
# -inf made -FLT_MAX, so the passes need no bounds and no NaN care); each pass is then one long loop over the
# whole padded plane, which LLVM vectorises well, where loops over the short rows of small maps stay mostly
# scalar. The passes are bound by their stores, hence four spans per pass where they fit and the last pass
# down the columns fused with the first along the rows (0.85-0.88 of two-span passes on the large map below,
# the same on the small ones). 1 thread, ns per output against the kernels these windows took before (the
# row-first ones training still runs), alternating in one process, medians of three runs, 3x3 / 5x5 / 9x9 /
# 13x13: 64x104x104 1.26 / 1.29 / 1.59 / 1.90 -> 0.43 / 0.56 / 0.66 / 0.76; 256x26x26 1.61 / 1.71 / 2.59 /
# 3.57 -> 0.62 / 0.79 / 1.02 / 1.11; 512x19x19 1.70 / 1.98 / 2.98 / 4.06 -> 0.83 / 1.03 / 1.31 / 1.49;
# 512x13x13 2.24 / 3.00 / 3.94 / 5.03 -> 1.32 / 1.66 / 2.05 / 2.30; yolov3-tiny's 2x2/1: 64x104x104
# 1.10 -> 0.39, 256x26x26 1.37 -> 0.54, 512x13x13 1.84 -> 1.19.
@jit
def _pairwise_maxima(src, dst, length, distance):
    """dst[i] = max(src[i], src[i + distance]) for i < length. A call of its own, on slices: inlined into the
    plane loop, or indexing src twice, LLVM vectorised it 4x worse."""
    first, second, result = src[:length], src[distance:distance + length], dst[:length]
    for i in range(length):
        result[i] = _larger(first[i], second[i])


@jit
def _fourfold_maxima(src, dst, length, near, far):
    """dst[i] = max(src[i], src[i + near], src[i + far], src[i + near + far]) for i < length: two levels of
    doubling (far = 2 near), or the window's last level down the columns and the first along the rows (near
    = 1), in one pass: each pass is bound by its store."""
    a, b = src[:length], src[near:near + length]
    c, d = src[far:far + length], src[near + far:near + far + length]
    result = dst[:length]
    for i in range(length):
        result[i] = _larger(_larger(a[i], b[i]), _larger(c[i], d[i]))


@jit(inline="always")
def _double_spans(src, dst, spare, length, span, top, step):
    """From maxima over spans of `span` to spans of `top` (powers of two), in the direction whose neighbour is
    `step` away: four times longer spans per pass where that fits, else twice. Returns (src, dst, spare,
    length) with the result in src, valid for i < length."""
    while span < top:
        if 4 * span <= top:
            length -= 3 * span * step
            _fourfold_maxima(src, dst, length, span * step, 2 * span * step)
            span *= 4
        else:
            length -= span * step
            _pairwise_maxima(src, dst, length, span * step)
            span *= 2
        src, dst, spare = dst, spare, dst
    return src, dst, spare, length


@jit(inline="always")
def _doubled_window_plane(x, b, c, size, offset, out, padded, ping, pong):
    """Plane (b, c) of a size x size window (size >= 2) at stride 1. padded (flat, (OH + size - 1) rows of
    OW + size - 1) holds -FLT_MAX outside the image from its allocation; ping and pong are as long."""
    height, width = x.shape[2], x.shape[3]
    out_h, out_w = out.shape[2], out.shape[3]
    row_length = out_w + size - 1
    rows = out_h + size - 1
    first_column, last_column = max(0, offset), min(width, offset + row_length)
    for y in range(max(0, offset), min(height, offset + rows)):
        base = (y - offset) * row_length - offset
        src = x[b, c, y, first_column:last_column]
        dst = padded[base + first_column:base + last_column]
        for q in range(last_column - first_column):
            dst[q] = _larger(NEG_FLT_MAX, src[q])
    top = 1
    while 2 * top <= size:
        top *= 2
    # down the columns: spans of up to `top` rows
    src, dst, spare, length = _double_spans(padded, ping, pong, rows * row_length, 1, top, row_length)
    # the window's rows (two overlapping spans of `top`) and the first doubling along the rows, in one pass
    length = out_h * row_length - 1
    if size > top:
        _fourfold_maxima(src, dst, length, 1, (size - top) * row_length)
    else:
        _pairwise_maxima(src, dst, length, 1)
    src, dst, spare = dst, spare, dst
    # along the rows up to `top`, then each output from two overlapping spans
    src, dst, spare, length = _double_spans(src, dst, spare, length, 2, top, 1)
    shift = size - top
    for oy in range(out_h):
        first = src[oy * row_length:]
        second = src[oy * row_length + shift:]
        dst_row = out[b, c, oy]
        for ox in range(out_w):
            dst_row[ox] = _larger(first[ox], second[ox])


@jit
def _doubled_window_serial(x, size, offset, out):
    channels = x.shape[1]
    length = (out.shape[2] + size - 1) * (out.shape[3] + size - 1)
    padded = np.full(length, NEG_FLT_MAX, np.float32)
    ping, pong = np.empty(length, np.float32), np.empty(length, np.float32)
    for p in range(x.shape[0] * channels):
        _doubled_window_plane(x, p // channels, p % channels, size, offset, out, padded, ping, pong)


@jit(parallel=True)
def _doubled_window_parallel(x, size, offset, out, chunks):
    channels = x.shape[1]
    planes = x.shape[0] * channels
    length = (out.shape[2] + size - 1) * (out.shape[3] + size - 1)
    for chunk in prange(chunks):
        padded = np.full(length, NEG_FLT_MAX, np.float32)
        ping, pong = np.empty(length, np.float32), np.empty(length, np.float32)
        for p in range(chunk * planes // chunks, (chunk + 1) * planes // chunks):
            _doubled_window_plane(x, p // channels, p % channels, size, offset, out, padded, ping, pong)


@jit
def _clipped_plane(x, b, c, size, stride_y, stride_x, offset, out, argmax, row_v, row_i):
    """Max pooling of plane (b, c) visiting only the window taps inside the image: a -FLT_MAX tap outside it
    never beats the starting -FLT_MAX, so skipping them changes no output and no winner. Separable as the
    padded path: row_v/row_i (H, OW) first hold each image row's first maximum over every window's columns,
    then the first maximum down each window's rows is taken (the first maximum in row-then-column order)."""
    height, width = x.shape[2], x.shape[3]
    out_h, out_w = out.shape[2], out.shape[3]
    for y in range(height):
        row = x[b, c, y]
        for ox in range(out_w):
            left = offset + ox * stride_x
            best = NEG_FLT_MAX
            best_index = np.int32(-1)
            for ix in range(max(left, 0), min(left + size, width)):
                v = row[ix]
                if v > best:
                    best = v
                    best_index = np.int32(y * width + ix)
            row_v[y, ox] = best
            row_i[y, ox] = best_index
    for oy in range(out_h):
        top = offset + oy * stride_y
        for ox in range(out_w):
            best = NEG_FLT_MAX
            best_index = np.int32(-1)
            for iy in range(max(top, 0), min(top + size, height)):
                v = row_v[iy, ox]
                if v > best:
                    best = v
                    best_index = row_i[iy, ox]
            out[b, c, oy, ox] = best
            argmax[b, c, oy, ox] = best_index


@jit
def _clipped_forward_serial(x, size, stride_y, stride_x, offset, out, argmax):
    channels = x.shape[1]
    row_v = np.empty((x.shape[2], out.shape[3]), np.float32)
    row_i = np.empty((x.shape[2], out.shape[3]), np.int32)
    for plane in range(x.shape[0] * channels):
        _clipped_plane(x, plane // channels, plane % channels, size, stride_y, stride_x, offset, out, argmax,
                       row_v, row_i)


@jit(parallel=True)
def _clipped_forward_parallel(x, size, stride_y, stride_x, offset, out, argmax):
    channels = x.shape[1]
    for plane in prange(x.shape[0] * channels):
        row_v = np.empty((x.shape[2], out.shape[3]), np.float32)
        row_i = np.empty((x.shape[2], out.shape[3]), np.int32)
        _clipped_plane(x, plane // channels, plane % channels, size, stride_y, stride_x, offset, out, argmax,
                       row_v, row_i)


def maxpool_forward(x: np.ndarray, size: int, stride_y: int, stride_x: int, offset: int, out: np.ndarray,
                    argmax: np.ndarray | None) -> None:
    """out[b, c, oy, ox] = max over the size x size window at (offset + oy*stride_y, offset + ox*stride_x);
    argmax (int32, shaped like out) receives the winning in-plane index or -1. With argmax None (inference:
    no backward pass will ask) the kernels skip the winners, which doubles their speed on some windows."""
    height, width = x.shape[2], x.shape[3]
    threads = use_threads(x.size, x.shape[0] * x.shape[1])
    track = argmax is not None
    if size > height or size > width:
        # the padded copy and the tap loops of the path below would grow with the window
        kernel = _clipped_forward_parallel if threads else _clipped_forward_serial
        kernel(x, size, stride_y, stride_x, offset, out, argmax if track else np.empty(out.shape, np.int32))
        return
    chunks = min(x.shape[0] * x.shape[1], CHUNKS_PER_THREAD * thread_count())
    if size == 3 and stride_y == stride_x == 2 and not track:
        if threads:
            _window_3x3_stride2_parallel(x, offset, out, chunks)
        else:
            _window_3x3_stride2_serial(x, offset, out)
        return
    if size >= 2 and stride_y == stride_x == 1 and not track:
        if threads:
            _doubled_window_parallel(x, size, offset, out, chunks)
        else:
            _doubled_window_serial(x, size, offset, out)
        return
    if size != 2 and stride_x >= 2 and not track:
        literal_size, step, _ = _window_variant(size, stride_x)
        # line: the padded row under every window of an output row, a whole number of phases long
        phase_length = -(-((out.shape[3] - 1) * stride_x + size) // stride_x)
        serial, parallel = _inference_window_kernels(literal_size, step)
        if threads:
            parallel(x, size, stride_y, stride_x, offset, out, phase_length * stride_x, phase_length, chunks)
        else:
            serial(x, size, stride_y, stride_x, offset, out, phase_length * stride_x, phase_length)
        return
    if not track:
        argmax = _NO_WINNERS
    rows = (out.shape[2] - 1) * stride_y + size
    cols = (out.shape[3] - 1) * stride_x + size
    inside = offset == 0 and rows <= height and cols <= width
    padded_shape = (0, 0) if inside else (rows, cols)
    if size == 2:
        serial, parallel = _maxpool_2x2_kernels(stride_x if stride_x in (1, 2) else 0, not inside, track)
        if threads:
            parallel(x, stride_y, stride_x, offset, out, argmax, padded_shape, chunks)
        else:
            serial(x, stride_y, stride_x, offset, out, argmax, padded_shape)
    else:
        serial, parallel = _window_kernels(*_window_variant(size, stride_x), not inside, track)
        if threads:
            parallel(x, size, stride_y, stride_x, offset, out, argmax, padded_shape, rows, chunks)
        else:
            serial(x, size, stride_y, stride_x, offset, out, argmax, padded_shape, rows)


@jit
def _maxpool_backward_plane(dy, argmax, dx, b, c):
    # the winner's in-plane index addresses the flattened (contiguous) plane directly: no division
    plane = dx[b, c].reshape(-1)
    for oy in range(dy.shape[2]):
        winners = argmax[b, c, oy]
        gradients = dy[b, c, oy]
        for ox in range(dy.shape[3]):
            index = winners[ox]
            if index >= 0:
                plane[index] += gradients[ox]


@jit
def _maxpool_backward_serial(dy, argmax, dx):
    channels = dy.shape[1]
    for plane in range(dy.shape[0] * channels):
        _maxpool_backward_plane(dy, argmax, dx, plane // channels, plane % channels)


@jit(parallel=True)
def _maxpool_backward_parallel(dy, argmax, dx):
    channels = dy.shape[1]
    for plane in prange(dy.shape[0] * channels):
        _maxpool_backward_plane(dy, argmax, dx, plane // channels, plane % channels)


def maxpool_backward(dy: np.ndarray, argmax: np.ndarray, dx: np.ndarray) -> None:
    """dx[b, c, winner] += dy[b, c, oy, ox] for every output with a winner (dx C-contiguous)."""
    if not dx.flags.c_contiguous:
        raise ValueError("maxpool_backward needs a C-contiguous dx")
    kernel = _maxpool_backward_parallel if use_threads(dx.size, dx.shape[0] * dx.shape[1]) \
        else _maxpool_backward_serial
    kernel(dy, argmax, dx)


@jit
def avgpool_forward(x, out):
    """out[b, c, 0, 0] = (sequential float32 sum of the plane) / (H*W), as Darknet computes it."""
    batch, channels, height, width = x.shape
    count = np.float32(height * width)
    for b in range(batch):
        for c in range(channels):
            total = np.float32(0.0)
            for y in range(height):
                for xx in range(width):
                    total += x[b, c, y, xx]
            out[b, c, 0, 0] = total / count


@jit
def avgpool_backward(dy, dx):
    """dx[b, c, :, :] += dy[b, c, 0, 0] / (H*W)."""
    batch, channels, height, width = dx.shape
    count = np.float32(height * width)
    for b in range(batch):
        for c in range(channels):
            share = dy[b, c, 0, 0] / count
            for y in range(height):
                for xx in range(width):
                    dx[b, c, y, xx] += share
