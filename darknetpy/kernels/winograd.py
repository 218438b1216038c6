"""Winograd convolution F(m x m, 3 x 3) for 3x3, stride-1, dilation-1, ungrouped convolutions.

Each output tile of m x m pixels is computed from an a x a input tile (a = m + 2) as
    Y = A^T [ (G g G^T) * (B^T d B) ] A
so the convolution becomes a = (m+2)^2 independent matrix products, one per position t of the transformed
tile: M[t] (K, P) = U[t] (K, C) @ V[t] (C, P), with U the transformed weights (cached by the caller, like
folded batch-norm weights), V the transformed input tiles and P the number of tiles in the batch. F(2x2)
needs 16 products of 1/4 of the im2col work each (2.25x fewer multiplications), F(4x4) 36 of 1/16 (4x fewer)
but rounds ~10x worse than direct summation (still ~1e-6 relative for typical activations).

Transforms (Lavin & Gray's matrices, interpolation points 0, +-1 for m=2 and 0, +-1, +-2 for m=4) are
written out explicitly so that LLVM vectorises them along the tile row:
  tiles: tile (ty, tx) of image b is p = (b*tiles_h + ty)*tiles_w + tx; its input window starts at
  (ty*m - pad, tx*m - pad); out-of-image input is zero; outputs past the image are dropped.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import prange

from . import jit
from .activations import leaky_float32
from .threads import threads_pay

# Elements below which the thread team is not worth starting -- nor compiling the parallel kernels on a
# first run: small networks (MNIST's 14x14 and 7x7 layers) then never need them.
PARALLEL_MIN_ELEMENTS = 1 << 19

_G = {
    2: np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64),
    4: np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                 [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64),
}


def tile_positions(tile: int) -> int:
    return (tile + 2) ** 2


# Filters transformed per float64 step: bounds the temporaries (a whole 512->1024 layer at once would add
# ~140 MB to the peak memory of a yolov3-tiny process).
TRANSFORM_FILTERS_PER_STEP = 64


def transform_weights(weights: np.ndarray, tile: int) -> np.ndarray:
    """U[t, k, c] = (G g_kc G^T) at position t, computed in float64: weights (K, C, 3, 3) -> (a*a, K, C)."""
    g = _G[tile]
    alpha = tile + 2
    filters, channels = weights.shape[0], weights.shape[1]
    u = np.empty((alpha * alpha, filters, channels), np.float32)
    for k0 in range(0, filters, TRANSFORM_FILTERS_PER_STEP):
        k1 = min(filters, k0 + TRANSFORM_FILTERS_PER_STEP)
        part = g @ weights[k0:k1].astype(np.float64) @ g.T  # (k1 - k0, C, a, a)
        u[:, k0:k1] = part.reshape(k1 - k0, channels, alpha * alpha).transpose(2, 0, 1)
    return u


def transposed_weights(weights: np.ndarray) -> np.ndarray:
    """Weights of the convolution that maps dL/d(output) to dL/d(input) of a stride-1 3x3 convolution:
    filters and channels swapped, kernel rotated by 180 degrees (its padding is 2 - pad)."""
    return np.ascontiguousarray(weights.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])


def tile_counts(out_h: int, out_w: int, tile: int) -> tuple[int, int]:
    return (out_h + tile - 1) // tile, (out_w + tile - 1) // tile


# ------------------------------------------------------------------------------------------ input transform
# Window rows are held "phase split": ph[q, j] = padded_row[j*m + q], so the tap l of tile tx is
# ph[l % m, tx + l // m] and every loop below runs over contiguous memory.

def _column_ranges(width: int, pad: int, tile: int) -> np.ndarray:
    """Per phase q: (j0, j1) with image column j*m + q - pad valid for j in [j0, j1) (computed once per
    call: integer divisions cost more than copying a short row)."""
    ranges = np.zeros((tile, 2), np.int64)
    for q in range(tile):
        first = pad - q
        j0 = -(-first // tile) if first > 0 else 0
        j1 = (width - 1 + pad - q) // tile + 1
        ranges[q] = (j0, max(j0, j1))
    return ranges


@jit
def _split_rows(x, b, c, first_row, pad, ranges, plane):
    """plane (R, m, J) = the image rows first_row .. first_row + R - 1 of plane (b, c), zero outside the
    image, phase split."""
    height = x.shape[2]
    tile = plane.shape[1]
    width_j = plane.shape[2]
    # columns j whose taps are inside the image for every phase: there all m phases are filled in one loop
    # (one pass of m adjacent loads per j, which LLVM vectorises as an interleaved group; a loop per phase
    # walks the row m times at stride m), the few edge cells phase by phase
    inner_lo = 0
    inner_hi = width_j
    for q in range(tile):
        inner_lo = max(inner_lo, ranges[q, 0])
        inner_hi = min(inner_hi, ranges[q, 1])
    for r in range(plane.shape[0]):
        y = first_row + r
        rows = plane[r]
        if y < 0 or y >= height:
            flat = rows.ravel()
            for i in range(flat.shape[0]):
                flat[i] = 0.0
            continue
        src = x[b, c, y]
        for q in range(tile):
            part = rows[q]
            j0, j1 = ranges[q, 0], min(ranges[q, 1], width_j)
            column = q - pad
            for j in range(j0):
                part[j] = 0.0
            for j in range(j0, min(j1, inner_lo)):
                part[j] = src[j * tile + column]
            for j in range(max(j0, inner_hi), j1):
                part[j] = src[j * tile + column]
            for j in range(max(j1, j0), width_j):
                part[j] = 0.0
        if inner_hi > inner_lo:
            seg = src[inner_lo * tile - pad:]
            if tile == 2:
                p0, p1 = rows[0, inner_lo:inner_hi], rows[1, inner_lo:inner_hi]
                for j in range(p0.shape[0]):
                    p0[j] = seg[2 * j]
                    p1[j] = seg[2 * j + 1]
            else:
                p0, p1 = rows[0, inner_lo:inner_hi], rows[1, inner_lo:inner_hi]
                p2, p3 = rows[2, inner_lo:inner_hi], rows[3, inner_lo:inner_hi]
                for j in range(p0.shape[0]):
                    p0[j] = seg[4 * j]
                    p1[j] = seg[4 * j + 1]
                    p2[j] = seg[4 * j + 2]
                    p3[j] = seg[4 * j + 3]


@jit(inline="always")
def _bt4(d0, d1, d2, d3):
    """B^T of F(2x2, 3x3) applied to four values along a window column or row."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


