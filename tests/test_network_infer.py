"""Network.infer, the lean inference pass of detect/predict/segment: layers write into buffers they share once
their readers have run. Oracle: Network.forward on the same network and input (every layer keeps its own
buffer): the output and every output no later layer reads must be bit for bit the same, and a forward or
training pass afterwards must see each layer's own buffer again."""
import numpy as np
import pytest

from darknetpy.fusion import ResidualFusion, find_residual_fusions
from darknetpy.kernels import pointwise
from darknetpy.layers import conv_engines
from darknetpy.network import load_cfg

from builders import quiet_net

# conv -> dropout (returns its input at inference) -> conv -> shortcut to before the dropout -> route of two
# -> upsample -> yolo head, a second head from an earlier layer
HEAD = """[convolutional]
filters=14
size=1
activation=linear

[yolo]
mask=0,1
anchors=2,3,4,5
classes=2
num=2
"""
TEXT = """[net]
width=16
height=16
channels=3

[convolutional]
filters=8
size=3
pad=1
activation=leaky

[dropout]
probability=.5

[convolutional]
filters=8
size=1
activation=leaky

[shortcut]
from=-3
activation=linear

[convolutional]
filters=8
size=3
stride=2
pad=1
activation=leaky

[convolutional]
filters=8
size=3
pad=1
activation=leaky

[route]
layers=-1,-2

{head}
[route]
layers=-5

[upsample]
stride=2

[route]
layers=-1,0

{head}""".format(head=HEAD)


def sinks(network):
    read = {j for layer in network.layers[:network.output_index + 1] for j in layer.input_indices()}
    return [i for i in range(network.output_index + 1) if i not in read]


def inference_reads(network):
    """By layer: what its step in `infer` reads, None for a layer that does not run (fused into a later one:
    darknetpy/fusion.py, whose step reads the fused layers' inputs)."""
    return [None if step is None else step[0] for step in network.inference_steps()]


def last_steps(network):
    """By layer: the last step at which its output is read at inference, a pass-through layer's readers
    counting as its input's; outputs no later layer reads (and the output layer's) live to the end."""
    count = network.output_index + 1
    last = [i for i in range(count)]
    for i in sinks(network) + [network.output_index]:
        last[i] = count
    reads = inference_reads(network)
    for i in range(count - 1, -1, -1):
        for j in reads[i] or []:
            if j >= 0:
                last[j] = max(last[j], last[i] if network.layers[i].inference_returns_input else i)
    return last


def check_infer_matches_forward(network, x):
    network.initialize(7)
    want = network.forward(x).copy()
    own = [layer.output for layer in network.layers]
    heads = {i: network.outputs[i].copy() for i in sinks(network)}
    got = network.infer(x)
    np.testing.assert_array_equal(got, want)
    for i, value in heads.items():
        np.testing.assert_array_equal(network.outputs[i], value)
    lent = sum(not np.shares_memory(layer.output, mine) for layer, mine in zip(network.layers, own))
    last = last_steps(network)
    reads = inference_reads(network)
    for i, layer in enumerate(network.layers[:network.output_index + 1]):
        if layer.inference_returns_input or reads[i] is None:
            assert reads[i] is not None or network.outputs[i] is None
            continue
        for j in range(i):   # no layer writes into memory holding an output still to be read
            if last[j] >= i and not network.layers[j].inference_returns_input:
                assert not np.shares_memory(layer.output, network.layers[j].output), (i, j)
    again = network.forward(x)
    assert all(layer.output is mine for layer, mine in zip(network.layers, own))
    np.testing.assert_array_equal(again, want)
    return lent


def test_infer_shares_buffers_and_gives_forwards_results():
    network = quiet_net(TEXT)
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    assert check_infer_matches_forward(network, x) >= 2     # buffers are really shared
    # whatever the shapes: a smaller output after the stride-2 layer goes into memory a full-size layer wrote
    network.infer(x)
    smaller = [layer.output for layer in network.layers[4:6]]
    assert all(out.shape[2:] == (8, 8) for out in smaller)
    assert any(np.shares_memory(small, layer.output) for small in smaller for layer in network.layers[:4])
    # the two heads and the layers after each: the dropout's input stayed alive for the shortcut
    assert sinks(network) == [8, 13]


# Built so that a wrong plan changes the result: the dropout's output (layer 0's buffer) is read again by
# the route at 4 after layer 2 (same shape) has run, and the 3x3/1 max pool (not computable in place) is
# the last reader of layer 2's buffer.
TIGHT = """[net]
width=12
height=10
channels=4

[convolutional]
filters=6
size=3
pad=1
activation=leaky

[dropout]
probability=.5

[convolutional]
filters=6
size=3
pad=1
activation=leaky

[maxpool]
size=3
stride=1

[route]
layers=1

[route]
layers=-1,-2
"""


def test_infer_keeps_a_passed_through_input_alive_and_never_writes_over_what_a_layer_reads():
    network = quiet_net(TIGHT)
    x = np.random.default_rng(3).standard_normal((1, 4, 10, 12)).astype(np.float32)
    assert check_infer_matches_forward(network, x) >= 1


