"""Detection labels (spec §7.8: where Darknet finds them, what a bad line is) and the detection dataset:
truth rows, boxes following their pixels at multi-scale sizes, reproducible batches through BatchLoader."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from darknetpy.config import read_data_file
from darknetpy.data import BatchLoader
from darknetpy.detection_augment import DetectionAugmentSettings
from darknetpy.detection_data import DetectionDataset
from darknetpy.detection_labels import label_path_candidates, parse_label_text, read_labels
from darknetpy.errors import DarknetWarning, DataError


# ------------------------------------------------------------------------------------------- label paths

@pytest.mark.parametrize("image, expected", [
    ("data/images/a.jpg", ["data/labels/a.txt", "data/images/a.txt"]),
    ("VOC2007/JPEGImages/000001.jpg", ["VOC2007/labels/000001.txt", "VOC2007/JPEGImages/000001.txt"]),
    ("set/raw/x.png", ["set/labels/x.txt", "set/raw/x.txt"]),
    ("images/images/a.JPEG", ["labels/images/a.txt", "images/images/a.txt"]),   # first occurrence only
    ("pics/a.png", ["pics/a.txt"]),                                             # nothing to replace
])
def test_label_paths_as_darknet_derives_them(image, expected):
    assert label_path_candidates(image) == expected


def write_image(path, w=40, h=30):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path)


def test_darknet_path_first_then_beside_the_image(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("a", "b", "c"):
        write_image(tmp_path / "images" / f"{name}.png")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    (tmp_path / "images" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")   # not read: Darknet's path wins
    (tmp_path / "images" / "b.txt").write_text("0 0.25 0.5 0.5 0.2\n")  # AlexeyAB's beside-the-image
    with pytest.warns(DarknetWarning, match=r"1 of 3 images .* no label file") as caught:
        labels = read_labels(["images/a.png", "images/b.png", "images/c.png"], 2)
    assert len([w for w in caught if "no label file" in str(w.message)]) == 1
    assert labels.of(0)[:, 4].tolist() == [1]
    np.testing.assert_allclose(labels.of(1), [[0.25, 0.5, 0.5, 0.2, 0]])
    assert labels.of(2).shape == (0, 5) and labels.sources[2] is None


def test_labels_found_beside_the_data_file(tmp_path, monkeypatch):
    write_image(tmp_path / "set" / "images" / "a.png")
    (tmp_path / "set" / "labels").mkdir()
    (tmp_path / "set" / "labels" / "a.txt").write_text("0 0.5 0.5 1 1\n\n")
    monkeypatch.chdir(tmp_path.parent)
    labels = read_labels(["images/a.png"], 1, base_dir=tmp_path / "set")
    assert labels.of(0).tolist() == [[0.5, 0.5, 1.0, 1.0, 0.0]]


@pytest.mark.parametrize("line, message", [
    ("0 0.5 0.5 0.2", "expected 5 fields"),
    ("0 0.5 0.5 0.2 0.2 7", "expected 5 fields"),
    ("cat 0.5 0.5 0.2 0.2", "class 'cat' is not a whole number"),
    ("1.0 0.5 0.5 0.2 0.2", "class '1.0' is not a whole number"),
    ("3 0.5 0.5 0.2 0.2", "class 3 is outside 0..2"),
    ("-1 0.5 0.5 0.2 0.2", "class -1 is outside 0..2"),
    ("0 0.5 abc 0.2 0.2", "y_center 'abc' is not a number"),
    ("0 1.5 0.5 0.2 0.2", "x_center 1.5 is outside [0, 1]"),
    ("0 0.5 0.5 -0.2 0.2", "width -0.2 is outside [0, 1]"),
    ("0 0.5 0.5 0.2 nan", "height nan is outside [0, 1]"),
    ("0 0.5 0.5 0 0.2", "zero-size box"),
    ("0 0.5 0.5 0.2 0.0", "zero-size box"),
])
def test_bad_label_lines_are_located_errors(line, message):
    text = "0 0.5 0.5 0.2 0.2\n\n" + line + "\n1 0.1 0.1 0.1 0.1\n"
    with pytest.raises(DataError) as info:
        parse_label_text(text, "labels/x.txt", 3)
    assert info.value.path == "labels/x.txt" and info.value.line == 3
    assert message in info.value.message
    assert str(info.value).startswith("labels/x.txt:3: ")


def test_label_text_gives_truth_row_order():
    boxes = parse_label_text("2 0.1 0.2 0.3 0.4\n0 1 1 1 1\n", "x.txt", 3)
    assert boxes.dtype == np.float32
    np.testing.assert_allclose(boxes, [[0.1, 0.2, 0.3, 0.4, 2], [1, 1, 1, 1, 0]], rtol=1e-7)


# ------------------------------------------------------------------------------------------- dataset

def make_dataset_files(tmp_path, count=6, classes=2, valid=True):
    """Images with painted (value 1) rectangles on black and their labels; returns the .data path."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(count):
        w, h = int(rng.integers(50, 110)), int(rng.integers(50, 110))
        img = np.zeros((h, w, 3), np.uint8)
        bw, bh = int(rng.integers(8, w // 2)), int(rng.integers(8, h // 2))
        x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        img[y0:y0 + bh, x0:x0 + bw] = 255
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "labels").mkdir(exist_ok=True)
        Image.fromarray(img).save(tmp_path / "images" / f"s{i}.png")
        (tmp_path / "labels" / f"s{i}.txt").write_text(
            f"{i % classes} {(x0 + bw / 2) / w} {(y0 + bh / 2) / h} {bw / w} {bh / h}\n")
        lines.append(f"images/s{i}.png")
    (tmp_path / "train.list").write_text("\n".join(lines) + "\n")
    (tmp_path / "valid.list").write_text("\n".join(lines[:2]) + "\n")
    data = tmp_path / "set.data"
    data.write_text(f"classes={classes}\ntrain=train.list\n" + ("valid=valid.list\n" if valid else ""))
    return data


GEOMETRY_ONLY = dict(hue=0.0, saturation=1.0, exposure=1.0)


@pytest.mark.parametrize("size", [(64, 64), (96, 64), (32, 128)])   # multi-scale sizes, non-square too
@pytest.mark.parametrize("alexeyab", [False, True])
def test_loaded_truth_boxes_sit_on_their_pixels(tmp_path, size, alexeyab):
    data = make_dataset_files(tmp_path)
    settings = DetectionAugmentSettings(64, 64, jitter=0.3, alexeyab=alexeyab, **GEOMETRY_ONLY)
    dataset = DetectionDataset(read_data_file(data), settings, classes=2)
    w, h = size
    for index in range(len(dataset)):
        x, truth = dataset.load(index, np.random.default_rng(index), w, h)
        assert x.shape == (3, h, w) and truth.shape == (450,) and truth.dtype == np.float32
        ys, xs = np.nonzero(x[0] > 0.5)
        if len(xs) == 0:
            assert truth[2] * w < 1.5 or truth[3] * h < 1.5 or not truth.any()
            continue
        bx, by, bw, bh, cls = truth[:5]
        np.testing.assert_allclose([(bx - bw / 2) * w, (by - bh / 2) * h, (bx + bw / 2) * w, (by + bh / 2) * h],
                                   [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=1.0)
        assert cls == index % 2 and not truth[5:].any()


def test_validation_rows_keep_image_coordinates(tmp_path):
    data = make_dataset_files(tmp_path)
    settings = DetectionAugmentSettings(64, 64, truth_boxes=30)
    dataset = DetectionDataset(read_data_file(data), settings, classes=2, train=False)
    assert len(dataset) == 2
    x, truth = dataset.load(0)
    assert x.shape == (3, 64, 64) and truth.shape == (150,)
    np.testing.assert_array_equal(truth[:5], dataset.boxes(0)[0])


def test_mosaic_rows_hold_boxes_of_several_images(tmp_path):
    data = make_dataset_files(tmp_path)
    settings = DetectionAugmentSettings(96, 96, jitter=0.2, mosaic=True, **GEOMETRY_ONLY)
    assert settings.alexeyab
    dataset = DetectionDataset(read_data_file(data), settings, classes=2)
    counts = []
    for seed in range(10):
        x, truth = dataset.load(0, np.random.default_rng(seed), 96, 96)
        counts.append(int(np.count_nonzero(truth.reshape(-1, 5)[:, 0])))
    assert max(counts) >= 2


def test_same_seed_same_batches_through_the_loader(tmp_path):
    data = make_dataset_files(tmp_path)
    settings = DetectionAugmentSettings(64, 64, jitter=0.3, hue=0.1, saturation=1.5, exposure=1.5)
    dataset = DetectionDataset(read_data_file(data), settings, classes=2, batch_size=4)

    def batches(seed, workers):
        with BatchLoader(dataset, seed=seed, workers=workers, backend="thread") as loader:
            return [tuple(a.copy() for a in loader.next_batch()) for _ in range(3)]

    first, again, other = batches(5, 1), batches(5, 2), batches(6, 1)
    for (x1, y1), (x2, y2) in zip(first, again):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
        assert y1.shape == (4, 450)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other))


