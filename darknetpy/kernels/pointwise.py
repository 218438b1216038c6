"""Pointwise (1x1, stride 1, ungrouped) convolution at inference, with its shift and leaky fused:

    out[b, f, p] = act(sum_c weights[f, c] * x[b, c, p] + shift[f])      (act: leaky or identity)

plus, when given, residual[b, f, p] (a [shortcut] fused into its 1x1 layer: darknetpy/fusion.py), added to
each task's outputs right after the task has stored them (still in L1 or L2). Added inside the blocks, as
each vector is stored, the sum was a second compilation of the whole kernel (2.1 s more on a first run,
yolo-fastest-1.1's `detect` 1.5 s slower cold) for the same speed in whole passes.

An image's (C, N) planes already are the right-hand matrix of a product with the (F, C) weights, and BLAS
does run it -- but the depthwise-separable networks' 1x1 layers read few channels of large maps (16 -> 16
at 160x160), where OpenBLAS packs the whole input for a product only 16 deep (24 GFLOP/s) and the shift and
activation then take one more pass over the output. Here each output block, 4 filters x TILE pixels, is 16
vectors of accumulators held in registers (kernels/simd.py) while the loop runs down the input channels:
per channel, four vector loads of the input, four broadcast weights and 16 multiply-adds; the shift and the
activation are applied on the way out. The input tile (C x TILE values) is read from L1 or L2 by every
filter block. Summation order: channel by channel, with fused multiply-adds, then the shift (BLAS sums in
its own order: float32 rounding only).

Pixel tails narrower than a tile take blocks of one or two vectors; the last vector of a plane is placed to
end exactly at the plane's end and may overlap the one before (it recomputes those outputs to the same
values), so planes need at least LANES pixels (`MIN_PIXELS`) and no vector reads or writes past a plane.
Filters left over from the 4-blocks take a block of their own.

The narrow blocks (4x2 and 8x1: tiles under TILE pixels, the small maps of Winograd products and of the
10x10-20x20 layers) use each weight on only one or two vectors, so they wait on the weights whenever those
come from memory, as they do in a pass (other layers' data has pushed them out): a block reads its 4 rows
of C weights, 8 cache lines each at C = 128 -- streams too short for the hardware prefetcher. Each step
therefore also asks for the line of the next block's weights it will need (simd.prefetch). digits-yolo's
128 -> 256 3x3 layers at 10x10 (Winograd, 25 tiles) took 0.47-0.72 ms in the pass against 0.43 alone; with
the prefetch 0.43 in the pass; whole passes (old and new code in alternating processes, 1 thread) digits-yolo
0.83-0.85, yolov3-tiny 0.93-0.97, darknet19 0.89-0.93. The 4x4 block reuses each weight on four vectors
and on every tile after the first, so only a layer's first tile prefetches, and only when the layer runs on
one thread: in one process, taking turns pass by pass, yolo-fastest-1.1-xl 0.969 at 1 thread (0.988 at batch
8), 0.981 at 2 threads, yolov3-tiny 0.990, digits-yolo 1.00; prefetching in the shared-out layers too gave
1.006-1.020 at 2 threads, and on every tile 1.02-1.05 (alternating processes). The Winograd products follow
the same rule (FETCH_ON_ONE_THREAD, a layer run as one part; a tile position's weights are read once per
tile, and 512 -> 512 at 28x28 streams 16.8 MB of them): 1 thread VGG-16 0.94, darknet19 0.96, yolov4-tiny
0.96, digits-yolo 0.975, yolov3-tiny 0.98-0.99; shared out, 0.96-1.03 at 2 threads.

Shapes: weights (F, C), shift (F,), x (B, C*N), out and residual (B, F*N), all C-contiguous float32; `out`
must not overlap `x` or `residual`.
"""
from __future__ import annotations

import numpy as np

from . import jit
from .handoff import finish_share, share_out, start_share
from .simd import LANES, add, fma, leaky, load, prefetch, splat, store, store_stream
from .threads import thread_count, threads_pay

