"""[yolo], [region] and [detection]: forward vs slow references (tests/naive_detection.py), box decoding on
hand-made outputs vs the spec's formulas (§9.2–9.4), shapes, cfg errors with line numbers, and OpenCV's
DNN importer as a live oracle on a one-convolution network."""
from __future__ import annotations

import math
import os
import struct
import warnings

import numpy as np
import pytest

from darknetpy.errors import CfgError, UnsupportedError
from darknetpy.network import load_cfg
from darknetpy.weights import read_weights

import naive_detection as naive
from builders import quiet_net as build

F = np.float32


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def yolo_net(h, w, classes, mask, num, extra=""):
    c = len(mask) * (classes + 5)
    anchors = ",".join(str(10 + 3 * i) for i in range(2 * num))
    return build(f"[net]\nwidth={w}\nheight={h}\nchannels={c}\n\n[yolo]\nmask={','.join(map(str, mask))}\n"
                 f"anchors={anchors}\nclasses={classes}\nnum={num}\n{extra}")


def region_net(h, w, classes, num, extra=""):
    c = num * (classes + 5)
    anchors = ",".join(str(0.5 + i) for i in range(2 * num))
    return build(f"[net]\nwidth={w}\nheight={h}\nchannels={c}\n\n[region]\nanchors={anchors}\nclasses={classes}\n"
                 f"coords=4\nnum={num}\n{extra}")


