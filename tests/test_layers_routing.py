import numpy as np
import pytest

from darknetpy.errors import CfgError
from darknetpy.layers.base import Shape
from darknetpy.network import network_from_text

from gradcheck import check_layer_gradients
from naive_routing import leaky, route, shortcut

# Three layers of different shapes from a 4x4x4 input, so that the section appended after them starts on
# line 16 and its first two options are on lines 17 and 18:
#   0: 4x4x4 (identity max pool)   1: 2x2x16 (reorg)   2: 4x4x16 (upsample)
ROUTE_PREFIX = ("[net]\nwidth=4\nheight=4\nchannels=4\n\n"
                "[maxpool]\nsize=1\nstride=1\n\n"
                "[reorg]\nstride=2\n\n"
                "[upsample]\nstride=2\n\n")


def route_net(options: str):
    return network_from_text(ROUTE_PREFIX + "[route]\n" + options)


def random_inputs(shapes, seed=0, batch=2):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch, s.c, s.h, s.w)).astype(np.float32) for s in shapes]


# ---- [route] -------------------------------------------------------------------------------------------
def test_indices_resolve_relative_and_absolute():
    net = route_net("layers=-1,0,-2")
    layer = net.layers[3]
    assert layer.input_indices() == [2, 0, 1]
    assert layer.summary_row() == "route  2 0 1"


def test_same_spatial_size_concatenates_channels():
    net = route_net("layers=0,-1")
    assert net.shapes[3] == Shape(20, 4, 4)
    x = random_inputs([net.input_shape])[0]
    got = net.forward(x)
    np.testing.assert_array_equal(got, np.concatenate([net.outputs[0], net.outputs[2]], axis=1))


def test_different_spatial_sizes_give_a_flat_concat():
    net = route_net("layers=0,1")
    assert net.shapes[3] == Shape.flat(64 + 64)
    x = random_inputs([net.input_shape], 1)[0]
    got = net.forward(x)
    assert got.shape == (2, 128, 1, 1)
    np.testing.assert_array_equal(got.reshape(2, -1), route([net.outputs[0], net.outputs[1]]))


@pytest.mark.parametrize("options,shape", [
    ("layers=-1\ngroups=2\ngroup_id=1", Shape(8, 4, 4)),
    ("layers=0,2\ngroups=2\ngroup_id=0", Shape(10, 4, 4)),
    ("layers=0,1\ngroups=4\ngroup_id=3", Shape.flat(32)),
])
def test_alexeyab_groups_take_one_slice_of_each_input(options, shape):
    net = route_net(options)
    layer = net.layers[3]
    assert net.shapes[3] == shape
    x = random_inputs([net.input_shape], 2)[0]
    got = net.forward(x)
    cfg = layer.config
    ref = route([net.outputs[j] for j in layer.input_indices()], cfg.groups, cfg.group_id)
    np.testing.assert_array_equal(got.reshape(2, -1), ref)
    if options.startswith("layers=-1"):
        # the channel group: second half of layer 2's channels
        np.testing.assert_array_equal(got, net.outputs[2][:, 8:])


@pytest.mark.parametrize("options", ["layers=0,-1", "layers=0,1", "layers=-1,-3,1\ngroups=2\ngroup_id=1",
                                     "layers=-1,-1"])
def test_route_gradient(options):
    layer = route_net(options).layers[3]
    xs = random_inputs(layer.in_shapes, 3)
    check_layer_gradients(layer, xs, train=True)


def test_route_summary_row_like_darknet():
    net = network_from_text("[net]\nwidth=4\nheight=4\nchannels=1\n\n" + "[maxpool]\nsize=1\nstride=1\n\n" * 14
                            + "[route]\nlayers=-1")
    assert net.layers[14].summary_row() == "route  13"


