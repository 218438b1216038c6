"""`darknetpy` command line: argument parsing and printing only; the work happens in darknetpy.api.

Every mistake in the user's input ends as one line `file:line: message` on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import contextlib
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
    """Image paths from arguments that may be images, directories (sorted, images only) or list files
    (entries found by config.resolve_path, relative to the working directory or to the list's folder).
    Every path must exist, so that a missing image stops the command before anything is printed."""
    from .config import folder_of, locate_path, read_list_entries
    from .errors import ImageError
    out: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError("directory contains no images", item)
            out.extend(found)
        elif path.suffix.lower() in LIST_SUFFIXES and path.is_file():
            entries = read_list_entries(path)
            if not entries:
                raise DataError("list file has no entries (expected one image path per line)", item)
            for entry in entries:
                found = locate_path(entry.text, folder_of(path))
                if found is None:
                    raise DataError(f"image {entry.text!r} not found (relative to the working directory or to "
                                    f"the list's folder)", item, entry.line)
                out.append(found)
        elif not os.path.lexists(item):
            raise ImageError("no such file", item)
        else:
            out.append(item)
    return out


def _names_source(args) -> str | None:
    """The names file of --names, or the one a --data file points to."""
    from .api import names_path_from_data
    if args.names:
        return args.names
    if args.data:
        return names_path_from_data(args.data)
    return None


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _refuse_overwriting(target: str | os.PathLike, inputs: list[str], what: str) -> None:
    """A UsageError if writing `target` would replace one of the command's own input files."""
    for item in inputs:
        if _same_file(target, item):
            raise UsageError(f"{what} {os.fspath(target)} is the input file {item}: refusing to overwrite it",
                             os.fspath(target))


class _OutputFolder:
    """detect --out: checked (and created) before any image is processed, so a bad folder fails before any
    output; folders this run created are removed again if it ends with an error before writing into them."""

    def __init__(self, folder: str, images: list[str]):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise UsageError("--out must be a folder, but this is an existing file", folder)
        self.created: list[Path] = []
        missing = self.folder
        while not missing.exists() and missing != missing.parent:
            self.created.insert(0, missing)
            missing = missing.parent
        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as exc:
            self.created = []
            raise UsageError(f"--out folder cannot be created: {exc.strerror or exc}", folder) from None
        if not os.access(self.folder, os.W_OK | os.X_OK):
            self.discard()
            raise UsageError("--out folder is not writable", folder)
        for image in images:
            try:
                _refuse_overwriting(self.target(image), images, "--out would write")
            except UsageError:
                self.discard()
                raise
        self.written = False

    def target(self, image: str) -> Path:
        return self.folder / (Path(image).stem + ".png")

    def discard(self) -> None:
        """Remove the (still empty) folders this run created."""
        for folder in reversed(self.created):
            with contextlib.suppress(OSError):
                folder.rmdir()


# ---- subcommands ----------------------------------------------------------------------------------------------
def cmd_summary(args) -> int:
    from .network import load_cfg
    network = load_cfg(args.cfg, width=args.width, height=args.height)
    print(network.summary())
    return 0


def cmd_predict(args) -> int:
    from . import api
    images = expand_images(args.images)
    model = api.load(args.cfg, args.weights, names=_names_source(args))
    top = args.top
    if top is None and args.data:
        from .config import read_data_file
        top = read_data_file(args.data).top or None
    top = top or 5
    for path in images:
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


def cmd_export(args) -> int:
    from .export import export_onnx
    from .network import load_cfg
    from .weights import read_weights
    _refuse_overwriting(args.out, [args.cfg, args.weights], "OUT")
    if os.path.isdir(args.out):
        raise UsageError("OUT is a folder; give the .onnx file to write", args.out)
    network = load_cfg(args.cfg, width=args.width, height=args.height)
    read_weights(network, args.weights)
    export_onnx(network, args.out, batch=args.batch or 1, dynamic_batch=args.dynamic_batch, decode=args.decode,
                opset=args.opset)
    print(f"Saved {args.out}")
    return 0


def opset_version(text: str) -> int:
    from .export import DEFAULT_OPSET, MIN_OPSET
    value = positive_int(text)
    if value < MIN_OPSET:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_OPSET} (default {DEFAULT_OPSET}), got {value}")
    return value


