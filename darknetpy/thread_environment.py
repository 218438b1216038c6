"""Settings that the thread runtimes read once, when their libraries are loaded: darknetpy/__init__ sets
them before numpy (OpenBLAS) and numba (OpenMP) are imported. A value the user set always wins.

Two pools of threads share the cores: OpenBLAS's (matrix products) and darknetpy's (Numba's parallel
kernels, and the helper threads of kernels/handoff.py). They take turns many times per forward pass, and by
default the idle workers of each pool keep spinning for a while, holding a core the other pool needs:

  OMP_WAIT_POLICY=PASSIVE    idle OpenMP workers sleep at once (why, with figures: kernels/threads.py).
  OPENBLAS_THREAD_TIMEOUT=16 OpenBLAS's idle workers spin for 2**16 cycles (about 25 us here) before they
                             sleep, not 2**28 (about 0.1 s): long enough to serve back-to-back products, short
                             enough to leave the core to the kernels between them. Forward passes at 2
                             threads, against OpenBLAS's default (two sets of 3 alternating runs): yolov3-tiny
                             0.82-0.84 at batch 1 and 0.68-0.70 at batch 8, darknet19 0.83-0.86, yolov4-tiny
                             0.84, VGG-16 0.83, digits-yolo and digits-seg at batch 8 0.70-0.72; the digit
                             networks at batch 1 0.99-1.10 (their products are short enough that a sleeping
                             worker's wake-up shows).

When numpy was imported first, OpenBLAS has already read its default; blas_workers_spin() says so to the rest of
darknetpy (inference then keeps BLAS products out of multi-threaded passes: layers/conv_engines.py).
"""
from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping, MutableMapping

from .errors import DarknetWarning

DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "16"}
_set_by_darknetpy: set[str] = set()


def apply_environment_defaults(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Set every variable of DEFAULTS the environment lacks; returns the names that were set."""
    environ = os.environ if environ is None else environ
    missing = [key for key in DEFAULTS if key not in environ]
    for key in missing:
        environ[key] = DEFAULTS[key]
    if environ is os.environ:
        _set_by_darknetpy.update(missing)
    return missing


def blas_loaded_spinning(set_now: list[str], modules: Mapping[str, object] = sys.modules) -> bool:
    """Whether OpenBLAS read its settings (numpy was imported) before darknetpy could set the timeout now set
    (`set_now`: apply_environment_defaults' answer), with idle threads to spin: then its workers spin for
    about 0.1 s after each matrix product."""
    if "OPENBLAS_THREAD_TIMEOUT" not in set_now or "numpy" not in modules:
        return False
    # OpenBLAS takes its thread count from OPENBLAS_NUM_THREADS, else from OMP_NUM_THREADS
    blas_threads = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    return blas_threads != "1" and (os.cpu_count() or 1) >= 2


_blas_workers_spin = False


def note_blas_settings(set_now: list[str], modules: Mapping[str, object] = sys.modules) -> None:
    """Record whether OpenBLAS's workers spin (blas_workers_spin) and, if they do, say once what it costs and
    the way out: inference then avoids BLAS products at more than one thread (layers/conv_engines.py), but
    training multiplies by BLAS throughout."""
    global _blas_workers_spin
    _blas_workers_spin = blas_loaded_spinning(set_now, modules)
    if _blas_workers_spin:
        warnings.warn("numpy was imported before darknetpy, so OpenBLAS's idle threads keep spinning for about "
                      "0.1 s after each matrix product and take a core from darknetpy's threads (multi-threaded "
                      "training steps up to 1.4x slower): import darknetpy first, or set "
                      "OPENBLAS_THREAD_TIMEOUT=16 in the environment", DarknetWarning, stacklevel=3)


def blas_workers_spin() -> bool:
    """Whether OpenBLAS's idle workers in this process spin for ~0.1 s after each product (see
    note_blas_settings)."""
    return _blas_workers_spin


def set_by_darknetpy() -> frozenset[str]:
    """The variables this process got from DEFAULTS rather than from the user."""
    return frozenset(_set_by_darknetpy)