@pytest.mark.parametrize("options,line,words", [
    ("layers=-4", 17, "before the first layer"),
    ("layers=0,4", 17, "forward"),
    ("layers=3", 17, "its own output"),
    ("layers=-1\ngroups=3", 18, "groups=3"),
    ("layers=-1\ngroups=2\ngroup_id=2", 19, "group_id=2"),
    ("groups=1", 16, "layers"),
])
def test_route_errors_point_at_the_line(options, line, words):
    with pytest.raises(CfgError) as err:
        route_net(options)
    assert f":{line}:" in str(err.value)
    assert words in str(err.value)


def test_yolov4_tiny_route_groups_shapes(shared_dir):
    """AlexeyAB prints these shapes for yolov4-tiny at 416x416 (route 2 1/2 -> 104x104x32, ...)."""
    text = (shared_dir / "cfg-alexeyab" / "yolov4-tiny.cfg").read_text()
    net = network_from_text(text[:text.index("[yolo]")])
    expected = {3: (104, 32), 6: (104, 64), 8: (104, 128), 9: (52, 128), 11: (52, 64), 14: (52, 128),
                16: (52, 256), 17: (26, 256), 19: (26, 128), 22: (26, 256), 24: (26, 512), 25: (13, 512)}
    for index, (side, channels) in expected.items():
        assert net.shapes[index] == Shape(channels, side, side), index
    assert net.layers[3].summary_row() == "route  2  1/2"


def test_yolov3_tiny_pooling_shapes(shared_dir):
    text = (shared_dir / "cfg-corpus" / "yolov3-tiny.cfg").read_text()
    net = network_from_text(text[:text.index("[yolo]")])
    assert net.shapes[10] == Shape(512, 13, 13)
    assert net.shapes[11] == Shape(512, 13, 13)  # size=2 stride=1 keeps the size
    assert net.shapes[9] == Shape(256, 13, 13)


# ---- [shortcut] ----------------------------------------------------------------------------------------
# 8x8x3 input; layers 0 and 1 are 1x1 convolutions (lines 6-10 and 12-16); without `extra` the shortcut
# section is on line 18 and its options on lines 19 and 20.
def shortcut_net(first: str, second: str, options: str, extra: str = ""):
    conv = "[convolutional]\nsize=1\nactivation=linear\n"
    text = (f"[net]\nwidth=8\nheight=8\nchannels=3\n\n{conv}{first}\n\n{conv}{second}\n\n{extra}"
            f"[shortcut]\n{options}")
    return network_from_text(text)


SHAPE_CASES = {
    "same": ("filters=4\nstride=1", "filters=4\nstride=1", ""),
    "from_bigger": ("filters=4\nstride=1", "filters=6\nstride=2", ""),                      # 8x8x4 into 4x4x6
    "from_smaller": ("filters=6\nstride=2", "filters=3\nstride=1", "[upsample]\nstride=2\n\n"),  # 4x4x6 into 8x8x3
}


def build_shortcut(case: str, options: str):
    first, second, extra = SHAPE_CASES[case]
    net = shortcut_net(first, second, options, extra)
    return net, net.layers[-1]


def test_hand_case_from_bigger_adds_strided_values_to_common_channels():
    net = network_from_text("[net]\nwidth=4\nheight=4\nchannels=2\n\n[maxpool]\nsize=1\nstride=1\n\n"
                            "[convolutional]\nfilters=3\nsize=1\nstride=2\nactivation=linear\n\n"
                            "[shortcut]\nfrom=0")
    layer = net.layers[2]
    assert net.shapes[2] == Shape(3, 2, 2)
    added = np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4)
    prev = np.full((1, 3, 2, 2), 100, np.float32)
    layer.allocate(1)
    got = layer.forward([prev, added], False)
    np.testing.assert_array_equal(got[0, 0], [[100, 102], [108, 110]])
    np.testing.assert_array_equal(got[0, 1], [[116, 118], [124, 126]])
    np.testing.assert_array_equal(got[0, 2], [[100, 100], [100, 100]])  # no channel 2 to add


