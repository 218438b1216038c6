"""Atomic file replacement: a crash, a full disk or Ctrl-C never leaves a half-written file behind and
never destroys the previous version."""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import BinaryIO, Iterator


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, fsync: bool = True) -> Iterator[BinaryIO]:
    """Yield a binary stream; on success its bytes replace `path` in one rename, on any error the
    temporary file is removed and `path` is untouched. Permissions follow the umask, as open() would."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as stream:
            yield stream
            stream.flush()
            if fsync:
                os.fsync(stream.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_writer(path) as stream:
        stream.write(data)
