"""The cfg grammar: accepted syntax, located errors, and every cfg of Darknet's own corpus.

Oracles: hand-written expectations, and for the corpus an independent plain-string reading of each file.
"""
from __future__ import annotations

import os
import random
import warnings
from pathlib import Path

import pytest

from darknetpy.config import Document, Option, Section, parse_cfg, parse_cfg_text
from darknetpy.errors import CfgError, DarknetWarning

SHARED = Path(__file__).resolve().parents[2] / "shared"
CORPUS_CFGS = sorted(
    [*SHARED.glob("cfg-corpus/*.cfg"), *SHARED.glob("cfg-alexeyab/*.cfg"), *SHARED.glob("models/*/*.cfg")])


def require_shared() -> Path:
    if not SHARED.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{SHARED} is missing")
        pytest.skip(f"{SHARED} is not available")
    return SHARED


def parse_quietly(text: str, path: str = "<string>") -> Document:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return parse_cfg_text(text, path)


def options_of(section: Section) -> list[tuple[str, str]]:
    return [(option.key, option.value) for option in section.options]


def test_sections_and_options_with_locations():
    document = parse_quietly("[net]\nbatch=64\nwidth=416\n\n[convolutional]\nfilters=32\n")
    assert document.path == "<string>"
    net, conv = document.sections
    assert net == Section("net", 1, 1, (Option("batch", "64", 2, 1), Option("width", "416", 3, 1)))
    assert conv == Section("convolutional", 5, 1, (Option("filters", "32", 6, 1),))


def test_comments_whole_line_and_after_values():
    text = "# top\n; also top\n[net]\n  # indented comment\nfilters=32 # size\nsize = 3;x\nstride=1#glued\n"
    (net,) = parse_quietly(text).sections
    assert options_of(net) == [("filters", "32"), ("size", "3"), ("stride", "1")]
    assert [option.line for option in net.options] == [5, 6, 7]


def test_crlf_gives_the_same_document_as_lf():
    text = "[net]\nbatch = 64\n\n[maxpool]\nsize=2 # c\n"
    assert parse_quietly(text.replace("\n", "\r\n")) == parse_quietly(text)


def test_utf8_bom_is_ignored():
    (net,) = parse_quietly("\ufeff[net]\nbatch=1\n").sections
    assert (net.name, net.line, net.column) == ("net", 1, 1)


def test_whitespace_is_removed_from_values_and_names():
    text = "[ Net ]\n\tlayers = -1, 8\nanchors =  10,14,  23 ,27\n  steps\t=\t1 , 2\n"
    (net,) = parse_quietly(text).sections
    assert net.name == "net"
    assert options_of(net) == [("layers", "-1,8"), ("anchors", "10,14,23,27"), ("steps", "1,2")]
    assert [(option.line, option.column) for option in net.options] == [(2, 2), (3, 1), (4, 3)]


def test_section_names_are_lower_cased():
    sections = parse_quietly("[NET]\n[Convolutional]\n[yolo]\n").sections
    assert [section.name for section in sections] == ["net", "convolutional", "yolo"]
    assert all(section.options == () for section in sections)


def test_last_line_without_newline_and_value_with_equals():
    (net,) = parse_quietly("[net]\nname=a=b\nlast=7").sections
    assert options_of(net) == [("name", "a=b"), ("last", "7")]


@pytest.mark.parametrize("text, line, column", [
    ("[net]\nbatch=64\nwidth=\n", 3, 1),
    ("[net]\n\nwidth=   # nothing here\n", 3, 1),
    ("[net]\nheight =\r\n", 2, 1),
])
def test_empty_value_is_an_error_at_its_line(text, line, column):
    with pytest.raises(CfgError) as caught:
        parse_cfg_text(text, "model.cfg")
    assert (caught.value.path, caught.value.line, caught.value.column) == ("model.cfg", line, column)
    assert "no value" in caught.value.message
    assert str(caught.value).startswith(f"model.cfg:{line}: ")


def test_option_before_first_section():
    with pytest.raises(CfgError) as caught:
        parse_cfg_text("# header\nbatch=1\n[net]\n", "a.cfg")
    assert (caught.value.line, caught.value.column) == (2, 1)
    assert "before the first section" in caught.value.message


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n; another\n", "\ufeff"])
def test_no_sections(text):
    with pytest.raises(CfgError, match="no sections"):
        parse_cfg_text(text)


def test_unterminated_section_header_points_at_the_gap():
    with pytest.raises(CfgError) as caught:
        parse_cfg_text("[net\nbatch=1\n", "x.cfg")
    assert (caught.value.line, caught.value.column) == (1, 5)
    assert "']'" in caught.value.message


