"""The Layer contract: one class per Darknet section type, everything about a layer in one place.

A layer class declares
  * `Config`: a frozen dataclass whose fields are the section's options (typed, with Darknet's defaults),
    read generically from the cfg section by `read_config`, each value remembering its line;
  * `output_shape(in_shapes) -> Shape`: validates against the incoming shapes (the network calls
    `build(in_shapes, net)`, which stores the [net] settings as `self.net`, checks sizes and calls
    `allocate_parameters()` once);
  * `allocate(batch)`, `forward(xs, train) -> y`, `backward(dy, xs, dxs)` (standard dL/dx, accumulated
    into dxs);
  * `params()`: trainable arrays with their gradient buffers, for the optimiser, and
    `parameters_changed()`, which the optimiser and the weights reader call after changing them;
  * `weight_arrays(saving)`: the arrays in Darknet's `.weights` file order;
  * `summary_row()` and `flops()` for the layer table.

Every hook the network, the optimiser or a task calls is declared here: on `Layer`, or on `LossLayer`
(truth in, cost out; `cost_only` for a [cost] layer that is not the network's output). Detection heads
are `DetectionHead(LossLayer)` in layers/detection.py. Nothing outside a layer asks it what it has.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Mapping

import numpy as np

from ..config.net import NetConfig
from ..config.options import SectionReader
from ..errors import CfgError, UnsupportedError

FLOAT = np.float32

#: The most elements a layer's output (per image) or its parameters may have. Darknet keeps these counts in C
#: ints (l.outputs, l.nweights), so no Darknet network exceeds them, and no real one comes close (VGG-16's
#: largest layer has 103M weights); beyond it a cfg holds a typo that would otherwise end in a MemoryError.
MAX_LAYER_ELEMENTS = 2**31 - 1


@dataclass(frozen=True)
class Shape:
    """Output shape of one batch item. Non-image outputs (softmax, cost, ...) have image=False: Darknet
    reports 0x0x0 for them and a following layer that needs an image must refuse them."""
    c: int
    h: int = 1
    w: int = 1
    image: bool = True

    @property
    def size(self) -> int:
        return self.c * self.h * self.w

    @classmethod
    def flat(cls, n: int) -> "Shape":
        return cls(n, 1, 1, image=False)

    def __str__(self) -> str:
        return f"{self.w}x{self.h}x{self.c}" if self.image else f"{self.size}"


def option(default: Any = None, *, key: str | None = None, minimum: float | None = None,
           maximum: float | None = None, choices: Iterable[str] | None = None, required: bool = False):
    """Declare a Config field read from the cfg option `key` (default: the field name)."""
    meta = {"key": key, "minimum": minimum, "maximum": maximum,
            "choices": tuple(choices) if choices is not None else None, "required": required}
    return field(default=default, metadata={"option": meta})


@dataclass(frozen=True)
class Origin:
    """Where a section came from, so later checks (at build time) can point at the right line."""
    path: str
    line: int
    section: str
    key_lines: Mapping[str, int] = field(default_factory=dict)

    def error(self, message: str, key: str | None = None, kind: type[CfgError] = CfgError) -> CfgError:
        line = self.key_lines.get(key, self.line) if key else self.line
        return kind(message, self.path, line)


@dataclass(frozen=True)
class LayerConfig:
    """Options every Darknet layer section accepts (spec §2), and where the section came from."""
    origin: Origin = field(default=None, compare=False, repr=False, metadata={"option": None})
    stopbackward: bool = option(False)
    dontsave: bool = option(False)
    dontload: bool = option(False)
    numload: int = option(0, minimum=0)
    dontloadscales: bool = option(False)
    learning_rate_scale: float = option(1.0, key="learning_rate")
    truth: bool = option(False)
    onlyforward: bool = option(False)
    smooth: float = option(0.0)

    def error(self, message: str, key: str | None = None) -> CfgError:
        if self.origin is None:
            return CfgError(message)
        return self.origin.error(message, key)

    def unsupported(self, message: str, key: str | None = None) -> UnsupportedError:
        """A valid Darknet construct darknetpy does not run, located like `error`."""
        if self.origin is None:
            return UnsupportedError(message)
        return self.origin.error(message, key, UnsupportedError)


_READERS = {
    int: SectionReader.get_int,
    float: SectionReader.get_float,
    bool: SectionReader.get_bool,
    str: SectionReader.get_str,
}


def _option_meta(f: dataclasses.Field) -> dict | None:
    return f.metadata.get("option") if f.metadata else None


def config_keys(config_cls: type) -> dict[str, str]:
    """cfg key -> field name for every option of a Config class."""
    keys = {}
    for f in dataclasses.fields(config_cls):
        meta = _option_meta(f)
        if meta is not None:
            keys[meta["key"] or f.name] = f.name
    return keys


def read_config(config_cls: type, reader: SectionReader, kind: str) -> LayerConfig:
    """Read every declared option of `config_cls` from a section of `kind`; config/key_rules.py decides
    about the keys left over."""
    hints = typing.get_type_hints(config_cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(config_cls):
        meta = _option_meta(f)
        if meta is None:
            continue
        key = meta["key"] or f.name
        values[f.name] = _read_value(reader, key, hints[f.name], f.default, meta)
    reader.finish(kind, valid=config_keys(config_cls))
    section = reader.section
    key_lines = {o.key: o.line for o in section.options}
    origin = Origin(reader.path, section.line, section.name, key_lines)
    return config_cls(origin=origin, **values)


def _read_value(reader: SectionReader, key: str, hint: Any, default: Any, meta: dict) -> Any:
    base, is_optional = _unwrap_optional(hint)
    if typing.get_origin(base) is tuple:
        (item, *_rest) = typing.get_args(base)
        getter = reader.get_int_list if item is int else reader.get_float_list
        value = getter(key, None, required=meta["required"])
        return tuple(value) if value is not None else default
    getter = _READERS[base]
    kwargs: dict[str, Any] = {}
    if base in (int, float):
        kwargs = {"minimum": meta["minimum"], "maximum": meta["maximum"]}
    elif base is str and meta["choices"] is not None:
        kwargs = {"choices": meta["choices"]}
    if meta["required"] and not reader.has(key):
        raise reader.error(f"missing required option '{key}'")
    return getter(reader, key, default, **kwargs)


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    args = typing.get_args(hint)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return hint, False


@dataclass
class Param:
    """A trainable array and the accumulated gradient dL/dparam (summed over the batch)."""
    name: str
    value: np.ndarray
    grad: np.ndarray
    decay: bool  # Darknet applies weight decay to weights only, never to biases or BN scales


class Layer:
    """Base class. Subclasses set `kind`, `aliases`, `Config` and override what they need."""
    kind: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type] = LayerConfig
    #: whether an inference forward returns its first input itself instead of writing its output buffer
    #: (the network's buffer sharing must then keep that input alive for this layer's readers)
    inference_returns_input: ClassVar[bool] = False

    def __init__(self, config: LayerConfig, index: int):
        self.config = config
        self.index = index
        self.in_shapes: list[Shape] = []
        self.out_shape: Shape | None = None
        self.output: np.ndarray | None = None
        self.net: NetConfig | None = None  # the [net] settings, known from build() on
        self._batch = 0

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_section(cls, reader: SectionReader, index: int) -> "Layer":
        return cls(read_config(cls.Config, reader, cls.kind), index)

    def input_indices(self) -> list[int]:
        """Indices of the layers whose outputs feed this one (-1 is the network input)."""
        return [self.index - 1]

    def build(self, in_shapes: list[Shape], net: NetConfig) -> Shape:
        """Take the input shapes and the [net] settings (batch, steps, network size...), return the output
        shape; parameters are allocated the first time only (a resized network keeps its weights)."""
        self.net = net
        self.in_shapes = list(in_shapes)
        self.out_shape = self.output_shape(in_shapes)
        shape = self.out_shape
        self._check_element_count(shape.size, f"output values per image ({shape})" if shape.image
                                  else "output values per image")
        self._check_element_count(self.parameters_needed(), "parameters")
        self.allocate_parameters()
        return self.out_shape

    def output_shape(self, in_shapes: list[Shape]) -> Shape:
        return in_shapes[0]

    def parameters_needed(self) -> int:
        """How many elements `allocate_parameters` creates in its big arrays (weights, tables), known from
        the shapes alone, so that `build` can refuse an absurd layer before allocating anything. Layers
        whose parameters are per channel need not say: those are bounded by the output."""
        return 0

    def allocate_parameters(self) -> None:
        """Create parameter arrays (once; kept when the network is resized)."""

    def _check_element_count(self, count: int, what: str) -> None:
        if count > MAX_LAYER_ELEMENTS:
            raise self.config.error(f"[{self.kind}] would have {count} {what}, more than the "
                                    f"{MAX_LAYER_ELEMENTS} elements a Darknet layer can hold (its sizes are "
                                    f"C ints)", self._largest_int_option())

    def _largest_int_option(self) -> str | None:
        """The integer option of this section with the largest value: an absurd size is nearly always one
        mistyped number, so errors about sizes point at it (the section header when none is set)."""
        origin = self.config.origin
        if origin is None:
            return None
        largest: tuple[int, str] | None = None
        for f in dataclasses.fields(self.config):
            meta = _option_meta(f)
            value = getattr(self.config, f.name)
            if meta is None or isinstance(value, bool) or not isinstance(value, int):
                continue
            key = meta["key"] or f.name
            if key in origin.key_lines and (largest is None or value > largest[0]):
                largest = (value, key)
        return largest[1] if largest else None

    def require_image(self, shape: Shape) -> None:
        if not shape.image or shape.size == 0:
            raise self.config.error(f"[{self.kind}] needs an image input, but the previous layer outputs "
                                    f"{shape.size} values with no spatial shape")

    # ---- buffers --------------------------------------------------------------------------------------------
    def allocate(self, batch: int) -> None:
        """Allocate per-batch buffers; called by the network whenever the batch size changes."""
        s = self.out_shape
        self.output = aligned_zeros((batch, s.c, s.h, s.w))
        self._batch = batch

    # ---- computation ----------------------------------------------------------------------------------------
    def forward(self, xs: list[np.ndarray], train: bool) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dy: np.ndarray, xs: list[np.ndarray], dxs: list[np.ndarray | None]) -> None:
        """Given dy = dL/d(output), add dL/d(input_k) into dxs[k] (None: no gradient wanted) and
        accumulate parameter gradients. dy may be overwritten."""
        raise NotImplementedError(f"[{self.kind}] has no backward pass yet")

    def params(self) -> list[Param]:
        return []

    def initialize(self, rng: np.random.Generator) -> None:
        """Random initial parameters for training from scratch, with Darknet's distributions."""

    def parameters_changed(self) -> None:
        """Called after the optimiser or the weights reader changed parameters (drop derived caches)."""

    # ---- weights file ----------------------------------------------------------------------------------------
    def weight_arrays(self, saving: bool = False) -> list[np.ndarray]:
        """Contiguous float32 arrays in Darknet's file order. When loading, options such as dontloadscales or
        numload may shrink the list; when saving, Darknet writes everything."""
        return []

    def after_load(self, transposed: bool) -> None:
        """Hook run after the arrays were filled (e.g. connected weights stored transposed)."""

    def parameter_count(self) -> int:
        return int(sum(a.size for a in self.weight_arrays(saving=True)))

    # ---- reporting -------------------------------------------------------------------------------------------
    def flops(self) -> float:
        return 0.0

    def summary_row(self) -> str:
        return f"{self.kind:<6}"

    def describe_shape(self, shape: Shape) -> str:
        return f"{shape.w:4d} x{shape.h:4d} x{shape.c:4d}"


