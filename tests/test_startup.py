"""Start-up behaviour: the one-line notice of a first run (Numba compiling for this CPU) and the threading
layer chosen when another package loaded GNU OpenMP before darknetpy (issue 17)."""
from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(REPO), "NUMBA_NUM_THREADS": "2", **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=tmp_path, env=environ, timeout=300)


def test_notice_is_printed_once_at_the_first_kernel_compilation(monkeypatch) -> None:
    import numba

    from darknetpy import compile_notice
    stream = io.StringIO()
    compile_notice.announce_compilation(stream)
    compile_notice.announce_compilation(stream)     # registering twice must not print twice
    monkeypatch.setattr(compile_notice._listener, "announced", False)   # as in a fresh process

    def outside(x):
        return x + 1
    numba.njit(outside)(1)                           # not a darknetpy function: no notice
    assert stream.getvalue() == ""

    def kernel_a(x):
        return x * 2

    def kernel_b(x):
        return x * 3
    for function in (kernel_a, kernel_b):
        function.__module__ = "darknetpy.kernels.probe"
    numba.njit(kernel_a)(1)
    numba.njit(kernel_b)(1.5)
    assert stream.getvalue() == compile_notice.NOTICE + "\n"


def test_notice_only_when_the_cache_misses(tmp_path: Path) -> None:
    """First process: the kernel is compiled (cache miss) and the notice printed; second process with the
    same NUMBA_CACHE_DIR: the kernel comes from the cache and nothing is printed."""
    (tmp_path / "probe_kernels.py").write_text(textwrap.dedent("""\
        import numba

        @numba.njit(cache=True)
        def double(x):
            return 2 * x
        """))
    code = """\
        import sys
        sys.path.insert(0, ".")
        from darknetpy import compile_notice
        compile_notice.KERNEL_PACKAGE = "probe_kernels"
        compile_notice.announce_compilation()
        import probe_kernels
        print(probe_kernels.double(21))
        """
    cache = str(tmp_path / "cache")
    first = run_python(code, tmp_path, NUMBA_CACHE_DIR=cache)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "42"
    from darknetpy.compile_notice import NOTICE
    assert first.stderr.count(NOTICE) == 1
    second = run_python(code, tmp_path, NUMBA_CACHE_DIR=cache)
    assert second.returncode == 0, second.stderr
    assert NOTICE not in second.stderr


LAYER_PROBE = """\
    {first}
    import darknetpy
    import numba
    numba.set_num_threads(2)
    print(numba.threading_layer())
    """


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")
@pytest.mark.parametrize("first, env, expected", [
    ("import torch", {}, "workqueue"),         # torch's libgomp was loaded (and read its wait policy) first
    ("", {}, "omp"),                          # darknetpy first: OpenMP with the passive wait policy
    ("import torch", {"NUMBA_THREADING_LAYER": "omp"}, "omp"),   # the user's choice wins
])
def test_threading_layer_depends_on_who_loaded_openmp(tmp_path: Path, first: str, env: dict, expected: str) -> None:
    done = run_python(LAYER_PROBE.format(first=first), tmp_path, **env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == expected


def test_gnu_openmp_detection_reads_the_process_maps(tmp_path: Path) -> None:
    done = run_python("""\
        from darknetpy.kernels import threads
        before = threads._gnu_openmp_loaded()
        import ctypes, ctypes.util
        ctypes.CDLL(ctypes.util.find_library("gomp"))
        print(before, threads._gnu_openmp_loaded())
        """, tmp_path)
    if "NoneType" in done.stderr or "OSError" in done.stderr:
        pytest.skip("no system libgomp to load")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]


# ---- compile ahead (darknetpy.compile_ahead) ---------------------------------------------------------------
TINY_DETECTOR = """\
[net]
width=32
height=32
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[convolutional]
filters=8
size=1
stride=1
activation=linear

[shortcut]
from=-2
activation=linear

[maxpool]
size=2
stride=2

[convolutional]
filters=8
size=1
stride=1
activation=leaky

[upsample]
stride=2

[route]
layers=-1,0

[convolutional]
filters=21
size=1
stride=1
activation=linear

[yolo]
mask=0,1,2
anchors=4,4, 8,8, 16,16
classes=2
num=3
"""

