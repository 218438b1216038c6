"""Classifier augmentation (spec §7.7) against hand-computed cases, numpy slicing, np.rot90, colorsys and
a slow per-pixel reference of the spec's rotate-crop formula."""
from __future__ import annotations

import colorsys
import math

import numpy as np
import pytest

from darknetpy.augment import (AugmentSettings, augment_image, distort_image, draw_crop, flip_image,
                               hsv_to_rgb, rand_scale, random_augment_image, random_distort_image,
                               rgb_to_hsv, rotate_crop_image)
from darknetpy.config import NetConfig, SectionReader, parse_cfg_text


def random_image(channels: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((channels, height, width), dtype=np.float32)


def slow_rotate_crop(src, rad, scale, w, h, dx, dy, aspect):
    """The spec's formula, one pixel at a time, in float64 with zero outside the image."""
    channels, height, width = src.shape
    out = np.zeros((channels, h, w))
    for y in range(h):
        for x in range(w):
            u = (x - w / 2) / scale * aspect + dx / scale * aspect
            v = (y - h / 2) / scale + dy / scale
            sx = math.cos(rad) * u - math.sin(rad) * v + width / 2
            sy = math.sin(rad) * u + math.cos(rad) * v + height / 2
            ix, iy = math.floor(sx), math.floor(sy)
            fx, fy = sx - ix, sy - iy
            for c in range(channels):
                total = 0.0
                for ox, oy, weight in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                                       (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
                    px, py = ix + ox, iy + oy
                    if 0 <= px < width and 0 <= py < height:
                        total += weight * src[c, py, px]
                out[c, y, x] = total
    return out


def net_from_text(text: str) -> NetConfig:
    document = parse_cfg_text(text)
    return NetConfig.from_section(SectionReader(document.sections[0], "<test>"))


# ----------------------------------------------------------------------------------- geometry

def test_identity_settings_reproduce_the_crop_exactly():
    src = random_image(3, 10, 12)
    # Source x = x − 6/2 + dx + 12/2 = x + 4; source y = y − 4/2 + dy + 10/2 = y + 1.
    out = rotate_crop_image(src, 0.0, 1.0, 6, 4, dx=1.0, dy=-2.0, aspect=1.0)
    np.testing.assert_array_equal(out, src[:, 1:5, 4:10])


def test_random_augment_with_no_freedom_is_the_identity():
    src = random_image(3, 16, 16, seed=1)
    rng = np.random.default_rng(5)
    out = random_augment_image(src, rng, angle=0, aspect=1, low=16, high=16, w=16)
    np.testing.assert_array_equal(out, src)


def test_pixels_outside_the_image_are_zero():
    src = np.ones((1, 4, 4), np.float32)
    out = rotate_crop_image(src, 0.0, 1.0, 4, 4, dx=2.0, dy=0.0)
    np.testing.assert_array_equal(out[0, :, :2], np.ones((4, 2)))
    np.testing.assert_array_equal(out[0, :, 2:], np.zeros((4, 2)))


def test_half_pixel_shift_averages_neighbours():
    src = random_image(2, 3, 5, seed=2)
    out = rotate_crop_image(src, 0.0, 1.0, 4, 3, dx=0.5, dy=0.0)
    # Source x = x − 2 + 0.5 + 2.5 = x + 1: exactly on pixel x + 1 (w/2 and W/2 differ by a half).
    np.testing.assert_array_equal(out, src[:, :, 1:5])
    out = rotate_crop_image(src, 0.0, 1.0, 4, 3, dx=0.0, dy=0.0)
    expected = 0.5 * (src[:, :, 0:4] + src[:, :, 1:5])
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("size", [4, 5])
def test_rotation_by_90_degrees_is_rot90_moved_down_one_row(size):
    src = random_image(3, size, size, seed=3)
    out = rotate_crop_image(src, math.pi / 2, 1.0, size, size)
    # Output (x, y) reads source (W/2 − (y − W/2), x) = (size − y, x): np.rot90's counter-clockwise turn
    # of the displayed image, one row lower because the centre W/2 is not (W − 1)/2; row 0 reads
    # column `size`, outside the image.
    turned = np.rot90(src, k=1, axes=(1, 2))
    np.testing.assert_allclose(out[:, 1:, :], turned[:, :-1, :], rtol=0, atol=1e-6)
    np.testing.assert_allclose(out[:, 0, :], 0.0, atol=1e-6)


@pytest.mark.parametrize("case", range(6))
def test_rotate_crop_matches_slow_reference(case):
    rng = np.random.default_rng(100 + case)
    src = random_image(3, int(rng.integers(5, 12)), int(rng.integers(5, 12)), seed=case)
    rad = rng.uniform(-1.0, 1.0)
    scale = rng.uniform(0.5, 2.0)
    aspect = rng.uniform(0.7, 1.4)
    dx, dy = rng.uniform(-3, 3, size=2)
    w, h = int(rng.integers(3, 10)), int(rng.integers(3, 10))
    out = rotate_crop_image(src, rad, scale, w, h, dx, dy, aspect)
    expected = slow_rotate_crop(src.astype(np.float64), rad, scale, w, h, dx, dy, aspect)
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-5)


def test_flip_is_a_left_right_mirror():
    src = random_image(3, 4, 7, seed=4)
    out = flip_image(src)
    for x in range(7):
        np.testing.assert_array_equal(out[:, :, x], src[:, :, 6 - x])


def test_draw_crop_stays_in_darknets_ranges():
    rng = np.random.default_rng(7)
    for _ in range(300):
        p = draw_crop(rng, img_w=40, img_h=30, angle=10, aspect=1.5, low=20, high=28, w=24, h=24)
        assert abs(p.rad) <= math.radians(10) + 1e-12
        assert 1 / 1.5 - 1e-9 <= p.aspect <= 1.5 + 1e-9
        shorter = int(min(30, 40 * p.aspect))
        target = p.scale * shorter
        assert abs(target - round(target)) < 1e-9 and 20 <= round(target) <= 28
        reach_x = abs((40 * p.scale / p.aspect - 24) / 2)
        reach_y = abs((30 * p.scale - 24) / 2)
        assert abs(p.dx) <= reach_x + 1e-9 and abs(p.dy) <= reach_y + 1e-9


def test_rand_scale_is_u_or_its_inverse():
    rng = np.random.default_rng(8)
    values = np.array([rand_scale(rng, 2.0) for _ in range(2000)])
    assert np.all(((values >= 1) & (values <= 2)) | ((values >= 0.5) & (values <= 1)))
    assert 0.4 < np.mean(values >= 1) < 0.6


# ----------------------------------------------------------------------------------- colour

def test_hsv_matches_colorsys_and_round_trips():
    src = random_image(3, 6, 7, seed=9)
    src[:, 0, 0] = 0.25  # grey pixel: hue is 0 (Darknet: NaN, never read)
    src[:, 0, 1] = 0.0  # black
    hsv = rgb_to_hsv(src)
    for y in range(6):
        for x in range(7):
            expected = colorsys.rgb_to_hsv(*map(float, src[:, y, x]))
            np.testing.assert_allclose(hsv[:, y, x], expected, rtol=0, atol=1e-6)
    back = hsv_to_rgb(hsv)
    np.testing.assert_allclose(back, src, rtol=0, atol=1e-6)
    for y in range(6):
        for x in range(7):
            np.testing.assert_allclose(back[:, y, x], colorsys.hsv_to_rgb(*map(float, hsv[:, y, x])),
                                       rtol=0, atol=1e-6)


def test_neutral_distortion_is_a_round_trip():
    src = random_image(3, 5, 5, seed=10)
    np.testing.assert_allclose(distort_image(src, 0.0, 1.0, 1.0), src, rtol=0, atol=1e-6)
    rng = np.random.default_rng(0)
    np.testing.assert_allclose(random_distort_image(src, rng, 0.0, 1.0, 1.0), src, rtol=0, atol=1e-6)


def pixel(r: float, g: float, b: float) -> np.ndarray:
    return np.array([r, g, b], np.float32).reshape(3, 1, 1)


def test_hue_shift_of_pure_colours_by_hand():
    # Red has hue 0; +1/3 turns it green, −1/3 wraps to 2/3, blue.
    np.testing.assert_allclose(distort_image(pixel(1, 0, 0), 1 / 3, 1, 1).ravel(), [0, 1, 0], atol=1e-6)
    np.testing.assert_allclose(distort_image(pixel(1, 0, 0), -1 / 3, 1, 1).ravel(), [0, 0, 1], atol=1e-6)
    # Green (hue 1/3) + 1/6 = hue 1/2, cyan. Half-saturated red (1, .5, .5) + 1/3 → (.5, 1, .5).
    np.testing.assert_allclose(distort_image(pixel(0, 1, 0), 1 / 6, 1, 1).ravel(), [0, 1, 1], atol=1e-6)
    np.testing.assert_allclose(distort_image(pixel(1, .5, .5), 1 / 3, 1, 1).ravel(), [.5, 1, .5], atol=1e-6)


def test_saturation_and_exposure_scale_s_and_v_then_clamp():
    # (0.8, 0.4, 0.4): v = 0.8, s = 0.5. Saturation 0 → grey at v; exposure 0.5 → every channel halves.
    np.testing.assert_allclose(distort_image(pixel(.8, .4, .4), 0, 0, 1).ravel(), [.8, .8, .8], atol=1e-6)
    np.testing.assert_allclose(distort_image(pixel(.8, .4, .4), 0, 1, .5).ravel(), [.4, .2, .2], atol=1e-6)
    # Exposure 2 → v = 1.6, clamped to 1; the others 0.8. Saturation 3 → s = 1.5, p = v(1 − s) < 0 → 0.
    np.testing.assert_allclose(distort_image(pixel(.8, .4, .4), 0, 1, 2).ravel(), [1, .8, .8], atol=1e-6)
    np.testing.assert_allclose(distort_image(pixel(.8, .4, .4), 0, 3, 1).ravel(), [.8, 0, 0], atol=1e-6)


def test_grey_images_only_get_exposure():
    grey = np.full((1, 2, 2), 0.6, np.float32)
    np.testing.assert_allclose(distort_image(grey, 0.3, 0.1, 0.5), 0.3, atol=1e-7)
    np.testing.assert_allclose(distort_image(grey, 0.0, 1.0, 2.0), 1.0, atol=1e-7)


# ----------------------------------------------------------------------------------- the whole step

NET = """[net]
width=24
height=24
channels=3
angle={angle}
hue={hue}
saturation={saturation}
exposure={exposure}
aspect={aspect}
center={center}
flip={flip}
min_crop=20
max_crop=30
"""


def make_net(angle=0, hue=0, saturation=1, exposure=1, aspect=1, center=0, flip=1) -> NetConfig:
    return net_from_text(NET.format(angle=angle, hue=hue, saturation=saturation, exposure=exposure,
                                    aspect=aspect, center=center, flip=flip))


def test_settings_from_net_use_darknets_crop_range_and_zero_fixes():
    settings = AugmentSettings.from_net(make_net(saturation=0, exposure=0, aspect=0))
    assert (settings.min_size, settings.max_size) == (20, 30)
    assert (settings.saturation, settings.exposure, settings.aspect) == (1.0, 1.0, 1.0)
    default = AugmentSettings.from_net(net_from_text("[net]\nwidth=32\nheight=32\nchannels=3\n"))
    assert (default.min_size, default.max_size) == (32, 64)  # min_crop = w, max_crop = 2w
    assert default.flip and not default.center


def test_center_crop_setting_without_flip_or_colour_change():
    src = random_image(3, 24, 30, seed=11)
    settings = AugmentSettings.from_net(make_net(center=1, flip=0))
    out = augment_image(src, np.random.default_rng(1), settings)
    # The centred 24×24 square needs no resize: a slice at x offset (30 − 24) / 2 = 3.
    np.testing.assert_allclose(out, src[:, :, 3:27], rtol=0, atol=1e-6)


def test_flip_key_off_never_mirrors_and_on_mirrors_about_half():
    src = random_image(3, 24, 24, seed=12)
    settings_off = AugmentSettings.from_net(make_net(center=1, flip=0))
    settings_on = AugmentSettings.from_net(make_net(center=1, flip=1))
    mirrored = 0
    for seed in range(40):
        assert np.allclose(augment_image(src, np.random.default_rng(seed), settings_off), src, atol=1e-6)
        out = augment_image(src, np.random.default_rng(seed), settings_on)
        if np.allclose(out, src[:, :, ::-1], atol=1e-6):
            mirrored += 1
        else:
            np.testing.assert_allclose(out, src, atol=1e-6)
    assert 8 <= mirrored <= 32


def test_augmentation_is_reproducible_from_the_generator():
    src = random_image(3, 30, 40, seed=13)
    settings = AugmentSettings.from_net(make_net(angle=15, hue=.1, saturation=1.5, exposure=1.5, aspect=1.2))
    first = augment_image(src, np.random.default_rng(42), settings)
    again = augment_image(src, np.random.default_rng(42), settings)
    other = augment_image(src, np.random.default_rng(43), settings)
    assert first.shape == (3, 24, 24) and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.min() >= 0 and first.max() <= 1