@pytest.mark.parametrize("case", list(SHAPE_CASES))
@pytest.mark.parametrize("options", ["from=0", "from=0\nalpha=0.5\nbeta=2\nactivation=leaky"])
def test_shortcut_matches_naive(case, options):
    net, layer = build_shortcut(case, options)
    assert layer.input_indices() == [layer.index - 1, 0]
    assert net.shapes[-1] == layer.in_shapes[0]
    prev, added = random_inputs(layer.in_shapes, 4)
    layer.allocate(2)
    got = layer.forward([prev, added], False)
    cfg = layer.config
    ref = shortcut(prev, added, cfg.alpha, cfg.beta)
    if cfg.activation == "leaky":
        ref = leaky(ref)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", list(SHAPE_CASES))
@pytest.mark.parametrize("options", ["from=0\nactivation=logistic", "from=0\nalpha=0.5\nbeta=2",
                                     "from=-2\nactivation=mish\nbeta=-1.5"])
def test_shortcut_gradient(case, options):
    net, layer = build_shortcut(case, options)
    xs = random_inputs(layer.in_shapes, 5)
    check_layer_gradients(layer, xs, train=True)


def test_shortcut_in_a_network_reads_previous_and_from_layers():
    net, layer = build_shortcut("same", "from=-2")
    x = random_inputs([net.input_shape], 6)[0]
    got = net.forward(x)
    np.testing.assert_allclose(got, net.outputs[1] + net.outputs[0], rtol=1e-6)


def test_shortcut_summary_row():
    net, layer = build_shortcut("from_bigger", "from=0")
    assert layer.summary_row() == "res    0                   8 x   8 x   4   ->     4 x   4 x   6"


@pytest.mark.parametrize("options,line,words", [
    ("from=-1,-2", 19, "not supported"),
    ("from=-5", 19, "before the first layer"),
    ("from=2", 19, "own output"),
    ("from=7", 19, "forward"),
    ("from=0\nweights_type=per_channel", 20, "not supported"),
    ("from=0\nweights_normalization=softmax", 20, "not supported"),
    ("activation=linear", 18, "from"),
])
def test_shortcut_errors_point_at_the_line(options, line, words):
    with pytest.raises(CfgError) as err:
        shortcut_net("filters=4\nstride=1", "filters=4\nstride=1", options)
    assert f":{line}:" in str(err.value)
    assert words in str(err.value)


def test_shortcut_refuses_different_factors_along_x_and_y():
    text = ("[net]\nwidth=8\nheight=4\nchannels=1\n\n[maxpool]\nsize=1\nstride=1\n\n"
            "[maxpool]\nsize=2\nstride_x=2\nstride_y=1\n\n[shortcut]\nfrom=0")
    with pytest.raises(CfgError) as err:
        network_from_text(text)
    assert ":16:" in str(err.value)


@pytest.mark.parametrize("threaded", [False, True])
@pytest.mark.parametrize("case", list(SHAPE_CASES))
def test_threaded_shortcut_matches_naive(threaded, case, monkeypatch):
    from darknetpy.kernels import pooling as shared_policy
    monkeypatch.setattr(shared_policy, "PARALLEL_MIN_ELEMENTS", 0 if threaded else 1 << 62)
    net, layer = build_shortcut(case, "from=0\nalpha=0.5\nbeta=2")
    prev, added = random_inputs(layer.in_shapes, 11)
    layer.allocate(2)
    got = layer.forward([prev, added], False)
    np.testing.assert_allclose(got, shortcut(prev, added, 0.5, 2.0), rtol=1e-6, atol=1e-6)
    dy = np.ones_like(got)
    dprev, dadd = np.zeros_like(prev), np.zeros_like(added)
    layer.backward(dy, [prev, added], [dprev, dadd])
    # with dy = 1: the previous layer gets alpha where the added layer was mixed in and 1 elsewhere; the added
    # layer gets beta exactly at the positions the forward read
    mixed = shortcut(np.zeros_like(prev), np.ones_like(added), 1.0, 1.0)
    np.testing.assert_allclose(dprev, np.where(mixed > 0, 0.5, 1.0))
    assert np.count_nonzero(dadd) == np.count_nonzero(mixed)
    np.testing.assert_allclose(dadd[dadd != 0], 2.0)
