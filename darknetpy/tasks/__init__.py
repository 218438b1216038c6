"""Training tasks, chosen from the network's head (see tasks/base.py for what a task provides).

A task module lives at the path TASK_MODULES names and defines `TASK`, its Task subclass; it is imported
only when a network needs it. Adding a kind of head = one module and, for a new name, one entry here.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..errors import UnsupportedError
from ..layers.base import LossLayer
from ..layers.detection import DetectionHead

if TYPE_CHECKING:
    from ..network import Network
    from .base import Task

TASK_MODULES = {
    "classification": "darknetpy.tasks.classification",
    "detection": "darknetpy.tasks.detection",
    "segmentation": "darknetpy.tasks.segmentation",
}


def task_name_for(network: Network) -> str:
    """detection for a network ending in [yolo]/[region]/[detection] heads, segmentation for one whose loss
    is a map over pixels (LossLayer.pixelwise), classification otherwise."""
    head = network.output_layer
    if isinstance(head, DetectionHead):
        return "detection"
    if isinstance(head, LossLayer) and head.pixelwise():
        return "segmentation"
    return "classification"


def task_for(network: Network) -> type[Task]:
    """The Task class that trains and validates this network; a located error (at the head's section) when
    that task is not available."""
    name = task_name_for(network)
    module_name = TASK_MODULES[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        head = network.output_layer
        err = head.config.error(f"training and validating {name} networks (last layer {head.index} "
                                f"[{head.kind}]) is not supported yet")
        raise UnsupportedError(err.message, err.path, err.line) from None
    return module.TASK
