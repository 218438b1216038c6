"""Hypothesis strategies and contract checks for fuzzing darknetpy's input readers (issue "Hardening").

The contract: every bad input ends in one DarknetError subclass whose str() is `file[:line]: message` on one
line (cfg errors name the line when there is one) — never another exception type, never a hang, never a crash,
and the command line answers it with exit status 2, that one line on stderr and no file written.

tests/test_fuzz.py runs a bounded, derandomised share of these; tools/fuzz.py runs long random campaigns
over the same targets (it imports this module).
"""
from __future__ import annotations

import atexit
import contextlib
import dataclasses
import math
import os
import re
import resource
import shutil
import struct
import tempfile
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from hypothesis import strategies as st

from darknetpy.config import parse_cfg, parse_cfg_text
from darknetpy.config.key_rules import RULES
from darknetpy.config.net import NET_KEYS
from darknetpy.errors import CfgError, DarknetError, DarknetWarning, WeightsError
from darknetpy.layers import REGISTRY
from darknetpy.layers.base import LayerConfig, config_keys
from darknetpy.network import Network, network_from_text
from darknetpy.weights import read_weights, weights_bytes

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CORPUS_DIR = SHARED / "cfg-corpus"

#: forward only nets this cheap: Network.flops() plus window taps that flops() does not count (pooling),
#: and this many output floats in all layer buffers together
MAX_FORWARD_WORK = 5e7
MAX_FORWARD_FLOATS = 2e7
#: save/load round trip only below this many parameters
MAX_ROUNDTRIP_FLOATS = 2_000_000
#: virtual memory the fuzzing process may add to what it has, so absurd sizes fail fast instead of
#: exhausting the machine (such a MemoryError is itself a contract violation)
MEMORY_HEADROOM = 4 << 30

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
    # the lean pass of detect/predict/segment: the same result, whatever layers the network has
    kept = y.copy()
    z = network.infer(x)
    if not np.array_equal(z, kept, equal_nan=True):
        raise ContractViolation("infer differs from forward", f"max difference {np.nanmax(np.abs(z - kept))}")
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


def header_is_valid(major: int, minor: int, revision: int) -> bool:
    """The header rule README states (written here from that text, not from darknetpy): Darknet's and
    AlexeyAB's versions, major 0 or 1, minor 0..100, revision 0..999, or the same with 1000 added to one of
    major and minor where that makes it exceed 1000 (Darknet's flag for legacy files whose connected weights
    are stored transposed; so 1001.x.y and x.1001..1100.y)."""
    def plain(a: int, b: int) -> bool:
        return a in (0, 1) and 0 <= b <= 100
    return 0 <= revision <= 999 and (plain(major, minor) or (major > 1000 and plain(major - 1000, minor))
                                     or (minor > 1000 and plain(major, minor - 1000)))


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
            if case.how == "nonfinite" and not ("layer" in exc.message and "array" in exc.message):
                raise ContractViolation("non-finite value not located", str(exc)) from None
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
EXTRA_KEYS = tuple(sorted({key for rules in RULES.values() for key in rules})) + (
    "filtres", "fiters", "Filters", "sise", "actvation", "stide", "x", "_", "a.b", "k-1")

# Strategies are built once: constructing hypothesis strategies inside every draw costs more than the
# engine's own work on the input.
_value_char = st.characters(blacklist_characters="\r\n#;", blacklist_categories=("Cs",))
_any_char = st.characters(blacklist_categories=("Cs",))
_line_char = st.characters(blacklist_categories=("Cs",), blacklist_characters="\n")

#: integers longer than Python's int-from-string limit (4,300 digits; sys.get_int_max_str_digits)
HUGE_INT_TEXTS = ("9" * 4301, "1" * 5000, "0" * 5000 + "7", "-" + "3" * 4400, "+" + "8" * 4300)
INT_TEXT = st.one_of(st.integers(-3, 10).map(str), st.sampled_from(INTERESTING_INTS).map(str),
                     st.integers().map(str), st.sampled_from(HUGE_INT_TEXTS))
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
                        "random", "path", "transposed", "version", "version", "nonfinite", "nonfinite"))
