"""Pixel-wise heads: [softmax] spatial=1 and [logistic] with per-pixel truth and the ignore index 255.
Oracles: PyTorch (softmax over dim 1, F.cross_entropy with ignore_index, BCEWithLogitsLoss) on the same
tensors, and finite differences of the layer's own cost."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from darknetpy.errors import CfgError
from darknetpy.layers.base import Shape
from darknetpy.network import network_from_text

IGNORE = 255


def head(text, c, h, w):
    net = network_from_text(f"[net]\nwidth={w}\nheight={h}\nchannels={c}\n\n{text}")
    return net, net.layers[0]


def masks_with_ignore(rng, batch, classes, h, w):
    m = rng.integers(0, classes, size=(batch, h, w)).astype(np.float32)
    m[rng.random(m.shape) < 0.2] = IGNORE
    return m


def run_loss(layer, x, truth):
    layer.allocate(x.shape[0])
    layer.set_truth(truth)
    layer.forward([x], True)
    dx = np.zeros_like(x)
    layer.backward(np.zeros_like(layer.output), [x], [dx])
    return layer.cost, dx


# ---- [softmax] spatial=1 ------------------------------------------------------------------------------------
def test_spatial_softmax_sums_to_one_per_pixel_and_matches_torch():
    rng = np.random.default_rng(0)
    x = (3 * rng.standard_normal((2, 5, 4, 6))).astype(np.float32)
    net, layer = head("[softmax]\nspatial=1", 5, 4, 6)
    assert net.shapes[0] == Shape(5, 4, 6)
    y = net.forward(x)
    np.testing.assert_allclose(y.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(y, torch.softmax(torch.from_numpy(x), dim=1).numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("temperature", [0.5, -2.0])
def test_spatial_softmax_temperature_matches_torch(temperature):
    x = (4 * np.random.default_rng(1).standard_normal((2, 3, 5, 7))).astype(np.float32)
    net, _ = head(f"[softmax]\nspatial=1\ntemperature={temperature}", 3, 5, 7)
    expected = torch.softmax(torch.from_numpy(x.astype(np.float64)) / temperature, dim=1).numpy()
    np.testing.assert_allclose(net.forward(x), expected, rtol=1e-5, atol=1e-7)


def test_spatial_softmax_of_a_long_row_of_pixels_and_extreme_logits():
    # more pixels than one parallel chunk, and logits 200 apart (shares of exp(-200): ~0 in float32)
    x = np.zeros((1, 4, 3, 1000), np.float32)
    x[0, 2] = 200.0
    x[0, 1, :, ::2] = -1.0
    net, _ = head("[softmax]\nspatial=1", 4, 3, 1000)
    y = net.forward(x)
    np.testing.assert_allclose(y[0, 2], 1.0, rtol=1e-6)
    assert np.all(y[0, [0, 1, 3]] < 1e-30) and np.all(np.isfinite(y))


@pytest.mark.parametrize("threads", [1, 2])
def test_spatial_softmax_shared_among_threads_matches_torch(monkeypatch, threads):
    """Chunks of pixels of two images shared out among the helper threads (kernels/handoff.py), the last chunk
    short: torch's softmax, and the same values at 1 and 2 threads."""
    from darknetpy.kernels import handoff, threads as thread_policy
    from darknetpy.kernels import softmax as softmax_kernels
    monkeypatch.setattr(handoff, "thread_count", lambda: threads)
    monkeypatch.setattr(thread_policy, "thread_count", lambda: threads)
    monkeypatch.setattr(softmax_kernels, "SOFTMAX_PARALLEL_MIN_VALUES", 0)
    x = (4 * np.random.default_rng(2).standard_normal((2, 6, 3, 1100))).astype(np.float32)
    net, _ = head("[softmax]\nspatial=1\ntemperature=0.7", 6, 3, 1100)
    y = net.forward(x)
    expected = torch.softmax(torch.from_numpy(x.astype(np.float64)) / np.float32(0.7), dim=1).numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-7)
    monkeypatch.setattr(handoff, "thread_count", lambda: 1)
    monkeypatch.setattr(thread_policy, "thread_count", lambda: 1)
    np.testing.assert_array_equal(net.forward(x), y)


