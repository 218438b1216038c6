"""Image I/O and Darknet's preprocessing geometry (spec §7.3–7.6).

Images are float32 arrays of shape (3, H, W): planar RGB, each value a byte divided by 255, exactly what
Darknet's `load_image_color` produces. Decoding uses Pillow, which matches Darknet's stb_image bit for bit
on PNG (and other lossless formats) but not on JPEG: stb's own IDCT and chroma upsampling differ from
libjpeg's by up to a few levels per pixel.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from darknetpy.errors import ImageError
from darknetpy.fileio import atomic_writer
from darknetpy.kernels import resize as kernels

ImageSource = str | os.PathLike | Image.Image | np.ndarray

_ARRAY_ORIGIN = "<array>"
_PIL_ORIGIN = "<PIL.Image>"


# ----------------------------------------------------------------------------------------- loading

def load_image(source: ImageSource) -> np.ndarray:
    """Load an image as float32 (3, H, W) RGB in [0, 1], values = byte / 255, like Darknet's stb loader.

    `source` may be:
    * a path (str or os.PathLike) to any file Pillow can decode;
    * a PIL.Image in any mode (see below);
    * a numpy array, whose dtype decides its layout:
      - uint8 arrays are pixel bytes in HWC order: (H, W) grey, (H, W, 1) grey, (H, W, 3) RGB or
        (H, W, 4) RGBA (alpha dropped);
      - float32 arrays are already-converted images in CHW order: (3, H, W) RGB or (1, H, W) grey, every
        value in [0, 1]; they are copied, not quantised. (H, W) float32 is grey.
      A shape that only fits the other layout (uint8 (3, H, W), float32 (H, W, 3)) and any other dtype
      is rejected rather than guessed.

    Mode conversion (Pillow modes → RGB bytes), chosen to match stb_image where stb defines it:
    * L, 1 (0 or 255), P/PA (palette colours), YCbCr, CMYK, HSV, LAB: Pillow's RGB conversion; grey is
      replicated into the three channels.
    * RGBA, RGBX, LA, PA: the alpha channel is dropped without compositing, as stb does with 3 channels.
    * I;16 (any byte order): the high byte, value >> 8, which is stb's 16→8 bit reduction (65535 → 255;
      no clipping at 255 as Pillow's own I;16→L conversion would do).
    * I (32-bit int): taken as a 16-bit range, clipped to [0, 65535], then >> 8 like I;16.
    * F (32-bit float): on Pillow's 0–255 scale, rounded and clipped to a byte like Pillow's F→L.
    EXIF orientation is ignored, as stb ignores it. For multi-frame files the first frame is used.

    Errors raise ImageError whose str() is "<path>: <reason>" on one line.
    """
    return rgb_planes(load_planes(source))


def load_planes(source: ImageSource) -> np.ndarray:
    """load_image without the grey→RGB replication: float32 (1, H, W) for a grey source (modes L, LA, 1,
    I;16, I, F; grey arrays), (3, H, W) otherwise. A grey network then resizes one plane instead of three
    and needs no luma (the luma of three equal planes is the plane itself, since the weights sum to 256)."""
    if isinstance(source, np.ndarray):
        return _array_to_planes(source)
    if isinstance(source, Image.Image):
        origin = getattr(source, "filename", "") or _PIL_ORIGIN
        with _pillow_errors_as_image_error(origin):
            source.load()
        _check_size(source, origin)
        return _bytes_to_planes(_pixel_bytes(source, origin))
    if isinstance(source, (str, os.PathLike)):
        return _load_path(Path(source))
    raise TypeError(f"load_image expects a path, a PIL.Image or a numpy array, not {type(source).__name__}")


def rgb_planes(img: np.ndarray) -> np.ndarray:
    """A (1, H, W) grey image as (3, H, W) RGB, each plane a copy (stb's grey→RGB); RGB returned as is."""
    return np.repeat(img, 3, axis=0) if img.shape[0] == 1 else img


def _load_path(path: Path) -> np.ndarray:
    origin = str(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageError("no such file", path=origin) from None
    except OSError as exc:
        raise ImageError(f"cannot access: {_one_line(exc.strerror or exc)}", path=origin) from None
    if path.is_dir():
        raise ImageError("is a directory, not an image", path=origin)
    if size == 0:
        raise ImageError("empty file (0 bytes)", path=origin)
    with _pillow_errors_as_image_error(origin):
        with Image.open(path) as image:
            _check_size(image, origin)
            image.load()  # decode now: truncated or corrupt data only shows up while decoding
            _check_size(image, origin)
            pixels = _pixel_bytes(image, origin)
    return _bytes_to_planes(pixels)


@contextlib.contextmanager
def _pillow_errors_as_image_error(origin: str) -> Iterator[None]:
    """Any failure inside Pillow becomes one ImageError line naming `origin`.

    Pillow's decoders report bad input with a zoo of exception types (OSError, SyntaxError, ValueError,
    EOFError, struct.error, IndexError, ...), so anything raised while decoding a file counts as bad input.
    Pillow's decompression-bomb warning is raised as an error here (the filter change is process-wide
    while it lasts, so _check_size repeats the test in case another thread changed the filters).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except ImageError:
            raise
        except Exception as exc:
            raise ImageError(_describe_pillow_failure(exc), path=origin) from None


def _describe_pillow_failure(exc: Exception) -> str:
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return (f"refused, more pixels than Pillow's decompression-bomb limit "
                f"PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS} ({_one_line(exc)})")
    if isinstance(exc, UnidentifiedImageError):
        return "not an image (Pillow cannot identify the file format)"
    if isinstance(exc, PermissionError):
        return "cannot read: permission denied"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not an image"
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, MemoryError):
        return "not enough memory to decode"
    return f"corrupt or truncated image data ({type(exc).__name__}: {_one_line(exc)})"


def _check_size(image: Image.Image, origin: str) -> None:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError(f"image has zero size ({width}x{height})", path=origin)
    # Pillow only warns between its limit and twice its limit; we refuse from the limit itself, which
    # also holds if another thread changed the warning filters while we were decoding.
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise ImageError(f"refused, {width}x{height} = {width * height} pixels is more than Pillow's "
                         f"decompression-bomb limit PIL.Image.MAX_IMAGE_PIXELS = {limit}", path=origin)


def _pixel_bytes(image: Image.Image, origin: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB, or (H, W, 1) for grey modes, from a loaded PIL image, following the mode
    rules of load_image."""
    mode = image.mode
    if mode in ("RGB", "RGBA", "RGBX"):
        return np.asarray(image)[:, :, :3]
    if mode == "L":
        return _grey_pixels(np.asarray(image))
    if mode == "LA":
        return _grey_pixels(np.asarray(image)[:, :, 0])
    if mode == "1":
        return _grey_pixels(np.asarray(image).astype(np.uint8) * np.uint8(255))
    if mode.startswith("I;16"):
        return _grey_pixels((np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8))
    if mode == "I":
        wide = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        return _grey_pixels((wide >> 8).astype(np.uint8))
    if mode == "F":
        values = np.nan_to_num(np.asarray(image).astype(np.float64), nan=0.0)
        return _grey_pixels(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    try:
        with warnings.catch_warnings():
            # Palette transparency is irrelevant here: alpha is dropped anyway.
            warnings.simplefilter("ignore", UserWarning)
            converted = image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageError(f"unsupported image mode {mode} ({_one_line(exc)})", path=origin) from None
    return np.asarray(converted)


def _grey_pixels(grey: np.ndarray) -> np.ndarray:
    return grey[:, :, None]


def _bytes_to_planes(pixels: np.ndarray) -> np.ndarray:
    # Darknet divides in double and rounds to float; for all 256 byte values that equals float32 division.
    chw = np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)
    chw /= np.float32(255.0)
    return chw


def _array_to_planes(array: np.ndarray) -> np.ndarray:
    shape = array.shape

    def reject(reason: str) -> ImageError:
        return ImageError(f"array of shape {shape} and dtype {array.dtype}: {reason}", path=_ARRAY_ORIGIN)

    if array.size == 0:
        raise reject("image has zero size")
    if array.dtype == np.uint8:
        if array.ndim == 2:
            return _bytes_to_planes(_grey_pixels(array))
        if array.ndim == 3 and shape[2] in (1, 3, 4):
            return _bytes_to_planes(array[:, :, :1] if shape[2] == 1 else array[:, :, :3])
        if array.ndim == 3 and shape[0] in (1, 3, 4):
            raise reject("uint8 arrays must be HWC (H, W, 3); this looks channel-first, transpose it")
        raise reject("expected uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    if array.dtype == np.float32:
        if array.ndim == 2:
            planes = array[None, :, :]
        elif array.ndim == 3 and shape[0] in (1, 3):
            planes = array
        elif array.ndim == 3 and shape[2] in (1, 3, 4):
            raise reject("float32 arrays must be CHW (3, H, W); this looks channel-last, transpose it")
        else:
            raise reject("expected float32 (3, H, W), (1, H, W) or (H, W)")
        if not np.all((planes >= 0) & (planes <= 1)):  # also rejects NaN
            raise reject("float32 values must lie in [0, 1]")
        return np.array(planes, dtype=np.float32, order="C", copy=True)
    raise reject("only uint8 (HWC bytes) or float32 (CHW in [0, 1]) arrays are accepted")


def _one_line(value: object) -> str:
    return " ".join(str(value).split())


# ------------------------------------------------------------------------------------- geometry

def as_planar(img: np.ndarray) -> np.ndarray:
    """`img` as a C-contiguous float32 (C, H, W) array; TypeError/ValueError for anything else (a
    programming error: user images go through load_image, which raises ImageError)."""
    if not isinstance(img, np.ndarray) or img.dtype != np.float32 or img.ndim != 3:
        raise TypeError("expected a float32 (C, H, W) image array, got "
                        + (f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__))
    if img.shape[1] < 1 or img.shape[2] < 1:
        raise ValueError(f"image has zero size: shape {img.shape}")
    return np.ascontiguousarray(img)


def _check_size_args(**sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def resize_image(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """Darknet resize_image: bilinear "align corners" to (C, h, w), float32 as in spec §7.4.

    Reproduces the near-black last row for the (H, h) pairs where float32 rounding puts the last row's
    source position just below H - 1. h == 1 (undefined behaviour in Darknet) reads source row 0.
    """
    src = as_planar(img)
    _check_size_args(w=w, h=h)
    if src.shape[1:] == (int(h), int(w)):
        # Darknet's weights are then exactly 1 and 0 (source position = destination position): a copy is
        # the same pixels, without the two interpolation passes (a network-sized image, e.g. a 320x320 scene)
        return np.array(src, dtype=np.float32, copy=True)
    dst = np.empty((src.shape[0], int(h), int(w)), np.float32)
    kernels.resize_image(src, dst)
    return dst


def letterbox_geometry(img_w: int, img_h: int, net_w: int, net_h: int) -> tuple[int, int, int, int]:
    """(new_w, new_h, dx, dy) of Darknet's letterbox: the resized image size and its int paste offset.

    Box correction reuses new_w/new_h but, like Darknet, offsets by the fractional (net - new) / 2.
    """
    _check_size_args(img_w=img_w, img_h=img_h, net_w=net_w, net_h=net_h)
    new_w, new_h, dx, dy = kernels.letterbox_geometry(int(img_w), int(img_h), int(net_w), int(net_h))
    return int(new_w), int(new_h), int(dx), int(dy)


def letterbox_image(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """Darknet letterbox_image: aspect-preserving resize onto a (C, h, w) canvas of 0.5 (spec §7.5)."""
    src = as_planar(img)
    _check_size_args(w=w, h=h)
    if src.shape[1:] == (int(h), int(w)):
        # a network-sized image fills the canvas unscaled (see resize_image): the copy is exact
        return np.array(src, dtype=np.float32, copy=True)
    return kernels.letterbox(src, int(w), int(h))


def center_crop_image(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """Darknet center_crop_image: the centred min(W, H) square resized to (C, h, w) (classifier valid)."""
    src = as_planar(img)
    _check_size_args(w=w, h=h)
    dst = np.empty((src.shape[0], int(h), int(w)), np.float32)
    kernels.center_crop_image(src, dst)
    return dst


def crop_image(img: np.ndarray, dx: int, dy: int, w: int, h: int) -> np.ndarray:
    """Darknet crop_image: the w×h window at (dx, dy); coordinates outside the image repeat the edge."""
    src = as_planar(img)
    _check_size_args(w=w, h=h)
    dst = np.empty((src.shape[0], int(h), int(w)), np.float32)
    kernels.crop_image(src, int(dx), int(dy), dst)
    return dst


def resize_min(img: np.ndarray, m: int) -> np.ndarray:
    """Darknet resize_min: shorter side → m, the other scaled with int arithmetic (a square counts as
    wider). Returns `img` itself when the size does not change, as Darknet does."""
    src = as_planar(img)
    _check_size_args(m=m)
    height, width = src.shape[1:]
    if width < height:
        new_w, new_h = int(m), (height * int(m)) // width
    else:
        new_w, new_h = (width * int(m)) // height, int(m)
    if (new_w, new_h) == (width, height):
        return img
    return resize_image(src, new_w, new_h)


def resize_max(img: np.ndarray, m: int) -> np.ndarray:
    """Darknet resize_max: longer side → m (a square counts as taller). Returns `img` when unchanged."""
    src = as_planar(img)
    _check_size_args(m=m)
    height, width = src.shape[1:]
    if width > height:
        new_w, new_h = int(m), (height * int(m)) // width
    else:
        new_w, new_h = (width * int(m)) // height, int(m)
    if (new_w, new_h) == (width, height):
        return img
    return resize_image(src, new_w, new_h)


# -------------------------------------------------------------------------------- network input

LETTERBOX = "letterbox"      # aspect kept, grey 0.5 borders: classifier predict, pjreddie's detector test
RESIZE = "resize"            # stretched: AlexeyAB's detector and OpenCV (cfg letter_box=0)
CENTER_CROP = "center_crop"  # centred square: classifier valid
FITS = (LETTERBOX, RESIZE, CENTER_CROP)

#: stb_image's integer luma weights (stbi__compute_y: (77 r + 150 g + 29 b) >> 8), which is what Darknet
#: gets when it asks stb for one channel. They sum to 256, so a grey image keeps its values exactly.
LUMA_WEIGHTS = (77, 150, 29)


def to_channels(img: np.ndarray, channels: int) -> np.ndarray:
    """A (3, H, W) RGB or (1, H, W) grey image in a network's channel count: the same count → unchanged,
    grey → 3 equal planes (stb's grey→RGB), RGB → 1: stb's luma (77 R + 150 G + 29 B) / 256, computed in
    double (exact) and rounded once to float32, without stb's truncation to a byte (the pixels are no
    longer bytes after resizing or augmentation)."""
    if channels == img.shape[0]:
        return img
    if channels == 3 and img.shape[0] == 1:
        return rgb_planes(img)
    if channels == 1 and img.shape[0] == 3:
        r, g, b = (plane.astype(np.float64) for plane in img)
        wr, wg, wb = LUMA_WEIGHTS
        return ((wr * r + wg * g + wb * b) / sum(LUMA_WEIGHTS)).astype(np.float32)[None]
    raise ValueError(f"images can feed networks with 1 or 3 channels, not {channels} "
                     f"(from a {img.shape[0]}-channel image)")


def fit_image(img: np.ndarray, width: int, height: int, fit: str) -> np.ndarray:
    """One of Darknet's preprocessing geometries (FITS) of a loaded image to width x height."""
    if fit == LETTERBOX:
        return letterbox_image(img, width, height)
    if fit == RESIZE:
        return resize_image(img, width, height)
    if fit == CENTER_CROP:
        return center_crop_image(img, width, height)
    raise ValueError(f"fit must be one of {', '.join(FITS)} or a function, not {fit!r}")


@dataclass(frozen=True)
class NetworkInput:
    """What a network receives for one image, and the size of the image it came from (for boxes)."""
    pixels: np.ndarray  # float32 (channels, height, width)
    image_width: int
    image_height: int


def network_input(source: ImageSource, width: int, height: int, channels: int,
                  fit: str | Callable[[np.ndarray], np.ndarray]) -> NetworkInput:
    """The one path from any image source to a network's input, used by predict, valid, train and detect:
    load (load_planes), bring to width x height (`fit`: LETTERBOX, RESIZE, CENTER_CROP, or a function of
    the planes, e.g. training augmentation), then convert to the network's channels (to_channels).
    Every command gives a network the pixels of the RGB path: a colour image is fitted in RGB and then
    turned to luma; a grey one is fitted as its single plane, which is what the RGB path yields for it
    because every geometry and augmentation works plane by plane and colour changes leave grey grey. A
    `fit` function must keep that rule for a one-plane image."""
    if channels not in (1, 3):
        raise ValueError(f"images can feed networks with 1 or 3 channels, not {channels}")
    planes = load_planes(source)
    image_height, image_width = planes.shape[1:]
    sized = fit(planes) if callable(fit) else fit_image(planes, width, height, fit)
    return NetworkInput(to_channels(sized, channels), int(image_width), int(image_height))


# ----------------------------------------------------------------------------------------- saving

def to_uint8(img: np.ndarray) -> np.ndarray:
    """Float image → bytes, same shape: (uint8)(255 * v) truncated toward zero, computed in float32.

    Darknet casts without clamping (out-of-range values wrap or are undefined in C); we clamp to [0, 1]
    first and map NaN to 0, which agrees with Darknet on every in-range value.
    """
    values = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0)
    values = np.clip(values, np.float32(0.0), np.float32(1.0))
    return (values * np.float32(255.0)).astype(np.uint8)


def save_png(img: np.ndarray, path: str | os.PathLike) -> None:
    """Write an image as PNG, atomically (temporary file in the same directory, then os.replace).

    Layout follows the dtype as in load_image: float arrays are CHW (3 or 1 channels, or HW) and go
    through to_uint8; uint8 arrays are HWC (H, W), (H, W, 1), (H, W, 3) or (H, W, 4).
    """
    pixels = _png_pixels(np.asarray(img))
    try:
        with atomic_writer(path, fsync=False) as stream:
            Image.fromarray(pixels).save(stream, format="PNG")
    except OSError as exc:
        raise ImageError(f"cannot write PNG: {_one_line(exc.strerror or exc)}", path=str(path)) from None


def _png_pixels(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4)):
            return np.ascontiguousarray(array)
        raise ValueError(f"uint8 images must be HWC (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        if array.ndim == 2:
            return to_uint8(array)
        if array.ndim == 3 and array.shape[0] in (1, 3):
            hwc = to_uint8(array).transpose(1, 2, 0)
            return np.ascontiguousarray(hwc[:, :, 0] if array.shape[0] == 1 else hwc)
        raise ValueError(f"float images must be CHW (3, H, W), (1, H, W) or (H, W), got {array.shape}")
    raise TypeError(f"save_png expects uint8 HWC or float CHW arrays, not {array.dtype}")