TILE = 4 * LANES       # pixels per full output block
MIN_PIXELS = LANES     # the smallest plane the kernels handle
# Layers from ~2M multiply-adds (~40 us at one thread) are shared out among the threads (kernels/handoff.py).
# Smaller ones gain alone (2 threads: 448->96 at 10x10, 4.3M, 99 -> 60 us) but can lose in a pass, where the
# helper's share has to fetch its input from the other core's cache. Whole passes at 2 threads, taking turns
# in one process: from 2M against 4M, yolo-fastest-1.1-xl 0.95, yolo-fastest-1.1 0.93; from 1M against 2M,
# 1.04 and 1.01 (4M had been the best threshold while a hand-over took ~30 us, before handoff.finish_share).
PARALLEL_MIN_MACS = 1 << 21
# Outputs of at least this many bytes are written past the caches (non-temporal stores, full tiles only, when
# the output is STREAM_ALIGNMENT-aligned: layers/base.py aligned_zeros): a normal store first reads each line
# it writes, and outputs this large leave the caches before the next layer reads them. Smaller ones may still
# be in the shared L3 when the next layer starts. Whole passes, taking turns in one process, 1 thread,
# yolo-fastest-1.1-xl, streaming / not: batch 8 0.91 from 2 MiB on, 0.93 from 8 MiB, 0.97 from 16 MiB; batch 1
# 1.01 from 2 MiB (its one 4.9 MB output, which the next layer then reads from memory: 0.62 ms instead of
# 0.29), 1.01-1.02 from 1 MiB.
STREAM_MIN_BYTES = 8 << 20
STREAM_ALIGNMENT = 64
# A layer run on one thread (pointwise or Winograd) asks for the next filter block's weights during its first
# tile (see the module docstring); shared out, it does not.
FETCH_ON_ONE_THREAD = True


@jit
def _finish(out, at, acc, bias, leaky_out, stream):
    """out[at : at + LANES] = act(acc + bias), past the caches if `stream` (64-byte aligned `at`)."""
    value = add(acc, bias)
    if leaky_out:
        value = leaky(value)
    if stream:
        store_stream(out, at, value)
    else:
        store(out, at, value)


@jit(inline="always")
def _finish_four(out, row, shift_value, a0, a1, a2, a3, leaky_out, stream):
    """One filter's four vectors of a tile from `row` on."""
    bias = splat(shift_value)
    _finish(out, row, a0, bias, leaky_out, stream)
    _finish(out, row + LANES, a1, bias, leaky_out, stream)
    _finish(out, row + 2 * LANES, a2, bias, leaky_out, stream)
    _finish(out, row + 3 * LANES, a3, bias, leaky_out, stream)


@jit(inline="always")
def outer_fma(w0, w1, w2, w3, x0, x1, x2, x3, a):
    """The 16 accumulators of a 4 x 4 block (a[4*i + j]: weight i, input vector j) plus w_i * x_j, one fused
    multiply-add each (shared with kernels/dense_direct.py, which loads its inputs differently)."""
    return (fma(w0, x0, a[0]), fma(w0, x1, a[1]), fma(w0, x2, a[2]), fma(w0, x3, a[3]),
            fma(w1, x0, a[4]), fma(w1, x1, a[5]), fma(w1, x2, a[6]), fma(w1, x3, a[7]),
            fma(w2, x0, a[8]), fma(w2, x1, a[9]), fma(w2, x2, a[10]), fma(w2, x3, a[11]),
            fma(w3, x0, a[12]), fma(w3, x1, a[13]), fma(w3, x2, a[14]), fma(w3, x3, a[15]))


