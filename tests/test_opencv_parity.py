"""Forward parity with OpenCV's Darknet importer (cv2.dnn.readNetFromDarknet), layer by layer.

Every Darknet layer's output is compared with the OpenCV layer that produces it, on classifiers with seeded
random weights from ../shared/tools/gen_weights.py, on the real Yolo-Fastest models and on random-weight
yolov2/3/4-tiny. Measure: max|ours - theirs| / max|theirs| <= 1e-4 per layer.

OpenCV's layer names: `<type>_<index>` with the Darknet layer index, except the activation that ends a
conv/shortcut layer, which carries index + 1 (conv_0, bn_0, leaky_1, pool_1, ...). The output of Darknet
layer i is the last OpenCV layer owned by i.

Where OpenCV cannot be the oracle:
* [yolo]/[region]: OpenCV decodes boxes inside the layer; tests/test_detect_models.py compares the decoded
  rows. Here the raw conv output feeding each detection layer is compared instead.
* A conv directly followed by [dropout]: OpenCV runs the dropout (identity) in place and the conv's own
  blob is clobbered when both are requested; the dropout's output (the same values) is compared.
* [shortcut] whose `from` layer has another width/height (resnet/resnext downsampling blocks): Darknet adds
  a strided sample (spec §2.9, verified against darknet); OpenCV's eltwise layer refuses such shapes. The
  whole network goes through OpenCV only up to that layer; every later layer is checked on its own:
  one-layer OpenCV networks fed with our previous output (conv, pooling, softmax) and
  tests/naive_routing.shortcut for the shortcuts.
* Darknet's inference BN divides by sqrt(var) + 1e-6, OpenCV by sqrt(var + 1e-6). Random weights keep
  var in [0.5, 2] where that is invisible; for the real models (variances down to ~1e-3) OpenCV gets a copy
  of the weights with var' = (sqrt(var) + 1e-6)² - 1e-6, located with gen_weights' own layout plan.
"""
from __future__ import annotations

import importlib.util
import os
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_path

pytestmark = pytest.mark.shared

TOLERANCE = 1e-4
OPENCV_ACTIVATIONS = {"leaky", "relu", "logistic", "mish", "swish", "tanh", "elu", "selu", "hardswish",
                      "relu6", "linear", "identity_act"}
DETECTION_KINDS = {"yolo", "region", "detection"}


def opencv():
    try:
        import cv2
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("opencv-python-headless is required under CI")
        pytest.skip("OpenCV not installed")
    return cv2


