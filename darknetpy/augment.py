"""Classifier-training augmentation (spec §7.7) with every random draw taken from an explicit
numpy Generator, so a seed reproduces a batch exactly.

Per image: either a centre crop (`center=1`) or Darknet's random_augment_image (random aspect stretch,
scale so the shorter side becomes a random size between min and max, rotation, translation), then a
horizontal flip with probability ½ (unless `flip=0`, AlexeyAB's key), then random_distort_image
(hue shift, saturation and exposure scaling in HSV).

Deliberate differences from Darknet:
* Darknet draws from libc rand() shared by many threads and is not reproducible; we draw the same
  distributions from a Generator, so values differ but statistics match.
* Darknet's crop is always square with side = net width (its loader breaks when height != width). We crop
  w×h: the horizontal shift range uses w and the vertical one uses h, which equals Darknet when w == h.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from darknetpy.images import as_planar, center_crop_image
from darknetpy.kernels import augment as kernels


# ------------------------------------------------------------------------------- Darknet's draws

def rand_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """Uniform in [low, high]; bounds given in the wrong order are swapped, as Darknet does."""
    if high < low:
        low, high = high, low
    return float(low + (high - low) * rng.random())


def rand_scale(rng: np.random.Generator, limit: float) -> float:
    """Darknet's rand_scale: u uniform between 1 and `limit`, returned as u or 1/u with probability ½."""
    factor = rand_uniform(rng, 1.0, limit)
    if rng.integers(2):
        return factor
    return 1.0 / factor


def rand_int(rng: np.random.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high] inclusive (bounds swapped if reversed)."""
    if high < low:
        low, high = high, low
    return int(rng.integers(low, high + 1))


# ------------------------------------------------------------------------------- geometry

@dataclass(frozen=True)
class CropParams:
    """One draw of random_augment_image's geometry (the arguments of rotate_crop_image)."""

    rad: float
    scale: float
    dx: float
    dy: float
    aspect: float


def draw_crop(rng: np.random.Generator, img_w: int, img_h: int, angle: float, aspect: float,
              low: int, high: int, w: int, h: int) -> CropParams:
    """Draw the geometry of Darknet's random_augment_image for an img_w×img_h source and a w×h crop.

    The shorter side (after the aspect stretch) is scaled to a random size r in [low, high]; the
    translation range lets the crop wander over the scaled image (or, when the crop is larger than the
    image, the image over the crop).
    """
    stretch = rand_scale(rng, aspect)
    target = rand_int(rng, low, high)
    # C: int m = (H < W·a) ? H : W·a  — the float branch is truncated.
    shorter = int(min(float(img_h), img_w * stretch))
    scale = target / max(shorter, 1)
    rad = rand_uniform(rng, -angle, angle) * 2.0 * math.pi / 360.0
    reach_x = (img_w * scale / stretch - w) / 2.0
    reach_y = (img_h * scale - h) / 2.0
    dx = rand_uniform(rng, -reach_x, reach_x)
    dy = rand_uniform(rng, -reach_y, reach_y)
    return CropParams(rad=rad, scale=scale, dx=dx, dy=dy, aspect=stretch)


def rotate_crop_image(img: np.ndarray, rad: float, scale: float, w: int, h: int, dx: float = 0.0,
                      dy: float = 0.0, aspect: float = 1.0) -> np.ndarray:
    """Darknet's rotate_crop_image: a w×h view of `img` rotated by `rad` about the image centre (W/2, H/2),
    magnified by `scale`, stretched horizontally by 1/aspect and shifted by (dx, dy) scaled pixels.

    Output pixel (x, y) reads source position
    (cos·u − sin·v + W/2, sin·u + cos·v + H/2), u = (x − w/2 + dx)·aspect/scale, v = (y − h/2 + dy)/scale,
    bilinear, zero outside. Pixel centres sit at integer coordinates, so the rotation centre W/2 is a
    pixel centre for even W and a pixel corner for odd W (e.g. a 90° turn of an n×n image is np.rot90
    moved down by one row).
    """
    src = as_planar(img)
    if w < 1 or h < 1:
        raise ValueError(f"crop size must be positive, got {w}x{h}")
    if scale <= 0 or not math.isfinite(scale):
        raise ValueError(f"scale must be positive and finite, got {scale}")
    dst = np.empty((src.shape[0], int(h), int(w)), np.float32)
    kernels.rotate_crop(src, float(rad), float(scale), float(dx), float(dy), float(aspect), dst)
    return dst


def random_augment_image(img: np.ndarray, rng: np.random.Generator, angle: float, aspect: float,
                         low: int, high: int, w: int, h: int | None = None) -> np.ndarray:
    """Darknet's random_augment_image: draw_crop then rotate_crop_image (h defaults to w: square crop)."""
    src = as_planar(img)
    h = w if h is None else h
    params = draw_crop(rng, src.shape[2], src.shape[1], angle, aspect, low, high, w, h)
    return rotate_crop_image(src, params.rad, params.scale, w, h, params.dx, params.dy, params.aspect)


