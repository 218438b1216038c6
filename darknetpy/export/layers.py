"""ONNX nodes per Darknet layer family, keyed by layer class.

An exporter gets the graph, the built layer (its parameters as loaded) and the names of its input tensors,
and returns its output tensor. Every tensor is (batch, c, h, w) as darknetpy holds the layer's output; a
flat output (softmax, a route of unequal sizes...) is (batch, n, 1, 1). Exporters compute exactly what the
layer's inference forward computes (see each layer module for Darknet's quirks); a layer or option ONNX
cannot express raises the layer's located CfgError.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..layers.activation import Activation
from ..layers.base import Layer, Shape
from ..layers.batchnorm import BatchNorm
from ..layers.connected import Connected
from ..layers.convolutional import Convolutional
from ..layers.crop import Crop
from ..layers.deconvolutional import Deconvolutional
from ..layers.detection import DetectionLayer, Region, Yolo
from ..layers.dropout import Dropout
from ..layers.local import Local
from ..layers.local_avgpool import LocalAvgpool
from ..layers.normalization import L2Norm, Normalization
from ..layers.pooling import Avgpool, Maxpool
from ..layers.resampling import Reorg, Upsample
from ..layers.routing import Route, Shortcut
from ..layers.softmax import Cost, Logistic, Softmax
from ..kernels.normalization import lrn_coefficients
from .activations import activate
from .graph import NEG_FLT_MAX, Graph

Exporter = Callable[[Graph, Layer, list[str]], str]


class LayerExport:
    """How one layer class becomes nodes: the tensor name prefix (`conv` -> conv_12) and the builder."""

    def __init__(self, prefix: str, build: Exporter):
        self.prefix = prefix
        self.build = build


EXPORTERS: dict[type, LayerExport] = {}


def exports(layer_class: type, prefix: str):
    def register(build: Exporter) -> Exporter:
        EXPORTERS[layer_class] = LayerExport(prefix, build)
        return build
    return register


def exporter_for(layer: Layer) -> LayerExport:
    try:
        return EXPORTERS[type(layer)]
    except KeyError:
        raise layer.config.error(f"[{layer.kind}] cannot be exported to ONNX") from None


def tensor_dims(shape: Shape) -> tuple[int, int, int]:
    return shape.c, shape.h, shape.w


def _to_shape(g: Graph, x: str, shape: Shape) -> str:
    return g.reshape(x, [0, *tensor_dims(shape)])


def _flat(g: Graph, x: str) -> str:
    return g.op("Flatten", [x], axis=1)


def _channels(values: np.ndarray) -> np.ndarray:
    """A per-channel vector shaped to broadcast over (batch, c, h, w)."""
    return np.asarray(values, np.float32).reshape(1, -1, 1, 1)


# ------------------------------------------------------------------------------------ weighted layers

def _folded(layer, weights: np.ndarray, out_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(weights, bias) with the layer's inference batch norm folded in. Darknet normalises with
    (x - mean) / (sqrt(var) + 1e-6) (epsilon on the standard deviation, spec §4.2), which ONNX's
    BatchNormalization (epsilon on the variance) cannot state exactly; BatchNormBlock.fold is that rule."""
    if layer.bn is None:
        return weights, layer.biases
    a, b = layer.bn.fold(layer.biases)
    shape = [1] * weights.ndim
    shape[out_axis] = -1
    return weights * a.reshape(shape), b


@exports(Convolutional, "conv")
def convolutional(g: Graph, layer: Convolutional, xs: list[str]) -> str:
    cfg = layer.config
    weights, bias = _folded(layer, layer.weights, 0)
    pad = cfg.effective_padding
    y = g.op("Conv", [xs[0], g.const(weights, "weights"), g.const(bias, "bias")], "Conv",
             kernel_shape=[cfg.size, cfg.size], strides=list(cfg.strides), pads=[pad] * 4,
             dilations=[cfg.dilation] * 2, group=cfg.groups)
    return activate(g, y, layer.activation)


