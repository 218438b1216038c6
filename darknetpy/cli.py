"""`darknetpy` command line: argument parsing and printing only; the work happens in darknetpy.api.

Every mistake in the user's input ends as one line `file:line: message` on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

from . import __version__
from .errors import DarknetError, DarknetWarning, DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".tga"}
LIST_SUFFIXES = {".txt", ".list"}


class UsageError(DarknetError):
    """Bad command-line arguments."""


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would exit itself; keep the one-line contract
        raise UsageError(f"{self.prog}: {message}")


def _show_warning(message, category, filename, lineno, file=None, line=None):
    text = str(message)
    prefix = "warning: " if issubclass(category, DarknetWarning) else f"warning ({category.__name__}): "
    print(prefix + text, file=sys.stderr)


# ---- inputs ---------------------------------------------------------------------------------------------------
def expand_images(items: list[str]) -> list[str]:
    """Image paths from arguments that may be images, directories (sorted, images only) or list files."""
    out: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError("directory contains no images", item)
            out.extend(found)
        elif path.suffix.lower() in LIST_SUFFIXES and path.is_file():
            from .config import read_list_file
            base = path.parent
            for entry in read_list_file(path):
                out.append(entry if os.path.exists(entry) or os.path.isabs(entry) else str(base / entry))
        else:
            out.append(item)
    return out


def _names(args) -> list[str] | None:
    from .api import names_from_data, read_names
    if getattr(args, "names", None):
        return read_names(args.names)
    if getattr(args, "data", None):
        return names_from_data(args.data)
    return None


# ---- subcommands ----------------------------------------------------------------------------------------------
def cmd_summary(args) -> int:
    from .network import load_cfg
    network = load_cfg(args.cfg, width=args.width, height=args.height)
    print(network.summary())
    return 0


def cmd_predict(args) -> int:
    from . import api
    model = api.load(args.cfg, args.weights, names=_names(args))
    top = args.top
    if top is None and args.data:
        from .config import read_data_file
        top = read_data_file(args.data).top or None
    top = top or 5
    for path in expand_images(args.images):
        start = time.perf_counter()
        predictions = model.predict(path, top=top)
        seconds = time.perf_counter() - start
        if args.json:
            print(json.dumps({"image": path, "seconds": round(seconds, 6), "predictions": [
                {"class_id": p.class_id, "name": p.name, "probability": p.probability} for p in predictions]}))
        else:
            print(f"{path}: Predicted in {seconds:f} seconds.")   # on stdout, as Darknet: says which image
            for p in predictions:
                print(f"{p.probability * 100:5.2f}%: {p.name}")
        sys.stdout.flush()
    return 0


def cmd_partial(args) -> int:
    from .network import load_cfg
    from .weights import read_weights, write_weights
    network = load_cfg(args.cfg)
    read_weights(network, args.weights)
    write_weights(network, args.out, cutoff=args.layers, seen=0)
    print(f"Saved the first {min(args.layers, len(network.layers))} layers to {args.out}", file=sys.stderr)
    return 0


def cmd_detect(args) -> int:
    from . import api
    from .detect import format_detections
    model = api.load(args.cfg, args.weights, names=_names(args))
    letterbox = True if args.letterbox else (False if args.no_letterbox else None)
    for path in expand_images(args.images):
        start = time.perf_counter()
        results = model.detect(path, thresh=args.thresh, nms=args.nms, letterbox=letterbox)
        seconds = time.perf_counter() - start
        if args.json:
            print(json.dumps({"image": path, "seconds": round(seconds, 6), "detections": [
                {"class_id": r.class_id, "name": r.name, "score": r.score,
                 "box": [round(v, 2) for v in r.box_pixels]} for r in results]}))
        else:
            print(f"{path}: Predicted in {seconds:f} seconds.")
            for line in format_detections(results):
                print(line)
        if args.out:
            from .drawing import draw_detections
            from .images import load_image
            os.makedirs(args.out, exist_ok=True)  # only once there is something to write
            target = Path(args.out) / (Path(path).stem + ".png")
            draw_detections(load_image(path), results, target)
        sys.stdout.flush()
    return 0


def cmd_train(args) -> int:
    from .training import TrainOptions, TrainingRun
    options = TrainOptions(weights=args.weights, clear=args.clear, seed=args.seed, max_batches=args.max_batches,
                           checkpoint_every=args.checkpoint_every, validate_each_epoch=args.validate,
                           workers=args.workers)
    TrainingRun(args.cfg, args.data, options).run()
    return 0


def cmd_valid(args) -> int:
    from . import api
    from .config import read_data_file
    from .training import validate
    model = api.load(args.cfg, args.weights)
    result = validate(model, read_data_file(args.data), top=args.top)
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        print(f"top 1: {result.top1:f}, top {result.k}: {result.topk:f}  ({result.images} images)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="darknetpy", description="Run and train Darknet networks from their .cfg files.")
    parser.add_argument("--version", action="version", version=f"darknetpy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("summary", help="print the layer table of a cfg")
    p.add_argument("cfg")
    p.add_argument("--width", type=positive_int)
    p.add_argument("--height", type=positive_int)
    p.set_defaults(run=cmd_summary)

    p = sub.add_parser("predict", help="classify images")
    p.add_argument("cfg")
    p.add_argument("weights")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image, directory of images, or list file")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--names", help="file with one class name per line")
    group.add_argument("--data", help=".data file (names/labels, top)")
    p.add_argument("--top", type=positive_int, help="how many classes to print (default: .data top, else 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.set_defaults(run=cmd_predict)

    p = sub.add_parser("detect", help="find objects in images")
    p.add_argument("cfg")
    p.add_argument("weights")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--names")
    group.add_argument("--data")
    p.add_argument("--thresh", type=unit_float, default=0.25)
    p.add_argument("--nms", type=unit_float, default=0.45)
    p.add_argument("--out", help="folder for the images with boxes drawn (PNG)")
    p.add_argument("--json", action="store_true")
    box = p.add_mutually_exclusive_group()
    box.add_argument("--letterbox", action="store_true", help="keep the aspect ratio (pjreddie's detector test)")
    box.add_argument("--no-letterbox", action="store_true", help="stretch to the network size (OpenCV default)")
    p.set_defaults(run=cmd_detect)

    p = sub.add_parser("train", help="train a classifier from a .data file")
    p.add_argument("cfg")
    p.add_argument("data")
    p.add_argument("--weights", help="start from these weights (keeps their `seen`, so the schedule resumes)")
    p.add_argument("--clear", action="store_true", help="reset `seen` to 0 (start the schedule anew)")
    p.add_argument("--seed", type=int, help="seed for batch sampling and augmentation")
    p.add_argument("--max-batches", type=non_negative_int, help="override [net] max_batches")
    p.add_argument("--checkpoint-every", type=positive_int, default=1000, metavar="N",
                   help="save <base>.backup every N batches (default 1000, as Darknet)")
    p.add_argument("--validate", action="store_true", help="measure valid top-1 after every epoch")
    p.add_argument("--workers", type=positive_int, default=2, help="data loading worker processes (default 2)")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("valid", help="top-1 / top-k of a classifier on the .data valid list")
    p.add_argument("cfg")
    p.add_argument("weights")
    p.add_argument("data")
    p.add_argument("--top", type=positive_int, help="k for top-k (default: .data top)")
    p.add_argument("--json", action="store_true", help="result with the confusion matrix as JSON")
    p.set_defaults(run=cmd_valid)

    p = sub.add_parser("partial", help="save the first N layers of a weights file (like darknet partial)")
    p.add_argument("cfg")
    p.add_argument("weights")
    p.add_argument("out")
    p.add_argument("layers", type=non_negative_int)
    p.set_defaults(run=cmd_partial)
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _show_warning
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except DarknetError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except MemoryError as exc:  # outside the network's buffers (those errors name their layer)
        print(f"out of memory: {exc or 'an allocation failed'}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
