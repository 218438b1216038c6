"""Output layers that may carry a loss: [softmax] (spec §2.6), [cost] (§2.13) and [logistic] (§2.17).

Truth protocol: before a forward pass with targets the network calls `set_truth(truth)` ((B, outputs)
float32). A layer consumes the truth in that one forward pass, storing its cost (`self.cost`, None when no
truth was given) and its loss gradient for the backward pass.

Pixel-wise heads (segmentation): `[softmax] spatial=1` is a softmax over the channels of every pixel (Darknet's
GPU path) whose truth is one class index per pixel, (B, H*W) floats; `[logistic]` takes one target per value.
Both skip truth entries equal to IGNORE_INDEX (255): no loss, no gradient. Their losses are computed from the
logits, so saturated pixels stay finite. `class_probabilities` turns the head's output into per-class maps
and `mask_encoder` gives the (picklable) function that turns class-index masks into its truth rows, for the
segmentation task.

Gradients follow Darknet's choices, with the standard sign: softmax and logistic pass the incoming gradient
straight through and add (p - t), i.e. they treat "activation + cross-entropy" as one unit instead of
differentiating the activation; [cost] adds scale * (p - t) for SSE (half the derivative of its own error).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ..errors import UnsupportedError
from ..kernels import activations as act
from ..kernels import softmax as sk
from .base import FLOAT, LayerConfig, LossLayer, Shape, option
from .registry import register


def class_index_rows(masks: np.ndarray) -> np.ndarray:
    """(B, H, W) class-index masks -> truth rows of one class index per pixel, (B, H*W) float32."""
    return masks.reshape(masks.shape[0], -1).astype(np.float32)


def one_hot_rows(masks: np.ndarray, channels: int) -> np.ndarray:
    """(B, H, W) class-index masks -> one target per value of a `channels`-map head in CHW order: a single
    channel takes the mask itself (0 background, 1 foreground), several channels one-hot per pixel; ignored
    pixels are ignored in every channel."""
    batch = masks.shape[0]
    if channels == 1:
        return class_index_rows(masks)
    flat = masks.reshape(batch, 1, -1)
    truth = (flat == np.arange(channels, dtype=masks.dtype)[None, :, None]).astype(np.float32)
    truth[np.broadcast_to(flat == sk.IGNORE_INDEX, truth.shape)] = sk.IGNORE_INDEX
    return truth.reshape(batch, -1)


def _flat_rows(array: np.ndarray) -> np.ndarray:
    return array.reshape(array.shape[0], -1)


class _TruthLayer(LossLayer):
    """A layer that can take the network's truth and then owns a cost and a loss gradient."""

    def __init__(self, config: LayerConfig, index: int):
        super().__init__(config, index)
        self._has_loss = False

    def output_shape(self, in_shapes):
        if in_shapes[0].size == 0:
            raise self.config.error(f"[{self.kind}] needs a non-empty input")
        return Shape.flat(in_shapes[0].size)

    def allocate(self, batch):
        super().allocate(batch)
        self.loss_grad = np.zeros((batch, self.out_shape.size), FLOAT)  # dL/d(input), standard sign
        self.errors = np.zeros((batch, self.out_shape.size), FLOAT)

    def _take_truth(self, batch: int) -> np.ndarray | None:
        truth, self._truth = self._truth, None
        if truth is None:
            return None
        truth = np.asarray(truth)
        if truth.dtype != np.float32:
            raise TypeError(f"truth must be float32, got {truth.dtype}")
        truth = truth.reshape(truth.shape[0], -1) if truth.ndim != 2 else truth
        expected = (batch, self.truth_size())
        if truth.shape != expected:
            raise ValueError(f"[{self.kind}] layer {self.index} needs truth of shape {expected}, "
                             f"got {truth.shape}")
        return np.ascontiguousarray(truth)

    def _store_loss(self, darknet_cost: np.float32) -> None:
        """After a loss kernel filled self.loss_grad with Darknet's delta (t - p style): flip to dL/dx."""
        np.negative(self.loss_grad, out=self.loss_grad)
        self.cost = float(darknet_cost)
        self._has_loss = True

    def _no_loss(self) -> None:
        self.cost = None
        self._has_loss = False

    def backward(self, dy, xs, dxs):
        # the incoming gradient passes straight through, plus (p - t) when this pass had truth (docstring)
        if dxs[0] is None:
            return
        dx = _flat_rows(dxs[0])
        dx += _flat_rows(dy)
        if self._has_loss:
            dx += self.loss_grad


