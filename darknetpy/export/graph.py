"""A small ONNX graph builder: named nodes and initializers, one naming scope per Darknet layer.

Every tensor is named after the layer that makes it: the layer's output is exactly `conv_12`, `yolo_16`,
its intermediate tensors and constants `conv_12/Conv`, `conv_12/weights`, so a graph viewer shows the cfg.
Only the `onnx` package's own builders are used (no torch).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

#: -FLT_MAX: what Darknet's max pooling reads outside the image (a window of nothing but padding yields it)
NEG_FLT_MAX = np.float32(-3.4028234663852886e38)


class Graph:
    """Nodes and initializers of one model under construction; `opset` selects operator signatures."""

    def __init__(self, opset: int):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        #: (name, array) of every constant, written into the model only by `model` (see there)
        self.initializers: list[tuple[str, np.ndarray]] = []
        self._taken: set[str] = set()
        self._scope = ""
        self._scope_start = 0
        self._consumed: set[str] = set()

    # ---- names ------------------------------------------------------------------------------------------
    def unique(self, name: str) -> str:
        candidate, n = name, 1
        while candidate in self._taken:
            n += 1
            candidate = f"{name}_{n}"
        self._taken.add(candidate)
        return candidate

    def reserve(self, name: str) -> None:
        self._taken.add(name)

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        previous = self._scope, self._scope_start
        self._scope, self._scope_start = name, len(self.nodes)
        try:
            yield
        finally:
            self._scope, self._scope_start = previous

    def _scoped(self, suffix: str) -> str:
        return self.unique(f"{self._scope}/{suffix}" if self._scope else suffix)

    # ---- building blocks -------------------------------------------------------------------------------
    def const(self, value, suffix: str = "const", dtype=np.float32) -> str:
        """An initializer holding `value` (float32 unless dtype says otherwise)."""
        array = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        name = self._scoped(suffix)
        self.initializers.append((name, array))
        return name

    def ints(self, values: Sequence[int], suffix: str = "shape") -> str:
        return self.const(np.asarray(values, np.int64), suffix, np.int64)

    def op(self, op_type: str, inputs: Sequence[str], suffix: str | None = None, **attrs) -> str:
        """Append one single-output node; returns its output tensor name."""
        out = self._scoped(suffix or op_type)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        self._consumed.update(i for i in inputs if i)
        return out

    def finish(self, tensor: str, name: str) -> str:
        """Give a layer's result its cfg name: the last node's output is renamed when that node belongs to the
        current scope and nobody reads it yet, otherwise (an input passed straight through) an Identity
        carries the name."""
        last = self.nodes[-1] if len(self.nodes) > self._scope_start else None
        if last is not None and list(last.output) == [tensor] and tensor not in self._consumed:
            last.output[0] = name
            last.name = name
            self._taken.add(name)
            return name
        self.nodes.append(helper.make_node("Identity", [tensor], [name], name=name))
        self._consumed.add(tensor)
        self._taken.add(name)
        return name

    # ---- opset-dependent helpers -------------------------------------------------------------------------
    def reshape(self, x: str, shape: Sequence[int], suffix: str = "Reshape") -> str:
        """Reshape; a 0 keeps the input's dimension (the batch, which may be symbolic)."""
        return self.op("Reshape", [x, self.ints(shape, suffix + "/shape")], suffix)

    def slice(self, x: str, starts: Sequence[int], ends: Sequence[int], axes: Sequence[int],
              steps: Sequence[int] | None = None, suffix: str = "Slice") -> str:
        inputs = [x, self.ints(starts, suffix + "/starts"), self.ints(ends, suffix + "/ends"),
                  self.ints(axes, suffix + "/axes")]
        if steps is not None:
            inputs.append(self.ints(steps, suffix + "/steps"))
        return self.op("Slice", inputs, suffix)

    def reduce_sum(self, x: str, axes: Sequence[int], keepdims: bool, suffix: str = "ReduceSum") -> str:
        # ReduceSum takes its axes as an input from opset 13 on, the only opsets exported
        return self.op("ReduceSum", [x, self.ints(axes, suffix + "/axes")], suffix, keepdims=int(keepdims))

    def unsqueeze(self, x: str, axes: Sequence[int], suffix: str = "Unsqueeze") -> str:
        return self.op("Unsqueeze", [x, self.ints(axes, suffix + "/axes")], suffix)

    def scale_shift(self, x: str, scale, shift, suffix: str = "affine") -> str:
        """x * scale + shift with constants broadcast over x; ones and zeros are left out."""
        scale = np.asarray(scale, np.float32)
        shift = np.asarray(shift, np.float32)
        if not np.all(scale == 1):
            x = self.op("Mul", [x, self.const(scale, suffix + "/scale")], suffix + "/Mul")
        if not np.all(shift == 0):
            x = self.op("Add", [x, self.const(shift, suffix + "/shift")], suffix + "/Add")
        return x

    # ---- the model ---------------------------------------------------------------------------------------
    def model(self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto], graph_name: str,
              doc: str, producer_version: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, graph_name, inputs, outputs, doc_string=doc)
        opsets = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="darknetpy",
                                  producer_version=producer_version, doc_string=doc,
                                  ir_version=helper.find_min_ir_version_for(opsets))
        # written in place: make_graph and make_model copy every message they are given, and the weights are
        # nearly all of a model (2 copies of them instead of 4: yolov3's 250 MB)
        for name, array in self.initializers:
            tensor = model.graph.initializer.add()
            tensor.name = name
            tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
            tensor.dims.extend(array.shape)
            tensor.raw_data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        return model


def tensor_info(name: str, dims: Sequence[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(dims))
