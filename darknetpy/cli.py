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
    def __init__(self, *args, **kwargs):
        # wide enough that every command's description stays on one line; epilogs (examples) keep their lines
        kwargs.setdefault("formatter_class",
                          lambda prog: argparse.RawDescriptionHelpFormatter(prog, width=130, max_help_position=16))
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # argparse would exit itself; keep the one-line contract
        raise UsageError(f"{self.prog}: {message}")


def _show_warning(message, category, filename, lineno, file=None, line=None):
    text = str(message)
    prefix = "warning: " if issubclass(category, DarknetWarning) else f"warning ({category.__name__}): "
    print(prefix + text, file=sys.stderr)


# ---- inputs ---------------------------------------------------------------------------------------------------
def expand_images(items: list[str]) -> list[str]:
    """Image paths from arguments that may be images, directories (sorted, images only) or list files
    (entries found by config.locate_image, relative to the working directory or to the list's folder).
    Every path must exist, so that a missing image stops the command before anything is printed."""
    from .config import folder_of, locate_image, read_image_list
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
            out.extend(locate_image(entry, folder_of(path), item) for entry in read_image_list(item))
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
    """detect --out (and --plots): checked (and created) before any image is processed, so a bad folder fails
    before any output; folders this run created are removed again if it ends with an error before writing
    into them."""

    def __init__(self, folder: str, images: list[str], option: str = "--out"):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise UsageError(f"{option} must be a folder, but this is an existing file", folder)
        self.created: list[Path] = []
        missing = self.folder
        while not missing.exists() and missing != missing.parent:
            self.created.insert(0, missing)
            missing = missing.parent
        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as exc:
            self.created = []
            raise UsageError(f"{option} folder cannot be created: {exc.strerror or exc}", folder) from None
        if not _can_write_in(self.folder):
            self.discard()
            raise UsageError(f"{option} folder is not writable", folder)
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


def _can_write_in(folder: Path) -> bool:
    """Whether a file can be created in `folder`, tried for real: permission bits do not stop root, and a
    read-only file system or a full quota shows only when writing."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    import tempfile
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


# ---- subcommands ----------------------------------------------------------------------------------------------
def cmd_summary(args) -> int:
    from .network import load_cfg
    network = load_cfg(args.cfg, width=args.width, height=args.height)
    print(network.summary())
    return 0


def _dask_requested(args) -> bool:
    """--dask / --workers / --results of predict, detect and segment: checked before any work is done."""
    if args.dask is None:
        for flag, value in (("--workers", args.dask_workers), ("--results", args.results)):
            if value is not None:
                raise UsageError(f"{flag} goes with --dask (batch prediction on a Dask cluster)")
        return False
    from .distributed import require
    require("distributed", "--dask")
    if args.dask_workers is not None and args.dask != "local":
        raise UsageError("--workers sets the size of a --dask local cluster; an existing cluster has its own")
    return True


def _dask_batch(args, task: str, images: list[str], **options) -> int:
    """The command's --json records computed on a Dask cluster (darknetpy/distributed/dask.py)."""
    from .distributed.dask import run_batch_command
    if args.results:
        _refuse_overwriting(args.results, [*images, args.cfg, args.weights], "--results")
        if os.path.isdir(args.results):
            raise UsageError("--results is a folder; give the .jsonl file to write", args.results)
    return run_batch_command(args.dask, args.dask_workers, args.results, args.cfg, args.weights, images, task,
                             **options)


#: the command that serves each task (what `predict` does for it, and what a task mismatch points to)
TASK_COMMANDS = {"classification": "predict", "detection": "detect", "segmentation": "segment"}


def _require_task(model, task: str, command: str) -> None:
    """A located one-line error when `command` is used on a network of another task, naming the network's
    task and the command for it."""
    from .tasks import task_name_for
    found = task_name_for(model.network)
    if found != task:
        head = model.network.output_layer
        right = TASK_COMMANDS[found]
        use = f"`darknetpy {right}`" + ("" if right == "predict" else " (or `darknetpy predict`, for every task)")
        raise head.config.error(f"`darknetpy {command}` needs a {task} network, but this is a {found} network "
                                f"(last layer {head.index} [{head.kind}]): use {use}")


def _image_progress(command: str):
    """The per-image bar on a terminal's stderr; nothing in logs (the per-image lines already show how far)."""
    from .progress import Progress
    return Progress(command, log_lines=False)


