"""Segmentation metrics from a confusion matrix of pixels (rows: true class, columns: predicted class).

Pixels whose truth is the ignore index (255) are not counted at all. Pixel accuracy = correct / counted.
IoU of class c = TP / (TP + FP + FN); a class that appears neither in the truth nor in the prediction has
no IoU (NaN, `null` in JSON) and is left out of the mean IoU (mIoU), which averages the others.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

IGNORE_INDEX = 255


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """(classes, classes) int64 pixel counts of one truth/prediction pair of equal shape; ignored truth pixels
    are skipped. Predictions must be below `classes`."""
    if truth.shape != predicted.shape:
        raise ValueError(f"truth {truth.shape} and prediction {predicted.shape} differ in shape")
    t = truth.reshape(-1).astype(np.int64)
    p = predicted.reshape(-1).astype(np.int64)
    keep = t != IGNORE_INDEX
    t, p = t[keep], p[keep]
    if t.size and (t.max() >= classes or p.max() >= classes or min(t.min(), p.min()) < 0):
        raise ValueError(f"class indices must be below {classes} (or {IGNORE_INDEX} in the truth)")
    return np.bincount(t * classes + p, minlength=classes * classes).reshape(classes, classes)


@dataclass
class SegmentationScores:
    """Pixel accuracy, per-class IoU and mIoU of a confusion matrix."""
    confusion: np.ndarray
    names: list[str]
    images: int = 0

    @property
    def pixels(self) -> int:
        return int(self.confusion.sum())

    @property
    def pixel_accuracy(self) -> float:
        total = self.pixels
        return float(np.trace(self.confusion) / total) if total else math.nan

    @property
    def iou(self) -> np.ndarray:
        """Per-class IoU, NaN for a class absent from both truth and prediction."""
        tp = np.diag(self.confusion).astype(np.float64)
        union = self.confusion.sum(axis=0) + self.confusion.sum(axis=1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    @property
    def miou(self) -> float:
        values = self.iou
        present = values[~np.isnan(values)]
        return float(present.mean()) if present.size else math.nan

    def as_dict(self) -> dict:
        return {"pixel_accuracy": _json_number(self.pixel_accuracy), "miou": _json_number(self.miou),
                "iou": {name: _json_number(value) for name, value in zip(self.names, self.iou)}}

    def lines(self) -> list[str]:
        """Per-class IoU lines, then the summary line."""
        width = max((len(name) for name in self.names), default=5)
        out = [f"{name:>{width}}: IoU {'   -  ' if math.isnan(v) else f'{v:.4f}'}"
               for name, v in zip(self.names, self.iou)]
        out.append(f"pixel accuracy: {self.pixel_accuracy:f}, mIoU: {self.miou:f}  ({self.images} images, "
                   f"{self.pixels} pixels)")
        return out


def scores(confusion: np.ndarray, names: Sequence[str] | None = None, images: int = 0) -> SegmentationScores:
    classes = confusion.shape[0]
    names = list(names) if names is not None else [str(c) for c in range(classes)]
    return SegmentationScores(confusion, names, images)


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)
