"""Classifier data: list files, labels found by substring (spec §7.2), and a background batch loader
that augments images (spec §7.7) reproducibly from a seed.

Paths. Darknet opens every path relative to the working directory. We do the same, and when an entry
is not there we also look next to the .data file, so a dataset folder can be used from anywhere
(`darknetpy.config.resolve_path`, the one rule for every command).

Labels. Darknet decides an image's classes by searching each label string in the path *as written in
the list file* (C strstr), and so do we — resolved prefixes are never searched, so a folder name on
the way to the data cannot add a label. Substring matching has pitfalls we keep for compatibility:
label "1" matches ".../10/img.png", label "cat" matches "concatenate/...". LabelMatcher warns about
labels contained in other labels; name classes so that no label is part of another or of any folder
name (tools/mnist_to_darknet.py writes `<index>_c<digit>.png` with labels c0..c9 for this reason).

Loading. Darknet draws a full batch (batch·subdivisions paths, with replacement, rand() % N) and loads
it in 32 threads from one shared rand(), so its batches cannot be reproduced. BatchLoader draws each
batch's indices from a Generator seeded by (seed, batch number) and gives every image its own
Generator seeded by (seed, batch number, position), so the result never depends on which worker ran
first or how many workers there are.

Deliberate differences: images are checked for existence up front (Darknet dies on the first bad one
during training); a dataset in which no path matches any label is an error; grey networks
(channels=1) get stb's luma of the augmented RGB image (images.to_channels, the rule every command
uses; Darknet has no working path for them), and grey images are augmented as their one plane, which
gives those pixels with a third of the work; list entries are stripped of surrounding whitespace and
empty lines are skipped (read_list_entries), so an empty label can never match every path as it does
in Darknet.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import ctypes
import functools
import multiprocessing
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from darknetpy.augment import AugmentSettings, augment_image
from darknetpy.config import DataConfig, folder_of, locate_image, read_image_list, read_list_file, resolve_path
from darknetpy.errors import DarknetWarning, DataError, ImageError
from darknetpy.images import CENTER_CROP, network_input

# Darknet's defaults for the classifier commands (spec §7.1).
DEFAULT_CLASSES = 2
DEFAULT_TRAIN_LIST = "data/train.list"
DEFAULT_LABELS = "data/labels.list"

# Individual "too many or too few labels" warnings before we only count them.
_MAX_LABEL_WARNINGS = 20


# ------------------------------------------------------------------------------------------- paths

def data_dir_of(data_config: DataConfig) -> str:
    """The folder of the .data file, which relative list entries may be relative to."""
    return folder_of(data_config.path)


# ------------------------------------------------------------------------------------------ labels

class LabelMatcher:
    """Darknet's classifier labelling by substring (spec §7.2).

    * `truth(path)`: 1 for every label that occurs in `path`, else 0. When the number of matches is not
      exactly one (zero is fine for a single class, as in Darknet) a DarknetWarning is issued, once per
      path — Darknet prints "Too many or too few labels" each time it loads such an image.
    * `class_index(path)`: what validation uses, the first matching label's index, or −1.
    """

    def __init__(self, labels: Sequence[str], source: str | None = None):
        self.labels: tuple[str, ...] = tuple(labels)
        self.source = source
        self._warned: set[str] = set()
        self._suppressed = 0
        if not self.labels:
            raise DataError("no labels", source)
        if any(label == "" for label in self.labels):
            raise DataError("empty label: it would match every path", source)
        self._warn_about_overlaps()

    def _warn_about_overlaps(self) -> None:
        where = f"{self.source}: " if self.source else ""
        for i, inner in enumerate(self.labels):
            for j, outer in enumerate(self.labels):
                if i == j or inner not in outer:
                    continue
                if inner == outer:
                    if i < j:
                        warnings.warn(DarknetWarning(
                            f"{where}label {inner!r} appears twice (classes {i} and {j}): every path "
                            "matching it gets both classes"), stacklevel=3)
                else:
                    warnings.warn(DarknetWarning(
                        f"{where}label {inner!r} (class {i}) is part of label {outer!r} (class {j}): "
                        f"paths containing {outer!r} also match {inner!r}"), stacklevel=3)

    @property
    def classes(self) -> int:
        return len(self.labels)

    def matches(self, path: str) -> list[int]:
        """Indices of every label that is a substring of `path`, in label order."""
        return [index for index, label in enumerate(self.labels) if label in path]

    def truth(self, path: str, where: str | None = None) -> np.ndarray:
        """float32 [classes] training target; `where` (e.g. "train.list:12") goes into the warning."""
        found = self.matches(path)
        truth = np.zeros(self.classes, np.float32)
        truth[found] = 1.0
        count = len(found)
        if count != 1 and not (self.classes == 1 and count == 0):
            self._warn_label_count(path, found, where)
        return truth

    def class_index(self, path: str) -> int:
        """First label index contained in `path`, −1 when none is."""
        for index, label in enumerate(self.labels):
            if label in path:
                return index
        return -1

    def _warn_label_count(self, path: str, found: list[int], where: str | None) -> None:
        if path in self._warned:
            return
        self._warned.add(path)
        if len(self._warned) > _MAX_LABEL_WARNINGS:
            self._suppressed += 1
            return
        prefix = f"{where}: " if where else ""
        if found:
            detail = "labels " + ", ".join(repr(self.labels[i]) for i in found)
        else:
            detail = "no label"
        message = f"{prefix}{path!r} matches {detail} (expected exactly one)"
        if len(self._warned) == _MAX_LABEL_WARNINGS:
            message += "; further such warnings are counted in LabelMatcher.suppressed_warnings"
        warnings.warn(DarknetWarning(message), stacklevel=3)

    @property
    def suppressed_warnings(self) -> int:
        """How many label-count warnings were not shown (beyond the first few)."""
        return self._suppressed


# ------------------------------------------------------------------------------------------ images

def load_validation_image(path: str | os.PathLike, net_w: int, net_h: int, channels: int = 3) -> np.ndarray:
    """What classifier `valid` feeds the network (spec §8.1): the centred square, resized to net_w×net_h."""
    return network_input(path, net_w, net_h, channels, CENTER_CROP).pixels


class ClassificationDataset:
    """The images of a .data file's `train` (or `valid`) list with their labels, and how to load one.

    Raises DataError (naming the file and line) for a missing or empty list, a listed image that exists
    neither relative to the working directory nor to the .data folder, fewer labels than classes, or a
    dataset in which no path contains any label. Images are decoded only when loaded.
    """

    def __init__(self, data_config: DataConfig, net_config: Any, train: bool = True, seed: int | None = None):
        self.train = bool(train)
        self.seed = seed
        self.data_dir = data_dir_of(data_config)
        self.width = int(net_config.width)
        self.height = int(net_config.height)
        self.channels = int(net_config.channels)
        self.batch_size = int(getattr(net_config, "full_batch", 0) or
                              int(net_config.batch) * int(getattr(net_config, "subdivisions", 1)))
        if self.width < 1 or self.height < 1:
            raise DataError(f"the network needs width and height for image data, got "
                            f"{self.width}x{self.height}", getattr(net_config, "path", None))
        if self.channels not in (1, 3):
            raise DataError(f"image data needs channels=1 or 3 in [net], got {self.channels}",
                            getattr(net_config, "path", None))
        self.settings = AugmentSettings.from_net(net_config)
        self._min_ratio = np.float32(net_config.min_ratio)
        self._max_ratio = np.float32(net_config.max_ratio)

        key = "train" if self.train else "valid"
        written_list = getattr(data_config, key) or DEFAULT_TRAIN_LIST
        self.list_path = resolve_path(written_list, self.data_dir)
        numbered = read_image_list(self.list_path, key)
        self.lines = np.array([entry.line for entry in numbered], np.int64)
        self.entries: list[str] = [entry.text for entry in numbered]
        self.paths: list[str] = [locate_image(entry, self.data_dir, self.list_path) for entry in numbered]

        self.classes = data_config.classes if data_config.classes is not None else DEFAULT_CLASSES
        if self.classes < 1:
            raise DataError(f"classes={self.classes}: need at least one class", data_config.path,
                            data_config.lines.get("classes"))
        written_labels = data_config.labels or DEFAULT_LABELS
        self.labels_path = resolve_path(written_labels, self.data_dir)
        labels = read_list_file(self.labels_path)
        if len(labels) < self.classes:
            raise DataError(f"{len(labels)} labels but classes={self.classes} in {data_config.path}",
                            self.labels_path)
        if len(labels) > self.classes:
            # Darknet uses the first `classes` labels: images of the others would train with no class at all
            raise DataError(f"{len(labels)} labels but classes={self.classes} in {data_config.path}: images "
                            f"of label {labels[self.classes]!r} and later would have no class; set classes="
                            f"{len(labels)} or remove the extra labels", self.labels_path)
        self.matcher = LabelMatcher(labels[:self.classes], self.labels_path)
        self.labels = self.matcher.labels

        self.class_indices = np.array([self.matcher.class_index(entry) for entry in self.entries], np.int64)
        if np.all(self.class_indices < 0):
            raise DataError(f"no path in {self.list_path} contains any of the {self.classes} labels "
                            f"({', '.join(repr(label) for label in self.labels[:10])}"
                            f"{', ...' if self.classes > 10 else ''}); Darknet finds classes by "
                            "substring of the image path", self.labels_path)
        if self.train:
            self.truths = np.stack([self.matcher.truth(entry.text, f"{self.list_path}:{entry.line}")
                                    for entry in numbered])
        else:
            self.truths = np.zeros((len(self.entries), self.classes), np.float32)
            valid_rows = np.flatnonzero(self.class_indices >= 0)
            self.truths[valid_rows, self.class_indices[valid_rows]] = 1.0
        # A validation subset may well lack a class; a training set without one is probably a mistake.
        unused = sorted(set(range(self.classes)) - set(np.flatnonzero(self.truths.any(axis=0)).tolist()))
        if self.train and unused:
            names = ", ".join(repr(self.labels[i]) for i in unused[:10])
            warnings.warn(DarknetWarning(f"{self.labels_path}: {len(unused)} label(s) match no path in "
                                         f"{self.list_path}: {names}{', ...' if len(unused) > 10 else ''}; "
                                         f"training goes on, but the network never sees an example of "
                                         f"{'them' if len(unused) > 1 else 'it'}"), stacklevel=2)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def truth_size(self) -> int:
        """Floats per truth row (BatchLoader reads this from any dataset it loads)."""
        return self.classes

    def _settings_for(self, width: int, height: int) -> AugmentSettings:
        # Darknet's multi-scale resize sets min/max = ratio·new width, like the initial load args.
        if (width, height) == (self.settings.width, self.settings.height):
            return self.settings
        fields = dict(self.settings.__dict__)
        fields.update(width=width, height=height, min_size=int(self._min_ratio * np.float32(width)),
                      max_size=int(self._max_ratio * np.float32(width)))
        return AugmentSettings(**fields)

    def draw_indices(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """`count` image indices drawn with replacement (Darknet's rand() % N per image)."""
        return rng.integers(0, len(self.paths), size=count)

    def load(self, index: int, rng: np.random.Generator | None = None, width: int | None = None,
             height: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(image (channels, h, w) float32, truth [classes] float32) for image `index`.

        Training data is augmented (spec §7.7) with `rng`; validation data is centre-cropped (spec §8.1).
        width/height override the network size (multi-scale training). ImageError names the list line too.
        """
        width = self.width if width is None else int(width)
        height = self.height if height is None else int(height)
        if self.train:
            if rng is None:
                raise ValueError("training images are augmented: pass a numpy Generator")
            settings = self._settings_for(width, height)
            fit = functools.partial(augment_image, rng=rng, settings=settings)
        else:
            fit = CENTER_CROP
        try:
            pixels = network_input(self.paths[index], width, height, self.channels, fit).pixels
        except ImageError as exc:
            where = f"{self.list_path}:{int(self.lines[index])}"
            raise ImageError(f"{exc.message} (listed at {where})", path=exc.path) from None
        return pixels, self.truths[index]


# ------------------------------------------------------------------------------------------ loader

def _batch_seed(seed: int, batch_number: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(batch_number, 0)))


def _image_seed(seed: int, batch_number: int, position: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(batch_number, 1, position)))


def _load_chunk(dataset: ClassificationDataset, seed: int, batch_number: int, positions: np.ndarray,
                indices: np.ndarray, width: int, height: int, images: np.ndarray, truths: np.ndarray) -> None:
    for offset, (position, index) in enumerate(zip(positions.tolist(), indices)):
        rng = _image_seed(seed, batch_number, position) if dataset.train else None
        image, truth = dataset.load(int(index), rng, width, height)
        images[offset] = image
        truths[offset] = truth


_PROCESS_DATASET: ClassificationDataset | None = None


def _process_init(dataset: ClassificationDataset, trainer_pid: int) -> None:
    global _PROCESS_DATASET
    _PROCESS_DATASET = dataset
    # Ctrl-C on a terminal reaches the whole process group; the trainer decides what happens (it saves a
    # checkpoint and closes the pool), a worker dying of KeyboardInterrupt would only print a traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with(trainer_pid)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with(trainer_pid: int) -> None:
    """End this worker when the trainer ends, however it ends. A SIGKILLed trainer (the OOM killer) cannot
    shut its pool down, and its workers, reparented to init, would wait for work forever. On Linux the
    kernel sends SIGKILL when the parent goes (prctl PR_SET_PDEATHSIG; the parent is the thread that started
    the worker, the trainer's thread that created the BatchLoader); elsewhere a daemon thread watches the
    parent pid. A trainer that died before this ran is caught by the parent pid check."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
        if armed:
            if os.getppid() != trainer_pid:
                os._exit(1)
            return
    threading.Thread(target=_watch_parent, args=(trainer_pid,), name="darknetpy-parent-watch", daemon=True).start()


def _watch_parent(trainer_pid: int, interval: float = 0.5) -> None:
    while os.getppid() == trainer_pid:
        time.sleep(interval)
    os._exit(1)


def _no_op() -> None:
    return None


def _start_worker_pool(workers: int, dataset: ClassificationDataset) -> cf.ProcessPoolExecutor:
    """A spawned pool whose processes all start at once with SIGINT ignored, a disposition they keep through
    exec: a Ctrl-C during their start-up (imports take ~1 s) must not kill them with a traceback either.
    The trainer's own handler is back as soon as the processes exist."""
    executor = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                      initializer=_process_init, initargs=(dataset, os.getpid()))
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main_thread else None
    try:
        for _ in range(workers):  # each submit starts one more process while none is idle
            executor.submit(_no_op)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous)
    return executor


def _process_chunk(seed: int, batch_number: int, positions: np.ndarray, indices: np.ndarray, width: int,
                   height: int) -> tuple[np.ndarray, np.ndarray]:
    dataset = _PROCESS_DATASET
    assert dataset is not None
    images = np.empty((len(indices), dataset.channels, height, width), np.float32)
    truths = np.empty((len(indices), dataset.truth_size), np.float32)
    _load_chunk(dataset, seed, batch_number, positions, indices, width, height, images, truths)
    return images, truths


class _PendingBatch:
    def __init__(self, number: int, indices: np.ndarray, images: np.ndarray, truths: np.ndarray,
                 chunks: list[tuple[int, int, cf.Future]]):
        self.number = number
        self.indices = indices
        self.images = images
        self.truths = truths
        self.chunks = chunks


class BatchLoader:
    """Background loading of augmented batches: `(X float32 [n, C, H, W], Y float32 [n, classes])`.

    n defaults to the network's batch·subdivisions (one weight update). Batch k depends only on
    (seed, k, size), never on worker timing or worker count. Up to `prefetch` batches are loaded ahead;
    `resize` (multi-scale training) discards them and reloads at the new size. Use as a context manager
    or call close().

    `backend="process"` (default) loads in `workers` spawned processes. Measured on 2 busy cores with
    28×28 MNIST PNGs and full augmentation: one image costs ≈0.45 ms of CPU, almost all of it Python
    (Pillow's PNG open, array checks) holding the GIL, so threads do not scale (1 thread ≈ 86 ms per
    128-image batch, 2 threads no better) while 2 processes reached ≈ 31 ms; threads would also take
    the GIL away from the training loop between its kernel calls. Spawned workers re-import the main
    module, so scripts need the usual `if __name__ == "__main__":` guard. `backend="thread"` starts
    instantly (no process start-up of ~2 s), which suits tests and tiny datasets.

    `rows` (positions in the batch, e.g. an MPI rank's passes) loads only those rows of every batch: the
    indices are still drawn for the whole batch and each image keeps the generator of its position, so the
    rows are exactly those rows of the whole batch.
    """

    def __init__(self, dataset: ClassificationDataset, batch_size: int | None = None, seed: int | None = None,
                 workers: int = 2, prefetch: int = 2, backend: str = "process", start_batch: int = 0,
                 rows: Sequence[int] | None = None):
        if backend not in ("thread", "process"):
            raise ValueError(f"backend must be 'thread' or 'process', got {backend!r}")
        self.dataset = dataset
        self.batch_size = int(batch_size if batch_size is not None else dataset.batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        self.rows = np.arange(self.batch_size) if rows is None else np.asarray(rows, np.int64)
        if self.rows.size == 0 or self.rows.min() < 0 or self.rows.max() >= self.batch_size:
            raise ValueError(f"rows must be positions in a batch of {self.batch_size}")
        if seed is None:
            seed = dataset.seed
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (2 ** 63))
        self.seed = int(seed)
        self.workers = max(1, int(workers))
        self.prefetch = max(1, int(prefetch))
        self.backend = backend
        self.width = dataset.width
        self.height = dataset.height
        # Number of the next batch handed out; resuming at the trainer's update count continues the
        # same sequence of batches an uninterrupted run would have seen.
        self.batch_number = int(start_batch)
        self._next_number = self.batch_number
        self._pending: collections.deque[_PendingBatch] = collections.deque()
        if backend == "thread":
            self._executor: cf.Executor = cf.ThreadPoolExecutor(self.workers, thread_name_prefix="darknetpy-data")
        else:
            self._executor = _start_worker_pool(self.workers, dataset)
        self._closed = False
        self._fill()

    # -- scheduling -------------------------------------------------------------------------------------

    def _submit(self, number: int) -> _PendingBatch:
        indices = self.dataset.draw_indices(_batch_seed(self.seed, number), self.batch_size)[self.rows]
        count = len(self.rows)
        images = np.empty((count, self.dataset.channels, self.height, self.width), np.float32)
        truths = np.empty((count, self.dataset.truth_size), np.float32)
        chunk_count = min(count, self.workers * 2)
        bounds = np.linspace(0, count, chunk_count + 1).astype(int)
        chunks = []
        for start, stop in zip(bounds[:-1], bounds[1:]):
            if stop <= start:
                continue
            if self.backend == "thread":
                future = self._executor.submit(_load_chunk, self.dataset, self.seed, number,
                                               self.rows[start:stop], indices[start:stop], self.width, self.height,
                                               images[start:stop], truths[start:stop])
            else:
                future = self._executor.submit(_process_chunk, self.seed, number, self.rows[start:stop],
                                               indices[start:stop], self.width, self.height)
            chunks.append((int(start), int(stop), future))
        return _PendingBatch(number, indices, images, truths, chunks)

    def _fill(self) -> None:
        while len(self._pending) < self.prefetch:
            self._pending.append(self._submit(self._next_number))
            self._next_number += 1

    def _discard_pending(self) -> None:
        for pending in self._pending:
            for _, _, future in pending.chunks:
                future.cancel()
        for pending in self._pending:  # a thread may still be writing into a discarded batch
            cf.wait([future for _, _, future in pending.chunks])
        self._pending.clear()

    # -- public -----------------------------------------------------------------------------------------

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """The next batch (X, Y); errors raised while loading (ImageError, ...) surface here."""
        if self._closed:
            raise RuntimeError("BatchLoader is closed")
        pending = self._pending.popleft()
        try:
            for start, stop, future in pending.chunks:
                result = future.result()
                if result is not None:
                    pending.images[start:stop], pending.truths[start:stop] = result
        except BaseException:
            self._pending.appendleft(pending)
            raise
        self.batch_number += 1
        self._fill()
        return pending.images, pending.truths

    def resize(self, width: int, height: int) -> None:
        """Load later batches at width×height (multi-scale training); prefetched batches are reloaded."""
        if self._closed:
            raise RuntimeError("BatchLoader is closed")
        if (int(width), int(height)) == (self.width, self.height):
            return
        if width < 1 or height < 1:
            raise ValueError(f"size must be positive, got {width}x{height}")
        self._discard_pending()
        self.width, self.height = int(width), int(height)
        self._next_number = self.batch_number
        self._fill()

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        return self.next_batch()

    def close(self) -> None:
        """Stop loading; waits for images already being decoded. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for pending in self._pending:
            for _, _, future in pending.chunks:
                future.cancel()
        self._pending.clear()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> BatchLoader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