def test_spatial_cross_entropy_and_gradient_equal_torch_with_ignore_index():
    rng = np.random.default_rng(2)
    x = (4 * rng.standard_normal((3, 4, 5, 7))).astype(np.float32)
    masks = masks_with_ignore(rng, 3, 4, 5, 7)
    _, layer = head("[softmax]\nspatial=1", 4, 5, 7)
    cost, dx = run_loss(layer, x, masks.reshape(3, -1))
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_()
    loss = F.cross_entropy(xt, torch.from_numpy(masks).long(), ignore_index=IGNORE, reduction="sum")
    loss.backward()
    assert cost == pytest.approx(loss.item(), rel=1e-5)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-5, atol=1e-6)
    assert np.all(dx[np.broadcast_to((masks == IGNORE)[:, None], dx.shape)] == 0)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_spatial_cross_entropy_equals_torch_across_pixel_chunks(temperature):
    """A 37x41 map spans two of the kernel's pixel runs, the second a partial one; per-pixel errors too."""
    rng = np.random.default_rng(5)
    x = (6 * rng.standard_normal((2, 11, 37, 41))).astype(np.float32)
    masks = masks_with_ignore(rng, 2, 11, 37, 41)
    _, layer = head(f"[softmax]\nspatial=1\ntemperature={temperature}", 11, 37, 41)
    cost, dx = run_loss(layer, x, masks.reshape(2, -1))
    xt = torch.from_numpy(x.astype(np.float64) / temperature)
    target = torch.from_numpy(masks).long()
    per_pixel = F.cross_entropy(xt, target, ignore_index=IGNORE, reduction="none").numpy()
    np.testing.assert_allclose(layer.errors.reshape(per_pixel.shape), per_pixel, rtol=1e-5, atol=1e-6)
    assert cost == pytest.approx(per_pixel.sum(), rel=1e-5)
    # Darknet's softmax delta: onehot - p (no 1/T factor), the layer hands on the standard sign
    onehot = F.one_hot(torch.where(target == IGNORE, 0, target), 11).permute(0, 3, 1, 2).numpy()
    expected = np.where((masks == IGNORE)[:, None], 0.0, torch.softmax(xt, 1).numpy() - onehot)
    np.testing.assert_allclose(dx, expected, rtol=1e-5, atol=1e-6)


def test_spatial_cross_entropy_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 3, 4)).astype(np.float32)
    masks = masks_with_ignore(rng, 2, 3, 3, 4)
    _, layer = head("[softmax]\nspatial=1", 3, 3, 4)
    _, dx = run_loss(layer, x, masks.reshape(2, -1))
    eps = 1e-2
    flat = x.reshape(-1)
    for i in rng.choice(flat.size, 20, replace=False):
        old = flat[i]
        flat[i] = old + eps
        up, _ = run_loss(layer, x, masks.reshape(2, -1))
        flat[i] = old - eps
        down, _ = run_loss(layer, x, masks.reshape(2, -1))
        flat[i] = old
        assert dx.reshape(-1)[i] == pytest.approx((up - down) / (2 * eps), abs=2e-3, rel=2e-2)


def test_saturated_softmax_pixel_gives_a_finite_loss():
    x = np.zeros((1, 2, 1, 2), np.float32)
    x[0, 0, 0, :] = 200.0   # p(class 1) = exp(-200) is 0 in float32
    _, layer = head("[softmax]\nspatial=1", 2, 1, 2)
    cost, dx = run_loss(layer, x, np.array([[0, 1]], np.float32))
    assert cost == pytest.approx(200.0, rel=1e-5)
    assert np.all(np.isfinite(dx))


def test_spatial_truth_is_one_index_per_pixel():
    _, layer = head("[softmax]\nspatial=1", 4, 3, 5)
    assert layer.truth_size() == 15 and layer.pixelwise()
    layer.allocate(2)
    layer.set_truth(np.zeros((2, 60), np.float32))
    with pytest.raises(ValueError, match=r"\(2, 15\)"):
        layer.forward([np.zeros((2, 4, 3, 5), np.float32)], True)


