"""The one training loop (`darknetpy train`) that every task plugs into (darknetpy/tasks/base.py).

The loop owns: batches from the task's dataset through BatchLoader, one Darknet train_network call per
iteration, Darknet's avg loss (0.9/0.1), the per-iteration line (the task's format), checkpoints (the
task's policy, written atomically), resuming from --weights (their `seen` continues the schedule, the
batch sequence and metrics.csv), Ctrl-C and SIGTERM (save the interrupted checkpoint, exit 130), typed
metric rows in metrics.csv, chart.png, the divergence stop naming the layer, `--validate` (the task's
metric printed and recorded) and `<base>_best.weights` when the task's main metric improves.

Output: the task line, the banner, the per-iteration lines, validation lines and the final "Saving
weights" go to stdout (stdout is Darknet's channel for them); stderr carries only warnings and errors.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np

from ..api import Model, load
from ..chart import write_chart
from ..config import read_data_file
from ..data import BatchLoader
from ..errors import DarknetError, DarknetWarning
from ..fileio import remove_stale_temporaries
from ..network import Network
from ..progress import bar_text
from ..tasks import task_for
from ..weights import layers_held, read_weights, write_weights
from .checkpoints import backup_folder, base_name
from .metrics import IterationRow, MetricsLog

if TYPE_CHECKING:  # tasks/base.py imports this package's checkpoints and metrics
    from ..distributed.mpi import DataParallel
    from ..tasks.base import Task


class TrainingDiverged(DarknetError):
    """The loss became NaN or infinite."""


@dataclass
class TrainOptions:
    weights: str | None = None
    clear: bool = False
    seed: int | None = None
    max_batches: int | None = None
    checkpoint_every: int | None = None   # None: the task's policy default (Darknet: 1000 / 100)
    validate_each_epoch: bool = False
    validate_every: int | None = None     # validate every N iterations instead of the task's rule
    workers: int = 2
    #: data-parallel training (darknetpy.distributed.mpi.DataParallel): this process is one rank of several;
    #: it trains its share of each update's passes, and only rank 0 prints or writes files
    parallel: DataParallel | None = None


@dataclass
class IterationContext:
    """What a task's per-iteration hook may look at and change, before iteration `batch + 1` is trained."""
    batch: int                    # weight updates done so far
    max_batches: int
    network: Network
    loader: BatchLoader
    #: seeded by (--seed, batch): a resumed run makes the same choices an uninterrupted one made
    rng: np.random.Generator
    out: TextIO                   # stdout, for the lines Darknet prints (e.g. "Resizing")


