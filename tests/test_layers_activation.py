"""[activation]: element-wise forward against the spec's formulas, gradients against finite differences."""
import numpy as np
import pytest

from darknetpy.errors import CfgError
from darknetpy.layers.base import Shape
from darknetpy.network import network_from_text

from gradcheck import check_layer_gradients
from naive_activation import activate
from builders import image_net


@pytest.mark.parametrize("name", ["linear", "logistic", "relu", "leaky", "tanh", "elu", "mish", "swish"])
def test_forward_matches_formula(name):
    rng = np.random.default_rng(0)
    net = image_net(f"[activation]\nactivation={name}", 5, 3, 2)
    x = (rng.standard_normal((2, 2, 3, 5)) * 3).astype(np.float32)
    got = net.forward(x)
    np.testing.assert_allclose(got, activate(name, x), rtol=1e-5, atol=1e-6)


def test_default_is_linear_and_shape_is_kept():
    net = image_net("[activation]", 5, 3, 2)
    assert net.layers[0].config.activation == "linear"
    assert net.shapes[0] == Shape(2, 3, 5)
    assert net.layers[0].summary_row() == "Activation Layer: 30 inputs"
    flat = network_from_text("[net]\ninputs=6\n\n[softmax]\n\n[activation]\nactivation=relu")
    assert flat.shapes[1] == Shape.flat(6)


@pytest.mark.parametrize("name", ["logistic", "tanh", "leaky", "elu", "mish", "swish", "gelu", "hard_mish"])
def test_gradient(name):
    rng = np.random.default_rng(1)
    net = image_net(f"[activation]\nactivation={name}", 3, 3, 2)
    x = (rng.standard_normal((2, 2, 3, 3)) * 2).astype(np.float32)
    check_layer_gradients(net.layers[0], [x], train=False, eps=1e-3)


def test_unknown_activation_points_at_its_line():
    with pytest.raises(CfgError) as err:
        image_net("[activation]\nactivation=leakyy", 3, 3, 2)
    assert ":7:" in str(err.value) and "leaky" in str(err.value)