@jit
def _tile_f2(rows, work, v, c, p, tiles_w):
    """Input tiles of one tile row (rows: its 4 phase-split window rows) into v[:, c, p:p + tiles_w]."""
    d0, d1, d2, d3 = rows[0].ravel(), rows[1].ravel(), rows[2].ravel(), rows[3].ravel()
    w0, w1, w2, w3 = work[0].ravel(), work[1].ravel(), work[2].ravel(), work[3].ravel()
    for i in range(d0.shape[0]):  # B^T down the window columns
        w0[i], w1[i], w2[i], w3[i] = _bt4(d0[i], d1[i], d2[i], d3[i])
    for i in range(4):  # B^T along the window rows, one tile per lane
        e0, e1 = work[i, 0, 0:], work[i, 1, 0:]
        e2, e3 = work[i, 0, 1:], work[i, 1, 1:]
        o0 = v[4 * i, c, p:p + tiles_w]
        o1 = v[4 * i + 1, c, p:p + tiles_w]
        o2 = v[4 * i + 2, c, p:p + tiles_w]
        o3 = v[4 * i + 3, c, p:p + tiles_w]
        for tx in range(tiles_w):
            o0[tx], o1[tx], o2[tx], o3[tx] = _bt4(e0[tx], e1[tx], e2[tx], e3[tx])


