"""One command line for every task: `predict` serves classifiers, detectors and segmenters as their own
commands do, `--json` records carry the task, no percentage above 100%, `--plots` pictures of `valid` and
`map`, the first help a new user sees, and the one-line refusals (task mismatch, unwritable --plots).

Oracles: `detect` and `segment` themselves for what `predict` prints (their own outputs are checked against
OpenCV and hand-built networks elsewhere); the digit in each bundled sample's file name; a raw forward pass
for a network without softmax; the `--json` result of `valid`/`map` for the numbers in the pictures (and a
hand-computed detection confusion matrix)."""
from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import shared_path
from darknetpy import api, plots
from darknetpy.cli import EXAMPLES, build_parser, main

ROOT = Path(__file__).resolve().parents[1]
MNIST_CFG, MNIST_WEIGHTS = ROOT / "cfg" / "mnist.cfg", ROOT / "weights" / "mnist.weights"
SAMPLES = ROOT / "darknetpy" / "samples"
PERCENT = re.compile(r"(\d+(?:\.\d+)?)%")


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def without_seconds(text: str) -> str:
    return re.sub(r"Predicted in [0-9.]+ seconds", "Predicted in T seconds", text)


def records(out: str) -> list[dict]:
    found = [json.loads(line) for line in out.splitlines()]
    for record in found:
        record.pop("seconds", None)
    return found


def assert_no_percentage_above_100(text: str) -> None:
    values = [float(v) for v in PERCENT.findall(text)]
    assert all(0 <= v <= 100 for v in values), values


