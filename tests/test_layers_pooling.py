import numpy as np
import pytest

from darknetpy.errors import CfgError
from darknetpy.layers.base import Shape
from darknetpy.layers.pooling import Avgpool, Maxpool

from gradcheck import check_layer_gradients
from naive_pooling import FLT_MAX, global_average, maxpool
from builders import image_net as make_net

def distinct_values(shape, rng):
    """Values at least 0.1 apart, so a finite-difference step of 1e-2 never changes a winner."""
    n = int(np.prod(shape))
    return (rng.permutation(n).reshape(shape) * 0.1 - n * 0.05).astype(np.float32)


# ---- [maxpool] -----------------------------------------------------------------------------------------
def test_hand_2x2_stride_2_max_of_4x4_map():
    net = make_net("[maxpool]\nsize=2\nstride=2", 4, 4, 1)
    x = np.array([[1, 3, 2, 9],
                  [5, 0, 4, 1],
                  [7, 2, 8, 6],
                  [0, 6, 3, 5]], np.float32)[None, None]
    assert net.shapes[0] == Shape(1, 2, 2)
    np.testing.assert_array_equal(net.forward(x)[0, 0], [[5, 9], [7, 8]])


def test_yolov3_tiny_size_2_stride_1_keeps_size_and_pads_with_minus_flt_max():
    net = make_net("[maxpool]\nsize=2\nstride=1", 3, 3, 1)
    assert net.shapes[0] == Shape(1, 3, 3)
    x = -np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    # the window covers (y..y+1, x..x+1); zero padding would wrongly give 0 on the last row/column
    np.testing.assert_array_equal(net.forward(x)[0, 0], [[-1, -2, -3], [-4, -5, -6], [-7, -8, -9]])
    y = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    np.testing.assert_array_equal(net.forward(y)[0, 0], [[5, 6, 6], [8, 9, 9], [8, 9, 9]])


@pytest.mark.parametrize("padding,offset", [(0, 0), (1, 0), (2, -1), (3, -1), (4, -2)])
def test_origin_offset_is_c_truncated(padding, offset):
    net = make_net(f"[maxpool]\nsize=3\nstride=2\npadding={padding}", 9, 9, 1)
    assert net.layers[0].config.origin_offset == offset


def test_padding_1_puts_everything_on_the_right():
    # size 3 stride 2 padding 1 on a 5-wide row: windows start at columns 0 and 2 (Python's -1//2 would
    # start them at -1 and 1)
    net = make_net("[maxpool]\nsize=3\nstride=2\npadding=1", 5, 1, 1)
    x = np.array([9, 1, 2, 3, 4], np.float32).reshape(1, 1, 1, 5)
    # rows: height 1 + padding 1 - 3 = -1 -> C division gives 0 -> 1 output row
    np.testing.assert_array_equal(net.forward(x)[0, 0], [[9, 4]])


@pytest.mark.parametrize("text", [
    "size=2\nstride=2",
    "size=3\nstride=2",
    "size=3\nstride=1",
    "size=2\nstride=1",
    "size=3\nstride=2\npadding=0",
    "size=3\nstride=2\npadding=3",
    "size=4\nstride=3\npadding=2",
    "size=3\nstride=1\nstride_x=2",
    "size=2\nstride=2\nstride_y=1",
    "stride=2",                      # size defaults to stride
])
def test_forward_matches_naive_and_records_winners(text):
    rng = np.random.default_rng(3)
    net = make_net("[maxpool]\n" + text, 7, 9, 3)
    layer = net.layers[0]
    x = rng.standard_normal((2, 3, 9, 7)).astype(np.float32)
    got = net.forward(x)
    cfg = layer.config
    sy, sx = cfg.strides
    ref, winner = maxpool(x, cfg.window, sy, sx, cfg.total_padding)
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)                     # inference: values only
    np.testing.assert_array_equal(layer.forward([x], True), ref)  # training: values and winners
    np.testing.assert_array_equal(layer.argmax, winner)


