"""The anchors' side of tools/bench.py: a Darknet cfg reader, a weights reader and a PyTorch builder written
independently of darknetpy (they share no code with it), so that the PyTorch anchor runs the same network
from the same .cfg and .weights files. Inference only; the layers the benchmark's models use.
"""
from __future__ import annotations

import struct
from pathlib import Path


def read_cfg_sections(path: str | Path) -> list[tuple[str, dict[str, str]]]:
    """A deliberately small cfg reader for the anchors (independent of darknetpy's parser)."""
    sections: list[tuple[str, dict[str, str]]] = []
    for raw in Path(path).read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            sections.append((line.strip("[]").strip().lower(), {}))
        elif "=" in line and sections:
            key, value = line.split("=", 1)
            sections[-1][1][key.strip()] = value.strip()
    return sections


class WeightsStream:
    def __init__(self, path: str | Path):
        import numpy as np
        data = Path(path).read_bytes()
        major, minor, _revision = struct.unpack_from("<3i", data, 0)
        seen_bytes = 8 if (major * 10 + minor) >= 2 and major < 1000 and minor < 1000 else 4
        self.values = np.frombuffer(data, dtype="<f4", offset=12 + seen_bytes)
        self.position = 0

    def take(self, count: int):
        chunk = self.values[self.position:self.position + count]
        if chunk.size != count:
            raise ValueError("weights file is shorter than the cfg needs")
        self.position += count
        return chunk.astype("float32")


