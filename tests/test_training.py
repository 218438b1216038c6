"""Training semantics and the `darknetpy train` command: subdivisions, checkpoints, resume, Ctrl-C and SIGKILL."""
import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import darknetpy

TINY_CFG = """[net]
batch={batch}
subdivisions={subdivisions}
width=8
height=8
channels=3
learning_rate=0.05
momentum=0.9
decay=0.001
max_batches={max_batches}
policy=constant
min_crop=8
max_crop=8
flip=0

[convolutional]
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


def tiny_model(tmp_path, batch, subdivisions, name="tiny.cfg", max_batches=100):
    cfg = tmp_path / name
    cfg.write_text(TINY_CFG.format(batch=batch, subdivisions=subdivisions, max_batches=max_batches))
    return cfg


def test_subdivisions_accumulate_into_one_update(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((8, 3, 8, 8), dtype=np.float32)
    y = np.eye(2, dtype=np.float32)[rng.integers(0, 2, 8)]
    whole = darknetpy.load(tiny_model(tmp_path, 8, 1, "a.cfg"), seed=3)
    split = darknetpy.load(tiny_model(tmp_path, 8, 2, "b.cfg"), seed=3)
    loss_whole = whole.train_batch(x, y)
    loss_split = split.train_batch(x, y)
    assert whole.seen == split.seen == 8
    assert loss_whole == pytest.approx(loss_split, rel=1e-6)
    for a, b in zip(whole.network.layers, split.network.layers):
        for wa, wb in zip(a.weight_arrays(saving=True), b.weight_arrays(saving=True)):
            np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-7)


def make_dataset(root: Path, count=24):
    """Red and blue squares; Darknet finds the class by substring of the path."""
    (root / "img").mkdir(parents=True)
    lines = []
    for i in range(count):
        label = "red" if i % 2 == 0 else "blue"
        colour = (220, 30, 30) if label == "red" else (30, 30, 220)
        path = root / "img" / f"{i:03d}_{label}.png"
        Image.new("RGB", (10, 10), colour).save(path)
        lines.append(f"img/{path.name}")
    (root / "train.list").write_text("\n".join(lines) + "\n")
    (root / "labels.list").write_text("red\nblue\n")
    (root / "t.data").write_text("classes=2\ntrain=train.list\nvalid=train.list\nlabels=labels.list\n"
                                 "backup=backup\ntop=1\n")
    return root / "t.data"


def run_cli(*args, cwd, timeout=120, **kw):
    return subprocess.run([sys.executable, "-m", "darknetpy", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, **kw)


def test_train_command_writes_darknet_checkpoints_and_resumes(tmp_path):
    data = make_dataset(tmp_path / "ds")
    cfg = tiny_model(tmp_path, 4, 1, "tiny.cfg", max_batches=8)
    result = run_cli("train", cfg, data, "--seed", "1", "--checkpoint-every", "4", "--workers", "1", "--validate",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    # the chosen task, then Darknet's banner (spec §6.4), all on stdout: stderr is for warnings and errors
    assert out[:5] == ["task: classification (last layer 3 [softmax])", "tiny",
                       "Learning Rate: 0.05, Momentum: 0.9, Decay: 0.001", "24", "8 8"]
    assert "Learning Rate" not in result.stderr
    lines = [l for l in out if " avg, " in l]
    assert len(lines) == 8 and lines[0].startswith("1, 0.167: ") and lines[-1].startswith("8, 1.333: ")
    # --validate: the metric after the epoch that ends at iteration 6, printed and recorded
    valid_lines = [l for l in out if l.startswith("valid ")]
    assert len(valid_lines) == 1 and re.fullmatch(
        r"valid at iteration 6 \(epoch 1\): top 1: [01]\.\d{6}, top 1: [01]\.\d{6}  \(24 images\)",
        valid_lines[0]), valid_lines
    backup = tmp_path / "backup"  # relative to the working directory, as Darknet
    names = sorted(p.name for p in backup.iterdir())
    assert {"tiny.backup", "tiny.weights", "tiny_1.weights", "tiny_best.weights", "metrics.csv",
            "chart.png"} <= set(names)
    rows = list(csv.DictReader((backup / "metrics.csv").read_text().splitlines()))
    top1 = float(valid_lines[0].split("top 1: ")[1].split(",")[0])
    assert [r["top1"] for r in rows] == [""] * 5 + [f"{top1:.7g}"] + [""] * 2
    assert out[-1] == f"Saving weights to {Path('backup') / 'tiny.weights'}"
    model = darknetpy.load(cfg, backup / "tiny.weights")
    assert model.seen == 32
    # resuming from the checkpoint continues the count (and so the lr schedule) from its `seen`
    longer = tiny_model(tmp_path, 4, 1, "tiny.cfg", max_batches=10)
    again = run_cli("train", longer, data, "--weights", backup / "tiny.weights", "--seed", "1", "--workers", "1",
                    cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    resumed = [l for l in again.stdout.splitlines() if " avg, " in l]
    assert [l.split(",")[0] for l in resumed] == ["9", "10"]
    # weights that have seen the whole schedule (a pretrained model): nothing to train, and it is said once
    done = run_cli("train", cfg, data, "--weights", backup / "tiny.weights", "--seed", "1", "--workers", "1",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not [l for l in done.stdout.splitlines() if " avg, " in l]
    warned = [l for l in done.stderr.splitlines() if "nothing to train" in l]
    assert len(warned) == 1 and "seen 40 images" in warned[0] and "--clear" in warned[0], done.stderr
    valid = run_cli("valid", cfg, backup / "tiny.weights", data, "--json", cwd=tmp_path)
    assert valid.returncode == 0, valid.stderr
    assert '"top1": 1.0' in valid.stdout


def test_sigkill_leaves_last_checkpoint_loadable(tmp_path):
    data = make_dataset(tmp_path / "ds")
    cfg = tiny_model(tmp_path, 4, 1, "tiny.cfg", max_batches=100000)
    backup = tmp_path / "backup" / "tiny.backup"
    for trial in range(3):
        proc = subprocess.Popen([sys.executable, "-m", "darknetpy", "train", str(cfg), str(data), "--seed", "2",
                                 "--checkpoint-every", "1", "--workers", "1"] +
                                (["--weights", str(backup)] if backup.exists() else []),
                                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        start_seen = darknetpy.load(cfg, backup).seen if backup.exists() else 0
        while time.time() < deadline:
            if backup.exists() and darknetpy.load(cfg, backup).seen > start_seen + 4 * (2 + trial):
                break
            time.sleep(0.05 + 0.07 * trial)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        model = darknetpy.load(cfg, backup)  # never half-written: atomic replace
        assert model.seen > start_seen


def _group_alive(pgid: int) -> bool:
    """Whether a running (not zombie) process is left in process group pgid (Linux /proc; elsewhere False:
    a zombie still answers kill(0), and who reaps orphans depends on the machine's init)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def test_ctrl_c_saves_backup_and_exits_cleanly(tmp_path):
    data = make_dataset(tmp_path / "ds")
    cfg = tiny_model(tmp_path, 4, 1, "tiny.cfg", max_batches=100000)
    # output to files, not pipes: the loader's worker processes inherit them, and the verdict must rest on the
    # trainer's own exit, not on when the last of its children closes a pipe
    out_path, err_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out_path, "w") as out_file, open(err_path, "w") as err_file:
        # SIGINT back to its default first: a test run started in the background of a non-interactive shell
        # ignores SIGINT, its children inherit that, and Python then installs no KeyboardInterrupt handler
        # (the trainer rightly keeps ignoring Ctrl-C then, as `nohup ... &` asks)
        proc = subprocess.Popen([sys.executable, "-m", "darknetpy", "train", str(cfg), str(data), "--seed", "3",
                                 "--workers", "1"], cwd=tmp_path, stdout=out_file, stderr=err_file,
                                env={**os.environ, "PYTHONFAULTHANDLER": "1"}, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if any(line.startswith("5, ") for line in out_path.read_text().splitlines()):
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"training ended early: {err_path.read_text()[-2000:]}"
        os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C on a terminal: the whole foreground process group
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # faulthandler: every thread's stack into stderr.txt
            proc.wait(timeout=30)
            pytest.fail(f"no exit 120 s after SIGINT; stderr and stacks:\n{err_path.read_text()[-6000:]}")
        # nothing of the run may outlive it (loader workers, multiprocessing's resource tracker)
        deadline = time.time() + 10
        while time.time() < deadline and _group_alive(proc.pid):
            time.sleep(0.05)
        assert not _group_alive(proc.pid), "processes of the training run outlived it"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)  # zombies are fine to signal
    err = err_path.read_text()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "saved" in err
    model = darknetpy.load(cfg, tmp_path / "backup" / "tiny.backup")
    assert model.seen >= 20


