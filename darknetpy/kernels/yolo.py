"""Detection-layer kernels: the [yolo], [region] and [detection] activations, the greedy suppression loop
of Darknet's NMS variants, and the training targets of the [yolo] and [region] heads. One module because
inference, NMS and training read the same box helpers, and Numba's cache does not track callees in other
modules.

Arithmetic follows the C code's types: float32 operands; the logistic, `exp`, `log`, `sqrt`, `atan` and
`pow` evaluated in double and rounded to float; everything else (scale_x_y's affine map, softmax sums,
IoU) float32, one rounding per C operation.

Training targets of [yolo] (spec §12.1, pjreddie exactly, AlexeyAB's keys §12.1.8) and [region]
(spec §12.2): the kernels write Darknet's `delta` (target − output, the *negative* gradient) into a zeroed
buffer of the output's shape, seen as (B, anchors, planes, cells); the layers flip the sign. Statistics
are summed sequentially in float32 in Darknet's loop order (so the printed `Region ...` line matches),
into `stats` (float32[8]): STAT_* below.

Box gradients of AlexeyAB's IoU losses (iou_loss=iou|giou|diou|ciou) are the derivatives of the IoU variant
with respect to the predicted box (x, y, w, h) in network-relative units — the exact derivative for IoU,
GIoU and DIoU (ρ²/c²), and for CIoU the paper's gradient (α held constant, the 1/(w²+h²) factor of ∂v
dropped). As in AlexeyAB they are applied to tx, ty directly and to tw, th times exp(tw), exp(th), scaled by
iou_normalizer, NaN/inf → 0, clipped to ±max_delta. (AlexeyAB's own code doubles the IoU/GIoU part of the
w, h derivative — "we do not divide by 2" — darknetpy uses the derivative.)
"""
from __future__ import annotations

import math

import numpy as np
from numba import prange

from . import jit
from .simd import fma_float64
from .threads import threads_pay

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_F2 = np.float32(2.0)
_HALF = np.float32(0.5)

# Suppression criteria of nms_suppress_class (Darknet's do_nms_sort, AlexeyAB's diounms_sort kinds).
IOU_PLAIN = 0        # pjreddie box_iou: intersection / union (NaN for two empty boxes, never suppresses)
IOU_GREEDY_DIOU = 1  # AlexeyAB GREEDY_NMS: box_diou with the fixed exponent 0.6
IOU_DIOU_BETA = 2    # AlexeyAB DIOU_NMS: box_diounms with the layer's beta_nms

# iou_loss / iou_thresh_kind
MSE, IOU, GIOU, DIOU, CIOU = 0, 1, 2, 3, 4

# indices into the stats accumulator
STAT_IOU, STAT_RECALL50, STAT_RECALL75, STAT_CLASS, STAT_OBJ, STAT_NOOBJ, STAT_COUNT, STAT_CLASS_COUNT = range(8)

_FOCAL_ALPHA = np.float32(0.5)
_CIOU_EPS = np.float32(0.000001)


@jit(inline="always")
def _logistic(v):
    return np.float32(1.0 / (1.0 + math.exp(-np.float64(v))))


# ---- the heads' logistic, vectorised ------------------------------------------------------------------------
# Darknet's logistic takes `exp` in double, and a call to libm's exp per value keeps the loop scalar: the heads'
# logistic took ~10 ns per value (1.3 ms of Yolo-Fastest-XL's pass, 8x onnxruntime's). _logistic_lanes computes
# the same double exp with operations LLVM vectorises: exp(u) = 2^k * exp(r), k = round(u / ln 2),
# r = u - k*ln 2 (ln 2 in two parts, Cody and Waite, so r is exact to a few ulps) with |r| <= ln(2)/2, exp(r) by
# its Taylor series to r^13 (remainder below 4e-18) in fused multiply-adds, and 2^k written as the bits of a
# double. (Numba's p * r + c is two operations, and on Zen 4's half-rate 512-bit units those 26 were the
# loop's cost: with simd.fma_float64 Yolo-Fastest-XL's heads take 37 instead of 51 us at 10x10 and 117
# instead of 161 us at 20x20, 1 thread.) The result is rounded to float32 like the C code's; over 35 million
# values (every 97th float32 bit pattern of either sign, normals and uniforms up to +-120, infinities and
# NaN) it equals _logistic bit for bit, with the fused and with the separate operations. Inputs are
# clamped where the float32 result no longer changes: -x <= -100 gives 1 exactly (exp(-100) is far below
# half an ulp of 1.0 in double), -x >= 105 gives 0 (below half the smallest float32 denormal).
LOGISTIC_LANES = 256
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e+00


