import numpy as np
import pytest

from darknetpy.errors import CfgError
from darknetpy.layers.base import Shape
from darknetpy.network import network_from_text

from gradcheck import check_layer_gradients
from naive_resampling import downsample, flatten, reorg, reorg_reverse, upsample


def make_net(layer_text, w, h, c):
    """[net] is lines 1-4, so the first layer section starts on line 6."""
    return network_from_text(f"[net]\nwidth={w}\nheight={h}\nchannels={c}\n\n{layer_text}")


def random_input(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---- [upsample] ----------------------------------------------------------------------------------------
def test_hand_nearest_upsample_with_scale():
    net = make_net("[upsample]\nstride=2\nscale=0.5", 2, 2, 1)
    x = np.array([[1, 2], [3, 4]], np.float32).reshape(1, 1, 2, 2)
    assert net.shapes[0] == Shape(1, 4, 4)
    np.testing.assert_array_equal(net.forward(x)[0, 0], [[0.5, 0.5, 1, 1],
                                                         [0.5, 0.5, 1, 1],
                                                         [1.5, 1.5, 2, 2],
                                                         [1.5, 1.5, 2, 2]])


def test_hand_negative_stride_sums_blocks():
    net = make_net("[upsample]\nstride=-2", 4, 4, 1)
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    assert net.shapes[0] == Shape(1, 2, 2)
    np.testing.assert_array_equal(net.forward(x)[0, 0], [[0 + 1 + 4 + 5, 2 + 3 + 6 + 7],
                                                         [8 + 9 + 12 + 13, 10 + 11 + 14 + 15]])


@pytest.mark.parametrize("stride,scale", [(2, 1.0), (3, 0.25), (1, 2.0)])
def test_upsample_matches_naive_and_torch(stride, scale):
    net = make_net(f"[upsample]\nstride={stride}\nscale={scale}", 5, 3, 2)
    x = random_input((2, 2, 3, 5), 1)
    got = net.forward(x)
    np.testing.assert_allclose(got, upsample(x, stride, scale), rtol=1e-6)
    torch = pytest.importorskip("torch")
    ref = torch.nn.functional.interpolate(torch.from_numpy(x), scale_factor=stride, mode="nearest") * scale
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-6)


@pytest.mark.parametrize("stride,scale,h,w", [(2, 1.0, 4, 6), (3, 0.5, 9, 6)])
def test_downsample_matches_naive(stride, scale, h, w):
    net = make_net(f"[upsample]\nstride=-{stride}\nscale={scale}", w, h, 3)
    x = random_input((2, 3, h, w), 2)
    np.testing.assert_allclose(net.forward(x), downsample(x, stride, scale), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("text", ["stride=2\nscale=0.5", "stride=3", "stride=-2\nscale=1.5"])
def test_upsample_gradient(text):
    net = make_net("[upsample]\n" + text, 6, 4, 2)
    x = random_input((2, 2, 4, 6), 3)
    check_layer_gradients(net.layers[0], [x], train=True)


def test_upsample_summary_rows():
    net = make_net("[upsample]\nstride=2", 13, 13, 128)
    assert net.layers[0].summary_row() == "upsample            2x    13 x  13 x 128   ->    26 x  26 x 128"
    net = make_net("[upsample]\nstride=-2", 26, 26, 128)
    assert net.layers[0].summary_row() == "downsample          2x    26 x  26 x 128   ->    13 x  13 x 128"


@pytest.mark.parametrize("text,w", [("[upsample]\nstride=0", 4), ("[upsample]\nstride=-2", 5)])
def test_upsample_errors_point_at_stride(text, w):
    with pytest.raises(CfgError) as err:
        make_net(text, w, 4, 1)
    assert ":7:" in str(err.value)


# ---- [reorg] -------------------------------------------------------------------------------------------
def test_hand_reorg_is_darknets_not_the_textbook_one():
    # C=4, H=W=2, stride 2: the flat input 0..15 is read as X[1][4][4]; O[k] = X[0][k//2::2, k%2::2]
    net = make_net("[reorg]\nstride=2", 2, 2, 4)
    assert net.shapes[0] == Shape(16, 1, 1)
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 2, 2)
    expected = [0, 2, 8, 10, 1, 3, 9, 11, 4, 6, 12, 14, 5, 7, 13, 15]
    np.testing.assert_array_equal(net.forward(x).reshape(-1), expected)
    torch = pytest.importorskip("torch")
    textbook = torch.nn.functional.pixel_unshuffle(torch.from_numpy(x), 2).numpy().reshape(-1)
    assert not np.array_equal(textbook, expected)


