"""What the `map --plots` pictures show, computed from the same per-image detections and truths as the mAP
(darknetpy.metrics.detection), with its rules: ranking by score (stable), COCO's greedy matching at the IoU
threshold, every (box, class) pair with a positive score one ranked detection.

- Precision-recall curves: per class, precision and recall after each ranked detection; "all classes"
  is the mean over the classes that have truths of each class's precision envelope (best precision at
  this recall or beyond) sampled at 101 recalls 0, 0.01, ..., 1 (0 where a class never reaches it).
- Confusion matrix at the confidence threshold, with a background row and column: in each image the
  (box, class) pairs scoring above `thresh` (float32, as Darknet), highest first, each take the unmatched
  truth of any class with the best IoU if that IoU is above the IoU threshold: a count at (truth class,
  detected class). A detection that takes no truth counts at (background, detected class); a truth that
  no detection took at (truth class, background). Rows are truths, columns detections, background last.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .metrics.detection import (ImageDetections, ImageTruths, envelope_area, envelope_at, iou_matrix,
                                precision_recall, rank_classes)

RECALL_GRID = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class ClassCurve:
    name: str
    recall: np.ndarray       # after each ranked detection
    precision: np.ndarray
    truths: int

    def envelope_at(self, recalls: np.ndarray) -> np.ndarray:
        """Best precision at a recall >= each of `recalls` (0 where it is never reached)."""
        return envelope_at(self.precision, self.recall, recalls)

    def area(self) -> float | None:
        """Area under the precision envelope at every recall step (the `points=0` AP); None without truths."""
        if self.truths == 0:
            return None
        return envelope_area(self.precision, self.recall)


def precision_recall_curves(detections: Sequence[ImageDetections], truths: Sequence[ImageTruths],
                            names: Sequence[str], iou_thresh: float = 0.5) -> list[ClassCurve]:
    """One curve per class (see the module docstring)."""
    curves = []
    for name, ranking in zip(names, rank_classes(detections, truths, len(names), np.array([iou_thresh]))):
        scores, is_tp, _ = ranking.joined()
        precision, recall = precision_recall(is_tp[0, np.argsort(-scores, kind="stable")], ranking.truths)
        curves.append(ClassCurve(str(name), recall, precision, ranking.truths))
    return curves


def mean_curve(curves: Sequence[ClassCurve]) -> np.ndarray:
    """The all-classes precision at RECALL_GRID: the mean of the envelopes of the classes with truths."""
    present = [curve.envelope_at(RECALL_GRID) for curve in curves if curve.truths > 0]
    return np.mean(present, axis=0) if present else np.zeros(len(RECALL_GRID))


def detection_confusion(detections: Sequence[ImageDetections], truths: Sequence[ImageTruths], classes: int,
                        thresh: float = 0.25, iou_thresh: float = 0.5) -> np.ndarray:
    """(classes + 1, classes + 1) int64 counts, background last (see the module docstring)."""
    matrix = np.zeros((classes + 1, classes + 1), np.int64)
    background = classes
    limit = np.float32(thresh)
    for image_dets, image_truths in zip(detections, truths):
        boxes = np.asarray(image_dets.boxes, np.float64).reshape(-1, 4)
        image_scores = np.asarray(image_dets.scores, np.float32).reshape(len(boxes), -1 if len(boxes) else classes)
        image_scores = image_scores[:, :classes]
        truth_boxes = np.asarray(image_truths.boxes, np.float64).reshape(-1, 4)
        truth_classes = np.asarray(image_truths.classes, np.int64).reshape(-1)
        rows, cols = np.nonzero(image_scores > limit)          # (box, class) pairs, box-major order
        order = np.argsort(-image_scores[rows, cols], kind="stable")
        rows, cols = rows[order], cols[order]
        ious = iou_matrix(boxes[rows], truth_boxes)
        taken = np.zeros(len(truth_boxes), bool)
        for k, detected in enumerate(cols):
            candidates = np.where(taken, -1.0, ious[k]) if len(truth_boxes) else np.zeros(0)
            best = int(candidates.argmax()) if len(candidates) else -1
            if best >= 0 and candidates[best] > iou_thresh:
                taken[best] = True
                matrix[truth_classes[best], detected] += 1
            else:
                matrix[background, detected] += 1
        for t in np.nonzero(~taken)[0]:
            matrix[truth_classes[t], background] += 1
    return matrix
