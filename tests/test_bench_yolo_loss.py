"""The PyTorch [yolo] loss of tools/bench_reference.py (the anchor of the detector-training bench case) has,
as its gradient with respect to the head's raw input, exactly −delta of Darknet's forward_yolo_layer
(spec §12.1): the ignore rule, the owners' box/objectness/class targets, the 2 − w·h scale and two truths in
one cell. darknetpy's delta is checked against Darknet elsewhere (test_detection_loss, the oracle); here it
is the reference for the torch loss, so that the bench times the same work on both sides."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from builders import quiet_net

torch = pytest.importorskip("torch")

REFERENCE = Path(__file__).resolve().parents[1] / "tools" / "bench_reference.py"
ANCHORS = "6,5, 10,12, 20,14, 30,30"


def load_reference():
    spec = importlib.util.spec_from_file_location("darknetpy_bench_reference", REFERENCE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def yolo_net(mask: str):
    # a 1x1 stride-2 maxpool picks every other pixel: a 16x12 grid on a 32x24 network (cell ≠ pixel)
    return quiet_net(f"[net]\nwidth=32\nheight=24\nchannels=18\nbatch=2\n\n[maxpool]\nsize=1\nstride=2\n\n"
                     f"[yolo]\nmask={mask}\nanchors={ANCHORS}\nclasses=4\nnum=4\nignore_thresh=.3\n")


def truth_rows() -> np.ndarray:
    rows = np.zeros((2, 450), np.float32)
    boxes = [[(0.30, 0.40, 0.30, 0.22, 1), (0.31, 0.41, 0.29, 0.21, 3),   # one cell, one anchor, two classes
              (0.70, 0.60, 0.60, 0.55, 2), (0.55, 0.20, 0.20, 0.50, 0)],
             [(0.10, 0.85, 0.20, 0.25, 2), (0.90, 0.10, 0.95, 0.90, 1)]]
    for b, image in enumerate(boxes):
        for k, box in enumerate(image):
            rows[b, 5 * k:5 * k + 5] = box
    return rows


@pytest.mark.parametrize("mask", ["2,3", "0,1"])
def test_torch_yolo_loss_gradient_is_darknet_delta(mask: str) -> None:
    reference = load_reference()
    net = yolo_net(mask)
    rng = np.random.default_rng(4)
    x = rng.normal(0.0, 0.8, (2, 18, 24, 32)).astype(np.float32)
    truth = truth_rows()
    net.forward(x, train=True, truth=truth)
    head_input, delta = net.outputs[0], net.layers[1].delta
    assert head_input.shape == (2, 18, 12, 16)

    section = dict(line.split("=", 1) for line in
                   f"mask={mask}\nanchors={ANCHORS}\nclasses=4\nignore_thresh=.3".splitlines())
    logits = torch.from_numpy(head_input.copy()).requires_grad_(True)
    reference.yolo_loss_torch(logits, truth, reference.YoloHeadSpec(section), 32, 24).backward()

    planes = delta.reshape(2, 2, 9, 12, 16)
    objectness = planes[:, :, 4]
    assert 0 < np.count_nonzero(objectness == 0) < objectness.size   # the ignore rule took some, not all
    assert np.count_nonzero(planes[:, :, :4]) > 0                   # some truth is owned by this head
    np.testing.assert_allclose(logits.grad.numpy(), -delta, rtol=1e-5, atol=1e-6)


def test_loss_refuses_alexeyab_keys() -> None:
    reference = load_reference()
    with pytest.raises(NotImplementedError):
        reference.YoloHeadSpec({"anchors": ANCHORS, "mask": "0,1", "iou_loss": "ciou"})
