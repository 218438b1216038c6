"""The Python API that the CLI is a thin shell over.

    net = darknetpy.load("cfg/mnist.cfg", "weights/mnist.weights")
    net.predict("digit.png", top=3)      # [Prediction(class_id, name, probability), ...]
    net.detect("dog.jpg")                 # detectors: [DetectionResult, ...]
    y = net.forward(x)                    # x: float32 (B, C, H, W)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from . import images
from .config import read_data_file, read_list_file
from .errors import DataError
from .network import Network, load_cfg
from .weights import read_weights, write_weights


@dataclass(frozen=True)
class Prediction:
    class_id: int
    name: str
    probability: float


def read_names(path: str | os.PathLike) -> list[str]:
    return [name for name in read_list_file(path)]


def names_from_data(data_path: str | os.PathLike) -> list[str]:
    """Darknet's rule: the .data `names`, else `labels`; paths relative to the cwd or the .data folder."""
    data = read_data_file(data_path)
    entry = data.names or data.labels
    if not entry:
        raise DataError("has neither 'names' nor 'labels'", str(data_path))
    return read_names(_resolve(entry, Path(data_path).parent))


def _resolve(entry: str, base: Path) -> str:
    if os.path.exists(entry) or os.path.isabs(entry):
        return entry
    candidate = base / entry
    return str(candidate) if candidate.exists() else entry


def to_net_channels(img: np.ndarray, channels: int) -> np.ndarray:
    """(3, H, W) RGB -> the network's channel count. One channel uses stb's integer luma weights
    (77, 150, 29)/256, so a grey image read as RGB comes back unchanged, as Darknet reads it."""
    if channels == 3:
        return img
    if channels == 1:
        grey = (np.float32(77) * img[0] + np.float32(150) * img[1] + np.float32(29) * img[2]) / np.float32(256)
        return grey[None].astype(np.float32)
    raise ValueError(f"images can feed networks with 1 or 3 channels, not {channels}")


class Model:
    """A network with its names; the object `darknetpy.load` returns."""

    def __init__(self, network: Network, names: Sequence[str] | None = None):
        self.network = network
        self.names = list(names) if names is not None else None

    # ---- basics ---------------------------------------------------------------------------------------------
    @property
    def seen(self) -> int:
        return self.network.seen

    @seen.setter
    def seen(self, value: int) -> None:
        self.network.seen = int(value)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.network.net.width, self.network.net.height

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Inference on a float32 batch (B, C, H, W) (or one (C, H, W) image); returns a copy of the output."""
        return self.network.forward(x, train=False).copy()

    def summary(self) -> str:
        return self.network.summary()

    def save_weights(self, path: str | os.PathLike, cutoff: int | None = None) -> None:
        write_weights(self.network, path, cutoff)

    def load_weights(self, path: str | os.PathLike, cutoff: int | None = None) -> None:
        read_weights(self.network, path, cutoff)

    def name_of(self, class_id: int) -> str:
        if self.names is not None and 0 <= class_id < len(self.names):
            return self.names[class_id]
        return str(class_id)

    # ---- classification -------------------------------------------------------------------------------------
    def prepare(self, image) -> np.ndarray:
        """Darknet's classifier preprocessing: RGB in [0, 1], letterboxed to the network size."""
        img = images.load_image(image)
        w, h = self.input_size
        boxed = images.letterbox_image(img, w, h)
        return to_net_channels(boxed, self.network.net.channels)

    def probabilities(self, image) -> np.ndarray:
        x = self.prepare(image)
        return self.network.forward(x[None], train=False)[0].reshape(-1).copy()

    def predict(self, image, top: int | None = 5) -> list[Prediction]:
        """Top-k classes, highest first; equal values keep the lower index first (Darknet's top_k)."""
        if top is not None and top < 1:
            raise ValueError(f"top must be at least 1, got {top}")
        probs = self.probabilities(image)
        order = np.argsort(-probs, kind="stable")
        if top is not None:
            order = order[:top]
        return [Prediction(int(i), self.name_of(int(i)), float(probs[i])) for i in order]

    # ---- training -------------------------------------------------------------------------------------------
    @property
    def trainer(self):
        if getattr(self, "_trainer", None) is None:
            from .optim import Trainer
            self._trainer = Trainer(self.network)
        return self._trainer

    def train_batch(self, x: np.ndarray, truth: np.ndarray) -> float:
        """One Darknet train_network call: x (batch·subdivisions, C, H, W), truth (same rows, outputs);
        returns the mean per-image loss, updates the weights once."""
        return self.trainer.train_batch(x, truth)

    def current_rate(self) -> float:
        """Darknet's get_current_rate: the rate at the current batch number (that of the last update)."""
        return self.trainer.current_rate()

    # ---- detection ------------------------------------------------------------------------------------------
    def detect(self, image, thresh: float = 0.25, nms: float = 0.45, letterbox: bool | None = None):
        from .detect import detect
        return detect(self.network, image, thresh=thresh, nms=nms, letterbox=letterbox, names=self.names)


def load(cfg: str | os.PathLike, weights: str | os.PathLike | None = None, *, names=None,
         width: int | None = None, height: int | None = None, cutoff: int | None = None,
         seed: int | None = 0) -> Model:
    """Build the network of a .cfg file and load a .weights file into it, or without one initialise the
    weights randomly as Darknet does (seeded). `names` is a names file path or a list of class names.
    `cutoff` loads only the first N layers' weights (the rest keep their random initialisation)."""
    network = load_cfg(cfg, width=width, height=height)
    if weights is None or cutoff is not None:
        network.initialize(seed)
    if weights is not None:
        read_weights(network, weights, cutoff)
    if isinstance(names, (str, os.PathLike)):
        names = read_names(names)
    return Model(network, names)
