"""[activation]: an element-wise activation as a layer of its own (spec §2.16); the activation itself is the
epilogue's (layers/epilogue.py). The input stays alive as the previous layer's output, so the gradients that
need the pre-activation values read it there instead of a copy."""
from __future__ import annotations

from dataclasses import dataclass

from ..kernels import activations as act
from .base import Layer, LayerConfig, option
from .epilogue import ActivationTail
from .registry import register

ACTIVATION_NAMES = tuple(act.ACTIVATION_CODES)


@dataclass(frozen=True)
class ActivationConfig(LayerConfig):
    activation: str = option("linear", choices=ACTIVATION_NAMES)


@register
class Activation(Layer):
    """Copy of the input with an activation applied; any shape (a flat input stays flat)."""
    kind = "activation"
    Config = ActivationConfig

    def __init__(self, config: ActivationConfig, index: int):
        super().__init__(config, index)
        self.activation = act.ACTIVATION_CODES[config.activation]
        self.tail = ActivationTail(self.activation)

    def output_shape(self, in_shapes):
        return in_shapes[0]

    def forward(self, xs, train):
        self.tail.apply_to(xs[0], self.output)
        return self.output

    def backward(self, dy, xs, dxs):
        if dxs[0] is None:
            return
        self.tail.backprop(dy, self.output, xs[0])
        dxs[0] += dy

    def summary_row(self):
        return f"Activation Layer: {self.in_shapes[0].size} inputs"
