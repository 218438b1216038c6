"""The training loop is task-agnostic: a made-up task plugs into it (its own data, truth, statistics,
metric and checkpoint names), and the loop's own rules are checked against what that task asked for.
Also: the layer contract the loop relies on, task choice from the head, and the class-count check."""
from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import darknetpy
from darknetpy import tasks
from darknetpy.errors import UnsupportedError
from darknetpy.layers.softmax import Softmax
from darknetpy.network import network_from_text
from darknetpy.tasks.base import Evaluation, Task
from darknetpy.training import (CheckpointPolicy, DetectorCheckpoints, EpochCheckpoints, IterationRow,
                                TrainingRun, TrainOptions)
from test_training import TINY_CFG, make_dataset

IMAGES = 8            # an epoch is two iterations of 4 images (batch=4, subdivisions=2)
SCORES = [0.5, 0.7, 0.6, 0.9, 0.8]   # the made-up metric after epochs 1, 2, 3, ...


class ColourDataset:
    """Red or blue 8x8 squares made on the fly, one-hot truth; follows tasks.base.TrainingDataset."""
    train = True
    seed = 0
    width = height = 8
    channels = 3
    batch_size = 4
    truth_size = 2

    def __len__(self):
        return IMAGES

    def draw_indices(self, rng, count):
        return rng.integers(0, IMAGES, size=count)

    def load(self, index, rng, width, height):
        label = index % 2
        image = np.zeros((3, height, width), np.float32)
        image[0 if label == 0 else 2] = 0.9
        return image, np.eye(2, dtype=np.float32)[label]


class ScriptedEvaluation(Evaluation):
    def __init__(self, score):
        self.images = IMAGES
        self.score = score

    def metrics(self):
        return {"score": self.score}

    def line(self):
        return f"score={self.score:f}"


class EveryThird(CheckpointPolicy):
    def after_iteration(self, batch, epoch, new_epoch):
        return [f"{self.base}_at{batch}.weights"] if batch % 3 == 0 else []

    def final(self):
        return f"{self.base}_done.weights"


class FakeTask(Task):
    name = "fake"
    metric_names = ("score",)
    statistic_names = ("pass_number",)
    scores: list[float] = []

    def dataset(self, train, seed=None):
        return ColourDataset()

    def evaluate(self, top=None):
        return ScriptedEvaluation(self.scores.pop(0))

    def checkpoint_policy(self, base, backup_every):
        return EveryThird(base, backup_every)


def counting_statistics(monkeypatch) -> None:
    """Softmax reports how many training passes it has run (1, 2, 3, ...) as its statistic."""
    calls = []

    def statistics(layer):
        calls.append(1)
        return {"pass_number": float(len(calls))}
    monkeypatch.setattr(Softmax, "statistics", statistics)


def fake_run(tmp_path, max_batches, weights=None, scores=()) -> tuple[TrainingRun, io.StringIO]:
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(TINY_CFG.format(batch=4, subdivisions=2, max_batches=100))
    data = tmp_path / "fake.data"
    data.write_text(f"backup={tmp_path / 'backup'}\n")
    FakeTask.scores = list(scores)
    out = io.StringIO()
    run = TrainingRun(str(cfg), str(data), TrainOptions(weights=weights, seed=4, max_batches=max_batches,
                                                        validate_each_epoch=True, workers=1),
                      out=out, err=io.StringIO(), task=FakeTask)
    return run, out


