"""Reader for the IDX array format (the MNIST files): a 4-byte magic (0, 0, type code, rank), `rank`
big-endian uint32 sizes, then the values in row-major order, big-endian. Gzip-compressed files are
recognised by their content, not their name."""
from __future__ import annotations

import gzip
import os

import numpy as np

from darknetpy.errors import DataError

_TYPE_CODES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array stored in an IDX file (optionally gzipped), in native byte order.

    Raises DataError naming the file when it is missing, not IDX, or shorter/longer than its header says.
    """
    shown = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise DataError(f"cannot read IDX file: {exc.strerror or exc}", shown) from None
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise DataError(f"corrupt gzip data: {exc}", shown) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError("not an IDX file (its first two bytes must be zero)", shown)
    type_code, rank = data[2], data[3]
    if type_code not in _TYPE_CODES:
        raise DataError(f"unknown IDX element type 0x{type_code:02x}", shown)
    header_size = 4 + 4 * rank
    if len(data) < header_size:
        raise DataError("IDX header is truncated", shown)
    shape = tuple(int(size) for size in np.frombuffer(data, ">u4", count=rank, offset=4))
    dtype = _TYPE_CODES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header_size
    if actual != expected:
        raise DataError(f"IDX data holds {actual} bytes but the header {shape} needs {expected}", shown)
    values = np.frombuffer(data, dtype, offset=header_size).reshape(shape)
    return values.astype(dtype.newbyteorder("="), copy=True)
