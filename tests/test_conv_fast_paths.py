"""The fast convolution paths against slow references: the direct grouped/depthwise kernel, Winograd
F(2x2)/F(4x4), the gather im2col/col2im, the channel-major training path (BN + leaky + transpose fused),
the batch-norm kernels, and the max-pool kernel. Oracles: tests/naive_conv.py and naive_pooling.py (float64
loops), numpy float64 formulas of spec §4.2, and PyTorch (float64) for gradients."""
import numpy as np
import pytest

from darknetpy import thread_environment
from darknetpy.kernels import batchnorm as bn_kernels
from darknetpy.kernels import pointwise, pooling, winograd
from darknetpy.layers import conv_engines
from darknetpy.kernels.depthwise import grouped_conv_backward, grouped_conv_forward
from darknetpy.kernels.im2col import col2im_batch_add, im2col_batch

from naive_conv import batchnorm_inference, conv2d, leaky
from naive_pooling import FLT_MAX, maxpool
from builders import image_net as make_net

RNG = np.random.default_rng(20240611)


def out_size(size, k, stride, pad, dilation=1):
    return (size + 2 * pad - (dilation * (k - 1) + 1)) // stride + 1


def randomise(layer, rng):
    for a in layer.weight_arrays(saving=True):
        a[...] = rng.uniform(0.5, 1.5, a.shape) if a is not layer.weights else rng.standard_normal(a.shape)
    layer.parameters_changed()


def torch_or_skip():
    return pytest.importorskip("torch")


def shifted_conv(x, weights, stride, pad):
    """float64 convolution (groups 1) as a sum over the taps of shifted slices: the same definition as
    naive_conv.conv2d, vectorised for the larger cases."""
    batch, c, h, w = x.shape
    f, _, k, _ = weights.shape
    oh, ow = out_size(h, k, stride, pad), out_size(w, k, stride, pad)
    padded = np.zeros((batch, c, h + 2 * pad, w + 2 * pad))
    padded[:, :, pad:pad + h, pad:pad + w] = x
    out = np.zeros((batch, f, oh, ow))
    for ky in range(k):
        for kx in range(k):
            patch = padded[:, :, ky:ky + (oh - 1) * stride + 1:stride, kx:kx + (ow - 1) * stride + 1:stride]
            out += np.einsum("bchw,fc->bfhw", patch, weights[:, :, ky, kx].astype(np.float64))
    return out


# ---- direct grouped / depthwise kernel ----------------------------------------------------------------
# (batch, channels, filters, groups, height, width, ksize, stride, pad, dilation)
DIRECT_CASES = [
    (2, 6, 6, 6, 9, 11, 3, 1, 1, 1),     # depthwise, odd sizes, batch 2
    (2, 6, 6, 6, 9, 11, 3, 2, 1, 1),     # depthwise stride 2
    (1, 5, 5, 5, 8, 7, 3, 2, 1, 1),      # stride 2 on an even/odd map
    (1, 4, 8, 4, 7, 5, 3, 2, 0, 1),      # depth multiplier 2, no padding
    (2, 8, 4, 2, 10, 9, 5, 1, 2, 1),     # 4 in / 2 out channels per group, 5x5
    (1, 6, 6, 3, 9, 9, 3, 1, 2, 2),      # dilation 2
    (1, 3, 3, 3, 4, 5, 3, 3, 1, 1),      # stride 3
    (3, 3, 16, 1, 13, 12, 3, 1, 1, 1),   # ungrouped first layer (RGB)
    (2, 1, 4, 1, 7, 6, 3, 2, 1, 1),      # grey first layer, stride 2
    (1, 4, 4, 4, 6, 6, 1, 1, 0, 1),      # grouped 1x1
    (1, 2, 2, 2, 5, 5, 4, 1, 1, 1),      # even kernel
    (2, 5, 5, 5, 11, 9, 5, 1, 2, 1),     # depthwise 5x5 (Yolo-Fastest), odd sizes
    (1, 3, 3, 3, 10, 13, 5, 2, 2, 1),    # depthwise 5x5 stride 2, padding 2 (both phases start inside)
    (1, 4, 8, 4, 7, 10, 5, 1, 1, 1),     # 5x5, depth multiplier 2, partial padding
    (1, 3, 3, 3, 9, 8, 5, 2, 2, 1),      # 5x5 stride 2 (the generic taps)
    (1, 4, 4, 4, 12, 11, 5, 1, 4, 2),    # 5x5 dilation 2
    # 3x3 stride 2 padding 1 on even widths: phases filled from a column split
    (2, 6, 6, 6, 9, 12, 3, 2, 1, 1),     # depthwise, odd height, batch 2
    (1, 5, 5, 5, 8, 10, 3, 2, 1, 1),     # even height
    (1, 4, 8, 2, 6, 8, 3, 2, 1, 1),      # 2 in / 4 out channels per group
    (1, 3, 3, 3, 2, 2, 3, 2, 1, 1),      # one output per plane
    (1, 3, 6, 3, 1, 4, 3, 2, 1, 1),      # a single image row, depth multiplier 2
    # filters in blocks of four, and the filters left over
    (1, 1, 7, 1, 8, 8, 3, 2, 1, 1),      # column split
    (1, 3, 6, 1, 9, 10, 3, 2, 1, 1),     # RGB at stride 2 (phases, accumulated over the channels)
    (2, 3, 9, 1, 7, 9, 3, 1, 1, 1),      # RGB at stride 1
]


