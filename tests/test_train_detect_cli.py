"""Detector training end to end: `darknetpy train` on a tiny two-head YOLO (task line, Darknet's detector
line, one statistics line per head per iteration, multi-scale resizing, checkpoints, --map), the same
seed giving the same weights, `train_batch` with Darknet truth rows, and every bad label line refused
before anything is written (one located line, exit 2)."""
from __future__ import annotations

import csv
import re

import numpy as np
import pytest
from PIL import Image

import darknetpy
from darknetpy.cli import main
from darknetpy.network import network_from_text

TINY_DETECTOR = """[net]
batch=4
subdivisions=2
width=64
height=64
channels=3
learning_rate=0.001
momentum=0.9
decay=0.0005
max_batches={max_batches}
hue=.1
saturation=1.5
exposure=1.5

[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky

[convolutional]
filters=21
size=1
stride=1
pad=1
activation=linear

[yolo]
mask=0,1,2
anchors=8,8, 16,16, 24,24, 32,32, 48,24, 56,56
classes=2
num=6
jitter=.2
ignore_thresh=.5
random={random}

[route]
layers=-3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky

[convolutional]
filters=21
size=1
stride=1
pad=1
activation=linear

[yolo]
mask=3,4,5
anchors=8,8, 16,16, 24,24, 32,32, 48,24, 56,56
classes=2
num=6
jitter=.2
ignore_thresh=.5
random={random}
"""

DARKNET_LINE = re.compile(r"^(\d+): \d+\.\d{6}, \d+\.\d{6} avg, \d+\.\d{6} rate, \d+\.\d{6} seconds, (\d+) images$")
REGION_LINE = re.compile(r"^Region (\d+) Avg IOU: (-nan|[\d.]+), Class: .*count: \d+$")


