"""ONNX export (`darknetpy export`, `darknetpy.export_onnx`), proved by onnxruntime and OpenCV DNN.

Oracles: onnxruntime runs the exported graph, OpenCV DNN reads it; both must reproduce darknetpy's forward
pass (itself checked against Darknet, naive loops and OpenCV's Darknet importer elsewhere) within 1e-4
relative (max |ours - theirs| / max |theirs|), layer by layer: every exported layer tensor is compared, so a
saturated softmax at the end cannot hide an error inside. The corpus runs at reduced input sizes with seeded
weights and batch-norm statistics (gen_weights' file for yolov3-tiny, which also goes through the weights
reader), on one batch of a random image and a real photo (with a symbolic batch size).

Cost: the corpus holds ~1.2 billion weights, so everything per weight counts: the weights are drawn in place
in float32, darknetpy runs one forward pass per network (by im2col + GEMM above WINOGRAD_MAX_WEIGHTS: see
there), and each model is serialised and handed to onnxruntime only after darknetpy's network is dropped
(peak memory).
"""
from __future__ import annotations

import gc
import importlib.util
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED, shared_path

TOLERANCE = 1e-4
RECURRENT_SECTIONS = ("[rnn]", "[gru]", "[lstm]", "[crnn]")
# Darknet networks whose softmax or region layer uses a class hierarchy (tree=): darknetpy does not run
# these, and the export refuses them at the tree= line.
TREE_CFGS = {"darknet9000.cfg", "yolo9000.cfg"}


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is required under CI")
        pytest.skip(f"{module} not installed")


@pytest.fixture(scope="module")
def ort():
    _require("onnx")
    return _require("onnxruntime")


def session(ort_module, model, optimize: bool = True):
    """An onnxruntime session of `model` (a ModelProto or its serialised bytes); optimize=False runs the
    graph as written (no fusions), which also halves the start-up of the large corpus models."""
    options = ort_module.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort_module.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort_module.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    ours = np.asarray(ours, np.float64)
    theirs = np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    finite = np.isfinite(theirs)
    assert np.array_equal(finite, np.isfinite(ours)), "non-finite values differ"
    scale = np.abs(theirs[finite]).max(initial=0.0)
    diff = np.abs(ours[finite] - theirs[finite]).max(initial=0.0)
    return float(diff / scale) if scale > 0 else float(diff)


def load_network(cfg: Path, width: int | None = None, height: int | None = None):
    from darknetpy.network import load_cfg
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # training-only keys of AlexeyAB cfgs
        return load_cfg(cfg, width=width, height=height)


def with_layer_outputs(network, model):
    """The model with every exported layer's tensor as an extra output; returns (model, {index: name})."""
    from onnx import TensorProto, helper

    from darknetpy.export.onnx import layer_tensor_name
    produced = {out for node in model.graph.node for out in node.output}
    existing = {o.name for o in model.graph.output}
    names = {}
    for layer in network.layers:
        name = layer_tensor_name(layer) if _exportable(layer) else None
        if name in produced:
            names[layer.index] = name
            if name not in existing:
                model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return model, names


def _exportable(layer) -> bool:
    from darknetpy.export.layers import EXPORTERS
    return type(layer) in EXPORTERS


def compare_layers(ort_module, network, make_model, x: np.ndarray, optimize: bool = True) -> dict[int, float]:
    """Relative error of every exported layer between onnxruntime and darknetpy on the batch x, for the
    model make_model() returns."""
    expected, model, names = darknetpy_layers_and_model(network, make_model, x)
    return onnxruntime_errors(ort_module, model.SerializeToString(), names, expected, x, optimize)


def darknetpy_layers_and_model(network, make_model, x: np.ndarray):
    """({index: darknetpy's output of layer index on x}, model with those layers as outputs, {index: name}):
    one forward pass, with copies of the outputs, so that the caller may drop the network."""
    network.forward(x)
    model, names = with_layer_outputs(network, make_model())
    return {i: network.outputs[i].copy() for i in names}, model, names


