"""Detection augmentation: boxes follow their pixels (a painted rectangle, labelled, augmented, must sit
under its transformed box), hand-computed geometry from spec §7.8 and AlexeyAB's crop, mosaic, truth rows
and the multi-scale size rule of spec §6.5."""
from __future__ import annotations

import numpy as np
import pytest

from darknetpy.detection_augment import (MIN_BOX_SIZE, DetectionAugmentSettings, MultiScale, Placement,
                                         augment_detection, draw_crop, draw_jitter, mosaic, move_boxes,
                                         render, truth_row)


class Scripted:
    """A stand-in Generator that returns scripted draws, so geometry can be computed by hand."""

    def __init__(self, uniforms, integers=()):
        self.uniforms = list(uniforms)
        self.ints = list(integers)

    def random(self, size=None):
        if size is None:
            return self.uniforms.pop(0)
        values = [self.uniforms.pop(0) for _ in range(size)]
        return np.array(values)

    def integers(self, *args, **kwargs):
        return self.ints.pop(0)


def painted(img_w, img_h, left, top, right, bottom, value=1.0):
    img = np.zeros((3, img_h, img_w), np.float32)
    img[:, top:bottom, left:right] = value
    box = np.array([[(left + right) / 2 / img_w, (top + bottom) / 2 / img_h, (right - left) / img_w,
                     (bottom - top) / img_h, 3]], np.float32)
    return img, box


def painted_extent(canvas, threshold=0.5):
    # bilinear sampling crosses 0.5 exactly at a 0/1 edge, so the pixels above it are those whose centres
    # lie inside the moved rectangle; the fills (grey 0.5, a mean below 0.5) stay out
    ys, xs = np.nonzero(canvas[0] > threshold)
    if len(xs) == 0:
        return None
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def box_pixels(box, w, h):
    x, y, bw, bh = (float(v) for v in box[:4])
    return (x - bw / 2) * w, (y - bh / 2) * h, (x + bw / 2) * w, (y + bh / 2) * h


def assert_box_on_pixels(canvas, boxes, tolerance=1.0):
    h, w = canvas.shape[1:]
    extent = painted_extent(canvas)
    if extent is None:  # the object left the canvas: its box must be gone too (or be a sliver)
        assert len(boxes) == 0 or (boxes[0, 2] * w < 1.5 or boxes[0, 3] * h < 1.5)
        return
    assert len(boxes) == 1, (extent, boxes)
    np.testing.assert_allclose(box_pixels(boxes[0], w, h), extent, atol=tolerance)
    assert boxes[0, 4] == 3


GEOMETRY_ONLY = dict(hue=0.0, saturation=1.0, exposure=1.0)


# ------------------------------------------------------------------------------- hand-computed geometry

def test_pjreddie_jitter_geometry_by_hand():
    # img 100x80, canvas 64x64, jitter .2: dw = 20, dh = 16
    # new_ar = (100 + (-20 + 40*.75)) / (80 + (-16 + 32*.25)) = 110/72 >= 1 -> nw = 64, nh = 64*72/110
    # dx = U(0, 0) = 0, dy = U(0, 64 - nh) at .5, flip drawn 1
    rng = Scripted([0.75, 0.25, 0.3, 0.5], [1])
    p = draw_jitter(rng, 100, 80, 64, 64, 0.2)
    nh = 64 * 72 / 110
    assert p.scale_x == pytest.approx(0.64)
    assert p.offset_x == pytest.approx(0.0)
    assert p.scale_y == pytest.approx(nh / 80)
    assert p.offset_y == pytest.approx((64 - nh) * 0.5)
    assert p.flip and p.fill == "grey"
    # a box over pixels x 10..30, y 20..60 of the source
    box = np.array([[0.2, 0.5, 0.2, 0.5, 7]], np.float32)
    moved = move_boxes(box, p, 100, 80, 64, 64)
    left, right = 10 * 0.64 / 64, 30 * 0.64 / 64
    left, right = 1 - right, 1 - left                              # mirrored
    top = (20 * nh / 80 + (64 - nh) / 2) / 64
    bottom = (60 * nh / 80 + (64 - nh) / 2) / 64
    np.testing.assert_allclose(moved[0], [(left + right) / 2, (top + bottom) / 2, right - left, bottom - top, 7],
                               rtol=1e-6)


