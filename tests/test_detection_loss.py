"""Training targets of [yolo] and [region] (spec §12.1, §12.2): hand-computed cases of Darknet's rules, and
finite-difference checks of what each AlexeyAB variant claims its deltas are (Darknet's deltas are
−gradients of per-output losses — cross-entropy on the logits for σ outputs, squared error on raw ones —
or, for the IoU losses, derivatives of the IoU variant with respect to the predicted box)."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from darknetpy.errors import UnsupportedError
from darknetpy.kernels import yolo as kl
from builders import quiet_net as build

F = np.float32


def yolo_head(extra: str = "", mask: str = "0,1", grid: int = 4, classes: int = 2,
              anchors: str = "1,1, 2,2, 4,4"):
    """A [yolo] reading the network input directly: grid x grid cells, network size = grid pixels, so an
    anchor of k pixels is k/grid of the image."""
    slots = len(mask.split(","))
    channels = slots * (5 + classes)
    net = build(f"[net]\nwidth={grid}\nheight={grid}\nchannels={channels}\n\n[yolo]\nmask={mask}\n"
                f"anchors={anchors}\nclasses={classes}\nnum={len(anchors.split(',')) // 2}\n{extra}")
    return net


def truth_rows(*images, boxes=90):
    rows = np.zeros((len(images), 5 * boxes), F)
    for b, image in enumerate(images):
        for k, box in enumerate(image):
            rows[b, 5 * k:5 * k + 5] = box
    return rows


def planes(net, array):
    layer = net.layers[0]
    batch, _, h, w = array.shape
    return array.reshape(batch, -1, 5 + layer.config.classes, h, w)


def train_forward(net, x, truth, seen=64):
    net.seen = seen
    net.forward(x, train=True, truth=truth)
    return net.layers[0]


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def bce(p, y):
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


# ------------------------------------------------------------------------------ pjreddie, by hand

def test_ignore_rule_and_positive_by_hand():
    """All inputs 0: every σ output is 0.5 and every box its anchor centred in its cell. The truth is the
    0.5x0.5 box of cell (1, 1): anchor 1 (slot 1) owns it; slot 1 of the four edge neighbours overlaps it
    by IoU 1/3 > ignore_thresh .3 (objectness delta 0), the diagonal ones by 1/7 (not ignored)."""
    net = yolo_head("ignore_thresh=.3\n")
    x = np.zeros((1, 14, 4, 4), F)
    layer = train_forward(net, x, truth_rows([(0.375, 0.375, 0.5, 0.5, 1)]))
    d = planes(net, layer.delta)[0]
    obj = d[:, 4]
    expected = np.full((2, 4, 4), -0.5, F)
    for row, col in ((1, 0), (1, 2), (0, 1), (2, 1)):
        expected[1, row, col] = 0.0
    expected[1, 1, 1] = 0.5
    np.testing.assert_array_equal(obj, expected)
    # targets equal the outputs: tx = 0.375*4 - 1 = .5 = σ(0); tw = log(.5*4/2) = 0
    np.testing.assert_array_equal(d[1, :4, 1, 1], np.zeros(4, F))
    np.testing.assert_array_equal(d[1, 5:, 1, 1], F([-0.5, 0.5]))
    assert np.count_nonzero(d[:, 5:]) == 2 and np.count_nonzero(d[:, :4]) == 0
    assert layer.cost == pytest.approx(27 * 0.25 + 0.25 + 2 * 0.25)
    stats = layer.statistics()
    assert stats == {"avg_iou": 1.0, "class": 0.5, "obj": 0.5, "no_obj": 0.5, "recall50": 1.0,
                     "recall75": 1.0, "count": 1}
    assert layer.statistics_line() == ("Region 0 Avg IOU: 1.000000, Class: 0.500000, Obj: 0.500000, "
                                       "No Obj: 0.500000, .5R: 1.000000, .75R: 1.000000,  count: 1")


def test_best_anchor_not_in_mask_is_left_to_the_other_head():
    """A 1x1 truth matches anchor 2 (4x4 pixels) best; a head with mask 0,1 ignores it (only the
    objectness push-down remains, none ignored: the 0.5x0.5 predictions overlap it by IoU .25), a head
    with mask 2 trains it."""
    truth = truth_rows([(0.5, 0.5, 1.0, 1.0, 0)])
    net = yolo_head("ignore_thresh=.3\n")
    layer = train_forward(net, np.zeros((1, 14, 4, 4), F), truth)
    d = planes(net, layer.delta)[0]
    np.testing.assert_array_equal(d[:, 4], np.full((2, 4, 4), -0.5, F))
    assert np.count_nonzero(d[:, :4]) == 0 and np.count_nonzero(d[:, 5:]) == 0
    assert layer.cost == pytest.approx(8.0)
    assert layer.statistics()["count"] == 0
    assert layer.statistics_line().startswith("Region 0 Avg IOU: -nan, Class: -nan, Obj: -nan, No Obj: 0.5")
    other = yolo_head("ignore_thresh=.3\n", mask="2")
    owner = train_forward(other, np.zeros((1, 7, 4, 4), F), truth)
    d = planes(other, owner.delta)[0]
    assert owner.statistics()["count"] == 1
    assert d[0, 4, 2, 2] == F(0.5)     # cell (int)(.5*4) = 2
    # tw target log(1*4/4) = 0 = tw; tx target .5*4 - 2 = 0 against σ = .5, scale 2 - 1 = 1
    np.testing.assert_array_equal(d[0, :4, 2, 2], F([-0.5, -0.5, 0, 0]))


def test_two_truths_in_one_cell_later_overwrites_box_and_class_rule():
    """Both truths land in cell (1, 1) with anchor 1. The second overwrites the box deltas (its own scale
    and targets); its class deltas follow the "already set" rule: the class-0 delta was set by the first
    truth, so only the second truth's class (0) is rewritten and class 1 keeps the first truth's +.5."""
    first = (0.3, 0.375, 0.5, 0.5, 1)
    second = (0.45, 0.375, 0.5, 0.4, 0)
    net = yolo_head()
    layer = train_forward(net, np.zeros((1, 14, 4, 4), F), truth_rows([first, second]))
    d = planes(net, layer.delta)[0, 1, :, 1, 1]
    scale = F(2) - F(0.5) * F(0.4)
    tx = F(0.45) * F(4) - F(1)
    th = F(math.log(F(0.4) * F(4) / F(2)))
    np.testing.assert_array_equal(d[:4], F([scale * (tx - F(0.5)), 0.0, 0.0, scale * th]))
    np.testing.assert_array_equal(d[4:], F([0.5, 0.5, 0.5]))
    assert layer.statistics()["count"] == 2


def test_two_truths_in_one_cell_alexeyab_accumulates_box_deltas():
    """AlexeyAB's rules (any AlexeyAB key, here iou_normalizer=1): box deltas of both truths add up and the
    "already set" test looks at the true class: the second truth (class 0) finds its class delta set
    (−.5 by the first) and only rewrites it."""
    first = (0.3, 0.375, 0.5, 0.5, 1)
    second = (0.45, 0.375, 0.5, 0.5, 0)
    net = yolo_head("iou_normalizer=1\n")
    layer = train_forward(net, np.zeros((1, 14, 4, 4), F), truth_rows([first, second]))
    d = planes(net, layer.delta)[0, 1, :, 1, 1]
    scale = F(2) - F(0.25)
    x1 = scale * (F(0.3) * F(4) - F(1) - F(0.5))
    x2 = scale * (F(0.45) * F(4) - F(1) - F(0.5))
    assert d[0] == pytest.approx(float(x1 + x2), abs=1e-6)
    np.testing.assert_array_equal(d[5:], F([0.5, 0.5]))


def test_truth_list_ends_at_first_zero_x_and_class_is_checked():
    net = yolo_head()
    rows = truth_rows([(0.375, 0.375, 0.5, 0.5, 1), (0.0, 0.5, 0.5, 0.5, 0), (0.6, 0.6, 0.5, 0.5, 0)])
    layer = train_forward(net, np.zeros((1, 14, 4, 4), F), rows)
    assert layer.statistics()["count"] == 1
    with pytest.raises(ValueError, match="class 2.0 is not one of the 2 classes"):
        train_forward(net, np.zeros((1, 14, 4, 4), F), truth_rows([(0.375, 0.375, 0.5, 0.5, 2)]))
    with pytest.raises(ValueError, match="truth rows of shape"):
        train_forward(net, np.zeros((1, 14, 4, 4), F), np.zeros((1, 10), F))


def test_inference_has_no_cost_and_truth_sizes():
    net = yolo_head()
    net.forward(np.zeros((1, 14, 4, 4), F))
    layer = net.layers[0]
    assert layer.cost is None and layer.statistics() == {} and layer.statistics_line() == ""
    assert layer.truth_size() == 450
    region = build("[net]\nwidth=4\nheight=4\nchannels=14\n\n[region]\nclasses=2\nnum=2\n")
    assert region.layers[0].truth_size() == 150


def test_detection_v1_refuses_training_at_its_line():
    net = build("[net]\nwidth=1\nheight=1\nchannels=28\n\n[detection]\nclasses=2\ncoords=4\nnum=1\nside=2\n")
    with pytest.raises(UnsupportedError, match="training \\[detection\\]") as info:
        net.forward(np.zeros((1, 28, 1, 1), F), train=True, truth=np.zeros((1, 28), F))
    assert info.value.line == 6
    with pytest.raises(UnsupportedError, match="training \\[detection\\]"):
        net.layers[0].truth_size()   # what a training setup asks first
    net.forward(np.zeros((1, 28, 1, 1), F))   # inference still runs


# ------------------------------------------------------------------------------ [region], by hand

REGION = ("[net]\nwidth=4\nheight=4\nchannels=14\n\n[region]\nclasses=2\ncoords=4\nnum=2\nanchors=1,1, 2,2\n"
          "softmax=1\nbias_match=1\nthresh=.6\n")


def region_input(tx_logit=math.log(3.0), tw=0.3):
    x = np.zeros((1, 2, 7, 4, 4), F)
    x[:, :, 0] = tx_logit   # σ = .75
    x[:, :, 2] = tw
    return x.reshape(1, 14, 4, 4)


@pytest.mark.parametrize("seen", [12798, 12800])
def test_region_prior_branch_and_owner(seen):
    """While seen < 12800 every prediction is pulled towards its anchor centred in its cell (scale .01):
    .01·(.5 − .75) on tx, .01·(.5 − .5) on ty, .01·(0 − .3) on tw, th... The truth's cell and best anchor
    (bias_match: anchor 1 is 2x2 cells = .5x.5) overwrite them: coord_scale·(2 − w·h)·(target − output)."""
    net = build(REGION)
    truth = np.zeros((1, 150), F)
    truth[0, :5] = (1.75 / 4, 1.5 / 4, 0.5, 0.5, 1)   # cell (1, 1): tx target .75, ty target .5
    net.seen = seen
    net.forward(region_input(), train=True, truth=truth)
    layer = net.layers[0]
    d = layer.delta.reshape(2, 7, 4, 4)
    prior = seen < 12800
    other = d[0, :4, 2, 3]
    expected_prior = F([0.01 * (0.5 - 0.75), 0.0, 0.01 * -0.3, 0.0]) if prior else np.zeros(4, F)
    np.testing.assert_allclose(other, expected_prior, rtol=1e-6)
    owner = d[1, :, 1, 1]
    scale = F(2) - F(0.25)
    np.testing.assert_allclose(owner[:4], F([0.0, 0.0, scale * -0.3, 0.0]), atol=1e-7)
    assert owner[4] == F(0.5)                 # object_scale·(1 − σ(0))
    np.testing.assert_array_equal(owner[5:], F([-0.5, 0.5]))   # softmax of two zeros
    # no-object: −σ(0) unless the prediction overlaps a truth by more than thresh=.6
    assert d[0, 4, 3, 3] == F(-0.5)
    stats = layer.statistics()
    assert stats["count"] == 1 and stats["class"] == 0.5 and stats["obj"] == 0.5
    assert layer.statistics_line().startswith("Region Avg IOU: ")
    # the GPU rule: σ' on tx, ty and objectness, the rest passed as is, sign flipped
    dx = np.zeros((1, 14, 4, 4), F)
    layer.backward(np.zeros_like(layer.output), [region_input()], [dx])
    g = dx.reshape(2, 7, 4, 4)
    assert g[0, 0, 2, 3] == pytest.approx(-float(other[0]) * 0.75 * 0.25, rel=1e-6)
    assert g[0, 2, 2, 3] == pytest.approx(-float(other[2]), rel=1e-6)
    assert g[1, 4, 1, 1] == pytest.approx(-0.5 * 0.25, rel=1e-6)
    assert g[1, 6, 1, 1] == pytest.approx(-0.5, rel=1e-6)


def test_region_rescore_uses_the_predictions_iou():
    net = build(REGION + "rescore=1\n")
    truth = np.zeros((1, 150), F)
    truth[0, :5] = (1.75 / 4, 1.5 / 4, 0.5, 0.5, 1)
    net.seen = 20000
    net.forward(region_input(), train=True, truth=truth)
    layer = net.layers[0]
    iou = layer.statistics()["avg_iou"]
    d = layer.delta.reshape(2, 7, 4, 4)
    assert d[1, 4, 1, 1] == pytest.approx(iou - 0.5, rel=1e-6)
    # the prediction: centre (1.75/4, 1.5/4), size exp(.3)·2/4 x exp(0)·2/4, around the .5 square truth
    assert iou == pytest.approx(0.25 / (math.exp(0.3) * 0.5 * 0.5), rel=1e-5)


# ------------------------------------------------------------------------------ IoU losses vs FD

def _edges(box):
    x, y, w, h = box
    return x - w / 2, x + w / 2, y - h / 2, y + h / 2


def iou64(p, g):
    pl, pr, pt, pb = _edges(p)
    gl, gr, gt, gb = _edges(g)
    iw = min(pr, gr) - max(pl, gl)
    ih = min(pb, gb) - max(pt, gt)
    inter = iw * ih if iw > 0 and ih > 0 else 0.0
    return inter / (p[2] * p[3] + g[2] * g[3] - inter)


def enclosing(p, g):
    pl, pr, pt, pb = _edges(p)
    gl, gr, gt, gb = _edges(g)
    return max(pr, gr) - min(pl, gl), max(pb, gb) - min(pt, gt)


def giou64(p, g):
    cw, ch = enclosing(p, g)
    pl, pr, pt, pb = _edges(p)
    gl, gr, gt, gb = _edges(g)
    iw = min(pr, gr) - max(pl, gl)
    ih = min(pb, gb) - max(pt, gt)
    inter = iw * ih if iw > 0 and ih > 0 else 0.0
    union = p[2] * p[3] + g[2] * g[3] - inter
    return inter / union - (cw * ch - union) / (cw * ch)


def diou64(p, g):
    cw, ch = enclosing(p, g)
    return iou64(p, g) - ((p[0] - g[0]) ** 2 + (p[1] - g[1]) ** 2) / (cw * cw + ch * ch)


def aspect64(p, g):
    return 4 / math.pi ** 2 * (math.atan(g[2] / g[3]) - math.atan(p[2] / p[3])) ** 2


def fd_gradient(f, p, g, step=1e-6):
    out = np.zeros(4)
    for k in range(4):
        up = list(p)
        down = list(p)
        up[k] += step
        down[k] -= step
        out[k] = (f(up, g) - f(down, g)) / (2 * step)
    return out


def random_pairs(seed, count, overlapping):
    rng = np.random.default_rng(seed)
    pairs = []
    while len(pairs) < count:
        p = [float(v) for v in F(rng.uniform([0.2, 0.2, 0.1, 0.1], [0.8, 0.8, 0.5, 0.5]))]
        g = [float(v) for v in F(rng.uniform([0.2, 0.2, 0.1, 0.1], [0.8, 0.8, 0.5, 0.5]))]
        edges = np.array(_edges(p) + _edges(g))
        if min(abs(a - b) for i, a in enumerate(edges) for b in edges[i + 1:]) < 1e-3:
            continue   # a kink of min/max: no derivative to compare
        if (iou64(p, g) > 0) == overlapping:
            pairs.append((p, g))
    return pairs


def kernel_gradient(kind, p, g):
    out = np.zeros(4, F)
    kl.iou_gradient(kind, *map(F, p), *map(F, g), out)
    return out.astype(np.float64)


@pytest.mark.parametrize("kind, reference", [(kl.IOU, iou64), (kl.GIOU, giou64), (kl.DIOU, diou64)])
@pytest.mark.parametrize("overlapping", [True, False])
def test_iou_loss_gradients_match_finite_differences(kind, reference, overlapping):
    for p, g in random_pairs(kind * 10 + overlapping, 20, overlapping):
        np.testing.assert_allclose(kernel_gradient(kind, p, g), fd_gradient(reference, p, g),
                                   rtol=2e-3, atol=2e-5)


def test_ciou_gradient_is_diou_plus_the_papers_aspect_term():
    """CIoU = DIoU − α·v: the paper's gradient holds α constant and drops the 1/(w²+h²) factor of ∂v, so
    ∂CIoU − ∂DIoU = −α·∂v·(w²+h²) on w, h and 0 on x, y."""
    for p, g in random_pairs(7, 20, True) + random_pairs(8, 5, False):
        v = aspect64(p, g)
        alpha = v / (1 - iou64(p, g) + v + 1e-6)
        difference = kernel_gradient(kl.CIOU, p, g) - kernel_gradient(kl.DIOU, p, g)
        expected = -alpha * fd_gradient(aspect64, p, g) * (p[2] ** 2 + p[3] ** 2)
        np.testing.assert_allclose(difference, expected, rtol=2e-3, atol=1e-6)


def test_iou_kind_values():
    p, g = (0.4, 0.5, 0.3, 0.2), (0.5, 0.45, 0.25, 0.3)
    args = (*map(F, p), *map(F, g))
    assert kl.iou_kind(kl.IOU, *args) == pytest.approx(iou64(p, g), rel=1e-5)
    assert kl.iou_kind(kl.GIOU, *args) == pytest.approx(giou64(p, g), rel=1e-5)
    cw, ch = enclosing(p, g)
    rho = ((p[0] - g[0]) ** 2 + (p[1] - g[1]) ** 2) / (cw * cw + ch * ch)
    assert kl.iou_kind(kl.DIOU, *args) == pytest.approx(iou64(p, g) - rho ** 0.6, rel=1e-5)
    v = aspect64(p, g)
    alpha = v / (1 - iou64(p, g) + v + 1e-6)
    assert kl.iou_kind(kl.CIOU, *args) == pytest.approx(iou64(p, g) - rho - alpha * v, rel=1e-5)


# ------------------------------------------------------------------------------ AlexeyAB variants in the layer

def positive_case(extra, tx=0.3, ty=-0.2, tw=0.2, th=-0.1, truth=(0.40, 0.30, 0.45, 0.6, 1), obj=0.4,
                  classes=(0.1, -0.3), mask="0,1", new_coords=False):
    """One truth owned by slot 1 (anchor 2x2 of 4 pixels) at cell (1, 1); the raw inputs of that slot."""
    net = yolo_head(extra, mask=mask)
    x = np.zeros((1, 2, 7, 4, 4), F)
    x[0, 1, :, 1, 1] = (tx, ty, tw, th, obj, *classes)
    layer = train_forward(net, x.reshape(1, 14, 4, 4), truth_rows([truth]))
    return layer, x[0, 1, :, 1, 1].astype(np.float64), planes(net, layer.delta)[0, 1, :, 1, 1].astype(np.float64)


def predicted_box(raw, scale_x_y=1.0, new_coords=False, cell=(1, 1), grid=4, anchor=2.0, net=4):
    def centre(t, k):
        s = (t if new_coords else sigmoid(t)) * scale_x_y - (scale_x_y - 1) / 2
        return (k + s) / grid
    if new_coords:
        size = [raw[2] ** 2 * 4 * anchor / net, raw[3] ** 2 * 4 * anchor / net]
    else:
        size = [math.exp(raw[2]) * anchor / net, math.exp(raw[3]) * anchor / net]
    return [centre(raw[0], cell[0]), centre(raw[1], cell[1]), *size]


def test_scale_x_y_mse_delta_is_a_cross_entropy_gradient():
    """MSE box delta with scale_x_y s on tx: scale·(t − x') with x' = s·σ(tx) − (s−1)/2 is exactly
    −∂/∂tx of scale·s·BCE(σ(tx), (t + (s−1)/2)/s) (times iou_normalizer)."""
    s, normalizer = 1.2, 0.5
    truth = (0.40, 0.30, 0.45, 0.6, 1)
    layer, raw, d = positive_case(f"scale_x_y={s}\niou_normalizer={normalizer}\n", truth=truth)
    scale = 2 - truth[2] * truth[3]
    for k, target in ((0, truth[0] * 4 - 1), (1, truth[1] * 4 - 1)):
        y = (target + (s - 1) / 2) / s
        def loss(t):
            return normalizer * scale * s * bce(sigmoid(t), y)
        step = 1e-5
        fd = (loss(raw[k] + step) - loss(raw[k] - step)) / (2 * step)
        assert d[k] == pytest.approx(-fd, rel=1e-4)
    # tw: squared error on the raw value, halved
    target_w = math.log(truth[2] * 4 / 2)
    assert d[2] == pytest.approx(normalizer * scale * (target_w - raw[2]), rel=1e-5)


@pytest.mark.parametrize("kind, reference", [("giou", giou64), ("diou", diou64), ("iou", iou64)])
def test_iou_loss_box_deltas_in_the_layer(kind, reference):
    """x, y deltas = ∂IoU-variant/∂(box x, y); w, h deltas = ∂/∂(box w, h)·exp(tw, th); × iou_normalizer
    (with scale_x_y 1.1 in the box)."""
    normalizer = 0.3
    layer, raw, d = positive_case(f"iou_loss={kind}\niou_normalizer={normalizer}\nscale_x_y=1.1\n")
    box = predicted_box(raw, scale_x_y=1.1)
    truth = [0.40, 0.30, 0.45, 0.6]
    fd = fd_gradient(reference, box, truth)
    expected = normalizer * fd * np.array([1, 1, math.exp(raw[2]), math.exp(raw[3])])
    np.testing.assert_allclose(d[:4], expected, rtol=2e-3, atol=1e-6)


def test_ciou_with_new_coords_box_deltas():
    """new_coords: the input is already σ-activated, box w = (2v)²·anchor, and the IoU gradient is applied to
    v without the exp factor. CIoU's aspect term as in test_ciou_gradient_is_diou_plus_the_papers_aspect_term."""
    raw_values = dict(tx=0.55, ty=0.4, tw=0.45, th=0.6)
    layer, raw, d = positive_case("iou_loss=ciou\niou_normalizer=1\nnew_coords=1\n", **raw_values)
    box = predicted_box(raw, new_coords=True)
    truth = [0.40, 0.30, 0.45, 0.6]
    v = aspect64(box, truth)
    alpha = v / (1 - iou64(box, truth) + v + 1e-6)
    expected = fd_gradient(diou64, box, truth) - alpha * fd_gradient(aspect64, box, truth) * (box[2] ** 2 + box[3] ** 2)
    np.testing.assert_allclose(d[:4], expected, rtol=2e-3, atol=1e-6)
    # objectness and classes are not activated again: 1 − v, squared-error gradient on v
    assert d[4] == pytest.approx(1 - 0.4, rel=1e-6)


def test_new_coords_mse_targets():
    layer, raw, d = positive_case("new_coords=1\niou_normalizer=1\n", tx=0.55, ty=0.4, tw=0.45, th=0.6)
    scale = 2 - 0.45 * 0.6
    target_w = math.sqrt(0.45 * 4 / (4 * 2))
    assert d[2] == pytest.approx(scale * (target_w - 0.45), rel=1e-5)
    assert d[0] == pytest.approx(scale * ((0.40 * 4 - 1) - 0.55), rel=1e-5)


def test_objectness_and_class_deltas_are_cross_entropy_gradients_with_normalizers_and_smoothing():
    eps, obj_norm, cls_norm = 0.1, 0.7, 0.6
    layer, raw, d = positive_case(f"label_smooth_eps={eps}\nobj_normalizer={obj_norm}\n"
                                  f"cls_normalizer={cls_norm}\n")
    step = 1e-5

    def fd(f, z):
        return (f(z + step) - f(z - step)) / (2 * step)
    assert d[4] == pytest.approx(-fd(lambda z: obj_norm * bce(sigmoid(z), 1.0), raw[4]), rel=1e-4)
    for c, onehot in ((0, 0.0), (1, 1.0)):
        y = onehot * (1 - eps) + 0.5 * eps
        assert d[5 + c] == pytest.approx(-fd(lambda z: cls_norm * bce(sigmoid(z), y), raw[5 + c]), rel=1e-4)


def test_focal_loss_true_class_delta_is_the_focal_gradient():
    """AlexeyAB's focal loss (γ = 2, α = .5): the true class's delta is −α·∂FL/∂z with
    FL = −(1 − p)²·log p, p = σ(z); the other classes get their cross-entropy delta scaled by the same
    factor, so delta_other / delta_true = −p_other / (1 − p_true)."""
    layer, raw, d = positive_case("focal_loss=1\n")
    step = 1e-5

    def focal(z):
        p = sigmoid(z)
        return -0.5 * (1 - p) ** 2 * math.log(p)
    assert d[6] == pytest.approx(-(focal(raw[6] + step) - focal(raw[6] - step)) / (2 * step), rel=1e-4)
    assert d[5] / d[6] == pytest.approx(-sigmoid(raw[5]) / (1 - sigmoid(raw[6])), rel=1e-5)


def test_max_delta_clips_iou_deltas():
    layer, raw, d = positive_case("iou_loss=giou\niou_normalizer=10\nmax_delta=0.05\n")
    assert np.abs(d[:4]).max() == pytest.approx(0.05)


def test_iou_thresh_trains_other_close_anchors_and_averages():
    """iou_thresh: slot 0 (anchor 1.5x1.5 px) is close enough to the 2.2x2 px truth (shape IoU .51 > .5)
    although anchor 2x2 is best: both are trained (count 2), box deltas of each divided by the number of
    classes trained there (1)."""
    net = yolo_head("iou_thresh=0.5\niou_normalizer=1\n", anchors="1.5,1.5, 2,2, 4,4")
    x = np.zeros((1, 14, 4, 4), F)
    layer = train_forward(net, x, truth_rows([(0.3, 0.3, 0.55, 0.5, 0)]))
    d = planes(net, layer.delta)[0]
    assert layer.statistics()["count"] == 2
    assert d[0, 4, 1, 1] == F(0.5) and d[1, 4, 1, 1] == F(0.5)
    scale = F(2) - F(0.55) * F(0.5)
    assert d[0, 2, 1, 1] == pytest.approx(float(scale * F(math.log(0.55 * 4 / 1.5))), rel=1e-6)


def test_alexeyab_ignore_counts_only_confident_class_predictions():
    """pjreddie ignores a prediction overlapping any truth by > ignore_thresh; AlexeyAB only if one of its
    class outputs is above .25. All class outputs σ(−3) < .25 here: nothing is ignored."""
    x = np.zeros((1, 14, 4, 4), F)
    x.reshape(1, 2, 7, 4, 4)[:, :, 5:] = -3.0
    truth = truth_rows([(0.375, 0.375, 0.5, 0.5, 1)])
    pj_net = yolo_head("ignore_thresh=.3\n")
    ab_net = yolo_head("ignore_thresh=.3\nobj_normalizer=1\n")
    pj = train_forward(pj_net, x, truth)
    ab = train_forward(ab_net, x, truth)
    assert np.count_nonzero(planes(pj_net, pj.delta)[0, :, 4] == 0) == 4
    assert np.count_nonzero(planes(ab_net, ab.delta)[0, :, 4] == 0) == 0


def test_rules_follow_the_keys_written():
    assert not yolo_head().layers[0].alexeyab_rules
    assert yolo_head("scale_x_y=1.05\n").layers[0].alexeyab_rules


# ------------------------------------------------------------------------------ real cfgs

REAL_CFGS = [("cfg-corpus", "yolov3-tiny.cfg"), ("cfg-alexeyab", "yolov4-tiny.cfg"),
             ("models", "yolo-fastest-1.1", "yolo-fastest-1.1.cfg"),
             ("models", "yolo-fastest-1.1", "yolo-fastest-1.1-xl.cfg"),
             ("models", "yolo-fastest-1.1_body", "yolo-fastest-1.1_body.cfg")]


@pytest.mark.shared
@pytest.mark.parametrize("parts", REAL_CFGS, ids=lambda parts: parts[-1])
def test_real_cfg_heads_read_every_key_and_train(parts):
    """Every key these cfgs set in their [yolo] sections is a typed Config field (none ignored), the
    AlexeyAB ones switch to AlexeyAB's rules, and a training pass at 64x64 gives a finite cost and
    gradients."""
    from conftest import shared_path
    from darknetpy.layers.base import config_keys
    from darknetpy.layers.detection import Yolo
    from darknetpy.network import load_cfg

    path = shared_path(*parts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = load_cfg(path, width=64, height=64)
    heads = [layer for layer in net.layers if isinstance(layer, Yolo)]
    assert len(heads) == 2
    fields = config_keys(Yolo.Config)
    for head in heads:
        written = set(head.config.origin.key_lines)
        assert written <= set(fields), written - set(fields)
        assert head.alexeyab_rules == (parts[-1] != "yolov3-tiny.cfg")
    cfg = heads[0].config
    if parts[-1] == "yolov4-tiny.cfg":
        assert (cfg.iou_loss, cfg.iou_normalizer, cfg.scale_x_y, cfg.resize, cfg.jitter) == \
            ("ciou", 0.07, 1.05, 1.5, 0.3)
    if parts[-1].startswith("yolo-fastest"):
        assert (cfg.iou_loss, cfg.iou_thresh, cfg.jitter) == ("ciou", 0.213, 0.15)
    net.initialize(1)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (2, 3, 64, 64)).astype(F)
    last = heads[0].classes - 1
    truth = truth_rows([(0.5, 0.5, 0.4, 0.6, last), (0.3, 0.6, 0.1, 0.2, 0)], [(0.7, 0.2, 0.9, 0.3, last)])
    net.seen = 2
    with np.errstate(over="ignore"):
        net.forward(x, train=True, truth=truth)
        net.backward()
    assert all(np.isfinite(head.cost) and head.cost > 0 for head in heads)
    assert sum(head.statistics()["count"] for head in heads) >= 2
    grads = [p.grad for _, p in net.params()]
    assert all(np.isfinite(g).all() for g in grads) and any(np.abs(g).max() > 0 for g in grads)


@pytest.mark.shared
def test_yolov2_tiny_region_reads_its_keys_and_trains():
    from conftest import shared_path
    from darknetpy.config.key_rules import RULES
    from darknetpy.layers.base import config_keys
    from darknetpy.layers.detection import Region
    from darknetpy.network import load_cfg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = load_cfg(shared_path("cfg-corpus", "yolov2-tiny-voc.cfg"), width=64, height=64)
    head = net.layers[-1]
    assert isinstance(head, Region)
    assert set(head.config.origin.key_lines) <= set(config_keys(Region.Config)) | set(RULES["region"])
    cfg = head.config
    assert (cfg.rescore, cfg.bias_match, cfg.softmax, cfg.object_scale, cfg.thresh) == (True, True, True, 5.0, 0.6)
    net.initialize(1)
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, 64, 64)).astype(F)
    truth = np.zeros((1, 150), F)
    truth[0, :5] = (0.5, 0.4, 0.3, 0.5, 14)
    net.seen = 1
    with np.errstate(over="ignore"):
        net.forward(x, train=True, truth=truth)
        net.backward()
    assert np.isfinite(head.cost) and head.statistics()["count"] == 1
    grads = [p.grad for _, p in net.params()]
    assert all(np.isfinite(g).all() for g in grads) and any(np.abs(g).max() > 0 for g in grads)


