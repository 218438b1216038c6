"""Depthwise 3x3 stride-2 convolution straight from the image (kernels/depthwise_stride2.py) against the
float64 convolution of tests/naive_conv.py: plane widths around the vector size (full, partial and single
vectors per row), odd and even heights, leaky or not, the training's channel-major planes, shared out
between threads, non-finite inputs, and guard values around the output to catch a write past a plane."""
import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from darknetpy.kernels import depthwise, depthwise_stride2, simd

import straight_depthwise

RNG = np.random.default_rng(20261207)
LANES = simd.LANES


# (x, weights, bias) of a random layer; the float64 oracle; a guarded run -> (output, whether the kernel ran)
case = functools.partial(straight_depthwise.random_layer, RNG)
expected = functools.partial(straight_depthwise.expected, stride=2)
convolve = functools.partial(straight_depthwise.convolve, stride=2, suits=depthwise_stride2.suits)


WIDTHS = [2, 4, 10, 20, 2 * LANES - 2, 2 * LANES, 2 * LANES + 2, 4 * LANES - 2, 4 * LANES, 4 * LANES + 6, 80]
HEIGHTS = [1, 2, 3, 8, 9, 20]


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("height", HEIGHTS)
def test_against_the_float64_convolution(height, width):
    x, weights, bias = case(2, 3, height, width)
    for leaky_out in (True, False):
        got, took = convolve(x, weights, bias, leaky_out)
        assert took
        np.testing.assert_allclose(got, expected(x, weights, bias, leaky_out), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("width", [10, 2 * LANES + 2, 80])
def test_training_channel_major_planes(width):
    x, weights, bias = case(3, 4, 12, width)
    got, took = convolve(x, weights, bias, True, channel_major=True)
    assert took
    np.testing.assert_allclose(got, expected(x, weights, bias, True), rtol=1e-5, atol=1e-5)


def test_shared_out_between_threads(monkeypatch):
    x, weights, bias = case(2, 5, 21, 4 * LANES + 6)
    straight_depthwise.assert_shared_out_equals_serial(monkeypatch, depthwise_stride2, "depthwise_3x3_stride2_planes",
                                                       lambda: convolve(x, weights, bias, True)[0], 10)


def test_non_finite_inputs_reach_only_their_outputs():
    x, weights, bias = case(1, 2, 10, 2 * LANES + 4)
    x[0, 0, 0, 0] = np.nan              # the top-left corner: outputs (0, 0) only
    x[0, 1, 4, 2 * LANES - 1] = np.inf  # an odd column at a vector's end: the right tap of LANES-1, the left of LANES
    with np.errstate(invalid="ignore"):
        want = expected(x, weights, bias, False)
    got, _ = convolve(x, weights, bias, False)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.isfinite(got).sum() == got.size - 3


@pytest.mark.parametrize("shape,why", [((1, 2, 8, 9), "odd width"), ((1, 2, 8, 10), "stride")])
def test_other_shapes_keep_the_phase_grid(shape, why):
    x, weights, bias = case(*shape)
    stride = 1 if why == "stride" else 2
    out_h = (shape[2] + 2 - 3) // stride + 1
    out_w = (shape[3] + 2 - 3) // stride + 1
    out = np.empty((1, 2, out_h, out_w), np.float32)
    assert depthwise._straight_planes(depthwise_stride2.suits, x, weights, stride, stride, 1, 1, out) is None


@settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(batch=st.integers(1, 2), channels=st.integers(1, 4), height=st.integers(1, 24),
       half_width=st.integers(1, 3 * LANES + 3), leaky_out=st.booleans(), channel_major=st.booleans())
def test_random_shapes(batch, channels, height, half_width, leaky_out, channel_major):
    x, weights, bias = case(batch, channels, height, 2 * half_width)
    got, took = convolve(x, weights, bias, leaky_out, channel_major=channel_major)
    assert took
    np.testing.assert_allclose(got, expected(x, weights, bias, leaky_out), rtol=1e-5, atol=1e-5)
