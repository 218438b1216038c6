"""Darknet `.weights` files (spec §5): header rules, each layer's arrays in file order, exact size checks.

Unlike Darknet, a file must fit the network exactly: a short or long file is an error that names the
expected and actual float counts and the first layer that ran short. `cutoff` loads only the first N
layers (transfer learning), in which case trailing data is expected.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

from .errors import WeightsError
from .fileio import write_atomic
from .network import Network

#: the version Darknet's save_weights writes; darknetpy writes it for networks that were not read from a file
WRITE_VERSION = (0, 2, 0)

# Header versions (spec §5). Darknet writes 0.2.0 (0.1.0 in old releases) and AlexeyAB 0.2.5; Darknet's reader
# gives two values a meaning: major·10 + minor >= 2 means an 8-byte `seen`, and major or minor above 1000
# flags legacy files whose connected weights are stored transposed. darknetpy accepts exactly these
# versions: major 0 or 1, minor 0..100, revision 0..999, and the same with 1000 added to major or to minor
# (transposed). Anything else (negative fields, 2.0.0, 999.999.0, 2147483647.2147483647.2147483647) is not
# a Darknet weights file, however Darknet itself would read it.
_MAJORS = range(0, 2)
_MINORS = range(0, 101)
_REVISIONS = range(0, 1000)
_TRANSPOSED_FLAG = 1000

FINITE_CHECK_BLOCK = 1 << 18   # floats per block of the non-finite check (1 MiB)


def _plain_version(major: int, minor: int) -> tuple[int, int, bool] | None:
    """(major, minor, transposed) with Darknet's +1000 transposed flag taken off, or None if invalid."""
    if major > _TRANSPOSED_FLAG and minor <= _TRANSPOSED_FLAG:
        major, transposed = major - _TRANSPOSED_FLAG, True
    elif minor > _TRANSPOSED_FLAG and major <= _TRANSPOSED_FLAG:
        minor, transposed = minor - _TRANSPOSED_FLAG, True
    else:
        transposed = False
    if major in _MAJORS and minor in _MINORS:
        return major, minor, transposed
    return None


def is_valid_version(major: int, minor: int, revision: int) -> bool:
    """Whether a header version is one darknetpy reads (the rule in the comment above)."""
    return _plain_version(major, minor) is not None and revision in _REVISIONS


def header_bytes(major: int, minor: int) -> int:
    """20 when Darknet reads `seen` as 8 bytes (major·10 + minor >= 2, neither field above 999), else 16."""
    wide = major * 10 + minor >= 2 and major < _TRANSPOSED_FLAG and minor < _TRANSPOSED_FLAG
    return 20 if wide else 16


@dataclass(frozen=True)
class WeightsHeader:
    major: int
    minor: int
    revision: int
    seen: int
    size: int  # header bytes: 20 for 0.2+ files, 16 for 0.1 files

    @property
    def version(self) -> tuple[int, int, int]:
        return self.major, self.minor, self.revision

    @property
    def transposed(self) -> bool:
        """Old files flag connected weights stored as (inputs x outputs) with a version above 1000."""
        return self.major > _TRANSPOSED_FLAG or self.minor > _TRANSPOSED_FLAG


def parse_header(data: bytes, path: str) -> WeightsHeader:
    if len(data) < 12:
        raise WeightsError(f"file is {len(data)} bytes, too short for a Darknet weights header", path)
    major, minor, revision = struct.unpack_from("<iii", data, 0)
    if not is_valid_version(major, minor, revision):
        raise WeightsError(f"not a Darknet weights file (header version {major}.{minor}.{revision}; Darknet "
                           f"and AlexeyAB write 0.1.0, 0.2.0 and 0.2.5)", path)
    size = header_bytes(major, minor)
    if len(data) < size:
        raise WeightsError(f"file is {len(data)} bytes, too short for a version {major}.{minor} header", path)
    (seen,) = struct.unpack_from("<Q" if size == 20 else "<i", data, 12)
    return WeightsHeader(major, minor, revision, seen, size)


def _layers_upto(network: Network, cutoff: int | None):
    if cutoff is not None and cutoff < 0:
        raise ValueError(f"a layer cutoff must not be negative, got {cutoff}")
    n = len(network.layers) if cutoff is None else min(cutoff, len(network.layers))
    return network.layers[:n]


def _describe(layer) -> str:
    origin = layer.config.origin
    where = f", line {origin.line}" if origin is not None else ""
    return f"layer {layer.index} [{layer.kind}{where}]"


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except IsADirectoryError:
        raise WeightsError("is a directory, not a weights file", path) from None
    except FileNotFoundError:
        raise WeightsError("no such weights file", path) from None
    except OSError as exc:
        raise WeightsError(f"cannot read weights file: {exc.strerror or exc}", path) from None