def random_input(shape, seed=0, scale=3.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(F)


# ------------------------------------------------------------------------------------------- forward

@pytest.mark.parametrize("extra, scale, new_coords", [
    ("", 1.0, False),
    ("scale_x_y=1.1", 1.1, False),
    ("scale_x_y=1.05\nnew_coords=1", 1.05, True),
])
def test_yolo_forward_matches_reference(extra, scale, new_coords):
    net = yolo_net(5, 7, classes=3, mask=(1, 2), num=3, extra=extra)
    x = random_input((2, 16, 5, 7))
    y = net.forward(x)
    np.testing.assert_array_equal(y, naive.yolo_forward(x, 2, 3, scale, new_coords))


def test_yolo_logistic_is_darknets_bit_for_bit_across_the_float32_range():
    """The vectorised logistic of the heads against the C formula (libm's double exp, rounded to float32) on
    every 20011th float32 bit pattern of either sign (infinities and NaNs included) and at the edges of its
    clamps."""
    from darknetpy.kernels.yolo import yolo_forward
    patterns = np.arange(0, 2 ** 32, 20011, dtype=np.uint64).astype(np.uint32)
    edges = np.array([0.0, -0.0, 36.7, -36.7, 88.7, -88.7, 99.9, 100.0, 100.1, -103.3, -104.9, -105.0, -105.1,
                      np.inf, -np.inf, np.nan], F)
    values = np.concatenate([patterns.view(F), edges])
    values = np.resize(values, (values.size + 5) // 6 * 6)
    x = values.reshape(1, 6, 1, -1)      # one anchor, one class: planes 0, 1, 4 and 5 take the logistic
    out = np.empty_like(x)
    yolo_forward(x, out, 1, 1.0, 0.0, 0)
    for plane in (0, 1, 4, 5):
        want = np.array([naive.logistic(v) for v in x[0, plane, 0]], F)
        np.testing.assert_array_equal(out[0, plane, 0].view(np.uint32)[~np.isnan(want)],
                                      want.view(np.uint32)[~np.isnan(want)])
        assert np.isnan(out[0, plane, 0][np.isnan(want)]).all()
    np.testing.assert_array_equal(out[0, 2:4], x[0, 2:4])


@pytest.mark.parametrize("extra, softmax, background", [
    ("softmax=1", True, False),
    ("", False, False),
    ("softmax=1\nbackground=1", True, True),
])
def test_region_forward_matches_reference(extra, softmax, background):
    net = region_net(3, 5, classes=4, num=2, extra=extra)
    x = random_input((2, 18, 3, 5), seed=1)
    y = net.forward(x)
    want = naive.region_forward(x, 2, 4, 4, softmax, background)
    np.testing.assert_allclose(y, want, rtol=2e-7, atol=1e-9)


def test_detection_layer_forward_softmax_per_cell():
    side, num, classes = 2, 2, 3
    inputs = side * side * ((1 + 4) * num + classes)
    net = build(f"[net]\nwidth=1\nheight=1\nchannels={inputs}\n\n[detection]\nclasses={classes}\ncoords=4\n"
                f"num={num}\nside={side}\nsoftmax=1\n")
    x = random_input((2, inputs, 1, 1), seed=2)
    y = net.forward(x).reshape(2, -1)
    flat = x.reshape(2, -1)
    for b in range(2):
        for cell in range(side * side):
            want = naive.softmax(flat[b, cell * classes:(cell + 1) * classes])
            np.testing.assert_allclose(y[b, cell * classes:(cell + 1) * classes], want, rtol=2e-7)
        np.testing.assert_array_equal(y[b, side * side * classes:], flat[b, side * side * classes:])
    assert net.shapes[0].image is False and net.shapes[0].size == inputs


# ------------------------------------------------------------------------------------------ decoding

def one_anchor_yolo(extra=""):
    # 2x3 grid, one anchor (16x8 pixels), 2 classes; the network input is 64x32 pixels
    return build("[net]\nwidth=3\nheight=2\nchannels=7\n\n[yolo]\nmask=0\nanchors=16,8\nclasses=2\nnum=1\n" + extra)


def one_cell_output(values):
    x = np.full((1, 7, 2, 3), -10.0, F)
    for entry, v in enumerate(values):
        x[0, entry, 1, 2] = v           # row 1, col 2
    return x


def test_yolo_decoding_one_cell_one_anchor():
    net = one_anchor_yolo()
    x = one_cell_output([0.0, logit(0.25), math.log(2.0), 0.0, logit(0.8), 0.0, logit(0.2)])
    y = net.forward(x)
    dets = net.layers[0].detections(y[0], 640, 480, 64, 32, 0.25, False)
    assert len(dets) == 1
    d = dets[0]
    assert d.box == pytest.approx(((2 + 0.5) / 3, (1 + 0.25) / 2, 2 * 16 / 64, 1 * 8 / 32), rel=1e-6)
    assert d.objectness == pytest.approx(0.8, rel=1e-6)
    # class 0: 0.8 * 0.5 = 0.4 kept; class 1: 0.8 * 0.2 = 0.16 <= 0.25 -> 0
    assert d.probs.tolist() == pytest.approx([0.4, 0.0], rel=1e-6)
    assert d.probs.dtype == np.float32


def test_yolo_decoding_scale_x_y():
    net = one_anchor_yolo("scale_x_y=2.0")
    x = one_cell_output([0.0, logit(0.25), 0.0, 0.0, logit(0.8), 0.0, 0.0])
    y = net.forward(x)
    d, = net.layers[0].detections(y[0], 64, 32, 64, 32, 0.25, False)
    # x: 0.5*2 - 0.5 = 0.5 ; y: 0.25*2 - 0.5 = 0
    assert d.box[:2] == pytest.approx(((2 + 0.5) / 3, (1 + 0.0) / 2), rel=1e-6)


def test_yolo_decoding_new_coords_uses_raw_values():
    net = one_anchor_yolo("new_coords=1")
    x = one_cell_output([0.5, 0.25, 0.5, 1.0, 0.8, 0.5, 0.2])
    y = net.forward(x)
    np.testing.assert_array_equal(y, x)     # no activation at all
    d, = net.layers[0].detections(y[0], 64, 32, 64, 32, 0.25, False)
    # w = tw² * 4 * anchor_w / net_w
    assert d.box == pytest.approx(((2 + 0.5) / 3, (1 + 0.25) / 2, 0.25 * 4 * 16 / 64, 1 * 4 * 8 / 32), rel=1e-6)
    assert d.probs.tolist() == pytest.approx([0.4, 0.0], rel=1e-6)


def test_yolo_decoding_letterbox_correction():
    net = one_anchor_yolo()
    x = one_cell_output([0.0, logit(0.25), math.log(2.0), 0.0, logit(0.8), 0.0, 0.0])
    y = net.forward(x)
    # image 128x32 into 64x32: the image fills rows 8..24 (new_h = 16)
    d, = net.layers[0].detections(y[0], 128, 32, 64, 32, 0.25, True)
    assert d.box == pytest.approx(((2 + 0.5) / 3, (0.625 - 0.25) / 0.5, 0.5, 0.25 * 2), rel=1e-6)


def test_yolo_decoding_order_is_cell_major_and_threshold_strict():
    # two anchors in two cells: order must be (cell 0: a0, a1), (cell 1: a0, a1)
    net = build("[net]\nwidth=2\nheight=1\nchannels=12\n\n[yolo]\nmask=0,1\nanchors=1,1,2,2\nclasses=1\nnum=2\n")
    x = np.full((1, 12, 1, 2), -10.0, F)
    x[0, 4, 0, :] = logit(0.9)        # anchor 0 objectness
    x[0, 6 + 4, 0, :] = logit(0.7)    # anchor 1 objectness
    y = net.forward(x)
    dets = net.layers[0].detections(y[0], 10, 10, 10, 10, 0.5, False)
    assert [round(d.objectness, 3) for d in dets] == [0.9, 0.7, 0.9, 0.7]
    assert [round(d.box[0], 3) for d in dets] == [0.0, 0.0, 0.5, 0.5]
    # objectness equal to the threshold (in float32) is skipped
    at = F(y[0, 6 + 4, 0, 0])
    assert len(net.layers[0].detections(y[0], 10, 10, 10, 10, float(at), False)) == 2


def test_region_decoding_anchor_major():
    net = build("[net]\nwidth=2\nheight=1\nchannels=14\n\n[region]\nanchors=1,2,3,4\nclasses=2\ncoords=4\n"
                "num=2\nsoftmax=1\n")
    x = np.full((1, 14, 1, 2), -5.0, F)
    x[0, 0:4, :, :] = 0.0                               # anchor 0: tx ty tw 0
    x[0, 3, 0, 0] = math.log(0.5)                       # th -> h = 0.5 * 2 / 1
    x[0, 4, 0, 0] = 0.0                                 # objectness 0.5 at cell 0
    x[0, 5, 0, 0], x[0, 6, 0, 0] = math.log(3.0), 0.0   # softmax -> 0.75, 0.25
    x[0, 7:11, :, :] = 0.0                              # anchor 1 box raw 0
    y = net.forward(x)
    dets = net.layers[0].detections(y[0], 100, 100, 32, 32, 0.3, False)
    assert len(dets) == 4                               # always w*h*num, anchor-major
    assert dets[0].box == pytest.approx((0.25, 0.5, 0.5, 1.0), rel=1e-6)
    assert dets[0].objectness == pytest.approx(0.5)
    assert dets[0].probs.tolist() == pytest.approx([0.375, 0.0], rel=1e-6)
    assert dets[3].box == pytest.approx((0.75, 0.5, 1.5, 4.0), rel=1e-6)   # anchor 1, cell 1
    for d in dets[1:]:
        assert d.objectness == 0 and not d.probs.any()


def test_yolov1_detection_decoding():
    side, classes, num = 2, 2, 1
    inputs = side * side * ((1 + 4) * num + classes)
    net = build(f"[net]\nwidth=1\nheight=1\nchannels={inputs}\n\n[detection]\nclasses={classes}\ncoords=4\n"
                f"num={num}\nside={side}\nsqrt=1\n")
    x = np.zeros((1, inputs, 1, 1), F)
    flat = x.reshape(-1)
    flat[3 * classes:3 * classes + 2] = (0.6, 0.4)          # class probabilities of cell 3
    flat[side * side * classes + 3] = 0.5                    # confidence of cell 3
    box_start = side * side * (classes + num) + 3 * 4
    flat[box_start:box_start + 4] = (0.5, 0.25, 0.6, 0.5)
    y = net.forward(x)
    dets = net.layers[0].detections(y[0], 640, 480, 448, 448, 0.25, False)
    assert len(dets) == side * side * num
    d = dets[3]
    # x = (0.5 + col 1)/side, w = 0.6² (sqrt=1), normalised to the image
    assert d.box == pytest.approx((0.75, 0.625, 0.36, 0.25), rel=1e-6)
    assert d.probs.tolist() == pytest.approx([0.3, 0.0], rel=1e-6)


# ------------------------------------------------------------------------------- shapes and reporting

def test_shapes_truths_and_summary_rows():
    yolo = yolo_net(4, 6, classes=80, mask=(0, 1, 2), num=6)
    assert yolo.shapes[0] == yolo.input_shape
    assert yolo.layers[0].summary_row() == "yolo" and yolo.layers[0].truths == 450
    region = region_net(4, 6, classes=20, num=5)
    assert region.layers[0].summary_row() == "detection" and region.layers[0].truths == 150
    inputs = 7 * 7 * (5 * 2 + 20)
    v1 = build(f"[net]\nwidth=1\nheight=1\nchannels={inputs}\n\n[detection]\nclasses=20\ncoords=4\nnum=2\nside=7\n")
    assert v1.layers[0].summary_row() == "Detection Layer" and v1.layers[0].truths == 49 * 25


def test_yolov1_training_raises_clear_error():
    # [yolo] and [region] train (tests/test_detection_loss.py); YOLOv1's [detection] refuses at its line
    net = build("[net]\nwidth=1\nheight=1\nchannels=28\n\n[detection]\nclasses=2\ncoords=4\nnum=1\nside=2\n")
    with pytest.raises(UnsupportedError, match="not supported yet"):
        net.forward(np.zeros((1, 28, 1, 1), F), train=True, truth=np.zeros((1, 28), F))


def test_default_mask_and_anchors():
    net = build("[net]\nwidth=2\nheight=2\nchannels=12\n\n[yolo]\nclasses=1\nnum=2\n")
    layer = net.layers[0]
    assert layer.mask == (0, 1)
    assert layer.anchors.tolist() == [0.5] * 4


def test_training_keys_only_warn():
    text = ("[net]\nwidth=2\nheight=2\nchannels=18\n\n[yolo]\nmask=0\nanchors=1,2\nclasses=1\nnum=1\njitter=.3\n"
            "ignore_thresh=.7\ntruth_thresh=1\nrandom=1\niou_loss=ciou\niou_normalizer=0.07\ncls_normalizer=1.0\n"
            "iou_thresh=0.213\nnms_kind=greedynms\nbeta_nms=0.6\nresize=1.5\nmax=200\n")
    text = text.replace("channels=18", "channels=6")
    net = build(text)
    assert net.layers[0].config.nms_kind == "greedynms"


def error_of(text: str) -> str:
    with pytest.raises(CfgError) as info:
        build(text)
    return str(info.value)


HEAD = "[net]\nwidth=4\nheight=4\nchannels=3\n\n[convolutional]\nfilters={filters}\nsize=1\nactivation=linear\n\n"


def test_yolo_channel_mismatch_points_at_classes_line():
    text = HEAD.format(filters=18) + "[yolo]\nmask=0,1,2\nanchors=1,1,2,2,3,3\nclasses=80\nnum=3\n"
    message = error_of(text)
    assert ":14:" in message and "255" in message and "18" in message


def test_yolo_channel_mismatch_without_classes_points_at_mask_line():
    text = HEAD.format(filters=18) + "[yolo]\nnum=3\nanchors=1,1,2,2,3,3\nmask=0,1\n"
    message = error_of(text)   # 2*(20+5) = 50 expected
    assert ":14:" in message and "50" in message and "18" in message


def test_region_channel_mismatch():
    text = HEAD.format(filters=30) + "[region]\nanchors=1,1,2,2\nclasses=20\ncoords=4\nnum=2\n"
    message = error_of(text)
    assert ":13:" in message and "50" in message and "30" in message


def test_detection_input_mismatch():
    text = HEAD.format(filters=2) + "[detection]\nclasses=20\ncoords=4\nside=7\nnum=2\n"
    message = error_of(text)
    assert ":14:" in message and "1470" in message and "32" in message


@pytest.mark.parametrize("section, line, needle", [
    ("[yolo]\nmask=0,3\nanchors=1,1,2,2,3,3\nclasses=1\nnum=3\n", 12, "mask entry 3"),
    ("[yolo]\nmask=0\nclasses=1\nnum=3\nanchors=1,1,2,2\n", 15, "needs 6"),
    ("[yolo]\nmask=0\nclasses=1\nnum=1\nanchors=1,1\nnms_kind=softnms\n", 16, "nms_kind"),
])
def test_config_errors_point_at_the_line(section, line, needle):
    message = error_of(HEAD.format(filters=6) + section)
    assert f":{line}:" in message and needle in message


def test_tree_builds_but_refuses_to_run():
    net = build(HEAD.format(filters=6) + "[region]\nclasses=1\nnum=1\ntree=data/9k.tree\n")
    with pytest.raises(UnsupportedError, match="tree") as info:
        net.forward(np.zeros((1, 3, 4, 4), F))
    assert ":14:" in str(info.value)


# ------------------------------------------------------------------------------- OpenCV as an oracle

def _cv2():
    try:
        import cv2
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("opencv-python-headless is required under CI")
        pytest.skip("OpenCV not installed")
    return cv2


def _write_conv_weights(path, biases: np.ndarray, weights: np.ndarray) -> None:
    with open(path, "wb") as fh:
        fh.write(struct.pack("<iiiQ", 0, 2, 0, 0))
        fh.write(biases.astype("<f4").tobytes())
        fh.write(weights.astype("<f4").tobytes())


ONE_CONV = """[net]
width=32
height=32
channels=3

[convolutional]
filters={filters}
size=3
stride=4
pad=1
activation=linear

"""


@pytest.mark.parametrize("head, filters, cells_per_anchor", [
    ("[yolo]\nmask=0,1,2\nanchors=10,14,23,27,37,58\nclasses=2\nnum=3\nscale_x_y=1.05\n", 21, None),
    ("[yolo]\nmask=1,2\nanchors=10,14,23,27,37,58\nclasses=3\nnum=3\n", 16, None),
    ("[region]\nanchors=1.08,1.19,3.42,4.41,6.63,11.38\nclasses=2\ncoords=4\nnum=3\nsoftmax=1\n", 21, "region"),
])
def test_decoded_boxes_match_opencv(tmp_path, head, filters, cells_per_anchor):
    """OpenCV's yolo/region layer output is one decoded row per (cell, anchor): x, y, w, h, objectness and
    objectness*class scores, zeroed when <= its `thresh`. Its cfg copy gets thresh=0 and nms_threshold=0
    so nothing is zeroed (its [region] still runs an internal NMS at 0.4, so there class scores are
    compared where OpenCV kept them)."""
    cv2 = _cv2()
    cfg = tmp_path / "net.cfg"
    cfg.write_text(ONE_CONV.format(filters=filters) + head)
    cv_cfg = tmp_path / "net_cv.cfg"
    cv_cfg.write_text(ONE_CONV.format(filters=filters) + head + "thresh=0\nnms_threshold=0\n")
    rng = np.random.default_rng(5)
    weights_path = tmp_path / "net.weights"
    _write_conv_weights(weights_path, rng.normal(0, 0.5, filters), rng.normal(0, 0.5, filters * 3 * 9))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = load_cfg(cfg)
    read_weights(net, weights_path)
    x = rng.random((1, 3, 32, 32), dtype=F)
    y = net.forward(x)
    layer = net.layers[1]
    dets = layer.detections(y[0], 32, 32, 32, 32, -1.0, False)

    cv_net = cv2.dnn.readNetFromDarknet(str(cv_cfg), str(weights_path))
    cv_net.setInput(x)
    cv_rows = cv_net.forward(cv_net.getUnconnectedOutLayersNames()[0])
    cells = 8 * 8
    anchors = len(layer.mask) if hasattr(layer, "mask") else layer.config.num
    if cells_per_anchor == "region":   # ours anchor-major -> OpenCV's cell-major
        dets = [dets[a * cells + c] for c in range(cells) for a in range(anchors)]
    ours = np.array([list(d.box) + [d.objectness] + list(d.probs) for d in dets], F)
    assert ours.shape == cv_rows.shape
    np.testing.assert_allclose(ours[:, :5], cv_rows[:, :5], rtol=1e-5, atol=1e-6)
    kept = cv_rows[:, 5:] != 0
    assert kept.mean() > 0.3
    np.testing.assert_allclose(ours[:, 5:][kept], cv_rows[:, 5:][kept], rtol=1e-5, atol=1e-7)
    if cells_per_anchor is None:
        assert kept.all()
