"""How far long work is, for a person watching: a bar with images per second and the time left, redrawn in
place when the stream is a terminal; plain lines (every tenth of the work) or nothing when it is a log.

The bar goes to stderr, so it never mixes into what a command prints on stdout (`--json` records, the
per-image lines): when stdout is the same terminal, `hide()` wipes the bar before such a line is printed
and the next update draws it again below.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 30
#: erase the current terminal line (ANSI "erase in line", understood by every terminal that has a cursor)
_ERASE_LINE = "\r\033[K"


def bar_text(done: int, total: int, width: int = BAR_WIDTH) -> str:
    """`[#####-----]` filled to done/total (empty when the total is unknown, i.e. 0)."""
    filled = min(width, width * done // total) if total > 0 else 0
    return f"[{'#' * filled}{'-' * (width - filled)}]"


def format_duration(seconds: float) -> str:
    """0:07, 12:34, 1:02:03."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class Progress:
    """Call with (done, total) after each unit of work (an image): `Progress("valid")(3, 300)`.

    `log_lines`: when the stream is not a terminal, print `what: done/total (rate, elapsed)` every tenth of
    the work (True for measurements whose only output comes at the end, False for commands that already
    print a line per image). `minimum`: no bar at all for fewer units than this (one image needs none).
    """

    def __init__(self, what: str, stream: TextIO | None = None, *, log_lines: bool = True, minimum: int = 2,
                 unit: str = "images", clock=time.perf_counter):
        self.what = what
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = _is_terminal(self.stream)
        self.log_lines = log_lines
        self.minimum = minimum
        self.unit = unit
        self.clock = clock
        self.started = clock()
        self.last_tenth = 0
        self.drawn = False

    def text(self, done: int, total: int, seconds: float) -> str:
        """The bar's line: what [####----] done/total  rate images/s  ETA m:ss."""
        rate = done / seconds if seconds > 0 else 0.0
        if done >= total:
            tail = f"in {format_duration(seconds)}"
        elif rate > 0:
            tail = f"ETA {format_duration((total - done) / rate)}"
        else:
            tail = "ETA ?"
        return f"{self.what} {bar_text(done, total)} {done}/{total}  {rate:.1f} {self.unit}/s  {tail}"

    def __call__(self, done: int, total: int) -> None:
        if total < self.minimum:
            return
        seconds = self.clock() - self.started
        if self.interactive:
            end = "\n" if done >= total else ""
            print(f"{_ERASE_LINE}{self.text(done, total, seconds)}", end=end, file=self.stream, flush=True)
            self.drawn = done < total
        elif self.log_lines:
            tenth = 10 * done // total
            if tenth > self.last_tenth or done >= total:
                self.last_tenth = tenth
                rate = done / seconds if seconds > 0 else 0.0
                print(f"{self.what}: {done}/{total} ({rate:.1f} {self.unit}/s, {format_duration(seconds)})",
                      file=self.stream, flush=True)

    def hide(self) -> None:
        """Wipe a bar drawn on the terminal (before another line is printed to the same terminal)."""
        if self.drawn:
            print(_ERASE_LINE, end="", file=self.stream, flush=True)
            self.drawn = False

    def close(self) -> None:
        """End a bar that stopped before its total (an error): the next output starts on a clean line."""
        if self.drawn:
            print(file=self.stream, flush=True)
            self.drawn = False


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or minimal stream object is not a terminal
        return False
