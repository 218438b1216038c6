"""Pictures of evaluations (`valid --plots DIR`, `map --plots DIR`), drawn with Pillow as the training
chart is: confusion matrices, per-class bars, precision-recall curves.

Every figure has a title, axis labels and the class names, and is written atomically as PNG. The numbers a
figure shows are also stored in its PNG text chunks (`darknetpy.*` keys, JSON), so a program (and the tests)
can check that the picture shows what the command's `--json` reports: a confusion matrix keeps its counts,
its labels and where its cells are (`darknetpy.cells`: left, top, cell size in pixels).
"""
from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from .fileio import atomic_writer

WHITE, BLACK, GRID, MUTED = (255, 255, 255), (0, 0, 0), (200, 200, 200), (110, 110, 110)
#: the colour of a cell holding the largest value (white is 0): a dark blue, with white text on it
FULL = np.array([8, 48, 107], np.float64)
EMPTY_ROW = (225, 225, 225)
ALL_CLASSES = (20, 40, 160)
BAR = (60, 110, 190)


def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: only the fixed bitmap font
        return ImageFont.load_default()


def cell_colour(fraction: float) -> tuple[int, int, int]:
    """White for 0, FULL for 1, linear in between (NaN: the grey of a row without truths)."""
    if math.isnan(fraction):
        return EMPTY_ROW
    f = min(max(fraction, 0.0), 1.0)
    return tuple(int(round(255 - f * (255 - v))) for v in FULL)


def _text_size(draw: ImageDraw.ImageDraw, text: str, face) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=face)
    return right - left, bottom - top


def _centred_text(draw: ImageDraw.ImageDraw, centre: tuple[float, float], text: str, face, fill) -> None:
    draw.text(centre, text, font=face, fill=fill, anchor="mm")


