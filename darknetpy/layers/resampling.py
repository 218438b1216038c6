"""[upsample] and [reorg], spec §2.10–2.11.

[upsample] with stride > 0 repeats each pixel stride x stride times (times `scale`); a negative stride
turns it into a downsampler that *sums* (not averages) each |stride| x |stride| block.

[reorg] is Darknet's own space-to-depth, which differs from the textbook one (and from PyTorch's
pixel_unshuffle): it reads the (C, H, W) input buffer as if it were shaped (C/s², H·s, W·s) and gathers from
that misreading. YOLOv2's passthrough was trained with it, so it is reproduced exactly. `reverse` applies the
inverse permutation, `flatten` transposes (C, H·W) <-> (H·W, C) instead, and `extra` (go.cfg) copies the
input into a flat output with `extra` zeros appended.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels import resampling as kernels
from .base import FLOAT, Layer, LayerConfig, Shape, option
from .registry import register


@dataclass(frozen=True)
class UpsampleConfig(LayerConfig):
    stride: int = option(2)
    scale: float = option(1.0)


@register
class Upsample(Layer):
    kind = "upsample"
    Config = UpsampleConfig

    def __init__(self, config: UpsampleConfig, index: int):
        super().__init__(config, index)
        if config.stride == 0:
            raise config.error("stride=0: use a positive stride to upsample or a negative one to downsample",
                               "stride")
        self.factor = abs(config.stride)
        self.downsample = config.stride < 0
        self.scale = FLOAT(config.scale)

    def output_shape(self, in_shapes: list[Shape]) -> Shape:
        x = in_shapes[0]
        self.require_image(x)
        s = self.factor
        if not self.downsample:
            return Shape(x.c, x.h * s, x.w * s)
        if x.h % s or x.w % s:
            # Darknet would index the input with the rounded-down width and read the wrong pixels
            raise self.config.error(f"stride={self.config.stride} does not divide the {x.w}x{x.h} input",
                                    "stride")
        return Shape(x.c, x.h // s, x.w // s)

    def forward(self, xs: list[np.ndarray], train: bool) -> np.ndarray:
        if self.downsample:
            kernels.block_sum(xs[0], self.factor, self.scale, self.output, False)
        else:
            kernels.nearest_expand(xs[0], self.factor, self.scale, self.output, False)
        return self.output

    def backward(self, dy: np.ndarray, xs: list[np.ndarray], dxs: list[np.ndarray | None]) -> None:
        dx = dxs[0]
        if dx is None:
            return
        if self.downsample:
            kernels.nearest_expand(dy, self.factor, self.scale, dx, True)
        else:
            kernels.block_sum(dy, self.factor, self.scale, dx, True)

    def summary_row(self) -> str:
        name = "downsample" if self.downsample else "upsample  "
        return (f"{name}         {self.factor:2d}x  {self.describe_shape(self.in_shapes[0])}   ->  "
                f"{self.describe_shape(self.out_shape)}")


@dataclass(frozen=True)
class ReorgConfig(LayerConfig):
    stride: int = option(1, minimum=1)
    reverse: bool = option(False)
    flatten: bool = option(False)
    extra: int = option(0, minimum=0)


@register
class Reorg(Layer):
    kind = "reorg"
    Config = ReorgConfig

    def __init__(self, config: ReorgConfig, index: int):
        super().__init__(config, index)
        if config.extra and config.flatten:
            # Darknet's flatten branch would then read `extra` values past the end of the input
            raise config.error("extra together with flatten=1 is not supported", "extra")

    def output_shape(self, in_shapes: list[Shape]) -> Shape:
        cfg = self.config
        x = in_shapes[0]
        self.require_image(x)
        if cfg.extra:
            return Shape.flat(x.size + cfg.extra)
        s = cfg.stride
        if x.c % (s * s):
            # both directions view the buffer as (C/s², H·s, W·s); Darknet divides by zero or reads past
            # the end otherwise
            raise cfg.error(f"reorg with stride={s} needs the channels ({x.c}) to be a multiple of {s * s}",
                            "stride")
        if cfg.reverse:
            return Shape(x.c // (s * s), x.h * s, x.w * s)
        if x.h % s or x.w % s:
            raise cfg.error(f"stride={s} does not divide the {x.w}x{x.h} input", "stride")
        return Shape(x.c * s * s, x.h // s, x.w // s)

    def _flat(self, array: np.ndarray) -> np.ndarray:
        return array.reshape(array.shape[0], -1)

    def forward(self, xs: list[np.ndarray], train: bool) -> np.ndarray:
        cfg = self.config
        x = xs[0]
        batch = x.shape[0]
        c, h, w = x.shape[1], x.shape[2], x.shape[3]
        out = self._flat(self.output)
        if cfg.flatten:
            if cfg.reverse:
                np.copyto(out.reshape(batch, c, h * w), x.reshape(batch, h * w, c).transpose(0, 2, 1))
            else:
                np.copyto(out.reshape(batch, h * w, c), x.reshape(batch, c, h * w).transpose(0, 2, 1))
        elif cfg.extra:
            out[:, :x[0].size] = x.reshape(batch, -1)
        elif cfg.reverse:
            kernels.reorg_scatter(self._flat(x), out, c, h, w, cfg.stride, False)
        else:
            kernels.reorg_gather(self._flat(x), out, c, h, w, cfg.stride, False)
        return self.output

    def backward(self, dy: np.ndarray, xs: list[np.ndarray], dxs: list[np.ndarray | None]) -> None:
        cfg = self.config
        dx = dxs[0]
        if dx is None:
            return
        batch, c, h, w = dx.shape
        dy_flat = self._flat(dy)
        dx_flat = self._flat(dx)
        if cfg.flatten:
            if cfg.reverse:
                target = dx.reshape(batch, h * w, c)
                target += dy.reshape(batch, c, h * w).transpose(0, 2, 1)
            else:
                target = dx.reshape(batch, c, h * w)
                target += dy.reshape(batch, h * w, c).transpose(0, 2, 1)
        elif cfg.extra:
            dx_flat += dy_flat[:, :dx_flat.shape[1]]
        elif cfg.reverse:
            kernels.reorg_gather(dy_flat, dx_flat, c, h, w, cfg.stride, True)
        else:
            kernels.reorg_scatter(dy_flat, dx_flat, c, h, w, cfg.stride, True)

    def summary_row(self) -> str:
        if self.config.extra:
            return f"reorg              {self.in_shapes[0].size:4d}   ->  {self.out_shape.size:4d}"
        return (f"reorg              /{self.config.stride:2d}  {self.describe_shape(self.in_shapes[0])}   ->  "
                f"{self.describe_shape(self.out_shape)}")
