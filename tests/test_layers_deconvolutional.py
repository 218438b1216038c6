"""[deconvolutional]: transposed convolution against a slow scatter reference and PyTorch, BN, gradients."""
import numpy as np
import pytest

from darknetpy.errors import CfgError
from darknetpy.layers.base import Shape

from gradcheck import check_layer_gradients
from naive_activation import activate
from naive_connected import batchnorm_inference
from naive_deconvolutional import deconv2d
from builders import image_net


def randomise(layer, rng):
    layer.weights[...] = rng.standard_normal(layer.weights.shape) * 0.5
    layer.biases[...] = rng.standard_normal(layer.biases.shape)
    if layer.bn is not None:
        layer.bn.scales[...] = rng.uniform(0.5, 1.5, layer.bn.scales.shape)
        layer.bn.rolling_mean[...] = rng.standard_normal(layer.bn.scales.shape)
        layer.bn.rolling_var[...] = rng.uniform(0.5, 2.0, layer.bn.scales.shape)


@pytest.mark.parametrize("text,shape", [
    ("filters=3\nsize=3\nstride=2", Shape(3, 9, 11)),          # (h - 1)*stride + size
    ("filters=2\nsize=4\nstride=2\npadding=1", Shape(2, 8, 10)),
    ("filters=2\nsize=3\nstride=1\npad=1", Shape(2, 4, 5)),
    ("filters=1\nsize=1\nstride=3", Shape(1, 10, 13)),
])
def test_forward_matches_naive_and_torch(text, shape):
    rng = np.random.default_rng(0)
    net = image_net("[deconv]\nactivation=leaky\n" + text, 5, 4, 3)
    layer = net.layers[0]
    assert net.shapes[0] == shape
    assert layer.weights.shape == (3, shape.c, layer.config.size, layer.config.size)
    randomise(layer, rng)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    got = net.forward(x)
    cfg = layer.config
    ref = activate("leaky", deconv2d(x, layer.weights, layer.biases, cfg.stride, cfg.effective_padding))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    torch = pytest.importorskip("torch")
    pre = torch.nn.functional.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(layer.weights),
                                               torch.from_numpy(layer.biases), stride=cfg.stride,
                                               padding=cfg.effective_padding)
    np.testing.assert_allclose(got, torch.nn.functional.leaky_relu(pre, 0.1).numpy(), rtol=1e-5, atol=1e-5)


def test_batchnorm_inference():
    rng = np.random.default_rng(1)
    net = image_net("[deconvolutional]\nfilters=3\nsize=2\nstride=2\nbatch_normalize=1\nactivation=linear",
                    3, 3, 2)
    layer = net.layers[0]
    randomise(layer, rng)
    x = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    raw = deconv2d(x, layer.weights, np.zeros(3), 2, 0)
    bn = layer.bn
    ref = batchnorm_inference(raw, bn.scales.reshape(1, -1, 1, 1), layer.biases.reshape(1, -1, 1, 1),
                              bn.rolling_mean.reshape(1, -1, 1, 1), bn.rolling_var.reshape(1, -1, 1, 1))
    np.testing.assert_allclose(net.forward(x), ref, rtol=1e-5, atol=1e-5)


def test_weight_arrays_in_conv_order_and_summary():
    net = image_net("[deconv]\nfilters=4\nsize=3\nstride=2\nbatch_normalize=1", 5, 4, 2)
    layer = net.layers[0]
    arrays = layer.weight_arrays()
    assert [a.size for a in arrays] == [4, 4, 4, 4, 2 * 4 * 9]
    assert arrays[0] is layer.biases and arrays[-1] is layer.weights
    assert layer.summary_row() == "deconv    4  3 x 3 / 2     5 x   4 x   2   ->    11 x   9 x   4"


def test_padding_too_large_points_at_its_line():
    with pytest.raises(CfgError) as err:
        image_net("[deconv]\nfilters=1\nsize=1\npadding=3", 2, 2, 1)
    assert ":9:" in str(err.value)


@pytest.mark.parametrize("text,train", [
    ("filters=2\nsize=3\nstride=2\npadding=1\nactivation=logistic", False),
    ("filters=3\nsize=2\nstride=1\nactivation=swish", True),
    ("filters=2\nsize=3\nstride=2\nbatch_normalize=1\nactivation=tanh", True),
])
def test_gradients(text, train):
    rng = np.random.default_rng(2)
    net = image_net("[deconv]\n" + text, 4, 3, 2)
    layer = net.layers[0]
    randomise(layer, rng)
    x = rng.standard_normal((2, 2, 3, 4)).astype(np.float32)
    check_layer_gradients(layer, [x], train=train)
