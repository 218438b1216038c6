"""[convolutional] (alias [conv]): grouped, strided, dilated 2-D convolution with optional batch norm.

The layer holds the configuration, the shapes and the parameters; how it convolves (GEMM, direct or
Winograd) is an engine object from layers/conv_engines.py, chosen from the shapes when the buffers are
allocated, and the bias -> batch norm -> activation tail is the shared epilogue (layers/epilogue.py). At
inference the batch norm is folded into a copy of the weights that the engine keeps (or transforms).

Training convolves into a channel-major (F, B*S) product, which one kernel turns into the (B, F, S) output
with Darknet's batch norm, the bias and leaky (the epilogue, kernels/batchnorm.py "channel-major"); the
product is kept as BN's saved input. The backward runs the same fusion in reverse and leaves dL/d(product),
channel-major, for the engine's weight-gradient product and dL/dx.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels import activations as act
from ..kernels import pointwise
from .base import FLOAT, Layer, LayerConfig, Param, Shape, c_div, option
from .conv_engines import ConvGeometry, PointwiseEngine, choose_engines
from .epilogue import Epilogue, EpilogueOwner
from .registry import register

ACTIVATION_NAMES = tuple(act.ACTIVATION_CODES)


@dataclass(frozen=True)
class ConvolutionalConfig(LayerConfig):
    filters: int = option(1, minimum=1)
    size: int = option(1, minimum=1)
    stride: int = option(1, minimum=1)
    stride_x: int = option(0, minimum=0)   # AlexeyAB: 0 means "same as stride"
    stride_y: int = option(0, minimum=0)
    dilation: int = option(1, minimum=1)   # AlexeyAB
    pad: bool = option(False)
    padding: int = option(0, minimum=0)
    groups: int = option(1, minimum=1)
    activation: str = option("logistic", choices=ACTIVATION_NAMES)
    batch_normalize: bool = option(False)
    binary: bool = option(False)           # no effect on Darknet's CPU forward
    flipped: bool = option(False)
    dot: float = option(0.0)               # GPU-only in Darknet

    @property
    def effective_padding(self) -> int:
        return self.size // 2 if self.pad else self.padding

    @property
    def strides(self) -> tuple[int, int]:
        """(stride_y, stride_x)."""
        return (self.stride_y or self.stride, self.stride_x or self.stride)


@register
class Convolutional(EpilogueOwner, Layer):
    kind = "convolutional"
    aliases = ("conv",)
    Config = ConvolutionalConfig

    def __init__(self, config: ConvolutionalConfig, index: int):
        super().__init__(config, index)
        cfg = config
        self.activation = act.ACTIVATION_CODES[cfg.activation]
        self.weights: np.ndarray | None = None
        self.epilogue: Epilogue | None = None
        self.engine = None    # inference, from allocate()
        self.trainer = None   # training
        self._engine_ready = False

    # ---- shapes and parameters ----------------------------------------------------------------------------
    def output_shape(self, in_shapes):
        cfg = self.config
        x = in_shapes[0]
        self.require_image(x)
        if x.c % cfg.groups:
            raise cfg.error(f"groups={cfg.groups} does not divide the {x.c} input channels", "groups")
        if cfg.filters % cfg.groups:
            raise cfg.error(f"groups={cfg.groups} does not divide filters={cfg.filters}", "groups")
        sy, sx = cfg.strides
        extent = cfg.dilation * (cfg.size - 1) + 1
        pad = cfg.effective_padding
        out_h = c_div(x.h + 2 * pad - extent, sy) + 1
        out_w = c_div(x.w + 2 * pad - extent, sx) + 1
        if out_h <= 0 or out_w <= 0:
            raise cfg.error(f"a {cfg.size}x{cfg.size} kernel does not fit the {x.w}x{x.h} input "
                            f"(padding {pad}, output {out_w}x{out_h})", "size")
        return Shape(cfg.filters, out_h, out_w)

    @property
    def geometry(self) -> ConvGeometry:
        cfg = self.config
        x, s = self.in_shapes[0], self.out_shape
        sy, sx = cfg.strides
        return ConvGeometry(x.c, x.h, x.w, s.c, s.h, s.w, cfg.size, sy, sx, cfg.effective_padding, cfg.dilation,
                            cfg.groups)

    @property
    def winograd_tile(self) -> int:
        return self.geometry.winograd_tile

    def parameters_needed(self):
        cfg = self.config
        return cfg.filters * (self.in_shapes[0].c // cfg.groups) * cfg.size * cfg.size

    def allocate_parameters(self):
        cfg = self.config
        shape = (cfg.filters, self.in_shapes[0].c // cfg.groups, cfg.size, cfg.size)
        if self.weights is not None and self.weights.shape == shape:
            return
        self.weights = np.zeros(shape, FLOAT)
        self.grad_weights = None  # allocated on first use: inference never needs them
        self.epilogue = Epilogue(cfg.filters, self.activation, cfg.batch_normalize)
        self.parameters_changed()

    def initialize(self, rng):
        # Darknet: N(0, 1) * sqrt(2 / fan_in), biases 0
        cfg = self.config
        fan_in = cfg.size * cfg.size * self.in_shapes[0].c // cfg.groups
        self.weights[...] = rng.standard_normal(self.weights.shape) * np.sqrt(2.0 / fan_in)
        self.biases[...] = 0
        self.parameters_changed()

    def parameters_changed(self) -> None:
        self._engine_ready = False
        if self.trainer is not None:
            self.trainer.parameters_changed()

    def allocate(self, batch):
        super().allocate(batch)
        self.engine, self.trainer = choose_engines(self.geometry, batch)
        self._engine_ready = False
        self.epilogue.allocate(self.output.shape)

    # ---- computation ---------------------------------------------------------------------------------------
    def forward(self, xs, train):
        x = xs[0]
        if train:
            product = self.trainer.forward_train(x, self.weights)
            self.epilogue.forward_channel_major(product, self.output.reshape(x.shape[0], self.out_shape.c, -1))
            return self.output
        self._ready_engine()
        self.engine.forward(x, self.output, self.epilogue)
        return self.output

    def _ready_engine(self) -> None:
        """Give the inference engine the weights with the batch norm folded in, once per change of them."""
        if not self._engine_ready:
            self.engine.prepare(*self.epilogue.fold_into(self.weights))
            self._engine_ready = True

    def adds_residual(self) -> bool:
        """Whether `forward_adding` can run at this batch size: the 1x1 kernel (kernels/pointwise.py) on maps
        it can add a residual to, with an activation it applies itself (leaky or linear)."""
        activation = self.epilogue.activation
        pixels = self.out_shape.h * self.out_shape.w
        return (isinstance(self.engine, PointwiseEngine) and pointwise.adds_residual(pixels)
                and (activation.fuses_leaky or activation.code == act.LINEAR))

    def forward_adding(self, x: np.ndarray, residual: np.ndarray, out: np.ndarray) -> None:
        """Inference: out = act(conv(x)) + residual in one pass, out being another layer's buffer (a
        [shortcut] fused in: darknetpy/fusion.py); needs adds_residual()."""
        self._ready_engine()
        self.engine.forward(x, out, self.epilogue, residual)

    def _ensure_gradients(self) -> None:
        if self.grad_weights is None:
            self.grad_weights = np.zeros(self.weights.shape, FLOAT)

    def backward(self, dy, xs, dxs):
        """Needs the training forward just before: its product is overwritten by dL/d(product)."""
        self._ensure_gradients()
        x = xs[0]
        dy3 = dy.reshape(x.shape[0], self.out_shape.c, -1)
        dy_t = self.epilogue.backward_channel_major(dy3, self.output, self.trainer.product)
        self.trainer.backward(x, self.weights, dy_t, self.grad_weights, dxs[0])
        self.parameters_changed()

    def params(self):
        self._ensure_gradients()
        return self.epilogue.params() + [Param("weights", self.weights, self.grad_weights, decay=True)]

    # ---- weights file --------------------------------------------------------------------------------------
    def weight_arrays(self, saving=False):
        cfg = self.config
        keep = cfg.filters if saving or cfg.numload == 0 else min(cfg.numload, cfg.filters)
        arrays = self.epilogue.file_arrays(with_bn=saving or not cfg.dontloadscales)
        return [a[:keep] for a in arrays] + [self.weights[:keep]]

    def after_load(self, transposed):
        if self.config.flipped:
            # Darknet stores a flipped layer's weights as (c*size*size) rows x filters columns
            w = self.weights
            w[...] = w.reshape(-1, w.shape[0]).T.reshape(w.shape)
        self.parameters_changed()

    # ---- reporting -----------------------------------------------------------------------------------------
    def flops(self):
        cfg = self.config
        s = self.out_shape
        return 2.0 * cfg.filters * cfg.size ** 2 * (self.in_shapes[0].c // cfg.groups) * s.h * s.w

    def summary_row(self):
        cfg = self.config
        sy, sx = cfg.strides
        stride = f"{sx:2d}" if sx == sy else f"{sx}x{sy}"
        return (f"conv  {cfg.filters:5d} {cfg.size:2d} x{cfg.size:2d} /{stride}  "
                f"{self.describe_shape(self.in_shapes[0])}   ->  {self.describe_shape(self.out_shape)}"
                f"  {self.flops() / 1e9:5.3f} BFLOPs")
