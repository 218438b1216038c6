#!/usr/bin/env python3
"""Scenes of handwritten digits for training and measuring detectors and segmenters, from MNIST IDX files.

    python tools/make_digit_scenes.py IDX_DIR OUT_DIR --task detect|segment [--train N] [--valid N]
                                      [--seed S] [--jobs J]

Each scene is a square grey canvas of 256–416 px holding 1–8 digits, each scaled so that its ink (pixels
>= 128 of 255) is 16–112 px tall (less if it would not fit the canvas, which no MNIST digit reaches), on a
black, grey-gradient or noisy background. Digits are painted as
white ink with their grey level as opacity, so they read the same on any background; a digit is placed
only where its ink box overlaps every earlier one by at most 30% of the smaller box (when 50 tries find
no such place the digit is left out). Training scenes take their digits from the IDX training files and
validation scenes from the test files, each source digit once (in a seeded random order) until a split
runs out, so the two splits never share a digit. Everything depends only on --seed: each scene has its
own generator seeded by (seed, split, scene number), so --jobs changes nothing but the time.

Writes into OUT_DIR:
    images/train/NNNNNN.png, images/valid/NNNNNN.png   the scenes (8-bit grey PNG)
    detect:  images/<split>/NNNNNN.txt   Darknet labels `class x_center y_center width height` (fractions
             of the canvas), one line per digit in drawing order; the box is the tight box around the
             digit's own ink >= 128 after scaling (covered parts included), class = the digit.
             digits.names (0 … 9), digits.data (classes=10)
    segment: masks/<split>/NNNNNN.png   one class index per pixel: digit + 1 where a digit's ink >= 128,
             the digit drawn last where several do, 0 elsewhere (the segmentation loader finds a mask by
             replacing the last `images` folder with `masks`). digits.names (background, 0 … 9),
             digits.data (classes=11)
    train.list, valid.list   image paths relative to OUT_DIR (darknetpy also finds them from elsewhere;
                             Darknet must run in OUT_DIR)
    sources-train.txt, sources-valid.txt   per scene: its path, then the IDX indices of its digits in
                             drawing order (which digits a scene was made of)
    backup/                  where training writes weights

The labels sit beside the images, where AlexeyAB's Darknet and darknetpy look (pjreddie's looks in a
`labels` folder). The same seed gives the same scenes for both tasks.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mnist_to_darknet import _Inline, find_idx  # noqa: E402  (IDX file names; a one-process "executor")

from darknetpy.errors import DarknetError  # noqa: E402
from darknetpy.idx import read_idx  # noqa: E402

CANVAS = (256, 416)           # square canvas side, inclusive
DIGITS_PER_SCENE = (1, 8)
INK_HEIGHT = (16, 112)        # digit height in pixels (its ink >= INK after scaling), inclusive
INK = 128                     # of 255: what counts as a digit's pixels for boxes and masks
MAX_OVERLAP = 0.30            # intersection over the smaller ink box, against every earlier digit
PLACEMENT_TRIES = 50
BACKGROUND_MAX = 200          # backgrounds stay darker than full ink
BACKGROUNDS = ("black", "gradient", "noise")
SPLITS = (("train", "train"), ("valid", "t10k"))  # (output split, IDX file prefix)
SPLIT_CODES = {"train": 0, "valid": 1}


# ------------------------------------------------------------------------------------------ pieces

def ink_box(pixels: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight box (x0, y0, x1, y1), ends exclusive, around the pixels >= INK; None if there are none."""
    rows = np.nonzero((pixels >= INK).any(axis=1))[0]
    if len(rows) == 0:
        return None
    cols = np.nonzero((pixels >= INK).any(axis=0))[0]
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def scale_digit(digit: np.ndarray, ink_height: int) -> np.ndarray | None:
    """The digit (uint8, 255 = ink) cropped to its visible pixels with a one-pixel margin and resized
    (bilinear) so that its ink >= INK is about `ink_height` pixels tall; None for a digit without ink."""
    box = ink_box(digit)
    visible = np.nonzero(digit > 0)
    if box is None:
        return None
    y0, y1 = max(int(visible[0].min()) - 1, 0), min(int(visible[0].max()) + 2, digit.shape[0])
    x0, x1 = max(int(visible[1].min()) - 1, 0), min(int(visible[1].max()) + 2, digit.shape[1])
    factor = ink_height / (box[3] - box[1])
    crop = np.pad(digit[y0:y1, x0:x1], 1)  # a zero border so the scaled edge fades out inside the patch
    size = (max(1, round(crop.shape[1] * factor)), max(1, round(crop.shape[0] * factor)))
    return np.asarray(Image.fromarray(crop).resize(size, Image.BILINEAR))


