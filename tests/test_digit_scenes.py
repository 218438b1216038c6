"""tools/make_digit_scenes.py: labels and masks agree with the pixels, the splits never share a digit, the
result depends only on the seed. The IDX files are written here: each "digit" is a solid block of ink,
wide in the training file and tall in the test file, so a scene's pixels show which file a digit came from."""
from __future__ import annotations

import hashlib
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))  # the tool is a script; its worker processes import it by name
import make_digit_scenes as tool  # noqa: E402


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def block_digits(count: int, wide: bool, rng: np.random.Generator) -> np.ndarray:
    """28x28 images holding one solid 255 block, 2-3x wider than tall (or taller than wide)."""
    images = np.zeros((count, 28, 28), np.uint8)
    for image in images:
        short = int(rng.integers(6, 9))
        long = int(rng.integers(2 * short + 1, min(3 * short, 24) + 1))
        h, w = (short, long) if wide else (long, short)
        y, x = int(rng.integers(0, 28 - h + 1)), int(rng.integers(0, 28 - w + 1))
        image[y:y + h, x:x + w] = 255
    return images


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    for prefix, count, wide in (("train", 120, True), ("t10k", 70, False)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", block_digits(count, wide, rng))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, count))
    return folder


def make(idx_dir: Path, out: Path, task: str, seed: int = 3, jobs: int = 1, train: int = 14, valid: int = 8) -> Path:
    assert tool.main([str(idx_dir), str(out), "--task", task, "--train", str(train), "--valid", str(valid),
                      "--seed", str(seed), "--jobs", str(jobs)]) == 0
    return out


@pytest.fixture(scope="module")
def detect_set(idx_dir, tmp_path_factory) -> Path:
    return make(idx_dir, tmp_path_factory.mktemp("detect"), "detect")


@pytest.fixture(scope="module")
def segment_set(idx_dir, tmp_path_factory) -> Path:
    return make(idx_dir, tmp_path_factory.mktemp("segment"), "segment")


def pixel_boxes(label_file: Path, side: int) -> list[tuple[int, int, int, int, int]]:
    """(class, x0, y0, x1, y1) in pixels, ends exclusive, from a Darknet label file."""
    boxes = []
    for line in label_file.read_text().splitlines():
        c, x, y, w, h = (float(v) for v in line.split())
        boxes.append((int(c), round((x - w / 2) * side), round((y - h / 2) * side), round((x + w / 2) * side),
                      round((y + h / 2) * side)))
    return boxes


def scenes(root: Path, split: str) -> list[Path]:
    return [root / entry for entry in (root / f"{split}.list").read_text().split()]


# --------------------------------------------------------------------------------------- pure parts

def test_compose_by_hand():
    """Two blocks on black, the second drawn over a corner of the first: the mask takes the later class in
    the overlap, pixels are the ink, boxes are the blocks' own ink."""
    first = np.zeros((12, 20), np.uint8)
    first[2:10, 3:17] = 255
    first[1, 3:17] = 100          # faint ink: drawn, but outside the box and the mask
    second = np.zeros((10, 10), np.uint8)
    second[1:9, 1:9] = 200
    a = tool.place_at(first, 5, 5, 3, 0)
    b = tool.place_at(second, 18, 10, 7, 1)
    assert a.box == (8, 7, 22, 15) and b.box == (19, 11, 27, 19)
    image, mask = tool.compose(np.zeros((40, 40), np.float32), [a, b])
    assert image[6, 10] == 100 and mask[6, 10] == 0
    assert image[8, 10] == 255 and mask[8, 10] == 4
    assert image[12, 20] == 255 and mask[12, 20] == 8       # under both: white over white, later class
    assert image[16, 20] == 200 and mask[16, 20] == 8
    assert np.array_equal(mask > 0, image >= 128)
    assert tool.darknet_labels([a], 40) == ["3 0.375000 0.275000 0.350000 0.200000"]


def test_scaled_digit_height_and_faint_ink():
    digit = np.zeros((28, 28), np.uint8)
    digit[4:24, 10:18] = 255
    for height in (16, 50, 112):
        box = tool.ink_box(tool.scale_digit(digit, height))
        assert abs((box[3] - box[1]) - height) <= 1
    assert tool.scale_digit(np.full((28, 28), 100, np.uint8), 40) is None  # no ink >= 128


def test_overlap_rule():
    assert tool.overlap((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(0.5)
    assert tool.overlap((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0
    assert tool.overlap((0, 0, 100, 100), (0, 0, 10, 10)) == pytest.approx(1.0)  # of the smaller box
    rng = np.random.default_rng(1)
    digits = block_digits(8, True, rng)
    placed = tool.place_digits(rng, 256, digits, np.arange(8), np.arange(8))
    assert len(placed) >= 2
    for i, p in enumerate(placed):
        for q in placed[:i]:
            assert tool.overlap(p.box, q.box) <= tool.MAX_OVERLAP


# ----------------------------------------------------------------------------------------- datasets

def test_boxes_agree_with_pixels(detect_set, idx_dir):
    labels = np.frombuffer((idx_dir / "train-labels-idx1-ubyte").read_bytes()[8:], np.uint8)
    sources = {line.split()[0]: [int(v) for v in line.split()[1:]]
               for line in (detect_set / "sources-train.txt").read_text().splitlines()}
    for path in scenes(detect_set, "train"):
        image = np.asarray(Image.open(path))
        side = image.shape[0]
        assert image.shape == (side, side) and tool.CANVAS[0] <= side <= tool.CANVAS[1]
        boxes = pixel_boxes(path.with_suffix(".txt"), side)
        used = sources[str(path.relative_to(detect_set))]
        assert 1 <= len(boxes) <= 8 and [b[0] for b in boxes] == [int(labels[i]) for i in used]
        inside = np.zeros(image.shape, bool)
        for _, x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= side and 0 <= y0 < y1 <= side
            assert x1 - x0 > y1 - y0                       # wide: a training-file block
            assert (image[y0:y1, x0:x1] == 255).any()
            inside[y0:y1, x0:x1] = True
        # full ink only occurs in digits (backgrounds stay <= 200), and every digit's is inside its box
        assert not (image == 255)[~inside].any()


def test_masks_agree_with_pixels_and_boxes(detect_set, segment_set):
    for detect_path, segment_path in zip(scenes(detect_set, "valid"), scenes(segment_set, "valid")):
        image = np.asarray(Image.open(segment_path))
        assert np.array_equal(image, np.asarray(Image.open(detect_path)))  # same seed, same scenes
        mask_path = segment_set / "masks" / segment_path.relative_to(segment_set / "images")
        mask = np.asarray(Image.open(mask_path))
        assert mask.shape == image.shape and mask.max() <= 10
        assert (image[mask > 0] >= 128).all()              # ink >= 128 stays >= 128 on any background
        assert ((mask > 0) | (image < 255)).all()          # all full ink is labelled
        boxes = pixel_boxes(detect_path.with_suffix(".txt"), image.shape[0])
        for k, (c, x0, y0, x1, y1) in enumerate(boxes):
            assert y1 - y0 > x1 - x0                       # tall: a test-file block
            others = [b for j, b in enumerate(boxes) if j != k]
            alone = all(min(x1, b[3]) < max(x0, b[1]) - 1 or min(y1, b[4]) < max(y0, b[2]) - 1 for b in others)
            if alone:  # the box is exactly the tight box of its class in the mask around it
                window = mask[max(y0 - 1, 0):y1 + 1, max(x0 - 1, 0):x1 + 1] == c + 1
                ys, xs = np.nonzero(window)
                assert (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) == (min(y0, 1), min(y0, 1) + y1 - y0,
                                                                            min(x0, 1), min(x0, 1) + x1 - x0)
        labelled = np.zeros(mask.shape, bool)
        for c, x0, y0, x1, y1 in boxes:
            labelled[y0:y1, x0:x1] |= mask[y0:y1, x0:x1] == c + 1
        assert np.array_equal(labelled, mask > 0)          # every mask pixel lies in a box of its class


def test_files_written(segment_set, detect_set):
    data = (segment_set / "digits.data").read_text()
    assert "classes=11" in data and "valid=valid.list" in data
    assert (segment_set / "digits.names").read_text().split() == ["background"] + [str(d) for d in range(10)]
    assert "classes=10" in (detect_set / "digits.data").read_text()
    assert (detect_set / "digits.names").read_text().split() == [str(d) for d in range(10)]
    assert len(scenes(detect_set, "train")) == 14 and len(scenes(detect_set, "valid")) == 8


def test_splits_never_share_a_digit(detect_set):
    used = {}
    for split in ("train", "valid"):
        lines = (detect_set / f"sources-{split}.txt").read_text().splitlines()
        used[split] = [int(v) for line in lines for v in line.split()[1:]]
        assert len(used[split]) == len(set(used[split]))   # each source digit once while the file lasts
    assert max(used["valid"]) < 70                         # indices of the 70-image test file
    # and the pixels agree: train boxes are all wide, valid boxes all tall (asserted per box above)


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_deterministic_for_a_seed(idx_dir, tmp_path):
    a = make(idx_dir, tmp_path / "a", "detect", seed=5, jobs=1, train=6, valid=3)
    b = make(idx_dir, tmp_path / "b", "detect", seed=5, jobs=2, train=6, valid=3)
    c = make(idx_dir, tmp_path / "c", "detect", seed=6, jobs=1, train=6, valid=3)
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)