_EXTRA_BYTES = st.binary(min_size=1, max_size=40)
_HEADER_FIELD = st.one_of(st.sampled_from((0, 1, 2, 3, 999, 1000, 1001, 2**31 - 1, -1, -2**31)),
                          st.integers(-2**31, 2**31 - 1))
_HEADER_FIELDS = st.tuples(_HEADER_FIELD, _HEADER_FIELD, _HEADER_FIELD)
_SHORT_BYTES = st.binary(max_size=12)
_RANDOM_BYTES = st.binary(max_size=64)
_FLIPS = st.lists(st.tuples(_UNIT, st.integers(0, 255)), min_size=1, max_size=6)
_TRANSPOSED = st.sampled_from(((1001, 0), (0, 1001), (1001, 100), (1, 1100), (1001, 1001), (2**31 - 1, 5),
                               (1002, 0), (0, 1101)))
_VERSION_FIELD = st.one_of(st.sampled_from((0, 1, 2, 5, 99, 100, 101, 999, 1000, 1001, 1002, 1100, 1101,
                                            2**31 - 1, -1, -2**31)), st.integers(-2**31, 2**31 - 1))
_NON_FINITE = st.sampled_from((float("nan"), float("inf"), float("-inf")))
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
        return WeightsCase(zoo, f"transposed={major}.{minor}", make_header(major, minor, 0, 0) + body,
                           expect="load" if header_is_valid(major, minor, 0) else "error")
    if how == "version":  # a well-formed header (seen sized as spec §5 says) of any version
        fields = draw(st.tuples(_VERSION_FIELD, _VERSION_FIELD, _VERSION_FIELD))
        return WeightsCase(zoo, f"version={list(fields)}", make_header(*fields, draw(_SEEN)) + body,
                           expect="load" if header_is_valid(*fields) else "error")
    if how == "nonfinite":
        floats = np.frombuffer(body, "<f4").copy()
        floats[_pick(draw, floats.size)] = draw(_NON_FINITE)
        return WeightsCase(zoo, "nonfinite", header + floats.tobytes(), expect="error")
    return WeightsCase(zoo, "path", header + body, path_kind=draw(_PATH_KIND), expect="error")


WEIGHTS_CASE = _weights_case()


def weights_cases() -> st.SearchStrategy[WeightsCase]:
    """Files for the zoo networks: valid (must load), truncated, extended or of the wrong float count (must be
    refused), with mutated headers, flipped bytes or random bytes (either), and unreadable paths (refused)."""
    return WEIGHTS_CASE


# ==== .data, list and labels files ===============================================================================
DATA_NET = "[net]\nbatch=2\nwidth=8\nheight=8\nchannels={channels}\ncenter=1\n"
#: images every data case may list (written once per scratch folder); everything else named is absent
DATA_IMAGES = ("img/a_cat.png", "img/b_dog.png", "img/c_cat_dog.png")
_LIST_ENTRY = st.sampled_from(DATA_IMAGES * 3 + ("img/missing.png", "img", "  ", "", "img/a_cat.png\r",
                                                 "\ufeffimg/b_dog.png", "x" * 300, "../img/a_cat.png"))
_LABEL = st.sampled_from(("cat", "dog", "bird", "a", "img", "CAT", " dog ", "", "\t"))
_DATA_VALUE = st.one_of(INT_TEXT, st.sampled_from(("", "train.list", "missing.list", "img", "labels.txt")))
_DATA_LINE = st.one_of(
    st.sampled_from(("classes=2", "classes=3", "classes=1", "classes=0", "classes=-4", "classes=abc", "top=2",
                     "names=labels.txt", "labels=labels.txt", "labels=missing.txt", "train=train.list",
                     "valid=train.list", "train=missing.list", "train=img", "train=empty.list", "junk",
                     "backup=backup", "# comment", "classes=2 # two")),
    st.sampled_from(HUGE_INT_TEXTS).map(lambda v: f"classes={v}"),
    st.tuples(st.sampled_from(("classes", "top", "train", "labels", "x")), _DATA_VALUE).map("{0[0]}={0[1]}".format))


