"""[net] settings, the learning-rate schedule, .data files and list files.

Oracles: spec §1 defaults and §6.2 formulas worked by hand, the spec's verified schedule example, the
rates the real Darknet printed for two training runs (shared/darknet-oracle, exact in float32), and the
text of Darknet's own .data files.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from darknetpy.config import (DataConfig, NetConfig, SectionReader, learning_rate_at, parse_cfg,
                              parse_cfg_text, read_data_file, read_list_file)
from darknetpy.errors import CfgError, DataError, DarknetWarning

SHARED = Path(__file__).resolve().parents[2] / "shared"
INPUT = "width=224\nheight=224\nchannels=3\n"


def require_shared() -> Path:
    if not SHARED.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{SHARED} is missing")
        pytest.skip(f"{SHARED} is not available")
    return SHARED


def net_from(body: str, path: str = "net.cfg", header: str = "[net]") -> NetConfig:
    document = parse_cfg_text(f"{header}\n{body}", path)
    return NetConfig.from_section(SectionReader(document.sections[0], path))


def net_error(body: str, path: str = "bad-net.cfg") -> CfgError:
    with pytest.raises(CfgError) as caught:
        net_from(body, path)
    return caught.value


# -- [net] ------------------------------------------------------------------------------------------

def test_defaults_follow_the_spec():
    net = net_from(INPUT)
    assert net == NetConfig(
        line=1, batch=1, full_batch=1, subdivisions=1, time_steps=1, height=224, width=224, channels=3,
        inputs=224 * 224 * 3, learning_rate=0.001, momentum=0.9, decay=0.0001, adam=False, B1=0.9,
        B2=0.999, eps=1e-7, policy="constant", burn_in=0, power=4.0, step=1, scale=1.0, steps=(),
        scales=(), gamma=1.0, max_batches=0, random=False, notruth=False, clip=0.0, max_crop=448,
        min_crop=224, max_ratio=2.0, min_ratio=1.0, center=False, angle=0.0, aspect=1.0, saturation=1.0,
        exposure=1.0, hue=0.0, flip=True, letter_box=False)


def test_values_are_read():
    net = net_from(INPUT + "learning_rate=0.01\nmomentum=0.8\ndecay=5e-4\nhue=.1\n"
                   "saturation = 1.5\nmax_crop=300\nmin_crop=250\nangle=7\ncenter=1\nletter_box=1\n"
                   "adam=1\nB1=0.8\nflip=0\nrandom=1\nmax_batches=500\n", "values.cfg")
    assert (net.learning_rate, net.momentum, net.decay, net.hue, net.saturation) == (0.01, 0.8, 5e-4, 0.1, 1.5)
    assert (net.max_crop, net.min_crop, net.angle, net.center, net.letter_box) == (300, 250, 7.0, True, True)
    assert (net.adam, net.B1, net.flip, net.random, net.max_batches) == (True, 0.8, False, True, 500)
    assert net.max_ratio == pytest.approx(300 / 224) and net.min_ratio == pytest.approx(250 / 224)


@pytest.mark.parametrize("body, batch, full_batch", [
    ("batch=64\nsubdivisions=16\n", 4, 64),
    ("batch=10\nsubdivisions=4\n", 2, 8),  # C int division: 10/4 = 2 images per pass
    ("batch=8\nsubdivisions=2\ntime_steps=3\n", 12, 24),
    ("batch=128\n", 128, 128),
])
def test_batch_is_divided_like_darknet(body, batch, full_batch):
    net = net_from(INPUT + body, "batch.cfg")
    assert (net.batch, net.full_batch) == (batch, full_batch)


def test_batch_smaller_than_subdivisions():
    error = net_error(INPUT + "batch=4\nsubdivisions=16\n")
    assert error.line == 5 and "smaller than subdivisions" in error.message


def test_network_header_and_vector_inputs():
    net = net_from("inputs=256\n", "rnn.cfg", header="[network]")
    assert (net.inputs, net.width, net.height, net.channels) == (256, 0, 0, 0)


def test_no_input_size():
    assert "no input size" in net_error("batch=1\nwidth=10\nheight=10\n").message


def test_wrong_section():
    with pytest.raises(CfgError) as caught:
        net_from("filters=3\n", "conv.cfg", header="[convolutional]")
    assert caught.value.line == 1 and "[net]" in caught.value.message


def test_unknown_policy_lists_the_valid_ones():
    error = net_error(INPUT + "policy=polly\n")
    assert error.line == 5
    assert "constant, step, exp, poly, steps, sigmoid, random" in error.message
    assert "did you mean 'poly'" in error.message


def test_steps_policy_needs_steps_and_scales_of_equal_length():
    assert "steps" in net_error(INPUT + "policy=steps\nscales=.1\n").message
    assert "scales" in net_error(INPUT + "policy=steps\nsteps=10\n").message
    error = net_error(INPUT + "policy=steps\nsteps=10,20\nscales=.1\n")
    assert error.line == 7 and "2 values" in error.message


def test_unknown_net_keys():
    error = net_error(INPUT + "learnig_rate=0.1\n")
    assert error.line == 5
    assert error.message == "unknown key 'learnig_rate' in [net]; did you mean 'learning_rate'?"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net_from(INPUT + "mosaic=1\nmixup=1\nseen=0\nmax_chart_loss=5\n", "alexeyab-net.cfg")
    with pytest.warns(DarknetWarning, match=r"unused-step\.cfg:6: \[net\] ignoring 'step'"):
        net_from(INPUT + "policy=poly\nstep=100\n", "unused-step.cfg")


def test_corpus_net_sections():
    shared = require_shared()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DarknetWarning)  # yolo9000.cfg repeats batch= in [net]
        yolov3 = NetConfig.from_section(SectionReader(parse_cfg(shared / "cfg-corpus/yolov3.cfg").sections[0],
                                                      "yolov3.cfg"))
        rnn = NetConfig.from_section(SectionReader(parse_cfg(shared / "cfg-corpus/rnn.train.cfg").sections[0],
                                                   "rnn.train.cfg"))
    assert (yolov3.batch, yolov3.full_batch, yolov3.width, yolov3.height) == (4, 64, 608, 608)
    assert (yolov3.policy, yolov3.steps, yolov3.scales, yolov3.burn_in) == ("steps", (400000, 450000),
                                                                          (0.1, 0.1), 1000)
    assert (yolov3.max_batches, yolov3.exposure, yolov3.hue) == (500200, 1.5, 0.1)
    assert rnn.inputs == 256


# -- learning rate ------------------------------------------------------------------------------------

def test_spec_schedule_example():
    net = net_from(INPUT + "learning_rate=0.1\nburn_in=2\npower=4\npolicy=steps\nsteps=3,5\nscales=.1,.1\n")
    rates = [learning_rate_at(net, iteration) for iteration in range(1, 7)]
    assert rates == pytest.approx([0.00625, 0.1, 0.01, 0.01, 0.001, 0.001], rel=1e-6)


@pytest.mark.parametrize("case", ["small", "fc"])
def test_rates_printed_by_darknet(case):
    folder = require_shared() / "darknet-oracle" / "train" / case
    net = NetConfig.from_section(SectionReader(parse_cfg(folder / f"{case}.cfg").sections[0], case))
    for update in json.loads((folder / "losses.json").read_text()):
        rate = learning_rate_at(net, update["current_batch"])
        assert np.float32(rate) == np.float32(update["rate"]), update


@pytest.mark.parametrize("body, batch_num, expected", [
    ("learning_rate=0.01\n", 0, 0.01),
    ("learning_rate=0.01\n", 12345, 0.01),
    ("learning_rate=0.1\npolicy=step\nstep=10\nscale=0.5\n", 9, 0.1),
    ("learning_rate=0.1\npolicy=step\nstep=10\nscale=0.5\n", 25, 0.1 * 0.5 ** 2),
    ("learning_rate=0.1\npolicy=exp\ngamma=0.9\n", 3, 0.1 * 0.9 ** 3),
    ("learning_rate=0.1\npolicy=poly\npower=2\nmax_batches=20\n", 5, 0.1 * 0.75 ** 2),
    ("learning_rate=0.1\npolicy=poly\nmax_batches=10\n", 10, 0.0),
    ("learning_rate=0.1\npolicy=sigmoid\ngamma=0.5\nstep=10\n", 10, 0.05),
    ("learning_rate=0.1\npolicy=sigmoid\ngamma=0.5\nstep=10\n", 14, 0.1 / (1 + math.exp(2.0))),
    ("learning_rate=0.1\npolicy=steps\nsteps=10,20\nscales=0.5,0.1\n", 19, 0.05),
    ("learning_rate=0.1\npolicy=steps\nsteps=10,20\nscales=0.5,0.1\n", 20, 0.005),
    # burn-in wins over any policy: 0.1 * (1/4)^2
    ("learning_rate=0.1\nburn_in=4\npower=2\npolicy=poly\nmax_batches=8\n", 1, 0.1 / 16),
    ("learning_rate=0.1\nburn_in=4\npower=2\npolicy=poly\nmax_batches=8\n", 4, 0.1 * 0.5 ** 2),
])
def test_policies_by_hand(body, batch_num, expected):
    net = net_from(INPUT + body, "policies.cfg")
    assert learning_rate_at(net, batch_num) == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_random_policy_uses_the_given_source():
    net = net_from(INPUT + "learning_rate=0.1\npolicy=random\npower=2\n")

    class Half:
        def random(self) -> float:
            return 0.5

    assert learning_rate_at(net, 7, Half()) == pytest.approx(0.025, rel=1e-6)
    draws = np.random.default_rng(5).random(3)
    generator = np.random.default_rng(5)
    rates = [learning_rate_at(net, 1, generator) for _ in range(3)]
    assert rates == pytest.approx(list(0.1 * draws ** 2), rel=1e-6)


def test_unsigned_batch_number_quirks():
    # Darknet's batch_num is a size_t: a negative step compares as huge, so the schedule stops there...
    net = net_from(INPUT + "learning_rate=0.1\npolicy=steps\nsteps=-1,100\nscales=.1,10\n")
    assert [learning_rate_at(net, n) for n in (0, 50, 150)] == pytest.approx([0.1] * 3, rel=1e-6)
    # ...and before `step` the sigmoid exponent wraps to ~1.8e19, so exp overflows and the rate is 0.
    net = net_from(INPUT + "learning_rate=0.1\npolicy=sigmoid\ngamma=0.5\nstep=10\n")
    assert learning_rate_at(net, 9) == 0.0


# -- .data and list files -----------------------------------------------------------------------------

def test_data_file(tmp_path):
    path = tmp_path / "my.data"
    path.write_text("# comment\nclasses= 80\r\ntrain  = data/my images/train.list  # spaces kept\n"
                    "valid=v#1.list\n\nnames = coco.names\nbackup = backup/\ntop=5\neval=coco\n")
    data = read_data_file(path)
    assert isinstance(data, DataConfig)
    assert (data.classes, data.top, data.path) == (80, 5, str(path))
    assert (data.train, data.valid, data.names, data.backup) == ("data/my images/train.list", "v#1.list",
                                                               "coco.names", "backup/")
    assert (data.test, data.labels) == (None, None)
    assert data.get("eval") == "coco" and data.get("map") is None
    assert dict(data.lines) == {"classes": 2, "train": 3, "valid": 4, "names": 6, "backup": 7, "top": 8,
                                "eval": 9}


def test_corpus_data_file():
    data = read_data_file(require_shared() / "cfg-corpus" / "imagenet1k.data")
    assert (data.classes, data.top, data.labels) == (1000, 5, "data/imagenet.labels.list")
    assert data.train == "/data/imagenet/imagenet1k.train.list"


@pytest.mark.parametrize("text, line, fragment", [
    ("classes=80\ntop=five\n", 2, "top=five: expected an integer"),
    ("classes=8.5\n", 1, "expected an integer"),
    ("train=\nclasses=2\n", 1, "no value"),
    ("classes=2\n=x\n", 2, ""),
])
def test_data_file_errors(tmp_path, text, line, fragment):
    path = tmp_path / "bad.data"
    path.write_text(text)
    with pytest.raises(DataError) as caught:
        read_data_file(path)
    assert (caught.value.path, caught.value.line) == (str(path), line)
    assert fragment in caught.value.message


def test_data_file_warnings(tmp_path):
    path = tmp_path / "odd.data"
    path.write_text("classes=2\nclasses=3\nlonely\n")
    with pytest.warns(DarknetWarning) as record:
        data = read_data_file(path)
    assert data.classes == 2
    assert [str(item.message) for item in record] == [
        f"{path}:2: duplicate key 'classes', the first one (line 1) is used",
        f"{path}:3: ignoring line without '=': 'lonely'",
    ]


def test_missing_data_and_list_files(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        read_data_file(tmp_path / "none.data")
    with pytest.raises(DataError, match="list file not found"):
        read_list_file(tmp_path / "none.list")


def test_list_file(tmp_path):
    path = tmp_path / "train.list"
    path.write_bytes(b"a/1.jpg\r\n\r\n  b/2 two.jpg  \n\nc/3.jpg")
    assert read_list_file(path) == ["a/1.jpg", "b/2 two.jpg", "c/3.jpg"]
