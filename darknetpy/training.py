"""`darknetpy train` and `darknetpy valid` for classifiers: Darknet's loop, output lines and checkpoint
names (spec §6.4, §8.1), with atomic checkpoints, clean Ctrl-C, resumable schedules, metrics and a chart.
"""
from __future__ import annotations

import csv
import io
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

import numpy as np

from .api import Model, load
from .config import read_data_file
from .data import BatchLoader, ClassificationDataset, data_dir_of, resolve_path
from .errors import DataError, DarknetError
from .fileio import atomic_writer, remove_stale_temporaries
from .weights import write_weights


class TrainingDiverged(DarknetError):
    """The loss became NaN or infinite."""


def base_name(cfg_path: str | os.PathLike) -> str:
    """Darknet's <base>: the file name without folders and without everything from the first '.'."""
    return Path(cfg_path).name.split(".")[0]


def backup_folder(data_config) -> Path:
    """The .data `backup` folder: relative to the working directory as Darknet, or to the .data file's folder
    when it exists there and not here. Without the key: `backup/` here (Darknet's default is /backup/ at the
    filesystem root)."""
    folder = Path(resolve_path(data_config.backup or "backup/", data_dir_of(data_config)))
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the backup folder {folder}: {exc.strerror or exc}",
                        data_config.path, data_config.lines.get("backup")) from None
    return folder


@dataclass
class TrainOptions:
    weights: str | None = None
    clear: bool = False
    seed: int | None = None
    max_batches: int | None = None
    checkpoint_every: int = 1000
    validate_each_epoch: bool = False
    workers: int = 2


@dataclass
class History:
    rows: list[dict] = field(default_factory=list)


class TrainingRun:
    """One `darknetpy train` invocation."""

    def __init__(self, cfg: str, data: str, options: TrainOptions, out: TextIO = sys.stdout,
                 err: TextIO = sys.stderr):
        self.cfg = cfg
        self.options = options
        self.out = out
        self.err = err
        self.data_config = read_data_file(data)
        seed = options.seed if options.seed is not None else int.from_bytes(os.urandom(4), "little")
        self.seed = seed
        self.model: Model = load(cfg, options.weights, seed=seed)
        if options.clear:
            self.model.seen = 0
        self.network = self.model.network
        self.net = self.network.net
        self.base = base_name(cfg)
        if options.max_batches is not None:  # the schedule (poly, ...) follows the shorter run too
            self.network.net = self.net = replace(self.net, max_batches=options.max_batches)
        self.max_batches = self.net.max_batches
        self.dataset = ClassificationDataset(self.data_config, self.net, train=True, seed=seed)
        self.backup = backup_folder(self.data_config)  # created only once the data checked out
        self.trainer = self.model.trainer
        self.trainer.rng = np.random.default_rng(seed)
        self.metrics_path = self.backup / "metrics.csv"
        self.chart_path = self.backup / "chart.png"
        self.history: list[dict] = self._read_history()
        self.interactive = hasattr(out, "isatty") and out.isatty()

    # ---- files ------------------------------------------------------------------------------------------------
    def checkpoint(self, name: str) -> Path:
        path = self.backup / name
        write_weights(self.network, path)
        return path

    def _read_history(self) -> list[dict]:
        if not self.metrics_path.exists() or self.model.seen == 0:
            return []
        with open(self.metrics_path, newline="") as fh:
            rows = [dict(r) for r in csv.DictReader(fh)]
        done = self.trainer.current_batch
        return [r for r in rows if int(r["batch"]) <= done]

    def _write_metrics(self) -> None:
        from .chart import write_chart
        keys = ["batch", "epoch", "loss", "avg_loss", "rate", "seconds", "images", "top1"]
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=keys)
        writer.writeheader()
        for row in self.history:
            writer.writerow({k: row.get(k, "") for k in keys})
        with atomic_writer(self.metrics_path, fsync=False) as stream:
            stream.write(text.getvalue().encode())
        write_chart(self.history, self.chart_path, title=f"{self.base}: training")

    # ---- the loop ---------------------------------------------------------------------------------------------
    def header(self) -> None:
        net = self.net
        print(self.base, file=self.err)
        print(f"Learning Rate: {net.learning_rate:g}, Momentum: {net.momentum:g}, Decay: {net.decay:g}",
              file=self.err)
        print(len(self.dataset), file=self.err)
        print(f"{int(net.min_ratio * net.width)} {int(net.max_ratio * net.width)}", file=self.err)

    def run(self) -> Path:
        self.header()
        # a run killed while writing a checkpoint (SIGKILL, the OOM killer) leaves its temporary file behind
        stale = remove_stale_temporaries(self.backup)
        if stale:
            print(f"removed {len(stale)} temporary file{'s' if len(stale) > 1 else ''} a killed run left in "
                  f"{self.backup}", file=self.err)
        n_images = len(self.dataset)
        avg_loss = None
        if self.history:
            avg_loss = float(self.history[-1]["avg_loss"])
        last_epoch = self.model.seen // n_images
        interrupted = False
        previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        start_batch = self.trainer.current_batch
        loader = BatchLoader(self.dataset, seed=self.seed, workers=self.options.workers,
                             start_batch=start_batch)
        try:
            with loader:
                while self.max_batches == 0 or self.trainer.current_batch < self.max_batches:
                    t0 = time.perf_counter()
                    x, y = loader.next_batch()
                    loaded = time.perf_counter() - t0
                    t1 = time.perf_counter()
                    loss = self.model.train_batch(x, y)
                    seconds = time.perf_counter() - t1
                    if not math.isfinite(loss):
                        self._diverged(loss)
                    avg_loss = loss if avg_loss is None else avg_loss * 0.9 + loss * 0.1
                    batch = self.trainer.current_batch
                    seen = self.model.seen
                    row = dict(batch=batch, epoch=f"{seen / n_images:.3f}", loss=f"{loss:f}",
                               avg_loss=f"{avg_loss:f}", rate=f"{self.trainer.current_rate():f}",
                               seconds=f"{seconds:f}", images=seen, top1="")
                    self.history.append(row)
                    self._report(row, loaded)
                    epoch = seen // n_images
                    if epoch > last_epoch:
                        last_epoch = epoch
                        if self.options.validate_each_epoch:
                            row["top1"] = f"{self.validate_quick():f}"
                        self.checkpoint(f"{self.base}_{epoch}.weights")
                        self._write_metrics()
                    if batch % self.options.checkpoint_every == 0:
                        self.checkpoint(f"{self.base}.backup")
                        self._write_metrics()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            signal.signal(signal.SIGTERM, previous)
        if self.interactive:
            print(file=self.out)
        if interrupted:
            path = self.checkpoint(f"{self.base}.backup")
            self._write_metrics()
            print(f"interrupted at batch {self.trainer.current_batch}: saved {path}", file=self.err)
            raise KeyboardInterrupt
        path = self.checkpoint(f"{self.base}.weights")
        self._write_metrics()
        print(f"Saving weights to {path}", file=self.err)
        return path

    def _report(self, row: dict, loaded: float) -> None:
        line = (f"{row['batch']}, {row['epoch']}: {row['loss']}, {row['avg_loss']} avg, {row['rate']} rate, "
                f"{row['seconds']} seconds, {row['images']} images")
        if self.interactive:
            total = self.max_batches or 0
            done = int(row["batch"])
            width = 30
            filled = int(width * done / total) if total else 0
            bar = "#" * filled + "-" * (width - filled)
            print(f"\r[{bar}] {line}  (loaded in {loaded:.3f} s)", end="", file=self.out, flush=True)
        else:
            print(line, file=self.out, flush=True)

    def _diverged(self, loss: float) -> None:
        culprit, detail = "unknown layer", ""
        for layer, output in zip(self.network.layers, self.network.outputs):
            if output is not None and not np.all(np.isfinite(output)):
                culprit = f"layer {layer.index} [{layer.kind}]"
                break
        else:
            # finite outputs can still give an infinite loss, e.g. a softmax that gives a true class the
            # probability 0 (log 0): then the layer whose cost left the float range is the one to name
            for layer in self.network.layers:
                cost = getattr(layer, "cost", None)
                if cost is not None and not math.isfinite(cost):
                    culprit = f"layer {layer.index} [{layer.kind}]"
                    detail = (f" It is the layer's cost: every layer output is finite, but this cost is {cost} "
                              f"(e.g. the log of a probability 0 given to a true class).")
                    break
        # the batch counter already includes the batch that diverged
        raise TrainingDiverged(f"loss became {loss} at iteration {self.trainer.current_batch}; the first "
                               f"non-finite output is in {culprit}.{detail} The last checkpoint in {self.backup} "
                               f"is intact; lower learning_rate or add burn_in", self.cfg)

    def validate_quick(self) -> float:
        if not self.data_config.valid:
            return float("nan")
        result = validate(self.model, self.data_config)
        return result.top1


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


