"""Evaluation pictures (darknetpy/plots.py), the data behind the detector's (darknetpy/detection_curves.py)
and the progress bar (darknetpy/progress.py).

Oracles: hand-made confusion matrices whose cells must show up as shades in proportion to their counts
(white for 0, the full colour for the largest), hand-computed precision-recall curves and detection
confusion matrices, and the AP the pure mAP code (darknetpy.metrics.detection, itself checked against
pycocotools) gives for the same detections.
"""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from darknetpy import plots
from darknetpy.detection_curves import (RECALL_GRID, detection_confusion, mean_curve,
                                        precision_recall_curves)
from darknetpy.metrics.detection import ImageDetections, ImageTruths, detection_map
from darknetpy.progress import Progress, bar_text, format_duration

FULL = (8, 48, 107)


def cell_pixel(image: Image.Image, cells: dict, row: int, column: int) -> tuple[int, int, int]:
    """A pixel inside a cell, clear of its outline and of the number written at its centre."""
    size = cells["size"]
    return image.getpixel((cells["left"] + column * size + 3, cells["top"] + row * size + 3))


def assert_cells_follow(image: Image.Image, cells: dict, fractions: np.ndarray) -> None:
    """Every cell's shade is linear in its fraction of the largest value: white at 0, FULL at 1."""
    for (r, c), fraction in np.ndenumerate(fractions):
        pixel = cell_pixel(image, cells, r, c)
        if math.isnan(fraction):
            assert pixel == plots.EMPTY_ROW
            continue
        expected = tuple(255 - fraction * (255 - v) for v in FULL)
        assert pixel == pytest.approx(expected, abs=1), (r, c, fraction, pixel)


def test_confusion_figure_cells_show_the_counts(tmp_path):
    matrix = np.array([[5, 1, 0], [2, 7, 3], [0, 0, 0]])
    image, metadata = plots.confusion_figure(matrix, ["cat", "dog", "bird"], "valid: confusion matrix")
    path = plots.save_png(image, tmp_path / "m.png", metadata)
    stored = plots.read_metadata(path)
    assert stored["darknetpy.matrix"] == matrix.tolist()
    assert stored["darknetpy.labels"] == ["cat", "dog", "bird"]
    with Image.open(path) as saved:
        assert_cells_follow(saved.convert("RGB"), stored["darknetpy.cells"], matrix / 7)
    # the same counts row-normalised: the last row has no truth and is drawn as such
    image, metadata = plots.confusion_figure(matrix, ["cat", "dog", "bird"], "normalised", normalise=True)
    expected = np.array([[5 / 6, 1 / 6, 0], [2 / 12, 7 / 12, 3 / 12], [np.nan] * 3])
    assert_cells_follow(image, metadata["darknetpy.cells"], expected)


def test_confusion_figure_many_classes_stays_readable():
    n = 81  # COCO's classes and the background
    matrix = np.arange(n * n).reshape(n, n)
    image, metadata = plots.confusion_figure(matrix, [f"class{k}" for k in range(n)], "detections")
    cells = metadata["darknetpy.cells"]
    assert cells["size"] >= 12 and image.width >= cells["left"] + n * cells["size"]
    assert_cells_follow(image, cells, matrix / matrix.max())


def test_bar_figure_values_and_missing():
    image, metadata = plots.bar_figure([0.5, float("nan"), 1.0], ["a", "b", "c"], "IoU per class", "IoU")
    assert metadata["darknetpy.values"] == [0.5, None, 1.0]
    assert image.width > 600 and image.height > 100


def test_save_png_is_atomic_and_leaves_nothing_on_error(tmp_path):
    image, metadata = plots.bar_figure([0.5], ["a"], "t", "v")
    metadata["darknetpy.bad"] = object()  # not JSON: fails before the file is opened
    with pytest.raises(TypeError):
        plots.save_png(image, tmp_path / "x.png", metadata)
    assert list(tmp_path.iterdir()) == []


# ---- detection curves and confusion ----------------------------------------------------------------------------
def det(boxes, scores):
    return ImageDetections(np.array(boxes, np.float64).reshape(-1, 4), np.array(scores, np.float32).reshape(-1, 2))


def truth(boxes, classes):
    return ImageTruths(np.array(boxes, np.float64).reshape(-1, 4), np.array(classes, np.int64))


CENTRE = [0.5, 0.5, 0.5, 0.5]
SMALL = [0.1, 0.1, 0.1, 0.1]
# one box at the centre of each image scoring class a 0.865 and class b 0.264; image 0 holds an "a" there,
# image 1 a "b" there and a "b" elsewhere (tests/test_map.py's end-to-end case)
DETECTIONS = [det([CENTRE], [[0.865, 0.264]]), det([CENTRE], [[0.865, 0.264]])]
TRUTHS = [truth([CENTRE], [0]), truth([CENTRE, SMALL], [1, 1])]


