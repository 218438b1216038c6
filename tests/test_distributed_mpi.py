"""Data-parallel training under `mpiexec -n 2` (darknetpy/distributed/mpi.py), against the single-process run
as the oracle: the same cfg and --seed must give the same weights (within 1e-5) after 3 updates for a
classifier, a detector and a segmenter, resuming with --weights too; a bad `subdivisions` is one located line;
a killed rank ends the job quickly with the last checkpoint intact.

Every launch follows /work/notes/DISTRIBUTED_FACTS.md: ranks talk over loopback only (ofi/tcp on `lo`, the
fork launcher, host 127.0.0.1), every run has a timeout, and its whole process group is gone afterwards."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

import darknetpy
from darknetpy.cli import main
from darknetpy.distributed.threads import share_threads, thread_share

if not os.environ.get("CI"):
    pytest.importorskip("mpi4py", reason="needs the distributed extra")
from test_segmentation_cli import make_dataset as make_segmentation_set  # noqa: E402
from test_train_detect_cli import TINY_DETECTOR, make_detection_set  # noqa: E402
from test_training import make_dataset as make_classification_set  # noqa: E402

LOOPBACK = {"MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp", "FI_TCP_IFACE": "lo"}
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")

CLASSIFIER = """[net]
batch=8
subdivisions={subdivisions}
width=8
height=8
channels=3
learning_rate=0.05
momentum=0.9
decay=0.001
max_batches=3
policy=constant
min_crop=8
max_crop=10
flip=1
exposure=1.5

[convolutional]
batch_normalize=1
filters=4
size=3
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[connected]
output=2
activation=linear

[softmax]
"""


JOB_MARK = "DARKNETPY_TEST_MPI_JOB"   # every process of a test's job inherits it: how leftovers are found


def launch(args, cwd, ranks=2, command=None, env=None) -> subprocess.Popen:
    command = command or [sys.executable, "-m", "darknetpy", *map(str, args)]
    env = {**(env if env is not None else os.environ), **LOOPBACK, JOB_MARK: uuid.uuid4().hex}
    process = subprocess.Popen([MPIEXEC, "-launcher", "fork", "-hosts", "127.0.0.1", "-n", str(ranks), *command],
                               cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    process.job = env[JOB_MARK]
    return process


def job_processes(job: str) -> dict[int, list[bytes]]:
    """pid -> environment of every live process carrying the job's mark."""
    found = {}
    marker = f"{JOB_MARK}={job}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in environ and state != "Z":
            found[int(entry.name)] = environ
    return found


def finish(process: subprocess.Popen, timeout=180) -> tuple[int, str, str]:
    """Wait for the job; whatever happens, no process of it outlives the test."""
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
        deadline = time.monotonic() + 5
        while job_processes(process.job) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = job_processes(process.job)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert not left, f"the MPI job left processes behind: {sorted(left)}"
    return process.returncode, out, err


def mpi_train(args, cwd, ranks=2, timeout=180) -> tuple[int, str, str]:
    return finish(launch(["train", *args], cwd, ranks), timeout)


def single_train(args, cwd, monkeypatch, capsys) -> str:
    monkeypatch.chdir(cwd)
    assert main(["train", *map(str, args)]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def assert_same_weights(cfg, single, parallel):
    a, b = darknetpy.load(cfg, single), darknetpy.load(cfg, parallel)
    assert a.seen == b.seen
    compared = 0
    for la, lb in zip(a.network.layers, b.network.layers):
        for wa, wb in zip(la.weight_arrays(saving=True), lb.weight_arrays(saving=True)):
            np.testing.assert_allclose(wb, wa, rtol=1e-5, atol=1e-5)
            compared += 1
    assert compared > 0


def iteration_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line[:1].isdigit() and ": " in line and "rate" in line]


def losses(out: str) -> list[float]:
    """Loss and avg loss of each iteration line `N, epoch: loss, avg avg, ...`."""
    return [float(v.split()[0]) for line in iteration_lines(out) for v in line.split(": ", 1)[1].split(", ")[:2]]