def one_line(err: str, starts: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(starts), err
    assert "Traceback" not in err
    return lines[0]


# ---- first contact ---------------------------------------------------------------------------------------------
def test_no_arguments_lists_every_command_with_a_description():
    done = subprocess.run([sys.executable, "-m", "darknetpy"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and done.stderr == ""
    commands = list(build_parser()._subparsers._group_actions[0].choices)
    for command in commands:
        line = next((line for line in done.stdout.splitlines() if line.split()[:1] == [command]), None)
        assert line is not None and len(line.split()) > 1, (command, done.stdout)  # name and description


def test_every_command_help_ends_with_an_example(capsys):
    commands = list(build_parser()._subparsers._group_actions[0].choices)
    assert set(commands) <= set(EXAMPLES), "add an example to darknetpy.cli.EXAMPLES"
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert f"example:\n  darknetpy {command} " in out, out


# ---- predict: classifier ---------------------------------------------------------------------------------------
def test_predict_classifier_top_k(capsys):
    code, out, err = run(capsys, "predict", MNIST_CFG, MNIST_WEIGHTS, SAMPLES, "--top", "2")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 10 * 3
    for k in range(0, len(lines), 3):
        digit = re.fullmatch(r".*digit_(\d)\.png: Predicted in [0-9.]+ seconds\.", lines[k]).group(1)
        assert re.fullmatch(r" ?\d+\.\d\d%: " + digit, lines[k + 1]), lines[k:k + 3]  # the drawn digit first
        assert re.fullmatch(r" ?\d+\.\d\d%: \d", lines[k + 2])
    assert_no_percentage_above_100(out)
    code, out, err = run(capsys, "predict", MNIST_CFG, MNIST_WEIGHTS, SAMPLES / "digit_3.png", "--json")
    record = json.loads(out)
    assert record["task"] == "classification" and record["output"] == "probabilities"
    assert record["predictions"][0]["name"] == "3" and len(record["predictions"]) == 5
    assert sum(p["probability"] for p in record["predictions"]) <= 1 + 1e-6


SCORES_CFG = """[net]
width=8
height=8
channels=3

[convolutional]
filters=4
size=3
stride=1
pad=1
activation=leaky

[avgpool]

[connected]
output=3
activation=linear
"""


def test_predict_without_softmax_prints_scores_not_percentages(tmp_path, capsys):
    cfg = tmp_path / "scores.cfg"
    cfg.write_text(SCORES_CFG)
    model = api.load(cfg, seed=5)
    weights = tmp_path / "scores.weights"
    model.save_weights(weights)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    raw = model.forward(model.prepare(str(tmp_path / "x.png"))[None]).reshape(-1)
    assert raw.max() > 1 or raw.min() < 0  # scores a percentage would misrepresent
    code, out, err = run(capsys, "predict", cfg, weights, tmp_path / "x.png", "--top", "3")
    assert code == 0, err
    header, *lines = out.strip().splitlines()
    assert "Scores, not probabilities: the last layer 2 [connected] is not a softmax or logistic." in header
    assert "%" not in "".join(lines)
    order = np.argsort(-raw, kind="stable")
    assert [line.split(": ")[1] for line in lines] == [str(i) for i in order]
    assert [float(line.split(": ")[0]) for line in lines] == pytest.approx(raw[order], rel=1e-5)
    code, out, err = run(capsys, "predict", cfg, weights, tmp_path / "x.png", "--json")
    record = json.loads(out)
    assert record["output"] == "scores" and "probability" not in record["predictions"][0]
    assert [p["score"] for p in record["predictions"]] == pytest.approx(raw[order], rel=1e-5)


# ---- predict: detector -----------------------------------------------------------------------------------------
@pytest.mark.shared
def test_predict_detector_is_detect(tmp_path, capsys):
    folder = shared_path("models", "yolo-fastest-1.1")
    cfg, weights, names = folder / "yolo-fastest-1.1.cfg", folder / "yolo-fastest-1.1.weights", folder / "coco.names"
    image = shared_path("images", "dog.jpg")
    options = ["--names", names, "--thresh", "0.3", "--letterbox"]
    code, predicted, err = run(capsys, "predict", cfg, weights, image, *options, "--out", tmp_path / "p")
    assert code == 0, err
    code, detected, err = run(capsys, "detect", cfg, weights, image, *options, "--out", tmp_path / "d")
    assert code == 0, err
    assert without_seconds(predicted) == without_seconds(detected)
    assert re.search(r"^dog: \d+%\tleft=", predicted, re.M)           # the boxes, not ranked raw outputs
    assert_no_percentage_above_100(predicted)
    assert (tmp_path / "p" / "dog.png").read_bytes() == (tmp_path / "d" / "dog.png").read_bytes()
    code, predicted, _ = run(capsys, "predict", cfg, weights, image, "--names", names, "--json")
    code, detected, _ = run(capsys, "detect", cfg, weights, image, "--names", names, "--json")
    assert records(predicted) == records(detected)
    (record,) = records(predicted)
    assert record["task"] == "detection" and {d["name"] for d in record["detections"]} >= {"dog", "car"}
    assert all(0 < d["score"] <= 1 for d in record["detections"])
    from darknetpy.errors import CfgError
    with pytest.raises(CfgError, match="use `darknetpy detect`"):  # the API never ranks raw box maps as classes
        api.load(cfg, weights).predict(image)


# ---- predict: segmenter ----------------------------------------------------------------------------------------
SEG_CFG = """[net]
width=16
height=16
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
filters=3
size=1
stride=1
pad=0
activation=linear

[upsample]
stride=2

[softmax]
spatial=1
"""


@pytest.fixture
def segmenter(tmp_path):
    cfg = tmp_path / "seg.cfg"
    cfg.write_text(SEG_CFG)
    weights = tmp_path / "seg.weights"
    api.load(cfg, seed=11).save_weights(weights)
    (tmp_path / "seg.names").write_text("background\nred\ngreen\n")
    rng = np.random.default_rng(3)
    for k in range(2):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / f"scene{k}.png")
    return cfg, weights, tmp_path


def test_predict_segmenter_is_segment(segmenter, capsys):
    cfg, weights, root = segmenter
    images = [root / "scene0.png", root / "scene1.png"]
    names = ["--names", root / "seg.names"]
    code, predicted, err = run(capsys, "predict", cfg, weights, *images, *names, "--out", root / "p")
    assert code == 0, err
    code, segmented, err = run(capsys, "segment", cfg, weights, *images, *names, "--out", root / "s")
    assert code == 0, err
    strip = lambda text: re.sub(r"Segmented in [0-9.]+ seconds", "", text)  # noqa: E731
    assert strip(predicted) == strip(segmented) and "Segmented in" in predicted
    assert_no_percentage_above_100(predicted)
    for k in range(2):
        for suffix in ("_mask.png", "_overlay.png"):
            assert (root / "p" / f"scene{k}{suffix}").read_bytes() == (root / "s" / f"scene{k}{suffix}").read_bytes()
        mask = np.asarray(Image.open(root / "p" / f"scene{k}_mask.png"))
        assert mask.shape == (20, 24) and mask.max() < 3
    code, predicted, _ = run(capsys, "predict", cfg, weights, *images, *names, "--json")
    code, segmented, _ = run(capsys, "segment", cfg, weights, *images, *names, "--json")
    assert records(predicted) == records(segmented)
    for record, image in zip(records(predicted), images):
        mask = np.asarray(Image.open(root / "p" / f"{image.stem}_mask.png"))
        shares = np.bincount(mask.reshape(-1), minlength=3) / mask.size
        assert record["task"] == "segmentation"
        assert [record["classes"][n] for n in ("background", "red", "green")] == pytest.approx(shares)


# ---- task mismatch ---------------------------------------------------------------------------------------------
def test_task_mismatch_is_one_located_line(segmenter, tmp_path, capsys):
    cfg, weights, root = segmenter
    image = root / "scene0.png"
    code, out, err = run(capsys, "detect", MNIST_CFG, MNIST_WEIGHTS, image, "--out", tmp_path / "never")
    assert code == 2 and out == ""
    line = one_line(err, f"{MNIST_CFG}:")
    assert "classification network" in line and "use `darknetpy predict`" in line
    code, out, err = run(capsys, "segment", MNIST_CFG, MNIST_WEIGHTS, image, "--out", tmp_path / "never")
    assert code == 2 and "use `darknetpy predict`" in one_line(err, f"{MNIST_CFG}:")
    code, out, err = run(capsys, "detect", cfg, weights, image, "--json")
    assert code == 2 and out == ""
    line = one_line(err, f"{cfg}:")
    assert "segmentation network" in line and "use `darknetpy segment`" in line
    assert not (tmp_path / "never").exists()
    code, out, err = run(capsys, "predict", MNIST_CFG, MNIST_WEIGHTS, image, "--out", tmp_path / "never")
    assert code == 2 and "a classifier has nothing to draw" in one_line(err, str(tmp_path / "never"))
    assert not (tmp_path / "never").exists()


def test_json_stdout_never_gets_the_progress_bar(segmenter, monkeypatch):
    cfg, weights, root = segmenter

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stdout, stderr = io.StringIO(), Terminal()
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", stderr)
    assert main(["predict", str(cfg), str(weights), str(root / "scene0.png"), str(root / "scene1.png"),
                 "--json"]) == 0
    assert [json.loads(line)["task"] for line in stdout.getvalue().splitlines()] == ["segmentation"] * 2
    assert "predict [" in stderr.getvalue() and "images/s" in stderr.getvalue()


# ---- plots -----------------------------------------------------------------------------------------------------
def check_confusion_png(path: Path, matrix: list[list[int]]) -> dict:
    """The PNG holds the matrix and its cells are shaded in proportion to the counts."""
    meta = plots.read_metadata(path)
    assert meta["darknetpy.matrix"] == matrix
    counts = np.array(matrix, np.float64)
    cells, size = meta["darknetpy.cells"], meta["darknetpy.cells"]["size"]
    with Image.open(path) as image:
        rgb = image.convert("RGB")
        for (r, c), count in np.ndenumerate(counts):
            pixel = rgb.getpixel((cells["left"] + c * size + 3, cells["top"] + r * size + 3))
            expected = tuple(255 - count / counts.max() * (255 - v) for v in (8, 48, 107))
            assert pixel == pytest.approx(expected, abs=1), (r, c, count, pixel)
    return meta


@pytest.mark.shared
def test_valid_plots_of_the_bundled_classifier(tmp_path, capsys):
    tool = ROOT / "tools" / "mnist_to_darknet.py"
    done = subprocess.run([sys.executable, str(tool), str(shared_path("datasets", "mnist")), str(tmp_path / "m"),
                           "--limit-train", "1", "--limit-test", "60", "--jobs", "1"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    code, out, err = run(capsys, "valid", MNIST_CFG, MNIST_WEIGHTS, tmp_path / "m" / "mnist.data", "--json",
                         "--plots", tmp_path / "plots")
    assert code == 0, err
    result = json.loads(out)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "confusion_matrix.png", "confusion_matrix_normalized.png", "per_class_accuracy.png"]
    meta = check_confusion_png(tmp_path / "plots" / "confusion_matrix.png", result["confusion"])
    assert meta["darknetpy.labels"] == [str(d) for d in range(10)]  # the .data names, not the path labels
    confusion = np.array(result["confusion"])
    accuracy = plots.read_metadata(tmp_path / "plots" / "per_class_accuracy.png")["darknetpy.values"]
    totals = confusion.sum(axis=1)  # a digit absent from the first 60 has no accuracy (None)
    assert accuracy == [pytest.approx(confusion[d, d] / totals[d]) if totals[d] else None for d in range(10)]
    assert np.trace(confusion) / confusion.sum() == pytest.approx(result["top1"])


def test_valid_plots_of_a_segmenter(tmp_path, capsys):
    from test_segmentation_cli import CFG, make_dataset
    root = make_dataset(tmp_path / "d")
    api.load(root / "seg.cfg", seed=2).save_weights(root / "seg.weights")
    assert CFG == (root / "seg.cfg").read_text()
    code, out, err = run(capsys, "valid", root / "seg.cfg", root / "seg.weights", root / "seg.data", "--json",
                         "--plots", tmp_path / "plots")
    assert code == 0, err
    result = json.loads(out)
    meta = plots.read_metadata(tmp_path / "plots" / "pixel_confusion_matrix.png")
    check_confusion_png(tmp_path / "plots" / "pixel_confusion_matrix.png", meta["darknetpy.matrix"])
    matrix = np.array(meta["darknetpy.matrix"], np.float64)
    assert matrix.sum() == 3 * (16 * 16 - 1)  # every counted pixel of the 3 valid masks (one ignored each)
    tp = np.diag(matrix)
    with np.errstate(invalid="ignore"):
        iou = tp / (matrix.sum(0) + matrix.sum(1) - tp)
    names = ["background", "red", "green"]
    assert [result["iou"][n] for n in names] == pytest.approx([None if np.isnan(v) else v for v in iou])
    bars = plots.read_metadata(tmp_path / "plots" / "per_class_iou.png")
    assert bars["darknetpy.labels"] == names and bars["darknetpy.values"] == pytest.approx(
        [result["iou"][n] for n in names])


def test_map_plots(tmp_path, capsys):
    from test_map import CENTRE, tiny_dataset
    root = tiny_dataset(tmp_path / "d", [[f"0 {CENTRE}"], [f"1 {CENTRE}", "1 0.1 0.1 0.1 0.1"]])
    code, out, err = run(capsys, "map", root / "tiny.cfg", root / "tiny.weights", root / "tiny.data", "--json",
                         "--plots", tmp_path / "plots")
    assert code == 0, err
    result = json.loads(out)
    # by hand (tests/test_plots.py): a takes the a, then the centre b; each b detection finds nothing
    meta = check_confusion_png(tmp_path / "plots" / "confusion_matrix.png", [[1, 0, 0], [1, 0, 1], [0, 2, 0]])
    assert meta["darknetpy.labels"] == ["a", "b", "background"]
    curves = plots.read_metadata(tmp_path / "plots" / "pr_curve.png")
    assert curves["darknetpy.ap"] == [c["ap50"] for c in result["classes"]]
    assert curves["darknetpy.map"] == pytest.approx(result["map50"])
    # `valid` on a detector measures the same mAP and draws the same pictures
    code, out, err = run(capsys, "valid", root / "tiny.cfg", root / "tiny.weights", root / "tiny.data", "--json",
                         "--plots", tmp_path / "valid")
    assert code == 0, err
    assert json.loads(out)["map50"] == pytest.approx(result["map50"])
    check_confusion_png(tmp_path / "valid" / "confusion_matrix.png", [[1, 0, 0], [1, 0, 1], [0, 2, 0]])
    assert sorted(p.name for p in (tmp_path / "valid").iterdir()) == sorted(
        p.name for p in (tmp_path / "plots").iterdir())


# ---- --plots refusals ------------------------------------------------------------------------------------------
def test_plots_into_an_unusable_folder_is_refused_before_any_work(tmp_path, capsys):
    from test_map import CENTRE, tiny_dataset
    root = tiny_dataset(tmp_path / "d", [[f"0 {CENTRE}"]])
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    before = sorted(tmp_path.rglob("*"))
    for target, message in ((blocker, "--plots must be a folder"), (blocker / "plots", "cannot be created")):
        code, out, err = run(capsys, "map", root / "tiny.cfg", root / "tiny.weights", root / "tiny.data",
                             "--plots", target)
        assert code == 2 and out == ""
        assert message in one_line(err, str(target))      # no progress line either: nothing was measured
        code, out, err = run(capsys, "valid", MNIST_CFG, MNIST_WEIGHTS, root / "tiny.data", "--plots", target)
        assert code == 2 and out == "" and message in one_line(err, str(target))
    assert sorted(tmp_path.rglob("*")) == before and blocker.read_text() == "not a folder"


@pytest.mark.skipif(sys.platform == "win32" or __import__("os").geteuid() == 0,
                    reason="permission bits do not stop root")
def test_plots_into_a_read_only_folder(tmp_path, capsys):
    from test_map import CENTRE, tiny_dataset
    root = tiny_dataset(tmp_path / "d", [[f"0 {CENTRE}"]])
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, out, err = run(capsys, "map", root / "tiny.cfg", root / "tiny.weights", root / "tiny.data",
                             "--plots", locked)
        assert code == 2 and "not writable" in one_line(err, str(locked))
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_failed_evaluation_leaves_no_plots_folder(tmp_path, capsys):
    from test_map import CENTRE, tiny_dataset
    root = tiny_dataset(tmp_path / "d", [[f"0 {CENTRE}"]])
    (root / "valid.list").write_text("img0.png\nmissing.png\n")
    code, out, err = run(capsys, "map", root / "tiny.cfg", root / "tiny.weights", root / "tiny.data",
                         "--plots", tmp_path / "new" / "plots")
    assert code == 2 and "missing.png" in err
    assert not (tmp_path / "new").exists()
    shutil.rmtree(root)
