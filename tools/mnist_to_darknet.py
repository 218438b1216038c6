#!/usr/bin/env python3
"""Convert MNIST (IDX files, gzipped or not) into a Darknet classifier dataset.

    python tools/mnist_to_darknet.py IDX_DIR OUT_DIR [--limit-train N] [--limit-test N] [--jobs J]

Writes into OUT_DIR:
    train/<index>_c<digit>.png   the training images (28×28 grey PNG)
    valid/<index>_c<digit>.png   the test images (Darknet's `valid` list)
    train.list, valid.list       one image path per line, relative to OUT_DIR
    labels.list                  c0 … c9: the strings Darknet searches in each path to find its class
    names.list                   0 … 9: what `classifier predict` prints
    mnist.data                   classes=10, the lists above, backup=backup/, top=2
    backup/                      where training writes weights

Why "c<digit>": Darknet labels an image by every label string that occurs anywhere in its path. Bare
digits would match the image index ("3" is in "00031.png"), and words like "one" can hide in folder
names ("someone"). "c3" occurs only once in "train/00031_c3.png", no label is part of another, and no
label occurs in the folder part of any written path (checked before writing). The list entries are
relative to OUT_DIR; Darknet itself needs to be run from OUT_DIR, darknetpy also finds them next to the
.data file.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image

from darknetpy.errors import DarknetError
from darknetpy.idx import read_idx

LABELS = [f"c{digit}" for digit in range(10)]
NAMES = [str(digit) for digit in range(10)]
SPLITS = (("train", "train"), ("t10k", "valid"))  # (IDX file prefix, output folder and list name)


def find_idx(idx_dir: str, prefix: str, kind: str, rank: int) -> str:
    """The IDX file for `prefix` (train / t10k) and `kind` (images / labels), gzipped or not; both the
    usual `train-images-idx3-ubyte` and the `train-images.idx3-ubyte` spellings are accepted."""
    patterns = [f"{prefix}-{kind}-idx{rank}-ubyte", f"{prefix}-{kind}.idx{rank}-ubyte"]
    for pattern in patterns:
        for suffix in ("", ".gz"):
            path = os.path.join(idx_dir, pattern + suffix)
            if os.path.isfile(path):
                return path
    found = sorted(glob.glob(os.path.join(glob.escape(idx_dir), f"{prefix}*{kind}*")))
    if len(found) == 1:
        return found[0]
    raise SystemExit(f"error: no {prefix} {kind} IDX file in {idx_dir} (expected {patterns[0]}[.gz])")


def image_name(index: int, digit: int) -> str:
    return f"{index:05d}_c{digit}.png"


def check_labels_unambiguous(entries: list[str], digits: np.ndarray) -> None:
    """Every entry must contain its own label exactly once and no other label, and no label may be
    part of another: the guarantees that make Darknet's substring labelling exact for this dataset."""
    for i, inner in enumerate(LABELS):
        for j, outer in enumerate(LABELS):
            if i != j and inner in outer:
                raise SystemExit(f"error: label {inner!r} is part of label {outer!r}")
    for entry, digit in zip(entries, digits):
        matched = [label for label in LABELS if label in entry]
        if matched != [LABELS[digit]] or entry.count(LABELS[digit]) != 1:
            raise SystemExit(f"error: {entry!r} would be labelled {matched}, not [{LABELS[digit]!r}]")


def write_pngs(paths: list[str], images: np.ndarray) -> None:
    for path, pixels in zip(paths, images):
        Image.fromarray(pixels).save(path, compress_level=1)


def write_lines(path: str, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write("".join(line + "\n" for line in lines))


def convert(idx_dir: str, out_dir: str, limits: dict[str, int | None], jobs: int) -> dict[str, int]:
    os.makedirs(out_dir, exist_ok=True)
    os.makedirs(os.path.join(out_dir, "backup"), exist_ok=True)
    counts: dict[str, int] = {}
    with ProcessPoolExecutor(jobs) if jobs > 1 else _Inline() as pool:
        futures = []
        for prefix, split in SPLITS:
            images = read_idx(find_idx(idx_dir, prefix, "images", 3))
            digits = read_idx(find_idx(idx_dir, prefix, "labels", 1))
            if images.ndim != 3 or images.dtype != np.uint8 or digits.ndim != 1 or len(images) != len(digits):
                raise SystemExit(f"error: {prefix}: expected uint8 images (N, H, W) and N labels, got "
                                 f"{images.dtype} {images.shape} and {digits.shape}")
            if digits.size and (digits.min() < 0 or digits.max() > 9):
                raise SystemExit(f"error: {prefix}: labels outside 0..9")
            limit = limits[split]
            if limit is not None:
                images, digits = images[:limit], digits[:limit]
            digits = digits.astype(np.int64)
            os.makedirs(os.path.join(out_dir, split), exist_ok=True)
            entries = [f"{split}/{image_name(index, digit)}" for index, digit in enumerate(digits)]
            check_labels_unambiguous(entries, digits)
            paths = [os.path.join(out_dir, entry) for entry in entries]
            chunk = max(1, -(-len(paths) // (jobs * 8)))
            for start in range(0, len(paths), chunk):
                futures.append(pool.submit(write_pngs, paths[start:start + chunk], images[start:start + chunk]))
            write_lines(os.path.join(out_dir, f"{split}.list"), entries)
            counts[split] = len(entries)
        for future in futures:
            future.result()
    write_lines(os.path.join(out_dir, "labels.list"), LABELS)
    write_lines(os.path.join(out_dir, "names.list"), NAMES)
    write_lines(os.path.join(out_dir, "mnist.data"), [
        "classes=10",
        "train=train.list",
        "valid=valid.list",
        "labels=labels.list",
        "names=names.list",
        "backup=backup/",
        "top=2",
    ])
    return counts


class _Inline:
    """A stand-in for an executor that runs each task at once (--jobs 1)."""

    class _Done:
        def __init__(self, value: object):
            self._value = value

        def result(self) -> object:
            return self._value

    def submit(self, function, *args):
        return self._Done(function(*args))

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Convert MNIST IDX files into a Darknet classifier dataset.")
    parser.add_argument("idx_dir", help="folder with train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
                                        "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]")
    parser.add_argument("out_dir", help="folder to write the dataset into (created if needed)")
    parser.add_argument("--limit-train", type=int, default=None, metavar="N", help="only the first N training images")
    parser.add_argument("--limit-test", type=int, default=None, metavar="N", help="only the first N test images")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, metavar="J",
                        help="processes writing PNGs (default: CPU count)")
    args = parser.parse_args(argv)
    for name in ("limit_train", "limit_test"):
        value = getattr(args, name)
        if value is not None and value < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    started = time.perf_counter()
    try:
        counts = convert(args.idx_dir, args.out_dir, {"train": args.limit_train, "valid": args.limit_test},
                         max(1, args.jobs))
    except DarknetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {counts['train']} training and {counts['valid']} validation images to {args.out_dir} "
          f"in {time.perf_counter() - started:.1f} s; data file: {os.path.join(args.out_dir, 'mnist.data')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
