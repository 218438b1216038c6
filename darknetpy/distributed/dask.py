"""Batch prediction on a Dask cluster: `darknetpy predict|detect|segment ... --dask [local|ADDRESS]` and the
Python API `predict_images` / `iter_predictions`.

The images are cut into partitions (about four per worker, so a slow or lost worker delays little); each
partition is one Dask task. A worker process loads the network once and keeps it for every later partition of
the same job (`_cached_model`, keyed by the cfg, weights and names files and their modification times). The
records are exactly the `--json` records of the single-process command (darknetpy/records.py) and arrive as
partitions finish, in completion order. An image that cannot be read becomes `{"image": ..., "error": ...}`;
anything else that fails (the network itself) fails the job with one line. A worker that dies has its
partitions rerun elsewhere by the scheduler (Dask's `allowed-failures`, 3 by default).

Paths: the cfg, weights, names and images are sent as absolute paths of the submitting machine (the records
keep the path as given), so workers on other machines need the same files at the same paths (a shared file
system). Threads: `local_cluster` gives each worker process cores/workers threads; workers you start yourself
take theirs from NUMBA_NUM_THREADS / OPENBLAS_NUM_THREADS in their environment.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TextIO

from ..errors import DarknetError, ImageError
from ..records import (classification_record, detection_record, error_record, segmentation_names,
                       segmentation_record)
from . import require
from .threads import THREAD_VARIABLES, available_cores, thread_share

TASKS = ("classification", "detection", "segmentation")
#: seconds to wait for a scheduler before giving up (a wrong address should not keep the user waiting)
CONNECT_TIMEOUT = 5.0


class ClusterError(DarknetError):
    """The Dask cluster cannot be started or reached."""


class WorkerError(DarknetError):
    """A job-wide failure on a worker (the network cannot be loaded or run); carries the worker's message."""


@dataclass(frozen=True)
class BatchJob:
    """What every partition of one batch needs to know; small and picklable."""
    task: str
    cfg: str
    weights: str
    names: str | None = None
    cwd: str = "."               # the submitter's working directory: relative image paths are relative to it
    top: int = 5                 # classification
    thresh: float = 0.25         # detection
    nms: float = 0.45
    letterbox: bool | None = None


# ---- worker side ----------------------------------------------------------------------------------------------
_MODELS: dict[tuple, tuple[object, threading.Lock]] = {}
_MODELS_LOCK = threading.Lock()


def _stamp(path: str | None) -> tuple[int, int] | None:
    if path is None:
        return None
    stat = os.stat(path)
    return stat.st_mtime_ns, stat.st_size


def _cached_model(job: BatchJob):
    """The job's network in this worker process, loaded on first use; the lock serialises its use (a network's
    buffers serve one inference at a time, and a worker may run several tasks in threads)."""
    key = (job.cfg, job.weights, job.names, _stamp(job.cfg), _stamp(job.weights), _stamp(job.names))
    with _MODELS_LOCK:
        entry = _MODELS.get(key)
        if entry is None:
            from .. import api
            _MODELS.clear()  # one network per worker: a new job's replaces the last one's
            entry = _MODELS[key] = (api.load(job.cfg, job.weights, names=job.names), threading.Lock())
    return entry


def _classify(model, path: str, image: str, job: BatchJob) -> dict:
    start = time.perf_counter()
    predictions = model.predict(path, top=job.top)
    return classification_record(image, time.perf_counter() - start, predictions, model.outputs_probabilities)


def _detect(model, path: str, image: str, job: BatchJob) -> dict:
    start = time.perf_counter()
    detections = model.detect(path, thresh=job.thresh, nms=job.nms, letterbox=job.letterbox)
    return detection_record(image, time.perf_counter() - start, detections)


def _segment(model, path: str, image: str, job: BatchJob) -> dict:
    return segmentation_record(image, model.segment(path), segmentation_names(model, job.names))


_RECORDERS = {"classification": _classify, "detection": _detect, "segmentation": _segment}


def run_partition(job: BatchJob, images: Sequence[str]) -> list[dict]:
    """The records of one partition (runs on a worker)."""
    try:
        model, lock = _cached_model(job)
    except (DarknetError, OSError) as exc:
        raise WorkerError(str(exc)) from None
    record = _RECORDERS[job.task]
    records = []
    with lock:
        for image in images:
            path = os.path.join(job.cwd, image)
            try:
                records.append(record(model, path, image, job))
            except (ImageError, OSError) as exc:
                records.append(error_record(image, exc))
            except DarknetError as exc:  # about the network, not this image: every image would fail alike
                raise WorkerError(str(exc)) from None
    return records


