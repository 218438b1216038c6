"""The parsed shape of a .cfg file: sections of key=value options, each remembering where it was written."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Option:
    """One `key=value` line. `value` has every space and tab removed, as Darknet does (`-1, 8` -> `-1,8`)."""

    key: str
    value: str
    line: int
    column: int  # 1-based column of the key


@dataclass(frozen=True)
class Section:
    """One `[name]` block; `name` is lower-cased and written without brackets. Options keep file order."""

    name: str
    line: int
    column: int
    options: tuple[Option, ...]


@dataclass(frozen=True)
class Document:
    """A whole cfg file; `path` is what error messages name (`<string>` for parsed text)."""

    path: str
    sections: tuple[Section, ...]
