"""[deconvolutional] (alias [deconv]): transposed convolution (spec §2.2).

Each input pixel scatters W[i, o, ky, kx] * x[i, y, x] onto output pixel (y*stride + ky - pad,
x*stride + kx - pad), no kernel flip, i.e. PyTorch's conv_transpose2d. Computed as one product
W^T (filters*size*size, c) @ X (c, h*w) per image followed by col2im (the adjoint of the convolution's
im2col); the backward is im2col of the output gradient followed by two products.

Weights are loaded in the conv order (biases, [scales, mean, var], weights); Darknet itself crashes when
loading them (spec §2.2), which is not reproduced.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels import activations as act
from ..kernels.im2col import col2im_add, im2col
from .activation import ACTIVATION_NAMES
from .base import FLOAT, Layer, LayerConfig, Param, Shape, option
from .epilogue import Epilogue, EpilogueOwner
from .registry import register


@dataclass(frozen=True)
class DeconvolutionalConfig(LayerConfig):
    filters: int = option(1, minimum=1)
    size: int = option(1, minimum=1)
    stride: int = option(1, minimum=1)
    activation: str = option("logistic", choices=ACTIVATION_NAMES)
    batch_normalize: bool = option(False)
    pad: bool = option(False)
    padding: int = option(0, minimum=0)

    @property
    def effective_padding(self) -> int:
        return self.size // 2 if self.pad else self.padding


@register
class Deconvolutional(EpilogueOwner, Layer):
    kind = "deconvolutional"
    aliases = ("deconv",)
    Config = DeconvolutionalConfig

    def __init__(self, config: DeconvolutionalConfig, index: int):
        super().__init__(config, index)
        self.activation = act.ACTIVATION_CODES[config.activation]
        self.weights: np.ndarray | None = None
        self.epilogue: Epilogue | None = None

    def output_shape(self, in_shapes):
        cfg = self.config
        x = in_shapes[0]
        self.require_image(x)
        pad = cfg.effective_padding
        out_h = (x.h - 1) * cfg.stride + cfg.size - 2 * pad
        out_w = (x.w - 1) * cfg.stride + cfg.size - 2 * pad
        if out_h <= 0 or out_w <= 0:
            raise cfg.error(f"padding {pad} leaves no output for a {cfg.size}x{cfg.size} kernel on the "
                            f"{x.w}x{x.h} input (output {out_w}x{out_h})", "padding" if not cfg.pad else "pad")
        return Shape(cfg.filters, out_h, out_w)

    def parameters_needed(self):
        cfg = self.config
        return self.in_shapes[0].c * cfg.filters * cfg.size * cfg.size

    def allocate_parameters(self):
        cfg = self.config
        shape = (self.in_shapes[0].c, cfg.filters, cfg.size, cfg.size)
        if self.weights is not None and self.weights.shape == shape:
            return
        self.weights = np.zeros(shape, FLOAT)
        self.grad_weights = np.zeros(self.weights.shape, FLOAT)
        self.epilogue = Epilogue(cfg.filters, self.activation, cfg.batch_normalize)

    def initialize(self, rng):
        # Darknet: N(0, 1) * 0.02, then scaled by (out_w * out_h) / (w * h)
        x, s = self.in_shapes[0], self.out_shape
        self.weights[...] = rng.standard_normal(self.weights.shape) * 0.02 * (s.w * s.h) / (x.w * x.h)
        self.biases[...] = 0
        self.parameters_changed()

    def allocate(self, batch):
        super().allocate(batch)
        x = self.in_shapes[0]
        self.columns = np.empty((self.config.filters * self.config.size ** 2, x.h * x.w), FLOAT)
        self.epilogue.allocate(self.output.shape)

    # ---- computation ---------------------------------------------------------------------------------------
    def _scatter_args(self):
        cfg = self.config
        x = self.in_shapes[0]
        return cfg.size, cfg.stride, cfg.stride, cfg.effective_padding, 1, x.h, x.w

    def forward(self, xs, train):
        x = xs[0]
        batch, channels = x.shape[:2]
        w2 = self.weights.reshape(channels, -1)
        self.output.fill(0.0)
        args = self._scatter_args()
        for n in range(batch):
            np.matmul(w2.T, x[n].reshape(channels, -1), out=self.columns)
            col2im_add(self.columns, *args, self.output[n])
        self.epilogue.forward(self.output.reshape(batch, self.config.filters, -1), train)
        return self.output

    def backward(self, dy, xs, dxs):
        x = xs[0]
        dx = dxs[0]
        batch, channels = x.shape[:2]
        self.epilogue.backward(dy.reshape(batch, self.config.filters, -1), self.output)
        w2 = self.weights.reshape(channels, -1)
        gw2 = self.grad_weights.reshape(channels, -1)
        args = self._scatter_args()
        for n in range(batch):
            im2col(dy[n], *args, self.columns)
            x2 = x[n].reshape(channels, -1)
            gw2 += x2 @ self.columns.T
            if dx is not None:
                dx[n].reshape(channels, -1)[...] += w2 @ self.columns

    def params(self):
        return self.epilogue.params() + [Param("weights", self.weights, self.grad_weights, decay=True)]

    # ---- weights file --------------------------------------------------------------------------------------
    def weight_arrays(self, saving=False):
        return self.epilogue.file_arrays(with_bn=saving or not self.config.dontloadscales) + [self.weights]

    # ---- reporting -----------------------------------------------------------------------------------------
    def flops(self):
        cfg = self.config
        x = self.in_shapes[0]
        return 2.0 * x.c * cfg.filters * cfg.size ** 2 * x.h * x.w

    def summary_row(self):
        cfg = self.config
        return (f"deconv{cfg.filters:5d} {cfg.size:2d} x{cfg.size:2d} /{cfg.stride:2d}  "
                f"{self.describe_shape(self.in_shapes[0])}   ->  {self.describe_shape(self.out_shape)}")
