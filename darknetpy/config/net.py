"""The [net] / [network] section (input size, batching, solver and augmentation settings) and the
learning-rate schedule Darknet derives from it.

Defaults are Darknet's (spec §1). Deliberate differences: an unknown `policy` is an error instead of a
silent fallback to constant, `policy=steps` needs `steps` and `scales` of equal length, a batch smaller
than `subdivisions` is an error, and unknown keys that look like typos are errors (Darknet never checks
[net] keys); keys that other Darknet versions define are accepted silently.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from darknetpy.config.options import C_INT_MAX, SectionReader

POLICIES: tuple[str, ...] = ("constant", "step", "exp", "poly", "steps", "sigmoid", "random")

# Every key NetConfig reads (some only for certain policies).
NET_KEYS: frozenset[str] = frozenset({
    "batch", "subdivisions", "time_steps", "learning_rate", "momentum", "decay", "notruth", "random",
    "adam", "B1", "B2", "eps", "height", "width", "channels", "inputs", "max_crop", "min_crop",
    "max_ratio", "min_ratio", "center", "clip", "angle", "aspect", "saturation", "exposure", "hue",
    "flip", "letter_box", "mosaic", "resize_step", "policy", "burn_in", "power", "step", "scale", "steps",
    "scales", "gamma",
    "max_batches",
})

@dataclass(frozen=True)
class NetConfig:
    """Typed [net] settings. `batch` is Darknet's per-pass batch: batch // subdivisions * time_steps;
    `full_batch` = batch * subdivisions, the images per weight update (B in spec §6.3)."""

    line: int
    batch: int
    full_batch: int
    subdivisions: int
    time_steps: int
    height: int
    width: int
    channels: int
    inputs: int
    learning_rate: float
    momentum: float
    decay: float
    adam: bool
    B1: float
    B2: float
    eps: float
    policy: str
    burn_in: int
    power: float
    step: int
    scale: float
    steps: tuple[int, ...]
    scales: tuple[float, ...]
    gamma: float
    max_batches: int
    random: bool
    notruth: bool
    clip: float
    max_crop: int
    min_crop: int
    max_ratio: float
    min_ratio: float
    center: bool
    angle: float
    aspect: float
    saturation: float
    exposure: float
    hue: float
    flip: bool
    letter_box: bool
    mosaic: bool = False       # AlexeyAB: detection training puts 4 images in one (detection_augment.py)
    resize_step: int = 32      # AlexeyAB: multi-scale sizes are multiples of this

    @classmethod
    def from_section(cls, reader: SectionReader) -> NetConfig:
        """Read a [net] / [network] section, validate it and report unknown keys."""
        name = reader.section.name
        if name not in ("net", "network"):
            raise reader.error(f"expected a [net] or [network] section, found [{name}]")

        written_batch = reader.get_int("batch", 1, minimum=1)
        subdivisions = reader.get_int("subdivisions", 1, minimum=1)
        time_steps = reader.get_int("time_steps", 1, minimum=1)
        if written_batch < subdivisions:
            raise reader.error(f"batch={written_batch} is smaller than subdivisions={subdivisions}: "
                               "each pass would hold no images", "batch")
        batch = written_batch // subdivisions * time_steps

        height = reader.get_int("height", 0, minimum=0)
        width = reader.get_int("width", 0, minimum=0)
        channels = reader.get_int("channels", 0, minimum=0)
        inputs = reader.get_int("inputs", height * width * channels, minimum=0)
        if inputs == 0 and not (height and width and channels):
            raise reader.error("no input size: set width, height and channels (or inputs) in [net]")
        if inputs > C_INT_MAX:  # Darknet's net->inputs is a C int, as is every layer's size
            largest = max(("width", width), ("height", height), ("channels", channels), key=lambda kv: kv[1])
            raise reader.error(f"a {width}x{height}x{channels} input has {inputs} values, more than the "
                               f"{C_INT_MAX} Darknet can hold (its sizes are C ints)", largest[0])

        max_crop = reader.get_int("max_crop", 2 * width)
        min_crop = reader.get_int("min_crop", width)
        # Darknet divides as float32. With width 0 (vector inputs) its 0/0 gives NaN, which nothing reads;
        # 0 keeps two parses of one cfg equal.
        max_ratio = reader.get_float("max_ratio", _float32_ratio(max_crop, width))
        min_ratio = reader.get_float("min_ratio", _float32_ratio(min_crop, width))

        policy = reader.get_str("policy", "constant", choices=POLICIES)
        step, scale, steps, scales, gamma = 1, 1.0, (), (), 1.0
        if policy == "step":
            step = reader.get_int("step", 1, minimum=1)
            scale = reader.get_float("scale", 1.0)
        elif policy == "steps":
            steps = reader.get_int_list("steps", required=True)
            scales = reader.get_float_list("scales", required=True)
            if len(steps) != len(scales):
                raise reader.error(f"steps has {len(steps)} values but scales has {len(scales)}; "
                                   "they must pair up", "scales")
        elif policy == "exp":
            gamma = reader.get_float("gamma", 1.0)
        elif policy == "sigmoid":
            gamma = reader.get_float("gamma", 1.0)
            step = reader.get_int("step", 1)

        config = cls(
            line=reader.section.line,
            batch=batch,
            full_batch=batch * subdivisions,
            subdivisions=subdivisions,
            time_steps=time_steps,
            height=height,
            width=width,
            channels=channels,
            inputs=inputs,
            learning_rate=reader.get_float("learning_rate", 0.001),
            momentum=reader.get_float("momentum", 0.9),
            decay=reader.get_float("decay", 0.0001),
            adam=reader.get_bool("adam", False),
            B1=reader.get_float("B1", 0.9),
            B2=reader.get_float("B2", 0.999),
            eps=reader.get_float("eps", 1e-7),
            policy=policy,
            burn_in=reader.get_int("burn_in", 0, minimum=0),
            power=reader.get_float("power", 4.0),
            step=step,
            scale=scale,
            steps=steps,
            scales=scales,
            gamma=gamma,
            max_batches=reader.get_int("max_batches", 0, minimum=0),
            random=reader.get_bool("random", False),
            notruth=reader.get_bool("notruth", False),
            clip=reader.get_float("clip", 0.0),
            max_crop=max_crop,
            min_crop=min_crop,
            max_ratio=max_ratio,
            min_ratio=min_ratio,
            center=reader.get_bool("center", False),
            angle=reader.get_float("angle", 0.0),
            aspect=reader.get_float("aspect", 1.0),
            saturation=reader.get_float("saturation", 1.0),
            exposure=reader.get_float("exposure", 1.0),
            hue=reader.get_float("hue", 0.0),
            flip=reader.get_bool("flip", True),
            letter_box=reader.get_bool("letter_box", False),
            mosaic=reader.get_bool("mosaic", False),
            resize_step=reader.get_int("resize_step", 32, minimum=1),
        )
        reader.finish("net", valid=NET_KEYS)
        return config


def _float32_ratio(numerator: int, denominator: int) -> float:
    if denominator == 0:
        return 0.0
    return float(np.float32(numerator) / np.float32(denominator))


def _as_size_t(value: int) -> int:
    """An int as C converts it to a 64-bit size_t (negative values wrap around)."""
    return value % (1 << 64)


class _UniformSource(Protocol):
    def random(self) -> float: ...


def learning_rate_at(net: NetConfig, batch_num: int, rng: _UniformSource | None = None) -> float:
    """Darknet's get_current_rate (spec §6.2) for `batch_num` completed updates (the first update uses 1).

    Mirrors the C types: learning_rate, scales, gamma and power are float32, `pow`/`exp` run in double,
    the result is rounded to float32; burn-in takes precedence over every policy. `rng` (anything with
    `.random()` in [0, 1), e.g. numpy.random.Generator) feeds policy=random.

    Darknet's batch_num is an unsigned size_t, so comparisons and differences with the int cfg values
    are unsigned: a negative entry in `steps` compares as huge and ends the schedule there (the
    `steps=-1,...` warm-up trick of some cfgs does nothing in pjreddie's Darknet), and for
    policy=sigmoid before `step` the difference wraps around, giving a rate of 0 when gamma > 0.
    """
    f32, f64 = np.float32, np.float64
    base = f32(net.learning_rate)
    power = f64(f32(net.power))
    with np.errstate(all="ignore"):
        if batch_num < net.burn_in:
            fraction = f32(batch_num) / f32(net.burn_in)
            return float(f32(f64(base) * np.power(f64(fraction), power)))
        policy = net.policy
        if policy == "constant":
            rate = base
        elif policy == "step":
            rate = f32(f64(base) * np.power(f64(f32(net.scale)), f64(batch_num // net.step)))
        elif policy == "steps":
            rate = base
            for step, scale in zip(net.steps, net.scales):
                if _as_size_t(step) > batch_num:
                    break
                rate = f32(rate * f32(scale))
        elif policy == "exp":
            rate = f32(f64(base) * np.power(f64(f32(net.gamma)), f64(batch_num)))
        elif policy == "poly":
            # float32 division; max_batches=0 divides by zero exactly as the C code does.
            remaining = f32(1) - f32(batch_num) / f32(net.max_batches)
            rate = f32(f64(base) * np.power(f64(remaining), power))
        elif policy == "random":
            source = rng if rng is not None else np.random.default_rng()
            rate = f32(f64(base) * np.power(f64(f32(source.random())), power))
        elif policy == "sigmoid":
            exponent = f64(f32(net.gamma) * f32(_as_size_t(batch_num - net.step)))
            rate = f32(f64(base) * (1.0 / (1.0 + np.exp(exponent))))
        else:
            raise ValueError(f"unknown learning-rate policy {policy!r}")
    return float(rate)