@jit(inline="always")
def _logistic_lanes(src, dst, alpha, beta, poly, bits):
    """dst[i] = _logistic(src[i]) * alpha + beta (float32 operations) for the up to LOGISTIC_LANES values of
    src; poly (float64) and bits (int64) are scratch of LOGISTIC_LANES entries. Two loops, each vectorised:
    the integer bits of 2^k are only read back as a double through a second view of the scratch."""
    for i in range(src.shape[0]):
        u = -np.float64(src[i])
        u = u if u > -100.0 else -100.0   # also NaN: its result is restored below
        u = u if u < 105.0 else 105.0
        k = np.floor(u * _INV_LN2 + 0.5)
        r = (u - k * _LN2_HI) - k * _LN2_LO
        p = fma_float64(1.0 / 6227020800.0, r, 1.0 / 479001600.0)
        p = fma_float64(p, r, 1.0 / 39916800.0)
        p = fma_float64(p, r, 1.0 / 3628800.0)
        p = fma_float64(p, r, 1.0 / 362880.0)
        p = fma_float64(p, r, 1.0 / 40320.0)
        p = fma_float64(p, r, 1.0 / 5040.0)
        p = fma_float64(p, r, 1.0 / 720.0)
        p = fma_float64(p, r, 1.0 / 120.0)
        p = fma_float64(p, r, 1.0 / 24.0)
        p = fma_float64(p, r, 1.0 / 6.0)
        p = fma_float64(p, r, 0.5)
        p = fma_float64(p, r, 1.0)
        poly[i] = fma_float64(p, r, 1.0)
        bits[i] = (np.int64(k) + 1023) << 52
    power = bits.view(np.float64)
    for i in range(src.shape[0]):
        v = src[i]
        y = np.float32(1.0 / (1.0 + poly[i] * power[i]))
        dst[i] = (y if v == v else v) * alpha + beta


@jit(inline="always")
def _logistic_row(src, dst, alpha, beta, poly, bits):
    for start in range(0, src.shape[0], LOGISTIC_LANES):
        stop = min(start + LOGISTIC_LANES, src.shape[0])
        _logistic_lanes(src[start:stop], dst[start:stop], alpha, beta, poly, bits)


# ----------------------------------------------------------------------------------------- forward

@jit(inline="always")
def _yolo_plane(src_all, dst_all, row, planes, alpha, beta, new_coords, poly, bits):
    p = row % planes
    src = src_all[row]
    dst = dst_all[row]
    if new_coords == 0 and p != 2 and p != 3:
        if p < 2:
            _logistic_row(src, dst, alpha, beta, poly, bits)
        else:
            _logistic_row(src, dst, _F1, _F0, poly, bits)   # y * 1 + 0 == y for every y the logistic returns
    elif p < 2:
        for i in range(src.shape[0]):
            dst[i] = src[i] * alpha + beta
    else:
        for i in range(src.shape[0]):
            dst[i] = src[i]


@jit
def _yolo_forward_serial(x, out, planes, alpha, beta, new_coords):
    src_all = x.reshape(x.shape[0] * x.shape[1], -1)
    dst_all = out.reshape(x.shape[0] * x.shape[1], -1)
    poly = np.empty(LOGISTIC_LANES, np.float64)
    bits = np.empty(LOGISTIC_LANES, np.int64)
    for row in range(src_all.shape[0]):
        _yolo_plane(src_all, dst_all, row, planes, alpha, beta, new_coords, poly, bits)


@jit(parallel=True)
def _yolo_forward_parallel(x, out, planes, alpha, beta, new_coords):
    src_all = x.reshape(x.shape[0] * x.shape[1], -1)
    dst_all = out.reshape(x.shape[0] * x.shape[1], -1)
    for row in prange(src_all.shape[0]):
        poly = np.empty(LOGISTIC_LANES, np.float64)
        bits = np.empty(LOGISTIC_LANES, np.int64)
        _yolo_plane(src_all, dst_all, row, planes, alpha, beta, new_coords, poly, bits)


# Values below which the heads' forward stays on one thread: ~0.5 ms of work at ~3 ns per logistic (see
# threads.threads_pay; a 10x10 80-class head took 140 us at 2 threads and 73 us at 1).
YOLO_PARALLEL_MIN_VALUES = 1 << 17


def yolo_forward(x: np.ndarray, out: np.ndarray, classes: int, scale_alpha: float, scale_beta: float,
                 new_coords: int) -> None:
    """[yolo] inference forward of x (B, anchors*(5+classes), H, W) into out (same shape); the layer has
    checked that the channels are whole anchor blocks.

    Per anchor block: logistic on tx, ty, objectness and classes, tw/th raw (new_coords: nothing is
    activated, the previous layer already applied its logistic). Then AlexeyAB's scale_x_y map
    x*alpha + beta on tx, ty, which is the identity for scale_x_y = 1 (alpha 1, beta 0). The planes are
    independent, and large heads share them out over the threads.
    """
    kernel = _yolo_forward_parallel if threads_pay(x.size, x.shape[0] * x.shape[1], YOLO_PARALLEL_MIN_VALUES) \
        else _yolo_forward_serial
    kernel(x, out, 5 + classes, np.float32(scale_alpha), np.float32(scale_beta), new_coords)


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
# A box is (x, y, w, h), centre and size, passed as four float32 scalars.

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
def _intersection(ax, ay, aw, ah, bx, by, bw, bh):
    w = _overlap(ax, aw, bx, bw)
    h = _overlap(ay, ah, by, bh)
    if w < _F0 or h < _F0:
        return _F0
    return w * h


