"""Element-wise activations (spec §3) and AlexeyAB's additions, forward and backward, over float32.

Darknet's 14 activations are reproduced bit for bit: the C functions take a float, do their arithmetic in
double wherever a double constant or `exp` is involved (and in float where only ints meet the float, e.g.
`x - 4` in plse), and round the result to float. The kernels mirror that by promoting to float64 exactly
where C does. Their C expressions are kept literally, bugs included: `tanh` is NaN for x >~ 355, `elu` and
`selu` are NaN for x >~ 709.8 (`0 * exp(x)` with exp overflowing), `relu(-0.5)` is -0.0.

Darknet's backward multiplies delta by g(y), a function of the activation *output* (spec §11.11). That is
only possible for monotonic activations; AlexeyAB's mish, swish, hard_mish and gelu are not, so their
gradient is the true derivative at the pre-activation input x (codes in NEEDS_INPUT). AlexeyAB evaluates
its gelu derivative at the output — a bug not reproduced here.

Every kernel is built per activation (`_forward_kernels`, `_gradient_kernel`) with `code` a compile-time
constant: the branch on it disappears, each loop body is branch-free enough for LLVM to vectorise, and only
the activations a network uses are compiled.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import numpy as np
from numba import prange

from . import jit
from .threads import thread_count

# Darknet's enum order for the first 14, then AlexeyAB's additions.
LOGISTIC, RELU, RELIE, LINEAR, RAMP, TANH, PLSE, LEAKY, ELU, LOGGY, STAIR, HARDTAN, LHTAN, SELU = range(14)
MISH, SWISH, HARD_MISH, RELU6, GELU, REVLEAKY = range(14, 20)

ACTIVATION_CODES: dict[str, int] = {
    "logistic": LOGISTIC, "relu": RELU, "relie": RELIE, "linear": LINEAR, "ramp": RAMP, "tanh": TANH,
    "plse": PLSE, "leaky": LEAKY, "elu": ELU, "loggy": LOGGY, "stair": STAIR, "hardtan": HARDTAN,
    "lhtan": LHTAN, "selu": SELU,
    "mish": MISH, "swish": SWISH, "hard_mish": HARD_MISH, "relu6": RELU6, "gelu": GELU,
    "revleaky": REVLEAKY,  # AlexeyAB's CPU code treats it exactly as leaky
}
ACTIVATION_NAMES: dict[int, str] = {code: name for name, code in ACTIVATION_CODES.items()}
DARKNET_CODES: frozenset[int] = frozenset(range(14))
NEEDS_INPUT: frozenset[int] = frozenset({MISH, SWISH, HARD_MISH, GELU})

# AlexeyAB's constants (softplus cut-off of mish; gelu's tanh-approximation coefficients as written there).
MISH_THRESHOLD = 20.0
GELU_LINEAR = 0.797885
GELU_CUBIC = 0.035677

# float32 constants: C does `x - 4`, `2*x`, `(1-y)*y` ... in float when no double literal is involved.
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_F2 = np.float32(2.0)
_F4 = np.float32(4.0)
_F6 = np.float32(6.0)
# Gradient return values: C returns these double literals from float functions, i.e. rounded to float.
_G_RELIE = np.float32(0.01)
_G_LEAKY = np.float32(0.1)
_G_RAMP_POS = np.float32(1.0 + 0.1)
_G_PLSE_OUT = np.float32(0.01)
_G_PLSE_IN = np.float32(0.125)
_G_LHTAN = np.float32(0.001)
_SELU_SCALE = 1.0507
_SELU_SCALE_ALPHA = 1.0507 * 1.6732


def activation_code(name: str) -> int:
    """Code of an activation name; KeyError listing the valid names (the caller adds the cfg line)."""
    try:
        return ACTIVATION_CODES[name]
    except KeyError:
        valid = ", ".join(sorted(ACTIVATION_CODES))
        raise KeyError(f"unknown activation '{name}' (valid: {valid})") from None


# ---------------------------------------------------------------------------------------------------
# Scalar forward functions: v is float32; the return value is stored into a float32 array (rounding).

@jit(inline="always")
def _logistic(v):
    return 1.0 / (1.0 + math.exp(-np.float64(v)))


@jit(inline="always")
def _loggy(v):
    return 2.0 / (1.0 + math.exp(-np.float64(v))) - 1.0


@jit(inline="always")
def _relu(v):
    # x*(x>0): a multiplication, so negative inputs give -0.0 and NaN stays NaN
    return v * (_F1 if v > _F0 else _F0)


@jit(inline="always")
def _relie(v):
    return np.float64(v) if v > _F0 else 0.01 * np.float64(v)


@jit(inline="always")
def _ramp(v):
    return np.float64(v * (_F1 if v > _F0 else _F0)) + 0.1 * np.float64(v)


@jit(inline="always")
def _leaky(v):
    return np.float64(v) if v > _F0 else 0.1 * np.float64(v)


@jit(inline="always")
def leaky_float32(y):
    """Darknet's leaky on a float32 value, for kernels that fuse it: .1 is a C double, so the product is formed
    in double and rounded (0.1f * y differs in the last bit for a fifth of the values)."""
    return y if y > _F0 else np.float32(0.1 * np.float64(y))


@jit(inline="always")
def _tanh(v):
    e = math.exp(np.float64(_F2 * v))
    return (e - 1.0) / (e + 1.0)


@jit(inline="always")
def _plse(v):
    if v < -_F4:
        return 0.01 * np.float64(v + _F4)
    if v > _F4:
        return 0.01 * np.float64(v - _F4) + 1.0
    return 0.125 * np.float64(v) + 0.5


@jit(inline="always")
def _elu(v):
    positive_part = np.float64(v * (_F1 if v >= _F0 else _F0))
    return positive_part + (1.0 if v < _F0 else 0.0) * (math.exp(np.float64(v)) - 1.0)


@jit(inline="always")
def _selu(v):
    x = np.float64(v)
    pos = 1.0 if v >= _F0 else 0.0
    neg = 1.0 if v < _F0 else 0.0
    return pos * _SELU_SCALE * x + neg * _SELU_SCALE_ALPHA * (math.exp(x) - 1.0)


@jit(inline="always")
def _stair(v):
    x = np.float64(v)
    n = np.floor(x)
    half = np.floor(x / 2.0)
    # parity in floating point: C's `int n` overflows beyond 2^31, but every float32 that large is even
    if n - 2.0 * np.floor(n * 0.5) == 0.0:
        return half
    return np.float64(v - np.float32(n)) + half


@jit(inline="always")
def _hardtan(v):
    if v < -_F1:
        return -_F1
    if v > _F1:
        return _F1
    return v


@jit(inline="always")
def _lhtan(v):
    if v < _F0:
        return 0.001 * np.float64(v)
    if v > _F1:
        return 0.001 * np.float64(v - _F1) + 1.0
    return np.float64(v)


@jit(inline="always")
def _mish_tanh_softplus(x):
    """tanh(softplus(x)) with AlexeyAB's cut-off (softplus(x) = x above 20) from a single exp, because
    libm's tanh and log1p cost several exps each: tanh(log(1 + e)) = n / (n + 2) with n = e * (e + 2)."""
    if x > MISH_THRESHOLD:
        return 1.0  # tanh(x) rounds to 1.0 in double for x > 19.1
    e = math.exp(x)
    n = e * (e + 2.0)
    return n / (n + 2.0)


