"""Bounded, reproducible fuzzing of the cfg parser, the network builder and the weights reader.

Property (issue "Hardening"): bad input ends in a DarknetError subclass that names the file (and, for cfg
errors, a line inside the text) on one line — never another exception type. The generators and checks
live in tools/fuzz.py, which also runs long random campaigns; here hypothesis is derandomised so CI sees
the same >= 10,000 inputs every run. Several inputs are drawn per hypothesis example for the cheap targets
(hypothesis's per-example overhead would otherwise dominate); the failing one is named in the error.

Bugs the fuzzer finds that are not fixed yet are recognised by `known_bug`: the property tests tolerate them
(counted, not failed) and each one gets a minimal strict-xfail repro at the end of this file, which starts
to fail once the bug is fixed — then the marker and its case in `known_bug` go, and the repro stays as a
regression test (those at the end of this file all began that way).
"""
from __future__ import annotations

import time
import traceback
import warnings
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from darknetpy.errors import CfgError, DarknetWarning
from darknetpy.network import network_from_text

import strategies as fuzz

CI_SETTINGS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck),
                   print_blob=True)
INPUTS: Counter[str] = Counter()
KNOWN_SEEN: Counter[str] = Counter()


def known_bug(exc: BaseException, case) -> str | None:
    """Which known bug (with a strict-xfail repro below) a failure is, else None. None is open now."""
    return None


def run_checked(target: str, check, case) -> None:
    INPUTS[target] += 1
    try:
        check(case)
    except Exception as exc:
        traceback.clear_frames(exc.__traceback__)  # hypothesis keeps it while shrinking: free the network
        key = known_bug(exc, case)
        if key is None:
            exc.add_note(f"failing input: {case!r}")  # the one input of the drawn list that failed
            raise
        KNOWN_SEEN[key] += 1


@pytest.fixture(autouse=True)
def _quiet_darknet_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DarknetWarning)
        yield


@pytest.fixture(scope="module")
def scratch() -> str:
    return fuzz.scratch_dir()  # in RAM when possible: thousands of small files are written


# ---- the property, per target -----------------------------------------------------------------------------------
@settings(max_examples=450, **CI_SETTINGS)
@given(st.lists(fuzz.cfg_texts(), min_size=6, max_size=12))
def test_cfg_parser_raises_only_located_cfg_errors(texts):
    for text in texts:
        run_checked("cfg", fuzz.check_cfg_text, text)


@settings(max_examples=150, **CI_SETTINGS)
@given(data=st.lists(fuzz.cfg_file_bytes(), min_size=6, max_size=12))
def test_cfg_files_of_any_bytes_raise_only_located_cfg_errors(scratch, data):
    for blob in data:
        run_checked("cfg", lambda b: fuzz.check_cfg_bytes(b, scratch), blob)


@settings(max_examples=450, **CI_SETTINGS)
@given(cfg=fuzz.network_cfgs())
def test_random_networks_build_run_or_raise_located_cfg_errors(cfg):
    with fuzz.memory_headroom():
        run_checked("network", fuzz.check_network, cfg)


def test_mutated_corpus_cfgs_build_run_or_raise_located_cfg_errors(shared_dir):
    texts = tuple((p.name, p.read_text()) for p in fuzz.corpus_files(shared_dir / "cfg-corpus"))

    @settings(max_examples=80, **CI_SETTINGS)
    @given(case=fuzz.corpus_cases(texts))
    def mutated(case):
        with fuzz.memory_headroom():
            run_checked("corpus", fuzz.check_corpus, case)

    mutated()


@settings(max_examples=450, **CI_SETTINGS)
@given(cases=st.lists(fuzz.weights_cases(), min_size=10, max_size=20))
def test_weights_reader_raises_only_weights_errors_and_checks_sizes(scratch, cases):
    for case in cases:
        run_checked("weights", lambda c: fuzz.check_weights(c, scratch), case)


@settings(max_examples=60, **CI_SETTINGS)
@given(case=fuzz.data_file_cases())
def test_data_list_and_label_files_load_or_raise_located_errors(scratch, case):
    run_checked("data", lambda c: fuzz.check_data_files(c, scratch), case)


@settings(max_examples=40, **CI_SETTINGS)
@given(case=fuzz.cli_cases())
def test_cli_options_and_output_paths_exit_0_or_one_located_line(scratch, case):
    run_checked("cli", lambda c: fuzz.check_cli(c, scratch), case)


