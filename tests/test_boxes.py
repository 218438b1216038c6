"""IoU, Darknet's NMS variants, letterbox correction, pixel geometry and class colours, on hand-computed
cases (spec §9.2, §9.5, §9.6) and a slow reference NMS (tests/naive_detection.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from darknetpy.boxes import (Detection, correct_letterbox_boxes, darknet_rect, diou, diou_nms, iou,
                             letterbox_scale, nms_obj, nms_sort, to_pixel_box)
from darknetpy.detect import DetectionResult, collect_results, darknet_percent, format_detections
from darknetpy.drawing import class_color, class_color_bytes, draw_detections, render_detections

from naive_detection import iou as naive_iou
from naive_detection import nms_sort as naive_nms_sort

F = np.float32


def det(box, probs, objectness=1.0, tag=None):
    d = Detection(box=tuple(float(F(v)) for v in box), objectness=objectness, probs=np.array(probs, F))
    d.tag = tag
    return d


def tags(dets):
    return [d.tag for d in dets]


# ---------------------------------------------------------------------------------------------- IoU

@pytest.mark.parametrize("a, b, expected", [
    ((0.5, 0.5, 1.0, 1.0), (0.5, 0.5, 1.0, 1.0), 1.0),           # identical
    ((0.0, 0.0, 4.0, 4.0), (0.0, 0.0, 2.0, 2.0), 0.25),          # contained: 4 / 16
    ((0.5, 0.5, 1.0, 1.0), (1.0, 0.5, 1.0, 1.0), 0.5 / 1.5),     # half overlap: 0.5 / (1 + 1 - 0.5)
    ((0.0, 0.0, 1.0, 1.0), (1.0, 0.0, 1.0, 1.0), 0.0),           # touching edges: zero-width overlap
    ((0.0, 0.0, 1.0, 1.0), (3.0, 3.0, 1.0, 1.0), 0.0),           # disjoint (negative overlaps)
    ((0.5, 0.5, 0.5, 0.5), (0.5, 0.5, 0.5, 0.25), 0.5),          # exactly 0.5 in binary
])
def test_iou_hand_cases(a, b, expected):
    assert iou(a, b) == pytest.approx(expected, rel=1e-6)
    assert iou(b, a) == pytest.approx(expected, rel=1e-6)


def test_iou_is_float32_like_darknet():
    rng = np.random.default_rng(3)
    for _ in range(200):
        a = rng.uniform(0.05, 1.0, 4).astype(F)
        b = (a + rng.normal(0, 0.1, 4)).astype(F)
        b[2:] = np.abs(b[2:])
        assert np.float32(iou(a, b)) == naive_iou(a, b)


def test_iou_of_two_empty_boxes_is_nan_and_never_suppresses():
    assert math.isnan(iou((0.5, 0.5, 0.0, 0.0), (0.5, 0.5, 0.0, 0.0)))
    dets = [det((0.5, 0.5, 0, 0), [0.9], tag="a"), det((0.5, 0.5, 0, 0), [0.8], tag="b")]
    nms_sort(dets, 1, 0.45)
    assert [float(d.probs[0]) for d in dets] == pytest.approx([0.9, 0.8])


# ---------------------------------------------------------------------------------------------- NMS

def test_ties_keep_their_order_and_the_first_suppresses():
    dets = [det((0.5, 0.5, 0.5, 0.5), [0.7], tag="first"), det((0.5, 0.5, 0.5, 0.5), [0.7], tag="second")]
    nms_sort(dets, 1, 0.45)
    assert tags(dets) == ["first", "second"]
    assert dets[0].probs[0] == F(0.7) and dets[1].probs[0] == 0


def test_ties_without_overlap_keep_order():
    dets = [det((0.1, 0.1, 0.1, 0.1), [0.5], tag="a"), det((0.9, 0.9, 0.1, 0.1), [0.5], tag="b"),
            det((0.5, 0.5, 0.1, 0.1), [0.5], tag="c")]
    nms_sort(dets, 1, 0.45)
    assert tags(dets) == ["a", "b", "c"]
    assert all(d.probs[0] == F(0.5) for d in dets)


def test_iou_exactly_at_threshold_does_not_suppress():
    # IoU of these boxes is exactly 0.5 (all values are powers of two)
    a = det((0.5, 0.5, 0.5, 0.5), [0.9], tag="a")
    b = det((0.5, 0.5, 0.5, 0.25), [0.8], tag="b")
    nms_sort([a, b], 1, 0.5)
    assert b.probs[0] == F(0.8)
    nms_sort([a, b], 1, 0.49)
    assert b.probs[0] == 0


def test_zero_objectness_moves_to_end_and_skips_nms():
    z1 = det((0.5, 0.5, 0.4, 0.4), [0.0, 0.0], objectness=0.0, tag="z1")
    a = det((0.5, 0.5, 0.4, 0.4), [0.6, 0.0], tag="a")
    z2 = det((0.5, 0.5, 0.4, 0.4), [0.95, 0.0], objectness=0.0, tag="z2")   # would win, but is out
    b = det((0.52, 0.5, 0.4, 0.4), [0.8, 0.0], tag="b")
    dets = [z1, a, z2, b]
    nms_sort(dets, 2, 0.45)
    # swap pass: z1<->b gives [b, a, z2, z1]; z2 swaps with itself; then b (0.8) sorts before a (0.6)
    assert tags(dets) == ["b", "a", "z2", "z1"]
    assert b.probs[0] == F(0.8) and a.probs[0] == 0
    assert z2.probs[0] == F(0.95)   # untouched: zero-objectness detections are not part of NMS


def test_several_classes_on_one_box_and_different_winners():
    # A wins class 0, B wins class 1; they overlap heavily, so each loses the other class
    a = det((0.50, 0.5, 0.4, 0.4), [0.9, 0.6], tag="A")
    b = det((0.52, 0.5, 0.4, 0.4), [0.8, 0.7], tag="B")
    dets = nms_sort([a, b], 2, 0.45)
    assert tags(dets) == ["B", "A"]           # the order left by the last class's sort
    assert a.probs.tolist() == pytest.approx([0.9, 0.0])
    assert b.probs.tolist() == pytest.approx([0.0, 0.7])
    results = collect_results(dets, 2, 0.25, 100, 100, ["cat", "dog"])
    assert [(r.name, r.detection_index) for r in results] == [("dog", 0), ("cat", 1)]


def test_one_box_reports_every_class_above_threshold_in_class_order():
    d = det((0.5, 0.5, 0.2, 0.2), [0.3, 0.0, 0.7, 0.26, 0.25], objectness=0.9)
    results = collect_results([d], 5, 0.25, 200, 100, list("abcde"))
    assert [(r.class_id, r.name) for r in results] == [(0, "a"), (2, "c"), (3, "d")]
    assert results[0].box_pixels == pytest.approx((80.0, 40.0, 40.0, 20.0))
    assert all(r.detection_index == 0 and r.objectness == pytest.approx(0.9) for r in results)


def test_suppressed_box_no_longer_suppresses():
    # A overlaps B, B overlaps C, A does not overlap C: A removes B, and B (now 0) cannot remove C
    a = det((0.30, 0.5, 0.2, 0.2), [0.9], tag="A")
    b = det((0.40, 0.5, 0.2, 0.2), [0.8], tag="B")
    c = det((0.50, 0.5, 0.2, 0.2), [0.7], tag="C")
    assert iou(a.box, b.box) > 0.3 and iou(b.box, c.box) > 0.3 and iou(a.box, c.box) == 0
    nms_sort([c, b, a], 1, 0.3)
    assert [a.probs[0], b.probs[0], c.probs[0]] == [F(0.9), 0, F(0.7)]


def test_second_class_sort_is_stable_over_first_class_order():
    # class 1 ties: the order after the class-0 sort (by class 0 descending) must be kept
    x = det((0.1, 0.1, 0.05, 0.05), [0.3, 0.5], tag="x")
    y = det((0.5, 0.5, 0.05, 0.05), [0.9, 0.5], tag="y")
    z = det((0.9, 0.9, 0.05, 0.05), [0.6, 0.5], tag="z")
    dets = nms_sort([x, y, z], 2, 0.45)
    assert tags(dets) == ["y", "z", "x"]


def test_nms_sort_matches_slow_reference_on_random_cases():
    rng = np.random.default_rng(7)
    for case in range(40):
        n = int(rng.integers(1, 25))
        classes = int(rng.integers(1, 4))
        items = []
        for i in range(n):
            box = rng.uniform(0.2, 0.8, 2).tolist() + rng.uniform(0.05, 0.4, 2).tolist()
            box = [float(F(v)) for v in box]
            obj = float(F(rng.uniform())) if rng.uniform() > 0.2 else 0.0
            probs = np.where(rng.uniform(size=classes) > 0.4, rng.choice([0.3, 0.5, 0.7], classes), 0.0)
            items.append((box, obj, probs.astype(F)))
        dets = [Detection(box=tuple(b), objectness=o, probs=p.copy()) for b, o, p in items]
        for i, d in enumerate(dets):
            d.tag = i
        ref = [{"box": b, "objectness": o, "probs": [F(v) for v in p], "tag": i}
               for i, (b, o, p) in enumerate(items)]
        thresh = float(rng.choice([0.2, 0.45, 0.6]))
        got = nms_sort(dets, classes, thresh)
        want = naive_nms_sort(ref, classes, thresh)
        assert [d.tag for d in got] == [r["tag"] for r in want], case
        for d, r in zip(got, want):
            assert d.probs.tolist() == [float(v) for v in r["probs"]], case


def test_nms_obj_suppresses_all_classes_by_objectness_order():
    a = det((0.50, 0.5, 0.4, 0.4), [0.1, 0.6], objectness=0.7, tag="a")
    b = det((0.52, 0.5, 0.4, 0.4), [0.8, 0.0], objectness=0.9, tag="b")
    c = det((0.10, 0.1, 0.1, 0.1), [0.4, 0.0], objectness=0.5, tag="c")
    dets = nms_obj([a, b, c], 2, 0.45)
    assert tags(dets) == ["b", "a", "c"]
    assert a.objectness == 0 and a.probs.tolist() == [0, 0]
    assert b.probs[0] == F(0.8) and c.probs[0] == F(0.4)


def test_diou_hand_case():
    # a = [-1,1]x[-1,1], b = [0,2]x[-1,1]: IoU 2/6; enclosing box 3x2 -> diagonal² 13; centre distance² 1
    a, b = (0.0, 0.0, 2.0, 2.0), (1.0, 0.0, 2.0, 2.0)
    assert diou(a, b) == pytest.approx(1 / 3 - (1 / 13) ** 0.6, rel=1e-5)
    assert diou(a, b, beta=1.0) == pytest.approx(1 / 3 - 1 / 13, rel=1e-5)
    assert diou(a, a) == pytest.approx(1.0)   # same centre: no penalty


@pytest.mark.parametrize("kind, beta, suppressed", [
    ("default", 0.6, True),      # plain IoU 0.333 > 0.3
    ("greedynms", 0.6, False),   # DIoU 0.333 - 0.2146 = 0.119
    ("diounms", 1.0, False),     # 0.333 - 0.0769 = 0.256
    ("diounms", 3.0, True),      # 0.333 - 0.000455 = 0.3329
])
def test_diou_nms_kinds(kind, beta, suppressed):
    a = det((0.0, 0.0, 2.0, 2.0), [0.9])
    b = det((1.0, 0.0, 2.0, 2.0), [0.8])
    diou_nms([b, a], 1, 0.3, kind, beta)
    assert (b.probs[0] == 0) == suppressed
    assert a.probs[0] == F(0.9)


def test_diou_nms_rejects_unknown_kind():
    with pytest.raises(ValueError, match="nms_kind"):
        diou_nms([], 1, 0.45, "softnms")


# ------------------------------------------------------------------------------- letterbox correction

def test_letterbox_scale_wide_and_tall():
    assert letterbox_scale(200, 100, 100, 100) == (100, 50)
    assert letterbox_scale(10, 5, 9, 9) == (9, 4)     # 45 // 10
    assert letterbox_scale(5, 10, 9, 9) == (4, 9)
    assert letterbox_scale(100, 100, 64, 32) == (32, 32)


def test_letterbox_correction_wide_image():
    # 200x100 into 100x100: the image occupies rows 25..75 of the network input
    boxes = np.array([[0.5, 0.5, 0.2, 0.1], [0.1, 0.25, 0.2, 0.5], [0.9, 0.75, 1.0, 0.5]], F)
    correct_letterbox_boxes(boxes, 200, 100, 100, 100)
    np.testing.assert_allclose(boxes, [[0.5, 0.5, 0.2, 0.2], [0.1, 0.0, 0.2, 1.0], [0.9, 1.0, 1.0, 1.0]],
                               rtol=1e-6, atol=1e-7)


def test_letterbox_correction_uses_fractional_offset():
    # 10x5 into 9x9: new_h = 4, offset (9-4)/2/9 = 2.5/9 although the letterbox pasted at row 2
    boxes = np.array([[0.5, 2.5 / 9, 0.5, 4 / 9], [0.25, 0.5, 0.1, 0.1]], F)
    correct_letterbox_boxes(boxes, 10, 5, 9, 9)
    np.testing.assert_allclose(boxes, [[0.5, 0.0, 0.5, 1.0], [0.25, 0.5, 0.1, 0.1 * 9 / 4]], rtol=1e-6, atol=1e-7)


def test_letterbox_correction_tall_image():
    boxes = np.array([[2 / 9 + 0.5 * 4 / 9 + 0.5 / 9, 0.3, 4 / 9, 0.2]], F)
    correct_letterbox_boxes(boxes, 5, 10, 9, 9)   # new_w = 4, x offset 2.5/9
    np.testing.assert_allclose(boxes, [[0.5, 0.3, 1.0, 0.2]], rtol=1e-6)


# ------------------------------------------------------------------------------- pixels and drawing

def test_pixel_box_and_darknet_rect():
    box = (0.5, 0.5, 0.5, 0.25)
    assert to_pixel_box(box, 200, 100) == pytest.approx((50.0, 37.5, 100.0, 25.0))
    assert darknet_rect(box, 200, 100) == (50, 37, 150, 62)
    # outside the image: truncated toward zero, then clamped to [0, size-1]
    assert darknet_rect((0.0, 1.0, 0.5, 0.5), 100, 100) == (0, 75, 25, 99)


def test_darknet_percent_and_lines():
    assert darknet_percent(0.125) == "12%"          # 12.5 rounds half to even, as printf does
    assert darknet_percent(0.9999) == "100%"
    r = DetectionResult(class_id=16, name="dog", score=0.8, box_pixels=(1.0, 2.0, 3.0, 4.0), objectness=0.9,
                        box=(0, 0, 0, 0), detection_index=0, num_classes=80)
    assert format_detections([r]) == ["dog: 80%\tleft=1.0 top=2.0 width=3.0 height=4.0"]


def test_class_colours_follow_darknet_palette():
    assert class_color(0, 80) == (1.0, 0.0, 1.0)                      # offset 0: magenta
    # class 1: offset 123457 % 80 = 17, ratio 17/80*5 = 1.0625 between red and yellow
    assert class_color(1, 80) == pytest.approx((1.0, 0.0625, 0.0))
    # 1 class: offset 0 always
    assert class_color(0, 1) == (1.0, 0.0, 1.0)
    assert class_color_bytes(1, 80) == (255, 15, 0)


def test_draw_detections_writes_png_with_coloured_box(tmp_path):
    image = np.full((3, 200, 300), 0.5, F)
    r = DetectionResult(class_id=1, name="bicycle", score=0.93, box_pixels=(60.0, 50.0, 120.0, 100.0),
                        objectness=0.95, box=(0.4, 0.5, 0.4, 0.5), detection_index=0, num_classes=80)
    path = tmp_path / "out.png"
    draw_detections(image, [r], path)
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels.shape == (200, 300, 3)
    colour = class_color_bytes(1, 80)
    # left edge at x=60 (line width max(2, int(200*0.006)) = 2), bottom edge at y=150
    assert tuple(pixels[120, 60]) == colour and tuple(pixels[120, 61]) == colour
    assert tuple(pixels[150, 150]) == colour
    assert tuple(pixels[100, 150]) == (127, 127, 127)     # inside the box: untouched
    # a filled label sits just above the box
    label_area = pixels[30:50, 62:100]
    assert (label_area == colour).all(axis=2).mean() > 0.3
    assert not list(tmp_path.glob(".*tmp"))


def test_render_accepts_pil_and_groups_classes_of_one_box():
    img = Image.new("RGB", (64, 48), (10, 20, 30))
    rs = [DetectionResult(class_id=c, name=n, score=0.5, box_pixels=(0, 0, 32, 24), objectness=0.6,
                          box=(0.25, 0.25, 0.5, 0.5), detection_index=0, num_classes=2)
          for c, n in ((0, "a"), (1, "b"))]
    out = render_detections(img, rs)
    assert out.size == (64, 48)
    assert np.asarray(out)[6, 0].tolist() == list(class_color_bytes(0, 2))  # first class's colour


def test_labels_of_boxes_with_the_same_top_edge_do_not_cover_each_other():
    """Three boxes with one top edge, as in a herd of horses (image 300x200, labels 50x12): the first label
    goes above its box; the second would cover it, so it goes inside its box's top edge; the third finds
    both spots taken and goes below its box."""
    from darknetpy.drawing import _place_label
    taken = []
    for box in [(20, 60, 200, 190), (30, 60, 120, 150), (40, 60, 260, 170)]:
        taken.append(_place_label(box, (50, 12), (300, 200), taken))
    assert taken == [(20, 48, 69, 59), (30, 60, 79, 71), (40, 171, 89, 182)]
    # at the top of the image the label cannot go above: it goes inside, clamped to the image
    assert _place_label((5, 0, 100, 50), (50, 12), (300, 200), []) == (5, 0, 54, 11)
    # a label wider than the space to the right of the box is moved left to stay in the image
    assert _place_label((280, 100, 299, 150), (50, 12), (300, 200), []) == (250, 88, 299, 99)
