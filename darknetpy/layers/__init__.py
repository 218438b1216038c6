"""Layer families, one module each; importing them fills the section-name registry."""
from __future__ import annotations

from . import (activation, batchnorm, connected, convolutional, crop, deconvolutional, detection, dropout,  # noqa: F401
               local, local_avgpool, normalization, pooling, recurrent, resampling, routing, softmax)
from .base import Layer, LayerConfig, Param, Shape
from .registry import REGISTRY, layer_class, register

__all__ = ["Layer", "LayerConfig", "Param", "Shape", "REGISTRY", "layer_class", "register"]
