"""[connected] (alias [conn]): a fully connected layer, y = W x + b over the flattened CHW input (spec §2.3, §4.3).

The whole batch is one BLAS product X (B, inputs) @ W.T, or at inference on up to eight images the
memory-bound product of kernels/gemv.py. The output is a 1x1xoutput image, as in Darknet,
so a following convolution sees a 1x1 image. With batch_normalize the BN statistics are per output unit
(spatial size 1).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels import activations as act
from ..kernels import gemv
from .activation import ACTIVATION_NAMES
from .base import FLOAT, Layer, LayerConfig, Param, Shape, option
from .epilogue import Epilogue, EpilogueOwner
from .registry import register


@dataclass(frozen=True)
class ConnectedConfig(LayerConfig):
    output: int = option(1, minimum=1)
    activation: str = option("logistic", choices=ACTIVATION_NAMES)
    batch_normalize: bool = option(False)


@register
class Connected(EpilogueOwner, Layer):
    kind = "connected"
    aliases = ("conn",)
    Config = ConnectedConfig

    def __init__(self, config: ConnectedConfig, index: int):
        super().__init__(config, index)
        self.activation = act.ACTIVATION_CODES[config.activation]
        self.weights: np.ndarray | None = None
        self.epilogue: Epilogue | None = None

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
        self.grad_weights = np.zeros(self.weights.shape, FLOAT)
        self.epilogue = Epilogue(outputs, self.activation, self.config.batch_normalize)

    def initialize(self, rng):
        # Darknet: uniform(-1, 1) * sqrt(2 / inputs), biases 0
        scale = np.sqrt(2.0 / self.weights.shape[1])
        self.weights[...] = rng.uniform(-1.0, 1.0, self.weights.shape) * scale
        self.biases[...] = 0
        self.parameters_changed()

    def allocate(self, batch):
        super().allocate(batch)
        self.epilogue.allocate(self.output.shape)

    # ---- computation ---------------------------------------------------------------------------------------
    def forward(self, xs, train):
        x2 = xs[0].reshape(xs[0].shape[0], -1)
        batch = x2.shape[0]
        out2 = self.output.reshape(batch, -1)
        if not train and gemv.suits(batch):
            gemv.gemv(self.weights, np.ascontiguousarray(x2), out2)   # memory-bound: see kernels/gemv.py
        else:
            np.matmul(x2, self.weights.T, out=out2)
        self.epilogue.forward(out2.reshape(batch, -1, 1), train)
        return self.output

    def backward(self, dy, xs, dxs):
        x2 = xs[0].reshape(xs[0].shape[0], -1)
        batch = x2.shape[0]
        dy2 = dy.reshape(batch, -1)
        self.epilogue.backward(dy2.reshape(batch, -1, 1), self.output)
        self.grad_weights += dy2.T @ x2
        if dxs[0] is not None:
            dxs[0].reshape(batch, -1)[...] += dy2 @ self.weights

    def params(self):
        tail = self.epilogue.params()
        return tail[:1] + [Param("weights", self.weights, self.grad_weights, decay=True)] + tail[1:]

    # ---- weights file --------------------------------------------------------------------------------------
    def weight_arrays(self, saving=False):
        # unlike conv, the BN arrays come after the weights (spec §5)
        biases, *bn = self.epilogue.file_arrays(with_bn=saving or not self.config.dontloadscales)
        return [biases, self.weights, *bn]

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