@pytest.mark.parametrize("size,stride,padding", [(2, 2, None), (3, 2, 2), (2, 1, None), (3, 1, 2)])
def test_forward_matches_torch_with_asymmetric_minus_inf_padding(size, stride, padding):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    text = f"[maxpool]\nsize={size}\nstride={stride}" + (f"\npadding={padding}" if padding is not None else "")
    net = make_net(text, 8, 7, 2)
    cfg = net.layers[0].config
    x = np.random.default_rng(4).standard_normal((2, 2, 7, 8)).astype(np.float32)
    got = net.forward(x)
    out_h, out_w = got.shape[2:]
    left = -cfg.origin_offset
    right = max((out_w - 1) * stride + size - 8 - left, 0)
    bottom = max((out_h - 1) * stride + size - 7 - left, 0)
    padded = F.pad(torch.from_numpy(x), (left, right, left, bottom), value=-float("inf"))
    ref = F.max_pool2d(padded, size, stride)[:, :, :out_h, :out_w].numpy()
    np.testing.assert_array_equal(got, ref)


def test_ties_send_the_gradient_to_the_first_tap():
    net = make_net("[maxpool]\nsize=2\nstride=2", 4, 4, 1)
    layer = net.layers[0]
    x = np.ones((1, 1, 4, 4), np.float32)
    layer.allocate(1)
    layer.forward([x], False)
    dx = np.zeros_like(x)
    layer.backward(np.ones((1, 1, 2, 2), np.float32), [x], [dx])
    expected = np.zeros((4, 4))
    expected[::2, ::2] = 1
    np.testing.assert_array_equal(dx[0, 0], expected)


def test_windows_entirely_outside_pass_no_gradient():
    net = make_net("[maxpool]\nsize=1\nstride=1\npadding=4", 2, 2, 1)
    layer = net.layers[0]
    x = np.ones((1, 1, 2, 2), np.float32)
    out = net.forward(x)
    # 2 + 4 - 1 + 1 = 6 outputs per axis, offset -2: only the central 2x2 sees the image
    assert out.shape == (1, 1, 6, 6)
    assert out[0, 0, 0, 0] == np.float32(-FLT_MAX)
    np.testing.assert_array_equal(out[0, 0, 2:4, 2:4], x[0, 0])
    dx = np.zeros_like(x)
    layer.backward(np.ones_like(out), [x], [dx])
    np.testing.assert_array_equal(dx, np.ones_like(x))


@pytest.mark.parametrize("text,train", [("size=2\nstride=2", False), ("size=3\nstride=2\npadding=2", True),
                                        ("size=2\nstride=1", True)])
def test_maxpool_gradient(text, train):
    net = make_net("[maxpool]\n" + text, 5, 5, 2)
    x = distinct_values((2, 2, 5, 5), np.random.default_rng(5))
    check_layer_gradients(net.layers[0], [x], train=train)


def test_max_alias_and_summary_row():
    net = make_net("[max]\nsize=2\nstride=2", 416, 416, 16)
    assert isinstance(net.layers[0], Maxpool)
    assert net.layers[0].summary_row() == "max          2 x 2 / 2   416 x 416 x  16   ->   208 x 208 x  16"


@pytest.mark.parametrize("option,line", [("maxpool_depth=1", 8), ("antialiasing=1", 8)])
def test_unsupported_alexeyab_options_point_at_their_line(option, line):
    with pytest.raises(CfgError) as err:
        make_net(f"[maxpool]\nsize=2\n{option}\nstride=2", 4, 4, 1)
    assert f":{line}:" in str(err.value)
    assert "not supported" in str(err.value)


def test_alexeyab_defaults_are_accepted():
    net = make_net("[maxpool]\nsize=2\nstride=2\nmaxpool_depth=0\nout_channels=1\nantialiasing=0", 4, 4, 1)
    assert net.shapes[0] == Shape(1, 2, 2)


def test_window_larger_than_input_is_an_error_at_size():
    with pytest.raises(CfgError) as err:
        make_net("[maxpool]\nstride=1\nsize=5\npadding=0", 3, 3, 1)
    assert ":8:" in str(err.value)


def test_maxpool_needs_an_image():
    text = "[reorg]\nextra=1\n\n[maxpool]\nsize=2\nstride=2"
    with pytest.raises(CfgError) as err:
        make_net(text, 4, 4, 1)
    assert ":9:" in str(err.value)


