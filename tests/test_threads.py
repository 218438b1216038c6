"""Threads: the parallel variants of the fast kernels against the same references as their serial ones
(tests/test_conv_fast_paths.py, run here with the thresholds lowered) and the thread environment (how idle
OpenMP and OpenBLAS workers wait, and the warnings when that is set too late). A file of its own so that its parallel compiles and subprocesses run beside the fast-paths file."""
import os
import subprocess
import sys
import warnings

import pytest

import test_conv_fast_paths as fast
from darknetpy.kernels import batchnorm as bn_kernels
from darknetpy.kernels import pooling, winograd


# ---- parallel variants (the cases above are too small to cross the thresholds) --------------------------
def test_parallel_kernels_agree_with_the_references(monkeypatch):
    import numba
    from darknetpy.kernels import depthwise, depthwise_channels_last, im2col
    if numba.get_num_threads() < 2:
        pytest.skip("one Numba thread: the parallel kernels never run")
    for module, name in [(depthwise, "PARALLEL_MIN_MACS"), (depthwise_channels_last, "PARALLEL_MIN_MACS"),
                         (im2col, "PARALLEL_MIN_ELEMENTS"), (bn_kernels, "PARALLEL_MIN_ELEMENTS"),
                         (pooling, "PARALLEL_MIN_ELEMENTS")]:
        monkeypatch.setattr(module, name, 1)
    fast.test_direct_forward_matches_naive(fast.DIRECT_CASES[4])
    fast.test_direct_forward_matches_naive(fast.DIRECT_CASES[16])  # phases from a column split
    fast.test_direct_forward_matches_naive(fast.DIRECT_CASES[17])  # 5 planes: runs of unequal length
    fast.test_channels_last_depthwise_forward_matches_naive(fast.CHANNELS_LAST_CASES[1])
    fast.test_channels_last_depthwise_forward_matches_naive(fast.CHANNELS_LAST_CASES[4])
    fast.test_direct_backward_matches_torch(fast.DIRECT_CASES[1])
    fast.test_winograd_matches_naive_for_every_block_size(4, 2, 5, 6, 9, 11, 1)
    fast.test_im2col_batch_and_its_adjoint((2, 3, 7, 9, 3, 1, 1, 1))
    fast.test_batchnorm_kernels_match_spec_formulas((4, 3, 7))
    # 2x2 windows, padded, with and without winners, and 3x3 at stride 2 (the threaded drivers of the other
    # windows: one case of each in test_layers_pooling.py; each parallel variant compiles for seconds)
    fast.test_maxpool_kernel_matches_naive_with_ties_nan_and_flt_max(2, 2, 1, 7, 9)
    fast.test_maxpool_kernel_matches_naive_with_ties_nan_and_flt_max(3, 2, 1, 8, 7)
    fast.test_training_forward_and_backward_match_torch_and_spec(
        "filters=5\nsize=3\npad=1\nbatch_normalize=1", 6, "leaky")


# ---- thread policy -------------------------------------------------------------------------------------
def test_idle_openmp_workers_sleep_unless_the_user_said_otherwise():
    import darknetpy.kernels.threads as threads
    assert os.environ.get("OMP_WAIT_POLICY")  # set (by us, or earlier by the user)
    saved = os.environ.pop("OMP_WAIT_POLICY")
    try:
        threads.apply_defaults()
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
        os.environ["OMP_WAIT_POLICY"] = "ACTIVE"
        threads.apply_defaults()
        assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    finally:
        os.environ["OMP_WAIT_POLICY"] = saved


@pytest.mark.parametrize("user_value", [None, "20"])
def test_openblas_idle_workers_spin_briefly_set_before_numpy_loads(user_value):
    # OpenBLAS reads the variable when numpy loads it: what counts is its value at numpy's import
    script = ("import os, sys\n"
              "class Spy:\n"
              "    def find_spec(self, name, path=None, target=None):\n"
              "        if name == 'numpy':\n"
              "            print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'))\n"
              "            sys.meta_path.remove(self)\n"
              "sys.meta_path.insert(0, Spy())\n"
              "import darknetpy\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if user_value:
        env["OPENBLAS_THREAD_TIMEOUT"] = user_value
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == [user_value or "16"], done.stderr


def test_warns_when_numba_threads_were_started_spinning_before_import():
    script = ("import warnings, numba\n"
              "numba.set_num_threads(2)\n"
              "with warnings.catch_warnings(record=True) as caught:\n"
              "    warnings.simplefilter('always')\n"
              "    import darknetpy\n"
              "print(numba.threading_layer(), sum('OMP_WAIT_POLICY' in str(w.message) for w in caught))\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["NUMBA_NUM_THREADS"] = "2"
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    layer, warned = done.stdout.split()
    assert warned == ("1" if layer == "omp" else "0"), done.stderr


def test_warns_once_when_numpy_was_imported_before_the_blas_setting(monkeypatch):
    """...and records that OpenBLAS's workers spin (inference then keeps BLAS out of multi-threaded passes)."""
    from darknetpy import thread_environment
    from darknetpy.errors import DarknetWarning
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(thread_environment, "_blas_workers_spin", thread_environment.blas_workers_spin())
    note = thread_environment.note_blas_settings
    with pytest.warns(DarknetWarning, match="OPENBLAS_THREAD_TIMEOUT=16"):
        note(["OPENBLAS_THREAD_TIMEOUT"], {"numpy": object()})
    assert thread_environment.blas_workers_spin()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        note(["OPENBLAS_THREAD_TIMEOUT"], {})          # numpy not loaded yet: in time
        assert not thread_environment.blas_workers_spin()
        note([], {"numpy": object()})                 # the user's own setting
        assert not thread_environment.blas_workers_spin()
        monkeypatch.setenv("OMP_NUM_THREADS", "1")     # no idle BLAS threads at all
        note(["OPENBLAS_THREAD_TIMEOUT"], {"numpy": object()})
        assert not thread_environment.blas_workers_spin()
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        note(["OPENBLAS_THREAD_TIMEOUT"], {"numpy": object()})
        assert not thread_environment.blas_workers_spin()


def test_importing_numpy_first_is_noticed():
    script = ("import warnings\nwarnings.simplefilter('ignore')\nimport numpy\nimport darknetpy\n"
              "from darknetpy.thread_environment import blas_workers_spin\nprint(blas_workers_spin())\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT", "OMP_NUM_THREADS")}
    env["OPENBLAS_NUM_THREADS"] = "2"
    answers = [subprocess.run([sys.executable, "-c", body], env=env, capture_output=True, text=True,
                              timeout=120).stdout.strip()
               for body in (script, script.replace("import numpy\nimport darknetpy", "import darknetpy\nimport numpy"))]
    assert answers == ["True", "False"]
