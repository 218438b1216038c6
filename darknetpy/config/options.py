"""Typed, tracked option lookups for one cfg section, and the end-of-section report of keys nobody read.

Darknet looks keys up one by one (first match wins), marks each one used, and afterwards prints the keys
nobody read. We do the same, but: values are parsed strictly (Darknet's atoi turns "abc" into 0, a number
beyond a C int or a float is an error), and what happens to a key nobody read is decided by
config/key_rules.py alone (warning, silence, refusal of a non-default value, or an unknown-key error with a
did-you-mean suggestion).
"""
from __future__ import annotations

import contextlib
import difflib
import math
import re
import warnings
from collections.abc import Iterable, Sequence

from darknetpy.config.document import Option, Section
from darknetpy.config.key_rules import DEFAULT_ONLY, WARN, rule_for
from darknetpy.errors import CfgError, DarknetWarning, UnsupportedError

_INT_PATTERN = re.compile(r"[+-]?\d+")
# Darknet reads every integer option into a C int (atoi); a value outside its range wraps or is undefined
# there, so no Darknet cfg holds one and such a value is refused here.
C_INT_MIN, C_INT_MAX = -2**31, 2**31 - 1
_FLOAT_PATTERN = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")

_already_warned: set[tuple[str, ...]] = set()


def c_int_or_none(text: str) -> int | None:
    """The value of a decimal integer (sign and digits, already matched) if it fits a C int, else None.

    Python refuses to convert strings of more than 4,300 digits (sys.get_int_max_str_digits), so the digit
    count is judged before converting: no C int has more than 10 significant digits."""
    digits = text.lstrip("+-").lstrip("0")
    if len(digits) > len(str(C_INT_MAX)):
        return None
    number = int(text[:len(text) - len(text.lstrip("+-"))] + (digits or "0"))
    return number if C_INT_MIN <= number <= C_INT_MAX else None


def _shown(value: str, limit: int = 40) -> str:
    """A cfg value as quoted in an error, shortened when it is absurdly long (one line stays readable)."""
    return value if len(value) <= limit else f"{value[:limit]}... ({len(value)} characters)"


def warn_once(identity: tuple[str, ...], message: str) -> None:
    """Emit `message` as a DarknetWarning unless the same identity was already reported in this process."""
    if identity in _already_warned:
        return
    _already_warned.add(identity)
    warnings.warn(DarknetWarning(message), stacklevel=3)


_collectors: list[list[tuple[str, int, str]]] = []


@contextlib.contextmanager
def summarised_ignored_keys():
    """Within this block, training-only keys are gathered and reported as one warning per file at the end
    (a YOLO cfg names several in every [yolo] section; one line each would bury real warnings)."""
    found: list[tuple[str, int, str]] = []
    _collectors.append(found)
    try:
        yield found
    finally:
        _collectors.remove(found)
        by_file: dict[str, dict[str, list[int]]] = {}
        for path, line, key in found:
            by_file.setdefault(path, {}).setdefault(key, []).append(line)
        for path, keys in by_file.items():
            listed = ", ".join(f"{key} (line{'s' if len(lines) > 1 else ''} {','.join(map(str, lines))})"
                               for key, lines in keys.items())
            warn_once((path, "<training-only>", *sorted(keys)),
                      f"{path}: ignoring keys darknetpy does not use (training-only or GPU-only): {listed}")


def _ignore_key(path: str, line: int, key: str, where: str) -> None:
    if _collectors:
        _collectors[-1].append((path, line, key))
    else:
        warn_once((path, key), f"{where} ignoring '{key}' (training-only or unsupported key)")