def test_a_new_task_plugs_into_the_loop(tmp_path, monkeypatch):
    counting_statistics(monkeypatch)
    run, out = fake_run(tmp_path, 8, scores=SCORES[:4])
    run.run()
    backup = tmp_path / "backup"
    lines = out.getvalue().splitlines()
    assert lines[0] == "task: fake (last layer 3 [softmax])"
    # the task's checkpoint policy, not the classifier's; best weights when the main metric improved
    assert sorted(p.name for p in backup.iterdir()) == sorted(
        ["tiny_at3.weights", "tiny_at6.weights", "tiny_done.weights", "tiny_best.weights", "metrics.csv",
         "chart.png"])
    assert darknetpy.load(tmp_path / "tiny.cfg", backup / "tiny_at3.weights").seen == 12
    assert darknetpy.load(tmp_path / "tiny.cfg", backup / "tiny_best.weights").seen == 32  # 0.9 at iteration 8
    # every --validate result printed, and a "best" line only when the score beat every earlier one
    assert [l for l in lines if l.startswith("valid ")] == [
        f"valid at iteration {2 * e} (epoch {e}): score={s:f}" for e, s in zip(range(1, 5), SCORES)]
    best_lines = [l for l in lines if l.startswith("best score")]
    assert [l.split("(")[1].split(")")[0] for l in best_lines] == ["0.500000", "0.700000", "0.900000"]
    # typed rows in memory: numbers, the statistic averaged over the two passes of each iteration
    rows = run.metrics.rows
    assert [row.batch for row in rows] == list(range(1, 9))
    assert all(isinstance(row, IterationRow) and isinstance(row.loss, float) for row in rows)
    assert [row.statistics["pass_number"] for row in rows] == [2 * k - 0.5 for k in range(1, 9)]
    assert [row.metrics.get("score") for row in rows] == [None, 0.5, None, 0.7, None, 0.6, None, 0.9]
    assert [row.epoch for row in rows] == [k / 2 for k in range(1, 9)]
    # metrics.csv: the base columns, then the task's statistic and metric columns
    with open(backup / "metrics.csv", newline="") as stream:
        records = list(csv.DictReader(stream))
    assert list(records[0]) == ["batch", "epoch", "loss", "avg_loss", "rate", "seconds", "images",
                                "pass_number", "score"]
    assert [r["score"] for r in records] == ["", "0.5", "", "0.7", "", "0.6", "", "0.9"]
    assert [float(r["loss"]) for r in records] == pytest.approx([row.loss for row in rows], rel=1e-6)
    # the per-iteration line is Darknet's: avg loss is 0.9 * previous + 0.1 * loss
    progress = [l for l in lines if " avg, " in l]
    assert len(progress) == 8 and progress[1].startswith("2, 1.000: ")
    assert rows[1].avg_loss == pytest.approx(0.9 * rows[0].loss + 0.1 * rows[1].loss)


def test_resumed_run_keeps_the_rows_and_the_best_metric(tmp_path, monkeypatch):
    counting_statistics(monkeypatch)
    run, _ = fake_run(tmp_path, 8, scores=SCORES[:4])
    run.run()
    backup = tmp_path / "backup"
    best_before = (backup / "tiny_best.weights").read_bytes()
    again, out = fake_run(tmp_path, 10, weights=str(backup / "tiny_done.weights"), scores=SCORES[4:])
    again.run()
    assert [row.batch for row in again.metrics.rows] == list(range(1, 11))
    assert again.metrics.rows[7].metrics == {"score": 0.9}   # read back from metrics.csv as a number
    assert "valid at iteration 10 (epoch 5): score=0.800000" in out.getvalue()
    assert "best score" not in out.getvalue()                # 0.8 < 0.9 of the first run
    assert (backup / "tiny_best.weights").read_bytes() == best_before


def test_checkpoint_policies_follow_darknet():
    """Spec §6.4 (classifier) and §6.5 (detector) file names and their order within an iteration."""
    epochs = EpochCheckpoints("net")
    assert epochs.backup_every == 1000
    assert epochs.after_iteration(1000, 3, True) == ["net_3.weights", "net.backup"]
    assert epochs.after_iteration(999, 3, False) == []
    assert epochs.final() == "net.weights" and epochs.interrupted() == "net.backup"
    detector = DetectorCheckpoints("yolo")
    assert detector.backup_every == 100
    assert detector.after_iteration(100, 0, False) == ["yolo.backup", "yolo_100.weights"]
    assert detector.after_iteration(1100, 0, False) == ["yolo.backup"]
    assert detector.after_iteration(20000, 0, False) == ["yolo.backup", "yolo_20000.weights"]
    assert detector.after_iteration(150, 0, True) == []
    assert detector.final() == "yolo_final.weights"
    assert EpochCheckpoints("net", 7).after_iteration(14, 0, False) == ["net.backup"]


