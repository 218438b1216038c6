"""Bounded, reproducible fuzzing of the cfg parser, the network builder and the weights reader.

Property (issue "Hardening"): bad input ends in a DarknetError subclass that names the file (and, for cfg
errors, a line inside the text) on one line — never another exception type. The generators and checks
live in tools/fuzz.py, which also runs long random campaigns; here hypothesis is derandomised so CI sees
the same >= 10,000 inputs every run. Several inputs are drawn per hypothesis example for the cheap targets
(hypothesis's per-example overhead would otherwise dominate); the failing one is named in the error.

Bugs the fuzzer found that are not fixed yet are recognised by `known_bug`: the property tests tolerate them
(counted, not failed) and each one has a minimal strict-xfail repro at the end of this file, which starts
to fail once the bug is fixed — then delete its case from `known_bug` too.
"""
from __future__ import annotations

import importlib.util
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from darknetpy.errors import CfgError, DarknetWarning
from darknetpy.network import network_from_text

ROOT = Path(__file__).resolve().parents[1]


def _load_fuzz_tool():
    spec = importlib.util.spec_from_file_location("darknetpy_fuzz_tool", ROOT / "tools" / "fuzz.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fuzz = _load_fuzz_tool()

CI_SETTINGS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck),
                   print_blob=True)
INPUTS: Counter[str] = Counter()
KNOWN_SEEN: Counter[str] = Counter()


def known_bug(exc: BaseException, case) -> str | None:
    """Which known bug (with a strict-xfail repro below) a failure is, else None."""
    if isinstance(exc, MemoryError) or (isinstance(exc, ValueError) and (
            "array is too big" in str(exc) or "Maximum allowed dimension exceeded" in str(exc))):
        return "absurd sizes end in MemoryError"
    text = getattr(case, "text", case)
    if isinstance(text, str) and "[cost]" in text and (
            (isinstance(exc, fuzz.ContractViolation) and exc.kind == "forward returned no array")
            or (isinstance(exc, AttributeError) and "'NoneType' object" in str(exc))):
        return "a [cost] layer outputs None at inference"
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


# ---- known bugs: minimal repros (strict xfail: they fail now and must pass once fixed) -----------------------
NET_8x8 = "[net]\nwidth=8\nheight=8\nchannels=1\n\n"


@pytest.mark.xfail(strict=True, raises=(MemoryError, ValueError),
                   reason="absurd sizes are not checked: the parameter or output allocation raises MemoryError "
                          "(or numpy's ValueError 'array is too big' / 'Maximum allowed dimension exceeded') "
                          "instead of a CfgError at the line")
@pytest.mark.parametrize("section", [
    "[convolutional]\nfilters=2147483647\nsize=3\n",
    "[convolutional]\nsize=9223372036854775808\npad=1\n",
    "[connected]\noutput=99999999999\n",
    "[deconvolutional]\nsize=2147483648\n",
    "[upsample]\nstride=1000000\n",
])
def test_absurd_sizes_are_located_cfg_errors(section):
    with fuzz.memory_headroom(1 << 30), pytest.raises(CfgError) as caught:
        network = network_from_text(NET_8x8 + section, "absurd.cfg")
        network.forward(np.zeros((1, 1, 8, 8), np.float32))
    assert caught.value.line in (6, 7)  # the section header or the offending key


@pytest.mark.xfail(strict=True, reason="a [cost] layer's output is None at inference: with only cost layers "
                                       "forward() returns None (predict would crash), and a layer after [cost] "
                                       "crashes with AttributeError in its forward")
@pytest.mark.parametrize("layers", ["[cost]\n", "[cost]\n\n[activation]\n", "[cost]\n\n[logistic]\n"])
def test_cost_layer_at_inference_gives_an_output_or_a_cfg_error(layers):
    try:
        network = network_from_text(NET_8x8 + layers, "cost.cfg")
    except CfgError as err:
        assert err.line is not None
        return
    assert isinstance(network.forward(np.zeros((1, 1, 8, 8), np.float32)), np.ndarray)


@pytest.mark.xfail(strict=True, reason="maxpool visits every tap of its window even far outside the image: "
                                       "size=99999999999 (padding defaults to size-1, so the output is 8x8) "
                                       "never finishes; the taps outside the image cannot win")
def test_maxpool_window_far_larger_than_the_image_is_fast():
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)

    def timed_forward(size: int) -> tuple[float, np.ndarray]:
        network = network_from_text(NET_8x8 + f"[maxpool]\nsize={size}\n", "pool.cfg")
        start = time.perf_counter()
        y = network.forward(x)
        return time.perf_counter() - start, y

    timed_forward(8)  # kernels loaded
    small, _ = timed_forward(8)
    # 6000x6000 taps for each of the 64 outputs: about a second now; as fast as size=8 when only the
    # in-image taps are visited (every output is then the maximum of the whole image)
    large, y = timed_forward(6000)
    assert np.all(y == x.max())
    assert large < 20 * small + 0.02


@pytest.mark.xfail(strict=True, raises=MemoryError,
                   reason="the direct convolution (kernels/depthwise.py grouped_conv_forward) allocates "
                          "stride_y*stride_x phase planes, so a valid 1x1-output convolution with stride=65536 "
                          "needs ~17 GB of scratch and raises MemoryError")
def test_convolution_with_a_stride_far_beyond_the_image_runs():
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