class TrainingRun:
    """One `darknetpy train` invocation. Everything is checked in the constructor (files, class counts,
    the task), before anything is printed or written."""

    def __init__(self, cfg: str, data: str, options: TrainOptions, out: TextIO | None = None,
                 err: TextIO | None = None, task: type[Task] | None = None):
        self.cfg = cfg
        self.options = options
        # looked up per run, not bound at import: a caller (or pytest's capsys) may have replaced them since
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.data_config = read_data_file(data)
        self.seed = options.seed if options.seed is not None else int.from_bytes(os.urandom(4), "little")
        self.model: Model = load(cfg, None, seed=self.seed)
        self.loaded_layers = self._load_start_weights(options.weights)
        if options.clear:
            self.model.seen = 0
        self.network = self.model.network
        if options.max_batches is not None:  # the schedule (poly, ...) follows the shorter run too
            self.network.net = replace(self.network.net, max_batches=options.max_batches)
        self.max_batches = self.network.net.max_batches
        self.base = base_name(cfg)
        self.task = (task or task_for(self.network))(self.model, self.data_config)
        self.task.check_data()
        self.dataset = self.task.dataset(train=True, seed=self.seed)
        self.task.check_truth(self.dataset)
        if options.validate_each_epoch:  # its list is checked now, not after the first epoch
            self.task.dataset(train=False, seed=0)
        self.backup = backup_folder(self.data_config)  # created only once the data checked out
        parallel = options.parallel
        self.is_root = parallel is None or parallel.is_root
        self.trainer = self.model.trainer if parallel is None else parallel.trainer(self.network)
        self.trainer.rng = np.random.default_rng(self.seed)
        self.checkpoints = self.task.checkpoint_policy(self.base, options.checkpoint_every)
        self.metrics = MetricsLog(self.backup / "metrics.csv", self.task.statistic_names, self.task.metric_names)
        if self.model.seen > 0:
            self.metrics.resume(self.trainer.current_batch)
        self.chart_path = self.backup / "chart.png"
        self.interactive = self.out.isatty()

    # ---- files ------------------------------------------------------------------------------------------------
    def checkpoint(self, name: str) -> Path:
        path = self.backup / name
        if self.is_root:  # every rank holds the same weights
            write_weights(self.network, path)
        return path

    def _write_records(self) -> None:
        if not self.is_root:
            return
        self.metrics.write()
        write_chart(self.metrics.rows, self.chart_path, title=f"{self.base}: training",
                    metric=self.task.main_metric)

    def _print(self, line: str = "") -> None:
        if self.interactive:  # end the progress bar's line first
            print(file=self.out)
        print(line, file=self.out, flush=True)

    # ---- the loop ---------------------------------------------------------------------------------------------
    def _load_start_weights(self, weights: str | None) -> int | None:
        """The --weights file: a checkpoint of this network, or the first N layers of another one as
        `darknetpy partial` writes them (transfer learning: the other layers keep their random start)."""
        if weights is None:
            return None
        from ..bundled import resolve
        weights = resolve(weights, "weights")
        network = self.model.network
        held = layers_held(network, weights)
        read_weights(network, weights, None if held == len(network.layers) else held)
        return held

    def _more_batches(self) -> bool:
        if self.max_batches == 0:
            return self.task.zero_max_batches_runs_forever
        return self.trainer.current_batch < self.max_batches

    def run(self) -> Path:
        print(f"task: {self.task.describe()}", file=self.out)
        if self.loaded_layers is not None and self.loaded_layers < len(self.network.layers):
            print(f"weights: layers 0-{self.loaded_layers - 1} from {self.options.weights} (a partial file); "
                  f"layers {self.loaded_layers}-{len(self.network.layers) - 1} start from random weights",
                  file=self.out)
        for line in self.task.banner(self.dataset, self.base):
            print(line, file=self.out)
        self.out.flush()
        # a run killed while writing a checkpoint (SIGKILL, the OOM killer) leaves its temporary file behind
        stale = remove_stale_temporaries(self.backup) if self.is_root else []
        if stale:
            print(f"removed {len(stale)} temporary file{'s' if len(stale) > 1 else ''} a killed run left in "
                  f"{self.backup}", file=self.err)
        if not self._more_batches() and self.is_root:
            # resuming from weights that have seen more than the schedule holds (a pretrained model, as in
            # fine-tuning) trains nothing, as in Darknet; say so instead of saving untouched weights silently
            warnings.warn(f"nothing to train: the weights have seen {self.model.seen} images (iteration "
                          f"{self.trainer.current_batch}, max_batches={self.max_batches}); add --clear to start "
                          f"the schedule anew", DarknetWarning, stacklevel=2)
        n_images = len(self.dataset)
        rows = self.metrics.rows
        avg_loss = rows[-1].avg_loss if rows else None
        last_epoch = self.model.seen // n_images
        main_metric = self.task.main_metric
        best = self.metrics.best(main_metric) if main_metric else None
        interrupted = False
        previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        rows = None if self.options.parallel is None else self.options.parallel.rows(self.network.net)
        loader = BatchLoader(self.dataset, batch_size=self.network.net.full_batch, seed=self.seed,
                             workers=self.options.workers, start_batch=self.trainer.current_batch, rows=rows)
        try:
            with loader:
                while self._more_batches():
                    done = self.trainer.current_batch
                    rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(done, 2)))
                    self.task.before_iteration(IterationContext(done, self.max_batches, self.network, loader,
                                                                rng, self.out))
                    t0 = time.perf_counter()
                    x, y = loader.next_batch()
                    loaded = time.perf_counter() - t0
                    t1 = time.perf_counter()
                    loss = self.trainer.train_batch(x, y)
                    seconds = time.perf_counter() - t1
                    if not math.isfinite(loss):
                        self._diverged(loss)
                    avg_loss = loss if avg_loss is None else avg_loss * 0.9 + loss * 0.1
                    batch = self.trainer.current_batch
                    seen = self.model.seen
                    statistics = self.task.iteration_statistics(self.trainer.last_statistics)
                    # the wait for the batch (Darknet's "Loaded: ... seconds"): a task that lists a `loaded`
                    # statistic column prints and records it; the others show it on a terminal only
                    statistics["loaded"] = loaded
                    row = IterationRow(batch=batch, epoch=seen / n_images, loss=loss, avg_loss=avg_loss,
                                       rate=self.trainer.current_rate(), seconds=seconds, images=seen,
                                       statistics=statistics)
                    self.metrics.append(row)
                    self._report(row, loaded)
                    epoch = seen // n_images
                    new_epoch = epoch > last_epoch
                    last_epoch = max(epoch, last_epoch)
                    changed = False
                    # rank 0 validates alone; the others wait for it in the next update's all-reduce
                    if self.options.validate_each_epoch and self.is_root and \
                            self._validation_due(batch, new_epoch):
                        best = self._validate(row, epoch, best)
                        changed = True
                    for name in self.checkpoints.after_iteration(batch, epoch, new_epoch):
                        self.checkpoint(name)
                        changed = True
                    if changed:
                        self._write_records()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            signal.signal(signal.SIGTERM, previous)
        if self.interactive:
            print(file=self.out)
        if interrupted:
            path = self.checkpoint(self.checkpoints.interrupted())
            self._write_records()
            print(f"interrupted at batch {self.trainer.current_batch}: saved {path}", file=self.err)
            raise KeyboardInterrupt
        path = self.checkpoint(self.checkpoints.final())
        self._write_records()
        print(f"Saving weights to {path}", file=self.out, flush=True)
        return path

    def _validation_due(self, batch: int, new_epoch: bool) -> bool:
        every = self.options.validate_every
        return batch % every == 0 if every else self.task.validation_due(batch, new_epoch)

    def _report(self, row: IterationRow, loaded: float) -> None:
        line = self.task.progress_line(row)
        if self.interactive:
            bar = bar_text(row.batch, self.max_batches or 0)  # the bar every long command draws (progress.py)
            waited = "" if "loaded" in self.task.statistic_names else f"  (loaded in {loaded:.3f} s)"
            print(f"\r{bar} {line}{waited}", end="", file=self.out, flush=True)
        else:
            print(line, file=self.out, flush=True)

    def _validate(self, row: IterationRow, epoch: int, best: float | None) -> float | None:
        """Measure the task's metric into `row`, print it, keep the best weights; returns the best value."""
        evaluation = self.task.evaluate()
        row.metrics = evaluation.metrics()
        self._print(f"valid at iteration {row.batch} (epoch {epoch}): {evaluation.line()}")
        metric = self.task.main_metric
        value = row.metrics.get(metric) if metric else None
        if value is not None and math.isfinite(value) and (best is None or value > best):
            path = self.checkpoint(self.checkpoints.best())
            print(f"best {metric} so far ({value:f}): saved {path}", file=self.out, flush=True)
            return value
        return best

    def _diverged(self, loss: float) -> None:
        culprit, detail = "unknown layer", ""
        for layer, output in zip(self.network.layers, self.network.outputs):
            if output is not None and not np.all(np.isfinite(output)):
                culprit = f"layer {layer.index} [{layer.kind}]"
                break
        else:
            # finite outputs can still give an infinite loss, e.g. a softmax that gives a true class the
            # probability 0 (log 0): then the layer whose cost left the float range is the one to name
            for layer in self.network.loss_layers:
                if layer.cost is not None and not math.isfinite(layer.cost):
                    culprit = f"layer {layer.index} [{layer.kind}]"
                    detail = (f" It is the layer's cost: every layer output is finite, but this cost is "
                              f"{layer.cost} (e.g. the log of a probability 0 given to a true class).")
                    break
        # the batch counter already includes the batch that diverged
        raise TrainingDiverged(f"loss became {loss} at iteration {self.trainer.current_batch}; the first "
                               f"non-finite output is in {culprit}.{detail} The last checkpoint in {self.backup} "
                               f"is intact; lower learning_rate or add burn_in", self.cfg)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt
