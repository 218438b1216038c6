"""Atomic file replacement: a crash, a full disk or Ctrl-C never leaves a half-written file behind and
never destroys the previous version.

Only SIGKILL (or a power cut) can leave atomic_writer's temporary file behind; `remove_stale_temporaries`
deletes such orphans, recognised by the name atomic_writer gives them and by their writer being gone."""
from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path
from typing import BinaryIO, Iterator

# ".<target name>.<writer's pid>.<8 hex digits>.tmp", next to the target: hidden, and never a name a user
# or Darknet would give a file
_TEMPORARY_NAME = re.compile(r"\..+\.(?P<pid>[0-9]+)\.[0-9a-f]{8}\.tmp")
# temporaries this process is writing right now (they have this process's pid but are not stale)
_writing: set[Path] = set()


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, fsync: bool = True) -> Iterator[BinaryIO]:
    """Yield a binary stream; on success its bytes replace `path` in one rename, on any error the
    temporary file is removed and `path` is untouched. Permissions follow the umask, as open() would."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    _writing.add(tmp.absolute())
    try:
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
    finally:
        _writing.discard(tmp.absolute())


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_writer(path) as stream:
        stream.write(data)


def _writer_is_gone(pid: int) -> bool:
    """Whether no process `pid` exists. In doubt (no way to ask, or another user's process) it is assumed
    to exist, so a temporary is only ever removed when its writer certainly cannot finish it."""
    if pid == os.getpid():
        return True  # this process: its own writers in progress are excluded by the caller
    if os.name != "posix" or pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):
        return False
    return False


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files atomic_writer left in `folder` (not below it) when its process was killed
    before it could remove them: regular files named as atomic_writer names them whose writing process no
    longer exists (or is this process, without a writer open on them). Nothing else is touched. Returns the
    removed paths; a file that cannot be removed is left alone."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY_NAME.fullmatch(entry.name)
        if match is None:
            continue
        path = Path(entry.path)
        try:
            if not entry.is_file(follow_symlinks=False) or path.absolute() in _writing:
                continue
        except OSError:
            continue
        if _writer_is_gone(int(match["pid"])):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed
