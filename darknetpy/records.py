"""The JSON record of one image, per task: what `predict|detect|segment --json` print, one line per image, and
what a Dask batch (darknetpy.distributed.dask) streams. One function per task, shared by both, so the two
outputs cannot drift apart; `error_record` is the record of an image that could not be processed. Every
other record names its `"task"` (classification, detection, segmentation), as `predict` serves all three."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def classification_record(image: str, seconds: float, predictions, probabilities: bool = True) -> dict:
    """`predictions`: api.Prediction list, best first. Each value is a "probability" when the network ends
    in a softmax or logistic (api.Model.outputs_probabilities), else a raw "score", and `"output"` says
    which, so that no reader takes a score for a probability."""
    key = "probability" if probabilities else "score"
    return {"task": "classification", "image": image, "seconds": round(seconds, 6),
            "output": "probabilities" if probabilities else "scores", "predictions": [
                {"class_id": p.class_id, "name": p.name, key: p.probability} for p in predictions]}


def detection_record(image: str, seconds: float, detections) -> dict:
    """`detections`: detect.Detection list (after NMS and the threshold); boxes in pixels, rounded to 0.01."""
    return {"task": "detection", "image": image, "seconds": round(seconds, 6), "detections": [
        {"class_id": d.class_id, "name": d.name, "score": d.score, "box": [round(v, 2) for v in d.box_pixels]}
        for d in detections]}


def segmentation_record(image: str, classes_map: np.ndarray, names: Sequence[str]) -> dict:
    """`classes_map`: (H, W) class of every pixel; the record gives the size and each class's share."""
    from .segmentation import class_fractions
    height, width = classes_map.shape
    return {"task": "segmentation", "image": image, "width": width, "height": height,
            "classes": class_fractions(classes_map, names)}


def segmentation_names(model, names_source: str | None) -> list[str]:
    """Class names of a segmenter's records: the names file's first `classes` names (checked against the
    head), else the class numbers."""
    from .api import check_names
    from .segmentation import head_classes
    classes = head_classes(model.network)
    if model.names is None:
        return [str(c) for c in range(classes)]
    return check_names(model.names, classes, names_source)[:classes]


def error_record(image: str, error: BaseException) -> dict:
    return {"image": image, "error": str(error)}