@jit(inline="always")
def _iou_pjreddie(ax, ay, aw, ah, bx, by, bw, bh):
    inter = _intersection(ax, ay, aw, ah, bx, by, bw, bh)
    union = aw * ah + bw * bh - inter
    return inter / union  # 0/0 is NaN, as in C, and NaN never exceeds a threshold


@jit(inline="always")
def _iou_alexeyab(ax, ay, aw, ah, bx, by, bw, bh):
    inter = _intersection(ax, ay, aw, ah, bx, by, bw, bh)
    union = aw * ah + bw * bh - inter
    if inter == _F0 or union == _F0:
        return _F0
    return inter / union


@jit(inline="always")
def _iou(alexeyab, ax, ay, aw, ah, bx, by, bw, bh):
    if alexeyab:
        return _iou_alexeyab(ax, ay, aw, ah, bx, by, bw, bh)
    return _iou_pjreddie(ax, ay, aw, ah, bx, by, bw, bh)


@jit(inline="always")
def _enclosing(ax, ay, aw, ah, bx, by, bw, bh):
    """Width and height of the smallest box that holds both."""
    left = min(ax - aw / _F2, bx - bw / _F2)
    right = max(ax + aw / _F2, bx + bw / _F2)
    top = min(ay - ah / _F2, by - bh / _F2)
    bottom = max(ay + ah / _F2, by + bh / _F2)
    return right - left, bottom - top


@jit(inline="always")
def _diou(ax, ay, aw, ah, bx, by, bw, bh, exponent):
    """AlexeyAB's box_diou / box_diounms: IoU minus (centre distance² / enclosing diagonal²)^exponent."""
    iou = _iou_alexeyab(ax, ay, aw, ah, bx, by, bw, bh)
    cw, ch = _enclosing(ax, ay, aw, ah, bx, by, bw, bh)
    c = cw * cw + ch * ch
    if c == _F0:
        return iou
    d = (ax - bx) * (ax - bx) + (ay - by) * (ay - by)
    return iou - np.float32(math.pow(np.float64(d / c), exponent))


@jit(inline="always")
def _aspect_term(aw, ah, bw, bh):
    """CIoU's v = 4/π² (atan(w_truth/h_truth) − atan(w/h))² for prediction a, truth b."""
    diff = np.float32(math.atan(np.float64(bw / bh)) - math.atan(np.float64(aw / ah)))
    return np.float32(4.0 / (math.pi * math.pi)) * diff * diff


@jit
def iou_kind(kind, ax, ay, aw, ah, bx, by, bw, bh):
    """AlexeyAB's box_iou_kind of prediction a and truth b: IoU, GIoU, DIoU (distance term to the power
    0.6, as AlexeyAB reports it) or CIoU."""
    iou = _iou_alexeyab(ax, ay, aw, ah, bx, by, bw, bh)
    if kind == IOU or kind == MSE:
        return iou
    if kind == DIOU:
        return _diou(ax, ay, aw, ah, bx, by, bw, bh, 0.6)
    cw, ch = _enclosing(ax, ay, aw, ah, bx, by, bw, bh)
    if kind == GIOU:
        c = cw * ch
        if c == _F0:
            return iou
        union = aw * ah + bw * bh - _intersection(ax, ay, aw, ah, bx, by, bw, bh)
        return iou - (c - union) / c
    c = cw * cw + ch * ch
    if c == _F0:
        return iou
    d = (ax - bx) * (ax - bx) + (ay - by) * (ay - by)
    v = _aspect_term(aw, ah, bw, bh)
    alpha = v / (_F1 - iou + v + _CIOU_EPS)
    return iou - (d / c + alpha * v)


@jit(inline="always")
def _box_iou(a, b):
    return _iou_pjreddie(a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3])


@jit(inline="always")
def _box_diou(a, b, exponent):
    return _diou(a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], exponent)


@jit
def box_iou(a, b):
    """Spec §9.5 IoU of two float32 (x, y, w, h) box arrays."""
    return _box_iou(a, b)


@jit
def box_diou(a, b, exponent):
    return _box_diou(a, b, exponent)


