#!/usr/bin/env python3
"""Fuzz darknetpy's input readers against the hardening contract, and kill training at random moments.

The contract: every bad input ends in one DarknetError subclass whose str() is `file[:line]: message` on one
line (cfg errors name the line when there is one) — never another exception type, never a hang, never a crash.

Targets (hypothesis strategies; tests/test_fuzz.py runs a bounded, derandomised share of the same ones):

  cfg-text   parse_cfg_text on generated cfg-like text (headers, options, comments, junk, odd line ends)
  cfg-bytes  parse_cfg on files of random bytes and text in odd encodings
  network    network_from_text on [net] + random registry sections with random keys and values, then
             flops(), summary(), a weights save/load round trip and, for cheap nets, a zero-input forward
  corpus     the same on cfgs from ../shared/cfg-corpus (and cfg/) with lines deleted, duplicated,
             swapped or numbers changed, built at 8..64 pixels
  weights    read_weights on valid files of a few small networks, truncated, extended, with mutated
             headers, random bytes or unreadable paths; a header-valid file of the right size must load
             and one of the wrong size must be a WeightsError

Usage (from the repository root):

    python tools/fuzz.py --minutes 5                    # random campaign over every target, prints counts
    python tools/fuzz.py --minutes 2 --targets network,corpus
    python tools/fuzz.py --kill 20                      # SIGKILL `darknetpy train` at 20 random moments

The campaign runs each target in a child process so that a hang (no progress for --hang-seconds) or a
crash (a signal, e.g. a Numba kernel writing out of bounds) is recorded with the input that caused it;
the worker is then restarted. Failures are grouped by signature (exception type and innermost darknetpy
frame); each signature keeps its first, hypothesis-shrunk, input.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import json
import math
import os
import random
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from darknetpy.config import parse_cfg, parse_cfg_text  # noqa: E402
from darknetpy.config.net import NET_KEYS  # noqa: E402
from darknetpy.config.options import DEFAULT_ONLY_KEYS, KNOWN_UNUSED_KEYS  # noqa: E402
from darknetpy.errors import CfgError, DarknetError, DarknetWarning, WeightsError  # noqa: E402
from darknetpy.layers import REGISTRY  # noqa: E402
from darknetpy.layers.base import LayerConfig, config_keys  # noqa: E402
from darknetpy.network import Network, network_from_text  # noqa: E402
from darknetpy.weights import read_weights, weights_bytes  # noqa: E402

SHARED = ROOT.parent / "shared"
CORPUS_DIR = SHARED / "cfg-corpus"
TARGETS = ("cfg-text", "cfg-bytes", "network", "corpus", "weights")

#: forward only nets this cheap: Network.flops() plus window taps that flops() does not count (pooling),
#: and this many output floats in all layer buffers together
MAX_FORWARD_WORK = 5e7
MAX_FORWARD_FLOATS = 2e7
#: save/load round trip only below this many parameters
MAX_ROUNDTRIP_FLOATS = 2_000_000
#: virtual memory the fuzzing process may add to what it has, so absurd sizes fail fast instead of
#: exhausting the machine (such a MemoryError is itself a contract violation)
MEMORY_HEADROOM = 4 << 30
#: a campaign worker that has grown this much (Numba compilations, allocator fragmentation) hands over to a
#: fresh one, so that late inputs do not fail for lack of headroom
WORKER_RECYCLE_GROWTH = 2 << 30

FUZZ_CFG_PATH = "fuzz.cfg"


# ==== the contract ===============================================================================================
class ContractViolation(AssertionError):
    """A DarknetError that breaks the error contract (no path, no line, bad line, several lines), or a
    numpy warning, or a wrong accept/reject decision of the weights reader."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


@dataclass
class Outcome:
    """What one input did. `status`: "error" (a well-formed DarknetError), "ok", "forward" (built and ran)."""
    status: str
    nonfinite: bool = False


#: cfg errors about the file as a whole, which have no line to name
_WHOLE_FILE_MESSAGES = ("no sections found", "the cfg has no sections", "cfg file not found",
                        "cfg file is a directory", "cfg file cannot be read", "cfg file is not a text file")


def check_located(exc: DarknetError, path: str, text: str | None, need_line: bool,
                  line_must_hold_text: bool = False) -> None:
    """Raise ContractViolation unless `exc` names `path`, prints as one line, and (for cfg errors when
    `need_line`) carries a line number inside the text that points at a written line."""
    shown = str(exc)
    if exc.path != path:
        raise ContractViolation("wrong path", f"{type(exc).__name__} names {exc.path!r}, not {path!r}: {shown}")
    if "\n" in shown or "\r" in shown:
        raise ContractViolation("multi-line message", repr(shown))
    if not shown.startswith(f"{path}:"):
        raise ContractViolation("unlocated message", repr(shown))
    is_cfg = isinstance(exc, CfgError)
    if is_cfg and need_line and exc.line is None and not exc.message.startswith(_WHOLE_FILE_MESSAGES):
        raise ContractViolation("no line number", f"{type(exc).__name__}: {shown}")
    if exc.line is not None and text is not None:
        lines = text.split("\n")
        if not 1 <= exc.line <= len(lines):
            raise ContractViolation("line out of range", f"line {exc.line} of {len(lines)}: {shown}")
        if line_must_hold_text and not lines[exc.line - 1].strip():
            raise ContractViolation("line points at a blank line", f"line {exc.line}: {shown}")


@contextlib.contextmanager
def numpy_warnings_are_violations() -> Iterator[None]:
    """DarknetWarnings are fine; a RuntimeWarning (overflow, invalid value, ...) or any other warning is not."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        if not issubclass(w.category, DarknetWarning):
            raise ContractViolation(f"{w.category.__name__}", f"{w.message} ({Path(w.filename).name}:{w.lineno})")


def address_space() -> int | None:
    """This process's virtual memory size in bytes (Linux), or None."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[0]) * resource.getpagesize()
    except OSError:
        return None


