"""[dropout], spec §2.7: the identity at inference; in training each value is dropped with probability p
and the survivors are scaled by 1/(1-p), and the backward pass applies the same mask.

Darknet runs the layer in place on the previous layer's buffers; here inference simply hands the input
array on (no copy) and training writes a separate output, which gives the same numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import FLOAT, Layer, LayerConfig, Shape, option
from .registry import register


@dataclass(frozen=True)
class DropoutConfig(LayerConfig):
    probability: float = option(0.5, minimum=0.0, maximum=1.0)


@register
class Dropout(Layer):
    kind = "dropout"
    Config = DropoutConfig
    inference_returns_input = True
    #: AlexeyAB's DropBlock options only change which values training drops; inference is the identity
    #: either way, so they are accepted without a warning (training uses plain dropout).

    def __init__(self, config: DropoutConfig, index: int):
        super().__init__(config, index)
        p = config.probability
        # Darknet: float scale = 1./(1.-probability), in double from the float probability
        self.probability = FLOAT(p)
        self.scale = FLOAT(1.0 / (1.0 - float(FLOAT(p)))) if p < 1.0 else FLOAT(np.inf)
        #: the random source of the training masks; replace it (or call seed) for reproducible runs
        self.rng: np.random.Generator = np.random.default_rng()
        self.keep: np.ndarray | None = None    # where the last training pass kept the value
        self._draws: np.ndarray | None = None
        self._masked = False

    def seed(self, rng: np.random.Generator | int | None) -> None:
        """Use `rng` (a Generator, or a seed for a new one) for the training masks."""
        self.rng = np.random.default_rng(rng)

    def output_shape(self, in_shapes: list[Shape]) -> Shape:
        return in_shapes[0]

    def allocate(self, batch: int) -> None:
        super().allocate(batch)
        self._draws = np.empty_like(self.output)
        self.keep = np.zeros(self.output.shape, dtype=bool)
        self._masked = False

    def forward(self, xs: list[np.ndarray], train: bool) -> np.ndarray:
        self._masked = train
        if not train:
            return xs[0]
        # Darknet drops where a uniform draw r < p; masked writes keep dropped values exactly 0 (no 0*inf)
        self.rng.random(dtype=np.float32, out=self._draws)
        np.greater_equal(self._draws, self.probability, out=self.keep)
        self.output.fill(0.0)
        np.multiply(xs[0], self.scale, out=self.output, where=self.keep)
        return self.output

    def backward(self, dy: np.ndarray, xs: list[np.ndarray], dxs: list[np.ndarray | None]) -> None:
        dx = dxs[0]
        if dx is None:
            return
        if not self._masked:
            dx += dy
            return
        np.multiply(dy, self.scale, out=dy, where=self.keep)
        np.add(dx, dy, out=dx, where=self.keep)

    def summary_row(self) -> str:
        size = self.in_shapes[0].size
        return f"dropout       p = {self.config.probability:.2f}               {size:4d}  ->  {size:4d}"
