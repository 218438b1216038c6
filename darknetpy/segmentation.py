"""Using a segmenter: the class of every pixel of an image, and pictures of it.

The image is stretched to the network size (as the segmentation task trains and validates), the head's
per-class probability maps (LossLayer.class_probabilities) are resized to the image's own size (bilinear,
Darknet's resize_image) and the class of a pixel is the most probable one (argmax; ties go to the lower
index). So the class map always has the image's size, whatever the network's input and output strides.

Pictures: `<stem>_mask.png` is an index PNG (mode P, one class index per pixel) whose palette gives class 0
black and the others distinct hues; `<stem>_overlay.png` is the photo with every non-zero class
blended in its colour (class 0 is the background and left as it is) and a legend of the classes found
beside it.
"""
from __future__ import annotations

import colorsys
import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .fileio import atomic_writer
from .images import RESIZE, ImageSource, load_image, network_input, resize_image, to_uint8
from .kernels import masks as mask_kernels
from .layers.base import LossLayer
from .network import Network

OVERLAY_ALPHA = 0.55


def is_segmenter(network: Network) -> bool:
    """Whether the network predicts a class per pixel (its last layer is a pixel-wise loss layer)."""
    from .tasks import task_name_for
    return task_name_for(network) == "segmentation"


def pixel_head(network: Network) -> LossLayer:
    """The network's output layer if it predicts a class per pixel, else a CfgError at that layer."""
    head = network.output_layer
    if not is_segmenter(network):
        raise head.config.error(f"the network is not a segmenter: its last layer {head.index} [{head.kind}] "
                                f"does not predict a class per pixel (end in a 1x1 convolution and "
                                f"[softmax] spatial=1, or [logistic])")
    return head


def head_classes(network: Network) -> int:
    """How many classes a segmenter tells apart (2 for a one-channel logistic map: background, foreground)."""
    head = pixel_head(network)
    shape = head.in_shapes[0]
    dummy = np.zeros((1, shape.size, 1, 1), np.float32)
    return head.class_probabilities(dummy).shape[1]


def probabilities_at(network: Network, image: np.ndarray, width: int, height: int) -> np.ndarray:
    """(classes, height, width) probabilities of one network-sized input, resized to width x height."""
    head = pixel_head(network)
    output = network.infer(image[None])
    maps = np.ascontiguousarray(head.class_probabilities(output)[0], dtype=np.float32)
    if maps.shape[1:] != (height, width):
        maps = resize_image(maps, width, height)
    return maps


def class_map(network: Network, image: ImageSource) -> np.ndarray:
    """(H, W) uint8 class of every pixel of `image` (a path, PIL image or array), at the image's size."""
    pixel_head(network)
    net = network.net
    prepared = network_input(image, net.width, net.height, net.channels, RESIZE)
    probs = probabilities_at(network, prepared.pixels, prepared.image_width, prepared.image_height)
    return argmax_classes(probs)


def argmax_classes(probabilities: np.ndarray) -> np.ndarray:
    """(classes, H, W) -> (H, W) uint8 most probable class (the lower index on ties)."""
    classes, height, width = probabilities.shape
    out = np.empty(height * width, np.uint8)
    mask_kernels.argmax_channels(np.ascontiguousarray(probabilities, np.float32).reshape(classes, -1), out)
    return out.reshape(height, width)


def class_fractions(classes_map: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """{name: share of the image's pixels} for every class (0 for classes not found)."""
    counts = np.bincount(classes_map.reshape(-1), minlength=len(names))
    total = max(classes_map.size, 1)
    return {name: float(counts[c]) / total for c, name in enumerate(names)}


# ---- pictures -----------------------------------------------------------------------------------------------
def palette(classes: int) -> list[tuple[int, int, int]]:
    """Class 0 black; the others hues spread evenly around the colour wheel, every other one darker, so
    neighbouring classes differ (Darknet's detection colours give classes 7 and 10 of 11 nearly the same
    green)."""
    colours = [(0, 0, 0)]
    for c in range(1, classes):
        hue = (c - 1) / max(classes - 1, 1)
        value = 1.0 if c % 2 else 0.7
        colours.append(tuple(int(round(255 * v)) for v in colorsys.hsv_to_rgb(hue, 0.85, value)))
    return colours


def mask_png(classes_map: np.ndarray, classes: int) -> Image.Image:
    img = Image.fromarray(np.ascontiguousarray(classes_map, dtype=np.uint8), mode="P")
    flat = [value for colour in palette(classes) for value in colour]
    img.putpalette(flat + [128] * (768 - len(flat)))
    return img


def overlay_png(image: np.ndarray, classes_map: np.ndarray, names: Sequence[str]) -> Image.Image:
    """The photo (3, H, W) with every non-zero class blended in its colour, and a legend of the classes
    found (colour, name, share of the pixels) in a panel on the right."""
    classes = len(names)
    colours = np.array(palette(classes), np.float32)
    photo = to_uint8(image).transpose(1, 2, 0).astype(np.float32)
    painted = classes_map > 0
    blended = photo.copy()
    blended[painted] = (1 - OVERLAY_ALPHA) * photo[painted] + OVERLAY_ALPHA * colours[classes_map[painted]]
    picture = Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8), "RGB")
    fractions = class_fractions(classes_map, names)
    found = [c for c in range(classes) if fractions[names[c]] > 0]
    font = ImageFont.load_default()
    row = 14
    labels = [f"{names[c]}: {100 * fractions[names[c]]:.1f}%" for c in found]
    text_width = max(int(font.getlength(label)) for label in labels) if labels else 40
    panel_w = text_width + 26
    canvas = Image.new("RGB", (picture.width + panel_w, max(picture.height, row * len(found) + 8)), (255, 255, 255))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, (c, label) in enumerate(zip(found, labels)):
        top = 4 + k * row
        left = picture.width + 4
        draw.rectangle((left, top + 1, left + 12, top + 11), fill=tuple(int(v) for v in colours[c]),
                       outline=(0, 0, 0))
        draw.text((left + 17, top), label, fill=(0, 0, 0), font=font)
    return canvas


def _write_png(picture: Image.Image, path: Path) -> None:
    data = io.BytesIO()
    picture.save(data, format="PNG")
    with atomic_writer(path, fsync=False) as stream:
        stream.write(data.getvalue())


def write_segmentation_pictures(image: ImageSource, classes_map: np.ndarray, names: Sequence[str],
                                folder: str | os.PathLike, stem: str) -> tuple[Path, Path]:
    """`<stem>_mask.png` and `<stem>_overlay.png` in `folder` (created if needed), each written atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mask_path = folder / f"{stem}_mask.png"
    overlay_path = folder / f"{stem}_overlay.png"
    _write_png(mask_png(classes_map, len(names)), mask_path)
    _write_png(overlay_png(load_image(image), classes_map, names), overlay_path)
    return mask_path, overlay_path
