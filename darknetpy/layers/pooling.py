"""[maxpool] (alias [max]) and [avgpool] (alias [avg]), spec §2.4–2.5.

Darknet's max pooling pads asymmetrically: `padding` (default size-1) is the *total* padding, the window
origin moves by the C-truncated (-padding)/2, and out-of-image taps lose to everything. [avgpool] has no
options at all: it always averages each whole channel down to 1x1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels import pooling as kernels
from .base import Layer, LayerConfig, Shape, c_div, option
from .registry import register


@dataclass(frozen=True)
class MaxpoolConfig(LayerConfig):
    stride: int = option(1, minimum=1)
    stride_x: int | None = option(None, minimum=1)   # AlexeyAB; default: stride
    stride_y: int | None = option(None, minimum=1)
    size: int | None = option(None, minimum=1)       # default: stride
    padding: int | None = option(None, minimum=0)    # default: size - 1

    @property
    def window(self) -> int:
        return self.size if self.size is not None else self.stride

    @property
    def total_padding(self) -> int:
        return self.padding if self.padding is not None else self.window - 1

    @property
    def strides(self) -> tuple[int, int]:
        """(stride_y, stride_x)."""
        return (self.stride_y or self.stride, self.stride_x or self.stride)

    def output_size(self, x: Shape) -> tuple[int, int]:
        """(out_h, out_w) of the windows over input x (Darknet's formula); a window that does not fit is an
        error at the size (or stride) line."""
        sy, sx = self.strides
        out_h = c_div(x.h + self.total_padding - self.window, sy) + 1
        out_w = c_div(x.w + self.total_padding - self.window, sx) + 1
        if out_h <= 0 or out_w <= 0:
            key = "size" if self.size is not None else "stride"
            raise self.error(f"a {self.window}x{self.window} window does not fit the {x.w}x{x.h} input "
                             f"(padding {self.total_padding}, output {out_w}x{out_h})", key)
        return out_h, out_w

    @property
    def origin_offset(self) -> int:
        """Where window 0 starts: C's (-padding)/2, i.e. 0 for padding 1, -1 for padding 2 or 3."""
        return c_div(-self.total_padding, 2)


@register
class Maxpool(Layer):
    kind = "maxpool"
    aliases = ("max",)
    Config = MaxpoolConfig

    def __init__(self, config: MaxpoolConfig, index: int):
        super().__init__(config, index)
        self.argmax: np.ndarray | None = None
        self._argmax_current = False   # argmax holds the winners of the last forward pass

    def output_shape(self, in_shapes: list[Shape]) -> Shape:
        cfg = self.config
        x = in_shapes[0]
        self.require_image(x)
        out_h, out_w = cfg.output_size(x)
        return Shape(x.c, out_h, out_w)

    def allocate(self, batch: int) -> None:
        super().allocate(batch)
        self.argmax = np.full(self.output.shape, -1, dtype=np.int32)

    def forward(self, xs: list[np.ndarray], train: bool) -> np.ndarray:
        # inference pools values alone (the winners cost as much again on some windows); a backward pass
        # after it finds them again from the same input
        self._pool(xs[0], self.argmax if train else None)
        return self.output

    def _pool(self, x: np.ndarray, argmax: np.ndarray | None) -> None:
        cfg = self.config
        sy, sx = cfg.strides
        kernels.maxpool_forward(x, cfg.window, sy, sx, cfg.origin_offset, self.output, argmax)
        self._argmax_current = argmax is not None

    def backward(self, dy: np.ndarray, xs: list[np.ndarray], dxs: list[np.ndarray | None]) -> None:
        if dxs[0] is None:
            return
        if not self._argmax_current:
            self._pool(xs[0], self.argmax)
        kernels.maxpool_backward(dy, self.argmax, dxs[0])

    def summary_row(self) -> str:
        cfg = self.config
        sy, sx = cfg.strides
        stride = f"{sx}" if sx == sy else f"{sx}x{sy}"
        return (f"max          {cfg.window} x {cfg.window} / {stride}  {self.describe_shape(self.in_shapes[0])}"
                f"   ->  {self.describe_shape(self.out_shape)}")


@register
class Avgpool(Layer):
    """Global average pooling: (c, h, w) -> (c, 1, 1)."""
    kind = "avgpool"
    aliases = ("avg",)
    Config = LayerConfig

    def output_shape(self, in_shapes: list[Shape]) -> Shape:
        x = in_shapes[0]
        self.require_image(x)
        return Shape(x.c, 1, 1)

    def forward(self, xs: list[np.ndarray], train: bool) -> np.ndarray:
        kernels.avgpool_forward(xs[0], self.output)
        return self.output

    def backward(self, dy: np.ndarray, xs: list[np.ndarray], dxs: list[np.ndarray | None]) -> None:
        if dxs[0] is not None:
            kernels.avgpool_backward(dy, dxs[0])

    def summary_row(self) -> str:
        return f"avg                     {self.describe_shape(self.in_shapes[0])}   ->  {self.out_shape.c:4d}"