class LossLayer(Layer):
    """A layer that takes the network's truth and owns a cost: truth in, cost out (Darknet's net->truth).

    Before a training forward pass the network hands every loss layer the same truth rows of that pass,
    (B, truth_size) float32 (a classifier's one-hot rows, a detector's 90 x (x, y, w, h, class) boxes, a
    segmenter's per-pixel class indices). The layer consumes them in that one forward pass, keeps `cost`
    (None when no truth was given) and its loss gradient (standard dL/dx) for backward.
    """
    #: a [cost] layer is not the network's output: at inference it passes its input on
    cost_only: ClassVar[bool] = False

    def __init__(self, config: LayerConfig, index: int):
        super().__init__(config, index)
        self.cost: float | None = None
        self._truth: np.ndarray | None = None
        #: images the network has seen including this pass (Darknet's *net->seen), set by the network before
        #: every forward; [region]'s loss depends on it (spec §12.2.3)
        self.seen = 0

    def truth_size(self) -> int:
        """Floats per image in the truth rows this layer reads (by default: one target per output value)."""
        return self.out_shape.size

    def set_truth(self, truth: np.ndarray | None) -> None:
        self._truth = truth

    def statistics(self) -> dict[str, float]:
        """Figures of the last training pass to print and record (a detection head's Avg IOU, recall...)."""
        return {}

    def pixelwise(self) -> bool:
        """Whether this head's truth is a map over its input's pixels (segmentation) rather than one row per
        image: by default a loss over several channels of an image larger than 1x1. The training task is
        chosen from this (darknetpy.tasks.task_for)."""
        shape = self.in_shapes[0] if self.in_shapes else None
        return shape is not None and shape.image and shape.h * shape.w > 1 and shape.c > 1

    # ---- pixel-wise heads (the segmentation task and darknetpy.segmentation call these) ------------------
    def class_probabilities(self, output: np.ndarray) -> np.ndarray:
        """(B, classes, H, W) per-class probabilities of every pixel, from this layer's output."""
        raise NotImplementedError(f"[{self.kind}] does not predict classes per pixel")

    def mask_encoder(self):
        """A picklable function: (B, H, W) uint8 class-index masks (255 = ignore) -> this layer's truth rows
        (B, truth_size()) float32. The segmentation data loader runs it in its worker processes."""
        raise NotImplementedError(f"[{self.kind}] does not train from class-index masks")


def aligned_zeros(shape: tuple[int, ...], alignment: int = 64) -> np.ndarray:
    """A zeroed float32 array whose data starts on an `alignment`-byte boundary (a cache line; numpy's large
    arrays start 16 bytes into one): kernels may then write whole lines past the caches (non-temporal vector
    stores need aligned addresses, see kernels/pointwise.py)."""
    count = int(np.prod(shape))
    itemsize = np.dtype(FLOAT).itemsize
    memory = np.zeros(count + alignment // itemsize, dtype=FLOAT)
    start = (-memory.ctypes.data % alignment) // itemsize
    return memory[start:start + count].reshape(shape)


def c_div(a: int, b: int) -> int:
    """C integer division (truncates toward zero), which Darknet's shape formulas use."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q
