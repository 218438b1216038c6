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

WRITE_VERSION = (0, 2, 0)


@dataclass(frozen=True)
class WeightsHeader:
    major: int
    minor: int
    revision: int
    seen: int
    size: int  # header bytes: 20 for 0.2+ files, 16 for 0.1 files

    @property
    def transposed(self) -> bool:
        """Old files flag connected weights stored as (inputs x outputs) with a version above 1000."""
        return self.major > 1000 or self.minor > 1000


def parse_header(data: bytes, path: str) -> WeightsHeader:
    if len(data) < 12:
        raise WeightsError(f"file is {len(data)} bytes, too short for a Darknet weights header", path)
    major, minor, revision = struct.unpack_from("<iii", data, 0)
    transposed = major > 1000 or minor > 1000
    plausible = transposed or (0 <= major <= 1 and 0 <= minor <= 100 and 0 <= revision)
    if not plausible:
        raise WeightsError(f"not a Darknet weights file (header version {major}.{minor}.{revision})", path)
    if major * 10 + minor >= 2 and major < 1000 and minor < 1000:
        if len(data) < 20:
            raise WeightsError(f"file is {len(data)} bytes, too short for a version {major}.{minor} header",
                               path)
        (seen,) = struct.unpack_from("<Q", data, 12)
        return WeightsHeader(major, minor, revision, seen, 20)
    if len(data) < 16:
        raise WeightsError(f"file is {len(data)} bytes, too short for a version {major}.{minor} header", path)
    (seen,) = struct.unpack_from("<i", data, 12)
    return WeightsHeader(major, minor, revision, seen, 16)


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
    """Fill the network's parameters from a Darknet weights file."""
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
    pos = 0
    for layer in layers:
        for array in layer.weight_arrays():
            n = array.size
            array.reshape(-1)[...] = floats[pos:pos + n]
            pos += n
        layer.after_load(header.transposed)
    network.seen = int(header.seen)
    return header


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


def weights_bytes(network: Network, cutoff: int | None = None, seen: int | None = None) -> bytes:
    """The file Darknet's save_weights_upto would write (header 0.2.0, 8-byte seen)."""
    seen = network.seen if seen is None else seen
    parts = [struct.pack("<iiiQ", *WRITE_VERSION, seen)]
    for layer in _layers_upto(network, cutoff):
        if layer.config.dontsave:
            continue
        for array in layer.weight_arrays(saving=True):
            parts.append(np.ascontiguousarray(array, dtype="<f4").tobytes())
    return b"".join(parts)


def write_weights(network: Network, path: str | os.PathLike, cutoff: int | None = None,
                  seen: int | None = None) -> None:
    try:
        write_atomic(path, weights_bytes(network, cutoff, seen))
    except OSError as exc:
        raise WeightsError(f"cannot write weights: {exc.strerror or exc}", os.fspath(path)) from None
