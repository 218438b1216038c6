"""Detection-layer kernels: the [yolo], [region] and [detection] activations, and the greedy suppression
loop of Darknet's NMS variants.

Arithmetic follows the C code's types: the logistic and `exp` are evaluated in double and rounded to
float, everything else (scale_x_y's affine map, softmax sums, IoU) is float32, one rounding per C
operation. Helpers are kept in this module because Numba's cache does not track cross-module callees.
"""
from __future__ import annotations

import math

import numpy as np

from . import jit

_F0 = np.float32(0.0)
_F2 = np.float32(2.0)

# Suppression criteria of nms_suppress_class (Darknet's do_nms_sort, AlexeyAB's diounms_sort kinds).
IOU_PLAIN = 0        # pjreddie box_iou: intersection / union (NaN for two empty boxes, never suppresses)
IOU_GREEDY_DIOU = 1  # AlexeyAB GREEDY_NMS: box_diou with the fixed exponent 0.6
IOU_DIOU_BETA = 2    # AlexeyAB DIOU_NMS: box_diounms with the layer's beta_nms


@jit(inline="always")
def _logistic(v):
    return np.float32(1.0 / (1.0 + math.exp(-np.float64(v))))


# ----------------------------------------------------------------------------------------- forward

@jit
def yolo_forward(x, out, anchors, classes, scale_alpha, scale_beta, new_coords):
    """[yolo] inference forward of x (B, anchors*(5+classes), H, W) into out (same shape).

    Per anchor block: logistic on tx, ty, objectness and classes, tw/th raw (new_coords: nothing is
    activated, the previous layer already applied its logistic). Then AlexeyAB's scale_x_y map
    x*alpha + beta on tx, ty, which is the identity for scale_x_y = 1 (alpha 1, beta 0).
    """
    batch = x.shape[0]
    cells = x.shape[2] * x.shape[3]
    src_all = x.reshape(batch, x.shape[1], cells)
    dst_all = out.reshape(batch, x.shape[1], cells)
    planes = 5 + classes
    alpha = np.float32(scale_alpha)
    beta = np.float32(scale_beta)
    for b in range(batch):
        for a in range(anchors):
            for p in range(planes):
                src = src_all[b, a * planes + p]
                dst = dst_all[b, a * planes + p]
                if new_coords == 0 and p != 2 and p != 3:
                    for i in range(cells):
                        dst[i] = _logistic(src[i])
                else:
                    dst[:] = src
                if p < 2:
                    for i in range(cells):
                        dst[i] = dst[i] * alpha + beta


@jit
def region_forward(x, out, anchors, classes, coords, background, softmax):
    """[region] inference forward (spec §2.21): logistic on tx, ty and (unless background) the
    objectness; classes get a softmax over the raw inputs (with the background slot when set) or a
    logistic. Extra coords beyond 4 stay raw."""
    batch = x.shape[0]
    cells = x.shape[2] * x.shape[3]
    src_all = x.reshape(batch, x.shape[1], cells)
    dst_all = out.reshape(batch, x.shape[1], cells)
    planes = coords + 1 + classes
    for b in range(batch):
        for a in range(anchors):
            base = a * planes
            for p in range(planes):
                src = src_all[b, base + p]
                dst = dst_all[b, base + p]
                logistic = p < 2 or (p == coords and background == 0) or (p > coords and softmax == 0)
                if logistic:
                    for i in range(cells):
                        dst[i] = _logistic(src[i])
                else:
                    dst[:] = src
            if softmax != 0:
                first = base + coords + (1 - background)
                count = classes + background
                for i in range(cells):
                    _softmax_strided(src_all[b, first:first + count, i], dst_all[b, first:first + count, i])


@jit(inline="always")
def _softmax_strided(src, dst):
    """Darknet's softmax(input, n, temp=1): subtract the max, exp in double rounded to float, float sum."""
    n = src.shape[0]
    largest = np.float32(-3.4028234663852886e38)
    for i in range(n):
        if src[i] > largest:
            largest = src[i]
    total = _F0
    for i in range(n):
        e = np.float32(math.exp(np.float64(src[i] - largest)))
        total += e
        dst[i] = e
    for i in range(n):
        dst[i] = dst[i] / total


