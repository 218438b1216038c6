#!/usr/bin/env python3
"""darknetpy speed benchmark: darknetpy and its anchors measured side by side in one run.

README-bench
============
Run from the repository root (takes a few minutes on 2 cores):

    python tools/bench.py                                  # every case, 1 and 2 threads
    python tools/bench.py --cases sgemm,yolov3-tiny --threads 1 --repeat 5 --json bench.json

Cases (`--cases`, comma list; default all):
  sgemm            BLAS calibration: float32 (512x2304) @ (2304x1024), numpy (the BLAS darknetpy uses) vs
                   torch.mm. numpy's GFLOP/s is the "peak" that the %-of-peak column refers to.
  yolov3-tiny      416x416, batch 1 inference, seeded weights (shared/tools/gen_weights.py --seed 1).
  yolo-fastest-xl  320x320, batch 1 inference, the real yolo-fastest-1.1-xl weights.
  darknet19        224x224 (width/height rewritten in a temp copy of the cfg), seeded weights.
  yolov4-tiny      416x416 (shared/cfg-alexeyab), darknetpy's seeded initialisation written as .weights.
  vgg-16           224x224, cfg/vgg-16.cfg (13 convolutions + 3 connected), seeded weights; its GFLOP/s and
                   %peak columns are its share of the numpy sgemm peak.
  digits-yolo      320x320, the bundled detector cfg/digits-yolo.cfg, seeded weights.
  digits-seg       256x256 (the cfg's own size), the bundled segmenter cfg/digits-seg.cfg, seeded weights.
                   The inference cases run darknetpy's inference pass (`Network.infer`, what detect,
                   predict and segment use: layers share buffers, only the results are kept) at each of
                   `--batches` (default 1 and 8; "NAME b8" rows) and are timed against OpenCV DNN (OpenCV backend, CPU target), against PyTorch running the same
                   cfg and .weights through the small Darknet->torch builder in tools/bench_reference.py (BN
                   folded into the convolutions, yolo layers apply their logistic), and against onnxruntime
                   (CPU provider, intra_op_num_threads = the thread count, sequential, all graph
                   optimisations, idle workers not spinning) running that torch module exported with torch.onnx.export (opset 17) at the
                   batch size measured, or, where the builder lacks a layer, `darknetpy export`'s graph (the
                   anchor column says which).
  detect-scene     End to end on one 320x320 grey digit scene (tools/make_digit_scenes.py from shared MNIST), held
                   decoded in memory: `Model.detect` of the bundled digits-yolo (its shipped weights when
                   weights/ has them, else seeded) against OpenCV DNN doing the same job (blobFromImage,
                   forward, decode at 0.25, NMSBoxes at 0.45).
  segment-scene    The same scene through `Model.segment` of the bundled digits-seg (the class of every pixel at
                   320x320) against OpenCV DNN: blobFromImage to 256x256, forward, the class probabilities
                   resized to 320x320 (cv2.resize, bilinear), argmax.
  train            One Darknet train_network call (forward + backward + SGD update) of a small MNIST-shaped
                   classifier on a batch of 128 28x28x1 images, vs the equivalent torch nn.Sequential doing
                   forward + cross-entropy + backward + SGD(momentum 0.9, weight_decay) step.
  train-yolo       One detector training step of yolov3-tiny (416x416, batch 8, seeded weights, three fixed boxes
                   per image): Model.train_batch vs the same cfg as a trainable torch module with Darknet's [yolo]
                   loss (tools/bench_reference.py: its gradient is Darknet's delta, tests/test_bench_yolo_loss.py)
                   and SGD set to Darknet's update. Rows: wall time ("images/s" = 8000 / ms), process CPU time,
                   and the peak RSS of a fresh process training 2 steps with one engine alone.
  train-order      Training darknet.cfg (224x224, batch 16, `ORDER_STEPS` steps after 2 untimed) in a fresh
                   process that imports torch before darknetpy, vs a fresh process importing darknetpy first
                   (ratio above 1: import order costs speed; compare the 1- and 2-thread tables too).
  infer-order      yolo-fastest-1.1-xl inference (320x320, batch 1, `ORDER_PASSES` passes after 3 untimed) in fresh
                   processes that import numpy, or torch, before darknetpy, vs one importing darknetpy first; the
                   three take turns `ORDER_ROUNDS` times and each row is the median of their medians (numpy first,
                   OpenBLAS has read its settings before darknetpy could set them: see layers/conv_engines.py).
  startup          Wall time of `python -m darknetpy predict cfg/mnist.cfg W IMG` in a fresh process, once with
                   an empty Numba cache ("startup cold": a fresh NUMBA_CACHE_DIR, every kernel compiled) and
                   then with a warm one, vs a fresh process that classifies the same image with OpenCV DNN.
  startup-detect   The same for `darknetpy detect` with yolo-fastest-1.1 (320x320) on shared/images/dog.jpg, vs
                   an OpenCV script that detects (forward, threshold, NMS) on the same image.
  rss              Peak RSS of a fresh process that loads yolov3-tiny and runs one 416x416 forward: darknetpy,
                   OpenCV DNN, and a bare `python -c "import numpy"` baseline (os.wait4 rusage of that child).

Method: every case runs in its own child process started with OPENBLAS/OMP/MKL/NUMBA_NUM_THREADS set to the
thread count before numpy is imported (plus numba.set_num_threads, cv2.setNumThreads, torch.set_num_threads,
and threadpoolctl when installed), so thread pools never leak from one setting into another. Inside a case
the engines take turns, one call each per round, the order rotating every round (darknetpy, OpenCV, torch;
then OpenCV, torch, darknetpy; ...) so machine noise lands on all of them; `--warmup` rounds are run
first and discarded (they include Numba compilation / cache loading); then up to `--repeat` timed rounds,
stopping early once `--budget` seconds of timed rounds have passed (the `runs` column shows how many
rounds were timed). Reported times are medians.

Columns: ratio = darknetpy ms / anchor ms (above 1: darknetpy is slower). GFLOP/s uses darknetpy's own
count (Network.flops(), 2*MACs of conv/connected layers per image); for `train` the work is taken as
3x the forward FLOPs x batch (forward, input-gradient and weight-gradient products). "% peak" compares that
with the numpy sgemm rate measured at the same thread count. `check` is the largest difference between
darknetpy's and the anchor's outputs relative to the largest output magnitude, where both produce the same
tensor (a sanity check that both engines did the same work). `busy` is the share of all CPUs that *other*
processes used while the case ran (from /proc/stat minus this benchmark's own CPU time): on a shared 2-core
machine anything above ~10% inflates the times, most of all at 2 threads, where spinning thread pools
(GNU OpenMP under Numba's default `omp` layer, OpenBLAS, torch) lose their cores; rerun on a quiet machine.
An anchor that is not installed or cannot run the model shows "n/a" with the reason; a case that fails in
darknetpy shows the error and the run goes on.

Distributed section (`--distributed`, needs the distributed extra; runs instead of the cases above):
  training         One training step (Darknet train_network: forward + backward + update) of cfg/mnist.cfg with
                   batch 128 in 2 subdivisions on random data: 1 process x 2 threads vs `mpiexec -n 2` x 1
                   thread each (darknetpy/distributed/mpi.py, loopback only), images/s and the share of the step
                   spent in the one Allreduce per update (waiting for the slower rank included).
  batch detection  `darknetpy detect cfg/digits-yolo.cfg` (seeded weights) on `--images` 320x320 grey images:
                   the plain CLI (`--json`, 2 threads) vs `--dask local --workers 1` (2 threads) and
                   `--workers 2` (1 thread each). Each set-up runs on 1 image and on all of them; start-up =
                   the 1-image wall time, per image = (all - 1 image) / (images - 1).

Experiments: `--env NAME=VALUE` (repeatable) adds environment to every measured process, e.g.
`--env NUMBA_THREADING_LAYER=workqueue` or `--env OMP_WAIT_POLICY=passive` to compare threading set-ups;
`--json FILE` keeps every number (plus machine, versions and settings) for later comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_reference beside this file, also when loaded by path
from bench_reference import build_torch_darknet, read_cfg_sections  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared"
ALL_CASES = ["sgemm", "yolov3-tiny", "yolo-fastest-xl", "darknet19", "yolov4-tiny", "vgg-16", "digits-yolo",
             "digits-seg", "detect-scene", "segment-scene", "maxpool", "train", "train-yolo", "train-order",
             "infer-order", "startup", "startup-detect", "rss"]
# the maxpool case: (channels, side) maps x (size, stride) windows, batch 1: yolov3-tiny's 2x2 and SPP's
# larger windows (README: ns per output = ms / outputs)
MAXPOOL_MAPS = ((64, 104), (256, 26))
MAXPOOL_WINDOWS = ((2, 2), (3, 2), (5, 1), (9, 1), (13, 1))
THREAD_ENV_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
                   "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
SGEMM_SHAPE = (512, 2304, 1024)  # (M, K, N): a 3x3 conv with 256 -> 512 channels on a 32x32 map
TRAIN_BATCH = 128
ORDER_BATCH, ORDER_SIZE, ORDER_STEPS = 16, 224, 5   # the train-order case: darknet.cfg at 224x224, batch 16
ORDER_PASSES, ORDER_ROUNDS = 60, 5                  # the infer-order case
CHILD_TIMEOUT_S = 900
BUSY_WARNING = 0.10   # other processes using more than this share of all CPUs during a case earn a note

TRAIN_CFG = """\
[net]
batch=128
subdivisions=1
height=28
width=28
channels=1
learning_rate=0.01
momentum=0.9
decay=0.0005
policy=constant
max_batches=1000000

