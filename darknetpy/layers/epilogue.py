"""The tail that follows a layer's linear part: bias, then batch norm, then the activation (spec §4.2, §3).

Convolutional, deconvolutional and connected layers end in the whole tail (`Epilogue`); [batchnorm] is the
tail without an activation; [shortcut], [local] and [activation] have only the activation (`ActivationTail`).
Every form of the tail lives here once:
  * (B, C, S) values, training or inference (connected, deconvolutional, [batchnorm]);
  * a convolution's channel-major (C, B*S) product in training, where one kernel does BN, the bias, leaky and
    the transpose into the (B, C, S) output (kernels/batchnorm.py);
  * inference with the batch norm folded into the weights (`fold_into`), after which only a shift and the
    activation remain; kernels that add the shift and leaky themselves ask `fuses_leaky` first.

Darknet differentiates through the activation *output* (spec §3); AlexeyAB's non-monotonic activations
(codes in NEEDS_INPUT) need the pre-activation input instead, so the tail keeps a copy of it for them only.
"""
from __future__ import annotations

import numpy as np

from ..kernels import activations as act
from ..kernels import batchnorm as bn_kernels
from .base import FLOAT, Param

# Statistics arrays the channel-major kernels never read when there is no batch norm.
_UNUSED = np.empty(0, FLOAT)