@contextlib.contextmanager
def memory_headroom(extra: int = MEMORY_HEADROOM) -> Iterator[None]:
    """Cap this process's address space at its current size plus `extra` (restored afterwards)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    current = address_space()
    if current is None:
        yield
        return
    limit = current + extra
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# ==== targets ====================================================================================================
def check_cfg_text(text: str, path: str = FUZZ_CFG_PATH) -> Outcome:
    with numpy_warnings_are_violations():
        try:
            parse_cfg_text(text, path)
        except DarknetError as exc:
            check_located(exc, path, text.removeprefix("\ufeff"), need_line=True)
            return Outcome("error")
    return Outcome("ok")


def check_cfg_bytes(data: bytes, folder: str | os.PathLike) -> Outcome:
    path = os.path.join(folder, FUZZ_CFG_PATH)
    with open(path, "wb") as fh:
        fh.write(data)
    with numpy_warnings_are_violations():
        try:
            parse_cfg(path)
        except DarknetError as exc:
            check_located(exc, path, None, need_line=True)
            if exc.line is not None and not 1 <= exc.line <= data.count(b"\n") + 1:
                raise ContractViolation("line out of range", str(exc)) from None
            return Outcome("error")
    return Outcome("ok")


def forward_work(network: Network) -> tuple[float, float]:
    """(work, floats): FLOPs plus pooling-window taps, and the floats of every layer's output buffer."""
    work = float(network.flops())
    floats = 0.0
    for layer, shape in zip(network.layers, network.shapes):
        out = float(shape.c) * float(shape.h) * float(shape.w)
        floats += out
        window = getattr(layer.config, "window", None) or getattr(layer.config, "size", None) or 1
        work += out * float(window) * float(window)
    return work, floats


def _config_flag(layer, name: str) -> bool:
    return bool(getattr(layer.config, name, False))


def check_built_network(network: Network, path: str, text: str | None, run_forward: bool = True) -> Outcome:
    """Everything the CLI does with a network that built: flops, summary, save/load, a forward pass."""
    flops = network.flops()
    if not math.isfinite(flops) or flops < 0:
        raise ContractViolation("bad flops", f"flops() = {flops}")
    network.summary()
    roundtrip_ok = not any(_config_flag(l, "dontload") or _config_flag(l, "dontsave")
                           or _config_flag(l, "dontloadscales") or getattr(l.config, "numload", 0)
                           for l in network.layers)
    if roundtrip_ok and network.parameter_count() <= MAX_ROUNDTRIP_FLOATS:
        check_weights_roundtrip(network)
    work, floats = forward_work(network)
    if not run_forward or work >= MAX_FORWARD_WORK or floats >= MAX_FORWARD_FLOATS:
        return Outcome("ok")
    s = network.input_shape
    x = np.zeros((1, s.c, s.h, s.w), dtype=np.float32)
    try:
        y = network.forward(x)
    except DarknetError as exc:
        check_located(exc, path, text, need_line=True, line_must_hold_text=True)
        return Outcome("error")
    if not isinstance(y, np.ndarray):
        raise ContractViolation("forward returned no array", f"Network.forward returned {y!r}")
    return Outcome("forward", nonfinite=not bool(np.all(np.isfinite(y))))


_scratch: list[str] = []


def ram_dir() -> str | None:
    """/dev/shm when usable: creating and truncating files on a journaled disk costs milliseconds each."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


def scratch_dir() -> str:
    """One folder per process for the files the checks write, made once (mkdir/rmdir per input is slow),
    removed at exit."""
    if not _scratch:
        folder = tempfile.mkdtemp(prefix="dnfuzz-", dir=None if tempfile.tempdir else ram_dir())
        atexit.register(shutil.rmtree, folder, True)
        _scratch.append(folder)
    return _scratch[0]


def check_weights_roundtrip(network: Network) -> None:
    """weights_bytes -> read_weights must load (a file darknetpy writes must load into the same cfg)."""
    path = os.path.join(scratch_dir(), "roundtrip.weights")
    with open(path, "wb") as fh:
        fh.write(weights_bytes(network, seen=12345))
    try:
        header = read_weights(network, path)
    except WeightsError as exc:
        raise ContractViolation("save/load round trip", str(exc)) from None
    if header.seen != 12345:
        raise ContractViolation("save/load round trip", f"seen {header.seen} read back as 12345 written")


def check_network(text: str, width: int | None = None, height: int | None = None,
                  path: str = FUZZ_CFG_PATH, run_forward: bool = True) -> Outcome:
    with numpy_warnings_are_violations():
        try:
            network = network_from_text(text, path, width, height)
        except DarknetError as exc:
            check_located(exc, path, text.removeprefix("\ufeff"), need_line=True, line_must_hold_text=True)
            return Outcome("error")
        return check_built_network(network, path, text, run_forward)


# ---- weights -------------------------------------------------------------------------------------------------
#: small networks covering every layer with parameters, and the float count a Darknet weights file for
#: each holds, counted by hand from the spec §5 table (not from darknetpy)
WEIGHTS_ZOO: tuple[tuple[str, int], ...] = (
    ("""[net]
width=8
height=8
channels=3

[convolutional]
batch_normalize=1
filters=4
size=3
pad=1
activation=leaky

[convolutional]
filters=2
size=1
groups=2
activation=linear

[batchnorm]

[deconvolutional]
filters=3
size=2
stride=2
activation=linear

[maxpool]
size=2
stride=2

[local]
filters=2
size=3
stride=2
activation=linear

[crnn]
output_filters=2
hidden_filters=3
activation=leaky

[connected]
output=5
batch_normalize=1
activation=linear

[softmax]
""",
     # conv 4+3*4+4*3*9=124, grouped conv 2+2*2=6, batchnorm 3*2=6, deconv 3+2*3*2*2=27,
     # local 3x3 out: 2*9 + 9*2*3*9=504, crnn 3+3*2*9 + 3+3*3*9 + 2+2*3*9=197, connected bn 5+5*18+3*5=110
     124 + 6 + 6 + 27 + 504 + 197 + 110),
    ("""[net]
inputs=6

[rnn]
output=4
activation=leaky

[gru]
output=3

[lstm]
output=2

[connected]
output=2
activation=linear
""",
     # rnn (4+24)+(4+16)+(4+16)=68, gru 3*(3+9)+3*(3+12)=81, lstm 4*(2+4)+4*(2+6)=56, connected 2+4=6
     68 + 81 + 56 + 6),
    ("""[net]
