"""SectionReader: strict typed lookups, located errors, and the report of keys nobody read.

Oracles are hand-written: the expected numbers, messages and line numbers are read off the cfg text.
Warnings are reported once per (file, key) per process, so every test uses its own file name.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager

import pytest

from darknetpy.config import SectionReader, parse_cfg_text
from darknetpy.config.key_rules import SILENT, WARN, rule_for
from darknetpy.errors import CfgError, DarknetWarning, UnsupportedError


def reader_for(body: str, path: str, name: str = "convolutional") -> SectionReader:
    """A reader for `[name]` at line 2 of `path`, whose first option is on line 3."""
    text = f"[net]\n[{name}]\n{body}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DarknetWarning)
        document = parse_cfg_text(text, path)
    return SectionReader(document.sections[1], path)


@contextmanager
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_reader_exposes_section_and_path():
    reader = reader_for("filters=3\n", "expose.cfg")
    assert reader.section.name == "convolutional"
    assert reader.path == "expose.cfg"
    assert reader.has("filters") and not reader.has("size")
    assert reader.option("filters").line == 3
    assert reader.option("size") is None


def test_get_int_values_defaults_and_ranges():
    reader = reader_for("filters=32\nstride=+2\nfrom=-3\nsize = 3\n", "ints.cfg")
    assert reader.get_int("filters", 1) == 32
    assert reader.get_int("stride", 1) == 2
    assert reader.get_int("from", 0) == -3
    assert reader.get_int("size", 1, minimum=1, maximum=7) == 3
    assert reader.get_int("groups", 1) == 1
    assert reader.get_int("missing", None) is None


@pytest.mark.parametrize("value", ["abc", "1.5", "1.0", "3x", "0x10", "1_000"])
def test_get_int_rejects_non_integers_at_their_line(value):
    reader = reader_for(f"size=3\nfilters={value}\n", f"badint-{value}.cfg")
    with pytest.raises(CfgError) as caught:
        reader.get_int("filters", 1)
    assert caught.value.message == f"filters={value}: expected an integer"
    assert (caught.value.path, caught.value.line, caught.value.column) == (f"badint-{value}.cfg", 4, 1)


def test_range_violations_are_located():
    reader = reader_for("size=0\nstride=9\nprobability=1.5\n", "range.cfg")
    with pytest.raises(CfgError) as caught:
        reader.get_int("size", 1, minimum=1)
    assert (caught.value.line, caught.value.message) == (3, "size=0: must be >= 1")
    with pytest.raises(CfgError) as caught:
        reader.get_int("stride", 1, minimum=1, maximum=8)
    assert (caught.value.line, caught.value.message) == (4, "stride=9: must be between 1 and 8")
    with pytest.raises(CfgError) as caught:
        reader.get_float("probability", 0.5, maximum=1.0)
    assert (caught.value.line, caught.value.message) == (5, "probability=1.5: must be <= 1.0")


@pytest.mark.parametrize("text, expected", [
    ("1", 1.0), ("-2.", -2.0), (".5", 0.5), ("1e-3", 0.001), ("+2.5E2", 250.0), ("0.0005", 0.0005)])
def test_get_float_accepts_decimal_literals(text, expected):
    assert reader_for(f"scale={text}\n", f"float-{text}.cfg").get_float("scale", 1.0) == expected


@pytest.mark.parametrize("text", ["abc", "nan", "inf", "1,5", "1.2.3", "e5"])
def test_get_float_rejects_the_rest(text):
    reader = reader_for(f"scale={text}\n", f"badfloat-{text}.cfg")
    with pytest.raises(CfgError) as caught:
        reader.get_float("scale", 1.0)
    assert (caught.value.line, caught.value.message) == (3, f"scale={text}: expected a number")


def test_get_bool_is_an_integer_flag():
    reader = reader_for("a=0\nb=1\nc=2\nd=-1\ne=yes\n", "bools.cfg")
    assert [reader.get_bool(key, False) for key in "abcd"] == [False, True, True, True]
    assert reader.get_bool("absent", True) is True
    with pytest.raises(CfgError, match="e=yes: expected an integer"):
        reader.get_bool("e", False)


def test_get_str_with_choices_suggests_a_fix():
    reader = reader_for("activation=leaky\ntype=lekay\n", "strings.cfg")
    assert reader.get_str("activation", "logistic", choices=("leaky", "linear")) == "leaky"
    assert reader.get_str("absent", "x") == "x"
    with pytest.raises(CfgError) as caught:
        reader.get_str("type", "sse", choices=("sse", "leaky", "linear"))
    assert caught.value.line == 4
    assert caught.value.message == "type=lekay: expected one of sse, leaky, linear; did you mean 'leaky'?"


def test_lists():
    reader = reader_for("layers = -1, 8\nanchors=10,14, 23.5,27\nmask=1,,2\nsteps=3,x\n", "lists.cfg")
    assert reader.get_int_list("layers") == (-1, 8)
    assert reader.get_float_list("anchors") == (10.0, 14.0, 23.5, 27.0)
    assert reader.get_int_list("absent") is None
    assert reader.get_int_list("absent", (1, 2)) == (1, 2)
    with pytest.raises(CfgError) as caught:
        reader.get_int_list("mask")
    assert (caught.value.line, caught.value.message) == (5, "mask=1,,2: item 2 of the list is empty")
    with pytest.raises(CfgError) as caught:
        reader.get_int_list("steps")
    assert (caught.value.line, caught.value.message) == (6, "steps=3,x: expected an integer")


def test_required_list_missing_points_at_the_section():
    reader = reader_for("filters=1\n", "required.cfg", name="route")
    with pytest.raises(CfgError) as caught:
        reader.get_int_list("layers", required=True)
    assert (caught.value.line, caught.value.column) == (2, 1)
    assert "layers" in caught.value.message


def test_first_key_wins_and_duplicates_warn():
    with pytest.warns(DarknetWarning, match=r"dup\.cfg:4: \[convolutional\] duplicate key 'size'"):
        reader = reader_for("size=3\nsize=5\n", "dup.cfg")
    assert reader.get_int("size", 1) == 3


def test_error_is_located_at_key_or_section():
    reader = reader_for("filters=3\n", "located.cfg")
    at_key = reader.error("filters=3: too few", "filters")
    at_section = reader.error("something is off", "absent")
    assert (at_key.path, at_key.line, at_key.message) == ("located.cfg", 3, "filters=3: too few")
    assert (at_section.line, at_section.column) == (2, 1)
    assert str(at_key) == "located.cfg:3: filters=3: too few"


def test_finish_accepts_fully_read_sections_silently():
    reader = reader_for("filters=3\nsize=3\n", "clean.cfg")
    reader.get_int("filters", 1)
    reader.get_int("size", 1)
    with no_warnings():
        reader.finish("convolutional", valid=("filters", "size", "stride"))


def test_finish_reports_typos_with_a_suggestion():
    reader = reader_for("filters=3\nsize=3\nfiltres=4\n", "typo.cfg")
    reader.get_int("filters", 1)
    reader.get_int("size", 1)
    with pytest.raises(CfgError) as caught:
        reader.finish("convolutional", valid=("filters", "size", "stride", "pad"))
    assert caught.value.message == "unknown key 'filtres' in [convolutional]; did you mean 'filters'?"
    assert (caught.value.path, caught.value.line) == ("typo.cfg", 5)


def test_suggestions_also_come_from_queried_keys():
    reader = reader_for("strdie=2\n", "queried.cfg", name="maxpool")
    reader.get_int("stride", 1)
    with pytest.raises(CfgError, match="did you mean 'stride'"):
        reader.finish("maxpool")


def test_unknown_key_without_a_close_match_lists_the_known_ones():
    reader = reader_for("zzz=1\n", "nomatch.cfg", name="upsample")
    reader.get_int("stride", 2)
    with pytest.raises(CfgError) as caught:
        reader.finish("upsample", valid=("stride", "scale"))
    assert caught.value.message == "unknown key 'zzz' in [upsample]; known keys: scale, stride"


def test_training_only_keys_warn_once_per_file_and_key():
    assert rule_for("yolo", "track_history_size").action == WARN
    assert rule_for("yolo", "grad_centr").action == WARN  # shared by every layer section
    assert rule_for("net", "grad_centr") is None          # but not [net]
    body = "classes=80\ntrack_history_size=5\nstream=1\n"
    with pytest.warns(DarknetWarning) as record:
        for _ in range(2):
            reader = reader_for(body, "yolo-unused.cfg", name="yolo")
            reader.get_int("classes", 20)
            reader.finish("yolo")
    messages = sorted(str(item.message) for item in record)
    assert len(messages) == 2
    assert messages[0].startswith("yolo-unused.cfg:4: [yolo] ignoring 'track_history_size'")
    assert messages[1].startswith("yolo-unused.cfg:5: [yolo] ignoring 'stream'")


def test_valid_but_unread_keys_warn():
    reader = reader_for("step=3\n", "caller.cfg", name="net")
    with pytest.warns(DarknetWarning) as record:
        reader.finish("net", valid=("step",))
    assert [str(item.message) for item in record] == [
        "caller.cfg:3: [net] ignoring 'step' (not used with these settings)"]


def test_silent_keys_are_accepted_without_a_word():
    assert rule_for("net", "mosaic_bound").action == SILENT
    reader = reader_for("mosaic_bound=1\n", "silent.cfg", name="net")
    with no_warnings():
        reader.finish("net")


def test_keys_that_change_results_are_refused_unless_default():
    reader = reader_for("antialiasing=0\nflipped=0\n", "aa-default.cfg")
    with pytest.warns(DarknetWarning) as record:
        reader.finish("convolutional")
    assert [str(item.message) for item in record] == [
        "aa-default.cfg:3: [convolutional] ignoring 'antialiasing=0' (the default)",
        "aa-default.cfg:4: [convolutional] ignoring 'flipped=0' (the default)",
    ]
    reader = reader_for("filters=2\nantialiasing=1\n", "aa-on.cfg")
    reader.get_int("filters", 1)
    with pytest.raises(UnsupportedError) as caught:
        reader.finish("convolutional")
    assert caught.value.line == 4
    assert "antialiasing=1" in caught.value.message
