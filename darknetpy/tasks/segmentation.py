"""Segmentation: a network whose last layer predicts a class per pixel ([softmax] spatial=1 or [logistic] over
a map larger than 1x1, usually after a 1x1 convolution) trains from images and class-index masks
(darknetpy/segmentation_data.py) and is measured by pixel accuracy, per-class IoU and mIoU
(darknetpy/metrics/segmentation.py) on the .data `valid` list, at each image's own size as `darknetpy
segment` sees it. The main metric, the one `train --validate` charts and keeps the best weights for, is mIoU.

.data keys: `classes` (when given, it must be the head's class count: its channels, or 2 for a one-channel
logistic map), `train`, `valid`, `names` (one per class, e.g. background first), `backup`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..api import names_path_from_data, read_names
from ..errors import DataError
from ..images import resize_image
from ..metrics.segmentation import SegmentationScores, confusion_matrix, scores
from ..segmentation import argmax_classes, head_classes
from ..segmentation_data import OutputGeometry, SegmentationDataset
from .base import Evaluation, Task, where


@dataclass
class SegmentationEvaluation(Evaluation):
    images: int
    scores: SegmentationScores

    def metrics(self) -> dict[str, float]:
        return {"miou": self.scores.miou, "pixel_accuracy": self.scores.pixel_accuracy}

    def line(self) -> str:
        return self.scores.lines()[-1]

    def report(self) -> str:
        return "\n".join(self.scores.lines())

    def as_dict(self) -> dict:
        return {"images": self.images, **self.scores.as_dict()}


class SegmentationTask(Task):
    name = "segmentation"
    metric_names = ("miou", "pixel_accuracy")

    def __init__(self, model, data_config):
        super().__init__(model, data_config)
        self.classes = head_classes(self.network)
        self._valid: SegmentationDataset | None = None

    def check_data(self) -> None:
        super().check_data()
        data = self.data_config
        if data.classes is not None and data.classes != self.classes:
            head = self.head
            raise DataError(f"classes={data.classes}, but the network's last layer {head.index} [{head.kind}] "
                            f"({where(head)}) tells {self.classes} classes apart", data.path,
                            data.lines.get("classes"))

    def names(self) -> list[str]:
        """The .data names when it has them (checked against the class count), else the class numbers."""
        data = self.data_config
        if not (data.names or data.labels):
            return [str(c) for c in range(self.classes)]
        path = names_path_from_data(data.path)
        names = read_names(path)
        if len(names) < self.classes:
            raise DataError(f"{len(names)} names, but the segmenter tells {self.classes} classes apart", path)
        return names[:self.classes]

    def geometry(self) -> OutputGeometry:
        net = self.network.net
        out = self.head.in_shapes[0]
        return OutputGeometry(net.width / out.w, net.height / out.h)

    def dataset(self, train: bool, seed: int | None = None) -> SegmentationDataset:
        if not train and self._valid is not None:
            return self._valid
        dataset = SegmentationDataset(self.data_config, self.network.net, self.classes, self.geometry(),
                                      encoder=self.head.mask_encoder(), train=train, seed=seed)
        if not train:
            self._valid = dataset
        return dataset

    def evaluate(self, top: int | None = None, batch: int = 8, progress=None) -> SegmentationEvaluation:
        """Pixel accuracy and IoU over the `valid` list: each image stretched to the network, the class
        probabilities resized back to the image, argmax, compared with the mask (ignore pixels skipped)."""
        dataset = self.dataset(train=False)
        head = self.head
        confusion = np.zeros((self.classes, self.classes), np.int64)
        for start in range(0, len(dataset), batch):
            items = [dataset.load(i) for i in range(start, min(start + batch, len(dataset)))]
            output = self.network.infer(np.stack([image for image, _ in items]))
            probabilities = head.class_probabilities(output)
            for row, (_, mask) in enumerate(items):
                maps = np.ascontiguousarray(probabilities[row], dtype=np.float32)
                if maps.shape[1:] != mask.shape:
                    maps = resize_image(maps, mask.shape[1], mask.shape[0])
                confusion += confusion_matrix(mask, argmax_classes(maps), self.classes)
            if progress is not None:
                progress(start + len(items), len(dataset))
        return SegmentationEvaluation(len(dataset), scores(confusion, self.names(), len(dataset)))


TASK = SegmentationTask