def flip_image(img: np.ndarray) -> np.ndarray:
    """Left-right mirror (a new array)."""
    return np.ascontiguousarray(as_planar(img)[:, :, ::-1])


# ------------------------------------------------------------------------------- colour

def rgb_to_hsv(img: np.ndarray) -> np.ndarray:
    """Darknet's rgb_to_hsv on a (3, H, W) image: planes h in [0, 1), s, v. Grey pixels get h = 0
    (Darknet: NaN, never read because their s is 0)."""
    src = as_planar(img)
    if src.shape[0] != 3:
        raise ValueError(f"rgb_to_hsv needs 3 channels, got {src.shape[0]}")
    dst = np.empty_like(src)
    kernels.rgb_to_hsv(src, dst)
    return dst


def hsv_to_rgb(img: np.ndarray) -> np.ndarray:
    """Darknet's hsv_to_rgb on (3, H, W) HSV planes (no clamping)."""
    src = as_planar(img)
    if src.shape[0] != 3:
        raise ValueError(f"hsv_to_rgb needs 3 channels, got {src.shape[0]}")
    dst = np.empty_like(src)
    kernels.hsv_to_rgb(src, dst)
    return dst


def distort_image(img: np.ndarray, dhue: float, dsat: float, dexp: float) -> np.ndarray:
    """Darknet's distort_image on a copy: saturation ×dsat, value ×dexp, hue +dhue (wrapped once into
    [0, 1]), clamped to [0, 1]. 1- or 2-channel images only get the exposure scaling."""
    out = np.array(as_planar(img), dtype=np.float32, copy=True)
    kernels.distort_hsv(out, float(dhue), float(dsat), float(dexp))
    return out


def random_distort_image(img: np.ndarray, rng: np.random.Generator, hue: float, saturation: float,
                         exposure: float) -> np.ndarray:
    """Darknet's random_distort_image: dhue ~ U(−hue, hue), dsat = rand_scale(saturation),
    dexp = rand_scale(exposure), then distort_image."""
    dhue = rand_uniform(rng, -hue, hue)
    dsat = rand_scale(rng, saturation)
    dexp = rand_scale(rng, exposure)
    return distort_image(img, dhue, dsat, dexp)


# ------------------------------------------------------------------------------- the whole step

@dataclass(frozen=True)
class AugmentSettings:
    """The [net] keys that drive classifier augmentation, with Darknet's load-time fixes applied
    (aspect, saturation and exposure of 0 mean 1)."""

    width: int
    height: int
    angle: float = 0.0
    aspect: float = 1.0
    saturation: float = 1.0
    exposure: float = 1.0
    hue: float = 0.0
    flip: bool = True
    center: bool = False
    min_size: int = 0
    max_size: int = 0

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise ValueError(f"augmentation needs a positive output size, got {self.width}x{self.height}")
        for name in ("aspect", "saturation", "exposure"):
            if getattr(self, name) == 0:
                object.__setattr__(self, name, 1.0)
        if self.min_size <= 0:
            object.__setattr__(self, "min_size", self.width)
        if self.max_size <= 0:
            object.__setattr__(self, "max_size", self.min_size)

    @classmethod
    def from_net(cls, net: Any) -> AugmentSettings:
        """From a NetConfig: min/max crop = (int)(min_ratio·w), (int)(max_ratio·w) in float32 as Darknet
        stores them in its load args."""
        width = np.float32(net.width)
        return cls(
            width=int(net.width),
            height=int(net.height),
            angle=float(net.angle),
            aspect=float(net.aspect),
            saturation=float(net.saturation),
            exposure=float(net.exposure),
            hue=float(net.hue),
            flip=bool(getattr(net, "flip", True)),
            center=bool(net.center),
            min_size=int(np.float32(net.min_ratio) * width),
            max_size=int(np.float32(net.max_ratio) * width),
        )


def augment_image(img: np.ndarray, rng: np.random.Generator, settings: AugmentSettings) -> np.ndarray:
    """Spec §7.7 steps 3–5 for one loaded image: crop (centre or random), flip, distort. A grey (1, H, W)
    image gives the plane that the same draws give each of its three equal RGB planes (hue and saturation
    leave grey pixels grey)."""
    src = as_planar(img)
    if settings.center:
        out = center_crop_image(src, settings.width, settings.height)
    else:
        out = random_augment_image(src, rng, settings.angle, settings.aspect, settings.min_size,
                                   settings.max_size, settings.width, settings.height)
    if settings.flip and rng.integers(2):
        out = flip_image(out)
    return random_distort_image(out, rng, settings.hue, settings.saturation, settings.exposure)
