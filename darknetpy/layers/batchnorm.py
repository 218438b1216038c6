"""[batchnorm]: normalise the previous layer's output per channel (the epilogue's bias and batch norm, no
activation); its biases are trained but are not in the weights file."""
from __future__ import annotations

from ..kernels import activations as act
from .base import Layer, LayerConfig, Shape
from .epilogue import Epilogue, EpilogueOwner
from .registry import register


@register
class BatchNorm(EpilogueOwner, Layer):
    kind = "batchnorm"
    Config = LayerConfig

    def __init__(self, config: LayerConfig, index: int):
        super().__init__(config, index)
        self.epilogue: Epilogue | None = None

    def allocate_parameters(self) -> None:
        c = self.in_shapes[0].c
        if self.epilogue is None or self.epilogue.biases.shape[0] != c:
            self.epilogue = Epilogue(c, act.LINEAR, batch_normalize=True)

    def output_shape(self, in_shapes: list[Shape]) -> Shape:
        self.require_image(in_shapes[0])
        return in_shapes[0]

    def forward(self, xs, train):
        y = self.output
        y[...] = xs[0]
        self.epilogue.forward(y.reshape(y.shape[0], y.shape[1], -1), train)
        return y

    def backward(self, dy, xs, dxs):
        self.epilogue.backward(dy.reshape(dy.shape[0], dy.shape[1], -1), self.output)
        if dxs[0] is not None:
            dxs[0] += dy

    def params(self):
        return self.epilogue.params()

    def weight_arrays(self, saving=False):
        if self.config.dontloadscales and not saving:
            return []
        return self.bn.file_arrays()

    def summary_row(self):
        s = self.out_shape
        return f"Batch Normalization Layer: {s.w} x {s.h} x {s.c} image"
