"""The ways [convolutional] convolves, one object each, chosen once per allocation by `choose_engines`:

  * GemmEngine: whole-batch im2col + one BLAS matrix product per group (all groups in one batched matmul);
  * DirectEngine: groups with few channels each (depthwise above all), and first layers reading 1-4 channels
    of large images with output rows too narrow for the dense direct kernel, are convolved by a direct Numba
    kernel (kernels/depthwise.py): tiny per-group matrix products, or an im2col matrix 9x the size of the
    image, cost far more than the arithmetic;
  * DenseDirectEngine: ungrouped k x k layers (k > 1) that Winograd does not take (strides, other kernel
    sizes, few channels, first layers) at inference run a register-blocked Numba kernel over a column-phase
    copy of the image, shift and leaky fused (kernels/dense_direct.py): no patch matrix to write and read;
  * PointwiseEngine: ungrouped 1x1 stride-1 layers at inference run a register-blocked Numba kernel with the
    shift and leaky fused (kernels/pointwise.py): BLAS packs the whole input of these products only a few
    channels deep, and the epilogue is one more pass over the output;
  * ChannelsLastDepthwiseEngine: depthwise layers on small planes (up to 16x16 outputs) at inference are
    convolved channels-last (kernels/depthwise_channels_last.py), every tap a run over the channels: the
    direct kernel's fixed costs per plane dominate there;
  * WinogradEngine: 3x3 stride-1 ungrouped convolutions at inference use F(2x2,3x3), or F(4x4,3x3) on large
    maps (kernels/winograd.py), with the weights transformed once, a layer one kernel whose blocks (or, on
    maps too small to cut into blocks, filters) the helper threads share; in training it computes dL/dx of
    large maps for a GemmEngine (the convolution of dy with the rotated, transposed weights, no col2im).

An engine owns its scratch (created on first use: inference never needs the training buffers; the
channels-last engine shares its zero-bordered copy of the image, per thread, with the layers that place
images of the same size the same way). Inference:
`prepare(weights, shift)` with the batch norm already folded in, then `forward(x, out, epilogue)`, which
adds the shift and applies the activation. Training: `forward_train(x, weights)` returns the raw
convolution as a channel-major (F, B*S) product (the epilogue turns it into the output and keeps it as BN's
saved input); `backward(x, weights, dy_t, grad_weights, dx)` takes dL/d(product) in that same layout.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..kernels import dense_direct, depthwise_channels_last, depthwise_same3x3, pointwise, winograd
from ..kernels.depthwise import grouped_conv_backward, grouped_conv_forward, splits_columns
from ..kernels.im2col import (batch_to_channel_major, channel_major_to_batch, channel_major_to_batch_add,
                              col2im_batch_add, im2col_batch)
from ..kernels.scratch import thread_floats, thread_scratch
from ..kernels.simd import LANES
from ..kernels.threads import thread_count
from ..thread_environment import blas_workers_spin
from .base import FLOAT
from .epilogue import Epilogue

# The direct kernel beats im2col + GEMM (forward + backward, 3x3 kernels, 1 thread) for groups of up to
# 8 input and 8 output channels, and for any layer reading at most 4 channels per group (first layers on
# RGB or grey images: 2-3x faster forward, the whole im2col matrix is never written).
DIRECT_MAX_IN_PER_GROUP = 8
DIRECT_MAX_OUT_PER_GROUP = 8
DIRECT_MAX_IN_ANY_OUT = 4
# ...but only once the batch's im2col matrix would leave the L1/L2 sweet spot: below this many bytes GEMM is
# as fast or faster (forward, 1 thread, GEMM / direct: grey 28x28 0.68, 56x56 0.71, 64x64 0.91; grey 28x28 at
# batch 8, 220 KiB, 1.08; grey 96x96, 324 KiB, 1.37), and a network that never needs the direct kernel
# never compiles it (the README's MNIST command: 9 of its 20 s of first-run compilation).
DIRECT_MIN_PATCH_BYTES = 192 << 10
# Winograd: output maps with at least this many pixels use 4x4 tiles (4x fewer multiplications, the
# transforms stay cheap relative to the products); smaller maps use 2x2 tiles (16 products, less tile
# padding waste on e.g. 13x13 maps, and 10x more accurate).
WINOGRAD_F4_MIN_PIXELS = 48 * 48
# ... and maps from 28x28 whose sides are multiples of 4 (no tile padding). Two networks of each rule taking
# turns in one process, new / old: VGG-16 (three 512 -> 512 layers at 28x28) 0.954 at 1 thread, 0.909 at 2,
# 0.956 at batch 8; darknet19 0.992, 0.970, 0.996; digits-yolo (40x40) 1.006 and digits-seg (32x32) 0.987
# and 1.007. Maps of 26x26 and below had measured 1.02-1.74 with 4x4 tiles.
WINOGRAD_F4_WHOLE_MIN_PIXELS = 28 * 28
# Tile rows go through the transform -> product -> transform steps in blocks of about this many bytes of
# transformed data, so a block stays in cache; never fewer tiles per block than this, so that the matrix
# products keep a useful width and the transformed weights are not re-read too often.
WINOGRAD_BLOCK_BYTES = 2 << 20
WINOGRAD_MIN_BLOCK_TILES = 256
# Training computes dL/dx of large maps by Winograd too; on small maps such as MNIST's 14x14 and 7x7 the
# per-tile-row transforms cost more than they save. (The training forward keeps im2col + GEMM: the weight
# gradient needs the im2col matrix anyway.) Only very large maps: on yolov3-tiny at batch 8 GEMM + col2im was
# as fast at 1 thread on the 52x52 and 26x26 maps (26x26, 256 channels: 2x faster), and at 2 threads the
# Winograd blocks' many mid-sized products made OpenBLAS spin: 3-5x their CPU time, up to 1.4 s more per
# step on a loaded machine. It still wins on the 208x208 map (61 vs 80 ms at 1 thread, 90 vs 150 at 2).
WINOGRAD_TRAIN_MIN_PIXELS = 128 * 128
# At inference im2col + GEMM beats Winograd on layers reading few channels while the batch's im2col matrix
# stays small: the Winograd products are then tile-position GEMMs only C deep, which BLAS runs far below
# its peak, while the patch matrix stays in the caches. Measured (forward, batch 1, Intel Xeon with 2 MiB L2
# per core; Winograd / GEMM time): 1 thread, 16->32 at 80x80 1.24, 32->64 at 40x40 1.49, 16->16 at
# 64x64 1.43, but 64->128 at 20x20 0.80 and 16->32 at 128x128 (9 MiB of patches) 0.81; 2 threads, where the
# small products split poorly, 1.4-2.1 on every 16- and 32-channel layer up to 7 MiB and 1.26-1.79 on
# 64-channel ones up to 6 MiB, 0.91 on 64->128 at 20x20. Larger patch matrices (yolov3-tiny's 208x208 and
# 104x104 layers, batches of 8) keep Winograd.
# With more than one thread, a layer's blocks are dealt out to the threads (kernels/winograd.py): a layer of
# at least WINOGRAD_PARALLEL_MIN_MACS multiply-adds is cut into at least one block per thread, unless a block
# would then hold fewer tiles than the product kernel's vector (digits-yolo's 10x10 maps at batch 1). Such a
# layer's filters are split among the threads instead, when each gets at least WINOGRAD_MIN_GROUP_FILTERS
# (each thread transforms the whole input, which is small there).
WINOGRAD_PARALLEL_MIN_MACS = 1 << 22
WINOGRAD_MIN_GROUP_FILTERS = 16
# GEMM when the layer reads at most this many channels and its patch matrix takes at most this many bytes.
# The rule holds at any thread count now that the Winograd layer kernel deals its blocks to helper threads:
# through OpenBLAS's threads GEMM had won at 2 threads up to 64 channels and 8 MiB and up to 128 channels and
# 4 MiB. Whole passes at 2 threads, batch 1, this rule / that one, alternating processes (AMD EPYC): darknet19
# 0.79-0.82, yolov3-tiny 0.90-0.97, digits-seg 0.61-0.96, digits-yolo 0.71-1.03.
GEMM_OVER_WINOGRAD = (32, 4 << 20)
# On cores with less L2 the crossover comes sooner. AMD EPYC (Zen 4, 1 MiB of L2 per core),
# forward, batch 1, Winograd / GEMM: 16->32 at 80x80 (3.5 MiB of patches) 0.67, 32->64 at 40x40 (1.8 MiB)
# 0.77-0.84, 16->32 at 40x40 (0.9 MiB) 0.95, 16->16 at 32x32 (0.6 MiB) 2.5; whole passes alternating in
# one process with patches up to the L2 size instead of 4 MiB: digits-yolo 0.92, digits-seg 0.97 (batch
# 1), unchanged elsewhere (0.99-1.00).
GEMM_OVER_WINOGRAD_LARGE_L2 = 2 << 20
# Whatever the channels, a Winograd product narrower than this many tiles (a 7x7 map at batch 1 has 16 2x2 tiles)
# runs far below BLAS's rate, and im2col + GEMM (49 columns) is faster. AMD EPYC, whole passes at batch 1,
# GEMM on the 7x7 maps against Winograd, alternating in one process, 1 / 2 threads: darknet19 0.99 / 0.91-0.94,
# darknet53 1.00 / 0.96, ResNet-18 0.97 / 0.96, ResNet-50 0.99 / 0.99. At 25 tiles (digits-yolo's 10x10 maps)
# GEMM was slower (1.04 at 1 thread), and at 32 (7x7 at batch 2: darknet19 1.01-1.03), 128 (batch 8: 1.05-1.09)
# too; 13x13 and 14x14 maps (49 tiles) lost 6-12% with GEMM.
WINOGRAD_MIN_PRODUCT_TILES = 20
# Ungrouped k x k layers (k > 1) that Winograd does not take -- strides, other kernel sizes, few channels
# (where the rules above chose im2col + GEMM) and first layers on 1-4 channels -- run the dense direct kernel
# (kernels/dense_direct.py) when their output rows are at least this wide: narrower rows leave most of its
# vector lanes idle (512->1024 at 7x7: 10.8 ms against 6.5 by GEMM). Forward alone, 1 thread, AMD EPYC, dense
# direct / the path before: yolov4-tiny's 32->64 3x3/2 at 208x208 0.82-0.87 of the direct kernel in the pass
# (0.52 of GEMM at 2 threads), 3->16 3x3/2 at 320x320 0.65 (yolo-fastest-xl's first layer), 3->32 at 224x224
# 0.73 of the direct kernel; against GEMM on the layers the Winograd rules leave it, 16->16 at 16x16 0.82,
# 16->32 at 32x32 0.69, 32->64 at 32x32 0.77, 16->16 at 32x32 0.64, 32->32 at 64x64 0.51, 32->64 at 40x40
# 0.87, at batch 8 16->16 at 32x32 0.36, 32->64 0.56.
# Like the direct kernel, only from patch matrices of DIRECT_MIN_PATCH_BYTES: below that it gains a few
# microseconds (1->16 at 28x28: 11 against 12 us) and would cost a network that needs it nowhere else its
# first-run compilation (the README's MNIST command: 6.4 s cold against about 3).
DENSE_DIRECT_MIN_WIDTH = LANES
# Ungrouped 1x1 layers take the register-blocked kernel (kernels/pointwise.py) at inference, on every map from
# MIN_PIXELS on: no BLAS product. OpenBLAS's idle workers spin for ~0.1 s after each product unless
# OPENBLAS_THREAD_TIMEOUT was set before numpy loaded (darknetpy/thread_environment.py), which fails whenever
# numpy is imported first -- the usual order in a script; at 2 threads a worker woken once a pass then
# spins on the core darknetpy's helper needs (yolo-fastest-1.1-xl: 30-56 ms a pass against 10-18, the
# worker busy for all of it). Until then, 1x1 layers on small maps with many weights went to BLAS at 2+
# threads (alone, BLAS / kernel: 448->96 at 10x10 0.75, 96->448 0.73, 96->255 0.71, 256->128 at 13x13 0.89,
# 1024->256 0.91, 512->255 0.90), but whole passes at 2 threads gained nothing from it even with OpenBLAS
# configured (one process, kernel / BLAS on those layers: yolo-fastest-1.1-xl 0.954-0.966, darknet19
# 0.950-0.990, digits-yolo 0.944-0.995, yolov3-tiny 0.999-1.003, yolov4-tiny 0.970-1.005). At one thread
# the kernel is as fast or faster everywhere measured: 0.22-0.45 of BLAS on 8-16 channels of 160x160 maps,
# 0.6-0.9 from 32 to 512 channels, 0.97-1.04 at 1024-2048.
# The im2col layers' products (k x k layers on maps too small for the other engines) take the kernel when one
# image's patch matrix stays well inside the L2 cache: digits-seg's 128->256 3x3 layer at 8x8 (295 KiB),
# whole passes in one process, kernel / BLAS 0.951-0.962 at 2 threads, 0.957-1.008 at 1. Longer ones stay
# with BLAS, which blocks them for the caches: darknet19's 512->1024 3x3 layers at 7x7 (K = 4608, 0.9 MB of
# patches) took 4.3-4.7 ms at 2 threads in the pass against 4.6-5.5 through the kernel (whole pass 1.04).
# Products under KERNEL_PRODUCT_MIN_MACS stay with BLAS too: a few microseconds either way, and the kernel's
# first-run compilation (1.5 s) would fall on networks that need it nowhere else (the README's MNIST
# command). Where OpenBLAS's workers spin and darknetpy runs more than one thread, the kernel takes every
# such product (GemmEngine).
KERNEL_PRODUCT_MAX_PATCH_BYTES = 512 << 10
KERNEL_PRODUCT_MIN_MACS = 8 << 20

# Depthwise layers on small planes are convolved channels-last at inference (kernels/depthwise_channels_last.py):
# the plane-at-a-time kernel's fixed costs per plane dominate there. Forward, 1 thread, channels-last /
# planes, alone: 448 channels at 10x10 0.29, 272 at 20x20 stride 2 0.28, 1024 at 7x7 0.20, 512 at 14x14 0.51,
# 5x5 kernels on 96 at 10x10 0.53; in Yolo-Fastest-XL's pass: 0.36 at 448x10x10, 0.37 at 272x20x20 stride
# 2, 0.50-0.57 with 5x5 kernels at 10x10. From 20x20 planes on the planes kernel is as fast or faster (272
# channels at 20x20, stride 1: 0.76 alone, 1.05-1.17 in the pass; 64 at 20x20 1.01, 32 1.17; 1.3-3.8 on
# larger planes; 192 at 40x40 stride 2 1.04). So: output planes of at most 16x16 from input planes of at
# most 20x20 -- except 3x3 stride-2 layers whose phases the direct kernel fills from a column split (even
# widths, padding 1): Yolo-Fastest-XL's 272x20x20 -> 10x10 took 0.077-0.079 ms there against 0.114-0.118
# ms channels-last, in the pass -- and same-size 3x3 layers, which the direct kernel runs straight from the
# image (kernels/depthwise_same3x3.py): straight / channels-last, forward alone, 1 thread,
# 448x10x10 0.72, 1024x7x7 0.64, 512x14x14 0.48, 256x16x16 0.36, 96x10x10 0.80.
CHANNELS_LAST_MAX_OUTPUT_PIXELS = 16 * 16
CHANNELS_LAST_MAX_INPUT_PIXELS = 20 * 20


@dataclass(frozen=True)
class ConvGeometry:
    """Everything about a convolution's shape that an engine needs."""
    channels: int
    height: int
    width: int
    filters: int
    out_h: int
    out_w: int
    size: int
    stride_y: int
    stride_x: int
    padding: int
    dilation: int
    groups: int

    @property
    def in_per_group(self) -> int:
        return self.channels // self.groups

    @property
    def out_per_group(self) -> int:
        return self.filters // self.groups

    @property
    def is_pointwise(self) -> bool:
        return self.size == 1 and self.stride_y == 1 and self.stride_x == 1 and self.padding == 0

    @property
    def suits_direct(self) -> bool:
        narrow_groups = (self.in_per_group <= DIRECT_MAX_IN_PER_GROUP
                         and self.out_per_group <= DIRECT_MAX_OUT_PER_GROUP)
        if self.groups > 1 and narrow_groups:
            return True
        return self.in_per_group <= DIRECT_MAX_IN_ANY_OUT and not self.is_pointwise

    @property
    def is_depthwise(self) -> bool:
        return self.groups == self.channels == self.filters and self.groups > 1

    @property
    def suits_channels_last(self) -> bool:
        """Whether inference convolves this layer channels-last (see CHANNELS_LAST_MAX_OUTPUT_PIXELS)."""
        column_split = splits_columns(self.size, self.stride_y, self.stride_x, self.padding, self.dilation,
                                      self.width)
        same_3x3 = depthwise_same3x3.suits(self.in_per_group, self.out_per_group, self.size, self.stride_y,
                                           self.stride_x, self.padding, self.dilation, self.height, self.width,
                                           self.out_h, self.out_w)
        return (self.is_depthwise and not column_split and not same_3x3
                and self.out_h * self.out_w <= CHANNELS_LAST_MAX_OUTPUT_PIXELS
                and self.height * self.width <= CHANNELS_LAST_MAX_INPUT_PIXELS)

    def patch_bytes(self, batch: int) -> int:
        """Size of the im2col matrix of `batch` images."""
        return batch * self.channels * self.size * self.size * self.out_h * self.out_w * np.dtype(FLOAT).itemsize

    @property
    def winograd_tile(self) -> int:
        """Output tile size of a Winograd convolution of this shape (0: not applicable)."""
        if self.size != 3 or (self.stride_y, self.stride_x) != (1, 1) or self.dilation != 1 or self.groups != 1:
            return 0
        pixels = self.out_h * self.out_w
        whole_tiles = self.out_h % 4 == 0 and self.out_w % 4 == 0
        return 4 if pixels >= WINOGRAD_F4_MIN_PIXELS or whole_tiles and pixels >= WINOGRAD_F4_WHOLE_MIN_PIXELS else 2