@jit(inline="always")
def _mish(v):
    x = np.float64(v)
    return x * _mish_tanh_softplus(x)


@jit(inline="always")
def _swish(v):
    x = np.float64(v)
    return x / (1.0 + math.exp(-x))


@jit(inline="always")
def _hard_mish(v):
    x = np.float64(v)
    if x > 0.0:
        return x
    if x > -2.0:
        return x * x / 2.0 + x
    return 0.0


@jit(inline="always")
def _relu6(v):
    # AlexeyAB's max-then-min macros: NaN fails both comparisons and becomes 0
    m = v if v > _F0 else _F0
    return m if m < _F6 else _F6


@jit(inline="always")
def _gelu_gate(x):
    """0.5 * (1 + tanh(u)) written as sigmoid(2u): one exp instead of libm's slow tanh."""
    u = GELU_LINEAR * x + GELU_CUBIC * x * x * x
    return 1.0 / (1.0 + math.exp(-2.0 * u))


@jit(inline="always")
def _gelu(v):
    x = np.float64(v)
    return x * _gelu_gate(x)


@jit(inline="always")
def _identity(v):
    return v


@jit(inline="always")
def _each_to(src, dst, minus_shift, f):
    for i in range(src.shape[0]):
        dst[i] = f(src[i] - minus_shift)


