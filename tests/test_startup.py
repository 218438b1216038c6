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
