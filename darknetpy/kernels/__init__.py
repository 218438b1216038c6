"""Numba kernels: pure functions over float32 arrays that write into preallocated outputs.

`jit` is the one compilation policy for every kernel in this package. Numba's on-disk cache does not
notice edits to njit functions imported from *other* modules (a kernel would keep running the old callee's
machine code), so each kernel module keeps its own callees local. If a callee must be shared anyway, delete
the cached files (`__pycache__/*.nbi`, `*.nbc` of the calling modules) after changing it.

A kernel's Numba dispatcher is made the first time the kernel is called or compiled into another kernel
(`Kernel`), not at import: making one with `cache=True` costs ~0.2 ms (it locates and checks the cache
files), and importing darknetpy's ~300 kernels that way took ~50 ms of every command's start, for kernels
most networks never call.
"""
from __future__ import annotations

import numba

_OPTIONS = dict(nogil=True, cache=True, fastmath=False, error_model="numpy")


class Kernel:
    """A jitted function whose dispatcher is made on first use. Called from Python it forwards to the
    dispatcher; Numba types it as that dispatcher (`_numba_type_`), so other kernels call it directly; any
    other attribute (py_func, signatures, inspect_asm, ...) is the dispatcher's."""

    def __init__(self, py_func, options: dict):
        self.py_func = py_func
        self._options = options
        self._dispatcher = None
        self.__name__, self.__qualname__ = py_func.__name__, py_func.__qualname__
        self.__module__, self.__doc__, self.__wrapped__ = py_func.__module__, py_func.__doc__, py_func

    @property
    def dispatcher(self):
        dispatcher = self._dispatcher
        if dispatcher is None:
            dispatcher = self._dispatcher = numba.njit(**self._options)(self.py_func)
        return dispatcher

    @property
    def _numba_type_(self):
        return self.dispatcher._numba_type_

    def __call__(self, *args):
        return (self._dispatcher or self.dispatcher)(*args)

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("py_func", "_options", "_dispatcher"):
            # not set yet (a copy or unpickling in progress): never the dispatcher's
            raise AttributeError(name)
        return getattr(self.dispatcher, name)

    def __repr__(self) -> str:
        return f"<darknetpy kernel {self.__module__}.{self.__qualname__}>"


def jit(*args, parallel: bool = False, **overrides):
    """Decorator: `@jit` or `@jit(parallel=True)`; the shared flags live here only."""
    options = dict(_OPTIONS, parallel=parallel, **overrides)
    if args and callable(args[0]):
        return Kernel(args[0], options)
    if args:
        raise TypeError("jit takes the function or keyword options only")
    return lambda py_func: Kernel(py_func, options)
