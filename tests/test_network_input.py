"""One path from an image to a network's input (images.network_input) for predict, valid, train and detect.

Oracle: stb_image's luma weights (77, 150, 29)/256 (stbi__compute_y) applied by hand to the PNG's bytes, each
byte read as Darknet reads it (float32 byte / 255). The image is made of colours whose value survives the
HSV round trip of training's colour augmentation exactly, so a training input can be compared bit for bit.
Pillow's own luma (19595, 38470, 7471)/65536 differs on these colours (red: 0.2990 against 0.3008), so the
test also tells the two rules apart."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import darknetpy
from darknetpy import images
from darknetpy.config import read_data_file
from darknetpy.data import ClassificationDataset

SIZE = 8
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255), (0, 0, 0),
           (255, 255, 255), (128, 128, 128), (255, 128, 0)]

GREY_CLASSIFIER = f"""[net]
batch=1
width={SIZE}
height={SIZE}
channels=1
center=1
flip=0

[convolutional]
filters=2
size=1
activation=linear

[avgpool]

[softmax]
"""

GREY_DETECTOR = f"""[net]
width={SIZE}
height={SIZE}
channels=1

[convolutional]
filters=21
size=1
activation=linear

[yolo]
mask=0,1,2
anchors=2,2, 4,4, 6,6
classes=2
num=3
"""


def stb_grey(pixels: np.ndarray) -> np.ndarray:
    r, g, b = (np.float32(pixels[:, :, k]) / np.float32(255) for k in range(3))
    return ((77 * r.astype(np.float64) + 150 * g.astype(np.float64) + 29 * b.astype(np.float64)) / 256
            ).astype(np.float32)[None]


@pytest.fixture
def colour_set(tmp_path):
    rng = np.random.default_rng(5)
    pixels = np.array(COLOURS, np.uint8)[rng.integers(0, len(COLOURS), (SIZE, SIZE))]
    (tmp_path / "img").mkdir()
    Image.fromarray(pixels).save(tmp_path / "img" / "a_red.png")
    Image.new("RGB", (SIZE, SIZE), (0, 0, 255)).save(tmp_path / "img" / "b_blue.png")
    (tmp_path / "list.txt").write_text("img/a_red.png\nimg/b_blue.png\n")
    (tmp_path / "labels.txt").write_text("red\nblue\n")
    (tmp_path / "set.data").write_text("classes=2\ntrain=list.txt\nvalid=list.txt\nlabels=labels.txt\n")
    (tmp_path / "grey.cfg").write_text(GREY_CLASSIFIER)
    (tmp_path / "grey-yolo.cfg").write_text(GREY_DETECTOR)
    return tmp_path, pixels


class Recorder:
    """Wraps a network's passes (forward, and infer: what predict and detect run) to keep what the network
    was given."""

    def __init__(self, network):
        self.inputs = []
        forward, infer = network.forward, network.infer

        def recorded_forward(x, train=False):
            self.inputs.append(np.array(x, copy=True))
            return forward(x, train=train)

        def recorded_infer(x):
            self.inputs.append(np.array(x, copy=True))
            return infer(x)
        network.forward, network.infer = recorded_forward, recorded_infer


def test_grey_network_gets_the_same_pixels_in_predict_valid_train_and_detect(colour_set):
    folder, pixels = colour_set
    expected = stb_grey(pixels)
    image = folder / "img" / "a_red.png"

    classifier = darknetpy.load(folder / "grey.cfg")
    recorder = Recorder(classifier.network)
    classifier.predict(image)
    predicted = recorder.inputs[-1][0]

    data = read_data_file(folder / "set.data")
    net = classifier.network.net
    valid, _ = ClassificationDataset(data, net, train=False).load(0)
    trained, _ = ClassificationDataset(data, net, train=True).load(0, np.random.default_rng(1))

    detector = darknetpy.load(folder / "grey-yolo.cfg")
    recorder = Recorder(detector.network)
    detector.detect(image, letterbox=False)
    detected = recorder.inputs[-1][0]

    for name, got in [("predict", predicted), ("valid", valid), ("train", trained), ("detect", detected)]:
        assert got.shape == (1, SIZE, SIZE), name
        np.testing.assert_array_equal(got, expected, err_msg=name)
    pillow = np.asarray(Image.fromarray(pixels).convert("L"), np.float32) / 255
    assert not np.allclose(expected[0], pillow, atol=0.5 / 255)  # the oracle is stb's rule, not Pillow's


def test_grey_detector_runs_from_the_command_line(colour_set, tmp_path):
    from test_cli import run_cli
    folder, _ = colour_set
    weights = folder / "grey-yolo.weights"
    model = darknetpy.load(folder / "grey-yolo.cfg", seed=3)
    model.save_weights(weights)
    result = run_cli("detect", folder / "grey-yolo.cfg", weights, folder / "img" / "a_red.png", "--thresh", "0")
    assert result.returncode == 0, result.stderr
    assert "Predicted in" in result.stdout
    assert "Traceback" not in result.stderr


def test_network_input_refuses_channel_counts_images_cannot_fill(tmp_path):
    cfg = tmp_path / "four.cfg"
    cfg.write_text(GREY_CLASSIFIER.replace("channels=1", "channels=4"))
    image = tmp_path / "a.png"
    Image.new("RGB", (SIZE, SIZE), (1, 2, 3)).save(image)
    with pytest.raises(darknetpy.CfgError, match="channels=4"):
        darknetpy.load(cfg).predict(image)


GREY_SOURCES = {
    "PIL L": lambda b: Image.fromarray(b, "L"),
    "uint8 (H, W)": lambda b: b,
    "uint8 (H, W, 1)": lambda b: b[:, :, None],
    "float32 (1, H, W)": lambda b: (b.astype(np.float32) / np.float32(255))[None],
}


@pytest.mark.parametrize("source", sorted(GREY_SOURCES))
@pytest.mark.parametrize("fit", images.FITS)
@pytest.mark.parametrize("size", [(13, 11), (37, 29), (23, 17)], ids=["shrink", "enlarge", "same"])
@pytest.mark.parametrize("channels", [1, 3])
def test_grey_image_fitted_as_one_plane_gives_the_pixels_of_the_rgb_path(source, fit, size, channels):
    """Oracle: the RGB path (load_image replicates grey into three planes, the geometry fits all three,
    stb's luma turns them back into one) computed explicitly; the single-plane shortcut must equal it
    bit for bit, for every fit, shrinking, enlarging and at the image's own size."""
    grey_bytes = np.random.default_rng(7).integers(0, 256, (17, 23), dtype=np.uint8)
    src = GREY_SOURCES[source](grey_bytes)
    width, height = size
    rgb = images.load_image(src)
    assert rgb.shape == (3, 17, 23)
    expected = images.to_channels(images.fit_image(rgb, width, height, fit), channels)
    got = images.network_input(src, width, height, channels, fit)
    assert images.load_planes(src).shape == (1, 17, 23)
    assert got.pixels.shape == (channels, height, width)
    assert got.pixels.dtype == np.float32
    np.testing.assert_array_equal(got.pixels, expected)
    assert (got.image_width, got.image_height) == (23, 17)


def test_colour_image_keeps_three_planes():
    pixels = np.random.default_rng(8).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    assert images.load_planes(pixels).shape == (3, 9, 7)
    np.testing.assert_array_equal(images.load_planes(Image.fromarray(pixels, "RGB")), images.load_image(pixels))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("seed", range(4))
def test_grey_image_augmented_as_one_plane_gives_the_pixels_of_the_rgb_path(channels, seed):
    """Training augmentation as a `fit` function: crop with rotation, aspect and scale, flip, and hue,
    saturation and exposure changes. Oracle: the same draws on the three equal planes load_image gives,
    then stb's luma (the path colour images take)."""
    from darknetpy.augment import AugmentSettings, augment_image
    grey_bytes = np.random.default_rng(seed).integers(0, 256, (31, 26), dtype=np.uint8)
    settings = AugmentSettings(width=20, height=24, angle=15, aspect=1.3, saturation=1.5, exposure=1.5, hue=0.1,
                               flip=True, min_size=18, max_size=40)

    def fit(img):
        return augment_image(img, np.random.default_rng(100 + seed), settings)

    expected = images.to_channels(fit(images.load_image(grey_bytes)), channels)
    got = images.network_input(grey_bytes, 20, 24, channels, fit)
    assert got.pixels.shape == (channels, 24, 20)
    np.testing.assert_array_equal(got.pixels, expected)