def test_dataset_refuses_a_class_count_other_than_the_cfgs(tmp_path):
    data = make_dataset_files(tmp_path, classes=2)
    with pytest.raises(DataError, match=r"classes=2, but .* has classes=3") as info:
        DetectionDataset(read_data_file(data), DetectionAugmentSettings(64, 64), classes=3)
    assert info.value.line == 1


def test_missing_image_and_missing_valid_list(tmp_path):
    data = make_dataset_files(tmp_path, valid=False)
    with pytest.raises(DataError, match="has no 'valid' list"):
        DetectionDataset(read_data_file(data), DetectionAugmentSettings(64, 64), classes=2, train=False)
    (tmp_path / "train.list").write_text("images/s0.png\nimages/nope.png\n")
    with pytest.raises(DataError, match="nope.png") as info:
        DetectionDataset(read_data_file(data), DetectionAugmentSettings(64, 64), classes=2)
    assert info.value.line == 2


def test_ten_thousand_label_files_are_read_once_each(tmp_path, monkeypatch):
    # many list entries sharing few files: each file is parsed once (the cache), every image gets its rows
    monkeypatch.chdir(tmp_path)
    write_image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n1 0.2 0.2 0.1 0.1\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        labels = read_labels(["a.png"] * 10000, 2)
    assert len(labels) == 10000 and labels.boxes.shape == (20000, 5)
    np.testing.assert_array_equal(labels.of(9999), labels.of(0))


