"""Export a built network to ONNX (`darknetpy export`, `darknetpy.export_onnx`).

The `onnx` package is an optional extra (pip install "darknetpy[onnx]"); nothing else is needed (no torch).
The file is written atomically: an error leaves no partial .onnx behind.
"""
from __future__ import annotations

import importlib
import os

from ..errors import DarknetError

#: the lowest opset the graphs are written for (ReduceSum/Unsqueeze with axes as inputs, Pad, Resize 13);
#: also the default, for the widest choice of runtimes
MIN_OPSET = 13
DEFAULT_OPSET = 13
INSTALL_HINT = 'pip install "darknetpy[onnx]"'


class ExportError(DarknetError):
    """The model cannot be exported or written."""


def _onnx_module():
    try:
        return importlib.import_module(".onnx", __name__)
    except ImportError as exc:
        if exc.name is None or exc.name.split(".")[0] not in ("onnx", "google"):
            raise
        raise ExportError(f"ONNX export needs the onnx package: {INSTALL_HINT}") from None


def build_onnx(model, *, batch: int = 1, dynamic_batch: bool = False, decode: bool = False,
               opset: int = DEFAULT_OPSET):
    """The onnx.ModelProto of a darknetpy Model or Network (as loaded: its input size and weights)."""
    from ..api import Model
    module = _onnx_module()
    network = model.network if isinstance(model, Model) else model
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    newest = module.newest_opset()
    if not MIN_OPSET <= opset <= newest:
        raise ExportError(f"opset {opset} is not available: the installed onnx package writes opsets "
                          f"{MIN_OPSET} to {newest}")
    return module.build_model(network, batch=batch, dynamic_batch=dynamic_batch, decode=decode, opset=opset)


def export_onnx(model, path: str | os.PathLike, *, batch: int = 1, dynamic_batch: bool = False,
                decode: bool = False, opset: int = DEFAULT_OPSET) -> None:
    """Write `model` (a darknetpy Model or Network) to the ONNX file `path`.

    Outputs: without `decode`, each detection head's output in network order (else the network's output),
    (batch, c, h, w) exactly as darknetpy's layers hold them; with `decode`, `boxes`, `objectness` and
    `scores` (see darknetpy/export/decode.py). `dynamic_batch` makes the batch dimension symbolic."""
    from ..fileio import atomic_writer
    proto = build_onnx(model, batch=batch, dynamic_batch=dynamic_batch, decode=decode, opset=opset)
    target = os.fspath(path)
    try:
        data = proto.SerializeToString()
    except ValueError as exc:   # protobuf's 2 GiB message limit
        raise ExportError(f"the model is too large for one ONNX file ({exc})", target) from None
    try:
        with atomic_writer(target) as stream:
            stream.write(data)
    except OSError as exc:
        raise ExportError(f"cannot write the ONNX model: {exc.strerror or exc}", target) from None


__all__ = ["export_onnx", "build_onnx", "ExportError", "DEFAULT_OPSET", "MIN_OPSET"]
