"""Pixel accuracy, IoU and mIoU on hand-computed cases."""
import math

import numpy as np
import pytest

from darknetpy.metrics.segmentation import confusion_matrix, scores

I = 255


def test_hand_case_with_an_absent_class_and_ignored_pixels():
    truth = np.array([[0, 0, 1, 1],
                      [0, I, 1, I]], np.uint8)
    pred = np.array([[0, 1, 1, 1],
                     [0, 3, 0, 1]], np.uint8)     # the ignored pixels' predictions (3, 1) do not count
    result = scores(confusion_matrix(truth, pred, 4), ["bg", "a", "b", "c"], images=1)
    # counted: 6 pixels, correct: (0,0) (0,2) (0,3) (1,0) = 4
    assert result.pixel_accuracy == pytest.approx(4 / 6)
    iou = result.iou
    # class 0: TP 2, truth 3, predicted 3 -> 2 / 4; class 1: TP 2, truth 3, predicted 3 -> 2 / 4
    assert iou[0] == pytest.approx(0.5) and iou[1] == pytest.approx(0.5)
    # class 2 absent from truth and prediction: no IoU, not in the mean; class 3 only predicted on an
    # ignored pixel, so absent too
    assert math.isnan(iou[2]) and math.isnan(iou[3])
    assert result.miou == pytest.approx(0.5)
    d = result.as_dict()
    assert d["iou"] == {"bg": 0.5, "a": 0.5, "b": None, "c": None}
    assert d["miou"] == pytest.approx(0.5) and d["pixel_accuracy"] == pytest.approx(4 / 6)


def test_a_class_predicted_but_never_true_has_iou_zero():
    truth = np.array([0, 0, 0, 0], np.uint8)
    pred = np.array([0, 0, 0, 2], np.uint8)
    result = scores(confusion_matrix(truth, pred, 3))
    assert result.iou[0] == pytest.approx(3 / 4)
    assert result.iou[2] == 0 and math.isnan(result.iou[1])
    assert result.miou == pytest.approx((0.75 + 0) / 2)


def test_confusions_add_up_over_images():
    a = confusion_matrix(np.array([0, 1], np.uint8), np.array([0, 0], np.uint8), 2)
    b = confusion_matrix(np.array([1, 1], np.uint8), np.array([1, 1], np.uint8), 2)
    np.testing.assert_array_equal(a + b, [[1, 0], [1, 2]])
    assert scores(a + b).miou == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_everything_ignored_gives_nan_not_an_error():
    result = scores(confusion_matrix(np.full(3, I, np.uint8), np.zeros(3, np.uint8), 2))
    assert math.isnan(result.pixel_accuracy) and math.isnan(result.miou)
