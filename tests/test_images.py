"""Image loading, Darknet's resize/letterbox/crop geometry and PNG saving (spec §7.3–7.6, §9.6).

Oracles: Darknet's own letterboxed input tensors, hand-computed values, and `reference_resize` below, a
slow element-by-element transcription of spec §7.4 in numpy float32 scalars.
"""
from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from darknetpy.errors import ImageError
from darknetpy.images import (center_crop_image, crop_image, letterbox_geometry, letterbox_image,
                              load_image, resize_image, resize_max, resize_min, save_png, to_uint8)

F32 = np.float32
SHARED = Path(__file__).resolve().parents[2] / "shared"


def shared_file(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing (CI is set)")
        pytest.skip(f"{path} is not available")
    return path


# ------------------------------------------------------------------------------------ oracles

def reference_resize(src: np.ndarray, w: int, h: int) -> np.ndarray:
    """Spec §7.4 one element at a time; every operation on numpy float32 scalars (no FMA, no vectors)."""
    channels, height, width = src.shape
    mid = np.zeros((channels, height, w), F32)
    out = np.zeros((channels, h, w), F32)
    w_scale = F32(width - 1) / F32(w - 1) if w > 1 else None
    h_scale = F32(height - 1) / F32(h - 1)
    for k in range(channels):
        for r in range(height):
            for x in range(w):
                if x == w - 1 or width == 1:
                    mid[k, r, x] = src[k, r, width - 1]
                else:
                    sx = F32(x) * w_scale
                    ix = int(sx)
                    dx = sx - F32(ix)
                    mid[k, r, x] = (F32(1) - dx) * src[k, r, ix] + dx * src[k, r, ix + 1]
    for k in range(channels):
        for y in range(h):
            sy = F32(y) * h_scale
            iy = int(sy)
            dy = sy - F32(iy)
            for x in range(w):
                value = (F32(1) - dy) * mid[k, iy, x]
                if not (y == h - 1 or height == 1):
                    value = value + dy * mid[k, iy + 1, x]
                out[k, y, x] = value
    return out


def reference_letterbox(src: np.ndarray, w: int, h: int) -> np.ndarray:
    _, height, width = src.shape
    if F32(w) / F32(width) < F32(h) / F32(height):
        new_w, new_h = w, (height * w) // width
    else:
        new_w, new_h = (width * h) // height, h
    canvas = np.full((src.shape[0], h, w), F32(0.5))
    dx, dy = (w - new_w) // 2, (h - new_h) // 2
    canvas[:, dy:dy + new_h, dx:dx + new_w] = reference_resize(src, new_w, new_h)
    return canvas


def random_image(rng: np.random.Generator, height: int, width: int, channels: int = 3) -> np.ndarray:
    return rng.random((channels, height, width), dtype=np.float32)


# ------------------------------------------------------------------------- darknet bit-exactness

@pytest.mark.parametrize("size", [256, 416])
def test_letterboxed_dog_png_equals_darknet_input_tensor(size):
    image = load_image(shared_file("darknet-oracle/forward/dog.png"))
    expected = np.load(shared_file(f"darknet-oracle/forward/inputs/dog_{size}x{size}.npy"))
    got = letterbox_image(image, size, size)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.array_equal(got, expected)


# ----------------------------------------------------------------------------------- resize

def test_resize_last_row_quirk_8_to_288():
    ones = np.ones((3, 8, 8), F32)
    out = resize_image(ones, 8, 288)
    # Spec §7.4: 287 * (7/287 in float32) rounds to just below 7, so the last row is (1 - dy) * 1.
    assert np.all(out[:, :-1, :] == 1.0)
    assert np.all(out[:, -1, :] == F32(2.0 ** -21))  # 4.7683716e-07


def test_resize_last_row_quirk_16_to_224_matches_reference():
    rng = np.random.default_rng(3)
    src = random_image(rng, 16, 3, channels=1)
    out = resize_image(src, 2, 224)
    assert np.array_equal(out, reference_resize(src, 2, 224))
    assert np.all(resize_image(np.ones((1, 16, 2), F32), 2, 224)[0, -1] < 1e-5)


def test_resize_2x2_to_3x3_by_hand():
    src = np.array([[[0, 1], [2, 3]]], F32)
    expected = np.array([[[0, 0.5, 1], [1, 1.5, 2], [2, 2.5, 3]]], F32)
    assert np.array_equal(resize_image(src, 3, 3), expected)


def test_resize_one_row_by_hand():
    assert np.array_equal(resize_image(np.array([[[0, 4]]], F32), 5, 1), np.array([[[0, 1, 2, 3, 4]]], F32))
    # Down-scaling keeps the first and the last column exactly.
    assert np.array_equal(resize_image(np.array([[[5, 6, 7, 8, 9]]], F32), 2, 1), np.array([[[5, 9]]], F32))


def test_resize_single_source_column_and_row_are_copied():
    column = np.array([[[1], [2], [3]]], F32)
    assert np.array_equal(resize_image(column, 4, 3), np.repeat(column, 4, axis=2))
    row = np.array([[[1, 2, 3]]], F32)
    assert np.array_equal(resize_image(row, 3, 4), np.repeat(row, 4, axis=1))


def test_resize_to_one_column_takes_last_column_and_one_row_takes_first_row():
    src = np.arange(12, dtype=F32).reshape(1, 3, 4)
    assert np.array_equal(resize_image(src, 1, 3), src[:, :, 3:4])
    assert np.array_equal(resize_image(src, 4, 1), src[:, 0:1, :])


@pytest.mark.parametrize("src_hw, dst_wh", [
    ((5, 7), (11, 3)), ((9, 4), (6, 13)), ((1, 5), (4, 3)), ((7, 1), (3, 9)), ((13, 11), (5, 7)),
    ((3, 3), (3, 3)), ((8, 2), (3, 288)), ((31, 17), (23, 29)),
    ((6, 9), (9, 6)), ((5, 1), (1, 5)),   # same size: the copy must be Darknet's result
])
def test_resize_matches_slow_reference_bit_for_bit(src_hw, dst_wh):
    rng = np.random.default_rng(sum(src_hw) * 100 + sum(dst_wh))
    src = random_image(rng, *src_hw)
    assert np.array_equal(resize_image(src, *dst_wh), reference_resize(src, *dst_wh))


def test_resize_rejects_non_float32_and_bad_sizes():
    with pytest.raises(TypeError):
        resize_image(np.zeros((3, 4, 4), np.float64), 2, 2)
    with pytest.raises(ValueError):
        resize_image(np.zeros((3, 4, 4), F32), 0, 2)


# ------------------------------------------------------------------------- letterbox and crops

@pytest.mark.parametrize("img_wh, net_wh, expected", [
    ((768, 576), (416, 416), (416, 312, 0, 52)),
    ((576, 768), (416, 416), (312, 416, 52, 0)),
    ((640, 480), (256, 256), (256, 192, 0, 32)),
    ((100, 100), (416, 416), (416, 416, 0, 0)),
    ((7, 3), (10, 10), (10, 4, 0, 3)),
    ((3, 7), (10, 9), (3, 9, 3, 0)),
])
def test_letterbox_geometry_by_hand(img_wh, net_wh, expected):
    assert letterbox_geometry(*img_wh, *net_wh) == expected


@pytest.mark.parametrize("src_hw, net_wh", [((5, 9), (8, 8)), ((9, 5), (8, 6)), ((6, 6), (7, 11)),
                                            ((3, 17), (13, 13)), ((6, 11), (11, 6)), ((8, 8), (8, 8))])
def test_letterbox_matches_reference(src_hw, net_wh):
    rng = np.random.default_rng(7 + sum(src_hw))
    src = random_image(rng, *src_hw)
    assert np.array_equal(letterbox_image(src, *net_wh), reference_letterbox(src, *net_wh))


def test_center_crop_takes_the_centred_square():
    rng = np.random.default_rng(11)
    wide = random_image(rng, 3, 6)  # side 3 at x offset (6 - 3) // 2 = 1
    assert np.array_equal(center_crop_image(wide, 3, 3), wide[:, :, 1:4])  # same size: exact copy
    tall = random_image(rng, 8, 5)  # side 5 at y offset 1
    assert np.array_equal(center_crop_image(tall, 7, 4), reference_resize(tall[:, 1:6, :].copy(), 7, 4))


def test_crop_image_clamps_to_the_border():
    src = np.arange(9, dtype=F32).reshape(1, 3, 3)
    expected = np.array([[[6, 6, 7], [6, 6, 7]]], F32)  # rows 2, 3→2; columns -1→0, 0, 1
    assert np.array_equal(crop_image(src, -1, 2, 3, 2), expected)
    inside = crop_image(src, 1, 0, 2, 2)
    assert np.array_equal(inside, src[:, 0:2, 1:3])


def test_resize_min_and_max_sizes():
    rng = np.random.default_rng(5)
    src = random_image(rng, 6, 9)  # H=6, W=9
    assert resize_min(src, 4).shape == (3, 4, 6)  # w = 9 * 4 // 6
    assert resize_max(src, 4).shape == (3, 2, 4)  # h = 6 * 4 // 9
    assert np.array_equal(resize_min(src, 4), reference_resize(src, 6, 4))
    assert resize_min(src, 6) is src
    assert resize_max(src, 9) is src
    square = random_image(rng, 4, 4)
    assert resize_min(square, 2).shape == (3, 2, 2)


# --------------------------------------------------------------------------- loading: sources

def test_load_png_path_values_are_bytes_over_255(tmp_path):
    pixels = np.array([[[0, 1, 2], [127, 128, 255]]], np.uint8)  # 1x2 RGB
    path = tmp_path / "tiny.png"
    Image.frombytes("RGB", (2, 1), pixels.tobytes()).save(path)
    got = load_image(str(path))
    assert got.dtype == np.float32 and got.shape == (3, 1, 2) and got.flags.c_contiguous
    assert np.array_equal(got, (pixels.transpose(2, 0, 1) / 255.0).astype(F32))
    assert np.array_equal(load_image(path), got)


def test_load_numpy_arrays():
    hwc = np.array([[[10, 20, 30], [40, 50, 60]]], np.uint8)
    assert np.array_equal(load_image(hwc), (hwc.transpose(2, 0, 1) / 255.0).astype(F32))
    rgba = np.concatenate([hwc, np.zeros((1, 2, 1), np.uint8)], axis=2)
    assert np.array_equal(load_image(rgba), load_image(hwc))
    grey = np.array([[0, 51]], np.uint8)
    assert np.array_equal(load_image(grey), np.full((3, 1, 2), [0, 0.2], F32))
    chw = np.random.default_rng(0).random((3, 2, 5), dtype=np.float32)
    loaded = load_image(chw)
    assert np.array_equal(loaded, chw) and not np.shares_memory(loaded, chw)
    assert np.array_equal(load_image(chw[:1]), np.repeat(chw[:1], 3, axis=0))


@pytest.mark.parametrize("array", [
    np.zeros((3, 5, 7), np.uint8),          # channel-first bytes
    np.zeros((5, 7, 3), np.float32),        # channel-last floats
    np.zeros((5, 7, 2), np.uint8),
    np.zeros((2, 5, 7), np.float32),
    np.zeros((3, 5, 7), np.float64),
    np.zeros((5, 7), bool),
    np.full((3, 2, 2), 1.5, np.float32),
    np.full((3, 2, 2), np.nan, np.float32),
    np.zeros((0, 4, 3), np.uint8),
    np.zeros((2, 2, 2, 3), np.uint8),
])
def test_load_rejects_ambiguous_or_invalid_arrays(array):
    with pytest.raises(ImageError) as info:
        load_image(array)
    assert str(array.shape) in str(info.value)


def test_load_pil_image_opened_lazily(tmp_path):
    path = tmp_path / "lazy.png"
    Image.new("RGB", (3, 2), (255, 0, 51)).save(path)
    with Image.open(path) as image:
        got = load_image(image)
    assert np.array_equal(got[:, 0, 0], np.array([1, 0, 0.2], F32))


def test_exif_orientation_is_ignored(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.new("RGB", (4, 2), (200, 100, 50)).save(path, exif=exif)
    assert load_image(path).shape == (3, 2, 4)


# ------------------------------------------------------------------------ loading: mode rules

def grey_expected(values) -> np.ndarray:
    row = np.asarray(values, np.float64)[None, :] / 255.0
    return np.repeat(row[None], 3, axis=0).astype(F32)


def test_mode_L(tmp_path):
    path = tmp_path / "l.png"
    Image.frombytes("L", (3, 1), bytes([0, 77, 255])).save(path)
    assert np.array_equal(load_image(path), grey_expected([0, 77, 255]))


def test_mode_LA_drops_alpha(tmp_path):
    path = tmp_path / "la.png"
    Image.frombytes("LA", (3, 1), bytes([10, 0, 20, 128, 30, 255])).save(path)
    with Image.open(path) as image:
        assert image.mode == "LA"
    assert np.array_equal(load_image(path), grey_expected([10, 20, 30]))


def test_mode_RGBA_drops_alpha_without_compositing(tmp_path):
    path = tmp_path / "rgba.png"
    Image.frombytes("RGBA", (2, 1), bytes([200, 100, 50, 0, 1, 2, 3, 77])).save(path)
    expected = np.array([[[200, 1]], [[100, 2]], [[50, 3]]], np.float64) / 255.0
    assert np.array_equal(load_image(path), expected.astype(F32))


def test_mode_P_uses_palette_colours_and_ignores_transparency(tmp_path):
    path = tmp_path / "p.png"
    image = Image.new("P", (3, 1))
    image.putpalette([9, 8, 7, 250, 128, 0, 1, 2, 3])
    image.putdata([2, 0, 1])
    image.save(path, transparency=0)
    with Image.open(path) as reopened:
        assert reopened.mode == "P"
    expected = np.array([[[1, 9, 250]], [[2, 8, 128]], [[3, 7, 0]]], np.float64) / 255.0
    assert np.array_equal(load_image(path), expected.astype(F32))


def test_mode_I16_keeps_the_high_byte(tmp_path):
    path = tmp_path / "grey16.png"
    values = np.array([0, 255, 256, 0x1234, 0x80FF, 65535], "<u2")
    Image.frombytes("I;16", (6, 1), values.tobytes()).save(path)
    with Image.open(path) as image:
        assert image.mode.startswith("I;16")
    assert np.array_equal(load_image(path), grey_expected([0, 0, 1, 0x12, 0x80, 255]))


def test_mode_I_is_a_clipped_16_bit_range():
    values = np.array([-5, 0, 300, 65535, 70000], np.int32)
    image = Image.frombytes("I", (5, 1), values.tobytes())
    assert np.array_equal(load_image(image), grey_expected([0, 0, 1, 255, 255]))


def test_mode_F_is_rounded_on_the_0_255_scale():
    values = np.array([-3.0, 0.4, 0.6, 100.2, 300.0], np.float32)
    image = Image.frombytes("F", (5, 1), values.tobytes())
    assert np.array_equal(load_image(image), grey_expected([0, 0, 1, 100, 255]))


def test_mode_CMYK(tmp_path):
    path = tmp_path / "cmyk.tif"
    pixels = [(0, 0, 0, 0), (255, 0, 0, 0), (51, 102, 0, 0), (170, 40, 0, 170), (0, 0, 0, 255)]
    Image.frombytes("CMYK", (5, 1), bytes(v for p in pixels for v in p)).save(path)
    with Image.open(path) as image:
        assert image.mode == "CMYK"
    # colour = (255 - ink)(255 - black)/255, rounded (never a tie: 255 is odd)
    expected = np.array([[[round((255 - p[k]) * (255 - p[3]) / 255) for p in pixels]] for k in range(3)],
                        np.float64) / 255.0
    assert np.array_equal(load_image(path), expected.astype(F32))


def test_mode_1_bit(tmp_path):
    path = tmp_path / "bits.png"
    image = Image.new("1", (3, 1))
    image.putdata([1, 0, 1])
    image.save(path)
    with Image.open(path) as reopened:
        assert reopened.mode == "1"
    assert np.array_equal(load_image(path), grey_expected([255, 0, 255]))


# ----------------------------------------------------------------------------- loading: errors

def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IEND", b"")


def encoded(fmt: str) -> bytes:
    stream = io.BytesIO()
    noise = np.random.default_rng(1).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    Image.fromarray(noise).save(stream, fmt)
    return stream.getvalue()


BAD_FILES = {
    "truncated.png": lambda: encoded("PNG")[: len(encoded("PNG")) // 2],
    "truncated.jpg": lambda: encoded("JPEG")[: len(encoded("JPEG")) // 2],
    "empty.png": lambda: b"",
    "text.jpg": lambda: b"this is not a jpeg\n",
    "no-pixel-data.png": lambda: png_header_only(4, 4),
    "zero-width.png": lambda: png_header_only(0, 5),
    "bomb-warning.png": lambda: png_header_only(10_000, 10_000),   # above Pillow's limit, below 2x
    "bomb-error.png": lambda: png_header_only(30_000, 30_000),     # above 2x the limit
}


def assert_one_line_image_error(source, path) -> ImageError:
    with pytest.raises(ImageError) as info:
        load_image(source)
    text = str(info.value)
    assert str(path) in text and "\n" not in text
    return info.value


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_raise_image_error_with_path(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(BAD_FILES[name]())
    error = assert_one_line_image_error(path, path)
    if name.startswith("bomb"):
        assert "MAX_IMAGE_PIXELS" in str(error)


def test_missing_file_and_directory(tmp_path):
    assert "no such file" in str(assert_one_line_image_error(tmp_path / "nope.png", tmp_path / "nope.png"))
    assert "directory" in str(assert_one_line_image_error(str(tmp_path), tmp_path))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
    path = tmp_path / "secret.png"
    Image.new("RGB", (2, 2)).save(path)
    path.chmod(0)
    try:
        assert "permission" in str(assert_one_line_image_error(path, path))
    finally:
        path.chmod(0o644)


# --------------------------------------------------------------------------------------- saving

def test_to_uint8_truncates_after_clamping():
    values = np.array([-1.0, 0.0, 0.00393, 0.5, 0.999, 1.0, 2.0, np.nan], F32)
    # 255 * v: -, 0, 1.002, 127.5, 254.745, 255, -, - → truncated toward zero
    assert to_uint8(values).tolist() == [0, 0, 1, 127, 254, 255, 255, 0]


def test_save_png_round_trip_and_atomic_replace(tmp_path):
    chw = np.zeros((3, 2, 3), F32)
    chw[0] = 0.5  # 127.5 → 127
    chw[1, 1, 2] = 1.0
    chw[2, 0, 0] = 0.999  # 254.745 → 254
    path = tmp_path / "out.png"
    path.write_bytes(b"old contents")
    save_png(chw, path)
    with Image.open(path) as image:
        assert image.mode == "RGB" and image.size == (3, 2)
        pixels = np.asarray(image)
    expected = np.zeros((2, 3, 3), np.uint8)
    expected[:, :, 0] = 127
    expected[1, 2, 1] = 255
    expected[0, 0, 2] = 254
    assert np.array_equal(pixels, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]  # no temporary left behind

    hwc = np.array([[[1, 2, 3], [4, 5, 6]]], np.uint8)
    save_png(hwc, str(path))
    with Image.open(path) as image:
        assert np.array_equal(np.asarray(image), hwc)


def test_save_png_into_missing_directory_raises_image_error(tmp_path):
    target = tmp_path / "missing-dir" / "out.png"
    with pytest.raises(ImageError) as info:
        save_png(np.zeros((3, 2, 2), F32), target)
    assert str(target) in str(info.value)