@dataclass(frozen=True)
class SoftmaxConfig(LayerConfig):
    groups: int = option(1, minimum=1)
    temperature: float = option(1.0)
    tree: str | None = option(None)
    noloss: bool = option(False)
    spatial: bool = option(False)


@register
class Softmax(_TruthLayer):
    kind = "softmax"
    aliases = ("soft",)
    Config = SoftmaxConfig

    def __init__(self, config: SoftmaxConfig, index: int):
        super().__init__(config, index)
        self._unsupported: UnsupportedError | None = None
        if config.tree is not None:
            # the network still builds (shapes, summaries, weights size); running it is refused
            self._unsupported = config.unsupported("tree= (hierarchical softmax) is not supported yet", "tree")
        if config.temperature == 0:
            raise config.error("temperature must not be 0", "temperature")
        self.temperature = np.float32(config.temperature)

    def output_shape(self, in_shapes):
        if self.config.spatial:
            # per pixel over the channels: the output keeps the input's map (Darknet's GPU spatial=1)
            self.require_image(in_shapes[0])
            if self.config.groups != 1:
                raise self.config.error("groups cannot be combined with spatial=1 (the softmax runs over the "
                                        "channels of each pixel)", "groups")
            return in_shapes[0]
        shape = super().output_shape(in_shapes)
        if shape.size % self.config.groups:
            raise self.config.error(f"groups={self.config.groups} does not divide the {shape.size} inputs",
                                    "groups")
        return shape

    def forward(self, xs, train):
        if self._unsupported is not None:
            raise self._unsupported
        batch = xs[0].shape[0]
        p = _flat_rows(self.output)
        if self.config.spatial:
            b, c, h, w = xs[0].shape
            sk.softmax_channels(xs[0].reshape(b, c, h * w), self.temperature, self.output.reshape(b, c, h * w))
        else:
            sk.softmax_groups(_flat_rows(xs[0]), self.config.groups, self.temperature, p)
        truth = self._take_truth(batch)
        if truth is None:
            self._no_loss()
        elif self.config.noloss:
            # Darknet still counts this layer's (zero) cost when it averages the network's loss
            self._no_loss()
            self.cost = 0.0
        elif self.config.spatial:
            classes = self.out_shape.c
            bad = sk.count_bad_class_indices(truth, classes)
            if bad:
                raise ValueError(f"[softmax] layer {self.index}: {bad} truth entries are not a class index "
                                 f"below {classes} nor the ignore index {sk.IGNORE_INDEX}")
            b, c, h, w = xs[0].shape
            self._store_loss(sk.pixel_softmax_cross_entropy(
                xs[0].reshape(b, c, h * w), self.temperature, self.output.reshape(b, c, h * w), truth,
                self.loss_grad.reshape(b, c, h * w), self.errors))
        else:
            self._store_loss(sk.softmax_cross_entropy(p, truth, self.loss_grad, self.errors))
        return self.output

    def allocate(self, batch):
        super().allocate(batch)
        if self.config.spatial:
            self.errors = np.zeros((batch, self.truth_size()), FLOAT)  # one cross-entropy per pixel

    def truth_size(self) -> int:
        s = self.out_shape
        return s.h * s.w if self.config.spatial else s.size

    def pixelwise(self) -> bool:
        s = self.out_shape
        return self.config.spatial and s.h * s.w > 1

    def class_probabilities(self, output: np.ndarray) -> np.ndarray:
        """(B, classes, H, W) probabilities of a spatial head's output (a view)."""
        s = self.out_shape
        return output.reshape(output.shape[0], s.c, s.h, s.w)

    def mask_encoder(self):
        """Class-index masks -> this layer's truth rows: the indices themselves, one per pixel."""
        return class_index_rows

    def summary_row(self):
        if self.config.spatial:
            return f"softmax per pixel           {self.describe_shape(self.out_shape)}"
        return f"softmax                                        {self.out_shape.size:4d}"