@pytest.mark.parametrize("bias_match, owner", [(True, 1), (False, 0)])
def test_region_anchor_choice_with_and_without_bias_match(bias_match, owner):
    """bias_match=1 picks the anchor by its own shape (anchor 1 = the .5x.5 truth exactly); without it the
    current predictions' shapes decide: anchor 1 predicts exp(2)·.5 wide (IoU .135), anchor 0
    exp(.3)·.25 x .25 (IoU .337), so anchor 0 wins."""
    net = build(REGION.replace("bias_match=1", f"bias_match={int(bias_match)}"))
    x = region_input().reshape(1, 2, 7, 4, 4)
    x[0, 1, 2] = 2.0
    truth = np.zeros((1, 150), F)
    truth[0, :5] = (1.75 / 4, 1.5 / 4, 0.5, 0.5, 1)
    net.seen = 20000
    net.forward(x.reshape(1, 14, 4, 4), train=True, truth=truth)
    d = net.layers[0].delta.reshape(2, 7, 4, 4)
    assert d[owner, 4, 1, 1] == F(0.5) and d[1 - owner, 4, 1, 1] <= 0


@pytest.mark.parametrize("extra, expected", [("", (-1.0, 0.5)), ("obj_normalizer=1\n", (0.0, 0.5))])
def test_already_set_test_looks_at_class_zero_in_pjreddie_and_the_true_class_in_alexeyab(extra, expected):
    """Class 0's output saturates at 1, so the first truth (class 0) leaves the class-0 delta at exactly 0.
    pjreddie then sees "not set yet" for the second truth (class 1) and rewrites both classes (class 0:
    0 − 1); AlexeyAB finds class 1's delta set (−.5) and only rewrites class 1."""
    first = (0.3, 0.375, 0.5, 0.5, 0)
    second = (0.45, 0.375, 0.5, 0.5, 1)
    net = yolo_head(extra)
    x = np.zeros((1, 2, 7, 4, 4), F)
    x[0, 1, 5, 1, 1] = 100.0
    layer = train_forward(net, x.reshape(1, 14, 4, 4), truth_rows([first, second]))
    np.testing.assert_array_equal(planes(net, layer.delta)[0, 1, 5:, 1, 1], F(expected))


