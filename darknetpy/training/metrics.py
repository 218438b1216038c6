"""The per-iteration record of a training run: typed rows in memory, metrics.csv on disk.

Rows stay numbers for the whole run; text is made only when metrics.csv is written, and read back only
when a run resumes from a checkpoint (then the rows up to the checkpoint's batch are kept).
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from ..fileio import atomic_writer

#: the columns every task has, in metrics.csv order
BASE_COLUMNS = ("batch", "epoch", "loss", "avg_loss", "rate", "seconds", "images")


@dataclass
class IterationRow:
    """One weight update: Darknet's printed figures, the task's statistics columns, and the validation
    metrics when they were measured after this iteration."""
    batch: int
    epoch: float
    loss: float
    avg_loss: float
    rate: float
    seconds: float
    images: int
    statistics: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


class MetricsLog:
    """The rows of a run with a fixed set of columns: the base ones, then the task's statistic names, then
    its metric names (empty cells where a value was not measured)."""

    def __init__(self, path: str | os.PathLike, statistic_names: tuple[str, ...] = (),
                 metric_names: tuple[str, ...] = ()):
        self.path = Path(path)
        self.statistic_names = tuple(statistic_names)
        self.metric_names = tuple(metric_names)
        self.rows: list[IterationRow] = []

    @property
    def columns(self) -> tuple[str, ...]:
        return BASE_COLUMNS + self.statistic_names + self.metric_names

    def append(self, row: IterationRow) -> None:
        self.rows.append(row)

    def best(self, metric: str) -> float | None:
        values = [row.metrics[metric] for row in self.rows
                  if metric in row.metrics and math.isfinite(row.metrics[metric])]
        return max(values) if values else None

    # ---- file -------------------------------------------------------------------------------------------------
    def write(self) -> None:
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(self.columns)
        for row in self.rows:
            writer.writerow([row.batch, _number(row.epoch), _number(row.loss), _number(row.avg_loss),
                             _number(row.rate), _number(row.seconds), row.images]
                            + [_number(row.statistics.get(name)) for name in self.statistic_names]
                            + [_number(row.metrics.get(name)) for name in self.metric_names])
        with atomic_writer(self.path, fsync=False) as stream:
            stream.write(text.getvalue().encode())

    def resume(self, up_to_batch: int) -> None:
        """Keep the rows of an earlier run up to `up_to_batch` (the resumed checkpoint's batch)."""
        self.rows = [row for row in self.read() if row.batch <= up_to_batch]

    def read(self) -> list[IterationRow]:
        if not self.path.exists():
            return []
        try:
            with open(self.path, newline="") as stream:
                records = list(csv.DictReader(stream))
            return [self._row(record) for record in records]
        except (ValueError, KeyError, TypeError, csv.Error) as exc:
            raise DataError(f"cannot resume its rows ({exc}); move the file away to start a new one",
                            str(self.path)) from None

    def _row(self, record: dict[str, str]) -> IterationRow:
        def optional(names: tuple[str, ...]) -> dict[str, float]:
            return {name: float(record[name]) for name in names if record.get(name) not in (None, "")}
        return IterationRow(batch=int(record["batch"]), epoch=float(record["epoch"]), loss=float(record["loss"]),
                            avg_loss=float(record["avg_loss"]), rate=float(record["rate"]),
                            seconds=float(record["seconds"]), images=int(record["images"]),
                            statistics=optional(self.statistic_names), metrics=optional(self.metric_names))


def _number(value: float | None) -> str:
    """A float for the CSV: enough digits to tell values apart (7 significant), nothing when absent."""
    return "" if value is None else f"{value:.7g}"
