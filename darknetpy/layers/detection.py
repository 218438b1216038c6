"""Detection heads: [yolo] (YOLOv3/v4, with AlexeyAB's scale_x_y and new_coords), [region] (YOLOv2) and
[detection] (YOLOv1).

Forward is the activation; with truth in a training pass [yolo] and [region] also compute Darknet's
training targets (spec §12.1, §12.2; kernels/yolo.py) and keep Darknet's `delta` (target − output) in
`self.delta`. `backward` turns it into the standard gradient in one place, `_add_input_gradient`. [detection]
refuses training. `detections()` decodes one batch item's output into boxes (spec §9.2–9.4). Box arithmetic
mirrors the C types: positions and products in float32, `exp`/`pow` in double rounded to float, thresholds
compared as float32.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..boxes import NMS_KINDS, Detection, correct_letterbox_boxes
from ..errors import UnsupportedError
from ..kernels import yolo as kernels
from .base import FLOAT, LayerConfig, LossLayer, Shape, option
from .registry import register

FLT_MAX = 3.4028234663852886e38

# Keys only AlexeyAB's [yolo] knows: a section that sets any of them trains by AlexeyAB's rules
# (kernels/yolo.yolo_loss), one that sets none by pjreddie's, exactly.
_ALEXEYAB_YOLO_KEYS = (
    "iou_loss", "iou_normalizer", "cls_normalizer", "obj_normalizer", "iou_thresh", "iou_thresh_kind",
    "scale_x_y", "new_coords", "label_smooth_eps", "max_delta", "focal_loss", "resize", "nms_kind",
    "beta_nms", "objectness_smooth", "counters_per_class", "delta_normalizer",
)

IOU_LOSSES = {"mse": kernels.MSE, "iou": kernels.IOU, "giou": kernels.GIOU, "diou": kernels.DIOU,
              "ciou": kernels.CIOU}


def _key_or(config: LayerConfig, *keys: str) -> str | None:
    """The first of `keys` written in the section (so an error points at a line the user wrote)."""
    lines = config.origin.key_lines if config.origin is not None else {}
    for key in keys:
        if key in lines:
            return key
    return None


@dataclass(frozen=True)
class HeadConfig(LayerConfig):
    """Keys every detection head carries for the detection data loader, which reads them from the last
    head (spec §6.5): crop jitter, multi-scale training (`random`, AlexeyAB's float form and `resize`) and
    the most boxes per image (`max`; the truth rows hold a fixed number, see `truth_size`)."""
    jitter: float = option(0.2)
    random: float = option(0.0)
    resize: float = option(1.0)
    max: int = option(90, minimum=0)


def _format_stat(value: float) -> str:
    # C's printf of the 0/0 a head without truths divides: glibc writes the x86 default NaN as "-nan"
    return "-nan" if value != value else f"{value:f}"


class DetectionHead(LossLayer):
    """Shared behaviour: truth rows of boxes, Darknet's delta, statistics and decoding to Detections."""

    #: how many boxes (x, y, w, h, class) a truth row holds for this head type
    truth_boxes = 90

    def __init__(self, config: LayerConfig, index: int):
        super().__init__(config, index)
        self.delta: np.ndarray | None = None   # Darknet's delta of the last training pass (target − output)
        self._has_loss = False
        self._stats = np.zeros(8, np.float32)
        self._stats_batch = 0

    @property
    def classes(self) -> int:
        return self.config.classes

    @property
    def truths(self) -> int:
        raise NotImplementedError

    def truth_size(self) -> int:
        return self.truths

    def allocate(self, batch):
        super().allocate(batch)
        self.delta = np.zeros_like(self.output)

    def _take_truth(self, train: bool) -> np.ndarray | None:
        """The truth of this pass, checked, or None (no loss: inference, or a forward without truth)."""
        truth, self._truth = self._truth, None
        self._has_loss = False
        self.cost = None
        if truth is None or not train:
            return None
        truth = np.asarray(truth)
        if truth.dtype != np.float32:
            raise TypeError(f"truth must be float32, got {truth.dtype}")
        batch = self.output.shape[0]
        truth = truth.reshape(batch, -1) if truth.ndim != 2 else truth
        if truth.shape != (batch, self.truths):
            raise ValueError(f"[{self.kind}] layer {self.index} needs truth rows of shape "
                             f"{(batch, self.truths)} ({self.truth_boxes} boxes x, y, w, h, class per image), "
                             f"got {truth.shape}")
        self._check_classes(truth)
        return np.ascontiguousarray(truth)

    def _check_classes(self, truth: np.ndarray) -> None:
        """Darknet indexes its delta with the class of every box it reads; refuse what would write outside."""
        stride = self.truths // self.truth_boxes
        boxes = truth.reshape(truth.shape[0], self.truth_boxes, stride)[:, :self._boxes_read()]
        read = np.cumprod(boxes[:, :, 0] != 0, axis=1).astype(bool)   # reading stops at the first x == 0
        ids = boxes[:, :, stride - 1][read]
        bad = (ids < 0) | (ids >= self.classes) | (ids != np.floor(ids))
        if bad.any():
            raise ValueError(f"[{self.kind}] layer {self.index}: truth class {float(ids[bad][0])!r} is not one of "
                             f"the {self.classes} classes 0..{self.classes - 1}")

    def _boxes_read(self) -> int:
        return self.truth_boxes

    def _store_loss(self) -> None:
        self.cost = float(kernels.squared_norm(self.delta))
        self._has_loss = True
        self._stats_batch = self.output.shape[0]

    def _add_input_gradient(self, dy: np.ndarray, dx: np.ndarray) -> None:
        """The one place where Darknet's delta becomes dL/d(input): backward_yolo_layer adds l.delta (its
        loss delta plus whatever later layers added, i.e. minus their dL/d(output)) to the input's delta
        unchanged, so dL/dx = dy − delta."""
        dx += dy
        if self._has_loss:
            dx -= self.delta

    def backward(self, dy, xs, dxs):
        if dxs[0] is not None:
            self._add_input_gradient(dy, dxs[0])

    # ---- statistics ----------------------------------------------------------------------------------------
    def statistics(self) -> dict[str, float]:
        """Darknet's printed figures of the last training pass: mean IoU, class and objectness outputs of
        the predictions that own a truth, mean objectness of all predictions, recall at IoU .5 and .75 and
        the number of owned truths (count). Empty when the last pass had no truth."""
        if not self._has_loss:
            return {}
        s = self._stats
        count = s[kernels.STAT_COUNT]
        predictions = np.float32(self.output[0].size // self._planes_per_prediction() * self._stats_batch)
        with np.errstate(invalid="ignore", divide="ignore"):
            return {
                "avg_iou": float(s[kernels.STAT_IOU] / count),
                "class": float(s[kernels.STAT_CLASS] / s[kernels.STAT_CLASS_COUNT]),
                "obj": float(s[kernels.STAT_OBJ] / count),
                "no_obj": float(s[kernels.STAT_NOOBJ] / predictions),
                "recall50": float(s[kernels.STAT_RECALL50] / count),
                "recall75": float(s[kernels.STAT_RECALL75] / count),
                "count": int(count),
            }

    def _planes_per_prediction(self) -> int:
        raise NotImplementedError

    def statistics_line(self, stats: dict[str, float] | None = None) -> str:
        """Darknet's per-pass line for `stats` (default: this layer's last pass); also fine for statistics
        averaged over the passes of an iteration (count is then printed rounded)."""
        raise NotImplementedError

    # ---- decoding ------------------------------------------------------------------------------------------
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


def _anchor_array(config: YoloConfig | RegionConfig) -> np.ndarray:
    """The `num` (w, h) anchor pairs of a [yolo] or [region] section as float32, as Darknet stores them;
    0.5 each (Darknet's default biases) when the section has no `anchors`."""
    if config.anchors is None:
        return np.full(2 * config.num, 0.5, dtype=FLOAT)
    if len(config.anchors) != 2 * config.num:
        raise config.error(f"anchors has {len(config.anchors)} values, but num={config.num} needs "
                           f"{2 * config.num} (a width,height pair per anchor)", "anchors")
    return np.asarray(config.anchors, dtype=FLOAT)


def _thresholded(scores: np.ndarray, thresh: np.float32) -> np.ndarray:
    return np.where(scores > thresh, scores, FLOAT(0.0)).astype(FLOAT)


# ------------------------------------------------------------------------------------------- [yolo]

@dataclass(frozen=True)
class YoloConfig(HeadConfig):
    classes: int = option(20, minimum=1)
    num: int = option(1, minimum=1)                      # total anchors; `mask` picks this layer's
    mask: tuple[int, ...] | None = option(None)
    anchors: tuple[float, ...] | None = option(None)     # w,h pairs in network-input pixels
    ignore_thresh: float = option(0.5)
    truth_thresh: float = option(1.0)
    map: str | None = option(None)                       # class remapping file (refused in training)
    # AlexeyAB (spec §12.1.8)
    scale_x_y: float = option(1.0)
    new_coords: bool = option(False)                     # Scaled-YOLOv4: w = (2σ)²·anchor, input pre-activated
    nms_kind: str = option("default", choices=NMS_KINDS)  # NMS used by its detector
    beta_nms: float = option(0.6)                        # DIoU exponent for nms_kind=diounms
    iou_loss: str = option("mse", choices=tuple(IOU_LOSSES))
    iou_normalizer: float = option(0.75)
    cls_normalizer: float = option(1.0)
    obj_normalizer: float = option(1.0)
    iou_thresh: float = option(1.0)                      # 1: off; else also train other anchors this close
    iou_thresh_kind: str = option("iou", choices=("iou", "giou", "diou", "ciou"))
    max_delta: float = option(FLT_MAX, minimum=0.0)
    label_smooth_eps: float = option(0.0, minimum=0.0, maximum=1.0)
    focal_loss: bool = option(False)


@register
class Yolo(DetectionHead):
    kind = "yolo"
    Config = YoloConfig

    def __init__(self, config: YoloConfig, index: int):
        super().__init__(config, index)
        self.mask = config.mask if config.mask is not None else tuple(range(config.num))
        for m in self.mask:
            if not 0 <= m < config.num:
                raise config.error(f"mask entry {m} is not an anchor index: num={config.num} anchors "
                                   f"are numbered 0..{config.num - 1}", "mask")
        self.anchors = _anchor_array(config)
        self._mask_array = np.asarray(self.mask, dtype=np.int64)
        self.scale_alpha = FLOAT(config.scale_x_y)
        # C computes -0.5*(scale - 1) in double and passes it as a float argument
        self.scale_beta = FLOAT(-0.5 * (float(self.scale_alpha) - 1.0))
        written = config.origin.key_lines if config.origin is not None else {}
        #: AlexeyAB's training rules when the section sets a key only AlexeyAB knows (module constants)
        self.alexeyab_rules = any(key in written for key in _ALEXEYAB_YOLO_KEYS)

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

    def _boxes_read(self) -> int:
        return min(self.config.max, self.truth_boxes)

    def forward(self, xs, train):
        cfg = self.config
        kernels.yolo_forward(xs[0], self.output, cfg.classes, self.scale_alpha, self.scale_beta,
                             int(cfg.new_coords))
        truth = self._take_truth(train)
        if truth is None:
            return self.output
        if cfg.map is not None:
            raise cfg.unsupported("training with map= (class remapping) is not supported yet", "map")
        batch, _, height, width = self.output.shape
        shape = (batch, self.n, 5 + cfg.classes, height * width)
        kernels.yolo_loss(
            self.output.reshape(shape), truth, self.delta.reshape(shape), width, height, self.anchors,
            self._mask_array, self.net.width, self.net.height, cfg.classes, self._boxes_read(),
            FLOAT(cfg.ignore_thresh), FLOAT(cfg.truth_thresh), self.alexeyab_rules, IOU_LOSSES[cfg.iou_loss],
            FLOAT(cfg.iou_normalizer), FLOAT(cfg.cls_normalizer), FLOAT(cfg.obj_normalizer),
            FLOAT(cfg.iou_thresh), IOU_LOSSES[cfg.iou_thresh_kind], FLOAT(cfg.max_delta),
            FLOAT(cfg.label_smooth_eps), cfg.focal_loss, cfg.new_coords, self._stats)
        self._store_loss()
        return self.output

    def _planes_per_prediction(self) -> int:
        return 5 + self.config.classes

    def statistics_line(self, stats=None):
        s = self.statistics() if stats is None else stats
        if not s:
            return ""
        f = _format_stat
        return (f"Region {self.index} Avg IOU: {f(s['avg_iou'])}, Class: {f(s['class'])}, Obj: {f(s['obj'])}, "
                f"No Obj: {f(s['no_obj'])}, .5R: {f(s['recall50'])}, .75R: {f(s['recall75'])},  "
                f"count: {round(s['count']):d}")

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
class RegionConfig(HeadConfig):
    coords: int = option(4, minimum=4)
    classes: int = option(20, minimum=1)
    num: int = option(1, minimum=1)
    softmax: bool = option(False)
    background: bool = option(False)
    anchors: tuple[float, ...] | None = option(None)     # w,h pairs in grid cells
    tree: str | None = option(None)
    map: str | None = option(None)                       # class remapping file (refused in training)
    max: int = option(30, minimum=0)
    thresh: float = option(0.5)                          # region's ignore threshold
    rescore: bool = option(False)
    bias_match: bool = option(False)
    coord_scale: float = option(1.0)
    object_scale: float = option(1.0)
    noobject_scale: float = option(1.0)
    class_scale: float = option(1.0)


@register
class Region(DetectionHead):
    """YOLOv2. Training follows forward_region_layer and the GPU build's backward (σ' on tx, ty and the
    objectness, spec §12.2.6): Darknet's CPU build has no region backward at all (README)."""
    kind = "region"
    Config = RegionConfig
    truth_boxes = 30

    def __init__(self, config: RegionConfig, index: int):
        super().__init__(config, index)
        self.anchors = _anchor_array(config)
        self._total_delta: np.ndarray | None = None

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
            raise self.config.unsupported("tree= (YOLO9000's hierarchical softmax) is not supported yet", "tree")

    def forward(self, xs, train):
        cfg = self.config
        self._refuse_tree()
        kernels.region_forward(xs[0], self.output, cfg.num, cfg.classes, cfg.coords, int(cfg.background),
                               int(cfg.softmax))
        truth = self._take_truth(train)
        if truth is None:
            return self.output
        if cfg.map is not None:
            raise cfg.unsupported("training with map= (class remapping) is not supported yet", "map")
        if cfg.coords > 4:
            raise cfg.unsupported("training [region] with coords > 4 (mask coefficients) is not supported "
                                    "yet", "coords")
        kernels.region_loss(
            self._planes(self.output), truth, self._planes(self.delta), self.output.shape[3],
            self.output.shape[2], self.anchors, cfg.classes, cfg.coords, self.seen, FLOAT(cfg.thresh),
            FLOAT(cfg.coord_scale), FLOAT(cfg.object_scale), FLOAT(cfg.noobject_scale), FLOAT(cfg.class_scale),
            cfg.rescore, cfg.bias_match, cfg.softmax, cfg.background, self._stats)
        self._store_loss()
        return self.output

    def _planes(self, array: np.ndarray) -> np.ndarray:
        batch, _, height, width = array.shape
        return array.reshape(batch, self.config.num, self.planes_per_anchor, height * width)

    def _add_input_gradient(self, dy, dx):
        """The GPU build's backward_region_layer: Darknet's delta (loss delta plus what later layers added,
        i.e. minus their dL/d(output)) times σ' on tx, ty and the objectness, added to the input's delta;
        the kernel subtracts it, which is dL/dx."""
        if not self._has_loss:
            dx += dy
            return
        if self._total_delta is None or self._total_delta.shape != self.delta.shape:
            self._total_delta = np.empty_like(self.delta)
        np.subtract(self.delta, dy, out=self._total_delta)
        kernels.region_input_gradient(self._planes(self.output), self._planes(self._total_delta),
                                     self._planes(dx), self.config.coords, self.config.background)

    def _planes_per_prediction(self) -> int:
        return self.planes_per_anchor

    def statistics_line(self, stats=None):
        s = self.statistics() if stats is None else stats
        if not s:
            return ""
        f = _format_stat
        return (f"Region Avg IOU: {f(s['avg_iou'])}, Class: {f(s['class'])}, Obj: {f(s['obj'])}, "
                f"No Obj: {f(s['no_obj'])}, Avg Recall: {f(s['recall50'])},  count: {round(s['count']):d}")

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
class DetectionConfig(HeadConfig):
    coords: int = option(1, minimum=1)
    classes: int = option(1, minimum=1)
    num: int = option(1, minimum=1)
    side: int = option(7, minimum=1)
    softmax: bool = option(False)
    sqrt: bool = option(False)


@register
class DetectionLayer(DetectionHead):
    """YOLOv1. Its output is flat: [side² × classes] class probabilities, [side² × num] confidences, then
    side² × num boxes of 4 values (Darknet decodes with a stride of 4 whatever `coords` says). Inference
    only: a training pass is refused at this layer's section."""
    kind = "detection"
    Config = DetectionConfig

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

    def _refuse_training(self) -> UnsupportedError:
        return self.config.unsupported(f"training [detection] (YOLOv1) layers is not supported yet (layer "
                                         f"{self.index}); YOLOv2 [region] and YOLOv3/v4 [yolo] heads train")

    def truth_size(self) -> int:
        # only a training setup asks: refuse there, before any data is loaded
        raise self._refuse_training()

    def forward(self, xs, train):
        cfg = self.config
        if train and self._truth is not None:
            raise self._refuse_training()
        self._truth = None
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