def _rotated_text(canvas: Image.Image, text: str, face, anchor_xy: tuple[int, int], fill=BLACK,
                  align: str = "top") -> None:
    """Text turned 90 degrees counter-clockwise (read bottom to top), its right end at anchor_xy's y when
    align is "top", centred on it when "centre"."""
    probe = ImageDraw.Draw(canvas)
    width, height = _text_size(probe, text, face)
    strip = Image.new("RGBA", (width + 4, height + 8), (255, 255, 255, 0))
    ImageDraw.Draw(strip).text((2, 2), text, font=face, fill=fill + (255,), anchor="lt")
    turned = strip.rotate(90, expand=True)
    x, y = anchor_xy
    top = y if align == "top" else y - turned.height // 2
    canvas.paste(turned, (x - turned.width // 2, top), turned)


def save_png(image: Image.Image, path: str | os.PathLike, metadata: dict[str, object] | None = None) -> Path:
    """Write the PNG atomically, with `metadata` as JSON text chunks."""
    info = PngInfo()
    for key, value in (metadata or {}).items():
        info.add_text(key, json.dumps(value))
    data = io.BytesIO()
    image.save(data, format="PNG", pnginfo=info)
    with atomic_writer(path, fsync=False) as stream:
        stream.write(data.getvalue())
    return Path(path)


def read_metadata(path: str | os.PathLike) -> dict[str, object]:
    """The `darknetpy.*` text chunks of a PNG written by save_png, decoded."""
    with Image.open(path) as image:
        return {key: json.loads(value) for key, value in image.text.items() if key.startswith("darknetpy.")}


# ---- confusion matrix ------------------------------------------------------------------------------------------
def row_normalised(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (NaN for a row without any count)."""
    counts = np.asarray(matrix, np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, counts / np.maximum(totals, 1), np.nan)


def confusion_figure(matrix: np.ndarray, labels: Sequence[str], title: str, *, normalise: bool = False,
                     row_axis: str = "true class", column_axis: str = "predicted class") -> tuple[Image.Image, dict]:
    """The matrix as a grid of cells (rows: truth, columns: prediction) shaded by value, every value
    written in its cell when it fits. Counts are shaded by count / largest count; with `normalise` each row
    is divided by its total first and shaded by that fraction. Returns (image, PNG metadata)."""
    counts = np.asarray(matrix)
    n = counts.shape[0]
    values = row_normalised(counts) if normalise else counts.astype(np.float64)
    peak = 1.0 if normalise else max(float(counts.max()), 1.0)
    cell = int(min(64, max(12, 720 // max(n, 1))))
    label_face = font(int(min(16, max(10, cell * 0.45))))
    value_face = font(int(min(15, max(8, cell * 0.32))))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = max((_text_size(probe, str(name), label_face)[0] for name in labels), default=10)
    label_height = _text_size(probe, "Ag", label_face)[1]
    columns_rotated = label_width > cell - 4
    column_band = (label_width if columns_rotated else label_height) + 12
    left = 40 + label_width + 12
    top = 60
    grid = cell * n
    legend_width = 90
    width = max(left + grid + legend_width + 20, 520)
    height = top + grid + column_band + 50
    image = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(image)
    draw.text((left, 18), title, font=font(20), fill=BLACK)
    for r in range(n):
        for c in range(n):
            value = values[r, c]
            x0, y0 = left + c * cell, top + r * cell
            shade = value / peak if not math.isnan(value) else math.nan
            fill = cell_colour(shade)
            draw.rectangle((x0, y0, x0 + cell - 1, y0 + cell - 1), fill=fill, outline=GRID)
            text = "-" if math.isnan(value) else (f"{value:.2f}" if normalise else str(int(counts[r, c])))
            if _text_size(draw, text, value_face)[0] <= cell - 3:
                ink = WHITE if not math.isnan(shade) and shade > 0.5 else BLACK
                _centred_text(draw, (x0 + cell / 2, y0 + cell / 2), text, value_face, ink)
    draw.rectangle((left, top, left + grid, top + grid), outline=BLACK)
    for k, name in enumerate(labels[:n]):  # row names at the left, column names below the grid
        draw.text((left - 6, top + k * cell + cell / 2), str(name), font=label_face, fill=BLACK, anchor="rm")
        centre_x = left + k * cell + cell // 2
        if columns_rotated:
            _rotated_text(image, str(name), label_face, (centre_x, top + grid + 4))
        else:
            draw.text((centre_x, top + grid + 4), str(name), font=label_face, fill=BLACK, anchor="mt")
    axis_face = font(15)
    draw.text((left + grid / 2, top + grid + column_band + 14), column_axis, font=axis_face, fill=BLACK,
              anchor="mt")
    _rotated_text(image, row_axis, axis_face, (16, top + grid // 2), align="centre")
    _colour_scale(draw, (left + grid + 24, top), min(grid, 240), peak, normalise)
    metadata = {"darknetpy.kind": "confusion_matrix", "darknetpy.matrix": counts.tolist(),
                "darknetpy.labels": [str(name) for name in labels[:n]], "darknetpy.normalised": normalise,
                "darknetpy.cells": {"left": left, "top": top, "size": cell},
                "darknetpy.scale": peak}
    return image, metadata


def _colour_scale(draw: ImageDraw.ImageDraw, origin: tuple[int, int], length: int, peak: float,
                  normalise: bool) -> None:
    """A vertical strip from the largest value (top) to 0 (bottom), labelled at both ends."""
    x, y = origin
    for k in range(length):
        draw.line((x, y + k, x + 14, y + k), fill=cell_colour(1 - k / max(length - 1, 1)))
    draw.rectangle((x, y, x + 14, y + length), outline=BLACK)
    face = font(12)
    draw.text((x + 18, y), "1.00" if normalise else f"{peak:g}", font=face, fill=BLACK, anchor="lt")
    draw.text((x + 18, y + length), "0", font=face, fill=BLACK, anchor="lb")


# ---- per-class bars --------------------------------------------------------------------------------------------
def bar_figure(values: Sequence[float], labels: Sequence[str], title: str, value_axis: str) -> tuple[Image.Image, dict]:
    """One horizontal bar per class over a 0..1 axis, its value written at its end ("n/a" for NaN), and a
    dashed line at the mean of the defined values."""
    n = len(values)
    row = int(min(32, max(14, 600 // max(n, 1))))
    label_face = font(int(min(15, max(10, row * 0.6))))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = max((_text_size(probe, str(name), label_face)[0] for name in labels), default=10)
    left, top, span = label_width + 60, 60, 600
    height = top + row * n + 70
    image = Image.new("RGB", (left + span + 90, height), WHITE)
    draw = ImageDraw.Draw(image)
    draw.text((left, 18), title, font=font(20), fill=BLACK)
    bottom = top + row * n
    tick_face = font(12)
    for k in range(6):
        x = left + span * k / 5
        draw.line((x, top, x, bottom), fill=(235, 235, 235))
        draw.text((x, bottom + 4), f"{k / 5:.1f}", font=tick_face, fill=BLACK, anchor="mt")
    defined = [v for v in values if v is not None and not math.isnan(v)]
    if defined:
        mean = float(np.mean(defined))
        x = left + span * min(max(mean, 0.0), 1.0)
        for y in range(top, bottom, 8):
            draw.line((x, y, x, min(y + 4, bottom)), fill=(200, 40, 40), width=2)
        draw.text((x, top - 4), f"mean over classes {mean:.3f}", font=tick_face, fill=(200, 40, 40), anchor="mb")
    for k, (name, value) in enumerate(zip(labels, values)):
        y0 = top + k * row
        draw.text((left - 6, y0 + row / 2), str(name), font=label_face, fill=BLACK, anchor="rm")
        if value is None or math.isnan(value):
            draw.text((left + 4, y0 + row / 2), "n/a", font=label_face, fill=MUTED, anchor="lm")
            continue
        end = left + span * min(max(value, 0.0), 1.0)
        draw.rectangle((left, y0 + 2, end, y0 + row - 3), fill=BAR)
        box = draw.textbbox((end + 4, y0 + row / 2), f"{value:.3f}", font=label_face, anchor="lm")
        draw.rectangle((box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1), fill=WHITE)  # over the mean line
        draw.text((end + 4, y0 + row / 2), f"{value:.3f}", font=label_face, fill=BLACK, anchor="lm")
    draw.line((left, top, left, bottom), fill=BLACK)
    draw.line((left, bottom, left + span, bottom), fill=BLACK)
    draw.text((left + span / 2, bottom + 24), value_axis, font=font(15), fill=BLACK, anchor="mt")
    _rotated_text(image, "class", font(15), (14, top + row * n // 2), align="centre")
    metadata = {"darknetpy.kind": "bars", "darknetpy.labels": [str(name) for name in labels],
                "darknetpy.values": [None if v is None or math.isnan(v) else float(v) for v in values]}
    return image, metadata


# ---- precision-recall curves -----------------------------------------------------------------------------------
def class_colours(count: int) -> list[tuple[int, int, int]]:
    """Distinct hues around the colour wheel, alternately lighter and darker so neighbours differ."""
    import colorsys
    return [tuple(int(round(255 * v)) for v in colorsys.hsv_to_rgb(k / max(count, 1), 0.8, 0.85 if k % 2 else 0.6))
            for k in range(count)]


def pr_figure(curves, aps: Sequence[float | None], mean_recall: np.ndarray, mean_precision: np.ndarray,
              mean_ap: float, title: str) -> tuple[Image.Image, dict]:
    """Every class's precision envelope as a thin step line and the all-classes curve thick, on recall x
    precision axes from 0 to 1; the legend names each class with its AP (classes without truths: n/a)."""
    size, left, top = 560, 80, 60
    rows_per_column = 32
    legend_face = font(12)
    entries = [(f"all classes  mAP {mean_ap:.3f}" if not math.isnan(mean_ap) else "all classes  mAP n/a",
                ALL_CLASSES)]
    colours = class_colours(len(curves))
    for curve, ap, colour in zip(curves, aps, colours):
        entries.append((f"{curve.name}  AP {'n/a' if ap is None else f'{ap:.3f}'}", colour))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    entry_width = max(_text_size(probe, text, legend_face)[0] for text, _ in entries) + 30
    legend_columns = math.ceil(len(entries) / rows_per_column)
    width = left + size + 30 + legend_columns * entry_width + 10
    height = max(top + size + 70, top + min(len(entries), rows_per_column) * 16 + 20)
    image = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(image)
    draw.text((left, 18), title, font=font(20), fill=BLACK)

    def xy(recall: float, precision: float) -> tuple[float, float]:
        return left + size * recall, top + size * (1 - precision)

    tick_face = font(12)
    for k in range(6):
        value = k / 5
        x, y = xy(value, value)
        draw.line((x, top, x, top + size), fill=(235, 235, 235))
        draw.line((left, y, left + size, y), fill=(235, 235, 235))
        draw.text((x, top + size + 4), f"{value:.1f}", font=tick_face, fill=BLACK, anchor="mt")
        draw.text((left - 6, y), f"{value:.1f}", font=tick_face, fill=BLACK, anchor="rm")
    draw.rectangle((left, top, left + size, top + size), outline=BLACK)
    for curve, colour in zip(curves, colours):
        if len(curve.recall) == 0:
            continue
        envelope = np.maximum.accumulate(curve.precision[::-1])[::-1]
        points = [xy(0.0, envelope[0])]
        for k, recall in enumerate(curve.recall):
            points.append(xy(recall, envelope[k]))
            if k + 1 < len(envelope):
                points.append(xy(recall, envelope[k + 1]))
        draw.line(points, fill=colour, width=1)
    draw.line([xy(r, p) for r, p in zip(mean_recall, mean_precision)], fill=ALL_CLASSES, width=4)
    draw.text((left + size / 2, top + size + 24), "recall", font=font(15), fill=BLACK, anchor="mt")
    _rotated_text(image, "precision", font(15), (20, top + size // 2), align="centre")
    for k, (text, colour) in enumerate(entries):
        column, line = divmod(k, rows_per_column)
        x = left + size + 30 + column * entry_width
        y = top + line * 16
        draw.line((x, y + 7, x + 20, y + 7), fill=colour, width=4 if k == 0 else 2)
        draw.text((x + 26, y + 7), text, font=legend_face, fill=BLACK, anchor="lm")
    metadata = {"darknetpy.kind": "precision_recall", "darknetpy.labels": [c.name for c in curves],
                "darknetpy.ap": list(aps), "darknetpy.map": None if math.isnan(mean_ap) else mean_ap}
    return image, metadata


# ---- the figures of each evaluation ----------------------------------------------------------------------------
def _write_all(folder: str | os.PathLike, figures: dict[str, tuple[Image.Image, dict]]) -> list[Path]:
    """Every figure is drawn before the first is written, so a drawing error leaves no file behind."""
    return [save_png(image, Path(folder) / name, metadata) for name, (image, metadata) in figures.items()]


def write_classification_plots(folder: str | os.PathLike, confusion: np.ndarray, labels: Sequence[str],
                               title: str = "valid") -> list[Path]:
    """confusion_matrix.png (counts), confusion_matrix_normalized.png (rows sum to 1), per_class_accuracy.png
    (the diagonal over the row: the share of each class's images classified as it, top-1)."""
    accuracy = np.diag(row_normalised(confusion)).tolist()
    return _write_all(folder, {
        "confusion_matrix.png": confusion_figure(confusion, labels, f"{title}: confusion matrix (images)"),
        "confusion_matrix_normalized.png": confusion_figure(
            confusion, labels, f"{title}: confusion matrix (share of each true class)", normalise=True),
        "per_class_accuracy.png": bar_figure(accuracy, labels, f"{title}: top-1 accuracy per class",
                                             "accuracy (top-1)"),
    })


def write_segmentation_plots(folder: str | os.PathLike, confusion: np.ndarray, names: Sequence[str],
                             iou: Sequence[float], title: str = "valid") -> list[Path]:
    """pixel_confusion_matrix.png (pixel counts), pixel_confusion_matrix_normalized.png, per_class_iou.png."""
    return _write_all(folder, {
        "pixel_confusion_matrix.png": confusion_figure(confusion, names, f"{title}: pixel confusion matrix",
                                                       row_axis="true class (mask)",
                                                       column_axis="predicted class"),
        "pixel_confusion_matrix_normalized.png": confusion_figure(
            confusion, names, f"{title}: pixel confusion matrix (share of each true class)", normalise=True,
            row_axis="true class (mask)", column_axis="predicted class"),
        "per_class_iou.png": bar_figure([float(v) for v in iou], names, f"{title}: IoU per class", "IoU"),
    })


def write_detection_plots(folder: str | os.PathLike, curves, aps: Sequence[float | None], mean_ap: float,
                          confusion: np.ndarray, names: Sequence[str], thresh: float, iou_thresh: float,
                          title: str = "map") -> list[Path]:
    """pr_curve.png (every class and all classes, AP in the legend) and confusion_matrix.png (+ normalised)
    of the detections above `thresh` with a background row and column (darknetpy.detection_curves)."""
    from .detection_curves import RECALL_GRID, mean_curve
    labels = [*names, "background"]
    where = f"conf > {thresh:g}, IoU > {iou_thresh:g}"
    return _write_all(folder, {
        "pr_curve.png": pr_figure(curves, aps, RECALL_GRID, mean_curve(curves), mean_ap,
                                  f"{title}: precision-recall (IoU > {iou_thresh:g})"),
        "confusion_matrix.png": confusion_figure(confusion, labels, f"{title}: detections ({where})",
                                                 row_axis="true class", column_axis="detected class"),
        "confusion_matrix_normalized.png": confusion_figure(
            confusion, labels, f"{title}: detections, share of each true class ({where})", normalise=True,
            row_axis="true class", column_axis="detected class"),
    })