def test_training_after_infer_uses_each_layers_own_buffer():
    network = quiet_net(TEXT)
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    network.initialize(3)
    network.layers[1].seed(5)     # the dropout's training mask
    network.infer(x)
    truth = np.zeros((1, 90 * 5), np.float32)
    truth[0, :5] = [0.5, 0.5, 0.2, 0.3, 1]
    network.forward(x, train=True, truth=truth)
    outputs = [o.copy() for o in network.outputs]
    reference = quiet_net(TEXT)
    reference.initialize(3)
    reference.layers[1].seed(5)
    reference.forward(x, train=True, truth=truth)
    for got, want in zip(outputs, reference.outputs):
        np.testing.assert_array_equal(got, want)


def test_a_layer_returning_a_foreign_array_is_refused_when_buffers_are_shared():
    network = quiet_net(TEXT)
    layer = network.layers[4]
    original = layer.forward
    layer.forward = lambda xs, train: original(xs, train).copy()
    x = np.zeros((1, 3, 16, 16), np.float32)
    network.forward(x)    # each layer's own buffer: nothing to follow
    with pytest.raises(RuntimeError, match=r"layer 4 \[convolutional\]"):
        network.infer(x)


@pytest.mark.shared
@pytest.mark.parametrize("name,size", [("cfg-corpus/darknet53.cfg", 64), ("cfg-corpus/yolov3-spp.cfg", 64),
                                       ("cfg-alexeyab/yolov4-tiny.cfg", 64), ("cfg-corpus/resnext50.cfg", 64),
                                       ("models/yolo-fastest-1.1/yolo-fastest-1.1-xl.cfg", 64),
                                       ("cfg-corpus/darknet19.cfg", 64), ("cfg-corpus/cifar.cfg", 28)])
def test_infer_matches_forward_on_real_networks(shared_dir, name, size):
    network = load_cfg(shared_dir / name, width=size, height=size)
    s = network.input_shape
    x = np.random.default_rng(2).random((1, s.c, s.h, s.w), np.float32)
    lent = check_infer_matches_forward(network, x)
    assert lent >= 3


def residual_block(convolution: str, shortcut: str = "activation=linear") -> str:
    """A 16-filter [convolutional] and a [shortcut] adding the layer before it."""
    return f"[convolutional]\nfilters=16\n{convolution}\n\n[shortcut]\nfrom=-2\n{shortcut}\n\n"


# Two residual blocks as the depthwise-separable networks end them: a linear 1x1 layer, a [dropout], then
# the [shortcut] (layers 2-4; the shortcut's output must not go into the buffer of layer 1, which the fused
# step reads), and a leaky 1x1 layer straight into one (5-6); then a 1x1 layer whose output a route also
# reads (7-9), a 3x3 layer (10-11), a scaled sum (12-13), a leaky sum (14-15), a 1x1 layer with an
# activation its kernel does not apply (16-17): none of those five can be fused.
RESIDUAL = """[net]
width=20
height=16
channels=3

[convolutional]
filters=16
size=3
pad=1
activation=leaky

[convolutional]
filters=16
size=3
pad=1
activation=leaky

[convolutional]
filters=16
size=1
activation=linear

[dropout]
probability=.5

[shortcut]
from=-4
activation=linear

""" + residual_block("size=1\nbatch_normalize=1\nactivation=leaky") + residual_block("size=1\nactivation=linear") \
    + "[route]\nlayers=-2\n\n" + residual_block("size=3\npad=1\nactivation=linear") \
    + residual_block("size=1\nactivation=linear", "alpha=0.5\nactivation=linear") \
    + residual_block("size=1\nactivation=linear", "activation=leaky") + residual_block("size=1\nactivation=mish")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", [1, 3])
def test_a_shortcut_is_computed_by_the_1x1_layer_before_it(monkeypatch, threads, batch):
    monkeypatch.setattr(conv_engines, "thread_count", lambda: threads)
    monkeypatch.setattr(pointwise, "thread_count", lambda: threads)
    monkeypatch.setattr(pointwise, "PARALLEL_MIN_MACS", 0)   # shared out at 2 threads, as large layers are
    network = quiet_net(RESIDUAL)
    x = np.random.default_rng(4).standard_normal((batch, 3, 16, 20)).astype(np.float32)
    network.allocate(batch)
    assert find_residual_fusions(network.layers, network.output_index) == [
        ResidualFusion(convolution=2, shortcut=4, residual=0, passed=(3,)),
        ResidualFusion(convolution=5, shortcut=6, residual=4, passed=())]
    check_infer_matches_forward(network, x)
    network.infer(x)
    assert [i for i, out in enumerate(network.outputs) if out is None] == [2, 3, 5]
    # the fused convolution's input is read by the shortcut's step: its buffer is free for the layers after it
    assert any(np.shares_memory(network.layers[1].output, layer.output) for layer in network.layers[5:])


@pytest.mark.parametrize("width,height", [(5, 3), (20, 10)])
def test_no_fusion_unless_the_1x1_kernel_can_add_the_residual(width, height):
    """Maps under one vector, whose 1x1 layers go to GEMM, or maps whose last tile of pixels is narrower than
    a vector (20x10: 200 = 3 x 64 + 8, see pointwise.adds_residual), run every layer (the same values)."""
    network = quiet_net(RESIDUAL.replace("height=16", f"height={height}").replace("width=20", f"width={width}"))
    network.allocate(2)
    assert find_residual_fusions(network.layers, network.output_index) == []
    x = np.random.default_rng(5).standard_normal((2, 3, height, width)).astype(np.float32)
    check_infer_matches_forward(network, x)
