"""Several data-parallel training runs in ONE `mpiexec -n K` launch, for tests/test_distributed_mpi.py:
`mpiexec ... python tests/mpi_training_job.py SPEC.json`.

Every launch costs each rank a Python start, the darknetpy and mpi4py imports and the loading of Numba's
cache; doing the classifier, the detector, the segmenter and the resumed run in the same ranks pays that once.
Each run goes through darknetpy.distributed.mpi.train_data_parallel, the function `darknetpy train` calls
under mpiexec. The data loader uses threads instead of spawned processes (the batches are the same either way,
BatchLoader's contract), which saves a process start per run and rank.

SPEC.json: {"runs": [{"name", "cwd", "cfg", "data", "seed", "weights"?, "max_batches"?, "checkpoint_every"?}]}.
Each rank first prints `threads RANK NUMBA_NUM_THREADS OPENBLAS_NUM_THREADS numba-threads`; before each run
rank 0 prints `=== NAME` on stdout and stderr. The job stops at the first run that does not end with 0, with
that status (a failing rank ends the whole job by MPI_Abort, an interrupted one by os._exit(130)).
"""
from __future__ import annotations

import functools
import json
import os
import sys


def main(spec_path: str) -> int:
    import darknetpy  # noqa: F401 - first: it gives this rank its share of the cores before numba loads
    import numba

    import darknetpy.training.loop as loop
    from darknetpy.data import BatchLoader
    from darknetpy.distributed import mpi_rank
    from darknetpy.distributed.mpi import train_data_parallel
    from darknetpy.training import TrainOptions

    loop.BatchLoader = functools.partial(BatchLoader, backend="thread")
    rank = mpi_rank()
    print(f"threads {rank} {os.environ.get('NUMBA_NUM_THREADS')} {os.environ.get('OPENBLAS_NUM_THREADS')} "
          f"{numba.get_num_threads()}", flush=True)
    with open(spec_path) as f:
        spec = json.load(f)
    for run in spec["runs"]:
        os.chdir(run["cwd"])
        if rank == 0:
            for stream in (sys.stdout, sys.stderr):
                print(f"=== {run['name']}", file=stream, flush=True)
        options = TrainOptions(weights=run.get("weights"), seed=run["seed"], max_batches=run.get("max_batches"),
                               checkpoint_every=run.get("checkpoint_every"), workers=1)
        code = train_data_parallel(run["cfg"], run["data"], options)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
