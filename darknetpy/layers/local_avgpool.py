"""[local_avgpool] (AlexeyAB): average pooling over size x size windows, the windowed counterpart of the
global [avgpool].

Keys and geometry are those of [maxpool] (AlexeyAB parses both with the same code): `stride` (1),
`stride_x`/`stride_y`, `size` (default stride), `padding` (the *total* padding, default size - 1), window
origin at the C-truncated (-padding)/2, out = (in + padding - size) / stride + 1. So `size=2 stride=2` on an
even map halves it with no padding used (padding 1 goes to the right/bottom, beyond the last window).

Averages count only the taps inside the image (AlexeyAB's forward); see kernels/local_avgpool.py for the
backward pass, which is the exact gradient (AlexeyAB's CPU backward divides by size*size at the borders too).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels import local_avgpool as kernels
from .base import Layer, Shape
from .pooling import MaxpoolConfig
from .registry import register


@dataclass(frozen=True)
class LocalAvgpoolConfig(MaxpoolConfig):
    """[maxpool]'s window keys (stride, stride_x/y, size, padding) with its defaults and geometry: AlexeyAB
    reads the same keys for both and builds both with make_maxpool_layer. Keys only [maxpool] reads
    (maxpool_depth, out_channels, antialiasing) would need a [maxpool]-only subclass, not this one."""


@register
class LocalAvgpool(Layer):
    kind = "local_avgpool"
    Config = LocalAvgpoolConfig

    def output_shape(self, in_shapes: list[Shape]) -> Shape:
        cfg = self.config
        x = in_shapes[0]
        self.require_image(x)
        sy, sx = cfg.strides
        out_h, out_w = cfg.output_size(x)
        offset = cfg.origin_offset
        if offset + cfg.window <= 0 or offset + (out_w - 1) * sx >= x.w or offset + (out_h - 1) * sy >= x.h:
            # such a window has no tap to average (AlexeyAB divides 0 by 0 there)
            raise cfg.error(f"padding={cfg.total_padding} puts a {cfg.window}x{cfg.window} window entirely "
                            f"outside the {x.w}x{x.h} input", "padding")
        return Shape(x.c, out_h, out_w)

    def forward(self, xs: list[np.ndarray], train: bool) -> np.ndarray:
        cfg = self.config
        sy, sx = cfg.strides
        kernels.local_avgpool_forward(xs[0], cfg.window, sy, sx, cfg.origin_offset, self.output)
        return self.output

    def backward(self, dy: np.ndarray, xs: list[np.ndarray], dxs: list[np.ndarray | None]) -> None:
        if dxs[0] is not None:
            cfg = self.config
            sy, sx = cfg.strides
            kernels.local_avgpool_backward(dy, cfg.window, sy, sx, cfg.origin_offset, dxs[0])

    def flops(self) -> float:
        s = self.out_shape
        return self.config.window ** 2 * s.c * s.h * s.w / 1e9

    def summary_row(self) -> str:
        cfg = self.config
        sy, sx = cfg.strides
        stride = f"{sx:2d}" if sx == sy else f"{sx:2d}x{sy:2d}"
        return (f"avg          {cfg.window} x {cfg.window} / {stride} {self.describe_shape(self.in_shapes[0])}"
                f"   ->  {self.describe_shape(self.out_shape)}")
