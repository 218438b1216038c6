"""Shared by the tests of the depthwise kernels that read straight from the image (kernels/depthwise_same3x3.py,
depthwise_same5x5.py, depthwise_stride2.py): random layers, the float64 oracle, and a run through
grouped_conv_forward into an output with guard values around it (a write past a plane fails the run)."""
import numpy as np

from darknetpy.kernels import depthwise, simd
from darknetpy.kernels.depthwise import grouped_conv_forward

from naive_conv import conv2d, leaky

SENTINEL = np.float32(-7.25)
GUARD = 2 * simd.LANES + 1


def random_layer(rng, batch, channels, height, width, ksize=3):
    """(x, weights, bias) of a depthwise ksize x ksize layer on a (batch, channels, height, width) input."""
    x = rng.standard_normal((batch, channels, height, width)).astype(np.float32)
    weights = rng.standard_normal((channels, 1, ksize, ksize)).astype(np.float32)
    bias = rng.standard_normal(channels).astype(np.float32)
    return x, weights, bias


def expected(x, weights, bias, leaky_out, stride):
    """The float64 convolution (padding: half the kernel), leaky or not."""
    raw = conv2d(x.astype(np.float64), weights.astype(np.float64), bias.astype(np.float64), stride, stride,
                 weights.shape[2] // 2, x.shape[1])
    return leaky(raw) if leaky_out else raw


def convolve(x, weights, bias, leaky_out, stride, suits, channel_major=False):
    """(out (B, C, H', W'), whether the kernel `suits` names took the layer), through grouped_conv_forward,
    into guarded memory laid out as the inference output or as the training's channel-major product."""
    batch, channels, height, width = x.shape
    out_h, out_w = (height - 1) // stride + 1, (width - 1) // stride + 1
    size = batch * channels * out_h * out_w
    memory = np.full(size + 2 * GUARD, SENTINEL, np.float32)
    inner = memory[GUARD:GUARD + size]
    if channel_major:
        out = inner.reshape(channels, batch, out_h, out_w).transpose(1, 0, 2, 3)
    else:
        out = inner.reshape(batch, channels, out_h, out_w)
    pad = weights.shape[2] // 2
    took = depthwise._straight_planes(suits, x, weights, stride, stride, pad, 1, out) is not None
    grouped_conv_forward(x, weights, bias, stride, stride, pad, 1, out, leaky_out)
    assert (memory[:GUARD] == SENTINEL).all() and (memory[-GUARD:] == SENTINEL).all(), "wrote outside the output"
    return out, took


def assert_shared_out_equals_serial(monkeypatch, kernel_module, share_name, run, tasks):
    """`run()` (a convolution through the kernel of `kernel_module`) gives the same output shared out between
    two threads as serially, its kernel `share_name` (a share function of kernels/handoff.py) taking half of the
    `tasks` planes each."""
    from darknetpy.kernels import handoff, threads
    serial = run()
    monkeypatch.setattr(kernel_module, "PARALLEL_MIN_MACS", 0)
    monkeypatch.setattr(threads, "thread_count", lambda: 2)
    monkeypatch.setattr(handoff, "thread_count", lambda: 2)
    ranges = []
    real = getattr(kernel_module, share_name)
    monkeypatch.setattr(kernel_module, share_name, lambda *args: ranges.append(args[-2:]) or real(*args))
    np.testing.assert_array_equal(run(), serial)
    assert sorted(ranges) == [(0, tasks // 2), (tasks // 2, tasks)]
