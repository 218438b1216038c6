"""Detection: Darknet's `detector train` (spec §6.5, §7.8) on the shared loop, validated by mAP (spec §12.5).

* Data: detection_data.DetectionDataset — label files checked up front, augmentation as the cfg asks
  (pjreddie's jitter or AlexeyAB's crop, flip, colour, letter_box, mosaic), truth rows of the boxes the
  loss layers read (90 × [x, y, w, h, class] for [yolo], 30 for [region]).
* Printing: Darknet's `Loaded: %f seconds` (the time the trainer waited for the batch: ~0 when the loader
  keeps up; also metrics.csv's `loaded` column), its detector line `batch: loss, avg avg, rate rate,
  seconds seconds, images images`, then one `Region ...` line per head with its statistics averaged over
  the passes of the iteration (Darknet prints one per head per pass; `count` here is the iteration's
  total); the same figures are metrics.csv columns `<name>_<layer>` (e.g. avg_iou_16, recall50_23).
* Multi-scale (`random` on the last head): a new input size every 10 iterations (detection_augment.
  MultiScale), for the network and the loader. The size of a block of 10 iterations depends only on the
  seed and the block, so a resumed run trains at the sizes an uninterrupted one would have.
* Checkpoints: Darknet's detector rule (training.checkpoints.DetectorCheckpoints): <base>.backup every 100
  iterations, <base>_<i>.weights at i % 10000 == 0 and every 100 below 1000, <base>_final.weights at the end.
* Validation (`train --map`, `valid`): mAP@0.5 on the `valid` list (darknetpy.metrics.evaluate.measure_map,
  AlexeyAB's detector-map settings) at the cfg's input size; `<base>_best.weights` when it improves.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..detection_augment import DetectionAugmentSettings, MultiScale
from ..detection_data import DetectionDataset
from ..errors import DataError
from ..layers.detection import DetectionHead
from ..metrics.detection import MapResult
from ..metrics.evaluate import measure_map
from ..training.checkpoints import CheckpointPolicy, DetectorCheckpoints
from ..training.metrics import IterationRow
from .base import Evaluation, Task, where

#: the keys of DetectionHead.statistics(), in the order of Darknet's printed line
STATISTIC_KEYS = ("avg_iou", "class", "obj", "no_obj", "recall50", "recall75", "count")


@dataclass
class DetectionEvaluation(Evaluation):
    images: int
    result: MapResult

    def metrics(self) -> dict[str, float]:
        r = self.result
        return {"map50": r.map50, "map50_95": r.map50_95, "precision": r.precision, "recall": r.recall,
                "f1": r.f1, "avg_iou": r.avg_iou}

    def line(self) -> str:
        r = self.result
        return (f"mAP@{r.iou_thresh:.2f} = {r.map50:.4f}, mAP@[.5:.95] = {r.map50_95:.4f}; at thresh "
                f"{r.thresh:g}: precision = {r.precision:.2f}, recall = {r.recall:.2f}, F1 = {r.f1:.2f}, "
                f"average IoU = {r.avg_iou * 100:.2f}%  ({self.images} images)")

    def as_dict(self) -> dict:
        return {"images": self.images, **self.result.as_dict()}


def map_at_cfg_size(network, data_config, width: int, height: int, progress=None, keep=None) -> MapResult:
    """metrics.evaluate.measure_map at the cfg's input size: multi-scale training may have resized the
    network, which is put back afterwards."""
    size = network.net.width, network.net.height
    if size != (width, height):
        network.resize(width, height)
    try:
        # early in training some boxes decode to exp(huge) = inf: they just score nothing, as in Darknet
        with np.errstate(over="ignore", invalid="ignore"):
            return measure_map(network, data_config, progress=progress, keep=keep)
    finally:
        if (network.net.width, network.net.height) != size:
            network.resize(*size)


class DetectionTask(Task):
    name = "detection"
    metric_names = ("map50", "map50_95", "precision", "recall", "f1", "avg_iou")
    zero_max_batches_runs_forever = False   # Darknet's detector trains nothing when max_batches=0

    def __init__(self, model, data_config):
        super().__init__(model, data_config)
        self.heads: list[DetectionHead] = [layer for layer in self.network.loss_layers
                                           if isinstance(layer, DetectionHead)]
        # `loaded`: filled in by the training loop (the wait for the batch)
        self.statistic_names = ("loaded",) + tuple(f"{key}_{head.index}" for head in self.heads
                                                   for key in STATISTIC_KEYS)
        self.settings = DetectionAugmentSettings.from_network(self.network.net, self.head)
        self._valid: DetectionDataset | None = None
        self._multiscale: MultiScale | None = None
        self._seed = 0

    # ---- data -------------------------------------------------------------------------------------------------
    def check_data(self) -> None:
        """Every head must know the classes the labels use: the same count in each head, and in the .data."""
        super().check_data()
        last = self.head
        for head in self.heads:
            if head.classes != last.classes:
                raise head.config.error(f"[{head.kind}] layer {head.index} has classes={head.classes}, but the "
                                        f"last layer {last.index} ({where(last)}) has {last.classes}: every "
                                        f"head reads the same labels", "classes")
        data = self.data_config
        if data.classes is not None and data.classes != last.classes:
            raise DataError(f"classes={data.classes}, but the cfg's last layer {last.index} [{last.kind}] "
                            f"({where(last)}) has classes={last.classes}", data.path, data.lines.get("classes"))

    def dataset(self, train: bool, seed: int | None = None) -> DetectionDataset:
        if not train and self._valid is not None:
            return self._valid
        head = self.head
        dataset = DetectionDataset(self.data_config, self.settings, head.classes, train=train, seed=seed,
                                   batch_size=self.network.net.full_batch,
                                   head=f"the cfg's last layer {head.index} [{head.kind}] ({where(head)})")
        if train:
            self._seed = seed or 0
        else:
            self._valid = dataset
        return dataset

    # ---- printing -------------------------------------------------------------------------------------------
    def banner(self, dataset: DetectionDataset, base: str) -> list[str]:
        net = self.network.net
        s = self.settings
        if s.alexeyab:
            geometry = f"AlexeyAB crop jitter={s.jitter:g} resize={s.resize:g}"
            geometry += " letter_box" * s.letter_box + " mosaic" * s.mosaic
        else:
            geometry = f"pjreddie jitter={s.jitter:g}"
        return [base,
                f"Learning Rate: {net.learning_rate:g}, Momentum: {net.momentum:g}, Decay: {net.decay:g}",
                f"{len(dataset)} images, {len(dataset.labels.boxes)} boxes ({dataset.labels.missing} images "
                f"without a label file)",
                f"augmentation: {geometry}, hue={s.hue:g} saturation={s.saturation:g} exposure={s.exposure:g} "
                f"flip={int(s.flip)} random={s.random:g}"]

    def progress_line(self, row: IterationRow) -> str:
        lines = [f"Loaded: {row.statistics['loaded']:f} seconds"] if "loaded" in row.statistics else []
        lines += [f"{row.batch}: {row.loss:f}, {row.avg_loss:f} avg, {row.rate:f} rate, {row.seconds:f} seconds, "
                 f"{row.images} images"]
        for head in self.heads:
            stats = {key: row.statistics[f"{key}_{head.index}"] for key in STATISTIC_KEYS
                     if f"{key}_{head.index}" in row.statistics}
            if len(stats) == len(STATISTIC_KEYS):
                lines.append(head.statistics_line(stats))
        return "\n".join(lines)

    def iteration_statistics(self, per_layer: dict[int, dict[str, float]]) -> dict[str, float]:
        """Each head's figures averaged over the passes of the iteration, except `count`: the truths the
        head owned in the whole iteration (the per-pass mean times the passes)."""
        passes = self.network.net.subdivisions
        return {f"{key}_{index}": float(value) * (passes if key == "count" else 1)
                for index, stats in per_layer.items() for key, value in stats.items() if key in STATISTIC_KEYS}

    # ---- the loop's hooks -----------------------------------------------------------------------------------
    def before_iteration(self, context) -> None:
        """Multi-scale training: the size of this block of 10 iterations, drawn from (seed, block start)."""
        if self._multiscale is None:
            self._multiscale = MultiScale.from_settings(self.settings, context.max_batches)
            if self._multiscale is None:
                return
        scale = self._multiscale
        start = context.batch - context.batch % scale.every
        rng = np.random.default_rng(np.random.SeedSequence(self._seed, spawn_key=(start, 3)))
        size = scale.size_at(start, rng)
        if size is None or size == (context.network.net.width, context.network.net.height):
            return
        print(f"Resizing to {size[0]}x{size[1]}", file=context.out)
        context.network.resize(*size)
        context.loader.resize(*size)

    def checkpoint_policy(self, base: str, backup_every: int | None) -> CheckpointPolicy:
        return DetectorCheckpoints(base, backup_every)

    # ---- validation -------------------------------------------------------------------------------------------
    def evaluate(self, top: int | None = None, progress=None, keep=None) -> DetectionEvaluation:
        """mAP@0.5 (and COCO's mAP@[.5:.95]) on the .data `valid` list; `top` is not used. `keep`: see
        metrics.evaluate.measure_map (`valid --plots` draws from the detections)."""
        dataset = self.dataset(train=False, seed=0)   # checked once; measure_map reads the list itself
        result = map_at_cfg_size(self.network, self.data_config, self.settings.width, self.settings.height,
                                 progress, keep)
        return DetectionEvaluation(len(dataset), result)


TASK = DetectionTask