@jit(inline="always")
def _four_by_four(weights, shift, x, out, f, p, n, leaky_out, stream, fetch_next):
    """Filters f..f+3 at the four vectors from pixel p; asking for the next block's weights if `fetch_next`."""
    zero = splat(0.0)
    a = (zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero)
    at = p
    ahead = (f + 4) * weights.shape[1]
    for c in range(weights.shape[1]):
        if fetch_next:
            prefetch(weights, ahead + 4 * c)
        a = outer_fma(splat(weights[f, c]), splat(weights[f + 1, c]), splat(weights[f + 2, c]),
                      splat(weights[f + 3, c]), load(x, at), load(x, at + LANES), load(x, at + 2 * LANES),
                      load(x, at + 3 * LANES), a)
        at += n
    a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23, a30, a31, a32, a33 = a
    row = f * n + p
    _finish_four(out, row, shift[f], a00, a01, a02, a03, leaky_out, stream)
    _finish_four(out, row + n, shift[f + 1], a10, a11, a12, a13, leaky_out, stream)
    _finish_four(out, row + 2 * n, shift[f + 2], a20, a21, a22, a23, leaky_out, stream)
    _finish_four(out, row + 3 * n, shift[f + 3], a30, a31, a32, a33, leaky_out, stream)


@jit(inline="always")
def _four_by_two(weights, shift, x, out, f, p0, p1, n, leaky_out):
    """Filters f..f+3 at the vectors from pixels p0 and p1 (which may overlap)."""
    zero = splat(0.0)
    a00 = zero; a01 = zero; a10 = zero; a11 = zero
    a20 = zero; a21 = zero; a30 = zero; a31 = zero
    at = 0
    ahead = (f + 4) * weights.shape[1]   # the next block's weights: 4 floats a channel
    for c in range(weights.shape[1]):
        prefetch(weights, ahead + 4 * c)
        x0 = load(x, at + p0); x1 = load(x, at + p1)
        w0 = splat(weights[f, c]); w1 = splat(weights[f + 1, c])
        w2 = splat(weights[f + 2, c]); w3 = splat(weights[f + 3, c])
        a00 = fma(w0, x0, a00); a01 = fma(w0, x1, a01)
        a10 = fma(w1, x0, a10); a11 = fma(w1, x1, a11)
        a20 = fma(w2, x0, a20); a21 = fma(w2, x1, a21)
        a30 = fma(w3, x0, a30); a31 = fma(w3, x1, a31)
        at += n
    row = f * n
    bias = splat(shift[f])
    _finish(out, row + p0, a00, bias, leaky_out, False); _finish(out, row + p1, a01, bias, leaky_out, False)
    row += n
    bias = splat(shift[f + 1])
    _finish(out, row + p0, a10, bias, leaky_out, False); _finish(out, row + p1, a11, bias, leaky_out, False)
    row += n
    bias = splat(shift[f + 2])
    _finish(out, row + p0, a20, bias, leaky_out, False); _finish(out, row + p1, a21, bias, leaky_out, False)
    row += n
    bias = splat(shift[f + 3])
    _finish(out, row + p0, a30, bias, leaky_out, False); _finish(out, row + p1, a31, bias, leaky_out, False)


@jit(inline="always")
def _eight_by_one(weights, shift, x, out, f, p, n, leaky_out):
    """Filters f..f+7 at the vector from pixel p."""
    zero = splat(0.0)
    a0 = zero; a1 = zero; a2 = zero; a3 = zero; a4 = zero; a5 = zero; a6 = zero; a7 = zero
    at = p
    ahead = (f + 8) * weights.shape[1]
    for c in range(weights.shape[1]):
        prefetch(weights, ahead + 8 * c)
        xc = load(x, at)
        a0 = fma(splat(weights[f, c]), xc, a0); a1 = fma(splat(weights[f + 1, c]), xc, a1)
        a2 = fma(splat(weights[f + 2, c]), xc, a2); a3 = fma(splat(weights[f + 3, c]), xc, a3)
        a4 = fma(splat(weights[f + 4, c]), xc, a4); a5 = fma(splat(weights[f + 5, c]), xc, a5)
        a6 = fma(splat(weights[f + 6, c]), xc, a6); a7 = fma(splat(weights[f + 7, c]), xc, a7)
        at += n
    row = f * n + p
    _finish(out, row, a0, splat(shift[f]), leaky_out, False); row += n
    _finish(out, row, a1, splat(shift[f + 1]), leaky_out, False); row += n
    _finish(out, row, a2, splat(shift[f + 2]), leaky_out, False); row += n
    _finish(out, row, a3, splat(shift[f + 3]), leaky_out, False); row += n
    _finish(out, row, a4, splat(shift[f + 4]), leaky_out, False); row += n
    _finish(out, row, a5, splat(shift[f + 5]), leaky_out, False); row += n
    _finish(out, row, a6, splat(shift[f + 6]), leaky_out, False); row += n
    _finish(out, row, a7, splat(shift[f + 7]), leaky_out, False)


