"""Numba kernels: pure functions over float32 arrays that write into preallocated outputs.

`jit` is the one compilation policy for every kernel in this package. Numba's on-disk cache does not
notice edits to njit functions imported from *other* modules (a kernel would keep running the old callee's
machine code), so each kernel module keeps its own callees local. If a callee must be shared anyway, delete
the cached files (`__pycache__/*.nbi`, `*.nbc` of the calling modules) after changing it.
"""
from __future__ import annotations

import numba

_OPTIONS = dict(nogil=True, cache=True, fastmath=False, error_model="numpy")


def jit(*args, parallel: bool = False, **overrides):
    """Decorator: `@jit` or `@jit(parallel=True)`; the shared flags live here only."""
    options = dict(_OPTIONS, parallel=parallel, **overrides)
    if args and callable(args[0]):
        return numba.njit(**options)(args[0])
    return numba.njit(*args, **options)
