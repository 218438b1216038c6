"""Each process of a job gets its share of the cores: K local MPI ranks (or Dask workers) that each start one
thread per core would run K·cores threads on `cores` cores, and the kernels' hand-overs would then wait for
time slices. The variables must be set before numpy (OpenBLAS) and numba are imported, which read them once:
darknetpy/__init__ calls `share_cores_among_local_ranks` first thing. Values the user set always win."""
from __future__ import annotations

import os

THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def thread_share(processes: int, cores: int | None = None) -> int:
    """Threads per process when `processes` share the machine: at least one."""
    cores = available_cores() if cores is None else cores
    return max(1, cores // max(1, processes))


def share_threads(processes: int, environ=None) -> dict[str, str]:
    """Set each unset thread variable to this process's share; returns what was set."""
    environ = os.environ if environ is None else environ
    share = str(thread_share(processes))
    chosen = {key: share for key in THREAD_VARIABLES if key not in environ}
    environ.update(chosen)
    return chosen


def share_cores_among_local_ranks() -> None:
    """Under an MPI launcher with several ranks on this host (hydra's MPI_LOCALNRANKS, Open MPI's
    OMPI_COMM_WORLD_LOCAL_SIZE), give this rank cores / local ranks threads; otherwise do nothing."""
    for key in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE"):
        value = os.environ.get(key, "")
        if value.isdigit() and int(value) > 1:
            share_threads(int(value))
            return