@dataclass(frozen=True)
class DataCase:
    data: tuple[str, ...]      # lines of the .data file
    entries: tuple[str, ...]   # lines of train.list
    labels: tuple[str, ...]    # lines of labels.txt
    train: bool
    channels: int

    def __repr__(self) -> str:
        short = [line if len(line) < 60 else f"{line[:40]}...({len(line)} chars)" for line in self.data]
        return (f"DataCase(data={short!r}, entries={self.entries!r}, labels={self.labels!r}, "
                f"train={self.train}, channels={self.channels})")


_DATA_BASE = ("classes=2", "train=train.list", "valid=train.list", "labels=labels.txt")
# Mostly a workable .data (its keys first, so the generated lines after them are duplicates that only warn)
# with a few odd lines, sometimes the odd lines first (they win), sometimes only odd lines.
_DATA_LINES = st.one_of(
    st.lists(_DATA_LINE, max_size=3).map(lambda extra: _DATA_BASE + tuple(extra)),
    st.lists(_DATA_LINE, max_size=3).map(lambda extra: _DATA_BASE + tuple(extra)),
    st.lists(_DATA_LINE, min_size=1, max_size=3).map(lambda extra: tuple(extra) + _DATA_BASE),
    st.lists(_DATA_LINE, max_size=6).map(tuple))
_ENTRIES = st.one_of(st.lists(st.sampled_from(DATA_IMAGES), min_size=1, max_size=4).map(tuple),
                     st.lists(_LIST_ENTRY, max_size=5).map(tuple))
_LABELS = st.one_of(st.just(("cat", "dog")), st.lists(_LABEL, max_size=4).map(tuple))
DATA_CASE = st.builds(DataCase, _DATA_LINES, _ENTRIES, _LABELS, st.booleans(), st.sampled_from((1, 3)))


def data_file_cases() -> st.SearchStrategy[DataCase]:
    """.data files with odd, missing, duplicated or huge values; train lists with missing, empty or odd entries;
    labels files with more or fewer labels than classes, empty or matching nothing."""
    return DATA_CASE


def _data_folder(folder: str) -> str:
    root = os.path.join(folder, "data-case")
    if not os.path.isdir(os.path.join(root, "img")):
        from PIL import Image
        os.makedirs(os.path.join(root, "img"), exist_ok=True)
        for number, name in enumerate(DATA_IMAGES):
            Image.new("RGB", (6 + number, 8), (40 * number, 200, 90)).save(os.path.join(root, name))
        with open(os.path.join(root, "empty.list"), "w"):
            pass
    return root


def check_in_folder(exc: DarknetError, root: str) -> None:
    """A located error about a data case names a file inside its folder, on one line, with a line inside it."""
    shown = str(exc)
    if exc.path is None or "\n" in shown or "\r" in shown or not shown.startswith(f"{exc.path}:"):
        raise ContractViolation("unlocated message", repr(shown))
    named = os.path.realpath(os.path.join(root, exc.path))
    if not named.startswith(os.path.realpath(root) + os.sep):
        raise ContractViolation("wrong path", f"{type(exc).__name__} names {exc.path!r}: {shown}")
    if exc.line is not None:
        try:
            with open(named, "rb") as fh:
                count = fh.read().count(b"\n") + 1
        except OSError:
            raise ContractViolation("line in a file that cannot be read", shown) from None
        if not 1 <= exc.line <= count:
            raise ContractViolation("line out of range", f"line {exc.line} of {count}: {shown}")


def check_data_files(case: DataCase, folder: str | os.PathLike) -> Outcome:
    from darknetpy.api import names_from_data
    from darknetpy.config import NetConfig, SectionReader, read_data_file
    from darknetpy.data import ClassificationDataset
    root = _data_folder(os.fspath(folder))
    contents = {"set.data": case.data, "train.list": case.entries, "labels.txt": case.labels}
    for name, lines in contents.items():
        with open(os.path.join(root, name), "w", encoding="utf-8", newline="") as fh:
            fh.write("".join(line + "\n" for line in lines))
    net = NetConfig.from_section(SectionReader(parse_cfg_text(DATA_NET.format(channels=case.channels)).sections[0],
                                               "data.cfg"))
    cwd = os.getcwd()
    os.chdir(root)  # relative paths in .data files are read as Darknet reads them: from the working directory
    try:
        with numpy_warnings_are_violations():
            try:
                data = read_data_file("set.data")
                dataset = ClassificationDataset(data, net, train=case.train, seed=0)
                for index in range(min(2, len(dataset))):
                    dataset.load(index, np.random.default_rng(index))
                if data.names or data.labels:
                    names_from_data("set.data")
            except DarknetError as exc:
                check_in_folder(exc, root)
                return Outcome("error")
    finally:
        os.chdir(cwd)
    return Outcome("ok")


