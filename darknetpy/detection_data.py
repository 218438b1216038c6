"""Detection data: the images of a detection `.data` file's list, their boxes (detection_labels), and one
training sample as Darknet's detector builds it (detection_augment): an augmented canvas and its truth
row of [x, y, w, h, class] boxes, zero-padded to what the loss layer reads.

`DetectionDataset.load(index, rng, width, height)` is what data.BatchLoader runs in its worker
processes; every random draw comes from `rng`, so a batch depends only on the seed and its number. With
`mosaic=1` the three other images of a mosaic are drawn from `rng` too (uniformly, with replacement, as
AlexeyAB does with rand()).

Everything a user can get wrong is checked when the dataset is made, before training starts: the list
file, every listed image's existence, every label file's lines (DataError `file:line: ...`), and that the
.data `classes` agrees with the cfg's head.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

from darknetpy.config import DataConfig, folder_of, locate_image, read_image_list, resolve_path
from darknetpy.detection_augment import DetectionAugmentSettings, augment_detection, mosaic, truth_row
from darknetpy.detection_labels import LabelSet, read_labels
from darknetpy.errors import DataError, ImageError
from darknetpy.images import LETTERBOX, RESIZE, load_planes, network_input, to_channels

#: Darknet's detector reads `train=` from this when the .data file has no such key (spec §7.1)
DEFAULT_TRAIN_LIST = "data/train.list"


#: a training image is decoded with at least this many pixels per canvas pixel (where its shorter side
#: ratio fits the canvas), so that the zoom of a jitter or crop still samples real detail
DECODE_OVERSAMPLING = 2


def decode_for_canvas(path: str, width: int, height: int) -> np.ndarray:
    """The planes ((3, H', W') RGB or (1, H', W') grey, as load_planes) of a training image that will be
    augmented onto a width x height canvas.

    A JPEG far larger than the canvas (a 12-megapixel photo for a 416 network) is decoded at 1/2, 1/4 or
    1/8 of its size by libjpeg's DCT scaling (Pillow's draft mode), which is several times faster and
    smaller than decoding it whole and then shrinking it: the largest reduction that keeps at least
    DECODE_OVERSAMPLING image pixels per canvas pixel. Labels are fractions of the image, so they hold at
    any scale. Anything else (other formats, small JPEGs, unreadable files) goes through load_planes.
    """
    try:
        image = Image.open(path)
    except Exception:  # Pillow refuses files in many ways; load_planes names the problem in one line
        return load_planes(path)
    with image:
        if image.format != "JPEG":
            return load_planes(path)
        img_w, img_h = image.size
        needed = DECODE_OVERSAMPLING * max(width / img_w, height / img_h)
        if needed < 0.5:
            image.draft(image.mode, (math.ceil(img_w * needed), math.ceil(img_h * needed)))
        return load_planes(image)


class DetectionDataset:
    """The images of a detection list with their boxes, and how to load one for training or validation.

    `classes` is the cfg's (the last head's); a .data `classes` that differs is a DataError at its line
    (labels would be checked against one count and trained against another).
    """

    def __init__(self, data_config: DataConfig, settings: DetectionAugmentSettings, classes: int,
                 train: bool = True, seed: int | None = None, batch_size: int = 1,
                 head: str = "the cfg's last detection layer"):
        self.train = bool(train)
        self.seed = seed
        self.settings = settings
        self.width = settings.width
        self.height = settings.height
        self.channels = settings.channels
        self.batch_size = int(batch_size)
        self.classes = int(classes)
        self.truth_size = settings.truth_size
        if self.channels not in (1, 3):
            raise DataError(f"image data needs channels=1 or 3 in [net], got {self.channels}")
        if data_config.classes is not None and data_config.classes != self.classes:
            raise DataError(f"classes={data_config.classes}, but {head} has classes={self.classes}",
                            data_config.path, data_config.lines.get("classes"))
        self.data_dir = folder_of(data_config.path)
        key = "train" if self.train else "valid"
        written = data_config.train if self.train else data_config.valid
        if written is None and not self.train:
            raise DataError("has no 'valid' list (needed to measure the detector)", data_config.path)
        self.list_path = resolve_path(written or DEFAULT_TRAIN_LIST, self.data_dir)
        entries = read_image_list(self.list_path, key)
        self.lines = np.array([entry.line for entry in entries], np.int64)
        self.entries = [entry.text for entry in entries]
        self.paths = [locate_image(entry, self.data_dir, self.list_path) for entry in entries]
        self.labels: LabelSet = read_labels(self.entries, self.classes, self.data_dir, self.list_path)

    def __len__(self) -> int:
        return len(self.paths)

    def boxes(self, index: int) -> np.ndarray:
        """Image `index`'s boxes [x, y, w, h, class], normalised to the image (a copy)."""
        return self.labels.of(index).copy()

    def draw_indices(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """`count` image indices drawn with replacement (Darknet's rand() % N per image)."""
        return rng.integers(0, len(self.paths), size=count)

    def load_planes(self, index: int, width: int | None = None, height: int | None = None) -> np.ndarray:
        """Image `index` as load_planes gives it ((3, H, W) RGB or (1, H, W) grey: augmentation works plane
        by plane); an ImageError names the list line too. Given the canvas size, a big JPEG is decoded at a
        reduced scale (decode_for_canvas)."""
        try:
            if width is not None and height is not None:
                return decode_for_canvas(self.paths[index], width, height)
            return load_planes(self.paths[index])
        except ImageError as exc:
            raise ImageError(f"{exc.message} (listed at {self.list_path}:{int(self.lines[index])})",
                             path=exc.path) from None

    def load(self, index: int, rng: np.random.Generator | None = None, width: int | None = None,
             height: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(image (channels, height, width) float32, truth row float32 [truth_size]).

        Training: augmented (detection_augment), boxes normalised to the canvas. Validation: resized
        (letterboxed with `letter_box=1`) without randomness, boxes normalised to the original image as
        mAP compares them."""
        width = self.width if width is None else int(width)
        height = self.height if height is None else int(height)
        if not self.train:
            return self._load_plain(index, width, height)
        if rng is None:
            raise ValueError("training images are augmented: pass a numpy Generator")
        settings = self.settings
        if settings.mosaic:
            others = self.draw_indices(rng, 3)
            pieces = [(self.load_planes(int(i), width, height), self.labels.of(int(i))) for i in (index, *others)]
            canvas, boxes = mosaic(pieces, rng, settings, width, height)
        else:
            canvas, boxes = augment_detection(self.load_planes(index, width, height), self.labels.of(index), rng,
                                              settings, width, height)
        row = truth_row(boxes, rng, settings.max_boxes, settings.truth_boxes)
        return to_channels(canvas, self.channels), row

    def _load_plain(self, index: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        fit = LETTERBOX if self.settings.letter_box else RESIZE
        try:
            sized = network_input(self.paths[index], width, height, self.channels, fit)
        except ImageError as exc:
            raise ImageError(f"{exc.message} (listed at {self.list_path}:{int(self.lines[index])})",
                             path=exc.path) from None
        boxes = self.labels.of(index)
        row = np.zeros(self.truth_size, np.float32)
        keep = min(len(boxes), self.settings.truth_boxes)
        row[:5 * keep] = boxes[:keep].reshape(-1)
        return sized.pixels, row