COUNT_COMPILATIONS = """\
    import numpy as np
    from numba.core import event
    compiled = []
    class Count(event.Listener):
        def on_start(self, ev):
            compiled.append(ev.data["dispatcher"].py_func.__module__)
        def on_end(self, ev):
            pass
    event.register("numba:compile", Count())
    from darknetpy.network import load_cfg
    from darknetpy.kernels.resize import resize_image
    net = load_cfg("tiny.cfg")
    net.initialize(1)
    net.infer(np.random.default_rng(0).random((1, 3, 32, 32), np.float32))
    print(sum(m.startswith("darknetpy.") for m in compiled))
    resize_image(np.zeros((3, 5, 7), np.float32), np.zeros((3, 4, 4), np.float32))   # not the helper's
    print(sum(m.startswith("darknetpy.") for m in compiled))
    """


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(entry.name)
        except OSError:
            pass
    return found


def test_compile_ahead_helper_fills_the_cache_with_the_networks_kernels(tmp_path: Path, monkeypatch) -> None:
    """The helper compiles every kernel of the armed network's inference into the on-disk cache (a shortcut
    fused into its 1x1 layer included): a later process running that network compiles no darknetpy kernel
    (and does compile one the helper had no reason to, which shows the count works)."""
    from darknetpy import compile_ahead
    from darknetpy.network import network_from_text
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(TINY_DETECTOR)
    cache = str(tmp_path / "cache")
    monkeypatch.setenv(compile_ahead.ENVIRONMENT_SWITCH, "1")
    monkeypatch.setenv("NUMBA_CACHE_DIR", cache)
    monkeypatch.setattr(compile_ahead, "_helper", None)
    net = network_from_text(TINY_DETECTOR, str(cfg))
    if not compile_ahead.enabled():
        pytest.skip("one core: no helper")
    compile_ahead.arm(net)
    compile_ahead.start_if_armed()
    helper = compile_ahead._helper
    assert helper is not None
    assert helper.wait(timeout=240) == 0
    compile_ahead.start_if_armed()                   # once per process: nothing is armed any more
    assert compile_ahead._helper is helper
    import numba
    done = run_python(COUNT_COMPILATIONS, tmp_path, NUMBA_CACHE_DIR=cache,
                      NUMBA_NUM_THREADS=str(numba.get_num_threads()))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "0"
    assert int(done.stdout.split()[1]) >= 1


def test_compile_ahead_is_stopped_with_its_process_and_leaves_when_its_parent_is_gone(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    from darknetpy import compile_ahead
    from darknetpy.network import network_from_text
    cfg = tmp_path / "stopped.cfg"
    cfg.write_text(TINY_DETECTOR)
    monkeypatch.setenv(compile_ahead.ENVIRONMENT_SWITCH, "1")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(compile_ahead, "_helper", None)
    if not compile_ahead.enabled():
        pytest.skip("one core: no helper")
    compile_ahead.arm(network_from_text(TINY_DETECTOR, str(cfg)))
    compile_ahead.start_if_armed()
    helper = compile_ahead._helper
    compile_ahead.stop()
    assert helper.poll() is not None and compile_ahead._helper is None
    assert not _processes_mentioning(str(cfg))
    # started by a process that is not the one it was told to serve: it leaves at once, compiling nothing
    orphan = subprocess.run([sys.executable, "-m", "darknetpy.compile_ahead", str(cfg), "32", "32", "1", "1",
                             str(os.getpid() + 10 ** 7)], cwd=tmp_path, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO), "NUMBA_CACHE_DIR": str(tmp_path / "orphan")})
    assert orphan.returncode == 0
    assert not (tmp_path / "orphan").exists()


def test_compile_ahead_is_off_when_the_environment_says_so(monkeypatch) -> None:
    from darknetpy import compile_ahead
    for value in ("0", "off", "false"):
        monkeypatch.setenv(compile_ahead.ENVIRONMENT_SWITCH, value)
        assert not compile_ahead.enabled()


