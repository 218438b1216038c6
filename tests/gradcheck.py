"""Finite-difference checks of a layer's backward pass: the independent oracle for every gradient."""
from __future__ import annotations

import numpy as np

from darknetpy.layers.base import Layer, Shape
from darknetpy.network import network_from_text


def build_layer(cfg_text: str, in_shape: Shape, batch: int = 2, extra_inputs: list[Shape] | None = None):
    """Build the single layer section in `cfg_text` (no [net] needed) for the given input shape(s)."""
    text = f"[net]\nwidth={in_shape.w}\nheight={in_shape.h}\nchannels={in_shape.c}\n\n{cfg_text}"
    net = network_from_text(text)
    layer = net.layers[-1]
    return net, layer


def numeric_gradient(f, array: np.ndarray, indices, eps: float) -> np.ndarray:
    grads = []
    flat = array.reshape(-1)
    for i in indices:
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        grads.append((up - down) / (2 * eps))
    return np.array(grads)


def check_layer_gradients(layer: Layer, xs: list[np.ndarray], train: bool = True, eps: float = 1e-2,
                          rtol: float = 2e-2, atol: float = 2e-3, samples: int = 25, seed: int = 0,
                          check_params: bool = True) -> None:
    """Compare backward() against central differences of L = sum(forward(xs) * R) in float64."""
    rng = np.random.default_rng(seed)
    batch = xs[0].shape[0]
    layer.allocate(batch)
    out = layer.forward(xs, train)
    weights_r = rng.standard_normal(out.shape).astype(np.float32)

    def loss() -> float:
        return float(np.sum(layer.forward(xs, train).astype(np.float64) * weights_r))

    for p in layer.params():
        p.grad.fill(0)
    layer.forward(xs, train)
    dxs = [np.zeros_like(x) for x in xs]
    layer.backward(weights_r.copy(), xs, dxs)
    targets = [(f"input {k}", x, dx) for k, (x, dx) in enumerate(zip(xs, dxs))]
    if check_params:
        targets += [(p.name, p.value, p.grad.copy()) for p in layer.params()]
    for name, array, analytic in targets:
        n = array.size
        idx = rng.choice(n, size=min(samples, n), replace=False)
        numeric = numeric_gradient(loss, array, idx, eps)
        # A point whose two step sizes disagree straddles a kink (relu, leaky, max): not comparable there.
        half = numeric_gradient(loss, array, idx, eps / 2)
        smooth = np.abs(numeric - half) <= atol + rtol * np.abs(half)
        assert smooth.mean() >= 0.7, f"{name}: too many sampled points sit on kinks"
        got = analytic.reshape(-1)[idx].astype(np.float64)
        np.testing.assert_allclose(got[smooth], numeric[smooth], rtol=rtol, atol=atol,
                                   err_msg=f"gradient of {name}")
