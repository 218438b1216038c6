"""im2col / col2im for convolution as a matrix product.

Shapes: image (C, H, W); columns (C*KH*KW, OH*OW) with rows ordered (channel, ky, kx) as Darknet's weights.
Output pixel (oy, ox) reads input row oy*stride_y - pad + ky*dilation (zero outside the image).
"""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np
from numba import prange

from . import jit
from .threads import thread_count, threads_pay

# Elements below which starting the thread team costs more than it saves (memory-bound loops, ~0.3 ns per
# element: ~0.3 ms of serial work, see threads.threads_pay; measured break-even on 2 cores ~450k).
PARALLEL_MIN_ELEMENTS = 1 << 20
# Parallel batch loops hand each thread this many chunks of planes (some balance, little per-chunk setup).
CHUNKS_PER_THREAD = 4


@jit
def im2col(image, ksize, stride_y, stride_x, pad, dilation, out_h, out_w, columns):
    channels, height, width = image.shape
    for c in range(channels):
        for ky in range(ksize):
            for kx in range(ksize):
                row = (c * ksize + ky) * ksize + kx
                dy = ky * dilation - pad
                dx = kx * dilation - pad
                for oy in range(out_h):
                    iy = oy * stride_y + dy
                    base = oy * out_w
                    if iy < 0 or iy >= height:
                        for ox in range(out_w):
                            columns[row, base + ox] = 0.0
                        continue
                    for ox in range(out_w):
                        ix = ox * stride_x + dx
                        if 0 <= ix < width:
                            columns[row, base + ox] = image[c, iy, ix]
                        else:
                            columns[row, base + ox] = 0.0


@jit
def col2im_add(columns, ksize, stride_y, stride_x, pad, dilation, out_h, out_w, image):
    """image += the scatter of `columns` back onto the pixels they were read from (adjoint of im2col)."""
    channels, height, width = image.shape
    for c in range(channels):
        for ky in range(ksize):
            for kx in range(ksize):
                row = (c * ksize + ky) * ksize + kx
                dy = ky * dilation - pad
                dx = kx * dilation - pad
                for oy in range(out_h):
                    iy = oy * stride_y + dy
                    if iy < 0 or iy >= height:
                        continue
                    base = oy * out_w
                    for ox in range(out_w):
                        ix = ox * stride_x + dx
                        if 0 <= ix < width:
                            image[c, iy, ix] += columns[row, base + ox]


# ------------------------------------------------------------------------------------------ whole batch
# The batch versions work through a zero-padded copy of each plane and a table of where each output's window
# starts in it: a column is then `dst[s] = padded.flat[start[s] + tap_offset]`, one branch-free loop per tap
# over all OH*OW outputs (no per-row bounds logic, which dominated on small maps such as 14x14 or 7x7).

@functools.lru_cache(maxsize=256)
def _padded_geometry(ksize: int, stride_y: int, stride_x: int, dilation: int, out_h: int,
                     out_w: int) -> tuple[int, int, np.ndarray]:
    """(rows, cols) of the padded plane every window fits in, and the flat window start of each output
    (cached: layers call this with the same few shapes on every pass; the table is never written)."""
    rows = (out_h - 1) * stride_y + (ksize - 1) * dilation + 1
    cols = (out_w - 1) * stride_x + (ksize - 1) * dilation + 1
    oy, ox = np.meshgrid(np.arange(out_h), np.arange(out_w), indexing="ij")
    starts = (oy * stride_y * cols + ox * stride_x).reshape(-1).astype(np.int64)
    return rows, cols, starts


@jit
def _pad_plane(images, b, c, pad, padded):
    """padded[y, x] = images[b, c, y - pad, x - pad] on the image; the rest is never written (zero)."""
    height, width = images.shape[2], images.shape[3]
    y_end = min(height, padded.shape[0] - pad)
    x_end = min(width, padded.shape[1] - pad)
    if x_end <= 0:
        return
    for y in range(max(0, -pad), y_end):
        src = images[b, c, y]
        dst = padded[y + pad, pad:]
        for x in range(max(0, -pad), x_end):
            dst[x] = src[x]


@jit
def _im2col_plane(images, b, c, ksize, pad, dilation, starts, padded, columns):
    _pad_plane(images, b, c, pad, padded)
    flat = padded.ravel()
    wp = padded.shape[1]
    spatial = starts.shape[0]
    for ky in range(ksize):
        for kx in range(ksize):
            dst = columns[(c * ksize + ky) * ksize + kx, b * spatial:(b + 1) * spatial]
            src = flat[ky * dilation * wp + kx * dilation:]
            for s in range(spatial):
                dst[s] = src[starts[s]]


@jit
def _im2col_serial(images, ksize, pad, dilation, rows, cols, starts, columns):
    padded = np.zeros((rows, cols), np.float32)
    channels = images.shape[1]
    for task in range(images.shape[0] * channels):
        b = task // channels
        _im2col_plane(images, b, task - b * channels, ksize, pad, dilation, starts, padded, columns)