def test_compile_ahead_is_not_armed_when_the_network_would_crowd_the_memory(tmp_path: Path, monkeypatch) -> None:
    from darknetpy import compile_ahead
    from darknetpy.network import network_from_text
    cfg = tmp_path / "big.cfg"
    cfg.write_text(TINY_DETECTOR)
    net = network_from_text(TINY_DETECTOR, str(cfg))
    # weights: 8*3*9 + 4*8 (biases, BN scales, means, variances), 8*8 + 8 twice, 21*16 + 21; outputs: conv,
    # conv and shortcut 8x32x32, maxpool 8x16x16, conv 8x16x16, upsample 8x32x32, route 16x32x32, conv and
    # yolo 21x32x32
    weights = 8 * 3 * 9 + 4 * 8 + 2 * (8 * 8 + 8) + 21 * 16 + 21
    outputs = 3 * 8 * 1024 + 8 * 256 + 8 * 256 + 8 * 1024 + 16 * 1024 + 2 * 21 * 1024
    assert compile_ahead.helper_bytes(net, 1) == 4 * (weights + outputs)
    assert compile_ahead.helper_bytes(net, 3) == 4 * (weights + 3 * outputs)
    monkeypatch.setenv(compile_ahead.ENVIRONMENT_SWITCH, "1")
    monkeypatch.setattr(compile_ahead, "enabled", lambda: True)
    monkeypatch.setattr(compile_ahead, "_plan", None)
    need = compile_ahead.helper_bytes(net, 1)
    monkeypatch.setattr(compile_ahead, "available_memory", lambda: 4 * need - 4)
    compile_ahead.arm(net)
    assert compile_ahead._plan is None
    monkeypatch.setattr(compile_ahead, "available_memory", lambda: 4 * need)
    compile_ahead.arm(net)
    assert compile_ahead._plan is not None and compile_ahead._plan[0] == str(cfg)


def test_first_run_of_predict_with_the_helper_prints_its_answers_and_leaves_no_process(tmp_path: Path) -> None:
    cfg = tmp_path / "mnist-copy.cfg"
    cfg.write_text((REPO / "cfg" / "mnist.cfg").read_text())
    env = {**os.environ, "PYTHONPATH": str(REPO), "NUMBA_CACHE_DIR": str(tmp_path / "cache"),
           "DARKNETPY_COMPILE_AHEAD": "1"}
    done = subprocess.run([sys.executable, "-m", "darknetpy", "predict", str(cfg), str(REPO / "weights" / "mnist.weights"),
                           str(REPO / "darknetpy" / "samples" / "digit_7.png"), "--top", "1"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].endswith(": 7")
    from darknetpy.compile_notice import NOTICE
    assert done.stderr.count(NOTICE) == 1
    assert not _processes_mentioning(str(cfg))


def test_importing_the_package_makes_no_numba_dispatcher_until_a_kernel_runs(tmp_path: Path) -> None:
    # each cached dispatcher costs ~0.2 ms to make: importing every module must make none of them
    done = run_python("""
        import importlib, pkgutil
        import numpy as np
        import darknetpy, darknetpy.api, darknetpy.kernels as kernels
        from darknetpy.kernels import Kernel
        for info in pkgutil.iter_modules(kernels.__path__):
            importlib.import_module("darknetpy.kernels." + info.name)
        found = [obj for name in list(__import__("sys").modules) if name.startswith("darknetpy")
                 for obj in vars(__import__("sys").modules[name]).values() if isinstance(obj, Kernel)]
        made = [k for k in found if k._dispatcher is not None]
        print(len(found), len(made))
        from darknetpy.kernels import softmax
        y = np.zeros((1, 3), np.float32)
        softmax.softmax_groups(np.array([[1, 2, 3]], np.float32), 1, 1.0, y)
        assert abs(float(y.sum()) - 1) < 1e-6
        print(softmax.softmax_groups._dispatcher is not None, softmax.softmax_groups.py_func.__name__)
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    counts, after = done.stdout.splitlines()
    found, made = map(int, counts.split())
    assert found > 200 and made == 0
    assert after == "True softmax_groups"
