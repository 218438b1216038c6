"""[activation]: an element-wise activation as a layer of its own (spec §2.16), and the activation plumbing
that the connected, deconvolutional and local layers share.

Darknet differentiates through the activation *output* (spec §3); AlexeyAB's non-monotonic activations
(codes in NEEDS_INPUT) need the pre-activation input instead, so layers keep a copy of it for them only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels import activations as act
from .base import FLOAT, Layer, LayerConfig, option
from .registry import register

ACTIVATION_NAMES = tuple(act.ACTIVATION_CODES)
_NO_INPUT = np.empty(0, FLOAT)


def input_copy_buffer(shape: tuple[int, ...], code: int) -> np.ndarray | None:
    """A buffer for the pre-activation values when the gradient of `code` needs them, else None."""
    return np.empty(shape, FLOAT) if code in act.NEEDS_INPUT else None


def activate_in_place(values: np.ndarray, code: int, pre_activation: np.ndarray | None) -> None:
    """values = f(values); the input is saved into `pre_activation` first when that buffer exists."""
    flat = values.reshape(-1)
    if pre_activation is None:
        act.activate(flat, code)
    else:
        pre = pre_activation.reshape(-1)
        np.copyto(pre, flat)
        act.activate_to(pre, flat, code)


def bias_activate_in_place(out3: np.ndarray, biases: np.ndarray, code: int,
                           pre_activation: np.ndarray | None) -> None:
    """out3[b, c, :] = f(out3[b, c, :] + biases[c]) for out3 (B, C, S)."""
    if pre_activation is None:
        act.bias_activate_auto(out3, biases, code)
    else:
        act.bias_activate_auto(out3, biases, act.LINEAR)
        activate_in_place(out3, code, pre_activation)


def activation_gradient(dy: np.ndarray, output: np.ndarray, code: int,
                        pre_activation: np.ndarray | None) -> None:
    """dy *= f'(.) in place (dy, output and pre_activation share one shape)."""
    pre = pre_activation.reshape(-1) if pre_activation is not None else _NO_INPUT
    act.gradient(dy.reshape(-1), output.reshape(-1), pre, code)


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

    def output_shape(self, in_shapes):
        return in_shapes[0]

    def forward(self, xs, train):
        act.activate_to(xs[0].reshape(-1), self.output.reshape(-1), self.activation)
        return self.output

    def backward(self, dy, xs, dxs):
        if dxs[0] is None:
            return
        pre = xs[0].reshape(-1) if self.activation in act.NEEDS_INPUT else _NO_INPUT
        act.gradient(dy.reshape(-1), self.output.reshape(-1), pre, self.activation)
        dxs[0] += dy

    def summary_row(self):
        return f"Activation Layer: {self.in_shapes[0].size} inputs"