def test_pjreddie_tall_aspect_fills_the_height():
    # new_ar = (100 - 20) / (80 + 16) < 1 -> nh = h = 64, nw = 64 * 80/96; dx = U(0, 64 - nw) at .25
    rng = Scripted([0.0, 1.0, 0.25, 0.9], [0])
    p = draw_jitter(rng, 100, 80, 64, 64, 0.2)
    nw = 64 * 80 / 96
    assert (p.scale_x, p.scale_y) == pytest.approx((nw / 100, 64 / 80))
    assert (p.offset_x, p.offset_y) == pytest.approx(((64 - nw) * 0.25, 0.0))
    assert not p.flip


def test_alexeyab_crop_geometry_by_hand():
    # img 100x80, canvas 50x40, jitter .1: dw = 10, dh = 8; resize 1 adds nothing
    # left = int(.75*20 - 10) = 5, right = int(.25*20 - 10) = -5, top = int(.5*16 - 8) = 0, bottom = 8
    rng = Scripted([0.3, 0.6, 0.75, 0.25, 0.5, 1.0], [1])
    p = draw_crop(rng, 100, 80, 50, 40, 0.1)
    assert (p.scale_x, p.offset_x) == pytest.approx((50 / 100, -5 * 0.5))
    assert (p.scale_y, p.offset_y) == pytest.approx((40 / 72, 0.0))
    assert p.flip and p.fill == "mean"


def test_alexeyab_resize_zooms_the_crop():
    # resize 2: borders move by U(int(100*(1-2)/2), int(100*(1-1/2)/2)) = U(-50, 25) with the zoom draws
    # zoom1 = 0 -> left and top get -50 and -40; zoom2 = 1 -> right and bottom get +25 and +20
    rng = Scripted([0.0, 1.0, 0.5, 0.5, 0.5, 0.5], [0])
    p = draw_crop(rng, 100, 80, 100, 80, 0.0, resize=2.0)
    crop_w, crop_h = 100 + 50 - 25, 80 + 40 - 20
    assert (p.scale_x, p.offset_x) == pytest.approx((100 / crop_w, 50 * 100 / crop_w))
    assert (p.scale_y, p.offset_y) == pytest.approx((80 / crop_h, 40 * 80 / crop_h))


def test_letter_box_keeps_the_aspect_ratio():
    # img 100x50 onto 64x64, no jitter: the crop grows by (100 - 50)/2 rows above and below
    rng = Scripted([0.5] * 6, [0])
    p = draw_crop(rng, 100, 50, 64, 64, 0.0, letter_box=True)
    assert p.scale_x == pytest.approx(p.scale_y) == pytest.approx(0.64)
    assert p.offset_y == pytest.approx(25 * 0.64)
    img, box = painted(100, 50, 20, 10, 60, 40)
    canvas = render(img, p, 64, 64)
    moved = move_boxes(box, p, 100, 50, 64, 64)
    assert_box_on_pixels(canvas, moved)
    # the whole image is a 64x32 band in the middle: boxes keep their shape
    assert moved[0, 2] * 64 / (moved[0, 3] * 64) == pytest.approx(40 / 30, rel=1e-5)
    whole = move_boxes(np.array([[0.5, 0.5, 1.0, 1.0, 0]], np.float32), p, 100, 50, 64, 64)
    np.testing.assert_allclose(box_pixels(whole[0], 64, 64), (0, 16, 64, 48), atol=1e-4)


def test_flip_mirrors_pixels_and_boxes():
    img, box = painted(40, 30, 2, 5, 12, 25)
    p = Placement(1.0, 0.0, 1.0, 0.0, flip=True)
    canvas = render(img, p, 40, 30)
    np.testing.assert_array_equal(canvas, img[:, :, ::-1])
    moved = move_boxes(box, p, 40, 30, 40, 30)
    np.testing.assert_allclose(moved[0, :4], [1 - box[0, 0], box[0, 1], box[0, 2], box[0, 3]], rtol=1e-6)


def test_identity_placement_reproduces_the_image():
    img = np.random.default_rng(0).random((3, 9, 13), dtype=np.float32)
    np.testing.assert_array_equal(render(img, Placement(1.0, 0.0, 1.0, 0.0), 13, 9), img)