@jit(inline="always")
def _one_by_four(weights, shift, x, out, f, p0, p1, p2, p3, n, leaky_out):
    """Filter f at the vectors from pixels p0..p3 (which may overlap)."""
    zero = splat(0.0)
    a0 = zero; a1 = zero; a2 = zero; a3 = zero
    at = 0
    for c in range(weights.shape[1]):
        wc = splat(weights[f, c])
        a0 = fma(wc, load(x, at + p0), a0); a1 = fma(wc, load(x, at + p1), a1)
        a2 = fma(wc, load(x, at + p2), a2); a3 = fma(wc, load(x, at + p3), a3)
        at += n
    row = f * n
    bias = splat(shift[f])
    _finish(out, row + p0, a0, bias, leaky_out, False); _finish(out, row + p1, a1, bias, leaky_out, False)
    _finish(out, row + p2, a2, bias, leaky_out, False); _finish(out, row + p3, a3, bias, leaky_out, False)


@jit
def product_tile(weights, shift, x, out, p, n, f_lo, f_hi, leaky_out, stream, fetch_next):
    """Filters f_lo..f_hi-1 over the pixels p..min(p + TILE, n) - 1 of one image (also the Winograd
    products' kernel: kernels/winograd.py)."""
    width = min(TILE, n - p)
    vectors = (width + LANES - 1) // LANES
    last = n - LANES   # where a plane's last vector starts
    p0 = min(p, last)  # p itself unless the tile is narrower than a vector
    p1 = min(p + LANES, last)
    p2 = min(p + 2 * LANES, last)
    p3 = min(p + 3 * LANES, last)
    f = f_lo
    if width == TILE:
        while f + 4 <= f_hi:
            _four_by_four(weights, shift, x, out, f, p, n, leaky_out, stream, fetch_next)
            f += 4
    elif vectors == 1:
        while f + 8 <= f_hi:
            _eight_by_one(weights, shift, x, out, f, p0, n, leaky_out)
            f += 8
    else:
        while f + 4 <= f_hi:
            _four_by_two(weights, shift, x, out, f, p, p1, n, leaky_out)
            if vectors > 2:
                _four_by_two(weights, shift, x, out, f, p2, p3, n, leaky_out)
            f += 4
    while f < f_hi:
        _one_by_four(weights, shift, x, out, f, p0, p1, p2, p3, n, leaky_out)
        f += 1


@jit
def _add_residual(out, residual, p, width, n, f_lo, f_hi):
    """out[f * n + p : f * n + p + width] += the same of residual, for the filters f_lo..f_hi-1."""
    for f in range(f_lo, f_hi):
        start = f * n + p
        target, source = out[start:start + width], residual[start:start + width]
        for i in range(width):
            target[i] += source[i]


