"""Injected faults: a full disk while a checkpoint is written, and a training run whose loss turns NaN.

The contract (issue "Hardening"): one located error (`file: message`, exit status 2 on the CLI, no
traceback), and never a partial or overwritten output file. SIGKILL at random moments during training is
exercised by tests/test_training.py (a few trials) and `tools/fuzz.py --kill N` (many).
"""
from __future__ import annotations

import errno
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import darknetpy
from darknetpy import cli, fileio
from darknetpy.errors import WeightsError
from darknetpy.network import network_from_text
from darknetpy.weights import read_weights, write_weights
from naive_conv import conv2d, leaky
from naive_pooling import maxpool
from test_training import TINY_CFG, make_dataset

FLT_MAX = float(np.finfo(np.float32).max)

SMALL_CFG = """[net]
width=6
height=6
channels=2

[convolutional]
batch_normalize=1
filters=3
size=3
pad=1
activation=leaky

[connected]
output=4
activation=linear
"""


class _FullDiskStream:
    """A binary file that accepts `room` bytes and then fails as a full disk does (ENOSPC)."""

    def __init__(self, real: io.BufferedWriter, room: int):
        self.real = real
        self.room = room

    def __enter__(self) -> "_FullDiskStream":
        return self

    def __exit__(self, *exc_info) -> None:
        self.real.close()

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self.room:
            self.real.write(data[:self.room])  # what a full disk leaves behind: a partial write
            self.real.flush()
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.real.write(data)

    def flush(self) -> None:
        self.real.flush()

    def fileno(self) -> int:
        return self.real.fileno()


def fill_disk_after(monkeypatch, room: int) -> None:
    """Make every file darknetpy.fileio opens for writing fail with ENOSPC after `room` bytes."""
    real_fdopen = os.fdopen

    def fdopen(fd, mode="r", *args, **kwargs):
        stream = real_fdopen(fd, mode, *args, **kwargs)
        return _FullDiskStream(stream, room) if "w" in mode else stream

    monkeypatch.setattr(fileio.os, "fdopen", fdopen)


def small_network(seed: int):
    network = network_from_text(SMALL_CFG, "small.cfg")
    network.initialize(seed)
    return network


def weights_floats(path: Path) -> np.ndarray:
    return np.frombuffer(path.read_bytes(), "<f4", offset=20)


@pytest.mark.parametrize("room", [0, 20, 100])
def test_full_disk_while_saving_keeps_previous_checkpoint(tmp_path, monkeypatch, room):
    target = tmp_path / "model.backup"
    write_weights(small_network(1), target, seen=64)
    before = target.read_bytes()

    fill_disk_after(monkeypatch, room)
    with pytest.raises(WeightsError) as caught:
        write_weights(small_network(2), target, seen=128)

    err = caught.value
    assert err.path == str(target)
    assert "No space left on device" in err.message and "\n" not in str(err)
    assert str(err).startswith(f"{target}: ")
    assert target.read_bytes() == before  # the previous checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.backup"]  # and no temp file is left
    monkeypatch.undo()
    network = small_network(3)
    assert read_weights(network, target).seen == 64


