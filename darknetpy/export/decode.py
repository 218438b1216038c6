"""--decode: boxes and per-class scores in the graph, as `darknetpy detect` computes them before NMS.

Each head's candidate boxes come out in the order its `detections()` walks them ([yolo]: cells outer,
anchors inner; [region]: anchors outer), heads in network order, concatenated:
  boxes      (batch, N, 4)        x_centre, y_centre, width, height as fractions of the network input
  objectness (batch, N)           [yolo] objectness, [region] its scale (1 with background=1)
  scores     (batch, N, classes)  objectness * class probability, not yet thresholded
A detector keeps, as Darknet does, [yolo] boxes whose objectness exceeds the threshold and every class score
above it (region boxes: the same, their objectness zeroing the scores); letterboxed inputs are mapped back
with the original image size (darknetpy.boxes.correct_letterbox_boxes), then NMS.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
from onnx import TensorProto, helper

from ..layers.detection import DetectionHead, Region, Yolo
from .graph import Graph


class Decoded(NamedTuple):
    boxes: str
    objectness: str
    scores: str
    classes: int
    candidates: int


Decoder = Callable[[Graph, DetectionHead, str, tuple[int, int]], Decoded]
DECODERS: dict[type, Decoder] = {}


def decodes(layer_class: type):
    def register(build: Decoder) -> Decoder:
        DECODERS[layer_class] = build
        return build
    return register


def decoder_for(layer: DetectionHead) -> Decoder:
    try:
        return DECODERS[type(layer)]
    except KeyError:
        raise layer.config.error(f"--decode handles [yolo] and [region] heads, not [{layer.kind}] "
                                 f"(export without --decode for its raw output)") from None


def _split_rows(g: Graph, rows: str, planes: int, coords_end: int) -> tuple[str, str, str]:
    """(x, y), (w, h) and the remaining planes of (B, N, planes) candidate rows."""
    xy = g.slice(rows, [0], [2], [2], suffix="xy")
    wh = g.slice(rows, [2], [4], [2], suffix="wh")
    rest = g.slice(rows, [coords_end], [planes], [2], suffix="planes")
    return xy, wh, rest


def _centres(g: Graph, xy: str, cols: np.ndarray, rows: np.ndarray, width: int, height: int) -> str:
    grid = np.stack([cols, rows], axis=1).astype(np.float32)[None]              # (1, N, 2)
    shifted = g.op("Add", [xy, g.const(grid, "grid")], "cell")
    return g.op("Div", [shifted, g.const(np.array([width, height], np.float32), "grid_size")], "centre")


@decodes(Yolo)
def decode_yolo(g: Graph, layer: Yolo, y: str, net_size: tuple[int, int]) -> Decoded:
    cfg = layer.config
    shape = layer.out_shape
    cells, n, planes = shape.h * shape.w, layer.n, 5 + cfg.classes
    rows = g.reshape(y, [0, n, planes, cells], "anchors")
    rows = g.op("Transpose", [rows], "cells_first", perm=[0, 3, 1, 2])       # (B, cells, n, planes)
    rows = g.reshape(rows, [0, cells * n, planes], "rows")
    cell = np.repeat(np.arange(cells), n)
    xy, wh, rest = _split_rows(g, rows, planes, 4)
    centre = _centres(g, xy, cell % shape.w, cell // shape.w, shape.w, shape.h)
    anchor = np.asarray(layer.mask, np.int64)[np.tile(np.arange(n), cells)]
    net_w, net_h = net_size
    anchors = np.stack([layer.anchors[2 * anchor].astype(np.float64) / net_w,
                        layer.anchors[2 * anchor + 1].astype(np.float64) / net_h], axis=1)
    if cfg.new_coords:
        grown = g.op("Mul", [g.op("Mul", [wh, wh], "square"), g.const(np.float32(4), "four")], "grown")
    else:
        grown = g.op("Exp", [wh], "grown")
    size = g.op("Mul", [grown, g.const(anchors.astype(np.float32)[None], "anchors")], "size")
    boxes = g.op("Concat", [centre, size], "boxes", axis=2)
    objectness = g.slice(rest, [0], [1], [2], suffix="objectness")
    scores = g.op("Mul", [objectness, g.slice(rest, [1], [1 + cfg.classes], [2], suffix="classes")], "scores")
    return Decoded(boxes, g.reshape(objectness, [0, cells * n], "objectness/flat"), scores, cfg.classes, cells * n)


@decodes(Region)
def decode_region(g: Graph, layer: Region, y: str, net_size: tuple[int, int]) -> Decoded:
    cfg = layer.config
    shape = layer.out_shape
    cells, n, planes = shape.h * shape.w, cfg.num, layer.planes_per_anchor
    rows = g.reshape(y, [0, n, planes, cells], "anchors")
    rows = g.op("Transpose", [rows], "cells_last", perm=[0, 1, 3, 2])       # (B, n, cells, planes)
    rows = g.reshape(rows, [0, n * cells, planes], "rows")
    cell = np.tile(np.arange(cells), n)
    xy, wh, rest = _split_rows(g, rows, planes, cfg.coords)
    centre = _centres(g, xy, cell % shape.w, cell // shape.w, shape.w, shape.h)
    anchor = np.repeat(np.arange(n), cells)
    # region anchors are in grid cells
    anchors = np.stack([layer.anchors[2 * anchor].astype(np.float64) / shape.w,
                        layer.anchors[2 * anchor + 1].astype(np.float64) / shape.h], axis=1)
    size = g.op("Mul", [g.op("Exp", [wh], "grown"), g.const(anchors.astype(np.float32)[None], "anchors")], "size")
    boxes = g.op("Concat", [centre, size], "boxes", axis=2)
    if cfg.background:
        scale = None
        objectness = _ones(g, y, n * cells)
    else:
        scale = g.slice(rest, [0], [1], [2], suffix="objectness")
        objectness = g.reshape(scale, [0, n * cells], "objectness/flat")
    classes = g.slice(rest, [1], [1 + cfg.classes], [2], suffix="classes")
    scores = classes if scale is None else g.op("Mul", [scale, classes], "scores")
    return Decoded(boxes, objectness, scores, cfg.classes, n * cells)


def _ones(g: Graph, like: str, count: int) -> str:
    """(B, count) ones, B being `like`'s batch (which may be symbolic)."""
    batch = g.slice(g.op("Shape", [like], "shape"), [0], [1], [0], suffix="batch")
    dims = g.op("Concat", [batch, g.ints([count], "count")], "dims", axis=0)
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    return g.op("ConstantOfShape", [dims], "ones", value=one)