def cmd_partial(args) -> int:
    from .network import load_cfg
    from .weights import WRITE_VERSION, read_weights, write_weights
    _refuse_overwriting(args.out, [args.cfg, args.weights], "OUT")
    if os.path.isdir(args.out):
        raise UsageError("OUT is a folder; give the weights file to write", args.out)
    network = load_cfg(args.cfg)
    read_weights(network, args.weights)
    write_weights(network, args.out, cutoff=args.layers, seen=0, version=WRITE_VERSION)  # as darknet partial
    print(f"Saved the first {min(args.layers, len(network.layers))} layers to {args.out}")
    return 0


def cmd_detect(args) -> int:
    from . import api
    images = expand_images(args.images)
    model = api.load(args.cfg, args.weights, names=_names_source(args))
    letterbox = True if args.letterbox else (False if args.no_letterbox else None)
    out = _OutputFolder(args.out, images) if args.out else None
    try:
        _detect_images(model, images, letterbox, out, args)
    except BaseException:
        if out is not None and not out.written:
            out.discard()
        raise
    return 0


def _detect_images(model, images: list[str], letterbox: bool | None, out: _OutputFolder | None, args) -> None:
    from .detect import format_detections
    for path in images:
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
        if out is not None:
            from .drawing import draw_detections
            from .images import load_image
            draw_detections(load_image(path), results, out.target(path))
            out.written = True
        sys.stdout.flush()


def cmd_train(args) -> int:
    from .training import TrainOptions, TrainingRun
    options = TrainOptions(weights=args.weights, clear=args.clear, seed=args.seed, max_batches=args.max_batches,
                           checkpoint_every=args.checkpoint_every,
                           validate_each_epoch=args.validate or args.validate_every is not None,
                           validate_every=args.validate_every,
                           workers=args.workers)
    from .distributed import mpi_world_size
    if mpi_world_size() > 1:  # started by mpiexec -n K: data-parallel training (darknetpy/distributed/mpi.py)
        from .distributed.mpi import train_data_parallel
        return train_data_parallel(args.cfg, args.data, options)
    TrainingRun(args.cfg, args.data, options).run()
    return 0


def cmd_segment(args) -> int:
    from . import api
    from .segmentation import class_fractions, head_classes, write_segmentation_pictures
    images = expand_images(args.images)
    model = api.load(args.cfg, args.weights, names=args.names)
    classes = head_classes(model.network)
    names = api.check_names(model.names, classes, args.names)[:classes] if model.names is not None \
        else [str(c) for c in range(classes)]
    out = None
    if args.out:
        out = _OutputFolder(args.out, images)
        for image in images:
            for suffix in ("_mask.png", "_overlay.png"):
                _refuse_overwriting(out.folder / f"{Path(image).stem}{suffix}", images, "--out would write")
    for path in images:
        start = time.perf_counter()
        classes_map = model.segment(path)
        seconds = time.perf_counter() - start
        fractions = class_fractions(classes_map, names)
        height, width = classes_map.shape
        if args.json:
            print(json.dumps({"image": path, "width": width, "height": height, "classes": fractions}))
        else:
            print(f"{path}: Segmented in {seconds:f} seconds.")
            for name, share in sorted(fractions.items(), key=lambda item: -item[1]):
                if share > 0:
                    print(f"{share * 100:5.2f}%: {name}")
        if out is not None:
            write_segmentation_pictures(path, classes_map, names, out.folder, Path(path).stem)
            out.written = True
        sys.stdout.flush()
    return 0


def cmd_valid(args) -> int:
    from . import api
    from .config import read_data_file
    from .tasks import task_for
    model = api.load(args.cfg, args.weights)
    task = task_for(model.network)(model, read_data_file(args.data))
    result = task.evaluate(top=args.top)
    print(json.dumps(result.as_dict()) if args.json else result.report())
    return 0