@exports(Deconvolutional, "deconv")
def deconvolutional(g: Graph, layer: Deconvolutional, xs: list[str]) -> str:
    cfg = layer.config
    weights, bias = _folded(layer, layer.weights, 1)   # (in channels, filters, k, k)
    pad = cfg.effective_padding
    y = g.op("ConvTranspose", [xs[0], g.const(weights, "weights"), g.const(bias, "bias")], "ConvTranspose",
             kernel_shape=[cfg.size, cfg.size], strides=[cfg.stride] * 2, pads=[pad] * 4)
    return activate(g, y, layer.activation)


@exports(Connected, "connected")
def connected(g: Graph, layer: Connected, xs: list[str]) -> str:
    weights, bias = _folded(layer, layer.weights, 0)    # (outputs, inputs)
    y = g.op("Gemm", [_flat(g, xs[0]), g.const(weights, "weights"), g.const(bias, "bias")], "Gemm", transB=1)
    y = activate(g, y, layer.activation)
    return _to_shape(g, y, layer.out_shape)


@exports(Local, "local")
def local(g: Graph, layer: Local, xs: list[str]) -> str:
    """An unshared convolution: the im2col patches (strided slices of the zero-padded input, in im2col's
    row order c, ky, kx) times one filter bank per output location, as a batched MatMul over locations."""
    cfg = layer.config
    x_shape, out = layer.in_shapes[0], layer.out_shape
    size, stride, pad = cfg.size, cfg.stride, cfg.pad
    x = xs[0]
    if pad:
        x = g.op("Pad", [x, g.ints([0, 0, pad, pad, 0, 0, pad, pad], "pads")], "Pad")
    taps = []
    for ky in range(size):
        for kx in range(size):
            tap = g.slice(x, [ky, kx], [ky + (out.h - 1) * stride + 1, kx + (out.w - 1) * stride + 1], [2, 3],
                          [stride, stride], f"tap_{ky}_{kx}")
            taps.append(g.unsqueeze(tap, [2], f"tap_{ky}_{kx}/Unsqueeze"))
    patches = g.op("Concat", taps, "patches", axis=2)                  # (B, C, k*k, oh, ow)
    locations = out.h * out.w
    columns = g.reshape(patches, [0, x_shape.c * size * size, locations], "columns")   # (B, K, L)
    columns = g.op("Transpose", [columns], "columns/Transpose", perm=[2, 0, 1])        # (L, B, K)
    banks = np.ascontiguousarray(layer.weights.transpose(0, 2, 1))                      # (L, K, F)
    y = g.op("MatMul", [columns, g.const(banks, "weights")], "MatMul")                  # (L, B, F)
    y = g.op("Transpose", [y], "Transpose", perm=[1, 2, 0])                             # (B, F, L)
    y = g.reshape(y, [0, out.c, out.h, out.w])
    y = g.op("Add", [y, g.const(layer.biases[None], "bias")], "Add")
    return activate(g, y, layer.activation)


@exports(BatchNorm, "batchnorm")
def batchnorm(g: Graph, layer: BatchNorm, xs: list[str]) -> str:
    a, b = layer.bn.fold(layer.biases)
    return g.scale_shift(xs[0], _channels(a), _channels(b), "bn")


# ------------------------------------------------------------------------------------------ pooling

def _window_pads(size: int, strides: tuple[int, int], origin: int, in_hw: tuple[int, int],
                 out_hw: tuple[int, int]) -> tuple[list[int], list[int]]:
    """Darknet's asymmetric pooling geometry as ONNX pads (top, left, bottom, right) plus any rows and
    columns to cut off afterwards: window o starts at origin + o*stride, and the padding ends where the
    last window ends (Darknet never reads beyond it)."""
    begin = -origin
    ends = [(o - 1) * s + size - n - begin for o, s, n in zip(out_hw, strides, in_hw)]
    return [begin, begin, max(ends[0], 0), max(ends[1], 0)], ends