@jit
def iou_gradient(kind, px, py, pw, ph, tx, ty, tw, th, out):
    """out[0:4] = ∂(IoU variant)/∂(x, y, w, h) of the prediction p against truth t (module docstring)."""
    pl = px - pw / _F2
    pr = px + pw / _F2
    pt = py - ph / _F2
    pb = py + ph / _F2
    tl = tx - tw / _F2
    tr = tx + tw / _F2
    tt = ty - th / _F2
    tb = ty + th / _F2
    iw = min(pr, tr) - max(pl, tl)
    ih = min(pb, tb) - max(pt, tt)
    overlap = iw > _F0 and ih > _F0
    inter = iw * ih if overlap else _F0
    union = pw * ph + tw * th - inter
    # d(iw)/d(x, w) and d(ih)/d(y, h): which edge of the intersection the prediction owns
    r_in = _F1 if pr < tr else _F0
    l_in = _F1 if pl > tl else _F0
    b_in = _F1 if pb < tb else _F0
    t_in = _F1 if pt > tt else _F0
    diw_dx = r_in - l_in
    diw_dw = _HALF * (r_in + l_in)
    dih_dy = b_in - t_in
    dih_dh = _HALF * (b_in + t_in)
    di = np.zeros(4, np.float32)
    if overlap:
        di[0] = ih * diw_dx
        di[1] = iw * dih_dy
        di[2] = ih * diw_dw
        di[3] = iw * dih_dh
    du = np.zeros(4, np.float32)
    du[0] = -di[0]
    du[1] = -di[1]
    du[2] = ph - di[2]
    du[3] = pw - di[3]
    for k in range(4):
        out[k] = (di[k] * union - inter * du[k]) / (union * union) if union > _F0 else _F0
    if kind == IOU or kind == MSE:
        return
    # the enclosing box
    cl = min(pl, tl)
    cr = max(pr, tr)
    ct = min(pt, tt)
    cb = max(pb, tb)
    cw = cr - cl
    ch = cb - ct
    r_out = _F1 if pr > tr else _F0
    l_out = _F1 if pl < tl else _F0
    b_out = _F1 if pb > tb else _F0
    t_out = _F1 if pt < tt else _F0
    dcw = np.zeros(4, np.float32)
    dch = np.zeros(4, np.float32)
    dcw[0] = r_out - l_out
    dcw[2] = _HALF * (r_out + l_out)
    dch[1] = b_out - t_out
    dch[3] = _HALF * (b_out + t_out)
    if kind == GIOU:
        # GIoU = IoU − 1 + U/C
        c = cw * ch
        if c > _F0:
            for k in range(4):
                dc = dcw[k] * ch + cw * dch[k]
                out[k] += (du[k] * c - union * dc) / (c * c)
        return
    # DIoU = IoU − ρ²/c²
    c2 = cw * cw + ch * ch
    if c2 > _F0:
        rho2 = (px - tx) * (px - tx) + (py - ty) * (py - ty)
        drho = np.zeros(4, np.float32)
        drho[0] = _F2 * (px - tx)
        drho[1] = _F2 * (py - ty)
        for k in range(4):
            dc2 = _F2 * cw * dcw[k] + _F2 * ch * dch[k]
            out[k] -= (drho[k] * c2 - rho2 * dc2) / (c2 * c2)
    if kind == CIOU:
        v = _aspect_term(pw, ph, tw, th)
        iou = inter / union if union > _F0 else _F0
        alpha = v / (_F1 - iou + v + _CIOU_EPS)
        diff = np.float32(math.atan(np.float64(tw / th)) - math.atan(np.float64(pw / ph)))
        factor = np.float32(8.0 / (math.pi * math.pi)) * diff
        # −α ∂v/∂(w, h) with ∂atan(w/h) = (h, −w)/(w²+h²), the denominator dropped (CIoU paper)
        out[2] += alpha * factor * ph
        out[3] -= alpha * factor * pw


# -------------------------------------------------------------------------------- [yolo] training

@jit(inline="always")
def _finite(v):
    return v if math.isfinite(v) else _F0


@jit(inline="always")
def _clip(v, limit):
    if v > limit:
        return limit
    if v < -limit:
        return -limit
    return v


@jit
def _pred_box(o, b, a, cell, col, row, lw, lh, anchor_w, anchor_h, net_w, net_h, new_coords, box):
    box[0] = (np.float32(col) + o[b, a, 0, cell]) / np.float32(lw)
    box[1] = (np.float32(row) + o[b, a, 1, cell]) / np.float32(lh)
    tw = o[b, a, 2, cell]
    th = o[b, a, 3, cell]
    if new_coords:
        box[2] = tw * tw * np.float32(4.0) * anchor_w / np.float32(net_w)
        box[3] = th * th * np.float32(4.0) * anchor_h / np.float32(net_h)
    else:
        box[2] = np.float32(math.exp(np.float64(tw)) * np.float64(anchor_w) / net_w)
        box[3] = np.float32(math.exp(np.float64(th)) * np.float64(anchor_h) / net_h)


