"""[route] and [shortcut]: the layers that read earlier layers' outputs (spec §2.8–2.9).

Layer references in the cfg are relative when negative and absolute otherwise; both must name an earlier
layer. [route] concatenates its inputs' flattened outputs per batch item (a channel concat when the spatial
sizes agree, otherwise a flat vector, as Darknet does); AlexeyAB's `groups`/`group_id` take one contiguous
slice of each input instead of all of it. [shortcut] adds an earlier layer into the previous one, with
Darknet's rule for mismatched shapes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels import activations as act
from ..kernels import routing as kernels
from .base import FLOAT, Layer, LayerConfig, Shape, option
from .epilogue import ActivationTail
from .registry import register

ACTIVATION_NAMES = tuple(act.ACTIVATION_CODES)


def resolve_reference(config: LayerConfig, key: str, raw: int, index: int) -> int:
    """Absolute index of the layer that `raw` (as written under `key`) names from layer `index`."""
    target = index + raw if raw < 0 else raw
    written = f"{key}={raw}"
    if target < 0:
        raise config.error(f"{written} points before the first layer (layer {index} would read layer "
                           f"{target})", key)
    if target == index:
        raise config.error(f"{written} makes layer {index} read its own output", key)
    if target > index:
        raise config.error(f"{written} points forward to layer {target}; layer {index} can only read "
                           f"earlier layers", key)
    return target


# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RouteConfig(LayerConfig):
    layers: tuple[int, ...] = option((), required=True)
    groups: int = option(1, minimum=1)      # AlexeyAB
    group_id: int = option(0, minimum=0)    # AlexeyAB


@register
class Route(Layer):
    kind = "route"
    Config = RouteConfig

    def __init__(self, config: RouteConfig, index: int):
        super().__init__(config, index)
        if config.group_id >= config.groups:
            raise config.error(f"group_id={config.group_id} must be smaller than groups={config.groups}",
                               "group_id")
        self.sources = [resolve_reference(config, "layers", raw, index) for raw in config.layers]

    def input_indices(self) -> list[int]:
        return list(self.sources)

    def output_shape(self, in_shapes: list[Shape]) -> Shape:
        cfg = self.config
        groups = cfg.groups
        for source, shape in zip(self.sources, in_shapes):
            if shape.size % groups:
                raise cfg.error(f"groups={groups} does not divide the {shape.size} outputs of layer {source}",
                                "groups")
        first = in_shapes[0]
        spatial_match = all(s.image and s.h == first.h and s.w == first.w for s in in_shapes)
        if spatial_match:
            for source, shape in zip(self.sources, in_shapes):
                if shape.c % groups:
                    raise cfg.error(f"groups={groups} does not divide the {shape.c} channels of layer "
                                    f"{source}", "groups")
            return Shape(sum(s.c for s in in_shapes) // groups, first.h, first.w)
        return Shape.flat(sum(s.size for s in in_shapes) // groups)

    def _slices(self) -> list[tuple[int, int, int]]:
        """(offset in the output, start in the input, length) per input, all per batch item."""
        groups, group_id = self.config.groups, self.config.group_id
        out = []
        offset = 0
        for shape in self.in_shapes:
            part = shape.size // groups
            out.append((offset, part * group_id, part))
            offset += part
        return out

    def forward(self, xs: list[np.ndarray], train: bool) -> np.ndarray:
        batch = self.output.shape[0]
        out = self.output.reshape(batch, -1)
        for x, (offset, start, length) in zip(xs, self._slices()):
            np.copyto(out[:, offset:offset + length], x.reshape(batch, -1)[:, start:start + length])
        return self.output

    def backward(self, dy: np.ndarray, xs: list[np.ndarray], dxs: list[np.ndarray | None]) -> None:
        batch = dy.shape[0]
        dy_flat = dy.reshape(batch, -1)
        for dx, (offset, start, length) in zip(dxs, self._slices()):
            if dx is not None:
                target = dx.reshape(batch, -1)[:, start:start + length]
                target += dy_flat[:, offset:offset + length]

    def summary_row(self) -> str:
        row = "route " + "".join(f" {i}" for i in self.sources)
        if self.config.groups > 1:
            row += f"  {self.config.group_id}/{self.config.groups}"
        return row


# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShortcutConfig(LayerConfig):
    from_layers: tuple[int, ...] = option((), key="from", required=True)
    activation: str = option("linear", choices=ACTIVATION_NAMES)
    alpha: float = option(1.0)
    beta: float = option(1.0)
    weights_type: str = option("none", choices=("none", "per_feature", "per_layer", "per_channel"))  # AlexeyAB
    weights_normalization: str = option("none", choices=("none", "relu", "avg_relu", "softmax"))     # AlexeyAB


@register
class Shortcut(Layer):
    kind = "shortcut"
    Config = ShortcutConfig

    def __init__(self, config: ShortcutConfig, index: int):
        super().__init__(config, index)
        if len(config.from_layers) != 1:
            raise config.error(f"from= with {len(config.from_layers)} layers (AlexeyAB's multi-input shortcut) "
                               f"is not supported yet; give exactly one layer", "from")
        if config.weights_type != "none":
            raise config.error(f"weights_type={config.weights_type} (weighted shortcut) is not supported yet",
                               "weights_type")
        if config.weights_normalization != "none":
            raise config.error(f"weights_normalization={config.weights_normalization} is not supported yet",
                               "weights_normalization")
        self.source = resolve_reference(config, "from", config.from_layers[0], index)
        self.activation = act.ACTIVATION_CODES[config.activation]
        self.tail = ActivationTail(self.activation)
        self.alpha = FLOAT(config.alpha)
        self.beta = FLOAT(config.beta)

    def input_indices(self) -> list[int]:
        return [self.index - 1, self.source]

    def output_shape(self, in_shapes: list[Shape]) -> Shape:
        cfg = self.config
        prev, added = in_shapes
        self.require_image(prev)
        if not added.image or added.size == 0:
            raise cfg.error(f"[shortcut] needs an image from layer {self.source}, but it outputs "
                            f"{added.size} values with no spatial shape", "from")
        # Darknet asserts that both axes are scaled by the same integer factor
        if added.w // prev.w != added.h // prev.h or prev.w // added.w != prev.h // added.h:
            raise cfg.error(f"layer {self.source} ({added}) and the previous layer ({prev}) differ in size by "
                            f"different factors along x and y", "from")
        return prev

    def allocate(self, batch: int) -> None:
        super().allocate(batch)
        self.tail.allocate(self.output.shape)

    def forward(self, xs: list[np.ndarray], train: bool) -> np.ndarray:
        y = self.output
        kernels.shortcut_forward(xs[0], xs[1], self.alpha, self.beta, y)
        self.tail.apply(y)
        return y

    def backward(self, dy: np.ndarray, xs: list[np.ndarray], dxs: list[np.ndarray | None]) -> None:
        self.tail.backprop(dy, self.output)
        dprev, dadd = dxs
        if dprev is not None:
            added = self.in_shapes[1]
            kernels.shortcut_backward_prev(dy, (dy.shape[0], added.c, added.h, added.w), self.alpha, dprev)
        if dadd is not None:
            kernels.shortcut_backward_add(dy, self.beta, dadd)

    def summary_row(self) -> str:
        return (f"res  {self.source:3d}                {self.describe_shape(self.in_shapes[1])}   ->  "
                f"{self.describe_shape(self.out_shape)}")
