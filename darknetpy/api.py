"""The Python API that the CLI is a thin shell over.

    net = darknetpy.load("cfg/mnist.cfg", "weights/mnist.weights")
    net.predict("digit.png", top=3)      # [Prediction(class_id, name, probability), ...]
    net.detect("dog.jpg")                 # detectors: [DetectionResult, ...]
    y = net.forward(x)                    # x: float32 (B, C, H, W)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from . import images
from .config import folder_of, read_data_file, read_list_file, resolve_path
from .errors import CfgError, DataError
from .network import Network, load_cfg
from .weights import read_weights, write_weights


@dataclass(frozen=True)
class Prediction:
    class_id: int
    name: str
    probability: float


def read_names(path: str | os.PathLike) -> list[str]:
    return read_list_file(path)


def names_path_from_data(data_path: str | os.PathLike) -> str:
    """Darknet's rule: the .data `names`, else `labels`, found by the one path rule (config.resolve_path)."""
    data = read_data_file(data_path)
    entry = data.names or data.labels
    if not entry:
        raise DataError("has neither 'names' nor 'labels'", str(data_path))
    return resolve_path(entry, folder_of(data_path))


def names_from_data(data_path: str | os.PathLike) -> list[str]:
    return read_names(names_path_from_data(data_path))


def class_count(network: Network) -> int:
    """How many classes the network tells apart: its detection layers' classes (the last layer's, as
    Darknet sizes its score arrays), a segmenter's classes per pixel, else the size of a classifier's output."""
    from .detect import detection_layers, output_classes
    from .segmentation import head_classes, is_segmenter
    if detection_layers(network):
        return output_classes(network)
    if is_segmenter(network):
        return head_classes(network)
    return network.shapes[network.output_index].size


def check_names(names: Sequence[str], classes: int, source: str | os.PathLike | None = None) -> list[str]:
    """`names` if there is one for every class; else a DataError naming `source` (Darknet would read past
    the end of its names array; printing class numbers instead would hide a wrong names file)."""
    names = list(names)
    if len(names) < classes:
        what = "is empty" if not names else f"has {len(names)} names"
        raise DataError(f"names file {what}, but the network predicts {classes} classes",
                        None if source is None else os.fspath(source))
    return names


class Model:
    """A network with its names; the object `darknetpy.load` returns."""

    def __init__(self, network: Network, names: Sequence[str] | None = None,
                 names_source: str | os.PathLike | None = None):
        self.network = network
        self.names = check_names(names, class_count(network), names_source) if names is not None else None
        self._trainer = None  # made on first use: inference never needs the optimiser's state

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
        return self.network.infer(x).copy()

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
        """Darknet's classifier preprocessing: letterboxed to the network size (images.network_input)."""
        w, h = self.input_size
        return images.network_input(image, w, h, network_channels(self.network), images.LETTERBOX).pixels

    @property
    def outputs_probabilities(self) -> bool:
        """Whether the output is a probability per class: the network ends in [softmax] (a distribution) or
        [logistic] (independent probabilities). Other outputs are raw scores, never to be shown as percentages."""
        from .layers.softmax import Logistic, Softmax
        return isinstance(self.network.output_layer, (Softmax, Logistic))

    def probabilities(self, image) -> np.ndarray:
        x = self.prepare(image)
        return self.network.infer(x[None])[0].reshape(-1).copy()

    def predict(self, image, top: int | None = 5) -> list[Prediction]:
        """Top-k classes, highest first; equal values keep the lower index first (Darknet's top_k)."""
        if top is not None and top < 1:
            raise ValueError(f"top must be at least 1, got {top}")
        from .tasks import task_name_for
        task = task_name_for(self.network)
        if task != "classification":  # a segmenter's outputs are pixels' classes, a detector's raw box maps
            head = self.network.output_layer
            use = ("`darknetpy segment` / Model.segment" if task == "segmentation"
                   else "`darknetpy detect` / Model.detect")
            raise head.config.error(f"the network is a {task} network (last layer {head.index} [{head.kind}]), "
                                    f"not a classifier: use {use}")
        probs = self.probabilities(image)
        order = np.argsort(-probs, kind="stable")
        if top is not None:
            order = order[:top]
        return [Prediction(int(i), self.name_of(int(i)), float(probs[i])) for i in order]

    # ---- training -------------------------------------------------------------------------------------------
    @property
    def trainer(self):
        """Darknet's training state for this network (optimiser velocities, lr schedule, statistics)."""
        if self._trainer is None:
            from .optim import Trainer
            self._trainer = Trainer(self.network)
        return self._trainer

    def train_batch(self, x: np.ndarray, truth: np.ndarray) -> float:
        """One Darknet train_network call: x (batch·subdivisions, C, H, W), truth (same rows, one truth row
        per image as the loss layers take it: a classifier's one-hot outputs, a detector's boxes...);
        returns the mean per-image loss, updates the weights once. The loss layers' statistics of the
        iteration are then in `trainer.last_statistics`."""
        return self.trainer.train_batch(x, truth)

    def current_rate(self) -> float:
        """Darknet's get_current_rate: the rate at the current batch number (that of the last update)."""
        return self.trainer.current_rate()

    # ---- detection ------------------------------------------------------------------------------------------
    # ---- segmentation ---------------------------------------------------------------------------------------
    def segment(self, image) -> np.ndarray:
        """(H, W) uint8 class of every pixel, at the image's own size (segmenters: darknetpy.segmentation)."""
        from .segmentation import class_map
        return class_map(self.network, image)

    def detect(self, image, thresh: float = 0.25, nms: float = 0.45, letterbox: bool | None = None):
        from .detect import detect
        return detect(self.network, image, thresh=thresh, nms=nms, letterbox=letterbox, names=self.names)


def load(cfg: str | os.PathLike, weights: str | os.PathLike | None = None, *, names=None,
         width: int | None = None, height: int | None = None, cutoff: int | None = None,
         seed: int | None = 0) -> Model:
    """Build the network of a .cfg file and load a .weights file into it, or without one initialise the
    weights randomly as Darknet does (seeded). `names` is a names file path or a list of class names.
    `cutoff` loads only the first N layers' weights (the rest keep their random initialisation).
    cfg, weights and names may be bare names of bundled networks (darknetpy.bundled): load("mnist", "mnist")."""
    from .bundled import resolve
    cfg, weights = resolve(cfg, "cfg"), resolve(weights, "weights")
    if isinstance(names, (str, os.PathLike)):
        names = resolve(names, "names")
    network = load_cfg(cfg, width=width, height=height)
    if weights is None or cutoff is not None:
        network.initialize(seed)
    if weights is not None:
        read_weights(network, weights, cutoff)
    source = None
    if isinstance(names, (str, os.PathLike)):
        source, names = names, read_names(names)
    return Model(network, names, source)


def network_channels(network: Network) -> int:
    """The [net] channels if images can feed the network (1 or 3), else a CfgError at the [net] section."""
    channels = network.net.channels
    if channels not in (1, 3):
        raise CfgError(f"[net] channels={channels}: images can feed networks with 1 (grey) or 3 (RGB) "
                       f"channels", network.path, network.net.line)
    return channels
