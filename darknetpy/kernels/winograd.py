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

import numpy as np

from . import jit
from .activations import leaky_float32
from .handoff import finish_share, share_out, start_share
from . import pointwise
from .pointwise import MIN_PIXELS, TILE, product_tile
from .simd import add, fma, load_first, splat, store_first

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


# ------------------------------------------------------------------------------------------------ the layer
# A layer is convolved in blocks of tile rows, each taken through input transform -> products -> output
# transform while it is in the caches. The products M[t] = U[t] @ V[t] run on the register-blocked kernel of
# kernels/pointwise.py (the tiles are its pixels): the whole layer is then one Numba call, which helper
# threads (kernels/handoff.py) can share by blocks. Through numpy's matmul (OpenBLAS) a layer took three
# calls per block, transforms threaded by Numba and products by OpenBLAS, each waking its own threads per
# step: at 2 threads the layers reading 64-128 channels of 26x26-52x52 maps (one block each) ran no faster
# than at 1. Measured alone on the AMD EPYC, this kernel / those steps, blocks split so that every thread
# has one (2 threads, medians of three runs): 64->64 at 52x52 0.45, 128->128 at 26x26 0.67, 64->64 at
# 104x104 0.63, 128->128 at 52x52 0.71, 256->256 at 26x26 0.87, 512->512 at 13x13 0.90, 256->512 at 13x13
# 0.93, 32->64 at 112x112 0.73, 128->256 at 28x28 0.98, 256->512 at 14x14 0.94; 1 thread 0.90-1.03.
# Splitting the filters instead, every thread transforming the whole input, measured 0.73-1.23 on these, so
# it is used only where the tiles are too few to cut into blocks (conv_engines.winograd_plan).