@jit
def pointwise_tasks(weights, shift, x, out, residual, leaky_out, chunk, first, last, stream, fetch_first):
    """Tasks first..last-1 of the layer, a task being (image, pixel tile, `chunk` filters) in that order:
    out[b] = act(weights @ x[b] + shift) (+ residual[b] unless it is None) over the task's pixels and filters
    (see the module docstring);
    `stream`: full tiles are stored past the caches (out 64-byte aligned, planes a multiple of LANES long)."""
    n = x.shape[1] // weights.shape[1]
    filters = weights.shape[0]
    tiles = (n + TILE - 1) // TILE
    chunks = (filters + chunk - 1) // chunk
    for task in range(first, last):
        b = task // (tiles * chunks)
        tile = task // chunks - b * tiles
        f_lo = (task % chunks) * chunk
        f_hi = min(f_lo + chunk, filters)
        product_tile(weights, shift, x[b], out[b], tile * TILE, n, f_lo, f_hi, leaky_out, stream,
                     fetch_first and tile == 0)
        if residual is not None:
            _add_residual(out[b], residual[b], tile * TILE, min(TILE, n - tile * TILE), n, f_lo, f_hi)


def adds_residual(n: int) -> bool:
    """Whether planes of n pixels can take a residual: each task then adds it to its own pixels, which
    another task's vectors must not write too (a last tile narrower than a vector, after other tiles, stores
    a vector that reaches back into the tile before)."""
    return n >= MIN_PIXELS and (n <= TILE or n % TILE == 0 or n % TILE >= LANES)


def task_count(batch: int, n: int, filters: int, chunk: int) -> int:
    return batch * -(-n // TILE) * -(-filters // chunk)


@jit
def pointwise_share(flags, ticket, first_flag, flag_count, before, weights, shift, x, out, residual, leaky_out, stream,
                    chunk, first, last):
    """pointwise_tasks as a share function of kernels/handoff.py."""
    start_share(flags, ticket, first_flag, flag_count, before)
    pointwise_tasks(weights, shift, x, out, residual, leaky_out, chunk, first, last, stream, False)
    finish_share(flags, ticket, first_flag, flag_count, before)


def pointwise_forward(weights: np.ndarray, shift: np.ndarray, x: np.ndarray, out: np.ndarray,
                      leaky_out: bool, residual: np.ndarray | None = None) -> None:
    """out (B, F, N) = act(weights (F, C) @ x (B, C, N) + shift) (+ residual (B, F, N) if given and
    adds_residual(N)), act leaky or identity; N >= MIN_PIXELS. Arrays C-contiguous float32, `out` apart from
    `x` and `residual`."""
    batch, channels, n = x.shape
    filters = weights.shape[0]
    if (n < MIN_PIXELS or weights.shape[1] != channels or out.shape != (batch, filters, n)
            or not (x.flags.c_contiguous and out.flags.c_contiguous)
            or residual is not None and (residual.shape != out.shape or not residual.flags.c_contiguous
                                         or not adds_residual(n))):
        raise ValueError(f"pointwise_forward: weights {weights.shape}, x {x.shape}, out {out.shape}, residual "
                         f"{None if residual is None else residual.shape}")
    x2, out2 = x.reshape(batch, -1), out.reshape(batch, -1)
    residual2 = None if residual is None else residual.reshape(batch, -1)
    tiles = task_count(batch, n, 1, 1)
    threads = thread_count()
    # (a residual is added to what was stored: streaming it past the caches would send the sum back to memory)
    stream = (residual is None and STREAM_MIN_BYTES <= out.nbytes and out.ctypes.data % STREAM_ALIGNMENT == 0
              and n % LANES == 0)
    if not threads_pay(batch * filters * channels * n, tiles * -(-filters // 4), PARALLEL_MIN_MACS):
        pointwise_tasks(weights, shift, x2, out2, residual2, leaky_out, filters, 0, tiles, stream,
                        FETCH_ON_ONE_THREAD)
        return
    # split the filters too when the pixel tiles alone are too few to share out evenly
    chunks = min(-(-filters // 4), -(-4 * threads // tiles))
    chunk = -(-(-(-filters // max(chunks, 1))) // 4) * 4
    tasks = task_count(batch, n, filters, chunk)
    share_out(pointwise_share, (weights, shift, x2, out2, residual2, leaky_out, stream, chunk), tasks, threads)
