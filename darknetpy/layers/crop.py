"""[crop]: cut a crop_width x crop_height window out of the image and map values x*2 - 1 (spec §2.14).

Inference takes the centred window. Training draws one offset (and, with flip=1, one horizontal flip) per
forward pass for the whole batch, as Darknet does, from the numpy Generator `self.rng` (seed it for
reproducible runs).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import FLOAT, Layer, LayerConfig, Shape, option
from .registry import register


@dataclass(frozen=True)
class CropConfig(LayerConfig):
    crop_height: int = option(1, minimum=1)
    crop_width: int = option(1, minimum=1)
    flip: bool = option(False)
    noadjust: bool = option(False)


@register
class Crop(Layer):
    kind = "crop"
    Config = CropConfig
    # read by Darknet but unused by its CPU forward pass (GPU augmentation only)

    def __init__(self, config: CropConfig, index: int):
        super().__init__(config, index)
        self.rng = np.random.default_rng()
        self.scale, self.shift = (FLOAT(1), FLOAT(0)) if config.noadjust else (FLOAT(2), FLOAT(-1))
        self.last_window: tuple[int, int, bool] | None = None  # (dh, dw, flipped) of the last forward

    def output_shape(self, in_shapes):
        cfg = self.config
        x = in_shapes[0]
        self.require_image(x)
        if cfg.crop_height > x.h:
            raise cfg.error(f"crop_height={cfg.crop_height} is larger than the input height {x.h}", "crop_height")
        if cfg.crop_width > x.w:
            raise cfg.error(f"crop_width={cfg.crop_width} is larger than the input width {x.w}", "crop_width")
        return Shape(x.c, cfg.crop_height, cfg.crop_width)

    def _window(self, train: bool) -> tuple[int, int, bool]:
        x = self.in_shapes[0]
        out = self.out_shape
        if not train:
            return (x.h - out.h) // 2, (x.w - out.w) // 2, False
        flip = bool(self.config.flip and self.rng.integers(2))
        dh = int(self.rng.integers(x.h - out.h + 1))
        dw = int(self.rng.integers(x.w - out.w + 1))
        return dh, dw, flip

    def forward(self, xs, train):
        x = xs[0]
        out = self.out_shape
        dh, dw, flip = self._window(train)
        self.last_window = (dh, dw, flip)
        rows = x[:, :, dh:dh + out.h]
        if flip:
            # Darknet reads column w - dw - 1 - j for output column j
            width = x.shape[3]
            window = rows[:, :, :, width - dw - out.w:width - dw][..., ::-1]
        else:
            window = rows[:, :, :, dw:dw + out.w]
        np.multiply(window, self.scale, out=self.output)
        self.output += self.shift
        return self.output

    def backward(self, dy, xs, dxs):
        if dxs[0] is not None:
            raise NotImplementedError(f"[crop] (layer {self.index}) has no backward pass: Darknet passes no "
                                      "gradient through a crop, so only a first-layer crop can be trained")

    def summary_row(self):
        x = self.in_shapes[0]
        s = self.out_shape
        return f"Crop Layer: {x.h} x {x.w} -> {s.h} x {s.w} x {s.c} image"