COST_TYPES = {"sse": sk.SSE, "masked": sk.MASKED, "smooth": sk.SMOOTH, "L1": sk.L1,
              "seg": sk.SSE, "wgan": sk.SSE}


@dataclass(frozen=True)
class CostConfig(LayerConfig):
    type: str = option("sse", choices=tuple(COST_TYPES))
    scale: float = option(1.0)


@register
class Cost(_TruthLayer):
    """Error per element as output when given truth; its input, unchanged, at inference (cost_only)."""
    kind = "cost"
    Config = CostConfig
    cost_only = True

    def forward(self, xs, train):
        batch = xs[0].shape[0]
        truth = self._take_truth(batch)
        out = _flat_rows(self.output)
        if truth is None:
            # Darknet does not run [cost] at inference: the network's output is the last non-cost layer's,
            # and a layer placed after [cost] reads a stale buffer (zeros on a fresh network, the errors of
            # the last training pass otherwise), which is no defined value. Passing the input through makes
            # the layer transparent at inference, the same rule extended to the layers after it.
            np.copyto(out, _flat_rows(xs[0]))
            self._no_loss()
            return self.output
        # Darknet's masked cost writes -1234 into its *input* first; darknetpy leaves the input alone and
        # only zeroes those elements' error and gradient, which is the effect on the loss.
        cost = sk.cost_errors(_flat_rows(xs[0]), truth, COST_TYPES[self.config.type], out, self.loss_grad)
        self._store_loss(cost)
        return self.output

    def backward(self, dy, xs, dxs):
        if dxs[0] is None:
            return
        # Darknet adds scale * (its own delta + whatever later layers added to it) into the input's delta
        dx = _flat_rows(dxs[0])
        scale = np.float32(self.config.scale)
        dx += scale * _flat_rows(dy)
        if self._has_loss:
            dx += scale * self.loss_grad

    def summary_row(self):
        return f"cost                                           {self.out_shape.size:4d}"


@register
class Logistic(_TruthLayer):
    """Logistic activation with an optional binary cross-entropy loss."""
    kind = "logistic"
    Config = LayerConfig

    def forward(self, xs, train):
        batch = xs[0].shape[0]
        act.activate_to(xs[0].reshape(-1), self.output.reshape(-1), act.LOGISTIC)
        truth = self._take_truth(batch)
        if truth is None:
            self._no_loss()
        else:
            self._store_loss(sk.logistic_cross_entropy_logits(_flat_rows(xs[0]), _flat_rows(self.output), truth,
                                                              self.loss_grad, self.errors))
        return self.output

    def class_probabilities(self, output: np.ndarray) -> np.ndarray:
        """(B, classes, H, W) probabilities: one channel is a binary map (classes background, foreground),
        several channels are independent per-class probabilities (compared by argmax)."""
        s = self.in_shapes[0]
        maps = output.reshape(output.shape[0], s.c, s.h, s.w)
        if s.c == 1:
            return np.concatenate([1 - maps, maps], axis=1)
        return maps

    def mask_encoder(self):
        """Class-index masks -> one target per value (one_hot_rows for this layer's channel count)."""
        return functools.partial(one_hot_rows, channels=self.in_shapes[0].c)

    def pixelwise(self):
        # one independent probability per value: a 1-channel map is already a (binary) segmentation
        shape = self.in_shapes[0]
        return shape.image and shape.h * shape.w > 1

    def summary_row(self):
        return f"logistic x entropy                             {self.out_shape.size:4d}"
