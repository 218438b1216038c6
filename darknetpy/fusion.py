"""Inference fusion: a [shortcut] computed by the 1x1 convolution it adds to.

The depthwise-separable networks end every residual block with a linear 1x1 layer (often followed by a
[dropout]) whose output only a [shortcut] reads: out = conv(x) + from. Run as layers, the convolution writes
its output and the shortcut reads it back with the residual and writes the sum -- at 1 thread
yolo-fastest-1.1-xl's 18 shortcuts took 0.19 ms of its pass, 0.30 ms at 2 threads (the sum reads what the
other core wrote), against none in onnxruntime, which adds the residual in its convolution kernels. Here the
1x1 kernel adds the residual as it stores each output vector (kernels/pointwise.py) straight into the
shortcut's buffer, and the convolution and the layers between are not run.

The values are Darknet's bit for bit: the kernel stores float32(act(sum + shift)) + residual, the two float32
roundings of the unfused pair (the shortcut's alpha * a + beta * b with alpha = beta = 1 multiplies exactly).
Only `Network.infer` fuses: `forward` runs every layer (training needs their outputs), and a fused layer's
output is never computed, so `outputs` holds None for it after `infer`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .kernels import activations as act
from .layers.base import Layer
from .layers.convolutional import Convolutional
from .layers.routing import Shortcut


@dataclass(frozen=True)
class ResidualFusion:
    """The shortcut `shortcut` computed by the convolution `convolution`; `passed` are the layers between
    them that hand the convolution's output on unchanged at inference (its [dropout])."""
    convolution: int
    shortcut: int
    residual: int
    passed: tuple[int, ...]

    def skipped(self) -> tuple[int, ...]:
        """The layers that do not run at all: the convolution and the layers passing its output on."""
        return (self.convolution, *self.passed)

    def input_indices(self, layers: list[Layer]) -> list[int]:
        """What the fused step reads: the convolution's input and the residual."""
        return [layers[self.convolution].input_indices()[0], self.residual]

    def run(self, layers: list[Layer], xs: list[np.ndarray]) -> np.ndarray:
        out = layers[self.shortcut].output
        layers[self.convolution].forward_adding(xs[0], xs[1], out)
        return out


def find_residual_fusions(layers: list[Layer], output_index: int) -> list[ResidualFusion]:
    """Every shortcut among layers[:output_index + 1] that its convolution can compute: a plain sum
    (alpha = beta = 1, linear) of two same-shaped maps, where the previous layer's output comes from a
    convolution whose kernel adds a residual (Convolutional.adds_residual), through layers that return their
    input, and no other layer reads that convolution's output or anything passing it on."""
    count = output_index + 1
    readers: list[list[int]] = [[] for _ in range(count)]
    for i in range(count):
        for j in layers[i].input_indices():
            if j >= 0:
                readers[j].append(i)
    fusions = []
    for s in range(count):
        shortcut = layers[s]
        if not (isinstance(shortcut, Shortcut) and shortcut.alpha == 1 and shortcut.beta == 1
                and shortcut.activation == act.LINEAR and shortcut.in_shapes[0] == shortcut.in_shapes[1]):
            continue
        j = s - 1
        passed: list[int] = []
        while j >= 0 and layers[j].inference_returns_input and readers[j] == [j + 1]:
            passed.append(j)
            j -= 1
        if j < 0 or readers[j] != [j + 1] or shortcut.source >= j:
            continue
        convolution = layers[j]
        if isinstance(convolution, Convolutional) and convolution.adds_residual():
            fusions.append(ResidualFusion(j, s, shortcut.source, tuple(reversed(passed))))
    return fusions
