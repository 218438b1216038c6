"""[softmax], [cost], [logistic]: forward against hand values and slow references, Darknet's losses and the
gradients it passes back (checked against finite differences of the cost)."""
import math

import numpy as np
import pytest

from darknetpy.errors import CfgError, UnsupportedError
from darknetpy.layers.base import Shape
from darknetpy.network import network_from_text

from gradcheck import numeric_gradient
from naive_softmax import cost_error, logistic, logistic_cost, softmax_cost, softmax_groups


def vector_net(layer_text, inputs):
    return network_from_text(f"[net]\ninputs={inputs}\n\n{layer_text}")


def image_net(layer_text, w, h, c):
    return network_from_text(f"[net]\nwidth={w}\nheight={h}\nchannels={c}\n\n{layer_text}")


def run(layer, x, truth=None, train=True):
    layer.allocate(x.shape[0])
    if truth is not None:
        layer.set_truth(truth)
    return layer.forward([x], train).reshape(x.shape[0], -1).copy()


def input_gradient(layer, x, dy=None):
    dx = np.zeros_like(x)
    dy = np.zeros_like(layer.output) if dy is None else dy.reshape(layer.output.shape).copy()
    layer.backward(dy, [x], [dx])
    return dx.reshape(x.shape[0], -1)


# ---- softmax ----------------------------------------------------------------------------------------------

def test_softmax_hand_cases():
    ln3 = math.log(3)
    grouped = vector_net("[softmax]\ngroups=2", 4).layers[0]
    x = np.array([[0, ln3, 5, 5]], np.float32)
    np.testing.assert_allclose(run(grouped, x), [[0.25, 0.75, 0.5, 0.5]], rtol=1e-6)
    hot = vector_net("[soft]\ntemperature=2", 2).layers[0]
    np.testing.assert_allclose(run(hot, np.array([[0, 2 * ln3]], np.float32)), [[0.25, 0.75]], rtol=1e-6)


def test_softmax_is_over_contiguous_chunks_of_the_flattened_image():
    rng = np.random.default_rng(0)
    net = image_net("[softmax]\ngroups=3\ntemperature=0.5", 3, 5, 2)   # 30 values -> 3 chunks of 10
    assert net.shapes[0] == Shape.flat(30) and not net.shapes[0].image
    x = rng.standard_normal((2, 2, 5, 3)).astype(np.float32) * 3
    got = net.forward(x).reshape(2, 30)
    np.testing.assert_allclose(got, softmax_groups(x, 3, 0.5), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.reshape(2, 3, 10).sum(axis=2), 1, rtol=1e-5)


def test_softmax_matches_darknet_oracle(shared_dir):
    """The last layer of darknet.cfg as run by the real Darknet: its input and its output."""
    case = shared_dir / "darknet-oracle" / "forward" / "darknet" / "dog"
    x = np.load(case / "layer_014.npy").reshape(1, 1000)
    layer = vector_net("[softmax]\ngroups=1", 1000).layers[0]
    np.testing.assert_allclose(run(layer, x, train=False), np.load(case / "output.npy")[None], rtol=1e-6,
                               atol=1e-9)


def test_softmax_summary_and_cfg_errors():
    net = vector_net("[softmax]", 10)
    assert net.layers[0].summary_row() == "softmax                                          10"
    with pytest.raises(CfgError) as err:
        vector_net("[softmax]\ngroups=3", 10)
    assert ":5:" in str(err.value)
    tree = vector_net("[softmax]\n\ntree=data/9k.tree", 10)     # builds: shapes and sizes are known
    assert tree.shapes[0] == Shape.flat(10)
    with pytest.raises(UnsupportedError) as err:
        tree.forward(np.zeros((1, 10), np.float32))
    assert ":6:" in str(err.value)


def test_softmax_cost_counts_minus_log_p_wherever_truth_is_nonzero():
    rng = np.random.default_rng(1)
    layer = vector_net("[softmax]\ngroups=2", 6).layers[0]
    x = rng.standard_normal((2, 6)).astype(np.float32)
    truth = np.zeros((2, 6), np.float32)
    truth[0, 1] = 1
    truth[0, 4] = 0.5       # a weight Darknet ignores: still -log(p)
    truth[1, 2] = 1
    p = run(layer, x, truth)
    assert layer.cost == pytest.approx(softmax_cost(p, truth), rel=1e-5)
    run(layer, x)           # the truth is used by one forward pass only
    assert layer.cost is None