@jit
def detection_softmax(out, cells, classes):
    """[detection] (YOLOv1) softmax=1: in place over the classes of each cell, per batch row of out
    (B, inputs). The class block is the first cells*classes values of a row."""
    for b in range(out.shape[0]):
        for i in range(cells):
            block = out[b, i * classes:(i + 1) * classes]
            _softmax_strided(block, block)  # in place is safe: each value is read before it is written


# ----------------------------------------------------------------------------------------- boxes

@jit(inline="always")
def _overlap(x1, w1, x2, w2):
    left1 = x1 - w1 / _F2
    left2 = x2 - w2 / _F2
    left = left1 if left1 > left2 else left2
    right1 = x1 + w1 / _F2
    right2 = x2 + w2 / _F2
    right = right1 if right1 < right2 else right2
    return right - left


@jit(inline="always")
def _intersection(a, b):
    w = _overlap(a[0], a[2], b[0], b[2])
    h = _overlap(a[1], a[3], b[1], b[3])
    if w < _F0 or h < _F0:
        return _F0
    return w * h


@jit(inline="always")
def _iou_plain(a, b):
    inter = _intersection(a, b)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union  # 0/0 is NaN, as in C, and NaN never exceeds a threshold


@jit(inline="always")
def _iou_alexeyab(a, b):
    inter = _intersection(a, b)
    union = a[2] * a[3] + b[2] * b[3] - inter
    if inter == _F0 or union == _F0:
        return _F0
    return inter / union


@jit(inline="always")
def _diou(a, b, exponent):
    """AlexeyAB's box_diou / box_diounms: IoU minus (centre distance² / enclosing diagonal²)^exponent."""
    top = min(a[1] - a[3] / _F2, b[1] - b[3] / _F2)
    bottom = max(a[1] + a[3] / _F2, b[1] + b[3] / _F2)
    left = min(a[0] - a[2] / _F2, b[0] - b[2] / _F2)
    right = max(a[0] + a[2] / _F2, b[0] + b[2] / _F2)
    w = right - left
    h = bottom - top
    c = w * w + h * h
    iou = _iou_alexeyab(a, b)
    if c == _F0:
        return iou
    dx = a[0] - b[0]
    dy = a[1] - b[1]
    d = dx * dx + dy * dy
    u = np.float32(math.pow(np.float64(d / c), exponent))
    return iou - u


@jit
def box_iou(a, b):
    """Spec §9.5 IoU of two float32 (x, y, w, h) boxes."""
    return _iou_plain(a, b)


@jit
def box_diou(a, b, exponent):
    return _diou(a, b, exponent)


@jit
def nms_suppress_class(boxes, probs, order, count, k, thresh, kind, beta):
    """Greedy suppression for class k over the first `count` detections in `order` (already sorted by
    probs[:, k] descending): every detection with a non-zero score zeroes the class-k score of each later
    one whose overlap criterion is strictly greater than thresh."""
    for ii in range(count):
        i = order[ii]
        if probs[i, k] == _F0:
            continue
        a = boxes[i]
        for jj in range(ii + 1, count):
            j = order[jj]
            b = boxes[j]
            if kind == IOU_PLAIN:
                crit = _iou_plain(a, b)
            elif kind == IOU_GREEDY_DIOU:
                crit = _diou(a, b, 0.6)
            else:
                crit = _diou(a, b, np.float64(beta))
            if crit > thresh:
                probs[j, k] = _F0


@jit
def nms_suppress_objectness(boxes, objectness, probs, order, count, thresh):
    """do_nms_obj's loop: a surviving detection zeroes objectness and all class scores of each later
    detection overlapping it by IoU > thresh."""
    for ii in range(count):
        i = order[ii]
        if objectness[i] == _F0:
            continue
        a = boxes[i]
        for jj in range(ii + 1, count):
            j = order[jj]
            if objectness[j] == _F0:
                continue
            if _iou_plain(a, boxes[j]) > thresh:
                objectness[j] = _F0
                probs[j, :] = _F0
