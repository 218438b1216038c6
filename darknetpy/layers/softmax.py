"""Output layers that may carry a loss: [softmax] (spec §2.6), [cost] (§2.13) and [logistic] (§2.17).

Truth protocol: before a forward pass with targets the network calls `set_truth(truth)` ((B, outputs)
float32). A layer consumes the truth in that one forward pass, storing its cost (`self.cost`, None when no
truth was given) and its loss gradient for the backward pass.

Gradients follow Darknet's choices, with the standard sign: softmax and logistic pass the incoming gradient
straight through and add (p - t), i.e. they treat "activation + cross-entropy" as one unit instead of
differentiating the activation; [cost] adds scale * (p - t) for SSE (half the derivative of its own error).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UnsupportedError
from ..kernels import activations as act
from ..kernels import softmax as sk
from .base import FLOAT, Layer, LayerConfig, Shape, option
from .registry import register


def _flat_rows(array: np.ndarray) -> np.ndarray:
    return array.reshape(array.shape[0], -1)


class _TruthLayer(Layer):
    """A layer that can take the network's truth and then owns a cost and a loss gradient."""

    def __init__(self, config: LayerConfig, index: int):
        super().__init__(config, index)
        self.cost: float | None = None
        self._truth: np.ndarray | None = None
        self._has_loss = False

    def output_shape(self, in_shapes):
        if in_shapes[0].size == 0:
            raise self.config.error(f"[{self.kind}] needs a non-empty input")
        return Shape.flat(in_shapes[0].size)

    def allocate(self, batch):
        super().allocate(batch)
        self.loss_grad = np.zeros((batch, self.out_shape.size), FLOAT)  # dL/d(input), standard sign
        self.errors = np.zeros((batch, self.out_shape.size), FLOAT)

    def set_truth(self, truth: np.ndarray) -> None:
        self._truth = truth

    def _take_truth(self, batch: int) -> np.ndarray | None:
        truth, self._truth = self._truth, None
        if truth is None:
            return None
        truth = np.asarray(truth)
        if truth.dtype != np.float32:
            raise TypeError(f"truth must be float32, got {truth.dtype}")
        truth = truth.reshape(truth.shape[0], -1) if truth.ndim != 2 else truth
        expected = (batch, self.out_shape.size)
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


@dataclass(frozen=True)
class SoftmaxConfig(LayerConfig):
    groups: int = option(1, minimum=1)
    temperature: float = option(1.0)
    tree: str | None = option(None)
    noloss: bool = option(False)


@register
class Softmax(_TruthLayer):
    kind = "softmax"
    aliases = ("soft",)
    Config = SoftmaxConfig
    is_cost = False
    # spatial: GPU-only in Darknet (per-pixel softmax); the CPU path always uses the contiguous groups
    ignored_keys = ("spatial",)

    def __init__(self, config: SoftmaxConfig, index: int):
        super().__init__(config, index)
        self._unsupported: UnsupportedError | None = None
        if config.tree is not None:
            # the network still builds (shapes, summaries, weights size); running it is refused
            err = config.error("tree= (hierarchical softmax) is not supported yet", "tree")
            self._unsupported = UnsupportedError(err.message, err.path, err.line)
        if config.temperature == 0:
            raise config.error("temperature must not be 0", "temperature")
        self.temperature = np.float32(config.temperature)

    def output_shape(self, in_shapes):
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
        sk.softmax_groups(_flat_rows(xs[0]), self.config.groups, self.temperature, p)
        truth = self._take_truth(batch)
        if truth is None:
            self._no_loss()
        elif self.config.noloss:
            # Darknet still counts this layer's (zero) cost when it averages the network's loss
            self._no_loss()
            self.cost = 0.0
        else:
            self._store_loss(sk.softmax_cross_entropy(p, truth, self.loss_grad, self.errors))
        return self.output

    def backward(self, dy, xs, dxs):
        if dxs[0] is None:
            return
        dx = _flat_rows(dxs[0])
        dx += _flat_rows(dy)
        if self._has_loss:
            dx += self.loss_grad

    def summary_row(self):
        return f"softmax                                        {self.out_shape.size:4d}"


COST_TYPES = {"sse": sk.SSE, "masked": sk.MASKED, "smooth": sk.SMOOTH, "L1": sk.L1,
              "seg": sk.SSE, "wgan": sk.SSE}


@dataclass(frozen=True)
class CostConfig(LayerConfig):
    type: str = option("sse", choices=tuple(COST_TYPES))
    scale: float = option(1.0)


@register
class Cost(_TruthLayer):
    """Error per element as output when given truth; its input, unchanged, at inference (is_cost)."""
    kind = "cost"
    Config = CostConfig
    is_cost = True
    # GPU-only knobs of Darknet's cost layer
    ignored_keys = ("ratio", "noobj", "thresh")

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
    is_cost = False

    def forward(self, xs, train):
        batch = xs[0].shape[0]
        act.activate_to(xs[0].reshape(-1), self.output.reshape(-1), act.LOGISTIC)
        truth = self._take_truth(batch)
        if truth is None:
            self._no_loss()
        else:
            self._store_loss(sk.logistic_cross_entropy(_flat_rows(self.output), truth, self.loss_grad,
                                                       self.errors))
        return self.output

    def backward(self, dy, xs, dxs):
        if dxs[0] is None:
            return
        dx = _flat_rows(dxs[0])
        dx += _flat_rows(dy)
        if self._has_loss:
            dx += self.loss_grad

    def summary_row(self):
        return f"logistic x entropy                             {self.out_shape.size:4d}"