def test_softmax_loss_gradient_is_d_cost_dx():
    rng = np.random.default_rng(2)
    layer = vector_net("[softmax]\ngroups=2", 8).layers[0]
    x = rng.standard_normal((2, 8)).astype(np.float32)
    truth = np.zeros((2, 8), np.float32)
    truth[0, [1, 6]] = 1
    truth[1, [3, 4]] = 1    # one-hot per group: Darknet's p - t is then the exact gradient

    def cost():
        run(layer, x, truth)
        return layer.cost

    numeric = numeric_gradient(cost, x, range(x.size), 1e-3).reshape(2, 8)
    p = run(layer, x, truth)
    np.testing.assert_allclose(input_gradient(layer, x), p - truth, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(input_gradient(layer, x), numeric, rtol=2e-2, atol=2e-3)


def test_softmax_without_loss_passes_the_gradient_straight_through():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5)).astype(np.float32)
    dy = rng.standard_normal((2, 5)).astype(np.float32)
    plain = vector_net("[softmax]", 5).layers[0]
    run(plain, x)
    np.testing.assert_array_equal(input_gradient(plain, x, dy), dy)
    noloss = vector_net("[softmax]\nnoloss=1", 5).layers[0]
    run(noloss, x, np.eye(5, dtype=np.float32)[:2])
    assert noloss.cost == 0.0     # no loss, but still one of the layers the network's cost averages over
    np.testing.assert_array_equal(input_gradient(noloss, x, dy), dy)


def test_softmax_then_cost_gives_one_plus_scale_times_p_minus_t():
    rng = np.random.default_rng(4)
    net = vector_net("[softmax]\n\n[cost]\nscale=0.5", 4)
    softmax, cost = net.layers
    assert net.output_index == 0 and cost.cost_only and not softmax.cost_only
    x = rng.standard_normal((2, 4)).astype(np.float32)
    truth = np.eye(4, dtype=np.float32)[[2, 0]]
    p = run(softmax, x, truth)
    cost.allocate(2)
    cost.set_truth(truth)
    cost.forward([softmax.output], True)
    d_softmax = np.zeros_like(softmax.output)
    cost.backward(np.zeros_like(cost.output), [softmax.output], [d_softmax])
    np.testing.assert_allclose(input_gradient(softmax, x, d_softmax), 1.5 * (p - truth), rtol=1e-6, atol=1e-7)
    # through the network: the loss is the mean of the two layers' costs; inference skips the cost layer
    out = net.forward(x.reshape(2, 4, 1, 1), train=True, truth=truth)
    expected = (softmax_cost(p, truth) + float(np.sum(cost_error("sse", p, truth)))) / 2
    assert net.cost() == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(net.forward(x.reshape(2, 4, 1, 1)).reshape(2, 4), p, rtol=1e-6)
    assert out.shape == (2, 4, 1, 1)


# ---- cost -------------------------------------------------------------------------------------------------

def cost_layer(kind, n, scale=1.0):
    return vector_net(f"[cost]\ntype={kind}\nscale={scale}", n).layers[0]


def test_cost_smooth_l1_hand_values_and_sign_bug():
    layer = cost_layer("smooth", 4, scale=2)
    pred = np.zeros((1, 4), np.float32)
    truth = np.array([[0.5, -0.5, 2.0, -3.0]], np.float32)    # d = truth - pred
    errors = run(layer, pred, truth)
    np.testing.assert_allclose(errors, [[0.25, 0.25, 3.0, 5.0]])  # d^2 inside, 2|d| - 1 outside
    assert layer.cost == pytest.approx(8.5)
    # Darknet's delta: d inside, but -1 for d >= 1 and +1 for d <= -1 (the wrong sign); dx = -scale * delta
    np.testing.assert_allclose(input_gradient(layer, pred), [[-1.0, 1.0, 2.0, -2.0]])
    # the true derivative of the outer branch has the opposite sign
    def total():
        run(layer, pred, truth)
        return layer.cost
    numeric = numeric_gradient(total, pred, [2, 3], 1e-3)
    assert np.all(np.sign(numeric) == -np.sign(input_gradient(layer, pred)[0, 2:]))