def build_torch_darknet(cfg_path: str | Path, weights_path: str | Path, width: int, height: int):
    """Build a torch module running a Darknet cfg at inference (conv/maxpool/avgpool/route/shortcut/upsample/
    dropout/yolo/softmax). Batch norm is folded into the conv weights with Darknet's sqrt(var) + 1e-6 form.
    Returns (module, output_layer_indices)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    sections = read_cfg_sections(cfg_path)
    net_options, layer_sections = sections[0][1], sections[1:]
    channels = int(net_options.get("channels", 3))
    stream = WeightsStream(weights_path)
    shapes: list[tuple[int, int, int]] = []     # (c, h, w) of every layer output
    steps: list[tuple[str, object, dict]] = []

    def activation_fn(name: str):
        return {"leaky": lambda t: F.leaky_relu(t, 0.1), "linear": lambda t: t, "relu": F.relu,
                "logistic": torch.sigmoid}[name]

    shape = (channels, height, width)
    for index, (kind, opts) in enumerate(layer_sections):
        if kind in ("convolutional", "conv"):
            c, h, w = shape
            filters, size = int(opts.get("filters", 1)), int(opts.get("size", 1))
            stride, groups = int(opts.get("stride", 1)), int(opts.get("groups", 1))
            padding = size // 2 if int(opts.get("pad", 0)) else int(opts.get("padding", 0))
            conv = nn.Conv2d(c, filters, size, stride, padding, groups=groups, bias=True)
            bias = stream.take(filters)
            if int(opts.get("batch_normalize", 0)):
                scales, mean, var = stream.take(filters), stream.take(filters), stream.take(filters)
                weights = stream.take(filters * (c // groups) * size * size).reshape(conv.weight.shape)
                factor = scales / (np.sqrt(var) + np.float32(1e-6))
                weights = weights * factor[:, None, None, None]
                bias = bias - mean * factor
            else:
                weights = stream.take(filters * (c // groups) * size * size).reshape(conv.weight.shape)
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(weights)))
                conv.bias.copy_(torch.from_numpy(np.ascontiguousarray(bias)))
            steps.append(("conv", conv, {"act": activation_fn(opts.get("activation", "logistic"))}))
            shape = (filters, (h + 2 * padding - size) // stride + 1, (w + 2 * padding - size) // stride + 1)
        elif kind in ("maxpool", "max"):
            c, h, w = shape
            stride = int(opts.get("stride", 1))
            size = int(opts.get("size", stride))
            padding = int(opts.get("padding", size - 1))
            left = int(padding / 2)   # C truncation of (-padding)/2, negated
            steps.append(("max", None, {"size": size, "stride": stride, "pad": (left, padding - left)}))
            shape = (c, (h + padding - size) // stride + 1, (w + padding - size) // stride + 1)
        elif kind in ("avgpool", "avg"):
            steps.append(("avg", None, {}))
            shape = (shape[0], 1, 1)
        elif kind == "route":
            if "groups" in opts:
                raise NotImplementedError("route groups")
            sources = [int(v) for v in opts["layers"].split(",")]
            sources = [s if s >= 0 else index + s for s in sources]
            steps.append(("route", None, {"sources": sources}))
            first = shapes[sources[0]]
            shape = (sum(shapes[s][0] for s in sources), first[1], first[2])
        elif kind == "shortcut":
            source = int(opts["from"])
            source = source if source >= 0 else index + source
            if shapes[source] != shape:
                raise NotImplementedError("shortcut between different shapes")
            steps.append(("shortcut", None, {"source": source,
                                             "act": activation_fn(opts.get("activation", "linear"))}))
        elif kind == "upsample":
            stride = int(opts.get("stride", 2))
            if stride < 0 or float(opts.get("scale", 1)) != 1:
                raise NotImplementedError("upsample with negative stride or scale")
            steps.append(("upsample", None, {"stride": stride}))
            shape = (shape[0], shape[1] * stride, shape[2] * stride)
        elif kind == "dropout":
            steps.append(("identity", None, {}))
        elif kind == "yolo":
            classes = int(opts.get("classes", 20))
            anchors_here = len(opts["mask"].split(",")) if "mask" in opts else int(opts.get("num", 1))
            if float(opts.get("scale_x_y", 1)) != 1:
                raise NotImplementedError("yolo scale_x_y")
            steps.append(("yolo", None, {"n": anchors_here, "entries": classes + 5}))
        elif kind in ("softmax", "soft"):
            if int(opts.get("groups", 1)) != 1:
                raise NotImplementedError("softmax groups")
            # spatial=1: a softmax over the channels of every pixel (segmenters), else over the whole output
            steps.append(("softmax", None, {"spatial": opts.get("spatial", "0").strip() == "1"}))
        else:
            raise NotImplementedError(f"[{kind}] in the torch builder")
        shapes.append(shape)

    outputs = [i for i, (kind, _, _) in enumerate(steps) if kind == "yolo"] or [len(steps) - 1]

    class DarknetModule(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleList([m for _, m, _ in steps if m is not None])

        def forward(self, x):
            results = []
            for kind, module, p in steps:
                if kind == "conv":
                    x = p["act"](module(results[-1] if results else x))
                elif kind == "max":
                    padded = F.pad(results[-1], (p["pad"][0], p["pad"][1], p["pad"][0], p["pad"][1]),
                                   value=lowest)
                    x = F.max_pool2d(padded, p["size"], p["stride"])
                elif kind == "avg":
                    x = results[-1].mean(dim=(2, 3), keepdim=True)
                elif kind == "route":
                    x = torch.cat([results[s] for s in p["sources"]], dim=1)
                elif kind == "shortcut":
                    x = p["act"](results[-1] + results[p["source"]])
                elif kind == "upsample":
                    x = F.interpolate(results[-1], scale_factor=p["stride"], mode="nearest")
                elif kind == "identity":
                    x = results[-1]
                elif kind == "yolo":
                    prev = results[-1]
                    b, c, h, w = prev.shape
                    view = prev.reshape(b, p["n"], p["entries"], h, w)
                    x = torch.cat([torch.sigmoid(view[:, :, 0:2]), view[:, :, 2:4],
                                   torch.sigmoid(view[:, :, 4:])], dim=2).reshape(b, c, h, w)
                elif kind == "softmax":
                    prev = results[-1]
                    if p["spatial"]:
                        x = torch.softmax(prev, dim=1)
                    else:
                        x = torch.softmax(prev.reshape(prev.shape[0], -1), dim=1).reshape(prev.shape)
                results.append(x)
            return [results[i] for i in outputs]

    lowest = float(np.finfo(np.float32).min)   # Darknet's -FLT_MAX for out-of-image maxpool taps
    module = DarknetModule().eval()
    return module, outputs
