"""[connected]: forward against a slow reference and PyTorch, batch norm, weights file order, gradients."""
import struct

import numpy as np
import pytest

from darknetpy.errors import CfgError
from darknetpy.layers.base import Shape
from darknetpy.weights import read_weights

from gradcheck import check_layer_gradients
from naive_activation import activate
from naive_connected import batchnorm_inference, batchnorm_train, connected
from builders import image_net, vector_net


def randomise(layer, rng):
    layer.weights[...] = rng.standard_normal(layer.weights.shape) * 0.5
    layer.biases[...] = rng.standard_normal(layer.biases.shape)
    if layer.bn is not None:
        layer.bn.scales[...] = rng.uniform(0.5, 1.5, layer.bn.scales.shape)
        layer.bn.rolling_mean[...] = rng.standard_normal(layer.bn.scales.shape)
        layer.bn.rolling_var[...] = rng.uniform(0.5, 2.0, layer.bn.scales.shape)


def test_textbook_parameter_counts():
    alex = image_net("[convolutional]\nfilters=96\nsize=11\nstride=4\nactivation=relu", 227, 227, 3)
    assert alex.layers[0].parameter_count() == 34944
    one = image_net("[convolutional]\nfilters=1\nsize=3\nactivation=linear", 9, 9, 3)
    two = image_net("[convolutional]\nfilters=2\nsize=3\nactivation=linear", 9, 9, 3)
    assert one.layers[0].parameter_count() == 28
    assert two.layers[0].parameter_count() == 56
    fc = vector_net("[connected]\noutput=256\nbatch_normalize=1", 1024)
    assert fc.layers[0].parameter_count() == 256 + 1024 * 256 + 3 * 256


def test_output_is_a_1x1_image_of_flattened_input():
    net = image_net("[connected]\noutput=7\n\n[convolutional]\nfilters=2\nsize=1\nactivation=linear", 5, 3, 2)
    assert net.shapes[0] == Shape(7, 1, 1)
    assert net.layers[0].inputs == 30
    assert net.shapes[1] == Shape(2, 1, 1)
    assert net.layers[0].summary_row() == "connected                              30  ->     7"


@pytest.mark.parametrize("activation", ["logistic", "leaky", "mish"])
def test_forward_matches_naive(activation):
    rng = np.random.default_rng(0)
    net = image_net(f"[connected]\noutput=5\nactivation={activation}", 3, 5, 2)
    layer = net.layers[0]
    randomise(layer, rng)
    x = rng.standard_normal((2, 2, 5, 3)).astype(np.float32)
    got = net.forward(x)
    assert got.shape == (2, 5, 1, 1)
    ref = activate(activation, connected(x, layer.weights, layer.biases))
    np.testing.assert_allclose(got.reshape(2, 5), ref, rtol=1e-5, atol=1e-5)