def test_boxes_are_clipped_and_tiny_or_outside_ones_dropped():
    boxes = np.array([[0.1, 0.5, 0.4, 0.2, 0],      # left part leaves the canvas: cut at 0
                      [0.5, 0.5, 0.0005, 0.3, 1],   # narrower than 0.001: dropped
                      [0.5, 0.5, 0.2, 0.2, 2]], np.float32)
    p = Placement(1.0, -10.0, 1.0, 0.0)             # shift 10 px left on a 100-wide canvas
    moved = move_boxes(boxes, p, 100, 100, 100, 100)
    assert moved[:, 4].tolist() == [0, 2]
    np.testing.assert_allclose(moved[0, :4], [0.1, 0.5, 0.2, 0.2], atol=1e-6)   # -0.2..0.2 cut to 0..0.2
    np.testing.assert_allclose(moved[1, :4], [0.4, 0.5, 0.2, 0.2], atol=1e-6)
    gone = move_boxes(boxes[:1], Placement(1.0, -100.0, 1.0, 0.0), 100, 100, 100, 100)
    assert len(gone) == 0
    assert MIN_BOX_SIZE == 0.001


# ------------------------------------------------------------------------------- boxes follow pixels

@pytest.mark.parametrize("style", ["pjreddie", "alexeyab", "alexeyab-resize", "letter_box"])
def test_painted_rectangle_stays_under_its_box(style):
    rng = np.random.default_rng(1234)
    flips = 0
    for trial in range(40):
        img_w, img_h = int(rng.integers(30, 120)), int(rng.integers(30, 120))
        w, h = int(rng.integers(2, 6)) * 16, int(rng.integers(2, 6)) * 16
        left, top = int(rng.integers(0, img_w - 8)), int(rng.integers(0, img_h - 8))
        right = int(rng.integers(left + 6, img_w + 1))
        bottom = int(rng.integers(top + 6, img_h + 1))
        if (right - left) * (bottom - top) > 0.4 * img_w * img_h:  # the mean fill must stay below 0.5
            right, bottom = left + (right - left) // 2 + 3, top + (bottom - top) // 2 + 3
        img, box = painted(img_w, img_h, left, top, right, bottom)
        settings = DetectionAugmentSettings(w, h, jitter=0.3, alexeyab=style != "pjreddie",
                                            resize=1.5 if style == "alexeyab-resize" else 1.0,
                                            letter_box=style == "letter_box", **GEOMETRY_ONLY)
        canvas, moved = augment_detection(img, box, np.random.default_rng(trial), settings, w, h)
        assert canvas.shape == (3, h, w)
        extent = painted_extent(canvas)
        if extent is not None and len(moved):
            x = box_pixels(moved[0], w, h)
            flips += int((x[0] + x[2]) / 2 < w / 2) != int(box[0, 0] < 0.5)
        assert_box_on_pixels(canvas, moved)
    assert flips > 5  # the flip is drawn, and boxes went with it


def test_colour_distortion_changes_pixels_not_boxes():
    img, box = painted(60, 40, 10, 10, 30, 30)
    img[:] = 0.5
    settings = DetectionAugmentSettings(64, 64, jitter=0.0, hue=0.1, saturation=1.5, exposure=1.5, flip=False)
    values = set()
    for seed in range(12):
        canvas, moved = augment_detection(img, box, np.random.default_rng(seed), settings, 64, 64)
        values.add(round(float(canvas[0, 32, 32]), 4))
        # jitter 0 on a 60x40 image: the width fills the canvas, only the vertical spot is drawn
        np.testing.assert_allclose(moved[0, [0, 2]], box[0, [0, 2]], rtol=1e-6)
        assert canvas.min() >= 0 and canvas.max() <= 1
    # exposure rand_scale(1.5): the grey 0.5 becomes anything in [0.5/1.5, 0.5*1.5]
    assert len(values) > 6 and min(values) >= 0.5 / 1.5 - 1e-4 and max(values) <= 0.75 + 1e-4