@jit(parallel=True)
def _im2col_parallel(images, ksize, pad, dilation, rows, cols, starts, columns, chunks):
    channels = images.shape[1]
    tasks = images.shape[0] * channels
    for chunk in prange(chunks):
        # one padded plane per chunk of planes: a zeroed allocation per plane cost ~15% on 7x7 maps
        padded = np.zeros((rows, cols), np.float32)
        for task in range(chunk * tasks // chunks, (chunk + 1) * tasks // chunks):
            b = task // channels
            _im2col_plane(images, b, task - b * channels, ksize, pad, dilation, starts, padded, columns)


# "Same" convolutions (stride 1, output the size of the input: 3x3 pad 1 above all) need no padded plane: a
# tap's whole column block is the plane shifted by dy*W + dx, so it is one long contiguous copy (or add); only
# the outputs whose window tap leaves the image through a side are then fixed up (zeroed), a few per row.

@jit(inline="always")
def _same_tap_geometry(ky, kx, pad, dilation, height, width):
    """Tap (ky, kx) of a same convolution: (shift, start, stop, oy0, oy1, ox0, ox1). Output j of a plane
    reads input j + shift; outputs [start, stop) are one valid run (outside it, or in rows outside
    [oy0, oy1) or columns outside [ox0, ox1), the tap is off the image)."""
    row_offset = ky * dilation - pad
    col_offset = kx * dilation - pad
    oy0 = min(max(0, -row_offset), height)
    oy1 = max(min(height, height - row_offset), oy0)
    ox0 = min(max(0, -col_offset), width)
    ox1 = max(min(width, width - col_offset), ox0)
    shift = row_offset * width + col_offset
    # the source index j + shift is clamped into the plane: what falls outside lies in an invalid column
    start = max(oy0 * width, -shift)
    stop = max(min(oy1 * width, height * width - shift), start)
    return shift, start, stop, oy0, oy1, ox0, ox1


@jit(inline="always")
def _zero_side_columns(plane_block, oy0, oy1, ox0, ox1, width):
    """Zero columns [0, ox0) and [ox1, width) of rows [oy0, oy1) of a flat (H*W) block."""
    if ox0 > 0 or ox1 < width:
        zero = np.float32(0.0)
        for oy in range(oy0, oy1):
            row = plane_block[oy * width:(oy + 1) * width]
            for ox in range(ox0):
                row[ox] = zero
            for ox in range(ox1, width):
                row[ox] = zero


@jit(inline="always")
def _same_channel(images, columns, c, ksize, pad, dilation, adjoint):
    """Channel c of every image, tap by tap and image by image, so each of the channel's K*K column rows is
    walked front to back (the channel's planes stay in cache while they are visited K*K times).
    im2col: columns <- images. adjoint (col2im): images += columns, after zeroing each tap's invalid outputs
    in `columns` (scratch then) so that the shifted run adds nothing through them. `adjoint` is the calling
    kernel's closure constant: only one direction is compiled into it."""
    batch, height, width = images.shape[0], images.shape[2], images.shape[3]
    spatial = height * width
    zero = np.float32(0.0)
    for ky in range(ksize):
        for kx in range(ksize):
            tap_row = columns[(c * ksize + ky) * ksize + kx]
            shift, start, stop, oy0, oy1, ox0, ox1 = _same_tap_geometry(ky, kx, pad, dilation, height, width)
            if adjoint:  # decided per tap: a branch per image costs ~12% on 7x7 and 14x14 maps
                for b in range(batch):
                    block = tap_row[b * spatial:(b + 1) * spatial]
                    _zero_side_columns(block, oy0, oy1, ox0, ox1, width)
                    plane = images[b, c].reshape(-1)[start + shift:]
                    run = block[start:]
                    for j in range(stop - start):
                        plane[j] += run[j]
            else:
                for b in range(batch):
                    block = tap_row[b * spatial:(b + 1) * spatial]
                    for j in range(start):
                        block[j] = zero
                    plane = images[b, c].reshape(-1)[start + shift:]
                    run = block[start:]
                    for j in range(stop - start):
                        run[j] = plane[j]
                    for j in range(stop, spatial):
                        block[j] = zero
                    _zero_side_columns(block, oy0, oy1, ox0, ox1, width)


@functools.cache
def _same_kernels(adjoint: bool) -> tuple[Callable, Callable]:
    """(serial, parallel) channel loops of the same-convolution im2col (`adjoint`: col2im). `adjoint` is a
    closure constant so that inference compiles only im2col (one kernel taking it as an argument compiled
    both directions: 2.5 s of the README's first command)."""

    @jit
    def serial(images, columns, ksize, pad, dilation):
        for c in range(images.shape[1]):
            _same_channel(images, columns, c, ksize, pad, dilation, adjoint)

    @jit(parallel=True)
    def parallel(images, columns, ksize, pad, dilation):
        for c in prange(images.shape[1]):
            _same_channel(images, columns, c, ksize, pad, dilation, adjoint)

    return serial, parallel


def _is_same(images: np.ndarray, stride_y: int, stride_x: int, out_h: int, out_w: int) -> bool:
    return (stride_y == 1 and stride_x == 1 and out_h == images.shape[2] and out_w == images.shape[3]
            and images.flags.c_contiguous)


def im2col_batch(images: np.ndarray, ksize: int, stride_y: int, stride_x: int, pad: int, dilation: int,
                 out_h: int, out_w: int, columns: np.ndarray) -> None:
    """images (B, C, H, W) -> columns (C*K*K, B*OH*OW): image b's patch columns at [b*OH*OW, (b+1)*OH*OW),
    so one matrix product covers the whole batch."""
    parallel = threads_pay(columns.size, images.shape[0] * images.shape[1], PARALLEL_MIN_ELEMENTS)
    if _is_same(images, stride_y, stride_x, out_h, out_w):
        serial, threads = _same_kernels(False)
        (threads if parallel else serial)(images, columns, ksize, pad, dilation)
        return
    rows, cols, starts = _padded_geometry(ksize, stride_y, stride_x, dilation, out_h, out_w)
    if parallel:
        chunks = min(images.shape[0] * images.shape[1], CHUNKS_PER_THREAD * thread_count())
        _im2col_parallel(images, ksize, pad, dilation, rows, cols, starts, columns, chunks)
    else:
        _im2col_serial(images, ksize, pad, dilation, rows, cols, starts, columns)


@jit
def _col2im_plane(columns, b, c, ksize, pad, dilation, starts, padded, images):
    flat = padded.ravel()
    for i in range(flat.shape[0]):
        flat[i] = 0.0
    wp = padded.shape[1]
    spatial = starts.shape[0]
    for ky in range(ksize):
        for kx in range(ksize):
            src = columns[(c * ksize + ky) * ksize + kx, b * spatial:(b + 1) * spatial]
            dst = flat[ky * dilation * wp + kx * dilation:]
            for s in range(spatial):
                dst[starts[s]] += src[s]
    height, width = images.shape[2], images.shape[3]
    y_end = min(height, padded.shape[0] - pad)
    x_end = min(width, padded.shape[1] - pad)
    for y in range(max(0, -pad), y_end):
        src_row = padded[y + pad, pad:]
        dst_row = images[b, c, y]
        for x in range(max(0, -pad), x_end):
            dst_row[x] += src_row[x]


@jit
def _col2im_serial(columns, ksize, pad, dilation, rows, cols, starts, images):
    padded = np.empty((rows, cols), np.float32)
    channels = images.shape[1]
    for task in range(images.shape[0] * channels):
        b = task // channels
        _col2im_plane(columns, b, task - b * channels, ksize, pad, dilation, starts, padded, images)


@jit(parallel=True)
def _col2im_parallel(columns, ksize, pad, dilation, rows, cols, starts, images, chunks):
    channels = images.shape[1]
    tasks = images.shape[0] * channels
    for chunk in prange(chunks):
        padded = np.empty((rows, cols), np.float32)
        for task in range(chunk * tasks // chunks, (chunk + 1) * tasks // chunks):
            b = task // channels
            _col2im_plane(columns, b, task - b * channels, ksize, pad, dilation, starts, padded, images)


def col2im_batch_add(columns: np.ndarray, ksize: int, stride_y: int, stride_x: int, pad: int, dilation: int,
                     out_h: int, out_w: int, images: np.ndarray) -> None:
    """images (B, C, H, W) += the adjoint of im2col_batch; each (b, c) plane is owned by one task. `columns`
    is scratch: the same-convolution path zeroes its entries whose taps fall off the image."""
    parallel = threads_pay(columns.size, images.shape[0] * images.shape[1], PARALLEL_MIN_ELEMENTS)
    if _is_same(images, stride_y, stride_x, out_h, out_w):
        serial, threads = _same_kernels(True)
        (threads if parallel else serial)(images, columns, ksize, pad, dilation)
        return
    rows, cols, starts = _padded_geometry(ksize, stride_y, stride_x, dilation, out_h, out_w)
    if parallel:
        chunks = min(images.shape[0] * images.shape[1], CHUNKS_PER_THREAD * thread_count())
        _col2im_parallel(columns, ksize, pad, dilation, rows, cols, starts, images, chunks)
    else:
        _col2im_serial(columns, ksize, pad, dilation, rows, cols, starts, images)


@jit(parallel=True)
def batch_to_channel_major(x, out):
    """(B, C, S) -> (C, B*S) copy, for 1x1 convolutions over a batch."""
    batch, channels, spatial = x.shape
    for c in prange(channels):
        for b in range(batch):
            for s in range(spatial):
                out[c, b * spatial + s] = x[b, c, s]


@jit(parallel=True)
def channel_major_to_batch(x, out):
    """(C, B*S) -> (B, C, S) copy."""
    batch, channels, spatial = out.shape
    for bc in prange(batch * channels):
        b = bc // channels
        c = bc - b * channels
        for s in range(spatial):
            out[b, c, s] = x[c, b * spatial + s]


@jit(parallel=True)
def channel_major_to_batch_add(x, out):
    """out (B, C, S) += x (C, B*S)."""
    batch, channels, spatial = out.shape
    for bc in prange(batch * channels):
        b = bc // channels
        c = bc - b * channels
        for s in range(spatial):
            out[b, c, s] += x[c, b * spatial + s]
