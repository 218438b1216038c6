"""Typed, tracked option lookups for one cfg section, and the end-of-section report of keys nobody read.

Darknet looks keys up one by one (first match wins), marks each one used, and afterwards prints the keys
nobody read. We do the same, but: values are parsed strictly (Darknet's atoi turns "abc" into 0), a key
nobody read is an error with a did-you-mean suggestion unless it is a known Darknet key we deliberately
skip (then a warning, once per file and key), and keys that would change results if set to anything but
their default are refused instead of skipped.
"""
from __future__ import annotations

import contextlib
import difflib
import re
import warnings
from collections.abc import Iterable, Sequence

from darknetpy.config.document import Option, Section
from darknetpy.errors import CfgError, DarknetWarning, UnsupportedError

# Layer-section keys of pjreddie or AlexeyAB Darknet that only matter for training losses, augmentation,
# GPU scheduling, tracking or display; skipping them never changes a forward pass.
KNOWN_UNUSED_KEYS: frozenset[str] = frozenset({
    # detection losses and training targets ([yolo], [region], [detection], [Gaussian_yolo], [contrastive])
    "jitter", "resize", "random", "ignore_thresh", "truth_thresh", "iou_thresh", "iou_thresh_kind",
    "iou_loss", "iou_normalizer", "obj_normalizer", "cls_normalizer", "delta_normalizer", "uc_normalizer",
    "max_delta", "counters_per_class", "label_smooth_eps", "objectness_smooth", "focal_loss", "rescore",
    "object_scale", "noobject_scale", "class_scale", "coord_scale", "mask_scale", "bias_match", "absolute",
    "forced", "classfix", "log", "max", "beta_nms", "contrastive_neg_max", "yolo_layer",
    # object tracking (AlexeyAB)
    "track_history_size", "sim_thresh", "dets_for_track", "dets_for_show", "track_ciou_norm",
    "embedding_layer", "show_details",
    # training-time behaviour shared by all layers
    "clip", "onlyforward", "stopbackward", "dont_update", "burnin_update", "train_only_bn", "dontsave",
    "truth", "smooth", "noloss", "grad_centr", "dot", "assisted_excitation",
    # [dropout] variants are identity at inference; [crop] random shift is augmentation
    "dropblock", "dropblock_size_rel", "dropblock_size_abs", "shift",
    # [cost] training-only knobs, [maxpool] training-only trick
    "ratio", "maxpool_zero_nonmax",
    # GPU streams (AlexeyAB)
    "stream", "wait_stream",
})

# Keys that change the forward pass or the .weights layout: harmless only at their default, which is the
# literal given here (compared numerically when both sides are numbers).
DEFAULT_ONLY_KEYS: dict[str, str] = {
    "antialiasing": "0", "sway": "0", "rotate": "0", "stretch": "0", "stretch_sway": "0", "deform": "0",
    "share_index": "-1000000000", "binary": "0", "xnor": "0", "bin_output": "0", "cbn": "0",
    "flipped": "0", "coordconv": "0", "dontload": "0", "dontloadscales": "0", "numload": "0",
    "maxpool_depth": "0", "out_channels": "1", "weights_type": "none", "weights_normalization": "none",
    "new_coords": "0", "noadjust": "0",
}

_INT_PATTERN = re.compile(r"[+-]?\d+")
# Darknet reads every integer option into a C int (atoi); a value outside its range wraps or is undefined
# there, so no Darknet cfg holds one and such a value is refused here.
C_INT_MIN, C_INT_MAX = -2**31, 2**31 - 1
_FLOAT_PATTERN = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")

_already_warned: set[tuple[str, ...]] = set()


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
            raise self.error(f"{option.key}={option.value}: expected an integer", option.key)
        number = int(text)
        if not C_INT_MIN <= number <= C_INT_MAX:
            raise self.error(f"{option.key}={option.value}: does not fit Darknet's 32-bit int "
                             f"(between {C_INT_MIN} and {C_INT_MAX})", option.key)
        return number

    def _parse_float(self, option: Option, text: str) -> float:
        if not _FLOAT_PATTERN.fullmatch(text):
            raise self.error(f"{option.key}={option.value}: expected a number", option.key)
        return float(text)

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

    def finish(self, ignored: Iterable[str] = (), valid: Iterable[str] = (), silent: Iterable[str] = ()) -> None:
        """Report every key no getter read.

        `valid`: keys this section type understands (unread ones warn as "not used with these settings");
        `ignored`: extra keys the caller knows and skips (warn); `silent`: keys skipped without a word.
        Anything else is a CfgError with a suggestion drawn from `valid` and the keys that were queried.
        """
        ignored, valid, silent = set(ignored), set(valid), set(silent)
        name = self.section.name
        for key, option in self._first.items():
            if key in self._used or key in silent:
                continue
            where = f"{self.path}:{option.line}: [{name}]"
            if key in DEFAULT_ONLY_KEYS:
                if not _is_default_value(option.value, DEFAULT_ONLY_KEYS[key]):
                    raise UnsupportedError(f"[{name}] {key}={option.value} is not supported by darknetpy "
                                           f"(only the default {DEFAULT_ONLY_KEYS[key]})",
                                           self.path, option.line, option.column)
                warn_once((self.path, key), f"{where} ignoring '{key}={option.value}' (the default)")
            elif key in valid:
                warn_once((self.path, key), f"{where} ignoring '{key}' (not used with these settings)")
            elif key in KNOWN_UNUSED_KEYS or key in ignored:
                _ignore_key(self.path, option.line, key, where)
            else:
                raise self._unknown_key(option, valid | self._queried)

    def _unknown_key(self, option: Option, candidates: set[str]) -> CfgError:
        message = f"unknown key '{option.key}' in [{self.section.name}]"
        suggestion = closest_name(option.key, candidates)
        if suggestion is not None:
            message += f"; did you mean '{suggestion}'?"
        elif candidates:
            message += f"; known keys: {', '.join(sorted(candidates))}"
        return CfgError(message, self.path, option.line, option.column)
