"""Segmentation data: class-index masks found from their images, checked up front, and augmented together
with them.

Where a mask is. For an image `.../images/<name>.<ext>` the mask is `.../masks/<name>.png` (the last folder
called `images` in the path becomes `masks`). A mask PNG is greyscale or palette (mode L, P or 1) with one
class index per pixel; 255 marks pixels to ignore (no loss, not counted by the metrics). pjreddie's RLE text
masks (spec §12.4) are read too: `.../masks/<name>.txt`, or pjreddie's own path, the first "images" replaced
by "mask" and the extension by ".txt". Each RLE line is `class run,run,...`: run lengths over the image in
row-major order, alternating and starting with a run of 0s, the pixels after the last run taking the next
value (as pjreddie's load_rle). pjreddie keeps one channel per class; a class-index mask holds one class per
pixel, so a later line wins where two overlap, and pixels no line covers are class 0 (background).

Checking. Darknet finds a bad mask (or none) in the middle of training. Every mask is read once before
training: a missing or unreadable file, a mask whose size differs from its image's, or a value that is
neither a class below `classes` nor 255 is a DataError naming the file (and list line).

Augmentation. A mask follows its image through the same draw of crop/scale/rotation and flip (augment.py),
sampled by nearest neighbour (kernels/masks.py); pixels the crop takes from outside the image are ignored.
The result is brought to the network's output size at the positions where predictions are put back
(mask_to_output).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from darknetpy.augment import AugmentSettings, draw_crop, flip_image, random_distort_image, rotate_crop_image
from darknetpy.config import DataConfig, folder_of, locate_image, read_image_list, resolve_path
from darknetpy.config.grammar import read_text_file
from darknetpy.errors import DataError, ImageError
from darknetpy.images import center_crop_image, load_planes, resize_image, to_channels
from darknetpy.kernels import augment as augment_kernels
from darknetpy.kernels import masks as kernels

IGNORE_INDEX = 255
MASK_FOLDER = "masks"
_MASK_MODES = ("L", "P", "1", "I", "I;16", "I;16L", "I;16B")


# ------------------------------------------------------------------------------------------- paths

def mask_path_candidates(image_path: str) -> list[str]:
    """Where the mask of `image_path` may be, in the order tried: masks/<stem>.png, masks/<stem>.txt (both
    with the last `images` folder replaced), then pjreddie's RLE path (first "images" -> "mask", ".txt")."""
    parts = list(Path(image_path).parts)
    candidates = []
    folders = [i for i, part in enumerate(parts[:-1]) if part == "images"]
    if folders:
        parts[folders[-1]] = MASK_FOLDER
        stem = Path(*parts).with_suffix("")
        candidates += [f"{stem}.png", f"{stem}.txt"]
    if "images" in image_path:
        pjreddie = os.path.splitext(image_path.replace("images", "mask", 1))[0] + ".txt"
        if pjreddie not in candidates:
            candidates.append(pjreddie)
    return candidates


def find_mask(image_path: str) -> str | None:
    for candidate in mask_path_candidates(image_path):
        if os.path.isfile(candidate):
            return candidate
    return None


# ------------------------------------------------------------------------------------------- reading

def read_mask_png(path: str) -> np.ndarray:
    """(H, W) uint8 class indices of a greyscale or palette PNG; DataError for anything else."""
    try:
        with Image.open(path) as img:
            mode = img.mode
            if mode not in _MASK_MODES:
                raise DataError(f"a mask must be a greyscale or palette image with one class index per pixel, "
                                f"not mode {mode}", path)
            img.load()
            values = np.asarray(img)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise DataError(f"cannot read the mask: {' '.join(str(reason).split())}", path) from None
    if values.dtype == np.bool_:
        return values.astype(np.uint8)
    if values.dtype != np.uint8:
        if values.size and (values.min() < 0 or values.max() > 255):
            raise DataError(f"mask values must be class indices 0..255, found {int(values.max())}", path)
        values = values.astype(np.uint8)
    return np.ascontiguousarray(values)