# ---- [avgpool] -----------------------------------------------------------------------------------------
def test_hand_global_average_of_4x4_map():
    net = make_net("[avgpool]", 4, 4, 2)
    x = np.stack([np.arange(16, dtype=np.float32), np.full(16, -2, np.float32)]).reshape(1, 2, 4, 4)
    assert net.shapes[0] == Shape(2, 1, 1)
    np.testing.assert_array_equal(net.forward(x).reshape(2), [7.5, -2.0])


def test_textbook_2x2_stride_2_average_needs_a_2x2_input():
    """Darknet's [avgpool] has no size/stride: it always averages the whole channel. A textbook 2x2/2
    average pool therefore coincides with it only when the input is itself 2x2 (one window covering the
    whole map), which is the case checked here by hand and against PyTorch."""
    net = make_net("[avgpool]", 2, 2, 1)
    x = np.array([[1, 2], [3, 6]], np.float32).reshape(1, 1, 2, 2)
    assert net.forward(x)[0, 0, 0, 0] == 3.0
    torch = pytest.importorskip("torch")
    ref = torch.nn.functional.avg_pool2d(torch.from_numpy(x), 2, 2).numpy()
    np.testing.assert_array_equal(net.forward(x), ref)


def test_avgpool_matches_naive_on_odd_sizes():
    rng = np.random.default_rng(6)
    net = make_net("[avg]", 5, 3, 4)
    assert isinstance(net.layers[0], Avgpool)
    x = rng.standard_normal((2, 4, 3, 5)).astype(np.float32)
    np.testing.assert_allclose(net.forward(x), global_average(x), rtol=1e-6, atol=1e-6)


def test_avgpool_gradient():
    net = make_net("[avgpool]", 5, 3, 4)
    x = np.random.default_rng(7).standard_normal((2, 4, 3, 5)).astype(np.float32)
    check_layer_gradients(net.layers[0], [x], train=True)


def test_avgpool_summary_row():
    net = make_net("[avgpool]", 4, 4, 1024)
    assert net.layers[0].summary_row() == "avg                        4 x   4 x1024   ->  1024"


@pytest.mark.parametrize("threaded", [False, True])
def test_threaded_and_serial_kernels_agree_with_naive(threaded, monkeypatch):
    from darknetpy.kernels import pooling as kernels
    monkeypatch.setattr(kernels, "PARALLEL_MIN_ELEMENTS", 0 if threaded else 1 << 62)
    net = make_net("[maxpool]\nsize=3\nstride=2", 9, 7, 3)
    layer = net.layers[0]
    x = distinct_values((2, 3, 7, 9), np.random.default_rng(8))
    got = net.forward(x, train=True)   # the kernels that keep the winners (inference's: the test below)
    ref, winner = maxpool(x, 3, 2, 2, 2)
    np.testing.assert_array_equal(got, ref)
    dy = np.random.default_rng(9).standard_normal(got.shape).astype(np.float32)
    dx = np.zeros_like(x)
    layer.backward(dy, [x], [dx])
    expected = np.zeros((2, 3, 63))
    for b in range(2):
        for c in range(3):
            np.add.at(expected[b, c], winner[b, c].ravel(), dy[b, c].ravel())
    np.testing.assert_allclose(dx.reshape(2, 3, 63), expected, rtol=1e-6)