def test_full_disk_reported_by_fsync_keeps_previous_checkpoint(tmp_path, monkeypatch):
    """Some filesystems (NFS, quota) only report ENOSPC when the data is flushed to disk."""
    target = tmp_path / "model.weights"
    write_weights(small_network(1), target)
    before = target.read_bytes()

    def failing_fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio.os, "fsync", failing_fsync)
    with pytest.raises(WeightsError, match="No space left on device"):
        write_weights(small_network(2), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.weights"]


def test_full_disk_on_the_command_line_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "small.cfg"
    cfg.write_text(SMALL_CFG)
    source = tmp_path / "full.weights"
    write_weights(small_network(1), source)
    out = tmp_path / "part.weights"
    write_weights(small_network(4), out)
    before = out.read_bytes()

    fill_disk_after(monkeypatch, 30)
    status = cli.main(["partial", str(cfg), str(source), str(out), "1"])

    err = capsys.readouterr().err
    assert status == 2
    assert err.strip() == f"{out}: cannot write weights: No space left on device"
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.weights", "part.weights", "small.cfg"]


# ---- a loss that turns NaN -----------------------------------------------------------------------------------
DIVERGED = re.compile(r"^(?P<cfg>\S+): loss became (?P<loss>nan|inf|-inf) at iteration (?P<iteration>\d+); "
                      r"the first non-finite output is in (?P<culprit>.+?)\. ")
BATCH = 4


def diverging_cfg(folder: Path, learning_rate: str) -> tuple[Path, Path]:
    data = make_dataset(folder / "ds")
    cfg = folder / "tiny.cfg"
    text = TINY_CFG.format(batch=BATCH, subdivisions=1, max_batches=20)
    cfg.write_text(text.replace("learning_rate=0.05", f"learning_rate={learning_rate}"))
    return cfg, data


@pytest.fixture(scope="module")
def diverged(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """`darknetpy train` with learning_rate=1e20 and a checkpoint after every batch: the second update
    overflows the connected layer."""
    folder = tmp_path_factory.mktemp("diverging")
    cfg, data = diverging_cfg(folder, "1e20")
    result = subprocess.run([sys.executable, "-m", "darknetpy", "train", str(cfg), str(data), "--seed", "1",
                             "--checkpoint-every", "1", "--workers", "1"],
                            cwd=folder, capture_output=True, text=True, timeout=180)
    return result, cfg, folder / "backup"


def constant_images() -> np.ndarray:
    """The dataset's red and blue squares as the network sees them: every crop of a uniform image is the
    same uniform 8x8 image (flip=0, no colour augmentation in the tiny cfg)."""
    colours = np.array([(220, 30, 30), (30, 30, 220)], np.float64) / 255.0
    return np.broadcast_to(colours[:, :, None, None], (2, 3, 8, 8)).copy()


def first_overflowing_layer(model) -> int | None:
    """Layer index where the float32 forward of the tiny classifier first leaves the float32 range,
    computed in float64 with the spec's naive conv / maxpool / connected."""
    conv, _, connected, _ = model.network.layers
    biases, weights = conv.weight_arrays()
    x = leaky(conv2d(constant_images(), weights.astype(np.float64), biases.astype(np.float64), 1, 1, 1))
    if not np.all(np.abs(x) < FLT_MAX):
        return 0
    pooled, _ = maxpool(x.astype(np.float32), 2, 2, 2, 1)
    c_biases, c_weights = connected.weight_arrays()
    y = pooled.reshape(2, -1).astype(np.float64) @ c_weights.reshape(c_weights.shape[0], -1).T.astype(np.float64)
    y += c_biases
    if not np.all(np.abs(y) < FLT_MAX):
        return 2
    return None


def test_diverging_training_exits_2_naming_the_first_non_finite_layer(diverged):
    result, cfg, backup_dir = diverged

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    # one message: no numpy RuntimeWarning ("overflow encountered in matmul") printed ahead of it
    assert "warning" not in result.stderr.lower(), result.stderr
    last = result.stderr.strip().splitlines()[-1]
    match = DIVERGED.match(last)
    assert match, last
    assert match["cfg"] == str(cfg)
    # the last good checkpoint loads, holds finite weights, and is what the diverging step started from
    model = darknetpy.load(cfg, backup_dir / "tiny.backup")
    assert model.seen > 0 and model.seen % BATCH == 0
    assert all(np.all(np.isfinite(a)) for layer in model.network.layers for a in layer.weight_arrays())
    culprit = first_overflowing_layer(model)
    assert culprit == 2
    assert match["culprit"] == f"layer {culprit} [connected]"
    assert not list(backup_dir.glob(".*.tmp"))
    lines = (backup_dir / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("batch,") and len(lines) == 1 + model.seen // BATCH


def test_diverging_training_names_the_diverging_iteration(diverged):
    """Was one too high: the batch counter already includes the diverging batch."""
    result, cfg, backup_dir = diverged
    match = DIVERGED.match(result.stderr.strip().splitlines()[-1])
    model = darknetpy.load(cfg, backup_dir / "tiny.backup")
    # the checkpoint was written after every good batch, so the diverging one comes right after it
    assert int(match["iteration"]) == model.seen // BATCH + 1


def test_infinite_loss_from_saturated_softmax_names_a_layer(tmp_path, monkeypatch):
    """learning_rate=1e6 saturates the softmax without overflowing any output, so the loss is inf (log 0 for
    a true class) while every output is finite: the message names the layer whose cost is inf (it said
    'unknown layer'). Driven in-process (the training loop's own check, without the data-loading processes)
    to keep the test fast."""
    from darknetpy.training import TrainingDiverged, TrainingRun, TrainOptions

    cfg, data = diverging_cfg(tmp_path, "1e6")
    monkeypatch.chdir(tmp_path)  # TrainingRun creates the backup folder (relative to the working directory)
    run = TrainingRun(str(cfg), str(data), TrainOptions(seed=1, checkpoint_every=1, workers=1),
                      out=io.StringIO(), err=io.StringIO())
    images = np.repeat(constant_images().astype(np.float32), BATCH // 2, axis=0)
    truth = np.repeat(np.eye(2, dtype=np.float32), BATCH // 2, axis=0)
    for _ in range(10):
        loss = run.model.train_batch(images, truth)
        if not np.isfinite(loss):
            break
    assert np.isinf(loss)
    assert all(np.all(np.isfinite(out)) for out in run.network.outputs if out is not None)
    with pytest.raises(TrainingDiverged) as caught:
        run._diverged(loss)
    match = DIVERGED.match(str(caught.value))
    assert match, str(caught.value)
    assert re.fullmatch(r"layer \d+ \[\w+\]", match["culprit"]), match["culprit"]
    softmax = run.network.layers[3]
    assert np.isinf(softmax.cost) and match["culprit"] == "layer 3 [softmax]"


# ---- temporary files a SIGKILL leaves behind ---------------------------------------------------------------
def dead_pid() -> int:
    """The pid of a process that has exited (reuse within the test's few seconds is not a concern)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    gone = dead_pid()
    stale = [f".tiny.backup.{gone}.0123abcd.tmp", f".metrics.csv.{gone}.ffffffff.tmp",
             f".tiny_3.weights.{os.getpid()}.89abcdef.tmp"]  # this pid, but no writer open on it: a former process
    kept = [f".tiny.backup.{os.getppid()}.0123abcd.tmp",  # a live writer (another process)
            "notes.tmp", ".notes.tmp", f"tiny.backup.{gone}.0123abcd.tmp", f".tiny.backup.{gone}.0123ABCD.tmp",
            f".tiny.backup.{gone}.0123abc.tmp", f".tiny.backup.x{gone}.0123abcd.tmp", "tiny.backup"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / f".folder.{gone}.0123abcd.tmp").mkdir()  # not a file darknetpy writes
    (tmp_path / f".link.{gone}.0123abcd.tmp").symlink_to(tmp_path / "tiny.backup")
    kept += [f".folder.{gone}.0123abcd.tmp", f".link.{gone}.0123abcd.tmp"]

    with fileio.atomic_writer(tmp_path / "model.weights") as stream:  # in progress in this process: kept
        stream.write(b"partial")
        writing = [p.name for p in tmp_path.glob(".model.weights.*.tmp")]
        removed = fileio.remove_stale_temporaries(tmp_path)
        assert len(writing) == 1 and (tmp_path / writing[0]).exists()

    assert sorted(p.name for p in removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + ["model.weights"])
    assert (tmp_path / "model.weights").read_bytes() == b"partial"
    assert fileio.remove_stale_temporaries(tmp_path / "absent") == []


def test_training_removes_temporaries_a_killed_run_left_in_the_backup_folder(tmp_path, monkeypatch):
    from darknetpy.training import TrainingRun, TrainOptions

    cfg, data = diverging_cfg(tmp_path, "0.05")
    monkeypatch.chdir(tmp_path)  # the .data file's backup=backup is relative to the working directory
    backup_dir = tmp_path / "backup"
    backup_dir.mkdir()
    gone = dead_pid()
    orphan = backup_dir / f".tiny.backup.{gone}.5a5a5a5a.tmp"  # what a SIGKILL during a checkpoint leaves
    orphan.write_bytes(b"\0" * 100)
    user_file = backup_dir / "tiny.backup.tmp"
    user_file.write_bytes(b"mine")
    err = io.StringIO()
    run = TrainingRun(str(cfg), str(data), TrainOptions(seed=1, max_batches=1, workers=1), out=io.StringIO(),
                      err=err)
    assert run.backup.resolve() == backup_dir
    run.run()
    assert not orphan.exists() and user_file.read_bytes() == b"mine"
    assert f"removed 1 temporary file a killed run left in {run.backup}" in err.getvalue()
    assert not list(backup_dir.glob(".*.tmp"))