def _emit(progress, lines: list[str]) -> None:
    """Print a result's lines on stdout, wiping the progress bar first when both share the terminal."""
    if sys.stdout.isatty():
        progress.hide()
    for line in lines:
        print(line)
    sys.stdout.flush()


def arm_compile_ahead(network) -> None:
    """A first run of a per-image command compiles with a second process (darknetpy.compile_ahead)."""
    from .compile_ahead import arm
    arm(network)


def cmd_predict(args) -> int:
    """What the network predicts, by its task (darknetpy.tasks.task_name_for, as the trainer chooses it): a
    classifier's top-k, a detector's boxes as `detect`, a segmenter's class shares and masks as `segment`."""
    from . import api
    from .tasks import task_name_for
    dask = _dask_requested(args)
    images = expand_images(args.images)
    model = api.load(args.cfg, args.weights, names=_names_source(args))
    arm_compile_ahead(model.network)
    task = task_name_for(model.network)
    if task == "classification":
        return _classify_images(model, images, args, dask)
    if task == "detection":
        return cmd_detect(args, model, images)
    return cmd_segment(args, model, images)


def _classify_images(model, images: list[str], args, dask: bool = False) -> int:
    from .records import classification_record
    if args.out:
        raise UsageError("--out draws boxes (detectors) or masks (segmenters); a classifier has nothing to draw",
                         args.out)
    top = args.top
    if top is None and args.data:
        from .config import read_data_file
        top = read_data_file(args.data).top or None
    top = top or 5
    if dask:
        return _dask_batch(args, "classification", images, names=_names_source(args), top=top)
    probabilities = model.outputs_probabilities
    head = model.network.output_layer
    what = "" if probabilities else (f" Scores, not probabilities: the last layer {head.index} [{head.kind}] "
                                     f"is not a softmax or logistic.")
    progress = _image_progress("predict")
    try:
        for done, path in enumerate(images, 1):
            start = time.perf_counter()
            predictions = model.predict(path, top=top)
            seconds = time.perf_counter() - start
            if args.json:
                lines = [json.dumps(classification_record(path, seconds, predictions, probabilities))]
            else:
                lines = [f"{path}: Predicted in {seconds:f} seconds.{what}"]   # on stdout, as Darknet
                lines += [f"{p.probability * 100:5.2f}%: {p.name}" if probabilities
                          else f"{p.probability:.6g}: {p.name}" for p in predictions]
            _emit(progress, lines)
            progress(done, len(images))
    finally:
        progress.close()
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


def cmd_detect(args, model=None, images: list[str] | None = None) -> int:
    from . import api
    if images is None:
        images = expand_images(args.images)
    if model is None:
        model = api.load(args.cfg, args.weights, names=_names_source(args))
        arm_compile_ahead(model.network)
    _require_task(model, "detection", "detect")
    letterbox = True if args.letterbox else (False if args.no_letterbox else None)
    if _dask_requested(args):
        if args.out:
            raise UsageError("--out is not available with --dask: the records give the boxes")
        return _dask_batch(args, "detection", images, names=_names_source(args), thresh=args.thresh, nms=args.nms,
                           letterbox=letterbox)
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
    from .records import detection_record
    progress = _image_progress(args.command)
    try:
        for done, path in enumerate(images, 1):
            start = time.perf_counter()
            results = model.detect(path, thresh=args.thresh, nms=args.nms, letterbox=letterbox)
            seconds = time.perf_counter() - start
            if args.json:
                lines = [json.dumps(detection_record(path, seconds, results))]
            else:
                lines = [f"{path}: Predicted in {seconds:f} seconds.", *format_detections(results)]
            _emit(progress, lines)
            if out is not None:
                from .drawing import draw_detections
                from .images import load_image
                draw_detections(load_image(path), results, out.target(path))
                out.written = True
            progress(done, len(images))
    finally:
        progress.close()


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