width=4
height=4
channels=3

[convolutional]
batch_normalize=1
filters=4
size=1
dontloadscales=1
activation=leaky

[convolutional]
filters=2
size=1
dontload=1
activation=linear

[convolutional]
filters=4
size=1
numload=2
activation=linear
""",
     # reading: biases 4 + weights 4*3 (no BN arrays), nothing, 2 biases + 2*2 weights
     16 + 0 + 6),
)

GOOD_HEADERS = ((0, 2, 0), (0, 2, 5), (0, 1, 0), (0, 0, 3), (1, 0, 0), (0, 1, 9))


def header_size(major: int, minor: int) -> int:
    """Spec §5: an 8-byte `seen` when major*10+minor >= 2 and both are below 1000, else 4 bytes."""
    return 20 if (major * 10 + minor >= 2 and major < 1000 and minor < 1000) else 16


def make_header(major: int, minor: int, revision: int, seen: int) -> bytes:
    head = struct.pack("<iii", major, minor, revision)
    if header_size(major, minor) == 20:
        return head + struct.pack("<Q", seen % (1 << 64))
    return head + struct.pack("<i", (seen + (1 << 31)) % (1 << 32) - (1 << 31))


_zoo_cache: list[Network] = []


def weights_zoo() -> list[Network]:
    if not _zoo_cache:
        for text, _ in WEIGHTS_ZOO:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DarknetWarning)
                _zoo_cache.append(network_from_text(text, "zoo.cfg"))
    return _zoo_cache


@dataclass(frozen=True)
class WeightsCase:
    """One weights-reader input: a file body for zoo network `zoo`, or a special path kind."""
    zoo: int
    how: str
    data: bytes = b""
    path_kind: str = "file"  # file, directory, missing, loop, notdir, toolong
    expect: str = "any"       # "load", "error" or "any"

    def __repr__(self) -> str:
        shown = self.data if len(self.data) <= 96 else self.data[:96] + b"..."
        return (f"WeightsCase(zoo={self.zoo}, how={self.how!r}, path_kind={self.path_kind!r}, "
                f"expect={self.expect!r}, len={len(self.data)}, data={shown!r})")


def _materialise(case: WeightsCase, folder: str) -> str:
    """The path to read for `case` (fixed names, overwritten per input)."""
    base = os.path.join(folder, "case.weights")
    if case.path_kind in ("file", "notdir"):
        with open(base, "wb") as fh:
            fh.write(case.data)
        return base if case.path_kind == "file" else os.path.join(base, "inside.weights")
    if case.path_kind == "directory":
        path = os.path.join(folder, "a-directory")
        os.makedirs(path, exist_ok=True)
        return path
    if case.path_kind == "missing":
        return os.path.join(folder, "absent.weights")
    if case.path_kind == "loop":
        link = os.path.join(folder, "loop")
        if not os.path.lexists(link):
            os.symlink(link, link)
        return link
    if case.path_kind == "toolong":
        return os.path.join(folder, "x" * 300)
    raise ValueError(case.path_kind)


def check_weights(case: WeightsCase, folder: str | os.PathLike) -> Outcome:
    network = weights_zoo()[case.zoo]
    path = _materialise(case, os.fspath(folder))
    with numpy_warnings_are_violations():
        try:
            read_weights(network, path)
        except DarknetError as exc:
            check_located(exc, path, None, need_line=False)
            if not isinstance(exc, WeightsError):
                raise ContractViolation("not a WeightsError", f"{type(exc).__name__}: {exc}") from None
            if case.expect == "load":
                raise ContractViolation("valid file refused", str(exc)) from None
            return Outcome("error")
    if case.expect == "error":
        raise ContractViolation("invalid file accepted", repr(case))
    return Outcome("ok")


# ==== strategies =================================================================================================
INTERESTING_INTS = (0, 1, -1, 2, -2, 3, 7, 8, 16, 63, 64, 255, 1000, 1001, 65536, 2**31 - 1, 2**31, -2**31,
                    2**32, 10**9, 2**62, 2**63 - 1, 2**63, -2**63, 10**30)
FLOAT_TEXTS = ("0.5", "0", "-0", ".5", "5.", "1e-9", "1e-45", "3.4e38", "1e39", "1e400", "-1e400", "1e308",
               "-0.0", "+1.5", "2.5e+3", "nan", "inf", "-inf", "0x10", "1_000")
LAYER_NAMES = tuple(sorted(REGISTRY))
COMMON_KEYS = frozenset(config_keys(LayerConfig))
EXTRA_KEYS = tuple(sorted(KNOWN_UNUSED_KEYS)) + tuple(sorted(DEFAULT_ONLY_KEYS)) + (
    "filtres", "fiters", "Filters", "sise", "actvation", "stide", "x", "_", "a.b", "k-1")

# Strategies are built once: constructing hypothesis strategies inside every draw costs more than the
# engine's own work on the input.
_value_char = st.characters(blacklist_characters="\r\n#;", blacklist_categories=("Cs",))
_any_char = st.characters(blacklist_categories=("Cs",))
_line_char = st.characters(blacklist_categories=("Cs",), blacklist_characters="\n")

INT_TEXT = st.one_of(st.integers(-3, 10).map(str), st.sampled_from(INTERESTING_INTS).map(str),
                     st.integers().map(str))
FLOAT_TEXT = st.one_of(st.sampled_from(FLOAT_TEXTS),
                       st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr),
                       st.floats(-4, 4).map(lambda v: f"{v:.3g}"))
GARBAGE_TEXT = st.one_of(st.text(_value_char, min_size=1, max_size=8),
                         st.sampled_from(("abc", "1a", "--1", "1,", ",", ",,", "1,,2", "=", "1=2", "[x]", "0b1",
                                          "１２", "\u00a0", "\x0b", "\x0c1", "٣", "1 2", "\t")))


def list_text(item: st.SearchStrategy[str], min_size: int = 1, max_size: int = 6) -> st.SearchStrategy[str]:
    return st.lists(item, min_size=min_size, max_size=max_size).map(",".join)


ANY_VALUE = st.one_of(INT_TEXT, FLOAT_TEXT, GARBAGE_TEXT, list_text(st.one_of(INT_TEXT, FLOAT_TEXT)))


def _sensible_value(config_cls: type, key: str) -> st.SearchStrategy[str]:
    """Values the key could plausibly hold, derived from the Config field's type, range and choices."""
    if key in ("layers", "from"):
        return list_text(st.integers(-5, 4).map(str), 1, 3)
    if key == "mask":
        return list_text(st.integers(-1, 9).map(str), 1, 4)
    if key == "anchors":
        return st.integers(1, 9).flatmap(lambda n: list_text(st.integers(1, 64).map(str), n, n))
    if key == "tree":
        return st.just("data/9k.tree")
    name = config_keys(config_cls).get(key)
    if name is None:
        return ANY_VALUE
    f = {f.name: f for f in dataclasses.fields(config_cls)}[name]
    meta = f.metadata.get("option") or {}
    hint = typing.get_type_hints(config_cls)[name]
    base = ([a for a in typing.get_args(hint) if a is not type(None)] or [hint])[0]
    if typing.get_origin(base) is tuple:
        item = st.integers(-3, 8).map(str) if typing.get_args(base)[0] is int else st.floats(0, 20).map(repr)
        return list_text(item, 1, 6)
    if meta.get("choices"):
        return st.sampled_from(meta["choices"])
    if base is bool:
        return st.sampled_from(("0", "1"))
    if base is int:
        low = meta.get("minimum")
        low = -2 if low is None else int(low)
        return st.integers(low, low + 6).map(str)
    if base is float:
        low, high = meta.get("minimum"), meta.get("maximum")
        return st.floats(-2.0 if low is None else low, 4.0 if high is None else high).map(lambda v: f"{v:.4g}")
    return ANY_VALUE