@pytest.mark.parametrize("stride,c,h,w", [(2, 8, 6, 4), (3, 9, 3, 6), (1, 3, 5, 3)])
def test_reorg_matches_the_spec_rule_and_numpy_formula(stride, c, h, w):
    net = make_net(f"[reorg]\nstride={stride}", w, h, c)
    s = stride
    assert net.shapes[0] == Shape(c * s * s, h // s, w // s)
    x = random_input((2, c, h, w), 4)
    got = net.forward(x)
    for b in range(2):
        literal = reorg(x[b], s)
        formula = x[b].reshape(c // (s * s), h, s, w, s).transpose(2, 4, 0, 1, 3).reshape(-1)
        np.testing.assert_array_equal(literal, formula)
        np.testing.assert_array_equal(got[b].reshape(-1), literal)


@pytest.mark.parametrize("stride,c,h,w", [(2, 8, 3, 5), (3, 18, 2, 2)])
def test_reverse_reorg_is_the_inverse_mapping(stride, c, h, w):
    net = make_net(f"[reorg]\nstride={stride}\nreverse=1", w, h, c)
    s = stride
    assert net.shapes[0] == Shape(c // (s * s), h * s, w * s)
    x = random_input((2, c, h, w), 5)
    got = net.forward(x)
    for b in range(2):
        np.testing.assert_array_equal(got[b].reshape(-1), reorg_reverse(x[b], s))
        # undoing it with the forward rule on the same (C, H, W) view gives the input back
        np.testing.assert_array_equal(reorg(got[b].reshape(c, h, w), s), x[b].reshape(-1))


@pytest.mark.parametrize("reverse", [0, 1])
def test_flatten_transposes_channels_and_positions(reverse):
    net = make_net(f"[reorg]\nstride=1\nflatten=1\nreverse={reverse}", 3, 2, 5)
    assert net.shapes[0] == Shape(5, 2, 3)
    x = random_input((2, 5, 2, 3), 6)
    got = net.forward(x)
    for b in range(2):
        np.testing.assert_array_equal(got[b].reshape(-1), flatten(x[b], bool(reverse)))
    if not reverse:
        np.testing.assert_array_equal(got[0].reshape(-1), x[0].reshape(5, 6).T.reshape(-1))


def test_extra_copies_into_a_flat_output_like_go_cfg():
    net = make_net("[reorg]\nextra=1\nstride=1", 19, 19, 1)
    assert net.shapes[0] == Shape.flat(362)
    x = random_input((2, 1, 19, 19), 7)
    got = net.forward(x)
    assert got.shape == (2, 362, 1, 1)
    np.testing.assert_array_equal(got[:, :361, 0, 0], x.reshape(2, -1))
    np.testing.assert_array_equal(got[:, 361], 0)
    assert net.layers[0].summary_row() == "reorg               361   ->   362"


@pytest.mark.parametrize("text,shape", [
    ("stride=2", (8, 4, 6)),
    ("stride=2\nreverse=1", (8, 3, 5)),
    ("stride=1\nflatten=1", (3, 4, 5)),
    ("stride=1\nflatten=1\nreverse=1", (3, 4, 5)),
    ("extra=3", (2, 3, 3)),
])
def test_reorg_gradient(text, shape):
    c, h, w = shape
    net = make_net("[reorg]\n" + text, w, h, c)
    x = random_input((2, c, h, w), 8)
    check_layer_gradients(net.layers[0], [x], train=True)


def test_reorg_summary_row():
    net = make_net("[reorg]\nstride=2", 26, 26, 64)
    assert net.layers[0].summary_row() == "reorg              / 2    26 x  26 x  64   ->    13 x  13 x 256"


@pytest.mark.parametrize("text,c,h,w,line", [
    ("[reorg]\nstride=2", 4, 5, 4, 7),       # 5 rows do not split in 2
    ("[reorg]\nstride=2", 2, 4, 4, 7),       # 2 channels cannot be read as C/4
    ("[reorg]\nreverse=1\nstride=2", 6, 2, 2, 8),
    ("[reorg]\nflatten=1\nextra=2", 1, 2, 2, 8),
])
def test_reorg_errors_point_at_the_option(text, c, h, w, line):
    with pytest.raises(CfgError) as err:
        make_net(text, w, h, c)
    assert f":{line}:" in str(err.value)


@pytest.mark.parametrize("text,shape", [("[upsample]\nstride=2", (3, 4, 5)), ("[upsample]\nstride=-2", (3, 4, 6)),
                                        ("[reorg]\nstride=2", (8, 4, 6)),
                                        ("[reorg]\nstride=2\nreverse=1", (8, 3, 5))])
def test_threaded_and_serial_kernels_agree(text, shape, monkeypatch):
    from darknetpy.kernels import pooling as shared_policy
    c, h, w = shape
    x = random_input((2, c, h, w), 9)
    dy = None
    results = []
    for threshold in (1 << 62, 0):
        monkeypatch.setattr(shared_policy, "PARALLEL_MIN_ELEMENTS", threshold)
        layer = make_net(text, w, h, c).layers[0]
        layer.allocate(2)
        y = layer.forward([x], False).copy()
        if dy is None:
            dy = random_input(y.shape, 10)
        dx = np.ones_like(x)
        layer.backward(dy.copy(), [x], [dx])
        results.append((y, dx))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def _darknet_upsample_cpu(small, big, stride, scale, forward):
    """Darknet's upsample_cpu, element by element in its loop order, in float32 (forward: big = scale * small;
    else small += scale * big, walking big row by row)."""
    big_h, big_w = small.shape[2] * stride, small.shape[3] * stride
    for b in range(small.shape[0]):
        for c in range(small.shape[1]):
            for y in range(big_h):
                for x in range(big_w):
                    if forward:
                        big[b, c, y, x] = np.float32(scale) * small[b, c, y // stride, x // stride]
                    else:
                        small[b, c, y // stride, x // stride] += np.float32(scale) * big[b, c, y, x]


@pytest.mark.parametrize("stride,big_shape", [(2, (8, 6)), (3, (9, 6)), (2, (7, 5))])
def test_resampling_kernels_add_in_darknets_order(stride, big_shape):
    """Bit for bit against Darknet's loop (the order of float32 adds decides the last bit); a big map that
    the stride does not divide keeps its last rows/columns out of both directions, as in Darknet."""
    from darknetpy.kernels import resampling
    rng = np.random.default_rng(stride)
    big_h, big_w = big_shape
    small_shape = (2, 3, big_h // stride, big_w // stride)
    scale = np.float32(0.3)
    big = rng.standard_normal((2, 3, big_h, big_w)).astype(np.float32)
    start = rng.standard_normal(small_shape).astype(np.float32)
    for accumulate in (False, True):
        expected = start.copy() if accumulate else np.zeros(small_shape, np.float32)
        _darknet_upsample_cpu(expected, big, stride, scale, forward=False)
        got = start.copy()
        resampling.block_sum(big, stride, scale, got, accumulate)
        np.testing.assert_array_equal(got, expected)
    small = rng.standard_normal(small_shape).astype(np.float32)
    expected = big.copy()
    _darknet_upsample_cpu(small, expected, stride, scale, forward=True)
    got = big.copy()
    resampling.nearest_expand(small, stride, scale, got, False)
    np.testing.assert_array_equal(got, expected)
    got = big.copy()
    resampling.nearest_expand(small, stride, scale, got, True)
    covered = np.zeros_like(big)
    _darknet_upsample_cpu(small, covered, stride, scale, forward=True)
    np.testing.assert_array_equal(got, big + covered)
