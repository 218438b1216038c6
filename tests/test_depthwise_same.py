"""Same-size depthwise 3x3 and 5x5 convolutions straight from the image (kernels/depthwise_same3x3.py,
kernels/depthwise_same5x5.py) against the float64 convolution of tests/naive_conv.py: plane widths and heights
around the vector size (full, partial and single vectors per range, rows shorter than a vector, the smallest
plane each takes), leaky or not, the training's channel-major planes, shared out between threads, non-finite
values in the edge columns (whose wrapped taps must be dropped, not multiplied by zero), and guard values
around the output to catch a write past a plane."""
import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from darknetpy.kernels import depthwise_same3x3, depthwise_same5x5, simd

import straight_depthwise

RNG = np.random.default_rng(20261208)
LANES = simd.LANES
KERNELS = {3: (depthwise_same3x3, "depthwise_3x3_same_planes"), 5: (depthwise_same5x5, "depthwise_5x5_same_planes")}

# the float64 oracle
expected = functools.partial(straight_depthwise.expected, stride=1)


def case(ksize, batch, channels, height, width):
    """(x, weights, bias) of a random ksize x ksize layer."""
    return straight_depthwise.random_layer(RNG, batch, channels, height, width, ksize)


def convolve(x, weights, bias, leaky_out, channel_major=False):
    """A guarded run -> (output, whether the same-size kernel of the weights' size ran)."""
    module = KERNELS[weights.shape[2]][0]
    return straight_depthwise.convolve(x, weights, bias, leaky_out, 1, module.suits, channel_major)


def sizes(ksize):
    return [ksize, ksize + 1, LANES - 1, LANES, LANES + 1, LANES + 2, 2 * LANES + 3, 40]


@pytest.mark.parametrize("ksize,width", [(k, w) for k in KERNELS for w in sizes(k)])
@pytest.mark.parametrize("extra_rows", [0, 1, 4, LANES - 2])
def test_against_the_float64_convolution(ksize, width, extra_rows):
    x, weights, bias = case(ksize, 2, 3, ksize + extra_rows, width)
    for leaky_out in (True, False):
        got, took = convolve(x, weights, bias, leaky_out)
        assert took
        np.testing.assert_allclose(got, expected(x, weights, bias, leaky_out), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ksize", list(KERNELS))
@pytest.mark.parametrize("width", [5, LANES + 2, 80])
def test_training_channel_major_planes(ksize, width):
    x, weights, bias = case(ksize, 3, 4, 9, width)
    got, took = convolve(x, weights, bias, True, channel_major=True)
    assert took
    np.testing.assert_allclose(got, expected(x, weights, bias, True), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ksize", list(KERNELS))
def test_shared_out_between_threads(ksize, monkeypatch):
    x, weights, bias = case(ksize, 2, 5, 11, 2 * LANES + 3)
    module, share = KERNELS[ksize]
    straight_depthwise.assert_shared_out_equals_serial(monkeypatch, module, share,
                                                       lambda: convolve(x, weights, bias, True)[0], 10)


@pytest.mark.parametrize("ksize", list(KERNELS))
@pytest.mark.parametrize("width", [5, LANES - 3, LANES + 1, 2 * LANES + 3])
def test_non_finite_edge_columns_reach_only_their_outputs(ksize, width):
    """inf in the last column of a row and NaN in the first column of another: their wrapped taps (read by the
    outputs of the first / last columns of the neighbouring rows) must be dropped; only the windows that
    really hold them turn non-finite."""
    height = 9
    x, weights, bias = case(ksize, 1, 2, height, width)
    x[0, 0, 3, width - 1] = np.inf
    x[0, 1, 4, 0] = np.nan
    x[0, 1, 5, 1] = -np.inf                     # the second column: wraps for the 5x5 kernel's offset -2
    x[0, 0, height - 1, width - 1] = -np.inf    # the bottom-right corner
    with np.errstate(invalid="ignore"):
        want = expected(x, weights, bias, True)
    got, _ = convolve(x, weights, bias, True)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.isfinite(got).sum() == np.isfinite(want).sum()


@settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(ksize=st.sampled_from(list(KERNELS)), batch=st.integers(1, 2), channels=st.integers(1, 4),
       extra_height=st.integers(0, 20), extra_width=st.integers(0, 3 * LANES), leaky_out=st.booleans(),
       channel_major=st.booleans())
def test_random_shapes(ksize, batch, channels, extra_height, extra_width, leaky_out, channel_major):
    x, weights, bias = case(ksize, batch, channels, ksize + extra_height, ksize + extra_width)
    got, took = convolve(x, weights, bias, leaky_out, channel_major=channel_major)
    assert took
    np.testing.assert_allclose(got, expected(x, weights, bias, leaky_out), rtol=1e-5, atol=1e-5)


def test_column_masks_repeat_with_the_row():
    left, right = depthwise_same3x3.column_masks(5)
    assert left.size == right.size == 5 + LANES
    np.testing.assert_array_equal(left[:10], [0, 1, 1, 1, 1, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(right[:10], [1, 1, 1, 1, 0, 1, 1, 1, 1, 0])
    masks = depthwise_same5x5.column_masks(6)     # offsets -2, -1, +1, +2
    assert masks.shape == (4, 6 + LANES)
    np.testing.assert_array_equal(masks[:, :12], [[0, 0, 1, 1, 1, 1] * 2, [0, 1, 1, 1, 1, 1] * 2,
                                                  [1, 1, 1, 1, 1, 0] * 2, [1, 1, 1, 1, 0, 0] * 2])


def test_smaller_planes_and_other_shapes_are_not_taken():
    from darknetpy.kernels import depthwise
    for ksize, pad, stride, side in ((5, 2, 1, 4), (5, 1, 1, 8), (5, 2, 2, 8), (3, 1, 1, 2)):
        x, weights, bias = case(ksize, 1, 2, side, side)
        out_side = (side + 2 * pad - ksize) // stride + 1
        out = np.empty((1, 2, out_side, out_side), np.float32)
        module = KERNELS[ksize][0]
        assert depthwise._straight_planes(module.suits, x, weights, stride, stride, pad, 1, out) is None
