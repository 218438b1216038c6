"""Synchronous data-parallel training on MPI: `mpiexec -n K darknetpy train CFG DATA ...`.

Darknet's `subdivisions` already split one weight update into passes whose gradients add up. With K ranks,
rank r runs passes r, r+K, r+2K, ... of every update on the rows of the global batch those passes cover (the
BatchLoader draws the global batch exactly as one process does and loads only this rank's rows). Then ONE
all-reduce (MPI_Iallreduce, polled so that Ctrl-C can interrupt it) over a single flat float32 buffer sums,
per update:

    [ gradients of every parameter | BN rolling-statistics contributions | loss | per-pass statistics ]

and every rank applies the same update to the same weights, so the ranks never drift apart.

Batch-norm rolling statistics. One process updates them pass by pass, rolling ← .99·rolling + .01·stat_p, so
after the S passes of an update

    rolling_S = .99^S · rolling_0 + Σ_p .99^(S−1−p) · (.01·stat_p)

which is linear in the passes. A rank reads .01·stat_p of each of its passes as (rolling after − .99·rolling
before) — whatever the rolling arrays held locally — weights it by .99^(S−1−p) knowing the pass's global
index p, and rank 0 adds .99^S·rolling_0; the sum over ranks is the single-process value (to float32
rounding). The arrays concerned are found without knowing the layers: every array of a layer's weight file
that is not a parameter (Darknet's only such arrays are the rolling mean and variance, which follow that rule;
an array that no pass changes comes out unchanged by the same formula).

Not reproduced across rank counts: dropout masks, which each rank draws from its own generator.

Faults. Set-up errors (a bad cfg, a missing image) are agreed on collectively: rank 0 prints the first one and
every rank exits 2. During training a rank whose Python code fails prints one line naming the rank and calls
MPI_Abort, which makes the launcher end every rank; a rank that is killed is noticed by the launcher, which
ends the others (MPICH's hydra) with SIGKILL at once, so no rank can add a line of its own: hydra's banner
says it, ending with `YOUR APPLICATION TERMINATED WITH THE EXIT STRING: Killed (signal 9)`. Ctrl-C (or
SIGTERM) reaches every rank: rank 0 saves the interrupted checkpoint as in one process, and the ranks leave
together (or by MPI_Abort after 10 s). Only rank 0 writes checkpoints, atomically, so the last one is whole.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
import warnings
from typing import TextIO

import numpy as np

from ..config import parse_cfg
from ..errors import CfgError, DarknetError
from ..kernels.batchnorm import ROLLING_KEEP
from ..network import Network
from ..optim import Trainer
from . import require


def _mpi():
    return require("mpi4py.MPI", "training under mpiexec")


def subdivisions_error(cfg: str, subdivisions: int, ranks: int, net_line: int) -> CfgError:
    """The located error for `subdivisions` that K ranks cannot share evenly."""
    line = net_line
    try:
        net = parse_cfg(cfg).sections[0]
        for option in net.options:
            if option.key == "subdivisions":
                line = option.line
    except DarknetError:
        pass
    return CfgError(f"subdivisions={subdivisions} cannot be shared by {ranks} MPI ranks: each rank runs "
                    f"subdivisions/ranks passes per update, so subdivisions must be a multiple of {ranks}",
                    cfg, line)


def state_arrays(network: Network) -> list[np.ndarray]:
    """Arrays of the weight files that no gradient trains: the batch-norm rolling statistics."""
    trained = [p.value for _, p in network.params()]
    found: list[np.ndarray] = []
    for layer in network.layers:
        for array in layer.weight_arrays(saving=True):
            if not any(np.shares_memory(array, other) for other in trained + found):
                found.append(array)
    return found


class DataParallelTrainer(Trainer):
    """Trainer.train_batch for one rank: `x` holds only this rank's rows (its passes, in order)."""

    def __init__(self, network: Network, comm, cfg: str = "<cfg>", rng: np.random.Generator | None = None):
        super().__init__(network, rng)
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        net = network.net
        if net.subdivisions % self.size:
            raise subdivisions_error(cfg, net.subdivisions, self.size, net.line)
        self.params = [p for _, p in network.params()]
        self.state = state_arrays(network)
        self._stat_names: dict[int, list[str]] | None = None
        self._buffer: np.ndarray | None = None
        #: seconds spent in the Allreduce of the last update (tools/bench.py reports its share)
        self.last_allreduce_seconds = 0.0

    def passes_of_rank(self) -> list[int]:
        return list(range(self.rank, self.network.net.subdivisions, self.size))

    def broadcast_weights(self) -> None:
        """Make every rank start from rank 0's weights and rolling statistics (one Bcast)."""
        arrays = [p.value for p in self.params] + self.state
        flat = np.concatenate([a.ravel() for a in arrays]) if arrays else np.zeros(0, np.float32)
        self.comm.Bcast(flat, root=0)
        self._unpack(flat, arrays)
        for layer in self.network.layers:
            layer.parameters_changed()
        seen = self.comm.bcast(self.network.seen, root=0)
        self.network.seen = seen

    @staticmethod
    def _unpack(flat: np.ndarray, arrays: list[np.ndarray]) -> int:
        offset = 0
        for a in arrays:
            a[...] = flat[offset:offset + a.size].reshape(a.shape)
            offset += a.size
        return offset

    def train_batch(self, x: np.ndarray, truth: np.ndarray) -> float:
        net = self.network.net
        passes = self.passes_of_rank()
        x = np.ascontiguousarray(x, dtype=np.float32)
        truth = np.ascontiguousarray(truth, dtype=np.float32).reshape(x.shape[0], -1)
        if x.shape[0] != len(passes) * net.batch:
            raise ValueError(f"rank {self.rank} expects the {len(passes) * net.batch} rows of its passes "
                             f"{passes}, got {x.shape[0]}")
        subdivisions = net.subdivisions
        start_seen = self.network.seen
        keep = np.float64(ROLLING_KEEP)
        start_state = [a.astype(np.float64) for a in self.state]
        contributions = [np.zeros(a.shape, np.float64) for a in self.state]
        total = 0.0
        sums: dict[int, dict[str, float]] = {}
        counts: dict[int, dict[str, int]] = {}
        updated = False
        try:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                total = self._passes(x, truth, passes, start_seen, contributions, sums, counts)
                if self.rank == 0:
                    for c, a0 in zip(contributions, start_state):
                        c += keep ** subdivisions * a0
                if self._stat_names is None:
                    self._stat_names = {index: list(values) for index, values in sums.items()}
                buffer = self._pack(contributions, total, sums, counts)
                t0 = time.perf_counter()
                self._all_reduce(buffer)
                self.last_allreduce_seconds = time.perf_counter() - t0
                total = self._unpack_sums(buffer, sums, counts)
                self.network.seen = start_seen + subdivisions * net.batch
                self.last_rate = self.current_rate()
                self.optimizer.step(self.last_rate)
                updated = True
        finally:
            if not updated:  # interrupted (Ctrl-C, SIGTERM): back to the last update, what a checkpoint saves
                self.network.seen = start_seen
                for a, a0 in zip(self.state, start_state):
                    a[...] = a0
                for p in self.params:
                    p.grad.fill(0.0)
        self.last_statistics = {index: {name: value / counts[index][name] if counts[index].get(name) else
                                        float("nan") for name, value in values.items()}
                                for index, values in sums.items()}
        return total / (subdivisions * net.batch)

    def _all_reduce(self, buffer: np.ndarray) -> None:
        """The update's one all-reduce, in place. Polled rather than blocking: Python runs its signal handlers
        (Ctrl-C, SIGTERM) only between calls, and a rank stuck in a blocking call for a peer that has stopped
        could never be interrupted. Spins while the peers are close, then polls every half millisecond."""
        request = self.comm.Iallreduce(_in_place(), buffer)
        spin_until = time.perf_counter() + 0.01
        while not request.Test():
            if time.perf_counter() > spin_until:
                time.sleep(0.0005)

    def _passes(self, x, truth, passes, start_seen, contributions, sums, counts) -> float:
        """Forward and backward over this rank's passes; accumulates the gradients, each pass's weighted
        rolling-statistics contribution and the loss layers' statistics; returns the summed cost."""
        net = self.network.net
        keep = np.float64(ROLLING_KEEP)
        total = 0.0
        for j, p in enumerate(passes):
            before = [a.astype(np.float64) for a in self.state]
            sl = slice(j * net.batch, (j + 1) * net.batch)
            # what one process's `seen` is during global pass p (loss layers may read it)
            self.network.seen = start_seen + (p + 1) * net.batch
            self.network.forward(x[sl], train=True, truth=truth[sl])
            self.network.backward()
            total += self.network.cost()
            weight = keep ** (net.subdivisions - 1 - p)
            for c, a, b in zip(contributions, self.state, before):
                c += weight * (a.astype(np.float64) - keep * b)
            for layer in self.network.loss_layers:
                layer_sums = sums.setdefault(layer.index, {})
                layer_counts = counts.setdefault(layer.index, {})
                for name, value in layer.statistics().items():
                    finite = bool(np.isfinite(value))
                    layer_sums[name] = layer_sums.get(name, 0.0) + (float(value) if finite else 0.0)
                    layer_counts[name] = layer_counts.get(name, 0) + int(finite)
        return total

    def _pack(self, contributions, total, sums, counts) -> np.ndarray:
        names = self._stat_names or {}
        n_stats = sum(2 * len(v) for v in names.values())
        size = sum(p.grad.size for p in self.params) + sum(c.size for c in contributions) + 1 + n_stats
        if self._buffer is None or self._buffer.size != size:
            self._buffer = np.empty(size, np.float32)
        buffer = self._buffer
        offset = 0
        for array in [p.grad for p in self.params] + contributions:
            buffer[offset:offset + array.size] = array.ravel()
            offset += array.size
        buffer[offset] = total
        offset += 1
        for index, layer_names in names.items():
            for name in layer_names:
                buffer[offset] = sums.get(index, {}).get(name, 0.0)
                buffer[offset + 1] = counts.get(index, {}).get(name, 0)
                offset += 2
        return buffer

    def _unpack_sums(self, buffer, sums, counts) -> float:
        offset = self._unpack(buffer, [p.grad for p in self.params] + self.state)
        total = float(buffer[offset])
        offset += 1
        for index, layer_names in (self._stat_names or {}).items():
            for name in layer_names:
                sums.setdefault(index, {})[name] = float(buffer[offset])
                counts.setdefault(index, {})[name] = int(round(float(buffer[offset + 1])))
                offset += 2
        return total