@jit
def _box_delta(o, d, b, a, cell, col, row, lw, lh, anchor_w, anchor_h, net_w, net_h, gx, gy, gw, gh,
               scale, alexeyab, iou_loss, iou_normalizer, max_delta, new_coords, box, grad):
    """Write (pjreddie: overwrite; AlexeyAB: accumulate) the box deltas of one prediction towards truth g;
    returns the prediction's IoU with g (before the update)."""
    _pred_box(o, b, a, cell, col, row, lw, lh, anchor_w, anchor_h, net_w, net_h, new_coords, box)
    iou = _iou(alexeyab, box[0], box[1], box[2], box[3], gx, gy, gw, gh)
    if iou_loss == MSE:
        tx = gx * np.float32(lw) - np.float32(col)
        ty = gy * np.float32(lh) - np.float32(row)
        if new_coords:
            tw = np.float32(math.sqrt(np.float64(gw * np.float32(net_w) / (np.float32(4.0) * anchor_w))))
            th = np.float32(math.sqrt(np.float64(gh * np.float32(net_h) / (np.float32(4.0) * anchor_h))))
        else:
            tw = np.float32(math.log(np.float64(gw * np.float32(net_w) / anchor_w)))
            th = np.float32(math.log(np.float64(gh * np.float32(net_h) / anchor_h)))
        if alexeyab:
            d[b, a, 0, cell] += scale * (tx - o[b, a, 0, cell]) * iou_normalizer
            d[b, a, 1, cell] += scale * (ty - o[b, a, 1, cell]) * iou_normalizer
            d[b, a, 2, cell] += scale * (tw - o[b, a, 2, cell]) * iou_normalizer
            d[b, a, 3, cell] += scale * (th - o[b, a, 3, cell]) * iou_normalizer
        else:
            d[b, a, 0, cell] = scale * (tx - o[b, a, 0, cell])
            d[b, a, 1, cell] = scale * (ty - o[b, a, 1, cell])
            d[b, a, 2, cell] = scale * (tw - o[b, a, 2, cell])
            d[b, a, 3, cell] = scale * (th - o[b, a, 3, cell])
        return iou
    pw = box[2] if box[2] != _F0 else _F1   # as AlexeyAB: no NaN from an empty prediction
    ph = box[3] if box[3] != _F0 else _F1
    iou_gradient(iou_loss, box[0], box[1], pw, ph, gx, gy, gw, gh, grad)
    if not new_coords:
        grad[2] = np.float32(grad[2] * math.exp(np.float64(o[b, a, 2, cell])))
        grad[3] = np.float32(grad[3] * math.exp(np.float64(o[b, a, 3, cell])))
    for k in range(4):
        d[b, a, k, cell] += _clip(_finite(grad[k] * iou_normalizer), max_delta)
    return iou


@jit
def _class_delta(o, d, b, a, cell, class_id, classes, alexeyab, focal, smooth_eps, cls_normalizer):
    """Class deltas of a positive prediction; returns the true class's output (for the Class statistic).

    pjreddie: if the class-0 delta is already set only the true class is (re)set; AlexeyAB: the test is on
    the true class's delta, targets may be label-smoothed, and focal_loss scales by the focal factor."""
    base = 5
    true_out = o[b, a, base + class_id, cell]
    already = d[b, a, base, cell] != _F0 if not alexeyab else d[b, a, base + class_id, cell] != _F0
    one = _F1
    if smooth_eps != _F0:
        one = one * (_F1 - smooth_eps) + _HALF * smooth_eps
    if already:
        d[b, a, base + class_id, cell] = (one - true_out) * cls_normalizer
        return true_out
    if focal:
        pt = true_out + np.float32(0.000000000000001)
        factor = -(_F1 - pt) * (_F2 * pt * np.float32(math.log(np.float64(pt))) + pt - _F1)
        for c in range(classes):
            target = _F1 if c == class_id else _F0
            d[b, a, base + c, cell] = (target - o[b, a, base + c, cell]) * _FOCAL_ALPHA * factor * cls_normalizer
        return true_out
    zero = _F0
    if smooth_eps != _F0:
        zero = _HALF * smooth_eps
    for c in range(classes):
        target = one if c == class_id else zero
        d[b, a, base + c, cell] = (target - o[b, a, base + c, cell]) * cls_normalizer
    return true_out


@jit
def _best_anchor(anchors, total, net_w, net_h, gw, gh):
    best_iou = _F0
    best = 0
    for n in range(total):
        aw = anchors[2 * n] / np.float32(net_w)
        ah = anchors[2 * n + 1] / np.float32(net_h)
        iou = _iou_pjreddie(_F0, _F0, aw, ah, _F0, _F0, gw, gh)
        if iou > best_iou:
            best_iou = iou
            best = n
    return best


@jit
def _slot_of(mask, anchor):
    for k in range(mask.shape[0]):
        if mask[k] == anchor:
            return k
    return -1