# ==== the command line ===========================================================================================
CLI_CLASSIFIER = ("[net]\nwidth=8\nheight=8\nchannels={channels}\n\n[convolutional]\nfilters=3\nsize=3\npad=1\n"
                  "activation=leaky\n\n[avgpool]\n\n[softmax]\n")
CLI_DETECTOR = ("[net]\nwidth=16\nheight=16\nchannels={channels}\n\n[convolutional]\nfilters=21\nsize=1\n"
                "activation=linear\n\n[yolo]\nmask=0,1,2\nanchors=2,2, 4,4, 8,8\nclasses=2\nnum=3\n")
#: inputs every CLI case may name, written once per scratch folder: (relative path, kind)
_CLI_IMAGE = st.sampled_from(("in/a.png", "in/b.png", "in/good.txt", "in/empty.txt", "in/blank.list",
                              "in/missing-entry.txt", "in/empty-dir", "in/missing.png", "in"))
_CLI_NAMES = st.sampled_from((None, "in/three.names", "in/two.names", "in/one.names", "in/empty.names",
                              "in/missing.names", "in/empty-dir", "in/a.png"))
_CLI_OUT = st.sampled_from((None, "out/new", "out/new/deeper", "in/a.png", "in", "/proc/darknetpy-fuzz",
                            "/proc/darknetpy-fuzz/x", "out/existing"))
_PARTIAL_OUT = st.sampled_from(("out/first.weights", "in/model.weights", "in/link.weights",
                                "in/empty-dir/../model.weights", "in/classifier.cfg", "in/empty-dir", "out",
                                "/proc/darknetpy-fuzz.weights", "out/no/such/folder/x.weights"))
_CLI_NUMBER = st.one_of(st.sampled_from(("0", "1", "0.5", "2", "-1", "abc", "nan", "inf", "1e999", "")),
                        st.sampled_from(HUGE_INT_TEXTS))


@dataclass(frozen=True)
class CliCase:
    argv: tuple[str, ...]       # relative paths are inside the case folder
    channels: int

    def __repr__(self) -> str:
        shown = [a if len(a) < 60 else f"{a[:20]}...({len(a)} chars)" for a in self.argv]
        return f"CliCase(argv={shown!r}, channels={self.channels})"


@st.composite
def _cli_case(draw: st.DrawFn) -> CliCase:
    command = draw(st.sampled_from(("predict", "detect", "partial")))
    if command == "partial":
        argv = ["partial", "in/classifier.cfg", "in/model.weights", draw(_PARTIAL_OUT),
                draw(st.one_of(st.sampled_from(("0", "1", "2", "99")), _CLI_NUMBER))]
        return CliCase(tuple(argv), 3)
    cfg, weights = (("in/classifier.cfg", "in/model.weights") if command == "predict"
                    else ("in/detector.cfg", "in/detector.weights"))
    argv = [command, cfg, weights, *draw(st.lists(_CLI_IMAGE, min_size=1, max_size=3))]
    names = draw(_CLI_NAMES)
    if names is not None:
        argv += ["--names", names]
    if command == "predict" and draw(st.booleans()):
        argv += ["--top", draw(_CLI_NUMBER)]
    if command == "detect":
        out = draw(_CLI_OUT)
        if out is not None:
            argv += ["--out", out]
        if draw(st.booleans()):
            argv += [draw(st.sampled_from(("--thresh", "--nms"))), draw(_CLI_NUMBER)]
    if draw(st.booleans()):
        argv.append("--json")
    return CliCase(tuple(argv), draw(st.sampled_from((1, 3, 3))))


