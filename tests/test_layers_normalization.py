"""[normalization]/[lrn] (Darknet's recurrence, not the textbook window) and [l2norm]: forward against hand
values and slow references, true gradients against finite differences."""
import numpy as np
import pytest

from darknetpy.errors import CfgError
from darknetpy.layers.base import Shape
from darknetpy.network import network_from_text

from gradcheck import check_layer_gradients
from naive_normalization import l2norm, lrn, lrn_norms
from builders import image_net


def test_lrn_five_channel_hand_case():
    # s = x^2 = 1, 4, 9, 16, 25 with alpha = kappa = 1, size 5. The recurrence gives
    # norm0 = 1 + s0 + s1 = 6; norm1 = norm0 + s3 = 22; norm2 = norm1 + s4 = 47;
    # norm3 = norm2 - s0 = 46; norm4 = norm3 - s1 = 42  (channel 2 is never counted)
    net = image_net("[lrn]\nalpha=1\nbeta=1\nkappa=1\nsize=5", 1, 1, 5)
    x = np.arange(1, 6, dtype=np.float32).reshape(1, 5, 1, 1)
    got = net.forward(x).reshape(5)
    np.testing.assert_allclose(got, [1 / 6, 2 / 22, 3 / 47, 4 / 46, 5 / 42], rtol=1e-6)
    np.testing.assert_allclose(net.layers[0].norms.reshape(5), [6, 22, 47, 46, 42])
    half = image_net("[normalization]\nalpha=1\nbeta=0.5\nkappa=1\nsize=5", 1, 1, 5)
    np.testing.assert_allclose(half.forward(x).reshape(5), np.arange(1, 6) / np.sqrt([6, 22, 47, 46, 42]),
                               rtol=1e-6)


def test_lrn_matches_the_recurrence_not_the_textbook():
    rng = np.random.default_rng(0)
    net = image_net("[lrn]\nalpha=0.01\nbeta=0.75\nkappa=2\nsize=5", 3, 2, 8)
    x = rng.standard_normal((2, 8, 2, 3)).astype(np.float32) * 2
    got = net.forward(x)
    np.testing.assert_allclose(got, lrn(x, 5, 0.01, 0.75, 2), rtol=1e-5, atol=1e-6)
    squares = x.astype(np.float64) ** 2
    textbook = 2 + 0.01 * np.stack([squares[:, max(0, k - 2):k + 3].sum(axis=1) for k in range(8)], axis=1)
    assert not np.allclose(net.layers[0].norms, textbook, rtol=1e-3)


def test_lrn_shape_summary_and_channel_check():
    net = image_net("[lrn]\nsize=3", 4, 3, 2)
    assert net.shapes[0] == Shape(2, 3, 4)
    assert net.layers[0].summary_row() == "Local Response Normalization Layer: 4 x 3 x 2 image, 3 size"
    with pytest.raises(CfgError) as err:
        image_net("[lrn]\nsize=7", 4, 3, 2)
    assert ":7:" in str(err.value)


@pytest.mark.parametrize("size,channels", [(5, 7), (3, 4), (4, 6)])
def test_lrn_gradient(size, channels):
    rng = np.random.default_rng(1)
    net = image_net(f"[lrn]\nalpha=0.2\nbeta=0.75\nkappa=2\nsize={size}", 3, 2, channels)
    x = (rng.standard_normal((2, channels, 2, 3)) * 0.8).astype(np.float32)
    assert np.all(lrn_norms(x, size, 0.2, 2) > 0.5)  # channels subtracted but never added lower the norm
    check_layer_gradients(net.layers[0], [x], eps=1e-2)


def test_l2norm_forward_and_gradient():
    rng = np.random.default_rng(2)
    net = image_net("[l2norm]", 3, 5, 4)
    layer = net.layers[0]
    assert net.shapes[0] == Shape(4, 5, 3)
    assert layer.summary_row() == "l2norm                                           60"
    x = rng.standard_normal((2, 4, 5, 3)).astype(np.float32)
    got = net.forward(x)
    np.testing.assert_allclose(got, l2norm(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.sum(got.astype(np.float64) ** 2, axis=1), 1, rtol=1e-5)
    check_layer_gradients(layer, [x], eps=1e-3)


def test_l2norm_needs_an_image():
    with pytest.raises(CfgError) as err:
        network_from_text("[net]\ninputs=6\n\n[softmax]\n\n[l2norm]")
    assert ":6:" in str(err.value)