def _crop_to(g: Graph, y: str, out: Shape, ends: list[int]) -> str:
    if min(ends) >= 0:
        return y
    # the input reaches past the last window: the pooling made extra outputs there
    return g.slice(y, [0, 0], [out.h, out.w], [2, 3], suffix="crop")


@exports(Maxpool, "maxpool")
def maxpool(g: Graph, layer: Maxpool, xs: list[str]) -> str:
    """Darknet pads with -FLT_MAX (not -inf: a window of padding only yields -FLT_MAX), so the padding is
    an explicit Pad and the MaxPool itself pads nothing."""
    cfg = layer.config
    x, out = layer.in_shapes[0], layer.out_shape
    (top, left, bottom, right), ends = _window_pads(cfg.window, cfg.strides, cfg.origin_offset, (x.h, x.w),
                                                    (out.h, out.w))
    source = xs[0]
    if top or left or bottom or right:
        source = g.op("Pad", [source, g.ints([0, 0, top, left, 0, 0, bottom, right], "pads"),
                              g.const(NEG_FLT_MAX, "fill")], "Pad", mode="constant")
    y = g.op("MaxPool", [source], "MaxPool", kernel_shape=[cfg.window] * 2, strides=list(cfg.strides))
    return _crop_to(g, y, out, ends)


@exports(Avgpool, "avgpool")
def avgpool(g: Graph, layer: Avgpool, xs: list[str]) -> str:
    return g.op("GlobalAveragePool", [xs[0]], "GlobalAveragePool")


@exports(LocalAvgpool, "local_avgpool")
def local_avgpool(g: Graph, layer: LocalAvgpool, xs: list[str]) -> str:
    """AlexeyAB's windowed average: the taps inside the image only, i.e. count_include_pad=0."""
    cfg = layer.config
    x, out = layer.in_shapes[0], layer.out_shape
    pads, ends = _window_pads(cfg.window, cfg.strides, cfg.origin_offset, (x.h, x.w), (out.h, out.w))
    y = g.op("AveragePool", [xs[0]], "AveragePool", kernel_shape=[cfg.window] * 2, strides=list(cfg.strides),
             pads=pads, count_include_pad=0)
    return _crop_to(g, y, out, ends)


# ------------------------------------------------------------------------------------------ routing

@exports(Route, "route")
def route(g: Graph, layer: Route, xs: list[str]) -> str:
    groups, group_id = layer.config.groups, layer.config.group_id
    out = layer.out_shape
    if out.image:
        # equal spatial sizes: the per-item slice of each input is a channel slice
        parts = []
        for x, shape in zip(xs, layer.in_shapes):
            part = shape.c // groups
            parts.append(x if groups == 1 else g.slice(x, [part * group_id], [part * (group_id + 1)], [1]))
        return parts[0] if len(parts) == 1 else g.op("Concat", parts, "Concat", axis=1)
    parts = []
    for x, (_, start, length) in zip(xs, layer._slices()):
        flat = _flat(g, x)
        parts.append(flat if groups == 1 else g.slice(flat, [start], [start + length], [1]))
    joined = parts[0] if len(parts) == 1 else g.op("Concat", parts, "Concat", axis=1)
    return _to_shape(g, joined, out)


