"""Mean average precision of a detector: pure functions over numpy arrays (no files, no network).

Input per image: candidate boxes with per-class scores (Darknet's `detection` array after NMS: a score of 0
means "not a detection of this class") and the labelled truths. Every (box, class) pair with a positive
score is one ranked detection, as in AlexeyAB's validate_detector_map (spec §12.5).

The rules, and where they come from:
- Ranking: by score over the whole valid set, highest first; equal scores keep list order (image order,
  then box order, then class), which is what AlexeyAB's qsort (glibc merge sort, stable) and pycocotools'
  mergesort both do.
- Matching (COCO's rule, the one the spec states): within an image, detections of a class in score order
  each take the best-IoU truth of the same class that no higher-ranked detection took, if that IoU is
  > iou_thresh; otherwise the detection is a false positive. (AlexeyAB instead looks only at the best truth
  overall and calls the detection a false positive when that one is taken; the two differ only for truths
  that overlap each other.) IoU strictly greater than the threshold, as Darknet; pycocotools uses >=,
  which differs only for an IoU exactly on a threshold.
- AP with `points=0`: area under the precision envelope at every recall step (VOC2010+, AlexeyAB's
  default). With `points=n` (11: VOC2007, 101: COCO): the mean over recall thresholds r of the best
  precision at a recall >= r. The thresholds are np.linspace(0, 1, n) as pycocotools (and the VOC devkit's
  np.arange) compute them, so e.g. 0.3 is 0.30000000000000004 and a recall of exactly 3/10 does not reach
  it; AlexeyAB's i/(n-1) would count it. We follow the two reference evaluators.
- A class without truths has no AP (None) and is left out of the mean, as pycocotools does; AlexeyAB
  counts it as 0. A class with truths but no detections has AP 0.
- mAP@[.5:.95]: COCO's, the mean over IoU thresholds .50:.05:.95 and classes of the 101-point AP, every
  detection kept (pycocotools with maxDets large enough, areaRng all).
- At the confidence threshold `thresh` (score > thresh, compared in float32 as Darknet): TP and FP per
  class and overall, precision TP/(TP+FP), recall TP/truths, F1, and AlexeyAB's average IoU: the summed
  IoU of the true positives divided by TP+FP (false positives count 0). Empty ratios are 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import numpy as np

# pycocotools' thresholds, computed the way it computes them
COCO_IOU_THRESHOLDS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
AP_POINTS = (0, 11, 101)


class ImageDetections(NamedTuple):
    """One image's candidates: `boxes` (N, 4) as (x_centre, y_centre, width, height) in any unit shared
    with the truths; `scores` (N, classes), 0 where a box is not a detection of that class."""
    boxes: np.ndarray
    scores: np.ndarray


class ImageTruths(NamedTuple):
    """One image's labelled objects: `boxes` (M, 4) centre/size like the detections, `classes` (M,)."""
    boxes: np.ndarray
    classes: np.ndarray


@dataclass(frozen=True)
class ClassResult:
    name: str
    ap: float | None          # at iou_thresh with the chosen points rule; None without truths
    ap50_95: float | None     # COCO's mean over .50:.05:.95 (101 points)
    tp: int                   # at the confidence threshold
    fp: int
    truths: int


@dataclass(frozen=True)
class MapResult:
    classes: list[ClassResult]
    map50: float              # mean of `ap` over classes with truths (nan if none has); at iou_thresh
    map50_95: float
    precision: float
    recall: float
    f1: float
    avg_iou: float
    tp: int
    fp: int
    truths: int
    detections: int
    iou_thresh: float = 0.5
    points: int = 0
    thresh: float = 0.25
    ap_per_iou: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)  # (10, classes)

    def as_dict(self) -> dict:
        """The `darknetpy map --json` object; `map50` is the mAP at iou_thresh (0.5 unless changed)."""
        return {"map50": _json_number(self.map50), "map50_95": _json_number(self.map50_95),
                "precision": self.precision, "recall": self.recall, "f1": self.f1, "avg_iou": self.avg_iou,
                "classes": [{"name": c.name, "ap50": _json_number(c.ap), "tp": c.tp, "fp": c.fp,
                             "truths": c.truths} for c in self.classes]}


def _json_number(value: float | None) -> float | None:
    """JSON has no NaN: an undefined AP or mAP is null."""
    return None if value is None or value != value else float(value)


# ------------------------------------------------------------------------------------------------ IoU

