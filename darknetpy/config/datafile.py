"""`.data` files (`key = value` lines naming the class count, list files, backup folder, ...) and the
one-entry-per-line list files they point to.

Deliberate difference from Darknet: it deletes every space inside a .data line, so paths cannot contain
spaces; we strip only around the value. A comment may follow a value when whitespace separates them
(`names = coco.names  # note`); a `#` glued to a word stays part of the path. Relative paths are
returned as written; `resolve_path` (the one rule for every command) finds them: relative to the working
directory as Darknet does, else relative to the folder of the file that names them.
"""
from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import pyparsing as pp

from darknetpy.config.grammar import describe_rest_of_line, read_text_file
from darknetpy.config.options import c_int_or_none
from darknetpy.errors import DataError, DarknetWarning

_INLINE_WHITESPACE = " \t"
_INTEGER = re.compile(r"[+-]?\d+")


def _inline(expr: pp.ParserElement) -> pp.ParserElement:
    return expr.set_whitespace_chars(_INLINE_WHITESPACE, copy_defaults=False)


@dataclass(frozen=True)
class _Entry:
    key: str
    value: str | None
    loc: int


@dataclass(frozen=True)
class _BareLine:
    text: str
    loc: int


def _build_grammar() -> pp.ParserElement:
    newline = _inline(pp.Regex(r"\r?\n|\r\Z")).set_name("end of line")
    end_of_line = _inline(newline | _inline(pp.StringEnd())).set_name("end of line")
    comment = _inline(pp.Regex(r"[#;][^\r\n]*"))
    key = _inline(pp.Regex(r"[A-Za-z_][\w.\-]*")).set_name("key")
    # Words may hold '#' or ';'; a comment starts only at '#'/';' after whitespace.
    value = _inline(pp.Regex(r"[^\s#;](?:\S|[ \t]+(?=[^\s#;]))*")).set_name("value")
    entry = _inline(key("key") + _inline(pp.Literal("=")) - pp.Optional(value("value"))
                    - pp.Optional(comment) - end_of_line)
    entry.set_parse_action(lambda text, loc, tokens: _Entry(tokens["key"], tokens.get("value"), loc))
    bare = _inline(pp.Regex(r"[^=#;\s][^=\r\n]*?(?=[ \t]*(?:[#;]|\r?\n|$))")("text") + pp.Optional(comment)
                   + end_of_line)
    bare.set_parse_action(lambda text, loc, tokens: _BareLine(tokens["text"], loc))
    ignored = _inline(newline | _inline(comment + end_of_line)).suppress()
    return _inline(pp.ZeroOrMore(_inline(ignored | entry | bare)) + _inline(pp.StringEnd())).parse_with_tabs()


_GRAMMAR = _build_grammar()


@dataclass(frozen=True)
class DataConfig:
    """A parsed .data file. Standard keys are typed attributes (None when absent: defaults are per
    command); `values` holds every key as written (first occurrence wins), `lines` its line number."""

    path: str
    classes: int | None
    train: str | None
    valid: str | None
    test: str | None
    labels: str | None
    names: str | None
    backup: str | None
    top: int | None
    values: Mapping[str, str]
    lines: Mapping[str, int]

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.values.get(key, default)


