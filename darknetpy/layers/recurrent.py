"""[rnn], [gru], [lstm], [crnn]: recognised, sized and counted, but not run yet (spec §2.24).

The networks build (shapes only) so that summaries, parameter counts and the exact .weights byte size of
recurrent cfgs work; loading or saving such a file moves the sub-layers' arrays through untouched
(allocated on first use). Running a forward or backward pass raises UnsupportedError at the section line.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import UnsupportedError
from ..kernels import activations as act
from .base import FLOAT, Layer, LayerConfig, Shape, option
from .registry import register

ACTIVATION_NAMES = tuple(act.ACTIVATION_CODES)


@dataclass(frozen=True)
class _Block:
    """One sub-layer of a recurrent layer, as it appears in the .weights file."""
    kind: str          # "connected" or "convolutional"
    inputs: int        # connected: input size; convolutional: input channels
    outputs: int       # connected: output size; convolutional: filters
    batch_normalize: bool
    size: int = 1      # convolutional kernel size

    def shapes(self) -> list[tuple[int, ...]]:
        bn = [(self.outputs,)] * 3 if self.batch_normalize else []
        if self.kind == "connected":
            return [(self.outputs,), (self.outputs, self.inputs)] + bn
        weights = (self.outputs, self.inputs, self.size, self.size)
        return [(self.outputs,)] + bn + [weights]

    def summary(self, h: int = 1, w: int = 1) -> str:
        if self.kind == "connected":
            return f"connected                            {self.inputs:4d}  ->  {self.outputs:4d}"
        bflops = 2.0 * self.outputs * self.size ** 2 * self.inputs * h * w / 1e9
        return (f"conv  {self.outputs:5d} {self.size:2d} x{self.size:2d} / 1  {w:4d} x{h:4d} x{self.inputs:4d}"
                f"   ->  {w:4d} x{h:4d} x{self.outputs:4d}  {bflops:5.3f} BFLOPs")


class _Recurrent(Layer):
    """Shared behaviour: flat output, lazily allocated file arrays, no computation."""
    title = ""

    def __init__(self, config: LayerConfig, index: int):
        super().__init__(config, index)
        self._arrays: list[np.ndarray] | None = None
        self._array_blocks: tuple[_Block, ...] = ()

    def blocks(self) -> tuple[_Block, ...]:
        """Sub-layers in .weights file order."""
        raise NotImplementedError

    def creation_order(self) -> tuple[_Block, ...]:
        """Sub-layers in the order Darknet creates (and prints) them."""
        return self._array_blocks

    def _unsupported(self) -> UnsupportedError:
        return self.config.unsupported(f"[{self.kind}] layers are not supported yet")

    def output_shape(self, in_shapes):
        if in_shapes[0].size == 0:
            raise self.config.error(f"[{self.kind}] needs a non-empty input")
        return Shape.flat(self.config.output)

    def parameters_needed(self):
        return sum(math.prod(shape) for block in self.blocks() for shape in block.shapes())

    def allocate_parameters(self):
        blocks = self.blocks()
        if blocks != self._array_blocks:
            self._arrays = None
            self._array_blocks = blocks

    def weight_arrays(self, saving=False):
        # sub-layers load their own BN arrays regardless of this section's dontloadscales, as in Darknet
        if self._arrays is None:
            self._arrays = [np.zeros(shape, FLOAT) for block in self._array_blocks for shape in block.shapes()]
        return self._arrays

    def after_load(self, transposed):
        if not transposed or self._arrays is None:
            return
        pos = 0
        for block in self._array_blocks:
            if block.kind == "connected":
                w = self._arrays[pos + 1]
                w[...] = w.reshape(w.shape[1], w.shape[0]).T.copy()
            pos += len(block.shapes())

    def forward(self, xs, train):
        raise self._unsupported()

    def backward(self, dy, xs, dxs):
        raise self._unsupported()

    def summary_row(self):
        lines = [f"{self.title} Layer: {self.in_shapes[0].size} inputs, {self.out_shape.size} outputs"]
        lines += ["\t\t" + block.summary() for block in self.creation_order()]
        return "\n".join(lines)


@dataclass(frozen=True)
class RnnConfig(LayerConfig):
    output: int = option(1, minimum=1)
    activation: str = option("logistic", choices=ACTIVATION_NAMES)
    batch_normalize: bool = option(False)
    shortcut: bool = option(False)


@register
class Rnn(_Recurrent):
    kind = "rnn"
    Config = RnnConfig
    title = "RNN"

    def blocks(self):
        cfg = self.config
        inputs, out, bn = self.in_shapes[0].size, cfg.output, cfg.batch_normalize
        return (_Block("connected", inputs, out, bn),   # input_layer
                _Block("connected", out, out, bn),      # self_layer
                _Block("connected", out, out, bn))      # output_layer


@dataclass(frozen=True)
class LstmConfig(LayerConfig):
    output: int = option(1, minimum=1)
    batch_normalize: bool = option(False)


@dataclass(frozen=True)
class GruConfig(LstmConfig):
    tanh: bool = option(False)


class _Gated(_Recurrent):
    """GRU and LSTM: each gate has a state sub-layer (output -> output) and an update sub-layer
    (input -> output); the file holds every state sub-layer first, then every update sub-layer."""
    gates = 0

    def blocks(self):
        cfg = self.config
        out, bn = cfg.output, cfg.batch_normalize
        state = _Block("connected", out, out, bn)
        update = _Block("connected", self.in_shapes[0].size, out, bn)
        return (state,) * self.gates + (update,) * self.gates

    def _state_and_update(self) -> tuple[_Block, _Block]:
        return self._array_blocks[0], self._array_blocks[self.gates]


@register
class Gru(_Gated):
    kind = "gru"
    Config = GruConfig
    title = "GRU"
    gates = 3   # file order: wz, wr, wh, uz, ur, uh

    def creation_order(self):
        state, update = self._state_and_update()
        return (update, state) * 3             # uz, wz, ur, wr, uh, wh


@register
class Lstm(_Gated):
    kind = "lstm"
    Config = LstmConfig
    title = "LSTM"
    gates = 4   # file order: wi, wf, wo, wg, ui, uf, uo, ug

    def creation_order(self):
        state, update = self._state_and_update()
        return (update,) * 4 + (state,) * 4   # uf, ui, ug, uo, wf, wi, wg, wo


@dataclass(frozen=True)
class CrnnConfig(LayerConfig):
    output_filters: int = option(1, minimum=1)
    hidden_filters: int = option(1, minimum=1)
    activation: str = option("logistic", choices=ACTIVATION_NAMES)
    batch_normalize: bool = option(False)
    shortcut: bool = option(False)


@register
class Crnn(_Recurrent):
    kind = "crnn"
    Config = CrnnConfig
    title = "CRNN"

    def output_shape(self, in_shapes):
        x = in_shapes[0]
        self.require_image(x)
        return Shape(self.config.output_filters, x.h, x.w)

    def blocks(self):
        cfg = self.config
        c, hidden, bn = self.in_shapes[0].c, cfg.hidden_filters, cfg.batch_normalize
        return (_Block("convolutional", c, hidden, bn, 3),        # input_layer
                _Block("convolutional", hidden, hidden, bn, 3),   # self_layer
                _Block("convolutional", hidden, cfg.output_filters, bn, 3))  # output_layer

    def summary_row(self):
        x = self.in_shapes[0]
        lines = [f"CRNN Layer: {x.h} x {x.w} x {x.c} image, {self.config.output_filters} filters"]
        lines += ["\t\t" + block.summary(x.h, x.w) for block in self._array_blocks]
        return "\n".join(lines)
