"""Beyond one machine: data-parallel training on MPI (`mpiexec -n K darknetpy train ...`, darknetpy.distributed.mpi)
and batch prediction on a Dask cluster (`--dask`, `predict_images`, darknetpy.distributed.dask).

Both need the `distributed` extra (mpi4py, the mpich wheel, dask[distributed]); the core never imports them. This
module stays free of numpy and numba because darknetpy/__init__ imports `threads` from here before either is
loaded (their thread counts are read once, at import).
"""
from __future__ import annotations

import importlib
import os

from ..errors import DarknetError

EXTRA_HINT = 'pip install "darknetpy[distributed]"'


class MissingExtra(DarknetError):
    """An optional dependency of the distributed features is not installed."""


def require(module: str, feature: str):
    """Import `module`, or raise one line naming the extra that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(f"{feature} needs the {module} package ({exc.name or module} could not be imported): "
                           f"install the distributed extra, {EXTRA_HINT}") from None


def mpi_world_size() -> int:
    """How many ranks the MPI launcher started, read from its environment (no MPI import): hydra (MPICH, Intel)
    sets PMI_SIZE, Open MPI sets OMPI_COMM_WORLD_SIZE, Slurm's srun sets PMI_SIZE or PMIX_SIZE; 1 when not
    launched by one."""
    for key in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE"):
        value = os.environ.get(key, "")
        if value.isdigit():
            return int(value)
    return 1


def mpi_rank() -> int:
    for key in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
        value = os.environ.get(key, "")
        if value.isdigit():
            return int(value)
    return 0


def __getattr__(name: str):
    # the Python API, imported on first use so that `import darknetpy` never pulls in dask
    if name in ("predict_images", "iter_predictions", "local_cluster", "connect"):
        from . import dask as dask_module
        return getattr(dask_module, name)
    raise AttributeError(name)