class _Progress:
    """How far a long measurement is: a bar redrawn in place on a terminal, a plain line every tenth in a log."""

    def __init__(self, what: str, stream=None):
        self.what = what
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self.started = time.perf_counter()
        self.last_tenth = 0

    def __call__(self, done: int, total: int) -> None:
        seconds = time.perf_counter() - self.started
        if self.interactive:
            filled = 30 * done // max(total, 1)
            end = "\n" if done == total else ""
            print(f"\r{self.what} [{'#' * filled}{'-' * (30 - filled)}] {done}/{total}  {seconds:.0f} s", end=end,
                  file=self.stream, flush=True)
        elif 10 * done // max(total, 1) > self.last_tenth or done == total:
            self.last_tenth = 10 * done // max(total, 1)
            print(f"{self.what}: {done}/{total} ({seconds:.0f} s)", file=self.stream, flush=True)


def format_map(result, seconds: float) -> list[str]:
    """AlexeyAB's `detector map` report, with COCO's mAP@[.5:.95] after the mAP line."""
    lines = [f" detections_count = {result.detections}, unique_truth_count = {result.truths}"]
    for class_id, c in enumerate(result.classes):
        ap = "n/a (no truths)" if c.ap is None else f"{c.ap * 100:.2f}%"
        lines.append(f"class_id = {class_id}, name = {c.name}, ap = {ap}   \t (TP = {c.tp}, FP = {c.fp}) ")
    t = result.thresh
    lines += ["", f" for conf_thresh = {t:.2f}, precision = {result.precision:.2f}, recall = {result.recall:.2f}, "
                  f"F1-score = {result.f1:.2f} ",
              f" for conf_thresh = {t:.2f}, TP = {result.tp}, FP = {result.fp}, FN = {result.truths - result.tp}, "
              f"average IoU = {result.avg_iou * 100:.2f} % ", ""]
    rule = f"used {result.points} Recall-points" if result.points else "used Area-Under-Curve for each unique Recall"
    lines += [f" IoU threshold = {result.iou_thresh * 100:.0f} %, {rule} ",
              f" mean average precision (mAP@{result.iou_thresh:.2f}) = {result.map50:f}, or "
              f"{result.map50 * 100:.2f} % ",
              f" mean average precision (mAP@[.5:.95]) = {result.map50_95:f}, or {result.map50_95 * 100:.2f} % ",
              f"Total Detection Time: {seconds:.0f} Seconds"]
    return lines


def cmd_map(args) -> int:
    from . import api
    from .config import read_data_file
    from .metrics.evaluate import measure_map
    data_config = read_data_file(args.data)
    model = api.load(args.cfg, args.weights)
    started = time.perf_counter()
    result = measure_map(model.network, data_config, iou_thresh=args.iou_thresh, points=args.points,
                         thresh=args.thresh, progress=_Progress("map"))
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        print("\n".join(format_map(result, time.perf_counter() - started)))
    return 0


