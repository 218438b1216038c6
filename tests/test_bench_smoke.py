"""tools/bench.py end to end on its cheapest case (sgemm): the table is printed and the JSON report holds the
row; no timing assertions (speed depends on the machine). Plus the hand-written PNG the start-up case feeds
to `darknetpy predict`, decoded by Pillow."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

BENCH = Path(__file__).resolve().parents[1] / "tools" / "bench.py"


def load_bench_module():
    spec = importlib.util.spec_from_file_location("darknetpy_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def test_sgemm_case_prints_table_and_json(tmp_path: Path) -> None:
    report_path = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(BENCH), "--repeat", "1", "--warmup", "0", "--threads", "1",
                           "--cases", "sgemm", "--json", str(report_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("== 1 thread") for line in lines), done.stdout
    header = next(line for line in lines if line.startswith("case "))
    for column in ("darknetpy", "anchor", "ratio", "GFLOP/s", "%peak"):
        assert column in header
    sgemm_rows = [line for line in lines if line.startswith("sgemm")]
    assert len(sgemm_rows) == 1
    assert "ms" in sgemm_rows[0] and "failed" not in sgemm_rows[0]

    report = json.loads(report_path.read_text())
    case = report["results"]["1"]["cases"][0]
    assert case["error"] is None
    row = case["rows"][0]
    assert row["darknetpy_ms"] > 0 and row["runs"] == 1
    assert report["results"]["1"]["sgemm_peak_gflops"] > 0


def test_unknown_case_is_rejected() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--cases", "no-such-case"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert "no-such-case" in done.stderr


def test_digit_png_decodes_as_28x28_grey(tmp_path: Path) -> None:
    bench = load_bench_module()
    path = tmp_path / "digit.png"
    bench.write_digit_png(path)
    with Image.open(path) as image:
        assert image.mode == "L" and image.size == (28, 28)
        pixels = np.asarray(image)
    assert set(np.unique(pixels)) == {0, 255}
    assert pixels[6, 6:22].min() == 255 and pixels[0].max() == 0   # the bar of the 7, an empty first row