def test_forward_matches_torch_linear():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    net = vector_net("[conn]\noutput=9\nactivation=linear", 13)
    layer = net.layers[0]
    randomise(layer, rng)
    x = rng.standard_normal((3, 13)).astype(np.float32)
    got = net.forward(x).reshape(3, 9)
    ref = torch.nn.functional.linear(torch.from_numpy(x), torch.from_numpy(layer.weights),
                                     torch.from_numpy(layer.biases)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_batchnorm_inference_and_training():
    rng = np.random.default_rng(2)
    net = vector_net("[connected]\noutput=4\nbatch_normalize=1\nactivation=linear", 6)
    layer = net.layers[0]
    randomise(layer, rng)
    x = rng.standard_normal((5, 6)).astype(np.float32)
    raw = connected(x, layer.weights, np.zeros(4))
    bn = layer.bn
    ref = batchnorm_inference(raw, bn.scales, layer.biases, bn.rolling_mean, bn.rolling_var)
    np.testing.assert_allclose(net.forward(x).reshape(5, 4), ref, rtol=1e-5, atol=1e-5)

    rolling_mean = bn.rolling_mean.astype(np.float64)
    ref, mean, var = batchnorm_train(raw, bn.scales, layer.biases)
    np.testing.assert_allclose(net.forward(x, train=True).reshape(5, 4), ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn.rolling_mean, 0.99 * rolling_mean + 0.01 * mean, rtol=1e-5, atol=1e-6)


def test_weight_arrays_put_batchnorm_after_weights():
    net = vector_net("[connected]\noutput=3\nbatch_normalize=1", 4)
    layer = net.layers[0]
    arrays = layer.weight_arrays()
    assert [a.size for a in arrays] == [3, 12, 3, 3, 3]
    assert arrays[0] is layer.biases and arrays[1] is layer.weights and arrays[2] is layer.bn.scales
    skipped = vector_net("[connected]\noutput=3\nbatch_normalize=1\ndontloadscales=1", 4).layers[0]
    assert [a.size for a in skipped.weight_arrays()] == [3, 12]
    assert [a.size for a in skipped.weight_arrays(saving=True)] == [3, 12, 3, 3, 3]


def test_transposed_file_is_read_as_inputs_by_outputs(tmp_path):
    net = vector_net("[connected]\noutput=3\nactivation=linear", 4)
    stored = np.arange(12, dtype=np.float32).reshape(4, 3)  # inputs x outputs, as old files hold it
    biases = np.array([1, 2, 3], np.float32)
    path = tmp_path / "old.weights"
    path.write_bytes(struct.pack("<iiii", 0, 1001, 0, 0) + biases.tobytes() + stored.tobytes())
    read_weights(net, path)
    np.testing.assert_array_equal(net.layers[0].weights, stored.T)
    np.testing.assert_array_equal(net.layers[0].biases, biases)


@pytest.mark.parametrize("text,train,batch", [
    ("output=4\nactivation=logistic", False, 2),
    ("output=4\nactivation=mish", True, 3),
    # Darknet's BN backward divides the variance term by N where its forward used N - 1, so it is the true
    # gradient only up to N/(N-1): a large batch keeps that within the tolerance (spatial size is 1 here)
    ("output=4\nactivation=tanh\nbatch_normalize=1", True, 64),
])
def test_gradients(text, train, batch):
    rng = np.random.default_rng(3)
    net = image_net("[connected]\n" + text, 3, 2, 2)
    layer = net.layers[0]
    randomise(layer, rng)
    x = rng.standard_normal((batch, 2, 2, 3)).astype(np.float32)
    check_layer_gradients(layer, [x], train=train)


def test_invalid_output_points_at_its_line():
    with pytest.raises(CfgError) as err:
        vector_net("[connected]\nactivation=linear\noutput=0", 4)
    assert ":6:" in str(err.value)


def test_training_matches_darknet_oracle(shared_dir):
    """conv -> connected(BN) -> connected -> softmax -> cost, trained by the real Darknet for 5 updates.
    Forward losses and every parameter after each SGD step (spec §6.3, written out here) must agree."""
    import json

    from darknetpy.network import load_cfg

    case = shared_dir / "darknet-oracle" / "train" / "fc"
    net = load_cfg(case / "fc.cfg")
    read_weights(net, case / "init.weights")
    x, truth = np.load(case / "X.npy"), np.load(case / "Y.npy")
    batch, momentum, decay = 4, np.float32(0.9), np.float32(1e-4)
    velocity = {id(p.value): np.zeros_like(p.value) for _, p in net.params()}
    for step in json.loads((case / "losses.json").read_text()):
        for _, p in net.params():
            p.grad.fill(0)
        net.forward(x, train=True, truth=truth)
        assert net.cost() / batch == pytest.approx(step["loss"], abs=1e-5)
        net.backward()
        rate = np.float32(step["rate"])
        for _, p in net.params():
            v = velocity[id(p.value)]
            v -= p.grad                      # Darknet accumulates the negative gradient
            if p.decay:
                v -= decay * batch * p.value
            p.value += rate / batch * v
            v *= momentum
        for layer in net.layers:
            layer.parameters_changed()
        expected = load_cfg(case / "fc.cfg")
        read_weights(expected, case / f"weights_{step['update']}.weights")
        for mine, theirs in zip(net.layers, expected.layers):
            for a, b in zip(mine.weight_arrays(saving=True), theirs.weight_arrays(saving=True)):
                np.testing.assert_allclose(a, b, atol=1e-5, err_msg=f"{mine.kind} after update {step['update']}")
