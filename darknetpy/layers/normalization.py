"""[normalization] (alias [lrn]): Darknet's local response normalisation (spec §2.19), and [l2norm] (§2.18).

Both backward passes are the true gradients of the forward passes as Darknet computes them (Darknet's
own backward is an approximation for LRN and a plain pass-through for l2norm).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels import normalization as nk
from .base import FLOAT, Layer, LayerConfig, option
from .registry import register


def _per_pixel(array: np.ndarray) -> np.ndarray:
    return array.reshape(array.shape[0], array.shape[1], -1)


@dataclass(frozen=True)
class NormalizationConfig(LayerConfig):
    alpha: float = option(0.0001)
    beta: float = option(0.75)
    kappa: float = option(1.0)
    size: int = option(5, minimum=1)


@register
class Normalization(Layer):
    kind = "normalization"
    aliases = ("lrn",)
    Config = NormalizationConfig

    def __init__(self, config: NormalizationConfig, index: int):
        super().__init__(config, index)
        self.alpha = np.float32(config.alpha)
        self.beta = np.float32(config.beta)
        self.kappa = np.float32(config.kappa)

    def output_shape(self, in_shapes):
        shape = in_shapes[0]
        self.require_image(shape)
        size = self.config.size
        if size // 2 > shape.c:
            # Darknet's first window sum would read size/2 channels past the end of the image
            raise self.config.error(f"size={size} needs at least {size // 2} input channels, "
                                    f"the input has {shape.c}", "size")
        return shape

    def parameters_needed(self):
        return self.in_shapes[0].c ** 2  # the dense channel x channel coefficient table

    def allocate_parameters(self):
        coef = nk.lrn_coefficients(self.in_shapes[0].c, self.config.size)
        rows, cols = np.nonzero(coef)
        self._coef_rows = rows.astype(np.int64)
        self._coef_cols = cols.astype(np.int64)
        self._coef_vals = coef[rows, cols].astype(np.float64)

    def allocate(self, batch):
        super().allocate(batch)
        self.norms = np.empty_like(self.output)
        self._squared = np.empty_like(self.output)

    def forward(self, xs, train):
        nk.lrn_forward(_per_pixel(xs[0]), self.config.size, self.alpha, self.beta, self.kappa,
                       _per_pixel(self._squared), _per_pixel(self.norms), _per_pixel(self.output))
        return self.output

    def backward(self, dy, xs, dxs):
        if dxs[0] is None:
            return
        nk.lrn_backward(_per_pixel(dy), _per_pixel(xs[0]), _per_pixel(self.output), _per_pixel(self.norms),
                        self.alpha, self.beta, self._coef_rows, self._coef_cols, self._coef_vals,
                        _per_pixel(dxs[0]))

    def summary_row(self):
        s = self.in_shapes[0]
        return f"Local Response Normalization Layer: {s.w} x {s.h} x {s.c} image, {self.config.size} size"


@register
class L2Norm(Layer):
    """Each pixel's channel vector divided by its L2 norm."""
    kind = "l2norm"
    Config = LayerConfig

    def output_shape(self, in_shapes):
        self.require_image(in_shapes[0])
        return in_shapes[0]

    def allocate(self, batch):
        super().allocate(batch)
        s = self.out_shape
        self.norms = np.empty((batch, s.h * s.w), FLOAT)

    def forward(self, xs, train):
        nk.l2norm_forward(_per_pixel(xs[0]), _per_pixel(self.output), self.norms)
        return self.output

    def backward(self, dy, xs, dxs):
        if dxs[0] is None:
            return
        nk.l2norm_backward(_per_pixel(dy), _per_pixel(self.output), self.norms, _per_pixel(dxs[0]))

    def summary_row(self):
        return f"l2norm                                         {self.out_shape.size:4d}"
