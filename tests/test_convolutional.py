import numpy as np
import pytest

from darknetpy.errors import CfgError
from darknetpy.layers.base import Shape

from gradcheck import check_layer_gradients
from naive_conv import batchnorm_inference, conv2d, leaky
from builders import image_net as make_net


def randomise(layer, rng):
    for a in layer.weight_arrays(saving=True):
        a[...] = rng.uniform(0.5, 1.5, a.shape) if a is not layer.weights else rng.standard_normal(a.shape)
    layer.parameters_changed()


def test_textbook_3x3_conv_shape_and_parameters():
    net = make_net("[convolutional]\nfilters=5\nsize=3\nstride=1\npad=0\nactivation=linear", 28, 28, 3)
    assert net.shapes[0] == Shape(5, 26, 26)
    one = make_net("[convolutional]\nfilters=1\nsize=3\nactivation=linear", 9, 9, 3)
    two = make_net("[convolutional]\nfilters=2\nsize=3\nactivation=linear", 9, 9, 3)
    assert one.parameter_count() == 28 and two.parameter_count() == 56
    alex = make_net("[convolutional]\nfilters=96\nsize=11\nstride=4\nactivation=relu", 227, 227, 3)
    assert alex.parameter_count() == 34944


@pytest.mark.parametrize("stride,expected", [(1, 5), (2, 3)])
def test_output_size_formula(stride, expected):
    net = make_net(f"[convolutional]\nfilters=1\nsize=3\nstride={stride}\nactivation=linear", 7, 7, 1)
    assert (net.shapes[0].h, net.shapes[0].w) == (expected, expected)


def test_9x9_conv_flattens_to_392_and_pools_to_8():
    net = make_net("[convolutional]\nfilters=8\nsize=3\nactivation=linear\n[avgpool]", 9, 9, 3)
    assert net.shapes[0].size == 392
    assert net.shapes[1].size == 8


@pytest.mark.parametrize("text", [
    "filters=4\nsize=3\nstride=1\npad=1\nactivation=leaky",
    "filters=6\nsize=3\nstride=2\npad=1\nactivation=linear\ngroups=3",
    "filters=6\nsize=3\nstride=1\npad=1\nactivation=linear\ngroups=6",
    "filters=4\nsize=1\nstride=1\npad=1\nactivation=leaky",
    "filters=3\nsize=5\nstride_x=2\nstride_y=1\npadding=1\nactivation=linear",
    "filters=3\nsize=3\ndilation=2\npad=1\nactivation=linear",
])
def test_forward_matches_naive(text):
    rng = np.random.default_rng(1)
    net = make_net("[convolutional]\n" + text, 11, 9, 6)
    layer = net.layers[0]
    randomise(layer, rng)
    x = rng.standard_normal((2, 6, 9, 11)).astype(np.float32)
    got = net.forward(x)
    cfg = layer.config
    sy, sx = cfg.strides
    ref = conv2d(x.astype(np.float64), layer.weights, layer.biases, sy, sx, cfg.effective_padding,
                 cfg.groups, cfg.dilation)
    if cfg.activation == "leaky":
        ref = leaky(ref)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_batchnorm_inference_uses_epsilon_on_std():
    rng = np.random.default_rng(2)
    net = make_net("[convolutional]\nfilters=3\nsize=3\npad=1\nbatch_normalize=1\nactivation=linear", 5, 5, 2)
    layer = net.layers[0]
    randomise(layer, rng)
    layer.bn.rolling_var[0] = 1e-8  # the spec's verified case: textbook sqrt(var + 1e-5) would be far off
    layer.parameters_changed()
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    got = net.forward(x)
    raw = conv2d(x.astype(np.float64), layer.weights, np.zeros(3), 1, 1, 1)
    ref = batchnorm_inference(raw, layer.bn.scales, layer.biases, layer.bn.rolling_mean, layer.bn.rolling_var)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("text", [
    "filters=4\nsize=3\nstride=2\npad=1\nactivation=logistic\ngroups=2",
    "filters=3\nsize=1\nactivation=linear",
    "filters=3\nsize=3\npad=1\nbatch_normalize=1\nactivation=linear",
    "filters=4\nsize=3\npad=1\nbatch_normalize=1\nactivation=mish\ngroups=2",
])
def test_gradients_match_finite_differences(text):
    # smooth activations only: kinks (leaky, relu) make central differences meaningless; those go to torch below
    rng = np.random.default_rng(3)
    net = make_net("[convolutional]\n" + text, 12, 12, 4)
    layer = net.layers[0]
    randomise(layer, rng)
    x = rng.standard_normal((4, 4, 12, 12)).astype(np.float32)
    check_layer_gradients(layer, [x], train=True, eps=3e-3)


@pytest.mark.parametrize("text", [
    "filters=4\nsize=3\nstride=1\npad=1\nactivation=leaky",
    "filters=6\nsize=3\nstride=2\npad=1\nactivation=leaky\ngroups=3",
    "filters=4\nsize=3\nstride=1\npad=1\nactivation=relu\ngroups=4",
    "filters=3\nsize=3\ndilation=2\npad=1\nactivation=linear",
    "filters=5\nsize=1\nactivation=leaky",
])
def test_gradients_match_torch(text):
    torch = pytest.importorskip("torch")
    fn = torch.nn.functional
    rng = np.random.default_rng(4)
    net = make_net("[convolutional]\n" + text, 9, 8, 12)
    layer = net.layers[0]
    randomise(layer, rng)
    cfg = layer.config
    x = rng.standard_normal((2, 12, 8, 9)).astype(np.float32)
    dy = rng.standard_normal((2,) + (net.shapes[0].c, net.shapes[0].h, net.shapes[0].w)).astype(np.float32)
    layer.allocate(2)
    layer.forward([x], True)
    dx = np.zeros_like(x)
    layer.backward(dy.copy(), [x], [dx])

    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tw = torch.tensor(layer.weights, dtype=torch.float64, requires_grad=True)
    tb = torch.tensor(layer.biases, dtype=torch.float64, requires_grad=True)
    y = fn.conv2d(tx, tw, tb, stride=cfg.strides, padding=cfg.effective_padding, dilation=cfg.dilation,
                  groups=cfg.groups)
    y = {"leaky": lambda v: fn.leaky_relu(v, 0.1), "relu": fn.relu, "linear": lambda v: v}[cfg.activation](y)
    y.backward(torch.tensor(dy, dtype=torch.float64))
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.grad_weights, tw.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.grad_biases, tb.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("text,line,fragment", [
    ("[convolutional]\nfilters=abc\nsize=3", 7, "filters"),
    ("[convolutional]\nfilters=4\nsize=0", 8, "size"),
    ("[convolutional]\nfilters=4\nstride=-1", 8, "stride"),
    ("[convolutional]\nfilters=4\ngroups=3", 8, "groups"),
    ("[convolutional]\nfilters=4\nactivation=leeky", 8, "activation"),
    ("[convolutional]\nfilters=4\nfiltres=3", 8, "filters"),
])
def test_bad_values_point_at_their_line(text, line, fragment):
    with pytest.raises(CfgError) as info:
        make_net(text, 8, 8, 4)
    message = str(info.value)
    assert f"<string>:{line}:" in message and fragment in message
