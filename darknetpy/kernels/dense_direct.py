"""Dense (ungrouped) k x k convolution at inference straight from a copy of the image, register-blocked as in
kernels/pointwise.py: for layers where im2col + GEMM writes a patch matrix k*k times the image (9x for 3x3,
2.25x for 3x3 at stride 2) and reads it back from memory, and Winograd does not apply (strides, kernel sizes)
or does not pay.

The image is first copied, per channel, into zero-bordered *column phases*: phase q of stride s holds the
padded row's columns q, q + s, q + 2s, ... so the taps kx of LANES outputs along an output row are LANES
consecutive values of phase (kx*d) % s from column ox + (kx*d) // s -- one unaligned vector load, at any
stride and dilation, with no bounds to check (the border is zeros). A convolution is then a product like a
1x1 layer's over C*k*k "taps" instead of C channels: each block of 4 filters x 4 output vectors holds 16
vectors of accumulators while the loop runs down the taps (4 loads at the tap's offset into the phases,
4 broadcast weights, 16 multiply-adds); the shift and Darknet's leaky are applied on the way out. Summation
order per output: taps in weight order (channel, row, column) with fused multiply-adds, then the shift.

An output row is covered by vectors of LANES outputs, the last one ending at the row's end (it may overlap
the one before and recompute those outputs to the same values); rows narrower than LANES take one partial
vector (masked store; its lanes past the row read the copy's next values and are dropped). Output vectors
are taken 4 at a time in row order, a short last group repeating its last vector; filters left over from
the 4-blocks take blocks of one.

Shapes: weights (F, C*k*k) C-contiguous, shift (F,); x (B, C, H, W) with contiguous rows; out (B, F*OH*OW)
C-contiguous.
"""
from __future__ import annotations

import numpy as np

from . import jit
from .handoff import finish_share, share_out_when_it_pays, start_share
from .pointwise import outer_fma
from .simd import LANES, add, fma, load, splat, store_outputs

# Blocks are shared out among the awake helper threads (kernels/handoff.py) from this many multiply-adds per
# image. Alone, 2 threads / 1 (AMD EPYC): 32->32 at 64x64 (38M) 0.66, 32->64 at 40x40 (29M) 0.73, 16->32
# at 64x64 (19M) 0.87 but 32->64 at 32x32 (19M) 1.11 and 16->32 at 32x32 (5M) 1.35.
PARALLEL_MIN_MACS = 1 << 24


def phase_shape(channels: int, ksize: int, stride: int, dilation: int, out_h: int, out_w: int,
                stride_y: int) -> tuple[int, int, int, int]:
    """(C, s, rows, columns) of the column-phase copy: every row and column an output's taps reach."""
    rows = (out_h - 1) * stride_y + (ksize - 1) * dilation + 1
    columns = out_w + ((ksize - 1) * dilation) // stride
    return channels, stride, rows, columns


