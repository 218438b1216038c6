import warnings

import numpy as np
import pytest

from darknetpy.errors import CfgError
from darknetpy.layers.base import Shape
from darknetpy.network import network_from_text

from gradcheck import check_layer_gradients
from builders import image_net


def make_net(layer_text, w=5, h=4, c=3):
    return image_net(layer_text, w, h, c)


class FixedDraws:
    """Stands in for the layer's Generator: the same uniform draws on every call, so the mask is fixed."""

    def __init__(self, draws: np.ndarray):
        self.draws = draws

    def random(self, size=None, dtype=np.float64, out=None):
        out[...] = self.draws
        return out


def random_input(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_inference_is_the_identity_without_a_copy():
    net = make_net("[dropout]\nprobability=0.9")
    layer = net.layers[0]
    assert net.shapes[0] == Shape(3, 4, 5)
    layer.allocate(2)
    x = random_input((2, 3, 4, 5))
    assert layer.forward([x], False) is x
    dx = np.ones_like(x)
    dy = random_input(x.shape, 1)
    layer.backward(dy.copy(), [x], [dx])
    np.testing.assert_array_equal(dx, 1 + dy)


def test_training_drops_with_probability_p_and_scales_the_rest():
    net = make_net("[dropout]\nprobability=0.25", 50, 40, 5)
    layer = net.layers[0]
    layer.seed(123)
    layer.allocate(2)
    x = random_input((2, 5, 40, 50), 2)
    y = layer.forward([x], True)
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.01          # 20000 draws: 0.01 is more than 7 standard deviations
    np.testing.assert_array_equal(y[kept], x[kept] * np.float32(1 / 0.75))
    np.testing.assert_array_equal(kept, layer.keep)


def test_the_mask_follows_the_draws_and_the_backward_reuses_it():
    net = make_net("[dropout]\nprobability=0.5", 2, 1, 1)
    layer = net.layers[0]
    layer.allocate(1)
    layer.rng = FixedDraws(np.array([0.49, 0.5], np.float32).reshape(1, 1, 1, 2))
    x = np.array([3.0, -4.0], np.float32).reshape(1, 1, 1, 2)
    # Darknet drops where r < p: 0.49 is dropped, 0.5 kept and doubled
    np.testing.assert_array_equal(layer.forward([x], True).ravel(), [0.0, -8.0])
    dx = np.full_like(x, 10.0)
    layer.backward(np.array([1.0, 1.0], np.float32).reshape(x.shape), [x], [dx])
    np.testing.assert_array_equal(dx.ravel(), [10.0, 12.0])


def test_seed_makes_masks_reproducible():
    x = random_input((2, 3, 4, 5), 3)
    outputs = []
    for _ in range(2):
        layer = make_net("[dropout]").layers[0]
        layer.seed(np.random.default_rng(7))
        layer.allocate(2)
        outputs.append(layer.forward([x], True).copy())
    np.testing.assert_array_equal(outputs[0], outputs[1])


@pytest.mark.parametrize("p,expected", [(0.0, "x"), (1.0, "zeros")])
def test_extreme_probabilities(p, expected):
    layer = make_net(f"[dropout]\nprobability={p}").layers[0]
    layer.allocate(2)
    x = random_input((2, 3, 4, 5), 4)
    y = layer.forward([x], True)
    np.testing.assert_array_equal(y, x if expected == "x" else np.zeros_like(x))


def test_dropout_gradient_with_a_fixed_mask():
    layer = make_net("[dropout]\nprobability=0.3").layers[0]
    layer.rng = FixedDraws(np.random.default_rng(5).random((2, 3, 4, 5), dtype=np.float32))
    x = random_input((2, 3, 4, 5), 6)
    check_layer_gradients(layer, [x], train=True, samples=60)
    check_layer_gradients(layer, [x], train=False)


def test_dropout_after_a_flat_layer_keeps_the_flat_shape():
    net = network_from_text("[net]\nwidth=3\nheight=3\nchannels=1\n\n[reorg]\nextra=2\n\n[dropout]")
    assert net.shapes[1] == Shape.flat(11)


def test_alexeyab_dropblock_keys_are_accepted_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net = make_net("[dropout]\nprobability=0.1\ndropblock=1\ndropblock_size_abs=7\ndropblock_size_rel=0.5")
    x = random_input((1, 3, 4, 5), 7)
    np.testing.assert_array_equal(net.forward(x), x)


def test_probability_out_of_range_points_at_its_line():
    with pytest.raises(CfgError) as err:
        make_net("[dropout]\n\nprobability=1.5")
    assert ":8:" in str(err.value)


def test_summary_row():
    layer = make_net("[dropout]", 13, 13, 1024).layers[0]
    assert layer.summary_row() == "dropout       p = 0.50               173056  ->  173056"
