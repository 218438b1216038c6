"""Batch normalisation: the [batchnorm] layer and the BN block that conv/connected/deconv layers embed."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels import batchnorm as bn_kernels
from .base import FLOAT, Layer, LayerConfig, Param, Shape
from .registry import register


class BatchNormBlock:
    """Per-channel BN state (scales, rolling statistics) with Darknet's training and inference rules.
    The biases (beta) belong to the host layer, which adds them after the scale as Darknet does."""

    def __init__(self, channels: int):
        self.channels = channels
        self.scales = np.ones(channels, FLOAT)
        self.rolling_mean = np.zeros(channels, FLOAT)
        self.rolling_var = np.zeros(channels, FLOAT)
        self.grad_scales = np.zeros(channels, FLOAT)
        self.mean = np.zeros(channels, FLOAT)
        self.var = np.zeros(channels, FLOAT)
        self._x_saved: np.ndarray | None = None
        self._x_norm: np.ndarray | None = None

    def file_arrays(self) -> list[np.ndarray]:
        return [self.scales, self.rolling_mean, self.rolling_var]

    def fold(self, biases: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(a, b) with BN(x) + bias == a*x + b at inference."""
        a = np.empty(self.channels, FLOAT)
        b = np.empty(self.channels, FLOAT)
        bn_kernels.fold_inference(self.scales, biases, self.rolling_mean, self.rolling_var, a, b)
        return a, b

    def forward_train(self, y3: np.ndarray, biases: np.ndarray) -> None:
        if self._x_saved is None or self._x_saved.shape != y3.shape:
            self._x_saved = np.empty_like(y3)
            self._x_norm = np.empty_like(y3)
        bn_kernels.train_forward(y3, self.scales, biases, self.rolling_mean, self.rolling_var,
                                 self.mean, self.var, self._x_saved, self._x_norm)

    def backward(self, dy3: np.ndarray, grad_biases: np.ndarray) -> None:
        if self._x_saved is None:
            raise RuntimeError("batch-norm backward without a training forward pass")
        bn_kernels.train_backward(dy3, self._x_saved, self.mean, self.var, self.scales,
                                  self.grad_scales, grad_biases)

    def params(self) -> list[Param]:
        return [Param("scales", self.scales, self.grad_scales, decay=False)]


@register
class BatchNorm(Layer):
    """[batchnorm]: normalise the previous layer's output per channel; biases exist but are not in the file."""
    kind = "batchnorm"
    Config = LayerConfig

    def allocate_parameters(self) -> None:
        c = self.in_shapes[0].c
        if getattr(self, "bn", None) is None or self.bn.channels != c:
            self.bn = BatchNormBlock(c)
            self.biases = np.zeros(c, FLOAT)
            self.grad_biases = np.zeros(c, FLOAT)

    def output_shape(self, in_shapes: list[Shape]) -> Shape:
        self.require_image(in_shapes[0])
        return in_shapes[0]

    def forward(self, xs, train):
        y = self.output
        np.copyto(y, xs[0])
        y3 = y.reshape(y.shape[0], y.shape[1], -1)
        if train:
            self.bn.forward_train(y3, self.biases)
        else:
            a, b = self.bn.fold(self.biases)
            bn_kernels.affine_channels(y3, a, b)
        return y

    def backward(self, dy, xs, dxs):
        dy3 = dy.reshape(dy.shape[0], dy.shape[1], -1)
        self.bn.backward(dy3, self.grad_biases)
        if dxs[0] is not None:
            dxs[0] += dy

    def params(self):
        return [Param("biases", self.biases, self.grad_biases, decay=False)] + self.bn.params()

    def weight_arrays(self, saving=False):
        if self.config.dontloadscales and not saving:
            return []
        return self.bn.file_arrays()

    def summary_row(self):
        s = self.out_shape
        return f"Batch Normalization Layer: {s.w} x {s.h} x {s.c} image"