@jit
def _train_positive(o, d, b, slot, anchor, cell, col, row, lw, lh, anchors, net_w, net_h, gx, gy, gw, gh,
                    class_id, classes, alexeyab, iou_loss, iou_normalizer, cls_normalizer, obj_normalizer,
                    max_delta, smooth_eps, focal, new_coords, box, grad, stats):
    """Truth g owns prediction (slot, cell): box, objectness and class deltas, and the statistics."""
    scale = _F2 - gw * gh
    iou = _box_delta(o, d, b, slot, cell, col, row, lw, lh, anchors[2 * anchor], anchors[2 * anchor + 1],
                     net_w, net_h, gx, gy, gw, gh, scale, alexeyab, iou_loss, iou_normalizer, max_delta,
                     new_coords, box, grad)
    obj = o[b, slot, 4, cell]
    stats[STAT_OBJ] += obj
    d[b, slot, 4, cell] = obj_normalizer * (_F1 - obj) if alexeyab else _F1 - obj
    stats[STAT_CLASS] += _class_delta(o, d, b, slot, cell, class_id, classes, alexeyab, focal, smooth_eps,
                                      cls_normalizer)
    stats[STAT_COUNT] += _F1
    stats[STAT_CLASS_COUNT] += _F1
    if iou > np.float32(0.5):
        stats[STAT_RECALL50] += _F1
    if iou > np.float32(0.75):
        stats[STAT_RECALL75] += _F1
    stats[STAT_IOU] += iou


@jit
def _truth_count(truth, b, boxes, stride):
    """Darknet reads truths until the first box with x == 0."""
    count = 0
    while count < boxes and truth[b, stride * count] != _F0:
        count += 1
    return count


@jit(inline="always")
def _grid_index(v, size):
    """(int)(v * size), kept inside the grid (Darknet writes out of bounds for v = 1)."""
    k = int(v * np.float32(size))
    if k < 0:
        return 0
    if k >= size:
        return size - 1
    return k


