"""Detection labels as Darknet finds them (spec §7.8): one `.txt` per image with lines
`class x_center y_center width height`, coordinates normalised to the image.

Where the label file is. Darknet derives it from the image path as written in the list: the first
"images", then "JPEGImages", then "raw" become "labels" (plain substring replacement, as Darknet's
find_replace), and the extension becomes ".txt". AlexeyAB's Darknet also reads the `.txt` beside the
image. We try the Darknet path first, then the one beside the image; an image with neither has no objects
(one warning per dataset with the count, because a mistyped folder silently empties a dataset).

Checking. Darknet reads label lines with fscanf and trains on whatever comes out: a line with four
numbers, a class beyond `classes` or a box of zero size end in garbage truths or a crash deep in training.
Every label file is read once, up front, and the first bad line is a DataError `file:line: ...`, so the
mistake is reported before anything is trained or written. The parsed boxes are kept (two flat arrays,
cheap to send to the loader's worker processes) so training never reads a label file again.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from darknetpy.config import locate_path
from darknetpy.config.grammar import read_text_file
from darknetpy.errors import DarknetWarning, DataError

# Darknet's replacements, applied in this order, each to the first occurrence only.
_FOLDER_REPLACEMENTS = (("images", "labels"), ("JPEGImages", "labels"), ("raw", "labels"))


def label_path_candidates(image_path: str) -> list[str]:
    """Where the labels of `image_path` may be: Darknet's derived path, then the `.txt` beside the image
    (the same path when the image path holds none of the replaced folder names)."""
    derived = image_path
    for old, new in _FOLDER_REPLACEMENTS:
        derived = derived.replace(old, new, 1)
    darknet = os.path.splitext(derived)[0] + ".txt"
    beside = os.path.splitext(image_path)[0] + ".txt"
    return [darknet] if darknet == beside else [darknet, beside]


def _bad(message: str, path: str, line: int) -> DataError:
    return DataError(message, path, line)


def parse_label_text(text: str, path: str, classes: int) -> np.ndarray:
    """(N, 5) float32 rows [x, y, w, h, class] (the truth-row order) from a label file's text.

    Raises a DataError at the first bad line: a field count other than 5, a class that is not a whole
    number in [0, classes), a coordinate that is not a number in [0, 1], or a zero width or height.
    Blank lines are skipped (fscanf skips them too).
    """
    rows: list[tuple[float, float, float, float, float]] = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise _bad(f"expected 5 fields 'class x_center y_center width height', found {len(fields)}: "
                       f"{line.strip()[:60]!r}", path, number)
        try:
            class_id = int(fields[0])
        except ValueError:
            raise _bad(f"class {fields[0]!r} is not a whole number", path, number) from None
        if not 0 <= class_id < classes:
            raise _bad(f"class {class_id} is outside 0..{classes - 1} (classes={classes} in the .data file)",
                       path, number)
        values = []
        for name, text_value in zip(("x_center", "y_center", "width", "height"), fields[1:]):
            try:
                value = float(text_value)
            except ValueError:
                raise _bad(f"{name} {text_value!r} is not a number", path, number) from None
            if not (0.0 <= value <= 1.0):  # also refuses nan
                raise _bad(f"{name} {text_value} is outside [0, 1] (coordinates are fractions of the image "
                           f"size)", path, number)
            values.append(value)
        if values[2] == 0.0 or values[3] == 0.0:
            raise _bad(f"zero-size box (width {fields[3]}, height {fields[4]})", path, number)
        rows.append((values[0], values[1], values[2], values[3], float(class_id)))
    if not rows:
        return np.zeros((0, 5), np.float32)
    return np.array(rows, np.float32)


@dataclass
class LabelSet:
    """The boxes of every image of a list: image i owns rows offsets[i]:offsets[i+1] of `boxes`
    ([x, y, w, h, class], normalised), `sources[i]` is its label file (None: no file, no objects)."""

    boxes: np.ndarray
    offsets: np.ndarray
    sources: list[str | None]

    def __len__(self) -> int:
        return len(self.sources)

    def of(self, index: int) -> np.ndarray:
        """The (N, 5) boxes of image `index` (a view: copy before changing it)."""
        return self.boxes[self.offsets[index]:self.offsets[index + 1]]

    @property
    def missing(self) -> int:
        return sum(source is None for source in self.sources)


def find_label_file(image_entry: str, base_dir: str | os.PathLike | None = None) -> str | None:
    """The label file of an image path as written in a list (located like the image: relative to the
    working directory, else to `base_dir`), or None."""
    for candidate in label_path_candidates(image_entry):
        found = locate_path(candidate, base_dir)
        if found is not None and os.path.isfile(found):
            return found
    return None


def read_labels(image_entries: Sequence[str], classes: int, base_dir: str | os.PathLike | None = None,
                list_path: str | None = None) -> LabelSet:
    """Find, read and check the label file of every image (paths as written in the list; each file read
    once); warn once about images without one. Raises DataError `label_file:line: ...` for the first bad
    line."""
    if classes < 1:
        raise DataError(f"classes={classes}: a detector needs at least one class")
    image_paths = image_entries
    parts: list[np.ndarray] = []
    sources: list[str | None] = []
    counts = np.zeros(len(image_paths) + 1, np.int64)
    parsed: dict[str, np.ndarray] = {}  # a label file shared by several list entries is read once
    for i, image_path in enumerate(image_paths):
        source = find_label_file(image_path, base_dir)
        sources.append(source)
        if source is None:
            continue
        boxes = parsed.get(source)
        if boxes is None:
            boxes = parse_label_text(read_text_file(source, DataError, "label file"), source, classes)
            parsed[source] = boxes
        parts.append(boxes)
        counts[i + 1] = len(boxes)
    boxes = np.concatenate(parts) if parts else np.zeros((0, 5), np.float32)
    labels = LabelSet(np.ascontiguousarray(boxes, np.float32), np.cumsum(counts), sources)
    missing = labels.missing
    if missing:
        example = label_path_candidates(image_paths[next(i for i, s in enumerate(sources) if s is None)])
        where = f" in {list_path}" if list_path else ""
        warnings.warn(DarknetWarning(
            f"{missing} of {len(image_paths)} images{where} have no label file (e.g. none of "
            f"{', '.join(example)}); they train as images without objects"), stacklevel=2)
    if len(labels.boxes) == 0:
        warnings.warn(DarknetWarning(f"no image{' in ' + list_path if list_path else ''} has a labelled "
                                     f"object: the detector can only learn that there is nothing to find"),
                      stacklevel=2)
    return labels
