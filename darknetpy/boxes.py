"""Detections and the box arithmetic around them: letterbox correction, IoU, and Darknet's NMS variants.

A `Detection` is one candidate box as Darknet's `detection` struct holds it: centre/size normalised to the
original image, the objectness, and per-class scores already multiplied by the objectness and zeroed when
not above the detection threshold. The NMS functions reorder the list and zero scores in place, exactly
as Darknet mutates its array, because the printing order of `detector test` is the array order NMS leaves.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .kernels import yolo as kernels

FLOAT = np.float32

NMS_KINDS = ("default", "greedynms", "diounms", "cornersnms")
_KIND_CODES = {"greedynms": kernels.IOU_GREEDY_DIOU, "diounms": kernels.IOU_DIOU_BETA}


@dataclass(eq=False)
class Detection:
    """One candidate box. `box` = (x_centre, y_centre, width, height) as fractions of the image;
    `probs[j]` = objectness * p(class j), 0 unless it exceeded the threshold (NMS may zero it later)."""
    box: tuple[float, float, float, float]
    objectness: float
    probs: np.ndarray
    layer: int = field(default=-1, compare=False)

    @property
    def best_class(self) -> int:
        """Index of the highest class score (the lowest index on ties), or -1 if every score is 0."""
        if self.probs.size == 0 or not np.any(self.probs > 0):
            return -1
        return int(np.argmax(self.probs))

    @property
    def best_score(self) -> float:
        j = self.best_class
        return float(self.probs[j]) if j >= 0 else 0.0

    def classes_above(self, thresh: float) -> list[int]:
        """Class indices whose score is strictly above thresh (compared in float32 like Darknet)."""
        return [int(j) for j in np.nonzero(self.probs > FLOAT(thresh))[0]]

    def pixel_box(self, img_w: int, img_h: int) -> tuple[float, float, float, float]:
        return to_pixel_box(self.box, img_w, img_h)


def to_pixel_box(box: Sequence[float], img_w: int, img_h: int) -> tuple[float, float, float, float]:
    """(left, top, width, height) in pixels of a normalised (x, y, w, h) box; not clamped to the image."""
    x, y, w, h = (float(v) for v in box)
    return ((x - w / 2) * img_w, (y - h / 2) * img_h, w * img_w, h * img_h)


def darknet_rect(box: Sequence[float], img_w: int, img_h: int) -> tuple[int, int, int, int]:
    """Darknet's drawing rectangle (left, top, right, bottom): truncated toward zero, then clamped."""
    x, y, w, h = (float(v) for v in box)
    left = int((x - w / 2.0) * img_w)
    right = int((x + w / 2.0) * img_w)
    top = int((y - h / 2.0) * img_h)
    bottom = int((y + h / 2.0) * img_h)
    return max(left, 0), max(top, 0), min(right, img_w - 1), min(bottom, img_h - 1)


# ----------------------------------------------------------------------------------- box correction

def letterbox_scale(img_w: int, img_h: int, net_w: int, net_h: int) -> tuple[int, int]:
    """(new_w, new_h): the size the image had inside the letterboxed network input (int arithmetic)."""
    if FLOAT(net_w) / FLOAT(img_w) < FLOAT(net_h) / FLOAT(img_h):
        return net_w, (img_h * net_w) // img_w
    return (img_w * net_h) // img_h, net_h


def correct_letterbox_boxes(boxes: np.ndarray, img_w: int, img_h: int, net_w: int, net_h: int) -> None:
    """Darknet's correct_yolo_boxes / correct_region_boxes, in place on float32 (N, 4) boxes: map boxes
    normalised to the letterboxed network input back to fractions of the original image. The offset uses
    the fractional (net - new)/2 although the letterbox pasted the image at an int offset — as Darknet."""
    new_w, new_h = letterbox_scale(img_w, img_h, net_w, net_h)
    x = boxes[:, 0].astype(np.float64)
    y = boxes[:, 1].astype(np.float64)
    boxes[:, 0] = (x - (net_w - new_w) / 2.0 / net_w) / np.float64(FLOAT(new_w) / FLOAT(net_w))
    boxes[:, 1] = (y - (net_h - new_h) / 2.0 / net_h) / np.float64(FLOAT(new_h) / FLOAT(net_h))
    boxes[:, 2] *= FLOAT(net_w) / FLOAT(new_w)
    boxes[:, 3] *= FLOAT(net_h) / FLOAT(new_h)


# ------------------------------------------------------------------------------------------- IoU

