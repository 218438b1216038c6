"""[local_avgpool]: AlexeyAB's windowed average pooling, checked against PyTorch's avg_pool2d (which, with
count_include_pad=False, divides by the in-image taps as AlexeyAB's forward does), a naive loop for the
asymmetric (odd) paddings PyTorch cannot express, and finite differences for the backward pass."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from darknetpy.errors import CfgError
from darknetpy.layers.base import Shape

from gradcheck import check_layer_gradients
from builders import image_net as make_net


def naive_local_avgpool(x, size, stride, padding):
    """Straight from the definition: origin -padding/2 truncated toward zero, mean of the in-image taps."""
    b, c, h, w = x.shape
    offset = -(padding // 2)
    out_h = (h + padding - size) // stride + 1
    out_w = (w + padding - size) // stride + 1
    y = np.zeros((b, c, out_h, out_w), np.float64)
    for i in range(out_h):
        for j in range(out_w):
            taps = [(r, q) for r in range(offset + i * stride, offset + i * stride + size)
                    for q in range(offset + j * stride, offset + j * stride + size) if 0 <= r < h and 0 <= q < w]
            y[:, :, i, j] = np.mean([x[:, :, r, q] for r, q in taps], axis=0)
    return y


def test_2x2_window_halves_the_map():
    net = make_net("[local_avgpool]\nsize=2\nstride=2", 4, 4, 1)
    assert net.shapes[0] == Shape(1, 2, 2)
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(net.forward(x)[0, 0], [[2.5, 4.5], [10.5, 12.5]])


@pytest.mark.parametrize("size,stride,padding,shape", [
    (2, 2, 0, (2, 3, 8, 8)), (3, 1, 2, (1, 2, 7, 5)), (3, 2, 2, (2, 2, 9, 9)), (5, 2, 4, (1, 3, 11, 8)),
])
def test_symmetric_padding_matches_torch_avg_pool2d(size, stride, padding, shape):
    rng = np.random.default_rng(size * 10 + padding)
    x = rng.standard_normal(shape).astype(np.float32)
    net = make_net(f"[local_avgpool]\nsize={size}\nstride={stride}\npadding={padding}", shape[3], shape[2], shape[1])
    expected = F.avg_pool2d(torch.from_numpy(x), size, stride, padding // 2, count_include_pad=False).numpy()
    got = net.forward(x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("size,stride,padding", [(2, 2, 1), (3, 2, 1), (2, 1, 1), (3, 3, 3)])
def test_odd_padding_matches_naive(size, stride, padding):
    rng = np.random.default_rng(padding)
    x = rng.standard_normal((2, 2, 7, 6)).astype(np.float32)
    net = make_net(f"[local_avgpool]\nsize={size}\nstride={stride}\npadding={padding}", 6, 7, 2)
    np.testing.assert_allclose(net.forward(x), naive_local_avgpool(x, size, stride, padding), rtol=1e-6, atol=1e-6)


def test_default_padding_is_size_minus_one_on_the_right():
    # size 2 stride 1 keeps the size; the last column averages 2 in-image taps, not 4 with zeros
    net = make_net("[local_avgpool]\nsize=2\nstride=1", 3, 1, 1)
    x = np.array([1, 3, 5], np.float32).reshape(1, 1, 1, 3)
    np.testing.assert_allclose(net.forward(x)[0, 0, 0], [2, 4, 5])


@pytest.mark.parametrize("text,shape", [("size=2\nstride=2", (2, 3, 6, 6)), ("size=3\nstride=1", (1, 2, 5, 4)),
                                        ("size=3\nstride=2\npadding=1", (2, 2, 7, 7))])
def test_backward_matches_finite_differences(text, shape):
    net = make_net(f"[local_avgpool]\n{text}", shape[3], shape[2], shape[1])
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    check_layer_gradients(net.layers[0], [x], samples=40)


def test_backward_matches_torch_autograd_at_the_borders():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 2, 6, 7)).astype(np.float32)
    net = make_net("[local_avgpool]\nsize=3\nstride=2\npadding=2", 7, 6, 2)
    layer = net.layers[0]
    layer.allocate(2)
    y = layer.forward([x], True)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = np.zeros_like(x)
    layer.backward(dy.copy(), [x], [dx])
    xt = torch.from_numpy(x).requires_grad_()
    F.avg_pool2d(xt, 3, 2, 1, count_include_pad=False).backward(torch.from_numpy(dy))
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_window_in_the_padding_only_is_a_located_error():
    with pytest.raises(CfgError) as info:
        make_net("[local_avgpool]\nsize=2\nstride=1\npadding=6", 4, 4, 1)
    assert info.value.line == 9 and "outside" in str(info.value)


def test_summary_row():
    net = make_net("[local_avgpool]\nsize=2\nstride=2", 8, 8, 3)
    assert "avg" in net.layers[0].summary_row() and "4 x   4 x   3" in net.layers[0].summary_row()
