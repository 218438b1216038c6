"""[local]: unshared convolution against a slow reference and PyTorch's unfold, shapes, gradients."""
import numpy as np
import pytest

from darknetpy.errors import CfgError
from darknetpy.layers.base import Shape

from gradcheck import check_layer_gradients
from naive_activation import activate
from naive_local import local
from builders import image_net


def randomise(layer, rng):
    layer.weights[...] = rng.standard_normal(layer.weights.shape) * 0.5
    layer.biases[...] = rng.standard_normal(layer.biases.shape)


@pytest.mark.parametrize("text,shape", [
    ("filters=3\nsize=3\nstride=1\npad=1", Shape(3, 5, 7)),    # (h - 1)/stride + 1
    ("filters=2\nsize=3\nstride=2\npad=0", Shape(2, 2, 3)),    # (h - size)/stride + 1
    ("filters=4\nsize=5\nstride=2\npad=2", Shape(4, 3, 4)),
    ("filters=2\nsize=2\nstride=1", Shape(2, 4, 6)),
])
def test_forward_matches_naive(text, shape):
    rng = np.random.default_rng(0)
    net = image_net("[local]\nactivation=leaky\n" + text, 7, 5, 2)
    layer = net.layers[0]
    assert net.shapes[0] == shape
    assert layer.weights.shape == (shape.h * shape.w, shape.c, 2 * layer.config.size ** 2)
    randomise(layer, rng)
    x = rng.standard_normal((2, 2, 5, 7)).astype(np.float32)
    got = net.forward(x)
    cfg = layer.config
    ref = activate("leaky", local(x, layer.weights, layer.biases, cfg.size, cfg.stride, cfg.pad))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_forward_matches_torch_unfold():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    net = image_net("[local]\nfilters=3\nsize=3\nstride=2\npad=1\nactivation=linear", 6, 5, 2)
    layer = net.layers[0]
    randomise(layer, rng)
    x = rng.standard_normal((2, 2, 5, 6)).astype(np.float32)
    cols = torch.nn.functional.unfold(torch.from_numpy(x), 3, padding=1, stride=2)    # (B, K, L)
    ref = torch.einsum("lfk,bkl->bfl", torch.from_numpy(layer.weights), cols).numpy()
    ref = ref.reshape(2, 3, 3, 3) + layer.biases
    np.testing.assert_allclose(net.forward(x), ref, rtol=1e-5, atol=1e-5)


def test_parameters_and_summary():
    net = image_net("[local]\nfilters=4\nsize=3\npad=1", 5, 4, 2)
    layer = net.layers[0]
    locations = 4 * 5
    assert [a.size for a in layer.weight_arrays()] == [4 * locations, locations * 4 * 2 * 9]
    assert layer.parameter_count() == 4 * locations * (1 + 18)
    assert layer.summary_row() == "Local Layer: 4 x 5 x 2 image, 4 filters -> 4 x 5 x 4 image"


def test_inconsistent_pad_points_at_its_line():
    with pytest.raises(CfgError) as err:
        image_net("[local]\nfilters=2\nsize=5\npad=1", 7, 7, 1)
    assert ":9:" in str(err.value)


@pytest.mark.parametrize("text", ["filters=2\nsize=3\nstride=2\npad=1\nactivation=logistic",
                                  "filters=3\nsize=2\nstride=1\nactivation=mish"])
def test_gradients(text):
    rng = np.random.default_rng(2)
    net = image_net("[local]\n" + text, 5, 4, 2)
    layer = net.layers[0]
    randomise(layer, rng)
    x = rng.standard_normal((2, 2, 4, 5)).astype(np.float32)
    check_layer_gradients(layer, [x])