def make_background(rng: np.random.Generator, kind: str, side: int) -> np.ndarray:
    """float32 (side, side) grey levels in [0, BACKGROUND_MAX]."""
    if kind == "black":
        return np.zeros((side, side), np.float32)
    if kind == "gradient":
        start, stop = rng.uniform(0, 180, 2)
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.arange(side, dtype=np.float32) / (side - 1)
        t = ramp[None, :] * np.float32(np.cos(angle)) + ramp[:, None] * np.float32(np.sin(angle))
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        return (start + (stop - start) * t).astype(np.float32)
    if kind == "noise":
        level = rng.uniform(0, 100)
        coarse = rng.normal(0, rng.uniform(0, 40), (8, 8)).astype(np.float32)  # slow blotches
        blotches = np.asarray(Image.fromarray(coarse, mode="F").resize((side, side), Image.BILINEAR))
        grain = rng.standard_normal((side, side), dtype=np.float32) * np.float32(rng.uniform(2, 25))
        grain += blotches + np.float32(level)
        return np.clip(grain, 0, BACKGROUND_MAX, out=grain)
    raise ValueError(f"unknown background {kind!r}")


@dataclass(frozen=True)
class PlacedDigit:
    pixels: np.ndarray      # uint8 (h, w) scaled digit, 255 = ink
    x: int                  # top-left of `pixels` on the canvas
    y: int
    digit: int
    source: int             # index in the IDX file
    box: tuple[int, int, int, int]  # on the canvas, ends exclusive, around this digit's own ink >= INK


def place_at(pixels: np.ndarray, x: int, y: int, digit: int, source: int) -> PlacedDigit:
    x0, y0, x1, y1 = ink_box(pixels)
    return PlacedDigit(pixels, x, y, digit, source, (x0 + x, y0 + y, x1 + x, y1 + y))


def overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over the smaller of two boxes (x0, y0, x1, y1)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller


def place_digits(rng: np.random.Generator, side: int, digits: np.ndarray, classes: np.ndarray,
                 sources: np.ndarray) -> list[PlacedDigit]:
    """Scale each digit to a random height and put it where it overlaps every earlier one by at most
    MAX_OVERLAP; a digit that finds no such place in PLACEMENT_TRIES is left out."""
    placed: list[PlacedDigit] = []
    for pixels28, digit, source in zip(digits, classes, sources):
        height = int(rng.integers(INK_HEIGHT[0], INK_HEIGHT[1] + 1))
        scaled = scale_digit(pixels28, height)
        if scaled is not None and max(scaled.shape) > side:  # a very wide digit: as tall as still fits
            scaled = scale_digit(pixels28, max(1, height * (side - 2) // max(scaled.shape)))
        if scaled is None or max(scaled.shape) > side:
            continue
        inner = ink_box(scaled)
        if inner is None:  # ink this faint vanishes when scaled down
            continue
        for _ in range(PLACEMENT_TRIES):
            x = int(rng.integers(0, side - scaled.shape[1] + 1))
            y = int(rng.integers(0, side - scaled.shape[0] + 1))
            box = (x + inner[0], y + inner[1], x + inner[2], y + inner[3])
            if all(overlap(box, other.box) <= MAX_OVERLAP for other in placed):
                placed.append(PlacedDigit(scaled, x, y, int(digit), int(source), box))
                break
    return placed


def compose(background: np.ndarray, placed: list[PlacedDigit]) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8, mask uint8): each digit in order painted as white ink with opacity = its grey level;
    the mask holds digit + 1 where a digit's ink >= INK (a later digit overwrites), 0 elsewhere."""
    canvas = background.astype(np.float32).copy()
    mask = np.zeros(background.shape, np.uint8)
    for p in placed:
        h, w = p.pixels.shape
        region = canvas[p.y:p.y + h, p.x:p.x + w]
        alpha = p.pixels.astype(np.float32) / 255.0
        region[...] = region * (1.0 - alpha) + 255.0 * alpha
        mask[p.y:p.y + h, p.x:p.x + w][p.pixels >= INK] = p.digit + 1
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), mask


def darknet_labels(placed: list[PlacedDigit], side: int) -> list[str]:
    """`class x_center y_center width height` per digit (fractions of the canvas), drawing order."""
    lines = []
    for p in placed:
        x0, y0, x1, y1 = p.box
        lines.append(f"{p.digit} {(x0 + x1) / 2 / side:.6f} {(y0 + y1) / 2 / side:.6f} "
                     f"{(x1 - x0) / side:.6f} {(y1 - y0) / side:.6f}")
    return lines


def scene_generator(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_CODES[split], index])


def render_scene(rng: np.random.Generator, digits: np.ndarray, classes: np.ndarray,
                 sources: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[PlacedDigit]]:
    """One scene from its candidate digits: (image, mask, the digits that were placed)."""
    side = int(rng.integers(CANVAS[0], CANVAS[1] + 1))
    background = make_background(rng, BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], side)
    placed = place_digits(rng, side, digits, classes, sources)
    image, mask = compose(background, placed)
    return image, mask, placed


# --------------------------------------------------------------------------------------- the dataset

@dataclass(frozen=True)
class SceneJob:
    split: str
    index: int
    digits: np.ndarray      # (n, 28, 28) uint8 candidates of this scene
    classes: np.ndarray
    sources: np.ndarray