def test_cost_sse_l1_and_masked_hand_values():
    pred = np.array([[1.0, 2.0, -1.0]], np.float32)
    truth = np.array([[0.0, 4.0, -1234.0]], np.float32)
    sse = cost_layer("sse", 3)
    np.testing.assert_allclose(run(sse, pred, truth), [[1.0, 4.0, (1233.0) ** 2]])
    np.testing.assert_allclose(input_gradient(sse, pred), [[1.0, -2.0, 1233.0]])   # p - t
    l1 = cost_layer("L1", 3)
    np.testing.assert_allclose(run(l1, pred, truth), [[1.0, 2.0, 1233.0]])
    np.testing.assert_allclose(input_gradient(l1, pred), [[1.0, -1.0, 1.0]])       # -sign(t - p)
    masked = cost_layer("masked", 3)
    np.testing.assert_allclose(run(masked, pred, truth), [[1.0, 4.0, 0.0]])
    np.testing.assert_allclose(input_gradient(masked, pred), [[1.0, -2.0, 0.0]])
    assert masked.cost == pytest.approx(5.0)


@pytest.mark.parametrize("kind,factor", [("sse", 0.5), ("seg", 0.5), ("wgan", 0.5), ("L1", 1.0)])
def test_cost_gradient_against_finite_differences(kind, factor):
    """Darknet's cost gradients are a fixed multiple of d(cost)/d(pred): half for squared errors."""
    rng = np.random.default_rng(5)
    layer = cost_layer(kind, 6, scale=0.7)
    pred = rng.standard_normal((2, 6)).astype(np.float32)
    truth = rng.standard_normal((2, 6)).astype(np.float32)
    errors = run(layer, pred, truth)
    np.testing.assert_allclose(errors, cost_error(kind, pred, truth), rtol=1e-5)
    analytic = input_gradient(layer, pred)

    def total():
        run(layer, pred, truth)
        return layer.cost

    numeric = numeric_gradient(total, pred, range(pred.size), 1e-3).reshape(2, 6)
    np.testing.assert_allclose(analytic, 0.7 * factor * numeric, rtol=2e-2, atol=2e-3)


def test_cost_layer_shape_summary_and_unknown_type():
    net = image_net("[cost]", 2, 3, 4)
    assert net.shapes[0] == Shape.flat(24)
    assert net.layers[0].summary_row() == "cost                                             24"
    with pytest.raises(CfgError) as err:
        vector_net("[cost]\n\ntype=huber", 3)
    assert ":6:" in str(err.value)


# ---- logistic ---------------------------------------------------------------------------------------------

def test_logistic_forward_cost_and_gradient():
    rng = np.random.default_rng(6)
    net = image_net("[logistic]", 3, 1, 2)
    layer = net.layers[0]
    assert net.shapes[0] == Shape.flat(6)
    assert layer.summary_row() == "logistic x entropy                                6"
    x = rng.standard_normal((2, 2, 1, 3)).astype(np.float32)
    truth = rng.uniform(0, 1, (2, 6)).astype(np.float32)
    p = run(layer, x, truth)
    np.testing.assert_allclose(p, logistic(x.reshape(2, 6)), rtol=1e-6)
    assert layer.cost == pytest.approx(logistic_cost(p, truth), rel=1e-5)

    def total():
        run(layer, x, truth)
        return layer.cost

    numeric = numeric_gradient(total, x, range(x.size), 1e-3).reshape(2, 6)
    run(layer, x, truth)
    np.testing.assert_allclose(input_gradient(layer, x), p - truth, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(input_gradient(layer, x), numeric, rtol=2e-2, atol=2e-3)
    run(layer, x)
    assert layer.cost is None
    dy = rng.standard_normal((2, 6)).astype(np.float32)
    np.testing.assert_array_equal(input_gradient(layer, x, dy), dy)   # Darknet: straight through
