"""Data-parallel training under `mpiexec -n 2` (darknetpy/distributed/mpi.py), against the single-process run
as the oracle: the same cfg and --seed must give the same weights (within 1e-5) after 3 updates for a
classifier, a detector and a segmenter, resuming with --weights too; a bad `subdivisions` is one located line;
a killed rank ends the job quickly with the last checkpoint intact.

Every launch follows /work/notes/DISTRIBUTED_FACTS.md: ranks talk over loopback only (ofi/tcp on `lo`, the
fork launcher, host 127.0.0.1), every run has a timeout, and its whole process group is gone afterwards.

Launches are few because each costs every rank a Python start and the darknetpy, mpi4py and Numba-cache
loading: the four trainings compared with one process, a failing rank and the ranks' thread shares share ONE
launch (tests/mpi_training_job.py, module fixture `trained`), while this process trains the single-process
references; only the located `subdivisions` error and the killed rank go through `darknetpy train` itself."""
from __future__ import annotations

import contextlib
import functools
import io
import json
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
import darknetpy.training.loop as training_loop
from darknetpy.cli import main
from darknetpy.data import BatchLoader
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


JOB_SCRIPT = Path(__file__).with_name("mpi_training_job.py")
THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")


def launch_job(runs: list[dict], folder: Path, env=None) -> subprocess.Popen:
    """One mpiexec launch training `runs` in sequence (tests/mpi_training_job.py)."""
    keys = ("name", "cwd", "cfg", "data", "seed", "weights", "max_batches", "checkpoint_every")
    spec = folder / "job.json"
    spec.write_text(json.dumps({"runs": [{key: str(run[key]) if isinstance(run[key], Path) else run[key]
                                          for key in keys if key in run} for run in runs]}))
    return launch([], folder, command=[sys.executable, str(JOB_SCRIPT), str(spec)], env=env)


def sections(text: str) -> dict[str, str]:
    """The job's output split at rank 0's `=== NAME` lines."""
    found, name = {}, None
    for line in text.splitlines(keepends=True):
        if line.startswith("=== "):
            name = line[4:].strip()
            found[name] = ""
        elif name is not None:
            found[name] += line
    return found


def single_train(run: dict) -> str:
    """The single-process `darknetpy train` of a run, in this process (its loader in threads, as the job's)."""
    args = ["train", run["cfg"], run["data"], "--seed", run["seed"], "--workers", "1"]
    if run.get("weights"):
        args += ["--weights", run["weights"]]
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        patch.chdir(run["cwd"])
        patch.setattr(training_loop, "BatchLoader", functools.partial(BatchLoader, backend="thread"))
        code = main([str(a) for a in args])
    assert code == 0, err.getvalue()
    return out.getvalue()


def training_runs(root: Path) -> list[dict]:
    """The classifier (4 passes per update, 2 per rank: the BN weighting matters), a resume from weights that
    have seen one update, the detector (random=1: the resizes must agree too) and the segmenter; `root` holds
    their data and each run's `backup` folder."""
    classification = make_classification_set(root / "cls" / "ds")
    (root / "cls" / "c.cfg").write_text(CLASSIFIER.format(subdivisions=4))
    resumed = make_classification_set(root / "resume" / "ds")
    (root / "resume" / "c.cfg").write_text(CLASSIFIER.format(subdivisions=2))
    start = darknetpy.load(root / "resume" / "c.cfg", seed=2)
    start.seen = 8   # one update of 8 images done: the run trains updates 2 and 3
    start.save_weights(root / "resume" / "start.weights")
    detection = make_detection_set(root / "det" / "set")
    (root / "det" / "tiny-yolo.cfg").write_text(TINY_DETECTOR.format(max_batches=3, random=1))
    segmentation = make_segmentation_set(root / "seg")
    cfg = segmentation / "seg.cfg"
    cfg.write_text(cfg.read_text().replace("subdivisions=1", "subdivisions=2"))
    return [
        dict(name="classifier", cwd=classification.parent, cfg=root / "cls" / "c.cfg", data=classification,
             seed=5, weights_out=classification.parent / "backup" / "c.weights"),
        dict(name="resume", cwd=resumed.parent, cfg=root / "resume" / "c.cfg", data=resumed, seed=2,
             weights=root / "resume" / "start.weights", weights_out=resumed.parent / "backup" / "c.weights"),
        dict(name="detector", cwd=root / "det", cfg=root / "det" / "tiny-yolo.cfg", data=detection, seed=7,
             weights_out=root / "det" / "backup" / "tiny-yolo_final.weights"),
        dict(name="segmenter", cwd=segmentation, cfg=cfg, data=segmentation / "seg.data", seed=3,
             weights_out=segmentation / "backup" / "seg.weights"),
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """ONE 2-rank launch trains every run of `training_runs`, then a run whose images are all unreadable (a
    rank fails there and ends the job); this process trains the single-process references on a copy of the
    same data first, so that a cold Numba cache is filled by one process, not three at once. The ranks start
    with no thread variable set, to show they take their share of the cores."""
    folder = tmp_path_factory.mktemp("mpi")
    single = training_runs(folder / "single")
    single_out = {run["name"]: single_train(run) for run in single}
    parallel = training_runs(folder / "parallel")
    broken = make_classification_set(folder / "broken" / "ds")
    for image in sorted((broken.parent / "img").iterdir()):
        image.write_bytes(b"not a png")   # listed and present, unreadable only when a rank loads it
    (folder / "broken" / "c.cfg").write_text(CLASSIFIER.format(subdivisions=2))
    failing = dict(name="broken", cwd=broken.parent, cfg=folder / "broken" / "c.cfg", data=broken, seed=1)
    env = {key: value for key, value in os.environ.items() if key not in THREAD_VARIABLES}
    code, out, err = finish(launch_job(parallel + [failing], folder, env=env), timeout=120)
    return dict(code=code, out=out, err=err, out_by_run=sections(out), err_by_run=sections(err),
                parallel={run["name"]: run for run in parallel}, single={run["name"]: run for run in single},
                single_out=single_out, broken=broken.parent)


def assert_same_weights(cfg, single, parallel):
    a, b = darknetpy.load(cfg, single), darknetpy.load(cfg, parallel)
    assert a.seen == b.seen
    compared = 0
    for la, lb in zip(a.network.layers, b.network.layers):
        for wa, wb in zip(la.weight_arrays(saving=True), lb.weight_arrays(saving=True)):
            np.testing.assert_allclose(wb, wa, rtol=1e-5, atol=1e-5)
            compared += 1
    assert compared > 0


def assert_trained_alike(trained, name) -> dict:
    parallel, single = trained["parallel"][name], trained["single"][name]
    # the job reached the last run, so this one ended with status 0
    assert name in trained["out_by_run"] and "broken" in trained["out_by_run"], trained["err"]
    assert_same_weights(single["cfg"], single["weights_out"], parallel["weights_out"])
    return parallel


def iteration_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line[:1].isdigit() and ": " in line and "rate" in line]


