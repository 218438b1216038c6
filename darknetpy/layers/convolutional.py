"""[convolutional] (alias [conv]): grouped, strided, dilated 2-D convolution with optional batch norm.

Three ways to convolve, chosen from the shapes:
  * "gemm": whole-batch im2col + one BLAS matrix product per group (all groups in one batched matmul);
  * "direct": groups with few channels each (depthwise above all) and first layers reading 1-4 channels
    are convolved by a direct Numba kernel (kernels/depthwise.py): tiny per-group matrix products, or an
    im2col matrix 9x the size of the image, cost far more than the arithmetic;
  * Winograd (a "gemm" layer at inference): 3x3 stride-1 ungrouped convolutions use F(2x2,3x3), or
    F(4x4,3x3) on large maps (kernels/winograd.py), with the weights transformed once and cached.
At inference the batch norm is folded into a cached copy of the weights and the bias; the direct and Winograd
kernels add the bias (and leaky) themselves, the BLAS path is followed by one fused bias+activation pass.

Training convolves into a channel-major (F, B*S) product, which one kernel turns into the (B, F, S) output
with Darknet's batch norm, the bias and leaky (kernels/batchnorm.py, "channel-major"); the product is kept as
BN's saved input. The backward runs the same fusion in reverse and leaves dL/d(product), channel-major, for
the weight-gradient product and dL/dx (im2col adjoint, the direct kernel, or on large maps Winograd).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels import activations as act
from ..kernels import batchnorm as bn_kernels
from ..kernels import winograd
from ..kernels.depthwise import grouped_conv_backward, grouped_conv_forward
from ..kernels.im2col import (batch_to_channel_major, channel_major_to_batch, channel_major_to_batch_add,
                              col2im_batch_add, im2col_batch)
from .base import FLOAT, Layer, LayerConfig, Param, Shape, c_div, option
from .batchnorm import BatchNormBlock
from .registry import register

ACTIVATION_NAMES = tuple(act.ACTIVATION_CODES)

# The direct kernel beats im2col + GEMM (forward + backward, 3x3 kernels, 1 thread) for groups of up to
# 8 input and 8 output channels, and for any layer reading at most 4 channels per group (first layers on
# RGB or grey images: 2-3x faster forward, the whole im2col matrix is never written).
DIRECT_MAX_IN_PER_GROUP = 8
DIRECT_MAX_OUT_PER_GROUP = 8
DIRECT_MAX_IN_ANY_OUT = 4
# Winograd: output maps with at least this many pixels use 4x4 tiles (4x fewer multiplications, the
# transforms stay cheap relative to the products); smaller maps use 2x2 tiles (16 products, less tile
# padding waste on e.g. 13x13 maps, and 10x more accurate).
WINOGRAD_F4_MIN_PIXELS = 48 * 48
# Tile rows go through the transform -> product -> transform steps in blocks of about this many bytes of
# transformed data, so a block stays in cache; never fewer tiles per block than this, so that the matrix
# products keep a useful width and the transformed weights are not re-read too often.
WINOGRAD_BLOCK_BYTES = 2 << 20
WINOGRAD_MIN_BLOCK_TILES = 256
# Training computes dL/dx of large maps by Winograd too (the convolution of dy with the rotated weights, no
# col2im); on small maps such as MNIST's 14x14 and 7x7 the per-tile-row transforms cost more than they save.
# (The training forward keeps im2col + GEMM: the weight gradient needs the im2col matrix anyway.)
WINOGRAD_TRAIN_MIN_PIXELS = 24 * 24


@dataclass(frozen=True)
class ConvolutionalConfig(LayerConfig):
    filters: int = option(1, minimum=1)
    size: int = option(1, minimum=1)
    stride: int = option(1, minimum=1)
    stride_x: int = option(0, minimum=0)   # AlexeyAB: 0 means "same as stride"
    stride_y: int = option(0, minimum=0)
    dilation: int = option(1, minimum=1)   # AlexeyAB
    pad: bool = option(False)
    padding: int = option(0, minimum=0)
    groups: int = option(1, minimum=1)
    activation: str = option("logistic", choices=ACTIVATION_NAMES)
    batch_normalize: bool = option(False)
    binary: bool = option(False)           # no effect on Darknet's CPU forward
    xnor: bool = option(False)
    flipped: bool = option(False)
    dot: float = option(0.0)               # GPU-only in Darknet
    antialiasing: int = option(0, minimum=0)

    @property
    def effective_padding(self) -> int:
        return self.size // 2 if self.pad else self.padding

    @property
    def strides(self) -> tuple[int, int]:
        """(stride_y, stride_x)."""
        return (self.stride_y or self.stride, self.stride_x or self.stride)


@register
class Convolutional(Layer):
    kind = "convolutional"
    aliases = ("conv",)
    Config = ConvolutionalConfig
    ignored_keys = ("share_index", "cbn", "coordconv", "assisted_excitation", "sway", "rotate",
                    "stretch", "stretch_sway", "deform", "reverse")

    def __init__(self, config: ConvolutionalConfig, index: int):
        super().__init__(config, index)
        cfg = config
        if cfg.xnor:
            raise config.error("xnor=1 (XNOR-net binarised convolution) is not supported yet", "xnor")
        if cfg.antialiasing:
            raise config.error("antialiasing is not supported yet", "antialiasing")
        self.activation = act.ACTIVATION_CODES[cfg.activation]
        self.weights: np.ndarray | None = None
        self._folded: tuple[np.ndarray, np.ndarray] | None = None

    # ---- shapes and parameters ----------------------------------------------------------------------------
    def output_shape(self, in_shapes):
        cfg = self.config
        x = in_shapes[0]
        self.require_image(x)
        if x.c % cfg.groups:
            raise cfg.error(f"groups={cfg.groups} does not divide the {x.c} input channels", "groups")
        if cfg.filters % cfg.groups:
            raise cfg.error(f"groups={cfg.groups} does not divide filters={cfg.filters}", "groups")
        sy, sx = cfg.strides
        extent = cfg.dilation * (cfg.size - 1) + 1
        pad = cfg.effective_padding
        out_h = c_div(x.h + 2 * pad - extent, sy) + 1
        out_w = c_div(x.w + 2 * pad - extent, sx) + 1
        if out_h <= 0 or out_w <= 0:
            raise cfg.error(f"a {cfg.size}x{cfg.size} kernel does not fit the {x.w}x{x.h} input "
                            f"(padding {pad}, output {out_w}x{out_h})", "size")
        return Shape(cfg.filters, out_h, out_w)

    def parameters_needed(self):
        cfg = self.config
        return cfg.filters * (self.in_shapes[0].c // cfg.groups) * cfg.size * cfg.size

    def allocate_parameters(self):
        cfg = self.config
        shape = (cfg.filters, self.in_shapes[0].c // cfg.groups, cfg.size, cfg.size)
        if self.weights is not None and self.weights.shape == shape:
            return
        self.weights = np.zeros(shape, FLOAT)
        self.biases = np.zeros(cfg.filters, FLOAT)
        self.grad_weights = None  # allocated on first use: inference never needs them
        self.grad_biases = np.zeros_like(self.biases)
        self.bn = BatchNormBlock(cfg.filters) if cfg.batch_normalize else None
        self.parameters_changed()

    def initialize(self, rng):
        # Darknet: N(0, 1) * sqrt(2 / fan_in), biases 0
        cfg = self.config
        fan_in = cfg.size * cfg.size * self.in_shapes[0].c // cfg.groups
        self.weights[...] = rng.standard_normal(self.weights.shape) * np.sqrt(2.0 / fan_in)
        self.biases[...] = 0
        self.parameters_changed()

    def parameters_changed(self) -> None:
        self._folded = None
        # (tile, transformed weights, biases): inference, from the folded weights. Keyed by tile because
        # Network.resize can move a layer across WINOGRAD_F4_MIN_PIXELS.
        self._winograd_weights = None
        self._winograd_transposed = None    # (tile, transformed rotated weights): dL/dx in training

    @property
    def is_pointwise(self) -> bool:
        cfg = self.config
        return cfg.size == 1 and cfg.strides == (1, 1) and cfg.effective_padding == 0

    @property
    def path(self) -> str:
        """"direct" or "gemm" (see the module docstring)."""
        cfg = self.config
        in_per_group = self.in_shapes[0].c // cfg.groups
        out_per_group = cfg.filters // cfg.groups
        narrow_groups = in_per_group <= DIRECT_MAX_IN_PER_GROUP and out_per_group <= DIRECT_MAX_OUT_PER_GROUP
        if cfg.groups > 1 and narrow_groups:
            return "direct"
        if in_per_group <= DIRECT_MAX_IN_ANY_OUT and not self.is_pointwise:
            return "direct"
        return "gemm"

    @property
    def winograd_tile(self) -> int:
        """Output tile size of the Winograd path at inference (0: not applicable)."""
        cfg = self.config
        if cfg.size != 3 or cfg.strides != (1, 1) or cfg.dilation != 1 or cfg.groups != 1:
            return 0
        s = self.out_shape
        return 4 if s.h * s.w >= WINOGRAD_F4_MIN_PIXELS else 2

    def allocate(self, batch):
        super().allocate(batch)
        s = self.out_shape
        self._path = self.path
        # Training a whole batch, im2col + GEMM beats the direct kernel on ungrouped layers reading few
        # channels (the first layer): its weight gradient is one well-shaped product (MNIST's first layer,
        # batch 128: backward 10.6 -> 7.7 ms, 1 thread); grouped layers keep the direct kernel.
        self._train_path = "direct" if self._path == "direct" and self.config.groups > 1 else "gemm"
        self._zero_bias = np.zeros(s.c, FLOAT)
        # buffers are created on first use: inference never needs the training ones and an
        # inference-only Winograd layer needs no im2col columns
        self.columns = None
        self.product = None
        self.dcolumns = None
        self._winograd_scratch: dict = {}
        self.pre_activation = (np.empty_like(self.output) if self.activation in act.NEEDS_INPUT else None)
        self._columns_hold_input = False

    def _columns_buffer(self) -> np.ndarray | None:
        """Whole-batch im2col (K, B*S): one matrix product per group covers every image (a 1x1 convolution
        of a single image needs no columns at all)."""
        if self.columns is None and not (self.is_pointwise and self._batch == 1):
            rows = self.in_shapes[0].c * self.config.size ** 2
            s = self.out_shape
            self.columns = np.empty((rows, self._batch * s.h * s.w), FLOAT)
        return self.columns

    def _product_buffer(self) -> np.ndarray:
        """(F, B*S): the raw convolution in channel-major order (training keeps it as BN's saved input;
        inference uses it when the batch has more than one image)."""
        if self.product is None:
            s = self.out_shape
            self.product = np.empty((s.c, self._batch * s.h * s.w), FLOAT)
        return self.product

    # ---- forward -------------------------------------------------------------------------------------------
    def _inference_weights(self) -> tuple[np.ndarray, np.ndarray]:
        if self._folded is None:
            if self.bn is None:
                self._folded = (self.weights, self.biases)
            else:
                a, b = self.bn.fold(self.biases)
                self._folded = ((self.weights * a[:, None, None, None]).astype(FLOAT), b)
        return self._folded

    def _fill_columns(self, x: np.ndarray) -> np.ndarray:
        """The (K, B*S) patch matrix of the batch."""
        cfg = self.config
        s = self.out_shape
        columns = self._columns_buffer()
        if columns is None:
            return x[0].reshape(x.shape[1], -1)
        if self.is_pointwise:
            batch_to_channel_major(x.reshape(x.shape[0], x.shape[1], -1), columns)
        else:
            sy, sx = cfg.strides
            im2col_batch(x, cfg.size, sy, sx, cfg.effective_padding, cfg.dilation, s.h, s.w, columns)
        return columns

    def _grouped(self, matrix: np.ndarray) -> np.ndarray:
        return matrix.reshape(self.config.groups, -1, matrix.shape[-1])

    def _planes(self, channel_major: np.ndarray) -> np.ndarray:
        """A (F, B*S) buffer seen as (B, F, OH, OW) planes (a strided view, no copy)."""
        s = self.out_shape
        return channel_major.reshape(s.c, self._batch, s.h, s.w).transpose(1, 0, 2, 3)

    def _fuses_leaky(self) -> bool:
        return self.activation in (act.LEAKY, act.REVLEAKY) and self.pre_activation is None

    def forward(self, xs, train):
        x = xs[0]
        if train:
            return self._forward_train(x)
        if self._path == "direct":
            return self._forward_direct(x)
        if self.winograd_tile:
            return self._forward_winograd(x)
        return self._forward_gemm(x)

    def _forward_gemm(self, x: np.ndarray) -> np.ndarray:
        cfg = self.config
        s = self.out_shape
        batch = x.shape[0]
        weights, biases = self._inference_weights()
        out3 = self.output.reshape(batch, s.c, s.h * s.w)
        cols = self._fill_columns(x)
        self._columns_hold_input = False
        # a single image's product is already in the output layout: write it there directly
        target = out3[0] if batch == 1 else self._product_buffer()
        np.matmul(weights.reshape(cfg.groups, cfg.filters // cfg.groups, -1), self._grouped(cols),
                  out=self._grouped(target))
        if batch > 1:
            channel_major_to_batch(target, out3)
        self._bias_activate(out3, biases)
        return self.output

    def _forward_direct(self, x: np.ndarray) -> np.ndarray:
        cfg = self.config
        sy, sx = cfg.strides
        weights, biases = self._inference_weights()
        fuse_leaky = self._fuses_leaky()
        grouped_conv_forward(x, weights, biases, sy, sx, cfg.effective_padding, cfg.dilation, self.output,
                             fuse_leaky)
        if not fuse_leaky and (self.activation != act.LINEAR or self.pre_activation is not None):
            self._activate(self.output.reshape(x.shape[0], cfg.filters, -1))
        return self.output

    def _forward_train(self, x: np.ndarray) -> np.ndarray:
        """Raw convolution into the channel-major product, then one pass does BN (or the bias), leaky and
        the transpose into the output."""
        cfg = self.config
        s = self.out_shape
        product = self._product_buffer()
        if self._train_path == "direct":
            sy, sx = cfg.strides
            grouped_conv_forward(x, self.weights, self._zero_bias, sy, sx, cfg.effective_padding, cfg.dilation,
                                 self._planes(product))
        else:
            cols = self._fill_columns(x)
            self._columns_hold_input = True
            np.matmul(self.weights.reshape(cfg.groups, cfg.filters // cfg.groups, -1), self._grouped(cols),
                      out=self._grouped(product))
        out3 = self.output.reshape(x.shape[0], s.c, s.h * s.w)
        fuse_leaky = self._fuses_leaky()
        bn = self.bn
        if bn is not None:
            bn_kernels.train_forward_channel_major(product, bn.scales, self.biases, bn.rolling_mean,
                                                   bn.rolling_var, bn.mean, bn.var, True, fuse_leaky, out3)
        else:
            bn_kernels.train_forward_channel_major(product, self.biases, self.biases, self.biases, self.biases,
                                                   self.biases, self.biases, False, fuse_leaky, out3)
        if not fuse_leaky and (self.activation != act.LINEAR or self.pre_activation is not None):
            self._activate(out3)
        return self.output

    def _winograd_plan(self, in_channels: int, out_channels: int, out_h: int,
                       out_w: int) -> tuple[int, int, np.ndarray, np.ndarray]:
        """(tile, tile rows per block, v scratch, m scratch) of a Winograd convolution of the current batch
        from in_channels to out_channels with an out_h x out_w output."""
        key = (in_channels, out_channels, out_h, out_w)
        plan = self._winograd_scratch.get(key)
        if plan is None:
            tile = self.winograd_tile
            tiles_h, tiles_w = winograd.tile_counts(out_h, out_w, tile)
            total_rows = self._batch * tiles_h
            rows = winograd.block_rows(in_channels, out_channels, tile, tiles_w, total_rows, WINOGRAD_BLOCK_BYTES)
            rows = max(rows, min(total_rows, -(-WINOGRAD_MIN_BLOCK_TILES // tiles_w)))
            v_size, m_size = winograd.scratch_sizes(in_channels, out_channels, tile, tiles_w, rows)
            plan = (tile, rows, np.empty(v_size, FLOAT), np.empty(m_size, FLOAT))
            self._winograd_scratch[key] = plan
        return plan

    def _forward_winograd(self, x: np.ndarray) -> np.ndarray:
        s = self.out_shape
        tile, rows, v, m = self._winograd_plan(self.in_shapes[0].c, s.c, s.h, s.w)
        if self._winograd_weights is None or self._winograd_weights[0] != tile:
            weights, biases = self._inference_weights()
            self._winograd_weights = (tile, winograd.transform_weights(weights, tile), biases)
            # only the transform is used from now on: not keeping the folded copy saves a weights-sized
            # array per layer (34 MB on yolov3-tiny)
            self._folded = None
        _, transformed, biases = self._winograd_weights
        fuse_leaky = self._fuses_leaky()
        winograd.winograd_conv(x, transformed, biases, self.config.effective_padding, tile, fuse_leaky, rows, v,
                               m, self.output)
        if not fuse_leaky and (self.activation != act.LINEAR or self.pre_activation is not None):
            self._activate(self.output.reshape(x.shape[0], self.out_shape.c, -1))
        return self.output

    def _bias_activate(self, out3: np.ndarray, biases: np.ndarray) -> None:
        if self.pre_activation is None:
            act.bias_activate_auto(out3, biases, self.activation)
        else:
            act.bias_activate_auto(out3, biases, act.LINEAR)
            self._activate(out3)

    def _activate(self, out3: np.ndarray) -> None:
        flat = out3.reshape(-1)
        if self.pre_activation is None:
            act.activate(flat, self.activation)
        else:
            pre = self.pre_activation.reshape(-1)
            np.copyto(pre, flat)
            act.activate_to(pre, flat, self.activation)

    # ---- backward ------------------------------------------------------------------------------------------
    def _ensure_gradients(self) -> None:
        if self.grad_weights is None:
            self.grad_weights = np.zeros(self.weights.shape, FLOAT)

    def backward(self, dy, xs, dxs):
        """Needs the product of the training forward just before; it is overwritten by dL/d(product)."""
        self._ensure_gradients()
        cfg = self.config
        x = xs[0]
        dx = dxs[0]
        batch = x.shape[0]
        s = self.out_shape
        fuse_leaky = self._fuses_leaky()
        if not fuse_leaky:
            pre = self.pre_activation.reshape(-1) if self.pre_activation is not None else np.empty(0, FLOAT)
            act.gradient(dy.reshape(-1), self.output.reshape(-1), pre, self.activation)
        dy3 = dy.reshape(batch, s.c, s.h * s.w)
        product = self._product_buffer()
        dy_t = product  # elementwise in place: each channel reads its saved input before overwriting it
        bn = self.bn
        if bn is not None:
            bn_kernels.train_backward_channel_major(dy3, product, bn.mean, bn.var, bn.scales, self.biases,
                                                    bn.grad_scales, self.grad_biases, True, fuse_leaky, dy_t)
        else:
            bn_kernels.train_backward_channel_major(dy3, product, self.biases, self.biases, self.biases,
                                                    self.biases, self.biases, self.grad_biases, False,
                                                    fuse_leaky, dy_t)
        if self._train_path == "direct":
            sy, sx = cfg.strides
            grouped_conv_backward(x, self.weights, self._planes(dy_t), sy, sx, cfg.effective_padding,
                                  cfg.dilation, self.grad_weights, dx)
            self.parameters_changed()
            return
        cols = self.columns if self._columns_hold_input and self.columns is not None else self._fill_columns(x)
        self._columns_hold_input = False
        dy_g = self._grouped(dy_t)
        # as (K, F) = cols . dy^T: OpenBLAS runs this orientation 5-10% faster than dy . cols^T here
        self.grad_weights.reshape(cfg.groups, cfg.filters // cfg.groups, -1)[...] += \
            np.matmul(self._grouped(cols), dy_g.transpose(0, 2, 1)).transpose(0, 2, 1)
        if dx is not None and self.winograd_tile and cfg.effective_padding <= 2 \
                and dx.shape[2] * dx.shape[3] >= WINOGRAD_TRAIN_MIN_PIXELS:
            # dL/dx of a stride-1 3x3 convolution is itself one: of dy with the rotated, transposed weights
            tile, rows, v, m = self._winograd_plan(s.c, dx.shape[1], dx.shape[2], dx.shape[3])
            if self._winograd_transposed is None or self._winograd_transposed[0] != tile:
                self._winograd_transposed = (tile, winograd.transform_weights(
                    winograd.transposed_weights(self.weights), tile))
            winograd.winograd_conv(self._planes(dy_t), self._winograd_transposed[1],
                                   np.zeros(self.in_shapes[0].c, FLOAT), 2 - cfg.effective_padding, tile, False,
                                   rows, v, m, dx, accumulate=True)
        elif dx is not None:
            if self.dcolumns is None:
                self.dcolumns = np.empty((cols.shape[0], cols.shape[1]), FLOAT)
            w_g = self.weights.reshape(cfg.groups, cfg.filters // cfg.groups, -1)
            np.matmul(w_g.transpose(0, 2, 1), dy_g, out=self._grouped(self.dcolumns))
            if self.is_pointwise:
                channel_major_to_batch_add(self.dcolumns, dx.reshape(batch, dx.shape[1], -1))
            else:
                sy, sx = cfg.strides
                col2im_batch_add(self.dcolumns, cfg.size, sy, sx, cfg.effective_padding, cfg.dilation,
                                 s.h, s.w, dx)
        self.parameters_changed()

    def params(self):
        self._ensure_gradients()
        ps = [Param("biases", self.biases, self.grad_biases, decay=False)]
        if self.bn is not None:
            ps += self.bn.params()
        ps.append(Param("weights", self.weights, self.grad_weights, decay=True))
        return ps

    # ---- weights file --------------------------------------------------------------------------------------
    def weight_arrays(self, saving=False):
        cfg = self.config
        keep = cfg.filters if saving or cfg.numload == 0 else min(cfg.numload, cfg.filters)
        arrays = [self.biases[:keep]]
        if self.bn is not None and (saving or not cfg.dontloadscales):
            arrays += [a[:keep] for a in self.bn.file_arrays()]
        arrays.append(self.weights[:keep])
        return arrays

    def after_load(self, transposed):
        if self.config.flipped:
            # Darknet stores a flipped layer's weights as (c*size*size) rows x filters columns
            w = self.weights
            w[...] = w.reshape(-1, w.shape[0]).T.reshape(w.shape)
        self.parameters_changed()

    # ---- reporting -----------------------------------------------------------------------------------------
    def flops(self):
        cfg = self.config
        s = self.out_shape
        return 2.0 * cfg.filters * cfg.size ** 2 * (self.in_shapes[0].c // cfg.groups) * s.h * s.w

    def summary_row(self):
        cfg = self.config
        sy, sx = cfg.strides
        stride = f"{sx:2d}" if sx == sy else f"{sx}x{sy}"
        return (f"conv  {cfg.filters:5d} {cfg.size:2d} x{cfg.size:2d} /{stride}  "
                f"{self.describe_shape(self.in_shapes[0])}   ->  {self.describe_shape(self.out_shape)}"
                f"  {self.flops() / 1e9:5.3f} BFLOPs")