# ---- which task a network gets ------------------------------------------------------------------------------
HEADS = {
    "classification": "[net]\nwidth=4\nheight=4\nchannels=3\n\n[convolutional]\nfilters=5\nsize=1\n\n"
                      "[avgpool]\n\n[softmax]\n\n[cost]\n",
    "detection": "[net]\nwidth=4\nheight=4\nchannels=3\n\n[convolutional]\nfilters=18\nsize=1\n\n"
                 "[yolo]\nclasses=1\nnum=3\nmask=0,1,2\nanchors=1,1,2,2,3,3\n",
    "segmentation": "[net]\nwidth=4\nheight=4\nchannels=3\n\n[convolutional]\nfilters=1\nsize=1\n\n[logistic]\n",
}


@pytest.mark.parametrize("expected", list(HEADS))
def test_task_is_chosen_from_the_head(expected):
    assert tasks.task_name_for(network_from_text(HEADS[expected])) == expected


def test_spatial_softmax_is_segmentation_and_a_plain_softmax_classification_whatever_its_input():
    """A plain [softmax] over a map normalises over all C*H*W values at once (Darknet's CPU softmax): one
    distribution per image, i.e. a classifier; spatial=1 normalises each pixel's channels."""
    over_map = "[net]\nwidth=4\nheight=4\nchannels=3\n\n[convolutional]\nfilters=2\nsize=1\n\n[softmax]\n"
    assert tasks.task_name_for(network_from_text(over_map)) == "classification"
    spatial = over_map.replace("[softmax]", "[softmax]\nspatial=1")
    assert tasks.task_name_for(network_from_text(spatial)) == "segmentation"


def test_a_task_not_written_yet_is_a_located_error(monkeypatch):
    monkeypatch.setitem(tasks.TASK_MODULES, "detection", "darknetpy.tasks.not_written_yet")
    network = network_from_text(HEADS["detection"], "det.cfg")
    with pytest.raises(UnsupportedError) as caught:
        tasks.task_for(network)
    assert str(caught.value).startswith("det.cfg:10: training and validating detection networks (last layer 1 "
                                        "[yolo]) is not supported yet")


# ---- the layer contract --------------------------------------------------------------------------------------
def test_layers_receive_the_net_settings_and_loss_layers_are_declared():
    network = network_from_text(HEADS["classification"])
    assert all(layer.net is network.net for layer in network.layers)
    assert [layer.kind for layer in network.loss_layers] == ["softmax", "cost"]
    assert network.output_layer.kind == "softmax"   # [cost] is cost_only
    network.resize(8, 8)
    assert all(layer.net is network.net and layer.net.width == 8 for layer in network.layers)


PROBED_HOOKS = re.compile(r"\b(?:getattr|hasattr)\([^)]*[\"'](?:is_cost|set_truth|cost|detections|"
                          r"parameters_changed|trainable_backward)[\"']")


def test_no_module_probes_layers_for_hooks():
    package = Path(darknetpy.__file__).parent
    sources = [package / "network.py", package / "optim.py", package / "detect.py",
               *sorted((package / "training").glob("*.py")), *sorted((package / "tasks").glob("*.py"))]
    probing = [f"{path.name}: {m.group(0)}" for path in sources for m in PROBED_HOOKS.finditer(path.read_text())]
    assert probing == []
    assert PROBED_HOOKS.search('hasattr(layer, "detections")')   # the pattern does find a probe


# ---- the classifier's class count against the network -------------------------------------------------------
def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "darknetpy", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("classes_line, outputs, expected", [
    ("classes=5\n", 2, r"t\.data:1: classes=5, but the network's layer 3 \[softmax\] \(\S*tiny\.cfg:30\) has "
                       r"2 outputs$"),
    ("", 3, r"t\.data: no classes= line, so Darknet's default of 2 classes, but the network's layer 3 "
            r"\[softmax\] \(\S*tiny\.cfg:30\) has 3 outputs; add classes=3$"),
])
def test_class_count_that_disagrees_with_the_network_is_a_located_error(tmp_path, classes_line, outputs,
                                                                        expected):
    data = make_dataset(tmp_path / "ds")
    data.write_text(classes_line + data.read_text().replace("classes=2\n", ""))
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(TINY_CFG.format(batch=4, subdivisions=1, max_batches=2).replace("output=2",
                                                                                     f"output={outputs}"))
    assert cfg.read_text().splitlines()[29] == "[softmax]"
    result = run_cli("train", cfg, data, "--workers", "1", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(expected, lines[0]), lines
    assert lines[0].startswith(str(data))
    assert not (tmp_path / "backup").exists()   # nothing written before the check