def test_region_gpu_rule_gradient_is_the_derivative_of_its_squared_errors():
    """With σ' applied (the GPU rule), [region]'s input gradient is the exact derivative of
    coord·(2−wh)/2·Σ(t − box)² (σ outputs for x, y; raw tw, th) + object/2·(1 − σ(o))² + class·CE(softmax)
    at the owning prediction and noobject/2·σ(o)² at the others (no prior term: seen ≥ 12800)."""
    net = build(REGION.replace("thresh=.6", "thresh=.99") + "coord_scale=2\nobject_scale=3\nnoobject_scale=.5\n"
                "class_scale=1.5\n")
    rng = np.random.default_rng(3)
    x = rng.normal(0, 0.5, (1, 14, 4, 4)).astype(F)
    gx, gy, gw, gh = 1.6 / 4, 1.3 / 4, 0.45, 0.55
    truth = np.zeros((1, 150), F)
    truth[0, :5] = (gx, gy, gw, gh, 1)
    net.seen = 20000
    net.forward(x, train=True, truth=truth)
    layer = net.layers[0]
    dx = np.zeros_like(x)
    layer.backward(np.zeros_like(layer.output), [x], [dx])
    raw = x.reshape(2, 7, 4, 4).astype(np.float64)
    targets = (gx * 4 - 1, gy * 4 - 1, math.log(gw * 4 / 2), math.log(gh * 4 / 2))   # anchor 1: 2x2 cells

    def owner_loss(v):
        scale = 2 * (2 - gw * gh)
        box = (sigmoid(v[0]), sigmoid(v[1]), v[2], v[3])
        p = np.exp(v[5:] - v[5:].max())
        p /= p.sum()
        return (scale / 2 * sum((t - b) ** 2 for t, b in zip(targets, box))
                + 3 / 2 * (1 - sigmoid(v[4])) ** 2 - 1.5 * math.log(p[1]))

    step = 1e-6
    v = raw[1, :, 1, 1].copy()
    fd = []
    for k in range(7):
        up, down = v.copy(), v.copy()
        up[k] += step
        down[k] -= step
        fd.append((owner_loss(up) - owner_loss(down)) / (2 * step))
    np.testing.assert_allclose(dx.reshape(2, 7, 4, 4)[1, :, 1, 1], fd, rtol=1e-4, atol=1e-6)
    z = raw[0, 4, 3, 2]
    assert dx.reshape(2, 7, 4, 4)[0, 4, 3, 2] == pytest.approx(0.5 * sigmoid(z) * sigmoid(z) * (1 - sigmoid(z)),
                                                              rel=1e-5)