def choose_engines(g: ConvGeometry, batch: int) -> tuple[
        GemmEngine | DirectEngine | WinogradEngine | ChannelsLastDepthwiseEngine | DenseDirectEngine,
        GemmEngine | DirectEngine]:
    """(inference engine, training engine) for a batch of `batch` images: the one selection rule."""
    if g.suits_direct and g.groups > 1:
        # grouped layers keep the direct kernel in training too
        direct = DirectEngine(g, batch)
        return (ChannelsLastDepthwiseEngine(g) if g.suits_channels_last else direct), direct
    winograd_dx = None
    if g.winograd_tile and g.padding <= 2 and g.height * g.width >= WINOGRAD_TRAIN_MIN_PIXELS:
        # dL/dx of a stride-1 3x3 convolution is itself one: of dy with the rotated, transposed weights
        winograd_dx = WinogradEngine(g.filters, g.channels, g.height, g.width, 2 - g.padding, batch,
                                     g.winograd_tile)
    # Training a whole batch, im2col + GEMM beats the direct kernel on ungrouped layers reading few channels
    # (the first layer): its weight gradient is one well-shaped product (MNIST's first layer, batch 128:
    # backward 10.6 -> 7.7 ms, 1 thread).
    gemm = GemmEngine(g, batch, winograd_dx)
    if g.is_pointwise and g.groups == 1 and g.out_h * g.out_w >= pointwise.MIN_PIXELS:
        return PointwiseEngine(g), gemm
    winograd_pays = g.winograd_tile and not gemm_beats_winograd(g, batch)
    if g.groups == 1 and g.size > 1 and g.out_w >= DENSE_DIRECT_MIN_WIDTH \
            and g.patch_bytes(batch) >= DIRECT_MIN_PATCH_BYTES \
            and (g.channels <= DIRECT_MAX_IN_ANY_OUT or not winograd_pays):
        return DenseDirectEngine(g), gemm
    if g.suits_direct and g.patch_bytes(batch) >= DIRECT_MIN_PATCH_BYTES:
        return DirectEngine(g, batch), gemm
    if winograd_pays:
        return WinogradEngine(g.channels, g.filters, g.out_h, g.out_w, g.padding, batch, g.winograd_tile), gemm
    return gemm, gemm