def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` (N, 4) with every box of `b` (M, 4), both centre/size, in float64:
    (N, M). The formula is Darknet's box_iou (no +1 on widths, unlike the old VOC devkit)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ax0, ax1 = a[:, 0:1] - a[:, 2:3] / 2, a[:, 0:1] + a[:, 2:3] / 2
    ay0, ay1 = a[:, 1:2] - a[:, 3:4] / 2, a[:, 1:2] + a[:, 3:4] / 2
    bx0, bx1 = b[:, 0] - b[:, 2] / 2, b[:, 0] + b[:, 2] / 2
    by0, by1 = b[:, 1] - b[:, 3] / 2, b[:, 1] + b[:, 3] / 2
    iw = np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None)
    ih = np.clip(np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None)
    inter = iw * ih
    union = (a[:, 2:3] * a[:, 3:4]) + (b[:, 2] * b[:, 3]) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(union > 0, inter / union, 0.0)
    return out


# --------------------------------------------------------------------------------------------- matching

def greedy_match(ious: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCO's greedy matching of one image and class. `ious` (n, m): detections in score order (rows) by
    truths; for each threshold the detections in turn take the best-IoU truth not taken yet if that IoU is
    > the threshold (first maximum on ties). Returns (is_tp (K, n) bool, matched IoU (K, n), 0 for FPs)."""
    n, m = ious.shape
    k = len(thresholds)
    is_tp = np.zeros((k, n), bool)
    matched = np.zeros((k, n), np.float64)
    if n == 0 or m == 0:
        return is_tp, matched
    taken = np.zeros((k, m), bool)
    rows = np.arange(k)
    lowest = thresholds.min()
    for d in np.nonzero(ious.max(axis=1) > lowest)[0]:  # the rest are false positives at every threshold
        candidates = np.where(taken, -1.0, ious[d][None, :])
        best = candidates.argmax(axis=1)
        best_iou = candidates[rows, best]
        hit = best_iou > thresholds
        taken[rows[hit], best[hit]] = True
        is_tp[:, d] = hit
        matched[:, d] = np.where(hit, best_iou, 0.0)
    return is_tp, matched


# ------------------------------------------------------------------------------------------ AP rules

def precision_recall(is_tp: np.ndarray, truths: int) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall after each ranked detection (is_tp in rank order)."""
    tp = np.cumsum(is_tp, dtype=np.float64)
    fp = np.cumsum(~is_tp, dtype=np.float64)
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / truths if truths else np.zeros_like(tp)
    return precision, recall


def average_precision(is_tp: np.ndarray, truths: int, points: int = 0) -> float | None:
    """AP of one class from its ranked detections' TP flags and its number of truths (None without truths).
    points=0: area under the precision envelope at every recall step; n: mean of the envelope at
    np.linspace(0, 1, n) recall thresholds (0 where the recall never gets there)."""
    if points not in AP_POINTS:
        raise ValueError(f"points must be one of {AP_POINTS}, got {points}")
    if truths == 0:
        return None
    if len(is_tp) == 0:
        return 0.0
    precision, recall = precision_recall(np.asarray(is_tp, bool), truths)
    if points == 0:
        return envelope_area(precision, recall)
    return float(envelope_at(precision, recall, np.linspace(0.0, 1.0, points)).mean())


def _envelope(precision: np.ndarray) -> np.ndarray:
    """The best precision at each recall step or beyond."""
    return np.maximum.accumulate(precision[::-1])[::-1]


def envelope_area(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the precision envelope at every recall step (the `points=0` AP)."""
    return float(np.sum(np.diff(recall, prepend=0.0) * _envelope(precision)))


def envelope_at(precision: np.ndarray, recall: np.ndarray, recalls: np.ndarray) -> np.ndarray:
    """The precision envelope at a recall >= each of `recalls` (0 where the recall never gets there)."""
    values = np.zeros(len(recalls))
    if len(recall) == 0:
        return values
    first = np.searchsorted(recall, recalls, side="left")  # recall is non-decreasing
    reached = first < len(recall)
    values[reached] = _envelope(precision)[first[reached]]
    return values


# ---------------------------------------------------------------------------------------------- mAP

@dataclass
class ClassRanking:
    """Per class, the detections of every image in list order (ranked later), matched at K IoU thresholds."""
    thresholds: int
    scores: list[np.ndarray] = field(default_factory=list)
    is_tp: list[np.ndarray] = field(default_factory=list)      # each (K, n)
    iou: list[np.ndarray] = field(default_factory=list)        # each (n,), at the first threshold
    truths: int = 0

    def joined(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """scores (n,), is_tp (K, n) and matched IoU (n,) of all images, in list order."""
        if not self.scores:
            return np.zeros(0, np.float32), np.zeros((self.thresholds, 0), bool), np.zeros(0)
        return np.concatenate(self.scores), np.concatenate(self.is_tp, axis=1), np.concatenate(self.iou)


def rank_classes(detections: Sequence[ImageDetections], truths: Sequence[ImageTruths], classes: int,
                 thresholds: np.ndarray) -> list[ClassRanking]:
    """Every image's (box, class) detections with a positive score, per class in score order within the
    image, each matched greedily to that image's truths of its class at each IoU threshold."""
    rankings = [ClassRanking(len(thresholds)) for _ in range(classes)]
    for image_dets, image_truths in zip(detections, truths):
        boxes = np.asarray(image_dets.boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(image_dets.scores, np.float32)
        scores = scores.reshape(len(boxes), -1) if len(boxes) else np.zeros((0, classes), np.float32)
        if scores.shape[1] > classes:
            raise ValueError(f"detections score {scores.shape[1]} classes but {classes} names are given")
        truth_boxes = np.asarray(image_truths.boxes, np.float64).reshape(-1, 4)
        truth_classes = np.asarray(image_truths.classes, np.int64).reshape(-1)
        if truth_classes.size and (truth_classes.min() < 0 or truth_classes.max() >= classes):
            raise ValueError(f"a truth class is outside 0..{classes - 1}")
        ious = iou_matrix(boxes, truth_boxes)
        for c in range(classes):
            own_truths = np.nonzero(truth_classes == c)[0]
            rankings[c].truths += len(own_truths)
            if c >= scores.shape[1]:
                continue
            dets = np.nonzero(scores[:, c] > 0)[0]
            if len(dets) == 0:
                continue
            dets = dets[np.argsort(-scores[dets, c], kind="stable")]
            is_tp, matched = greedy_match(ious[np.ix_(dets, own_truths)], thresholds)
            rankings[c].scores.append(scores[dets, c])
            rankings[c].is_tp.append(is_tp)
            rankings[c].iou.append(matched[0])
    return rankings


def detection_map(detections: Sequence[ImageDetections], truths: Sequence[ImageTruths], names: Sequence[str],
                  iou_thresh: float = 0.5, points: int = 0, thresh: float = 0.25) -> MapResult:
    """mAP and the figures AlexeyAB's `detector map` prints, from per-image detections and truths (same
    order, same box units). `names` gives the class count; see the module docstring for every rule."""
    if len(detections) != len(truths):
        raise ValueError(f"{len(detections)} images of detections but {len(truths)} of truths")
    if points not in AP_POINTS:
        raise ValueError(f"points must be one of {AP_POINTS}, got {points}")
    classes = len(names)
    thresholds = np.concatenate([[iou_thresh], COCO_IOU_THRESHOLDS])  # row 0: the user's threshold
    rankings = rank_classes(detections, truths, classes, thresholds)

    limit = np.float32(thresh)
    results: list[ClassResult] = []
    ap_per_iou = np.full((len(COCO_IOU_THRESHOLDS), classes), np.nan)
    total_tp = total_fp = total_truths = total_dets = 0
    iou_sum = 0.0
    for c, ranking in enumerate(rankings):
        scores, is_tp, matched_iou = ranking.joined()
        ranked = is_tp[:, np.argsort(-scores, kind="stable")]
        ap = average_precision(ranked[0], ranking.truths, points)
        for t in range(len(COCO_IOU_THRESHOLDS)):
            value = average_precision(ranked[t + 1], ranking.truths, 101)
            ap_per_iou[t, c] = np.nan if value is None else value
        # a detection's TP status depends only on higher scores, so those above thresh are complete
        above = scores > limit
        tp = int(np.count_nonzero(is_tp[0] & above))
        fp = int(np.count_nonzero(above)) - tp
        iou_sum += float(matched_iou[above].sum())
        total_tp += tp
        total_fp += fp
        total_truths += ranking.truths
        total_dets += len(scores)
        coco = None if ranking.truths == 0 else float(ap_per_iou[:, c].mean())
        results.append(ClassResult(str(names[c]), ap, coco, tp, fp, ranking.truths))

    defined = [r.ap for r in results if r.ap is not None]
    map_value = float(np.mean(defined)) if defined else float("nan")
    coco_values = [r.ap50_95 for r in results if r.ap50_95 is not None]
    map50_95 = float(np.mean(coco_values)) if coco_values else float("nan")
    precision = total_tp / (total_tp + total_fp) if total_tp + total_fp else 0.0
    recall = total_tp / total_truths if total_truths else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    avg_iou = iou_sum / (total_tp + total_fp) if total_tp + total_fp else 0.0
    return MapResult(results, map_value, map50_95, precision, recall, f1, avg_iou, total_tp, total_fp,
                     total_truths, total_dets, float(iou_thresh), points, float(thresh), ap_per_iou)