def test_header_rule_of_the_oracle_is_the_one_the_reader_applies():
    """The weights family judges headers by fuzz.header_is_valid (the README's rule); the versions named in
    issue 19 fall on the sides the rule gives them."""
    for version in [(0, 2, 0), (0, 2, 5), (0, 1, 0), (1, 0, 0), (0, 1001, 0), (1001, 5, 0)]:
        assert fuzz.header_is_valid(*version), version
    for version in [(2**31 - 1,) * 3, (1000, 0, 0), (2, 0, 0), (999, 999, 0), (0, 2, -1), (1001, 1001, 0)]:
        assert not fuzz.header_is_valid(*version), version


def test_weights_zoo_needs_the_float_counts_of_the_spec():
    """The zoo's hand-counted sizes (spec §5) are what the size oracle above relies on."""
    for network, (_, floats) in zip(fuzz.weights_zoo(), fuzz.WEIGHTS_ZOO):
        loaded = [layer for layer in network.layers if not layer.config.dontload]
        assert sum(a.size for layer in loaded for a in layer.weight_arrays()) == floats


def test_fuzzing_covered_ten_thousand_inputs():
    """Runs after the property tests (file order); skipped when some of them were deselected."""
    if not {"cfg", "network", "weights"} <= set(INPUTS):
        pytest.skip("run the whole file to count the inputs")
    print(f"\nfuzz inputs: {dict(INPUTS)}; tolerated known bugs: {dict(KNOWN_SEEN)}")
    assert INPUTS["cfg"] + INPUTS["network"] + INPUTS["weights"] >= 10_000


# ---- the contract checks themselves -----------------------------------------------------------------------------
def test_contract_check_rejects_unlocated_and_multiline_errors():
    with pytest.raises(fuzz.ContractViolation, match="no line number"):
        fuzz.check_located(CfgError("bad value", "a.cfg"), "a.cfg", "[net]\n", need_line=True)
    with pytest.raises(fuzz.ContractViolation, match="wrong path"):
        fuzz.check_located(CfgError("bad value", "b.cfg", 1), "a.cfg", "[net]\n", need_line=True)
    with pytest.raises(fuzz.ContractViolation, match="multi-line"):
        fuzz.check_located(CfgError("bad\nvalue", "a.cfg", 1), "a.cfg", "[net]\n", need_line=True)
    with pytest.raises(fuzz.ContractViolation, match="line out of range"):
        fuzz.check_located(CfgError("bad", "a.cfg", 3), "a.cfg", "[net]\n", need_line=True)
    fuzz.check_located(CfgError("bad", "a.cfg", 2), "a.cfg", "[net]\nx=1", need_line=True)


# ---- bugs the fuzzer found: minimal repros, kept as regression tests ---------------------------------------
NET_8x8 = "[net]\nwidth=8\nheight=8\nchannels=1\n\n"


@pytest.mark.parametrize("section", [
    "[convolutional]\nfilters=2147483647\nsize=3\n",
    "[convolutional]\nsize=9223372036854775808\npad=1\n",
    "[connected]\noutput=99999999999\n",
    "[deconvolutional]\nsize=2147483648\n",
    "[upsample]\nstride=1000000\n",
])
def test_absurd_sizes_are_located_cfg_errors(section):
    """Were a MemoryError (or numpy's ValueError 'array is too big' / 'Maximum allowed dimension exceeded')."""
    with fuzz.memory_headroom(1 << 30), pytest.raises(CfgError) as caught:
        network = network_from_text(NET_8x8 + section, "absurd.cfg")
        network.forward(np.zeros((1, 1, 8, 8), np.float32))
    assert caught.value.line in (6, 7)  # the section header or the offending key


@pytest.mark.parametrize("layers", ["[cost]\n", "[cost]\n\n[activation]\n", "[cost]\n\n[logistic]\n"])
def test_cost_layer_at_inference_gives_an_output_or_a_cfg_error(layers):
    """A [cost] layer's output was None at inference: with only cost layers forward() returned None, and a
    layer after [cost] crashed with AttributeError in its forward."""
    try:
        network = network_from_text(NET_8x8 + layers, "cost.cfg")
    except CfgError as err:
        assert err.line is not None
        return
    assert isinstance(network.forward(np.zeros((1, 1, 8, 8), np.float32)), np.ndarray)