@pytest.mark.parametrize("case", DIRECT_CASES)
def test_direct_forward_matches_naive(case):
    batch, c, f, groups, h, w, k, s, p, d = case
    x = RNG.standard_normal((batch, c, h, w)).astype(np.float32)
    weights = RNG.standard_normal((f, c // groups, k, k)).astype(np.float32)
    bias = RNG.standard_normal(f).astype(np.float32)
    ref = conv2d(x.astype(np.float64), weights, bias, s, s, p, groups, d)
    out = np.empty(ref.shape, np.float32)
    grouped_conv_forward(x, weights, bias, s, s, p, d, out)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    grouped_conv_forward(x, weights, bias, s, s, p, d, out, leaky=True)
    np.testing.assert_allclose(out, leaky(ref), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", [
    (1, 3, 16, 1, 13, 12, 3, 1, 1, 1),    # RGB at stride 1: four blocks of four filters
    (1, 3, 6, 1, 9, 10, 3, 2, 1, 1),      # RGB at stride 2, column split: one block and two single filters
    (1, 1, 16, 1, 20, 20, 3, 2, 1, 1),    # grey at stride 2
    (1, 2, 5, 1, 9, 8, 5, 1, 2, 1),       # 5x5: filters one by one
    (1, 3, 4, 1, 12, 11, 3, 1, 2, 2),     # dilation 2: the generic taps
])
def test_direct_forward_shares_out_the_filters_of_a_single_image(case, monkeypatch):
    """An ungrouped layer at batch 1 is one task: its phases are filled once and its filter blocks shared
    out among the threads (each with its own grids), against the float64 oracle."""
    from darknetpy.kernels import depthwise
    monkeypatch.setattr(depthwise, "PARALLEL_MIN_MACS", 0)
    batch, c, f, groups, h, w, k, s, p, d = case
    x = RNG.standard_normal((batch, c, h, w)).astype(np.float32)
    weights = RNG.standard_normal((f, c // groups, k, k)).astype(np.float32)
    bias = RNG.standard_normal(f).astype(np.float32)
    ref = conv2d(x.astype(np.float64), weights, bias, s, s, p, groups, d)
    out = np.full(ref.shape, np.nan, np.float32)
    grouped_conv_forward(x, weights, bias, s, s, p, d, out, leaky=True)
    np.testing.assert_allclose(out, leaky(ref), rtol=1e-5, atol=1e-5)


def test_direct_forward_on_strided_views():
    """A channel-sliced input (not contiguous: the column split needs flat planes, so the phase path runs)
    and an output inside a larger buffer, as the training path passes its channel-major product."""
    whole = RNG.standard_normal((2, 12, 10, 12)).astype(np.float32)
    x = whole[:, ::2]
    weights = RNG.standard_normal((6, 1, 3, 3)).astype(np.float32)
    bias = RNG.standard_normal(6).astype(np.float32)
    ref = conv2d(x.astype(np.float64), weights, bias, 2, 2, 1, 6, 1)
    for source in (x, np.ascontiguousarray(x)):
        buffer = np.full((6, 2 * 5 * 6 + 3), np.nan, np.float32)
        out = buffer[:, :60].reshape(6, 2, 5, 6).transpose(1, 0, 2, 3)
        grouped_conv_forward(source, weights, bias, 2, 2, 1, 1, out)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
        assert np.isnan(buffer[:, 60:]).all()


@pytest.mark.parametrize("threaded", [False, True])
@pytest.mark.parametrize("height,width", [(3, 3), (3, 6), (5, 3), (4, 4), (9, 11), (16, 17), (80, 80)])
def test_same_3x3_depthwise_from_the_image_matches_the_phase_grid(height, width, threaded, monkeypatch):
    """Same-size depthwise 3x3 layers run straight from the image (kernels/depthwise_same3x3.py; its own tests
    are in test_depthwise_same3x3.py): the same results as the phase grid they took before, leaky or not, with
    inf and NaN in the edge columns and rows (a wrapped inf must not reach the next row's first output), and
    against the float64 oracle."""
    from darknetpy.kernels import depthwise, depthwise_same3x3
    monkeypatch.setattr(depthwise, "PARALLEL_MIN_MACS", 0 if threaded else 1 << 62)
    monkeypatch.setattr(depthwise_same3x3, "PARALLEL_MIN_MACS", 0 if threaded else 1 << 62)
    x = RNG.standard_normal((2, 5, height, width)).astype(np.float32)
    x[0, 0, 1, -1] = np.inf        # row 1's last column: rows 0-2 of column 0 must stay finite
    x[0, 1, :, 0] = -np.inf
    x[1, 2, -1, 1] = np.nan
    x[1, 3, 0, :] = 1e30
    weights = RNG.standard_normal((5, 1, 3, 3)).astype(np.float32)
    bias = RNG.standard_normal(5).astype(np.float32)
    assert depthwise.writes_same_3x3_directly(x, weights, 1, 1, 1, 1, np.empty_like(x))
    ref = conv2d(x.astype(np.float64), weights, bias, 1, 1, 1, 5, 1)
    for fused_leaky in (False, True):
        direct = np.full_like(x, 7.0)
        depthwise.grouped_conv_forward(x, weights, bias, 1, 1, 1, 1, direct, fused_leaky)
        with monkeypatch.context() as m:
            m.setattr(depthwise_same3x3, "suits", lambda *args: False)
            grid = np.full_like(x, 7.0)
            depthwise.grouped_conv_forward(x, weights, bias, 1, 1, 1, 1, grid, fused_leaky)
        with np.errstate(invalid="ignore", over="ignore"):
            np.testing.assert_allclose(direct, grid, rtol=1e-5, atol=1e-4)
            expected = leaky(ref) if fused_leaky else ref
            np.testing.assert_allclose(direct, expected, rtol=1e-5, atol=1e-4)
    assert np.isfinite(direct[0, 0, :3, 0]).all()


def test_same_3x3_depthwise_writes_the_training_product_in_place():
    """The training forward passes its channel-major (F, B*H*W) product as (B, F, H, W) planes: the
    straight-from-the-image path writes into that buffer itself."""
    x = RNG.standard_normal((2, 4, 6, 7)).astype(np.float32)
    weights = RNG.standard_normal((4, 1, 3, 3)).astype(np.float32)
    bias = RNG.standard_normal(4).astype(np.float32)
    product = np.full((4, 2 * 42), np.nan, np.float32)
    out = product.reshape(4, 2, 6, 7).transpose(1, 0, 2, 3)
    from darknetpy.kernels import depthwise
    assert depthwise.writes_same_3x3_directly(x, weights, 1, 1, 1, 1, out)
    grouped_conv_forward(x, weights, bias, 1, 1, 1, 1, out)
    expected = conv2d(x.astype(np.float64), weights, bias, 1, 1, 1, 4, 1)
    np.testing.assert_allclose(product, expected.transpose(1, 0, 2, 3).reshape(4, -1), rtol=1e-5, atol=1e-5)


def test_direct_scratch_is_not_shared_by_different_placements():
    """The direct kernel keeps its phase scratch between calls, sharing it per placement: a 12x12 image
    without padding fills every cell of the 12-wide phase rows that a padded 10x10 image (the same phase
    shape) needs to stay zero at its border."""
    weights = RNG.standard_normal((4, 1, 3, 3)).astype(np.float32)
    bias = RNG.standard_normal(4).astype(np.float32)
    for size, pad in ((12, 0), (10, 1), (12, 0), (10, 1)):
        x = RNG.standard_normal((1, 4, size, size)).astype(np.float32)
        out = np.empty((1, 4, 10, 10), np.float32)
        grouped_conv_forward(x, weights, bias, 1, 1, pad, 1, out)
        np.testing.assert_allclose(out, conv2d(x.astype(np.float64), weights, bias, 1, 1, pad, 4, 1),
                                   rtol=1e-5, atol=1e-5)


# batch, channels, h, w, k, stride, pad, dilation
CHANNELS_LAST_CASES = [
    (1, 8, 10, 10, 3, 1, 1, 1),
    (2, 19, 7, 9, 3, 1, 1, 1),     # channels past the vector width, odd sizes, two images
    (1, 16, 20, 20, 3, 2, 1, 1),   # stride 2
    (1, 5, 6, 7, 3, 3, 0, 1),      # stride 3, no padding
    (2, 5, 9, 8, 5, 1, 2, 1),      # 5x5 (the tap-by-tap path)
    (1, 6, 11, 10, 5, 2, 2, 1),    # 5x5 stride 2
    (1, 4, 12, 11, 5, 1, 4, 2),    # 5x5 dilation 2
    (1, 3, 6, 6, 3, 1, 3, 1),      # padding beyond the kernel: output larger than the input
    (1, 7, 5, 4, 1, 1, 0, 1),      # 1x1
]


@pytest.mark.parametrize("case", CHANNELS_LAST_CASES)
def test_channels_last_depthwise_forward_matches_naive(case):
    from darknetpy.kernels import depthwise_channels_last as cl
    batch, c, h, w, k, s, p, d = case
    x = RNG.standard_normal((batch, c, h, w)).astype(np.float32)
    weights = RNG.standard_normal((c, 1, k, k)).astype(np.float32)
    bias = RNG.standard_normal(c).astype(np.float32)
    ref = conv2d(x.astype(np.float64), weights, bias, s, s, p, c, d)
    out = np.full(ref.shape, np.nan, np.float32)
    shape = cl.padded_shape(c, h, w, k, s, s, p, d, ref.shape[2], ref.shape[3])
    padded = np.zeros(shape, np.float32)
    taps, offsets = cl.taps_of(weights), cl.tap_offsets(k, d, shape)
    cl.depthwise_channels_last_forward(x, taps, offsets, bias, s, s, p, padded, out)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    cl.depthwise_channels_last_forward(x, taps, offsets, bias, s, s, p, padded, out, leaky=True)
    np.testing.assert_allclose(out, leaky(ref), rtol=1e-5, atol=1e-5)


def test_channels_last_layers_sharing_a_scratch_shape_with_another_placement(monkeypatch):
    """Layers 0 and 2 need the same (12, 12, C) scratch, but layer 0 places a 10x10 image at (1, 1) and
    layer 2 an 8x8 one at (2, 2), whose border layer 0's image would overwrite; and the mish of layer 2 is
    applied after the kernel. (Same-size 3x3 layers such as 0 and 3 now run straight from the image, so that
    path is switched off here: the sharing rule is the channels-last engine's, whatever shapes reach it.)"""
    from darknetpy.kernels import depthwise_same3x3
    monkeypatch.setattr(depthwise_same3x3, "suits", lambda *args: False)
    text = ("[convolutional]\nfilters=6\ngroups=6\nsize=3\npad=1\nbatch_normalize=1\nactivation=leaky\n"
            "[convolutional]\nfilters=6\ngroups=6\nsize=3\npadding=0\nactivation=linear\n"
            "[convolutional]\nfilters=6\ngroups=6\nsize=5\npadding=2\nbatch_normalize=1\nactivation=mish\n"
            "[convolutional]\nfilters=6\ngroups=6\nsize=3\npad=1\nactivation=leaky\n")
    net = make_net(text, 10, 10, 6)
    for layer in net.layers:
        randomise(layer, RNG)
    x = RNG.standard_normal((2, 6, 10, 10)).astype(np.float32)
    for _ in range(2):   # the second pass finds the scratches the first one left
        got = net.forward(x).copy()
    assert [layer.engine.name for layer in net.layers] == ["channels-last"] * 4
    values = x.astype(np.float64)
    for layer in net.layers:
        cfg = layer.config
        pad = cfg.size // 2 if cfg.pad else cfg.padding
        values = conv2d(values, layer.weights, np.zeros(6), 1, 1, pad, 6)
        if layer.bn is not None:
            values = batchnorm_inference(values, layer.bn.scales, layer.biases, layer.bn.rolling_mean,
                                         layer.bn.rolling_var)
        else:
            values = values + layer.biases[None, :, None, None]
        if cfg.activation == "leaky":
            values = leaky(values)
        elif cfg.activation == "mish":
            values = values * np.tanh(np.logaddexp(0, values))
    np.testing.assert_allclose(got, values, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", DIRECT_CASES)
def test_direct_backward_matches_torch(case):
    torch = torch_or_skip()
    batch, c, f, groups, h, w, k, s, p, d = case
    x = RNG.standard_normal((batch, c, h, w)).astype(np.float32)
    weights = RNG.standard_normal((f, c // groups, k, k)).astype(np.float32)
    oh, ow = out_size(h, k, s, p, d), out_size(w, k, s, p, d)
    dy = RNG.standard_normal((batch, f, oh, ow)).astype(np.float32)
    grad_w = np.full_like(weights, 0.25)  # gradients accumulate
    dx = np.full_like(x, -0.5)
    grouped_conv_backward(x, weights, dy, s, s, p, d, grad_w, dx)
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tw = torch.tensor(weights, dtype=torch.float64, requires_grad=True)
    y = torch.nn.functional.conv2d(tx, tw, None, stride=s, padding=p, dilation=d, groups=groups)
    y.backward(torch.tensor(dy, dtype=torch.float64))
    np.testing.assert_allclose(grad_w, tw.grad.numpy() + 0.25, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, tx.grad.numpy() - 0.5, rtol=1e-4, atol=1e-4)
    grad_only = np.zeros_like(weights)
    grouped_conv_backward(x, weights, dy, s, s, p, d, grad_only, None)
    np.testing.assert_allclose(grad_only, tw.grad.numpy(), rtol=1e-4, atol=1e-4)


# ---- Winograd ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("batch,c,k,h,w,pad", [
    (1, 3, 4, 5, 7, 1),     # outputs smaller than two tiles, odd
    (2, 5, 6, 9, 11, 1),    # odd sizes: partial tiles on both edges, batch 2
    (1, 4, 3, 13, 13, 1),   # 13x13 as in yolov3-tiny's deep layers
    (1, 2, 2, 8, 8, 0),     # valid convolution
    (1, 3, 2, 6, 7, 2),     # padding 2: the output grows
    (3, 2, 3, 4, 4, 1),
    (1, 3, 4, 7, 37, 1),    # wide rows: F(2x2) past SMALL_TILES_W takes the phase-split path too
    (2, 2, 3, 5, 35, 2),
    (1, 2, 2, 6, 34, 0),
])
def test_winograd_matches_naive_for_every_block_size(tile, batch, c, k, h, w, pad):
    x = RNG.standard_normal((batch, c, h, w)).astype(np.float32)
    weights = RNG.standard_normal((k, c, 3, 3)).astype(np.float32)
    bias = RNG.standard_normal(k).astype(np.float32)
    ref = conv2d(x.astype(np.float64), weights, bias, 1, 1, pad)
    out = np.empty(ref.shape, np.float32)
    u = winograd.transform_weights(weights, tile)
    tiles_h, tiles_w = winograd.tile_counts(ref.shape[2], ref.shape[3], tile)
    first = {}
    for rows in sorted({1, 2, batch * tiles_h}):
        v_size, m_size = winograd.scratch_sizes(c, k, tile, tiles_w, rows)
        # blocks dealt to 1-3 threads, each with its own scratch (NaN: nothing is read before it is written)
        # or each block to 2-3 threads (or 2 x 2) sharing its filters, empty shares included (3 filters in 2)
        splits = [(parts, 1) for parts in range(1, min(3, -(-batch * tiles_h // rows)) + 1)]
        for parts, groups in splits + [(2, 2), (3, 3), (4, 2)]:
            v, m = np.full((parts, v_size), np.nan, np.float32), np.full((parts, m_size), np.nan, np.float32)
            for fuse_leaky in (False, True):
                out.fill(np.nan)
                winograd.winograd_conv(x, u, bias, pad, tile, fuse_leaky, rows, v, m, out, filter_groups=groups)
                expected = leaky(ref) if fuse_leaky else ref
                np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4 if tile == 4 else 1e-5)
                # a tile's sums do not depend on its block nor on the thread that computed it
                np.testing.assert_array_equal(out, first.setdefault(fuse_leaky, out.copy()))
        # nor on the weights' prefetch
        pointwise.FETCH_ON_ONE_THREAD = False
        try:
            winograd.winograd_conv(x, u, bias, pad, tile, True, rows, v[:1], m[:1], out)
        finally:
            pointwise.FETCH_ON_ONE_THREAD = True
        np.testing.assert_array_equal(out, first[True])


@pytest.mark.parametrize("tile", [2, 4])
def test_winograd_blocks_shared_out_among_threads_match_naive(tile, monkeypatch):
    # Three threads over a batch of 2 (a short block a thread, plans from the engine), forward with leaky
    # and the training path's accumulate (dx += the transposed convolution); the same bits as one thread
    import darknetpy.layers.conv_engines as conv
    from darknetpy.kernels import activations as act
    from darknetpy.layers.epilogue import Epilogue
    monkeypatch.setattr(conv, "WINOGRAD_PARALLEL_MIN_MACS", 1)
    batch, c, k, h, w = 2, 5, 6, 2 * tile + 3, 8 * tile + 1
    x = RNG.standard_normal((batch, c, h, w)).astype(np.float32)
    weights = RNG.standard_normal((k, c, 3, 3)).astype(np.float32)
    bias = RNG.standard_normal(k).astype(np.float32)
    ref = conv2d(x.astype(np.float64), weights, bias, 1, 1, 1)
    dx = RNG.standard_normal((batch, c, h, w)).astype(np.float32)
    expected_dx = dx + conv2d(ref.astype(np.float32).astype(np.float64),
                              winograd.transposed_weights(weights), np.zeros(c), 1, 1, 1)
    results = []
    for threads in (3, 1):
        monkeypatch.setattr(conv, "thread_count", lambda: threads)
        engine = conv.WinogradEngine(c, k, h, w, 1, batch, tile)
        engine.prepare(weights, bias)
        plan = engine._block_plan()
        rows = 2 * 4 if tile == 2 else 2 * 3   # tile rows of 9 tiles each
        assert (plan.parts, plan.rows) == ((3, -(-rows // 3)) if threads == 3 else (1, rows))
        out = np.full((batch, k, h, w), np.nan, np.float32)
        engine.forward(x, out, Epilogue(k, act.LEAKY, batch_normalize=False))
        np.testing.assert_allclose(out, leaky(ref), rtol=1e-4, atol=1e-4 if tile == 4 else 1e-5)
        transposed = conv.WinogradEngine(k, c, h, w, 1, batch, tile)
        gradient = dx.copy()
        transposed.accumulate_input_gradient(ref.astype(np.float32), weights, gradient)
        np.testing.assert_allclose(gradient, expected_dx, rtol=1e-4, atol=1e-3)
        results.append((out, gradient))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    # with the helpers busy (another Python thread's kernel) the caller runs all three parts itself
    from darknetpy.kernels import handoff
    monkeypatch.setattr(conv, "thread_count", lambda: 3)
    engine = conv.WinogradEngine(c, k, h, w, 1, batch, tile)
    engine.prepare(weights, bias)
    out = np.full((batch, k, h, w), np.nan, np.float32)
    with handoff._TEAMS[(handoff.os.getpid(), 2)].busy:
        engine.forward(x, out, Epilogue(k, act.LEAKY, batch_normalize=False))
    np.testing.assert_array_equal(out, results[0][0])


@pytest.mark.parametrize("tile", [2, 4])
def test_winograd_filters_shared_out_when_the_tiles_are_too_few(tile, monkeypatch):
    # 9 tiles: no block split; two threads take every block for half the filters each (40 = 20 + 20)
    import darknetpy.layers.conv_engines as conv
    from darknetpy.kernels import activations as act
    from darknetpy.layers.epilogue import Epilogue
    monkeypatch.setattr(conv, "WINOGRAD_PARALLEL_MIN_MACS", 1)
    c, k, h, w = 6, 40, 3 * tile, 3 * tile - 1
    x = RNG.standard_normal((1, c, h, w)).astype(np.float32)
    weights = RNG.standard_normal((k, c, 3, 3)).astype(np.float32)
    bias = RNG.standard_normal(k).astype(np.float32)
    ref = leaky(conv2d(x.astype(np.float64), weights, bias, 1, 1, 1))
    outs = []
    for threads in (2, 1):
        monkeypatch.setattr(conv, "thread_count", lambda: threads)
        engine = conv.WinogradEngine(c, k, h, w, 1, 1, tile)
        engine.prepare(weights, bias)
        assert engine._block_plan().filter_groups == threads
        out = np.full((1, k, h, w), np.nan, np.float32)
        engine.forward(x, out, Epilogue(k, act.LEAKY, batch_normalize=False))
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 if tile == 4 else 1e-5)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("total,tiles_w,threads,macs_ok,filters,expected", [
    (13, 13, 2, True, 64, (7, 2, 1)),     # one 169-tile block -> one per thread (7 + 6 rows)
    (13, 13, 1, True, 64, (13, 1, 1)),    # one thread: one block
    (13, 13, 2, False, 64, (13, 1, 1)),   # too little work to share
    (5, 5, 2, True, 64, (5, 2, 2)),       # 10x10 map, F(2x2): 3 + 2 rows would leave blocks of 15 and 10
                                          # tiles, so both threads take the block, for 32 filters each
    (5, 5, 3, True, 40, (5, 1, 1)),       # ... but not for 13-14 filters each
    (8, 2, 2, True, 64, (8, 2, 2)),       # blocks narrower than a vector: filters split instead
    (100, 52, 2, True, 64, (50, 2, 1)),   # 5200 tiles: blocks of the budget, balanced
])
def test_winograd_plan_splits_and_balances_blocks(total, tiles_w, threads, macs_ok, filters, expected,
                                                  monkeypatch):
    import darknetpy.layers.conv_engines as conv
    monkeypatch.setattr(conv, "WINOGRAD_PARALLEL_MIN_MACS", 1 if macs_ok else 1 << 62)
    monkeypatch.setattr(conv, "WINOGRAD_BLOCK_BYTES", 36 * (64 + filters) * 52 * 4 * 51)   # 51 rows of 52 tiles
    plan = conv.winograd_plan(64, filters, 2 * total, 2 * tiles_w, 1, 2, threads)
    assert (plan.rows, plan.parts, plan.filter_groups) == expected
    v_size, m_size = winograd.scratch_sizes(64, filters, 2, tiles_w, plan.rows)
    assert (plan.v_size, plan.m_size) == (v_size, m_size)


def test_winograd_f4_rounding_stays_small_on_many_channels():
    # F(4x4)'s transforms amplify float32 rounding (about 1e-5 of the output range with 256 channels, varying
    # with the BLAS build); it must stay well inside the 1e-4 parity tolerance. Own seed: order-independent.
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 256, 12, 12)).astype(np.float32)
    weights = (rng.standard_normal((8, 256, 3, 3)) / 48).astype(np.float32)
    ref = shifted_conv(x.astype(np.float64), weights, 1, 1)
    assert np.allclose(ref[0, :2, :3, :3], conv2d(x[:, :, :4, :4].astype(np.float64), weights[:2], np.zeros(2),
                                                  1, 1, 1)[0, :, :3, :3])  # the vectorised oracle agrees
    out = np.empty(ref.shape, np.float32)
    tiles_h, tiles_w = winograd.tile_counts(12, 12, 4)
    v_size, m_size = winograd.scratch_sizes(256, 8, 4, tiles_w, tiles_h)
    winograd.winograd_conv(x, winograd.transform_weights(weights, 4), np.zeros(8, np.float32), 1, 4, False,
                           tiles_h, np.empty((1, v_size), np.float32), np.empty((1, m_size), np.float32), out)
    assert np.abs(out - ref).max() / np.abs(ref).max() < 3e-5


@pytest.mark.parametrize("size,activation", [(9, "leaky"), (52, "linear"), (50, "mish")])
def test_winograd_layer_with_folded_batch_norm(size, activation):
    # 52x52 uses 4x4 tiles, 9x9 2x2 tiles; mish is applied after the fused part. Own seed: the data must not
    # depend on which tests ran before (F(4x4)'s rounding grows with the outputs' range, see the tolerance)
    rng = np.random.default_rng(size)
    net = make_net(f"[convolutional]\nfilters=5\nsize=3\npad=1\nbatch_normalize=1\nactivation={activation}",
                   size, size - 1, 6)
    layer = net.layers[0]
    randomise(layer, rng)
    assert layer.winograd_tile == (4 if size >= 48 else 2)
    x = rng.standard_normal((2, 6, size - 1, size)).astype(np.float32)
    got = net.forward(x)
    raw = shifted_conv(x.astype(np.float64), layer.weights, 1, 1)
    ref = batchnorm_inference(raw, layer.bn.scales, layer.biases, layer.bn.rolling_mean, layer.bn.rolling_var)
    if activation == "leaky":
        ref = leaky(ref)
    elif activation == "mish":
        ref = ref * np.tanh(np.log1p(np.exp(ref)))
    # F(4x4)'s transforms round at about 1e-5 of the output range (test_winograd_f4_rounding_stays_small...)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=max(1e-4, 2e-5 * np.abs(ref).max()))


@pytest.mark.parametrize("height,width,tile", [(48, 48, 4), (47, 49, 2), (50, 49, 4), (28, 28, 4), (28, 32, 4),
                                               (26, 26, 2), (30, 30, 2), (28, 30, 2), (24, 24, 2), (8, 96, 2)])
def test_winograd_tiles_are_4x4_on_large_maps_and_on_whole_tiles_from_28x28(height, width, tile):
    net = make_net("[convolutional]\nfilters=5\nsize=3\npad=1\nactivation=leaky", width, height, 6)
    assert net.layers[0].winograd_tile == tile


def test_resize_across_the_winograd_tile_threshold():
    # 52x52 outputs use 4x4 tiles and 42x42 2x2 tiles: the cached transformed weights must follow the tile
    net = make_net("[convolutional]\nfilters=5\nsize=3\npad=1\nbatch_normalize=1\nactivation=leaky", 52, 52, 6)
    layer = net.layers[0]
    randomise(layer, RNG)
    for size in (52, 42, 52):
        net.resize(size, size)
        assert layer.winograd_tile == (4 if size == 52 else 2)
        x = RNG.standard_normal((1, 6, size, size)).astype(np.float32)
        got = net.forward(x)
        raw = shifted_conv(x.astype(np.float64), layer.weights, 1, 1)
        ref = batchnorm_inference(raw, layer.bn.scales, layer.biases, layer.bn.rolling_mean, layer.bn.rolling_var)
        np.testing.assert_allclose(got, leaky(ref), rtol=1e-4, atol=1e-4)


def test_layer_paths_are_chosen_from_the_shapes():
    def layer(text, c, size=16):
        net = make_net("[convolutional]\n" + text, size, size, c)
        net.layers[0].allocate(1)
        return net.layers[0]
    def engines(text, c, size=16):
        conv = layer(text, c, size)
        return conv.engine.name, conv.trainer.name
    # depthwise: channels-last at inference up to 16x16 outputs from up to 20x20 inputs
    depthwise = "filters=8\nsize=3\npad=1\ngroups=8\nactivation=leaky"
    depthwise_5x5 = depthwise.replace("size=3", "size=5").replace("pad=1", "padding=2")
    assert engines(depthwise_5x5, 8) == ("channels-last", "direct")
    assert engines(depthwise.replace("pad=1", "padding=0"), 8) == ("channels-last", "direct")
    assert engines(depthwise_5x5, 8, 17) == ("direct", "direct")
    # ...except same-size 3x3 layers, which the direct kernel runs straight from the image at any size
    assert engines(depthwise, 8) == ("direct", "direct")
    assert engines(depthwise, 8, 3) == ("direct", "direct")
    assert engines(depthwise + "\nstride=2", 8, 19) == ("channels-last", "direct")
    assert engines(depthwise + "\nstride=2", 8, 21) == ("direct", "direct")
    # ...except 3x3 stride 2 padding 1 on even widths (the direct kernel fills its phases from a column split)
    assert engines(depthwise + "\nstride=2", 8, 20) == ("direct", "direct")
    assert engines(depthwise.replace("pad=1", "padding=0") + "\nstride=2", 8, 20) == ("channels-last", "direct")
    assert engines("filters=16\nsize=3\npad=1\ngroups=8\nactivation=leaky", 8, 10) == ("direct", "direct")
    # ungrouped k x k layers that Winograd does not take: the dense direct kernel from rows of a vector on
    dense = "filters=16\nsize=3\npad=1\nactivation=leaky"
    assert engines(dense, 3, 43) == ("dense direct", "gemm")     # first layers (3*9*43*43*4 = 195 KiB of patches)
    assert engines(dense, 3, 42) == ("gemm", "gemm")             # ...but not below 192 KiB of patches
    assert engines(dense, 64, 64) == ("winograd", "gemm")         # (Winograd pays there)
    assert engines(dense, 16, 32) == ("dense direct", "gemm")     # few channels, patches in the caches
    assert engines(dense, 16) == ("gemm", "gemm")                 # 144 KiB
    assert engines(dense + "\nstride=2", 64, 64) == ("dense direct", "gemm")
    assert engines(dense.replace("size=3\npad=1", "size=5\npad=1"), 64, 20) == ("dense direct", "gemm")
    # ...narrower rows: GEMM (the direct kernel on first layers whose patch matrix passes 192 KiB: above)
    assert engines(dense, 3, 15) == ("gemm", "gemm")
    assert engines(dense + "\nstride=2", 32, 30) == ("gemm", "gemm")
    assert engines(dense, 512, 7) == ("gemm", "gemm")
    assert engines(dense, 256) == ("winograd", "gemm")
    # ungrouped 1x1 layers: the register-blocked kernel from 16 pixels on, BLAS below and when grouped
    from darknetpy.kernels.pointwise import MIN_PIXELS
    smallest = int(np.ceil(np.sqrt(MIN_PIXELS)))   # the smallest square map the kernel takes (one vector)
    assert engines("filters=16\nsize=1\nactivation=leaky", 3) == ("pointwise", "gemm")
    assert engines("filters=16\nsize=1\nactivation=leaky", 3, smallest) == ("pointwise", "gemm")
    assert engines("filters=16\nsize=1\nactivation=leaky", 3, smallest - 1) == ("gemm", "gemm")
    assert engines("filters=32\nsize=1\ngroups=2\nactivation=leaky", 64) == ("gemm", "gemm")
    assert engines("filters=16\nsize=1\nstride=2\nactivation=leaky", 16) == ("gemm", "gemm")
    assert engines("filters=64\nsize=3\npad=1\ngroups=2\nactivation=leaky", 64) == ("gemm", "gemm")
    assert layer("filters=16\nsize=3\npad=1\nactivation=leaky", 16).winograd_tile == 2
    assert layer("filters=16\nsize=3\npad=1\nactivation=leaky", 16, 64).winograd_tile == 4
    assert layer("filters=16\nsize=3\nstride=2\npad=1\nactivation=leaky", 16).winograd_tile == 0


def test_gemm_takes_few_channel_layers_whose_patches_fit_the_caches():
    from darknetpy.layers.conv_engines import ConvGeometry, gemm_beats_winograd

    def geometry(channels, side):
        return ConvGeometry(channels, side, side, 32, side, side, 3, 1, 1, 1, 1, 1)
    large_l2, small_l2 = 2 << 20, 1 << 20
    assert gemm_beats_winograd(geometry(16, 80), 1, large_l2)           # 3.5 MiB of patches
    assert not gemm_beats_winograd(geometry(16, 80), 1, small_l2)       # ...more than a 1 MiB L2
    assert gemm_beats_winograd(geometry(16, 40), 1, small_l2)           # 0.9 MiB
    assert not gemm_beats_winograd(geometry(32, 40), 1, small_l2)       # 1.8 MiB
    assert gemm_beats_winograd(geometry(32, 40), 1, large_l2)
    assert not gemm_beats_winograd(geometry(33, 40), 1, large_l2)       # 33 channels
    assert not gemm_beats_winograd(geometry(16, 128), 1, large_l2)      # 9 MiB
    assert not gemm_beats_winograd(geometry(16, 80), 8, large_l2)       # the batch's patches: 28 MiB
    assert not gemm_beats_winograd(geometry(64, 20), 1, large_l2)       # 64 channels
    assert not gemm_beats_winograd(geometry(128, 10), 8, large_l2)
    # products narrower than 20 tiles (a 7x7 map at batch 1: 16 2x2 tiles) go GEMM at any channel count
    assert gemm_beats_winograd(geometry(512, 7), 1, small_l2)
    assert gemm_beats_winograd(geometry(512, 7), 1, large_l2)
    assert not gemm_beats_winograd(geometry(512, 7), 2, large_l2)   # 32 tiles
    assert not gemm_beats_winograd(geometry(512, 10), 1, large_l2)  # 25 tiles


def test_the_l2_cache_size_is_read_from_sysfs_or_assumed(tmp_path):
    from darknetpy.layers.conv_engines import GEMM_OVER_WINOGRAD_LARGE_L2, l2_cache_bytes

    def cache_folder(name, *levels):
        folder = tmp_path / name
        for index, (level, size) in enumerate(levels):
            (folder / f"index{index}").mkdir(parents=True)
            (folder / f"index{index}" / "level").write_text(f"{level}\n")
            (folder / f"index{index}" / "size").write_text(f"{size}\n")
        return folder
    assert l2_cache_bytes(cache_folder("zen4", (1, "32K"), (1, "32K"), (2, "1024K"), (3, "32768K"))) == 1 << 20
    assert l2_cache_bytes(cache_folder("icelake", (1, "48K"), (2, "1280K"))) == 1280 << 10
    assert l2_cache_bytes(cache_folder("odd", (2, "3M"))) == 3 << 20
    assert l2_cache_bytes(cache_folder("garbled", (2, "lots"))) == GEMM_OVER_WINOGRAD_LARGE_L2
    assert l2_cache_bytes(tmp_path / "missing") == GEMM_OVER_WINOGRAD_LARGE_L2


@pytest.mark.parametrize("text,c", [
    ("filters=6\nsize=3\nstride=2\npad=1\ngroups=6\nbatch_normalize=1\nactivation=leaky", 6),
    ("filters=8\nsize=3\npad=1\ngroups=4\nbatch_normalize=1\nactivation=linear", 4),
    ("filters=4\nsize=3\npad=1\nbatch_normalize=1\nactivation=leaky", 3),
    ("filters=9\nsize=3\nstride=2\npad=1\nbatch_normalize=1\nactivation=leaky", 12),
])
@pytest.mark.parametrize("dense", [True, False])
def test_direct_layer_inference_with_folded_batch_norm(text, c, dense, monkeypatch):
    monkeypatch.setattr(conv_engines, "thread_count", lambda: 1)
    if not dense:   # output rows narrower than a vector: the direct kernel (grouped, 1-4 channels), else GEMM
        monkeypatch.setattr(conv_engines, "DENSE_DIRECT_MIN_WIDTH", 1 << 30)
    # 61x47 so that the ungrouped 3-channel layer's patch matrix (2 images: 603 KiB) takes the direct kernel
    net = make_net("[convolutional]\n" + text, 61, 47, c)
    layer = net.layers[0]
    randomise(layer, RNG)
    x = RNG.standard_normal((2, c, 47, 61)).astype(np.float32)
    got = net.forward(x)
    grouped = layer.config.groups > 1
    assert layer.engine.name == ("direct" if grouped else "dense direct" if dense else "direct" if c <= 4 else "gemm")
    cfg = layer.config
    raw = conv2d(x.astype(np.float64), layer.weights, np.zeros(cfg.filters), cfg.stride, cfg.stride, 1,
                 cfg.groups)
    ref = batchnorm_inference(raw, layer.bn.scales, layer.biases, layer.bn.rolling_mean, layer.bn.rolling_var)
    np.testing.assert_allclose(got, leaky(ref) if cfg.activation == "leaky" else ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("text,c", [
    ("filters=7\nsize=1\nbatch_normalize=1\nactivation=leaky", 5),
    ("filters=18\nsize=1\ngroups=2\nbatch_normalize=1\nactivation=linear", 20),
    ("filters=27\nsize=1\ngroups=3\nactivation=logistic", 30),         # no BN, an unfused activation
    ("filters=13\nsize=1\nactivation=logistic", 9),
    ("filters=4\nsize=1\nbatch_normalize=1\nactivation=linear", 33),
])
def test_pointwise_layer_inference_per_image(text, c, batch):
    """1x1 layers multiply each image's planes straight into the output (no channel-major copies): grouped
    ones by BLAS, ungrouped ones by the register-blocked kernel."""
    net = make_net("[convolutional]\n" + text, 11, 7, c)
    layer = net.layers[0]
    randomise(layer, RNG)
    x = RNG.standard_normal((batch, c, 7, 11)).astype(np.float32)
    got = net.forward(x)
    cfg = layer.config
    assert layer.engine.name == ("gemm" if cfg.groups > 1 else "pointwise")
    raw = conv2d(x.astype(np.float64), layer.weights, np.zeros(cfg.filters), 1, 1, 0, cfg.groups)
    if layer.bn is not None:
        ref = batchnorm_inference(raw, layer.bn.scales, layer.biases, layer.bn.rolling_mean,
                                  layer.bn.rolling_var)
    else:
        ref = raw + layer.biases[None, :, None, None]
    expected = {"leaky": leaky, "linear": lambda v: v, "logistic": lambda v: 1 / (1 + np.exp(-v))}
    np.testing.assert_allclose(got, expected[cfg.activation](ref), rtol=1e-4, atol=1e-4)


SMALL_MAP_LAYERS = [
    ("filters=40\nsize=3\npad=1\nbatch_normalize=1\nactivation=leaky", 48, 7, 1),     # darknet19's 7x7 3x3
    ("filters=24\nsize=3\npad=1\nactivation=logistic", 20, 8, 3),                     # an unfused activation
    ("filters=12\nsize=3\nstride=2\npad=1\nbatch_normalize=1\nactivation=linear", 30, 9, 2),
    ("filters=136\nsize=1\nbatch_normalize=1\nactivation=leaky", 128, 10, 1),         # Yolo-Fastest-XL, 10x10
    ("filters=20\nsize=1\nactivation=linear", 40, 4, 2),                               # one vector per plane
]


def infer_counting_blas(monkeypatch, text, c, side, batch, blas_spins):
    """One layer's inference at 2 threads, shared out, with OpenBLAS's workers spinning or not, its output
    checked against the float64 convolution: (the layer, the shapes of the BLAS products it ran)."""
    monkeypatch.setattr(conv_engines, "thread_count", lambda: 2)
    monkeypatch.setattr(pointwise, "thread_count", lambda: 2)
    monkeypatch.setattr(pointwise, "PARALLEL_MIN_MACS", 0)
    # what darknetpy recorded at import (raising=False: so that code without the record runs the test too)
    monkeypatch.setattr(thread_environment, "_blas_workers_spin", blas_spins, raising=False)
    net = make_net("[convolutional]\n" + text, side, side, c)
    layer = net.layers[0]
    randomise(layer, RNG)
    x = RNG.standard_normal((batch, c, side, side)).astype(np.float32)
    products = []
    matmul = np.matmul

    def counted(*args, **kwargs):
        products.append(args[0].shape)
        return matmul(*args, **kwargs)
    monkeypatch.setattr(np, "matmul", counted)
    got = net.forward(x)
    monkeypatch.setattr(np, "matmul", matmul)
    cfg = layer.config
    # the float64 convolution as a sum over windows (conv2d's loops take tens of seconds at these sizes)
    pad, k = cfg.effective_padding, cfg.size
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(2, 3))[:, :, ::cfg.stride, ::cfg.stride]
    raw = np.einsum("bchwij,fcij->bfhw", windows, layer.weights.astype(np.float64))
    if layer.bn is not None:
        ref = batchnorm_inference(raw, layer.bn.scales, layer.biases, layer.bn.rolling_mean, layer.bn.rolling_var)
    else:
        ref = raw + layer.biases[None, :, None, None]
    expected = {"leaky": leaky, "linear": lambda v: v, "logistic": lambda v: 1 / (1 + np.exp(-v))}
    np.testing.assert_allclose(got, expected[cfg.activation](ref), rtol=1e-4, atol=1e-4)
    return layer, products


@pytest.mark.parametrize("text,c,side,batch", SMALL_MAP_LAYERS)
def test_inference_runs_no_blas_product_where_its_workers_spin(monkeypatch, text, c, side, batch):
    """Where OpenBLAS's idle workers spin after each product (numpy imported before darknetpy), inference at
    more than one thread multiplies every ungrouped layer on planes of a vector or more by the
    register-blocked kernel: a woken worker would hold a core for ~0.1 s (layers/conv_engines.py)."""
    _, products = infer_counting_blas(monkeypatch, text, c, side, batch, blas_spins=True)
    assert products == []


@pytest.mark.parametrize("text,c,side,batch", SMALL_MAP_LAYERS)
def test_k_by_k_products_stay_with_blas_where_its_workers_sleep(monkeypatch, text, c, side, batch):
    """Configured OpenBLAS (darknetpy imported first) keeps the im2col layers' long products; 1x1 layers take
    the kernel whatever BLAS does."""
    layer, products = infer_counting_blas(monkeypatch, text, c, side, batch, blas_spins=False)
    assert len(products) == (0 if layer.config.size == 1 else 1)     # (the whole batch in one product)


@pytest.mark.parametrize("text,c,side,products", [
    ("filters=256\nsize=3\npad=1\nbatch_normalize=1\nactivation=leaky", 128, 8, 0),   # digits-seg's 8x8 layer
    ("filters=64\nsize=3\npad=1\nbatch_normalize=1\nactivation=leaky", 512, 7, 1),    # 0.9 MB of patches
])
def test_the_kernel_takes_products_whose_patches_stay_in_the_cache(monkeypatch, text, c, side, products):
    """With OpenBLAS's workers asleep, an im2col product of at least KERNEL_PRODUCT_MIN_MACS whose patch
    matrix fits in KERNEL_PRODUCT_MAX_PATCH_BYTES takes the kernel; a longer one stays with BLAS."""
    assert conv_engines.KERNEL_PRODUCT_MIN_MACS <= 64 * 512 * 9 * 49
    _, ran = infer_counting_blas(monkeypatch, text, c, side, 1, blas_spins=False)
    assert len(ran) == products


# ---- training: channel-major BN + activation, both convolution paths ---------------------------------
def darknet_bn_train(raw, scales, biases):
    """Spec §4.2 training forward in float64: (normalised, output before activation, mean, variance)."""
    count = raw.shape[0] * raw.shape[2] * raw.shape[3]
    mean = raw.mean(axis=(0, 2, 3))
    var = ((raw - mean[None, :, None, None]) ** 2).sum(axis=(0, 2, 3)) / (count - 1)
    norm = (raw - mean[None, :, None, None]) / (np.sqrt(var)[None, :, None, None] + 1e-6)
    return norm, norm * scales[None, :, None, None] + biases[None, :, None, None], mean, var


@pytest.mark.parametrize("text,c,activation", [
    ("filters=5\nsize=3\npad=1\nbatch_normalize=1", 6, "leaky"),                  # gemm
    ("filters=5\nsize=3\nstride=2\npad=1\nbatch_normalize=1", 6, "leaky"),        # gemm, stride 2
    ("filters=6\nsize=3\nstride=2\npad=1\ngroups=6\nbatch_normalize=1", 6, "leaky"),  # direct depthwise
    ("filters=4\nsize=3\npad=1\nbatch_normalize=1", 1, "mish"),                    # direct, unfused activation
    ("filters=5\nsize=1\nbatch_normalize=1", 6, "linear"),                         # pointwise
    ("filters=5\nsize=3\npad=1", 6, "leaky"),                                     # no BN: bias only
    ("filters=4\nsize=3\npad=1\ngroups=2", 6, "relu"),
])
def test_training_forward_and_backward_match_torch_and_spec(text, c, activation, width=9, height=8):
    torch = torch_or_skip()
    fn = torch.nn.functional
    net = make_net(f"[convolutional]\n{text}\nactivation={activation}", width, height, c)
    layer = net.layers[0]
    randomise(layer, RNG)
    cfg = layer.config
    has_bn = layer.bn is not None
    rolling_mean = layer.bn.rolling_mean.copy() if has_bn else None
    rolling_var = layer.bn.rolling_var.copy() if has_bn else None
    batch = 3
    x = RNG.standard_normal((batch, c, height, width)).astype(np.float32)
    layer.allocate(batch)
    out = layer.forward([x], True).copy()
    dy = RNG.standard_normal(out.shape).astype(np.float32)
    dx = np.zeros_like(x)
    layer.backward(dy.copy(), [x], [dx])

    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tw = torch.tensor(layer.weights, dtype=torch.float64, requires_grad=True)
    tb = torch.tensor(layer.biases, dtype=torch.float64, requires_grad=True)
    raw = fn.conv2d(tx, tw, None, stride=cfg.strides, padding=cfg.effective_padding, groups=cfg.groups)
    if has_bn:
        ts = torch.tensor(layer.bn.scales, dtype=torch.float64, requires_grad=True)
        count = raw.shape[0] * raw.shape[2] * raw.shape[3]
        mean = raw.mean(dim=(0, 2, 3), keepdim=True)
        var = ((raw - mean) ** 2).sum(dim=(0, 2, 3), keepdim=True) / (count - 1)
        pre = (raw - mean) / (var.sqrt() + 1e-6) * ts[None, :, None, None] + tb[None, :, None, None]
    else:
        pre = raw + tb[None, :, None, None]
    activate = {"leaky": lambda v: fn.leaky_relu(v, 0.1), "relu": fn.relu, "linear": lambda v: v,
                "mish": lambda v: v * torch.tanh(fn.softplus(v))}[activation]
    y = activate(pre)
    np.testing.assert_allclose(out, y.detach().numpy(), rtol=1e-4, atol=1e-4)
    if has_bn:
        # Darknet's backward uses sqrt(var + 1e-5) where its forward uses sqrt(var) + 1e-6 (spec §4.2):
        # compare the gradients with the spec's formulas, not with autograd of the forward
        pre_leaf = pre.detach().requires_grad_(True)
        activate(pre_leaf).backward(torch.tensor(dy, dtype=torch.float64))
        g = pre_leaf.grad  # dL/d(BN output)
        raw_d = raw.detach()
        count = raw_d.shape[0] * raw_d.shape[2] * raw_d.shape[3]
        mean_d = raw_d.mean(dim=(0, 2, 3), keepdim=True)
        var_d = ((raw_d - mean_d) ** 2).sum(dim=(0, 2, 3), keepdim=True) / (count - 1)
        norm = (raw_d - mean_d) / (var_d.sqrt() + 1e-6)
        np.testing.assert_allclose(layer.grad_biases, g.sum(dim=(0, 2, 3)).numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(layer.bn.grad_scales, (g * norm).sum(dim=(0, 2, 3)).numpy(),
                                   rtol=1e-4, atol=1e-4)
        d = g * ts.detach()[None, :, None, None]
        mean_delta = -(d / (var_d + 1e-5).sqrt()).sum(dim=(0, 2, 3), keepdim=True)
        var_delta = (d * (raw_d - mean_d)).sum(dim=(0, 2, 3), keepdim=True) * -0.5 * (var_d + 1e-5) ** -1.5
        d_raw = d / (var_d + 1e-5).sqrt() + var_delta * 2 * (raw_d - mean_d) / count + mean_delta / count
        raw.backward(d_raw)
        expected_mean = 0.99 * rolling_mean + 0.01 * mean_d.reshape(-1).numpy()
        expected_var = 0.99 * rolling_var + 0.01 * var_d.reshape(-1).numpy()
        np.testing.assert_allclose(layer.bn.rolling_mean, expected_mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layer.bn.rolling_var, expected_var, rtol=1e-5, atol=1e-6)
    else:
        y.backward(torch.tensor(dy, dtype=torch.float64))
        np.testing.assert_allclose(layer.grad_biases, tb.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.grad_weights, tw.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("padding", [1, 0, 2])
def test_training_input_gradient_by_winograd_on_large_maps(padding, monkeypatch):
    import darknetpy.layers.conv_engines as conv
    monkeypatch.setattr(conv, "WINOGRAD_TRAIN_MIN_PIXELS", 1)  # small maps keep the test fast
    calls = []
    real = winograd.winograd_conv
    monkeypatch.setattr(winograd, "winograd_conv", lambda *a, **k: calls.append(k) or real(*a, **k))
    text = f"filters=5\nsize=3\npadding={padding}\nbatch_normalize=1"
    test_training_forward_and_backward_match_torch_and_spec(text, 6, "leaky", 11, 10)
    assert [call["accumulate"] for call in calls] == [True]


@pytest.mark.parametrize("text", ["filters=5\nsize=3\npad=1\nbatch_normalize=1", "filters=5\nsize=3\npad=1"])
def test_training_statistics_over_several_float32_blocks(text):
    # 3 images of 17x16: 816 values per channel, three 256-value blocks of partial sums and a tail
    test_training_forward_and_backward_match_torch_and_spec(text, 6, "leaky", 17, 16)


# ---- batch-norm kernels ((B, C, S) layout, used by [batchnorm] and [connected]) ------------------------
@pytest.mark.parametrize("shape", [(4, 3, 7), (3, 2, 70), (16, 5, 1),
                                   (2, 3, 600)])  # rows of 2 float32 blocks of 256 and a tail
def test_batchnorm_kernels_match_spec_formulas(shape):
    y = (RNG.standard_normal(shape) * 2 + 0.5).astype(np.float32)
    channels = shape[1]
    scale = RNG.uniform(0.5, 1.5, channels).astype(np.float32)
    bias = RNG.standard_normal(channels).astype(np.float32)
    rolling_mean = RNG.standard_normal(channels).astype(np.float32)
    rolling_var = RNG.uniform(0.5, 2, channels).astype(np.float32)
    expected_rm = 0.99 * rolling_mean.astype(np.float64)
    expected_rv = 0.99 * rolling_var.astype(np.float64)
    mean, var = np.zeros(channels, np.float32), np.zeros(channels, np.float32)
    saved, normed = np.empty_like(y), np.empty_like(y)
    x = y.astype(np.float64)
    out = y.copy()
    bn_kernels.train_forward(out, scale, bias, rolling_mean, rolling_var, mean, var, saved, normed)
    norm, ref, ref_mean, ref_var = darknet_bn_train(x[..., None], scale, bias)
    np.testing.assert_allclose(out, ref[..., 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(normed, norm[..., 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(saved, y)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(var, ref_var, rtol=1e-5)
    np.testing.assert_allclose(rolling_mean, expected_rm + 0.01 * ref_mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(rolling_var, expected_rv + 0.01 * ref_var, rtol=1e-6)

    dy = RNG.standard_normal(shape).astype(np.float32)
    grad_scale, grad_bias = np.ones(channels, np.float32), np.zeros(channels, np.float32)
    d = dy.copy()
    bn_kernels.train_backward(d, saved, mean, var, scale, grad_scale, grad_bias)
    g = dy.astype(np.float64)
    count = shape[0] * shape[2]
    centered = x - ref_mean[None, :, None]
    np.testing.assert_allclose(grad_bias, g.sum(axis=(0, 2)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad_scale, 1 + (g * norm[..., 0]).sum(axis=(0, 2)), rtol=1e-5, atol=1e-5)
    gs = g * scale[None, :, None]
    denom = ref_var[None, :, None] + 1e-5
    mean_delta = -(gs / np.sqrt(denom)).sum(axis=(0, 2), keepdims=True)
    var_delta = (gs * centered).sum(axis=(0, 2), keepdims=True) * -0.5 * denom ** -1.5
    expected = gs / np.sqrt(denom) + var_delta * 2 * centered / count + mean_delta / count
    np.testing.assert_allclose(d, expected, rtol=1e-4, atol=1e-5)


def test_batchnorm_forward_may_skip_the_normalised_copy():
    y = RNG.standard_normal((2, 3, 5)).astype(np.float32)
    reference, skipped = y.copy(), y.copy()
    stats = [np.zeros(3, np.float32) for _ in range(4)]
    ones, zeros = np.ones(3, np.float32), np.zeros(3, np.float32)
    bn_kernels.train_forward(reference, ones, zeros, *stats, np.empty_like(y), np.empty_like(y))
    stats = [np.zeros(3, np.float32) for _ in range(4)]
    bn_kernels.train_forward(skipped, ones, zeros, *stats, np.empty_like(y), np.empty((0, 0, 0), np.float32))
    np.testing.assert_array_equal(reference, skipped)


# ---- whole-batch im2col / col2im -----------------------------------------------------------------------
def naive_im2col(x, k, s, p, d):
    batch, c, h, w = x.shape
    oh, ow = out_size(h, k, s, p, d), out_size(w, k, s, p, d)
    padded = np.zeros((batch, c, h + 2 * p, w + 2 * p))
    padded[:, :, p:p + h, p:p + w] = x
    cols = np.zeros((c * k * k, batch * oh * ow))
    for ch in range(c):
        for ky in range(k):
            for kx in range(k):
                patch = padded[:, ch, ky * d:ky * d + (oh - 1) * s + 1:s, kx * d:kx * d + (ow - 1) * s + 1:s]
                cols[(ch * k + ky) * k + kx] = patch.reshape(-1)
    return cols


@pytest.mark.parametrize("case", [(2, 3, 7, 9, 3, 1, 1, 1), (2, 3, 7, 9, 3, 2, 1, 1), (1, 2, 8, 8, 5, 2, 2, 1),
                                  (1, 2, 9, 9, 3, 1, 2, 2), (2, 2, 6, 6, 3, 1, 0, 1), (1, 1, 5, 5, 3, 3, 4, 1),
                                  # more "same" convolutions (shifted-run path): 5x5, thin and one-row maps
                                  (2, 3, 6, 11, 5, 1, 2, 1), (1, 2, 1, 5, 3, 1, 1, 1), (2, 1, 7, 2, 3, 1, 1, 1),
                                  (1, 2, 4, 7, 1, 1, 0, 1)])
def test_im2col_batch_and_its_adjoint(case):
    batch, c, h, w, k, s, p, d = case
    oh, ow = out_size(h, k, s, p, d), out_size(w, k, s, p, d)
    x = RNG.standard_normal((batch, c, h, w)).astype(np.float32)
    cols = np.full((c * k * k, batch * oh * ow), np.nan, np.float32)
    im2col_batch(x, k, s, s, p, d, oh, ow, cols)
    ref = naive_im2col(x.astype(np.float64), k, s, p, d)
    np.testing.assert_array_equal(cols, ref.astype(np.float32))
    # adjoint: <im2col(x), g> == <x, col2im(g)> for every x, so col2im(g) is the gradient of that sum
    g = RNG.standard_normal(cols.shape).astype(np.float32)
    back = np.full_like(x, 2.0)
    col2im_batch_add(g, k, s, s, p, d, oh, ow, back)
    basis = np.eye(x.size).reshape((x.size,) + x.shape)
    expected = np.array([(naive_im2col(e, k, s, p, d) * g).sum() for e in basis]).reshape(x.shape)
    np.testing.assert_allclose(back, expected + 2.0, rtol=1e-5, atol=1e-5)


# ---- max pooling ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("size,stride,padding,h,w", [
    (2, 2, 1, 8, 8), (2, 2, 1, 7, 9), (2, 1, 1, 5, 5), (3, 2, 2, 7, 6), (1, 1, 0, 3, 4), (5, 1, 4, 6, 5),
    (9, 1, 8, 4, 4), (3, 3, 0, 9, 8), (4, 2, 3, 7, 7), (1, 2, 4, 3, 3),
    # the literal-tap windows (3x3 at strides 1 and 2, 5x5 at stride 1) and the separable ones (SPP's 9 and 13),
    # odd sizes, every padding from none to beyond the window, strides that skip pixels
    (3, 2, 0, 9, 11), (3, 2, 1, 8, 7), (3, 1, 2, 7, 10), (3, 1, 3, 5, 6), (5, 1, 4, 13, 11), (5, 1, 2, 9, 7),
    (5, 2, 4, 11, 9), (5, 3, 5, 10, 12), (9, 1, 8, 13, 13), (13, 1, 12, 13, 15), (7, 3, 6, 11, 9),
    (3, 4, 2, 9, 9), (2, 3, 1, 7, 8),
])
def test_maxpool_kernel_matches_naive_with_ties_nan_and_flt_max(size, stride, padding, h, w):
    x = RNG.integers(-3, 3, (2, 3, h, w)).astype(np.float32)   # many ties: the first maximum must win
    x[0, 0, 0, 0] = np.nan
    x[0, 1] = -FLT_MAX                                         # never beats the initial -FLT_MAX
    x[1, 2, h // 2, :] = np.nan
    ref, winner = maxpool(x, size, stride, stride, padding)
    offset = int(-padding / 2)
    out = np.full(ref.shape, 7.0, np.float32)
    argmax = np.full(ref.shape, 99, np.int32)
    pooling.maxpool_forward(x, size, stride, stride, offset, out, argmax)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(argmax, winner)
    out.fill(7.0)
    pooling.maxpool_forward(x, size, stride, stride, offset, out, None)   # inference: values only
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("size,stride_y,stride_x,padding", [
    (3, 1, 2, 2), (3, 2, 1, 1), (5, 2, 1, 4), (5, 1, 3, 3), (9, 2, 1, 8), (4, 3, 2, 0),
])
def test_maxpool_kernel_with_different_row_and_column_strides(size, stride_y, stride_x, padding):
    x = RNG.integers(-3, 3, (2, 2, 11, 13)).astype(np.float32)
    ref, winner = maxpool(x, size, stride_y, stride_x, padding)
    out = np.empty(ref.shape, np.float32)
    argmax = np.empty(ref.shape, np.int32)
    pooling.maxpool_forward(x, size, stride_y, stride_x, int(-padding / 2), out, argmax)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(argmax, winner)


def test_thread_floats_grow_to_the_largest_caller_and_are_per_thread():
    import threading
    from darknetpy.kernels.scratch import thread_floats
    small = thread_floats(("test scratch", 1), 10)
    large = thread_floats(("test scratch", 1), 1000)
    again = thread_floats(("test scratch", 1), 10)
    assert small.shape == (10,) and large.shape == (1000,) and again.shape == (10,)
    assert np.shares_memory(again, large)              # the grown buffer serves the smaller caller too
    other = []
    thread = threading.Thread(target=lambda: other.append(thread_floats(("test scratch", 1), 10)))
    thread.start()
    thread.join()
    assert not np.shares_memory(other[0], large)       # another thread has its own


def test_layers_sharing_winograd_and_patch_scratch_match_the_float64_convolutions(monkeypatch):
    """Inference's Winograd tiles (2x2 and 4x4) and im2col patch matrices are one buffer per thread shared by
    the layers, larger layers after smaller ones and back: each layer's result against the float64
    convolution of the previous layer's float32 output, at batch 1 and 2 (the batched GEMM product too)."""
    monkeypatch.setattr(conv_engines, "gemm_beats_winograd", lambda *args, **kwargs: False)
    monkeypatch.setattr(conv_engines, "DENSE_DIRECT_MIN_WIDTH", 1 << 30)   # the strided layers on GEMM
    text = ("[convolutional]\nfilters=40\nsize=3\npad=1\nactivation=leaky\n\n"             # Winograd 4x4 (48x48)
            "[convolutional]\nfilters=36\nsize=3\nstride=2\npad=1\nactivation=linear\n\n"  # im2col + GEMM
            "[convolutional]\nfilters=40\nsize=3\npad=1\nactivation=leaky\n\n"             # Winograd 2x2 (24x24)
            "[convolutional]\nfilters=40\nsize=5\nstride=2\npad=2\nactivation=linear\n\n"  # a larger patch matrix
            "[convolutional]\nfilters=5\nsize=3\npad=1\nactivation=leaky\n")               # Winograd 2x2 (12x12)
    net = make_net(text, 48, 48, 8)
    net.initialize(3)
    for batch in (1, 2, 1):
        x = RNG.standard_normal((batch, 8, 48, 48)).astype(np.float32)
        net.forward(x)    # (every layer's output kept to check it; the scratch is the same as in infer)
        names = [layer.engine.name for layer in net.layers]
        assert names == ["winograd", "gemm", "winograd", "gemm", "winograd"], names
        source = x
        for layer, out in zip(net.layers, net.outputs):
            cfg = layer.config
            want = conv2d(source.astype(np.float64), layer.weights.astype(np.float64),
                          layer.biases.astype(np.float64), cfg.stride, cfg.stride, cfg.size // 2)
            if cfg.activation == "leaky":
                want = leaky(want)
            np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
            source = out