@jit(inline="always")
def _each_in_place(src, dst, minus_shift, f):
    # one array only: with two arguments that are the same array, LLVM's runtime overlap check fails and
    # the loop runs unvectorised (leaky in place was 3.7x slower than into another array)
    for i in range(dst.shape[0]):
        dst[i] = f(dst[i] - minus_shift)


@jit(inline="always")
def _apply(src, dst, minus_shift, code, each):
    """dst[i] = f(src[i] - minus_shift) in float32 by `each` (_each_to, or _each_in_place for dst is src).

    The shift is subtracted (not added) so that a zero shift leaves -0.0 intact: x - 0 == x for every x.
    """
    if code == LINEAR:
        each(src, dst, minus_shift, _identity)
    elif code == LEAKY or code == REVLEAKY:
        each(src, dst, minus_shift, _leaky)
    elif code == LOGISTIC:
        each(src, dst, minus_shift, _logistic)
    elif code == RELU:
        each(src, dst, minus_shift, _relu)
    elif code == MISH:
        each(src, dst, minus_shift, _mish)
    elif code == SWISH:
        each(src, dst, minus_shift, _swish)
    elif code == RAMP:
        each(src, dst, minus_shift, _ramp)
    elif code == TANH:
        each(src, dst, minus_shift, _tanh)
    elif code == RELIE:
        each(src, dst, minus_shift, _relie)
    elif code == PLSE:
        each(src, dst, minus_shift, _plse)
    elif code == ELU:
        each(src, dst, minus_shift, _elu)
    elif code == LOGGY:
        each(src, dst, minus_shift, _loggy)
    elif code == STAIR:
        each(src, dst, minus_shift, _stair)
    elif code == HARDTAN:
        each(src, dst, minus_shift, _hardtan)
    elif code == LHTAN:
        each(src, dst, minus_shift, _lhtan)
    elif code == SELU:
        each(src, dst, minus_shift, _selu)
    elif code == HARD_MISH:
        each(src, dst, minus_shift, _hard_mish)
    elif code == RELU6:
        each(src, dst, minus_shift, _relu6)
    elif code == GELU:
        each(src, dst, minus_shift, _gelu)
    else:
        raise ValueError("unknown activation code")


class _ForwardKernels(NamedTuple):
    activate: Callable
    activate_to: Callable
    bias_activate: Callable
    bias_activate_parallel: Callable


@functools.cache
def _forward_kernels(code: int) -> _ForwardKernels:
    """The forward kernels of one activation. `code` is a closure constant of each kernel, so Numba prunes
    the other activations' branches of `_apply` and a network compiles only the activations it uses (one
    kernel holding every activation compiled all 20 formulas, several seconds each). The kernels may close
    over plain values only: Numba's cache keys a closure by its pickled cells, and a pickled dispatcher
    differs in every process, which would defeat the on-disk cache."""
    if code not in ACTIVATION_NAMES:
        raise ValueError(f"unknown activation code {code}")

    @jit
    def activate_in_place(x):
        _apply(x, x, _F0, code, _each_in_place)

    @jit
    def activate_into(x, y):
        _apply(x, y, _F0, code, _each_to)

    @jit
    def bias_activate_serial(out, bias):
        batch, channels = out.shape[0], out.shape[1]
        for b in range(batch):
            for c in range(channels):
                row = out[b, c]
                _apply(row, row, -bias[c], code, _each_in_place)

    @jit(parallel=True)
    def bias_activate_threads(out, bias):
        batch, channels = out.shape[0], out.shape[1]
        for bc in prange(batch * channels):
            b = bc // channels
            c = bc - b * channels
            row = out[b, c]
            _apply(row, row, -bias[c], code, _each_in_place)

    return _ForwardKernels(activate_in_place, activate_into, bias_activate_serial, bias_activate_threads)


def activate(x: np.ndarray, code: int) -> None:
    """x = f(x) in place; x is a flat contiguous float32 array."""
    _forward_kernels(code).activate(x)