def test_precision_recall_curves_by_hand():
    a, b = precision_recall_curves(DETECTIONS, TRUTHS, ["a", "b"])
    # a: TP (image 0) then FP (image 1; equal scores keep list order). b: FP (image 0) then TP, 2 truths.
    assert a.precision.tolist() == [1.0, 0.5] and a.recall.tolist() == [1.0, 1.0]
    assert b.precision.tolist() == [0.0, 0.5] and b.recall.tolist() == [0.0, 0.5]
    result = detection_map(DETECTIONS, TRUTHS, ["a", "b"])
    assert [a.area(), b.area()] == pytest.approx([c.ap for c in result.classes])
    # all classes: a's envelope is 1 everywhere, b's 0.5 up to recall 0.5 and 0 beyond
    expected = np.where(RECALL_GRID <= 0.5, 0.75, 0.5)
    assert mean_curve([a, b]) == pytest.approx(expected)


def test_detection_confusion_by_hand():
    # image 0: a (0.865) takes the a; b (0.264) finds no truth left -> background row.
    # image 1: a takes the centre b (any class may be taken); b finds only the far b (IoU 0) -> background;
    # the far b was never taken -> background column.
    matrix = detection_confusion(DETECTIONS, TRUTHS, 2, thresh=0.25)
    assert matrix.tolist() == [[1, 0, 0], [1, 0, 1], [0, 2, 0]]
    # above 0.3 only the a detections remain
    assert detection_confusion(DETECTIONS, TRUTHS, 2, thresh=0.3).tolist() == [[1, 0, 0], [1, 0, 1], [0, 0, 0]]
    # a threshold equal to the score does not pass (strictly greater, in float32 as Darknet)
    assert detection_confusion(DETECTIONS, TRUTHS, 2, thresh=float(np.float32(0.865))).sum() == 3


def test_detection_confusion_image_without_detections():
    # an untrained detector finds nothing in some images: their truths all land in the background column
    empty = ImageDetections(np.zeros((0, 4)), np.zeros(0, np.float32))
    matrix = detection_confusion([empty, DETECTIONS[0]], [truth([CENTRE, SMALL], [0, 1]), TRUTHS[0]], 2)
    assert matrix.tolist() == [[1, 0, 1], [0, 0, 1], [0, 1, 0]]


def test_detection_confusion_iou_threshold():
    shifted = det([[0.6, 0.5, 0.5, 0.5]], [[0.9, 0.0]])  # IoU with CENTRE = 0.4 / 0.6 = 0.667
    assert detection_confusion([shifted], [truth([CENTRE], [1])], 2, iou_thresh=0.5).tolist() == \
        [[0, 0, 0], [1, 0, 0], [0, 0, 0]]
    assert detection_confusion([shifted], [truth([CENTRE], [1])], 2, iou_thresh=0.7).tolist() == \
        [[0, 0, 0], [0, 0, 1], [1, 0, 0]]


# ---- progress -------------------------------------------------------------------------------------------------
class Terminal(io.StringIO):
    def isatty(self):
        return True


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_progress_bar_on_a_terminal_has_rate_and_eta():
    stream, clock = Terminal(), Clock()
    progress = Progress("valid", stream, clock=clock)
    clock.now = 2.0
    progress(5, 20)  # 2.5 images/s, 15 left -> 6 s
    assert stream.getvalue() == "\r\033[Kvalid [#######-----------------------] 5/20  2.5 images/s  ETA 0:06"
    clock.now = 8.0
    progress(20, 20)
    assert stream.getvalue().endswith("\r\033[Kvalid [##############################] 20/20  2.5 images/s  "
                                      "in 0:08\n")


def test_progress_in_a_log_prints_tenths_or_nothing():
    stream, clock = io.StringIO(), Clock()
    progress = Progress("map", stream, clock=clock)
    for done in range(1, 101):
        clock.now = done / 10
        progress(done, 100)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10 and lines[0] == "map: 10/100 (10.0 images/s, 0:01)" and "\r" not in stream.getvalue()
    quiet = io.StringIO()
    progress = Progress("predict", quiet, log_lines=False)
    for done in range(1, 11):
        progress(done, 10)
    assert quiet.getvalue() == ""


def test_progress_hide_and_single_image():
    stream = Terminal()
    progress = Progress("predict", stream)
    progress(1, 1)          # one image needs no bar
    assert stream.getvalue() == ""
    progress(1, 3)
    progress.hide()
    assert stream.getvalue().endswith("\r\033[K") and not progress.drawn


def test_bar_text_and_durations():
    assert bar_text(0, 0) == "[" + "-" * 30 + "]"
    assert bar_text(7, 5) == "[" + "#" * 30 + "]"
    assert [format_duration(s) for s in (7, 754, 3723)] == ["0:07", "12:34", "1:02:03"]
