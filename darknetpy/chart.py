"""chart.png for training runs, drawn with Pillow (no plotting dependency): loss and average loss on the
left axis, learning rate and the task's main validation metric (top-1, mAP, mIoU: a fraction in [0, 1],
when measured) scaled onto the right."""
from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Callable, Sequence

from PIL import Image, ImageDraw, ImageFont

from .fileio import atomic_writer

if TYPE_CHECKING:
    from .training.metrics import IterationRow

WIDTH, HEIGHT = 960, 540
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 80, 80, 50, 60
COLOURS = {"loss": (170, 190, 230), "avg_loss": (20, 60, 200), "rate": (230, 120, 20), "metric": (20, 160, 60)}


def _series(rows: Sequence[IterationRow], value: Callable[[IterationRow], float | None]) -> list[tuple[float, float]]:
    points = []
    for row in rows:
        v = value(row)
        if v is not None and math.isfinite(v):
            points.append((float(row.batch), float(v)))
    return points


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def write_chart(rows: Sequence[IterationRow], path: str | os.PathLike, title: str = "training",
                metric: str | None = None) -> None:
    """Draw the rows; `metric` names the validation metric to plot (a key of the rows' metrics)."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = _font(14)
    left, right = MARGIN_LEFT, WIDTH - MARGIN_RIGHT
    top, bottom = MARGIN_TOP, HEIGHT - MARGIN_BOTTOM
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text((left, 15), title, fill="black", font=_font(18))
    loss = _series(rows, lambda row: row.loss)
    avg = _series(rows, lambda row: row.avg_loss)
    rate = _series(rows, lambda row: row.rate)
    measured = _series(rows, lambda row: row.metrics.get(metric)) if metric else []
    if not loss:
        _save(image, path)
        return
    x_max = max(p[0] for p in loss) or 1.0
    y_max = max(max(v for _, v in avg), 1e-9) * 1.5 if avg else max(v for _, v in loss)
    y_max = min(y_max, max(v for _, v in loss)) or 1.0

    def to_xy(x: float, y: float, y_top: float) -> tuple[float, float]:
        return (left + (right - left) * x / x_max, bottom - (bottom - top) * min(max(y / y_top, 0.0), 1.0))

    for i in range(6):  # grid and left labels
        y = top + (bottom - top) * i / 5
        draw.line([left, y, right, y], fill=(230, 230, 230))
        draw.text((8, y - 7), f"{y_max * (1 - i / 5):.3g}", fill="black", font=font)
        x = left + (right - left) * i / 5
        draw.text((x - 10, bottom + 8), f"{int(x_max * i / 5)}", fill="black", font=font)
    draw.text(((left + right) // 2 - 30, bottom + 30), "iteration", fill="black", font=font)
    if len(loss) > 1:
        draw.line([to_xy(x, y, y_max) for x, y in loss], fill=COLOURS["loss"], width=1)
    if len(avg) > 1:
        draw.line([to_xy(x, y, y_max) for x, y in avg], fill=COLOURS["avg_loss"], width=2)
    rate_max = max((v for _, v in rate), default=0.0) or 1.0
    if len(rate) > 1:
        draw.line([to_xy(x, y, rate_max) for x, y in rate], fill=COLOURS["rate"], width=2)
    draw.text((right + 6, top - 7), f"lr {rate_max:.3g}", fill=COLOURS["rate"], font=font)
    if measured:
        pts = [to_xy(x, y, 1.0) for x, y in measured]
        if len(pts) > 1:
            draw.line(pts, fill=COLOURS["metric"], width=2)
        for px, py in pts:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=COLOURS["metric"])
        draw.text((right + 6, top + 10), f"{metric} 1.0", fill=COLOURS["metric"], font=font)
        last = measured[-1][1]
        draw.text((right - 200, top + 8), f"last {metric}: {last * 100:.2f}%", fill=COLOURS["metric"], font=font)
    legend = [("loss", "loss"), ("avg_loss", "avg loss"), ("rate", "learning rate")]
    if measured:
        legend.append(("metric", f"valid {metric}"))
    x = left + 260
    for key, label in legend:
        draw.line([x, 26, x + 20, 26], fill=COLOURS[key], width=3)
        draw.text((x + 24, 19), label, fill="black", font=font)
        x += 30 + int(draw.textlength(label, font=font)) + 20
    _save(image, path)


def _save(image: Image.Image, path: str | os.PathLike) -> None:
    with atomic_writer(path, fsync=False) as stream:
        image.save(stream, format="PNG")