def test_two_ranks_train_a_classifier_like_one_process(tmp_path, monkeypatch, capsys):
    data = make_classification_set(tmp_path / "ds")
    cfg = tmp_path / "c.cfg"
    cfg.write_text(CLASSIFIER.format(subdivisions=4))   # 2 passes per rank: the BN weighting matters
    single_out = single_train([cfg, data, "--seed", "5", "--workers", "1"], data.parent, monkeypatch, capsys)
    shutil.move(data.parent / "backup", tmp_path / "single")
    code, out, err = mpi_train([cfg, data, "--seed", "5", "--workers", "1"], data.parent)
    assert code == 0, err
    assert_same_weights(cfg, tmp_path / "single" / "c.weights", data.parent / "backup" / "c.weights")
    # rank 0 alone prints: each iteration once, with the single process's loss
    assert len(iteration_lines(out)) == 3
    assert losses(out) == pytest.approx(losses(single_out), rel=1e-5)
    rows = (data.parent / "backup" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 4   # header + 3 iterations, written once


def test_two_ranks_resume_from_weights_like_one_process(tmp_path, monkeypatch, capsys):
    data = make_classification_set(tmp_path / "ds")
    cfg = tmp_path / "c.cfg"
    cfg.write_text(CLASSIFIER.format(subdivisions=2))
    single_train([cfg, data, "--seed", "2", "--workers", "1", "--max-batches", "1"], data.parent, monkeypatch,
                 capsys)
    start = tmp_path / "start.weights"
    shutil.move(data.parent / "backup" / "c.weights", start)
    shutil.rmtree(data.parent / "backup")
    resume = [cfg, data, "--seed", "2", "--workers", "1", "--weights", start]
    single_train(resume, data.parent, monkeypatch, capsys)
    shutil.move(data.parent / "backup", tmp_path / "single")
    code, out, err = mpi_train(resume, data.parent)
    assert code == 0, err
    assert darknetpy.load(cfg, data.parent / "backup" / "c.weights").seen == 24
    assert_same_weights(cfg, tmp_path / "single" / "c.weights", data.parent / "backup" / "c.weights")


def test_two_ranks_train_a_detector_like_one_process(tmp_path, monkeypatch, capsys):
    data = make_detection_set(tmp_path / "set")
    cfg = tmp_path / "tiny-yolo.cfg"
    cfg.write_text(TINY_DETECTOR.format(max_batches=3, random=1))   # random=1: the resizes must agree too
    monkeypatch.chdir(tmp_path)
    single_train([cfg, data, "--seed", "7", "--workers", "1"], tmp_path, monkeypatch, capsys)
    shutil.move(tmp_path / "backup", tmp_path / "single")
    code, out, err = mpi_train([cfg, data, "--seed", "7", "--workers", "1"], tmp_path)
    assert code == 0, err
    assert_same_weights(cfg, tmp_path / "single" / "tiny-yolo_final.weights",
                        tmp_path / "backup" / "tiny-yolo_final.weights")


def test_two_ranks_train_a_segmenter_like_one_process(tmp_path, monkeypatch, capsys):
    root = make_segmentation_set(tmp_path / "d")
    cfg = root / "seg.cfg"
    cfg.write_text(cfg.read_text().replace("subdivisions=1", "subdivisions=2"))
    single_train(["seg.cfg", "seg.data", "--seed", "3", "--workers", "1"], root, monkeypatch, capsys)
    shutil.move(root / "backup", tmp_path / "single")
    code, out, err = mpi_train(["seg.cfg", "seg.data", "--seed", "3", "--workers", "1"], root)
    assert code == 0, err
    assert_same_weights(cfg, tmp_path / "single" / "seg.weights", root / "backup" / "seg.weights")


def test_subdivisions_the_ranks_cannot_share_is_one_located_line(tmp_path):
    data = make_classification_set(tmp_path / "ds")
    cfg = tmp_path / "c.cfg"
    cfg.write_text(CLASSIFIER.format(subdivisions=3))
    code, out, err = mpi_train([cfg, data, "--workers", "1"], data.parent, timeout=60)
    assert code == 2
    assert err.splitlines() == [f"{cfg}:3: subdivisions=3 cannot be shared by 2 MPI ranks: each rank runs "
                                "subdivisions/ranks passes per update, so subdivisions must be a multiple of 2"]
    assert not (data.parent / "backup" / "c.weights").exists()


def _rank_pids(job: str, rank: int) -> list[int]:
    """The rank's own process (its data-loading workers carry its environment but another command line)."""
    found = []
    for pid, environ in job_processes(job).items():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if f"PMI_RANK={rank}".encode() in environ and b"darknetpy\0train" in cmdline:
            found.append(pid)
    return found


def test_a_killed_rank_ends_the_job_quickly_and_the_last_checkpoint_is_intact(tmp_path):
    data = make_classification_set(tmp_path / "ds")
    cfg = tmp_path / "c.cfg"
    cfg.write_text(CLASSIFIER.format(subdivisions=2))
    backup = data.parent / "backup"
    process = launch(["train", cfg, data, "--seed", "1", "--workers", "1", "--max-batches", "100000",
                      "--checkpoint-every", "2"], data.parent)
    try:
        deadline = time.monotonic() + 120
        while not (backup / "c.backup").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (backup / "c.backup").exists(), "no checkpoint was written"
        time.sleep(0.5)
        victims = _rank_pids(process.job, 1)
        assert len(victims) == 1, victims   # the rank itself, not its data-loading worker
        os.kill(victims[0], signal.SIGKILL)
        killed = time.monotonic()
        code, out, err = finish(process, timeout=30)
        assert time.monotonic() - killed <= 30
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert code != 0
    # MPICH's launcher names the rank's end in one line
    assert "Killed (signal 9)" in out + err
    checkpoint = darknetpy.load(cfg, backup / "c.backup")
    assert checkpoint.seen > 0 and checkpoint.seen % 8 == 0


def test_each_local_rank_gets_its_share_of_the_cores(tmp_path):
    script = ("import os, darknetpy, numba; print(os.environ['PMI_RANK'], os.environ['NUMBA_NUM_THREADS'], "
              "os.environ['OPENBLAS_NUM_THREADS'], numba.get_num_threads())")
    env = {key: value for key, value in os.environ.items()
           if key not in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    process = launch([], tmp_path, command=[sys.executable, "-c", script], env=env)
    code, out, err = finish(process, timeout=60)
    assert code == 0, err
    share = str(max(1, len(os.sched_getaffinity(0)) // 2))
    assert sorted(out.split("\n")[:2]) == [f"0 {share} {share} {share}", f"1 {share} {share} {share}"]


def test_thread_share_keeps_what_the_user_set():
    environ = {"OPENBLAS_NUM_THREADS": "3"}
    chosen = share_threads(4, environ)
    assert environ["OPENBLAS_NUM_THREADS"] == "3" and "OPENBLAS_NUM_THREADS" not in chosen
    assert environ["NUMBA_NUM_THREADS"] == str(thread_share(4))
    assert thread_share(3, cores=8) == 2 and thread_share(16, cores=8) == 1


def test_a_failing_rank_prints_one_line_and_ends_the_job(tmp_path):
    data = make_classification_set(tmp_path / "ds")
    for image in sorted((data.parent / "img").iterdir()):
        image.write_bytes(b"not a png")   # listed and present, unreadable only when a rank loads it
    cfg = tmp_path / "c.cfg"
    cfg.write_text(CLASSIFIER.format(subdivisions=2))
    code, out, err = mpi_train([cfg, data, "--seed", "1", "--workers", "1"], data.parent, timeout=60)
    assert code != 0
    lines = [line for line in err.splitlines() if "failed, ending the MPI job" in line]
    assert 1 <= len(lines) <= 2 and all(".png" in line for line in lines), err
    assert "Traceback" not in err


def test_the_loader_loads_only_its_rows_exactly_as_in_the_whole_batch(tmp_path):
    from darknetpy.data import BatchLoader, ClassificationDataset
    from darknetpy.config import read_data_file
    data = make_classification_set(tmp_path / "ds")
    cfg = tmp_path / "c.cfg"
    cfg.write_text(CLASSIFIER.format(subdivisions=4))
    net = darknetpy.load(cfg).network.net
    dataset = ClassificationDataset(read_data_file(data), net, train=True, seed=3)
    rows = np.array([2, 3, 6, 7])   # rank 1 of 2: passes 1 and 3 of batch 2
    with BatchLoader(dataset, seed=3, backend="thread") as whole, \
            BatchLoader(dataset, seed=3, backend="thread", rows=rows, workers=1) as part:
        for _ in range(2):
            (x, y), (xr, yr) = whole.next_batch(), part.next_batch()
            np.testing.assert_array_equal(xr, x[rows])
            np.testing.assert_array_equal(yr, y[rows])


def test_ctrl_c_saves_the_interrupted_checkpoint_once_and_ends_every_rank(tmp_path):
    data = make_classification_set(tmp_path / "ds")
    cfg = tmp_path / "c.cfg"
    cfg.write_text(CLASSIFIER.format(subdivisions=2))
    backup = data.parent / "backup"
    process = launch(["train", cfg, data, "--seed", "1", "--workers", "1", "--max-batches", "100000",
                      "--checkpoint-every", "2"], data.parent)
    try:
        deadline = time.monotonic() + 120
        while not (backup / "c.backup").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (backup / "c.backup").exists(), "no checkpoint was written"
        process.send_signal(signal.SIGINT)   # mpiexec passes Ctrl-C on to every rank
        interrupted = time.monotonic()
        code, out, err = finish(process, timeout=30)
        assert time.monotonic() - interrupted <= 15
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert code == 130
    saved = [line for line in err.splitlines() if line.startswith("interrupted at batch")]
    assert len(saved) == 1 and saved[0].endswith("saved backup/c.backup"), err
    batch = int(saved[0].split()[3].rstrip(":"))
    assert darknetpy.load(cfg, backup / "c.backup").seen == 8 * batch   # the last whole update
