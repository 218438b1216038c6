"""Darknet's 45 network cfgs (../shared/cfg-corpus): all parse, all but the recurrent ones build with the
output layer the corpus table reports, and the weights size equals the size Darknet's own writer produced
(../shared/reference/CFG_CORPUS.md)."""
import re
import numpy as np
import pytest

from darknetpy.config import parse_cfg
from darknetpy.network import load_cfg
from darknetpy.weights import read_weights, weights_bytes

from conftest import SHARED, shared_path

pytestmark = pytest.mark.shared

RECURRENT = {"rnn.cfg", "rnn.train.cfg", "gru.cfg"}


def corpus_table():
    text = shared_path("reference", "CFG_CORPUS.md").read_text()
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\| (\S+\.cfg) \| .*? \| (\d+) \| (\d+) \| (\w+) \((\d+) outputs; (\d+)x(\d+)x(\d+)\) \|$", line)
        if m:
            name, floats, size, out_type, outputs, w, h, c = m.groups()
            rows[name] = dict(floats=int(floats), bytes=int(size), out_type=out_type, outputs=int(outputs),
                              dims=(int(w), int(h), int(c)))
    return rows


CFGS = sorted(p.name for p in (SHARED / "cfg-corpus").glob("*.cfg")) or ["<missing>"]


def test_table_covers_45_cfgs():
    assert len(corpus_table()) == 45
    assert len(CFGS) == 45


@pytest.mark.parametrize("name", CFGS)
def test_cfg_builds_with_darknet_weights_size(name):
    info = corpus_table()[name]
    path = shared_path("cfg-corpus", name)
    doc = parse_cfg(path)
    assert len(doc.sections) == sum(1 for line in path.read_text().splitlines() if line.strip().startswith("["))
    network = load_cfg(path)
    assert network.weights_float_count() == info["floats"]
    assert 20 + 4 * network.weights_float_count() == info["bytes"]
    out = network.output_layer
    assert out.kind == info["out_type"]
    shape = network.shapes[network.output_index]
    assert shape.size == info["outputs"]
    if shape.image:
        assert (shape.w, shape.h, shape.c) == info["dims"]
    else:
        assert info["dims"] == (0, 0, 0)


def test_vgg16_has_138357544_parameters():
    network = load_cfg(shared_path("cfg-corpus", "vgg-16.cfg"))
    assert network.parameter_count() == 138_357_544


@pytest.mark.parametrize("name", CFGS)
def test_weights_round_trip_byte_identical(name, tmp_path):
    # A file of Darknet's size for this cfg (the corpus table) holding seeded random float32 values and a
    # non-zero `seen`; gen_weights.py files are used by the forward oracle tests. One block of draws, shifted
    # by the block's number for each further block, keeps the values distinct within every array at a
    # third of the cost of 6 GB of draws.
    info = corpus_table()[name]
    block = 1 << 24
    draws = np.random.default_rng(abs(hash(name)) % 2**32).random(block, dtype=np.float32) - np.float32(0.5)
    target = tmp_path / "w.weights"
    with open(target, "wb") as fh:
        fh.write(np.array([0, 2, 0], "<i4").tobytes() + np.array([123456], "<u8").tobytes())
        for number, start in enumerate(range(0, info["floats"], block)):
            fh.write(draws[:min(block, info["floats"] - start)] + np.float32(number))
    network = load_cfg(shared_path("cfg-corpus", name))
    read_weights(network, target)
    assert network.seen == 123456
    assert weights_bytes(network) == target.read_bytes()