CLI_CASE = _cli_case()


def cli_cases() -> st.SearchStrategy[CliCase]:
    """predict, detect and partial with generated images (lists, empty lists, folders, missing files), names
    files (short, empty, missing), --out and partial targets (files, the inputs themselves, unwritable places)
    and option values (huge, negative, not numbers)."""
    return CLI_CASE


def _cli_folder(folder: str, channels: int) -> str:
    root = os.path.join(folder, f"cli-case-{channels}")
    inputs = os.path.join(root, "in")
    if os.path.isdir(inputs):
        return root
    from PIL import Image

    import darknetpy
    os.makedirs(os.path.join(inputs, "empty-dir"))
    Image.new("RGB", (8, 8), (200, 30, 60)).save(os.path.join(inputs, "a.png"))
    Image.new("RGB", (13, 9), (20, 130, 60)).save(os.path.join(inputs, "b.png"))
    files = {"good.txt": "a.png\nb.png\n", "empty.txt": "", "blank.list": "\n \n", "missing-entry.txt": "a.png\nnope.png\n",
             "three.names": "x\ny\nz\n", "two.names": "x\ny\n", "one.names": "x\n", "empty.names": "",
             "classifier.cfg": CLI_CLASSIFIER.format(channels=channels),
             "detector.cfg": CLI_DETECTOR.format(channels=channels)}
    for name, text in files.items():
        with open(os.path.join(inputs, name), "w") as fh:
            fh.write(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DarknetWarning)
        darknetpy.load(os.path.join(inputs, "classifier.cfg"), seed=1).save_weights(os.path.join(inputs, "model.weights"))
        darknetpy.load(os.path.join(inputs, "detector.cfg"), seed=2).save_weights(os.path.join(inputs, "detector.weights"))
    os.symlink("model.weights", os.path.join(inputs, "link.weights"))
    return root


def _tree(folder: str) -> dict[str, bytes | None]:
    found: dict[str, bytes | None] = {}
    for base, dirs, names in os.walk(folder):
        for name in dirs:
            found[os.path.relpath(os.path.join(base, name), folder) + os.sep] = None
        for name in names:
            path = os.path.join(base, name)
            found[os.path.relpath(path, folder)] = None if os.path.islink(path) else open(path, "rb").read()
    return found


def check_cli(case: CliCase, folder: str | os.PathLike) -> Outcome:
    """In-process `darknetpy ...`: exit status 0 or 2; on 2 exactly one stderr line naming a file or the
    command, no traceback, nothing on stdout (every check comes before the first output) and no file created;
    in every case the inputs are untouched."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from darknetpy import cli
    root = _cli_folder(os.fspath(folder), case.channels)
    out_area = os.path.join(root, "out")
    shutil.rmtree(out_area, ignore_errors=True)
    os.makedirs(os.path.join(out_area, "existing"))
    before = _tree(root)
    stdout, stderr = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(root)
    try:
        with numpy_warnings_are_violations(), redirect_stdout(stdout), redirect_stderr(stderr):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DarknetWarning)
                code = cli.main(list(case.argv))
    finally:
        os.chdir(cwd)
    after = _tree(root)
    errors = stderr.getvalue().splitlines()
    if code not in (0, 2):
        raise ContractViolation(f"exit status {code}", stderr.getvalue()[-600:])
    changed = sorted(k for k in before if k.startswith("in") and after.get(k, b"gone") != before[k])
    if changed:
        raise ContractViolation("input changed", f"{changed}: {stderr.getvalue()[-300:]}")
    if code == 2:
        if len(errors) != 1 or "Traceback" in errors[0]:
            raise ContractViolation("not one error line", stderr.getvalue()[-600:])
        if stdout.getvalue():
            raise ContractViolation("output before the error", f"{stdout.getvalue()[:200]!r} then {errors[0]}")
        if after != before:
            created = sorted(set(after) - set(before))
            raise ContractViolation("file written by a failed command", f"{created}: {errors[0]}")
        if not (errors[0].startswith("darknetpy") or ": " in errors[0]):
            raise ContractViolation("unlocated message", errors[0])
        return Outcome("error")
    return Outcome("ok")