@jit
def yolo_loss(o, truth, d, lw, lh, anchors, mask, net_w, net_h, classes, max_boxes, ignore_thresh,
              truth_thresh, alexeyab, iou_loss, iou_normalizer, cls_normalizer, obj_normalizer, iou_thresh,
              iou_thresh_kind, max_delta, smooth_eps, focal, new_coords, stats):
    """[yolo] deltas (spec §12.1) for o (B, n, 5+classes, lh*lw), the activated layer output, and truth
    (B, 5*90). d (o's shape) and stats are overwritten.

    pjreddie's rules unless `alexeyab`: then the ignore test counts only truths for which some class
    output exceeds .25, truths with a class outside [0, classes) are skipped, objectness and class deltas
    are scaled by obj_normalizer and cls_normalizer, box deltas accumulate (MSE ones × iou_normalizer, or
    the IoU-loss gradient), iou_thresh trains further anchors of the mask and then averages each box delta
    over the classes its cell was trained for, and class targets may be smoothed or focal-weighted."""
    batch, slots, planes, cells = o.shape
    total = anchors.shape[0] // 2
    stats[:] = _F0
    d[:] = _F0
    box = np.zeros(4, np.float32)
    grad = np.zeros(4, np.float32)
    boxes = min(max_boxes, truth.shape[1] // 5)
    match_thresh = np.float32(0.25)
    for b in range(batch):
        count = _truth_count(truth, b, boxes, 5)
        # objectness of every prediction (and truth_thresh positives)
        for row in range(lh):
            for col in range(lw):
                cell = row * lw + col
                for a in range(slots):
                    anchor = mask[a]
                    _pred_box(o, b, a, cell, col, row, lw, lh, anchors[2 * anchor], anchors[2 * anchor + 1],
                              net_w, net_h, new_coords, box)
                    best_iou = _F0
                    best_match = _F0
                    best_t = 0
                    for t in range(count):
                        if alexeyab:
                            class_id = int(truth[b, 5 * t + 4])
                            if class_id < 0 or class_id >= classes:
                                continue
                        iou = _iou(alexeyab, box[0], box[1], box[2], box[3], truth[b, 5 * t],
                                   truth[b, 5 * t + 1], truth[b, 5 * t + 2], truth[b, 5 * t + 3])
                        if alexeyab and iou > best_match:
                            for c in range(classes):
                                if o[b, a, 5 + c, cell] > match_thresh:
                                    best_match = iou
                                    break
                        if iou > best_iou:
                            best_iou = iou
                            best_t = t
                    obj = o[b, a, 4, cell]
                    stats[STAT_NOOBJ] += obj
                    d[b, a, 4, cell] = obj_normalizer * (_F0 - obj) if alexeyab else _F0 - obj
                    if (best_match if alexeyab else best_iou) > ignore_thresh:
                        d[b, a, 4, cell] = _F0
                    if best_iou > truth_thresh:
                        d[b, a, 4, cell] = obj_normalizer * (_F1 - obj) if alexeyab else _F1 - obj
                        _class_delta(o, d, b, a, cell, int(truth[b, 5 * best_t + 4]), classes, alexeyab, focal,
                                     smooth_eps, cls_normalizer)
                        gw = truth[b, 5 * best_t + 2]
                        gh = truth[b, 5 * best_t + 3]
                        _box_delta(o, d, b, a, cell, col, row, lw, lh, anchors[2 * anchor],
                                   anchors[2 * anchor + 1], net_w, net_h, truth[b, 5 * best_t],
                                   truth[b, 5 * best_t + 1], gw, gh, _F2 - gw * gh, alexeyab, iou_loss,
                                   iou_normalizer, max_delta, new_coords, box, grad)
        # every truth trains the best anchor (over all anchors) if this layer owns it
        for t in range(count):
            gx = truth[b, 5 * t]
            gy = truth[b, 5 * t + 1]
            gw = truth[b, 5 * t + 2]
            gh = truth[b, 5 * t + 3]
            class_id = int(truth[b, 5 * t + 4])
            if alexeyab and (class_id < 0 or class_id >= classes):
                continue
            col = _grid_index(gx, lw)
            row = _grid_index(gy, lh)
            cell = row * lw + col
            best = _best_anchor(anchors, total, net_w, net_h, gw, gh)
            slot = _slot_of(mask, best)
            if slot >= 0:
                _train_positive(o, d, b, slot, best, cell, col, row, lw, lh, anchors, net_w, net_h, gx, gy, gw,
                                gh, class_id, classes, alexeyab, iou_loss, iou_normalizer, cls_normalizer,
                                obj_normalizer, max_delta, smooth_eps, focal, new_coords, box, grad, stats)
            if alexeyab and iou_thresh < _F1:
                for n in range(total):
                    other = _slot_of(mask, n)
                    if other < 0 or n == best:
                        continue
                    shape_iou = iou_kind(iou_thresh_kind, _F0, _F0, anchors[2 * n] / np.float32(net_w),
                                         anchors[2 * n + 1] / np.float32(net_h), _F0, _F0, gw, gh)
                    if shape_iou > iou_thresh:
                        _train_positive(o, d, b, other, n, cell, col, row, lw, lh, anchors, net_w, net_h, gx, gy,
                                        gw, gh, class_id, classes, alexeyab, iou_loss, iou_normalizer,
                                        cls_normalizer, obj_normalizer, max_delta, smooth_eps, focal, new_coords,
                                        box, grad, stats)
        if alexeyab and iou_thresh < _F1:
            # box deltas were accumulated per truth: average them over the classes trained in that slot
            for a in range(slots):
                for cell in range(cells):
                    if d[b, a, 4, cell] == _F0:
                        continue
                    trained = 0
                    for c in range(classes):
                        if d[b, a, 5 + c, cell] > _F0:
                            trained += 1
                    if trained > 0:
                        for k in range(4):
                            d[b, a, k, cell] /= np.float32(trained)


@jit
def squared_norm(d):
    """Darknet's pow(mag_array(delta, n), 2): a sequential float32 sum of squares, sqrt and square in
    double, rounded to float at each C assignment."""
    flat = d.reshape(-1)
    total = _F0
    for i in range(flat.shape[0]):
        total += flat[i] * flat[i]
    magnitude = np.float32(math.sqrt(np.float64(total)))
    return np.float32(np.float64(magnitude) * np.float64(magnitude))


# ------------------------------------------------------------------------------------------ [region]

@jit
def _region_box_delta(o, d, b, a, cell, col, row, lw, lh, anchor_w, anchor_h, gx, gy, gw, gh, scale):
    """delta_region_box: overwrite the box deltas towards g, anchors in grid cells; returns the IoU."""
    px = (np.float32(col) + o[b, a, 0, cell]) / np.float32(lw)
    py = (np.float32(row) + o[b, a, 1, cell]) / np.float32(lh)
    pw = np.float32(math.exp(np.float64(o[b, a, 2, cell])) * np.float64(anchor_w) / lw)
    ph = np.float32(math.exp(np.float64(o[b, a, 3, cell])) * np.float64(anchor_h) / lh)
    iou = _iou_pjreddie(px, py, pw, ph, gx, gy, gw, gh)
    tx = gx * np.float32(lw) - np.float32(col)
    ty = gy * np.float32(lh) - np.float32(row)
    tw = np.float32(math.log(np.float64(gw * np.float32(lw) / anchor_w)))
    th = np.float32(math.log(np.float64(gh * np.float32(lh) / anchor_h)))
    d[b, a, 0, cell] = scale * (tx - o[b, a, 0, cell])
    d[b, a, 1, cell] = scale * (ty - o[b, a, 1, cell])
    d[b, a, 2, cell] = scale * (tw - o[b, a, 2, cell])
    d[b, a, 3, cell] = scale * (th - o[b, a, 3, cell])
    return iou


@jit
def region_loss(o, truth, d, lw, lh, anchors, classes, coords, seen, thresh, coord_scale, object_scale,
                noobject_scale, class_scale, rescore, bias_match, softmax, background, stats):
    """[region] deltas (spec §12.2) for o (B, num, coords+1+classes, lh*lw), the activated output, and
    truth (B, 30*(coords+1)); `seen` counts the images including this pass. d and stats are overwritten."""
    batch, slots, planes, cells = o.shape
    stride = coords + 1
    stats[:] = _F0
    d[:] = _F0
    boxes = min(30, truth.shape[1] // stride)
    prior_scale = np.float32(0.01)
    half = np.float32(0.5)
    for b in range(batch):
        count = _truth_count(truth, b, boxes, stride)
        for row in range(lh):
            for col in range(lw):
                cell = row * lw + col
                for a in range(slots):
                    anchor_w = anchors[2 * a]
                    anchor_h = anchors[2 * a + 1]
                    px = (np.float32(col) + o[b, a, 0, cell]) / np.float32(lw)
                    py = (np.float32(row) + o[b, a, 1, cell]) / np.float32(lh)
                    pw = np.float32(math.exp(np.float64(o[b, a, 2, cell])) * np.float64(anchor_w) / lw)
                    ph = np.float32(math.exp(np.float64(o[b, a, 3, cell])) * np.float64(anchor_h) / lh)
                    best_iou = _F0
                    for t in range(count):
                        iou = _iou_pjreddie(px, py, pw, ph, truth[b, stride * t], truth[b, stride * t + 1],
                                            truth[b, stride * t + 2], truth[b, stride * t + 3])
                        if iou > best_iou:
                            best_iou = iou
                    obj = o[b, a, coords, cell]
                    stats[STAT_NOOBJ] += obj
                    d[b, a, coords, cell] = noobject_scale * ((_F1 if background else _F0) - obj)
                    if best_iou > thresh:
                        d[b, a, coords, cell] = _F0
                    if seen < 12800:
                        # pull every prediction towards its anchor box centred in its cell
                        _region_box_delta(o, d, b, a, cell, col, row, lw, lh, anchor_w, anchor_h,
                                          (np.float32(col) + half) / np.float32(lw),
                                          (np.float32(row) + half) / np.float32(lh),
                                          anchor_w / np.float32(lw), anchor_h / np.float32(lh), prior_scale)
        for t in range(count):
            gx = truth[b, stride * t]
            gy = truth[b, stride * t + 1]
            gw = truth[b, stride * t + 2]
            gh = truth[b, stride * t + 3]
            col = _grid_index(gx, lw)
            row = _grid_index(gy, lh)
            cell = row * lw + col
            best_iou = _F0
            best = 0
            for a in range(slots):
                if bias_match:
                    pw = anchors[2 * a] / np.float32(lw)
                    ph = anchors[2 * a + 1] / np.float32(lh)
                else:
                    pw = np.float32(math.exp(np.float64(o[b, a, 2, cell])) * np.float64(anchors[2 * a]) / lw)
                    ph = np.float32(math.exp(np.float64(o[b, a, 3, cell])) * np.float64(anchors[2 * a + 1]) / lh)
                iou = _iou_pjreddie(_F0, _F0, pw, ph, _F0, _F0, gw, gh)
                if iou > best_iou:
                    best_iou = iou
                    best = a
            iou = _region_box_delta(o, d, b, best, cell, col, row, lw, lh, anchors[2 * best],
                                    anchors[2 * best + 1], gx, gy, gw, gh, coord_scale * (_F2 - gw * gh))
            if iou > half:
                stats[STAT_RECALL50] += _F1
            stats[STAT_IOU] += iou
            obj = o[b, best, coords, cell]
            stats[STAT_OBJ] += obj
            if background:
                d[b, best, coords, cell] = object_scale * (_F0 - obj)
            elif rescore:
                d[b, best, coords, cell] = object_scale * (iou - obj)
            else:
                d[b, best, coords, cell] = object_scale * (_F1 - obj)
            class_id = int(truth[b, stride * t + coords])
            first = coords + 1
            if d[b, best, first, cell] != _F0 and not softmax:
                d[b, best, first + class_id, cell] = class_scale * (_F1 - o[b, best, first + class_id, cell])
            else:
                for c in range(classes):
                    target = _F1 if c == class_id else _F0
                    d[b, best, first + c, cell] = class_scale * (target - o[b, best, first + c, cell])
                stats[STAT_CLASS] += o[b, best, first + class_id, cell]
            stats[STAT_COUNT] += _F1
            stats[STAT_CLASS_COUNT] += _F1


@jit
def region_input_gradient(o, total_delta, dx, coords, background):
    """dx −= the GPU build's backward_region_layer of Darknet's delta: σ'(output) = (1 − y)·y on tx, ty,
    the extra coords and (unless background) the objectness, identity elsewhere. All arrays are
    (B, num, planes, cells); the minus converts Darknet's delta to dL/d(input)."""
    batch, slots, planes, cells = o.shape
    for b in range(batch):
        for a in range(slots):
            for p in range(planes):
                logistic = p < 2 or (p >= 4 and p < coords) or (p == coords and not background)
                for i in range(cells):
                    g = total_delta[b, a, p, i]
                    if logistic:
                        y = o[b, a, p, i]
                        g = g * ((_F1 - y) * y)
                    dx[b, a, p, i] -= g


# ------------------------------------------------------------------------------------------- NMS

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
                crit = _box_iou(a, b)
            elif kind == IOU_GREEDY_DIOU:
                crit = _box_diou(a, b, 0.6)
            else:
                crit = _box_diou(a, b, np.float64(beta))
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
            if _box_iou(a, boxes[j]) > thresh:
                objectness[j] = _F0
                probs[j, :] = _F0