def read_mask_rle(path: str, width: int, height: int) -> np.ndarray:
    """(height, width) uint8 class indices from pjreddie's RLE text (see the module docstring)."""
    text = read_text_file(path, DataError, "mask")
    mask = np.zeros(height * width, np.uint8)
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 2:
                raise ValueError
            class_id = int(fields[0])
            runs = [int(run) for run in fields[1].split(",") if run]
        except ValueError:
            raise DataError(f"expected 'class run,run,...', found {line.strip()[:60]!r}", path, number) from None
        if not 0 <= class_id <= 254 or any(run < 0 for run in runs):
            raise DataError(f"class {class_id} or a negative run length in {line.strip()[:60]!r}", path, number)
        if sum(runs) > mask.size:
            raise DataError(f"runs cover {sum(runs)} pixels, more than the {width}x{height} image has", path,
                            number)
        ends = np.cumsum(runs)
        starts = ends - np.asarray(runs, np.int64)
        for start, end in zip(starts[1::2], ends[1::2]):     # the odd runs are 1s
            mask[start:end] = class_id
        if len(runs) % 2 == 1:                                # an odd count of runs ends on 0s: 1s follow
            mask[int(ends[-1]):] = class_id
    return mask.reshape(height, width)


def image_size(path: str) -> tuple[int, int]:
    """(width, height) from the image header (the pixels are not decoded)."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise ImageError(f"cannot read image: {exc}", path=path) from None


def read_mask(path: str, width: int, height: int) -> np.ndarray:
    """The mask file for an image of width x height (PNG or RLE text)."""
    if path.endswith(".txt"):
        return read_mask_rle(path, width, height)
    return read_mask_png(path)


def check_mask(mask: np.ndarray, path: str, width: int, height: int, classes: int) -> None:
    """DataError unless `mask` has the image's size and holds only classes below `classes` or 255."""
    if mask.shape != (height, width):
        raise DataError(f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is {width}x{height}", path)
    bad = (mask >= classes) & (mask != IGNORE_INDEX)
    if bad.any():
        y, x = np.argwhere(bad)[0]
        raise DataError(f"pixel ({x}, {y}) has class {int(mask[y, x])}, but classes={classes} (indices "
                        f"0..{classes - 1}; {IGNORE_INDEX} = ignore)", path)


# ------------------------------------------------------------------------------------------- geometry

def augment_pair(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                 settings: AugmentSettings) -> tuple[np.ndarray, np.ndarray]:
    """augment.augment_image for an image and its mask: the same draws in the same order (crop geometry,
    flip, colour), the mask sampled by nearest neighbour, colour changes on the image only."""
    if settings.center:
        out = center_crop_image(img, settings.width, settings.height)
        out_mask = center_crop_mask(mask, settings.width, settings.height)
    else:
        params = draw_crop(rng, img.shape[2], img.shape[1], settings.angle, settings.aspect, settings.min_size,
                           settings.max_size, settings.width, settings.height)
        out = rotate_crop_image(img, params.rad, params.scale, settings.width, settings.height, params.dx,
                                params.dy, params.aspect)
        out_mask = np.empty((settings.height, settings.width), np.uint8)
        augment_kernels.rotate_crop_nearest(np.ascontiguousarray(mask), float(params.rad), float(params.scale),
                                            float(params.dx), float(params.dy), float(params.aspect),
                                            np.uint8(IGNORE_INDEX), out_mask)
    if settings.flip and rng.integers(2):
        out = flip_image(out)
        out_mask = np.ascontiguousarray(out_mask[:, ::-1])
    out = random_distort_image(out, rng, settings.hue, settings.saturation, settings.exposure)
    return out, out_mask


def center_crop_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """images.center_crop_image's geometry (the centred square, resized) for a mask, nearest pixel."""
    h, w = mask.shape
    side = min(w, h)
    out = np.empty((height, width), np.uint8)
    kernels.resize_region_nearest(np.ascontiguousarray(mask), (w - side) // 2, (h - side) // 2, side, side, out)
    return out


def mask_to_output(mask: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """A mask at the network's input size brought to its output map (identity when they are equal).

    Output cell i stands for input position i·(H−1)/(h−1), Darknet's resize_image ("align corners")
    positions, because that is where a prediction puts cell i when `segment` and `valid` resize the class
    probabilities back to the image with resize_image. Taking each cell's centre instead shifts every
    prediction by up to a stride against its image (it cost the bundled segmenter 0.04 mIoU)."""
    if mask.shape == (out_h, out_w):
        return mask
    out = np.empty((out_h, out_w), np.uint8)
    h, w = mask.shape
    kernels.resize_region_nearest(np.ascontiguousarray(mask), 0, 0, w, h, out)
    return out


# ------------------------------------------------------------------------------------------- dataset

@dataclass(frozen=True)
class OutputGeometry:
    """How the network's input size maps to its pixel-wise output (a U-Net: 1, a stride-4 head: 4)."""
    stride_x: float
    stride_y: float

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        return max(1, round(width / self.stride_x)), max(1, round(height / self.stride_y))


class SegmentationDataset:
    """The images of a segmentation .data file's `train` (or `valid`) list with their masks.

    Every mask is found, read and checked on construction (see the module docstring), so a bad dataset
    fails before training starts. Training items are augmented image/mask pairs at the network size with
    the mask at the output size; validation items are the image stretched to the network size (as
    `darknetpy segment` feeds it) with the mask at the image's own size.
    """

    def __init__(self, data_config: DataConfig, net_config: Any, classes: int, output: OutputGeometry,
                 encoder: Callable[[np.ndarray], np.ndarray], train: bool = True, seed: int | None = None):
        self.train = bool(train)
        self.encoder = encoder
        self.seed = seed
        self.classes = int(classes)
        self.output = output
        self.width = int(net_config.width)
        self.height = int(net_config.height)
        self.channels = int(net_config.channels)
        self.batch_size = int(net_config.batch) * int(getattr(net_config, "subdivisions", 1) or 1)
        self.settings = AugmentSettings.from_net(net_config)
        self.data_dir = folder_of(data_config.path)
        key = "train" if self.train else "valid"
        written = getattr(data_config, key)
        if not written:
            raise DataError(f"a segmentation .data file needs '{key}=' (the list of images)", data_config.path)
        self.list_path = resolve_path(written, self.data_dir)
        entries = read_image_list(self.list_path, key)
        self.paths: list[str] = []
        self.mask_paths: list[str] = []
        self.lines: list[int] = []
        for entry in entries:
            where = f"{self.list_path}:{entry.line}"
            found = locate_image(entry, self.data_dir, self.list_path)
            mask_path = find_mask(found)
            if mask_path is None:
                tried = mask_path_candidates(found)
                expected = tried[0] if tried else "a 'masks' folder beside an 'images' folder"
                raise DataError(f"no mask for {entry.text!r}: expected {expected} (masks sit in a 'masks' "
                                f"folder where the image path has 'images')", self.list_path, entry.line)
            try:
                width, height = image_size(found)
            except ImageError as exc:
                raise ImageError(f"{exc.message} (listed at {where})", path=exc.path) from None
            mask = read_mask(mask_path, width, height)
            try:
                check_mask(mask, mask_path, width, height, self.classes)
            except DataError as exc:
                raise DataError(f"{exc.message} (image listed at {where})", exc.path, exc.line) from None
            self.paths.append(found)
            self.mask_paths.append(mask_path)
            self.lines.append(entry.line)
        self.output_width, self.output_height = output.output_size(self.width, self.height)
        blank = np.zeros((1, self.output_height, self.output_width), np.uint8)
        self.truth_size = int(encoder(blank).shape[1])

    def __len__(self) -> int:
        return len(self.paths)

    def draw_indices(self, rng: np.random.Generator, count: int) -> np.ndarray:
        return rng.integers(0, len(self.paths), size=count)

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image (3, H, W) RGB or (1, H, W) grey float32, mask (H, W) uint8) as stored."""
        try:
            img = load_planes(self.paths[index])
        except ImageError as exc:
            raise ImageError(f"{exc.message} (listed at {self.list_path}:{self.lines[index]})",
                             path=exc.path) from None
        return img, read_mask(self.mask_paths[index], img.shape[2], img.shape[1])

    def load(self, index: int, rng: np.random.Generator | None = None, width: int | None = None,
             height: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Training: (augmented image (channels, h, w), truth row: the mask at the output size through the
        head's encoder). Validation: (image stretched to the network size, mask at the image's size, uint8),
        for the task's metric (validation data is never batched by the loader)."""
        width = self.width if width is None else int(width)
        height = self.height if height is None else int(height)
        img, mask = self.load_pair(index)
        if not self.train:
            return to_channels(resize_image(img, width, height), self.channels), mask
        if rng is None:
            raise ValueError("training images are augmented: pass a numpy Generator")
        settings = self.settings
        if (width, height) != (settings.width, settings.height):
            settings = AugmentSettings(**{**settings.__dict__, "width": width, "height": height})
        out, out_mask = augment_pair(img, mask, rng, settings)
        out_w, out_h = self.output.output_size(width, height)
        truth = self.encoder(mask_to_output(out_mask, out_w, out_h)[None])[0]
        return to_channels(out, self.channels), truth