def gemm_beats_winograd(g: ConvGeometry, batch: int, l2_bytes: int | None = None) -> bool:
    """Whether im2col + GEMM is the faster inference path for a Winograd-shaped layer (see the constants),
    on a core with an L2 cache of `l2_bytes` (this machine's unless given)."""
    tiles_h, tiles_w = winograd.tile_counts(g.out_h, g.out_w, g.winograd_tile)
    if batch * tiles_h * tiles_w < WINOGRAD_MIN_PRODUCT_TILES:
        return True
    patches = g.patch_bytes(batch)
    l2_bytes = l2_cache_bytes() if l2_bytes is None else l2_bytes
    if l2_bytes < GEMM_OVER_WINOGRAD_LARGE_L2 and patches > l2_bytes:
        return False
    max_channels, max_bytes = GEMM_OVER_WINOGRAD
    return g.channels <= max_channels and patches <= max_bytes


@functools.cache
def l2_cache_bytes(folder: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int:
    """The level-2 cache of CPU 0 as Linux reports it; GEMM_OVER_WINOGRAD_LARGE_L2 (the machine the
    one-thread rule was first measured on) where it cannot be read."""
    try:
        for index in sorted(folder.glob("index*")):
            if (index / "level").read_text().strip() == "2":
                size = (index / "size").read_text().strip().upper()
                units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
                return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
    except (OSError, ValueError):
        pass
    return GEMM_OVER_WINOGRAD_LARGE_L2


class _ChannelMajorProduct:
    """The (F, B*S) product buffer of the training forward (and of batched GEMM inference)."""

    def __init__(self, g: ConvGeometry, batch: int):
        self.g = g
        self.batch = batch
        self.product: np.ndarray | None = None

    def _product_buffer(self) -> np.ndarray:
        if self.product is None:
            self.product = np.empty((self.g.filters, self.batch * self.g.out_h * self.g.out_w), FLOAT)
        return self.product

    def _planes(self, channel_major: np.ndarray) -> np.ndarray:
        """A (F, B*S) buffer seen as (B, F, OH, OW) planes (a strided view, no copy)."""
        g = self.g
        return channel_major.reshape(g.filters, self.batch, g.out_h, g.out_w).transpose(1, 0, 2, 3)

    def parameters_changed(self) -> None:
        """The training weights changed (caches derived from them are stale)."""


class GemmEngine(_ChannelMajorProduct):
    name = "gemm"

    def __init__(self, g: ConvGeometry, batch: int, input_gradient: WinogradEngine | None = None):
        super().__init__(g, batch)
        self.input_gradient = input_gradient
        self.columns: np.ndarray | None = None
        self.dcolumns: np.ndarray | None = None
        self._columns_hold_input = False
        self._weights: np.ndarray | None = None
        self._matrix: np.ndarray | None = None
        self._shift: np.ndarray | None = None
        # inference by the register-blocked kernel ("The im2col layers' products ..." among this module's
        # constants): possible for ungrouped k x k layers on planes of a vector or more, and taken whatever
        # BLAS does for products that stay in the cache
        pixels = g.out_h * g.out_w
        self._kernel_can_multiply = not g.is_pointwise and g.groups == 1 and pixels >= pointwise.MIN_PIXELS
        self._kernel_multiplies = (self._kernel_can_multiply and g.patch_bytes(1) <= KERNEL_PRODUCT_MAX_PATCH_BYTES
                                   and g.filters * g.channels * g.size ** 2 * pixels >= KERNEL_PRODUCT_MIN_MACS)

    def _columns_buffer(self) -> np.ndarray | None:
        """Whole-batch im2col (K, B*S): one matrix product per group covers every image (a 1x1 convolution
        of a single image needs no columns at all)."""
        g = self.g
        if self.columns is None and not (g.is_pointwise and self.batch == 1):
            self.columns = np.empty((g.channels * g.size ** 2, self.batch * g.out_h * g.out_w), FLOAT)
        return self.columns

    def _fill_columns(self, x: np.ndarray, shared: bool = False) -> np.ndarray:
        """The (K, B*S) patch matrix of the batch: in the layer's own buffer (kept for the backward pass), or
        `shared` with the thread's other layers (inference, where nothing reads it after the product)."""
        g = self.g
        if shared and not (g.is_pointwise and self.batch == 1):
            rows, width = g.channels * g.size ** 2, self.batch * g.out_h * g.out_w
            columns = thread_floats("gemm columns", rows * width).reshape(rows, width)
        else:
            columns = self._columns_buffer()
        if columns is None:
            return x[0].reshape(x.shape[1], -1)
        if g.is_pointwise:
            batch_to_channel_major(x.reshape(x.shape[0], x.shape[1], -1), columns)
        else:
            im2col_batch(x, g.size, g.stride_y, g.stride_x, g.padding, g.dilation, g.out_h, g.out_w, columns)
        return columns

    def _grouped(self, matrix: np.ndarray) -> np.ndarray:
        return matrix.reshape(self.g.groups, -1, matrix.shape[-1])

    def prepare(self, weights: np.ndarray, shift: np.ndarray) -> None:
        self._weights, self._shift = weights, shift
        if self._kernel_can_multiply:
            self._matrix = np.ascontiguousarray(weights.reshape(self.g.filters, -1), FLOAT)
            self._shift = np.ascontiguousarray(shift, FLOAT)

    def _kernel_takes_product(self) -> bool:
        """Whether this inference pass multiplies by the register-blocked kernel instead of BLAS: the products
        that stay in the cache, and every one it can take where BLAS's idle workers would spin on the cores
        darknetpy's threads need."""
        return self._kernel_multiplies or (self._kernel_can_multiply and thread_count() > 1 and blas_workers_spin())

    def forward(self, x: np.ndarray, out: np.ndarray, epilogue: Epilogue) -> None:
        g = self.g
        batch = x.shape[0]
        out3 = out.reshape(batch, g.filters, -1)
        if self._kernel_takes_product():
            # each image's (K, S) patch matrix, then one kernel call: every image's (F, S) planes straight
            # into the output
            rows, pixels = g.channels * g.size ** 2, g.out_h * g.out_w
            columns = thread_floats("gemm columns", batch * rows * pixels).reshape(batch, rows, pixels)
            for b in range(batch):
                im2col_batch(x[b:b + 1], g.size, g.stride_y, g.stride_x, g.padding, g.dilation, g.out_h, g.out_w,
                             columns[b])
            pointwise.pointwise_forward(self._matrix, self._shift, columns, out3, epilogue.activation.fuses_leaky)
            epilogue.activation.apply_unless_fused(out3)
            return
        if g.is_pointwise:
            # each image's (C, S) planes already are the right-hand matrix and its (F, S) product is already
            # in the output layout: one product per image, no copies (yolo-fastest-xl at batch 8: the 1x1
            # layers took 269 ms through the channel-major buffers, ~8x their batch-1 time)
            w_g = self._weights.reshape(g.groups, g.out_per_group, -1)
            for b in range(batch):
                np.matmul(w_g, x[b].reshape(g.groups, g.in_per_group, -1), out=self._grouped(out3[b]))
            epilogue.shift_activate(out3, self._shift)
            return
        cols = self._fill_columns(x, shared=True)
        self._columns_hold_input = False
        # a single image's product is already in the output layout: write it there directly
        target = out3[0] if batch == 1 else \
            thread_floats("gemm product", g.filters * batch * g.out_h * g.out_w).reshape(g.filters, -1)
        np.matmul(self._weights.reshape(g.groups, g.out_per_group, -1), self._grouped(cols),
                  out=self._grouped(target))
        if batch > 1:
            channel_major_to_batch(target, out3)
        epilogue.shift_activate(out3, self._shift)

    def forward_train(self, x: np.ndarray, weights: np.ndarray) -> np.ndarray:
        g = self.g
        product = self._product_buffer()
        cols = self._fill_columns(x)
        self._columns_hold_input = True
        np.matmul(weights.reshape(g.groups, g.out_per_group, -1), self._grouped(cols), out=self._grouped(product))
        return product

    def backward(self, x: np.ndarray, weights: np.ndarray, dy_t: np.ndarray, grad_weights: np.ndarray,
                 dx: np.ndarray | None) -> None:
        g = self.g
        cols = self.columns if self._columns_hold_input and self.columns is not None else self._fill_columns(x)
        self._columns_hold_input = False
        dy_g = self._grouped(dy_t)
        # as (K, F) = cols . dy^T: OpenBLAS runs this orientation 5-10% faster than dy . cols^T here
        grad_weights.reshape(g.groups, g.out_per_group, -1)[...] += \
            np.matmul(self._grouped(cols), dy_g.transpose(0, 2, 1)).transpose(0, 2, 1)
        if dx is None:
            return
        if self.input_gradient is not None:
            self.input_gradient.accumulate_input_gradient(self._planes(dy_t), weights, dx)
            return
        if self.dcolumns is None:
            self.dcolumns = np.empty((cols.shape[0], cols.shape[1]), FLOAT)
        w_g = weights.reshape(g.groups, g.out_per_group, -1)
        np.matmul(w_g.transpose(0, 2, 1), dy_g, out=self._grouped(self.dcolumns))
        if g.is_pointwise:
            channel_major_to_batch_add(self.dcolumns, dx.reshape(dx.shape[0], dx.shape[1], -1))
        else:
            col2im_batch_add(self.dcolumns, g.size, g.stride_y, g.stride_x, g.padding, g.dilation, g.out_h,
                             g.out_w, dx)

    def parameters_changed(self) -> None:
        if self.input_gradient is not None:
            self.input_gradient.forget_weights()


class DirectEngine(_ChannelMajorProduct):
    name = "direct"

    def __init__(self, g: ConvGeometry, batch: int):
        super().__init__(g, batch)
        self._zero_shift = np.zeros(g.filters, FLOAT)
        self._weights: np.ndarray | None = None
        self._shift: np.ndarray | None = None

    def prepare(self, weights: np.ndarray, shift: np.ndarray) -> None:
        self._weights, self._shift = weights, shift

    def forward(self, x: np.ndarray, out: np.ndarray, epilogue: Epilogue) -> None:
        g = self.g
        fuse_leaky = epilogue.activation.fuses_leaky
        grouped_conv_forward(x, self._weights, self._shift, g.stride_y, g.stride_x, g.padding, g.dilation, out,
                             fuse_leaky)
        epilogue.activation.apply_unless_fused(out)

    def forward_train(self, x: np.ndarray, weights: np.ndarray) -> np.ndarray:
        g = self.g
        product = self._product_buffer()
        grouped_conv_forward(x, weights, self._zero_shift, g.stride_y, g.stride_x, g.padding, g.dilation,
                             self._planes(product))
        return product

    def backward(self, x: np.ndarray, weights: np.ndarray, dy_t: np.ndarray, grad_weights: np.ndarray,
                 dx: np.ndarray | None) -> None:
        g = self.g
        grouped_conv_backward(x, weights, self._planes(dy_t), g.stride_y, g.stride_x, g.padding, g.dilation,
                              grad_weights, dx)


class PointwiseEngine:
    """Inference of an ungrouped 1x1 stride-1 layer (see kernels/pointwise.py)."""
    name = "pointwise"

    def __init__(self, g: ConvGeometry):
        self.g = g
        self._weights: np.ndarray | None = None
        self._shift: np.ndarray | None = None

    def prepare(self, weights: np.ndarray, shift: np.ndarray) -> None:
        g = self.g
        self._weights = np.ascontiguousarray(weights.reshape(g.filters, g.channels), FLOAT)
        self._shift = np.ascontiguousarray(shift, FLOAT)

    def forward(self, x: np.ndarray, out: np.ndarray, epilogue: Epilogue, residual: np.ndarray | None = None) -> None:
        """out = act(conv(x)) (+ residual, added after the activation, which must then be one the kernel
        applies itself: leaky or linear)."""
        g = self.g
        batch = x.shape[0]
        # a route's channel slice of a batch is strided between images: the kernel reads flat planes
        x3 = np.ascontiguousarray(x.reshape(batch, g.channels, -1))
        out3 = out.reshape(batch, g.filters, -1)
        fuse_leaky = epilogue.activation.fuses_leaky
        pointwise.pointwise_forward(self._weights, self._shift, x3, out3, fuse_leaky,
                                    None if residual is None else np.ascontiguousarray(residual).reshape(out3.shape))
        epilogue.activation.apply_unless_fused(out3)


class DenseDirectEngine:
    """Inference of an ungrouped k x k layer straight from a column-phase copy of the image (see
    kernels/dense_direct.py)."""
    name = "dense direct"

    def __init__(self, g: ConvGeometry):
        self.g = g
        shape = dense_direct.phase_shape(g.channels, g.size, g.stride_x, g.dilation, g.out_h, g.out_w, g.stride_y)
        self._copy_floats = int(np.prod(shape)) + LANES
        self._offsets = dense_direct.tap_offsets(g.channels, g.size, g.dilation, g.stride_x, shape[2], shape[3])
        self._starts = dense_direct.vector_starts(g.out_h, g.out_w, g.stride_y, shape[3])
        self._weights: np.ndarray | None = None
        self._shift: np.ndarray | None = None

    def prepare(self, weights: np.ndarray, shift: np.ndarray) -> None:
        self._weights = np.ascontiguousarray(weights.reshape(self.g.filters, -1), FLOAT)
        self._shift = np.ascontiguousarray(shift, FLOAT)

    def forward(self, x: np.ndarray, out: np.ndarray, epilogue: Epilogue) -> None:
        g = self.g
        batch = x.shape[0]
        dense_direct.dense_forward(self._weights, self._shift, x, out.reshape(batch, -1), g.out_h, g.out_w, g.size,
                                   g.stride_y, g.stride_x, g.padding, g.dilation, epilogue.activation.fuses_leaky,
                                   self._offsets, self._starts, thread_floats("dense phases", self._copy_floats),
                                   thread_count())
        epilogue.activation.apply_unless_fused(out.reshape(batch, g.filters, -1))


def _zero_bordered_scratch(shape: tuple[int, int, int], height: int, width: int, pad: int) -> np.ndarray:
    """This thread's zeroed scratch of `shape` for images of height x width placed at (pad, pad), shared by
    every layer that asks for the same: the channels-last kernel writes only the image's cells, so for the
    same placement the zero border stays valid, and the layers that share one scratch find it in the cache
    (Yolo-Fastest-XL's five 448-channel 10x10 layers: 100 instead of 170 us each with a scratch per layer,
    which has left the cache by the next use)."""
    return thread_scratch(("channels-last depthwise", shape, height, width, pad), lambda: np.zeros(shape, FLOAT))


class ChannelsLastDepthwiseEngine:
    """Inference of a depthwise layer on small planes, channels-last (see CHANNELS_LAST_MAX_OUTPUT_PIXELS)."""
    name = "channels-last"

    def __init__(self, g: ConvGeometry):
        self.g = g
        self._taps: np.ndarray | None = None
        self._shift: np.ndarray | None = None
        self._padded_shape = depthwise_channels_last.padded_shape(
            g.channels, g.height, g.width, g.size, g.stride_y, g.stride_x, g.padding, g.dilation, g.out_h, g.out_w)
        self._offsets = depthwise_channels_last.tap_offsets(g.size, g.dilation, self._padded_shape)

    def prepare(self, weights: np.ndarray, shift: np.ndarray) -> None:
        self._taps, self._shift = depthwise_channels_last.taps_of(weights), shift

    def forward(self, x: np.ndarray, out: np.ndarray, epilogue: Epilogue) -> None:
        g = self.g
        padded = _zero_bordered_scratch(self._padded_shape, g.height, g.width, g.padding)
        fuse_leaky = epilogue.activation.fuses_leaky
        depthwise_channels_last.depthwise_channels_last_forward(
            x, self._taps, self._offsets, self._shift, g.stride_y, g.stride_x, g.padding, padded, out,
            fuse_leaky)
        epilogue.activation.apply_unless_fused(out)


@dataclass(frozen=True)
class WinogradPlan:
    """How a WinogradEngine walks its tile rows: `rows` per block, the blocks dealt round-robin to `parts`
    threads, each with its own scratch (v, m) of v_size and m_size floats; with filter_groups > 1 (= parts)
    every thread takes every block, for its share of the filters."""
    rows: int
    parts: int
    v_size: int
    m_size: int
    filter_groups: int = 1

    def scratch(self) -> tuple[np.ndarray, np.ndarray]:
        """(v, m), one row per part, taken in the calling thread: every Winograd layer of the thread shares
        them."""
        return (thread_floats("winograd v", self.parts * self.v_size).reshape(self.parts, self.v_size),
                thread_floats("winograd m", self.parts * self.m_size).reshape(self.parts, self.m_size))


def winograd_plan(channels: int, filters: int, out_h: int, out_w: int, batch: int, tile: int,
                  threads: int) -> WinogradPlan:
    """Blocks of about WINOGRAD_BLOCK_BYTES and at least WINOGRAD_MIN_BLOCK_TILES tiles, all of nearly the
    same size (a short last block would leave the product kernel short rows), and with more than one thread
    at least one block per thread (see WINOGRAD_PARALLEL_MIN_MACS)."""
    tiles_h, tiles_w = winograd.tile_counts(out_h, out_w, tile)
    total = batch * tiles_h
    rows = winograd.block_rows(channels, filters, tile, tiles_w, total, WINOGRAD_BLOCK_BYTES)
    rows = max(rows, min(total, -(-WINOGRAD_MIN_BLOCK_TILES // tiles_w)))
    parts = 1
    macs = winograd.tile_positions(tile) * channels * filters * total * tiles_w
    filter_groups = 1
    if threads > 1 and macs >= WINOGRAD_PARALLEL_MIN_MACS:
        split = min(rows, -(-total // threads))
        if (total // -(-total // split)) * tiles_w >= pointwise.MIN_PIXELS:   # the smallest block's tiles
            rows, parts = split, threads
        elif filters >= WINOGRAD_MIN_GROUP_FILTERS * threads:
            parts = filter_groups = threads
    blocks = -(-total // rows)
    rows = -(-total // blocks)
    v_size, m_size = winograd.scratch_sizes(channels, filters, tile, tiles_w, rows)
    # a block split has no more parts than blocks; a filter split gives every part all of them
    return WinogradPlan(rows, parts if filter_groups > 1 else min(parts, blocks), v_size, m_size, filter_groups)


class WinogradEngine:
    """A stride-1 3x3 ungrouped convolution from in_channels to out_channels with an out_h x out_w output,
    by Winograd tiles of `tile` x `tile` outputs."""
    name = "winograd"

    def __init__(self, in_channels: int, out_channels: int, out_h: int, out_w: int, padding: int, batch: int,
                 tile: int):
        self.in_channels, self.out_channels = in_channels, out_channels
        self.out_h, self.out_w = out_h, out_w
        self.padding = padding
        self.batch = batch
        self.tile = tile
        self._plan: WinogradPlan | None = None
        self._transformed: np.ndarray | None = None
        self._shift: np.ndarray | None = None

    def _block_plan(self) -> WinogradPlan:
        if self._plan is None:
            self._plan = winograd_plan(self.in_channels, self.out_channels, self.out_h, self.out_w, self.batch,
                                       self.tile, thread_count())
        return self._plan

    def prepare(self, weights: np.ndarray, shift: np.ndarray) -> None:
        # only the transform is kept: not keeping the folded weights saves a weights-sized array per layer
        # (34 MB on yolov3-tiny)
        self._transformed = winograd.transform_weights(weights, self.tile)
        self._shift = shift

    def _convolve(self, x: np.ndarray, out: np.ndarray, leaky: bool, accumulate: bool) -> None:
        plan = self._block_plan()
        v, m = plan.scratch()
        winograd.winograd_conv(x, self._transformed, self._shift, self.padding, self.tile, leaky, plan.rows, v, m,
                               out, accumulate=accumulate, filter_groups=plan.filter_groups)

    def forward(self, x: np.ndarray, out: np.ndarray, epilogue: Epilogue) -> None:
        fuse_leaky = epilogue.activation.fuses_leaky
        self._convolve(x, out, fuse_leaky, accumulate=False)
        epilogue.activation.apply_unless_fused(out)

    def accumulate_input_gradient(self, dy: np.ndarray, weights: np.ndarray, dx: np.ndarray) -> None:
        """dx += dL/dx of the convolution by `weights` (this engine runs the transposed convolution)."""
        if self._transformed is None:
            self.prepare(winograd.transposed_weights(weights), np.zeros(self.out_channels, FLOAT))
        self._convolve(dy, dx, False, accumulate=True)

    def forget_weights(self) -> None:
        self._transformed = None