def scene_name(index: int) -> str:
    return f"{index:06d}"


def write_scenes(out_dir: str, task: str, seed: int, jobs: list[SceneJob]) -> list[str]:
    """Render and write scenes; returns their sources lines."""
    lines = []
    for job in jobs:
        image, mask, placed = render_scene(scene_generator(seed, job.split, job.index), job.digits,
                                           job.classes, job.sources)
        entry = f"images/{job.split}/{scene_name(job.index)}.png"
        Image.fromarray(image).save(os.path.join(out_dir, entry), compress_level=1)
        if task == "detect":
            write_lines(os.path.join(out_dir, f"images/{job.split}/{scene_name(job.index)}.txt"),
                        darknet_labels(placed, image.shape[0]))
        else:
            Image.fromarray(mask).save(os.path.join(out_dir, f"masks/{job.split}/{scene_name(job.index)}.png"),
                                       compress_level=1)
        lines.append(" ".join([entry] + [str(p.source) for p in placed]))
    return lines


def plan_split(images: np.ndarray, labels: np.ndarray, count: int, seed: int, split: str) -> list[SceneJob]:
    """The candidate digits of every scene: 1–8 per scene, taken in a seeded random order of the file's
    digits, each once before any is used again."""
    rng = np.random.default_rng([seed, SPLIT_CODES[split], 2 ** 31])  # apart from the scene generators
    sizes = rng.integers(DIGITS_PER_SCENE[0], DIGITS_PER_SCENE[1] + 1, count)
    needed = int(sizes.sum())
    if len(images) == 0 and needed:
        raise SystemExit(f"error: no {split} digits in the IDX files")
    order = np.concatenate([rng.permutation(len(images)) for _ in range(-(-needed // max(len(images), 1)))]
                           or [np.zeros(0, np.int64)])
    jobs, start = [], 0
    for index, size in enumerate(sizes):
        chosen = order[start:start + size]
        start += size
        jobs.append(SceneJob(split, index, images[chosen], labels[chosen].astype(np.int64), chosen))
    return jobs


def read_digits(idx_dir: str, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(find_idx(idx_dir, prefix, "images", 3))
    labels = read_idx(find_idx(idx_dir, prefix, "labels", 1))
    if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1 or len(images) != len(labels):
        raise SystemExit(f"error: {prefix}: expected uint8 images (N, H, W) and N labels, got "
                         f"{images.dtype} {images.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise SystemExit(f"error: {prefix}: labels outside 0..9")
    return images, labels


def write_lines(path: str, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write("".join(line + "\n" for line in lines))


def make_dataset(idx_dir: str, out_dir: str, task: str, counts: dict[str, int], seed: int, jobs: int) -> None:
    for folder in ["backup"] + [f"images/{s}" for s, _ in SPLITS] + ([f"masks/{s}" for s, _ in SPLITS]
                                                                       if task == "segment" else []):
        os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
    with ProcessPoolExecutor(jobs) if jobs > 1 else _Inline() as pool:
        for split, prefix in SPLITS:
            images, labels = read_digits(idx_dir, prefix)
            plan = plan_split(images, labels, counts[split], seed, split)
            chunk = max(1, min(64, -(-len(plan) // (jobs * 4))))
            futures = [pool.submit(write_scenes, out_dir, task, seed, plan[start:start + chunk])
                       for start in range(0, len(plan), chunk)]
            sources = [line for future in futures for line in future.result()]
            write_lines(os.path.join(out_dir, f"{split}.list"), [line.split(" ", 1)[0] for line in sources])
            write_lines(os.path.join(out_dir, f"sources-{split}.txt"), sources)
    names = [str(d) for d in range(10)]
    if task == "segment":
        names = ["background"] + names
    write_lines(os.path.join(out_dir, "digits.names"), names)
    write_lines(os.path.join(out_dir, "digits.data"), [
        f"classes={len(names)}", "train=train.list", "valid=valid.list", "names=digits.names", "backup=backup/"])


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Make scenes of MNIST digits for detection or segmentation.")
    parser.add_argument("idx_dir", help="folder with the MNIST IDX files (train-* and t10k-*, gzipped or not)")
    parser.add_argument("out_dir", help="folder to write the dataset into (created if needed)")
    parser.add_argument("--task", choices=("detect", "segment"), required=True)
    parser.add_argument("--train", type=non_negative, default=5000, metavar="N", help="training scenes (5000)")
    parser.add_argument("--valid", type=non_negative, default=1000, metavar="N", help="validation scenes (1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, metavar="J",
                        help="processes drawing scenes (default: CPU count; the result does not depend on it)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        make_dataset(args.idx_dir, args.out_dir, args.task, {"train": args.train, "valid": args.valid},
                     args.seed, max(1, args.jobs))
    except DarknetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.train} training and {args.valid} validation scenes ({args.task}) to {args.out_dir} in "
          f"{time.perf_counter() - started:.1f} s; data file: {os.path.join(args.out_dir, 'digits.data')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