def _section_strategy(name: str) -> st.SearchStrategy[str]:
    """`[name]` and up to five of its keys (mostly its own, sometimes shared, unknown or training-only),
    each with a plausible value three times out of four and anything otherwise."""
    config_cls = REGISTRY[name].Config
    keys = tuple(sorted(config_keys(config_cls)))
    specific = tuple(k for k in keys if k not in COMMON_KEYS) or keys
    pool = [(k, 3) for k in specific] + [(k, 1) for k in keys] + [(k, 1) for k in EXTRA_KEYS[::7]]
    options = []
    for key, weight in pool:
        sensible = _sensible_value(config_cls, key)
        options += [st.one_of(sensible, sensible, sensible, ANY_VALUE).map(lambda v, k=key: f"{k}={v}")] * weight
    option_line = st.one_of(options)
    return st.lists(option_line, max_size=5).map(lambda lines, n=name: "\n".join([f"[{n}]", *lines]))


LAYER_SECTION = st.one_of([_section_strategy(name) for name in LAYER_NAMES])

NET_EXTRA = ("batch", "subdivisions", "time_steps", "policy", "learning_rate", "max_batches", "steps",
             "scales", "burn_in", "adam", "momentum", "decay", "min_crop", "max_crop", "seen", "angle")
_SMALL = st.integers(1, 4).map(str)
_NET_OPTION = st.one_of([st.one_of(_SMALL, _SMALL, ANY_VALUE).map(lambda v, k=key: f"{k}={v}")
                         for key in NET_EXTRA + tuple(sorted(NET_KEYS))])
_IMAGE_INPUT = st.tuples(st.integers(8, 64), st.integers(8, 64), st.integers(1, 4)).map(
    lambda whc: f"width={whc[0]}\nheight={whc[1]}\nchannels={whc[2]}")
_VECTOR_INPUT = st.integers(1, 64).map(lambda n: f"inputs={n}")
NET_SECTION = st.tuples(st.sampled_from(("[net]", "[network]")),
                        st.one_of(*[_IMAGE_INPUT] * 9, _VECTOR_INPUT),
                        st.lists(_NET_OPTION, max_size=2)).map(lambda t: "\n".join([t[0], t[1], *t[2]]))


def network_cfgs() -> st.SearchStrategy[str]:
    """[net] (8..64 pixels, 1..4 channels, or a vector input) and one to six random layer sections."""
    return st.tuples(NET_SECTION, st.lists(LAYER_SECTION, min_size=1, max_size=6)).map(
        lambda t: "\n\n".join([t[0], *t[1]]) + "\n")


_WS = st.sampled_from(("", "", " ", "\t", "  \t "))
_CFG_WORDS = st.sampled_from(LAYER_NAMES + ("net", "network", "Convolutional", "NET", "", " ", "x y"))
_CFG_KEYS = st.sampled_from(tuple(sorted({k for n in LAYER_NAMES for k in config_keys(REGISTRY[n].Config)}
                                         | NET_KEYS)) + EXTRA_KEYS + ("", " ", "1a", "a b", "é"))
_HEADER_LINE = st.tuples(_WS, _WS, _CFG_WORDS, _WS, _WS).map(lambda t: f"{t[0]}[{t[1]}{t[2]}{t[3]}]{t[4]}")
_OPTION_LINE = st.tuples(_WS, _CFG_KEYS, _WS, _WS, ANY_VALUE, _WS,
                         st.sampled_from(("", "", " # note", ";x", "#"))).map("{0[0]}{0[1]}{0[2]}={0[3]}{0[4]}{0[5]}{0[6]}".format)
_OTHER_LINE = st.sampled_from(("", "#", "; c", "   ", "\t", "# [net]"))
CFG_LINE = st.one_of(*[_HEADER_LINE] * 3, *[_OPTION_LINE] * 4, _OTHER_LINE, st.text(_line_char, max_size=12))
_LINE_END = st.sampled_from(("\n", "\n", "\n", "\r\n", "\r"))


def _join_lines(parts: tuple) -> str:
    lines, net_first, strip_end, bom = parts
    if net_first:
        lines = [("[net]", "\n"), *lines]
    text = "".join(line + end for line, end in lines)
    if strip_end:
        text = text.rstrip("\r\n")
    return ("\ufeff" if bom else "") + text