@exports(Shortcut, "shortcut")
def shortcut(g: Graph, layer: Shortcut, xs: list[str]) -> str:
    """out = prev, and alpha*prev + beta*add where Darknet's mismatch rule (kernels/routing.py) pairs an
    output element with an element of the added layer: those elements of `add` are gathered by a strided
    slice, spread onto their output positions with zeros between and around them, and added."""
    prev_shape, add_shape = layer.in_shapes
    prev, add = xs
    alpha, beta = float(layer.alpha), float(layer.beta)
    if prev_shape == add_shape:
        y = g.op("Add", [g.scale_shift(prev, alpha, 0.0, "prev"), g.scale_shift(add, beta, 0.0, "from")], "Add")
        return activate(g, y, layer.activation)
    stride = max(add_shape.w // prev_shape.w, 1)
    sample = max(prev_shape.w // add_shape.w, 1)
    mc, mh, mw = (min(prev_shape.c, add_shape.c), min(prev_shape.h, add_shape.h), min(prev_shape.w, add_shape.w))
    picked = g.slice(add, [0, 0, 0], [mc, (mh - 1) * stride + 1, (mw - 1) * stride + 1], [1, 2, 3],
                     [1, stride, stride], "picked")
    picked = g.scale_shift(picked, beta, 0.0, "from")
    if sample > 1:
        spread = g.reshape(picked, [0, mc, mh, 1, mw, 1], "spread")
        spread = g.op("Pad", [spread, g.ints([0, 0, 0, 0, 0, 0, 0, 0, 0, sample - 1, 0, sample - 1], "pads")],
                      "spread/Pad")
        picked = g.reshape(spread, [0, mc, mh * sample, mw * sample], "spread/Reshape")
    rest = [prev_shape.c - mc, prev_shape.h - mh * sample, prev_shape.w - mw * sample]
    if any(r > 0 for r in rest):
        picked = g.op("Pad", [picked, g.ints([0, 0, 0, 0, 0, *(max(r, 0) for r in rest)], "pads")], "Pad")
    if any(r < 0 for r in rest):
        picked = g.slice(picked, [0, 0, 0], list(tensor_dims(prev_shape)), [1, 2, 3], suffix="fit")
    if alpha != 1.0:
        mixed = np.ones(tensor_dims(prev_shape), np.float32)
        mixed[:mc, 0:mh * sample:sample, 0:mw * sample:sample] = np.float32(alpha)
        prev = g.op("Mul", [prev, g.const(mixed[None], "alpha")], "prev/Mul")
    y = g.op("Add", [prev, picked], "Add")
    return activate(g, y, layer.activation)


# ---------------------------------------------------------------------------------------- resampling

@exports(Upsample, "upsample")
def upsample(g: Graph, layer: Upsample, xs: list[str]) -> str:
    s = layer.factor
    if layer.downsample:
        x = layer.in_shapes[0]
        blocks = g.reshape(xs[0], [0, x.c, x.h // s, s, x.w // s, s], "blocks")
        y = g.reduce_sum(blocks, [3, 5], keepdims=False)
    else:
        y = g.op("Resize", [xs[0], "", g.const(np.array([1, 1, s, s], np.float32), "scales")], "Resize",
                 mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    return g.scale_shift(y, float(layer.scale), 0.0, "scale")


@exports(Reorg, "reorg")
def reorg(g: Graph, layer: Reorg, xs: list[str]) -> str:
    """Darknet's reorg reads the (C, H, W) buffer as (C/s², H·s, W·s): as a transpose of 6-D views,
    in = (C/s², H, s, W, s)[c2, j, dy, i, dx] <-> out = (s, s, C/s², H, W)[dy, dx, c2, j, i] with (C, H, W)
    the input's shape (the larger-channel side when reversing)."""
    cfg = layer.config
    x = layer.in_shapes[0]
    out = layer.out_shape
    c, h, w = tensor_dims(x)
    if cfg.flatten:
        perm_from = (c, h * w) if not cfg.reverse else (h * w, c)
        y = g.op("Transpose", [g.reshape(xs[0], [0, *perm_from])], "Transpose", perm=[0, 2, 1])
        return _to_shape(g, y, out)
    if cfg.extra:
        flat = _flat(g, xs[0])
        y = g.op("Pad", [flat, g.ints([0, 0, 0, cfg.extra], "pads")], "Pad")
        return _to_shape(g, y, out)
    s = cfg.stride
    c2 = c // (s * s)
    if cfg.reverse:
        view = g.reshape(xs[0], [0, s, s, c2, h, w], "view")
        y = g.op("Transpose", [view], "Transpose", perm=[0, 3, 4, 1, 5, 2])
    else:
        view = g.reshape(xs[0], [0, c2, h, s, w, s], "view")
        y = g.op("Transpose", [view], "Transpose", perm=[0, 3, 5, 1, 2, 4])
    return _to_shape(g, y, out)


@exports(Crop, "crop")
def crop(g: Graph, layer: Crop, xs: list[str]) -> str:
    """The centred window of inference, mapped x*2 - 1 (unless noadjust)."""
    x, out = layer.in_shapes[0], layer.out_shape
    dh, dw = (x.h - out.h) // 2, (x.w - out.w) // 2
    y = g.slice(xs[0], [dh, dw], [dh + out.h, dw + out.w], [2, 3])
    return g.scale_shift(y, float(layer.scale), float(layer.shift), "adjust")


@exports(Dropout, "dropout")
def dropout(g: Graph, layer: Dropout, xs: list[str]) -> str:
    return xs[0]   # the identity at inference


# ------------------------------------------------------------------------------- element-wise layers

@exports(Activation, "activation")
def activation(g: Graph, layer: Activation, xs: list[str]) -> str:
    return activate(g, xs[0], layer.activation)


@exports(Logistic, "logistic")
def logistic(g: Graph, layer: Logistic, xs: list[str]) -> str:
    return _to_shape(g, g.op("Sigmoid", [xs[0]]), layer.out_shape)


@exports(Cost, "cost")
def cost(g: Graph, layer: Cost, xs: list[str]) -> str:
    return _to_shape(g, xs[0], layer.out_shape)   # transparent at inference (see layers/softmax.py)


@exports(Softmax, "softmax")
def softmax(g: Graph, layer: Softmax, xs: list[str]) -> str:
    cfg = layer.config
    if cfg.tree is not None:
        raise cfg.error("tree= (hierarchical softmax) cannot be exported to ONNX", "tree")
    if cfg.spatial:   # per pixel, over the channels
        rows, axis = xs[0], 1
    else:             # over each of `groups` contiguous chunks of the flattened input
        n = layer.out_shape.size
        rows, axis = g.reshape(xs[0], [0, cfg.groups, n // cfg.groups], "groups"), -1
    if cfg.temperature != 1.0:
        rows = g.op("Div", [rows, g.const(np.float32(cfg.temperature), "temperature")], "temperature")
    y = g.op("Softmax", [rows], "Softmax", axis=axis)
    return y if cfg.spatial else _to_shape(g, y, layer.out_shape)


@exports(L2Norm, "l2norm")
def l2norm(g: Graph, layer: L2Norm, xs: list[str]) -> str:
    x = xs[0]
    norm = g.op("Sqrt", [g.reduce_sum(g.op("Mul", [x, x], "square"), [1], keepdims=True)], "norm")
    return g.op("Div", [x, norm], "Div")


@exports(Normalization, "lrn")
def normalization(g: Graph, layer: Normalization, xs: list[str]) -> str:
    """Darknet's LRN recurrence is a fixed linear map of the squares (kernels/normalization.py):
    norm = kappa + alpha * coef @ x² over channels, a 1x1 convolution; y = x * norm^-beta."""
    x = xs[0]
    c = layer.in_shapes[0].c
    coef = lrn_coefficients(c, layer.config.size).astype(np.float64) * float(layer.alpha)
    weights = coef.astype(np.float32).reshape(c, c, 1, 1)
    norm = g.op("Conv", [g.op("Mul", [x, x], "square"), g.const(weights, "window"),
                         g.const(np.full(c, layer.kappa, np.float32), "kappa")], "norm", kernel_shape=[1, 1])
    scale = g.op("Pow", [norm, g.const(np.float32(-float(layer.beta)), "exponent")], "Pow")
    return g.op("Mul", [x, scale], "Mul")


# ------------------------------------------------------------------------------------ detection heads

def _plane_mask(planes: int, count: int, chosen) -> np.ndarray:
    """(1, count*planes, 1, 1) booleans: which channels of `count` blocks of `planes` are chosen."""
    per_block = np.array([bool(chosen(p)) for p in range(planes)])
    return np.tile(per_block, count).reshape(1, -1, 1, 1)


def _logistic_planes(g: Graph, x: str, mask: np.ndarray) -> str:
    """The logistic on the channels `mask` selects, the others unchanged: sigmoid*m + x*(1 - m) with a 0/1
    constant m, exact for finite values (float masks, because OpenCV's importer refuses bool tensors)."""
    if not mask.any():
        return x
    if mask.all():
        return g.op("Sigmoid", [x])
    chosen = g.op("Mul", [g.op("Sigmoid", [x]), g.const(mask.astype(np.float32), "logistic_planes")],
                  "logistic")
    kept = g.op("Mul", [x, g.const((~mask).astype(np.float32), "raw_planes")], "raw")
    return g.op("Add", [chosen, kept], "planes")


@exports(Yolo, "yolo")
def yolo(g: Graph, layer: Yolo, xs: list[str]) -> str:
    cfg = layer.config
    planes = 5 + cfg.classes
    y = xs[0]
    if not cfg.new_coords:   # tw, th stay raw; new_coords activates nothing (the conv applied logistic)
        y = _logistic_planes(g, y, _plane_mask(planes, layer.n, lambda p: p not in (2, 3)))
    if layer.scale_alpha != 1 or layer.scale_beta != 0:
        xy = _plane_mask(planes, layer.n, lambda p: p < 2)
        scale = np.where(xy, layer.scale_alpha, np.float32(1)).astype(np.float32)
        shift = np.where(xy, layer.scale_beta, np.float32(0)).astype(np.float32)
        y = g.scale_shift(y, scale, shift, "scale_x_y")
    return y


@exports(Region, "region")
def region(g: Graph, layer: Region, xs: list[str]) -> str:
    cfg = layer.config
    if cfg.tree is not None:
        raise cfg.error("tree= (YOLO9000's hierarchical softmax) cannot be exported to ONNX", "tree")
    planes = layer.planes_per_anchor
    coords, background = cfg.coords, int(cfg.background)
    mask = _plane_mask(planes, cfg.num, lambda p: p < 2 or (p == coords and not background)
                       or (p > coords and not cfg.softmax))
    y = _logistic_planes(g, xs[0], mask)
    if not cfg.softmax:
        return y
    shape = layer.in_shapes[0]
    blocks = g.reshape(y, [0, cfg.num, planes, shape.h, shape.w], "anchors")
    first = coords + (1 - background)
    count = cfg.classes + background
    parts = []
    if first:
        parts.append(g.slice(blocks, [0], [first], [2], suffix="boxes"))
    # the class softmax reads the raw inputs, not the logistic ones
    raw_blocks = g.reshape(xs[0], [0, cfg.num, planes, shape.h, shape.w], "raw_anchors")
    classes = g.slice(raw_blocks, [first], [first + count], [2], suffix="classes")
    parts.append(g.op("Softmax", [classes], "Softmax", axis=2))
    if first + count < planes:
        parts.append(g.slice(blocks, [first + count], [planes], [2], suffix="rest"))
    joined = g.op("Concat", parts, "Concat", axis=2) if len(parts) > 1 else parts[0]
    return _to_shape(g, joined, layer.out_shape)


@exports(DetectionLayer, "detection")
def detection(g: Graph, layer: DetectionLayer, xs: list[str]) -> str:
    cfg = layer.config
    flat = _flat(g, xs[0])
    if not cfg.softmax:
        return _to_shape(g, flat, layer.out_shape)
    cells = cfg.side * cfg.side
    n = layer.out_shape.size
    classes = g.reshape(g.slice(flat, [0], [cells * cfg.classes], [1], suffix="classes"),
                        [0, cells, cfg.classes], "cells")
    probs = g.op("Flatten", [g.op("Softmax", [classes], "Softmax", axis=-1)], "probs", axis=1)
    rest = g.slice(flat, [cells * cfg.classes], [n], [1], suffix="boxes")
    return _to_shape(g, g.op("Concat", [probs, rest], "Concat", axis=1), layer.out_shape)