[convolutional]
batch_normalize=1
filters=32
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=64
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=128
size=3
stride=1
pad=1
activation=leaky

[avgpool]

[connected]
output=10
activation=linear

[softmax]
"""


# ---- results -----------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One line of the table: darknetpy against one anchor in one case at one thread count."""
    case: str
    anchor: str
    darknetpy_ms: float | None = None
    anchor_ms: float | None = None
    runs: int = 0
    flops: float | None = None          # darknetpy's work per timed call
    unit: str = "ms"                    # "MiB" for the rss case
    check: float | None = None          # relative max output difference, when comparable
    darknetpy_error: str | None = None
    anchor_error: str | None = None

    @property
    def ratio(self) -> float | None:
        if self.darknetpy_ms is None or not self.anchor_ms:
            return None
        return self.darknetpy_ms / self.anchor_ms

    @property
    def gflops(self) -> float | None:
        if self.flops is None or not self.darknetpy_ms or self.unit != "ms":
            return None
        return self.flops / (self.darknetpy_ms * 1e-3) / 1e9


@dataclass
class CaseResult:
    case: str
    threads: int
    rows: list[Row] = field(default_factory=list)
    error: str | None = None            # the whole case could not run
    seconds: float = 0.0
    threads_info: dict = field(default_factory=dict)
    others_busy: float | None = None    # share of the machine's CPU time other processes used meanwhile


class MissingAsset(Exception):
    """A file a case needs could not be found or made; the message already says why."""


def require(assets: dict, case: str, *keys: str) -> list[str]:
    if any(not assets.get(key) for key in keys):
        raise MissingAsset(assets.get("missing", {}).get(case, f"files for {case} are missing"))
    return [assets[key] for key in keys]


def describe_error(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, MissingAsset) else f"{type(exc).__name__}: {exc}"
    text = text.strip().replace("\n", " ")
    return text if len(text) <= 160 else text[:157] + "..."