@pytest.mark.parametrize("bad", [4.0, -1.0, 1.5, 254.0])
def test_class_index_out_of_range_is_refused(bad):
    _, layer = head("[softmax]\nspatial=1", 4, 1, 2)
    layer.allocate(1)
    layer.set_truth(np.array([[0, bad]], np.float32))
    with pytest.raises(ValueError, match="1 truth entries"):
        layer.forward([np.zeros((1, 4, 1, 2), np.float32)], True)


def test_spatial_with_groups_is_a_located_error():
    with pytest.raises(CfgError) as info:
        head("[softmax]\nspatial=1\ngroups=2", 4, 2, 2)
    assert info.value.line == 8


def test_plain_softmax_still_runs_over_the_flattened_map():
    net, layer = head("[softmax]", 2, 2, 2)
    assert not layer.pixelwise()
    y = net.forward(np.zeros((1, 2, 2, 2), np.float32))
    np.testing.assert_allclose(y.reshape(-1), 1 / 8)


# ---- [logistic] ---------------------------------------------------------------------------------------------
def test_logistic_loss_and_gradient_equal_bce_with_logits_with_ignored_values():
    rng = np.random.default_rng(4)
    x = (5 * rng.standard_normal((2, 3, 4, 4))).astype(np.float32)
    truth = (rng.random(x.shape) < 0.5).astype(np.float32)
    truth[rng.random(x.shape) < 0.2] = IGNORE
    _, layer = head("[logistic]", 3, 4, 4)
    cost, dx = run_loss(layer, x, truth.reshape(2, -1))
    keep = torch.from_numpy((truth != IGNORE).astype(np.float64))
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_()
    target = torch.from_numpy(np.where(truth == IGNORE, 0, truth).astype(np.float64))
    loss = torch.nn.BCEWithLogitsLoss(weight=keep, reduction="sum")(xt, target)
    loss.backward()
    assert cost == pytest.approx(loss.item(), rel=1e-5)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_logistic_gradient_matches_finite_differences():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 2, 3, 3)).astype(np.float32)
    truth = (rng.random(x.shape) < 0.5).astype(np.float32).reshape(1, -1)
    _, layer = head("[logistic]", 2, 3, 3)
    _, dx = run_loss(layer, x, truth)
    eps = 1e-2
    flat = x.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up, _ = run_loss(layer, x, truth)
        flat[i] = old - eps
        down, _ = run_loss(layer, x, truth)
        flat[i] = old
        assert dx.reshape(-1)[i] == pytest.approx((up - down) / (2 * eps), abs=2e-3, rel=2e-2)


def test_saturated_logistic_pixel_gives_a_finite_loss():
    x = np.array([[[[40.0, -40.0], [40.0, -40.0]]]], np.float32)   # sigma rounds to exactly 1 and 0
    _, layer = head("[logistic]", 1, 2, 2)
    cost, dx = run_loss(layer, x, np.array([[1, 0, 0, 1]], np.float32))  # two right, two wrong
    assert np.isfinite(cost) and cost == pytest.approx(80.0, rel=1e-5)
    assert np.all(np.isfinite(dx))
    cost, _ = run_loss(layer, x, np.array([[1, 0, 1, 0]], np.float32))
    assert 0 <= cost < 1e-6


def test_logistic_masks_and_probabilities():
    _, one = head("[logistic]", 1, 2, 2)
    assert one.pixelwise()
    masks = np.array([[[0, 1], [IGNORE, 1]]], np.uint8)
    np.testing.assert_array_equal(one.mask_encoder()(masks), [[0, 1, IGNORE, 1]])
    probs = one.class_probabilities(np.array([[0.2, 0.9, 0.5, 0.6]], np.float32).reshape(1, 4, 1, 1))
    np.testing.assert_allclose(probs[0, :, 0, 0], [0.8, 0.2])
    _, three = head("[logistic]", 3, 1, 2)
    truth = three.mask_encoder()(np.array([[[2, IGNORE]]], np.uint8)).reshape(3, 2)
    np.testing.assert_array_equal(truth, [[0, IGNORE], [0, IGNORE], [1, IGNORE]])
