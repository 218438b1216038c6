"""The memory-bound product of [connected] layers at inference (kernels/gemv.py) against a float64 product:
row counts around its steps of four, columns around the vector width, one to eight images, guard values
around the output; shared out among threads the same bits as on one; and the layer's inference against
its training forward (numpy's matmul)."""
import numpy as np
import pytest

from darknetpy.kernels import gemv, handoff, simd
from darknetpy.kernels.gemv import gemv_share

from builders import quiet_net

RNG = np.random.default_rng(20261207)
LANES = simd.LANES
SENTINEL = np.float32(-3.5)
NO_FLAGS = np.zeros(1, np.int64)


def case(rows, columns, batch):
    weights = RNG.standard_normal((rows, columns)).astype(np.float32)
    x = RNG.standard_normal((batch, columns)).astype(np.float32)
    return weights, x, x.astype(np.float64) @ weights.astype(np.float64).T


def guarded(batch, rows):
    memory = np.full(batch * rows + 2 * LANES, SENTINEL, np.float32)
    return memory, memory[LANES:LANES + batch * rows].reshape(batch, rows)


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 9])
@pytest.mark.parametrize("columns", [1, LANES - 1, LANES, LANES + 1, 3 * LANES + 7])
@pytest.mark.parametrize("batch", [1, 2, 8])
def test_product_against_float64(rows, columns, batch):
    weights, x, want = case(rows, columns, batch)
    memory, out = guarded(batch, rows)
    gemv.gemv(weights, x, out)
    assert (memory[:LANES] == SENTINEL).all() and (memory[-LANES:] == SENTINEL).all()
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5 * np.sqrt(columns))


def test_shares_in_any_order_and_threads_give_the_same_bits(monkeypatch):
    weights, x, want = case(23, 5 * LANES + 3, 3)
    serial = np.empty((3, 23), np.float32)
    gemv_share(NO_FLAGS, 0, 0, 0, True, weights, x, serial, 0, 6)
    pieces = np.full_like(serial, np.nan)
    for first, last in ((2, 5), (0, 2), (5, 6)):
        gemv_share(NO_FLAGS, 0, 0, 0, True, weights, x, pieces, first, last)
    np.testing.assert_array_equal(pieces, serial)
    monkeypatch.setattr(gemv, "PARALLEL_MIN_MACS", 1)
    monkeypatch.setattr(handoff, "thread_count", lambda: 2)
    threaded = np.full_like(serial, np.nan)
    gemv.gemv(weights, x, threaded)
    np.testing.assert_array_equal(threaded, serial)
    np.testing.assert_allclose(serial, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("bad", ["batch", "shape", "strided"])
def test_refuses_what_it_cannot_take(bad):
    weights, x, _ = case(8, 20, 2)
    out = np.empty((2, 8), np.float32)
    if bad == "batch":
        x, out = np.zeros((gemv.MAX_BATCH + 1, 20), np.float32), np.empty((gemv.MAX_BATCH + 1, 8), np.float32)
    elif bad == "shape":
        out = np.empty((2, 9), np.float32)
    else:
        x = np.zeros((2, 40), np.float32)[:, ::2]
    with pytest.raises(ValueError, match="gemv"):
        gemv.gemv(weights, x, out)


@pytest.mark.parametrize("batch", [1, 3, gemv.MAX_BATCH + 1])
def test_connected_inference_against_float64(batch):
    net = quiet_net("""[net]
width=5
height=4
channels=3

[connected]
output=37
activation=leaky

[connected]
output=6
activation=linear
""")
    net.initialize(3)
    x = RNG.standard_normal((batch, 3, 4, 5)).astype(np.float32)
    got = net.forward(x).copy()
    first = x.reshape(batch, -1).astype(np.float64) @ net.layers[0].weights.T.astype(np.float64) \
        + net.layers[0].biases
    first = np.where(first > 0, first, 0.1 * first)
    want = first @ net.layers[1].weights.T.astype(np.float64) + net.layers[1].biases
    np.testing.assert_allclose(got.reshape(batch, -1), want, rtol=1e-4, atol=1e-4)
