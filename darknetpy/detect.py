"""Object detection with a built network: preprocess, forward, decode every detection layer, NMS, and
report one result per (box, class above the threshold) in the order Darknet's `detector test` prints.

Preprocessing follows the cfg's [net] letter_box (AlexeyAB; 0 = plain stretch resize, as AlexeyAB
Darknet and OpenCV do by default) unless the caller says otherwise; pjreddie's `detector test` always
letterboxes (pass letterbox=True for its behaviour).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

from .api import check_names, network_channels
from .boxes import NMS_KINDS, Detection, diou_nms, nms_sort, to_pixel_box
from .config.datafile import read_list_file
from .errors import DarknetError
from .images import LETTERBOX, RESIZE, ImageSource, network_input
from .layers.detection import DetectionHead

Names = Union[Sequence[str], str, os.PathLike, None]


@dataclass(frozen=True)
class DetectionResult:
    """One reported (box, class) pair. `box_pixels` = (left, top, width, height) in original-image pixels,
    not clamped; `box` the same box normalised as (x_centre, y_centre, width, height). Results sharing
    `detection_index` describe the same box (Darknet labels it with all their names)."""
    class_id: int
    name: str
    score: float
    box_pixels: tuple[float, float, float, float]
    objectness: float
    box: tuple[float, float, float, float]
    detection_index: int
    num_classes: int


def detection_layers(network) -> list[tuple[int, DetectionHead]]:
    """(index, layer) of every layer that decodes boxes, in network order."""
    return [(i, layer) for i, layer in enumerate(network.layers) if isinstance(layer, DetectionHead)]


def network_boxes(network, img_w: int, img_h: int, thresh: float, letterbox: bool) -> list[Detection]:
    """Darknet's get_network_boxes for batch item 0 of the last forward pass: every detection layer's
    boxes, layer by layer in network order, normalised to the img_w x img_h image."""
    heads = detection_layers(network)
    if not heads:
        raise DarknetError("the network has no detection layer ([yolo], [region] or [detection])",
                           getattr(network, "path", None))
    net_w, net_h = network.net.width, network.net.height
    dets: list[Detection] = []
    for index, layer in heads:
        output = network.outputs[index]
        if output is None:
            raise RuntimeError("run network.forward before collecting boxes")
        dets += layer.detections(output[0], img_w, img_h, net_w, net_h, thresh, letterbox)
    return dets


def output_classes(network) -> int:
    """Darknet sizes the score arrays and runs NMS with the classes of the network's last layer."""
    last = network.layers[-1]
    if isinstance(last, DetectionHead):
        return last.classes
    heads = detection_layers(network)
    if not heads:
        raise DarknetError("the network has no detection layer ([yolo], [region] or [detection])",
                           network.path)
    return heads[-1][1].classes


def _resolve_names(names: Names, classes: int) -> list[str]:
    if names is None:
        return [str(j) for j in range(classes)]
    if isinstance(names, (str, os.PathLike)):
        return check_names(read_list_file(names), classes, names)
    return check_names(names, classes)


def _nms_setting(network, nms_kind: str) -> tuple[str, float]:
    if nms_kind != "cfg":
        if nms_kind not in NMS_KINDS:
            raise ValueError(f"unknown nms_kind {nms_kind!r}; expected 'cfg' or one of {', '.join(NMS_KINDS)}")
        return nms_kind, 0.6
    last = detection_layers(network)[-1][1]
    return getattr(last.config, "nms_kind", "default"), getattr(last.config, "beta_nms", 0.6)


def preprocess(image: ImageSource, width: int, height: int, letterbox: bool,
               channels: int = 3) -> tuple[np.ndarray, int, int]:
    """(network input (channels, height, width), original width, original height): images.network_input,
    letterboxed or stretched."""
    prepared = network_input(image, width, height, channels, LETTERBOX if letterbox else RESIZE)
    return prepared.pixels, prepared.image_width, prepared.image_height


def detect(network, image: ImageSource, thresh: float = 0.25, nms: float = 0.45,
           letterbox: bool | None = None, names: Names = None,
           nms_kind: str = "default") -> list[DetectionResult]:
    """Detect objects in one image (a path, PIL image or array as darknetpy.images.load_image accepts).

    Scores are objectness * class probability; a result is reported for each box and each class whose
    score exceeds `thresh`, in Darknet's printing order (the array order its NMS leaves, classes in index
    order). `nms` is the IoU threshold (0 disables NMS). `nms_kind`: "default" is Darknet's do_nms_sort;
    "greedynms"/"diounms" AlexeyAB's DIoU variants; "cfg" takes the kind and beta_nms from the last
    detection layer, as AlexeyAB's detector does. `names`: a list or a .names file; default: "0", "1", ...
    """
    if letterbox is None:
        letterbox = network.net.letter_box
    classes = output_classes(network)
    labels = _resolve_names(names, classes)
    sized, img_w, img_h = preprocess(image, network.net.width, network.net.height, letterbox,
                                     network_channels(network))
    network.infer(sized[None])
    dets = network_boxes(network, img_w, img_h, thresh, letterbox)
    if nms:
        suppress(network, dets, classes, nms, nms_kind)
    return collect_results(dets, classes, thresh, img_w, img_h, labels)


def suppress(network, dets: list[Detection], classes: int, thresh: float, nms_kind: str = "cfg") -> None:
    """NMS in place as `detect` runs it: Darknet's do_nms_sort, or AlexeyAB's DIoU variants; "cfg" takes the
    kind and beta_nms from the last detection layer (AlexeyAB's detector and its `map`)."""
    kind, beta = _nms_setting(network, nms_kind)
    if kind in ("default", "cornersnms"):
        nms_sort(dets, classes, thresh)
    else:
        diou_nms(dets, classes, thresh, kind, beta)


def collect_results(dets: Sequence[Detection], classes: int, thresh: float, img_w: int, img_h: int,
                    names: Sequence[str]) -> list[DetectionResult]:
    """Darknet's draw_detections walk: each detection in order, each class j < classes with score > thresh."""
    limit = np.float32(thresh)
    results = []
    for index, det in enumerate(dets):
        count = min(classes, det.probs.shape[0])
        for j in np.nonzero(det.probs[:count] > limit)[0]:
            j = int(j)
            results.append(DetectionResult(
                class_id=j, name=names[j], score=float(det.probs[j]),
                box_pixels=to_pixel_box(det.box, img_w, img_h), objectness=float(det.objectness),
                box=tuple(float(v) for v in det.box), detection_index=index, num_classes=classes))
    return results


def darknet_percent(score: float) -> str:
    """Darknet's `%.0f%%` of prob*100, the product taken in float32 as in C."""
    return f"{float(np.float32(score) * np.float32(100)):.0f}%"


def format_detections(results: Sequence[DetectionResult]) -> list[str]:
    """One line per result: Darknet's `name: NN%`, then the box in pixels (left, top, width, height)."""
    lines = []
    for r in results:
        left, top, width, height = r.box_pixels
        lines.append(f"{r.name}: {darknet_percent(r.score)}\tleft={left:.1f} top={top:.1f} "
                     f"width={width:.1f} height={height:.1f}")
    return lines
