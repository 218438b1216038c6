"""Anchors by k-means with 1 − IoU: boxes drawn around known shapes give those shapes back; the result
depends only on the seed; `darknetpy anchors` reads a .data train list and prints a cfg line."""
from __future__ import annotations

import numpy as np
import pytest

from darknetpy.metrics.anchors import kmeans_anchors, shape_iou

KNOWN = np.array([[10, 14], [23, 27], [37, 58], [81, 82], [135, 169], [344, 319]], np.float64)


def boxes_around(shapes: np.ndarray, per_shape: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    boxes = np.repeat(shapes, per_shape, axis=0)
    return boxes * rng.normal(1.0, noise, boxes.shape)


def test_recovers_known_shapes():
    result = kmeans_anchors(boxes_around(KNOWN, 200, 0.03, seed=1), 6, seed=0)
    np.testing.assert_allclose(result.anchors, KNOWN, rtol=0.02)  # sorted by area, as KNOWN is
    assert result.mean_iou > 0.9


def test_mean_iou_by_hand():
    boxes = boxes_around(KNOWN[:3], 20, 0.1, seed=2)
    result = kmeans_anchors(boxes, 3, seed=0)
    expected = []
    for w, h in boxes:
        best = 0.0
        for aw, ah in result.anchors:
            inter = min(w, aw) * min(h, ah)
            best = max(best, inter / (w * h + aw * ah - inter))
        expected.append(best)
    assert result.mean_iou == pytest.approx(np.mean(expected))


def test_shape_iou_by_hand():
    assert shape_iou([[10, 20]], [[20, 10]])[0, 0] == pytest.approx(100 / 300)
    assert shape_iou([[10, 10]], [[10, 10], [5, 10]]).tolist() == [[1.0, 0.5]]


def test_deterministic_for_a_seed():
    boxes = np.random.default_rng(3).uniform(5, 300, (500, 2))  # no clusters: the start matters
    a = kmeans_anchors(boxes, 9, seed=7)
    b = kmeans_anchors(boxes, 9, seed=7)
    np.testing.assert_array_equal(a.anchors, b.anchors)
    assert a.mean_iou == b.mean_iou


def test_sorted_by_area_and_cfg_line():
    result = kmeans_anchors(boxes_around(KNOWN[::-1], 50, 0.0, seed=0), 6, seed=1)
    areas = result.anchors.prod(axis=1)
    assert np.all(np.diff(areas) > 0)
    assert result.cfg_line(416) == "anchors = 10,14, 23,27, 37,58, 81,82, 135,169, 344,319"
    small = kmeans_anchors(np.array([[0.5, 1.25], [2.0, 3.0]]), 2, seed=0)
    assert small.cfg_line(13) == "anchors = 0.50,1.25, 2.00,3.00"


def test_too_few_shapes():
    with pytest.raises(ValueError, match="at least 3 different box shapes"):
        kmeans_anchors(np.array([[1.0, 2.0], [1.0, 2.0], [3.0, 3.0]]), 3)


def write_dataset(root, boxes_per_image, with_train=True):
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, lines in enumerate(boxes_per_image):
        (root / f"img{i}.png").write_bytes(b"")  # only the paths and labels are read
        (root / f"img{i}.txt").write_text("".join(line + "\n" for line in lines))
        entries.append(f"img{i}.png")
    (root / "train.list").write_text("\n".join(entries) + "\n")
    (root / "x.data").write_text("classes=3\n" + ("train=train.list\n" if with_train else ""))
    return root / "x.data"


def test_anchors_command(tmp_path, capsys):
    from darknetpy.cli import main
    # three shapes in a 320x256 network: 16x32, 64x64, 128x96 pixels
    shapes = ["0.5 0.5 0.05 0.125", "0.5 0.5 0.2 0.25", "0.5 0.5 0.4 0.375"]
    data = write_dataset(tmp_path / "d", [[f"{c} {shape}" for c, shape in enumerate(shapes)]] * 4)
    assert main(["anchors", str(data), "--num", "3", "--width", "320", "--height", "256"]) == 0
    out = capsys.readouterr().out
    assert "anchors = 16,32, 64,64, 128,96" in out.splitlines()
    assert "avg IoU = 100.00 %" in out

    missing = write_dataset(tmp_path / "m", [[shapes[0]]], with_train=False)
    assert main(["anchors", str(missing), "--num", "3", "--width", "320", "--height", "256"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(str(missing)) and "train" in err[0]

    few = write_dataset(tmp_path / "f", [[f"0 {shapes[0]}"]])
    assert main(["anchors", str(few), "--num", "3", "--width", "320", "--height", "256"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(str(few))
