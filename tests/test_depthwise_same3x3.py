"""Same-size depthwise 3x3 convolution straight from the image (kernels/depthwise_same3x3.py) against the
float64 convolution of tests/naive_conv.py: plane widths and heights around the vector size (full, partial and
single vectors per range, rows shorter than a vector, the smallest 3x3 plane), leaky or not, the training's
channel-major planes, shared out between threads, non-finite values in the edge columns (whose wrapped taps
must be dropped, not multiplied by zero), and guard values around the output to catch a write past a plane."""
import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from darknetpy.kernels import depthwise_same3x3, simd

import straight_depthwise

RNG = np.random.default_rng(20261208)
LANES = simd.LANES


# (x, weights, bias) of a random layer; the float64 oracle; a guarded run -> (output, whether the kernel ran)
case = functools.partial(straight_depthwise.random_layer, RNG)
expected = functools.partial(straight_depthwise.expected, stride=1)
convolve = functools.partial(straight_depthwise.convolve, stride=1, suits=depthwise_same3x3.suits)


SIZES = [3, 4, LANES - 1, LANES, LANES + 1, LANES + 2, 2 * LANES + 3, 40]


@pytest.mark.parametrize("width", SIZES)
@pytest.mark.parametrize("height", [3, 4, 7, LANES + 1])
def test_against_the_float64_convolution(height, width):
    x, weights, bias = case(2, 3, height, width)
    for leaky_out in (True, False):
        got, took = convolve(x, weights, bias, leaky_out)
        assert took
        np.testing.assert_allclose(got, expected(x, weights, bias, leaky_out), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("width", [5, LANES + 2, 80])
def test_training_channel_major_planes(width):
    x, weights, bias = case(3, 4, 9, width)
    got, took = convolve(x, weights, bias, True, channel_major=True)
    assert took
    np.testing.assert_allclose(got, expected(x, weights, bias, True), rtol=1e-5, atol=1e-5)


def test_shared_out_between_threads(monkeypatch):
    x, weights, bias = case(2, 5, 11, 2 * LANES + 3)
    straight_depthwise.assert_shared_out_equals_serial(monkeypatch, depthwise_same3x3, "depthwise_3x3_same_share",
                                                       lambda: convolve(x, weights, bias, True)[0], 10)


@pytest.mark.parametrize("width", [3, LANES - 3, LANES + 1, 2 * LANES + 3])
def test_non_finite_edge_columns_reach_only_their_outputs(width):
    """inf in the last column of a row and NaN in the first column of the next: their wrapped taps (read by the
    first / last column's outputs of the neighbouring rows) must be dropped; only the 3x3 windows that really
    hold them turn non-finite."""
    height = 7
    x, weights, bias = case(1, 2, height, width)
    x[0, 0, 2, width - 1] = np.inf
    x[0, 1, 3, 0] = np.nan
    x[0, 1, height - 1, width - 1] = -np.inf    # the bottom-right corner
    with np.errstate(invalid="ignore"):
        want = expected(x, weights, bias, True)
    got, _ = convolve(x, weights, bias, True)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.isfinite(got).sum() == np.isfinite(want).sum()


@settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(batch=st.integers(1, 2), channels=st.integers(1, 4), height=st.integers(3, 24),
       width=st.integers(3, 3 * LANES + 3), leaky_out=st.booleans(), channel_major=st.booleans())
def test_random_shapes(batch, channels, height, width, leaky_out, channel_major):
    x, weights, bias = case(batch, channels, height, width)
    got, took = convolve(x, weights, bias, leaky_out, channel_major=channel_major)
    assert took
    np.testing.assert_allclose(got, expected(x, weights, bias, leaky_out), rtol=1e-5, atol=1e-5)


def test_column_masks_repeat_with_the_row():
    left, right = depthwise_same3x3.column_masks(5)
    assert left.size == right.size == 5 + LANES
    np.testing.assert_array_equal(left[:10], [0, 1, 1, 1, 1, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(right[:10], [1, 1, 1, 1, 0, 1, 1, 1, 1, 0])
