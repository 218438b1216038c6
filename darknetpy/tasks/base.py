"""What a training task is: everything `darknetpy train` and `darknetpy valid` need to know that depends on
what the network predicts. The loop (darknetpy.training.loop) owns the rest and never looks at the head.

A task supplies
  * `dataset(train, seed)`: the images and truth of the .data file's `train` (or `valid`) list, as an object
    following the `TrainingDataset` protocol below, which darknetpy.data.BatchLoader loads from;
  * `check_data()` and `check_truth(dataset)`: located errors before anything is trained, from the .data
    file alone (e.g. a classifier's class count) and once the dataset is built (by default: the truth
    row length against every loss layer's `truth_size()`);
  * `evaluate()`: the validation metric, an `Evaluation` (named floats and the line to print);
  * optionally: the banner and the per-iteration line Darknet prints for this kind of training
    (`banner`, `progress_line`), per-iteration statistics columns from the loss layers'
    `statistics()` (`iteration_statistics`), a hook run before every iteration (`before_iteration`, e.g.
    a detector's multi-scale resize), when to validate (`validation_due`) and which checkpoints to write
    (`checkpoint_policy`).

Truth flow: `dataset.load(i, ...)` returns one image and its truth row (`truth_size` float32 values: a
classifier's one-hot row, a detector's 90 x (x, y, w, h, class) boxes, a segmenter's per-pixel class
indices); BatchLoader stacks them into (batch·subdivisions, truth_size); the optimiser's Trainer cuts one
slice per subdivision pass and the network hands that slice to every LossLayer (`set_truth`) before the
training forward pass. After each pass the Trainer reads every loss layer's `statistics()` and averages
them over the passes of the iteration (`Trainer.last_statistics`, by layer index); `iteration_statistics`
turns those into the row's columns.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from ..layers.base import LossLayer
from ..training.checkpoints import CheckpointPolicy, EpochCheckpoints
from ..training.metrics import IterationRow

if TYPE_CHECKING:
    from ..api import Model
    from ..training.loop import IterationContext


class TrainingDataset(Protocol):
    """What BatchLoader (darknetpy.data) loads batches from, in worker processes (so it must pickle).

    `load` must depend only on its arguments: the loader gives every image its own Generator seeded by
    (seed, batch number, position), which makes a run reproducible whatever the worker count. `rng` is None
    for validation data (no augmentation); width/height are the current network size (multi-scale).
    """
    train: bool
    seed: int | None
    width: int
    height: int
    channels: int
    batch_size: int      # images per weight update (the loop asks for the network's batch·subdivisions)
    truth_size: int      # floats per truth row (what LossLayer.set_truth receives per image)

    def __len__(self) -> int: ...

    def draw_indices(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """`count` image indices for one batch (Darknet draws with replacement)."""

    def load(self, index: int, rng: np.random.Generator | None, width: int,
             height: int) -> tuple[np.ndarray, np.ndarray]:
        """(image float32 (channels, height, width) in [0, 1], truth row float32 (truth_size,))."""


class Evaluation:
    """A task's validation result: named metrics (floats, larger is better for the task's main metric),
    the line to print, and a JSON-able dict for `valid --json`."""
    images: int

    def metrics(self) -> dict[str, float]:
        raise NotImplementedError

    def line(self) -> str:
        raise NotImplementedError

    def report(self) -> str:
        """What `darknetpy valid` prints: the line, or more (a segmenter's per-class IoU lines)."""
        return self.line()

    def as_dict(self) -> dict:
        return {"images": self.images, **self.metrics()}


class Task:
    """Base class; one subclass per kind of head. Instances live for one `train` or `valid` command."""
    #: the name printed as `task: <name> (...)` and used by darknetpy.tasks.TASK_MODULES
    name: ClassVar[str] = ""
    #: the keys of `evaluate().metrics()`, the first being the one the best-weights rule follows
    metric_names: ClassVar[tuple[str, ...]] = ()
    #: per-iteration columns `iteration_statistics` fills (e.g. a detector's avg_iou)
    statistic_names: ClassVar[tuple[str, ...]] = ()
    #: Darknet's classifier trains without end when max_batches=0; its detector does not train at all
    zero_max_batches_runs_forever: ClassVar[bool] = True

    def __init__(self, model: Model, data_config: DataConfig):
        self.model = model
        self.network = model.network
        self.data_config = data_config

    # ---- identity ---------------------------------------------------------------------------------------------
    @property
    def head(self):
        """The layer whose kind decided the task: the network's output layer."""
        return self.network.output_layer

    def describe(self) -> str:
        head = self.head
        return f"{self.name} (last layer {head.index} [{head.kind}])"

    @property
    def main_metric(self) -> str | None:
        return self.metric_names[0] if self.metric_names else None

    # ---- data -------------------------------------------------------------------------------------------------
    def dataset(self, train: bool, seed: int | None = None) -> TrainingDataset:
        raise NotImplementedError

    def check_data(self) -> None:
        """Checks from the network and the .data file alone, run before any list or image is read: by
        default, that the network has a loss layer at all."""
        if not self.network.loss_layers:
            head = self.head
            raise head.config.error(f"the network has no loss layer: its last layer {head.index} "
                                    f"[{head.kind}] gives no cost to train")

    def check_truth(self, dataset: TrainingDataset) -> None:
        """Refuse (located error) truth rows that the loss layers cannot take, before training starts."""
        for layer in self.network.loss_layers:
            if layer.truth_size() != dataset.truth_size:
                raise DataError(f"the data gives truth rows of {dataset.truth_size} values, but layer "
                                f"{layer.index} [{layer.kind}] ({where(layer)}) takes "
                                f"{layer.truth_size()}", self.data_config.path)

    # ---- what the loop prints and records -------------------------------------------------------------------
    def banner(self, dataset: TrainingDataset, base: str) -> list[str]:
        """Darknet's classifier-train header (spec §6.4): base name, rates, image count, crop bounds."""
        net = self.network.net
        return [base,
                f"Learning Rate: {net.learning_rate:g}, Momentum: {net.momentum:g}, Decay: {net.decay:g}",
                str(len(dataset)),
                f"{int(net.min_ratio * net.width)} {int(net.max_ratio * net.width)}"]

    def progress_line(self, row: IterationRow) -> str:
        """Darknet's classifier per-iteration line (spec §6.4)."""
        return (f"{row.batch}, {row.epoch:.3f}: {row.loss:f}, {row.avg_loss:f} avg, {row.rate:f} rate, "
                f"{row.seconds:f} seconds, {row.images} images")

    def iteration_statistics(self, per_layer: dict[int, dict[str, float]]) -> dict[str, float]:
        """The row's statistics columns from the loss layers' statistics (already averaged over the passes):
        by default each declared name averaged over the layers that report it."""
        columns = {}
        for name in self.statistic_names:
            values = [stats[name] for stats in per_layer.values() if name in stats]
            if values:
                columns[name] = float(sum(values) / len(values))
        return columns

    def before_iteration(self, context: IterationContext) -> None:
        """Hook run before each iteration (a detector's random resize every 10 batches goes here)."""

    def validation_due(self, batch: int, new_epoch: bool) -> bool:
        """Whether `train --validate` measures the metric after this iteration: after every epoch."""
        return new_epoch

    def checkpoint_policy(self, base: str, backup_every: int | None) -> CheckpointPolicy:
        return EpochCheckpoints(base, backup_every)

    # ---- validation -------------------------------------------------------------------------------------------
    def evaluate(self, top: int | None = None, progress=None) -> Evaluation:
        """The metric on the .data `valid` list (`top`: the k of a classifier's top-k; others ignore it).
        `progress(done, total)`, when given, is called as images are measured (darknetpy.progress)."""
        raise NotImplementedError


def where(layer: LossLayer) -> str:
    """`cfg:line` of a layer's section, for messages about another file."""
    origin = layer.config.origin
    return f"{origin.path}:{origin.line}" if origin is not None else f"layer {layer.index}"
