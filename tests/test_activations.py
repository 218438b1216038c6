"""Activations (spec §3): forward and gradient kernels against slow references written from the spec table
(Darknet's 14, bit for bit), from AlexeyAB's definitions (mish, swish, hard_mish, relu6, gelu, revleaky),
PyTorch, and central finite differences."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest

from darknetpy.kernels import activations as act

DARKNET_14 = ["linear", "logistic", "loggy", "relu", "relie", "ramp", "leaky", "tanh", "plse", "elu", "selu",
              "stair", "hardtan", "lhtan"]
ALEXEYAB = ["mish", "swish", "hard_mish", "relu6", "gelu", "revleaky"]
ALL_NAMES = DARKNET_14 + ALEXEYAB
# No transcendental function involved, so the result is exact whatever the formula.
BIT_EXACT = set(DARKNET_14) | {"relu6", "revleaky", "hard_mish"}


# ------------------------------------------------------------------------------------------------------
# Slow references. `flt` marks where the C code does float (not double) arithmetic: an int literal meeting
# a float, e.g. `x - 4`. np.float32 gives Darknet's bits; passing `float` gives the smooth double function
# that finite differences need.

def _exp(v: float) -> float:
    try:
        return math.exp(v)
    except OverflowError:
        return math.inf


def reference_forward(name: str, x: float, flt=np.float32) -> float:
    if name == "linear":
        return x
    if name == "logistic":
        return 1.0 / (1.0 + _exp(-x))
    if name == "loggy":
        return 2.0 / (1.0 + _exp(-x)) - 1.0
    if name == "relu":
        return x * (1.0 if x > 0 else 0.0)
    if name == "relie":
        return x if x > 0 else 0.01 * x
    if name in ("leaky", "revleaky"):
        return x if x > 0 else 0.1 * x
    if name == "ramp":
        return x * (1.0 if x > 0 else 0.0) + 0.1 * x
    if name == "tanh":
        e = _exp(2.0 * x)
        return (e - 1.0) / (e + 1.0)
    if name == "plse":
        if x < -4:
            return 0.01 * float(flt(x + 4))
        if x > 4:
            return 0.01 * float(flt(x - 4)) + 1.0
        return 0.125 * x + 0.5
    if name == "elu":  # C: (x >= 0)*x + (x < 0)*(exp(x)-1), so 0*inf = NaN once exp overflows
        return (1.0 if x >= 0 else 0.0) * x + (1.0 if x < 0 else 0.0) * (_exp(x) - 1.0)
    if name == "selu":
        return ((1.0 if x >= 0 else 0.0) * 1.0507 * x
                + (1.0 if x < 0 else 0.0) * 1.0507 * 1.6732 * (_exp(x) - 1.0))
    if name == "stair":  # C floor() returns a double, so floor(-0.0/2.) is -0.0 (math.floor gives int 0)
        n = math.floor(x)
        half = float(np.floor(x / 2.0))
        if n % 2 == 0:
            return half
        return float(flt(x) - flt(n)) + half
    if name == "hardtan":
        return -1.0 if x < -1 else (1.0 if x > 1 else x)
    if name == "lhtan":
        if x < 0:
            return 0.001 * x
        if x > 1:
            return 0.001 * float(flt(x - 1)) + 1.0
        return x
    if name == "mish":
        softplus = x if x > 20 else (_exp(x) if x < -20 else math.log(_exp(x) + 1.0))
        return x * math.tanh(softplus)
    if name == "swish":
        return x / (1.0 + _exp(-x))
    if name == "hard_mish":
        return x if x > 0 else (x * x / 2 + x if x > -2 else 0.0)
    if name == "relu6":  # min_val_cmp(max_val_cmp(x, 0), 6) with (a > b) ? a : b macros: -0.0 becomes 0
        low = x if x > 0 else 0.0
        return low if low < 6 else 6.0
    if name == "gelu":
        return 0.5 * x * (1.0 + math.tanh(0.797885 * x + 0.035677 * x ** 3))
    raise AssertionError(name)


def reference_array(name: str, xs: np.ndarray) -> np.ndarray:
    return np.array([reference_forward(name, float(v)) for v in xs], dtype=np.float64).astype(np.float32)


def _grid() -> np.ndarray:
    special = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 6.5, 7.0, 0.3, 2.7, 10.0, 19.5,
               20.0, 20.5, 30.0, 100.0, 354.0, 356.0, 700.0, 710.0, 1000.0, 1e6, 1e20, 3e38, 1e-30,
               2.0 ** 24 + 2, 2.0 ** 31 + 256]
    rng = np.random.default_rng(0)
    values = special + [-v for v in special] + list(rng.uniform(-8, 8, 300)) + list(rng.uniform(-40, 40, 60))
    values += [k + d for k in range(-6, 7) for d in (-1e-6, 1e-6)]
    return np.array(values, dtype=np.float32)


GRID = _grid()


def assert_bits_equal(actual: np.ndarray, expected: np.ndarray) -> None:
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(actual), nan)
    differ = np.flatnonzero((actual.view(np.uint32) != expected.view(np.uint32)) & ~nan)
    assert differ.size == 0, [(int(i), float(actual[i]), float(expected[i])) for i in differ[:5]]


def assert_forward_matches(name: str, actual: np.ndarray, expected: np.ndarray) -> None:
    if name in BIT_EXACT:
        assert_bits_equal(actual, expected)
    else:
        # within a few float32 ulps; atol covers the reference's own cancellation in 1 + tanh(u) near -1
        np.testing.assert_allclose(actual, expected, rtol=4e-7, atol=1e-9)


def _torch():
    try:
        import torch
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("torch is not installed")
    return torch


# ------------------------------------------------------------------------------------------------------
# Names and codes

def test_codes_are_unique_and_invertible():
    assert sorted(act.ACTIVATION_CODES) == sorted(ALL_NAMES)
    assert len(set(act.ACTIVATION_CODES.values())) == len(ALL_NAMES)
    for name, code in act.ACTIVATION_CODES.items():
        assert act.ACTIVATION_NAMES[code] == name
        assert act.activation_code(name) == code
    assert act.NEEDS_INPUT == {act.ACTIVATION_CODES[n] for n in ("mish", "swish", "hard_mish", "gelu")}


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(KeyError) as info:
        act.activation_code("Leaky")  # names are case-sensitive
    message = str(info.value)
    assert "Leaky" in message and "leaky" in message and "mish" in message and "hardtan" in message


# ------------------------------------------------------------------------------------------------------
# Forward

@pytest.mark.parametrize("name", ALL_NAMES)
def test_forward_matches_reference(name):
    code = act.activation_code(name)
    x = GRID.copy()
    y = np.full_like(x, 123.0)
    act.activate_to(x, y, code)
    assert_bits_equal(x, GRID)  # input untouched
    expected = reference_array(name, GRID)
    assert_forward_matches(name, y, expected)
    act.activate(x, code)  # in place gives the same bits
    assert_bits_equal(x, y)


@pytest.mark.parametrize("name, x, expected", [
    ("linear", -3.25, -3.25),
    ("logistic", 0.0, 0.5),
    ("loggy", 0.0, 0.0),
    ("relu", 2.5, 2.5),
    ("relu", -0.5, -0.0),           # x*(x>0) keeps the sign of zero
    ("relie", -2.0, np.float32(0.01 * -2.0)),
    ("leaky", -1.0, np.float32(-0.1)),
    ("ramp", 2.0, np.float32(2.0 + 0.2)),
    ("ramp", -1.0, np.float32(-0.1)),
    ("tanh", 0.0, 0.0),
    ("tanh", 400.0, np.nan),         # exp(2x) overflows: inf/inf
    ("tanh", -400.0, -1.0),
    ("plse", 5.0, np.float32(1.01)),
    ("plse", -5.0, np.float32(-0.01)),
    ("plse", 0.0, 0.5),
    ("elu", -1.0, np.float32(math.exp(-1.0) - 1.0)),
    ("elu", 3.0, 3.0),
    ("elu", 1000.0, np.nan),         # 0 * exp(1000) in the C expression
    ("selu", 1.0, np.float32(1.0507)),
    ("selu", -1.0, np.float32(1.0507 * 1.6732 * (math.exp(-1.0) - 1.0))),
    ("stair", 2.5, 1.0),             # floor 2 is even: floor(x/2)
    ("stair", 3.5, 1.5),             # floor 3 is odd: (x - 3) + floor(x/2)
    ("stair", -0.5, -0.5),           # floor -1 is odd: 0.5 + floor(-0.25)
    ("hardtan", 5.0, 1.0),
    ("hardtan", -5.0, -1.0),
    ("lhtan", 2.0, np.float32(1.001)),
    ("lhtan", -1.0, np.float32(-0.001)),
    ("relu6", 7.0, 6.0),
    ("relu6", -1.0, 0.0),
    ("hard_mish", -1.0, -0.5),
    ("hard_mish", -3.0, 0.0),
    ("mish", 30.0, 30.0),
    ("revleaky", -1.0, np.float32(-0.1)),
])
def test_forward_spot_values(name, x, expected):
    y = np.array([x], dtype=np.float32)
    act.activate(y, act.activation_code(name))
    want = np.array([expected], dtype=np.float32)
    if np.isnan(want[0]):
        assert np.isnan(y[0])
    else:
        assert y.view(np.uint32)[0] == want.view(np.uint32)[0], (y[0], want[0])


TORCH_CASES = {
    "mish": lambda t, F, x: F.mish(x),
    "swish": lambda t, F, x: F.silu(x),
    "gelu": lambda t, F, x: F.gelu(x, approximate="tanh"),
    "relu6": lambda t, F, x: F.relu6(x),
    "hardtan": lambda t, F, x: F.hardtanh(x),
    "elu": lambda t, F, x: F.elu(x),
    "selu": lambda t, F, x: 1.0507 * F.elu(x, alpha=1.6732),  # Darknet's rounded constants, not torch.selu's
    "tanh": lambda t, F, x: t.tanh(x),
    "logistic": lambda t, F, x: t.sigmoid(x),
}


@pytest.mark.parametrize("name", sorted(TORCH_CASES))
def test_forward_matches_torch(name):
    torch = _torch()
    import torch.nn.functional as F
    x = GRID[np.abs(GRID) < 300]  # beyond that Darknet's tanh/elu/selu are NaN on purpose
    y = np.empty_like(x)
    act.activate_to(x, y, act.activation_code(name))
    expected = TORCH_CASES[name](torch, F, torch.from_numpy(x.astype(np.float64))).numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------------
# Gradient

def _smooth_points() -> np.ndarray:
    """Points at least 0.02 from every integer: all kinks and jumps (0, ±1, -2, ±4, 6, stair's steps)."""
    rng = np.random.default_rng(1)
    x = rng.uniform(-7, 7, 400)
    x = x[np.abs(x - np.round(x)) > 0.02]
    return x.astype(np.float32)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_gradient_matches_finite_differences(name):
    code = act.activation_code(name)
    x = _smooth_points()
    y = np.empty_like(x)
    act.activate_to(x, y, code)
    h = 1e-3
    slope = np.array([(reference_forward(name, v + h, float) - reference_forward(name, v - h, float)) / (2 * h)
                      for v in x.astype(np.float64)])
    dy = np.random.default_rng(2).uniform(0.5, 2.0, x.size).astype(np.float32)
    grad = dy.copy()
    if code in act.NEEDS_INPUT:
        act.gradient(grad, np.empty(0, np.float32), x, code)
    else:  # Darknet's convention: a function of the output only
        act.gradient(grad, y, np.empty(0, np.float32), code)
    # atol: g(y) inherits y's float32 rounding, e.g. tanh's 1 - y*y for y close to 1
    np.testing.assert_allclose(grad, dy * slope, rtol=1e-4, atol=4e-7)


@pytest.mark.parametrize("name, y, expected", [
    ("linear", 5.0, 1.0),
    ("logistic", 0.5, 0.25),
    ("logistic", 0.25, 0.1875),
    ("loggy", 0.0, 0.5),              # u = 0.5: 2*(1-u)*u
    ("loggy", 0.5, 0.375),            # u = 0.75
    ("relu", 2.0, 1.0),
    ("relu", 0.0, 0.0),
    ("relie", -0.5, np.float32(0.01)),
    ("leaky", -0.1, np.float32(0.1)),
    ("leaky", 0.0, np.float32(0.1)),
    ("ramp", 1.0, np.float32(1.1)),
    ("ramp", -1.0, np.float32(0.1)),
    ("tanh", 0.5, 0.75),
    ("plse", -0.1, np.float32(0.01)),
    ("plse", 0.5, 0.125),
    ("plse", 1.5, np.float32(0.01)),
    ("elu", -0.5, 0.5),
    ("elu", 0.0, 1.0),
    ("selu", 0.0, np.float32(1.0507)),
    ("selu", -1.0, np.float32(-1.0 + 1.0507 * 1.6732)),
    ("stair", 2.0, 0.0),
    ("stair", 2.5, 1.0),
    ("hardtan", 1.0, 0.0),
    ("hardtan", 0.3, 1.0),
    ("lhtan", 1.0, np.float32(0.001)),
    ("lhtan", 0.5, 1.0),
    ("lhtan", 0.0, np.float32(0.001)),
    ("relu6", 6.0, 0.0),
    ("relu6", 3.0, 1.0),
])
def test_gradient_spot_values_of_output(name, y, expected):
    grad = np.array([1.0, 3.0], dtype=np.float32)
    act.gradient(grad, np.array([y, y], dtype=np.float32), np.empty(0, np.float32), act.activation_code(name))
    want = np.float32(expected)
    assert grad[0] == want
    assert grad[1] == np.float32(3.0) * want  # delta *= g in float32


@pytest.mark.parametrize("name, x, expected", [
    ("hard_mish", 0.5, 1.0),
    ("hard_mish", -0.5, 0.5),
    ("hard_mish", -3.0, 0.0),
    ("swish", 0.0, 0.5),
    ("mish", 0.0, math.tanh(math.log(2.0))),
    ("mish", 25.0, 1.0),
    ("gelu", 0.0, 0.5),
])
def test_gradient_spot_values_of_input(name, x, expected):
    grad = np.ones(1, np.float32)
    act.gradient(grad, np.empty(0, np.float32), np.array([x], np.float32), act.activation_code(name))
    assert grad[0] == np.float32(expected)


# ------------------------------------------------------------------------------------------------------
# Bias + activation

@pytest.mark.parametrize("name", ALL_NAMES)
def test_bias_activate_matches_numpy(name):
    code = act.activation_code(name)
    rng = np.random.default_rng(3)
    out = rng.uniform(-7, 7, (2, 3, 11)).astype(np.float32)
    bias = rng.uniform(-2, 2, 3).astype(np.float32)
    summed = out + bias[None, :, None]  # float32 add, as Darknet's add_bias
    expected = reference_array(name, summed.ravel()).reshape(out.shape)
    act.bias_activate(out, bias, code)
    assert_forward_matches(name, out.ravel(), expected.ravel())


# The parallel kernel runs the serial kernel's per-row code (activations._apply) over threads; a sample of
# activations (identity, compare, exp, branches) checks the threading, each compiling for over a second.
PARALLEL_SAMPLE = ("linear", "leaky", "logistic", "mish", "plse", "stair")


@pytest.mark.parametrize("shape", [(3, 17, 401), (1, 2, 5)])
def test_parallel_serial_and_auto_agree(shape):
    rng = np.random.default_rng(4)
    base = rng.uniform(-8, 8, shape).astype(np.float32)
    bias = rng.uniform(-2, 2, shape[1]).astype(np.float32)
    for name in PARALLEL_SAMPLE:
        code = act.activation_code(name)
        serial, parallel, auto = base.copy(), base.copy(), base.copy()
        act.bias_activate(serial, bias, code)
        act.bias_activate_parallel(parallel, bias, code)
        act.bias_activate_auto(auto, bias, code)
        assert_bits_equal(parallel.ravel(), serial.ravel())
        assert_bits_equal(auto.ravel(), serial.ravel())