def test_maxpool_window_far_larger_than_the_image_is_fast():
    """maxpool visited every tap of its window even far outside the image, where they cannot win:
    size=99999999999 (padding defaults to size-1, so the output is 8x8) never finished."""
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)

    def timed_forward(size: int) -> tuple[float, np.ndarray]:
        network = network_from_text(NET_8x8 + f"[maxpool]\nsize={size}\n", "pool.cfg")
        start = time.perf_counter()
        y = network.forward(x)
        return time.perf_counter() - start, y

    timed_forward(8)  # kernels loaded
    small, _ = timed_forward(8)
    # 6000x6000 taps for each of the 64 outputs took about a second; as fast as size=8 when only the
    # in-image taps are visited (every output is then the maximum of the whole image)
    large, y = timed_forward(6000)
    assert np.all(y == x.max())
    assert large < 20 * small + 0.02
    largest, y = timed_forward(2**31 - 1)  # the largest size a cfg can hold (Darknet's int)
    assert np.all(y == x.max())
    assert largest < 20 * small + 0.02


@pytest.mark.parametrize("size,stride,padding,h,w", [(9, 1, 8, 4, 4), (13, 2, 12, 6, 9), (7, 3, 2, 5, 3),
                                                     (12, 1, 3, 8, 11), (20, 4, 30, 3, 2)])
def test_maxpool_windows_larger_than_the_image_keep_the_first_maximum(size, stride, padding, h, w):
    """Windows larger than the image visit only its taps: outputs and winners (ties, NaN, -FLT_MAX) as the
    spec's tap-by-tap reference, and the backward routes each gradient to the winner."""
    from darknetpy.kernels import pooling
    from naive_pooling import FLT_MAX, maxpool
    rng = np.random.default_rng(size)
    x = rng.integers(-3, 3, (2, 3, h, w)).astype(np.float32)  # many ties: the first maximum must win
    x[0, 0, 0, 0] = np.nan
    x[0, 1] = -FLT_MAX                                        # never beats the starting -FLT_MAX
    x[1, 2, h // 2, :] = np.nan
    ref, winner = maxpool(x, size, stride, stride, padding)
    out = np.full(ref.shape, 7.0, np.float32)
    argmax = np.full(ref.shape, 99, np.int32)
    pooling.maxpool_forward(x, size, stride, stride, int(-padding / 2), out, argmax)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(argmax, winner)
    dy = rng.standard_normal(out.shape).astype(np.float32)
    dx = np.zeros_like(x)
    pooling.maxpool_backward(dy, argmax, dx)
    expected = np.zeros((2, 3, h * w))
    for b in range(2):
        for c in range(3):
            hits = winner[b, c].ravel() >= 0
            np.add.at(expected[b, c], winner[b, c].ravel()[hits], dy[b, c].ravel()[hits])
    np.testing.assert_allclose(dx.reshape(2, 3, h * w), expected, rtol=1e-5, atol=1e-6)  # float32 sums


def test_convolution_with_a_stride_far_beyond_the_image_runs():
    """The direct convolution (kernels/depthwise.py grouped_conv_forward) allocated stride_y*stride_x phase
    planes, so a valid 1x1-output convolution with stride=65536 needed ~17 GB of scratch (MemoryError)."""
    from naive_conv import conv2d

    network = network_from_text(NET_8x8 + "[convolutional]\nfilters=1\nsize=3\nstride=65536\npad=1\n"
                                "activation=linear\n", "stride.cfg")
    network.initialize(0)
    x = np.random.default_rng(1).standard_normal((1, 1, 8, 8)).astype(np.float32)
    biases, weights = network.layers[0].weight_arrays()
    expected = conv2d(x.astype(np.float64), weights.astype(np.float64), biases.astype(np.float64),
                      65536, 65536, 1)
    with fuzz.memory_headroom(1 << 30):
        y = network.forward(x)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_direct_kernels_with_a_stride_far_beyond_the_image_match_torch():
    """The same bounded scratch in the backward (training): weight and input gradients of a grouped 1x1-output
    convolution with stride 65536 (and a 70000 x 3 one) against PyTorch's autograd."""
    torch = pytest.importorskip("torch")
    from darknetpy.kernels.depthwise import grouped_conv_backward, grouped_conv_forward
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 8, 7)).astype(np.float32)
    weights = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)  # 2 groups of 2 channels
    bias = rng.standard_normal(4).astype(np.float32)
    for stride_y, stride_x in [(65536, 65536), (70000, 3)]:
        tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        tw = torch.tensor(weights, dtype=torch.float64, requires_grad=True)
        ty = torch.nn.functional.conv2d(tx, tw, torch.tensor(bias, dtype=torch.float64), (stride_y, stride_x),
                                        1, 1, 2)
        out = np.full(tuple(ty.shape), np.nan, np.float32)
        grouped_conv_forward(x, weights, bias, stride_y, stride_x, 1, 1, out)
        np.testing.assert_allclose(out, ty.detach().numpy(), rtol=1e-5, atol=1e-5)
        dy = rng.standard_normal(out.shape).astype(np.float32)
        ty.backward(torch.tensor(dy, dtype=torch.float64))
        grad_weights = np.zeros_like(weights)
        dx = np.zeros_like(x)
        grouped_conv_backward(x, weights, dy, stride_y, stride_x, 1, 1, grad_weights, dx)
        np.testing.assert_allclose(grad_weights, tw.grad.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-5, atol=1e-5)