_STRUCTURED_TEXT = st.tuples(st.lists(st.tuples(CFG_LINE, _LINE_END), max_size=12), st.booleans(), st.booleans(),
                             st.integers(0, 9).map(lambda n: n == 0)).map(_join_lines)
CFG_TEXT = st.one_of(*[_STRUCTURED_TEXT] * 5, st.text(_any_char, max_size=60))


def cfg_texts() -> st.SearchStrategy[str]:
    """cfg-like text: headers, options with odd values and whitespace, comments, junk, LF/CRLF/CR, BOM."""
    return CFG_TEXT


CFG_BYTES = st.one_of(
    st.binary(max_size=80),
    CFG_TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.tuples(CFG_TEXT, st.sampled_from(("utf-16", "utf-8-sig", "utf-32"))).map(
        lambda t: t[0].encode(t[1], "surrogatepass")),
    st.tuples(CFG_TEXT, st.binary(max_size=4)).map(lambda t: t[0].encode("latin-1", "replace") + t[1]))


def cfg_file_bytes() -> st.SearchStrategy[bytes]:
    """Random bytes, and cfg-like text as UTF-8, UTF-16/32 (NUL bytes), UTF-8 with BOM, Latin-1."""
    return CFG_BYTES


# ---- mutated corpus cfgs -----------------------------------------------------------------------------------------
def corpus_files(corpus_dir: Path | None = CORPUS_DIR) -> list[Path]:
    files = sorted(corpus_dir.glob("*.cfg")) if corpus_dir is not None and corpus_dir.is_dir() else []
    return files + sorted((ROOT / "cfg").glob("*.cfg"))


@dataclass(frozen=True)
class CorpusCase:
    name: str
    text: str
    width: int
    height: int
    mutations: tuple[str, ...]

    def __repr__(self) -> str:
        return (f"CorpusCase(name={self.name!r}, width={self.width}, height={self.height}, "
                f"mutations={self.mutations!r})")


_NUMBER = re.compile(r"-?\d+(?:\.\d*)?")


_MUTATION = st.sampled_from(("delete", "duplicate", "swap", "number", "number", "number", "value", "truncate",
                             "insert"))
_MUTATION_COUNT = st.integers(1, 4)
_NEW_NUMBER = st.one_of(INT_TEXT, FLOAT_TEXT, st.sampled_from(("0", "-1", "1", "2")))
_SIDE = st.integers(1, 8).map(lambda n: 8 * n)
_SQUARE = st.booleans()