def activate_to(x: np.ndarray, y: np.ndarray, code: int) -> None:
    """y = f(x), x untouched; both flat contiguous float32 arrays of the same length."""
    _forward_kernels(code).activate_to(x, y)


def bias_activate(out: np.ndarray, bias: np.ndarray, code: int) -> None:
    """out[b, c, :] = f(out[b, c, :] + bias[c]) in one pass; out is (B, C, S) float32, serial."""
    _forward_kernels(code).bias_activate(out, bias)


def bias_activate_parallel(out: np.ndarray, bias: np.ndarray, code: int) -> None:
    """bias_activate with the B*C rows spread over threads; same result bit for bit."""
    _forward_kernels(code).bias_activate_parallel(out, bias)


# Below these sizes starting the threads costs more than it saves: ~0.5 ms of serial work (see
# threads.threads_pay) at ~0.2 ns per element for the activations that are a compare or two and 8-9 ns for
# those calling exp (mish, logistic; measured 1 thread).
CHEAP_CODES: frozenset[int] = frozenset({LINEAR, RELU, RELIE, RAMP, LEAKY, REVLEAKY, PLSE, STAIR, HARDTAN,
                                         LHTAN, RELU6, HARD_MISH})
PARALLEL_MIN_ELEMENTS_CHEAP = 1 << 21
PARALLEL_MIN_ELEMENTS_EXP = 1 << 16


def bias_activate_auto(out: np.ndarray, bias: np.ndarray, code: int) -> None:
    """bias_activate, switching to the parallel kernel when the tensor is large enough to pay for it."""
    threshold = PARALLEL_MIN_ELEMENTS_CHEAP if code in CHEAP_CODES else PARALLEL_MIN_ELEMENTS_EXP
    if out.size >= threshold and out.shape[0] * out.shape[1] > 1 and thread_count() > 1:
        _forward_kernels(code).bias_activate_parallel(out, bias)
    else:
        _forward_kernels(code).bias_activate(out, bias)


# ---------------------------------------------------------------------------------------------------
# Gradients. Darknet's g(y) are C functions returning float (so the value is rounded to float32 first) and
# the backward does `delta *= g` in float32; the derivatives at x below follow the same convention.

@jit(inline="always")
def _g_logistic(y):
    return (_F1 - y) * y


@jit(inline="always")
def _g_loggy(y):
    u = np.float32((np.float64(y) + 1.0) / 2.0)
    return _F2 * (_F1 - u) * u


@jit(inline="always")
def _g_relu(y):
    return _F1 if y > _F0 else _F0


@jit(inline="always")
def _g_relie(y):
    return _F1 if y > _F0 else _G_RELIE


@jit(inline="always")
def _g_ramp(y):
    return _G_RAMP_POS if y > _F0 else _G_LEAKY


@jit(inline="always")
def _g_leaky(y):
    return _F1 if y > _F0 else _G_LEAKY


@jit(inline="always")
def _g_tanh(y):
    return _F1 - y * y


@jit(inline="always")
def _g_plse(y):
    return _G_PLSE_OUT if (y < _F0 or y > _F1) else _G_PLSE_IN


@jit(inline="always")
def _g_elu(y):
    return (_F1 if y >= _F0 else _F0) + (_F1 if y < _F0 else _F0) * (y + _F1)


@jit(inline="always")
def _g_selu(y):
    pos = 1.0 if y >= _F0 else 0.0
    neg = 1.0 if y < _F0 else 0.0
    return np.float32(pos * _SELU_SCALE + neg * (np.float64(y) + _SELU_SCALE_ALPHA))


@jit(inline="always")
def _g_stair(y):
    return _F0 if np.floor(np.float64(y)) == np.float64(y) else _F1


@jit(inline="always")
def _g_hardtan(y):
    return _F1 if (y > -_F1 and y < _F1) else _F0


@jit(inline="always")
def _g_lhtan(y):
    return _F1 if (y > _F0 and y < _F1) else _G_LHTAN


@jit(inline="always")
def _g_relu6(y):
    return _F1 if (y > _F0 and y < _F6) else _F0


