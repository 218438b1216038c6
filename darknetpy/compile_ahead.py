"""A first run compiles with two processes: while this one goes through the network front to back, a helper
process compiles the same network's kernels back to front into Numba's on-disk cache.

Numba compiles one kernel at a time in a process, and looks a kernel up in the on-disk cache at the first
call that needs it there; so whatever the helper has saved by then is loaded in milliseconds instead of
compiled. The two meet in the middle, and the first run of yolo-fastest-1.1's `detect` took 14-15 s
instead of 22-24 s on this project's 2-core machine. The helper starts with what this process compiles
last (detection's NMS), then runs every step of the network's inference pass on zeros, the fused ones first
(darknetpy/fusion.py), the others from the last layer to the first: kernels depend on the shapes, flags and
thread count, which it copies, never on the weights' values.

It is armed by the commands that run a network on images (predict, detect, segment, valid, map) and
started at the first compilation of a darknetpy kernel (compile_notice): a run whose kernels are all cached
never starts it. It is not started on one core, nor with DARKNETPY_COMPILE_AHEAD=0 (the test suite: its
worker processes already keep every core busy), nor when its copy of the network would take more than a
quarter of the free memory. It stops when its work is done, when this process exits
(atexit), and when this process dies (the kernel's parent-death signal, and a check before each layer).
Everything it prints is discarded: it only ever fills the cache, and its failures cost nothing but time.
"""
from __future__ import annotations

import atexit
import os
import subprocess
import sys

ENVIRONMENT_SWITCH = "DARKNETPY_COMPILE_AHEAD"

_plan: list[str] | None = None            # the helper's arguments once armed
_helper: subprocess.Popen | None = None


def enabled() -> bool:
    if os.environ.get(ENVIRONMENT_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return cores > 1


def available_memory() -> int | None:
    """Bytes of physical memory free now (Linux and most Unixes), None where that cannot be read."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def helper_bytes(network, batch: int) -> int:
    """What the helper's copy of the network holds: its weights and every layer's output for `batch` images."""
    return 4 * (network.weights_float_count() + batch * sum(shape.size for shape in network.shapes))


def arm(network, batch: int = 1) -> None:
    """Compile `network`'s inference kernels (at its current input size, for `batch` images) in a helper
    process if this process turns out to be compiling: called before the first forward pass. Not when the
    helper's copy of the network would take more than a quarter of the free memory (a first run must not be
    the one that runs out)."""
    global _plan
    import numba
    if not enabled() or not os.path.isfile(str(network.path)):
        return
    free = available_memory()
    if free is not None and helper_bytes(network, batch) > free // 4:
        return
    _plan = [str(network.path), str(network.net.width), str(network.net.height), str(batch),
             str(numba.get_num_threads()), str(os.getpid())]


def start_if_armed() -> None:
    """Start the helper (once) if a network was armed; compile_notice calls this at the first compilation."""
    global _plan, _helper
    if _plan is None or _helper is not None:
        return
    plan, _plan = _plan, None
    try:
        _helper = subprocess.Popen([sys.executable, "-m", "darknetpy.compile_ahead", *plan],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return
    atexit.register(stop)


def stop() -> None:
    """Stop the helper if it still runs (whatever it has not saved yet, this process compiled itself)."""
    global _helper
    helper, _helper = _helper, None
    if helper is None or helper.poll() is not None:
        return
    helper.terminate()
    try:
        helper.wait(timeout=5)
    except subprocess.TimeoutExpired:
        helper.kill()
        helper.wait()


def _die_with_parent(parent: int) -> None:
    """Ask Linux to send SIGTERM to this process when its parent exits (no-op elsewhere)."""
    try:
        import ctypes
        import signal
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent was gone before the signal was asked for
        sys.exit(0)


def _compile_post_processing(network) -> None:
    """What the armed command runs after the network: a detector's NMS, on two overlapping boxes."""
    import numpy as np

    from .boxes import Detection, FLOAT
    from .detect import detection_layers, output_classes, suppress
    if not detection_layers(network):
        return
    classes = output_classes(network)
    probs = np.zeros(classes, FLOAT)
    probs[0] = 0.9
    dets = [Detection((0.5, 0.5, 0.2, 0.2), 0.9, probs.copy()), Detection((0.52, 0.5, 0.2, 0.2), 0.8, probs * 0.9)]
    suppress(network, dets, classes, 0.45, "default")


def compile_backwards(cfg: str, width: int, height: int, batch: int, parent: int | None = None) -> None:
    """Run the network's inference kernels on zeros from its last layer to its first (the helper's work;
    `parent`: stop as soon as that process is gone)."""
    import numpy as np

    from .fusion import find_residual_fusions
    from .network import load_cfg
    network = load_cfg(cfg, width, height)
    network.initialize(0)
    network.allocate(batch)
    _compile_post_processing(network)
    steps = network.inference_steps()   # what infer runs: a shortcut fused into its 1x1 layer is one step
    # the fused steps first: their kernel is a compilation of its own (kernels/pointwise.py), and the first
    # of them comes early in this process's pass (yolo-fastest-1.1's 9th layer)
    fused = [f.shortcut for f in find_residual_fusions(network.layers, network.output_index)]
    for index in fused + [i for i in range(network.output_index, -1, -1) if i not in fused]:
        if parent is not None and os.getppid() != parent:
            return
        if steps[index] is None:
            continue
        inputs, run = steps[index]
        shapes = [network.input_shape if j < 0 else network.shapes[j] for j in inputs]
        run([np.zeros((batch, s.c, s.h, s.w), np.float32) for s in shapes])


def main(argv: list[str]) -> int:
    cfg, width, height, batch, threads, parent = argv
    _die_with_parent(int(parent))
    import numba
    numba.set_num_threads(int(threads))
    compile_backwards(cfg, int(width), int(height), int(batch), int(parent))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: leave quietly
        sys.exit(130)