@st.composite
def _corpus_case(draw: st.DrawFn, texts: tuple[tuple[str, str], ...]) -> CorpusCase:
    name, text = texts[_pick(draw, len(texts))]
    lines = text.split("\n")
    done: list[str] = []
    for _ in range(draw(_MUTATION_COUNT)):
        if not lines:
            break
        op = draw(_MUTATION)
        i = _pick(draw, len(lines))
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(_pick(draw, len(lines) + 1), lines[i])
        elif op == "swap":
            j = _pick(draw, len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "number":
            numbered = [k for k, line in enumerate(lines) if "=" in line and _NUMBER.search(line.split("=", 1)[1])]
            if not numbered:
                continue
            i = numbered[_pick(draw, len(numbered))]
            key, value = lines[i].split("=", 1)
            spans = [m.span() for m in _NUMBER.finditer(value)]
            a, b = spans[_pick(draw, len(spans))]
            lines[i] = f"{key}={value[:a]}{draw(_NEW_NUMBER)}{value[b:]}"
            op = f"number@{i + 1}->{lines[i]!r}"
        elif op == "value":
            if "=" not in lines[i]:
                continue
            lines[i] = f"{lines[i].split('=', 1)[0]}={draw(ANY_VALUE)}"
            op = f"value@{i + 1}->{lines[i]!r}"
        elif op == "truncate":
            lines = lines[:i]
        elif op == "insert":
            lines.insert(i, draw(CFG_LINE))
            op = f"insert@{i + 1}->{lines[i]!r}"
        done.append(op if "@" in op else f"{op}@{i + 1}")
    width = draw(_SIDE)
    height = width if draw(_SQUARE) else draw(_SIDE)
    return CorpusCase(name, "\n".join(lines), width, height, tuple(done))


def corpus_cases(texts: tuple[tuple[str, str], ...]) -> st.SearchStrategy[CorpusCase]:
    """A corpus cfg with one to four line deletions, duplications, swaps, number or value changes,
    truncations or inserted lines, to be built at 8..64 pixels."""
    return _corpus_case(texts)


def check_corpus(case: CorpusCase) -> Outcome:
    return check_network(case.text, case.width, case.height)


# ---- weights cases -----------------------------------------------------------------------------------------------
def _body(zoo: int, seed: int) -> bytes:
    n = WEIGHTS_ZOO[zoo][1]
    return np.random.default_rng(seed).standard_normal(n).astype("<f4").tobytes()


_UNIT = st.integers(0, (1 << 16) - 1)  # a position inside something of variable length: scaled, not re-built


def _pick(draw: st.DrawFn, n: int) -> int:
    """An index below n drawn from a prebuilt strategy (building st.integers(0, n) per draw is slow)."""
    return draw(_UNIT) * n >> 16 if n > 1 else 0


_ZOO_INDEX = st.integers(0, len(WEIGHTS_ZOO) - 1)
_BODY_SEED = st.integers(0, 3)
_GOOD_HEADER = st.sampled_from(GOOD_HEADERS)
_SEEN = st.one_of(st.integers(0, 10**6), st.sampled_from((2**31 - 1, 2**32, 2**63, 2**64 - 1)))
_HOW = st.sampled_from(("valid", "truncate", "truncate", "extend", "extend", "floats", "header", "header", "flip",
                        "random", "path", "transposed"))
_EXTRA_BYTES = st.binary(min_size=1, max_size=40)
_HEADER_FIELD = st.one_of(st.sampled_from((0, 1, 2, 3, 999, 1000, 1001, 2**31 - 1, -1, -2**31)),
                          st.integers(-2**31, 2**31 - 1))
_HEADER_FIELDS = st.tuples(_HEADER_FIELD, _HEADER_FIELD, _HEADER_FIELD)
_SHORT_BYTES = st.binary(max_size=12)
_RANDOM_BYTES = st.binary(max_size=64)
_FLIPS = st.lists(st.tuples(_UNIT, st.integers(0, 255)), min_size=1, max_size=6)
_TRANSPOSED = st.sampled_from(((1001, 0), (0, 1001), (1001, 1001), (2**31 - 1, 5)))
_PATH_KIND = st.sampled_from(("directory", "missing", "loop", "notdir", "toolong"))


@st.composite
def _weights_case(draw: st.DrawFn) -> WeightsCase:
    zoo = draw(_ZOO_INDEX)
    needed = WEIGHTS_ZOO[zoo][1]
    body = _body(zoo, draw(_BODY_SEED))
    major, minor, revision = draw(_GOOD_HEADER)
    header = make_header(major, minor, revision, draw(_SEEN))
    how = draw(_HOW)
    if how == "valid":
        return WeightsCase(zoo, how, header + body, expect="load")
    if how == "truncate":
        cut = _pick(draw, len(header) + len(body))
        return WeightsCase(zoo, f"truncate@{cut}", (header + body)[:cut], expect="error")
    if how == "extend":
        return WeightsCase(zoo, "extend", header + body + draw(_EXTRA_BYTES), expect="error")
    if how == "floats":
        count = _pick(draw, needed + 9)
        padded = body[:4 * count] + b"\0" * max(0, 4 * count - len(body))
        return WeightsCase(zoo, f"floats={count}", header + padded, expect="load" if count == needed else "error")
    if how == "header":
        fields = draw(_HEADER_FIELDS)
        return WeightsCase(zoo, f"header={list(fields)}", struct.pack("<iii", *fields) + draw(_SHORT_BYTES) + body)
    if how == "flip":
        blob = bytearray(header + body)
        for where, value in draw(_FLIPS):
            blob[where * len(blob) >> 16] = value
        return WeightsCase(zoo, "flip", bytes(blob))
    if how == "random":
        return WeightsCase(zoo, "random", draw(_RANDOM_BYTES))
    if how == "transposed":
        major, minor = draw(_TRANSPOSED)
        return WeightsCase(zoo, "transposed", make_header(major, minor, 0, 0) + body, expect="load")
    return WeightsCase(zoo, "path", header + body, path_kind=draw(_PATH_KIND), expect="error")


WEIGHTS_CASE = _weights_case()


def weights_cases() -> st.SearchStrategy[WeightsCase]:
    """Files for the zoo networks: valid (must load), truncated, extended or of the wrong float count (must be
    refused), with mutated headers, flipped bytes or random bytes (either), and unreadable paths (refused)."""
    return WEIGHTS_CASE


# ==== failure bookkeeping ========================================================================================
def _leaf(exc: BaseException) -> BaseException:
    """The first real exception inside hypothesis's wrappers (FlakyFailure and other exception groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def signature(exc: BaseException) -> str:
    """Exception type and the innermost frame inside darknetpy (or this file for contract violations)."""
    exc = _leaf(exc)
    if isinstance(exc, ContractViolation):
        return f"ContractViolation[{exc.kind}]"
    frames = traceback.extract_tb(exc.__traceback__)
    where = "?"
    for frame in reversed(frames):
        if f"{os.sep}darknetpy{os.sep}" in frame.filename:
            where = f"{Path(frame.filename).relative_to(ROOT)}:{frame.lineno} in {frame.name}"
            if isinstance(exc, MemoryError):  # one finding whichever array of the function failed
                where = f"{Path(frame.filename).relative_to(ROOT)} in {frame.name}"
            break
    return f"{type(exc).__name__} at {where}"


@dataclass
class TargetStats:
    tried: int = 0
    errors: int = 0       # inputs refused with a well-formed DarknetError
    accepted: int = 0     # parsed / built / loaded
    forwarded: int = 0    # networks that also ran a forward pass
    nonfinite: int = 0    # forwards of a zero input whose output had NaN or inf (Darknet-like, not a failure)
    failing_inputs: int = 0
    failures: dict[str, dict] = field(default_factory=dict)  # signature -> {"error", "input"}

    def merge(self, other: "TargetStats") -> None:
        for name in ("tried", "errors", "accepted", "forwarded", "nonfinite", "failing_inputs"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for sig, info in other.failures.items():
            self.failures.setdefault(sig, info)


def target_runner(target: str, folder: str, corpus_dir: Path | None = CORPUS_DIR
                  ) -> tuple[st.SearchStrategy, Callable[[Any], Outcome]]:
    """The strategy and the check function of one target."""
    if target == "cfg-text":
        return cfg_texts(), check_cfg_text
    if target == "cfg-bytes":
        return cfg_file_bytes(), lambda data: check_cfg_bytes(data, folder)
    if target == "network":
        return network_cfgs(), check_network
    if target == "corpus":
        texts = tuple((p.name, p.read_text(encoding="utf-8", errors="replace")) for p in corpus_files(corpus_dir))
        return corpus_cases(texts), check_corpus
    if target == "weights":
        return weights_cases(), lambda case: check_weights(case, folder)
    raise ValueError(f"unknown target {target!r}")


def record(stats: TargetStats, outcome: Outcome) -> None:
    if outcome.status == "error":
        stats.errors += 1
    else:
        stats.accepted += 1
    if outcome.status == "forward":
        stats.forwarded += 1
        stats.nonfinite += outcome.nonfinite


# ==== the campaign ===============================================================================================
def run_worker(target: str, seconds: float, state_path: Path, seed: int | None) -> None:
    """Fuzz one target until `seconds` pass, writing counts to `state_path` (JSON) as it goes and the input
    under test to `state_path`.current so the parent can name the input of a hang or crash."""
    warnings.simplefilter("ignore", DarknetWarning)
    # temporary files go under the parent's state folder, which it removes even after killing this worker
    tempfile.tempdir = str(state_path.parent)
    current_path = Path(f"{state_path}.current")
    stats = TargetStats()
    deadline = time.monotonic() + seconds
    last_save = 0.0
    rng = random.Random(seed)

    def save() -> None:
        tmp = Path(f"{state_path}.tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(stats)))
        os.replace(tmp, state_path)

    class TimeUp(BaseException):
        """Ends hypothesis's run at once (it lets BaseExceptions through without shrinking)."""

    start_size = address_space() or 0
    with memory_headroom():
        folder = scratch_dir()
        strategy, check = target_runner(target, folder)
        stash: dict[str, dict] = {}  # signature -> the latest failing input (the shrunk one, in the end)

        while time.monotonic() < deadline:
            @settings(max_examples=10**9, deadline=None, database=None, derandomize=False,
                      phases=(Phase.generate, Phase.shrink), suppress_health_check=list(HealthCheck),
                      report_multiple_bugs=False)
            @given(strategy)
            def prop(case):
                nonlocal last_save
                if time.monotonic() >= deadline:
                    raise TimeUp
                stats.tried += 1
                shown = repr(case)
                with open(current_path, "w") as fh:
                    fh.write(shown)
                try:
                    outcome = check(case)
                except Exception as exc:  # noqa: BLE001 - every non-DarknetError is the finding
                    # hypothesis keeps failing exceptions while it shrinks: drop the frames' locals (the
                    # network and its arrays) so that memory does not run out for the next inputs
                    traceback.clear_frames(exc.__traceback__)
                    sig = signature(exc)
                    stats.failing_inputs += 1
                    if sig in stats.failures:
                        return  # known this run: keep fuzzing instead of shrinking it again
                    stash[sig] = {"error": f"{type(exc).__name__}: {exc}"[:600], "input": shown[:4000]}
                    raise
                record(stats, outcome)
                now = time.monotonic()
                if now - last_save > 1.0:
                    last_save = now
                    save()
                    if (address_space() or 0) - start_size > WORKER_RECYCLE_GROWTH:
                        raise TimeUp  # the parent starts a fresh worker for the time that is left

            prop = _seeded(prop, rng.getrandbits(64))
            try:
                prop()
            except TimeUp:
                break
            except Exception as exc:  # noqa: BLE001
                leaf = _leaf(exc)
                sig = signature(leaf)
                stats.failures.setdefault(sig, stash.get(sig) or {"error": f"{type(leaf).__name__}: {leaf}"[:600],
                                                                  "input": "?"})
                save()
        for sig, info in stash.items():  # time ran out while hypothesis was still shrinking these
            stats.failures.setdefault(sig, info)
    save()


def _seeded(test: Callable, seed: int) -> Callable:
    from hypothesis import seed as hypothesis_seed
    return hypothesis_seed(seed)(test)


def run_campaign(minutes: float, targets: list[str], hang_seconds: float, out_dir: Path,
                 seed: int | None) -> dict[str, TargetStats]:
    """Run each target in a watched child process for an equal share of `minutes`."""
    totals = {t: TargetStats() for t in targets}
    share = minutes * 60.0 / len(targets)
    for index, target in enumerate(targets):
        end = time.monotonic() + share
        restart = broken = 0
        while time.monotonic() < end - 1.0 and broken < 3:
            state = out_dir / f"{target}.{restart}.json"
            current = Path(f"{state}.current")
            log = Path(f"{state}.stderr")
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", target,
                   "--seconds", f"{end - time.monotonic():.1f}", "--state", str(state)]
            if seed is not None:
                cmd += ["--seed", str(seed * 1000 + index * 100 + restart)]
            with open(log, "w") as err:  # a file, not a pipe: a full pipe would stall the worker
                proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
                stalled = None
                while proc.poll() is None:
                    time.sleep(0.5)
                    stamp = current.stat().st_mtime if current.exists() else None
                    if stamp is not None and time.time() - stamp > hang_seconds:
                        stalled = current.read_text()
                        proc.kill()
                        proc.wait()
            stats = TargetStats(**json.loads(state.read_text())) if state.exists() else TargetStats()
            last_input = current.read_text()[:4000] if current.exists() else "?"
            if stalled is not None:
                stats.failing_inputs += 1
                stats.failures.setdefault(f"hang (no progress for {hang_seconds:g} s)",
                                          {"error": "killed by the watchdog", "input": stalled[:4000]})
            elif proc.returncode != 0:
                what = (f"crash (signal {-proc.returncode})" if proc.returncode < 0
                        else f"worker exit {proc.returncode}")
                stats.failing_inputs += 1
                stats.failures.setdefault(what, {"error": log.read_text()[-1500:], "input": last_input})
                broken = broken + 1 if proc.returncode > 0 else 0
            totals[target].merge(stats)
            restart += 1
    return totals


