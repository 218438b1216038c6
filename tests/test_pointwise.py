"""The register-blocked 1x1 kernel (kernels/pointwise.py) against a float64 product: every block shape
(4x4 tiles, the 4x2 and 8x1 tails, single filters), pixel counts around the tile and vector sizes (the
last vector overlapping the one before), serial and shared out, with guard values around the output to
catch any write past a plane; and the vector intrinsics it is built on (kernels/simd.py)."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from darknetpy.kernels import jit, pointwise, simd, threads
from darknetpy.kernels.pointwise import pointwise_forward, pointwise_tasks, task_count

RNG = np.random.default_rng(20261207)
LANES, TILE = simd.LANES, pointwise.TILE
GUARD = 2 * LANES + 3
SENTINEL = np.float32(-7.25)


def expected(weights, shift, x, leaky_out):
    value = np.einsum("fc,bcn->bfn", weights.astype(np.float64), x.astype(np.float64)) + shift[None, :, None]
    return np.where(value > 0, value, 0.1 * value) if leaky_out else value


def case(batch, channels, filters, pixels):
    weights = RNG.standard_normal((filters, channels)).astype(np.float32)
    shift = RNG.standard_normal(filters).astype(np.float32)
    x = RNG.standard_normal((batch, channels, pixels)).astype(np.float32)
    return weights, shift, x


def guarded_output(shape):
    """An output array with sentinel values right before and after it in memory."""
    size = int(np.prod(shape))
    memory = np.full(size + 2 * GUARD, SENTINEL, np.float32)
    return memory, memory[GUARD:GUARD + size].reshape(shape)


def run(kernel, weights, shift, x, leaky_out, chunk=None, fetch_first=True, residual=None):
    batch, _, pixels = x.shape
    memory, out = guarded_output((batch, weights.shape[0], pixels))
    flat_x, flat_out = x.reshape(batch, -1), out.reshape(batch, -1)
    flat_residual = None if residual is None else residual.reshape(batch, -1)
    filters = weights.shape[0]
    if kernel == "serial":
        pointwise_tasks(weights, shift, flat_x, flat_out, flat_residual, leaky_out, filters, 0,
                        task_count(batch, pixels, 1, 1), False, fetch_first)
    elif kernel == "shares":
        # the tasks in three uneven runs, the middle one first, as threads may take them
        tasks = task_count(batch, pixels, filters, chunk)
        cuts = [0, tasks // 3, tasks // 3 + (tasks + 1) // 2, tasks]
        for k in (1, 0, 2):
            pointwise_tasks(weights, shift, flat_x, flat_out, flat_residual, leaky_out, chunk, cuts[k], cuts[k + 1],
                            False, False)
    else:
        pointwise_forward(weights, shift, x, out, leaky_out, residual)
    assert (memory[:GUARD] == SENTINEL).all() and (memory[-GUARD:] == SENTINEL).all(), "wrote outside the output"
    return out


PIXELS = [LANES, LANES + 1, 2 * LANES - 1, 2 * LANES, 3 * LANES - 1, 3 * LANES + 1, TILE - 1, TILE, TILE + 1,
          TILE + LANES, TILE + LANES + 5, 2 * TILE + 3 * LANES - 2, 49, 100, 169]
FILTERS = [1, 3, 4, 5, 7, 8, 9, 12, 13]


@pytest.mark.parametrize("pixels", PIXELS)
@pytest.mark.parametrize("filters", FILTERS)
def test_every_block_and_tail_against_the_float64_product(pixels, filters):
    weights, shift, x = case(2, 5, filters, pixels)
    for leaky_out in (True, False):
        got = run("serial", weights, shift, x, leaky_out)
        np.testing.assert_allclose(got, expected(weights, shift, x, leaky_out), rtol=2e-6, atol=2e-6)
        # the first tile's weight prefetch changes no value
        np.testing.assert_array_equal(run("serial", weights, shift, x, leaky_out, fetch_first=False), got)


@pytest.mark.parametrize("pixels", PIXELS)
@pytest.mark.parametrize("filters", [3, 4, 9, 13])
def test_a_residual_is_added_to_every_output_as_a_separate_sum_would(pixels, filters):
    """The shortcut fused into the kernel (darknetpy/fusion.py): act(product + shift) + residual with the
    float32 roundings of the two layers it replaces, in every block shape, serial and shared out."""
    weights, shift, x = case(2, 6, filters, pixels)
    residual = RNG.standard_normal((2, filters, pixels)).astype(np.float32)
    if not pointwise.adds_residual(pixels):
        # a last tile narrower than a vector writes into the tile before: refused, not summed twice
        assert pixels > TILE and pixels % TILE < LANES
        with pytest.raises(ValueError, match="residual"):
            pointwise_forward(weights, shift, x, np.empty((2, filters, pixels), np.float32), False, residual)
        return
    for leaky_out in (True, False):
        want = run("serial", weights, shift, x, leaky_out) + residual
        np.testing.assert_array_equal(run("serial", weights, shift, x, leaky_out, residual=residual), want)
        got = run("shares", weights, shift, x, leaky_out, chunk=4, residual=residual)
        np.testing.assert_array_equal(got, want)


def test_forward_refuses_a_residual_of_another_shape():
    weights, shift, x = case(1, 4, 8, TILE)
    with pytest.raises(ValueError, match="residual"):
        pointwise_forward(weights, shift, x, np.empty((1, 8, TILE), np.float32), False,
                          np.zeros((1, 8, TILE - 1), np.float32))


@pytest.mark.parametrize("chunk", [4, 8, 12, 1000])
@pytest.mark.parametrize("pixels,filters", [(LANES, 9), (TILE + 7, 13), (3 * TILE, 8), (100, 30)])
def test_tasks_shared_out_cover_every_output_once(chunk, pixels, filters):
    weights, shift, x = case(3, 17, filters, pixels)
    got = run("shares", weights, shift, x, True, chunk)
    np.testing.assert_array_equal(got, run("serial", weights, shift, x, True))


@pytest.mark.parametrize("channels", [1, 2, 64, 300])
def test_channel_counts(channels):
    weights, shift, x = case(1, channels, 11, TILE + 2 * LANES + 1)
    got = run("forward", weights, shift, x, True)
    tolerance = 2e-6 * np.sqrt(channels)
    np.testing.assert_allclose(got, expected(weights, shift, x, True), rtol=tolerance, atol=tolerance)


def test_forward_shares_out_large_layers(monkeypatch):
    weights, shift, x = case(2, 24, 20, 2 * TILE + 5)
    serial = run("serial", weights, shift, x, True)
    monkeypatch.setattr(pointwise, "PARALLEL_MIN_MACS", 0)
    monkeypatch.setattr(threads, "thread_count", lambda: 2)
    monkeypatch.setattr(pointwise, "thread_count", lambda: 2)
    calls = []
    real = pointwise.pointwise_share
    monkeypatch.setattr(pointwise, "pointwise_share", lambda *args: calls.append(args[-3:]) or real(*args))
    np.testing.assert_array_equal(run("forward", weights, shift, x, True), serial)
    (chunk, first, middle), (_, middle_again, last) = sorted(calls, key=lambda call: call[1])
    assert chunk % 4 == 0 and first == 0 and middle == middle_again and last == task_count(2, 2 * TILE + 5, 20, chunk)


@pytest.mark.parametrize("offset,streams", [(0, True), (4, False)])
def test_large_aligned_outputs_are_streamed_to_the_same_values(monkeypatch, offset, streams):
    from darknetpy.layers.base import aligned_zeros
    weights, shift, x = case(2, 7, 9, 3 * TILE + LANES)
    want = run("serial", weights, shift, x, True)
    monkeypatch.setattr(pointwise, "STREAM_MIN_BYTES", 0)
    seen = []
    real = pointwise.pointwise_tasks
    monkeypatch.setattr(pointwise, "pointwise_tasks", lambda *args: seen.append(args[-2]) or real(*args))
    memory = aligned_zeros((want.size + offset,))
    out = memory[offset:].reshape(want.shape)
    pointwise_forward(weights, shift, x, out, True)
    assert seen == [streams]
    np.testing.assert_array_equal(out, want)


def test_non_finite_inputs_reach_only_their_pixels():
    weights, shift, x = case(1, 6, 9, TILE + 5)
    x[0, 2, 3] = np.nan
    x[0, 4, TILE + 4] = np.inf
    x[0, 1, TILE - 1] = -np.inf
    with np.errstate(invalid="ignore"):
        want = expected(weights, shift, x, True)
    got = run("serial", weights, shift, x, True)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)
    assert np.isnan(got[0, :, 3]).all() and np.isfinite(np.delete(got[0], [3, TILE - 1, TILE + 4], axis=1)).all()


def test_leaky_is_darknets_formula_with_a_double_constant():
    """Darknet's leaky_activate is `(x > 0) ? x : .1 * x`: the product is formed in double and rounded; 0.1f * x
    differs from it in the last bit for about a fifth of the negative values."""
    weights = np.ones((4, 1), np.float32)
    shift = np.zeros(4, np.float32)
    special = np.array([-3.3, -1e-30, -0.0, 0.0, 2.5, -np.inf, np.inf, np.nan], np.float32)
    negatives = -np.random.default_rng(5).random(LANES * 4 - special.size).astype(np.float32) * 3
    values = np.concatenate([special, negatives])
    x = values.reshape(1, 1, -1)
    got = run("serial", weights, shift, x, True)[0, 0]
    with np.errstate(invalid="ignore"):
        want = np.where(values > 0, values, (0.1 * values.astype(np.float64)).astype(np.float32))
        single = np.where(values > 0, values, np.float32(0.1) * values)
    assert (want != single).sum() > 0    # the case tells the two formulas apart
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("bad", ["few pixels", "channels", "output shape", "strided output"])
def test_forward_refuses_what_the_kernels_cannot_take(bad):
    weights, shift, x = case(1, 3, 4, 40)
    out = np.empty((1, 4, 40), np.float32)
    if bad == "few pixels":
        x, out = x[:, :, :LANES - 1].copy(), out[:, :, :LANES - 1].copy()
    elif bad == "channels":
        weights = weights[:, :2].copy()
    elif bad == "output shape":
        out = np.empty((1, 5, 40), np.float32)
    else:
        out = np.empty((1, 4, 80), np.float32)[:, :, ::2]
    with pytest.raises(ValueError):
        pointwise_forward(weights, shift, x, out, True)


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(batch=st.integers(1, 3), channels=st.integers(1, 40), filters=st.integers(1, 21),
       pixels=st.integers(LANES, 3 * TILE + LANES), leaky_out=st.booleans(), chunk=st.sampled_from([4, 8, 16]))
def test_random_shapes(batch, channels, filters, pixels, leaky_out, chunk):
    weights, shift, x = case(batch, channels, filters, pixels)
    want = expected(weights, shift, x, leaky_out)
    tolerance = 2e-6 * np.sqrt(channels)
    got = run("serial", weights, shift, x, leaky_out)
    np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)
    np.testing.assert_array_equal(run("shares", weights, shift, x, leaky_out, chunk), got)


# ---- the intrinsics --------------------------------------------------------------------------------------
@jit
def _intrinsics_probe(a, b, c, out):
    simd.store(out, 0, simd.fma(simd.load(a, 0), simd.load(b, 0), simd.load(c, 0)))
    simd.store(out, LANES, simd.add(simd.load(a, 1), simd.splat(2.5)))
    simd.store(out, 2 * LANES, simd.leaky(simd.load(c, 0)))


@jit
def _leaky_all(values, out):
    for i in range(0, values.size, LANES):
        simd.store(out, i, simd.leaky(simd.load(values, i)))


def test_vector_leaky_is_the_double_formula_on_floats_of_every_exponent():
    """The vector leaky forms 0.1 * a in float32 arithmetic (simd.TENTH_HIGH): bit for bit Darknet's double
    product rounded to float32 on negative floats of every exponent, except for |a| below 4.71e-37, where results
    may be one unit in the last place apart (an exhaustive check over all negative floats found no other
    difference)."""
    bits = np.random.default_rng(11).integers(0x80000000, 0xFF800000, LANES * 40000, dtype=np.uint32)
    values = bits.view(np.float32).copy()
    values[:4] = [-np.inf, np.nan, -0.0, 5.0]
    out = np.empty_like(values)
    _leaky_all(values, out)
    with np.errstate(invalid="ignore"):
        want = np.where(values > 0, values, (0.1 * values.astype(np.float64)).astype(np.float32))
    normal = ~(np.abs(values) < 4.71e-37)
    np.testing.assert_array_equal(out[normal], want[normal])
    tiny = ~normal & np.isfinite(values)
    assert (np.abs(out[tiny] - want[tiny]) <= np.spacing(np.abs(want[tiny]))).all()
    assert out[0] == -np.inf and np.isnan(out[1]) and out[3] == 5.0


def test_intrinsics_lane_by_lane():
    a, b, c = (RNG.standard_normal(LANES + 1).astype(np.float32) for _ in range(3))
    out = np.zeros(3 * LANES, np.float32)
    _intrinsics_probe(a, b, c, out)
    fused = (a[:LANES].astype(np.float64) * b[:LANES] + c[:LANES]).astype(np.float32)   # rounded once
    np.testing.assert_array_equal(out[:LANES], fused)
    np.testing.assert_array_equal(out[LANES:2 * LANES], a[1:] + np.float32(2.5))
    darknet = (0.1 * c[:LANES].astype(np.float64)).astype(np.float32)   # .1 is a C double
    np.testing.assert_array_equal(out[2 * LANES:], np.where(c[:LANES] > 0, c[:LANES], darknet))


@jit
def _fused_float64(a, b, c, out):
    for i in range(a.shape[0]):   # a loop, as in the [yolo] logistic: the vectoriser's form of the call too
        out[i] = simd.fma_float64(a[i], b[i], c[i])


def test_float64_fma_rounds_once():
    """(1 + 2^-30)(1 - 2^-30) - 1 = -2^-60 exactly; a product rounded first gives 1.0 and then 0."""
    n = 64
    a, b, c = np.full(n, 1 + 2.0 ** -30), np.full(n, 1 - 2.0 ** -30), np.full(n, -1.0)
    out = np.zeros(n)
    _fused_float64(a, b, c, out)
    assert (out == -(2.0 ** -60)).all() and a[0] * b[0] + c[0] == 0.0


@jit
def _prefetch_far(weights, offsets):
    total = 0.0
    for k in range(offsets.size):
        simd.prefetch(weights, offsets[k])
        total += weights[0, 0]
    return total


def test_prefetch_is_only_a_hint_also_far_past_the_array():
    # the narrow tiles ask for the next filter block's weights, past the last block at the end of the array
    weights = RNG.standard_normal((3, 5)).astype(np.float32)
    before = weights.copy()
    offsets = np.array([0, 14, 15, 64, 1 << 20, 1 << 40, -1, -(1 << 30)], np.int64)
    assert _prefetch_far(weights, offsets) == pytest.approx(offsets.size * float(weights[0, 0]))
    np.testing.assert_array_equal(weights, before)


def test_layer_outputs_start_on_a_cache_line():
    from darknetpy.layers.base import aligned_zeros
    from builders import image_net
    for shape in [(1,), (3, 5), (2, 16, 7, 7), (1, 8, 160, 160)]:
        array = aligned_zeros(shape)
        assert array.shape == shape and array.ctypes.data % 64 == 0 and not array.any()
        assert array.flags.c_contiguous and array.dtype == np.float32
    net = image_net("[convolutional]\nfilters=5\nsize=1\n[maxpool]\nsize=2\nstride=2", 10, 6, 3)
    net.layers[0].allocate(2)
    net.layers[1].allocate(2)
    assert all(layer.output.ctypes.data % 64 == 0 for layer in net.layers)
