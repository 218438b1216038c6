"""[crop]: centred window at inference, random window (and flip) in training, Darknet's value mapping."""
import numpy as np
import pytest

from darknetpy.errors import CfgError
from darknetpy.layers.base import Shape

from naive_crop import crop
from builders import image_net


def test_hand_case_centred_and_mapped():
    net = image_net("[crop]\ncrop_height=1\ncrop_width=2", 4, 3, 1)
    x = np.arange(12, dtype=np.float32).reshape(1, 1, 3, 4) / 10   # rows 0..3, 4..7, 8..11 (/10)
    # offsets (3 - 1) // 2 = 1 and (4 - 2) // 2 = 1 -> values 0.5, 0.6 mapped x*2 - 1
    np.testing.assert_allclose(net.forward(x).reshape(2), [0.0, 0.2], atol=1e-7)
    raw = image_net("[crop]\ncrop_height=1\ncrop_width=2\nnoadjust=1", 4, 3, 1)
    np.testing.assert_allclose(raw.forward(x).reshape(2), [0.5, 0.6], atol=1e-7)


def test_inference_matches_naive_with_odd_margins():
    rng = np.random.default_rng(0)
    net = image_net("[crop]\ncrop_height=4\ncrop_width=3\nflip=1", 8, 7, 3)
    assert net.shapes[0] == Shape(3, 4, 3)
    x = rng.uniform(0, 1, (2, 3, 7, 8)).astype(np.float32)
    np.testing.assert_allclose(net.forward(x), crop(x, 4, 3, 1, 2, False), atol=1e-6)


def test_training_draws_one_window_per_batch_from_the_generator():
    rng = np.random.default_rng(1)
    net = image_net("[crop]\ncrop_height=3\ncrop_width=4\nflip=1", 9, 6, 2)
    layer = net.layers[0]
    layer.rng = np.random.default_rng(123)
    x = rng.uniform(0, 1, (2, 2, 6, 9)).astype(np.float32)
    windows = set()
    for _ in range(40):
        got = net.forward(x, train=True)
        dh, dw, flip = layer.last_window
        assert 0 <= dh <= 3 and 0 <= dw <= 5
        np.testing.assert_allclose(got, crop(x, 3, 4, dh, dw, flip), atol=1e-6)
        windows.add((dh, dw, flip))
    assert len(windows) > 10 and {w[2] for w in windows} == {False, True}
    layer.rng = np.random.default_rng(123)
    net.forward(x, train=True)
    first = layer.last_window
    layer.rng = np.random.default_rng(123)
    net.forward(x, train=True)
    assert layer.last_window == first


def test_summary_errors_and_no_backward():
    net = image_net("[crop]\ncrop_height=4\ncrop_width=3", 8, 7, 3)
    assert net.layers[0].summary_row() == "Crop Layer: 7 x 8 -> 4 x 3 x 3 image"
    with pytest.raises(CfgError) as err:
        image_net("[crop]\ncrop_height=4\ncrop_width=9", 8, 7, 3)
    assert ":8:" in str(err.value)
    layer = net.layers[0]
    x = np.zeros((1, 3, 7, 8), np.float32)
    net.forward(x)
    layer.backward(np.zeros_like(layer.output), [x], [None])    # first layer: nothing to propagate
    with pytest.raises(NotImplementedError, match="crop"):
        layer.backward(np.zeros_like(layer.output), [x], [np.zeros_like(x)])
