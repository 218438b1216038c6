"""Feeding the pure metrics from files and a network: the `valid` list of a .data file with its labels,
the detections of a network on it (AlexeyAB's validate_detector_map settings), and the training boxes
for anchors.

Labels are found and checked by darknetpy.detection_labels (Darknet's images → labels path, or the `.txt`
beside the image). Images are decoded and resized in a background thread while the network runs on the
previous one (the forward pass releases the GIL in BLAS and Numba).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from darknetpy.api import check_names, names_path_from_data, network_channels, read_names
from darknetpy.config import DataConfig, folder_of, locate_image, read_image_list, resolve_path
from darknetpy.detect import network_boxes, output_classes, suppress
from darknetpy.detection_labels import read_labels
from darknetpy.errors import DataError, ImageError
from darknetpy.images import LETTERBOX, RESIZE, NetworkInput, network_input
from darknetpy.metrics.detection import ImageDetections, ImageTruths, MapResult, detection_map

#: AlexeyAB's validate_detector_map: every box scoring above this takes part in the ranking
MAP_DETECTION_THRESH = 0.005
MAP_NMS = 0.45
#: images decoded ahead of the network
_PREFETCH = 4

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class LabelledImages:
    """The images of a list file (paths found, with their list lines) and their truths."""
    list_path: str
    paths: list[str]
    lines: list[int]
    truths: list[ImageTruths]

    def __len__(self) -> int:
        return len(self.paths)


def read_labelled_list(data_config: DataConfig, key: str, classes: int) -> LabelledImages:
    """The `key` list (train or valid) of a .data file with every image's labels, checked up front:
    a missing key or list, an empty list, a missing image and a bad label line are DataErrors naming
    the file and line."""
    written = data_config.get(key)
    if not written:
        raise DataError(f"has no '{key}' list (e.g. {key} = {key}.txt)", data_config.path)
    data_dir = folder_of(data_config.path)
    list_path = resolve_path(written, data_dir)
    entries = read_image_list(list_path, key)
    paths = [locate_image(entry, data_dir, list_path) for entry in entries]
    labels = read_labels([entry.text for entry in entries], classes, data_dir, list_path)
    truths = []
    for i in range(len(entries)):
        rows = labels.of(i)
        truths.append(ImageTruths(rows[:, :4].astype(np.float64), rows[:, 4].astype(np.int64)))
    return LabelledImages(list_path, paths, [entry.line for entry in entries], truths)


def class_names(data_config: DataConfig, classes: int) -> list[str]:
    """The .data names (or labels) file, which must name every class; "0", "1", ... without one."""
    if not (data_config.names or data_config.labels):
        return [str(c) for c in range(classes)]
    path = names_path_from_data(data_config.path)
    return check_names(read_names(path), classes, path)


def check_data_classes(data_config: DataConfig, classes: int) -> None:
    """A .data `classes` that differs from the network's is a mistake (labels checked against one count,
    scored against another): a DataError at its line."""
    if data_config.classes is not None and data_config.classes != classes:
        raise DataError(f"classes={data_config.classes}, but the network's detection layer has "
                        f"classes={classes}", data_config.path, data_config.lines.get("classes"))


# ------------------------------------------------------------------------------------------ network

def _prefetched(images: LabelledImages, width: int, height: int, channels: int,
                letterbox: bool) -> Iterator[NetworkInput]:
    fit = LETTERBOX if letterbox else RESIZE

    def load(index: int) -> NetworkInput:
        try:
            return network_input(images.paths[index], width, height, channels, fit)
        except ImageError as exc:
            raise ImageError(f"{exc.message} (listed at {images.list_path}:{images.lines[index]})",
                             path=exc.path) from None

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="map-images") as pool:
        pending: deque = deque()
        try:
            for index in range(len(images)):
                pending.append(pool.submit(load, index))
                if len(pending) > _PREFETCH:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def detect_images(network, images: LabelledImages, progress: Progress | None = None,
                  letterbox: bool | None = None) -> list[ImageDetections]:
    """Every image's boxes above MAP_DETECTION_THRESH after the cfg's NMS at MAP_NMS, normalised to the
    image (as its labels), with the per-class scores Darknet keeps (0 where suppressed or too low)."""
    net = network.net
    if letterbox is None:
        letterbox = bool(net.letter_box)
    classes = output_classes(network)
    results: list[ImageDetections] = []
    prepared = _prefetched(images, net.width, net.height, network_channels(network), letterbox)
    for done, sized in enumerate(prepared, 1):
        network.infer(sized.pixels[None])
        dets = network_boxes(network, sized.image_width, sized.image_height, MAP_DETECTION_THRESH, letterbox)
        suppress(network, dets, classes, MAP_NMS, "cfg")
        boxes = np.array([d.box for d in dets], np.float64).reshape(-1, 4)
        scores = np.zeros((len(dets), classes), np.float32)
        for row, d in enumerate(dets):
            count = min(classes, d.probs.shape[0])
            scores[row, :count] = d.probs[:count]
        results.append(ImageDetections(boxes, scores))
        if progress is not None:
            progress(done, len(images))
    return results


def measure_map(network, data_config: DataConfig, names: list[str] | None = None, iou_thresh: float = 0.5,
                points: int = 0, thresh: float = 0.25, progress: Progress | None = None,
                keep: Callable[[list[ImageDetections], list[ImageTruths]], None] | None = None) -> MapResult:
    """`darknetpy map`: the network over the .data `valid` list, scored against the labels. `keep`, when
    given, receives every image's detections and truths (what `map --plots` draws its curves from)."""
    classes = output_classes(network)
    check_data_classes(data_config, classes)
    if names is None:
        names = class_names(data_config, classes)
    images = read_labelled_list(data_config, "valid", classes)
    if not any(len(t.classes) for t in images.truths):
        raise DataError("no image of the valid list has a labelled object: there is nothing to find, so no mAP",
                        images.list_path)
    detections = detect_images(network, images, progress)
    if keep is not None:
        keep(detections, images.truths)
    return detection_map(detections, images.truths, names[:classes], iou_thresh, points, thresh)


# ------------------------------------------------------------------------------------------ anchors

def training_box_sizes(data_config: DataConfig, width: int, height: int) -> np.ndarray:
    """(N, 2) widths and heights of every labelled box of the `train` list, in pixels of a width x height
    network input (labels are fractions of their image, which the network sees stretched)."""
    classes = data_config.classes if data_config.classes is not None else 20  # Darknet's detector default
    images = read_labelled_list(data_config, "train", classes)
    sizes = [t.boxes[:, 2:4] for t in images.truths if len(t.boxes)]
    if not sizes:
        raise DataError("no image of the train list has a labelled box", images.list_path)
    return np.concatenate(sizes) * np.array([width, height], np.float64)
