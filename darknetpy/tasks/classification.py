"""Classification: Darknet's `classifier train` and `classifier valid` (spec §6.4, §7.2, §8.1).

Truth rows are one-hot (several ones when several labels occur in a path) over the .data `classes`; the
metric is top-1 and top-k on the `valid` list, centre-cropped.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data import DEFAULT_CLASSES, ClassificationDataset
from ..errors import DataError
from .base import Evaluation, Task, where


@dataclass
class ClassificationEvaluation(Evaluation):
    images: int
    top1: float
    topk: float
    k: int
    confusion: np.ndarray
    labels: list[str]

    def metrics(self) -> dict[str, float]:
        return {"top1": self.top1, "topk": self.topk}

    def line(self) -> str:
        return f"top 1: {self.top1:f}, top {self.k}: {self.topk:f}  ({self.images} images)"

    def as_dict(self) -> dict:
        return {"images": self.images, "top1": self.top1, "topk": self.topk, "k": self.k,
                "labels": self.labels, "confusion": self.confusion.tolist()}


class ClassificationTask(Task):
    name = "classification"
    metric_names = ("top1", "topk")

    def __init__(self, model, data_config):
        super().__init__(model, data_config)
        self._valid: ClassificationDataset | None = None

    def dataset(self, train: bool, seed: int | None = None) -> ClassificationDataset:
        if not train and self._valid is not None:
            return self._valid
        dataset = ClassificationDataset(self.data_config, self.network.net, train=train, seed=seed)
        if not train:
            self._valid = dataset
        return dataset

    def check_data(self) -> None:
        """The .data class count must be the length of every loss layer's truth (its outputs)."""
        super().check_data()
        data = self.data_config
        classes = data.classes if data.classes is not None else DEFAULT_CLASSES
        for layer in self.network.loss_layers:
            if layer.truth_size() == classes:
                continue
            outputs = f"layer {layer.index} [{layer.kind}] ({where(layer)}) has {layer.truth_size()} outputs"
            if data.classes is None:
                raise DataError(f"no classes= line, so Darknet's default of {DEFAULT_CLASSES} classes, but "
                                f"the network's {outputs}; add classes={layer.truth_size()}", data.path)
            raise DataError(f"classes={classes}, but the network's {outputs}", data.path,
                            data.lines.get("classes"))

    def evaluate(self, top: int | None = None, batch: int = 64, progress=None) -> ClassificationEvaluation:
        """Classifier `valid`: centre crop (spec §8.1), class = first label found in the path, top-1/top-k."""
        dataset = self.dataset(train=False, seed=0)
        k = top or self.data_config.top or 1
        classes = dataset.classes
        confusion = np.zeros((classes, classes), np.int64)
        hits1 = hitsk = counted = 0
        for start in range(0, len(dataset), batch):
            indices = range(start, min(start + batch, len(dataset)))
            xs = np.stack([dataset.load(i)[0] for i in indices])
            probs = self.network.infer(xs).reshape(len(xs), -1)
            for row, i in enumerate(indices):
                truth = int(dataset.class_indices[i])
                if truth < 0:
                    continue
                ranking = np.argsort(-probs[row], kind="stable")
                counted += 1
                hits1 += int(ranking[0] == truth)
                hitsk += int(truth in ranking[:k])
                if ranking[0] < classes:
                    confusion[truth, ranking[0]] += 1
            if progress is not None:
                progress(indices.stop, len(dataset))
        if counted == 0:
            raise DataError("no image in the valid list has a label in its path", dataset.list_path)
        return ClassificationEvaluation(counted, hits1 / counted, hitsk / counted, k, confusion,
                                        list(dataset.labels))


TASK = ClassificationTask