def test_mosaic_boxes_cover_exactly_the_painted_pixels():
    rng = np.random.default_rng(7)
    for trial in range(12):
        w, h = 96, 64
        pieces = []
        for _ in range(4):
            img_w, img_h = int(rng.integers(40, 100)), int(rng.integers(40, 100))
            left, top = int(rng.integers(0, img_w // 2)), int(rng.integers(0, img_h // 2))
            img, box = painted(img_w, img_h, left, top, left + img_w // 3, top + img_h // 3)
            pieces.append((img, box))
        settings = DetectionAugmentSettings(w, h, jitter=0.2, mosaic=True, **GEOMETRY_ONLY)
        canvas, boxes = mosaic(pieces, np.random.default_rng(trial), settings, w, h)
        assert canvas.shape == (3, h, w)
        assert len(boxes) <= 4 and np.all(boxes[:, 4] == 3)
        mask = canvas[0] > 0.5
        inner = np.zeros_like(mask)
        outer = np.zeros_like(mask)
        for box in boxes:
            x0, y0, x1, y1 = box_pixels(box, w, h)
            inner[int(np.ceil(y0 + 1)):int(np.floor(y1 - 1)), int(np.ceil(x0 + 1)):int(np.floor(x1 - 1))] = True
            outer[max(int(y0) - 1, 0):int(np.ceil(y1)) + 1, max(int(x0) - 1, 0):int(np.ceil(x1)) + 1] = True
        assert mask[inner].all(), f"trial {trial}: a box covers unpainted pixels"
        assert not mask[~outer].any(), f"trial {trial}: painted pixels outside every box"


def test_mosaic_needs_four_images():
    img, box = painted(20, 20, 2, 2, 10, 10)
    with pytest.raises(ValueError):
        mosaic([(img, box)] * 3, np.random.default_rng(0), DetectionAugmentSettings(32, 32, mosaic=True), 32, 32)


# ------------------------------------------------------------------------------- truth rows

def test_truth_row_layout_shuffle_and_cap():
    boxes = np.array([[0.1, 0.2, 0.3, 0.4, 0], [0.5, 0.5, 0.1, 0.1, 1], [0.7, 0.8, 0.2, 0.1, 2]], np.float32)
    orders = set()
    for seed in range(20):
        row = truth_row(boxes, np.random.default_rng(seed), max_boxes=2, truth_boxes=4)
        assert row.shape == (20,) and row.dtype == np.float32
        assert not row[10:].any()
        kept = row[:10].reshape(2, 5)
        for r in kept:
            assert any(np.array_equal(r, b) for b in boxes)
        orders.add(tuple(kept[:, 4]))
    assert len(orders) > 3  # shuffled before the cap, as Darknet's randomize_boxes
    assert not truth_row(np.zeros((0, 5), np.float32), np.random.default_rng(0), 90, 90).any()


# ------------------------------------------------------------------------------- multi-scale

def test_pjreddie_multiscale_sizes_for_416_are_darknets():
    scale = MultiScale(416, 416, alexeyab=False, max_batches=10000)
    rng = np.random.default_rng(0)
    sizes = {scale.size_at(i, rng) for i in range(0, 2000, 10)}
    assert sizes <= {(d, d) for d in range(320, 609, 32)} and len(sizes) >= 9
    assert scale.size_at(11, rng) is None and scale.size_at(5, rng) is None
    assert scale.size_at(9810, rng) == (608, 608)    # the last 200 batches train at the largest size


def test_pjreddie_multiscale_keeps_a_small_networks_aspect():
    scale = MultiScale(128, 64, alexeyab=False)
    rng = np.random.default_rng(1)
    for i in range(0, 500, 10):
        w, h = scale.size_at(i, rng)
        assert w % 32 == 0 and h % 32 == 0 and 96 <= w <= 192 and 32 <= h <= 96


def test_alexeyab_multiscale_rule():
    scale = MultiScale(416, 416, alexeyab=True, random=1.0, max_batches=5000)
    rng = np.random.default_rng(2)
    assert scale.size_at(0, rng) == (608, 608)       # round(1.4*416/32 + 1)*32: the first draw is the largest
    sizes = {scale.size_at(i, rng) for i in range(10, 3000, 10)}
    assert {w for w, _ in sizes} <= set(range(320, 609, 32)) and len(sizes) > 5
    assert scale.size_at(4950, rng) == (608, 608)
    assert MultiScale.from_settings(DetectionAugmentSettings(64, 64, random=0.0), 100) is None
