"""Darknet's layer table (index, type, filters, size/stride, input -> output, BFLOPs) plus parameters."""
from __future__ import annotations


_COLUMNS = ((0, "layer"), (6, "type"), (11, "filters"), (19, "size/strd"), (36, "input"), (59, "output"),
            (71, "BFLOPs"), (87, "params"))  # start columns, lined up with the convolutional row


def _header() -> str:
    header = ""
    for column, title in _COLUMNS:
        header = f"{header:<{column}}{title}"
    return header


def summary_table(network) -> str:
    rows = [_header()]
    total_params = 0
    activation_floats = 0
    for layer in network.layers:
        params = layer.parameter_count()
        total_params += params
        if layer.out_shape is not None:
            activation_floats += layer.out_shape.size
        line = f"{layer.index:5d} {layer.summary_row()}"
        rows.append(f"{line:<82} {params:>10,d}")
    s = network.input_shape
    rows.append("")
    rows.append(f"input: {s.w} x {s.h} x {s.c}   layers: {len(network.layers)}")
    rows.append(f"parameters: {total_params:,d}   BFLOPs: {network.flops() / 1e9:.3f}   "
                f"activations: {activation_floats * 4 / 2**20:.2f} MiB per image")
    return "\n".join(rows)
