"""Errors that carry where the problem is, so the CLI can print one `file:line: message` line."""
from __future__ import annotations


class DarknetError(Exception):
    """Base of every error darknetpy raises on purpose (bad cfg, weights, image, data, arguments)."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None,
                 column: int | None = None):
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line
        self.column = column

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = str(self.path)
            if self.line is not None:
                where += f":{self.line}"
            where += ": "
        return where + self.message


class CfgError(DarknetError):
    """The .cfg text is malformed, names something unknown, or describes an impossible network."""


class UnsupportedError(CfgError):
    """A valid Darknet construct that darknetpy does not run yet."""


class WeightsError(DarknetError):
    """A .weights file that does not fit the network or cannot be read."""


class ImageError(DarknetError):
    """An image that cannot be read or decoded."""


class DataError(DarknetError):
    """A .data file, list file or label problem."""


class DarknetWarning(UserWarning):
    """Something Darknet accepts that darknetpy ignores (e.g. a training-only AlexeyAB key)."""