def _in_place():
    return _mpi().IN_PLACE


@dataclasses.dataclass
class DataParallel:
    """What the training loop needs to know about this rank (darknetpy.training.loop.TrainOptions.parallel)."""
    comm: object
    cfg: str

    @property
    def rank(self) -> int:
        return self.comm.Get_rank()

    @property
    def size(self) -> int:
        return self.comm.Get_size()

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def rows(self, net) -> np.ndarray:
        """Positions in each global batch (batch·subdivisions rows) that this rank loads: its passes' rows."""
        b = net.batch
        return np.concatenate([np.arange(p * b, (p + 1) * b) for p in range(self.rank, net.subdivisions,
                                                                             self.size)])

    def trainer(self, network: Network, rng: np.random.Generator | None = None) -> DataParallelTrainer:
        """This rank's trainer; no communication yet (a set-up error on one rank must not leave the others
        waiting in a collective): call its broadcast_weights() once every rank is ready."""
        return DataParallelTrainer(network, self.comm, self.cfg, rng)


def _leave_together(farewell, world, code: int, timeout: float = 10.0) -> int:
    """Wait, for at most `timeout` seconds, until every rank has stopped (rank 0 has then saved the interrupted
    checkpoint), then leave with `code`; a rank that does not arrive is ended with MPI_Abort."""
    try:
        request = farewell.Ibarrier()
        deadline = time.monotonic() + timeout
        while not request.Test():
            if time.monotonic() > deadline:
                world.Abort(code)
            time.sleep(0.01)
    except KeyboardInterrupt:  # asked twice: stop now
        world.Abort(code)
    # An all-reduce the interrupt abandoned stays pending; MPI_Finalize would wait for it or complain about
    # it, and every rank has finished its work: leave without it.
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def train_data_parallel(cfg: str, data: str, options, out: TextIO | None = None,
                        err: TextIO | None = None) -> int:
    """`darknetpy train` on every rank of MPI_COMM_WORLD; returns the exit status (0, 2, or 130)."""
    from ..training import TrainingRun
    from ..training.loop import TrainingDiverged

    mpi = _mpi()
    comm = mpi.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    if rank != 0:
        warnings.simplefilter("ignore")
        quiet = open(os.devnull, "w")
        out, err = quiet, quiet
    # every rank must draw the same batches: rank 0 picks the seed when the user did not
    seed = options.seed if options.seed is not None else int.from_bytes(os.urandom(4), "little")
    options = dataclasses.replace(options, seed=comm.bcast(seed, root=0),
                                  parallel=DataParallel(comm, str(cfg)))
    run, failure = None, None
    try:
        run = TrainingRun(cfg, data, options, out=out, err=err)
    except DarknetError as exc:
        failure = str(exc)
    failures = comm.allgather(failure)
    if any(f is not None for f in failures):
        if rank == 0:
            first = next(f for f in failures if f is not None)
            print(first, file=sys.stderr, flush=True)
        return 2
    farewell = comm.Dup()   # its own communicator: never matched against a collective left pending on COMM_WORLD
    try:
        run.trainer.broadcast_weights()
        run.run()
    except TrainingDiverged as exc:  # raised by every rank after the same all-reduced loss
        if rank == 0:
            print(str(exc), file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:  # Ctrl-C (mpiexec passes it to every rank) or SIGTERM
        return _leave_together(farewell, comm, 130)
    except BaseException as exc:  # noqa: BLE001 - any failure of one rank must end all of them
        reason = str(exc) if isinstance(exc, DarknetError) else f"{type(exc).__name__}: {exc}"
        print(f"rank {rank} of {size} failed, ending the MPI job (the last checkpoint is intact): {reason}",
              file=sys.stderr, flush=True)
        # mpiexec forwards a rank's stderr through its proxy asynchronously, and MPI_Abort tears the job down
        # at once: without a moment's grace the one line that says why the job ended can be lost (seen with
        # a cold Numba cache, when the other rank was still busy)
        time.sleep(0.5)
        comm.Abort(2)
    finally:
        farewell.Free()
    return 0
