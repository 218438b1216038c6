"""The one line a first run prints before it goes quiet for seconds: Numba is compiling kernels for this CPU.

Kernels are compiled on their first call and cached on disk (`__pycache__`, or NUMBA_CACHE_DIR); a later run
loads them in milliseconds. Numba signals a compilation (a cache miss) with its "numba:compile" event, and
loading from the cache signals nothing, so listening to that event tells a first run from a warm one
exactly, whatever kernels the network turns out to need. The notice is printed once per process, at
the first compilation of a darknetpy kernel; the listener stays registered but silent (removing it while
Numba walks its listener list would make Numba skip the next listener).
"""
from __future__ import annotations

import sys
from typing import TextIO

NOTICE = ("darknetpy: compiling the kernels this network needs for this CPU "
          "(first run only: they are cached for the next runs)")

KERNEL_PACKAGE = "darknetpy."   # compilations of functions outside it (numba's own helpers) are not announced
_listener = None                 # the one listener of this process, registered on first use


def announce_compilation(stream: TextIO | None = None) -> None:
    """Print NOTICE on `stream` (stderr by default) when the first darknetpy kernel starts compiling; once
    per process, however often this is called (a later call only changes the stream)."""
    global _listener
    from numba.core import event

    if _listener is None:
        class FirstCompilation(event.Listener):
            announced = False
            stream: TextIO | None = None

            def on_start(self, ev: event.Event) -> None:
                if self.announced or not ev.data["dispatcher"].py_func.__module__.startswith(KERNEL_PACKAGE):
                    return  # numba's own helpers compile inside a kernel's compilation, never first
                self.announced = True
                print(NOTICE, file=self.stream if self.stream is not None else sys.stderr, flush=True)
                from .compile_ahead import start_if_armed
                start_if_armed()  # a second process compiles from the network's other end

            def on_end(self, ev: event.Event) -> None:
                pass

        _listener = FirstCompilation()
        event.register("numba:compile", _listener)
    _listener.stream = stream