@jit(inline="always")
def _d_mish(v):
    # d/dx x*tanh(sp(x)) = tanh(sp) + x * (1 - tanh(sp)^2) * sigmoid(x), sharing one exp
    x = np.float64(v)
    if x > MISH_THRESHOLD:
        return _F1  # tanh(x) == 1.0 in double there, so the second term vanishes
    e = math.exp(x)
    n = e * (e + 2.0)
    t = n / (n + 2.0)
    s = e / (1.0 + e)
    return np.float32(t + x * ((1.0 - t) * (1.0 + t)) * s)


@jit(inline="always")
def _d_swish(v):
    x = np.float64(v)
    s = 1.0 / (1.0 + math.exp(-x))
    return np.float32(s + x * s * (1.0 - s))


@jit(inline="always")
def _d_hard_mish(v):
    x = np.float64(v)
    if x > 0.0:
        return _F1
    if x > -2.0:
        return np.float32(x + 1.0)
    return _F0


@jit(inline="always")
def _d_gelu(v):
    # d/dx x*s(x) with s = sigmoid(2u): s + x * s * (1 - s) * 2u'
    x = np.float64(v)
    s = _gelu_gate(x)
    du = GELU_LINEAR + 3.0 * GELU_CUBIC * x * x
    return np.float32(s + x * s * (1.0 - s) * 2.0 * du)


@jit(inline="always")
def _gradient(dy, y, x, code):
    n = dy.shape[0]
    if code == LINEAR:
        return
    if code == LEAKY or code == REVLEAKY:
        for i in range(n):
            dy[i] = dy[i] * _g_leaky(y[i])
    elif code == LOGISTIC:
        for i in range(n):
            dy[i] = dy[i] * _g_logistic(y[i])
    elif code == RELU:
        for i in range(n):
            dy[i] = dy[i] * _g_relu(y[i])
    elif code == MISH:
        for i in range(n):
            dy[i] = dy[i] * _d_mish(x[i])
    elif code == SWISH:
        for i in range(n):
            dy[i] = dy[i] * _d_swish(x[i])
    elif code == RAMP:
        for i in range(n):
            dy[i] = dy[i] * _g_ramp(y[i])
    elif code == TANH:
        for i in range(n):
            dy[i] = dy[i] * _g_tanh(y[i])
    elif code == RELIE:
        for i in range(n):
            dy[i] = dy[i] * _g_relie(y[i])
    elif code == PLSE:
        for i in range(n):
            dy[i] = dy[i] * _g_plse(y[i])
    elif code == ELU:
        for i in range(n):
            dy[i] = dy[i] * _g_elu(y[i])
    elif code == LOGGY:
        for i in range(n):
            dy[i] = dy[i] * _g_loggy(y[i])
    elif code == STAIR:
        for i in range(n):
            dy[i] = dy[i] * _g_stair(y[i])
    elif code == HARDTAN:
        for i in range(n):
            dy[i] = dy[i] * _g_hardtan(y[i])
    elif code == LHTAN:
        for i in range(n):
            dy[i] = dy[i] * _g_lhtan(y[i])
    elif code == SELU:
        for i in range(n):
            dy[i] = dy[i] * _g_selu(y[i])
    elif code == HARD_MISH:
        for i in range(n):
            dy[i] = dy[i] * _d_hard_mish(x[i])
    elif code == RELU6:
        for i in range(n):
            dy[i] = dy[i] * _g_relu6(y[i])
    elif code == GELU:
        for i in range(n):
            dy[i] = dy[i] * _d_gelu(x[i])
    else:
        raise ValueError("unknown activation code")


@functools.cache
def _gradient_kernel(code: int):
    """The gradient kernel of one activation (`code` a closure constant, as in `_forward_kernels`)."""
    if code not in ACTIVATION_NAMES:
        raise ValueError(f"unknown activation code {code}")

    @jit
    def gradient_of(dy, y, x):
        _gradient(dy, y, x, code)

    return gradient_of


def gradient(dy: np.ndarray, y: np.ndarray, x: np.ndarray, code: int) -> None:
    """dy *= f'(.) in place. Darknet's codes and relu6/revleaky use the output y (x may be empty);
    NEEDS_INPUT codes use the pre-activation input x (y may be empty)."""
    _gradient_kernel(code)(dy, y, x)