@pytest.mark.parametrize("size,stride,stride_x,padding,threaded", [
    # the literal windows (SPP's at stride 1), padded and inside
    (3, 1, 1, 2, False), (3, 1, 1, 0, False), (3, 2, 2, 2, False), (5, 1, 1, 0, False), (9, 1, 1, 8, False),
    (13, 1, 1, 0, False),
    # 2x2 at literal column strides 2 and 1, and one read at run time
    (2, 2, 2, 0, False), (2, 1, 1, 1, False), (2, 3, 3, 1, False),
    # sizes and strides read at run time: direct, separable
    (3, 1, 3, 2, False), (7, 2, 3, 6, False),
    # the threaded drivers (each compiles for seconds): inference's row-first (a separable window; the direct
    # one shares its driver) and columns-first (a run-time window); the winners' one is tested above
    (5, 1, 1, 4, True), (7, 2, 3, 6, True),
])
def test_every_window_kernel_matches_naive(size, stride, stride_x, padding, threaded, monkeypatch):
    """Each window variant is compiled as its own kernel (kernels/pooling.py): inference's (values only;
    columns first at column strides >= 2) and training's (values and winners), both against the oracle, with
    ties, NaN and -inf (threaded: inference's only; the threaded kernels share one driver)."""
    from darknetpy.kernels import pooling as kernels
    monkeypatch.setattr(kernels, "PARALLEL_MIN_ELEMENTS", 0 if threaded else 1 << 62)
    text = f"[maxpool]\nsize={size}\nstride={stride}\nstride_x={stride_x}\npadding={padding}"
    net = make_net(text, 17, 15, 3)
    layer = net.layers[0]
    x = np.random.default_rng(size * 7 + stride).standard_normal((2, 3, 15, 17)).astype(np.float32)
    x[0, 1, 3:6, 4:9] = 0.5                      # ties: the first maximum must win
    x[1, 2, 4, 4:7] = np.nan                     # NaN never wins, in any order of the taps
    x[1, 0, 7:9, 2] = -np.inf                    # and -inf loses to the -FLT_MAX the windows start from
    ref, winner = maxpool(x, size, stride, stride_x, padding)
    np.testing.assert_array_equal(net.forward(x), ref)          # inference: values only
    if threaded:
        return  # each threaded kernel compiles for seconds: the winners' one is tested above
    layer.argmax.fill(99)
    np.testing.assert_array_equal(layer.forward([x], True), ref)  # training: values and winners
    np.testing.assert_array_equal(layer.argmax, winner)


def awkward_values(shape, seed):
    """Normal values with ties, NaN (never wins) and -inf (loses to the -FLT_MAX windows start from) in every
    plane's corners and middle, where the edge handling of the inference kernels lives."""
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    x[..., 0, 0] = np.nan
    x[..., -1, -1] = -np.inf
    x[..., 1, :2] = 0.75
    x[..., -2:, 1] = 0.75
    x[0, 0, :, -1] = np.nan     # a whole column of NaN: windows seeing only it give -FLT_MAX
    x[-1, -1, 2, :] = -np.inf   # a whole row of -inf
    return x


@pytest.mark.parametrize("threaded", [False, True])
@pytest.mark.parametrize("size,padding,height,width", [
    (2, 1, 13, 13), (2, 0, 6, 9), (3, 2, 7, 10), (3, 0, 5, 5), (4, 3, 8, 6), (5, 4, 9, 11), (5, 13, 6, 7),
    (8, 7, 9, 8), (9, 8, 9, 11), (13, 12, 13, 14), (3, 9, 4, 5), (7, 1, 7, 9),
])
def test_stride_1_windows_at_inference_match_naive(size, padding, height, width, threaded, monkeypatch):
    """Inference's stride-1 kernel (spans of rows and columns doubled over a padded plane): every window size
    (powers of two and not), paddings that keep the windows inside, put them half outside, or leave whole
    output rows and columns outside the image (-FLT_MAX there), odd and tiny maps, against the spec's loop."""
    from darknetpy.kernels import pooling as kernels
    monkeypatch.setattr(kernels, "PARALLEL_MIN_ELEMENTS", 0 if threaded else 1 << 62)
    x = awkward_values((2, 3, height, width), size * 31 + padding)
    ref, _ = maxpool(x, size, 1, 1, padding)
    out = np.full(ref.shape, 123.0, np.float32)
    kernels.maxpool_forward(x, size, 1, 1, int(-padding / 2), out, None)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("threaded", [False, True])
@pytest.mark.parametrize("padding", [0, 1, 2, 3, 5])
def test_3x3_stride_2_at_inference_matches_naive(padding, threaded, monkeypatch):
    """Inference's 3x3/2 kernel (column maxima into even and odd phases, edges read directly): even and odd
    widths from 3 to 10 and heights from 3 to 6 with every padding, against the spec's loop."""
    from darknetpy.kernels import pooling as kernels
    monkeypatch.setattr(kernels, "PARALLEL_MIN_ELEMENTS", 0 if threaded else 1 << 62)
    for height in range(3, 7):
        for width in range(3, 11):
            x = awkward_values((2, 2, height, width), height * 11 + width)
            ref, _ = maxpool(x, 3, 2, 2, padding)
            out = np.full(ref.shape, 123.0, np.float32)
            kernels.maxpool_forward(x, 3, 2, 2, int(-padding / 2), out, None)
            np.testing.assert_array_equal(out, ref, err_msg=f"{height}x{width}")