def read_weights(network: Network, path: str | os.PathLike, cutoff: int | None = None) -> WeightsHeader:
    """Fill the network's parameters from a Darknet weights file; on any error the network is untouched.

    The header version is kept on the network (`weights_version`) so that saving writes it back."""
    path = str(path)
    data = _read_bytes(path)
    header = parse_header(data, path)
    body = len(data) - header.size
    if body % 4:
        raise WeightsError(f"the data after the {header.size}-byte header is {body} bytes, not a whole "
                           f"number of float32 values", path)
    floats = np.frombuffer(data, dtype="<f4", offset=header.size)
    layers = [layer for layer in _layers_upto(network, cutoff) if not layer.config.dontload]
    needed = sum(sum(a.size for a in layer.weight_arrays()) for layer in layers)
    if floats.size < needed or (cutoff is None and floats.size > needed):
        raise WeightsError(_size_message(floats.size, needed, layers), path)
    _refuse_non_finite(floats[:needed], layers, path)
    pos = 0
    for layer in layers:
        for array in layer.weight_arrays():
            n = array.size
            array.reshape(-1)[...] = floats[pos:pos + n]
            pos += n
        layer.after_load(header.transposed)
    network.seen = int(header.seen)
    network.weights_version = None if header.transposed else header.version
    return header


def layers_held(network: Network, path: str | os.PathLike) -> int:
    """How many leading layers a weights file holds exactly: all of them for a full file, N for a file that
    `darknetpy partial` (or `darknet partial`) cut after layer N. A file that ends inside a layer fits no
    prefix and gets read_weights' located size error."""
    path = str(path)
    data = _read_bytes(path)
    header = parse_header(data, path)
    floats = (len(data) - header.size) // 4
    held = 0
    count = 0
    for index, layer in enumerate(network.layers, 1):
        if not layer.config.dontload:
            count += sum(a.size for a in layer.weight_arrays())
        if count == floats:
            held = index       # the last layer reached without passing the file's end (weightless ones too)
        elif count > floats:
            break
    if held == 0 and floats:
        read_weights(network, path)   # raises the size error that names the layer where the file ends
    return held


def _refuse_non_finite(floats: np.ndarray, layers, path: str) -> None:
    """A NaN or infinite parameter makes every later output NaN (a detector then finds nothing): refuse the
    file, naming the first layer and array (in file order) that holds one."""
    # in blocks that stay in the caches: one boolean mask of a whole large file (a few hundred MB) costs
    # more in page faults than the test itself (yolov1's 790 MB: 0.64 s whole, 0.09 s in blocks)
    block = FINITE_CHECK_BLOCK
    if all(np.isfinite(floats[s:s + block]).all() for s in range(0, floats.size, block)):
        return
    finite = np.isfinite(floats)
    first = int(np.argmin(finite))
    pos = 0
    for layer in layers:
        arrays = layer.weight_arrays()
        for number, array in enumerate(arrays, 1):
            if pos + array.size > first:
                offset = first - pos
                bad = int(np.count_nonzero(~finite))
                raise WeightsError(f"{_describe(layer)}, array {number} of {len(arrays)} ({array.size} floats): "
                                   f"value {offset} is {floats[first]} ({bad} non-finite values in the file; "
                                   f"a network with them outputs NaN)", path)
            pos += array.size


def _size_message(have: int, needed: int, layers) -> str:
    msg = f"weights file has {have} floats after the header but the network needs {needed}"
    if have > needed:
        return msg + f" ({have - needed} extra: is this the weights file of another cfg?)"
    pos = 0
    for layer in layers:
        pos += sum(a.size for a in layer.weight_arrays())
        if pos > have:
            return msg + f"; it runs short at {_describe(layer)}"
    return msg


def weights_bytes(network: Network, cutoff: int | None = None, seen: int | None = None,
                  version: tuple[int, int, int] | None = None) -> bytes:
    """The file Darknet's save_weights_upto would write, with header `version` (default: the version the
    network's weights were read with, so AlexeyAB's 0.2.5 files come back byte for byte; 0.2.0, as Darknet
    writes, for a network that was not read from a file or was read from a legacy transposed file)."""
    seen = network.seen if seen is None else seen
    version = version or network.weights_version or WRITE_VERSION
    if not is_valid_version(*version) or _plain_version(version[0], version[1])[2]:
        raise ValueError(f"cannot write header version {'.'.join(map(str, version))}")
    if header_bytes(version[0], version[1]) == 16:
        if not -2**31 <= seen < 2**31:  # 0.1 headers hold `seen` in 4 bytes
            version = WRITE_VERSION
    if header_bytes(version[0], version[1]) == 20:
        parts = [struct.pack("<iiiQ", *version, seen)]
    else:
        parts = [struct.pack("<iiii", *version, seen)]
    for layer in _layers_upto(network, cutoff):
        if layer.config.dontsave:
            continue
        for array in layer.weight_arrays(saving=True):
            parts.append(np.ascontiguousarray(array, dtype="<f4").tobytes())
    return b"".join(parts)


def write_weights(network: Network, path: str | os.PathLike, cutoff: int | None = None,
                  seen: int | None = None, version: tuple[int, int, int] | None = None) -> None:
    try:
        write_atomic(path, weights_bytes(network, cutoff, seen, version))
    except OSError as exc:
        raise WeightsError(f"cannot write weights: {exc.strerror or exc}", os.fspath(path)) from None
