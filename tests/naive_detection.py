"""Slow, obvious references for the detection layers and NMS, written from DARKNET_SPEC.md §2.20–2.22 and
§9 (plus AlexeyAB's scale_x_y / new_coords): plain Python loops over float32 scalars, no darknetpy code."""
from __future__ import annotations

import math

import numpy as np

F = np.float32


def logistic(v: float) -> np.float32:
    try:
        e = math.exp(-float(v))
    except OverflowError:   # C's exp returns inf there
        e = math.inf
    return F(1.0 / (1.0 + e))


def yolo_forward(x: np.ndarray, n: int, classes: int, scale_x_y: float = 1.0, new_coords: bool = False):
    out = x.astype(F).copy()
    alpha = F(scale_x_y)
    beta = F(-0.5 * (float(alpha) - 1.0))
    per = 5 + classes
    for b in range(x.shape[0]):
        for a in range(n):
            for e in range(per):
                for r in range(x.shape[2]):
                    for c in range(x.shape[3]):
                        v = F(x[b, a * per + e, r, c])
                        if not new_coords and e not in (2, 3):
                            v = logistic(v)
                        if e < 2:
                            v = F(F(v * alpha) + beta)
                        out[b, a * per + e, r, c] = v
    return out


def softmax(values):
    largest = max(F(v) for v in values)
    exps = [F(math.exp(float(F(v) - largest))) for v in values]
    total = F(0)
    for e in exps:
        total = F(total + e)
    return [F(e / total) for e in exps]


def region_forward(x: np.ndarray, n: int, classes: int, coords: int = 4, use_softmax: bool = False,
                   background: bool = False):
    out = x.astype(F).copy()
    per = coords + 1 + classes
    for b in range(x.shape[0]):
        for a in range(n):
            base = a * per
            for r in range(x.shape[2]):
                for c in range(x.shape[3]):
                    for e in (0, 1):
                        out[b, base + e, r, c] = logistic(x[b, base + e, r, c])
                    if not background:
                        out[b, base + coords, r, c] = logistic(x[b, base + coords, r, c])
                    if use_softmax:
                        first = base + coords + (0 if background else 1)
                        count = classes + int(background)
                        vals = softmax([x[b, first + j, r, c] for j in range(count)])
                        for j in range(count):
                            out[b, first + j, r, c] = vals[j]
                    else:
                        for j in range(classes):
                            e = base + coords + 1 + j
                            out[b, e, r, c] = logistic(x[b, e, r, c])
    return out


def iou(a, b) -> np.float32:
    """Spec §9.5 in float32 scalars."""
    a = [F(v) for v in a]
    b = [F(v) for v in b]
    two = F(2)

    def overlap(x1, w1, x2, w2):
        left = max(F(x1 - w1 / two), F(x2 - w2 / two))
        right = min(F(x1 + w1 / two), F(x2 + w2 / two))
        return F(right - left)

    w = overlap(a[0], a[2], b[0], b[2])
    h = overlap(a[1], a[3], b[1], b[3])
    inter = F(0) if (w < 0 or h < 0) else F(w * h)
    union = F(F(F(a[2] * a[3]) + F(b[2] * b[3])) - inter)
    with np.errstate(invalid="ignore", divide="ignore"):
        return F(inter / union)


def nms_sort(items: list[dict], classes: int, thresh: float) -> list[dict]:
    """do_nms_sort on dicts {box, objectness, probs(list)}; returns the new order (probs mutated)."""
    items = list(items)
    k = len(items) - 1
    i = 0
    while i <= k:
        if items[i]["objectness"] == 0:
            items[i], items[k] = items[k], items[i]
            k -= 1
            continue
        i += 1
    total = k + 1
    for cls in range(classes):
        # insertion sort: stable, descending
        head = items[:total]
        for p in range(1, total):
            cur = head[p]
            q = p - 1
            while q >= 0 and head[q]["probs"][cls] < cur["probs"][cls]:
                head[q + 1] = head[q]
                q -= 1
            head[q + 1] = cur
        items[:total] = head
        for p in range(total):
            if items[p]["probs"][cls] == 0:
                continue
            for q in range(p + 1, total):
                if iou(items[p]["box"], items[q]["box"]) > F(thresh):
                    items[q]["probs"][cls] = F(0)
    return items
