"""Darknet's own numbers (../shared/darknet-oracle): letterboxed input bit for bit, forward outputs to 1e-4,
and training updates (weights after every update to 1e-5, losses, rates and `seen`)."""
import json
import subprocess
import sys

import numpy as np
import pytest

import darknetpy
from darknetpy.images import letterbox_image, load_image
from darknetpy.network import load_cfg
from darknetpy.weights import read_weights

from conftest import shared_path

pytestmark = pytest.mark.shared


def gen_weights(cfg, out, seed=1, extra=()):
    tool = shared_path("tools", "gen_weights.py")
    subprocess.run([sys.executable, str(tool), str(cfg), str(out), "--seed", str(seed), *extra],
                   check=True, capture_output=True)
    return out


def rel_error(got, ref):
    return float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-12))


@pytest.mark.parametrize("name,size", [("darknet", 256), ("yolov3-tiny", 416)])
def test_letterbox_equals_darknet_input(name, size):
    image = load_image(shared_path("darknet-oracle", "forward", "dog.png"))
    expected = np.load(shared_path("darknet-oracle", "forward", "inputs", f"dog_{size}x{size}.npy"))
    assert np.array_equal(letterbox_image(image, size, size), expected)


@pytest.mark.parametrize("name", ["darknet", "yolov3-tiny"])
def test_forward_matches_darknet(name, tmp_path):
    folder = shared_path("darknet-oracle", "forward", name)
    info = json.loads((folder / "dog" / "layers.json").read_text())
    cfg = folder / info["cfg"]
    weights = gen_weights(cfg, tmp_path / "w.weights")
    network = load_cfg(cfg)
    read_weights(network, weights)
    x = np.load(shared_path("darknet-oracle", "forward", "inputs", info["input"].split("/")[-1]))
    out = network.forward(x[None])
    assert rel_error(out.reshape(-1), np.load(folder / "dog" / "output.npy").reshape(-1)) < 1e-4
    for path in sorted((folder / "dog").glob("layer_*.npy")):
        index = int(path.stem.split("_")[1])
        ref = np.load(path).reshape(-1)
        assert rel_error(network.outputs[index].reshape(-1), ref) < 1e-4, f"layer {index}"
    for record in info["layers"]:
        got = network.outputs[record["index"]]
        if got is None:
            continue
        flat = got.reshape(-1)
        np.testing.assert_allclose(flat[record["sample_index"]], record["sample_value"], rtol=1e-4,
                                   atol=1e-4 * max(abs(record["max"]), abs(record["min"])),
                                   err_msg=f"layer {record['index']} {record['type']}")


@pytest.mark.parametrize("case", ["small", "fc"])
def test_training_matches_darknet(case):
    folder = shared_path("darknet-oracle", "train", case)
    model = darknetpy.load(folder / f"{case}.cfg", folder / "init.weights")
    X = np.load(folder / "X.npy")
    Y = np.load(folder / "Y.npy")
    records = json.loads((folder / "losses.json").read_text())
    for record in records:
        loss = model.train_batch(X, Y)
        assert model.seen == record["seen"]
        assert np.float32(model.current_rate()) == np.float32(record["rate"])
        assert abs(loss - record["loss"]) < 1e-5, f"update {record['update']}"
        expected = darknetpy.load(folder / f"{case}.cfg", folder / f"weights_{record['update']}.weights")
        for got_layer, ref_layer in zip(model.network.layers, expected.network.layers):
            for got, ref in zip(got_layer.weight_arrays(saving=True), ref_layer.weight_arrays(saving=True)):
                np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0,
                                           err_msg=f"update {record['update']} layer {got_layer.index}")
        assert expected.seen == record["seen"]