def onnxruntime_errors(ort_module, data: bytes, names: dict[int, str], expected: dict[int, np.ndarray],
                       x: np.ndarray, optimize: bool) -> dict[int, float]:
    results = session(ort_module, data, optimize).run(list(names.values()), {"input": x})
    return {i: relative_error(out, expected[i]) for i, out in zip(names, results)}


def photo_batch(network, photo: str = "dog.jpg") -> np.ndarray:
    """A random image and a real photo (plainly resized to the network input) as one batch of 2."""
    from darknetpy import images
    s = network.input_shape
    rng = np.random.default_rng(7)
    noise = rng.random((s.c, s.h, s.w), dtype=np.float32)
    img = images.resize_image(images.load_image(shared_path("images", photo)), s.w, s.h)
    return np.stack([noise, images.to_channels(img, s.c)]).astype(np.float32)


# ------------------------------------------------------------------------------------ corpus fixtures

def gen_weights_module():
    spec = importlib.util.spec_from_file_location("shared_gen_weights", shared_path("tools", "gen_weights.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def layer_sections(text: str) -> str:
    """The cfg text from its first layer section on (what is left when [net] is taken away)."""
    match = re.search(r"(?m)^\[(?!net\]|network\])", text)
    return text[match.start():] if match else ""


def corpus_cfgs() -> list[str]:
    """Every non-recurrent cfg, except copies whose layers are the same text as an earlier cfg's (e.g.
    darknet53_448 is darknet53 at 448): at the reduced test size they are the same network."""
    found, seen = [], set()
    for folder in ("cfg-corpus", "cfg-alexeyab"):
        for path in sorted((SHARED / folder).glob("*.cfg")):
            text = path.read_text()
            layers = layer_sections(text)
            if not any(section in text for section in RECURRENT_SECTIONS) and layers not in seen:
                seen.add(layers)
                found.append(f"{folder}/{path.name}")
    return found or ["<missing>"]


# reduced sizes: 64x64 unless the cfg needs another (native tiny inputs, large strides or crops)
SIZES = {"jnet-conv.cfg": None, "go.cfg": None, "go.test.cfg": None, "cifar.cfg": None, "cifar.test.cfg": None,
         "alexnet.cfg": 131}
CROP = 56   # crop_width/crop_height of the cfgs that crop 224 out of 256 (vgg-16, strided), at 64x64


def reduced_cfg_text(text: str, size: int | None) -> str:
    if size:
        text = re.sub(r"(?m)^\s*width\s*=.*$", f"width={size}", text, count=1)
        text = re.sub(r"(?m)^\s*height\s*=.*$", f"height={size}", text, count=1)
        text = re.sub(r"(?m)^crop_(width|height)\s*=.*$", rf"crop_\1={CROP}", text)
    return text


def seed_weights(network, seed: int) -> None:
    """Seeded weights with Darknet's scale (He: variance 2 / fan-in, uniform here: drawn in place in float32,
    ~4x faster than normal draws, over a billion weights), biases ~ U(-0.2, 0.2) and gen_weights' batch-norm
    distributions, so that no folded scale or shift is trivial."""
    from darknetpy.layers.epilogue import EpilogueOwner
    rng = np.random.default_rng(seed)
    for layer in network.layers:
        for array in layer.weight_arrays(saving=True):
            flat = array.reshape(-1)
            rng.random(dtype=np.float32, out=flat)
            half_width = np.sqrt(6.0 * array.shape[0] / array.size) if array.ndim > 1 else 0.2
            flat -= np.float32(0.5)
            flat *= np.float32(2 * half_width)
        block = layer.bn if isinstance(layer, EpilogueOwner) else None
        if block is not None:
            block.scales[...] = rng.uniform(0.5, 1.5, block.channels)
            block.rolling_mean[...] = rng.normal(0.0, 0.1, block.channels)
            block.rolling_var[...] = rng.uniform(0.5, 2.0, block.channels)
        layer.parameters_changed()


# cfgs whose weights come from gen_weights through a .weights file (the reader's path, as the oracle's)
GEN_WEIGHTS_CFGS = {"yolov3-tiny.cfg"}

# darknetpy's Winograd engine transforms every 3x3 weight before its first forward pass: on the corpus that is
# ~85% of darknetpy's time (yolov2 at 64x64: 2.5 s -> 0.13 s without it), more than all the rest of this file.
# Larger networks therefore run every convolution by im2col + GEMM (Darknet's own way, and darknetpy's for
# every other convolution); the Winograd engine equals it (test_conv_fast_paths.py) and is kept here on the
# smaller corpus networks, the Yolo-Fastest models and the layer-family networks.
WINOGRAD_MAX_WEIGHTS = 10_000_000


def without_winograd(monkeypatch) -> None:
    from darknetpy.layers.conv_engines import ConvGeometry
    monkeypatch.setattr(ConvGeometry, "winograd_tile", property(lambda geometry: 0))


@pytest.fixture(scope="module")
def corpus_network(tmp_path_factory):
    """(name, weights) -> a built network of the reduced cfg, with seeded weights if asked."""
    from darknetpy.weights import read_weights
    folder = tmp_path_factory.mktemp("export-corpus")

    def get(name: str, weights: bool = True):
        where, file = name.split("/")
        cfg = folder / file
        cfg.write_text(reduced_cfg_text(shared_path(where, file).read_text(), SIZES.get(file, 64)))
        network = load_network(cfg)
        if not weights:
            return network
        if file not in GEN_WEIGHTS_CFGS:
            seed_weights(network, 1)
            return network
        weights = folder / "seeded.weights"
        gen_weights_module().write_weights(str(cfg), str(weights), 1)
        assert weights.stat().st_size == 20 + 4 * network.weights_float_count()
        read_weights(network, weights)
        weights.unlink()
        return network
    return get


# ----------------------------------------------------------------------------------------- the corpus

@pytest.mark.shared
@pytest.mark.parametrize("name", corpus_cfgs())
def test_corpus_network_matches_onnxruntime(name, ort, corpus_network, monkeypatch):
    from darknetpy.errors import CfgError
    from darknetpy.export import build_onnx
    if Path(name).name in TREE_CFGS:
        with pytest.raises(CfgError) as info:
            build_onnx(corpus_network(name, weights=False))
        line = shared_path(name).read_text().splitlines()[info.value.line - 1]
        assert info.value.path.endswith(Path(name).name) and line.startswith("tree=")
        return
    network = corpus_network(name)
    if network.weights_float_count() > WINOGRAD_MAX_WEIGHTS:
        without_winograd(monkeypatch)
    x = photo_batch(network)
    expected, model, names = darknetpy_layers_and_model(network, lambda: build_onnx(network, dynamic_batch=True),
                                                        x)
    output_index = network.output_index
    del network           # its weights go before the model's copies are made; darknetpy's layers hold
    gc.collect()          # reference cycles: without this, networks pile up to 8 GB (70 ms each)
    data = model.SerializeToString()
    del model
    errors = onnxruntime_errors(ort, data, names, expected, x, optimize=False)
    assert output_index in errors
    bad = {i: e for i, e in errors.items() if not e <= TOLERANCE}
    assert not bad, f"layers beyond {TOLERANCE}: {bad}"


REAL = ["yolo-fastest-1.1/yolo-fastest-1.1", "yolo-fastest-1.1/yolo-fastest-1.1-xl",
        "yolo-fastest-1.1_body/yolo-fastest-1.1_body"]


def real_model(stem: str, width: int | None = None, height: int | None = None):
    from darknetpy.weights import read_weights
    folder, name = stem.split("/")
    network = load_network(shared_path("models", folder, name + ".cfg"), width, height)
    read_weights(network, shared_path("models", folder, name + ".weights"))
    return network


@pytest.mark.shared
@pytest.mark.parametrize("stem", REAL)
def test_real_yolo_fastest_matches_onnxruntime(stem, ort):
    from darknetpy.export import build_onnx
    network = real_model(stem)
    errors = compare_layers(ort, network, lambda: build_onnx(network, dynamic_batch=True), photo_batch(network))
    bad = {i: e for i, e in errors.items() if not e <= TOLERANCE}
    assert not bad, f"layers beyond {TOLERANCE}: {bad}"


# ------------------------------------------------------------------ every layer family and option, small

def network_from(text: str, tmp_path: Path, seed: int = 3):
    """A network of a cfg text with random weights and non-trivial batch-norm statistics."""
    from darknetpy.layers.epilogue import EpilogueOwner
    cfg = tmp_path / "net.cfg"
    cfg.write_text(text)
    network = load_network(cfg)
    rng = np.random.default_rng(seed)
    for layer in network.layers:
        for array in layer.weight_arrays(saving=True):
            array[...] = rng.normal(0.0, 0.5, array.shape)
        block = layer.bn if isinstance(layer, EpilogueOwner) else None
        if block is not None:
            block.scales[...] = rng.uniform(0.5, 1.5, block.channels)
            block.rolling_mean[...] = rng.normal(0.0, 0.3, block.channels)
            block.rolling_var[...] = rng.uniform(0.05, 2.0, block.channels)
        layer.parameters_changed()
    return network


def section(name: str, **options) -> str:
    return f"[{name}]\n" + "".join(f"{key}={value}\n" for key, value in options.items()) + "\n"


def net_section(width: int, height: int, channels: int = 3) -> str:
    return section("net", width=width, height=height, channels=channels)


CONV = "".join([
    net_section(23, 21),
    section("convolutional", filters=8, size=3, stride_x=2, stride_y=1, pad=1, batch_normalize=1,
            activation="leaky"),
    section("convolutional", filters=8, size=3, dilation=2, padding=2, groups=2, batch_normalize=1,
            activation="mish"),
    section("maxpool", size=3, stride_x=1, stride_y=2),       # Darknet's default padding size-1: right/bottom
    section("maxpool", size=2, stride=2, padding=0),          # the input reaches past the last window
    section("maxpool", size=4, stride=3, padding=5),          # windows of padding only: -FLT_MAX
    section("convolutional", filters=6, size=1, groups=2, activation="linear"),
    section("avgpool"),
    section("connected", output=12, batch_normalize=1, activation="relu"),
    section("connected", output=10, activation="linear"),
    section("softmax", groups=2, temperature=2.5),
])
DECONV_LOCAL = "".join([
    net_section(9, 7),
    section("deconvolutional", filters=6, size=4, stride=2, padding=1, batch_normalize=1, activation="relu"),
    section("deconvolutional", filters=4, size=3, stride=1, pad=1, activation="linear"),
    section("local", filters=5, size=3, stride=1, pad=1, activation="tanh"),
    section("local", filters=6, size=2, stride=2, activation="linear"),
    section("batchnorm"),
    section("normalization", size=5, alpha=0.01, beta=0.75, kappa=2),
    section("l2norm"),
    section("softmax", spatial=1, temperature=0.5),
    section("logistic"),
])
LOCAL_AVGPOOL = "".join([
    net_section(13, 11),
    section("convolutional", filters=4, size=3, pad=1, activation="leaky"),
    section("local_avgpool", size=3, stride=2),               # padding size-1: right/bottom windows clipped
    section("local_avgpool", size=2, stride_x=1, stride_y=2, padding=0),
    section("local_avgpool", size=3, stride=1, padding=2),    # one tap row/column of padding on each side
])
RESAMPLE_ROUTE = "".join([
    net_section(16, 16, 4),
    section("convolutional", filters=8, size=3, pad=1, activation="leaky"),
    section("upsample", stride=-2, scale=0.5),                # a block sum
    section("upsample", stride=3, scale=1.5),
    section("convolutional", filters=6, size=3, stride=3, pad=1, activation="elu"),
    section("shortcut", **{"from": -3}, alpha=0.5, beta=2, activation="swish"),  # channels differ
    section("convolutional", filters=8, size=1, stride=2, activation="linear"),
    section("shortcut", **{"from": -2}, activation="relu"),   # the added layer is twice as large
    section("convolutional", filters=8, size=3, pad=1, activation="hardtan"),
    section("upsample", stride=2),
    section("shortcut", **{"from": -3}, alpha=1.5),           # the added layer is half as large
    section("route", layers="-1,1", groups=2, group_id=1),
    section("reorg", stride=2),
    section("reorg", stride=2, reverse=1),
    section("crop", crop_height=5, crop_width=3),
    section("crop", crop_height=4, crop_width=3, noadjust=1),
    section("dropout", probability=0.3),
    section("activation", activation="plse"),
    section("reorg", flatten=1),
    section("reorg", flatten=1, reverse=1),
    section("reorg", extra=7),
    section("route", layers="-1,-7"),                         # unequal sizes: a flat concatenation
    section("cost"),                                          # transparent at inference
    section("activation", activation="selu"),
])
YOLO_HEADS = "".join([
    net_section(32, 24),
    section("convolutional", filters=8, size=3, stride=2, pad=1, batch_normalize=1, activation="leaky"),
    section("convolutional", filters=2 * (5 + 3), size=1, activation="linear"),
    section("yolo", mask="0,1", anchors="10,14, 23,27, 37,58", num=3, classes=3, scale_x_y=1.1),
    section("route", layers=-3),
    section("convolutional", filters=5 + 3, size=1, stride=2, activation="logistic"),
    section("yolo", mask=2, anchors="10,14, 23,27, 37,58", num=3, classes=3, scale_x_y=2.0, new_coords=1),
])
REGION_SOFTMAX = "".join([
    net_section(20, 16),
    section("convolutional", filters=2 * (4 + 1 + 5), size=3, stride=2, pad=1, activation="linear"),
    section("region", anchors="1,2, 3,1.5", num=2, classes=5, coords=4, softmax=1),
])
REGION_BACKGROUND = "".join([
    net_section(20, 16),
    section("convolutional", filters=2 * (4 + 1 + 5), size=3, stride=2, pad=1, activation="linear"),
    section("region", anchors="1,2, 3,1.5", num=2, classes=5, coords=4, softmax=1, background=1),
])
REGION_LOGISTIC = "".join([
    net_section(20, 16),
    section("convolutional", filters=3 * (4 + 1 + 2), size=3, stride=2, pad=1, activation="linear"),
    section("region", anchors="1,2, 3,1.5, 2,2", num=3, classes=2, coords=4),
])
DETECTION = "".join([
    net_section(16, 16),
    section("convolutional", filters=4, size=3, stride=4, pad=1, activation="leaky"),
    section("connected", output=2 * 2 * ((1 + 4) * 2 + 3), activation="linear"),
    section("detection", classes=3, coords=4, num=2, side=2, softmax=1, sqrt=1),
])
ACTIVATION_NAMES = ("logistic", "relu", "relie", "linear", "ramp", "tanh", "plse", "leaky", "elu", "loggy",
                    "stair", "hardtan", "lhtan", "selu", "mish", "swish", "hard_mish", "relu6", "gelu", "revleaky")
# each activation reads the same convolution; a final route gathers them all into the output
ACTIVATIONS = "".join(
    [net_section(7, 6), section("convolutional", filters=4, size=3, pad=1, activation="linear")]
    + [section("route", layers=0) + section("activation", activation=name) for name in ACTIVATION_NAMES]
    + [section("route", layers=",".join(str(2 + 2 * i) for i in range(len(ACTIVATION_NAMES))))])

SMALL_NETWORKS = {"conv": CONV, "deconv-local": DECONV_LOCAL, "local-avgpool": LOCAL_AVGPOOL,
                  "resample-route": RESAMPLE_ROUTE,
                  "yolo": YOLO_HEADS, "region-softmax": REGION_SOFTMAX, "region-background": REGION_BACKGROUND,
                  "region-logistic": REGION_LOGISTIC, "detection": DETECTION, "activations": ACTIVATIONS}


@pytest.mark.parametrize("name", list(SMALL_NETWORKS))
def test_layer_families_match_onnxruntime(name, ort, tmp_path):
    import onnx

    from darknetpy.export import build_onnx
    network = network_from(SMALL_NETWORKS[name], tmp_path)
    model = build_onnx(network, batch=3)
    onnx.checker.check_model(model, full_check=True)
    s = network.input_shape
    # inputs spread over [-4, 4]: every branch of the piecewise activations is visited
    x = np.random.default_rng(11).uniform(-4, 4, (3, s.c, s.h, s.w)).astype(np.float32)
    errors = compare_layers(ort, network, lambda: model, x)
    assert set(errors) == {layer.index for layer in network.layers}   # every layer is a named tensor
    bad = {i: e for i, e in errors.items() if not e <= TOLERANCE}
    assert not bad, f"layers beyond {TOLERANCE}: {bad}"


def test_maxpool_windows_of_padding_only_give_minus_flt_max(ort, tmp_path):
    """Darknet's asymmetric padding (origin at -padding/2) with -FLT_MAX taps: windows that see no pixel
    yield -FLT_MAX, not -inf; max pooling selects, so both engines agree exactly."""
    text = net_section(6, 5, 2) + section("maxpool", size=2, stride=2, padding=4) + section(
        "maxpool", size=3, stride_x=2, stride_y=1, padding=1)
    network = network_from(text, tmp_path)
    x = np.random.default_rng(2).normal(size=(2, 2, 5, 6)).astype(np.float32)
    outputs = session(ort, build_model_for(network)).run(None, {"input": x})
    network.forward(x)
    np.testing.assert_array_equal(outputs[0], network.outputs[1])
    first = session(ort, with_layer_outputs(network, build_model_for(network))[0]).run(["maxpool_0"],
                                                                                      {"input": x})[0]
    np.testing.assert_array_equal(first, network.outputs[0])
    assert (first == np.float32(-3.4028234663852886e38)).any()


def build_model_for(network, **options):
    from darknetpy.export import build_onnx
    return build_onnx(network, batch=2, **options)


def test_outputs_names_and_doc(tmp_path):
    _require("onnx")
    from darknetpy import __version__
    from darknetpy.export import build_onnx
    network = network_from(YOLO_HEADS, tmp_path)
    model = build_onnx(network, dynamic_batch=True)
    graph = model.graph
    assert [o.name for o in graph.output] == ["yolo_2", "yolo_5"]
    assert [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim] == ["batch", 16, 12, 16]
    assert graph.input[0].name == "input"
    assert {"conv_0", "conv_1", "route_3", "conv_4"} <= {n.name for n in graph.node}
    assert {"conv_0/weights", "conv_0/bias"} <= {t.name for t in graph.initializer}
    assert str(network.path) in model.doc_string and __version__ in model.doc_string
    assert model.producer_name == "darknetpy"
    # batch norm folded into the convolution: no BatchNormalization, no unused initializers
    assert "BatchNormalization" not in {n.op_type for n in graph.node}
    used = {i for n in graph.node for i in n.input}
    assert {t.name for t in graph.initializer} <= used


def test_classifier_outputs_its_last_layer_only(tmp_path):
    _require("onnx")
    from darknetpy.export import build_onnx
    model = build_onnx(network_from(CONV, tmp_path))
    assert [o.name for o in model.graph.output] == ["softmax_9"]


# ----------------------------------------------------------------------------------------------- decode

def darknet_nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> np.ndarray:
    """Darknet's do_nms_sort on (N, 4) centre boxes and (N, classes) scores: per class, by falling score,
    a box zeroes that class's score of every later box overlapping it by IoU > thresh."""
    scores = scores.copy()
    left, right = boxes[:, 0] - boxes[:, 2] / 2, boxes[:, 0] + boxes[:, 2] / 2
    top, bottom = boxes[:, 1] - boxes[:, 3] / 2, boxes[:, 1] + boxes[:, 3] / 2
    area = boxes[:, 2] * boxes[:, 3]
    for k in range(scores.shape[1]):
        order = np.argsort(-scores[:, k], kind="stable")
        for a, i in enumerate(order):
            if scores[i, k] == 0:
                continue
            for j in order[a + 1:]:
                w = min(right[i], right[j]) - max(left[i], left[j])
                h = min(bottom[i], bottom[j]) - max(top[i], top[j])
                inter = w * h if w > 0 and h > 0 else 0.0
                if inter / (area[i] + area[j] - inter) > thresh:
                    scores[j, k] = 0
    return scores


@pytest.mark.shared
def test_decoded_yolo_fastest_gives_the_detections_of_detect(ort):
    from darknetpy import images
    from darknetpy.detect import detect
    from darknetpy.export import build_onnx
    network = real_model("yolo-fastest-1.1/yolo-fastest-1.1")
    assert not network.net.letter_box     # plain resize: the decoded boxes are fractions of the image
    sess = session(ort, build_onnx(network, decode=True))
    thresh, nms = 0.25, 0.45
    total = 0
    for photo in sorted(shared_path("images").iterdir()):
        expected = detect(network, photo, thresh=thresh, nms=nms)
        img = images.load_image(photo)
        x = images.resize_image(img, network.net.width, network.net.height)[None].astype(np.float32)
        boxes, objectness, scores = (out[0] for out in sess.run(["boxes", "objectness", "scores"], {"input": x}))
        keep = objectness > np.float32(thresh)
        boxes, scores = boxes[keep], scores[keep]
        scores = np.where(scores > np.float32(thresh), scores, 0)
        scores = darknet_nms(boxes, scores, nms)
        got = sorted((int(k), float(scores[i, k]), *boxes[i]) for i, k in zip(*np.nonzero(scores > thresh)))
        want = sorted((r.class_id, r.score, *r.box) for r in expected)
        assert len(got) == len(want), photo.name
        for g, w in zip(got, want):
            assert g[0] == w[0]
            np.testing.assert_allclose(g[1:], w[1:], rtol=1e-4, atol=1e-5)
        total += len(want)
    assert total > 5    # the photos do contain detections


def test_decode_needs_a_yolo_or_region_head(tmp_path):
    _require("onnx")
    from darknetpy.errors import CfgError
    from darknetpy.export import build_onnx
    network = network_from(DETECTION, tmp_path)
    with pytest.raises(CfgError, match=r"--decode handles \[yolo\] and \[region\]") as info:
        build_onnx(network, decode=True)
    assert info.value.line == DETECTION.splitlines().index("[detection]") + 1


@pytest.mark.parametrize("name", ["yolo", "region-softmax", "region-background"])
def test_decoded_small_heads_match_their_detections(name, ort, tmp_path):
    """Every candidate box and score of the decoded graph equals the head's own decoding (detections with
    threshold 0, no letterbox) on a random image."""
    from darknetpy.detect import network_boxes
    from darknetpy.export import build_onnx
    network = network_from(SMALL_NETWORKS[name], tmp_path)
    s = network.input_shape
    x = np.random.default_rng(5).uniform(-1, 1, (2, s.c, s.h, s.w)).astype(np.float32)
    boxes, objectness, scores = session(ort, build_onnx(network, decode=True, dynamic_batch=True)).run(
        ["boxes", "objectness", "scores"], {"input": x})
    network.forward(x[1:])
    dets = network_boxes(network, s.w, s.h, 0.0, False)
    assert len(dets) == boxes.shape[1]
    np.testing.assert_allclose(boxes[1], [d.box for d in dets], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(objectness[1], [d.objectness for d in dets], rtol=1e-5, atol=1e-6)
    probs = np.stack([d.probs for d in dets])
    np.testing.assert_allclose(np.where(probs > 0, scores[1], 0), probs, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------- OpenCV

@pytest.mark.shared
def test_opencv_reads_exported_yolov3_tiny(tmp_path, corpus_network):
    cv2 = _require("cv2")
    _require("onnx")
    from darknetpy import export_onnx
    network = corpus_network("cfg-corpus/yolov3-tiny.cfg")
    target = tmp_path / "yolov3-tiny.onnx"
    export_onnx(network, target)
    net = cv2.dnn.readNetFromONNX(str(target))
    x = photo_batch(network)[1:]
    net.setInput(x, "input")
    names = ["yolo_16", "yolo_23"]
    outs = net.forward(names)
    network.forward(x)
    for name, out in zip(names, outs):
        assert relative_error(out, network.outputs[int(name.split("_")[1])]) <= TOLERANCE


# ---------------------------------------------------------------------------------- the command line

def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from darknetpy.cli import main
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


REPO = Path(__file__).resolve().parents[1]
MNIST_CFG = REPO / "cfg" / "mnist.cfg"
MNIST_WEIGHTS = REPO / "weights" / "mnist.weights"


def test_cli_export_writes_a_model_onnxruntime_runs(tmp_path, capsys, ort):
    from darknetpy.network import load_cfg
    from darknetpy.weights import read_weights
    target = tmp_path / "mnist.onnx"
    code, out, err = run_cli(["export", MNIST_CFG, MNIST_WEIGHTS, target, "--batch", 2, "--opset", 17], capsys)
    assert code == 0, err
    assert target.exists() and str(target) in out
    import onnx
    model = onnx.load(str(target))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == 17
    network = load_cfg(MNIST_CFG)
    read_weights(network, MNIST_WEIGHTS)
    s = network.input_shape
    x = np.random.default_rng(1).random((2, s.c, s.h, s.w), dtype=np.float32)
    (y,) = session(ort, model).run(None, {"input": x})
    assert relative_error(y, network.forward(x)) <= TOLERANCE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist.onnx"]


def assert_one_located_line(err: str, path: Path) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(str(path) + ":"), err


def test_cli_refuses_weights_of_another_network(tmp_path, capsys):
    _require("onnx")
    other = tmp_path / "other.cfg"
    other.write_text(CONV)
    target = tmp_path / "out.onnx"
    code, _, err = run_cli(["export", other, MNIST_WEIGHTS, target], capsys)
    assert code == 2
    assert_one_located_line(err, MNIST_WEIGHTS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.cfg"]


def test_cli_unwritable_output_leaves_nothing(tmp_path, capsys):
    _require("onnx")
    (tmp_path / "file").write_text("not a folder")
    targets = [tmp_path / "no-such-folder" / "mnist.onnx", tmp_path / "file" / "mnist.onnx"]
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if not os.access(locked, os.W_OK):   # (root may write anywhere)
        targets.append(locked / "mnist.onnx")
    try:
        for target in targets:
            code, _, err = run_cli(["export", MNIST_CFG, MNIST_WEIGHTS, target], capsys)
            assert code == 2
            assert_one_located_line(err, target)
            assert "cannot write the ONNX model" in err
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "locked"]
    code, _, err = run_cli(["export", MNIST_CFG, MNIST_WEIGHTS, locked], capsys)   # a folder
    assert code == 2
    assert_one_located_line(err, locked)


def test_cli_layer_that_cannot_export_is_located(tmp_path, capsys):
    _require("onnx")
    from darknetpy.network import load_cfg
    from darknetpy.weights import write_weights
    cfg = tmp_path / "rnn.cfg"
    text = section("net", inputs=16) + section("rnn", output=8, activation="leaky") + section("softmax")
    cfg.write_text(text)
    weights = tmp_path / "rnn.weights"
    write_weights(load_cfg(cfg), weights)
    target = tmp_path / "rnn.onnx"
    target.write_bytes(b"an earlier export")
    code, _, err = run_cli(["export", cfg, weights, target], capsys)
    assert code == 2
    assert_one_located_line(err, cfg)
    assert target.read_bytes() == b"an earlier export"     # untouched
    target.unlink()
    line = text.splitlines().index("[rnn]") + 1
    assert err.startswith(f"{cfg}:{line}: [rnn] cannot be exported to ONNX")
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rnn.cfg", "rnn.weights"]


def test_cli_without_onnx_names_the_extra(tmp_path, capsys, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "onnx", None)       # `import onnx` raises ImportError
    for module in [m for m in sys.modules if m.startswith("darknetpy.export.")]:
        monkeypatch.delitem(sys.modules, module)
    target = tmp_path / "mnist.onnx"
    code, _, err = run_cli(["export", MNIST_CFG, MNIST_WEIGHTS, target], capsys)
    assert code == 2
    assert err.strip().splitlines() == ['ONNX export needs the onnx package: pip install "darknetpy[onnx]"']
    assert not target.exists()


def test_cli_rejects_batch_with_dynamic_batch(tmp_path, capsys):
    code, _, err = run_cli(["export", MNIST_CFG, MNIST_WEIGHTS, tmp_path / "m.onnx", "--batch", 2,
                            "--dynamic-batch"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["export", MNIST_CFG, MNIST_WEIGHTS, tmp_path / "m.onnx", "--opset", 12], capsys)
    assert code == 2 and "at least 13" in err
    assert list(tmp_path.iterdir()) == []