# ---- timing ------------------------------------------------------------------------------------------------
def time_alternating(runners: dict[str, Callable[[], object]], warmup: int, repeat: int,
                     budget_s: float) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Time every runner once per round, rotating the order each round so no engine always runs right after
    the same neighbour. Returns per-runner samples in seconds and the errors of runners that failed (a
    failing runner is dropped, the others go on)."""
    names = list(runners)
    samples: dict[str, list[float]] = {n: [] for n in names}
    errors: dict[str, str] = {}

    def one_round(index: int, record: bool) -> None:
        live = [n for n in names if n not in errors]
        if not live:
            return
        shift = index % len(live)
        for name in live[shift:] + live[:shift]:
            try:
                start = time.perf_counter()
                runners[name]()
                elapsed = time.perf_counter() - start
            except Exception as exc:  # one engine failing must not stop the others
                errors[name] = describe_error(exc)
                continue
            if record:
                samples[name].append(elapsed)

    for i in range(warmup):
        one_round(i, record=False)
    started = time.perf_counter()
    for i in range(repeat):
        one_round(warmup + i, record=True)
        if time.perf_counter() - started > budget_s and i + 1 >= min(3, repeat):
            break
    return samples, errors


def median_ms(values: list[float]) -> float | None:
    return statistics.median(values) * 1e3 if values else None


# ---- thread setup (child) ----------------------------------------------------------------------------------
def configure_threads(threads: int) -> dict[str, object]:
    """Called in the child after the environment already pinned the pools; returns what is in force."""
    info: dict[str, object] = {"threads": threads}
    try:
        # darknetpy sets its thread wait policy (kernels/threads.py) before Numba starts threads; the
        # policy is process-wide, so the anchors in this process run under it too.
        import darknetpy  # noqa: F401
        info["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY")
    except Exception as exc:
        info["darknetpy"] = describe_error(exc)
    try:
        import numba
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        info["numba"] = numba.get_num_threads()
    except Exception as exc:  # numba missing only matters to darknetpy, which will report it itself
        info["numba"] = describe_error(exc)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(threads)
        info["threadpoolctl"] = True
    except ImportError:
        info["threadpoolctl"] = False
    return info


def set_anchor_threads(threads: int, *, cv2=None, torch=None) -> None:
    if cv2 is not None:
        cv2.setNumThreads(threads)
    if torch is not None:
        torch.set_num_threads(threads)


def import_optional(name: str):
    """(module, None) or (None, reason): an anchor that is missing becomes an n/a row, never a fake one."""
    try:
        return __import__(name), None
    except Exception as exc:
        return None, f"not installed ({describe_error(exc)})"


def relative_difference(a, b) -> float | None:
    import numpy as np
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.size != b.size or a.size == 0:
        return None
    scale = max(float(np.max(np.abs(a))), 1e-12)
    return float(np.max(np.abs(a - b))) / scale


# ---- cases (child side) ------------------------------------------------------------------------------------
def case_sgemm(assets: dict, threads: int, opts: argparse.Namespace) -> list[Row]:
    import numpy as np
    m, k, n = SGEMM_SHAPE
    rng = np.random.default_rng(1)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    c = np.empty((m, n), dtype=np.float32)
    flops = 2.0 * m * k * n
    runners: dict[str, Callable[[], object]] = {"numpy": lambda: np.matmul(a, b, out=c)}
    torch, why = import_optional("torch")
    if torch is not None:
        set_anchor_threads(threads, torch=torch)
        ta, tb, tc = torch.from_numpy(a), torch.from_numpy(b), torch.empty((m, n), dtype=torch.float32)
        runners["torch"] = lambda: torch.mm(ta, tb, out=tc)
    samples, errors = time_alternating(runners, opts.warmup, opts.repeat, opts.budget)
    row = Row("sgemm (numpy)", "torch.mm" if torch is not None else "torch", median_ms(samples["numpy"]),
              median_ms(samples.get("torch", [])), len(samples["numpy"]), flops,
              darknetpy_error=errors.get("numpy"), anchor_error=errors.get("torch", why))
    if torch is not None and "torch" not in errors:
        row.check = relative_difference(c, tc.numpy())
    return [row]


def case_maxpool(assets: dict, threads: int, opts: argparse.Namespace) -> list[Row]:
    """Max pooling per window and map against torch's max_pool2d: inference (values only) and, as training
    needs them, with the winners (torch: return_indices=True). Darknet's padding is size - 1 with the
    window origin at -(size - 1) // 2, which for these maps is torch's symmetric padding of (size - 1) // 2."""
    import numpy as np
    from darknetpy.kernels import pooling
    torch, why = import_optional("torch")
    if torch is not None:
        set_anchor_threads(threads, torch=torch)
    rows: list[Row] = []
    rng = np.random.default_rng(3)
    for channels, side in MAXPOOL_MAPS:
        x = rng.standard_normal((1, channels, side, side), dtype=np.float32)
        tx = torch.from_numpy(x) if torch is not None else None
        for size, stride in MAXPOOL_WINDOWS:
            padding = size - 1
            offset = int(-padding / 2)
            out_side = (side + padding - size) // stride + 1
            out = np.empty((1, channels, out_side, out_side), np.float32)
            winners = np.empty(out.shape, np.int32)
            for train in (False, True):
                argmax = winners if train else None
                runners: dict[str, Callable[[], object]] = {
                    "darknetpy": lambda argmax=argmax: pooling.maxpool_forward(x, size, stride, stride, offset, out,
                                                                              argmax)}
                if torch is not None:
                    runners["torch"] = (lambda train=train: torch.nn.functional.max_pool2d(
                        tx, size, stride, (size - 1) // 2, return_indices=train))
                samples, errors = time_alternating(runners, opts.warmup, opts.repeat, opts.budget)
                label = f"maxpool {size}x{size}/{stride} {channels}x{side}x{side}" + (" +winners" if train else "")
                row = Row(label, "torch max_pool2d" if torch is not None else "torch",
                          median_ms(samples["darknetpy"]), median_ms(samples.get("torch", [])),
                          len(samples["darknetpy"]), darknetpy_error=errors.get("darknetpy"),
                          anchor_error=errors.get("torch", why))
                if torch is not None and not errors:
                    expected = torch.nn.functional.max_pool2d(tx, size, stride, (size - 1) // 2)
                    row.check = relative_difference(out, expected.numpy()) if expected.shape == out.shape else None
                rows.append(row)
    return rows


INFERENCE_CASES = {
    "yolov3-tiny": ("yolov3_tiny_cfg", "yolov3_tiny_weights", 416),
    "yolo-fastest-xl": ("yolo_fastest_cfg", "yolo_fastest_weights", 320),
    "darknet19": ("darknet19_cfg", "darknet19_weights", 224),
    "yolov4-tiny": ("yolov4_tiny_cfg", "yolov4_tiny_weights", 416),
    "vgg-16": ("vgg16_cfg", "vgg16_weights", 224),
    "digits-yolo": ("digits_yolo_cfg", "digits_yolo_weights", 320),
    "digits-seg": ("digits_seg_cfg", "digits_seg_weights", 256),
}
ANCHOR_LABELS = {"opencv": "OpenCV DNN", "torch": "PyTorch", "onnxruntime": "onnxruntime"}


def onnx_session(ort, path: Path, threads: int):
    """An onnxruntime CPU session with `threads` intra-op threads (one inter-op thread, sequential), full graph
    optimisation: onnxruntime at its best on this machine."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # Its idle workers would spin after every call, taking the cores from the engine timed next in this
    # process (2 threads, yolo-fastest-xl: darknetpy 55 ms after a spinning onnxruntime, 30 ms otherwise);
    # onnxruntime's own time does not suffer from sleeping workers here (13.3-14.4 -> 12.4-12.9 ms).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_for_onnxruntime(torch, module, model, x, path: Path) -> str:
    """Write the network as ONNX (opset 17) at x's batch size; returns where the graph came from. The torch
    builder's module is exported when the builder can run the model (the same graph PyTorch runs), else
    `darknetpy export`'s (layers the small builder does not know: connected, grouped routes, ...)."""
    if module is not None:
        try:
            with torch.inference_mode():
                torch.onnx.export(module, (torch.from_numpy(x),), str(path), opset_version=17, dynamo=False)
            return "torch export"
        except Exception:
            pass   # fall through to darknetpy's own exporter
    from darknetpy import export_onnx
    export_onnx(model, path, batch=x.shape[0], opset=17)
    return "darknetpy export"


def case_inference(case: str, assets: dict, threads: int, opts: argparse.Namespace) -> list[Row]:
    """darknetpy against OpenCV DNN, PyTorch and onnxruntime on one network, at each of --batches."""
    import warnings

    import numpy as np
    cfg_key, weights_key, size = INFERENCE_CASES[case]
    cfg, weights = require(assets, case, cfg_key, weights_key)
    channels = int(read_cfg_sections(cfg)[0][1].get("channels", 3))
    engines: dict[str, object] = {}
    setup_errors: dict[str, str] = {}
    flops = None
    output_layers: list[int] = []
    model = None
    try:
        warnings.simplefilter("ignore")
        import darknetpy
        model = darknetpy.load(cfg, weights, width=size, height=size)
        flops = float(model.network.flops())
        output_layers = [i for i, layer in enumerate(model.network.layers) if layer.kind == "yolo"] \
            or [model.network.output_index]
    except Exception as exc:
        setup_errors["darknetpy"] = describe_error(exc)

    cv2, why = import_optional("cv2")
    if cv2 is None:
        setup_errors["opencv"] = why
    else:
        try:
            set_anchor_threads(threads, cv2=cv2)
            net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
            net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
            net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
            engines["opencv"] = (net, net.getUnconnectedOutLayersNames())
        except Exception as exc:
            setup_errors["opencv"] = describe_error(exc)

    torch, why = import_optional("torch")
    module = None
    if torch is None:
        setup_errors["torch"] = why
    else:
        try:
            set_anchor_threads(threads, torch=torch)
            module, _ = build_torch_darknet(cfg, weights, size, size)
            engines["torch"] = module
        except Exception as exc:
            setup_errors["torch"] = f"builder cannot run this model: {describe_error(exc)}"
    ort, why = import_optional("onnxruntime")
    if ort is None:
        setup_errors["onnxruntime"] = why

    rows: list[Row] = []
    for batch in opts.batch_sizes:
        rng = np.random.default_rng(7)
        x = rng.random((batch, channels, size, size), dtype=np.float32)
        label = case if batch == 1 else f"{case} b{batch}"
        runners: dict[str, Callable[[], object]] = {}
        errors = dict(setup_errors)
        latest: dict[str, object] = {}
        if model is not None:
            network = model.network

            def run_darknetpy():
                network.infer(x)   # what detect, predict and segment run: only the results are kept
                latest["darknetpy"] = [network.outputs[i] for i in output_layers]
            runners["darknetpy"] = run_darknetpy
        if "opencv" in engines:
            net, names = engines["opencv"]

            def run_opencv():
                net.setInput(x)
                latest["opencv"] = net.forward(names)
            runners["opencv"] = run_opencv
        if "torch" in engines:
            tx = torch.from_numpy(x)

            def run_torch():
                with torch.inference_mode():
                    latest["torch"] = module(tx)
            runners["torch"] = run_torch
        onnx_label = "onnxruntime"
        if ort is not None and model is not None:
            try:
                path = Path(opts.child_assets).parent / f"{case}-b{batch}-t{threads}.onnx"
                source = export_for_onnxruntime(torch, module, model, x, path)
                onnx_label = f"onnxruntime ({source})"
                session = onnx_session(ort, path, threads)
                feed = {session.get_inputs()[0].name: x}

                def run_onnxruntime():
                    latest["onnxruntime"] = session.run(None, feed)
                runners["onnxruntime"] = run_onnxruntime
            except Exception as exc:
                errors["onnxruntime"] = f"cannot export or load the model: {describe_error(exc)}"
        samples, run_errors = time_alternating(runners, opts.warmup, opts.repeat, opts.budget)
        errors.update(run_errors)
        dk_ms = median_ms(samples.get("darknetpy", []))
        for anchor in ("opencv", "torch", "onnxruntime"):
            row = Row(label, onnx_label if anchor == "onnxruntime" else ANCHOR_LABELS[anchor], dk_ms,
                      median_ms(samples.get(anchor, [])),
                      max(len(samples.get("darknetpy", [])), len(samples.get(anchor, []))),
                      None if flops is None else flops * batch,
                      darknetpy_error=errors.get("darknetpy"), anchor_error=errors.get(anchor))
            ours, theirs = latest.get("darknetpy"), latest.get(anchor)
            if ours is not None and theirs is not None:
                theirs_np = [t.numpy() if hasattr(t, "numpy") else np.asarray(t) for t in theirs]
                # Only tensors of identical shape are comparable (OpenCV returns yolo outputs already decoded).
                if len(theirs_np) == len(ours) and all(a.shape == b.shape for a, b in zip(ours, theirs_np)):
                    diffs = [relative_difference(a, b) for a, b in zip(ours, theirs_np)]
                    if all(d is not None for d in diffs):
                        row.check = max(diffs)
            rows.append(row)
    return rows


def case_train(assets: dict, threads: int, opts: argparse.Namespace) -> list[Row]:
    import warnings

    import numpy as np
    rng = np.random.default_rng(3)
    x = rng.random((TRAIN_BATCH, 1, 28, 28), dtype=np.float32)
    labels = rng.integers(0, 10, TRAIN_BATCH)
    truth = np.zeros((TRAIN_BATCH, 10), dtype=np.float32)
    truth[np.arange(TRAIN_BATCH), labels] = 1.0
    runners: dict[str, Callable[[], object]] = {}
    setup_errors: dict[str, str] = {}
    flops = None
    try:
        warnings.simplefilter("ignore")
        import darknetpy
        model = darknetpy.load(require(assets, "train", "train_cfg")[0])
        flops = 3.0 * float(model.network.flops()) * TRAIN_BATCH
        runners["darknetpy"] = lambda: model.train_batch(x, truth)
    except Exception as exc:
        setup_errors["darknetpy"] = describe_error(exc)

    torch, why = import_optional("torch")
    if torch is None:
        setup_errors["torch"] = why
    else:
        set_anchor_threads(threads, torch=torch)
        torch.manual_seed(0)
        nn = torch.nn
        block = [nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.LeakyReLU(0.1), nn.MaxPool2d(2),
                 nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.LeakyReLU(0.1), nn.MaxPool2d(2),
                 nn.Conv2d(64, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128), nn.LeakyReLU(0.1),
                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10)]
        net = nn.Sequential(*block).train()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=0.0005)
        loss_fn = nn.CrossEntropyLoss()
        tx, ty = torch.from_numpy(x), torch.from_numpy(labels)

        def run_torch():
            optimizer.zero_grad(set_to_none=False)
            loss = loss_fn(net(tx), ty)
            loss.backward()
            optimizer.step()
        runners["torch"] = run_torch

    samples, errors = time_alternating(runners, opts.warmup, opts.repeat, opts.budget)
    errors = {**setup_errors, **errors}
    return [Row("train (batch 128)", "PyTorch", median_ms(samples.get("darknetpy", [])),
                median_ms(samples.get("torch", [])),
                max(len(samples.get("darknetpy", [])), len(samples.get("torch", []))), flops,
                darknetpy_error=errors.get("darknetpy"), anchor_error=errors.get("torch"))]


TRAIN_ORDER_SCRIPT = """\
import json, sys, time
torch_first, cfg, steps = sys.argv[1] == "torch-first", sys.argv[2], int(sys.argv[3])
if torch_first:
    import torch  # starts (and configures) PyTorch's OpenMP runtime before darknetpy is imported
import warnings
warnings.simplefilter("ignore")
import darknetpy  # before numpy where it can be (torch-first: torch has loaded numpy already)
import numba
import numpy as np
model = darknetpy.load(cfg)
batch = %(batch)d
rng = np.random.default_rng(5)
x = rng.random((batch, 3, %(size)d, %(size)d), dtype=np.float32)
truth = np.zeros((batch, 1000), np.float32)
truth[np.arange(batch), rng.integers(0, 1000, batch)] = 1.0
for _ in range(2):
    model.train_batch(x, truth)
times = []
for _ in range(steps):
    start = time.perf_counter()
    model.train_batch(x, truth)
    times.append(time.perf_counter() - start)
print(json.dumps({"times": times, "layer": numba.threading_layer()}))
""" % {"size": ORDER_SIZE, "batch": ORDER_BATCH}


def run_order_script(script: str, args: list[str]) -> tuple[dict | None, str | None]:
    """Run an import-order script in a fresh process with this case child's environment (thread counts,
    PYTHONPATH and --env extras already set): (the JSON of its last stdout line, None) or (None, the last line
    of its stderr)."""
    done = subprocess.run([sys.executable, "-c", script, *args], env=dict(os.environ), cwd=REPO,
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    if done.returncode != 0:
        return None, (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
    return json.loads(done.stdout.strip().splitlines()[-1]), None


def case_train_order(assets: dict, threads: int, opts: argparse.Namespace) -> list[Row]:
    """Training darknet.cfg (224x224, batch 16) in a fresh process that imported torch before darknetpy,
    against one that imported darknetpy first: the thread hand-over must not depend on import order (with
    torch first, its OpenMP runtime is the one Numba would share, already configured to spin)."""
    cfg, = require(assets, "train-order", "order_cfg")
    medians: dict[str, float | None] = {}
    errors: dict[str, str] = {}
    layers: dict[str, str] = {}
    runs = 0
    for order in ("torch-first", "darknetpy-first"):
        result, error = run_order_script(TRAIN_ORDER_SCRIPT, [order, cfg, str(min(opts.repeat, ORDER_STEPS))])
        if result is None:
            errors[order], medians[order] = error, None
            continue
        medians[order] = median_ms(result["times"])
        layers[order] = result["layer"]
        runs = max(runs, len(result["times"]))
    label = f"train darknet b{ORDER_BATCH} torch 1st"
    anchor = "darknetpy imported first"
    if layers:
        label += f" [{layers.get('torch-first', '?')}]"
    return [Row(label, anchor, medians.get("torch-first"), medians.get("darknetpy-first"), runs,
                darknetpy_error=errors.get("torch-first"), anchor_error=errors.get("darknetpy-first"))]


INFER_ORDER_SCRIPT = """\
import json, sys, time
first, cfg, weights, passes = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if first == "numpy":
    import numpy  # OpenBLAS reads its settings now, before darknetpy can set them
elif first == "torch":
    import torch  # loads numpy and its own OpenMP runtime
import warnings
warnings.simplefilter("ignore")
import darknetpy
import numpy as np
network = darknetpy.load(cfg, weights).network
x = np.random.default_rng(7).random((1, 3, 320, 320), dtype=np.float32)
for _ in range(3):
    network.infer(x)
times = []
for _ in range(passes):
    start = time.perf_counter()
    network.infer(x)
    times.append(time.perf_counter() - start)
print(json.dumps({"times": times}))
"""


def case_infer_order(assets: dict, threads: int, opts: argparse.Namespace) -> list[Row]:
    """yolo-fastest-1.1-xl inference in fresh processes importing numpy or torch before darknetpy, against
    darknetpy first: the three orders take turns, so that a slow spell of the machine falls on all of them."""
    cfg, weights = require(assets, "infer-order", "yolo_fastest_cfg", "yolo_fastest_weights")
    orders = ("numpy", "torch", "darknetpy")
    medians: dict[str, list[float]] = {order: [] for order in orders}
    errors: dict[str, str] = {}
    for _ in range(ORDER_ROUNDS):
        for order in orders:
            if order in errors:
                continue
            result, error = run_order_script(INFER_ORDER_SCRIPT, [order, cfg, weights, str(ORDER_PASSES)])
            if result is None:
                errors[order] = error
                continue
            medians[order].append(median_ms(result["times"]))
    anchor = medians["darknetpy"]
    return [Row(f"yolo-fastest-xl {order} 1st", "darknetpy imported first",
                statistics.median(medians[order]) if medians[order] else None,
                statistics.median(anchor) if anchor else None, len(medians[order]) * ORDER_PASSES,
                darknetpy_error=errors.get(order), anchor_error=errors.get("darknetpy"))
            for order in ("numpy", "torch")]


OPENCV_PREDICT_SCRIPT = """\
import sys
import cv2
import numpy as np
cfg, weights, image = sys.argv[1:4]
net = cv2.dnn.readNetFromDarknet(cfg, weights)
grey = cv2.imread(image, cv2.IMREAD_GRAYSCALE)
net.setInput(cv2.dnn.blobFromImage(grey, 1 / 255.0, (28, 28)))
probabilities = net.forward().ravel()
for index in np.argsort(-probabilities)[:5]:
    print(f"{probabilities[index] * 100:5.2f}%: {index}")
"""


def run_fresh_process(command: list[str], env: dict[str, str]) -> tuple[float, int, str, int]:
    """Wall seconds, exit code, stderr tail and peak RSS (KiB) of one child, reaped with os.wait4 so the
    rusage is that child's own (RUSAGE_CHILDREN would mix in every earlier child)."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read().decode(errors="replace").strip().splitlines()[-1:] or [""]
    return elapsed, proc.returncode, tail[0], usage.ru_maxrss


OPENCV_DETECT_SCRIPT = """\
import sys
import cv2
import numpy as np
cfg, weights, image = sys.argv[1:4]
net = cv2.dnn.readNetFromDarknet(cfg, weights)
picture = cv2.imread(image)
net.setInput(cv2.dnn.blobFromImage(picture, 1 / 255.0, (320, 320), swapRB=True))
outputs = np.concatenate([o.reshape(-1, o.shape[-1]) for o in net.forward(net.getUnconnectedOutLayersNames())])
scores = outputs[:, 5:].max(axis=1) * outputs[:, 4]
keep = scores > 0.25
boxes = outputs[keep, :4] * np.array([picture.shape[1], picture.shape[0]] * 2)
boxes[:, :2] -= boxes[:, 2:] / 2
for i in cv2.dnn.NMSBoxes(boxes.tolist(), scores[keep].tolist(), 0.25, 0.45):
    print(int(outputs[keep][i, 5:].argmax()), float(scores[keep][i]))
"""


def startup_rows(name: str, commands: dict[str, list[str]], opts: argparse.Namespace,
                 missing_anchor: str | None) -> list[Row]:
    """Start-up of a darknetpy command in fresh processes against an OpenCV script doing the same: once
    with an empty Numba cache (a fresh NUMBA_CACHE_DIR: the first run on a machine, compiling every kernel
    the command uses), then warm, alternating with the OpenCV process."""
    env = dict(os.environ)   # the case child's own: thread counts, PYTHONPATH and --env extras already set

    def runner(engine: str, run_env: dict[str, str]) -> Callable[[], object]:
        def run():
            _, code, tail, _ = run_fresh_process(commands[engine], run_env)
            if code != 0:
                raise RuntimeError(f"exit {code}: {tail}")
        return run
    with tempfile.TemporaryDirectory(prefix="darknetpy-cold-cache-") as empty_cache:
        cold_env = {**env, "NUMBA_CACHE_DIR": empty_cache}
        cold, cold_errors = time_alternating({"darknetpy": runner("darknetpy", cold_env)}, 0, 1, 0.0)
    # Warm: exactly one untimed round fills the cache, whatever --warmup says (more rounds would only cost
    # time; each one is a fresh process anyway).
    samples, errors = time_alternating({engine: runner(engine, env) for engine in commands}, 1, opts.repeat,
                                       opts.budget)
    if missing_anchor:
        errors["opencv"] = missing_anchor
    anchor_ms = median_ms(samples.get("opencv", []))
    return [Row(f"startup cold: {name}", "OpenCV DNN process", median_ms(cold.get("darknetpy", [])), anchor_ms,
                1, darknetpy_error=cold_errors.get("darknetpy"), anchor_error=errors.get("opencv")),
            Row(f"startup: {name}", "OpenCV DNN process", median_ms(samples.get("darknetpy", [])), anchor_ms,
                max(len(samples.get("darknetpy", [])), len(samples.get("opencv", []))),
                darknetpy_error=errors.get("darknetpy"), anchor_error=errors.get("opencv"))]


def case_startup(assets: dict, threads: int, opts: argparse.Namespace) -> list[Row]:
    cfg, weights, image = require(assets, "startup", "mnist_cfg", "mnist_weights", "mnist_image")
    commands = {"darknetpy": [sys.executable, "-m", "darknetpy", "predict", cfg, weights, image]}
    cv2, why = import_optional("cv2")
    if cv2 is not None:
        commands["opencv"] = [sys.executable, "-c", OPENCV_PREDICT_SCRIPT, cfg, weights, image]
    return startup_rows("predict mnist", commands, opts, why)


def case_startup_detect(assets: dict, threads: int, opts: argparse.Namespace) -> list[Row]:
    cfg, weights, image = require(assets, "startup-detect", "fastest_small_cfg", "fastest_small_weights",
                                  "detect_image")
    commands = {"darknetpy": [sys.executable, "-m", "darknetpy", "detect", cfg, weights, image]}
    cv2, why = import_optional("cv2")
    if cv2 is not None:
        commands["opencv"] = [sys.executable, "-c", OPENCV_DETECT_SCRIPT, cfg, weights, image]
    return startup_rows("detect yolo-fastest-1.1", commands, opts, why)


RSS_DARKNETPY_SCRIPT = """\
import sys, warnings
warnings.simplefilter("ignore")
import numpy as np
import darknetpy
model = darknetpy.load(sys.argv[1], sys.argv[2])
model.network.infer(np.zeros((1, 3, 416, 416), dtype=np.float32))
"""
RSS_OPENCV_SCRIPT = """\
import sys
import numpy as np
import cv2
net = cv2.dnn.readNetFromDarknet(sys.argv[1], sys.argv[2])
net.setInput(np.zeros((1, 3, 416, 416), dtype=np.float32))
net.forward(net.getUnconnectedOutLayersNames())
"""


def case_rss(assets: dict, threads: int, opts: argparse.Namespace) -> list[Row]:
    env = dict(os.environ)   # the case child's own: thread counts, PYTHONPATH and --env extras already set
    cfg, weights = require(assets, "rss", "yolov3_tiny_cfg", "yolov3_tiny_weights")

    def peak_mib(command: list[str]) -> tuple[float | None, str | None]:
        _, code, tail, kib = run_fresh_process(command, env)
        return (kib / 1024.0, None) if code == 0 else (None, f"exit {code}: {tail}")

    dk, dk_error = peak_mib([sys.executable, "-c", RSS_DARKNETPY_SCRIPT, cfg, weights])
    baseline, base_error = peak_mib([sys.executable, "-c", "import numpy"])
    cv2, why = import_optional("cv2")
    cv, cv_error = peak_mib([sys.executable, "-c", RSS_OPENCV_SCRIPT, cfg, weights]) if cv2 else (None, why)
    return [Row("rss: yolov3-tiny load+forward", "OpenCV DNN", dk, cv, 1, unit="MiB",
                darknetpy_error=dk_error, anchor_error=cv_error),
            Row("rss: yolov3-tiny load+forward", "python -c 'import numpy'", dk, baseline, 1, unit="MiB",
                darknetpy_error=dk_error, anchor_error=base_error)]


def case_train_yolo(assets: dict, threads: int, opts: argparse.Namespace) -> list[Row]:
    from bench_reference import TRAIN_YOLO_BATCH, detector_training_step
    cfg, weights = require(assets, "train-yolo", "train_yolo_cfg", "train_yolo_weights")
    runners: dict[str, Callable[[], object]] = {}
    errors: dict[str, str] = {}
    cpu: dict[str, list[float]] = {"darknetpy": [], "torch": []}
    for engine in cpu:
        try:
            step = detector_training_step(engine, cfg, weights, threads)
        except Exception as exc:
            errors[engine] = describe_error(exc)
            continue

        def timed(step=step, seconds=cpu[engine]):
            start = time.process_time()   # all threads of this process: a loaded machine inflates only wall
            step()
            seconds.append(time.process_time() - start)
        runners[engine] = timed
    samples, run_errors = time_alternating(runners, opts.warmup, opts.repeat, opts.budget)
    errors.update(run_errors)
    runs = max(len(samples.get("darknetpy", [])), len(samples.get("torch", [])))
    label = f"train-yolo yolov3-tiny b{TRAIN_YOLO_BATCH}"
    rows = [Row(label, "PyTorch", median_ms(samples.get("darknetpy", [])), median_ms(samples.get("torch", [])),
                runs, darknetpy_error=errors.get("darknetpy"), anchor_error=errors.get("torch")),
            Row(label + " cpu", "PyTorch (process CPU)",
                median_ms(cpu["darknetpy"][-len(samples.get("darknetpy", [])):] if samples.get("darknetpy") else []),
                median_ms(cpu["torch"][-len(samples.get("torch", [])):] if samples.get("torch") else []), runs,
                darknetpy_error=errors.get("darknetpy"), anchor_error=errors.get("torch"))]
    peak: dict[str, float | None] = {}
    for engine in cpu:
        # the child reports its own VmHWM: its rusage would start from this big parent's high-water mark
        done = subprocess.run([sys.executable, str(Path(__file__).resolve().parent / "bench_reference.py"),
                               engine, cfg, weights, str(threads), "2"], capture_output=True, text=True,
                              env=dict(os.environ), cwd=REPO, timeout=CHILD_TIMEOUT_S)
        lines = done.stdout.split()
        peak[engine] = int(lines[-1]) / 1024.0 if done.returncode == 0 and lines else None
        if peak[engine] is None:
            errors[f"rss {engine}"] = f"exit {done.returncode}: {(done.stderr.strip().splitlines() or [''])[-1]}"
    rows.append(Row(f"rss: {label} 2 steps", "PyTorch", peak["darknetpy"], peak["torch"], 1, unit="MiB",
                    darknetpy_error=errors.get("rss darknetpy"), anchor_error=errors.get("rss torch")))
    return rows


def case_scene(case: str, assets: dict, threads: int, opts: argparse.Namespace) -> list[Row]:
    """detect-scene / segment-scene: the whole job on one decoded 320x320 scene, darknetpy's call against
    the OpenCV DNN code a user would write for it."""
    import warnings

    import numpy as np
    from PIL import Image
    name = "digits-yolo" if case == "detect-scene" else "digits-seg"
    (cfg, weights, origin), image_path = require(assets, case, f"{name}_scene", "scene_image")
    with Image.open(image_path) as opened:   # a grey PNG: decoded once, as the user's code would hold it
        picture = opened.convert("L")
    grey = np.asarray(picture)
    runners: dict[str, Callable[[], object]] = {}
    setup_errors: dict[str, str] = {}
    warnings.simplefilter("ignore")
    import darknetpy
    model = darknetpy.load(cfg, weights)
    net = model.network.net
    if case == "detect-scene":
        runners["darknetpy"] = lambda: model.detect(picture, thresh=0.25, nms=0.45)
    else:
        runners["darknetpy"] = lambda: model.segment(picture)
    cv2, why = import_optional("cv2")
    if cv2 is None:
        setup_errors["opencv"] = why
    else:
        set_anchor_threads(threads, cv2=cv2)
        cv_net = cv2.dnn.readNetFromDarknet(cfg, weights)
        cv_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        cv_net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        outputs = cv_net.getUnconnectedOutLayersNames()
        size = (net.width, net.height)

        def opencv_detect():
            cv_net.setInput(cv2.dnn.blobFromImage(grey, 1 / 255.0, size))
            rows = np.concatenate([o.reshape(-1, o.shape[-1]) for o in cv_net.forward(outputs)])
            scores = rows[:, 5:].max(axis=1) * rows[:, 4]
            keep = scores > 0.25
            boxes = rows[keep, :4] * np.array([grey.shape[1], grey.shape[0]] * 2)
            boxes[:, :2] -= boxes[:, 2:] / 2
            return cv2.dnn.NMSBoxes(boxes.tolist(), scores[keep].tolist(), 0.25, 0.45)

        def opencv_segment():
            cv_net.setInput(cv2.dnn.blobFromImage(grey, 1 / 255.0, size))
            probabilities = cv_net.forward()[0].transpose(1, 2, 0)
            return cv2.resize(probabilities, (grey.shape[1], grey.shape[0]),
                              interpolation=cv2.INTER_LINEAR).argmax(axis=2)
        runners["opencv"] = opencv_detect if case == "detect-scene" else opencv_segment
    samples, errors = time_alternating(runners, opts.warmup, opts.repeat, opts.budget)
    errors.update(setup_errors)
    label = f"{case} ({origin} weights)"
    return [Row(label, "opencv", darknetpy_ms=median_ms(samples["darknetpy"]),
                anchor_ms=median_ms(samples.get("opencv", [])), runs=len(samples["darknetpy"]),
                darknetpy_error=errors.get("darknetpy"), anchor_error=errors.get("opencv"))]


def run_case(case: str, assets: dict, threads: int, opts: argparse.Namespace) -> list[Row]:
    if case in ("detect-scene", "segment-scene"):
        return case_scene(case, assets, threads, opts)
    if case == "sgemm":
        return case_sgemm(assets, threads, opts)
    if case == "maxpool":
        return case_maxpool(assets, threads, opts)
    if case in INFERENCE_CASES:
        return case_inference(case, assets, threads, opts)
    if case == "train":
        return case_train(assets, threads, opts)
    if case == "train-yolo":
        return case_train_yolo(assets, threads, opts)
    if case == "train-order":
        return case_train_order(assets, threads, opts)
    if case == "infer-order":
        return case_infer_order(assets, threads, opts)
    if case == "startup":
        return case_startup(assets, threads, opts)
    if case == "startup-detect":
        return case_startup_detect(assets, threads, opts)
    if case == "rss":
        return case_rss(assets, threads, opts)
    raise ValueError(f"unknown case {case!r}")


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux /proc/stat), or None elsewhere."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    times = os.times()   # children count once they are reaped, which every fresh-process case does
    return times.user + times.system + times.children_user + times.children_system


def child_main(opts: argparse.Namespace) -> int:
    started = time.perf_counter()
    busy_before, own_before = machine_busy_seconds(), own_cpu_seconds()
    result = CaseResult(opts.child, opts.child_threads)
    try:
        assets = json.loads(Path(opts.child_assets).read_text())
        result.threads_info = configure_threads(opts.child_threads)
        result.rows = run_case(opts.child, assets, opts.child_threads, opts)
    except Exception as exc:
        result.error = describe_error(exc)
        traceback.print_exc()
    result.seconds = time.perf_counter() - started
    busy_after = machine_busy_seconds()
    if busy_before is not None and busy_after is not None and result.seconds > 0:
        others = (busy_after - busy_before) - (own_cpu_seconds() - own_before)
        result.others_busy = max(0.0, others) / (result.seconds * (os.cpu_count() or 1))
    payload = {"case": result.case, "threads": result.threads, "error": result.error,
               "seconds": result.seconds, "threads_info": result.threads_info,
               "others_busy": result.others_busy, "rows": [asdict(r) for r in result.rows]}
    Path(opts.child_out).write_text(json.dumps(payload))
    return 0


# ---- parent side -------------------------------------------------------------------------------------------
def child_env(threads: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a case child: every thread pool pinned, this checkout first on the path, then
    the --env extras. The fresh processes of the start-up and rss cases inherit it unchanged."""
    env = dict(os.environ)
    for name in THREAD_ENV_VARS:
        env[name] = str(threads)
    # A user's install keeps its bytecode (pip compiles it; an editable install writes it on first import).
    # Where the environment forbids writing it, every fresh process of the start-up, rss and train-order
    # cases would compile darknetpy's modules from source again (about 0.12 s here), which no user pays twice.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(extra or {})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONWARNINGS"] = "ignore"
    return env


def generate_weights(shared: Path, cfg: Path, out: Path) -> None:
    tool = shared / "tools" / "gen_weights.py"
    if not tool.exists():
        raise FileNotFoundError(f"{tool} not found (needed to make seeded weights)")
    done = subprocess.run([sys.executable, str(tool), str(cfg), str(out), "--seed", "1"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"gen_weights.py failed on {cfg.name}: {done.stderr.strip()[-200:]}")


WRITE_WEIGHTS_SCRIPT = """\
import struct, sys
import numpy as np
import darknetpy
network = darknetpy.load(sys.argv[1]).network
rng = np.random.default_rng(1)
parts = []
for layer in network.layers:
    arrays = layer.weight_arrays(saving=True)   # only their sizes are used: Darknet's file order
    if not arrays:
        continue
    if layer.kind != "convolutional":
        raise SystemExit(f"[{layer.kind}]: only convolutional layers are written")
    n, size = arrays[0].size, arrays[-1].size
    parts.append(rng.normal(0.0, 0.1, n))                                   # biases
    if len(arrays) == 5:                                                    # scales, rolling mean, variance
        parts += [rng.uniform(0.5, 1.5, n), rng.normal(0.0, 0.1, n), rng.uniform(0.5, 2.0, n)]
    parts.append(rng.normal(0.0, np.sqrt(2.0 / (size // n)), size))         # weights, He-scaled
with open(sys.argv[2], "wb") as out:
    out.write(struct.pack("<3iQ", 0, 2, 0, 0) + np.concatenate(parts).astype("<f4").tobytes())
"""


def write_initial_weights(cfg: Path, out: Path) -> None:
    """Seeded weights drawn as shared/tools/gen_weights.py draws them (BN statistics that keep activations
    in range), laid out by darknetpy's own reading of the cfg; convolutional networks only. Runs in a child
    process, so that this parent never imports darknetpy, numpy's BLAS or numba."""
    done = subprocess.run([sys.executable, "-c", WRITE_WEIGHTS_SCRIPT, str(cfg), str(out)], capture_output=True,
                          text=True, env=child_env(1), cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"could not write weights for {cfg.name}: {done.stderr.strip()[-200:]}")


def prepare_assets(cases: list[str], shared: Path, workdir: Path) -> dict:
    """Files the cases need; a case whose files cannot be made gets its reason in assets['missing']."""
    assets: dict = {"missing": {}}

    def attempt(case_names: list[str], make: Callable[[], None]) -> None:
        try:
            make()
        except Exception as exc:
            for name in case_names:
                assets["missing"][name] = describe_error(exc)

    if {"yolov3-tiny", "rss"} & set(cases):
        def make_yolov3_tiny():
            cfg = shared / "cfg-corpus" / "yolov3-tiny.cfg"
            if not cfg.exists():
                raise FileNotFoundError(f"{cfg} not found")
            weights = workdir / "yolov3-tiny.weights"
            generate_weights(shared, cfg, weights)
            assets["yolov3_tiny_cfg"], assets["yolov3_tiny_weights"] = str(cfg), str(weights)
        attempt(["yolov3-tiny", "rss"], make_yolov3_tiny)
    if "train-yolo" in cases:
        def make_train_yolo():
            from bench_reference import TRAIN_YOLO_BATCH
            source = shared / "cfg-corpus" / "yolov3-tiny.cfg"
            if not source.exists():
                raise FileNotFoundError(f"{source} not found")
            # batch 8 in one pass, and no burn-in, so that the first steps update at the cfg's learning rate
            text = re.sub(r"(?m)^\s*batch\s*=.*$", f"batch={TRAIN_YOLO_BATCH}", source.read_text())
            text = re.sub(r"(?m)^\s*subdivisions\s*=.*$", "subdivisions=1", text)
            cfg = workdir / "yolov3-tiny-train.cfg"
            cfg.write_text(re.sub(r"(?m)^\s*burn_in\s*=.*$", "burn_in=0", text))
            weights = workdir / "yolov3-tiny-train.weights"
            generate_weights(shared, cfg, weights)
            assets["train_yolo_cfg"], assets["train_yolo_weights"] = str(cfg), str(weights)
        attempt(["train-yolo"], make_train_yolo)
    if {"yolo-fastest-xl", "infer-order"} & set(cases):
        def find_yolo_fastest():
            folder = shared / "models" / "yolo-fastest-1.1"
            cfg, weights = folder / "yolo-fastest-1.1-xl.cfg", folder / "yolo-fastest-1.1-xl.weights"
            for path in (cfg, weights):
                if not path.exists():
                    raise FileNotFoundError(f"{path} not found")
            assets["yolo_fastest_cfg"], assets["yolo_fastest_weights"] = str(cfg), str(weights)
        attempt(["yolo-fastest-xl", "infer-order"], find_yolo_fastest)
    if "darknet19" in cases:
        def make_darknet19():
            source = shared / "cfg-corpus" / "darknet19.cfg"
            if not source.exists():
                raise FileNotFoundError(f"{source} not found")
            text = re.sub(r"(?m)^\s*width\s*=.*$", "width=224", source.read_text())
            text = re.sub(r"(?m)^\s*height\s*=.*$", "height=224", text)
            cfg = workdir / "darknet19-224.cfg"
            cfg.write_text(text)
            weights = workdir / "darknet19-224.weights"
            generate_weights(shared, cfg, weights)
            assets["darknet19_cfg"], assets["darknet19_weights"] = str(cfg), str(weights)
        attempt(["darknet19"], make_darknet19)
    def seeded(case: str, key: str, cfg: Path, width: int | None = None, darknetpy_writes: bool = False) -> None:
        """cfg (rewritten to width x width when given) and its seeded weights into assets[key + '_cfg'/...]."""
        def make():
            if not cfg.exists():
                raise FileNotFoundError(f"{cfg} not found")
            source = cfg
            if width is not None:
                text = re.sub(r"(?m)^\s*width\s*=.*$", f"width={width}", cfg.read_text())
                source = workdir / f"{case}-{width}.cfg"
                source.write_text(re.sub(r"(?m)^\s*height\s*=.*$", f"height={width}", text))
            weights = workdir / f"{case}.weights"
            if darknetpy_writes:
                write_initial_weights(source, weights)
            else:
                generate_weights(shared, source, weights)
            assets[f"{key}_cfg"], assets[f"{key}_weights"] = str(source), str(weights)
        attempt([case], make)

    if "yolov4-tiny" in cases:
        # gen_weights.py does not know [route] groups (yolov4-tiny's CSP blocks): the same draws, laid out
        # by darknetpy's reading of the cfg (OpenCV and onnxruntime read the file and agree, see `check`)
        seeded("yolov4-tiny", "yolov4_tiny", shared / "cfg-alexeyab" / "yolov4-tiny.cfg", darknetpy_writes=True)
    if "vgg-16" in cases:
        seeded("vgg-16", "vgg16", REPO / "cfg" / "vgg-16.cfg")
    if "digits-yolo" in cases:
        seeded("digits-yolo", "digits_yolo", REPO / "cfg" / "digits-yolo.cfg", 320)
    if "digits-seg" in cases:
        seeded("digits-seg", "digits_seg", REPO / "cfg" / "digits-seg.cfg")
    if {"detect-scene", "segment-scene"} & set(cases):
        def make_scene():
            from PIL import Image
            subprocess.run([sys.executable, str(REPO / "tools" / "make_digit_scenes.py"),
                            str(shared / "datasets" / "mnist"), str(workdir / "scene"), "--task", "detect",
                            "--train", "1", "--valid", "1", "--seed", "3", "--jobs", "1"],
                           check=True, capture_output=True, text=True)
            scene = workdir / "scene-320.png"
            Image.open(workdir / "scene" / "images" / "valid" / "000000.png").convert("L") \
                .resize((320, 320), Image.BILINEAR).save(scene)
            assets["scene_image"] = str(scene)
            for name in ("digits-yolo", "digits-seg"):
                cfg, shipped = REPO / "cfg" / f"{name}.cfg", REPO / "weights" / f"{name}.weights"
                weights = shipped
                if not shipped.exists():
                    weights = workdir / f"{name}-scene.weights"
                    write_initial_weights(cfg, weights)
                assets[f"{name}_scene"] = [str(cfg), str(weights), "shipped" if shipped.exists() else "seeded"]
        attempt(["detect-scene", "segment-scene"], make_scene)
    if "startup-detect" in cases:
        def find_detect():
            folder = shared / "models" / "yolo-fastest-1.1"
            cfg, weights = folder / "yolo-fastest-1.1.cfg", folder / "yolo-fastest-1.1.weights"
            image = shared / "images" / "dog.jpg"
            for path in (cfg, weights, image):
                if not path.exists():
                    raise FileNotFoundError(f"{path} not found")
            assets["fastest_small_cfg"], assets["fastest_small_weights"] = str(cfg), str(weights)
            assets["detect_image"] = str(image)
        attempt(["startup-detect"], find_detect)
    if "train-order" in cases:
        def make_order():
            source = shared / "cfg-corpus" / "darknet.cfg"
            if not source.exists():
                raise FileNotFoundError(f"{source} not found")
            text = source.read_text()
            for key, value in (("batch", ORDER_BATCH), ("subdivisions", 1), ("width", ORDER_SIZE),
                               ("height", ORDER_SIZE)):
                text = re.sub(rf"(?m)^\s*{key}\s*=.*$", f"{key}={value}", text)
            cfg = workdir / "darknet-order.cfg"
            cfg.write_text(text)
            assets["order_cfg"] = str(cfg)
        attempt(["train-order"], make_order)
    if "train" in cases:
        cfg = workdir / "train-mnist-like.cfg"
        cfg.write_text(TRAIN_CFG)
        assets["train_cfg"] = str(cfg)
    if "startup" in cases:
        def make_startup():
            cfg = REPO / "cfg" / "mnist.cfg"
            if not cfg.exists():
                raise FileNotFoundError(f"{cfg} not found")
            weights = REPO / "weights" / "mnist.weights"
            if not weights.exists():
                weights = workdir / "mnist-seeded.weights"
                generate_weights(shared, cfg, weights)
            image = workdir / "digit.png"
            write_digit_png(image)
            assets["mnist_cfg"], assets["mnist_weights"], assets["mnist_image"] = str(cfg), str(weights), str(image)
        attempt(["startup"], make_startup)
    return assets


def write_digit_png(path: Path) -> None:
    """A 28x28 grey PNG of a crude '7', written with zlib only so no imaging library is needed."""
    import zlib
    pixels = [[0] * 28 for _ in range(28)]
    for x in range(6, 22):
        pixels[6][x] = pixels[7][x] = 255
    for y in range(8, 23):
        x = 21 - (y - 8) * 10 // 15
        pixels[y][x] = pixels[y][x - 1] = 255
    raw = b"".join(b"\x00" + bytes(row) for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    path.write_bytes(png)


def run_child(case: str, threads: int, assets_path: Path, workdir: Path, opts: argparse.Namespace) -> dict:
    out = workdir / f"result-{case}-{threads}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--child", case, "--child-threads", str(threads),
               "--child-assets", str(assets_path), "--child-out", str(out), "--repeat", str(opts.repeat),
               "--warmup", str(opts.warmup), "--budget", str(opts.budget), "--batches", opts.batches]
    try:
        done = subprocess.run(command, env=child_env(threads, opts.extra_env), cwd=REPO, capture_output=True,
                              text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"case": case, "threads": threads, "error": f"timed out after {CHILD_TIMEOUT_S} s", "rows": []}
    if out.exists():
        return json.loads(out.read_text())
    tail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
    return {"case": case, "threads": threads, "error": f"child died (exit {done.returncode}): {tail}", "rows": []}


def fmt(value: float | None, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def print_table(threads: int, results: list[dict], sgemm_peak: float | None, stream=sys.stdout) -> None:
    header = (f"{'case':<30} {'anchor':<26} {'darknetpy':>11} {'anchor':>11} {'ratio':>7} "
              f"{'GFLOP/s':>8} {'%peak':>6} {'runs':>4} {'check':>8} {'busy':>5}")
    print(f"\n== {threads} thread{'s' if threads != 1 else ''}"
          + (f" (numpy sgemm peak {sgemm_peak:.1f} GFLOP/s)" if sgemm_peak else ""), file=stream)
    print(header, file=stream)
    print("-" * len(header), file=stream)
    notes: list[str] = []
    contended: list[str] = []
    for result in results:
        if result.get("error") and not result["rows"]:
            print(f"{result['case']:<30} FAILED: {result['error']}", file=stream)
            continue
        busy = result.get("others_busy")
        busy_text = fmt(None if busy is None else 100.0 * busy, ".0f") + ("%" if busy is not None else "")
        if busy is not None and busy > BUSY_WARNING and result["case"] != "rss":
            contended.append(f"{result['case']} {100 * busy:.0f}%")
        for raw in result["rows"]:
            row = Row(**raw)
            unit = row.unit
            dk = fmt(row.darknetpy_ms, ".1f") + f" {unit}" if row.darknetpy_ms is not None else "failed"
            anchor = fmt(row.anchor_ms, ".1f") + f" {unit}" if row.anchor_ms is not None else "n/a"
            gflops = row.gflops
            peak_pct = 100.0 * gflops / sgemm_peak if gflops and sgemm_peak else None
            check = fmt(row.check, ".1e")
            print(f"{row.case:<30} {row.anchor:<26} {dk:>11} {anchor:>11} {fmt(row.ratio, '.2f'):>7} "
                  f"{fmt(gflops, '.2f'):>8} {fmt(peak_pct, '.0f'):>6} {row.runs:>4} {check:>8} {busy_text:>5}",
                  file=stream)
            if row.darknetpy_error:
                notes.append(f"{row.case}: darknetpy failed: {row.darknetpy_error}")
            if row.anchor_error:
                notes.append(f"{row.case}: {row.anchor}: {row.anchor_error}")
    for note in dict.fromkeys(notes):
        print(f"  note: {note}", file=stream)
    if contended:
        print(f"  note: other processes were using the CPUs (busy = their share of all cores) during: "
              f"{', '.join(contended)}; those times are inflated, rerun on a quiet machine", file=stream)


def machine_info() -> dict:
    info: dict = {"python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib import metadata
    for label, dist in (("numpy", "numpy"), ("numba", "numba"), ("cv2", "opencv-python-headless"),
                        ("torch", "torch"), ("onnxruntime", "onnxruntime")):
        try:
            info[label] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[label] = "not installed"
    if info["cv2"] == "not installed":
        for dist in ("opencv-python", "opencv-contrib-python", "opencv-contrib-python-headless"):
            try:
                info["cv2"] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                pass
    probe = "import numpy; print(numpy.show_config(mode='dicts')['Build Dependencies']['blas']['name'])"
    try:
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                              env=child_env(1))
        info["blas"] = done.stdout.strip() or "?"
    except Exception:
        pass
    return info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark darknetpy against OpenCV DNN, PyTorch and BLAS.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=15, help="timed rounds per case (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first (compilation, caches)")
    parser.add_argument("--threads", default="1,2", help="comma list of thread counts")
    parser.add_argument("--batches", default="1,8", help="comma list of batch sizes for the inference cases")
    parser.add_argument("--cases", default=",".join(ALL_CASES), help="comma list from: " + ",".join(ALL_CASES))
    parser.add_argument("--budget", type=float, default=20.0,
                        help="stop timing a case after this many seconds of timed rounds (at least 3 rounds)")
    parser.add_argument("--json", metavar="FILE", help="also write every measurement as JSON")
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="the shared/ reference folder")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for every measured process, e.g. "
                             "NUMBA_THREADING_LAYER=workqueue or OMP_WAIT_POLICY=passive (repeatable; "
                             "applied after the thread-count variables, so it can override them)")
    parser.add_argument("--distributed", action="store_true",
                        help="measure MPI training and Dask batch detection instead (see the docstring)")
    parser.add_argument("--images", type=int, default=200, help="--distributed: images of the detection batch")
    parser.add_argument("--train-steps", type=int, default=8, help="--distributed: timed training steps")
    for hidden in ("--child", "--child-threads", "--child-assets", "--child-out"):
        parser.add_argument(hidden, help=argparse.SUPPRESS, type=int if hidden == "--child-threads" else str)
    opts = parser.parse_args(argv)
    if opts.repeat < 1 or opts.warmup < 0:
        parser.error("--repeat must be >= 1 and --warmup >= 0")
    if any("=" not in item for item in opts.env):
        parser.error("--env takes NAME=VALUE")
    opts.extra_env = dict(item.split("=", 1) for item in opts.env)
    opts.batch_sizes = [int(b) for b in opts.batches.split(",") if b.strip()]
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.child:
        return child_main(opts)
    if opts.distributed:
        return distributed_main(opts)
    cases = [c.strip() for c in opts.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in ALL_CASES]
    if unknown:
        print(f"unknown case(s): {', '.join(unknown)}; choose from {', '.join(ALL_CASES)}", file=sys.stderr)
        return 2
    cases = [c for c in ALL_CASES if c in cases]       # sgemm first: its peak feeds the %peak column
    thread_counts = [int(t) for t in opts.threads.split(",") if t.strip()]
    started = time.perf_counter()
    info = machine_info()
    print(f"darknetpy bench: {info.get('cpu', '?')} ({info.get('cpus')} cpus), python {info['python']}, "
          f"numpy {info.get('numpy')} [{info.get('blas', '?')}], numba {info.get('numba')}, "
          f"opencv {info.get('cv2')}, torch {info.get('torch')}, onnxruntime {info.get('onnxruntime')}")
    print(f"cases: {', '.join(cases)}; threads: {thread_counts}; repeat {opts.repeat}, warmup {opts.warmup}, "
          f"budget {opts.budget:g} s per case"
          + (f"; env {' '.join(opts.env)}" if opts.env else ""), flush=True)
    report: dict = {"machine": info, "settings": {"repeat": opts.repeat, "warmup": opts.warmup,
                                                  "env": opts.extra_env,
                                                  "budget_s": opts.budget, "cases": cases,
                                                  "threads": thread_counts}, "results": {}}
    with tempfile.TemporaryDirectory(prefix="darknetpy-bench-") as tmp:
        workdir = Path(tmp)
        assets = prepare_assets(cases, opts.shared, workdir)
        assets_path = workdir / "assets.json"
        assets_path.write_text(json.dumps(assets))
        for threads in thread_counts:
            results = []
            for case in cases:
                print(f"  [{threads} thr] {case} ...", end="", flush=True, file=sys.stderr)
                result = run_child(case, threads, assets_path, workdir, opts)
                print(f" {result.get('seconds', 0):.0f} s", file=sys.stderr, flush=True)
                results.append(result)
            peak = None
            for result in results:
                for row in result["rows"]:
                    if row["case"].startswith("sgemm") and row["darknetpy_ms"]:
                        peak = row["flops"] / (row["darknetpy_ms"] * 1e-3) / 1e9
            print_table(threads, results, peak)
            sys.stdout.flush()
            report["results"][str(threads)] = {"sgemm_peak_gflops": peak, "cases": results}
    total = time.perf_counter() - started
    print(f"\ntotal {total:.0f} s")
    report["total_seconds"] = total
    if opts.json:
        Path(opts.json).write_text(json.dumps(report, indent=2))
    return 0


# ---- distributed section -----------------------------------------------------------------------------------
MPI_LOOPBACK = {"MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp", "FI_TCP_IFACE": "lo"}

TRAIN_DRIVER = """
import json, os, sys, time
import darknetpy
import numpy as np
from darknetpy.distributed import mpi_world_size
cfg, steps = sys.argv[1], int(sys.argv[2])
model = darknetpy.load(cfg, seed=1)
net = model.network.net
rng = np.random.default_rng(0)
x = rng.random((net.full_batch, net.channels, net.height, net.width), dtype=np.float32)
y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, net.full_batch)]
if mpi_world_size() > 1:
    from mpi4py import MPI
    from darknetpy.distributed.mpi import DataParallel
    trainer = DataParallel(MPI.COMM_WORLD, cfg).trainer(model.network)
    trainer.broadcast_weights()
    rows = DataParallel(MPI.COMM_WORLD, cfg).rows(net)
    x, y, rank = x[rows], y[rows], MPI.COMM_WORLD.Get_rank()
else:
    trainer, rank = model.trainer, 0
steps_ms, reduce_ms = [], []
for step in range(steps + 2):
    t = time.perf_counter()
    trainer.train_batch(x, y)
    if step >= 2:   # the first steps load the Numba cache
        steps_ms.append((time.perf_counter() - t) * 1e3)
        reduce_ms.append(getattr(trainer, "last_allreduce_seconds", 0.0) * 1e3)
if rank == 0:
    print(json.dumps({"step_ms": float(np.median(steps_ms)), "allreduce_ms": float(np.median(reduce_ms)),
                      "images": net.full_batch}))
"""


def _run_timed(command: list[str], env: dict[str, str], cwd: Path, timeout: float = 900) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:6])} ... failed: {done.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - started, done.stdout


def distributed_training(workdir: Path, opts: argparse.Namespace) -> list[dict]:
    cfg = workdir / "mnist-2sub.cfg"
    cfg.write_text((REPO / "cfg" / "mnist.cfg").read_text().replace("subdivisions=1", "subdivisions=2"))
    driver = workdir / "train_driver.py"
    driver.write_text(TRAIN_DRIVER)
    mpiexec = Path(sys.executable).parent / "mpiexec"
    rows = []
    for label, ranks, threads in (("1 rank x 2 threads", 1, 2), ("2 ranks x 1 thread", 2, 1)):
        env = child_env(threads, opts.extra_env)
        command = [sys.executable, str(driver), str(cfg), str(opts.train_steps)]
        if ranks > 1:
            env.update(MPI_LOOPBACK)
            command = [str(mpiexec), "-launcher", "fork", "-hosts", "127.0.0.1", "-n", str(ranks), *command]
        _, out = _run_timed(command, env, workdir)
        result = json.loads(out.strip().splitlines()[-1])
        rows.append({"setup": label, "images_per_s": result["images"] / (result["step_ms"] * 1e-3),
                     "step_ms": result["step_ms"], "allreduce_share": result["allreduce_ms"] / result["step_ms"]})
    return rows


def distributed_detection(workdir: Path, opts: argparse.Namespace) -> list[dict]:
    import numpy as np
    from PIL import Image
    folder = workdir / "scenes"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(opts.images):
        Image.fromarray(rng.integers(0, 256, (320, 320), dtype=np.uint8)).save(folder / f"s{i:04d}.png")
    one = workdir / "one"
    one.mkdir(exist_ok=True)
    (one / "s0000.png").write_bytes((folder / "s0000.png").read_bytes())
    cfg = REPO / "cfg" / "digits-yolo.cfg"
    weights = workdir / "digits-yolo.weights"
    _run_timed([sys.executable, "-c", f"import darknetpy; darknetpy.load({str(cfg)!r}, seed=1)"
                f".save_weights({str(weights)!r})"], child_env(1, opts.extra_env), workdir)
    base = [sys.executable, "-m", "darknetpy", "detect", str(cfg), str(weights)]
    rows = []
    for label, threads, extra in (("plain CLI (2 threads)", 2, ["--json"]),
                                  ("--dask local, 1 worker x 2 threads", None, ["--dask", "local", "--workers", "1"]),
                                  ("--dask local, 2 workers x 1 thread", None, ["--dask", "local", "--workers", "2"])):
        env = child_env(threads or 2, opts.extra_env)
        if threads is None:   # let the cluster give each worker its share
            for name in THREAD_ENV_VARS:
                env.pop(name, None)
        first, _ = _run_timed([*base, str(one), *extra], env, workdir)
        whole, out = _run_timed([*base, str(folder), *extra], env, workdir)
        assert len(out.splitlines()) == opts.images, "one record per image"
        per_image = (whole - first) / max(opts.images - 1, 1)
        rows.append({"setup": label, "startup_s": first, "per_image_ms": per_image * 1e3,
                     "images_per_s": opts.images / whole, "images_per_s_after_startup": 1 / per_image})
    return rows


def distributed_main(opts: argparse.Namespace) -> int:
    info = machine_info()
    print(f"darknetpy distributed bench: {info.get('cpu', '?')} ({info.get('cpus')} cpus)", flush=True)
    before, t0 = machine_busy_seconds(), time.perf_counter()
    time.sleep(2.0)
    if before is not None:   # how quiet the machine is before we start (our own runs would count too)
        busy = (machine_busy_seconds() - before) / ((time.perf_counter() - t0) * (os.cpu_count() or 1))
        print(f"load on the machine before starting: {busy * 100:.0f}% of the CPUs"
              + ("  (busy: the numbers below are inflated)" if busy > 0.1 else ""), flush=True)
    started = time.perf_counter()
    report: dict = {"machine": info}
    with tempfile.TemporaryDirectory(prefix="darknetpy-bench-") as tmp:
        workdir = Path(tmp)
        train = distributed_training(workdir, opts)
        print("\ntraining step (mnist.cfg, batch 128 = 2 subdivisions of 64):")
        print(f"  {'set-up':24} {'images/s':>9} {'step ms':>8} {'all-reduce share':>17}")
        for row in train:
            print(f"  {row['setup']:24} {row['images_per_s']:9.0f} {row['step_ms']:8.1f} "
                  f"{row['allreduce_share'] * 100:16.1f}%")
        print(f"  ratio 2 ranks / 1 rank: {train[1]['images_per_s'] / train[0]['images_per_s']:.2f}", flush=True)
        detect = distributed_detection(workdir, opts)
        print(f"\nbatch detection, {opts.images} images (digits-yolo 320x320):")
        print(f"  {'set-up':36} {'start-up s':>10} {'per image ms':>13} {'images/s':>9} {'after start-up':>15}")
        for row in detect:
            print(f"  {row['setup']:36} {row['startup_s']:10.1f} {row['per_image_ms']:13.1f} "
                  f"{row['images_per_s']:9.1f} {row['images_per_s_after_startup']:15.1f}")
        report.update(training=train, detection=detect)
    seconds = time.perf_counter() - started
    print(f"total {seconds:.0f} s")
    if opts.json:
        Path(opts.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