@st.composite
def awkward_planes(draw, min_side: int, max_side: int) -> np.ndarray:
    """A (1..2, 1..3, H, W) float32 map of small integers (ties) with NaN, +-inf and +-FLT_MAX scattered in."""
    batch, channels = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    height, width = draw(st.integers(min_side, max_side)), draw(st.integers(min_side, max_side))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.integers(-4, 4, (batch, channels, height, width)).astype(np.float32)
    specials = np.array([np.nan, np.inf, -np.inf, 3.4028235e38, -3.4028235e38], np.float32)
    cells = rng.random(x.shape) < draw(st.sampled_from([0.0, 0.05, 0.3]))
    x[cells] = rng.choice(specials, int(cells.sum()))
    return x


@settings(max_examples=120, **CI_SETTINGS)
@given(x=awkward_planes(1, 14), size=st.integers(2, 9), padding=st.integers(0, 20),
       stride=st.sampled_from([(1, 1), (2, 2)]))
def test_inference_max_pooling_matches_the_spec_loop(x, size, padding, stride):
    """Inference's max-pooling kernels (spans doubled at stride 1, column phases for 3x3/2, columns first
    otherwise) on random maps, windows and paddings, with ties and non-finite values, against the spec's
    tap-by-tap loop (values only: inference keeps no winners)."""
    from darknetpy.kernels import pooling
    from naive_pooling import maxpool
    height, width = x.shape[2:]
    out_h, out_w = (height + padding - size) // stride[0] + 1, (width + padding - size) // stride[1] + 1
    if out_h < 1 or out_w < 1:
        return
    ref, _ = maxpool(x, size, stride[0], stride[1], padding)
    out = np.full(ref.shape, 7.0, np.float32)
    pooling.maxpool_forward(x, size, stride[0], stride[1], int(-padding / 2), out, None)
    np.testing.assert_array_equal(out, ref)


@settings(max_examples=120, **CI_SETTINGS)
@given(x=awkward_planes(3, 24), leaky=st.booleans())
def test_same_3x3_depthwise_straight_from_the_image_matches_the_phase_grid(x, leaky):
    """The straight-from-the-image depthwise 3x3 path against the phase grid on random plane sizes and
    values, inf and NaN included (the wrapped taps must never enter a sum), bit for bit: the finite values are
    small integers and the weights halves, so every sum is exact in either order (the kernel sums in another
    order, with fused multiply-adds; +-FLT_MAX, which overflows or cancels depending on that order, is
    clipped)."""
    from darknetpy.kernels import depthwise, depthwise_same3x3
    x = np.where(np.isfinite(x), np.clip(x, -8, 8), x)
    channels = x.shape[1]
    weights = np.random.default_rng(channels).integers(-3, 4, (channels, 1, 3, 3)).astype(np.float32) / 2
    bias = np.linspace(-1, 1, channels).astype(np.float32)
    assert depthwise.writes_same_3x3_directly(x, weights, 1, 1, 1, 1, x)
    straight = np.full_like(x, 7.0)
    depthwise.grouped_conv_forward(x, weights, bias, 1, 1, 1, 1, straight, leaky)
    suits = depthwise_same3x3.suits
    try:
        depthwise_same3x3.suits = lambda *args: False
        grid = np.full_like(x, 7.0)
        depthwise.grouped_conv_forward(x, weights, bias, 1, 1, 1, 1, grid, leaky)
    finally:
        depthwise_same3x3.suits = suits
    np.testing.assert_array_equal(straight, grid)
