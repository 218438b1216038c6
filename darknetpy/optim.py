"""Darknet's optimiser (spec §6): subdivisions, SGD with momentum and decay, lr/batch, per-layer lr scale.

The layers accumulate the standard gradient dL/dθ (summed over the images of all subdivisions). Darknet's
`*_updates` buffers hold the *negative* gradient plus the previous momentum term; this module is the one
place where that sign convention appears:

    v ← m·v_prev − Σ ∂L/∂θ − λ·B·θ   (decay on weights only)
    θ ← θ + (lr·scale / B)·v
    v_prev ← v

with B = batch·subdivisions (the images per update). Adam ([net] adam=1) is available too although
Darknet's CPU build ignores it (see README, deliberate differences).
"""
from __future__ import annotations

import math

import numpy as np

from .config import learning_rate_at
from .network import Network


class DarknetSGD:
    def __init__(self, network: Network):
        self.network = network
        self.velocity = {id(p.value): np.zeros_like(p.value) for _, p in network.params()}

    def step(self, rate: float) -> None:
        net = self.network.net
        batch = np.float32(net.full_batch)
        momentum = np.float32(net.momentum)
        decay = np.float32(net.decay)
        for layer, p in self.network.params():
            lr = np.float32(rate * layer.config.learning_rate_scale)
            v = self.velocity.setdefault(id(p.value), np.zeros_like(p.value))
            v -= p.grad
            if p.decay:
                v += (-decay * batch) * p.value
            p.value += (lr / batch) * v
            v *= momentum
            p.grad.fill(0.0)
        for layer in self.network.layers:
            layer.parameters_changed()


class Adam:
    """Adam on the per-image mean gradient with decoupled-from-nothing L2 decay folded into the gradient,
    following the update Darknet's GPU path applies (B1, B2, eps from [net])."""

    def __init__(self, network: Network):
        self.network = network
        self.t = 0
        self.m: dict[int, np.ndarray] = {}
        self.v: dict[int, np.ndarray] = {}

    def step(self, rate: float) -> None:
        net = self.network.net
        self.t += 1
        b1, b2, eps = net.B1, net.B2, net.eps
        correction = math.sqrt(1 - b2 ** self.t) / (1 - b1 ** self.t)
        for layer, p in self.network.params():
            g = p.grad / np.float32(net.full_batch)
            if p.decay:
                g = g + np.float32(net.decay) * p.value
            m = self.m.setdefault(id(p.value), np.zeros_like(p.value))
            v = self.v.setdefault(id(p.value), np.zeros_like(p.value))
            m *= np.float32(b1)
            m += np.float32(1 - b1) * g
            v *= np.float32(b2)
            v += np.float32(1 - b2) * g * g
            lr = rate * layer.config.learning_rate_scale * correction
            p.value -= np.float32(lr) * m / (np.sqrt(v) + np.float32(eps))
            p.grad.fill(0.0)
        for layer in self.network.layers:
            layer.parameters_changed()


class Trainer:
    """Darknet's train_network on one full batch: `subdivisions` forward/backward passes over consecutive
    rows, one update when the last pass is done; `seen` counts images before each pass (spec §6.1)."""

    def __init__(self, network: Network, rng: np.random.Generator | None = None):
        self.network = network
        self.optimizer = Adam(network) if network.net.adam else DarknetSGD(network)
        self.rng = rng or np.random.default_rng(0)
        self.last_rate = 0.0
        #: per loss layer (by index), its statistics() averaged over the passes of the last train_batch
        self.last_statistics: dict[int, dict[str, float]] = {}

    @property
    def current_batch(self) -> int:
        net = self.network.net
        return self.network.seen // (net.batch * net.subdivisions)

    def current_rate(self) -> float:
        return learning_rate_at(self.network.net, self.current_batch, self.rng)

    def train_batch(self, x: np.ndarray, truth: np.ndarray) -> float:
        net = self.network.net
        x = np.ascontiguousarray(x, dtype=np.float32)
        truth = np.ascontiguousarray(truth, dtype=np.float32).reshape(x.shape[0], -1)
        rows = x.shape[0]
        if rows % net.batch:
            raise ValueError(f"train_batch needs a multiple of the per-pass batch {net.batch} rows, got {rows}")
        total = 0.0
        passes = rows // net.batch
        sums: dict[int, dict[str, float]] = {}
        counts: dict[int, dict[str, int]] = {}
        # A diverging run overflows to inf/NaN as Darknet's float arithmetic does, silently: the non-finite
        # loss is what reports it (the training loop names the layer), and numpy's per-operation
        # RuntimeWarnings would only print noise ahead of that one message.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for p in range(passes):
                sl = slice(p * net.batch, (p + 1) * net.batch)
                self.network.seen += net.batch
                self.network.forward(x[sl], train=True, truth=truth[sl])
                self.network.backward()
                total += self.network.cost()
                for layer in self.network.loss_layers:
                    layer_sums = sums.setdefault(layer.index, {})
                    layer_counts = counts.setdefault(layer.index, {})
                    for name, value in layer.statistics().items():
                        # a ratio of a pass without truths is NaN (Darknet prints -nan): the passes that
                        # had some make the iteration's figure
                        if math.isfinite(value):
                            layer_sums[name] = layer_sums.get(name, 0.0) + float(value)
                            layer_counts[name] = layer_counts.get(name, 0) + 1
                        else:
                            layer_sums.setdefault(name, 0.0)
                if (self.network.seen // net.batch) % net.subdivisions == 0:
                    self.last_rate = self.current_rate()
                    self.optimizer.step(self.last_rate)
        self.last_statistics = {index: {name: value / counts[index][name] if counts[index].get(name) else
                                        float("nan") for name, value in values.items()}
                                for index, values in sums.items()}
        return total / (passes * net.batch)
