"""The `darknetpy` command line, run as a subprocess (`python -m darknetpy ...`).

Oracles: the layer table is checked against shapes and BFLOPs computed here from the cfg (and parameter
totals against ../shared/tools/gen_weights.py's independent layout plan); `predict` output against a slow
numpy forward of a tiny classifier built from tests/naive_*.py; `partial` against byte slices of the input
file. Every bad input must end as exactly one `path[:line]: message` line on stderr, exit status 2, no
traceback, and no output file created or overwritten.
"""
from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import shared_path

ROOT = Path(__file__).resolve().parents[1]

TINY_CFG = """\
[net]
width=8
height=8
channels=3

[convolutional]
batch_normalize=1
filters=4
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
filters=3
size=1
stride=1
pad=1
activation=linear

[avgpool]

[softmax]
"""
NAMES = ["cat", "dog", "bird"]
# (name, count) in Darknet's file order (spec §5) for TINY_CFG
TINY_LAYOUT = [("biases0", 4), ("scales0", 4), ("mean0", 4), ("var0", 4), ("weights0", 4 * 3 * 3 * 3),
               ("biases2", 3), ("weights2", 3 * 4)]
TINY_FLOATS = sum(n for _, n in TINY_LAYOUT)
BIGGER_FLOATS = 8 * 4 + 8 * 27 + 3 + 3 * 8   # TINY_CFG with filters=8 in the first conv


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_cli(*args: str | os.PathLike, cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """`python -m darknetpy ...` in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "darknetpy", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or ROOT, env=_environment(), stdin=subprocess.DEVNULL, timeout=120)


# A fresh interpreter spends ~0.8 s CPU importing numba and darknetpy, which would dominate this file. The fork
# server imports them once and forks one child per command; the child runs darknetpy's __main__ exactly as
# `python -m darknetpy` does (sys.argv, uncaught exceptions printed as tracebacks, real exit status, output
# captured at the file-descriptor level). The server never runs a kernel, so no threads exist at fork time.
FORK_SERVER = r"""
import json, os, runpy, sys, traceback
import darknetpy.cli

def child(case):
    code = 1
    try:
        os.chdir(case["cwd"])
        os.dup2(os.open(case["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
        os.dup2(os.open(case["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        sys.argv = ["darknetpy", *case["argv"]]
        try:
            runpy.run_module("darknetpy", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)

for line in sys.stdin:
    cases = json.loads(line)
    pids = []
    for case in cases:
        pid = os.fork()
        if pid == 0:
            child(case)
        pids.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    print(json.dumps(codes), flush=True)
"""


class CliRunner:
    """Runs darknetpy commands in forked children of one long-lived interpreter (see FORK_SERVER)."""

    def __init__(self, scratch: Path):
        self.scratch = scratch
        self.count = 0
        self.server = subprocess.Popen([sys.executable, "-c", FORK_SERVER], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True, cwd=ROOT, env=_environment())

    def run_many(self, commands: list[tuple[list, Path | None]]) -> list[subprocess.CompletedProcess]:
        """Commands (argv, cwd) run concurrently; results in the same order."""
        cases = []
        for argv, cwd in commands:
            self.count += 1
            cases.append({"argv": [str(a) for a in argv], "cwd": str(cwd or ROOT),
                          "stdout": str(self.scratch / f"{self.count}.out"),
                          "stderr": str(self.scratch / f"{self.count}.err")})
        self.server.stdin.write(json.dumps(cases) + "\n")
        self.server.stdin.flush()
        reply = self.server.stdout.readline()
        assert reply, "the fork server died"
        return [subprocess.CompletedProcess(["darknetpy", *case["argv"]], code,
                                            Path(case["stdout"]).read_text(), Path(case["stderr"]).read_text())
                for case, code in zip(cases, json.loads(reply))]

    def __call__(self, *args: str | os.PathLike, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return self.run_many([(list(args), cwd)])[0]

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait(timeout=60)


class PlainRunner:
    """Where fork is missing: a fresh interpreter per command."""

    def __call__(self, *args, cwd=None):
        return run_cli(*args, cwd=cwd)

    def run_many(self, commands):
        return [run_cli(*argv, cwd=cwd) for argv, cwd in commands]


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    if not hasattr(os, "fork"):
        yield PlainRunner()
        return
    runner = CliRunner(tmp_path_factory.mktemp("cli-output"))
    yield runner
    runner.close()


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str, prefix: str | None = None):
    lines = result.stderr.splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    assert result.stdout == "", result.stdout
    line = lines[0]
    if prefix is not None:
        assert line.startswith(prefix), (line, prefix)
    for needle in needles:
        assert needle.lower() in line.lower(), (needle, line)
    return line


def weights_file(floats: np.ndarray, seen: int = 0, version: tuple[int, int, int] = (0, 2, 0)) -> bytes:
    major, minor, revision = version
    if major * 10 + minor >= 2:
        header = struct.pack("<iiiQ", major, minor, revision, seen)
    else:
        header = struct.pack("<iiii", major, minor, revision, seen)
    return header + np.asarray(floats, "<f4").tobytes()


def tiny_weights(seed: int) -> np.ndarray:
    """Random TINY_CFG parameters with BN variances well away from zero."""
    rng = np.random.default_rng(seed)
    parts = []
    for name, count in TINY_LAYOUT:
        if name.startswith("var"):
            parts.append(rng.uniform(0.5, 2.0, count))
        elif name.startswith("scales"):
            parts.append(rng.uniform(0.5, 1.5, count))
        else:
            parts.append(rng.normal(0, 0.5, count))
    return np.concatenate(parts).astype(np.float32)


def tiny_reference(floats: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Class probabilities of TINY_CFG for an 8x8 RGB uint8 image (letterboxing it to 8x8 is the identity)."""
    import naive_conv
    import naive_pooling
    import naive_softmax

    arrays, pos = {}, 0
    for name, count in TINY_LAYOUT:
        arrays[name] = floats[pos:pos + count].astype(np.float64)
        pos += count
    x = (pixels.astype(np.float64) / 255.0).transpose(2, 0, 1)[None]
    y = naive_conv.conv2d(x, arrays["weights0"].reshape(4, 3, 3, 3), np.zeros(4), 1, 1, 1)
    y = naive_conv.batchnorm_inference(y, arrays["scales0"], arrays["biases0"], arrays["mean0"], arrays["var0"])
    y = naive_conv.leaky(y)
    y = naive_pooling.maxpool(y, 2, 2, 2, 1)[0]
    y = naive_conv.conv2d(y, arrays["weights2"].reshape(3, 4, 1, 1), arrays["biases2"], 1, 1, 0)
    y = naive_pooling.global_average(y)
    return naive_softmax.softmax_groups(y, 1)[0]


def gen_weights_module():
    import importlib.util
    path = shared_path("tools", "gen_weights.py")
    spec = importlib.util.spec_from_file_location("shared_gen_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_png(path: Path, height: int, width: int, seed: int) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """A tiny classifier, its weights, names and images, written once per module."""
    root = tmp_path_factory.mktemp("cli")
    cfg = root / "tiny.cfg"
    cfg.write_text(TINY_CFG)
    floats = tiny_weights(seed=3)
    weights = root / "tiny.weights"
    weights.write_bytes(weights_file(floats))
    names = root / "names.txt"
    names.write_text("\n".join(NAMES) + "\n")
    images = root / "images"
    images.mkdir()
    square = write_png(images / "a.png", 8, 8, seed=1)
    write_png(images / "b.png", 10, 13, seed=2)
    (images / "notes.txt").write_text("not an image\n")
    return {"root": root, "cfg": cfg, "weights": weights, "floats": floats, "names": names,
            "images": images, "square": square}


# --------------------------------------------------------------------------------------------- summary

@pytest.mark.shared
def test_summary_prints_darknet_layer_table():
    """darknet.cfg: every row's index, kind, shapes and BFLOPs (2·n·k²·c·oh·ow, computed here) and the
    totals: parameters = floats of the weights file (gen_weights' plan), BFLOPs = sum of the rows."""
    cfg = shared_path("cfg-corpus", "darknet.cfg")
    result = run_cli("summary", cfg, "--width", "128", "--height", "128")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    text = result.stdout
    number = r"\s*(\d+)"
    shape = rf"{number} x{number} x{number}"
    patterns = {
        "conv": re.compile(rf"^{number} conv{number}{number} x{number} /{number}\s+{shape}\s+->\s+{shape}"
                           r"\s+([\d.]+) BFLOPs"),
        "max": re.compile(rf"^{number} max{number} x{number} /{number}\s+{shape}\s+->\s+{shape}"),
        "avg": re.compile(rf"^{number} avg\s+{shape}\s+->{number}"),
        "softmax": re.compile(rf"^{number} softmax{number}"),
    }
    rows = []
    for line in text.splitlines():
        for kind, pattern in patterns.items():
            if m := pattern.match(line):
                rows.append((kind, [float(v) if "." in v else int(v) for v in m.groups()]))
    kinds = [kind for kind, _ in rows]
    assert kinds == ["conv", "max"] * 6 + ["conv", "avg", "conv", "softmax"], text

    c, h, w = 3, 128, 128
    total_flops = 0.0
    for expected_index, (kind, v) in enumerate(rows):
        assert v[0] == expected_index
        if kind == "conv":
            filters, k, _, stride = v[1:5]
            assert v[5:8] == [w, h, c]
            pad = k // 2
            oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
            assert v[8:11] == [ow, oh, filters]
            flops = 2 * filters * k * k * c * oh * ow / 1e9
            assert abs(v[11] - flops) <= 0.0005 + 1e-9, (expected_index, v[11], flops)
            total_flops += flops
            c, h, w = filters, oh, ow
        elif kind == "max":
            size, _, stride = v[1:4]
            assert v[4:7] == [w, h, c]
            padding = size - 1
            oh, ow = (h + padding - size) // stride + 1, (w + padding - size) // stride + 1
            assert v[7:10] == [ow, oh, c]
            h, w = oh, ow
        elif kind == "avg":
            assert v[1:5] == [w, h, c, c]
            h = w = 1
        else:
            assert v[1] == c * h * w

    m = re.search(r"parameters:\s*([\d,]+)\s+BFLOPs:\s*([\d.]+)", text)
    assert m, text
    assert abs(float(m.group(2)) - total_flops) <= 0.0005 + 1e-9
    gw = gen_weights_module()
    _, plan = gw.build_plan(str(cfg), 128, 128)
    assert int(m.group(1).replace(",", "")) == gw.n_floats(plan)
    assert re.search(r"input:\s*128 x 128 x 3", text)


# --------------------------------------------------------------------------------------------- predict

PREDICTION_LINE = re.compile(r"(\s*\d+\.\d{2})%: (.*)")


def parse_prediction_lines(stdout: str) -> list[tuple[float, str]]:
    out = []
    lines = stdout.splitlines()
    assert re.fullmatch(r".+: Predicted in \d+\.\d{6} seconds\.", lines[0]), lines[0]   # Darknet's header line
    for line in lines[1:]:
        m = PREDICTION_LINE.fullmatch(line)
        assert m, f"not a '%5.2f%%: name' line: {line!r}"
        assert len(m.group(1)) >= 5, line   # %5.2f pads to width 5
        out.append((float(m.group(1)), m.group(2)))
    return out


def test_predict_prints_percentages_and_names(files):
    probs = tiny_reference(files["floats"], files["square"])
    order = sorted(range(3), key=lambda i: (-probs[i], i))
    result = run_cli("predict", files["cfg"], files["weights"], files["images"] / "a.png",
                     "--names", files["names"])
    assert result.returncode == 0, result.stderr
    lines = parse_prediction_lines(result.stdout)
    assert [name for _, name in lines] == [NAMES[i] for i in order]
    for (percent, _), i in zip(lines, order):
        assert abs(percent - 100 * probs[i]) <= 0.005 + 1e-6, (percent, probs[i])
    assert "Traceback" not in result.stderr


def test_predict_json_one_object_per_image_with_top(cli, files):
    probs = tiny_reference(files["floats"], files["square"])
    a, b = files["images"] / "a.png", files["images"] / "b.png"
    result = cli("predict", files["cfg"], files["weights"], a, b, "--json", "--top", "2")
    assert result.returncode == 0, result.stderr
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["image"] for o in objects] == [str(a), str(b)]
    first = objects[0]["predictions"]
    assert [p["class_id"] for p in first] == sorted(range(3), key=lambda i: (-probs[i], i))[:2]
    for p in first:
        assert abs(p["probability"] - probs[p["class_id"]]) <= 1e-5
    second = objects[1]["predictions"]
    assert len(second) == 2 and second[0]["probability"] >= second[1]["probability"]
    assert 0 < second[0]["probability"] + second[1]["probability"] <= 1 + 1e-6


def test_predict_directory_and_list_file(cli, files, tmp_path):
    """A directory gives its images sorted (other files skipped); list entries are relative to the list."""
    result = cli("predict", files["cfg"], files["weights"], files["images"], "--json")
    assert result.returncode == 0, result.stderr
    images = [Path(json.loads(line)["image"]).name for line in result.stdout.splitlines()]
    assert images == ["a.png", "b.png"]

    listed = tmp_path / "lists"
    (listed / "sub").mkdir(parents=True)
    write_png(listed / "sub" / "c.png", 8, 8, seed=1)   # same pixels as a.png
    list_file = listed / "images.txt"
    list_file.write_text(f"sub/c.png\n{files['images'] / 'b.png'}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = cli("predict", files["cfg"], files["weights"], list_file, "--json", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(o["image"]).name for o in objects] == ["c.png", "b.png"]
    probs = tiny_reference(files["floats"], files["square"])
    for p in objects[0]["predictions"]:
        assert abs(p["probability"] - probs[p["class_id"]]) <= 1e-5


def test_predict_names_and_top_from_data_file(cli, files, tmp_path):
    data = tmp_path / "tiny.data"
    (tmp_path / "names.list").write_text("\n".join(NAMES) + "\n")
    data.write_text("classes=3\nnames=names.list\ntop=2\n")   # relative to the .data folder
    result = cli("predict", files["cfg"], files["weights"], files["images"] / "a.png", "--data", data)
    assert result.returncode == 0, result.stderr
    lines = parse_prediction_lines(result.stdout)
    assert len(lines) == 2 and all(name in NAMES for _, name in lines)


# --------------------------------------------------------------------------------------------- partial

@pytest.mark.shared
def test_partial_writes_first_layers_with_seen_reset(cli, tmp_path):
    """Size = 20 + 4·(floats of the first N layers per gen_weights' plan); the body is the input's prefix;
    the header is 0.2.0 with seen 0 even when the input has a large seen."""
    cfg = shared_path("cfg-corpus", "tiny.cfg")
    gw = gen_weights_module()
    _, plan = gw.build_plan(str(cfg))
    source = tmp_path / "full.weights"
    gw.write_weights(str(cfg), str(source), 4)
    data = bytearray(source.read_bytes())
    data[12:20] = struct.pack("<Q", 123456789)
    source.write_bytes(bytes(data))
    for n in (5, 1000):
        out = tmp_path / f"first{n}.weights"
        result = cli("partial", cfg, source, out, str(n))
        assert result.returncode == 0, result.stderr
        floats = gw.n_floats(plan[:n])
        written = out.read_bytes()
        assert len(written) == 20 + 4 * floats
        assert struct.unpack("<iiiQ", written[:20]) == (0, 2, 0, 0)
        assert written[20:] == bytes(data[20:20 + 4 * floats])


def test_partial_converts_old_header(cli, files, tmp_path):
    """A 0.1 file (16-byte header, 4-byte seen) comes out as 0.2.0 with the same floats."""
    floats = files["floats"]
    old = tmp_path / "old.weights"
    old.write_bytes(weights_file(floats, seen=77, version=(0, 1, 0)))
    out = tmp_path / "out.weights"
    result = cli("partial", files["cfg"], old, out, "1")
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == weights_file(floats[:sum(n for _, n in TINY_LAYOUT[:5])])


def test_partial_failure_leaves_existing_output_alone(cli, files, tmp_path):
    out = tmp_path / "out.weights"
    before = b"precious bytes"
    out.write_bytes(before)
    bad = tmp_path / "short.weights"
    bad.write_bytes(files["weights"].read_bytes()[:200])
    assert_one_line_error(cli("partial", files["cfg"], bad, out, "2"), prefix=f"{bad}:")
    broken_cfg = tmp_path / "broken.cfg"
    broken_cfg.write_text(TINY_CFG.replace("filters=4", "filters=abc"))
    assert_one_line_error(cli("partial", broken_cfg, files["weights"], out, "2"), prefix=f"{broken_cfg}:8:")
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out.weights", "short.weights", "broken.cfg"])


def test_partial_failure_creates_nothing(cli, files, tmp_path):
    out = tmp_path / "new.weights"
    assert_one_line_error(cli("partial", files["cfg"], tmp_path / "missing.weights", out, "2"),
                          prefix=str(tmp_path / "missing.weights"))
    nested = tmp_path / "no" / "such" / "dir" / "out.weights"
    assert_one_line_error(cli("partial", files["cfg"], files["weights"], nested, "2"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["partial", "predict"])
def test_negative_counts_are_rejected(cli, files, tmp_path, command):
    """`partial ... -1` and `predict --top -1`: a Python slice [:-1] would silently drop only the last layer
    (Darknet's `i < cutoff` loop writes none) or the last class. Refusing the argument is the clear contract."""
    out = tmp_path / "out.weights"
    if command == "partial":
        result = cli("partial", files["cfg"], files["weights"], out, "--", "-1")
    else:
        result = cli("predict", files["cfg"], files["weights"], files["images"] / "a.png", "--top", "-1")
    assert_one_line_error(result)
    assert not out.exists()


# ------------------------------------------------------------------------------------------ bad inputs

def cfg_variant(old: str, new: str) -> str:
    assert old in TINY_CFG
    return TINY_CFG.replace(old, new, 1)


ROUTE_CFG = """\
[net]
width=8
height=8
channels=3

[convolutional]
filters=4
size=3
pad=1
activation=leaky

[route]
layers={layers}
"""
YOLO_CFG = """\
[net]
width=32
height=32
channels=3

[convolutional]
filters=20
size=1
activation=linear

[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58, 81,82, 135,169, 344,319
classes=2
num=6
"""

# name -> cfg text; the expected line number and words of the error line
BAD_CFGS = {
    "syntax_unclosed_section": (cfg_variant("[maxpool]", "[maxpool"), 14, []),
    "syntax_empty_value": (cfg_variant("activation=leaky", "activation="), 12, ["activation"]),
    "option_before_section": ("width=3\n" + TINY_CFG, 1, ["width"]),
    "first_section_not_net": (TINY_CFG.split("\n\n", 1)[1], 1, ["net"]),
    "unknown_section": (cfg_variant("[maxpool]", "[maxpol]"), 14, ["maxpol", "did you mean", "maxpool"]),
    "unknown_key": (cfg_variant("stride=2", "strid=2"), 16, ["strid", "did you mean", "'stride'"]),
    "bad_integer": (cfg_variant("filters=4", "filters=abc"), 8, ["filters", "abc"]),
    "route_before_first_layer": (ROUTE_CFG.format(layers=-5), 13, ["-5"]),
    "route_forward": (ROUTE_CFG.format(layers=3), 13, ["3"]),
    "route_self": (ROUTE_CFG.format(layers=1), 13, []),
    "yolo_filters_mismatch": (YOLO_CFG, None, ["21", "20"]),
}


@pytest.fixture(scope="module")
def bad_cfg_results(cli, tmp_path_factory) -> dict:
    """Every BAD_CFGS case through `summary`, run concurrently."""
    root = tmp_path_factory.mktemp("bad-cfgs")
    paths = {}
    for name, (text, _, _) in BAD_CFGS.items():
        paths[name] = root / f"{name}.cfg"
        paths[name].write_text(text)
    results = cli.run_many([(["summary", path], None) for path in paths.values()])
    return {name: (paths[name], result) for name, result in zip(paths, results)}


@pytest.mark.parametrize("case", list(BAD_CFGS))
def test_bad_cfg_is_one_line_with_location(bad_cfg_results, case):
    path, result = bad_cfg_results[case]
    _, line, words = BAD_CFGS[case]
    prefix = f"{path}:{line}:" if line is not None else f"{path}:"
    text = assert_one_line_error(result, *words, prefix=prefix)
    if line is None:
        assert re.match(rf"{re.escape(str(path))}:\d+: ", text), text


def write_bad_inputs(f: dict, root: Path) -> None:
    """The broken files BAD_INPUTS refers to, made from the module's tiny model."""
    good = f["weights"].read_bytes()
    bigger = TINY_CFG.replace("filters=4", "filters=8")
    contents = {
        "short.weights": good[:300],
        "long.weights": good + good[20:],
        "bigger-cfg.weights": weights_file(np.resize(tiny_weights(seed=9), BIGGER_FLOATS)),
        "tiny-header.weights": good[:10],
        "ragged.weights": good[:302],
        "png-as.weights": (f["images"] / "a.png").read_bytes(),
        "text.png": b"this is not an image\n",
        "truncated.png": (f["images"] / "b.png").read_bytes()[:100],
        "no-names.data": b"classes=3\ntop=2\n",
        "missing-names.data": f"classes=3\nnames={root / 'nowhere.names'}\n".encode(),
        "missing-valid-list.data": f"classes=3\nnames={f['names']}\nvalid={root / 'nowhere.list'}\n".encode(),
        "missing-train-list.data": (f"classes=3\nnames={f['names']}\ntrain={root / 'nowhere.list'}\n"
                                    f"backup={root / 'backup'}\n").encode(),
        "bigger.cfg": bigger.encode(),
        "yolo.cfg": YOLO_CFG.replace("filters=20", "filters=21").encode(),
        "yolo.weights": weights_file(np.zeros(21 + 21 * 3, np.float32)),
    }
    for name, data in contents.items():
        (root / name).write_bytes(data)
    (root / "empty-dir").mkdir()


def _predict(f, *rest):
    return ["predict", f["cfg"], *rest]


# name -> (files, scratch folder) -> (argv, expected start of the error line, words it must contain)
BAD_INPUTS = {
    "cfg_missing": lambda f, r: (["summary", r / "nowhere.cfg"], f"{r / 'nowhere.cfg'}:", []),
    "cfg_is_directory": lambda f, r: (["summary", r / "empty-dir"], f"{r / 'empty-dir'}:", ["directory"]),
    "weights_truncated": lambda f, r: (_predict(f, r / "short.weights", f["images"] / "a.png"),
                                       f"{r / 'short.weights'}:", [str(TINY_FLOATS)]),
    "weights_too_long": lambda f, r: (_predict(f, r / "long.weights", f["images"] / "a.png"),
                                      f"{r / 'long.weights'}:", [str(TINY_FLOATS)]),
    "weights_of_bigger_cfg": lambda f, r: (_predict(f, r / "bigger-cfg.weights", f["images"] / "a.png"),
                                           f"{r / 'bigger-cfg.weights'}:", [str(TINY_FLOATS)]),
    "weights_for_smaller_cfg": lambda f, r: (["predict", r / "bigger.cfg", f["weights"], f["images"] / "a.png"],
                                             f"{f['weights']}:", [str(BIGGER_FLOATS)]),
    "weights_header_cut": lambda f, r: (_predict(f, r / "tiny-header.weights", f["images"] / "a.png"),
                                        f"{r / 'tiny-header.weights'}:", []),
    "weights_not_whole_floats": lambda f, r: (_predict(f, r / "ragged.weights", f["images"] / "a.png"),
                                              f"{r / 'ragged.weights'}:", []),
    "weights_not_darknet": lambda f, r: (_predict(f, r / "png-as.weights", f["images"] / "a.png"),
                                         f"{r / 'png-as.weights'}:", []),
    "weights_directory": lambda f, r: (_predict(f, r / "empty-dir", f["images"] / "a.png"),
                                       f"{r / 'empty-dir'}:", ["directory"]),
    "weights_missing": lambda f, r: (_predict(f, r / "nowhere.weights", f["images"] / "a.png"),
                                     f"{r / 'nowhere.weights'}:", []),
    "image_not_an_image": lambda f, r: (_predict(f, f["weights"], r / "text.png"), f"{r / 'text.png'}:", []),
    "image_truncated": lambda f, r: (_predict(f, f["weights"], r / "truncated.png"),
                                     f"{r / 'truncated.png'}:", []),
    "image_missing": lambda f, r: (_predict(f, f["weights"], r / "nowhere.png"), f"{r / 'nowhere.png'}:", []),
    "image_directory_empty": lambda f, r: (_predict(f, f["weights"], r / "empty-dir"), f"{r / 'empty-dir'}:", []),
    "data_missing": lambda f, r: (_predict(f, f["weights"], f["images"] / "a.png", "--data", r / "nowhere.data"),
                                  f"{r / 'nowhere.data'}:", []),
    "data_without_names": lambda f, r: (_predict(f, f["weights"], f["images"] / "a.png", "--data",
                                                 r / "no-names.data"), f"{r / 'no-names.data'}:", ["names"]),
    "data_names_file_missing": lambda f, r: (_predict(f, f["weights"], f["images"] / "a.png", "--data",
                                                      r / "missing-names.data"), f"{r / 'nowhere.names'}:", []),
    "data_valid_list_missing": lambda f, r: (["valid", f["cfg"], f["weights"], r / "missing-valid-list.data"],
                                             f"{r / 'nowhere.list'}:", []),
    "data_train_list_missing": lambda f, r: (["train", f["cfg"], r / "missing-train-list.data",
                                              "--max-batches", "1"], f"{r / 'nowhere.list'}:", []),
    "detect_without_detection_layer": lambda f, r: (["detect", f["cfg"], f["weights"], f["images"] / "a.png",
                                                      "--out", r / "drawn"], f"{f['cfg']}:", ["detection"]),
    "detect_image_missing": lambda f, r: (["detect", r / "yolo.cfg", r / "yolo.weights", r / "nowhere.png",
                                           "--out", r / "drawn"], f"{r / 'nowhere.png'}:", []),
    # no arguments at all lists the commands, exit 0 (tests/test_cli_tasks.py); an option alone is still a mistake
    "usage_no_command": lambda f, r: (["--bogus-option"], "darknetpy", ["COMMAND"]),
    "usage_unknown_command": lambda f, r: (["bogus"], "darknetpy", ["bogus"]),
    "usage_missing_arguments": lambda f, r: (["predict", f["cfg"]], "darknetpy predict", []),
    "usage_bad_integer": lambda f, r: (["partial", f["cfg"], f["weights"], r / "never.weights", "two"],
                                       "darknetpy partial", []),
}


@pytest.fixture(scope="module")
def bad_input_results(cli, files, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bad-inputs")
    write_bad_inputs(files, root)
    cases = {name: make(files, root) for name, make in BAD_INPUTS.items()}
    before = {"scratch": snapshot(root), "model": snapshot(files["root"])}
    results = dict(zip(cases, cli.run_many([(argv, None) for argv, _, _ in cases.values()])))
    after = {"scratch": snapshot(root), "model": snapshot(files["root"])}
    return {"cases": cases, "results": results, "before": before, "after": after}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2(bad_input_results, case):
    _, prefix, words = bad_input_results["cases"][case]
    assert_one_line_error(bad_input_results["results"][case], *words, prefix=prefix)


def test_bad_inputs_write_no_files(bad_input_results):
    """No failed command created or changed a file (the train run's backup folder stays empty)."""
    assert bad_input_results["after"] == bad_input_results["before"]


def test_error_from_a_fresh_interpreter(tmp_path):
    """The fork server above skips interpreter start-up; one bad cfg through the real `python -m darknetpy`."""
    cfg = tmp_path / "bad.cfg"
    cfg.write_text(cfg_variant("stride=2", "strid=2"))
    assert_one_line_error(run_cli("summary", cfg), "did you mean", prefix=f"{cfg}:16:")


def test_out_of_memory_names_the_layer(tmp_path):
    """A network too large for the memory at hand: one located line, exit 2, no traceback (Python caps the
    child's address space; the buffers are never touched, so no real memory is used)."""
    import darknetpy
    layers = "\n".join("[convolutional]\nfilters=32\nsize=3\npad=1\nactivation=leaky\n" for _ in range(4))
    cfg = tmp_path / "big.cfg"
    cfg.write_text(f"[net]\nwidth=3000\nheight=3000\nchannels=3\n\n{layers}\n[avgpool]\n\n[softmax]\n")
    weights = tmp_path / "big.weights"
    darknetpy.load(cfg).save_weights(weights)
    image = tmp_path / "grey.png"
    Image.new("RGB", (8, 8), (90, 90, 90)).save(image)
    limit = 3 << 30  # each layer output is 1.07 GiB: the address space runs out within the four layers
    code = ("import resource, runpy, sys; "
            f"resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit})); "
            "sys.argv = ['darknetpy'] + sys.argv[1:]; runpy.run_module('darknetpy', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code, "predict", str(cfg), str(weights), str(image)],
                            capture_output=True, text=True, env=_environment(), timeout=120)
    line = assert_one_line_error(result, "not enough memory for layer", "[convolutional]", "GiB")
    assert re.match(rf"{re.escape(str(cfg))}:(6|12|18|24): ", line), line  # a [convolutional] header