def cmd_segment(args, model=None, images: list[str] | None = None) -> int:
    from . import api
    from .records import segmentation_names, segmentation_record
    from .segmentation import class_fractions, write_segmentation_pictures
    dask = _dask_requested(args)
    if images is None:
        images = expand_images(args.images)
    if model is None:
        model = api.load(args.cfg, args.weights, names=args.names)
        arm_compile_ahead(model.network)
    _require_task(model, "segmentation", "segment")
    names = segmentation_names(model, _names_source(args))
    if dask:
        if args.out:
            raise UsageError("--out is not available with --dask: the records give the class shares")
        return _dask_batch(args, "segmentation", images, names=_names_source(args))
    out = None
    if args.out:
        out = _OutputFolder(args.out, images)
        for image in images:
            for suffix in ("_mask.png", "_overlay.png"):
                _refuse_overwriting(out.folder / f"{Path(image).stem}{suffix}", images, "--out would write")
    progress = _image_progress(args.command)
    try:
        for done, path in enumerate(images, 1):
            start = time.perf_counter()
            classes_map = model.segment(path)
            seconds = time.perf_counter() - start
            if args.json:
                lines = [json.dumps(segmentation_record(path, classes_map, names))]
            else:
                fractions = class_fractions(classes_map, names)
                lines = [f"{path}: Segmented in {seconds:f} seconds."]
                lines += [f"{share * 100:5.2f}%: {name}"
                          for name, share in sorted(fractions.items(), key=lambda item: -item[1]) if share > 0]
            _emit(progress, lines)
            if out is not None:
                write_segmentation_pictures(path, classes_map, names, out.folder, Path(path).stem)
                out.written = True
            progress(done, len(images))
    finally:
        progress.close()
    return 0


def _plots_folder(args) -> _OutputFolder | None:
    """--plots DIR, checked (created, tried for writing) before the evaluation starts."""
    return _OutputFolder(args.plots, [], option="--plots") if args.plots else None


def _with_plots(plots: _OutputFolder | None, work):
    """Run `work()`; a --plots folder this run created is removed again if it fails before writing."""
    try:
        return work()
    except BaseException:
        if plots is not None and not plots.written:
            plots.discard()
        raise


def _valid_plots(task, result, folder: Path, kept: list) -> list[Path]:
    """The pictures of a `valid` result (darknetpy/plots.py), by task; a detector's are those of `map`."""
    from . import plots
    if task.name == "detection":
        return _map_plots(result.result, *kept[0], folder)
    if task.name == "classification":
        labels = list(result.labels)
        data = task.data_config
        if data.names:  # the readable names (e.g. "7") rather than the strings searched in paths ("c7")
            from .api import names_from_data
            names = names_from_data(data.path)
            labels = names[:len(labels)] if len(names) >= len(labels) else labels
        return plots.write_classification_plots(folder, result.confusion, labels, title="valid")
    scores = result.scores
    return plots.write_segmentation_plots(folder, scores.confusion, scores.names, scores.iou, title="valid")


def cmd_valid(args) -> int:
    from . import api
    from .config import read_data_file
    from .progress import Progress
    from .tasks import task_for
    model = api.load(args.cfg, args.weights)
    task = task_for(model.network)(model, read_data_file(args.data))
    plots = _plots_folder(args)
    kept: list = []  # a detector's detections and truths, for its curves
    keep = {"keep": lambda *found: kept.append(found)} if plots is not None and task.name == "detection" else {}

    def work():
        result = task.evaluate(top=args.top, progress=Progress("valid"), **keep)
        if plots is not None:
            _valid_plots(task, result, plots.folder, kept)
            plots.written = True
        return result

    result = _with_plots(plots, work)
    print(json.dumps(result.as_dict()) if args.json else result.report())
    return 0


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


def _map_plots(result, detections, truths, folder: Path) -> list[Path]:
    """Precision-recall curves and the confusion matrix at --thresh (darknetpy/detection_curves.py)."""
    from . import plots
    from .detection_curves import detection_confusion, precision_recall_curves
    names = [c.name for c in result.classes]
    curves = precision_recall_curves(detections, truths, names, result.iou_thresh)
    confusion = detection_confusion(detections, truths, len(names), result.thresh, result.iou_thresh)
    return plots.write_detection_plots(folder, curves, [c.ap for c in result.classes], result.map50, confusion,
                                       names, result.thresh, result.iou_thresh)


def cmd_map(args) -> int:
    from . import api
    from .config import read_data_file
    from .metrics.evaluate import measure_map
    from .progress import Progress
    data_config = read_data_file(args.data)
    model = api.load(args.cfg, args.weights)
    plots = _plots_folder(args)
    started = time.perf_counter()
    kept = []

    def work():
        result = measure_map(model.network, data_config, iou_thresh=args.iou_thresh, points=args.points,
                             thresh=args.thresh, progress=Progress("map"),
                             keep=(lambda *found: kept.append(found)) if plots else None)
        if plots is not None:
            _map_plots(result, *kept[0], plots.folder)
            plots.written = True
        return result

    result = _with_plots(plots, work)
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


