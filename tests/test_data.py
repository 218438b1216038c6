"""Classifier data: path resolution, substring labels (spec §7.2), list errors with file:line, and the
batch loader (shapes, labels, determinism). Images are constant colours, so which image landed in a
batch row can be read back from the pixels and checked against its label independently."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from darknetpy.config import NetConfig, SectionReader, parse_cfg_text, read_data_file
from darknetpy.config import resolve_path
from darknetpy.data import BatchLoader, ClassificationDataset, LabelMatcher, load_validation_image
from darknetpy.errors import DarknetWarning, DataError, ImageError

LABELS = ["cat", "dog", "bird"]
# (file name, class index); each image is one colour, unique per file.
FILES = [("cat_0.png", 0), ("cat_1.png", 0), ("dog_0.png", 1), ("dog_1.png", 1), ("bird_0.png", 2),
         ("bird_1.png", 2)]


def colour_of(number: int) -> tuple[int, int, int]:
    return (20 + 30 * number, 230 - 25 * number, 40 * (number % 3) + 10)


def net_config(width=6, height=6, channels=3, batch=8, subdivisions=2, extra="center=1\n") -> NetConfig:
    text = (f"[net]\nbatch={batch}\nsubdivisions={subdivisions}\nwidth={width}\nheight={height}\n"
            f"channels={channels}\n{extra}")
    return NetConfig.from_section(SectionReader(parse_cfg_text(text).sections[0], "<test>"))


@pytest.fixture
def dataset_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A dataset folder with list entries relative to it, used from an unrelated working directory."""
    root = tmp_path / "set"
    (root / "img").mkdir(parents=True)
    for number, (name, _) in enumerate(FILES):
        pixels = np.empty((6, 8, 3), np.uint8)
        pixels[:] = colour_of(number)
        Image.fromarray(pixels).save(root / "img" / name)
    (root / "train.list").write_text("".join(f"img/{name}\n" for name, _ in FILES))
    (root / "valid.list").write_text("img/dog_1.png\nimg/cat_0.png\n")
    (root / "labels.txt").write_text("\n".join(LABELS) + "\n")
    (root / "set.data").write_text("classes=3\ntrain=train.list\nvalid=valid.list\nlabels=labels.txt\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return root


def identify(batch_image: np.ndarray) -> int:
    """Which FILES entry a constant-colour crop came from."""
    rgb = np.rint(batch_image.reshape(3, -1).mean(axis=1) * 255).astype(int)
    for number in range(len(FILES)):
        if tuple(rgb) == colour_of(number):
            return number
    raise AssertionError(f"unknown colour {rgb}")


# ------------------------------------------------------------------------------------ paths

def test_resolve_path_prefers_the_working_directory(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    work = tmp_path / "work"
    (data_dir / "sub").mkdir(parents=True)
    (work / "sub").mkdir(parents=True)
    (data_dir / "sub" / "only_beside_data.png").write_bytes(b"x")
    (data_dir / "sub" / "both.png").write_bytes(b"x")
    (work / "sub" / "both.png").write_bytes(b"x")
    monkeypatch.chdir(work)
    assert resolve_path("sub/both.png", data_dir) == "sub/both.png"
    assert resolve_path("sub/only_beside_data.png", data_dir) == os.path.join(str(data_dir), "sub/only_beside_data.png")
    assert resolve_path("sub/nowhere.png", data_dir) == "sub/nowhere.png"
    absolute = str(data_dir / "sub" / "both.png")
    assert resolve_path(absolute, work) == absolute


# ------------------------------------------------------------------------------------ labels

def test_training_truth_sets_every_substring_match():
    matcher = LabelMatcher(["cat", "dog", "bird"])
    np.testing.assert_array_equal(matcher.truth("img/dog_3.png"), [0, 1, 0])
    with pytest.warns(DarknetWarning, match="labels 'cat', 'dog'"):
        truth = matcher.truth("img/catdog.png")
    np.testing.assert_array_equal(truth, [1, 1, 0])
    with pytest.warns(DarknetWarning, match="no label"):
        truth = matcher.truth("img/fish.png", where="train.list:7")
    np.testing.assert_array_equal(truth, [0, 0, 0])


def test_label_count_warning_is_issued_once_per_image():
    matcher = LabelMatcher(["a", "b"])
    with pytest.warns(DarknetWarning):
        matcher.truth("ab.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        matcher.truth("ab.png")


def test_label_count_warnings_stop_after_twenty_but_are_counted():
    matcher = LabelMatcher(["a", "b"])
    with pytest.warns(DarknetWarning) as record:
        for number in range(25):
            matcher.truth(f"{number}.png")
    assert len(record) == 20 and "further such warnings" in str(record[-1].message)
    assert matcher.suppressed_warnings == 5


def test_single_class_with_no_match_is_silent_like_darknet():
    matcher = LabelMatcher(["person"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(matcher.truth("img/empty.png"), [0])


def test_validation_class_is_the_first_match():
    matcher = LabelMatcher(["dog", "cat"])
    assert matcher.class_index("x/cat_and_dog.png") == 0
    assert matcher.class_index("x/cat.png") == 1
    assert matcher.class_index("x/fish.png") == -1


def test_substring_pitfall_is_replicated_and_warned_about():
    with pytest.warns(DarknetWarning) as record:
        matcher = LabelMatcher([str(digit) for digit in range(11)])
    messages = [str(item.message) for item in record]
    assert "label '1' (class 1) is part of label '10' (class 10): paths containing '10' also match '1'" in messages
    assert len(messages) == 2  # "0" and "1" are both inside "10"
    assert matcher.matches("digits/10/a.png") == [0, 1, 10]  # "0", "1" and "10" all occur
    assert matcher.class_index("digits/10/a.png") == 0


def test_empty_label_is_rejected():
    with pytest.raises(DataError, match="empty label"):
        LabelMatcher(["cat", ""])


# ------------------------------------------------------------------------------------ dataset

def test_dataset_reads_lists_relative_to_the_data_file(dataset_dir):
    data = read_data_file(dataset_dir / "set.data")
    dataset = ClassificationDataset(data, net_config(), train=True, seed=0)
    assert len(dataset) == 6
    assert dataset.entries[0] == "img/cat_0.png"
    assert all(os.path.isfile(path) for path in dataset.paths)
    expected = np.zeros((6, 3), np.float32)
    expected[np.arange(6), [label for _, label in FILES]] = 1
    np.testing.assert_array_equal(dataset.truths, expected)
    assert dataset.batch_size == 8


def test_missing_image_names_list_file_and_line(dataset_dir):
    (dataset_dir / "train.list").write_text("img/cat_0.png\n\nimg/cat_9.png\nimg/dog_0.png\n")
    with pytest.raises(DataError) as caught:
        ClassificationDataset(read_data_file(dataset_dir / "set.data"), net_config(), train=True)
    assert str(caught.value).startswith(f"{dataset_dir / 'train.list'}:3: image 'img/cat_9.png' not found")


def test_missing_and_empty_lists_are_errors(dataset_dir):
    (dataset_dir / "set.data").write_text("classes=3\ntrain=nope.list\nlabels=labels.txt\n")
    with pytest.raises(DataError, match="nope.list"):
        ClassificationDataset(read_data_file(dataset_dir / "set.data"), net_config(), train=True)
    (dataset_dir / "set.data").write_text("classes=3\ntrain=train.list\nlabels=labels.txt\n")
    (dataset_dir / "train.list").write_text("\n\n")
    with pytest.raises(DataError, match="no entries") as caught:
        ClassificationDataset(read_data_file(dataset_dir / "set.data"), net_config(), train=True)
    assert str(caught.value).startswith(str(dataset_dir / "train.list"))


def test_labels_matching_no_path_at_all_is_an_error(dataset_dir):
    (dataset_dir / "labels.txt").write_text("horse\nzebra\nfish\n")
    with pytest.raises(DataError, match="no path .* contains any of the 3 labels") as caught:
        ClassificationDataset(read_data_file(dataset_dir / "set.data"), net_config(), train=True)
    assert str(caught.value).startswith(str(dataset_dir / "labels.txt"))


def test_fewer_labels_than_classes_is_an_error(dataset_dir):
    (dataset_dir / "labels.txt").write_text("cat\ndog\n")
    with pytest.raises(DataError, match="2 labels but classes=3"):
        ClassificationDataset(read_data_file(dataset_dir / "set.data"), net_config(), train=True)


def test_validation_images_are_centre_crops_with_first_match_classes(dataset_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a validation subset may lack a class ("bird") silently
        dataset = ClassificationDataset(read_data_file(dataset_dir / "set.data"), net_config(), train=False)
    np.testing.assert_array_equal(dataset.class_indices, [1, 0])
    np.testing.assert_array_equal(dataset.truths, [[0, 1, 0], [1, 0, 0]])
    image = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(image).save(dataset_dir / "img" / "dog_1.png")
    x, y = dataset.load(0)
    # 8×6 → the centred 6×6 square at x = 1, already the network size (no resampling).
    expected = image[:, 1:7, :].transpose(2, 0, 1) / np.float32(255)
    np.testing.assert_array_equal(x, expected)
    np.testing.assert_array_equal(load_validation_image(dataset.paths[0], 6, 6), expected)
    np.testing.assert_array_equal(y, [0, 1, 0])


def test_grey_networks_get_stb_luma(dataset_dir):
    # stb_image's stbi__compute_y: (77 r + 150 g + 29 b) >> 8 on bytes; darknetpy keeps the fraction
    image = np.empty((6, 8, 3), np.uint8)
    image[:] = (200, 100, 30)
    Image.fromarray(image).save(dataset_dir / "img" / "dog_1.png")
    dataset = ClassificationDataset(read_data_file(dataset_dir / "set.data"), net_config(channels=1), train=False)
    x, _ = dataset.load(0)
    assert x.shape == (1, 6, 6)
    r, g, b = (float(np.float32(v) / np.float32(255)) for v in (200, 100, 30))  # Darknet's pixel values
    np.testing.assert_array_equal(x, np.float32((77 * r + 150 * g + 29 * b) / 256))
    assert int(x[0, 0, 0] * 255) == (77 * 200 + 150 * 100 + 29 * 30) >> 8


# ------------------------------------------------------------------------------------ loader

def collect(dataset, seed, batches, backend="thread", **options):
    with BatchLoader(dataset, seed=seed, backend=backend, **options) as loader:
        return [tuple(array.copy() for array in loader.next_batch()) for _ in range(batches)]


def test_batches_have_the_right_shapes_and_labels(dataset_dir):
    dataset = ClassificationDataset(read_data_file(dataset_dir / "set.data"), net_config(), train=True)
    seen = set()
    for x, y in collect(dataset, seed=1, batches=3):
        assert x.shape == (8, 3, 6, 6) and x.dtype == np.float32
        assert y.shape == (8, 3) and y.dtype == np.float32
        for row in range(8):
            number = identify(x[row])
            seen.add(number)
            expected = np.zeros(3, np.float32)
            expected[FILES[number][1]] = 1
            np.testing.assert_array_equal(y[row], expected)
    assert len(seen) >= 4  # drawn at random, with replacement


def test_grey_network_batches_have_one_channel(dataset_dir):
    dataset = ClassificationDataset(read_data_file(dataset_dir / "set.data"), net_config(channels=1),
                                    train=True)
    (x, y), = collect(dataset, seed=1, batches=1, batch_size=4)
    assert x.shape == (4, 1, 6, 6) and y.shape == (4, 3)


def test_loader_is_deterministic_regardless_of_workers(dataset_dir):
    augmenting = net_config(extra="angle=20\nhue=.1\nsaturation=1.5\nexposure=1.5\naspect=1.2\n")
    dataset = ClassificationDataset(read_data_file(dataset_dir / "set.data"), augmenting, train=True)
    reference = collect(dataset, seed=7, batches=3, workers=1, prefetch=1)
    for options in (dict(workers=2, prefetch=3), dict(workers=3, prefetch=1)):
        for (x, y), (x_ref, y_ref) in zip(collect(dataset, seed=7, batches=3, **options), reference):
            np.testing.assert_array_equal(x, x_ref)
            np.testing.assert_array_equal(y, y_ref)
    resumed = collect(dataset, seed=7, batches=1, start_batch=2)  # continuing after two updates
    np.testing.assert_array_equal(resumed[0][0], reference[2][0])
    other = collect(dataset, seed=8, batches=3)
    assert not all(np.array_equal(x, x_ref) for (x, _), (x_ref, _) in zip(other, reference))
    assert not np.array_equal(reference[0][0], reference[1][0])


def test_seed_defaults_to_the_datasets(dataset_dir):
    dataset = ClassificationDataset(read_data_file(dataset_dir / "set.data"), net_config(), train=True, seed=5)
    with BatchLoader(dataset, backend="thread") as first, BatchLoader(dataset, backend="thread") as second:
        assert first.seed == 5
        np.testing.assert_array_equal(first.next_batch()[0], second.next_batch()[0])


def test_resize_changes_later_batches_reproducibly(dataset_dir):
    dataset = ClassificationDataset(read_data_file(dataset_dir / "set.data"), net_config(), train=True)
    results = []
    for _ in range(2):
        with BatchLoader(dataset, seed=3, prefetch=2, backend="thread") as loader:
            first = loader.next_batch()[0].copy()
            loader.resize(4, 5)
            second = loader.next_batch()[0].copy()
        results.append((first, second))
    assert results[0][0].shape == (8, 3, 6, 6) and results[0][1].shape == (8, 3, 5, 4)
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_unreadable_image_surfaces_in_next_batch_with_its_list_line(dataset_dir):
    (dataset_dir / "img" / "dog_0.png").write_bytes(b"not a png at all")
    dataset = ClassificationDataset(read_data_file(dataset_dir / "set.data"), net_config(), train=True)
    with BatchLoader(dataset, seed=0, batch_size=32, backend="thread") as loader:
        with pytest.raises(ImageError, match=r"listed at .*train\.list:3") as caught:
            for _ in range(3):
                loader.next_batch()
    assert str(caught.value).startswith(str(dataset_dir / "img" / "dog_0.png") + ": ")


def test_process_backend_gives_the_same_batches_and_the_same_errors(dataset_dir):
    dataset = ClassificationDataset(read_data_file(dataset_dir / "set.data"), net_config(extra="angle=10\n"),
                                    train=True)
    threads = collect(dataset, seed=11, batches=2, batch_size=32)
    with BatchLoader(dataset, seed=11, batch_size=32, backend="process", workers=1) as loader:
        for x_ref, y_ref in threads:
            x, y = loader.next_batch()
            np.testing.assert_array_equal(x, x_ref)
            np.testing.assert_array_equal(y, y_ref)
        (dataset_dir / "img" / "dog_0.png").write_bytes(b"not a png at all")
        loader.resize(5, 5)  # drops the prefetched batches, so the broken file is read
        with pytest.raises(ImageError, match=r"listed at .*train\.list:3") as caught:
            for _ in range(3):
                loader.next_batch()
    # The error crossed a process boundary with its path intact.
    assert str(caught.value).startswith(str(dataset_dir / "img" / "dog_0.png") + ": ")


def test_closed_loader_refuses_work(dataset_dir):
    dataset = ClassificationDataset(read_data_file(dataset_dir / "set.data"), net_config(), train=True)
    loader = BatchLoader(dataset, seed=0, backend="thread")
    loader.close()
    loader.close()
    with pytest.raises(RuntimeError, match="closed"):
        loader.next_batch()
