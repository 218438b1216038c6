"""Weights files keep the header version they were read with (issue 11), so AlexeyAB's 0.2.5 files come back
byte for byte; networks not read from a file are saved as 0.2.0, as Darknet's save_weights writes.

Oracles: the files' own bytes (the Yolo-Fastest 1.1 and 1.1-xl weights in ../shared, written by AlexeyAB's
Darknet) and headers packed here from spec §5."""
from __future__ import annotations

import struct
import warnings

import numpy as np
import pytest

from builders import vector_net
from conftest import shared_path
from darknetpy.errors import DarknetWarning, WeightsError
from darknetpy.network import load_cfg
from darknetpy.weights import read_weights, weights_bytes, write_weights


@pytest.mark.shared
@pytest.mark.parametrize("name", ["yolo-fastest-1.1", "yolo-fastest-1.1-xl"])
def test_alexeyab_weights_round_trip_byte_for_byte(name, tmp_path):
    folder = shared_path("models", "yolo-fastest-1.1")
    original = (folder / f"{name}.weights").read_bytes()
    assert struct.unpack_from("<3i", original) == (0, 2, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DarknetWarning)
        network = load_cfg(folder / f"{name}.cfg")
    read_weights(network, folder / f"{name}.weights")
    copy = tmp_path / "copy.weights"
    write_weights(network, copy)
    assert copy.read_bytes() == original


def _connected_net():
    return vector_net("[connected]\noutput=3\nactivation=linear", 4)


def test_new_networks_are_saved_as_0_2_0():
    network = _connected_net()
    network.initialize(0)
    network.seen = 77
    assert weights_bytes(network)[:20] == struct.pack("<iiiQ", 0, 2, 0, 77)


def test_old_headers_round_trip_with_their_four_byte_seen(tmp_path):
    floats = np.arange(15, dtype="<f4")
    path = tmp_path / "old.weights"
    path.write_bytes(struct.pack("<iiii", 0, 1, 0, 42) + floats.tobytes())
    network = _connected_net()
    read_weights(network, path)
    assert weights_bytes(network) == path.read_bytes()


def test_transposed_legacy_files_are_saved_as_0_2_0_untransposed(tmp_path):
    stored = np.arange(12, dtype="<f4").reshape(4, 3)  # inputs x outputs, as the legacy files hold it
    path = tmp_path / "legacy.weights"
    path.write_bytes(struct.pack("<iiii", 0, 1001, 0, 5) + np.zeros(3, "<f4").tobytes() + stored.tobytes())
    network = _connected_net()
    read_weights(network, path)
    data = weights_bytes(network)
    assert data[:20] == struct.pack("<iiiQ", 0, 2, 0, 5)
    np.testing.assert_array_equal(np.frombuffer(data, "<f4", offset=20)[3:].reshape(3, 4), stored.T)


def test_refused_file_leaves_the_network_untouched(tmp_path):
    network = _connected_net()
    network.initialize(3)
    before = [a.copy() for a in network.layers[0].weight_arrays()]
    floats = np.ones(15, "<f4")
    floats[9] = np.nan
    path = tmp_path / "nan.weights"
    path.write_bytes(struct.pack("<iiiQ", 0, 2, 0, 0) + floats.tobytes())
    with pytest.raises(WeightsError, match=r"layer 0 \[connected, line 4\], array 2 of 2 \(12 floats\): value 6 is nan"):
        read_weights(network, path)
    for a, b in zip(network.layers[0].weight_arrays(), before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("position, value", [(300_000, np.inf), (3 * 200_000 + 199, -np.inf), (1, np.nan)])
def test_non_finite_values_are_found_anywhere_in_a_large_file(tmp_path, position, value):
    # 600,200 floats: the check reads the file in blocks, so a bad value past the first block, and the very
    # last value of the file, are found too (and named by their offset within their array)
    network = vector_net("[connected]\noutput=200\nactivation=linear", 3000)
    floats = np.ones(200 + 3000 * 200, "<f4")
    floats[position] = value
    path = tmp_path / "big.weights"
    path.write_bytes(struct.pack("<iiiQ", 0, 2, 0, 0) + floats.tobytes())
    array, offset = (1, position) if position < 200 else (2, position - 200)
    with pytest.raises(WeightsError, match=rf"array {array} of 2 \(\d+ floats\): value {offset} is {value}"):
        read_weights(network, path)
