"""Segmentation end to end through the command line: train, valid, segment, and the located errors for bad
masks and class counts (exit 2, one line, before anything is trained)."""
import json

import numpy as np
import pytest
from PIL import Image

from darknetpy.cli import main

CFG = """[net]
batch=4
subdivisions=1
width=16
height=16
channels=3
learning_rate=0.1
momentum=0.9
decay=0.0005
max_batches=3
min_crop=16
max_crop=18
flip=1

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[local_avgpool]
size=2
stride=2

[convolutional]
filters=8
size=3
stride=1
pad=1
activation=leaky

[upsample]
stride=2

[route]
layers=-1,0

[convolutional]
filters=3
size=1
stride=1
pad=0
activation=linear

[softmax]
spatial=1
"""


def make_dataset(root, count=6, size=16):
    """Scenes with a red square (class 1) and a green one (class 2) on black, masks beside in masks/."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for k in range(count):
        img = np.zeros((size, size, 3), np.uint8)
        mask = np.zeros((size, size), np.uint8)
        for channel, cls in ((0, 1), (1, 2)):
            x, y = rng.integers(0, size - 5, size=2)
            img[y:y + 5, x:x + 5, channel] = 255
            mask[y:y + 5, x:x + 5] = cls
        mask[0, 0] = 255
        Image.fromarray(img).save(root / "images" / f"s{k}.png")
        Image.fromarray(mask, "L").save(root / "masks" / f"s{k}.png")
        paths.append(f"images/s{k}.png")
    (root / "train.txt").write_text("\n".join(paths) + "\n")
    (root / "valid.txt").write_text("\n".join(paths[:3]) + "\n")
    (root / "seg.names").write_text("background\nred\ngreen\n")
    (root / "seg.data").write_text("classes=3\ntrain=train.txt\nvalid=valid.txt\nnames=seg.names\n"
                                   "backup=backup\n")
    (root / "seg.cfg").write_text(CFG)
    return root


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path / "d")


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_valid_segment(dataset, capsys, monkeypatch):
    monkeypatch.chdir(dataset)
    code, out, err = run(["train", "seg.cfg", "seg.data", "--seed", "1", "--workers", "1", "--validate"], capsys)
    assert code == 0, err
    assert "segmentation" in out
    weights = dataset / "backup" / "seg.weights"
    assert weights.exists()
    import csv
    rows = list(csv.DictReader(open(dataset / "backup" / "metrics.csv")))
    measured = [float(row["miou"]) for row in rows if row["miou"]]
    assert measured and all(0 <= value <= 1 for value in measured)      # --validate: mIoU each epoch
    assert "mIoU" in out
    code, out, err = run(["valid", "seg.cfg", weights, "seg.data", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert set(result["iou"]) == {"background", "red", "green"}
    assert 0 <= result["pixel_accuracy"] <= 1 and "miou" in result
    code, out, err = run(["valid", "seg.cfg", weights, "seg.data"], capsys)
    assert code == 0 and "mIoU" in out and "green" in out
    code, out, err = run(["segment", "seg.cfg", weights, "images/s0.png", "images/s1.png", "--names", "seg.names",
                          "--json", "--out", "pictures"], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["image"] for r in rows] == ["images/s0.png", "images/s1.png"]
    assert rows[0]["width"] == 16 and rows[0]["height"] == 16
    assert sum(rows[0]["classes"].values()) == pytest.approx(1.0)
    with Image.open(dataset / "pictures" / "s0_mask.png") as mask:
        assert mask.mode == "P" and mask.size == (16, 16)
        assert np.asarray(mask).max() < 3
    with Image.open(dataset / "pictures" / "s0_overlay.png") as overlay:
        assert overlay.mode == "RGB" and overlay.size[1] >= 16 and overlay.size[0] > 16   # legend beside


def bad_case(dataset, kind):
    mask = dataset / "masks" / "s3.png"
    if kind == "missing":
        mask.unlink()
        return "no mask", "train.txt:4"
    if kind == "size":
        Image.fromarray(np.zeros((8, 16), np.uint8), "L").save(mask)
        return "16x8 but its image is 16x16", str(mask.name)
    if kind == "class":
        values = np.zeros((16, 16), np.uint8)
        values[2, 5] = 3
        Image.fromarray(values, "L").save(mask)
        return "pixel (5, 2) has class 3", str(mask.name)
    if kind == "unreadable":
        mask.write_bytes(b"\x89PNG\r\n\x1a\n not really")
        return "cannot read the mask", str(mask.name)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "size", "class", "unreadable"])
def test_bad_masks_are_one_located_line_before_training(dataset, capsys, monkeypatch, kind):
    monkeypatch.chdir(dataset)
    message, where = bad_case(dataset, kind)
    code, out, err = run(["train", "seg.cfg", "seg.data", "--workers", "1"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and where in lines[0], err
    assert "Traceback" not in err
    assert not list((dataset / "backup").glob("*.weights")) if (dataset / "backup").exists() else True


def test_data_classes_disagreeing_with_the_head_is_located(dataset, capsys, monkeypatch):
    monkeypatch.chdir(dataset)
    (dataset / "seg.data").write_text("train=train.txt\nclasses=4\nvalid=valid.txt\n")
    code, out, err = run(["train", "seg.cfg", "seg.data"], capsys)
    assert code == 2 and "seg.data:2:" in err and "classes=4" in err and "3 classes" in err


def test_segment_on_a_classifier_is_refused(dataset, capsys, monkeypatch):
    monkeypatch.chdir(dataset)
    (dataset / "cls.cfg").write_text("[net]\nwidth=16\nheight=16\nchannels=3\n\n[convolutional]\nfilters=2\n"
                                     "size=1\n\n[avgpool]\n\n[softmax]\n")
    import darknetpy
    darknetpy.load("cls.cfg").save_weights("cls.weights")
    code, out, err = run(["segment", "cls.cfg", "cls.weights", "images/s0.png"], capsys)
    assert code == 2 and "cls.cfg:" in err and "needs a segmentation network" in err


def test_predict_on_a_segmenter_segments(dataset, capsys, monkeypatch):
    monkeypatch.chdir(dataset)
    import darknetpy
    darknetpy.load("seg.cfg").save_weights("seg.weights")
    code, out, err = run(["predict", "seg.cfg", "seg.weights", "images/s0.png", "--json"], capsys)
    assert code == 0, err
    assert set(json.loads(out)["classes"]) == {"0", "1", "2"}
    with pytest.raises(darknetpy.errors.CfgError, match="segment"):   # the API's predict is for classifiers
        darknetpy.load("seg.cfg", "seg.weights").predict("images/s0.png")


def test_model_segment_matches_the_written_mask(dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(dataset)
    import darknetpy
    from darknetpy.segmentation import write_segmentation_pictures
    model = darknetpy.load("seg.cfg", seed=3)
    classes = model.segment("images/s1.png")
    assert classes.shape == (16, 16) and classes.dtype == np.uint8 and classes.max() < 3
    mask_path, _ = write_segmentation_pictures("images/s1.png", classes, ["bg", "red", "green"], tmp_path, "s1")
    np.testing.assert_array_equal(np.asarray(Image.open(mask_path)), classes)


DECONV_UNET = """[net]
batch=8
subdivisions=1
width=16
height=16
channels=3
learning_rate=0.002
momentum=0.9
decay=0.0005
max_batches=60

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=leaky

