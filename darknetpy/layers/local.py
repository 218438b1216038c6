"""[local]: unshared convolution, a separate filter bank at every output location (spec §2.15).

`pad` is a pixel count (not a flag as in [convolutional]); Darknet's output size ((h - 1) / stride + 1
when pad != 0) agrees with its im2col only when size == 2*pad + 1, so other combinations are refused.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels import activations as act
from ..kernels.im2col import col2im_add, im2col
from ..kernels.local import local_backward, local_forward
from .activation import ACTIVATION_NAMES
from .base import FLOAT, Layer, LayerConfig, Param, Shape, c_div, option
from .epilogue import ActivationTail
from .registry import register


@dataclass(frozen=True)
class LocalConfig(LayerConfig):
    filters: int = option(1, minimum=1)
    size: int = option(1, minimum=1)
    stride: int = option(1, minimum=1)
    pad: int = option(0, minimum=0)
    activation: str = option("logistic", choices=ACTIVATION_NAMES)


@register
class Local(Layer):
    kind = "local"
    Config = LocalConfig

    def __init__(self, config: LocalConfig, index: int):
        super().__init__(config, index)
        self.activation = act.ACTIVATION_CODES[config.activation]
        self.tail = ActivationTail(self.activation)
        self.weights: np.ndarray | None = None

    def output_shape(self, in_shapes):
        cfg = self.config
        x = in_shapes[0]
        self.require_image(x)
        if cfg.pad and cfg.size != 2 * cfg.pad + 1:
            raise cfg.error(f"pad={cfg.pad} is only consistent with size={2 * cfg.pad + 1} "
                            f"(Darknet's output size and its im2col disagree otherwise)", "pad")
        shrink = 1 if cfg.pad else cfg.size
        out_h = c_div(x.h - shrink, cfg.stride) + 1
        out_w = c_div(x.w - shrink, cfg.stride) + 1
        if x.h < shrink or x.w < shrink:
            raise cfg.error(f"a {cfg.size}x{cfg.size} window does not fit the {x.w}x{x.h} input", "size")
        return Shape(cfg.filters, out_h, out_w)

    @property
    def locations(self) -> int:
        return self.out_shape.h * self.out_shape.w

    @property
    def depth(self) -> int:
        return self.in_shapes[0].c * self.config.size ** 2

    def parameters_needed(self):
        return self.locations * self.config.filters * self.depth

    def allocate_parameters(self):
        filters = self.config.filters
        shape = (self.locations, filters, self.depth)
        if self.weights is not None and self.weights.shape == shape:
            return
        self.weights = np.zeros(shape, FLOAT)
        self.biases = np.zeros((filters, self.out_shape.h, self.out_shape.w), FLOAT)
        self.grad_weights = np.zeros(self.weights.shape, FLOAT)
        self.grad_biases = np.zeros_like(self.biases)

    def initialize(self, rng):
        # Darknet randomises only the first block (uniform * sqrt(2 / (size^2 c))); we fill every location,
        # which is what an unshared convolution needs to learn at all locations
        fan_in = self.weights.shape[-1]
        self.weights[...] = rng.uniform(-1.0, 1.0, self.weights.shape) * np.sqrt(2.0 / fan_in)
        self.biases[...] = 0

    def allocate(self, batch):
        super().allocate(batch)
        self.columns = np.empty((self.depth, self.locations), FLOAT)
        self.dcolumns = np.empty_like(self.columns)
        self.tail.allocate(self.output.shape)

    def _im2col(self, image: np.ndarray) -> None:
        cfg = self.config
        s = self.out_shape
        im2col(image, cfg.size, cfg.stride, cfg.stride, cfg.pad, 1, s.h, s.w, self.columns)

    def forward(self, xs, train):
        x = xs[0]
        biases = self.biases.reshape(self.config.filters, -1)
        for n in range(x.shape[0]):
            self._im2col(x[n])
            local_forward(self.weights, self.columns, biases, self.output[n].reshape(biases.shape))
        self.tail.apply(self.output)
        return self.output

    def backward(self, dy, xs, dxs):
        cfg = self.config
        x = xs[0]
        dx = dxs[0]
        s = self.out_shape
        self.tail.backprop(dy, self.output)
        self.grad_biases += dy.sum(axis=0, dtype=np.float32)
        for n in range(x.shape[0]):
            self._im2col(x[n])
            local_backward(self.weights, self.columns, dy[n].reshape(cfg.filters, -1), self.grad_weights,
                           self.dcolumns)
            if dx is not None:
                col2im_add(self.dcolumns, cfg.size, cfg.stride, cfg.stride, cfg.pad, 1, s.h, s.w, dx[n])

    def params(self):
        return [Param("biases", self.biases, self.grad_biases, decay=False),
                Param("weights", self.weights, self.grad_weights, decay=True)]

    def weight_arrays(self, saving=False):
        return [self.biases, self.weights]

    def flops(self):
        return 2.0 * self.config.filters * self.depth * self.locations

    def summary_row(self):
        x = self.in_shapes[0]
        s = self.out_shape
        return (f"Local Layer: {x.h} x {x.w} x {x.c} image, {self.config.filters} filters -> "
                f"{s.h} x {s.w} x {s.c} image")