@jit
def fill_phases(x, pad_y, pad_x, phases):
    """phases[c, q, r, j] = image row r - pad_y, column j*s + q - pad_x of x (C, H, W); zero outside it."""
    height, width = x.shape[1], x.shape[2]
    stride, rows, columns = phases.shape[1], phases.shape[2], phases.shape[3]
    # per phase, the columns j whose image column is inside the image: j0 <= j < j1
    inside = np.empty((stride, 2), np.int64)
    for q in range(stride):
        first = pad_x - q   # image column 0 is j*s = pad_x - q
        inside[q, 0] = min(columns, max(0, -(-first // stride)))
        inside[q, 1] = max(inside[q, 0], min(columns, (width - 1 + first) // stride + 1))
    for c in range(x.shape[0]):
        for r in range(rows):
            y = r - pad_y
            if y < 0 or y >= height:
                for q in range(stride):
                    phases[c, q, r, :] = 0.0
                continue
            source = x[c, y]
            for q in range(stride):
                target = phases[c, q, r]
                j0, j1 = inside[q, 0], inside[q, 1]
                target[:j0] = 0.0
                target[j1:] = 0.0
                if stride == 1:
                    target[j0:j1] = source[j0 - pad_x:j1 - pad_x]
                elif stride != 2:
                    for j in range(j0, j1):
                        target[j] = source[j * stride + q - pad_x]
            if stride == 2:
                # both phases in one pass over the row (LLVM vectorises the pair as one interleaved load;
                # a loop per phase walks the row twice at stride 2: ~4x slower here)
                even, odd = phases[c, 0, r], phases[c, 1, r]
                lo, hi = max(inside[0, 0], inside[1, 0]), min(inside[0, 1], inside[1, 1])
                for j in range(inside[0, 0], lo):
                    even[j] = source[2 * j - pad_x]
                for j in range(inside[1, 0], lo):
                    odd[j] = source[2 * j + 1 - pad_x]
                if hi > lo:
                    # indices from 0 up: Numba then knows they are not negative (no wraparound test)
                    pairs, even_run, odd_run = source[2 * lo - pad_x:], even[lo:hi], odd[lo:hi]
                    for k in range(hi - lo):
                        even_run[k] = pairs[2 * k]
                        odd_run[k] = pairs[2 * k + 1]
                for j in range(max(lo, hi), inside[0, 1]):
                    even[j] = source[2 * j - pad_x]
                for j in range(max(lo, hi), inside[1, 1]):
                    odd[j] = source[2 * j + 1 - pad_x]


def tap_offsets(channels: int, ksize: int, dilation: int, stride_x: int, rows: int, columns: int) -> np.ndarray:
    """Offset of tap t = (c*k + ky)*k + kx into the flat phase copy, for the output at row 0, column 0."""
    c, ky, kx = np.meshgrid(np.arange(channels), np.arange(ksize), np.arange(ksize), indexing="ij")
    phase, shift = (kx * dilation) % stride_x, (kx * dilation) // stride_x
    offsets = ((c * stride_x + phase) * rows + ky * dilation) * columns + shift
    return np.ascontiguousarray(offsets.reshape(-1), np.int64)


def vector_starts(out_h: int, out_w: int, stride_y: int, columns: int) -> np.ndarray:
    """Per output vector, in row order: (its first output in the plane, its first value in a phase plane,
    its outputs)."""
    count = min(LANES, out_w)
    per_row = -(-out_w // LANES)
    ox = np.minimum(np.arange(per_row) * LANES, out_w - count)
    oy = np.arange(out_h)[:, None]
    starts = np.empty((out_h, per_row, 3), np.int64)
    starts[..., 0] = oy * out_w + ox
    starts[..., 1] = oy * stride_y * columns + ox
    starts[..., 2] = count
    return starts.reshape(-1, 3)


@jit(inline="always")
def _finish_row(out, row, shift_value, a0, a1, a2, a3, o0, o1, o2, o3, count, leaky_out):
    """One filter's four output vectors (at o0..o3 of its plane `row`)."""
    bias = splat(shift_value)
    store_outputs(out, row + o0, count, add(a0, bias), leaky_out)
    store_outputs(out, row + o1, count, add(a1, bias), leaky_out)
    store_outputs(out, row + o2, count, add(a2, bias), leaky_out)
    store_outputs(out, row + o3, count, add(a3, bias), leaky_out)


@jit(inline="always")
def _four_by_four(weights, shift, offsets, phases, out, f, plane, s0, s1, s2, s3, o0, o1, o2, o3, count,
                  leaky_out):
    zero = splat(0.0)
    a = (zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero)
    for t in range(offsets.shape[0]):
        at = offsets[t]
        a = outer_fma(splat(weights[f, t]), splat(weights[f + 1, t]), splat(weights[f + 2, t]),
                      splat(weights[f + 3, t]), load(phases, at + s0), load(phases, at + s1),
                      load(phases, at + s2), load(phases, at + s3), a)
    a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23, a30, a31, a32, a33 = a
    _finish_row(out, f * plane, shift[f], a00, a01, a02, a03, o0, o1, o2, o3, count, leaky_out)
    _finish_row(out, (f + 1) * plane, shift[f + 1], a10, a11, a12, a13, o0, o1, o2, o3, count, leaky_out)
    _finish_row(out, (f + 2) * plane, shift[f + 2], a20, a21, a22, a23, o0, o1, o2, o3, count, leaky_out)
    _finish_row(out, (f + 3) * plane, shift[f + 3], a30, a31, a32, a33, o0, o1, o2, o3, count, leaky_out)


@jit(inline="always")
def _one_by_four(weights, shift, offsets, phases, out, f, plane, s0, s1, s2, s3, o0, o1, o2, o3, count,
                 leaky_out):
    zero = splat(0.0)
    a0 = zero; a1 = zero; a2 = zero; a3 = zero
    for t in range(offsets.shape[0]):
        at = offsets[t]
        w = splat(weights[f, t])
        a0 = fma(w, load(phases, at + s0), a0); a1 = fma(w, load(phases, at + s1), a1)
        a2 = fma(w, load(phases, at + s2), a2); a3 = fma(w, load(phases, at + s3), a3)
    _finish_row(out, f * plane, shift[f], a0, a1, a2, a3, o0, o1, o2, o3, count, leaky_out)


@jit
def dense_share(flags, ticket, first_flag, flag_count, before, weights, shift, offsets, phases, starts, out,
                leaky_out, chunk, first, last):
    """Tasks first..last-1 of one image, a task being (4 output vectors, `chunk` filters) in that order; a
    share function of kernels/handoff.py."""
    start_share(flags, ticket, first_flag, flag_count, before)
    filters = weights.shape[0]
    plane = out.shape[0] // filters
    vectors = starts.shape[0]
    groups = (vectors + 3) // 4
    chunks = (filters + chunk - 1) // chunk
    for task in range(first, last):
        group = task // chunks
        f = (task - group * chunks) * chunk
        f_end = min(filters, f + chunk)
        v0 = 4 * group
        v1, v2, v3 = min(v0 + 1, vectors - 1), min(v0 + 2, vectors - 1), min(v0 + 3, vectors - 1)
        o0, o1, o2, o3 = starts[v0, 0], starts[v1, 0], starts[v2, 0], starts[v3, 0]
        s0, s1, s2, s3 = starts[v0, 1], starts[v1, 1], starts[v2, 1], starts[v3, 1]
        count = starts[v0, 2]
        while f + 4 <= f_end:
            _four_by_four(weights, shift, offsets, phases, out, f, plane, s0, s1, s2, s3, o0, o1, o2, o3, count,
                          leaky_out)
            f += 4
        while f < f_end:
            _one_by_four(weights, shift, offsets, phases, out, f, plane, s0, s1, s2, s3, o0, o1, o2, o3, count,
                         leaky_out)
            f += 1
    finish_share(flags, ticket, first_flag, flag_count, before)


def task_split(filters: int, vectors: int, threads: int) -> tuple[int, int]:
    """(filters per task, tasks) for an image of `vectors` output vectors: the filters are split too when the
    groups of 4 vectors alone are too few to share out evenly."""
    groups = -(-vectors // 4)
    chunks = min(-(-filters // 4), -(-4 * threads // groups)) if threads > 1 else 1
    chunk = -(-(-(-filters // max(chunks, 1))) // 4) * 4
    return chunk, groups * -(-filters // chunk)


def dense_forward(weights: np.ndarray, shift: np.ndarray, x: np.ndarray, out: np.ndarray, out_h: int, out_w: int,
                  ksize: int, stride_y: int, stride_x: int, pad: int, dilation: int, leaky_out: bool,
                  offsets: np.ndarray, starts: np.ndarray, phases: np.ndarray, threads: int) -> None:
    """out (B, F*OH*OW) = act(conv(x) + shift) image by image, act leaky or identity (padding `pad` on every
    side). offsets = tap_offsets(...) and starts = vector_starts(...) for this shape; phases: a flat scratch
    of at least prod(phase_shape(...)) + LANES floats (a partial vector's dropped lanes read past the copy)."""
    shape = phase_shape(x.shape[1], ksize, stride_x, dilation, out_h, out_w, stride_y)
    size = shape[0] * shape[1] * shape[2] * shape[3]
    if phases.shape[0] < size + LANES or offsets.shape[0] != weights.shape[1]:
        raise ValueError(f"dense_forward: {phases.shape[0]} scratch floats, {offsets.shape[0]} taps for "
                         f"weights {weights.shape}")
    copy = phases[:size].reshape(shape)
    filters = weights.shape[0]
    chunk, tasks = task_split(filters, starts.shape[0], threads)
    work = filters * weights.shape[1] * out_h * out_w
    for b in range(x.shape[0]):
        fill_phases(x[b], pad, pad, copy)
        share_out_when_it_pays(dense_share, (weights, shift, offsets, phases, starts, out[b], leaky_out, chunk),
                               tasks, work, PARALLEL_MIN_MACS)