@jit(inline="always")
def _bt6(d0, d1, d2, d3, d4, d5):
    f4 = np.float32(4.0)
    f5 = np.float32(5.0)
    f2 = np.float32(2.0)
    return (f4 * d0 - f5 * d2 + d4,
            d3 + d4 - f4 * (d1 + d2),
            f4 * (d1 - d2) - d3 + d4,
            f2 * (d3 - d1) - d2 + d4,
            f2 * (d1 - d3) - d2 + d4,
            f4 * d1 - f5 * d3 + d5)


@jit
def _tile_f4(rows, work, v, c, p, tiles_w):
    d0, d1, d2 = rows[0].ravel(), rows[1].ravel(), rows[2].ravel()
    d3, d4, d5 = rows[3].ravel(), rows[4].ravel(), rows[5].ravel()
    w0, w1, w2 = work[0].ravel(), work[1].ravel(), work[2].ravel()
    w3, w4, w5 = work[3].ravel(), work[4].ravel(), work[5].ravel()
    for i in range(d0.shape[0]):
        w0[i], w1[i], w2[i], w3[i], w4[i], w5[i] = _bt6(d0[i], d1[i], d2[i], d3[i], d4[i], d5[i])
    for i in range(6):
        e0, e1, e2, e3 = work[i, 0, 0:], work[i, 1, 0:], work[i, 2, 0:], work[i, 3, 0:]
        e4, e5 = work[i, 0, 1:], work[i, 1, 1:]
        o0 = v[6 * i, c, p:p + tiles_w]
        o1 = v[6 * i + 1, c, p:p + tiles_w]
        o2 = v[6 * i + 2, c, p:p + tiles_w]
        o3 = v[6 * i + 3, c, p:p + tiles_w]
        o4 = v[6 * i + 4, c, p:p + tiles_w]
        o5 = v[6 * i + 5, c, p:p + tiles_w]
        for tx in range(tiles_w):
            o0[tx], o1[tx], o2[tx], o3[tx], o4[tx], o5[tx] = _bt6(e0[tx], e1[tx], e2[tx], e3[tx], e4[tx], e5[tx])


@jit
def _input_channel(x, c, g0, g1, pad, tiles_h, tiles_w, ranges, plane, work, v):
    """Tile rows [g0, g1) of channel c: each image's run of tile rows reads one phase-split copy of the
    image rows it covers (window rows overlap between tile rows, so nothing is split twice)."""
    tile = plane.shape[1]
    alpha = tile + 2
    g = g0
    while g < g1:
        b = g // tiles_h
        ty0 = g - b * tiles_h
        ty1 = min(tiles_h, ty0 + g1 - g)
        rows = plane[:(ty1 - ty0) * tile + 2]
        _split_rows(x, b, c, ty0 * tile - pad, pad, ranges, rows)
        for ty in range(ty0, ty1):
            window = rows[(ty - ty0) * tile:(ty - ty0) * tile + alpha]
            p = (g - g0 + ty - ty0) * tiles_w
            if tile == 2:
                _tile_f2(window, work, v, c, p, tiles_w)
            else:
                _tile_f4(window, work, v, c, p, tiles_w)
        g += ty1 - ty0


@jit
def _input_serial(x, g0, g1, pad, tile, tiles_h, tiles_w, ranges, v):
    plane = np.empty((min(g1 - g0, tiles_h) * tile + 2, tile, tiles_w + 1), np.float32)
    work = np.empty((tile + 2, tile, tiles_w + 1), np.float32)
    for c in range(x.shape[1]):
        _input_channel(x, c, g0, g1, pad, tiles_h, tiles_w, ranges, plane, work, v)


@jit(parallel=True)
def _input_parallel(x, g0, g1, pad, tile, tiles_h, tiles_w, ranges, v):
    for channel in prange(x.shape[1]):
        c = np.int64(channel)  # prange's index is unsigned: one specialisation of the callee, not two
        plane = np.empty((min(g1 - g0, tiles_h) * tile + 2, tile, tiles_w + 1), np.float32)
        work = np.empty((tile + 2, tile, tiles_w + 1), np.float32)
        _input_channel(x, c, g0, g1, pad, tiles_h, tiles_w, ranges, plane, work, v)