@pytest.mark.shared
@pytest.mark.filterwarnings("ignore::darknetpy.errors.DarknetWarning")   # keys darknetpy does not use
@pytest.mark.parametrize("cfg, alexeyab, jitter, resize, random, boxes", [
    ("cfg-corpus/yolov3-tiny.cfg", False, 0.3, 1.0, 1.0, 90),
    ("cfg-corpus/yolov2-tiny.cfg", False, 0.2, 1.0, 1.0, 30),
    ("cfg-alexeyab/yolov4-tiny.cfg", True, 0.3, 1.5, 0.0, 90),
    ("models/yolo-fastest-1.1/yolo-fastest-1.1.cfg", True, 0.15, 1.0, 0.0, 90),
])
def test_augmentation_settings_of_real_cfgs(cfg, alexeyab, jitter, resize, random, boxes):
    from conftest import shared_path
    from darknetpy.network import load_cfg
    network = load_cfg(shared_path(*cfg.split("/")))
    head = network.output_layer
    settings = DetectionAugmentSettings.from_network(network.net, head)
    assert (settings.alexeyab, settings.jitter, settings.resize, settings.random) == pytest.approx(
        (alexeyab, jitter, resize, random))
    assert settings.truth_boxes == boxes and settings.truth_size == head.truth_size()
    assert (settings.hue, settings.saturation, settings.exposure) == pytest.approx((0.1, 1.5, 1.5))


def test_grey_networks_get_one_channel(tmp_path):
    data = make_dataset_files(tmp_path)
    settings = DetectionAugmentSettings(48, 32, channels=1, jitter=0.2, **GEOMETRY_ONLY)
    train = DetectionDataset(read_data_file(data), settings, classes=2)
    x, _ = train.load(0, np.random.default_rng(0), 48, 32)
    assert x.shape == (1, 32, 48)
    valid = DetectionDataset(read_data_file(data), settings, classes=2, train=False)
    assert valid.load(1)[0].shape == (1, 32, 48)