def test_train_starts_from_a_partial_weights_file(tmp_path):
    """Transfer learning as Darknet users do it: `partial` keeps the first layers of a trained model and
    `train --weights` starts from them; the other layers start from the seeded random initialisation."""
    from darknetpy.errors import WeightsError
    from darknetpy.training import TrainingRun, TrainOptions
    data = make_dataset(tmp_path / "ds")
    cfg = tiny_model(tmp_path, 4, 1, "tiny.cfg", max_batches=8)
    source = darknetpy.load(cfg, seed=5)
    source.save_weights(tmp_path / "full.weights")
    cut = run_cli("partial", cfg, tmp_path / "full.weights", tmp_path / "tiny.conv.1", 1, cwd=tmp_path)
    assert cut.returncode == 0, cut.stderr
    run = TrainingRun(str(cfg), str(data), TrainOptions(weights=str(tmp_path / "tiny.conv.1"), seed=1))
    assert run.loaded_layers == 2          # the convolution, and the weightless max pooling after it
    layers = run.network.layers
    np.testing.assert_array_equal(layers[0].weights, source.network.layers[0].weights)
    fresh = darknetpy.load(cfg, seed=1).network.layers[2]
    np.testing.assert_array_equal(layers[2].weights, fresh.weights)
    assert not np.array_equal(layers[2].weights, source.network.layers[2].weights)
    # a file that ends inside a layer is no partial file: the located size error
    raw = (tmp_path / "full.weights").read_bytes()
    (tmp_path / "torn.weights").write_bytes(raw[:-8])
    with pytest.raises(WeightsError, match="runs short at layer 2"):
        TrainingRun(str(cfg), str(data), TrainOptions(weights=str(tmp_path / "torn.weights"), seed=1))
