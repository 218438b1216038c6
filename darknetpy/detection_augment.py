"""Detection-training augmentation (spec §7.8, §6.5): the image is scaled and shifted onto the network
canvas, flipped, colour-distorted, and its boxes follow; every random draw comes from an explicit numpy
Generator, so a seed reproduces a batch exactly.

Two geometries, as the two Darknets draw them:

* pjreddie (`draw_jitter`): a new aspect ratio (W ± jitter·W)/(H ± jitter·H); the longer side fills the
  canvas, the image is placed at a random spot; the rest of the canvas is grey 0.5.
* AlexeyAB (`draw_crop`): each border of the image moves in or out by up to jitter·size (plus AB's
  `resize` zoom), that crop is stretched onto the canvas (`letter_box=1` first widens the crop to the
  network's aspect); where the crop reaches past the image the canvas takes the image's mean colour.
  `mosaic=1` puts four such images into one canvas, split at a random point (`mosaic`).

Which one a cfg gets (`DetectionAugmentSettings.from_network`): the AlexeyAB form when [net] sets
`mosaic` or `letter_box`, or the last detection head sets a key pjreddie's Darknet does not define
(`scale_x_y`, `iou_loss`, `resize`, ...); otherwise pjreddie's. Both then flip with probability ½
(`[net] flip`, default 1) and apply random_distort_image (hue, saturation, exposure).

Boxes: every box edge moves with its pixels (the resampling and the box arithmetic share one formula, see
kernels/placement.py), is clipped to [0, 1]; boxes narrower or lower than 0.001 are dropped, the rest
shuffled and at most `max` kept; the truth row is [x, y, w, h, class] per box, zeros after.

Deliberate differences from Darknet: both Darknets resample with a half-pixel offset of their own
(place_image reads x/w·W, OpenCV's resize the pixel centres), so their boxes sit up to a pixel off the
object; ours sit on it. Boxes are dropped before the `max` cap, not after (Darknet can keep fewer than
`max` boxes when some of the first `max` were tiny). Multi-scale sizes keep a non-square network's
aspect ratio (pjreddie resizes to a square).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from darknetpy.augment import rand_scale, rand_uniform, random_distort_image
from darknetpy.config import NetConfig
from darknetpy.images import rgb_planes
from darknetpy.kernels import placement as kernels

if TYPE_CHECKING:
    from darknetpy.layers.detection import DetectionHead

#: Darknet drops boxes narrower or lower than this (fraction of the canvas) after augmentation
MIN_BOX_SIZE = 0.001

# Keys pjreddie's Darknet reads in detection sections (spec §2.20–2.22): any other key marks an AlexeyAB cfg
_PJREDDIE_HEAD_KEYS = frozenset({
    "classes", "num", "mask", "anchors", "max", "jitter", "ignore_thresh", "truth_thresh", "random", "map",
    "coords", "log", "sqrt", "softmax", "background", "rescore", "thresh", "classfix", "absolute",
    "coord_scale", "object_scale", "noobject_scale", "mask_scale", "class_scale", "bias_match", "tree",
    "side", "forced", "reorg",
    # keys every layer section may carry
    "stopbackward", "dontsave", "dontload", "numload", "dontloadscales", "learning_rate", "truth",
    "onlyforward", "smooth",
})

# AlexeyAB's mosaic keeps every split point at least this far (fraction of the size) from the borders
_MOSAIC_MIN_OFFSET = 0.2


# ------------------------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class DetectionAugmentSettings:
    """What detection augmentation reads from a cfg. `max_boxes` is the last head's `max` (boxes kept per
    image), `truth_boxes` the boxes a truth row holds (the loss layer's truth size / 5)."""

    width: int
    height: int
    channels: int = 3
    jitter: float = 0.2
    hue: float = 0.0
    saturation: float = 1.0
    exposure: float = 1.0
    flip: bool = True
    letter_box: bool = False
    mosaic: bool = False
    alexeyab: bool = False
    resize: float = 1.0
    max_boxes: int = 90
    truth_boxes: int = 90
    random: float = 0.0
    resize_step: int = 32

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise ValueError(f"augmentation needs a positive canvas size, got {self.width}x{self.height}")
        # Darknet's load args treat a saturation or exposure of 0 as 1
        if self.saturation == 0:
            object.__setattr__(self, "saturation", 1.0)
        if self.exposure == 0:
            object.__setattr__(self, "exposure", 1.0)
        if self.mosaic or self.letter_box:
            object.__setattr__(self, "alexeyab", True)

    @property
    def truth_size(self) -> int:
        return 5 * self.truth_boxes

    @classmethod
    def from_network(cls, net: NetConfig, head: DetectionHead) -> DetectionAugmentSettings:
        """From [net] (colour, flip, letter_box, mosaic, resize_step) and the last detection head (jitter,
        max, random, resize; its truth rows' box count)."""
        written = set(head.config.origin.key_lines) if head.config.origin is not None else set()
        alexeyab = bool(written - _PJREDDIE_HEAD_KEYS) or net.mosaic or net.letter_box
        truth_boxes = max(1, head.truth_size() // 5)
        config = head.config
        return cls(
            width=net.width, height=net.height, channels=net.channels, jitter=config.jitter, hue=net.hue,
            saturation=net.saturation, exposure=net.exposure, flip=net.flip, letter_box=net.letter_box,
            mosaic=net.mosaic, alexeyab=alexeyab, resize=config.resize,
            max_boxes=min(config.max, truth_boxes), truth_boxes=truth_boxes, random=config.random,
            resize_step=net.resize_step,
        )


# ------------------------------------------------------------------------------------------- geometry

@dataclass(frozen=True)
class Placement:
    """Where the source image lands on the canvas: canvas = scale·source + offset, in pixels (for x and
    y), then the canvas is mirrored left-right when `flip`. `fill` is the colour off the image
    ("grey" 0.5 for pjreddie, "mean" colour of the image for AlexeyAB)."""

    scale_x: float
    offset_x: float
    scale_y: float
    offset_y: float
    flip: bool = False
    fill: str = "grey"

    def content_span(self, img_w: int, img_h: int, canvas_w: int) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) of the image on the canvas in pixels, after the flip."""
        left = self.offset_x
        right = self.offset_x + self.scale_x * img_w
        if self.flip:
            left, right = canvas_w - right, canvas_w - left
        return left, self.offset_y, right, self.offset_y + self.scale_y * img_h


def draw_jitter(rng: np.random.Generator, img_w: int, img_h: int, w: int, h: int, jitter: float,
                flip: bool = True) -> Placement:
    """pjreddie's load_data_detection geometry (spec §7.8)."""
    dw = jitter * img_w
    dh = jitter * img_h
    new_ar = (img_w + rand_uniform(rng, -dw, dw)) / (img_h + rand_uniform(rng, -dh, dh))
    if new_ar < 1:
        nh = float(h)
        nw = nh * new_ar
    else:
        nw = float(w)
        nh = nw / new_ar
    dx = rand_uniform(rng, 0.0, w - nw)
    dy = rand_uniform(rng, 0.0, h - nh)
    flipped = bool(flip and rng.integers(2))
    return Placement(nw / img_w, dx, nh / img_h, dy, flipped, "grey")


def _precalc(low: float, high: float, r: float) -> int:
    """AlexeyAB's rand_precalc_random cast to int: low + r·(high − low), truncated toward zero."""
    return int(r * (high - low) + low)


def draw_crop(rng: np.random.Generator, img_w: int, img_h: int, w: int, h: int, jitter: float,
              resize: float = 1.0, letter_box: bool = False, flip: bool = True) -> Placement:
    """AlexeyAB's load_data_detection geometry: borders moved by up to jitter·size (and `resize`), the
    crop stretched onto the w×h canvas; `letter_box` first grows the crop to the canvas aspect."""
    dw = int(img_w * jitter)
    dh = int(img_h * jitter)
    resize_down = resize if resize <= 1 else 1 / resize
    resize_up = resize if resize >= 1 else 1 / resize
    min_rdw = int(img_w * (1 - 1 / resize_down) / 2)
    min_rdh = int(img_h * (1 - 1 / resize_down) / 2)
    max_rdw = int(img_w * (1 - 1 / resize_up) / 2)
    max_rdh = int(img_h * (1 - 1 / resize_up) / 2)
    zoom1, zoom2, r1, r2, r3, r4 = rng.random(6)
    left = _precalc(-dw, dw, r1)
    right = _precalc(-dw, dw, r2)
    top = _precalc(-dh, dh, r3)
    bottom = _precalc(-dh, dh, r4)
    high_w, high_h = (0, 0) if resize < 1 else (max_rdw, max_rdh)
    left += _precalc(min_rdw, high_w, zoom1)
    right += _precalc(min_rdw, high_w, zoom2)
    top += _precalc(min_rdh, high_h, zoom1)
    bottom += _precalc(min_rdh, high_h, zoom2)
    if letter_box:
        image_aspect = img_w / img_h
        net_aspect = w / h
        if image_aspect / net_aspect > 1:  # too wide: take more rows
            grow = (img_w / net_aspect - img_h) / 2
            top = int(top - grow)
            bottom = int(bottom - grow)
        else:
            grow = (img_h * net_aspect - img_w) / 2
            left = int(left - grow)
            right = int(right - grow)
    crop_w = max(img_w - left - right, 1)
    crop_h = max(img_h - top - bottom, 1)
    flipped = bool(flip and rng.integers(2))
    scale_x = w / crop_w
    scale_y = h / crop_h
    return Placement(scale_x, -left * scale_x, scale_y, -top * scale_y, flipped, "mean")


def render(img: np.ndarray, placement: Placement, w: int, h: int) -> np.ndarray:
    """The (C, h, w) canvas of a placement (resampled, filled, flipped)."""
    src = np.ascontiguousarray(img, dtype=np.float32)
    if placement.fill == "mean":
        # the mean colour of a big photo is as well known from a 1-in-step² sample of its pixels
        step = max(1, int(math.sqrt(src.shape[1] * src.shape[2] / 65536)))
        fill = src[:, ::step, ::step].mean(axis=(1, 2)).astype(np.float32)
    else:
        fill = np.full(src.shape[0], 0.5, np.float32)
    canvas = np.empty((src.shape[0], int(h), int(w)), np.float32)
    kernels.place(src, float(placement.scale_x), float(placement.offset_x), float(placement.scale_y),
                  float(placement.offset_y), fill, bool(placement.flip), canvas)
    return canvas


def _edges(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y, bw, bh = (boxes[:, k].astype(np.float64) for k in range(4))
    return x - bw / 2, y - bh / 2, x + bw / 2, y + bh / 2


def _from_edges(left, top, right, bottom, classes) -> np.ndarray:
    """Clip edges to [0, 1] and drop boxes smaller than MIN_BOX_SIZE."""
    left, right = np.clip(left, 0.0, 1.0), np.clip(right, 0.0, 1.0)
    top, bottom = np.clip(top, 0.0, 1.0), np.clip(bottom, 0.0, 1.0)
    out = np.stack([(left + right) / 2, (top + bottom) / 2, right - left, bottom - top, classes], axis=1)
    keep = (out[:, 2] >= MIN_BOX_SIZE) & (out[:, 3] >= MIN_BOX_SIZE)
    return out[keep].astype(np.float32)


def move_boxes(boxes: np.ndarray, placement: Placement, img_w: int, img_h: int, w: int, h: int) -> np.ndarray:
    """Boxes [x, y, w, h, class] normalised to the source image → normalised to the canvas: moved as the
    pixels are, mirrored with them, clipped to the canvas, tiny ones dropped."""
    if len(boxes) == 0:
        return np.zeros((0, 5), np.float32)
    left, top, right, bottom = _edges(boxes)
    left = (placement.scale_x * left * img_w + placement.offset_x) / w
    right = (placement.scale_x * right * img_w + placement.offset_x) / w
    top = (placement.scale_y * top * img_h + placement.offset_y) / h
    bottom = (placement.scale_y * bottom * img_h + placement.offset_y) / h
    if placement.flip:
        left, right = 1.0 - right, 1.0 - left
    return _from_edges(left, top, right, bottom, boxes[:, 4].astype(np.float64))


def draw_placement(rng: np.random.Generator, img_w: int, img_h: int, w: int, h: int,
                   settings: DetectionAugmentSettings) -> Placement:
    if settings.alexeyab:
        return draw_crop(rng, img_w, img_h, w, h, settings.jitter, settings.resize, settings.letter_box,
                         settings.flip)
    return draw_jitter(rng, img_w, img_h, w, h, settings.jitter, settings.flip)


def augment_detection(img: np.ndarray, boxes: np.ndarray, rng: np.random.Generator,
                      settings: DetectionAugmentSettings, w: int, h: int,
                      placement: Placement | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One image: placement (drawn unless given), flip, colour distortion; returns (canvas (C, h, w),
    boxes on the canvas)."""
    img_h, img_w = img.shape[1], img.shape[2]
    if placement is None:
        placement = draw_placement(rng, img_w, img_h, w, h, settings)
    canvas = render(img, placement, w, h)
    canvas = random_distort_image(canvas, rng, settings.hue, settings.saturation, settings.exposure)
    return canvas, move_boxes(boxes, placement, img_w, img_h, w, h)


# ------------------------------------------------------------------------------------------- mosaic

def mosaic(pieces: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator,
           settings: DetectionAugmentSettings, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """AlexeyAB's mosaic: four (image, boxes) pairs, each augmented to a full w×h canvas, fill the four
    parts of one canvas split at a random point (cut_x, cut_y) at least 20% from each border. Each part
    is shifted towards the split by the empty border its crop left (so it shows image, not fill colour);
    boxes move with their part and are cut at its edges."""
    if len(pieces) != 4:
        raise ValueError(f"a mosaic needs 4 images, got {len(pieces)}")
    span_x = max(1, int(w * (1 - 2 * _MOSAIC_MIN_OFFSET)))
    span_y = max(1, int(h * (1 - 2 * _MOSAIC_MIN_OFFSET)))
    cut_x = int(rng.integers(span_x)) + int(w * _MOSAIC_MIN_OFFSET)
    cut_y = int(rng.integers(span_y)) + int(h * _MOSAIC_MIN_OFFSET)
    if len({img.shape[0] for img, _ in pieces}) > 1:  # grey pieces beside colour ones take stb's grey→RGB
        pieces = [(rgb_planes(img), boxes) for img, boxes in pieces]
    out = None
    all_boxes = []
    for k, (img, boxes) in enumerate(pieces):
        img_h, img_w = img.shape[1], img.shape[2]
        placement = draw_crop(rng, img_w, img_h, w, h, settings.jitter, settings.resize,
                              settings.letter_box, settings.flip)
        canvas, moved = augment_detection(img, boxes, rng, settings, w, h, placement)
        if out is None:
            out = np.empty_like(canvas)
        left, top, right, bottom = placement.content_span(img_w, img_h, w)
        right_side, bottom_side = k % 2 == 1, k >= 2
        # the part's destination rectangle, and how far its pixels move to get there
        x0, x1 = (cut_x, w) if right_side else (0, cut_x)
        y0, y1 = (cut_y, h) if bottom_side else (0, cut_y)
        if right_side:
            shift_x = min(max(int(round(w - right)), 0), cut_x)        # empty right border pushed out
        else:
            shift_x = -min(max(int(round(left)), 0), w - cut_x)        # empty left border pushed out
        if bottom_side:
            shift_y = min(max(int(round(h - bottom)), 0), cut_y)
        else:
            shift_y = -min(max(int(round(top)), 0), h - cut_y)
        out[:, y0:y1, x0:x1] = canvas[:, y0 - shift_y:y1 - shift_y, x0 - shift_x:x1 - shift_x]
        if len(moved):
            l, t, r, b = _edges(moved)
            l = np.clip(l * w + shift_x, x0, x1) / w
            r = np.clip(r * w + shift_x, x0, x1) / w
            t = np.clip(t * h + shift_y, y0, y1) / h
            b = np.clip(b * h + shift_y, y0, y1) / h
            all_boxes.append(_from_edges(l, t, r, b, moved[:, 4].astype(np.float64)))
    boxes = np.concatenate(all_boxes) if all_boxes else np.zeros((0, 5), np.float32)
    return out, boxes


# ------------------------------------------------------------------------------------------- truth rows

def truth_row(boxes: np.ndarray, rng: np.random.Generator, max_boxes: int, truth_boxes: int) -> np.ndarray:
    """Darknet's truth row: the boxes shuffled, at most min(max_boxes, truth_boxes) of them, as
    [x, y, w, h, class] each, zero-padded to truth_boxes·5 floats."""
    row = np.zeros(5 * truth_boxes, np.float32)
    if len(boxes):
        keep = min(len(boxes), max_boxes, truth_boxes)
        order = rng.permutation(len(boxes))[:keep]
        row[:5 * keep] = boxes[order].reshape(-1)
    return row


# ------------------------------------------------------------------------------------------- multi-scale

def _round_to_step(value: float, step: int) -> int:
    return max(step, int(round(value / step)) * step)


@dataclass(frozen=True)
class MultiScale:
    """Random multi-scale training (`random=1` on the last head, spec §6.5): every 10 iterations a new
    input size, for the network and the loader alike.

    pjreddie: (rand() % 10 + 10)·32, i.e. 320..608 for a 416 network, and 608 for the last 200 batches. We
    take the same ten sizes relative to the cfg size — (k + 10)/13 of width and height for k = 0..9,
    rounded to `step` (32) — which is exactly Darknet's list for 416 and keeps small networks small.
    AlexeyAB: a factor f = rand_scale(1.4, or `random` when it is not 1), size round(f·size/step + 1)·step
    (no larger than the cfg size when f < 1), the largest size (coefficient·size) on the first draw and in
    the last 100 iterations.
    """

    width: int
    height: int
    alexeyab: bool = False
    random: float = 1.0
    step: int = 32
    max_batches: int = 0
    every: int = 10

    @classmethod
    def from_settings(cls, settings: DetectionAugmentSettings, max_batches: int) -> MultiScale | None:
        if not settings.random:
            return None
        return cls(settings.width, settings.height, settings.alexeyab, settings.random, settings.resize_step,
                   max_batches)

    def size_at(self, iteration: int, rng: np.random.Generator) -> tuple[int, int] | None:
        """The size to train iteration `iteration` (0-based count of updates done) at, drawn when
        iteration % every == 0; None between draws (keep the current size)."""
        if iteration % self.every:
            return None
        if self.alexeyab:
            return self._alexeyab_size(iteration, rng)
        near_end = self.max_batches and iteration + 200 > self.max_batches
        k = 9 if near_end else int(rng.integers(10))
        return (_round_to_step(self.width * (k + 10) / 13, self.step),
                _round_to_step(self.height * (k + 10) / 13, self.step))

    def _alexeyab_size(self, iteration: int, rng: np.random.Generator) -> tuple[int, int]:
        coefficient = 1.4 if self.random == 1 else float(self.random)
        factor = rand_scale(rng, coefficient)
        w = int(math.floor(factor * self.width / self.step + 1.5)) * self.step
        h = int(math.floor(factor * self.height / self.step + 1.5)) * self.step
        if factor < 1 and (w > self.width or h > self.height):
            w, h = self.width, self.height
        if iteration == 0 or (self.max_batches and iteration > self.max_batches - 100):
            w = int(math.floor(coefficient * self.width / self.step + 1.5)) * self.step
            h = int(math.floor(coefficient * self.height / self.step + 1.5)) * self.step
        return max(w, self.step), max(h, self.step)
