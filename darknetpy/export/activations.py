"""Darknet's 19 activations (and revleaky) as ONNX nodes, with the formulas of kernels/activations.py.

Each builder takes the graph and the input tensor and returns the activated tensor. Standard operators are
used where their definition is Darknet's formula (Sigmoid, LeakyRelu, Elu, Selu, Clip); the piecewise
ones are written with Where over the same conditions as the C code.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..kernels import activations as act
from .graph import Graph

Builder = Callable[[Graph, str], str]


def _scalar(g: Graph, value: float, suffix: str) -> str:
    return g.const(np.float32(value), suffix)


def _linear(g: Graph, x: str) -> str:
    return x


def _leaky(alpha: float) -> Builder:
    def build(g: Graph, x: str) -> str:
        return g.op("LeakyRelu", [x], alpha=alpha)
    return build


def _logistic(g: Graph, x: str) -> str:
    return g.op("Sigmoid", [x])


def _relu(g: Graph, x: str) -> str:
    return g.op("Relu", [x])


def _ramp(g: Graph, x: str) -> str:
    # x * (x > 0) + 0.1 * x
    tenth = g.op("Mul", [x, _scalar(g, 0.1, "tenth")])
    return g.op("Add", [g.op("Relu", [x]), tenth])


def _tanh(g: Graph, x: str) -> str:
    return g.op("Tanh", [x])


def _piecewise_linear(g: Graph, x: str, low: float, high: float, below: tuple[float, float],
                      inside: tuple[float, float], above: tuple[float, float]) -> str:
    """slope*x + offset per interval (x < low, low <= x <= high, x > high), as plse and lhtan are."""
    def line(slope_offset, name):
        slope, offset = slope_offset
        return g.scale_shift(x, slope, offset, name)
    under = g.op("Less", [x, _scalar(g, low, "low")])
    over = g.op("Greater", [x, _scalar(g, high, "high")])
    middle = g.op("Where", [over, line(above, "above"), line(inside, "inside")])
    return g.op("Where", [under, line(below, "below"), middle])


def _plse(g: Graph, x: str) -> str:
    # x < -4: 0.01 (x + 4); x > 4: 0.01 (x - 4) + 1; else 0.125 x + 0.5
    return _piecewise_linear(g, x, -4.0, 4.0, (0.01, 0.04), (0.125, 0.5), (0.01, 1.0 - 0.04))


def _lhtan(g: Graph, x: str) -> str:
    # x < 0: 0.001 x; x > 1: 0.001 (x - 1) + 1; else x
    return _piecewise_linear(g, x, 0.0, 1.0, (0.001, 0.0), (1.0, 0.0), (0.001, 1.0 - 0.001))


def _elu(g: Graph, x: str) -> str:
    return g.op("Elu", [x], alpha=1.0)


def _selu(g: Graph, x: str) -> str:
    # Darknet's constants, not the textbook ones: 1.0507 x, or 1.0507 * 1.6732 (exp(x) - 1)
    return g.op("Selu", [x], alpha=1.6732, gamma=1.0507)


def _loggy(g: Graph, x: str) -> str:
    # 2 / (1 + exp(-x)) - 1
    return g.scale_shift(g.op("Sigmoid", [x]), 2.0, -1.0, "loggy")


def _stair(g: Graph, x: str) -> str:
    # n = floor(x); even n: floor(x / 2); odd n: (x - n) + floor(x / 2)
    n = g.op("Floor", [x])
    half = g.op("Floor", [g.op("Mul", [x, _scalar(g, 0.5, "half")])])
    n_half = g.op("Floor", [g.op("Mul", [n, _scalar(g, 0.5, "half_n")])])
    parity = g.op("Sub", [n, g.op("Mul", [n_half, _scalar(g, 2.0, "two")])])
    even = g.op("Equal", [parity, _scalar(g, 0.0, "zero")])
    odd_value = g.op("Add", [g.op("Sub", [x, n]), half])
    return g.op("Where", [even, half, odd_value])


def _clip(low: float, high: float) -> Builder:
    def build(g: Graph, x: str) -> str:
        return g.op("Clip", [x, _scalar(g, low, "min"), _scalar(g, high, "max")])
    return build


def _mish(g: Graph, x: str) -> str:
    # x * tanh(softplus(x)); AlexeyAB's softplus cut-off at 20 changes nothing in float32
    return g.op("Mul", [x, g.op("Tanh", [g.op("Softplus", [x])])])


def _swish(g: Graph, x: str) -> str:
    return g.op("Mul", [x, g.op("Sigmoid", [x])])


def _hard_mish(g: Graph, x: str) -> str:
    # x > 0: x; -2 < x <= 0: x^2/2 + x; else 0  ==  x * clip(x + 2, 0, 2) / 2
    gate = g.op("Clip", [g.op("Add", [x, _scalar(g, 2.0, "two")]), _scalar(g, 0.0, "min"), _scalar(g, 2.0, "max")])
    return g.op("Mul", [g.op("Mul", [x, gate]), _scalar(g, 0.5, "half")])


def _gelu(g: Graph, x: str) -> str:
    # AlexeyAB's tanh approximation: x * 0.5 (1 + tanh(u)) = x * sigmoid(2u), u = 0.797885 x + 0.035677 x^3
    cube = g.op("Mul", [g.op("Mul", [x, x]), x])
    u = g.op("Add", [g.op("Mul", [x, _scalar(g, 2 * act.GELU_LINEAR, "linear")]),
                     g.op("Mul", [cube, _scalar(g, 2 * act.GELU_CUBIC, "cubic")])])
    return g.op("Mul", [x, g.op("Sigmoid", [u])])


ACTIVATIONS: dict[int, Builder] = {
    act.LOGISTIC: _logistic,
    act.RELU: _relu,
    act.RELIE: _leaky(0.01),
    act.LINEAR: _linear,
    act.RAMP: _ramp,
    act.TANH: _tanh,
    act.PLSE: _plse,
    act.LEAKY: _leaky(0.1),
    act.ELU: _elu,
    act.LOGGY: _loggy,
    act.STAIR: _stair,
    act.HARDTAN: _clip(-1.0, 1.0),
    act.LHTAN: _lhtan,
    act.SELU: _selu,
    act.MISH: _mish,
    act.SWISH: _swish,
    act.HARD_MISH: _hard_mish,
    act.RELU6: _clip(0.0, 6.0),
    act.GELU: _gelu,
    act.REVLEAKY: _leaky(0.1),
}


def activate(g: Graph, x: str, code: int) -> str:
    return ACTIVATIONS[code](g, x)
