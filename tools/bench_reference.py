"""The anchors' side of tools/bench.py: a Darknet cfg reader, a weights reader and a PyTorch builder written
independently of darknetpy (they share no code with it), so that the PyTorch anchor runs the same network
from the same .cfg and .weights files: inference (the layers the benchmark's models use), and the detector
training case's anchor (a trainable twin of a YOLO cfg plus Darknet's [yolo] loss, bottom of the file).
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
            scale = float(opts.get("scale_x_y", 1))   # AlexeyAB: x -> x*scale - (scale - 1)/2 after the logistic
            steps.append(("yolo", None, {"n": anchors_here, "entries": classes + 5, "alpha": scale,
                                         "beta": -0.5 * (scale - 1)}))
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
                    x = torch.cat([torch.sigmoid(view[:, :, 0:2]) * p["alpha"] + p["beta"], view[:, :, 2:4],
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


# ---- detector training: the trainable twin and Darknet's [yolo] loss in PyTorch --------------------------------
class YoloHeadSpec:
    """What the loss needs from one [yolo] section: its anchors (network pixels), mask, classes, ignore_thresh."""

    def __init__(self, opts: dict[str, str]):
        values = [float(v) for v in opts["anchors"].split(",") if v.strip()]
        self.anchors = list(zip(values[0::2], values[1::2]))
        self.mask = [int(v) for v in opts["mask"].split(",")] if "mask" in opts else list(range(len(self.anchors)))
        self.classes = int(opts.get("classes", 20))
        self.ignore_thresh = float(opts.get("ignore_thresh", 0.5))
        if float(opts.get("truth_thresh", 1)) < 1 or any(key in opts for key in (
                "iou_loss", "scale_x_y", "new_coords", "iou_thresh", "label_smooth_eps", "focal_loss",
                "iou_normalizer", "cls_normalizer", "obj_normalizer")):
            raise NotImplementedError("the torch yolo loss follows pjreddie's rules only (spec §12.1.1-5)")


def build_torch_darknet_train(cfg_path: str | Path, weights_path: str | Path, width: int, height: int):
    """A trainable torch module of a Darknet detector cfg (convolutional with batch norm as BatchNorm2d in
    training mode, maxpool, route, upsample, shortcut, yolo) with the .weights loaded; its forward returns the
    raw inputs of the [yolo] sections (the logits the loss reads). Returns (module, [YoloHeadSpec, ...])."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    sections = read_cfg_sections(cfg_path)
    channels = int(sections[0][1].get("channels", 3))
    stream = WeightsStream(weights_path)
    shapes: list[tuple[int, int, int]] = []
    steps: list[tuple[str, dict]] = []
    modules = nn.ModuleList()
    heads: list[YoloHeadSpec] = []
    shape = (channels, height, width)
    for index, (kind, opts) in enumerate(sections[1:]):
        if kind in ("convolutional", "conv"):
            c, h, w = shape
            filters, size = int(opts.get("filters", 1)), int(opts.get("size", 1))
            stride = int(opts.get("stride", 1))
            padding = size // 2 if int(opts.get("pad", 0)) else int(opts.get("padding", 0))
            normalize = bool(int(opts.get("batch_normalize", 0)))
            conv = nn.Conv2d(c, filters, size, stride, padding, bias=not normalize)
            bias = stream.take(filters)
            block: list[nn.Module] = [conv]
            with torch.no_grad():
                if normalize:
                    norm = nn.BatchNorm2d(filters, momentum=0.01)   # Darknet's rolling .99 / .01
                    norm.bias.copy_(torch.from_numpy(bias))
                    norm.weight.copy_(torch.from_numpy(stream.take(filters)))
                    norm.running_mean.copy_(torch.from_numpy(stream.take(filters)))
                    norm.running_var.copy_(torch.from_numpy(stream.take(filters)))
                    block.append(norm)
                else:
                    conv.bias.copy_(torch.from_numpy(bias))
                conv.weight.copy_(torch.from_numpy(stream.take(conv.weight.numel()).reshape(conv.weight.shape)))
            activation = opts.get("activation", "logistic")
            if activation == "leaky":
                block.append(nn.LeakyReLU(0.1))
            elif activation != "linear":
                raise NotImplementedError(f"activation {activation} in the training builder")
            modules.append(nn.Sequential(*block))
            steps.append(("module", {"module": len(modules) - 1}))
            shape = (filters, (h + 2 * padding - size) // stride + 1, (w + 2 * padding - size) // stride + 1)
        elif kind in ("maxpool", "max"):
            c, h, w = shape
            stride = int(opts.get("stride", 1))
            size = int(opts.get("size", stride))
            padding = int(opts.get("padding", size - 1))
            left = int(padding / 2)
            steps.append(("max", {"size": size, "stride": stride, "pad": (left, padding - left)}))
            shape = (c, (h + padding - size) // stride + 1, (w + padding - size) // stride + 1)
        elif kind == "route":
            sources = [int(v) for v in opts["layers"].split(",")]
            sources = [s if s >= 0 else index + s for s in sources]
            steps.append(("route", {"sources": sources}))
            shape = (sum(shapes[s][0] for s in sources), shapes[sources[0]][1], shapes[sources[0]][2])
        elif kind == "shortcut":
            source = int(opts["from"])
            steps.append(("shortcut", {"source": source if source >= 0 else index + source}))
        elif kind == "upsample":
            stride = int(opts.get("stride", 2))
            steps.append(("upsample", {"stride": stride}))
            shape = (shape[0], shape[1] * stride, shape[2] * stride)
        elif kind == "yolo":
            heads.append(YoloHeadSpec(opts))
            steps.append(("yolo", {}))
        else:
            raise NotImplementedError(f"[{kind}] in the training builder")
        shapes.append(shape)
    lowest = float(np.finfo(np.float32).min)

    class DarknetTrainModule(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = modules

        def forward(self, x):
            results, logits = [], []
            for kind, p in steps:
                previous = results[-1] if results else x
                if kind == "module":
                    y = self.blocks[p["module"]](previous)
                elif kind == "max":
                    left, right = p["pad"]
                    y = F.max_pool2d(F.pad(previous, (left, right, left, right), value=lowest), p["size"], p["stride"])
                elif kind == "route":
                    y = torch.cat([results[s] for s in p["sources"]], dim=1)
                elif kind == "shortcut":
                    y = previous + results[p["source"]]
                elif kind == "upsample":
                    y = F.interpolate(previous, scale_factor=p["stride"], mode="nearest")
                else:   # yolo: the loss takes the logits; the activation is inside the loss
                    logits.append(previous)
                    y = previous
                results.append(y)
            return logits

    return DarknetTrainModule().train(), heads


def yolo_loss_torch(logits, truth, head: YoloHeadSpec, net_w: int, net_h: int):
    """Darknet's [yolo] training loss (pjreddie, spec §12.1) for one head: a scalar whose gradient with
    respect to the head's raw input is exactly −delta of forward_yolo_layer. Darknet applies no logistic
    derivative, so its σ-output deltas are the cross-entropy-on-logit gradient: BCE-with-logits for tx, ty
    (target x·w − i, weight 2 − w·h), objectness (0 unless ignored, 1 for the owner) and classes (owners
    only), ½·(2 − w·h)·squared error on the raw tw, th. truth: (B, 450) numpy, Darknet's rows."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    batch, _, lh, lw = logits.shape
    n, planes = len(head.mask), 5 + head.classes
    z = logits.view(batch, n, planes, lh, lw)
    boxes = np.asarray(truth, np.float32).reshape(batch, -1, 5)
    present = np.cumprod(boxes[:, :, 0] != 0, axis=1).astype(bool)   # a row ends at the first x == 0
    anchors = torch.tensor([head.anchors[m] for m in head.mask], dtype=torch.float32)
    with torch.no_grad():   # the ignore rule: best IoU of every prediction with any truth of its image
        xy = torch.sigmoid(z[:, :, 0:2])
        px = (torch.arange(lw, dtype=torch.float32) + xy[:, :, 0]) / lw
        py = (torch.arange(lh, dtype=torch.float32)[:, None] + xy[:, :, 1]) / lh
        pw = torch.exp(z[:, :, 2]) * (anchors[:, 0] / net_w)[None, :, None, None]
        ph = torch.exp(z[:, :, 3]) * (anchors[:, 1] / net_h)[None, :, None, None]
        pred = torch.stack([px, py, pw, ph], dim=-1).reshape(batch, -1, 1, 4)
        gt = torch.from_numpy(boxes[:, :, :4].copy())[:, None, :, :]
        overlap_w = (torch.minimum(pred[..., 0] + pred[..., 2] / 2, gt[..., 0] + gt[..., 2] / 2)
                     - torch.maximum(pred[..., 0] - pred[..., 2] / 2, gt[..., 0] - gt[..., 2] / 2))
        overlap_h = (torch.minimum(pred[..., 1] + pred[..., 3] / 2, gt[..., 1] + gt[..., 3] / 2)
                     - torch.maximum(pred[..., 1] - pred[..., 3] / 2, gt[..., 1] - gt[..., 3] / 2))
        inter = torch.where((overlap_w < 0) | (overlap_h < 0), 0.0, overlap_w * overlap_h)
        iou = inter / (pred[..., 2] * pred[..., 3] + gt[..., 2] * gt[..., 3] - inter)
        iou = torch.where(torch.from_numpy(present)[:, None, :], torch.nan_to_num(iou, nan=0.0), 0.0)
        ignored = (iou.max(dim=2).values > head.ignore_thresh).reshape(batch, n, lh, lw) \
            if boxes.shape[1] else torch.zeros((batch, n, lh, lw), dtype=torch.bool)
    # owners: each truth's best anchor over all anchors; later truths overwrite a slot, classes accumulate
    owners: dict[tuple[int, int, int, int], list] = {}
    for b in range(batch):
        for t in np.flatnonzero(present[b]):
            gx, gy, gw, gh, cls = (float(v) for v in boxes[b, t])
            shape_iou = [min(gw, aw / net_w) * min(gh, ah / net_h)
                         / (gw * gh + aw / net_w * ah / net_h - min(gw, aw / net_w) * min(gh, ah / net_h))
                         for aw, ah in head.anchors]
            best = int(np.argmax(shape_iou))
            if best not in head.mask:
                continue
            slot = head.mask.index(best)
            col, row = int(np.float32(gx) * np.float32(lw)), int(np.float32(gy) * np.float32(lh))
            aw, ah = head.anchors[best]
            key = (b, slot, row, col)
            classes = owners[key][5] if key in owners else set()
            owners[key] = [gx * lw - col, gy * lh - row, np.log(gw * net_w / aw), np.log(gh * net_h / ah),
                           2.0 - gw * gh, classes | {int(cls)}]
    obj_target = torch.zeros((batch, n, lh, lw))
    obj_weight = (~ignored).float()
    loss = logits.new_zeros(())
    if owners:
        index = torch.tensor(list(owners), dtype=torch.long).T
        values = list(owners.values())
        b, a, r, c = index
        obj_target[b, a, r, c] = 1.0
        obj_weight[b, a, r, c] = 1.0
        owned = z[b, a, :, r, c]                                            # (owners, planes)
        targets = torch.tensor([v[:4] for v in values], dtype=torch.float32)
        scale = torch.tensor([v[4] for v in values], dtype=torch.float32)[:, None]
        class_target = torch.zeros((len(values), head.classes))
        for k, v in enumerate(values):
            class_target[k, sorted(v[5])] = 1.0
        loss = loss + (scale * F.binary_cross_entropy_with_logits(owned[:, 0:2], targets[:, 0:2],
                                                                   reduction="none")).sum()
        loss = loss + (0.5 * scale * (owned[:, 2:4] - targets[:, 2:4]) ** 2).sum()
        loss = loss + F.binary_cross_entropy_with_logits(owned[:, 5:], class_target, reduction="sum")
    return loss + (F.binary_cross_entropy_with_logits(z[:, :, 4], obj_target, reduction="none")
                   * obj_weight).sum()


TRAIN_YOLO_BATCH = 8


def fixed_boxes(batch: int) -> "np.ndarray":
    """Darknet truth rows (batch, 90·5) with three boxes per image, different per image, of sizes that the
    big and the small anchors of a yolov3-tiny own (so both heads train)."""
    import numpy as np
    rows = np.zeros((batch, 450), np.float32)
    for b in range(batch):
        shift = 0.05 * (b % 4)
        for k, (x, y, w, h) in enumerate(((0.25, 0.30, 0.40, 0.50), (0.65, 0.70, 0.08, 0.12),
                                          (0.75, 0.25, 0.20, 0.15))):
            rows[b, 5 * k:5 * k + 5] = (x + shift, y + shift / 2, w, h, (7 * b + 13 * k) % 80)
    return rows


def training_inputs(cfg_path: str | Path, batch: int):
    """The seeded images and the fixed boxes both engines train on."""
    import numpy as np
    options = read_cfg_sections(cfg_path)[0][1]
    shape = (batch, int(options.get("channels", 3)), int(options["height"]), int(options["width"]))
    return np.random.default_rng(11).random(shape, dtype=np.float32), fixed_boxes(batch)


def detector_training_step(engine: str, cfg_path: str | Path, weights_path: str | Path, threads: int):
    """A callable doing one training step on the inputs of `training_inputs`: engine "darknetpy"
    (Model.train_batch: Darknet's train_network, one update) or "torch" (the twin's forward, the [yolo] losses,
    backward, and torch SGD set to Darknet's update: lr/batch, momentum, decay·batch on the conv weights only,
    spec §6). The cfg must say batch=TRAIN_YOLO_BATCH, subdivisions=1."""
    options = read_cfg_sections(cfg_path)[0][1]
    batch = int(options.get("batch", 1)) * int(options.get("subdivisions", 1))
    x, truth = training_inputs(cfg_path, batch)
    if engine == "darknetpy":
        import darknetpy
        model = darknetpy.load(cfg_path, weights_path)
        return lambda: model.train_batch(x, truth)
    import torch
    torch.set_num_threads(threads)
    module, heads = build_torch_darknet_train(cfg_path, weights_path, x.shape[3], x.shape[2])
    decayed = [p for name, p in module.named_parameters() if name.endswith("0.weight")]   # conv weights
    others = [p for name, p in module.named_parameters() if not name.endswith("0.weight")]
    rate = float(options.get("learning_rate", 0.001))
    optimizer = torch.optim.SGD([{"params": decayed, "weight_decay": float(options.get("decay", 0.0005)) * batch},
                                 {"params": others, "weight_decay": 0.0}],
                                lr=rate / batch, momentum=float(options.get("momentum", 0.9)))
    tx = torch.from_numpy(x)

    def step():
        optimizer.zero_grad(set_to_none=False)
        logits = module(tx)
        loss = sum(yolo_loss_torch(z, truth, head, x.shape[3], x.shape[2]) for z, head in zip(logits, heads))
        loss.backward()
        optimizer.step()
        return float(loss)
    return step


if __name__ == "__main__":
    # python tools/bench_reference.py ENGINE CFG WEIGHTS THREADS STEPS: one engine training alone in this process
    # (the bench's peak-RSS measurement of the detector training case)
    import sys
    engine, cfg, weights, threads, steps = sys.argv[1:6]
    run = detector_training_step(engine, cfg, weights, int(threads))
    for _ in range(int(steps)):
        run()
    status = Path("/proc/self/status").read_text()
    print(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))   # peak RSS, KiB