[deconvolutional]
filters=8
size=2
stride=2
activation=leaky

[route]
layers=-1,0

[convolutional]
filters=3
size=1
stride=1
pad=0
activation=linear

[softmax]
spatial=1
"""


def test_a_deconvolutional_unet_learns_a_pixel_task(dataset, monkeypatch):
    """Colour -> class is a per-pixel rule: the loss of a [deconvolutional] + [route] U-Net falls fast."""
    monkeypatch.chdir(dataset)
    import darknetpy
    from darknetpy.config import read_data_file
    from darknetpy.tasks import task_for
    (dataset / "unet.cfg").write_text(DECONV_UNET)
    model = darknetpy.load("unet.cfg", seed=1)
    task = task_for(model.network)(model, read_data_file("seg.data"))
    assert task.name == "segmentation"
    data = task.dataset(train=True, seed=0)
    rng = np.random.default_rng(0)
    batch = [data.load(i % len(data), rng, 16, 16) for i in range(8)]
    x = np.stack([image for image, _ in batch])
    truth = np.stack([row for _, row in batch])
    losses = [model.train_batch(x, truth) for _ in range(60)]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.3 * losses[0], losses[::10]


def test_a_one_channel_logistic_head_is_a_binary_segmenter(dataset, capsys, monkeypatch):
    monkeypatch.chdir(dataset)
    for mask_path in (dataset / "masks").glob("*.png"):
        values = np.asarray(Image.open(mask_path)).copy()
        values[values == 2] = 0                                  # red square = foreground, the rest background
        Image.fromarray(values, "L").save(mask_path)
    cfg = CFG.replace("filters=3\nsize=1", "filters=1\nsize=1").replace("[softmax]\nspatial=1", "[logistic]")
    (dataset / "bin.cfg").write_text(cfg)
    (dataset / "bin.data").write_text("classes=2\ntrain=train.txt\nvalid=valid.txt\nbackup=backup\n")
    code, out, err = run(["train", "bin.cfg", "bin.data", "--max-batches", "2", "--workers", "1"], capsys)
    assert code == 0, err
    code, out, err = run(["valid", "bin.cfg", "backup/bin.weights", "bin.data", "--json"], capsys)
    assert code == 0, err
    assert set(json.loads(out)["iou"]) == {"0", "1"}