def read_data_file(path: str | os.PathLike) -> DataConfig:
    """Parse a .data file; raises DataError naming the file (and line) for anything unreadable."""
    shown = os.fspath(path)
    text = read_text_file(path, DataError, "data file").removeprefix("\ufeff")
    try:
        entries = _GRAMMAR.parse_string(text, parse_all=True)
    except pp.ParseBaseException as exc:
        found = describe_rest_of_line(text, exc.loc)
        raise DataError(f"{exc.msg}, found {found} (column {exc.column})", shown, exc.lineno,
                        exc.column) from None

    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    for entry in entries:
        line = pp.lineno(entry.loc, text)
        if isinstance(entry, _BareLine):
            warnings.warn(DarknetWarning(f"{shown}:{line}: ignoring line without '=': {entry.text!r}"),
                          stacklevel=2)
            continue
        if entry.value is None:
            raise DataError(f"'{entry.key}=' has no value", shown, line, pp.col(entry.loc, text))
        if entry.key in values:
            warnings.warn(DarknetWarning(f"{shown}:{line}: duplicate key '{entry.key}', the first one "
                                         f"(line {lines[entry.key]}) is used"), stacklevel=2)
            continue
        values[entry.key] = entry.value
        lines[entry.key] = line

    def integer(key: str) -> int | None:
        if key not in values:
            return None
        if not _INTEGER.fullmatch(values[key]):
            raise DataError(f"{key}={values[key]}: expected an integer", shown, lines[key])
        number = c_int_or_none(values[key])
        if number is None:
            raise DataError(f"{key}: {len(values[key])}-character value does not fit a 32-bit int", shown,
                            lines[key])
        return number

    return DataConfig(
        path=shown,
        classes=integer("classes"),
        train=values.get("train"),
        valid=values.get("valid"),
        test=values.get("test"),
        labels=values.get("labels"),
        names=values.get("names"),
        backup=values.get("backup"),
        top=integer("top"),
        values=MappingProxyType(values),
        lines=MappingProxyType(lines),
    )


@dataclass(frozen=True)
class ListEntry:
    """One entry of a list file and the line it is on (for errors that point at it)."""
    line: int
    text: str


def read_list_entries(path: str | os.PathLike) -> list[ListEntry]:
    """Entries of a list file (image paths, label or class names) with their line numbers: one per line,
    surrounding whitespace and line endings stripped, empty lines skipped."""
    text = read_text_file(path, DataError, "list file")
    return [ListEntry(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def read_list_file(path: str | os.PathLike) -> list[str]:
    """The entries of read_list_entries without their line numbers."""
    return [entry.text for entry in read_list_entries(path)]


def locate_path(entry: str, base_dir: str | os.PathLike | None) -> str | None:
    """Where a path written in a .data or list file is: `entry` itself if it exists relative to the working
    directory (Darknet's only rule), else `base_dir/entry` if `entry` is relative and that exists, else None.
    `base_dir` is the folder of the file that names the path."""
    if os.path.exists(entry):
        return entry
    if base_dir is not None and not os.path.isabs(entry):
        beside = os.path.join(os.fspath(base_dir), entry)
        if os.path.exists(beside):
            return beside
    return None


def read_image_list(list_path: str | os.PathLike, key: str | None = None) -> list[ListEntry]:
    """The entries of a list of images (the file a .data `key=` names, or one given on the command line); a
    DataError when it has none, since an empty list would only fail later, far from its cause."""
    entries = read_list_entries(list_path)
    if not entries:
        named = f"list file ({key}=)" if key else "list file"
        raise DataError(f"{named} is empty: it has no entries (expected one image path per line)",
                        os.fspath(list_path))
    return entries


def locate_image(entry: ListEntry, base_dir: str | os.PathLike, list_path: str | os.PathLike) -> str:
    """The image file a list entry names, found by locate_path (relative to the working directory, then to
    `base_dir`); a DataError at the entry's line of `list_path` when there is none."""
    found = locate_path(entry.text, base_dir)
    if found is None:
        raise DataError(f"image {entry.text!r} not found (relative to the working directory {os.getcwd()} "
                        f"or to {os.fspath(base_dir)})", os.fspath(list_path), entry.line)
    return found


def resolve_path(entry: str, base_dir: str | os.PathLike | None) -> str:
    """locate_path, or `entry` unchanged when it is nowhere (so errors name what was written)."""
    found = locate_path(entry, base_dir)
    return entry if found is None else found


def folder_of(path: str | os.PathLike) -> str:
    """The folder relative paths written in the file `path` may be relative to."""
    return os.path.dirname(os.path.abspath(path))