def _add_dask_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dask", nargs="?", const="local", metavar="local|ADDRESS",
                   help="spread the images over a Dask cluster and print the --json records as they finish: "
                        "'local' (the default) starts one on this machine, tcp://HOST:8786 joins a running one "
                        "(needs the distributed extra); put it after the images")
    p.add_argument("--workers", type=positive_int, dest="dask_workers", metavar="N",
                   help="with --dask local: worker processes (default: one per core)")
    p.add_argument("--results", metavar="FILE.jsonl",
                   help="with --dask: write the records to this file (complete or not at all) instead of stdout")


#: the example every command's --help ends with (a test checks that each command has one)
EXAMPLES = {
    "summary": "darknetpy summary cfg/mnist.cfg\n  darknetpy summary yolov3-tiny --width 320 --height 320",
    "predict": "darknetpy predict cfg/mnist.cfg weights/mnist.weights darknetpy/samples --top 2\n"
               "  darknetpy predict yolo-fastest-1.1.cfg yolo-fastest-1.1.weights dog.jpg --names coco.names "
               "--out drawn\n  darknetpy predict cfg/mnist.cfg weights/mnist.weights digits.txt --json > records.jsonl",
    "detect": "darknetpy detect yolo-fastest-1.1.cfg yolo-fastest-1.1.weights dog.jpg --names coco.names "
              "--thresh 0.3 --out drawn",
    "train": "darknetpy train cfg/mnist.cfg mnist/mnist.data --seed 1 --validate",
    "valid": "darknetpy valid cfg/mnist.cfg weights/mnist.weights mnist/mnist.data --plots plots\n"
             "  darknetpy valid digits-seg backup/digits-seg.weights digits.data --json",
    "map": "darknetpy map yolo-fastest-1.1.cfg yolo-fastest-1.1.weights voc.data --points 11 --plots plots",
    "anchors": "darknetpy anchors voc.data --num 6 --width 320 --height 320",
    "segment": "darknetpy segment digits-seg backup/digits-seg.weights scene.png --names digits-seg --out pictures",
    "partial": "darknetpy partial darknet19.cfg darknet19.weights darknet19.conv.13 13",
    "export": "darknetpy export yolo-fastest-1.1.cfg yolo-fastest-1.1.weights model.onnx --decode",
}


def _add_examples(sub) -> None:
    for name, parser in sub.choices.items():
        example = EXAMPLES.get(name)
        if example is not None:
            parser.epilog = f"example:\n  {example}"


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

    p = sub.add_parser("predict", help="classify, detect or segment images, as the network's task is "
                                       "(top classes, boxes as detect, masks as segment)")
    p.add_argument("cfg")
    p.add_argument("weights")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image, directory of images, or list file")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--names", help="file with one class name per line")
    group.add_argument("--data", help=".data file (names/labels, top)")
    p.add_argument("--top", type=positive_int, help="classifiers: how many classes to print (default: .data top, "
                                                    "else 5)")
    p.add_argument("--thresh", type=unit_float, default=0.25, help="detectors: score threshold (default 0.25)")
    p.add_argument("--nms", type=unit_float, default=0.45, help="detectors: NMS IoU threshold (default 0.45)")
    p.add_argument("--out", help="detectors: folder for the images with boxes drawn; segmenters: for the masks "
                                 "and overlays")
    box = p.add_mutually_exclusive_group()
    box.add_argument("--letterbox", action="store_true", help="detectors: keep the aspect ratio")
    box.add_argument("--no-letterbox", action="store_true", help="detectors: stretch to the network size")
    p.add_argument("--json", action="store_true", help="one JSON object per image (with its \"task\")")
    _add_dask_options(p)
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
    _add_dask_options(p)
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
    p.add_argument("--plots", metavar="DIR", help="write PNG pictures of the result: confusion matrices and "
                                                  "per-class accuracy (classifiers) or IoU (segmenters); "
                                                  "detectors: as map --plots")
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
    p.add_argument("--plots", metavar="DIR", help="write PNG pictures: precision-recall curves (AP per class) and "
                                                  "the confusion matrix of the detections at --thresh")
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
    _add_dask_options(p)
    p.set_defaults(run=cmd_segment, data=None)

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
    _add_examples(sub)
    parser.epilog = "Run `darknetpy COMMAND --help` for a command's options and an example."
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
    if not (sys.argv[1:] if argv is None else argv):  # a first try: say what there is to do
        print(build_parser().format_help(), end="")
        return 0
    try:
        args = build_parser().parse_args(argv)
        _resolve_bundled(args)
        from .compile_notice import announce_compilation
        announce_compilation()
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