def closest_name(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate most similar to `name` (typos and case), or None if nothing is close."""
    pool = sorted(set(candidates))
    matches = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
    if matches:
        return matches[0]
    folded = {candidate.lower(): candidate for candidate in pool}
    return folded.get(name.lower())


def _is_default_value(value: str, default: str) -> bool:
    if _FLOAT_PATTERN.fullmatch(value) and _FLOAT_PATTERN.fullmatch(default):
        return float(value) == float(default)
    return value == default


def _describe_range(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f"must be between {minimum} and {maximum}"
    if minimum is not None:
        return f"must be >= {minimum}"
    return f"must be <= {maximum}"


class SectionReader:
    """Typed lookups over one Section; remembers which keys were read so `finish()` can report the rest."""

    def __init__(self, section: Section, path: str):
        self.section = section
        self.path = str(path)
        self._first: dict[str, Option] = {}
        for option in section.options:
            if option.key in self._first:
                first = self._first[option.key]
                warn_once((self.path, "duplicate", str(option.line)),
                          f"{self.path}:{option.line}: [{section.name}] duplicate key '{option.key}', "
                          f"the first one (line {first.line}) is used")
            else:
                self._first[option.key] = option
        self._used: set[str] = set()
        self._queried: set[str] = set()

    # -- plumbing ---------------------------------------------------------------------------------------

    def has(self, key: str) -> bool:
        return key in self._first

    def option(self, key: str) -> Option | None:
        """The first option named `key` (marking it used), or None."""
        self._queried.add(key)
        found = self._first.get(key)
        if found is not None:
            self._used.add(key)
        return found

    def error(self, message: str, key: str | None = None) -> CfgError:
        """A CfgError at `key`'s line if the section has it, else at the section header."""
        located = self._first.get(key) if key is not None else None
        if located is not None:
            return CfgError(message, self.path, located.line, located.column)
        return CfgError(message, self.path, self.section.line, self.section.column)

    def _raw(self, key: str, required: bool = False) -> Option | None:
        found = self.option(key)
        if found is None and required:
            raise self.error(f"[{self.section.name}] is missing required key '{key}'")
        return found

    def _check_range(self, option: Option, number: float, minimum: float | None,
                     maximum: float | None) -> None:
        if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
            raise self.error(f"{option.key}={option.value}: {_describe_range(minimum, maximum)}", option.key)

    def _parse_int(self, option: Option, text: str) -> int:
        if not _INT_PATTERN.fullmatch(text):
            raise self.error(f"{option.key}={_shown(option.value)}: expected an integer", option.key)
        number = c_int_or_none(text)
        if number is None:
            raise self.error(f"{option.key}={_shown(option.value)}: does not fit Darknet's 32-bit int "
                             f"(between {C_INT_MIN} and {C_INT_MAX})", option.key)
        return number

    def _parse_float(self, option: Option, text: str) -> float:
        if not _FLOAT_PATTERN.fullmatch(text):
            raise self.error(f"{option.key}={_shown(option.value)}: expected a number", option.key)
        number = float(text)
        if not math.isfinite(number):
            raise self.error(f"{option.key}={_shown(option.value)}: beyond the range of a float", option.key)
        return number

    def _split_list(self, option: Option) -> list[str]:
        items = option.value.split(",")
        for position, item in enumerate(items, start=1):
            if not item:
                raise self.error(f"{option.key}={option.value}: item {position} of the list is empty",
                                 option.key)
        return items

    # -- typed getters ----------------------------------------------------------------------------------

    def get_int(self, key: str, default: int | None, *, minimum: int | None = None,
                maximum: int | None = None) -> int | None:
        found = self._raw(key)
        if found is None:
            return default
        number = self._parse_int(found, found.value)
        self._check_range(found, number, minimum, maximum)
        return number

    def get_float(self, key: str, default: float | None, *, minimum: float | None = None,
                  maximum: float | None = None) -> float | None:
        found = self._raw(key)
        if found is None:
            return default
        number = self._parse_float(found, found.value)
        self._check_range(found, number, minimum, maximum)
        return number

    def get_bool(self, key: str, default: bool | None) -> bool | None:
        """Darknet flags are integers, true when non-zero."""
        found = self._raw(key)
        if found is None:
            return default
        return self._parse_int(found, found.value) != 0

    def get_str(self, key: str, default: str | None, *, choices: Sequence[str] | None = None) -> str | None:
        found = self._raw(key)
        if found is None:
            return default
        if choices is not None and found.value not in choices:
            message = f"{found.key}={found.value}: expected one of {', '.join(choices)}"
            suggestion = closest_name(found.value, choices)
            if suggestion is not None:
                message += f"; did you mean '{suggestion}'?"
            raise self.error(message, key)
        return found.value

    def get_int_list(self, key: str, default: tuple[int, ...] | None = None, *,
                     required: bool = False) -> tuple[int, ...] | None:
        found = self._raw(key, required)
        if found is None:
            return default
        return tuple(self._parse_int(found, item) for item in self._split_list(found))

    def get_float_list(self, key: str, default: tuple[float, ...] | None = None, *,
                       required: bool = False) -> tuple[float, ...] | None:
        found = self._raw(key, required)
        if found is None:
            return default
        return tuple(self._parse_float(found, item) for item in self._split_list(found))

    # -- end of section ---------------------------------------------------------------------------------

    def finish(self, kind: str, valid: Iterable[str] = ()) -> None:
        """Report every key no getter read, by config.key_rules (the one place that decides) for a section of
        `kind` ("net" or a layer kind). `valid`: keys this section type reads under some settings (an unread
        one warns as "not used with these settings"). Any other key is a CfgError with a suggestion drawn from
        `valid` and the keys that were queried."""
        valid = set(valid)
        name = self.section.name
        for key, option in self._first.items():
            if key in self._used:
                continue
            where = f"{self.path}:{option.line}: [{name}]"
            rule = rule_for(kind, key)
            if key in valid:
                warn_once((self.path, key), f"{where} ignoring '{key}' (not used with these settings)")
            elif rule is None:
                raise self._unknown_key(option, valid | self._queried)
            elif rule.action == DEFAULT_ONLY:
                if not _is_default_value(option.value, rule.default):
                    raise UnsupportedError(f"[{name}] {key}={_shown(option.value)} is not supported by "
                                           f"darknetpy ({rule.reason}; only the default {rule.default})",
                                           self.path, option.line, option.column)
                warn_once((self.path, key), f"{where} ignoring '{key}={option.value}' (the default)")
            elif rule.action == WARN:
                _ignore_key(self.path, option.line, key, where)

    def _unknown_key(self, option: Option, candidates: set[str]) -> CfgError:
        message = f"unknown key '{option.key}' in [{self.section.name}]"
        suggestion = closest_name(option.key, candidates)
        if suggestion is not None:
            message += f"; did you mean '{suggestion}'?"
        elif candidates:
            message += f"; known keys: {', '.join(sorted(candidates))}"
        return CfgError(message, self.path, option.line, option.column)