def make_detection_set(root, count=8):
    """Scenes with a red (class 0) or green (class 1) filled rectangle on black, Darknet labels."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        w, h = int(rng.integers(60, 100)), int(rng.integers(60, 100))
        img = np.zeros((h, w, 3), np.uint8)
        bw, bh = int(rng.integers(10, w // 2)), int(rng.integers(10, h // 2))
        x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        cls = i % 2
        img[y0:y0 + bh, x0:x0 + bw, cls] = 255
        Image.fromarray(img).save(root / "images" / f"s{i}.png")
        (root / "labels" / f"s{i}.txt").write_text(
            f"{cls} {(x0 + bw / 2) / w:.6f} {(y0 + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}\n")
        paths.append(f"images/s{i}.png")
    (root / "train.txt").write_text("\n".join(paths) + "\n")
    (root / "valid.txt").write_text("\n".join(paths[:2]) + "\n")
    (root / "names").write_text("red\ngreen\n")
    data = root / "shapes.data"
    data.write_text("classes=2\ntrain=train.txt\nvalid=valid.txt\nnames=names\nbackup=backup\n")
    return data


@pytest.fixture
def detector(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # `backup=backup` is relative to the working directory first (Darknet)

    def make(max_batches=3, random=1):
        cfg = tmp_path / "tiny-yolo.cfg"
        cfg.write_text(TINY_DETECTOR.format(max_batches=max_batches, random=random))
        return cfg, make_detection_set(tmp_path / "set")
    return make


def test_train_a_tiny_detector_from_the_command_line(detector, capsys):
    cfg, data = detector(max_batches=4)
    code = main(["train", str(cfg), str(data), "--seed", "3", "--workers", "1", "--map-every", "2",
                 "--checkpoint-every", "2"])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "task: detection (last layer 7 [yolo])"
    assert lines[1] == "tiny-yolo"
    assert any(line.startswith("augmentation: pjreddie jitter=0.2") for line in lines)
    darknet = [(i, DARKNET_LINE.match(line)) for i, line in enumerate(lines) if DARKNET_LINE.match(line)]
    assert [int(m.group(1)) for _, m in darknet] == [1, 2, 3, 4]
    assert [int(m.group(2)) for _, m in darknet] == [4, 8, 12, 16]
    for i, _ in darknet:   # Darknet's `Loaded: %lf seconds` right before each iteration line (spec §6.5)
        assert re.fullmatch(r"Loaded: \d+\.\d{6} seconds", lines[i - 1])
    for i, _ in darknet:   # one compact line per head after each iteration, in layer order
        heads = [REGION_LINE.match(line) for line in lines[i + 1:i + 3]]
        assert all(heads) and [int(m.group(1)) for m in heads] == [3, 7]
    assert any(line.startswith("Resizing to ") for line in lines)   # random=1: multi-scale from batch 0
    valid = [line for line in lines if line.startswith("valid at iteration")]
    assert len(valid) == 2 and "mAP@0.50 = " in valid[0]
    backup = cfg.parent / "backup"
    names = sorted(p.name for p in backup.iterdir())
    assert names == ["chart.png", "metrics.csv", "tiny-yolo.backup", "tiny-yolo_best.weights",
                     "tiny-yolo_final.weights"]
    with open(backup / "metrics.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 4
    for column in ("loaded", "avg_iou_3", "recall50_7", "count_7", "no_obj_3", "map50", "map50_95"):
        assert column in rows[0]
    assert [float(row["loaded"]) for row in rows] == \
        pytest.approx([float(lines[i - 1].split()[1]) for i, _ in darknet], abs=1e-6)   # the printed wait
    assert rows[1]["map50"] != "" and rows[0]["map50"] == ""
    assert float(rows[0]["no_obj_3"]) > 0


def test_same_seed_trains_to_the_same_weights(detector, capsys):
    cfg, data = detector(max_batches=2)
    weights = []
    for _ in range(2):
        assert main(["train", str(cfg), str(data), "--seed", "11", "--workers", "1"]) == 0
        final = cfg.parent / "backup" / "tiny-yolo_final.weights"
        weights.append(final.read_bytes())
        final.unlink()
        (cfg.parent / "backup" / "metrics.csv").unlink()
    assert weights[0] == weights[1]
    assert main(["train", str(cfg), str(data), "--seed", "12", "--workers", "1"]) == 0
    assert (cfg.parent / "backup" / "tiny-yolo_final.weights").read_bytes() != weights[0]
    capsys.readouterr()


def test_train_batch_with_darknet_truth_rows():
    net = darknetpy.api.Model(network_from_text(TINY_DETECTOR.format(max_batches=10, random=0), "tiny.cfg"))
    net.network.initialize(0)
    rng = np.random.default_rng(0)
    x = rng.random((4, 3, 64, 64), dtype=np.float32) * 0.1
    truth = np.zeros((4, 450), np.float32)
    truth[:, :5] = [0.5, 0.5, 0.4, 0.3, 1]       # one box per image: x, y, w, h, class
    truth[0, 5:10] = [0.2, 0.3, 0.1, 0.2, 0]
    x[:, 1, 22:42, 19:45] = 1.0
    before = [p.value.copy() for _, p in net.network.params()]
    losses = [net.train_batch(x, truth) for _ in range(15)]
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    assert any(not np.array_equal(b, p.value) for b, (_, p) in zip(before, net.network.params()))


BAD_LINES = [
    ("0 0.5 0.5 0.2", "expected 5 fields"),
    ("5 0.5 0.5 0.2 0.2", "class 5 is outside 0..1"),
    ("x 0.5 0.5 0.2 0.2", "class 'x' is not a whole number"),
    ("0 0.5 0.5 1.2 0.2", "width 1.2 is outside [0, 1]"),
    ("0 0.5 -0.5 0.2 0.2", "y_center -0.5 is outside [0, 1]"),
    ("0 0.5 0.5 0.2 0", "zero-size box"),
    ("1 0.5 0.5 0.2 0.2e", "height '0.2e' is not a number"),
]


@pytest.mark.parametrize("line, message", BAD_LINES)
def test_bad_label_line_stops_before_training(detector, capsys, line, message):
    cfg, data = detector()
    label = data.parent / "labels" / "s5.txt"
    label.write_text(label.read_text() + "\n" + line + "\n")    # line 3 (after the good one and a blank)
    code = main(["train", str(cfg), str(data), "--seed", "1", "--workers", "1"])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].endswith(f"labels/s5.txt:3: {lines[0].split(':3: ', 1)[1]}")
    assert message in lines[0]
    assert not (data.parent / "backup").exists() and not (data.parent.parent / "backup").exists()


def test_class_count_of_the_data_file_against_the_cfg(detector, capsys):
    cfg, data = detector()
    data.write_text(data.read_text().replace("classes=2", "classes=3"))
    assert main(["train", str(cfg), str(data), "--workers", "1"]) == 2
    _, err = capsys.readouterr()
    assert re.fullmatch(r"\S*shapes\.data:1: classes=3, but the cfg's last layer 7 \[yolo\] \(\S*tiny-yolo\.cfg:"
                        r"\d+\) has classes=2\n", err), err
    assert not (data.parent / "backup").exists() and not (data.parent.parent / "backup").exists()


def test_iteration_statistics_skip_passes_without_truths():
    # Darknet's per-pass ratios are NaN for a pass without truths; the iteration's figure is that of the
    # passes that had some (here: the first of two), not NaN
    def model():
        m = darknetpy.api.Model(network_from_text(TINY_DETECTOR.format(max_batches=10, random=0), "tiny.cfg"))
        m.network.initialize(0)
        return m
    x = np.random.default_rng(1).random((4, 3, 64, 64), dtype=np.float32)
    truth = np.zeros((4, 450), np.float32)
    truth[:2, :5] = [0.5, 0.5, 0.2, 0.2, 1]      # rows 0-1 form the first pass (batch 4 / subdivisions 2)
    trained = model()
    trained.train_batch(x, truth)
    alone = model()
    alone.network.forward(x[:2], train=True, truth=truth[:2])
    first_pass = alone.network.layers[3].statistics()
    assert np.isfinite(first_pass["avg_iou"])
    averaged = trained.trainer.last_statistics[3]
    assert averaged["avg_iou"] == pytest.approx(first_pass["avg_iou"], rel=1e-6)
    assert averaged["count"] == pytest.approx(first_pass["count"] / 2)


def test_multiscale_size_of_a_block_is_the_same_after_a_resume(detector):
    # Every iteration of a block of 10 trains at the size drawn for the block from (seed, block start), so a
    # run resumed at iteration 13 continues at the size an uninterrupted run used from iteration 10 on.
    import io
    from darknetpy.config import read_data_file
    from darknetpy.tasks.detection import DetectionTask
    from darknetpy.training import IterationContext
    cfg, data = detector(max_batches=1000)

    class Loader:
        def __init__(self):
            self.sizes = []

        def resize(self, w, h):
            self.sizes.append((w, h))

    def sizes_from(start, stop):
        model = darknetpy.load(str(cfg))
        task = DetectionTask(model, read_data_file(data))
        task.dataset(train=True, seed=7)
        loader = Loader()
        seen = []
        for batch in range(start, stop):
            task.before_iteration(IterationContext(batch, 1000, model.network, loader, None, io.StringIO()))
            seen.append((model.network.net.width, model.network.net.height))
        return seen, loader.sizes

    uninterrupted, _ = sizes_from(0, 40)
    resumed, resizes = sizes_from(13, 40)
    assert resumed == uninterrupted[13:]
    assert all(size in ((64, 64), (96, 96)) for size in uninterrupted)     # (k + 10)/13 of 64, step 32
    assert len(set(uninterrupted)) == 2 and len(set(uninterrupted[10:20])) == 1
    assert resizes and all(r in uninterrupted for r in resizes)