# Small maps (13x13, 26x26: 7 or 13 tiles per row) leave the vectorised row loops above too short to pay for
# themselves; there each F(2x2) input tile is transformed on its own, in scalars, from a zero-padded copy of
# the plane (yolov3-tiny's 13x13 and 26x26 layers: 3-4x faster). The output transform keeps its row loops:
# the same treatment measured slower there.
SMALL_TILES_W = 16


@jit
def _input_small_f2_channel(x, c, g0, g1, pad, tiles_h, tiles_w, padded, v):
    height, width = x.shape[2], x.shape[3]
    rows_p, cols_p = padded.shape
    b_last = -1
    for g in range(g0, g1):
        b = g // tiles_h
        ty = g - b * tiles_h
        if b != b_last:  # one padded copy per image
            padded[:] = 0.0
            for y in range(max(0, -pad), min(height, rows_p - pad)):
                src = x[b, c, y]
                dst = padded[y + pad]
                for xx in range(max(0, -pad), min(width, cols_p - pad)):
                    dst[xx + pad] = src[xx]
            b_last = b
        r0, r1, r2, r3 = padded[2 * ty], padded[2 * ty + 1], padded[2 * ty + 2], padded[2 * ty + 3]
        p0 = (g - g0) * tiles_w
        for tx in range(tiles_w):
            p = p0 + tx
            x0 = 2 * tx
            # B^T down the window columns (column s holds w[0..3][s]), then along each window row
            col0 = _bt4(r0[x0], r1[x0], r2[x0], r3[x0])
            col1 = _bt4(r0[x0 + 1], r1[x0 + 1], r2[x0 + 1], r3[x0 + 1])
            col2 = _bt4(r0[x0 + 2], r1[x0 + 2], r2[x0 + 2], r3[x0 + 2])
            col3 = _bt4(r0[x0 + 3], r1[x0 + 3], r2[x0 + 3], r3[x0 + 3])
            for i in range(4):
                v[4 * i, c, p], v[4 * i + 1, c, p], v[4 * i + 2, c, p], v[4 * i + 3, c, p] = \
                    _bt4(col0[i], col1[i], col2[i], col3[i])


@jit
def _input_small_f2_serial(x, g0, g1, pad, tiles_h, tiles_w, v):
    padded = np.empty((2 * tiles_h + 2, 2 * tiles_w + 2), np.float32)
    for c in range(x.shape[1]):
        _input_small_f2_channel(x, c, g0, g1, pad, tiles_h, tiles_w, padded, v)


@jit(parallel=True)
def _input_small_f2_parallel(x, g0, g1, pad, tiles_h, tiles_w, v):
    for channel in prange(x.shape[1]):
        c = np.int64(channel)
        padded = np.empty((2 * tiles_h + 2, 2 * tiles_w + 2), np.float32)
        _input_small_f2_channel(x, c, g0, g1, pad, tiles_h, tiles_w, padded, v)


def input_transform(x: np.ndarray, first_row: int, end_row: int, pad: int, tile: int, tiles_h: int,
                    tiles_w: int, v: np.ndarray, threaded: bool = True) -> None:
    """v[:, :, :(end_row - first_row)*tiles_w] = B^T d B of the input tiles d of tile rows
    [first_row, end_row) of the batch (tile row g is row g % tiles_h of image g // tiles_h). `threaded`
    False keeps to the calling thread (a caller that runs blocks side by side in threads of its own)."""
    count = (end_row - first_row) * tiles_w
    parallel = threaded and threads_pay(v.shape[0] * v.shape[1] * count, x.shape[1], PARALLEL_MIN_ELEMENTS)
    if tile == 2 and tiles_w <= SMALL_TILES_W:
        small = _input_small_f2_parallel if parallel else _input_small_f2_serial
        small(x, first_row, end_row, pad, tiles_h, tiles_w, v)
        return
    kernel = _input_parallel if parallel else _input_serial
    kernel(x, first_row, end_row, pad, tile, tiles_h, tiles_w, _column_ranges(x.shape[3], pad, tile), v)


