"""[yolo] training against Darknet's own numbers: ../shared/darknet-oracle/train-detect/yolo2heads (README
there). A two-head yolov3-tiny-like detector, batch 4 / subdivisions 2, trained by Darknet's train_network 4
times; per pass of update 1 both heads' input, output and delta, the printed statistics lines, the costs and
the losses; after every update the parameters of an accumulate-the-1x1-delta variant (textbook_<k>.npy)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import darknetpy
from conftest import shared_path

pytestmark = pytest.mark.shared

HEADS = (8, 15)


def oracle(name: str):
    return shared_path("darknet-oracle", "train-detect", "yolo2heads", name)


def load_model():
    return darknetpy.load(oracle("yolo2heads.cfg"), oracle("init.weights"))


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    scale = max(float(np.abs(expected).max()), 1e-30)
    return float(np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max()) / scale


def words(line: str) -> list[str]:
    return [w for w in line.replace(",", " ").split() if not w[0].isdigit() and w[0] not in "-."]


def numbers(line: str) -> list[float]:
    return [float(w) for w in line.replace(",", " ").split() if w[0].isdigit()]


@pytest.fixture(scope="module")
def passes():
    return json.loads(oracle("passes.json").read_text())


@pytest.mark.parametrize("pass_", [0, 1])
@pytest.mark.parametrize("index", HEADS)
def test_head_output_delta_cost_and_line_on_darknets_inputs(index, pass_, passes):
    model = load_model()
    head = model.network.layers[index]
    truth = np.load(oracle("truth.npy")).astype(np.float32)[2 * pass_:2 * pass_ + 2]
    x = np.load(oracle(f"input_L{index}_pass{pass_}.npy")).astype(np.float32)
    head.allocate(x.shape[0])
    head.set_truth(truth)
    head.forward([x], train=True)
    assert relative_error(head.output, np.load(oracle(f"output_L{index}_pass{pass_}.npy"))) <= 1e-5
    assert relative_error(head.delta, np.load(oracle(f"delta_L{index}_pass{pass_}.npy"))) <= 1e-5
    expected = passes[pass_]["layers"][str(index)]
    assert head.cost == pytest.approx(expected["cost"], rel=1e-5)
    assert head.statistics_line() == expected["stdout"]
    stats = head.statistics()
    assert set(stats) == {"avg_iou", "class", "obj", "no_obj", "recall50", "recall75", "count"}
    assert stats["count"] == int(expected["stdout"].rsplit(" ", 1)[1])
    # the gradient handed to the previous layer is minus Darknet's delta, without a logistic derivative
    dx = np.zeros_like(x)
    head.backward(np.zeros_like(head.output), [x], [dx])
    np.testing.assert_array_equal(dx, -head.delta)


def test_training_from_init_weights_matches_darknet_textbook():
    """End to end through Model.train_batch: the weights after each of 4 updates, the losses and the
    statistics lines of the first update's passes."""
    model = load_model()
    x = np.load(oracle("X.npy")).astype(np.float32)
    truth = np.load(oracle("truth.npy")).astype(np.float32)
    losses = json.loads(oracle("textbook_losses.json").read_text())
    darknet_losses = json.loads(oracle("losses.json").read_text())
    lines = oracle("darknet_stdout.txt").read_text().splitlines()
    for update in range(1, 5):
        loss = model.train_batch(x, truth)
        assert model.seen == losses[update - 1]["seen"]
        assert loss == pytest.approx(losses[update - 1]["loss"], rel=1e-5 if update < 4 else 5e-5)
        if update == 1:
            # identical weights before the first update: Darknet's loss and its last pass's lines
            assert loss == pytest.approx(darknet_losses[0]["loss"], rel=1e-5)
            for index in HEADS:
                head = model.network.layers[index]
                assert head.cost == pytest.approx(darknet_losses[0]["layer_costs_last_pass"][str(index)],
                                                  rel=1e-5)
            for index, line in zip(HEADS, lines[2:4]):
                # end to end the head inputs differ from Darknet's by ~1e-6, so a printed 6th decimal may
                # round the other way: same words, numbers within one unit of the last printed digit
                ours = model.network.layers[index].statistics_line()
                assert words(ours) == words(line)
                np.testing.assert_allclose(numbers(ours), numbers(line), rtol=0, atol=1.01e-6)
        payload = np.concatenate([np.ravel(a) for layer in model.network.layers
                                  for a in layer.weight_arrays(saving=True)])
        expected = np.load(oracle(f"textbook_{update}.npy"))
        assert payload.shape == expected.shape
        tolerance = 1e-5 if update < 4 else 5e-5
        assert relative_error(payload, expected) <= tolerance, update
