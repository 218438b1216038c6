"""Detection heads: [yolo] (YOLOv3/v4, with AlexeyAB's scale_x_y and new_coords), [region] (YOLOv2) and
[detection] (YOLOv1).

Forward is the inference activation only; the losses (training targets, spec §9.7) are not implemented,
so these layers refuse backward. `detections()` decodes one batch item's output into boxes (spec §9.2–9.4).
Box arithmetic mirrors the C types: positions and products in float32, `exp`/`pow` in double rounded to
float, thresholds compared as float32.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..boxes import NMS_KINDS, Detection, correct_letterbox_boxes
from ..errors import UnsupportedError
from ..kernels import yolo as kernels
from .base import FLOAT, Layer, LayerConfig, Shape, option
from .registry import register

# Training-only keys of pjreddie's and AlexeyAB's detection sections (losses, targets, augmentation,
# tracking). None of them changes a forward pass or the decoded boxes.
_YOLO_TRAINING_KEYS = (
    "max", "jitter", "ignore_thresh", "truth_thresh", "random", "map", "iou_thresh", "iou_thresh_kind",
    "iou_loss", "iou_normalizer", "obj_normalizer", "cls_normalizer", "delta_normalizer", "uc_normalizer",
    "max_delta", "resize", "focal_loss", "label_smooth_eps", "counters_per_class", "objectness_smooth",
    "track_history_size", "sim_thresh", "dets_for_track", "dets_for_show", "track_ciou_norm",
    "embedding_layer", "show_details",
)
_REGION_TRAINING_KEYS = (
    "log", "sqrt", "max", "jitter", "rescore", "thresh", "classfix", "absolute", "random", "coord_scale",
    "object_scale", "noobject_scale", "mask_scale", "class_scale", "bias_match", "map", "focal_loss",
)
_DETECTION_TRAINING_KEYS = (
    "rescore", "max", "coord_scale", "forced", "object_scale", "noobject_scale", "class_scale", "jitter",
    "random", "reorg",
)


def _unsupported(config: LayerConfig, message: str, key: str | None = None) -> UnsupportedError:
    origin = config.origin
    if origin is None:
        return UnsupportedError(message)
    line = origin.key_lines.get(key, origin.line) if key else origin.line
    return UnsupportedError(message, origin.path, line)


def _key_or(config: LayerConfig, *keys: str) -> str | None:
    """The first of `keys` written in the section (so an error points at a line the user wrote)."""
    lines = config.origin.key_lines if config.origin is not None else {}
    for key in keys:
        if key in lines:
            return key
    return None


class DetectionHead(Layer):
    """Shared behaviour: inference-only forward, decoding to Detection objects."""
    trainable_backward = False

    def backward(self, dy, xs, dxs):
        raise _unsupported(self.config, f"training detection layers is not supported yet "
                                        f"([{self.kind}] layer {self.index} has no backward pass)")

    @property
    def classes(self) -> int:
        return self.config.classes

    @property
    def truths(self) -> int:
        raise NotImplementedError

    def detections(self, output_b: np.ndarray, img_w: int, img_h: int, net_w: int, net_h: int,
                   thresh: float, letterbox: bool) -> list[Detection]:
        """Decode one batch item's output (this layer's output[b]) into boxes normalised to the original
        img_w x img_h image; `letterbox` says whether the network input was letterboxed (then boxes are
        mapped back as Darknet's correct_*_boxes do) or plainly resized (identity)."""
        raise NotImplementedError

    def _finish(self, boxes: np.ndarray, objectness: np.ndarray, probs: np.ndarray, img_w: int, img_h: int,
                net_w: int, net_h: int, letterbox: bool) -> list[Detection]:
        if letterbox and len(boxes):
            correct_letterbox_boxes(boxes, img_w, img_h, net_w, net_h)
        return [Detection(box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                          objectness=float(o), probs=p, layer=self.index)
                for b, o, p in zip(boxes, objectness, probs)]


def _thresholded(scores: np.ndarray, thresh: np.float32) -> np.ndarray:
    return np.where(scores > thresh, scores, FLOAT(0.0)).astype(FLOAT)


# ------------------------------------------------------------------------------------------- [yolo]

@dataclass(frozen=True)
class YoloConfig(LayerConfig):
    classes: int = option(20, minimum=1)
    num: int = option(1, minimum=1)                      # total anchors; `mask` picks this layer's
    mask: tuple[int, ...] | None = option(None)
    anchors: tuple[float, ...] | None = option(None)     # w,h pairs in network-input pixels
    scale_x_y: float = option(1.0)                       # AlexeyAB
    new_coords: bool = option(False)                     # AlexeyAB (Scaled-YOLOv4)
    nms_kind: str = option("default", choices=NMS_KINDS)  # AlexeyAB: NMS used by its detector
    beta_nms: float = option(0.6)                        # AlexeyAB: DIoU exponent for nms_kind=diounms


@register
class Yolo(DetectionHead):
    kind = "yolo"
    Config = YoloConfig
    ignored_keys = _YOLO_TRAINING_KEYS

    def __init__(self, config: YoloConfig, index: int):
        super().__init__(config, index)
        self.mask = config.mask if config.mask is not None else tuple(range(config.num))
        for m in self.mask:
            if not 0 <= m < config.num:
                raise config.error(f"mask entry {m} is not an anchor index: num={config.num} anchors "
                                   f"are numbered 0..{config.num - 1}", "mask")
        if config.anchors is None:
            anchors = (0.5,) * (2 * config.num)        # Darknet's default biases
        elif len(config.anchors) != 2 * config.num:
            raise config.error(f"anchors has {len(config.anchors)} values, but num={config.num} needs "
                               f"{2 * config.num} (a width,height pair per anchor)", "anchors")
        else:
            anchors = config.anchors
        self.anchors = np.asarray(anchors, dtype=FLOAT)   # Darknet stores them as float
        self.scale_alpha = FLOAT(config.scale_x_y)
        # C computes -0.5*(scale - 1) in double and passes it as a float argument
        self.scale_beta = FLOAT(-0.5 * (float(self.scale_alpha) - 1.0))

    @property
    def n(self) -> int:
        return len(self.mask)

    @property
    def truths(self) -> int:
        return 90 * (4 + 1)

    def output_shape(self, in_shapes):
        x = in_shapes[0]
        self.require_image(x)
        cfg = self.config
        expected = self.n * (cfg.classes + 5)
        if x.c != expected:
            raise cfg.error(f"[yolo] needs len(mask)*(classes+5) = {self.n}*({cfg.classes}+5) = {expected} "
                            f"input channels, but the previous layer outputs {x.c} (set its filters={expected})",
                            _key_or(cfg, "classes", "mask"))
        return Shape(x.c, x.h, x.w)

    def forward(self, xs, train):
        kernels.yolo_forward(xs[0], self.output, self.n, self.config.classes, self.scale_alpha,
                             self.scale_beta, int(self.config.new_coords))
        return self.output

    def summary_row(self):
        return "yolo"

    def detections(self, output_b, img_w, img_h, net_w, net_h, thresh, letterbox):
        cfg = self.config
        height, width = output_b.shape[-2:]
        planes = output_b.reshape(self.n, 5 + cfg.classes, height * width)
        limit = FLOAT(thresh)
        # cell-major order (cells outer, anchors inner), as get_yolo_detections walks them
        cells, slots = np.nonzero(planes[:, 4, :].T > limit)
        objectness = planes[slots, 4, cells]
        tx, ty, tw, th = (planes[slots, e, cells] for e in range(4))
        col = (cells % width).astype(FLOAT)
        row = (cells // width).astype(FLOAT)
        anchor_idx = np.asarray(self.mask, dtype=np.int64)[slots]
        anchor_w = self.anchors[2 * anchor_idx]
        anchor_h = self.anchors[2 * anchor_idx + 1]
        boxes = np.empty((len(cells), 4), dtype=FLOAT)
        boxes[:, 0] = (col + tx) / FLOAT(width)
        boxes[:, 1] = (row + ty) / FLOAT(height)
        if cfg.new_coords:
            boxes[:, 2] = tw * tw * FLOAT(4) * anchor_w / FLOAT(net_w)
            boxes[:, 3] = th * th * FLOAT(4) * anchor_h / FLOAT(net_h)
        else:
            boxes[:, 2] = np.exp(tw.astype(np.float64)) * anchor_w.astype(np.float64) / net_w
            boxes[:, 3] = np.exp(th.astype(np.float64)) * anchor_h.astype(np.float64) / net_h
        class_scores = planes[slots[:, None], 5 + np.arange(cfg.classes)[None, :], cells[:, None]]
        probs = _thresholded(objectness[:, None] * class_scores, limit)
        return self._finish(boxes, objectness, probs, img_w, img_h, net_w, net_h, letterbox)


# ------------------------------------------------------------------------------------------ [region]

@dataclass(frozen=True)
class RegionConfig(LayerConfig):
    coords: int = option(4, minimum=4)
    classes: int = option(20, minimum=1)
    num: int = option(1, minimum=1)
    softmax: bool = option(False)
    background: bool = option(False)
    anchors: tuple[float, ...] | None = option(None)     # w,h pairs in grid cells
    tree: str | None = option(None)


@register
class Region(DetectionHead):
    kind = "region"
    Config = RegionConfig
    ignored_keys = _REGION_TRAINING_KEYS

    def __init__(self, config: RegionConfig, index: int):
        super().__init__(config, index)
        if config.anchors is None:
            anchors = (0.5,) * (2 * config.num)
        elif len(config.anchors) != 2 * config.num:
            raise config.error(f"anchors has {len(config.anchors)} values, but num={config.num} needs "
                               f"{2 * config.num} (a width,height pair per anchor)", "anchors")
        else:
            anchors = config.anchors
        self.anchors = np.asarray(anchors, dtype=FLOAT)

    @property
    def planes_per_anchor(self) -> int:
        return self.config.coords + 1 + self.config.classes

    @property
    def truths(self) -> int:
        return 30 * (self.config.coords + 1)

    def output_shape(self, in_shapes):
        x = in_shapes[0]
        self.require_image(x)
        cfg = self.config
        expected = cfg.num * self.planes_per_anchor
        if x.c != expected:
            raise cfg.error(f"[region] needs num*(classes+coords+1) = {cfg.num}*({cfg.classes}+{cfg.coords}+1) "
                            f"= {expected} input channels, but the previous layer outputs {x.c} "
                            f"(set its filters={expected})", _key_or(cfg, "classes", "num", "coords"))
        return Shape(x.c, x.h, x.w)

    def _refuse_tree(self) -> None:
        # a tree cfg still builds (shapes, weights file size); only running it needs the hierarchy
        if self.config.tree is not None:
            raise _unsupported(self.config, "tree= (YOLO9000's hierarchical softmax) is not supported yet", "tree")

    def forward(self, xs, train):
        cfg = self.config
        self._refuse_tree()
        kernels.region_forward(xs[0], self.output, cfg.num, cfg.classes, cfg.coords, int(cfg.background),
                               int(cfg.softmax))
        return self.output

    def summary_row(self):
        return "detection"   # sic: Darknet prints this for [region]

    def detections(self, output_b, img_w, img_h, net_w, net_h, thresh, letterbox):
        cfg = self.config
        self._refuse_tree()
        height, width = output_b.shape[-2:]
        cells = height * width
        planes = output_b.reshape(cfg.num, self.planes_per_anchor, cells)
        limit = FLOAT(thresh)
        # anchor-major order: box n*w*h + i
        col = np.tile((np.arange(cells) % width).astype(FLOAT), cfg.num)
        row = np.tile((np.arange(cells) // width).astype(FLOAT), cfg.num)
        anchor = np.repeat(np.arange(cfg.num), cells)
        flat = planes.transpose(0, 2, 1).reshape(cfg.num * cells, self.planes_per_anchor)
        boxes = np.empty((len(flat), 4), dtype=FLOAT)
        boxes[:, 0] = (col + flat[:, 0]) / FLOAT(width)
        boxes[:, 1] = (row + flat[:, 1]) / FLOAT(height)
        anchor_w = self.anchors[2 * anchor].astype(np.float64)
        anchor_h = self.anchors[2 * anchor + 1].astype(np.float64)
        boxes[:, 2] = np.exp(flat[:, 2].astype(np.float64)) * anchor_w / width    # anchors in grid cells
        boxes[:, 3] = np.exp(flat[:, 3].astype(np.float64)) * anchor_h / height
        scale = np.ones(len(flat), FLOAT) if cfg.background else flat[:, cfg.coords].copy()
        objectness = np.where(scale > limit, scale, FLOAT(0.0)).astype(FLOAT)
        class_values = flat[:, cfg.coords + 1:cfg.coords + 1 + cfg.classes]
        probs = _thresholded(scale[:, None] * class_values, limit)
        probs[objectness == 0] = 0
        return self._finish(boxes, objectness, probs, img_w, img_h, net_w, net_h, letterbox)


# --------------------------------------------------------------------------------------- [detection]

@dataclass(frozen=True)
class DetectionConfig(LayerConfig):
    coords: int = option(1, minimum=1)
    classes: int = option(1, minimum=1)
    num: int = option(1, minimum=1)
    side: int = option(7, minimum=1)
    softmax: bool = option(False)
    sqrt: bool = option(False)


@register
class DetectionLayer(DetectionHead):
    """YOLOv1. Its output is flat: [side² × classes] class probabilities, [side² × num] confidences, then
    side² × num boxes of 4 values (Darknet decodes with a stride of 4 whatever `coords` says)."""
    kind = "detection"
    Config = DetectionConfig
    ignored_keys = _DETECTION_TRAINING_KEYS

    @property
    def truths(self) -> int:
        cfg = self.config
        return cfg.side * cfg.side * (1 + cfg.coords + cfg.classes)

    def output_shape(self, in_shapes):
        x = in_shapes[0]
        cfg = self.config
        expected = cfg.side * cfg.side * ((1 + cfg.coords) * cfg.num + cfg.classes)
        if x.size != expected:
            raise cfg.error(f"[detection] needs side²*((1+coords)*num+classes) = {cfg.side}²*((1+{cfg.coords})"
                            f"*{cfg.num}+{cfg.classes}) = {expected} inputs, but the previous layer outputs "
                            f"{x.size}", _key_or(cfg, "side", "classes", "num", "coords"))
        return Shape.flat(expected)

    def forward(self, xs, train):
        cfg = self.config
        batch = xs[0].shape[0]
        out = self.output.reshape(batch, -1)
        np.copyto(out, xs[0].reshape(batch, -1))
        if cfg.softmax:
            kernels.detection_softmax(out, cfg.side * cfg.side, cfg.classes)
        return self.output

    def summary_row(self):
        return "Detection Layer"

    def detections(self, output_b, img_w, img_h, net_w, net_h, thresh, letterbox):
        """Boxes normalised to the image. Darknet multiplies them by the image size here and then ignores
        `relative`, drawing YOLOv1 boxes wrongly; we keep the same values in fractions so every layer
        returns the same units (and apply the letterbox correction like the other heads)."""
        cfg = self.config
        cells = cfg.side * cfg.side
        values = output_b.reshape(-1)
        class_probs = values[:cells * cfg.classes].reshape(cells, cfg.classes)
        confidence = values[cells * cfg.classes:cells * (cfg.classes + cfg.num)]
        box_values = values[cells * (cfg.classes + cfg.num):]
        index = np.arange(cells * cfg.num)
        cell = index // cfg.num
        col = (cell % cfg.side).astype(FLOAT)
        row = (cell // cfg.side).astype(FLOAT)
        raw = box_values[:4 * cells * cfg.num].reshape(cells * cfg.num, 4)
        power = 2.0 if cfg.sqrt else 1.0
        boxes = np.empty((cells * cfg.num, 4), dtype=FLOAT)
        boxes[:, 0] = (raw[:, 0] + col) / FLOAT(cfg.side)
        boxes[:, 1] = (raw[:, 1] + row) / FLOAT(cfg.side)
        boxes[:, 2] = np.power(raw[:, 2].astype(np.float64), power)
        boxes[:, 3] = np.power(raw[:, 3].astype(np.float64), power)
        scale = confidence.astype(FLOAT)
        probs = _thresholded(scale[:, None] * class_probs[cell], FLOAT(thresh))
        return self._finish(boxes, scale, probs, img_w, img_h, net_w, net_h, letterbox)