# ----------------------------------------------------------------------------------------- output transform
@jit(inline="always")
def _finish(value, bias_value, leaky):
    y = value + bias_value
    return leaky_float32(y) if leaky else y


@jit
def _output_rows_f2(m, k, g0, g1, bias_value, leaky, accumulate, tiles_h, tiles_w, z, line, out):
    out_h, out_w = out.shape[2], out.shape[3]
    for g in range(g0, g1):
        b = g // tiles_h
        ty = g - b * tiles_h
        p = (g - g0) * tiles_w
        for i in range(4):  # A^T along the tile rows, one tile per lane
            s0 = m[4 * i, k, p:p + tiles_w]
            s1 = m[4 * i + 1, k, p:p + tiles_w]
            s2 = m[4 * i + 2, k, p:p + tiles_w]
            s3 = m[4 * i + 3, k, p:p + tiles_w]
            z0, z1 = z[i, 0], z[i, 1]
            for tx in range(tiles_w):
                z0[tx] = s0[tx] + s1[tx] + s2[tx]
                z1[tx] = s1[tx] - s2[tx] - s3[tx]
        for q in range(2):
            oy = 2 * ty + q
            if oy >= out_h:
                break
            orow = out[b, k, oy]
            direct = out_w == 2 * tiles_w and not accumulate
            dst = orow if direct else line
            a0, a1, a2, a3 = z[0, 0], z[1, 0], z[2, 0], z[3, 0]
            c0, c1, c2, c3 = z[0, 1], z[1, 1], z[2, 1], z[3, 1]
            if q == 0:
                for tx in range(tiles_w):
                    dst[2 * tx] = _finish(a0[tx] + a1[tx] + a2[tx], bias_value, leaky)
                    dst[2 * tx + 1] = _finish(c0[tx] + c1[tx] + c2[tx], bias_value, leaky)
            else:
                for tx in range(tiles_w):
                    dst[2 * tx] = _finish(a1[tx] - a2[tx] - a3[tx], bias_value, leaky)
                    dst[2 * tx + 1] = _finish(c1[tx] - c2[tx] - c3[tx], bias_value, leaky)
            if accumulate:
                for ox in range(out_w):
                    orow[ox] += line[ox]
            elif not direct:
                for ox in range(out_w):
                    orow[ox] = line[ox]


@jit(inline="always")
def _at6(s0, s1, s2, s3, s4, s5):
    sum12 = s1 + s2
    dif12 = s1 - s2
    sum34 = s3 + s4
    dif34 = s3 - s4
    return (s0 + sum12 + sum34,
            dif12 + np.float32(2.0) * dif34,
            sum12 + np.float32(4.0) * sum34,
            dif12 + np.float32(8.0) * dif34 + s5)


@jit
def _output_rows_f4(m, k, g0, g1, bias_value, leaky, accumulate, tiles_h, tiles_w, z, line, out):
    out_h, out_w = out.shape[2], out.shape[3]
    for g in range(g0, g1):
        b = g // tiles_h
        ty = g - b * tiles_h
        p = (g - g0) * tiles_w
        for i in range(6):
            s0 = m[6 * i, k, p:p + tiles_w]
            s1 = m[6 * i + 1, k, p:p + tiles_w]
            s2 = m[6 * i + 2, k, p:p + tiles_w]
            s3 = m[6 * i + 3, k, p:p + tiles_w]
            s4 = m[6 * i + 4, k, p:p + tiles_w]
            s5 = m[6 * i + 5, k, p:p + tiles_w]
            z0, z1, z2, z3 = z[0, i], z[1, i], z[2, i], z[3, i]
            for tx in range(tiles_w):
                z0[tx], z1[tx], z2[tx], z3[tx] = _at6(s0[tx], s1[tx], s2[tx], s3[tx], s4[tx], s5[tx])
        # z[r, i] now holds column r of A^T M for window row i; A^T down the rows gives output rows q
        for r in range(4):
            y0, y1, y2, y3 = z[r, 0], z[r, 1], z[r, 2], z[r, 3]
            y4, y5 = z[r, 4], z[r, 5]
            for tx in range(tiles_w):
                y0[tx], y1[tx], y2[tx], y3[tx] = _at6(y0[tx], y1[tx], y2[tx], y3[tx], y4[tx], y5[tx])
        for q in range(4):
            oy = 4 * ty + q
            if oy >= out_h:
                break
            orow = out[b, k, oy]
            direct = out_w == 4 * tiles_w and not accumulate
            dst = orow if direct else line
            c0, c1, c2, c3 = z[0, q], z[1, q], z[2, q], z[3, q]
            for tx in range(tiles_w):
                dst[4 * tx] = _finish(c0[tx], bias_value, leaky)
                dst[4 * tx + 1] = _finish(c1[tx], bias_value, leaky)
                dst[4 * tx + 2] = _finish(c2[tx], bias_value, leaky)
                dst[4 * tx + 3] = _finish(c3[tx], bias_value, leaky)
            if accumulate:
                for ox in range(out_w):
                    orow[ox] += line[ox]
            elif not direct:
                for ox in range(out_w):
                    orow[ox] = line[ox]