# ---- client side ----------------------------------------------------------------------------------------------
def local_cluster(workers: int | None = None):
    """A LocalCluster on this machine, loopback only, no dashboard: `workers` processes (default: one per core)
    of one Dask thread each, each with its share of the cores for numba and OpenBLAS."""
    distributed = require("distributed", "--dask")
    workers = workers or available_cores()
    share = str(thread_share(workers))
    # without a dashboard the scheduler still serves its small HTTP API, on port 8787 unless told otherwise:
    # a free port instead, so that a second cluster on the machine neither collides nor warns
    return distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                    dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                                    silence_logs=logging.ERROR, env={key: share for key in THREAD_VARIABLES})


def connect(address, timeout: float | None = None):
    """A Client of the scheduler at `address` (or of a LocalCluster object); one ClusterError line if it
    cannot be reached within `timeout` seconds (default CONNECT_TIMEOUT, read at each call)."""
    distributed = require("distributed", "--dask")
    timeout = CONNECT_TIMEOUT if timeout is None else timeout
    try:
        return distributed.Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ClusterError(f"cannot reach a Dask scheduler there within {timeout:g} s ({reason}); start one with "
                           "`dask scheduler` or use --dask local", str(address)) from None


@contextlib.contextmanager
def cluster_client(address: str = "local", workers: int | None = None) -> Iterator:
    """A Client for `--dask ADDRESS`: "local" starts (and at the end stops) a LocalCluster."""
    if address != "local":
        client = connect(address)
        try:
            yield client
        finally:
            client.close()
        return
    try:
        cluster = local_cluster(workers)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"cannot start a local Dask cluster: {exc}", "--dask local") from None
    with cluster, connect(cluster) as client:
        yield client


def task_of(cfg: str) -> str:
    """classification, detection or segmentation, from the cfg's last layer (as `train` decides)."""
    from ..network import load_cfg
    from ..tasks import task_name_for
    return task_name_for(load_cfg(cfg))


def _partitions(images: Sequence[str], workers: int, partition_size: int | None) -> list[list[str]]:
    size = partition_size or max(1, math.ceil(len(images) / (4 * max(1, workers))))
    return [list(images[i:i + size]) for i in range(0, len(images), size)]


def iter_predictions(client, cfg, weights, images: Sequence[str], *, task: str | None = None,
                     names: str | None = None, top: int = 5, thresh: float = 0.25, nms: float = 0.45,
                     letterbox: bool | None = None, partition_size: int | None = None) -> Iterator[dict]:
    """Yield one record per image (the `--json` record of the task's command) as partitions finish.
    `images` are paths (expand folders and list files first, e.g. with darknetpy.cli.expand_images)."""
    task = task or task_of(str(cfg))
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if not images:
        return
    job = BatchJob(task, os.path.abspath(cfg), os.path.abspath(weights),
                   os.path.abspath(names) if names else None, os.getcwd(), top, thresh, nms, letterbox)
    distributed = require("distributed", "--dask")
    workers = len(client.scheduler_info().get("workers", {})) or 1
    batch = uuid.uuid4().hex[:8]
    futures = [client.submit(run_partition, job, chunk, key=f"darknetpy-{task}-{batch}-{i}", pure=False)
               for i, chunk in enumerate(_partitions(images, workers, partition_size))]
    try:
        for future in distributed.as_completed(futures):
            records = future.result()
            future.release()
            yield from records
    finally:
        client.cancel(futures)


def predict_images(client, cfg, weights, images: Sequence[str], **options) -> list[dict]:
    """All the records of `iter_predictions` (completion order)."""
    return list(iter_predictions(client, cfg, weights, images, **options))


def run_batch_command(address: str, workers: int | None, results: str | None, cfg: str, weights: str,
                      images: Sequence[str], task: str, out: TextIO | None = None, **options) -> int:
    """What `--dask` does for predict/detect/segment: JSON lines on stdout as partitions finish, or into
    `results` (written to a temporary file as they come, renamed into place only when every image is done)."""
    from ..fileio import atomic_writer
    out = out if out is not None else sys.stdout
    failed = 0
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(cluster_client(address, workers))
        sink = stack.enter_context(atomic_writer(results)) if results else None
        for record in iter_predictions(client, cfg, weights, images, task=task, **options):
            failed += "error" in record
            line = json.dumps(record) + "\n"
            if sink is None:
                out.write(line)
                out.flush()
            else:
                sink.write(line.encode())
                sink.flush()
    if failed:
        where = f" (error records in {results})" if results else ""
        print(f"warning: {failed} of {len(images)} images could not be read{where}", file=sys.stderr)
    return 0