def _box32(box: Sequence[float]) -> np.ndarray:
    return np.asarray(box, dtype=FLOAT).reshape(4)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Darknet's box_iou of two (x_centre, y_centre, w, h) boxes in float32 (spec §9.5)."""
    return float(kernels.box_iou(_box32(a), _box32(b)))


def diou(a: Sequence[float], b: Sequence[float], beta: float = 0.6) -> float:
    """AlexeyAB's DIoU for NMS: IoU − (centre distance² / enclosing box diagonal²)^beta."""
    return float(kernels.box_diou(_box32(a), _box32(b), float(FLOAT(beta))))


# ------------------------------------------------------------------------------------------- NMS

def _zero_objectness_to_end(dets: list[Detection]) -> int:
    """Darknet's first NMS step: swap every objectness-0 detection with the last candidate (re-checking
    the swapped-in one). Returns how many detections take part in the rest."""
    k = len(dets) - 1
    i = 0
    while i <= k:
        if dets[i].objectness == 0:
            dets[i], dets[k] = dets[k], dets[i]
            k -= 1
        else:
            i += 1
    return k + 1


def _arrays(dets: Sequence[Detection], classes: int) -> tuple[np.ndarray, np.ndarray]:
    boxes = np.array([d.box for d in dets], dtype=FLOAT).reshape(len(dets), 4)
    probs = np.zeros((len(dets), classes), dtype=FLOAT)
    for i, d in enumerate(dets):
        m = min(classes, d.probs.shape[0])
        probs[i, :m] = d.probs[:m]
    return boxes, probs


def _write_back(dets: Sequence[Detection], probs: np.ndarray) -> None:
    for i, d in enumerate(dets):
        m = min(probs.shape[1], d.probs.shape[0])
        d.probs[:m] = probs[i, :m]


def _sorted_class_nms(dets: list[Detection], classes: int, thresh: float, kind: int,
                      beta: float) -> list[Detection]:
    total = _zero_objectness_to_end(dets)
    if total == 0 or classes <= 0:
        return dets
    active = dets[:total]
    boxes, probs = _arrays(active, classes)
    order = np.arange(total)
    limit = FLOAT(thresh)
    for k in range(classes):
        # qsort in glibc is a merge sort here: stable, so ties keep the previous class's order
        order = order[np.argsort(-probs[order, k], kind="stable")]
        kernels.nms_suppress_class(boxes, probs, order, total, k, limit, kind, beta)
    _write_back(active, probs)
    dets[:total] = [active[i] for i in order]
    return dets


def nms_sort(dets: list[Detection], classes: int, thresh: float) -> list[Detection]:
    """Darknet's do_nms_sort, in place: objectness-0 detections go to the end (outside NMS); then for each
    class the others are stably sorted by that class's score and each scored detection zeroes the class
    score of every later one with IoU strictly greater than thresh. Returns `dets` (reordered)."""
    return _sorted_class_nms(dets, classes, thresh, kernels.IOU_PLAIN, 0.0)


def diou_nms(dets: list[Detection], classes: int, thresh: float, nms_kind: str = "greedynms",
             beta_nms: float = 0.6) -> list[Detection]:
    """AlexeyAB's diounms_sort, in place: as nms_sort, but a later box is suppressed when
    `greedynms`: DIoU with exponent 0.6 > thresh; `diounms`: DIoU with exponent beta_nms > thresh.
    `default`/`cornersnms` fall back to nms_sort, as AlexeyAB maps unknown kinds to its default NMS."""
    if nms_kind not in NMS_KINDS:
        raise ValueError(f"unknown nms_kind {nms_kind!r}; expected one of {', '.join(NMS_KINDS)}")
    if nms_kind not in _KIND_CODES:
        return nms_sort(dets, classes, thresh)
    beta = float(FLOAT(beta_nms))
    return _sorted_class_nms(dets, classes, thresh, _KIND_CODES[nms_kind], beta)


def nms_obj(dets: list[Detection], classes: int, thresh: float) -> list[Detection]:
    """Darknet's do_nms_obj, in place: one stable sort by objectness; each surviving box zeroes the
    objectness and every class score of later boxes with IoU > thresh."""
    total = _zero_objectness_to_end(dets)
    if total == 0:
        return dets
    active = dets[:total]
    boxes, probs = _arrays(active, max(classes, 0))
    objectness = np.array([d.objectness for d in active], dtype=FLOAT)
    order = np.argsort(-objectness, kind="stable")
    kernels.nms_suppress_objectness(boxes, objectness, probs, order, total, FLOAT(thresh))
    _write_back(active, probs)
    for d, obj in zip(active, objectness):
        d.objectness = float(obj)
    dets[:total] = [active[i] for i in order]
    return dets
