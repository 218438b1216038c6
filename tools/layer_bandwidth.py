"""Where a network's inference time goes, by layer type, against the memory traffic each type cannot avoid.

    python tools/layer_bandwidth.py CFG [WEIGHTS] [--width W --height H] [--repeat N] [--onnxruntime] [--layers]

Each layer's forward is timed twice, with the thread counts of the environment (NUMBA_NUM_THREADS,
OPENBLAS_NUM_THREADS: set both to 1 for the one-thread figures): "in pass", its median over --repeat whole
passes as Network.infer runs them, in the buffers it lends (what a real pass sees: its weights and output buffer
come from wherever the other layers left the caches), and "alone", the median of --repeat calls in a row on the
same input (everything it touches hot in the caches). A [shortcut] that its 1x1 layer computes
(darknetpy/fusion.py) is one step, typed "pointwise 1x1 + sum"; the layers it replaces do not run. Layers are
grouped by type (depthwise k x k / stride s, grouped, pointwise 1x1, dense k x k, and the other layer kinds).
For each group:

  bytes   what its layers must move at least: every input and weight read once and the output written once
          (float32);
  GB/s    bytes / time alone;
  bound   the same bytes moved by numpy.copyto, layer by layer (an array half the layer's bytes copied into
          another: read + write, in a row like "alone"), so the caches a layer's data fits in count for the
          copy too;
  x bound time alone / the copy's time: 1 is as fast as moving the data can be; far above 1 the type is bound
          by arithmetic or overheads, not memory.

With --onnxruntime the network is also exported (`darknetpy export`) and run by onnxruntime (CPU provider, one
inter-op thread, OPENBLAS_NUM_THREADS intra-op threads, all graph optimisations) with its profiler on; each
node's median time is given to the layer its name comes from (the exporter names a layer's nodes
`<kind>_<index>...`; onnxruntime keeps the name of the node it fuses others into, so a [shortcut] it adds
inside the preceding convolution counts as that convolution's). The column "ort ms" is that time per
group, "x ort" the group's in-pass time over it.

The weights are seeded (darknetpy's initialisation) unless WEIGHTS is given: the time does not depend on them.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import darknetpy  # noqa: E402  (sets the thread settings before numpy and Numba start threads)
import numpy as np  # noqa: E402
from darknetpy.fusion import find_residual_fusions  # noqa: E402
from darknetpy.layers.convolutional import Convolutional  # noqa: E402

FLOAT_BYTES = 4


def layer_type(layer) -> str:
    if isinstance(layer, Convolutional):
        cfg = layer.config
        channels = layer.in_shapes[0].c
        shape = f"{cfg.size}x{cfg.size}/{cfg.stride}"
        if cfg.groups > 1 and cfg.groups == channels:
            return f"depthwise {shape}"
        if cfg.groups > 1:
            return f"grouped {shape}"
        return "pointwise 1x1" if cfg.size == 1 else f"dense {shape}"
    return f"[{layer.kind}]"


def median_seconds(call, repeat: int) -> float:
    call()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def timed_pass(net, x: np.ndarray) -> list[float]:
    """One inference pass, step by step as Network.infer runs it (the layers writing into the buffers it
    lends them, a [shortcut] computed by its 1x1 layer: darknetpy/fusion.py), with each step's seconds (0
    for a layer fused into a later step)."""
    net.infer(x)   # buffers for this batch, lent, and the steps planned
    seconds = []
    for index, step in enumerate(net.inference_steps()):
        if step is None:
            seconds.append(0.0)
            continue
        inputs, run = step
        xs = [x if j < 0 else net.outputs[j] for j in inputs]
        start = time.perf_counter()
        net.outputs[index] = run(xs)
        seconds.append(time.perf_counter() - start)
    return seconds


def onnxruntime_layer_seconds(model, x: np.ndarray, repeat: int) -> dict[int, float]:
    """Median seconds per darknetpy layer index of onnxruntime running the exported network (profiled)."""
    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        darknetpy.export_onnx(model, path, batch=x.shape[0])
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("OPENBLAS_NUM_THREADS", "0"))
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(folder, "profile")
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x}
        for _ in range(repeat + 1):
            session.run(None, feed)
        with open(session.end_profiling(), encoding="utf-8") as profile:
            events = json.load(profile)
    per_node: dict[str, list[float]] = defaultdict(list)
    for event in events:
        if event.get("cat") == "Node":
            per_node[event["name"]].append(event["dur"] * 1e-6)
    per_layer: dict[int, float] = defaultdict(float)
    for name, durations in per_node.items():
        match = re.match(r"[A-Za-z]+_(\d+)", name)
        if match:
            per_layer[int(match.group(1))] += float(np.median(durations))
    return per_layer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cfg")
    parser.add_argument("weights", nargs="?")
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--onnxruntime", action="store_true",
                        help="also time each layer type in onnxruntime (the exported graph, profiled)")
    parser.add_argument("--layers", action="store_true", help="also print one row per layer, before the groups")
    args = parser.parse_args(argv)
    model = darknetpy.load(args.cfg, args.weights, width=args.width, height=args.height, seed=1)
    net = model.network
    s = net.input_shape
    x = np.random.default_rng(0).random((1, s.c, s.h, s.w), np.float32)
    whole = median_seconds(lambda: net.infer(x), args.repeat)
    in_pass = np.median([timed_pass(net, x) for _ in range(args.repeat)], axis=0)
    ort_seconds = onnxruntime_layer_seconds(model, x, args.repeat) if args.onnxruntime else {}
    groups: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    fused = {f.shortcut: f for f in find_residual_fusions(net.layers, net.output_index)}
    for index, step in enumerate(net.inference_steps()):
        if step is None:
            continue
        layer = net.layers[index]
        inputs = [x if j < 0 else net.outputs[j] for j in step[0]]
        seconds = median_seconds(lambda: step[1](inputs), args.repeat)
        # a fused shortcut: its convolution's weights, type and onnxruntime node (which fuses the pair too)
        computing = net.layers[fused[index].convolution] if index in fused else layer
        kind = layer_type(computing) + (" + sum" if index in fused else "")
        weights = sum(array.size for array in computing.weight_arrays())
        moved = FLOAT_BYTES * (sum(a.size for a in inputs) + net.outputs[index].size + weights)
        half = max(moved // (2 * FLOAT_BYTES), 1)
        src, dst = np.ones(half, np.float32), np.empty(half, np.float32)
        copy = median_seconds(lambda: np.copyto(dst, src), args.repeat)
        group = groups[kind]
        if args.layers:
            shape = net.outputs[index].shape[1:]
            ort_cell = f" {ort_seconds.get(computing.index, 0.0) * 1e3:8.3f}" if args.onnxruntime else ""
            print(f"{index:4d} {kind:20} "
                  f"{str(tuple(inputs[0].shape[1:])):>16} -> "
                  f"{str(tuple(shape)):>16} {in_pass[index] * 1e3:8.3f} {seconds * 1e3:8.3f}{ort_cell}")
        group["layers"] += 1
        group["pass"] += in_pass[index]
        group["seconds"] += seconds
        group["bytes"] += moved
        group["copy"] += copy
        group["ort"] += ort_seconds.get(computing.index, 0.0)
    print(f"{Path(args.cfg).name} {s.w}x{s.h}, batch 1: whole pass (infer) {whole * 1e3:.2f} ms (median of "
          f"{args.repeat})")
    ort_header = f" {'ort ms':>8} {'x ort':>6}" if args.onnxruntime else ""
    print(f"{'layer type':22} {'layers':>6} {'in pass ms':>10} {'share':>6} {'alone ms':>8} {'MB':>8} "
          f"{'GB/s':>7} {'bound GB/s':>10} {'x bound':>7}{ort_header}")
    total = sum(g["pass"] for g in groups.values())
    for name, g in sorted(groups.items(), key=lambda item: -item[1]["pass"]):
        ort_cells = ""
        if args.onnxruntime:
            ratio = f"{g['pass'] / g['ort']:6.2f}" if g["ort"] > 0 else f"{'fused':>6}"
            ort_cells = f" {g['ort'] * 1e3:8.3f} {ratio}"
        print(f"{name:22} {int(g['layers']):6d} {g['pass'] * 1e3:10.3f} {g['pass'] / total:6.1%} "
              f"{g['seconds'] * 1e3:8.3f} {g['bytes'] / 1e6:8.2f} {g['bytes'] / g['seconds'] / 1e9:7.1f} "
              f"{g['bytes'] / g['copy'] / 1e9:10.1f} {g['seconds'] / g['copy']:7.1f}{ort_cells}")
    ort_total = f" {'':8} {'':7} {'':8} {'':10} {'':7} {sum(g['ort'] for g in groups.values()) * 1e3:8.3f}" \
        if args.onnxruntime else ""
    print(f"{'sum of layers':22} {sum(int(g['layers']) for g in groups.values()):6d} {total * 1e3:10.3f} "
          f"{'':6} {sum(g['seconds'] for g in groups.values()) * 1e3:8.3f}{ort_total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