@pytest.mark.parametrize("text, line, column, fragment", [
    ("[net]\n=3\n", 2, 1, "missing key"),
    ("[net]\nmax batches = 3\n", 2, 1, "contains whitespace"),
    ("[net] trailing\n", 1, 7, "end of line"),
    ("[ ]\n", 1, 3, "section name"),
    ("[net]\n]\n", 2, 1, "cannot read line"),
    ("[net]\nbatch\n=1\n", 3, 1, "missing key"),  # a newline must never be skipped like a space
])
def test_syntax_errors_carry_line_and_column(text, line, column, fragment):
    with pytest.raises(CfgError) as caught:
        parse_cfg_text(text)
    assert (caught.value.line, caught.value.column) == (line, column)
    assert fragment in caught.value.message


def test_line_without_equals_is_an_error_at_its_line():
    # Darknet would store `filters` with no value and the layer would silently get filters=1
    with pytest.raises(CfgError) as caught:
        parse_cfg_text("[net]\nbatch=1\n[convolutional]\n  filters 32\nsize=3\n", "odd.cfg")
    assert str(caught.value).startswith("odd.cfg:4: line without '=': 'filters 32'")
    assert caught.value.column == 3


def test_garbage_never_leaks_a_pyparsing_exception():
    generator = random.Random(1234)
    alphabet = "[]=#;ab1 \t\r\n,.-_"
    for _ in range(300):
        text = "".join(generator.choice(alphabet) for _ in range(generator.randint(0, 40)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DarknetWarning)
            try:
                document = parse_cfg_text(text)
            except CfgError as error:
                assert error.line is None or error.line >= 1
            else:
                assert document.sections


def test_parse_cfg_reads_files(tmp_path):
    path = tmp_path / "tiny.cfg"
    path.write_bytes("\ufeff[net]\r\nbatch=2\r\n".encode("utf-8"))
    document = parse_cfg(path)
    assert document.path == str(path)
    assert options_of(document.sections[0]) == [("batch", "2")]


def test_parse_cfg_falls_back_to_latin1(tmp_path):
    path = tmp_path / "latin.cfg"
    path.write_bytes(b"# r\xe9seau\n[net]\nbatch=3\n")
    assert options_of(parse_cfg(path).sections[0]) == [("batch", "3")]


@pytest.mark.parametrize("setup, fragment", [
    (lambda tmp: tmp / "missing.cfg", "not found"),
    (lambda tmp: tmp, "is a directory"),
])
def test_parse_cfg_file_problems(tmp_path, setup, fragment):
    path = setup(tmp_path)
    with pytest.raises(CfgError) as caught:
        parse_cfg(path)
    assert fragment in caught.value.message
    assert caught.value.path == str(path)
    assert "\n" not in str(caught.value)


def test_parse_cfg_rejects_binary_files(tmp_path):
    path = tmp_path / "model.weights"
    path.write_bytes(b"\x00\x00\x00\x00\x02\x00\x00\x00[net]")
    with pytest.raises(CfgError, match="not a text file"):
        parse_cfg(path)


@pytest.mark.skipif(os.name == "nt" or (hasattr(os, "geteuid") and os.geteuid() == 0),
                    reason="permissions are not enforced for root")
def test_parse_cfg_unreadable(tmp_path):
    path = tmp_path / "locked.cfg"
    path.write_text("[net]\n")
    path.chmod(0)
    try:
        with pytest.raises(CfgError, match="permission denied"):
            parse_cfg(path)
    finally:
        path.chmod(0o644)


def test_corpus_is_present_or_skipped():
    require_shared()
    assert len(CORPUS_CFGS) >= 45


@pytest.mark.parametrize("path", CORPUS_CFGS, ids=lambda path: path.name)
def test_every_corpus_cfg_parses(path):
    require_shared()
    raw_lines = path.read_text(encoding="utf-8").split("\n")
    document = parse_quietly(path.read_text(encoding="utf-8"), str(path))

    # Independent reading: a section starts wherever the first non-space character is '['.
    header_lines = [number for number, raw in enumerate(raw_lines, 1) if raw.lstrip().startswith("[")]
    assert [section.line for section in document.sections] == header_lines
    for section in document.sections:
        assert section.name == raw_lines[section.line - 1].strip()[1:-1].replace(" ", "").lower()

    option_lines = [number for number, raw in enumerate(raw_lines, 1)
                    if "=" in raw and not raw.lstrip().startswith(("#", ";", "["))]
    options = [option for section in document.sections for option in section.options]
    assert [option.line for option in options] == option_lines
    for option in options:
        raw = raw_lines[option.line - 1]
        assert "".join(raw.split()) == f"{option.key}={option.value}"
        assert option.column == len(raw) - len(raw.lstrip()) + 1
