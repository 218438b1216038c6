"""[convolutional] (alias [conv]): grouped, strided, dilated 2-D convolution with optional batch norm.

Forward is im2col + one BLAS matrix product per image (all groups in one batched matmul); at inference
the batch norm is folded into a cached copy of the weights and the bias, so the product is followed by a
single fused bias+activation pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels import activations as act
from ..kernels.im2col import (batch_to_channel_major, channel_major_to_batch, channel_major_to_batch_add,
                              col2im_batch_add, im2col_batch)
from .base import FLOAT, Layer, LayerConfig, Param, Shape, c_div, option
from .batchnorm import BatchNormBlock
from .registry import register

ACTIVATION_NAMES = tuple(act.ACTIVATION_CODES)


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

    @property
    def is_pointwise(self) -> bool:
        cfg = self.config
        return cfg.size == 1 and cfg.strides == (1, 1) and cfg.effective_padding == 0

    def allocate(self, batch):
        super().allocate(batch)
        x = self.in_shapes[0]
        s = self.out_shape
        rows = x.c * self.config.size ** 2
        spatial = s.h * s.w
        # Whole-batch im2col: one matrix product per group covers every image (a 1x1 convolution of a
        # single image needs no columns at all).
        self.columns = None if self.is_pointwise and batch == 1 else np.empty((rows, batch * spatial), FLOAT)
        self.product = None if batch == 1 else np.empty((s.c, batch * spatial), FLOAT)
        self.dcolumns = None
        self.pre_activation = (np.empty_like(self.output) if self.activation in act.NEEDS_INPUT else None)
        self._columns_hold_input = False

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
        if self.columns is None:
            return x[0].reshape(x.shape[1], -1)
        if self.is_pointwise:
            batch_to_channel_major(x.reshape(x.shape[0], x.shape[1], -1), self.columns)
        else:
            sy, sx = cfg.strides
            im2col_batch(x, cfg.size, sy, sx, cfg.effective_padding, cfg.dilation, s.h, s.w, self.columns)
        return self.columns

    def _grouped(self, matrix: np.ndarray) -> np.ndarray:
        return matrix.reshape(self.config.groups, -1, matrix.shape[-1])

    def _convolve(self, x: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Raw convolution of the batch into self.output, returned as (B, F, S)."""
        cfg = self.config
        batch = x.shape[0]
        s = self.out_shape
        out3 = self.output.reshape(batch, s.c, s.h * s.w)
        cols = self._fill_columns(x)
        target = out3[0] if self.product is None else self.product
        np.matmul(weights.reshape(cfg.groups, cfg.filters // cfg.groups, -1), self._grouped(cols),
                  out=self._grouped(target))
        if self.product is not None:
            channel_major_to_batch(self.product, out3)
        return out3

    def forward(self, xs, train):
        x = xs[0]
        self._columns_hold_input = train
        if train:
            out3 = self._convolve(x, self.weights)
            if self.bn is not None:
                self.bn.forward_train(out3, self.biases)
                self._activate(out3)
            else:
                self._bias_activate(out3, self.biases)
        else:
            weights, biases = self._inference_weights()
            out3 = self._convolve(x, weights)
            self._bias_activate(out3, biases)
        return self.output

    def _bias_activate(self, out3: np.ndarray, biases: np.ndarray) -> None:
        if self.pre_activation is None:
            act.bias_activate_auto(out3, biases, self.activation)
        else:
            act.bias_activate_auto(out3, biases, act.ACTIVATION_CODES["linear"])
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
        self._ensure_gradients()
        cfg = self.config
        x = xs[0]
        dx = dxs[0]
        batch = x.shape[0]
        s = self.out_shape
        pre = self.pre_activation.reshape(-1) if self.pre_activation is not None else np.empty(0, FLOAT)
        act.gradient(dy.reshape(-1), self.output.reshape(-1), pre, self.activation)
        dy3 = dy.reshape(batch, s.c, s.h * s.w)
        if self.bn is not None:
            self.bn.backward(dy3, self.grad_biases)
        else:
            self.grad_biases += dy3.sum(axis=(0, 2), dtype=np.float32)
        cols = self._fill_columns(x) if not self._columns_hold_input or self.columns is None \
            else self.columns
        if self.product is None:
            dy_t = dy3[0]
        else:
            batch_to_channel_major(dy3, self.product)
            dy_t = self.product
        dy_g = self._grouped(dy_t)
        self.grad_weights.reshape(cfg.groups, cfg.filters // cfg.groups, -1)[...] += \
            np.matmul(dy_g, self._grouped(cols).transpose(0, 2, 1))
        if dx is not None:
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
