"""Network -> ONNX model: the layers the outputs need, in cfg order, each by its family's exporter
(export/layers.py), then the outputs: every detection head's output in network order (else the network's
output layer), or with `decode` the boxes and scores of export/decode.py.
"""
from __future__ import annotations

import os

import onnx
import onnx.defs

from .. import __version__
from ..layers.base import Layer
from ..layers.detection import DetectionHead
from ..network import Network
from .decode import decoder_for
from .graph import Graph, tensor_info
from .layers import exporter_for, tensor_dims

INPUT_NAME = "input"
DECODED_NAMES = ("boxes", "objectness", "scores")


def newest_opset() -> int:
    return onnx.defs.onnx_opset_version()


def output_layers(network: Network) -> list[Layer]:
    """The layers whose outputs the model returns: each detection head in network order, else the output
    layer (the last one that is not a [cost])."""
    heads = [layer for layer in network.layers[:network.output_index + 1] if isinstance(layer, DetectionHead)]
    return heads or [network.output_layer]


def _needed(network: Network, outputs: list[Layer]) -> list[Layer]:
    """The layers the outputs depend on, in network order (nothing that no output reads is exported)."""
    wanted: set[int] = set()
    stack = [layer.index for layer in outputs]
    while stack:
        i = stack.pop()
        if i in wanted:
            continue
        wanted.add(i)
        stack.extend(j for j in network.layers[i].input_indices() if j >= 0)
    return [layer for layer in network.layers if layer.index in wanted]


def layer_tensor_name(layer: Layer) -> str:
    return f"{exporter_for(layer).prefix}_{layer.index}"


def build_model(network: Network, *, batch: int = 1, dynamic_batch: bool = False, decode: bool = False,
                opset: int) -> onnx.ModelProto:
    outputs = output_layers(network)
    layers = _needed(network, outputs)
    for layer in layers:          # every refusal before any work, at its cfg line
        exporter_for(layer)
    decoders = [decoder_for(layer) for layer in outputs] if decode else []
    graph = Graph(opset)
    batch_dim: int | str = "batch" if dynamic_batch else batch
    graph.reserve(INPUT_NAME)
    names = {layer.index: layer_tensor_name(layer) for layer in layers}
    for name in names.values():
        graph.reserve(name)
    tensors: dict[int, str] = {-1: INPUT_NAME}
    for layer in layers:
        export = exporter_for(layer)
        with graph.scope(names[layer.index]):
            result = export.build(graph, layer, [tensors[j] for j in layer.input_indices()])
            tensors[layer.index] = graph.finish(result, names[layer.index])
    if decode:
        graph_outputs = _decoded_outputs(graph, network, outputs, decoders, tensors, batch_dim)
    else:
        graph_outputs = [tensor_info(tensors[layer.index], [batch_dim, *tensor_dims(layer.out_shape)])
                         for layer in outputs]
    inputs = [tensor_info(INPUT_NAME, [batch_dim, *tensor_dims(network.input_shape)])]
    net = network.net
    doc = (f"{network.path} ({net.width}x{net.height}x{net.channels} input) exported by darknetpy "
           f"{__version__}" + ("; outputs decoded boxes and scores" if decode else ""))
    name = os.path.splitext(os.path.basename(str(network.path)))[0] or "darknet"
    return graph.model(inputs, graph_outputs, name, doc, __version__)


def _decoded_outputs(graph: Graph, network: Network, heads: list[Layer], decoders, tensors: dict[int, str],
                     batch_dim) -> list[onnx.ValueInfoProto]:
    net_size = (network.net.width, network.net.height)
    parts = []
    for layer, decoder in zip(heads, decoders):
        with graph.scope(f"decode_{layer.index}"):
            parts.append(decoder(graph, layer, tensors[layer.index], net_size))
    classes = parts[0].classes
    for layer, part in zip(heads, parts):
        if part.classes != classes:
            raise layer.config.error(f"--decode needs every head to predict the same classes; this one has "
                                     f"{part.classes}, the first {classes}")
    total = sum(part.candidates for part in parts)
    with graph.scope("decode"):
        results = []
        for field in DECODED_NAMES:
            pieces = [getattr(part, field) for part in parts]
            joined = pieces[0] if len(pieces) == 1 else graph.op("Concat", pieces, field, axis=1)
            results.append(graph.finish(joined, field))
    dims = {"boxes": [batch_dim, total, 4], "objectness": [batch_dim, total], "scores": [batch_dim, total, classes]}
    return [tensor_info(name, dims[name]) for name in results]