def losses(out: str) -> list[float]:
    """Loss and avg loss of each iteration line `N, epoch: loss, avg avg, ...`."""
    return [float(v.split()[0]) for line in iteration_lines(out) for v in line.split(": ", 1)[1].split(", ")[:2]]


def test_two_ranks_train_a_classifier_like_one_process(trained):
    parallel = assert_trained_alike(trained, "classifier")
    # rank 0 alone prints: each iteration once, with the single process's loss
    out = trained["out_by_run"]["classifier"]
    assert len(iteration_lines(out)) == 3
    assert losses(out) == pytest.approx(losses(trained["single_out"]["classifier"]), rel=1e-5)
    rows = (parallel["cwd"] / "backup" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 4   # header + 3 iterations, written once


def test_two_ranks_resume_from_weights_like_one_process(trained):
    parallel = assert_trained_alike(trained, "resume")
    assert darknetpy.load(parallel["cfg"], parallel["weights_out"]).seen == 24
    assert len(iteration_lines(trained["out_by_run"]["resume"])) == 2   # updates 2 and 3 only


def test_two_ranks_train_a_detector_like_one_process(trained):
    assert_trained_alike(trained, "detector")


def test_two_ranks_train_a_segmenter_like_one_process(trained):
    assert_trained_alike(trained, "segmenter")


def test_a_failing_rank_prints_one_line_and_ends_the_job(trained):
    assert trained["code"] != 0
    lines = [line for line in trained["err"].splitlines() if "failed, ending the MPI job" in line]
    assert 1 <= len(lines) <= 2 and all(".png" in line for line in lines), trained["err"]
    assert all(line in trained["err_by_run"]["broken"] for line in lines)
    assert "Traceback" not in trained["err"]
    assert not (trained["broken"] / "backup" / "c.weights").exists()


def test_each_local_rank_gets_its_share_of_the_cores(trained):
    share = str(max(1, len(os.sched_getaffinity(0)) // 2))
    found = sorted(line for line in trained["out"].splitlines() if line.startswith("threads "))
    assert found == [f"threads 0 {share} {share} {share}", f"threads 1 {share} {share} {share}"], trained["out"]


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
    # MPICH's launcher names the rank's end in one line (inside its banner). The surviving rank cannot add one
    # of its own: hydra ends it with SIGKILL the moment it sees the other rank die, with no signal before it.
    assert "Killed (signal 9)" in out + err
    checkpoint = darknetpy.load(cfg, backup / "c.backup")
    assert checkpoint.seen > 0 and checkpoint.seen % 8 == 0


def test_thread_share_keeps_what_the_user_set():
    environ = {"OPENBLAS_NUM_THREADS": "3"}
    chosen = share_threads(4, environ)
    assert environ["OPENBLAS_NUM_THREADS"] == "3" and "OPENBLAS_NUM_THREADS" not in chosen
    assert environ["NUMBA_NUM_THREADS"] == str(thread_share(4))
    assert thread_share(3, cores=8) == 2 and thread_share(16, cores=8) == 1


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
    # through the job script (the function `darknetpy train` calls, loader in threads): no process start per rank
    process = launch_job([dict(name="long", cwd=data.parent, cfg=cfg, data=data, seed=1, max_batches=100000,
                               checkpoint_every=2)], tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not (backup / "c.backup").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
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