def test_big_jpegs_are_decoded_at_a_reduced_scale_and_boxes_still_fit(tmp_path):
    from darknetpy.detection_data import decode_for_canvas
    img = np.zeros((1200, 1600, 3), np.uint8)
    img[300:900, 200:600] = 255
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.fromarray(img).save(tmp_path / "images" / "big.jpg", quality=95)
    (tmp_path / "labels" / "big.txt").write_text(f"1 {400 / 1600} {600 / 1200} {400 / 1600} {600 / 1200}\n")
    (tmp_path / "train.list").write_text("images/big.jpg\n")
    (tmp_path / "big.data").write_text("classes=2\ntrain=train.list\n")
    # 2 pixels per canvas pixel at least: 2 * max(64/1600, 64/1200) of the size -> libjpeg's 1/8 scale
    assert decode_for_canvas(str(tmp_path / "images" / "big.jpg"), 64, 64).shape == (3, 150, 200)
    assert decode_for_canvas(str(tmp_path / "images" / "big.jpg"), 416, 416).shape == (3, 1200, 1600)
    dataset = DetectionDataset(read_data_file(tmp_path / "big.data"),
                               DetectionAugmentSettings(64, 64, jitter=0.3, **GEOMETRY_ONLY), classes=2)
    for seed in range(6):
        x, truth = dataset.load(0, np.random.default_rng(seed), 64, 64)
        ys, xs = np.nonzero(x[0] > 0.5)
        bx, by, bw, bh = truth[:4]
        np.testing.assert_allclose([(bx - bw / 2) * 64, (by - bh / 2) * 64, (bx + bw / 2) * 64, (by + bh / 2) * 64],
                                   [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=1.0)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("mosaic", [False, True])
def test_grey_images_train_as_one_plane_with_the_pixels_of_the_rgb_path(tmp_path, channels, mosaic):
    """Grey images are loaded and augmented as one plane (a mosaic of grey and colour pieces makes the grey
    ones RGB). Oracle: the same images stored as RGB with three equal planes, the colour path, which must
    give the same input and truth bit for bit, with hue, saturation and exposure changes on."""
    datas = {}
    for kind in ("grey", "rgb"):
        root = tmp_path / kind
        root.mkdir()
        make_dataset_files(root, count=4)
        for i in range(4):
            path = root / "images" / f"s{i}.png"
            pixels = np.asarray(Image.open(path))[:, :, 0]
            noise = np.random.default_rng(i).integers(0, 90, pixels.shape)
            pixels = np.clip(pixels.astype(int) + noise, 0, 255).astype(np.uint8)
            if kind == "grey" and i != 3:  # one colour image stays, for the mixed mosaic
                Image.fromarray(pixels).save(path)
            else:
                colour = np.repeat(pixels[:, :, None], 3, axis=2)
                if i == 3:
                    colour[:, :, 0] = 255 - colour[:, :, 0]
                Image.fromarray(colour).save(path)
        datas[kind] = read_data_file(root / "set.data")
    settings = DetectionAugmentSettings(64, 48, channels=channels, jitter=0.3, hue=0.1, saturation=1.5,
                                        exposure=1.5, mosaic=mosaic, alexeyab=mosaic)
    grey = DetectionDataset(datas["grey"], settings, classes=2)
    rgb = DetectionDataset(datas["rgb"], settings, classes=2)
    assert grey.load_planes(0).shape[0] == 1 and rgb.load_planes(0).shape[0] == 3
    for index in range(4):
        for seed in range(3):
            x_grey, y_grey = grey.load(index, np.random.default_rng(seed), 64, 48)
            x_rgb, y_rgb = rgb.load(index, np.random.default_rng(seed), 64, 48)
            assert x_grey.shape == (channels, 48, 64)
            np.testing.assert_array_equal(x_grey, x_rgb)
            np.testing.assert_array_equal(y_grey, y_rgb)
