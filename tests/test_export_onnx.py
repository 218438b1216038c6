"""ONNX export (`darknetpy export`, `darknetpy.export_onnx`), proved by onnxruntime and OpenCV DNN.

Oracles: onnxruntime runs the exported graph, OpenCV DNN reads it; both must reproduce darknetpy's forward
pass (itself checked against Darknet, naive loops and OpenCV's Darknet importer elsewhere) within 1e-4
relative (max |ours - theirs| / max |theirs|), layer by layer: every exported layer tensor is compared, so a
saturated softmax at the end cannot hide an error inside. The corpus runs at reduced input sizes with
gen_weights' seeded weights, on a batch of a random image and a real photo (with a symbolic batch size).
"""
from __future__ import annotations

import importlib.util
import os
import re
import struct
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
    """An onnxruntime session of `model`; optimize=False runs the graph as written (no fusions), which also
    halves the start-up of the large corpus models."""
    options = ort_module.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort_module.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort_module.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


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


def compare_layers(ort_module, network, model, x: np.ndarray, optimize: bool = True) -> dict[int, float]:
    """Relative error of every exported layer between onnxruntime and darknetpy on the batch x."""
    model, names = with_layer_outputs(network, model)
    sess = session(ort_module, model, optimize)
    wanted = list(names.items())
    results = sess.run([name for _, name in wanted], {"input": x})
    network.forward(x)
    return {i: relative_error(out, network.outputs[i]) for (i, _), out in zip(wanted, results)}


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


def conv_only_weights(gw, network, out: Path, seed: int) -> None:
    """gen_weights' distributions and file order, sized from the built network: gen_weights follows
    pjreddie's route (no `groups`) and mis-sizes networks such as yolov4-tiny, whose only weighted layers
    are convolutions."""
    rng = np.random.default_rng(seed)
    parts = [struct.pack("<iiiQ", 0, 2, 0, 0)]
    for layer in network.layers:
        if layer.kind != "convolutional":
            assert not layer.weight_arrays(saving=True), layer.kind
            continue
        filters, per_filter = layer.weights.shape[0], int(np.prod(layer.weights.shape[1:]))
        kinds = ["biases"] + (["scales", "rolling_mean", "rolling_variance"] if layer.bn is not None else [])
        for kind in kinds:
            parts.append(gw.draw(rng, kind, filters, None, False).tobytes())
        parts.append(gw.draw(rng, "weights", filters * per_filter, per_filter, False).tobytes())
    out.write_bytes(b"".join(parts))


@pytest.fixture(scope="module")
def corpus_network(tmp_path_factory):
    """name -> a built network of the reduced cfg with seeded gen_weights weights loaded."""
    from darknetpy.weights import read_weights
    folder = tmp_path_factory.mktemp("export-corpus")
    gw = gen_weights_module()

    def get(name: str):
        where, file = name.split("/")
        cfg = folder / file
        cfg.write_text(reduced_cfg_text(shared_path(where, file).read_text(), SIZES.get(file, 64)))
        network = load_network(cfg)
        weights = folder / "seeded.weights"
        gw.write_weights(str(cfg), str(weights), 1)
        if weights.stat().st_size != 20 + 4 * network.weights_float_count():
            conv_only_weights(gw, network, weights, 1)
        read_weights(network, weights)
        weights.unlink()
        return network
    return get


# ----------------------------------------------------------------------------------------- the corpus

@pytest.mark.shared
@pytest.mark.parametrize("name", corpus_cfgs())
def test_corpus_network_matches_onnxruntime(name, ort, corpus_network):
    from darknetpy.errors import CfgError
    from darknetpy.export import build_onnx
    network = corpus_network(name)
    if Path(name).name in TREE_CFGS:
        with pytest.raises(CfgError) as info:
            build_onnx(network)
        line = shared_path(name).read_text().splitlines()[info.value.line - 1]
        assert info.value.path.endswith(Path(name).name) and line.startswith("tree=")
        return
    errors = compare_layers(ort, network, build_onnx(network, dynamic_batch=True), photo_batch(network),
                            optimize=False)
    assert network.output_index in errors
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
    errors = compare_layers(ort, network, build_onnx(network, dynamic_batch=True), photo_batch(network))
    bad = {i: e for i, e in errors.items() if not e <= TOLERANCE}
    assert not bad, f"layers beyond {TOLERANCE}: {bad}"
