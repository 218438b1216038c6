"""Masks as data: where they are found, how they are read (PNG, pjreddie's RLE text), and that augmentation
keeps every mask pixel on its image pixel."""
import numpy as np
import pytest
from PIL import Image

from darknetpy.augment import AugmentSettings
from darknetpy.errors import DataError
from darknetpy.segmentation_data import (IGNORE_INDEX, augment_pair, center_crop_mask, check_mask,
                                         mask_path_candidates, mask_to_output, read_mask_png, read_mask_rle)


def test_mask_path_replaces_the_last_images_folder_and_the_extension():
    found = mask_path_candidates("data/images/train/images/cat.jpg")
    assert found[0] == "data/images/train/masks/cat.png"
    assert found[1] == "data/images/train/masks/cat.txt"
    assert found[2] == "data/mask/train/images/cat.txt"      # pjreddie: first "images" -> "mask"


def test_grey_and_palette_pngs_give_class_indices(tmp_path):
    values = np.array([[0, 1, 2], [255, 10, 3]], np.uint8)
    Image.fromarray(values, "L").save(tmp_path / "grey.png")
    palette = Image.fromarray(values, "P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [9] * (768 - 9))
    palette.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(read_mask_png(str(tmp_path / "grey.png")), values)
    np.testing.assert_array_equal(read_mask_png(str(tmp_path / "palette.png")), values)


def test_colour_png_is_not_a_mask(tmp_path):
    Image.new("RGB", (3, 2)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="mode RGB"):
        read_mask_png(str(tmp_path / "rgb.png"))


def test_rle_runs_alternate_from_zero_and_the_rest_takes_the_next_value(tmp_path):
    # 4x3 image: 1 zero, 3 ones, 2 zeros, then (odd count of runs) ones to the end, as pjreddie's load_rle
    (tmp_path / "m.txt").write_text("2 1,3,2\n1 11\n")
    expected = np.array([0, 2, 2, 2, 0, 0, 2, 2, 2, 2, 2, 1], np.uint8).reshape(3, 4)
    # class 1's single run of 11 zeros is followed by ones: pixel 11 is class 1 (the later line wins)
    np.testing.assert_array_equal(read_mask_rle(str(tmp_path / "m.txt"), 4, 3), expected)


def test_rle_errors_point_at_the_line(tmp_path):
    (tmp_path / "m.txt").write_text("1 2,2\n3 x,1\n")
    with pytest.raises(DataError) as info:
        read_mask_rle(str(tmp_path / "m.txt"), 2, 2)
    assert info.value.line == 2
    (tmp_path / "n.txt").write_text("1 2,3\n")
    with pytest.raises(DataError, match="more than"):
        read_mask_rle(str(tmp_path / "n.txt"), 2, 2)


def test_check_mask_size_and_classes():
    check_mask(np.array([[0, 2], [255, 1]], np.uint8), "m.png", 2, 2, 3)
    with pytest.raises(DataError, match="3x2 but its image is 2x2"):
        check_mask(np.zeros((2, 3), np.uint8), "m.png", 2, 2, 3)
    with pytest.raises(DataError, match=r"pixel \(1, 0\) has class 3"):
        check_mask(np.array([[0, 3], [0, 0]], np.uint8), "m.png", 2, 2, 3)


def painted_scene(rng, w=48, h=40):
    """An image and its mask with the same shapes painted: a red L (class 1) and a green square (class 2)
    on black (class 0)."""
    img = np.zeros((3, h, w), np.float32)
    mask = np.zeros((h, w), np.uint8)
    x0, y0 = rng.integers(2, 12, size=2)
    for rows, cols in ((slice(y0, y0 + 20), slice(x0, x0 + 6)), (slice(y0 + 14, y0 + 20), slice(x0, x0 + 18))):
        img[0, rows, cols] = 1.0
        mask[rows, cols] = 1
    img[1, 5:13, 30:38] = 1.0
    mask[5:13, 30:38] = 2
    return img, mask


@pytest.mark.parametrize("seed", range(12))
def test_augmentation_keeps_the_mask_on_its_pixels(seed):
    rng = np.random.default_rng(seed)
    img, mask = painted_scene(rng)
    settings = AugmentSettings(width=32, height=32, angle=20, aspect=1.3, min_size=28, max_size=60, flip=True)
    out, out_mask = augment_pair(img, mask, np.random.default_rng(100 + seed), settings)
    assert out.shape == (3, 32, 32) and out_mask.shape == (32, 32)
    red, green = out[0], out[1]
    # pixels the bilinear image shows in a clean colour must carry that colour's class (edges are mixed)
    inside = out_mask != IGNORE_INDEX
    assert np.all(out_mask[(red > 0.99) & inside] == 1)
    assert np.all(out_mask[(green > 0.99) & inside] == 2)
    assert np.all(out_mask[(red < 0.01) & (green < 0.01) & inside] == 0)
    assert (red > 0.99).sum() > 20          # the shape is still in view
    # and every labelled pixel sits on some of its colour
    assert np.all(red[out_mask == 1] > 0.2) and np.all(green[out_mask == 2] > 0.2)


def test_flip_is_applied_to_both():
    img, mask = painted_scene(np.random.default_rng(0))
    settings = AugmentSettings(width=48, height=40, center=False, min_size=40, max_size=40, flip=True)
    flips = set()
    for seed in range(8):
        out, out_mask = augment_pair(img, mask, np.random.default_rng(seed), settings)
        assert np.all(out_mask[out[0] > 0.99] == 1) and np.all(out[0][out_mask == 1] > 0.2)
        flips.add(bool(out_mask[:, :24].sum() < out_mask[:, 24:].sum()))
    assert flips == {True, False}


def test_pixels_from_outside_the_image_are_ignored():
    img, mask = painted_scene(np.random.default_rng(1))
    settings = AugmentSettings(width=64, height=64, min_size=20, max_size=20, flip=False)
    _, out_mask = augment_pair(img, mask, np.random.default_rng(0), settings)
    assert (out_mask == IGNORE_INDEX).sum() > 0


def test_center_crop_mask_matches_the_image_geometry():
    mask = np.zeros((6, 10), np.uint8)
    mask[:, 2:8] = np.arange(6, dtype=np.uint8)[None, :]      # the centred 6x6 square holds columns 0..5
    np.testing.assert_array_equal(center_crop_mask(mask, 6, 6), np.tile(np.arange(6, dtype=np.uint8), (6, 1)))


def test_mask_to_output_samples_darknets_resize_positions():
    mask = np.arange(25, dtype=np.uint8).reshape(5, 5)
    out = mask_to_output(mask, 3, 3)       # align corners: cells 0, 1, 2 read rows/columns 0, 2, 4
    np.testing.assert_array_equal(out, mask[::2, ::2])
    assert mask_to_output(mask, 5, 5) is mask


@pytest.mark.parametrize("out_size", [128, 64, 100])
def test_a_mask_taken_to_the_output_comes_back_where_it_was(out_size):
    """Oracle: the prediction path. A training target at the output size, turned into one-hot class
    probabilities and brought back to the input size as `segment`/`valid` bring predictions back
    (images.resize_image, argmax), must cover the same place. Nearest sampling moves single shapes by up
    to a stride either way, but over 60 random rectangles the centroid shift must average out (within 0.15
    input pixel); sampling the cells' centres instead shifts them all by about -0.57 pixel at 128 and 64."""
    from darknetpy.images import resize_image
    rng = np.random.default_rng(0)
    shifts = []
    for _ in range(60):
        mask = np.zeros((256, 256), np.uint8)
        h, w = rng.integers(12, 60, 2)
        y0, x0 = rng.integers(0, 256 - h), rng.integers(0, 256 - w)
        mask[y0:y0 + h, x0:x0 + w] = 1
        target = mask_to_output(mask, out_size, out_size)
        one_hot = np.stack([target == 0, target == 1]).astype(np.float32)
        back = resize_image(one_hot, 256, 256).argmax(axis=0)
        back_ys, back_xs = np.nonzero(back)
        shifts += [back_ys.mean() - (y0 + (h - 1) / 2), back_xs.mean() - (x0 + (w - 1) / 2)]
    assert abs(np.mean(shifts)) <= 0.15
    assert np.max(np.abs(shifts)) <= 256 / out_size


@pytest.mark.parametrize("channels", [1, 3])
def test_grey_scenes_train_as_one_plane_with_the_pixels_of_the_rgb_path(tmp_path, channels):
    """A grey scene is loaded as one plane and augmented as such. Oracle: the same scene stored as RGB
    (three equal planes: the colour path), which must give the same network input and truth bit for bit."""
    from types import SimpleNamespace

    from darknetpy.config import read_data_file
    from darknetpy.segmentation_data import OutputGeometry, SegmentationDataset
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, (40, 52), dtype=np.uint8)
    mask = (grey > 128).astype(np.uint8)
    datas = {}
    for kind, pixels in (("grey", grey), ("rgb", np.repeat(grey[:, :, None], 3, axis=2))):
        root = tmp_path / kind
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        Image.fromarray(pixels).save(root / "images" / "a.png")
        Image.fromarray(mask).save(root / "masks" / "a.png")
        (root / "train.list").write_text(f"{root / 'images' / 'a.png'}\n")
        (root / "set.data").write_text(f"classes=2\ntrain={root / 'train.list'}\nvalid={root / 'train.list'}\n")
        datas[kind] = read_data_file(root / "set.data")
    net = SimpleNamespace(width=32, height=32, channels=channels, batch=1, angle=10, aspect=1.2, saturation=1.5,
                          exposure=1.5, hue=0.1, flip=True, center=False, min_ratio=30 / 32, max_ratio=60 / 32)

    def encoder(masks):
        return masks.reshape(len(masks), -1).astype(np.float32)

    loaded = {}
    for kind, data in datas.items():
        train = SegmentationDataset(data, net, 2, OutputGeometry(2, 2), encoder=encoder, train=True, seed=0)
        valid = SegmentationDataset(data, net, 2, OutputGeometry(2, 2), encoder=encoder, train=False, seed=0)
        assert train.load_pair(0)[0].shape[0] == (1 if kind == "grey" else 3)
        loaded[kind] = [train.load(0, np.random.default_rng(seed)) for seed in range(4)] + [valid.load(0)]
    for (x_grey, y_grey), (x_rgb, y_rgb) in zip(loaded["grey"], loaded["rgb"]):
        assert x_grey.shape == (channels, 32, 32)
        np.testing.assert_array_equal(x_grey, x_rgb)
        np.testing.assert_array_equal(y_grey, y_rgb)