class BatchNormBlock:
    """Per-channel BN state (scales, rolling statistics) with Darknet's training and inference rules.
    The biases (beta) belong to the epilogue, which adds them after the scale as Darknet does."""

    def __init__(self, channels: int):
        self.channels = channels
        self.scales = np.ones(channels, FLOAT)
        self.rolling_mean = np.zeros(channels, FLOAT)
        self.rolling_var = np.zeros(channels, FLOAT)
        self.grad_scales = np.zeros(channels, FLOAT)
        self.mean = np.zeros(channels, FLOAT)
        self.var = np.zeros(channels, FLOAT)
        self._x_saved: np.ndarray | None = None
        self._x_norm: np.ndarray | None = None

    def file_arrays(self) -> list[np.ndarray]:
        return [self.scales, self.rolling_mean, self.rolling_var]

    def fold(self, biases: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(a, b) with BN(x) + bias == a*x + b at inference."""
        a = np.empty(self.channels, FLOAT)
        b = np.empty(self.channels, FLOAT)
        bn_kernels.fold_inference(self.scales, biases, self.rolling_mean, self.rolling_var, a, b)
        return a, b

    def forward_train(self, y3: np.ndarray, biases: np.ndarray) -> None:
        if self._x_saved is None or self._x_saved.shape != y3.shape:
            self._x_saved = np.empty_like(y3)
            self._x_norm = np.empty_like(y3)
        bn_kernels.train_forward(y3, self.scales, biases, self.rolling_mean, self.rolling_var,
                                 self.mean, self.var, self._x_saved, self._x_norm)

    def backward(self, dy3: np.ndarray, grad_biases: np.ndarray) -> None:
        if self._x_saved is None:
            raise RuntimeError("batch-norm backward without a training forward pass")
        bn_kernels.train_backward(dy3, self._x_saved, self.mean, self.var, self.scales,
                                  self.grad_scales, grad_biases)

    def params(self) -> list[Param]:
        return [Param("scales", self.scales, self.grad_scales, decay=False)]


class ActivationTail:
    """An activation applied in place, with the pre-activation copy its gradient may need."""

    def __init__(self, code: int):
        self.code = code
        self.pre_activation: np.ndarray | None = None

    @property
    def fuses_leaky(self) -> bool:
        """Whether a kernel may apply this activation itself (Darknet's leaky, which needs no saved input)."""
        return self.code in (act.LEAKY, act.REVLEAKY)

    def allocate(self, shape: tuple[int, ...]) -> None:
        self.pre_activation = np.empty(shape, FLOAT) if self.code in act.NEEDS_INPUT else None

    def apply(self, values: np.ndarray) -> None:
        """values = f(values), keeping the input first when the gradient needs it."""
        if self.code == act.LINEAR:
            return
        flat = values.reshape(-1)
        if self.pre_activation is None:
            act.activate(flat, self.code)
        else:
            pre = self.pre_activation.reshape(-1)
            np.copyto(pre, flat)
            act.activate_to(pre, flat, self.code)

    def apply_unless_fused(self, values: np.ndarray) -> None:
        """The activation after a kernel that has already applied it if it `fuses_leaky`."""
        if not self.fuses_leaky:
            self.apply(values)

    def apply_to(self, source: np.ndarray, values: np.ndarray) -> None:
        """values = f(source); the caller keeps `source` and hands it to `backprop`."""
        act.activate_to(source.reshape(-1), values.reshape(-1), self.code)

    def backprop(self, dy: np.ndarray, output: np.ndarray, source: np.ndarray | None = None) -> None:
        """dy *= f'(.) in place, at the saved pre-activation (or `source`, see apply_to) where it is needed."""
        pre = source if source is not None else self.pre_activation
        pre_flat = pre.reshape(-1) if pre is not None and self.code in act.NEEDS_INPUT else _UNUSED
        act.gradient(dy.reshape(-1), output.reshape(-1), pre_flat, self.code)


class Epilogue:
    """Bias, optional batch norm and activation over `channels` channels; owns the biases and the BN state.
    With batch norm the biases are BN's beta, added after the scale as Darknet does."""

    def __init__(self, channels: int, code: int, batch_normalize: bool):
        self.biases = np.zeros(channels, FLOAT)
        self.grad_biases = np.zeros(channels, FLOAT)
        self.bn = BatchNormBlock(channels) if batch_normalize else None
        self.activation = ActivationTail(code)
        self._scale = np.empty(channels, FLOAT)
        self._shift = np.empty(channels, FLOAT)

    def allocate(self, output_shape: tuple[int, ...]) -> None:
        self.activation.allocate(output_shape)

    def params(self) -> list[Param]:
        ps = [Param("biases", self.biases, self.grad_biases, decay=False)]
        if self.bn is not None:
            ps += self.bn.params()
        return ps

    def file_arrays(self, with_bn: bool) -> list[np.ndarray]:
        """biases, then scales, rolling mean and variance when there is BN and `with_bn`."""
        arrays = [self.biases]
        if self.bn is not None and with_bn:
            arrays += self.bn.file_arrays()
        return arrays

    # ---- (B, C, S) values --------------------------------------------------------------------------------
    def forward(self, out3: np.ndarray, train: bool) -> None:
        """out3 (B, C, S) = f(BN(out3) + bias) in place, BN with batch statistics when training."""
        bn = self.bn
        if bn is None:
            self.shift_activate(out3, self.biases)
            return
        if train:
            bn.forward_train(out3, self.biases)
        else:
            bn_kernels.fold_inference(bn.scales, self.biases, bn.rolling_mean, bn.rolling_var, self._scale,
                                      self._shift)
            bn_kernels.affine_channels(out3, self._scale, self._shift)
        self.activation.apply(out3)

    def backward(self, dy3: np.ndarray, output: np.ndarray) -> None:
        """dy3 (B, C, S): dL/d(output) becomes dL/d(the values before the tail) in place; accumulates the
        gradients of the biases (and BN scales). Needs the training forward just before."""
        self.activation.backprop(dy3, output)
        if self.bn is not None:
            self.bn.backward(dy3, self.grad_biases)
        else:
            self.grad_biases += dy3.sum(axis=(0, 2), dtype=np.float32)

    # ---- inference with the batch norm folded into the weights -------------------------------------------
    def fold_into(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(weights', shift) with f(weights' * x + shift) == the tail applied to weights * x at inference;
        weights is (C, ...) and is returned itself when there is no batch norm."""
        if self.bn is None:
            return weights, self.biases
        scale, shift = self.bn.fold(self.biases)
        return (weights * scale.reshape((-1,) + (1,) * (weights.ndim - 1))).astype(FLOAT), shift

    def shift_activate(self, out3: np.ndarray, shift: np.ndarray) -> None:
        """out3 (B, C, S) = f(out3 + shift) in place (one fused pass when the gradient needs no input copy)."""
        code = self.activation.code
        if self.activation.pre_activation is None:
            act.bias_activate_auto(out3, shift, code)
        else:
            act.bias_activate_auto(out3, shift, act.LINEAR)
            self.activation.apply(out3)

    # ---- a convolution's channel-major product in training ----------------------------------------------
    def forward_channel_major(self, product: np.ndarray, out3: np.ndarray) -> None:
        """out3 (B, C, S) = f(BN(product) + bias) from the (C, B*S) product, which is kept as BN's input."""
        bn = self.bn
        leaky = self.activation.fuses_leaky
        if bn is not None:
            bn_kernels.train_forward_channel_major(product, bn.scales, self.biases, bn.rolling_mean,
                                                   bn.rolling_var, bn.mean, bn.var, True, leaky, out3)
        else:
            bn_kernels.train_forward_channel_major(product, _UNUSED, self.biases, _UNUSED, _UNUSED, _UNUSED,
                                                   _UNUSED, False, leaky, out3)
        self.activation.apply_unless_fused(out3)

    def backward_channel_major(self, dy3: np.ndarray, output: np.ndarray, product: np.ndarray) -> np.ndarray:
        """dL/d(product), written over `product` (C, B*S) and returned, from dy3 = dL/d(output) (B, C, S),
        which is scratch afterwards. Accumulates the gradients of the biases (and BN scales)."""
        leaky = self.activation.fuses_leaky
        if not leaky:
            self.activation.backprop(dy3, output)
        bn = self.bn
        # elementwise in place: each channel reads its saved input before overwriting it
        if bn is not None:
            bn_kernels.train_backward_channel_major(dy3, product, bn.mean, bn.var, bn.scales, self.biases,
                                                    bn.grad_scales, self.grad_biases, True, leaky, product)
        else:
            bn_kernels.train_backward_channel_major(dy3, product, _UNUSED, _UNUSED, _UNUSED, self.biases,
                                                    _UNUSED, self.grad_biases, False, leaky, product)
        return product


class EpilogueOwner:
    """The host layer's view of its tail: the arrays Darknet's files and the tests name on the layer."""
    epilogue: Epilogue

    @property
    def biases(self) -> np.ndarray:
        return self.epilogue.biases

    @property
    def grad_biases(self) -> np.ndarray:
        return self.epilogue.grad_biases

    @property
    def bn(self) -> BatchNormBlock | None:
        return self.epilogue.bn
