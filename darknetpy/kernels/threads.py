"""Thread policy shared by the Numba kernels: how idle worker threads wait, and when threads pay at all.

Two thread pools share the cores: OpenBLAS's (matrix products) and Numba's (parallel kernels). They never
run at the same time, but by default both *spin* for a while after finishing their work — Numba's OpenMP
threading layer (libgomp) for ~300k iterations after every parallel loop. With 2 threads each on a 2-core
machine, a kernel's second worker then has to share its core with the other pool's spinning thread, and each
of the hundreds of hand-overs in a forward pass waits for a scheduler time slice. Measured with
tools/bench.py at 2 threads (2-core AMD EPYC): yolo-fastest-xl 320 takes 585 ms per forward pass with
libgomp's default wait policy and 30 ms with OMP_WAIT_POLICY=PASSIVE (yolov3-tiny 155 -> 66 ms, the MNIST
training step 214 -> 108 ms). So idle OpenMP workers are made to sleep at once unless the user chose
otherwise.

libgomp reads the variable once, when Numba starts its threading layer (the first parallel kernel call or
numba.set_num_threads). Importing darknetpy before either is therefore enough; if Numba's threads were
already started with more than one thread and the variable unset, a DarknetWarning says so.
"""
from __future__ import annotations

import os
import warnings

import numba

from ..errors import DarknetWarning

_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def _numba_threads_started() -> bool:
    try:
        from numba.np.ufunc import parallel
    except ImportError:  # pragma: no cover - numba moved its internals
        return False
    return bool(getattr(parallel, "_is_initialized", False))


def apply_defaults() -> None:
    """Set the wait-policy environment defaults (an explicit user setting always wins)."""
    missing = [key for key in _DEFAULTS if key not in os.environ]
    for key in missing:
        os.environ[key] = _DEFAULTS[key]
    if missing and _numba_threads_started() and numba.get_num_threads() > 1 \
            and numba.threading_layer() == "omp":
        warnings.warn("Numba's OpenMP threads were started before darknetpy was imported, with the default "
                      "spinning wait policy: with more than one thread this can make darknetpy many times "
                      "slower. Import darknetpy first, or set OMP_WAIT_POLICY=PASSIVE in the environment.",
                      DarknetWarning, stacklevel=2)


def threads_pay(work: int, tasks: int, minimum_work: int) -> bool:
    """Whether a parallel kernel is worth its launch (~10-50 us): enough work, more than one task, and more
    than one Numba thread."""
    return work >= minimum_work and tasks > 1 and numba.get_num_threads() > 1


apply_defaults()