# One entry point per (tile size, threading): a kernel that chose its tile function at run time would
# compile both row functions, and the parallel one would compile them again for prange's unsigned index,
# which a first run pays in seconds (the MNIST classifier's cold start: 4 of these specialisations). prange
# indices are therefore cast back to int64 before any call.
@jit
def _output_serial_f2(m, g0, g1, bias, leaky, accumulate, tiles_h, tiles_w, out):
    z = np.empty((4, 4, tiles_w), np.float32)
    line = np.empty(tiles_w * 2, np.float32)
    for k in range(out.shape[1]):
        _output_rows_f2(m, k, g0, g1, bias[k], leaky, accumulate, tiles_h, tiles_w, z, line, out)


@jit
def _output_serial_f4(m, g0, g1, bias, leaky, accumulate, tiles_h, tiles_w, out):
    z = np.empty((6, 6, tiles_w), np.float32)
    line = np.empty(tiles_w * 4, np.float32)
    for k in range(out.shape[1]):
        _output_rows_f4(m, k, g0, g1, bias[k], leaky, accumulate, tiles_h, tiles_w, z, line, out)


@jit(parallel=True)
def _output_parallel_f2(m, g0, g1, bias, leaky, accumulate, tiles_h, tiles_w, out):
    for filter_index in prange(out.shape[1]):
        k = np.int64(filter_index)
        z = np.empty((4, 4, tiles_w), np.float32)
        line = np.empty(tiles_w * 2, np.float32)
        _output_rows_f2(m, k, g0, g1, bias[k], leaky, accumulate, tiles_h, tiles_w, z, line, out)


@jit(parallel=True)
def _output_parallel_f4(m, g0, g1, bias, leaky, accumulate, tiles_h, tiles_w, out):
    for filter_index in prange(out.shape[1]):
        k = np.int64(filter_index)
        z = np.empty((6, 6, tiles_w), np.float32)
        line = np.empty(tiles_w * 4, np.float32)
        _output_rows_f4(m, k, g0, g1, bias[k], leaky, accumulate, tiles_h, tiles_w, z, line, out)


_OUTPUT_KERNELS = {(2, False): _output_serial_f2, (4, False): _output_serial_f4,
                   (2, True): _output_parallel_f2, (4, True): _output_parallel_f4}


def output_transform(m: np.ndarray, first_row: int, end_row: int, bias: np.ndarray, leaky: bool, tile: int,
                     tiles_h: int, tiles_w: int, out: np.ndarray, accumulate: bool = False,
                     threaded: bool = True) -> None:
    """Output pixels of tile rows [first_row, end_row) = A^T M A of their tiles (m as input_transform's v)
    + bias[k], then Darknet's leaky if `leaky`; with `accumulate` the result is added to `out` instead."""
    count = (end_row - first_row) * tiles_w
    parallel = threaded and threads_pay(m.shape[0] * m.shape[1] * count, out.shape[1], PARALLEL_MIN_ELEMENTS)
    _OUTPUT_KERNELS[tile, parallel](m, first_row, end_row, bias, leaky, accumulate, tiles_h, tiles_w, out)


