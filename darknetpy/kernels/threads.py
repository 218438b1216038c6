"""Thread policy shared by the Numba kernels: how idle worker threads wait, and when threads pay at all.

Two thread pools share the cores: OpenBLAS's (matrix products) and Numba's (parallel kernels). They never
run at the same time, but by default both *spin* for a while after finishing their work — Numba's OpenMP
threading layer (libgomp) for ~300k iterations after every parallel loop. With 2 threads each on a 2-core
machine, a kernel's second worker then has to share its core with the other pool's spinning thread, and each
of the hundreds of hand-overs in a forward pass waits for a scheduler time slice. Measured with
tools/bench.py at 2 threads (2-core AMD EPYC): yolo-fastest-xl 320 takes 585 ms per forward pass with
libgomp's default wait policy and 30 ms with OMP_WAIT_POLICY=PASSIVE (yolov3-tiny 155 -> 66 ms, the MNIST
training step 214 -> 108 ms). So idle OpenMP workers are made to sleep at once unless the user chose
otherwise. (OpenBLAS's idle workers spin too; how long is set in darknetpy/thread_environment.py.)

libgomp reads the variable once, when the library is loaded. Numba loads it when it starts its threading
layer (the first parallel kernel call or numba.set_num_threads), so importing darknetpy before that is
enough -- unless another package already loaded the same libgomp.so.1: PyTorch's wheels ship one, so after
`import torch` the runtime Numba would share has already read the (spinning) default. Setting the variable
then changes nothing, and darknetpy's 2-thread training of darknet.cfg 224 (batch 16) ran slower than with
1 thread. In that case Numba is switched to its own `workqueue` threading layer (no OpenMP; idle workers
block on a semaphore) unless the user chose a layer (NUMBA_THREADING_LAYER). workqueue is not the default
because it aborts the process when two Python threads launch parallel kernels at the same time, which
OpenMP allows. If Numba's threads were already started with more than one thread and the variable unset,
a DarknetWarning says so.
"""
from __future__ import annotations

import os
import warnings

import numba

try:
    from numba.np.ufunc import parallel as _numba_parallel
except ImportError:  # pragma: no cover - numba moved its internals
    _numba_parallel = None

from ..errors import DarknetWarning
from ..thread_environment import apply_environment_defaults, set_by_darknetpy


def _numba_threads_started() -> bool:
    return bool(getattr(_numba_parallel, "_is_initialized", False))


def thread_count() -> int:
    """numba.get_num_threads() (this Python thread's setting), without the two lock round trips that takes on
    every call once Numba's threads are up: 1.4 us against 0.2, and a pass asks about a hundred times (every
    kernel that may share out its work)."""
    if _numba_threads_started():
        count = getattr(_numba_parallel, "_get_num_threads", None)
        if count is not None:
            return count()
    return numba.get_num_threads()


def _gnu_openmp_loaded() -> bool:
    """Whether a libgomp.so.1 is already mapped into this process (Linux; False where that cannot be read)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            return any(os.path.basename(line.rstrip().rpartition(" ")[2]).startswith("libgomp.so.1")
                       for line in maps)
    except OSError:
        return False


def choose_threading_layer() -> str | None:
    """Use Numba's workqueue layer when the OpenMP runtime it would share was loaded, and so configured,
    before darknetpy could set its wait policy; returns the layer chosen (None: Numba's own choice)."""
    if os.environ.get("NUMBA_THREADING_LAYER") or _numba_threads_started() or not _gnu_openmp_loaded():
        return None
    numba.config.THREADING_LAYER = "workqueue"
    return "workqueue"


def apply_defaults() -> None:
    """Set the thread environment's defaults (an explicit user setting always wins; darknetpy/__init__ has
    normally set them already, before numpy loaded) and choose the threading layer."""
    apply_environment_defaults()
    choose_threading_layer()
    if "OMP_WAIT_POLICY" in set_by_darknetpy() and _numba_threads_started() and numba.get_num_threads() > 1 \
            and numba.threading_layer() == "omp":
        warnings.warn("Numba's OpenMP threads were started before darknetpy was imported, with the default "
                      "spinning wait policy: with more than one thread this can make darknetpy many times "
                      "slower. Import darknetpy first, or set OMP_WAIT_POLICY=PASSIVE in the environment.",
                      DarknetWarning, stacklevel=2)


def threads_pay(work: int, tasks: int, minimum_work: int) -> bool:
    """Whether a parallel kernel is worth its launch: enough work, more than one task, and more than one
    Numba thread. With sleeping idle workers (above) a launch costs ~100-180 us -- it has to wake them
    (measured on this project's 2-core machine; 3-20 us when they spin), so each kernel's `minimum_work` is
    about 0.5 ms of its serial work: below that a second thread saves less than its wake-up costs, and
    small networks never compile the parallel kernels at all."""
    return work >= minimum_work and tasks > 1 and thread_count() > 1


apply_defaults()