def cmd_anchors(args) -> int:
    from .config import read_data_file
    from .metrics.anchors import kmeans_anchors
    from .metrics.evaluate import training_box_sizes
    data_config = read_data_file(args.data)
    sizes = training_box_sizes(data_config, args.width, args.height)
    try:
        result = kmeans_anchors(sizes, args.num, seed=args.seed)
    except ValueError as exc:
        raise DataError(str(exc), data_config.path) from None
    print(f"num_of_clusters = {args.num}, width = {args.width}, height = {args.height}, boxes = {len(sizes)}")
    print(result.cfg_line(args.width))
    print(f"avg IoU = {result.mean_iou * 100:.2f} %")
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

    p = sub.add_parser("train", help="train a network (classifier, detector, segmenter) from a .data file")
    p.add_argument("cfg")
    p.add_argument("data")
    p.add_argument("--weights", help="start from these weights (keeps their `seen`, so the schedule resumes)")
    p.add_argument("--clear", action="store_true", help="reset `seen` to 0 (start the schedule anew)")
    p.add_argument("--seed", type=int, help="seed for batch sampling and augmentation")
    p.add_argument("--max-batches", type=non_negative_int, help="override [net] max_batches")
    p.add_argument("--checkpoint-every", type=positive_int, metavar="N",
                   help="save <base>.backup every N batches (default as Darknet: 1000 for classifiers, 100 for "
                        "detectors)")
    p.add_argument("--validate", "--map", action="store_true", dest="validate",
                   help="measure the task's metric on the valid list after every epoch (classifiers: top-1, "
                        "detectors: mAP@0.5), keeping <base>_best.weights")
    p.add_argument("--validate-every", "--map-every", type=positive_int, metavar="N", dest="validate_every",
                   help="with --validate/--map: measure every N iterations instead of after every epoch")
    p.add_argument("--workers", type=positive_int, default=2, help="data loading worker processes (default 2)")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("valid", help="the task's metric on the .data valid list (classifier top-1 / top-k, "
                                     "segmenter pixel accuracy, IoU and mIoU)")
    p.add_argument("cfg")
    p.add_argument("weights")
    p.add_argument("data")
    p.add_argument("--top", type=positive_int, help="k for top-k (default: .data top)")
    p.add_argument("--json", action="store_true", help="result with the confusion matrix as JSON")
    p.set_defaults(run=cmd_valid)

    p = sub.add_parser("map", help="mAP of a detector on the .data valid list (AlexeyAB's detector map)")
    p.add_argument("cfg")
    p.add_argument("weights")
    p.add_argument("data")
    p.add_argument("--iou-thresh", type=unit_float, default=0.5, help="IoU a true positive needs (default 0.5)")
    p.add_argument("--points", type=int, choices=(0, 11, 101), default=0,
                   help="AP rule: 0 area under the curve (default), 11 VOC2007, 101 COCO")
    p.add_argument("--thresh", type=unit_float, default=0.25,
                   help="confidence for TP/FP, precision, recall, F1 and average IoU (default 0.25)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(run=cmd_map)

    p = sub.add_parser("anchors", help="anchors for a cfg by k-means on the .data train boxes")
    p.add_argument("data")
    p.add_argument("--num", type=positive_int, required=True, help="how many anchors")
    p.add_argument("--width", type=positive_int, required=True, help="network input width")
    p.add_argument("--height", type=positive_int, required=True, help="network input height")
    p.add_argument("--seed", type=int, default=0, help="seed of the k-means starts (default 0)")
    p.set_defaults(run=cmd_anchors)

    p = sub.add_parser("segment", help="the class of every pixel of images (segmenters)")
    p.add_argument("cfg")
    p.add_argument("weights")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image, directory of images, or list file")
    p.add_argument("--names", help="file with one class name per line")
    p.add_argument("--out", help="folder for <stem>_mask.png (class indices, palette) and <stem>_overlay.png")
    p.add_argument("--json", action="store_true", help="one JSON object per image: size and class shares")
    p.set_defaults(run=cmd_segment)

    p = sub.add_parser("partial", help="save the first N layers of a weights file (like darknet partial)")
    p.add_argument("cfg")
    p.add_argument("weights")
    p.add_argument("out")
    p.add_argument("layers", type=non_negative_int)
    p.set_defaults(run=cmd_partial)

    p = sub.add_parser("export", help="write an ONNX model (needs the onnx extra)")
    p.add_argument("cfg")
    p.add_argument("weights")
    p.add_argument("out", metavar="OUT.onnx")
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=positive_int, help="fixed batch size (default 1)")
    batch.add_argument("--dynamic-batch", action="store_true", help="a symbolic batch dimension")
    p.add_argument("--width", type=positive_int)
    p.add_argument("--height", type=positive_int)
    p.add_argument("--decode", action="store_true",
                   help="output boxes, objectness and per-class scores (before NMS) instead of the raw heads")
    from .export import DEFAULT_OPSET
    p.add_argument("--opset", type=opset_version, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.set_defaults(run=cmd_export)
    return parser


def _resolve_bundled(args) -> None:
    """Bare names of the bundled networks (darknetpy/bundled.py) in the cfg, weights and names arguments:
    `darknetpy summary vgg-16`. Paths that exist are kept as written."""
    from .bundled import resolve
    for attribute, kind in (("cfg", "cfg"), ("weights", "weights"), ("names", "names")):
        value = vars(args).get(attribute)
        if isinstance(value, str):
            setattr(args, attribute, resolve(value, kind))


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _show_warning
    try:
        args = build_parser().parse_args(argv)
        _resolve_bundled(args)
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