def print_report(totals: dict[str, TargetStats], seconds: float, file=sys.stdout) -> None:
    print(f"\nfuzz campaign: {seconds / 60:.1f} minutes", file=file)
    print(f"{'target':<10} {'inputs':>9} {'refused':>9} {'accepted':>9} {'forward':>8} {'nonfinite':>9} "
          f"{'failing':>8} {'unique':>6}", file=file)
    all_inputs = all_failing = all_unique = 0
    for target, s in totals.items():
        print(f"{target:<10} {s.tried:>9} {s.errors:>9} {s.accepted:>9} {s.forwarded:>8} {s.nonfinite:>9} "
              f"{s.failing_inputs:>8} {len(s.failures):>6}", file=file)
        all_inputs += s.tried
        all_failing += s.failing_inputs
        all_unique += len(s.failures)
    print(f"{'total':<10} {all_inputs:>9} {'':>9} {'':>9} {'':>8} {'':>9} {all_failing:>8} {all_unique:>6}",
          file=file)
    for target, s in totals.items():
        for sig, info in s.failures.items():
            print(f"\n[{target}] {sig}\n  error: {info['error']}\n  input: {info['input']}", file=file)


# ==== SIGKILL during training ====================================================================================
def kill_trials(trials: int, seed: int | None, workdir: Path | None = None, verbose: bool = True) -> dict:
    """Train the tiny classifier of tests/test_training.py, SIGKILL it at random moments (resuming from the
    last checkpoint each time) and check that every file in the backup folder is whole after each kill."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_training import TINY_CFG, make_dataset  # the tiny cfg and dataset the training tests use

    import darknetpy

    rng = random.Random(seed)
    own = workdir is None
    root = Path(tempfile.mkdtemp(prefix="dnkill-")) if own else workdir
    counts = {"trials": 0, "killed_running": 0, "exited_before_kill": 0, "checkpoints_checked": 0,
              "stale_temp_files": 0, "failures": []}
    try:
        data = make_dataset(root / "ds")
        cfg = root / "tiny.cfg"
        cfg.write_text(TINY_CFG.format(batch=4, subdivisions=1, max_batches=10**6))
        backup_dir = root / "backup"
        backup = backup_dir / "tiny.backup"
        last_seen = 0
        stale: set[str] = set()
        for trial in range(trials):
            counts["trials"] += 1
            cmd = [sys.executable, "-m", "darknetpy", "train", str(cfg), str(data), "--seed", str(trial),
                   "--checkpoint-every", "1", "--workers", str(rng.choice((1, 2)))]
            if backup.exists():
                cmd += ["--weights", str(backup)]
            # before the first batch, early batches, and well into training
            delay = rng.choice((rng.uniform(0.05, 1.5), rng.uniform(1.5, 4.0), rng.uniform(4.0, 8.0)))
            log = root / "train.stderr"
            with open(log, "w") as err:
                proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=err,
                                        start_new_session=True)
                time.sleep(delay)
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)  # the training process only, as the OOM killer would
                    counts["killed_running"] += 1
                else:
                    counts["exited_before_kill"] += 1
                    counts["failures"].append(f"trial {trial}: exited {proc.returncode} before the kill: "
                                              f"{log.read_text().strip()[-400:]}")
                proc.wait()
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # its data-loading children, orphaned now
            problems = check_backup_folder(backup_dir, cfg, last_seen)
            temp_files = {p.name for p in backup_dir.glob(".*.tmp")} if backup_dir.exists() else set()
            counts["stale_temp_files"] += len(temp_files - stale)
            stale |= temp_files
            if backup.exists():
                counts["checkpoints_checked"] += 1
                try:
                    last_seen = darknetpy.load(cfg, backup).seen
                except DarknetError as exc:
                    problems.append(f"backup does not load: {exc}")
            for problem in problems:
                counts["failures"].append(f"trial {trial} (killed after {delay:.2f} s): {problem}")
            if verbose:
                print(f"trial {trial:2d}: killed after {delay:5.2f} s, backup seen={last_seen}"
                      + (f"  PROBLEMS: {problems}" if problems else ""), flush=True)
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)
    return counts


def check_backup_folder(folder: Path, cfg: Path, previous_seen: int) -> list[str]:
    """Every checkpoint loads, `seen` never goes backwards, metrics.csv parses, chart.png is a whole PNG."""
    import csv
    import darknetpy
    problems: list[str] = []
    if not folder.exists():
        return problems
    for weights in sorted(folder.glob("tiny*.weights")) + sorted(folder.glob("tiny.backup")):
        try:
            seen = darknetpy.load(cfg, weights).seen
        except DarknetError as exc:
            problems.append(f"{weights.name} does not load: {exc}")
            continue
        if weights.name == "tiny.backup" and seen < previous_seen:
            problems.append(f"tiny.backup went back from seen={previous_seen} to {seen}")
    metrics = folder / "metrics.csv"
    if metrics.exists():
        try:
            rows = list(csv.DictReader(metrics.open(newline="")))
            for row in rows:
                int(row["batch"]), float(row["loss"])
        except (ValueError, KeyError, TypeError, csv.Error) as exc:
            problems.append(f"metrics.csv is damaged: {exc!r}")
    chart = folder / "chart.png"
    if chart.exists():
        data = chart.read_bytes()
        if not data.startswith(b"\x89PNG\r\n\x1a\n") or not data.endswith(b"IEND\xaeB`\x82"):
            problems.append(f"chart.png is not a whole PNG ({len(data)} bytes)")
    return problems


# ==== command line ===============================================================================================
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=0.0, help="length of the random fuzz campaign")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma list of {', '.join(TARGETS)}")
    parser.add_argument("--kill", type=int, default=0, metavar="N", help="SIGKILL training at N random moments")
    parser.add_argument("--seed", type=int, help="seed the workers' random generation (default: fresh each run; "
                                                   "how far each worker gets still depends on timing)")
    parser.add_argument("--hang-seconds", type=float, default=60.0,
                        help="an input that makes no progress this long is a hang (default 60)")
    parser.add_argument("--json", help="also write the counts and failures to this JSON file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        run_worker(args.worker, args.seconds, Path(args.state), args.seed)
        return 0
    if not args.minutes and not args.kill:
        parser.error("give --minutes and/or --kill")
    report: dict[str, Any] = {}
    status = 0
    if args.minutes:
        targets = [t.strip() for t in args.targets.split(",") if t.strip()]
        unknown = sorted(set(targets) - set(TARGETS))
        if unknown:
            parser.error(f"unknown targets: {', '.join(unknown)}")
        if "corpus" in targets and not CORPUS_DIR.is_dir():
            print(f"note: {CORPUS_DIR} is absent; the corpus target mutates cfg/ only", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="dnfuzz-state-", dir=ram_dir()) as out_dir:
            start = time.monotonic()
            totals = run_campaign(args.minutes, targets, args.hang_seconds, Path(out_dir), args.seed)
            print_report(totals, time.monotonic() - start)
        report["campaign"] = {t: dataclasses.asdict(s) for t, s in totals.items()}
        status = 1 if any(s.failures for s in totals.values()) else 0
    if args.kill:
        counts = kill_trials(args.kill, args.seed)
        print(f"\nSIGKILL trials: {counts['trials']} (killed while running: {counts['killed_running']}, "
              f"exited first: {counts['exited_before_kill']}), checkpoints verified: "
              f"{counts['checkpoints_checked']}, stale temp files: {counts['stale_temp_files']}, "
              f"failures: {len(counts['failures'])}")
        for failure in counts["failures"]:
            print(f"  {failure}")
        report["kill"] = counts
        status = status or (1 if counts["failures"] else 0)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return status


if __name__ == "__main__":
    sys.exit(main())
