"""[connected] (alias [conn]): a fully connected layer, y = W x + b over the flattened CHW input (spec §2.3, §4.3).

The whole batch is one BLAS product X (B, inputs) @ W.T. The output is a 1x1xoutput image, as in Darknet,
so a following convolution sees a 1x1 image. With batch_normalize the BN statistics are per output unit
(spatial size 1).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels import activations as act
from ..kernels import batchnorm as bn_kernels
from .activation import (ACTIVATION_NAMES, activate_in_place, activation_gradient, bias_activate_in_place,
                         input_copy_buffer)
from .base import FLOAT, Layer, LayerConfig, Param, Shape, option
from .batchnorm import BatchNormBlock
from .registry import register


@dataclass(frozen=True)
class ConnectedConfig(LayerConfig):
    output: int = option(1, minimum=1)
    activation: str = option("logistic", choices=ACTIVATION_NAMES)
    batch_normalize: bool = option(False)


@register
class Connected(Layer):
    kind = "connected"
    aliases = ("conn",)
    Config = ConnectedConfig

    def __init__(self, config: ConnectedConfig, index: int):
        super().__init__(config, index)
        self.activation = act.ACTIVATION_CODES[config.activation]
        self.weights: np.ndarray | None = None
        self.bn: BatchNormBlock | None = None

    @property
    def inputs(self) -> int:
        return self.in_shapes[0].size

    def output_shape(self, in_shapes):
        if in_shapes[0].size == 0:
            raise self.config.error("[connected] needs a non-empty input")
        return Shape(self.config.output, 1, 1)

    def parameters_needed(self):
        return self.config.output * self.inputs

    def allocate_parameters(self):
        outputs = self.config.output
        shape = (outputs, self.inputs)
        if self.weights is not None and self.weights.shape == shape:
            return
        self.weights = np.zeros(shape, FLOAT)
        self.biases = np.zeros(outputs, FLOAT)
        self.grad_weights = np.zeros(self.weights.shape, FLOAT)
        self.grad_biases = np.zeros_like(self.biases)
        self.bn = BatchNormBlock(outputs) if self.config.batch_normalize else None
        self._fold_scale = np.empty(outputs, FLOAT)
        self._fold_shift = np.empty(outputs, FLOAT)

    def initialize(self, rng):
        # Darknet: uniform(-1, 1) * sqrt(2 / inputs), biases 0
        scale = np.sqrt(2.0 / self.weights.shape[1])
        self.weights[...] = rng.uniform(-1.0, 1.0, self.weights.shape) * scale
        self.biases[...] = 0
        self.parameters_changed()

    def allocate(self, batch):
        super().allocate(batch)
        self.pre_activation = input_copy_buffer(self.output.shape, self.activation)

    # ---- computation ---------------------------------------------------------------------------------------
    def forward(self, xs, train):
        x2 = xs[0].reshape(xs[0].shape[0], -1)
        batch = x2.shape[0]
        out2 = self.output.reshape(batch, -1)
        np.matmul(x2, self.weights.T, out=out2)
        out3 = out2.reshape(batch, -1, 1)
        if self.bn is None:
            bias_activate_in_place(out3, self.biases, self.activation, self.pre_activation)
            return self.output
        if train:
            self.bn.forward_train(out3, self.biases)
        else:
            bn = self.bn
            bn_kernels.fold_inference(bn.scales, self.biases, bn.rolling_mean, bn.rolling_var,
                                      self._fold_scale, self._fold_shift)
            bn_kernels.affine_channels(out3, self._fold_scale, self._fold_shift)
        activate_in_place(out3, self.activation, self.pre_activation)
        return self.output

    def backward(self, dy, xs, dxs):
        x2 = xs[0].reshape(xs[0].shape[0], -1)
        batch = x2.shape[0]
        activation_gradient(dy, self.output, self.activation, self.pre_activation)
        dy2 = dy.reshape(batch, -1)
        if self.bn is not None:
            self.bn.backward(dy2.reshape(batch, -1, 1), self.grad_biases)
        else:
            self.grad_biases += dy2.sum(axis=0, dtype=np.float32)
        self.grad_weights += dy2.T @ x2
        if dxs[0] is not None:
            dxs[0].reshape(batch, -1)[...] += dy2 @ self.weights

    def params(self):
        ps = [Param("biases", self.biases, self.grad_biases, decay=False),
              Param("weights", self.weights, self.grad_weights, decay=True)]
        if self.bn is not None:
            ps += self.bn.params()
        return ps

    # ---- weights file --------------------------------------------------------------------------------------
    def weight_arrays(self, saving=False):
        # unlike conv, the BN arrays come after the weights (spec §5)
        arrays = [self.biases, self.weights]
        if self.bn is not None and (saving or not self.config.dontloadscales):
            arrays += self.bn.file_arrays()
        return arrays

    def after_load(self, transposed):
        if transposed:
            # old files hold the matrix as inputs x outputs
            w = self.weights
            w[...] = w.reshape(w.shape[1], w.shape[0]).T.copy()

    # ---- reporting -----------------------------------------------------------------------------------------
    def flops(self):
        return 2.0 * self.inputs * self.config.output

    def summary_row(self):
        return f"connected                            {self.inputs:4d}  ->  {self.config.output:4d}"
