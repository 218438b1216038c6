"""The .cfg grammar (pyparsing) and the functions that turn cfg text or files into a `Document`.

Accepted, line by line (spaces and tabs may appear anywhere between tokens, lines may end in CRLF):

    [section name]        # comment
    key = value, list     ; comment
    # or ; whole-line comments, blank lines

Darknet deletes every space and tab inside a line, so option values and section names are stored with all
whitespace removed. Deliberate differences from Darknet: a `key=` line, an option before the first section,
and any line the grammar cannot read are errors with line and column instead of crashes or silent
misreads. A line with no `=` (`filters 8`) is an error too: Darknet keeps it as a key without a value, so
the layer silently gets the option's default.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import pyparsing as pp

from darknetpy.config.document import Document, Option, Section
from darknetpy.errors import CfgError, DarknetError

# Newlines end statements, so no expression may skip over them.
_INLINE_WHITESPACE = " \t"


def _inline(expr: pp.ParserElement) -> pp.ParserElement:
    return expr.set_whitespace_chars(_INLINE_WHITESPACE, copy_defaults=False)


def _without_whitespace(text: str) -> str:
    return "".join(text.split())


@dataclass(frozen=True)
class _HeaderLine:
    name: str
    loc: int


@dataclass(frozen=True)
class _OptionLine:
    key: str
    value: str
    loc: int


@dataclass(frozen=True)
class _BareLine:
    text: str
    loc: int


def _make_header(text: str, loc: int, tokens: pp.ParseResults) -> _HeaderLine:
    return _HeaderLine(_without_whitespace(tokens["name"]).lower(), loc)


def _make_option(text: str, loc: int, tokens: pp.ParseResults) -> _OptionLine:
    key = tokens["key"]
    if "value" not in tokens:
        raise pp.ParseFatalException(text, loc, f"'{key}=' has no value (Darknet rejects an empty value)")
    return _OptionLine(key, _without_whitespace(tokens["value"]), loc)


def _make_bare(text: str, loc: int, tokens: pp.ParseResults) -> _BareLine:
    return _BareLine(tokens["text"].strip(), loc)


def _reject_line(text: str, loc: int, tokens: pp.ParseResults) -> None:
    line = tokens[0].rstrip()
    if line.startswith("="):
        reason = "missing key before '='"
    elif "=" in line and len(line.split("=", 1)[0].split()) > 1:
        reason = f"key '{line.split('=', 1)[0].strip()}' contains whitespace"
    else:
        reason = "expected '[section]', 'key=value' or a comment"
    raise pp.ParseFatalException(text, loc, f"cannot read line {line!r}: {reason}")


def _build_grammar() -> pp.ParserElement:
    newline = _inline(pp.Regex(r"\r?\n|\r\Z")).set_name("end of line")
    end_of_line = _inline(newline | _inline(pp.StringEnd().set_name("end of file"))).set_name("end of line")
    comment = _inline(pp.Regex(r"[#;][^\r\n]*")).set_name("comment")
    line_end = _inline(pp.Optional(comment) + end_of_line)

    section_name = _inline(pp.Regex(r"[^\[\]\r\n#;=]+")).set_name("section name")
    open_bracket = _inline(pp.Literal("["))
    close_bracket = _inline(pp.Literal("]")).set_name("']'")
    # `-` stops backtracking: once a '[' is seen, the error points at the exact missing piece.
    header = _inline(open_bracket - section_name("name") - close_bracket - line_end)
    header.set_parse_action(_make_header)

    key = _inline(pp.Regex(r"[A-Za-z_][\w.\-]*")).set_name("key")
    equals = _inline(pp.Literal("="))
    value = _inline(pp.Regex(r"[^#;\r\n]+")).set_name("value")
    option = _inline(key("key") + equals - pp.Optional(value("value")) - line_end)
    option.set_parse_action(_make_option)

    bare = _inline(pp.Regex(r"[^\[\]=#;\s][^=#;\r\n]*")("text") + line_end)
    bare.set_parse_action(_make_bare)

    unreadable = _inline(pp.Regex(r"[^\r\n]+"))
    unreadable.set_parse_action(_reject_line)

    ignored = _inline(newline | _inline(comment + end_of_line)).suppress()
    statement = _inline(ignored | header | option | bare | unreadable)
    return _inline(pp.ZeroOrMore(statement) + _inline(pp.StringEnd()))


# Locations must index the original text, so tabs are not expanded.
_GRAMMAR = _build_grammar().parse_with_tabs()


def parse_cfg_text(text: str, path: str = "<string>") -> Document:
    """Parse cfg text. Raises CfgError (with path, line, column) for anything Darknet would misread."""
    path = str(path)
    text = text.removeprefix("\ufeff")
    try:
        statements = _GRAMMAR.parse_string(text, parse_all=True)
    except pp.ParseBaseException as exc:
        raise _located_error(exc, text, path) from None

    sections: list[Section] = []
    header: _HeaderLine | None = None
    options: list[Option] = []

    def close_section() -> None:
        if header is not None:
            sections.append(Section(header.name, pp.lineno(header.loc, text), pp.col(header.loc, text),
                                    tuple(options)))

    for statement in statements:
        line, column = pp.lineno(statement.loc, text), pp.col(statement.loc, text)
        if isinstance(statement, _HeaderLine):
            close_section()
            header, options = statement, []
        elif header is None:
            what = statement.key if isinstance(statement, _OptionLine) else statement.text
            raise CfgError(f"'{what}' appears before the first section (a cfg starts with [net] or [network])",
                           path, line, column)
        elif isinstance(statement, _OptionLine):
            options.append(Option(statement.key, statement.value, line, column))
        else:
            raise CfgError(f"line without '=': {statement.text!r} (expected 'key=value'; Darknet would "
                           f"keep it as a key without a value and use the option's default)",
                           path, line, column)
    close_section()
    if not sections:
        raise CfgError("no sections found (a cfg starts with [net] or [network])", path)
    return Document(path, tuple(sections))


def _located_error(exc: pp.ParseBaseException, text: str, path: str) -> CfgError:
    message = exc.msg
    if not isinstance(exc, pp.ParseFatalException) or isinstance(exc, pp.ParseSyntaxException):
        message = f"{message}, found {describe_rest_of_line(text, exc.loc)}"
    return CfgError(f"{message} (column {exc.column})", path, exc.lineno, exc.column)


def describe_rest_of_line(text: str, loc: int) -> str:
    """What a syntax error at `loc` ran into: the rest of its line, or "end of line"."""
    end = text.find("\n", loc)
    rest = text[loc:] if end < 0 else text[loc:end].removesuffix("\r")
    return repr(rest) if rest.strip(" \t") else "end of line"


def read_text_file(path: str | os.PathLike, error_type: type[DarknetError] = CfgError,
                   kind: str = "cfg file") -> str:
    """Read a small text file as UTF-8 (BOM allowed), falling back to Latin-1; errors name the path."""
    shown = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise error_type(f"{kind} not found", shown) from None
    except IsADirectoryError:
        raise error_type(f"{kind} is a directory, not a file", shown) from None
    except PermissionError:
        raise error_type(f"{kind} cannot be read: permission denied", shown) from None
    except OSError as exc:
        raise error_type(f"{kind} cannot be read: {exc.strerror or exc}", shown) from None
    if b"\x00" in data:
        raise error_type(f"{kind} is not a text file (it contains NUL bytes; were two arguments swapped?)",
                         shown)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def parse_cfg(path: str | os.PathLike) -> Document:
    """Read and parse a .cfg file; every failure is a one-line CfgError naming the file."""
    return parse_cfg_text(read_text_file(path), os.fspath(path))