def block_rows(channels: int, filters: int, tile: int, tiles_w: int, total_rows: int,
               budget_bytes: int) -> int:
    """Tile rows per block so that one block's transformed input and product stay within the budget."""
    per_row = tile_positions(tile) * (channels + filters) * tiles_w * 4
    return max(1, min(total_rows, budget_bytes // per_row))


def scratch_sizes(channels: int, filters: int, tile: int, tiles_w: int, rows_per_block: int) -> tuple[int, int]:
    """Float counts of the v and m buffers a block of `rows_per_block` tile rows needs: a*a tile positions of
    (channels + 1) and (filters + 1) rows of the block's tiles. The spare row keeps the positions' starts off
    multiples of 4 KiB: a tile's a*a values are written (and read back) one per position, and with 32
    channels of 256 tiles (a 32x32 map) those addresses were 32 KiB apart, all in one set of the 8-way L1
    cache. Forward, 1 thread, Winograd before / after (AMD EPYC): 32->64 at 32x32 650 -> 301 us, 16->16 at
    32x32 252 -> 81, 64->128 at 24x24 991 -> 597, 64->128 at 16x16 430 -> 257; whole passes, alternating
    processes: digits-seg 0.81-0.83, VGG-16 0.94, darknet19 0.97, the others unchanged."""
    tiles = rows_per_block * tiles_w
    return tile_positions(tile) * (channels + 1) * tiles, tile_positions(tile) * (filters + 1) * tiles


def _layer_share(tile: int):
    """The share function (kernels/handoff.py) of a whole layer with `tile` x `tile` output tiles: one per
    tile size, so that a network compiles only the transforms it uses."""
    positions = tile_positions(tile)
    output_rows = _output_rows_f2 if tile == 2 else _output_rows_f4

    @jit
    def share(flags, ticket, first_flag, flag_count, before, x, u, bias, pad, leaky, accumulate, rows_per_block,
              filter_groups, fetch, ranges, v_parts, m_parts, out, first, last):
        """Parts first..last-1 of the layer, in their own scratch v_parts[k], m_parts[k]: the parts form
        P / filter_groups block groups of filter_groups parts each; part k computes blocks j, j + P / G, ...
        (j = k // G) for its group's share of the filters, group k % G (filters in multiples of 4), each
        transforming the blocks' input itself; `fetch`: each position's first tile prefetches weights (see
        kernels/pointwise.py)."""
        start_share(flags, ticket, first_flag, flag_count, before)
        channels, filters = x.shape[1], out.shape[1]
        tiles_h, tiles_w = (out.shape[2] + tile - 1) // tile, (out.shape[3] + tile - 1) // tile
        total = x.shape[0] * tiles_h
        blocks = (total + rows_per_block - 1) // rows_per_block
        block_parts = v_parts.shape[0] // filter_groups
        group_filters = (filters + 4 * filter_groups - 1) // (4 * filter_groups) * 4
        small = tile == 2 and tiles_w <= SMALL_TILES_W
        # the input transform's scratch: a padded plane for small maps, phase-split rows for the others
        padded = np.empty((2 * tiles_h + 2 if small else 0, 2 * tiles_w + 2), np.float32)
        plane = np.empty((0 if small else min(rows_per_block, tiles_h) * tile + 2, tile, tiles_w + 1), np.float32)
        work = np.empty((tile + 2, tile, tiles_w + 1), np.float32)
        z = np.empty((tile + 2, tile + 2, tiles_w), np.float32)
        line = np.empty(tiles_w * tile, np.float32)
        no_shift = np.zeros(filters, np.float32)
        for part in range(first, last):
            v, m = v_parts[part], m_parts[part]
            f_lo = min(filters, (part % filter_groups) * group_filters)
            f_hi = min(filters, f_lo + group_filters)
            for block in range(part // filter_groups, blocks, block_parts):
                g0 = block * rows_per_block
                g1 = min(total, g0 + rows_per_block)
                count = (g1 - g0) * tiles_w
                # one spare channel row per tile position (see scratch_sizes)
                v_stride, m_stride = (channels + 1) * count, (filters + 1) * count
                vb = v[:positions * v_stride].reshape((positions, channels + 1, count))
                mb = m[:positions * m_stride].reshape((positions, filters + 1, count))
                for c in range(channels):
                    if small:
                        _input_small_f2_channel(x, c, g0, g1, pad, tiles_h, tiles_w, padded, vb)
                    else:
                        _input_channel(x, c, g0, g1, pad, tiles_h, tiles_w, ranges, plane, work, vb)
                for t in range(positions):
                    _product(u[t][f_lo:f_hi], v[t * v_stride:t * v_stride + channels * count],
                             m[t * m_stride + f_lo * count:t * m_stride + f_hi * count], count, no_shift, fetch)
                for k in range(f_lo, f_hi):
                    output_rows(mb, k, g0, g1, bias[k], leaky, accumulate, tiles_h, tiles_w, z, line, out)
        finish_share(flags, ticket, first_flag, flag_count, before)
    return share


@jit
def _product(weights, x, out, n, no_shift, fetch):
    """out (F x n, flat) = weights (F, C) @ x (C x n, flat): by tiles of the pointwise kernel, or, for fewer
    than MIN_PIXELS columns (a block of a few tiles), one partial vector per filter -- the same fused
    multiply-adds in the same order, so a tile's sums do not depend on the block it fell in."""
    filters = weights.shape[0]
    if n >= MIN_PIXELS:
        for p in range(0, n, TILE):
            product_tile(weights, no_shift, x, out, p, n, 0, filters, False, False, fetch and p == 0)
        return
    for f in range(filters):
        acc = splat(0.0)
        for c in range(weights.shape[1]):
            acc = fma(splat(weights[f, c]), load_first(x, c * n, n), acc)
        store_first(out, f * n, add(acc, splat(0.0)), n)


_LAYER_SHARES = {2: _layer_share(2), 4: _layer_share(4)}


def winograd_conv(x: np.ndarray, u: np.ndarray, bias: np.ndarray, pad: int, tile: int, leaky: bool,
                  rows_per_block: int, v: np.ndarray, m: np.ndarray, out: np.ndarray,
                  accumulate: bool = False, filter_groups: int = 1) -> None:
    """The convolution: x (B, C, H, W), u = transform_weights(...), out (B, K, OH, OW) (x and out may be
    strided views with contiguous rows), + bias, then Darknet's leaky if `leaky`; with `accumulate`,
    out += the convolution (bias and leaky must then be zero / off). Tile rows (tile row g: row g % tiles_h
    of image g // tiles_h) are taken `rows_per_block` at a time; v (P, >= v_size) and m (P, >= m_size) of
    scratch_sizes(..., rows_per_block) give P parts their own scratch, and the blocks are dealt round-robin
    to P / filter_groups groups of threads (helper threads: kernels/handoff.py), each thread of a group
    computing 1 / filter_groups of the filters (for layers whose tiles are too few to split into blocks: the
    input transform is then done by each of them)."""
    parts = v.shape[0]
    if m.shape[0] != parts or filter_groups < 1 or parts % filter_groups:
        raise ValueError(f"winograd_conv: scratch for {parts} and {m.shape[0]} parts, {filter_groups} filter "
                         f"groups")
    share_out(_LAYER_SHARES[tile], (x, u, bias, pad, leaky, accumulate, rows_per_block, filter_groups,
                                    pointwise.FETCH_ON_ONE_THREAD and parts == 1,
                                    _column_ranges(x.shape[3], pad, tile), v, m, out), parts, parts)
