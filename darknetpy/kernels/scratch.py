"""Scratch arrays kept per thread between kernel calls, shared by the calls that ask for the same key.

Allocating a kernel's scratch of a few hundred KiB on every call costs more than many kernels (the C library
maps fresh pages for arrays that large), and layers that share one scratch find it in the cache. A kernel
that relies on cells it never writes (a zero border) keys its scratch by everything that decides which
cells it writes.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import TypeVar

import numpy as np

Scratch = TypeVar("Scratch")

_THREAD = threading.local()


def thread_scratch(key: Hashable, make: Callable[[], Scratch]) -> Scratch:
    """This thread's scratch for `key`, made by `make()` on the first call."""
    shared = getattr(_THREAD, "by_key", None)
    if shared is None:
        shared = _THREAD.by_key = {}
    scratch = shared.get(key)
    if scratch is None:
        scratch = shared[key] = make()
    return scratch


def thread_floats(key: Hashable, size: int) -> np.ndarray:
    """`size` float32 values of this thread's flat scratch for `key`, shared by every caller of that key
    whatever size it needs (the buffer grows to the largest): a network's layers then find the intermediate
    arrays of their kernels (patch matrices, Winograd tiles) in the caches, where one array per layer came
    from memory on every pass."""
    shared = getattr(_THREAD, "floats", None)
    if shared is None:
        shared = _THREAD.floats = {}
    buffer = shared.get(key)
    if buffer is None or buffer.size < size:
        buffer = shared[key] = np.empty(size, np.float32)
    return buffer[:size]