def block_rows(channels: int, filters: int, tile: int, tiles_w: int, total_rows: int,
               budget_bytes: int) -> int:
    """Tile rows per block so that one block's transformed input and product stay within the budget."""
    per_row = tile_positions(tile) * (channels + filters) * tiles_w * 4
    return max(1, min(total_rows, budget_bytes // per_row))


def block_starts(batch: int, out_h: int, out_w: int, tile: int, rows_per_block: int) -> range:
    """First tile row of every block of `rows_per_block` tile rows over the batch."""
    return range(0, batch * tile_counts(out_h, out_w, tile)[0], rows_per_block)


def winograd_conv(x: np.ndarray, u: np.ndarray, bias: np.ndarray, pad: int, tile: int, leaky: bool,
                  rows_per_block: int, v: np.ndarray, m: np.ndarray, out: np.ndarray,
                  accumulate: bool = False, starts: Sequence[int] | None = None, threaded: bool = True) -> None:
    """The convolution: x (B, C, H, W), u = transform_weights(...), out (B, K, OH, OW) (x and out may be
    strided views with contiguous rows). Tile rows are processed `rows_per_block` at a time through the
    flat scratch buffers v (>= a*a*(C+1)*rows_per_block*tiles_w floats) and m
    (>= a*a*(K+1)*rows_per_block*tiles_w, see scratch_sizes), so that a block stays in cache between its three
    steps. With `accumulate`, out += the convolution
    (bias and leaky must then be zero / off). `starts` (default: every block, `block_starts`) picks the
    blocks to compute: blocks write disjoint output rows, so callers may run disjoint sets of them side by
    side, each with its own v and m and `threaded` False."""
    tiles_h, tiles_w = tile_counts(out.shape[2], out.shape[3], tile)
    positions = u.shape[0]
    total = x.shape[0] * tiles_h
    if starts is None:
        starts = block_starts(x.shape[0], out.shape[2], out.shape[3], tile, rows_per_block)
    for first in starts:
        end = min(total, first + rows_per_block)
        count = (end - first) * tiles_w
        # one spare channel row per tile position (see scratch_sizes); the transforms loop over the real ones
        vb = v[:positions * (x.shape[1] + 1) * count].reshape(positions, x.shape[1] + 1, count)
        mb = m[:positions * (out.shape[1] + 1) * count].reshape(positions, out.shape[1] + 1, count)
        input_transform(x, first, end, pad, tile, tiles_h, tiles_w, vb, threaded)
        np.matmul(u, vb[:, :-1], out=mb[:, :-1])
        output_transform(mb, first, end, bias, leaky, tile, tiles_h, tiles_w, out, accumulate, threaded)


def scratch_sizes(channels: int, filters: int, tile: int, tiles_w: int, rows_per_block: int) -> tuple[int, int]:
    """Float counts of the v and m buffers winograd_conv needs: a*a tile positions of (channels + 1) and
    (filters + 1) rows of the block's tiles. The spare row keeps the positions' starts off multiples of 4 KiB:
    a tile's a*a values are written (and read back) one per position, and with 32 channels of 256 tiles
    (a 32x32 map) those addresses were 32 KiB apart, all in one set of the 8-way L1 cache. Forward, 1 thread,
    Winograd before / after (AMD EPYC): 32->64 at 32x32 650 -> 301 us, 16->16 at 32x32 252 -> 81, 64->128
    at 24x24 991 -> 597, 64->128 at 16x16 430 -> 257; whole passes, alternating processes: digits-seg
    0.81-0.83, VGG-16 0.94, darknet19 0.97, the others unchanged."""
    tiles = rows_per_block * tiles_w
    return tile_positions(tile) * (channels + 1) * tiles, tile_positions(tile) * (filters + 1) * tiles