# ---- validation --------------------------------------------------------------------------------------------------
@dataclass
class ValidationResult:
    images: int
    top1: float
    topk: float
    k: int
    confusion: np.ndarray
    labels: list[str]

    def as_dict(self) -> dict:
        return {"images": self.images, "top1": self.top1, "topk": self.topk, "k": self.k,
                "labels": self.labels, "confusion": self.confusion.tolist()}


def validate(model: Model, data_config, batch: int = 64, top: int | None = None) -> ValidationResult:
    """Classifier `valid`: centre crop (spec §8.1), class = first label found in the path, top-1/top-k."""
    net = model.network.net
    dataset = ClassificationDataset(data_config, net, train=False, seed=0)
    k = top or data_config.top or 1
    classes = dataset.classes
    confusion = np.zeros((classes, classes), np.int64)
    hits1 = hitsk = counted = 0
    order = np.arange(len(dataset))
    for start in range(0, len(order), batch):
        idx = order[start:start + batch]
        xs = np.stack([dataset.load(int(i))[0] for i in idx])
        probs = model.network.forward(xs, train=False).reshape(len(idx), -1)
        for row, i in enumerate(idx):
            truth = int(dataset.class_indices[i])
            if truth < 0:
                continue
            ranking = np.argsort(-probs[row], kind="stable")
            counted += 1
            hits1 += int(ranking[0] == truth)
            hitsk += int(truth in ranking[:k])
            if ranking[0] < classes:
                confusion[truth, ranking[0]] += 1
    if counted == 0:
        raise DataError("no image in the valid list has a label in its path", dataset.list_path)
    return ValidationResult(counted, hits1 / counted, hitsk / counted, k, confusion, list(dataset.labels))
