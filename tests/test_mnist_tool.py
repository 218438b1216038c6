"""tools/mnist_to_darknet.py and darknetpy.idx: the written file names carry the digits that the IDX
label files hold (read here independently with gzip + numpy), the PNGs hold the IDX pixels, and
darknetpy's own data loader labels the result correctly from another working directory."""
from __future__ import annotations

import gzip
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from darknetpy.config import NetConfig, SectionReader, parse_cfg_text, read_data_file
from darknetpy.data import ClassificationDataset
from darknetpy.errors import DataError
from darknetpy.idx import read_idx

TOOL = Path(__file__).resolve().parents[1] / "tools" / "mnist_to_darknet.py"


def idx_payload(path: Path, header_bytes: int) -> np.ndarray:
    """Bytes after the IDX header (8 for label files, 16 for image files), read without darknetpy."""
    with gzip.open(path, "rb") as handle:
        return np.frombuffer(handle.read(), np.uint8)[header_bytes:]


_CONVERTED: dict[Path, Path] = {}


@pytest.fixture
def converted(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(IDX folder, converted dataset folder); the tool runs once per session."""
    mnist = shared_dir / "datasets" / "mnist"
    if mnist not in _CONVERTED:
        out = tmp_path_factory.mktemp("mnist") / "out dir"
        result = subprocess.run([sys.executable, str(TOOL), str(mnist), str(out), "--limit-train", "20",
                                 "--limit-test", "10", "--jobs", "2"], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr
        _CONVERTED[mnist] = out
    return mnist, _CONVERTED[mnist]


@pytest.mark.shared
def test_file_names_carry_the_idx_labels(converted):
    mnist, out = converted
    for list_name, prefix, count in (("train.list", "train", 20), ("valid.list", "t10k", 10)):
        entries = (out / list_name).read_text().splitlines()
        assert len(entries) == count
        digits = idx_payload(mnist / f"{prefix}-labels-idx1-ubyte.gz", 8)[:count]
        pixels = idx_payload(mnist / f"{prefix}-images-idx3-ubyte.gz", 16)[:count * 784].reshape(count, 28, 28)
        for index, entry in enumerate(entries):
            folder, name = entry.split("/")
            assert folder == list_name.removesuffix(".list")
            assert name == f"{index:05d}_c{digits[index]}.png"
            np.testing.assert_array_equal(np.asarray(Image.open(out / entry)), pixels[index])


@pytest.mark.shared
def test_data_file_and_label_files(converted):
    _, out = converted
    data = read_data_file(out / "mnist.data")
    assert (data.classes, data.train, data.valid, data.backup, data.top) == (10, "train.list", "valid.list",
                                                                             "backup/", 2)
    labels = (out / data.labels).read_text().splitlines()
    assert labels == [f"c{digit}" for digit in range(10)]
    assert (out / data.names).read_text().splitlines() == [str(digit) for digit in range(10)]
    assert all(a == b or a not in b for a in labels for b in labels)
    assert (out / "backup").is_dir()


@pytest.mark.shared
def test_darknetpy_labels_the_converted_set_from_another_directory(converted, tmp_path, monkeypatch):
    mnist, out = converted
    monkeypatch.chdir(tmp_path)
    text = "[net]\nbatch=4\nwidth=28\nheight=28\nchannels=1\n"
    net = NetConfig.from_section(SectionReader(parse_cfg_text(text).sections[0], "<test>"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every path matches exactly one label
        dataset = ClassificationDataset(read_data_file(out / "mnist.data"), net, train=True, seed=0)
    digits = idx_payload(mnist / "train-labels-idx1-ubyte.gz", 8)[:20]
    np.testing.assert_array_equal(dataset.truths.argmax(axis=1), digits)
    np.testing.assert_array_equal(dataset.truths.sum(axis=1), 1)
    valid = ClassificationDataset(read_data_file(out / "mnist.data"), net, train=False)
    np.testing.assert_array_equal(valid.class_indices, idx_payload(mnist / "t10k-labels-idx1-ubyte.gz", 8)[:10])


# ------------------------------------------------------------------------------------ IDX reader

def idx_bytes(type_code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    header = bytes([0, 0, type_code, len(shape)]) + b"".join(size.to_bytes(4, "big") for size in shape)
    return header + payload


def test_read_idx_plain_and_gzipped(tmp_path):
    values = np.array([[1, -2, 300], [4, 5, -32768]], ">i2")
    raw = idx_bytes(0x0B, (2, 3), values.tobytes())
    (tmp_path / "plain.idx").write_bytes(raw)
    (tmp_path / "packed.bin").write_bytes(gzip.compress(raw))
    for name in ("plain.idx", "packed.bin"):
        array = read_idx(tmp_path / name)
        assert array.shape == (2, 3) and array.dtype == np.int16
        np.testing.assert_array_equal(array, [[1, -2, 300], [4, 5, -32768]])


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "short.idx").write_bytes(idx_bytes(0x08, (2, 2), b"\x01\x02\x03"))
    (tmp_path / "magic.idx").write_bytes(b"\x01\x00\x08\x01\x00\x00\x00\x01\x05")
    (tmp_path / "type.idx").write_bytes(idx_bytes(0x07, (1,), b"\x00"))
    for name, message in (("short.idx", "needs 4"), ("magic.idx", "not an IDX"), ("type.idx", "element type"),
                          ("missing.idx", "cannot read")):
        with pytest.raises(DataError, match=message) as caught:
            read_idx(tmp_path / name)
        assert str(caught.value).startswith(os.fspath(tmp_path / name))
