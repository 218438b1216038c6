"""Drawing detections onto an image with Pillow: Darknet's box geometry and class colours (spec §9.6),
with a readable label (class names and scores on a filled box in the class colour) instead of Darknet's
glyph bitmaps."""
from __future__ import annotations

import os
from itertools import groupby
from typing import Sequence, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .boxes import darknet_rect
from .detect import DetectionResult, darknet_percent
from .images import save_png, to_uint8

# Darknet's palette, indexed [i][channel] with channel 2 = red, 1 = green, 0 = blue.
_PALETTE = ((1.0, 0.0, 1.0), (0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (0.0, 1.0, 0.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))

Drawable = Union[np.ndarray, Image.Image]


def _palette_value(channel: int, offset: int, classes: int) -> float:
    ratio = np.float32(np.float32(offset) / np.float32(classes)) * np.float32(5)
    low = int(np.floor(ratio))
    high = int(np.ceil(ratio))
    ratio = ratio - np.float32(low)
    one = np.float32(1)
    return float((one - ratio) * np.float32(_PALETTE[low][channel]) + ratio * np.float32(_PALETTE[high][channel]))


def class_color(class_id: int, classes: int) -> tuple[float, float, float]:
    """Darknet's (red, green, blue) in [0, 1] for a class: the 6-colour palette interpolated at
    (class * 123457) % classes."""
    offset = (class_id * 123457) % max(classes, 1)
    classes = max(classes, 1)
    return (_palette_value(2, offset, classes), _palette_value(1, offset, classes),
            _palette_value(0, offset, classes))


def class_color_bytes(class_id: int, classes: int) -> tuple[int, int, int]:
    """class_color as bytes, (unsigned char)(255 * v) like Darknet's image saving."""
    return tuple(int(np.float32(255) * np.float32(v)) for v in class_color(class_id, classes))


def _to_pil(image: Drawable) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.dtype == np.uint8:
        if array.ndim == 2:
            return Image.fromarray(array).convert("RGB")
        if array.ndim == 3 and array.shape[2] in (3, 4):
            return Image.fromarray(np.ascontiguousarray(array[:, :, :3]), "RGB")
        raise ValueError(f"uint8 images must be HWC (H, W, 3), got {array.shape}")
    if np.issubdtype(array.dtype, np.floating) and array.ndim == 3 and array.shape[0] in (1, 3):
        hwc = to_uint8(array).transpose(1, 2, 0)
        if hwc.shape[2] == 1:
            hwc = np.repeat(hwc, 3, axis=2)
        return Image.fromarray(np.ascontiguousarray(hwc), "RGB")
    raise TypeError(f"expected a PIL image, a float (3, H, W) or a uint8 (H, W, 3) array, got "
                    f"{array.dtype} {array.shape}")


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


Rect = tuple[int, int, int, int]   # left, top, right, bottom, inclusive


def _overlaps(a: Rect, b: Rect) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _place_label(box: Rect, size: tuple[int, int], image_size: tuple[int, int], taken: list[Rect]) -> Rect:
    """Where a label of `size` goes: just above the box, else inside its top edge, else below it, else inside
    its bottom edge; the first spot that hides no label placed before. Crowded scenes (many boxes with the
    same top edge) otherwise print every label on the same row, where only the last one is readable."""
    (left, top, _, bottom), (label_w, label_h), (width, height) = box, size, image_size
    x = min(left, max(0, width - label_w))
    candidates = [top - label_h, top, bottom + 1, bottom - label_h + 1]
    step = max(1, label_h)
    candidates += [top + k * step for k in range(1, max(1, (bottom - top) // step))]
    fallback = None
    for y in candidates:
        y = min(max(0, y), max(0, height - label_h))
        rect = (x, y, x + label_w - 1, y + label_h - 1)
        if fallback is None:
            fallback = rect
        if not any(_overlaps(rect, other) for other in taken):
            return rect
    return fallback


def render_detections(image: Drawable, results: Sequence[DetectionResult]) -> Image.Image:
    """A new RGB image with every detected box and its label drawn in the class colour. Boxes are drawn
    first and labels after them, so no box line crosses a label."""
    canvas = _to_pil(image).copy()
    width, height = canvas.size
    draw = ImageDraw.Draw(canvas)
    line = max(2, int(height * 0.006))
    font = _font(max(10, round(height * 0.03)))
    pad = max(1, line // 2)
    labels = []
    for _, group in groupby(results, key=lambda r: r.detection_index):
        group = list(group)
        first = group[0]
        colour = class_color_bytes(first.class_id, first.num_classes)
        box = darknet_rect(first.box, width, height)
        left, top, right, bottom = box
        if right < left or bottom < top:
            continue
        draw.rectangle(box, outline=colour, width=line)
        labels.append((box, colour, ", ".join(f"{r.name} {darknet_percent(r.score)}" for r in group)))
    taken: list[Rect] = []
    for box, colour, label in labels:
        x0, y0, x1, y1 = draw.textbbox((0, 0), label, font=font)
        rect = _place_label(box, (x1 - x0 + 2 * pad, y1 - y0 + 2 * pad), (width, height), taken)
        taken.append(rect)
        draw.rectangle(rect, fill=colour)
        luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        text_colour = (0, 0, 0) if luminance >= 128 else (255, 255, 255)
        draw.text((rect[0] + pad - x0, rect[1] + pad - y0), label, fill=text_colour, font=font)
    return canvas


def draw_detections(image: Drawable, results: Sequence[DetectionResult], path: str | os.PathLike) -> None:
    """Draw the results (as `detect` returns them) on the image and save it as PNG, atomically."""
    save_png(np.asarray(render_detections(image, results), dtype=np.uint8), path)
