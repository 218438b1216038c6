"""A built network: layers in file order, their shapes, buffers, forward and backward passes.

Layers form a DAG through `input_indices()` (route and shortcut read earlier layers); index -1 is the
network input. Buffers are allocated once per batch size, so repeated forward calls do not allocate.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from functools import partial

import numpy as np

from .config import NetConfig, SectionReader, parse_cfg, parse_cfg_text
from .config.document import Document
from .config.options import summarised_ignored_keys
from .errors import CfgError
from .fusion import find_residual_fusions
from .layers import layer_class
from .layers.base import Layer, LossLayer, Shape

#: a layer's step in `Network.infer`: the indices of the outputs it reads, and run(those outputs) -> its output
InferenceStep = tuple[list[int], Callable[[list[np.ndarray]], np.ndarray]]


class Network:
    def __init__(self, net: NetConfig, layers: list[Layer], path: str):
        self.net = net
        self.layers = layers
        self.path = path
        self.seen = 0
        #: header version of the weights file last read (weights.py writes it back); None: never read
        self.weights_version: tuple[int, int, int] | None = None
        self._batch = 0
        self._deltas: list[np.ndarray] | None = None
        self.outputs: list[np.ndarray | None] = [None] * len(layers)
        # each layer's own output buffer, and the buffers `infer` lends the layers instead (see infer)
        self._own_outputs: list[np.ndarray] = []
        self._lent_outputs: list[np.ndarray] | None = None
        self._lending = False
        # what `infer` runs for each layer: (input indices, run(xs)), or None for a layer fused into a later one
        self._inference_steps: list[InferenceStep | None] = []
        self.input_shape = Shape(net.channels, net.height, net.width) if net.height and net.width \
            else Shape.flat(net.inputs)
        self.shapes = self._build_shapes()
        #: the layers that take the truth of a training pass and own a cost, in file order
        self.loss_layers: list[LossLayer] = [layer for layer in layers if isinstance(layer, LossLayer)]
        self.output_index = self._last_non_cost_index()

    # ---- construction ---------------------------------------------------------------------------------------
    def _build_shapes(self) -> list[Shape]:
        shapes: list[Shape] = []
        for layer in self.layers:
            in_shapes = [self.input_shape if j < 0 else shapes[j] for j in layer.input_indices()]
            shapes.append(layer.build(in_shapes, self.net))
        return shapes

    def _last_non_cost_index(self) -> int:
        """The output layer: the last one that is not a [cost] layer (Darknet's get_network_output_layer)."""
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            if not (isinstance(layer, LossLayer) and layer.cost_only):
                return i
        return len(self.layers) - 1

    def resize(self, width: int, height: int) -> None:
        """Change the input size (detectors run at any multiple of their stride); weights are kept."""
        self.net = replace(self.net, width=width, height=height, inputs=width * height * self.net.channels)
        self.input_shape = Shape(self.net.channels, height, width)
        self.shapes = self._build_shapes()
        self._batch = 0

    # ---- buffers --------------------------------------------------------------------------------------------
    def allocate(self, batch: int) -> None:
        """Give every layer its buffers for `batch` images (forward does this itself when the batch changes)."""
        self._ensure_batch(batch)

    def _ensure_batch(self, batch: int) -> None:
        if batch != self._batch:
            self._batch = 0  # until every layer has its buffers
            index = 0
            try:
                for index, layer in enumerate(self.layers):
                    layer.allocate(batch)
            except MemoryError as exc:
                raise self._out_of_memory(index, batch, exc) from None
            self._batch = batch
            self._deltas = None
            self._own_outputs = [layer.output for layer in self.layers]
            self._lent_outputs = None
            self._inference_steps = []
            self._lending = False

    def _out_of_memory(self, index: int, batch: int, exc: MemoryError) -> CfgError:
        """The located error for a MemoryError while layer `index` allocated or ran."""
        layer = self.layers[min(max(index, 0), len(self.layers) - 1)]
        gib = 4 / 2 ** 30
        outputs = sum(shape.size for shape in self.shapes) * batch * gib
        reason = str(exc) or "the allocation failed"
        return layer.config.error(f"not enough memory for layer {layer.index} [{layer.kind}] ({reason}); its "
                                  f"output is {layer.out_shape.size * batch * gib:.2f} GiB and all layer "
                                  f"outputs {outputs:.2f} GiB for a batch of {batch}: lower width/height or "
                                  f"batch")

    def _check_input(self, x: np.ndarray) -> np.ndarray:
        if not isinstance(x, np.ndarray) or x.dtype != np.float32:
            raise TypeError(f"network input must be a float32 numpy array, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        s = self.input_shape
        expected = (s.c, s.h, s.w)
        if x.ndim == 3:
            x = x[None]
        if x.ndim == 2 and not s.image:
            x = x.reshape(x.shape[0], -1, 1, 1)
        if x.ndim != 4 or x.shape[1:] != expected:
            raise ValueError(f"network input must have shape (batch, {s.c}, {s.h}, {s.w}), got {x.shape}")
        return np.ascontiguousarray(x)

    # ---- passes ---------------------------------------------------------------------------------------------
    @property
    def output_layer(self) -> Layer:
        return self.layers[self.output_index]

    def forward(self, x: np.ndarray, train: bool = False, truth: np.ndarray | None = None) -> np.ndarray:
        """Run the network; returns the last non-cost layer's output buffer (B, C, H, W) — valid until the
        next call (a network of cost layers only returns its input, passed through them). With `truth`
        (B, outputs) the loss layers compute their cost (see `cost`). Every layer's output stays in
        `outputs` until the next call."""
        return self._run(x, train, truth, lend=False)

    def infer(self, x: np.ndarray) -> np.ndarray:
        """An inference forward pass that keeps only what is read after it: the output of every layer that
        no later layer reads (the output layer, detection heads) stays in `outputs` until the next call;
        the other layers write into buffers they share, each used again once its readers have run, so
        `outputs` of those layers holds other data afterwards, and None for the layers a later step computes
        (a [shortcut] fused into its 1x1 layer: darknetpy/fusion.py). Same values as `forward(x)`, less memory
        traffic: a pass writes into buffers still in the caches instead of a fresh one per layer
        (yolo-fastest-1.1-xl at 320, 1 thread, alternating in one process: 0.82 of `forward`'s time at batch 1,
        0.96 at batch 8; see _plan_lent_outputs)."""
        return self._run(x, False, None, lend=True)

    def _run(self, x: np.ndarray, train: bool, truth: np.ndarray | None, lend: bool) -> np.ndarray:
        x = self._check_input(x)
        self._ensure_batch(x.shape[0])
        self._lend_outputs(lend)
        self._input = x
        for layer in self.loss_layers:  # None too: no truth left over from an interrupted pass
            layer.set_truth(truth)
            layer.seen = self.seen
        steps = self._inference_steps if lend else None
        i = 0
        try:
            for i, layer in enumerate(self.layers):
                if i > self.output_index and truth is None:
                    # only cost layers follow the output layer and nothing reads them at inference
                    self.outputs[i] = None
                    continue
                if steps is None:
                    xs = [x if j < 0 else self.outputs[j] for j in layer.input_indices()]
                    self.outputs[i] = layer.forward(xs, train)
                    continue
                step = steps[i]
                if step is None:   # computed by a later layer's step (darknetpy/fusion.py)
                    self.outputs[i] = None
                    continue
                inputs, run = step
                xs = [x if j < 0 else self.outputs[j] for j in inputs]
                out = self.outputs[i] = run(xs)
                if out is not layer.output and not (layer.inference_returns_input and out is xs[0]):
                    # the lending plan follows only these two cases
                    raise RuntimeError(f"layer {i} [{layer.kind}] returned an array that is neither its output "
                                       f"buffer nor its input; declare inference_returns_input or return "
                                       f"self.output")
        except MemoryError as exc:  # scratch buffers (im2col columns, ...) are made on first use
            raise self._out_of_memory(i, x.shape[0], exc) from None
        return self.outputs[self.output_index]

    def _lend_outputs(self, lend: bool) -> None:
        """Point every layer's `output` at its lent buffer (lend) or back at its own."""
        if lend == self._lending:
            return
        if lend and self._lent_outputs is None:
            self._inference_steps = self._plan_inference_steps()
            self._lent_outputs = self._plan_lent_outputs()
        buffers = self._lent_outputs if lend else self._own_outputs
        for layer, buffer in zip(self.layers, buffers):
            layer.output = buffer
        self._lending = lend

    def inference_steps(self) -> list[InferenceStep | None]:
        """What `infer` runs for each layer up to the output layer, at the allocated batch size: (input
        indices, run(inputs) -> output), or None for a layer that a later layer's step computes
        (darknetpy/fusion.py). The layers write into the buffers `infer` lends them."""
        self._lend_outputs(True)
        return self._inference_steps

    def _plan_inference_steps(self) -> list[InferenceStep | None]:
        """Each layer's step in `infer` up to the output layer: its own inference forward, or the fused step
        that replaces a shortcut and the layers it fuses (darknetpy/fusion.py)."""
        layers = self.layers
        steps: list[InferenceStep | None] = [(layer.input_indices(), partial(layer.forward, train=False))
                       for layer in layers[:self.output_index + 1]]
        for fusion in find_residual_fusions(layers, self.output_index):
            for skipped in fusion.skipped():
                steps[skipped] = None
            steps[fusion.shortcut] = (fusion.input_indices(layers), partial(fusion.run, layers))
        return steps

    def _plan_lent_outputs(self) -> list[np.ndarray]:
        """The buffer each layer writes into during `infer`. A layer writes into the shared buffer freed most
        recently (whatever shapes used it before: the layers' buffers are views of flat shared ones), which is
        still in the caches: its last readers have just run. A shared buffer is free again once every layer
        reading what it holds has run. A layer that returns its input (inference_returns_input) writes nothing:
        its readers keep that input's buffer busy; neither does a layer fused into a later one
        (`_plan_inference_steps`), whose step reads that layer's inputs. Outputs no later layer reads, and the
        output layer's, are never freed. The shared buffers' memory is the layers' own buffers, the largest for
        the largest, so `infer` allocates nothing. Lent by shape before (a buffer went only to layers of the
        output shape it was made for), a layer of a new shape wrote a buffer no layer had touched in that pass,
        from memory: in yolo-fastest-1.1-xl's pass at 1 thread its 8->48 1x1 layer at 160x160 took 0.68 ms
        against 0.25 alone, the 1x1 layers 8.5 ms against 6.3 alone; now 7.2 ms (whole passes 0.96-0.97,
        alternating processes)."""
        count = self.output_index + 1   # the layers after it do not run at inference
        holder = list(range(count))     # the layer whose buffer holds each layer's output (-1: the input)
        busy_until = [-1] * count       # by holder: the last step at which its buffer is read (count: never free)
        readers = [False] * count
        for i in range(count):
            step = self._inference_steps[i]
            if step is None:   # never written: fused into a later layer's step
                holder[i] = -1
                continue
            inputs = step[0]
            if self.layers[i].inference_returns_input:
                source = inputs[0]
                holder[i] = holder[source] if source >= 0 else -1
            for j in inputs:
                if j >= 0:
                    readers[j] = True
                    if holder[j] >= 0:
                        busy_until[holder[j]] = max(busy_until[holder[j]], i)
        for i in range(count):
            if (not readers[i] or i == self.output_index) and holder[i] >= 0:
                busy_until[holder[i]] = count
        own_outputs = self._own_outputs
        # a layer whose own buffer is not flat float32 memory keeps it
        writers = {i for i in range(count) if holder[i] == i and own_outputs[i].dtype == np.float32
                   and own_outputs[i].flags.c_contiguous}
        shared_of: dict[int, int] = {}   # writer -> shared buffer number
        capacity: list[int] = []         # by shared buffer: the most any of its writers needs
        free: list[int] = []             # the free shared buffers, the most recently freed last
        freed_after: dict[int, list[int]] = {}
        for i in range(count):
            for done in freed_after.pop(i - 1, []):
                free.append(shared_of[done])
            if i not in writers:
                continue
            own = own_outputs[i]
            if free:
                shared_of[i] = free.pop()
                capacity[shared_of[i]] = max(capacity[shared_of[i]], own.size)
            else:
                shared_of[i] = len(capacity)
                capacity.append(own.size)
            freed_after.setdefault(max(busy_until[i], i), []).append(i)
        # each shared buffer's capacity is one writer's own size, a different writer for each: matched largest
        # to largest, the writers' own buffers hold them all
        by_capacity = sorted(range(len(capacity)), key=lambda k: -capacity[k])
        memories = sorted((own_outputs[i] for i in writers), key=lambda a: -a.size)
        memory = dict(zip(by_capacity, (own.reshape(-1) for own in memories)))
        lent = list(own_outputs)
        for i in writers:
            own = own_outputs[i]
            lent[i] = memory[shared_of[i]][:own.size].reshape(own.shape)
        return lent

    def cost(self) -> float:
        """Darknet's net->cost: the mean over the cost-bearing layers of their summed cost."""
        costs = [layer.cost for layer in self.loss_layers if layer.cost is not None]
        return float(sum(costs) / len(costs)) if costs else float("nan")

    def backward(self) -> None:
        """Backpropagate from the loss layers of the last forward(train=True, truth=...) pass."""
        i = len(self.layers) - 1
        try:
            if self._deltas is None:
                deltas = []
                for i, layer in enumerate(self.layers):
                    deltas.append(np.zeros_like(layer.output))
                self._deltas = deltas
            for d in self._deltas:
                d.fill(0.0)
            for i in range(len(self.layers) - 1, -1, -1):
                layer = self.layers[i]
                if layer.config.stopbackward:
                    break
                xs = [self._input if j < 0 else self.outputs[j] for j in layer.input_indices()]
                dxs = [None if j < 0 else self._deltas[j] for j in layer.input_indices()]
                layer.backward(self._deltas[i], xs, dxs)
        except MemoryError as exc:
            raise self._out_of_memory(i, self._input.shape[0], exc) from None

    def initialize(self, seed: int | None = 0) -> None:
        """Random initial weights (Darknet's distributions) for training from scratch."""
        rng = np.random.default_rng(seed)
        for layer in self.layers:
            layer.initialize(rng)

    def params(self):
        return [(layer, p) for layer in self.layers for p in layer.params()]

    # ---- reporting ------------------------------------------------------------------------------------------
    def parameter_count(self) -> int:
        return sum(layer.parameter_count() for layer in self.layers)

    def weights_float_count(self) -> int:
        return sum(int(sum(a.size for a in layer.weight_arrays(saving=True)))
                   for layer in self.layers if not layer.config.dontsave)

    def flops(self) -> float:
        return sum(layer.flops() for layer in self.layers)

    def summary(self) -> str:
        from .summary import summary_table
        return summary_table(self)


def build_network(document: Document, width: int | None = None, height: int | None = None) -> Network:
    """Turn a parsed cfg into a built Network (shapes checked, parameters allocated with zeros)."""
    path = document.path
    sections = document.sections
    if not sections:
        raise CfgError("the cfg has no sections", path, 1)
    first = sections[0]
    if first.name not in ("net", "network"):
        raise CfgError(f"the first section must be [net] or [network], not [{first.name}]", path, first.line)
    net = NetConfig.from_section(SectionReader(first, path))
    if width is not None or height is not None:
        w = width or net.width
        h = height or net.height
        net = replace(net, width=w, height=h, inputs=w * h * net.channels)
    layers: list[Layer] = []
    with summarised_ignored_keys():
        for index, section in enumerate(sections[1:]):
            if section.name in ("net", "network"):
                raise CfgError(f"[{section.name}] may only be the first section", path, section.line)
            cls = layer_class(section.name, path, section.line)
            layers.append(cls.from_section(SectionReader(section, path), index))
    if not layers:
        raise CfgError("the cfg has a [net] section but no layers", path, first.line)
    return Network(net, layers, path)


def load_cfg(path: str | os.PathLike, width: int | None = None, height: int | None = None) -> Network:
    return build_network(parse_cfg(str(path)), width, height)


def network_from_text(text: str, path: str = "<string>", width: int | None = None,
                      height: int | None = None) -> Network:
    return build_network(parse_cfg_text(text, path), width, height)