def gen_weights_module():
    """../shared/tools/gen_weights.py as a module: its writer and its independent layout plan."""
    path = shared_path("tools", "gen_weights.py")
    spec = importlib.util.spec_from_file_location("shared_gen_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------ cfg text

def resized_cfg_text(text: str, size: int | None) -> str:
    if size:
        text = re.sub(r"(?m)^\s*width\s*=.*$", f"width={size}", text, count=1)
        text = re.sub(r"(?m)^\s*height\s*=.*$", f"height={size}", text, count=1)
    return text


def cfg_sections(text: str) -> list[str]:
    """The text of every section ([net] first), split at lines that open a section."""
    sections: list[list[str]] = []
    for line in text.splitlines():
        if line.replace(" ", "").replace("\t", "").startswith("["):
            sections.append([])
        if sections:
            sections[-1].append(line)
    return ["\n".join(lines) + "\n" for lines in sections]


def section_options(section: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for line in section.splitlines()[1:]:
        line = line.replace(" ", "").replace("\t", "")
        if line and line[0] not in "#;" and "=" in line:
            key, value = line.split("=", 1)
            options.setdefault(key, value)
    return options


# ------------------------------------------------------------------------------------------- models

@dataclass
class Model:
    cfg: Path               # the (possibly resized) cfg both engines read
    weights: Path           # what darknetpy reads
    cv_weights: Path        # what OpenCV reads (BN variance adjusted for the real models)
    plan: list[dict] | None # gen_weights' per-layer layout (None where it cannot size the cfg)
    scratch: Path           # temporary folder for derived cfg/weights files


CORPUS = {  # name: (folder, file, input size)
    "darknet": ("cfg-corpus", "darknet.cfg", 64),
    "tiny": ("cfg-corpus", "tiny.cfg", 64),
    "resnet18": ("cfg-corpus", "resnet18.cfg", 64),
    "resnext50": ("cfg-corpus", "resnext50.cfg", 64),
    "densenet201": ("cfg-corpus", "densenet201.cfg", 64),
    "yolov3-tiny": ("cfg-corpus", "yolov3-tiny.cfg", 128),
    "yolov2-tiny": ("cfg-corpus", "yolov2-tiny.cfg", 128),
    "yolov4-tiny": ("cfg-alexeyab", "yolov4-tiny.cfg", 128),
}
REAL = {
    "yolo-fastest-1.1": ("yolo-fastest-1.1", "yolo-fastest-1.1"),
    "yolo-fastest-1.1-xl": ("yolo-fastest-1.1", "yolo-fastest-1.1-xl"),
    "yolo-fastest-1.1_body": ("yolo-fastest-1.1_body", "yolo-fastest-1.1_body"),
}


def load_network(cfg: Path):
    from darknetpy.network import load_cfg
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # training-only keys of AlexeyAB cfgs
        return load_cfg(cfg)


def write_route_group_weights(gw, cfg: Path, out: Path, seed: int) -> None:
    """gen_weights follows pjreddie's route (no `groups`), so it mis-sizes yolov4-tiny. Same distributions
    and file order, with each conv's input channels taken from the built network; OpenCV reads the file
    with its own layout rules, so a size mistake still shows."""
    network = load_network(cfg)
    rng = np.random.default_rng(seed)
    parts = [struct.pack("<iiiQ", 0, 2, 0, 0)]
    for layer in network.layers:
        if layer.kind != "convolutional":
            assert not layer.weight_arrays(saving=True), layer.kind
            continue
        options = section_options(cfg_sections(cfg.read_text())[layer.index + 1])
        filters, per_filter = layer.weights.shape[0], int(np.prod(layer.weights.shape[1:]))
        kinds = ["biases"]
        if int(options.get("batch_normalize", "0")):
            kinds += ["scales", "rolling_mean", "rolling_variance"]
        for kind in kinds:
            parts.append(gw.draw(rng, kind, filters, None, False).tobytes())
        parts.append(gw.draw(rng, "weights", filters * per_filter, per_filter, False).tobytes())
    out.write_bytes(b"".join(parts))


def darknet_bn_for_opencv(plan: list[dict], source: Path, out: Path) -> None:
    data = np.fromfile(source, dtype="<f4", offset=20).astype(np.float32)
    pos = 0
    for layer in plan:
        for kind, count, _ in layer["plan"]:
            if kind == "rolling_variance":
                var = data[pos:pos + count].astype(np.float64)
                data[pos:pos + count] = ((np.sqrt(var) + 1e-6) ** 2 - 1e-6).astype(np.float32)
            pos += count
    assert pos == data.size, "gen_weights' plan does not cover the weights file"
    out.write_bytes(source.read_bytes()[:20] + data.astype("<f4").tobytes())


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Lazily built, cached per module: name -> Model."""
    folder = tmp_path_factory.mktemp("opencv-parity")
    gw = gen_weights_module()
    cache: dict[str, Model] = {}

    def get(name: str) -> Model:
        if name in cache:
            return cache[name]
        if name in CORPUS:
            where, file, size = CORPUS[name]
            cfg = folder / file
            cfg.write_text(resized_cfg_text(shared_path(where, file).read_text(), size))
            weights = folder / (name + ".weights")
            if name == "yolov4-tiny":
                write_route_group_weights(gw, cfg, weights, seed=1)
                plan = None
            else:
                gw.write_weights(str(cfg), str(weights), 1)
                plan = gw.build_plan(str(cfg))[1]
            cache[name] = Model(cfg, weights, weights, plan, folder)
        else:
            where, stem = REAL[name]
            cfg = shared_path("models", where, stem + ".cfg")
            weights = shared_path("models", where, stem + ".weights")
            plan = gw.build_plan(str(cfg))[1]
            cv_weights = folder / (name + "-opencv.weights")
            darknet_bn_for_opencv(plan, weights, cv_weights)
            cache[name] = Model(cfg, weights, cv_weights, plan, folder)
        return cache[name]
    return get


# ---------------------------------------------------------------------------------------- comparison

def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    ours = np.asarray(ours, np.float64).reshape(-1)
    theirs = np.asarray(theirs, np.float64).reshape(-1)
    assert ours.size == theirs.size, (ours.size, theirs.size)
    scale = np.abs(theirs).max()
    return float(np.abs(ours - theirs).max() / scale) if scale > 0 else float(np.abs(ours).max())


def opencv_layer_owners(names) -> dict[int, str]:
    """Darknet layer index -> name of the last OpenCV layer computing it."""
    owners: dict[int, str] = {}
    for name in names:
        prefix, _, number = name.rpartition("_")
        if not number.isdigit():   # e.g. yolov2's final "detection_out"
            continue
        index = int(number) - (1 if prefix in OPENCV_ACTIVATIONS else 0)
        owners[index] = name
    return owners


def comparable_layers(network, upto: int) -> list[int]:
    """Layers below `upto` whose output OpenCV exposes as such (see the module docstring)."""
    layers = network.layers
    return [i for i in range(upto) if layers[i].kind not in DETECTION_KINDS
            and not (i + 1 < len(layers) and layers[i + 1].kind == "dropout")]


def strided_shortcut_start(network) -> int:
    """Index of the first [shortcut] whose from-layer has another width/height (OpenCV refuses it)."""
    for i, layer in enumerate(network.layers):
        if layer.kind == "shortcut":
            prev, added = (network.shapes[j] for j in layer.input_indices())
            if (prev.h, prev.w) != (added.h, added.w):
                return i
    return len(network.layers)


def compare_whole_network(cv2, network, model: Model, x: np.ndarray, upto: int) -> dict[int, float]:
    """Run both engines on x; relative error of every layer below `upto` that OpenCV exposes."""
    network.forward(x)
    cfg = model.cfg
    if upto < len(network.layers):  # OpenCV sizes every layer up front, so it must not see the rest
        cfg = model.scratch / f"{model.cfg.stem}-first-{upto}.cfg"
        cfg.write_text("".join(cfg_sections(model.cfg.read_text())[:upto + 1]))
    cv_net = cv2.dnn.readNetFromDarknet(str(cfg), str(model.cv_weights))
    owners = opencv_layer_owners(cv_net.getLayerNames())
    comparable = comparable_layers(network, upto)
    missing = [i for i in comparable if i not in owners]
    assert not missing, f"no OpenCV layer found for darknet layers {missing}"
    wanted = {i: owners[i] for i in comparable}
    cv_net.setInput(x)
    blobs = cv_net.forward(list(wanted.values()))
    return {i: relative_error(network.outputs[i], blob) for i, blob in zip(wanted, blobs)}


def compare_layers_alone(cv2, network, model: Model, sections: list[str], start: int) -> dict[int, float]:
    """Layers from `start` on, each fed with our own output of its inputs."""
    import naive_activation
    import naive_routing

    offsets = np.cumsum([0] + [sum(n for _, n, _ in layer["plan"]) for layer in model.plan])
    floats = np.fromfile(model.weights, dtype="<f4", offset=20)
    errors: dict[int, float] = {}
    for i in range(start, len(network.layers)):
        layer = network.layers[i]
        section = sections[i + 1]
        prev = network.outputs[i - 1]
        if layer.kind == "shortcut":
            options = section_options(section)
            source = int(options["from"])
            source = i + source if source < 0 else source
            summed = naive_routing.shortcut(prev, network.outputs[source], float(options.get("alpha", 1)),
                                            float(options.get("beta", 1)))
            expected = naive_activation.activate(options.get("activation", "linear"), summed)
        else:
            assert layer.kind in ("convolutional", "maxpool", "avgpool", "softmax"), layer.kind
            _, c, h, w = prev.shape
            cfg = model.scratch / f"{model.cfg.stem}-alone-{i}.cfg"
            cfg.write_text(f"[net]\nwidth={w}\nheight={h}\nchannels={c}\n\n" + section)
            weights = model.scratch / f"{model.cfg.stem}-alone-{i}.weights"
            weights.write_bytes(struct.pack("<iiiQ", 0, 2, 0, 0)
                                + floats[offsets[i]:offsets[i + 1]].astype("<f4").tobytes())
            cv_net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
            cv_net.setInput(np.ascontiguousarray(prev))
            expected = cv_net.forward()
        errors[i] = relative_error(network.outputs[i], expected)
    return errors


def assert_within(errors: dict[int, float], network, label: str) -> None:
    bad = {f"{i} {network.layers[i].kind}": e for i, e in errors.items() if not e <= TOLERANCE}
    assert not bad, f"{label}: layers beyond {TOLERANCE} relative error: {bad}"


def detection_inputs(network) -> list[int]:
    return [i - 1 for i, layer in enumerate(network.layers) if layer.kind in DETECTION_KINDS]


def random_input(network, seed: int) -> np.ndarray:
    s = network.input_shape
    return np.random.default_rng(seed).random((1, s.c, s.h, s.w), dtype=np.float32)


# ---------------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("name", ["darknet", "tiny", "densenet201"])
def test_classifier_every_layer_matches_opencv(models, name):
    cv2 = opencv()
    from darknetpy.weights import read_weights
    model = models(name)
    network = load_network(model.cfg)
    read_weights(network, model.weights)
    errors = compare_whole_network(cv2, network, model, random_input(network, 7), len(network.layers))
    assert network.output_index in errors, "final output not compared"
    assert len(errors) == len(network.layers)
    assert_within(errors, network, name)


@pytest.mark.parametrize("name", ["resnet18", "resnext50"])
def test_resnet_every_layer_matches_opencv(models, name):
    cv2 = opencv()
    from darknetpy.weights import read_weights
    model = models(name)
    network = load_network(model.cfg)
    read_weights(network, model.weights)
    cut = strided_shortcut_start(network)
    assert 0 < cut < len(network.layers), "expected a downsampling shortcut"
    errors = compare_whole_network(cv2, network, model, random_input(network, 7), cut)
    assert len(errors) == cut
    errors.update(compare_layers_alone(cv2, network, model, cfg_sections(model.cfg.read_text()), cut))
    assert len(errors) == len(network.layers)
    assert network.output_index in errors
    assert_within(errors, network, name)


@pytest.mark.parametrize("name", list(REAL))
def test_yolo_fastest_every_layer_matches_opencv(models, name):
    cv2 = opencv()
    from darknetpy.weights import read_weights
    model = models(name)
    network = load_network(model.cfg)
    read_weights(network, model.weights)
    errors = compare_whole_network(cv2, network, model, random_input(network, 5), len(network.layers))
    heads = detection_inputs(network)
    assert len(heads) == 2 and all(i in errors for i in heads)
    assert_within(errors, network, name)


@pytest.mark.parametrize("name", ["yolov3-tiny", "yolov2-tiny", "yolov4-tiny"])
def test_tiny_detector_every_layer_matches_opencv(models, name):
    cv2 = opencv()
    from darknetpy.weights import read_weights
    model = models(name)
    network = load_network(model.cfg)
    read_weights(network, model.weights)
    errors = compare_whole_network(cv2, network, model, random_input(network, 5), len(network.layers))
    heads = detection_inputs(network)
    assert heads and all(i in errors for i in heads)
    assert len(errors) == len(network.layers) - len(heads)
    assert_within(errors, network, name)


# ------------------------------------------------------------- slow numpy reference, no OpenCV involved

def naive_darknet_forward(cfg_text: str, weights: Path, x: np.ndarray) -> list[np.ndarray]:
    """darknet.cfg's layer kinds (conv+BN+leaky, maxpool, avgpool, softmax) from tests/naive_*.py, with the
    cfg and the weights file read here (file order of spec §5)."""
    import naive_activation
    import naive_conv
    import naive_pooling
    import naive_softmax

    floats = np.fromfile(weights, dtype="<f4", offset=20).astype(np.float64)
    pos = 0

    def take(count: int) -> np.ndarray:
        nonlocal pos
        pos += count
        return floats[pos - count:pos]

    outputs = []
    value = x.astype(np.float64)
    for section in cfg_sections(cfg_text)[1:]:
        kind = section.split("]")[0].strip().lstrip("[")
        o = section_options(section)
        if kind == "convolutional":
            n, size, stride = int(o["filters"]), int(o.get("size", 1)), int(o.get("stride", 1))
            pad = size // 2 if int(o.get("pad", 0)) else int(o.get("padding", 0))
            biases = take(n)
            bn = int(o.get("batch_normalize", 0))
            if bn:
                scales, mean, var = take(n), take(n), take(n)
            w = take(n * value.shape[1] * size * size).reshape(n, value.shape[1], size, size)
            if bn:
                value = naive_conv.conv2d(value, w, np.zeros(n), stride, stride, pad)
                value = naive_conv.batchnorm_inference(value, scales, biases, mean, var)
            else:
                value = naive_conv.conv2d(value, w, biases, stride, stride, pad)
            value = naive_activation.activate(o.get("activation", "logistic"), value)
        elif kind == "maxpool":
            stride = int(o.get("stride", 1))
            size = int(o.get("size", stride))
            value = naive_pooling.maxpool(value, size, stride, stride, int(o.get("padding", size - 1)))[0]
        elif kind == "avgpool":
            value = naive_pooling.global_average(value)
        elif kind == "softmax":
            value = naive_softmax.softmax_groups(value, int(o.get("groups", 1)))
        else:
            raise AssertionError(f"no reference for [{kind}]")
        outputs.append(value)
    assert pos == floats.size, "weights file not consumed exactly"
    return outputs


def test_darknet_cfg_matches_slow_numpy_reference(models):
    """At 16x16 (the pure-Python conv costs ~3 s there): the deep layers run on 2x2 and 1x1 maps, where
    padding taps and maxpool's -FLT_MAX edge dominate."""
    from darknetpy.network import load_cfg
    from darknetpy.weights import read_weights

    model = models("darknet")
    network = load_cfg(model.cfg, width=16, height=16)
    read_weights(network, model.weights)
    x = random_input(network, 3)
    network.forward(x)
    expected = naive_darknet_forward(model.cfg.read_text(), model.weights, x)
    assert len(expected) == len(network.layers)
    errors = {i: relative_error(network.outputs[i], want) for i, want in enumerate(expected)}
    assert_within(errors, network, "darknet.cfg 16x16")
