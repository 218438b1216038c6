"""The dense direct convolution (kernels/dense_direct.py) against float64 loops: strides, dilations, kernel
sizes and paddings, rows narrower and wider than a vector, filter counts around its blocks of 4, guards
around every output, shared out among threads, and the column-phase copy it reads."""
import numpy as np
import pytest

from darknetpy.kernels import dense_direct, handoff
from darknetpy.kernels.activations import leaky_float32
from darknetpy.kernels.simd import LANES
from naive_conv import conv2d

RNG = np.random.default_rng(23)
GUARD = 4 * LANES


def convolve(x, weights, shift, stride, pad, dilation, leaky_out, threads=1):
    """dense_forward into a buffer with GUARD NaN-free sentinels on both sides; returns (B, F, OH, OW)."""
    batch, channels, height, width = x.shape
    filters, _, k, _ = weights.shape
    out_h = (height + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    out_w = (width + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    shape = dense_direct.phase_shape(channels, k, stride, dilation, out_h, out_w, stride)
    phases = np.full(int(np.prod(shape)) + LANES, np.nan, np.float32)
    offsets = dense_direct.tap_offsets(channels, k, dilation, stride, shape[2], shape[3])
    starts = dense_direct.vector_starts(out_h, out_w, stride, shape[3])
    size = filters * out_h * out_w
    buffer = np.full((batch, size + 2 * GUARD), 7.0, np.float32)
    dense_direct.dense_forward(np.ascontiguousarray(weights.reshape(filters, -1)), shift, x,
                               buffer[:, GUARD:GUARD + size], out_h, out_w, k, stride, stride, pad, dilation,
                               leaky_out, offsets, starts, phases, threads)
    assert (buffer[:, :GUARD] == 7.0).all() and (buffer[:, GUARD + size:] == 7.0).all()
    return buffer[:, GUARD:GUARD + size].reshape(batch, filters, out_h, out_w)


def expected(x, weights, shift, stride, pad, dilation, leaky_out):
    ref = conv2d(x.astype(np.float64), weights.astype(np.float64), shift.astype(np.float64), stride, stride, pad,
                 1, dilation)
    return np.where(ref > 0, ref, 0.1 * ref) if leaky_out else ref


CASES = [  # batch, channels, filters, height, width, k, stride, pad, dilation
    (1, 3, 16, 40, 40, 3, 2, 1, 1),     # a first layer at stride 2: rows of 20 outputs (a vector and a tail)
    (1, 5, 7, 19, 34, 3, 1, 1, 1),      # 7 filters: a block of 4 and three of one; rows of 34 = 2 vectors + 2
    (2, 4, 9, 23, 33, 3, 2, 1, 1),      # odd width at stride 2, batch of 2
    (1, 2, 4, 12, 12, 3, 1, 1, 1),      # rows of 12: one partial vector each
    (1, 3, 5, 17, 49, 5, 2, 2, 1),      # 5x5
    (1, 3, 6, 21, 40, 3, 1, 2, 2),      # dilation 2
    (1, 2, 3, 30, 50, 3, 3, 0, 1),      # stride 3, no padding
    (1, 6, 8, 16, 16, 1, 2, 0, 1),      # 1x1 at stride 2
    (1, 3, 4, 9, 64, 7, 2, 3, 1),       # 7x7 at stride 2
    (3, 1, 2, 5, 17, 3, 1, 1, 1),       # one channel, rows of exactly a vector + 1
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("leaky_out", [False, True])
def test_dense_direct_matches_float64_loops(case, leaky_out):
    batch, channels, filters, height, width, k, stride, pad, dilation = case
    x = RNG.standard_normal((batch, channels, height, width)).astype(np.float32)
    weights = RNG.standard_normal((filters, channels, k, k)).astype(np.float32)
    shift = RNG.standard_normal(filters).astype(np.float32)
    out = convolve(x, weights, shift, stride, pad, dilation, leaky_out)
    np.testing.assert_allclose(out, expected(x, weights, shift, stride, pad, dilation, leaky_out),
                               rtol=1e-5, atol=1e-5)


def test_dense_direct_applies_darknets_leaky_to_the_float32_sum():
    # the output is leaky(float32 sum + shift), Darknet's .1 formed as a double product
    x = RNG.standard_normal((1, 3, 20, 40)).astype(np.float32)
    weights = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    shift = RNG.standard_normal(4).astype(np.float32)
    linear = convolve(x, weights, shift, 1, 1, 1, False)
    np.testing.assert_array_equal(convolve(x, weights, shift, 1, 1, 1, True),
                                  np.vectorize(leaky_float32, otypes=[np.float32])(linear))


def test_dense_direct_reads_strided_images():
    # a [route] slice of a batch: channels of a larger array
    big = RNG.standard_normal((2, 7, 18, 36)).astype(np.float32)
    x = big[:, 2:5]
    weights = RNG.standard_normal((5, 3, 3, 3)).astype(np.float32)
    shift = np.zeros(5, np.float32)
    np.testing.assert_allclose(convolve(x, weights, shift, 2, 1, 1, False),
                               expected(x, weights, shift, 2, 1, 1, False), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threads", [2, 3])
def test_dense_direct_shared_out_gives_the_serial_bits(threads, monkeypatch):
    monkeypatch.setattr(dense_direct, "PARALLEL_MIN_MACS", 1)
    monkeypatch.setattr(handoff, "thread_count", lambda: threads)
    x = RNG.standard_normal((2, 6, 26, 40)).astype(np.float32)
    weights = RNG.standard_normal((10, 6, 3, 3)).astype(np.float32)
    shift = RNG.standard_normal(10).astype(np.float32)
    serial = convolve(x, weights, shift, 2, 1, 1, True)
    np.testing.assert_array_equal(convolve(x, weights, shift, 2, 1, 1, True, threads=threads), serial)


@pytest.mark.parametrize("filters,vectors,threads,split", [
    (64, 700, 1, (64, 175)), (64, 700, 2, (64, 175)), (64, 4, 2, (8, 8)), (10, 4, 3, (4, 3)), (5, 1, 1, (8, 1)),
])
def test_tasks_split_filters_only_when_vectors_are_few(filters, vectors, threads, split):
    assert dense_direct.task_split(filters, vectors, threads) == split


@pytest.mark.parametrize("stride,pad", [(1, 0), (1, 2), (2, 1), (2, 0), (2, 3), (3, 1)])
def test_column_phases_hold_the_zero_bordered_image(stride, pad):
    x = RNG.standard_normal((2, 7, 11)).astype(np.float32)
    rows, columns = 7 + 2 * pad + 1, (11 + 2 * pad) // stride + 2
    phases = np.full((2, stride, rows, columns), np.nan, np.float32)
    dense_direct.fill_phases(x, pad, pad, phases)
    padded = np.zeros((2, rows, columns * stride + stride), np.float32)
    padded[:, pad:pad + 7, pad:pad + 11] = x
    for q in range(stride):
        np.testing.assert_array_equal(phases[:, q], padded[:, :, q::stride][:, :, :columns])


def test_bad_scratch_is_refused():
    weights = np.zeros((4, 27), np.float32)
    with pytest.raises(ValueError, match="scratch"):
        dense_direct.dense_forward(weights, np.zeros(4, np.float32), np.zeros((1, 3, 8, 8), np.float32),
                                   np.zeros((1, 4 * 64), np.float32), 8, 8, 3, 1, 1, 1, 1, False,
                                   dense_direct.tap_offsets(3, 3, 1, 1, 10, 10),
                                   dense_direct.vector_starts(8, 8, 1, 10), np.zeros(10, np.float32), 1)
