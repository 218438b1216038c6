"""Anchor boxes by k-means (AlexeyAB's `detector calc_anchors`, spec §12.6): pure functions over (w, h)
arrays of training boxes already scaled to the network input.

Distance 1 − IoU of boxes sharing a corner (only shapes matter), centres updated to the mean (w, h) of
their members. Seeding is k-means++ under the same distance from a numpy Generator, and several seeded
starts are run, keeping the one with the best mean IoU: the result depends only on the boxes and the seed
(AlexeyAB seeds from the clock and runs once, so two of its runs rarely agree).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AnchorResult:
    anchors: np.ndarray      # (k, 2) w, h in network pixels, sorted by area (smallest first)
    mean_iou: float          # mean over boxes of the IoU with their best anchor
    iterations: int          # of the start that was kept

    def cfg_line(self, width: int) -> str:
        """The `anchors=` line for a cfg: whole pixels, or two decimals for networks at most 32 wide
        (AlexeyAB's switch; there anchors are fractions of a few cells)."""
        if width > 32:
            pairs = [f"{round(w):d},{round(h):d}" for w, h in self.anchors]
        else:
            pairs = [f"{w:.2f},{h:.2f}" for w, h in self.anchors]
        return "anchors = " + ", ".join(pairs)


def shape_iou(boxes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """IoU of (w, h) shapes placed at a common corner: (N, 2) x (K, 2) -> (N, K)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 2)
    anchors = np.asarray(anchors, np.float64).reshape(-1, 2)
    inter = np.minimum(boxes[:, None, 0], anchors[None, :, 0]) * np.minimum(boxes[:, None, 1], anchors[None, :, 1])
    union = boxes[:, None, 0] * boxes[:, None, 1] + anchors[None, :, 0] * anchors[None, :, 1] - inter
    return inter / union


def _plus_plus_start(boxes: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centres = [boxes[rng.integers(len(boxes))]]
    closest = 1.0 - shape_iou(boxes, centres[0])[:, 0]
    for _ in range(1, k):
        weights = closest ** 2
        total = weights.sum()
        pick = rng.choice(len(boxes), p=weights / total) if total > 0 else rng.integers(len(boxes))
        centres.append(boxes[pick])
        closest = np.minimum(closest, 1.0 - shape_iou(boxes, boxes[pick])[:, 0])
    return np.array(centres)


def _lloyd(boxes: np.ndarray, centres: np.ndarray, max_iterations: int) -> tuple[np.ndarray, int]:
    assignment = None
    for iteration in range(1, max_iterations + 1):
        new_assignment = shape_iou(boxes, centres).argmax(axis=1)
        if assignment is not None and np.array_equal(new_assignment, assignment):
            return centres, iteration
        assignment = new_assignment
        for j in range(len(centres)):
            members = boxes[assignment == j]
            if len(members):
                centres[j] = members.mean(axis=0)
    return centres, max_iterations


def kmeans_anchors(boxes_wh: np.ndarray, k: int, seed: int = 0, starts: int = 10,
                   max_iterations: int = 1000) -> AnchorResult:
    """k anchors for (N, 2) box sizes (w, h in network pixels), with 1 − IoU as the distance.
    Deterministic for a seed. Raises ValueError for fewer distinct boxes than k."""
    boxes = np.asarray(boxes_wh, np.float64).reshape(-1, 2)
    if k < 1:
        raise ValueError(f"the number of anchors must be at least 1, got {k}")
    if not np.all(boxes > 0):
        raise ValueError("box widths and heights must be positive")
    distinct = len(np.unique(boxes, axis=0))
    if distinct < k:
        raise ValueError(f"{k} anchors need at least {k} different box shapes, the data has {distinct}")
    rng = np.random.default_rng(seed)
    best: AnchorResult | None = None
    for _ in range(starts):
        centres, iterations = _lloyd(boxes, _plus_plus_start(boxes, k, rng), max_iterations)
        mean_iou = float(shape_iou(boxes, centres).max(axis=1).mean())
        if best is None or mean_iou > best.mean_iou:
            order = np.argsort(centres[:, 0] * centres[:, 1], kind="stable")
            best = AnchorResult(centres[order], mean_iou, iterations)
    return best
