"""Issue 19 (what an outside fuzz campaign still broke), one CLI case each: exit status 2, exactly one line on
stderr that names the file (and line where there is one), no traceback, nothing on stdout (every check runs
before the first prediction is printed), no file written and the inputs untouched.

Oracles are the inputs themselves (byte snapshots of the folders before and after) and the rules written in
the README and spec §5: header versions are those Darknet and AlexeyAB write (0.1.x, 0.2.x with major 0 or 1,
minor up to 100, revision up to 999, or one of major/minor raised by 1000 for transposed legacy files)."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_cli import (TINY_CFG, TINY_FLOATS, YOLO_CFG, assert_one_line_error, cli, files, snapshot,  # noqa: F401
                      weights_file)

HUGE_INTEGER = "1" * 5000  # beyond Python's 4,300-digit limit for int() of a string
YOLO_FLOATS = 21 + 21 * 3


def _yolo_cfg() -> str:
    return YOLO_CFG.replace("filters=20", "filters=21")


def _with_value(floats: np.ndarray, index: int, value: float) -> np.ndarray:
    out = np.array(floats, np.float32, copy=True)
    out[index] = value
    return out


def write_inputs(f: dict, root: Path) -> None:
    floats = f["floats"]
    (root / "huge-int.cfg").write_text(TINY_CFG.replace("filters=4", f"filters={HUGE_INTEGER}"))
    (root / "no-equals.cfg").write_text(TINY_CFG.replace("filters=4", "filters 4"))
    (root / "huge-float.cfg").write_text(TINY_CFG.replace("[avgpool]", "[avgpool]\n").replace(
        "activation=linear", "activation=linear\nlearning_rate=1" + "0" * 400))
    (root / "yolo.cfg").write_text(_yolo_cfg())
    (root / "yolo.weights").write_bytes(weights_file(np.full(YOLO_FLOATS, 0.01, np.float32)))
    (root / "a-file").write_text("not a folder\n")
    (root / "two.names").write_text("cat\ndog\n")
    (root / "empty.names").write_text("")
    (root / "one.names").write_text("car\n")
    (root / "short-names.data").write_text("classes=3\nnames=two.names\n")
    (root / "empty.txt").write_text("\n  \n")
    (root / "empty.list").write_text("")
    for name, version in {"max-int": (2**31 - 1,) * 3, "v1000": (1000, 0, 0), "v2": (2, 0, 0),
                          "v999": (999, 999, 0), "negative-revision": (0, 2, -1),
                          "huge-revision": (0, 2, 1000), "both-transposed": (1001, 1001, 0)}.items():
        (root / f"{name}.weights").write_bytes(struct.pack("<iii", *version) + struct.pack("<Q", 0)
                                               + floats.astype("<f4").tobytes())
    (root / "nan.weights").write_bytes(weights_file(_with_value(floats, 20, np.nan)))
    (root / "inf.weights").write_bytes(weights_file(_with_value(floats, TINY_FLOATS - 1, np.inf)))
    (root / "minus-inf.weights").write_bytes(weights_file(_with_value(floats, 0, -np.inf)))
    (root / "own.weights").write_bytes(f["weights"].read_bytes())
    os.symlink(root / "own.weights", root / "link.weights")
    (root / "sub").mkdir()


def _predict(f, weights, *rest):
    return ["predict", f["cfg"], weights, f["images"] / "a.png", *rest]


# name -> (files, scratch) -> (argv, expected start of the error line, words the line must contain)
CASES = {
    # 1. integers beyond Python's int-conversion limit, and floats beyond float range
    "cfg_integer_5000_digits": lambda f, r: (["summary", r / "huge-int.cfg"], f"{r / 'huge-int.cfg'}:8:",
                                             ["filters", "32-bit", "5000 characters"]),
    "cfg_float_beyond_range": lambda f, r: (["summary", r / "huge-float.cfg"], f"{r / 'huge-float.cfg'}:",
                                            ["learning_rate", "range"]),
    # issue 11: a line without '=' was a warning, and the layer silently got filters=1
    "cfg_line_without_equals": lambda f, r: (["summary", r / "no-equals.cfg"], f"{r / 'no-equals.cfg'}:8:",
                                             ["without '='", "filters 4"]),
    # 2. detect --out that is a file or cannot be created: refused before anything is printed
    "detect_out_is_a_file": lambda f, r: (["detect", r / "yolo.cfg", r / "yolo.weights", f["images"] / "a.png",
                                           "--out", r / "a-file"], f"{r / 'a-file'}:", ["folder"]),
    "detect_out_cannot_be_created": lambda f, r: (["detect", r / "yolo.cfg", r / "yolo.weights",
                                                   f["images"] / "a.png", "--out", "/proc/darknetpy-x"],
                                                  "/proc/darknetpy-x:", ["cannot be created"]),
    "detect_out_would_overwrite_the_image": lambda f, r: (["detect", r / "yolo.cfg", r / "yolo.weights",
                                                           f["images"] / "a.png", "--out", f["images"]],
                                                          f"{f['images'] / 'a.png'}:", ["input"]),
    # 3. names files shorter than the class count, for every command that prints names
    "predict_names_short": lambda f, r: (_predict(f, f["weights"], "--names", r / "two.names"),
                                         f"{r / 'two.names'}:", ["2 names", "3 classes"]),
    "predict_names_empty": lambda f, r: (_predict(f, f["weights"], "--names", r / "empty.names"),
                                         f"{r / 'empty.names'}:", ["empty", "3 classes"]),
    "predict_data_names_short": lambda f, r: (_predict(f, f["weights"], "--data", r / "short-names.data"),
                                              f"{r / 'two.names'}:", ["2 names"]),
    "detect_names_short": lambda f, r: (["detect", r / "yolo.cfg", r / "yolo.weights", f["images"] / "a.png",
                                         "--names", r / "one.names"], f"{r / 'one.names'}:", ["1 names", "2"]),
    "detect_names_empty": lambda f, r: (["detect", r / "yolo.cfg", r / "yolo.weights", f["images"] / "a.png",
                                         "--names", r / "empty.names"], f"{r / 'empty.names'}:", ["empty"]),
    # 5. an empty list file as IMAGE
    "predict_empty_list": lambda f, r: (["predict", f["cfg"], f["weights"], r / "empty.txt"],
                                        f"{r / 'empty.txt'}:", ["no entries"]),
    "detect_empty_list": lambda f, r: (["detect", r / "yolo.cfg", r / "yolo.weights", r / "empty.list"],
                                       f"{r / 'empty.list'}:", ["no entries"]),
    # 6. one rule for header versions
    **{f"weights_version_{name}": (lambda name: lambda f, r: (
        _predict(f, r / f"{name}.weights"), f"{r / f'{name}.weights'}:", ["header version"]))(name)
       for name in ("max-int", "v1000", "v2", "v999", "negative-revision", "huge-revision", "both-transposed")},
    # 7. non-finite parameters
    "weights_nan": lambda f, r: (_predict(f, r / "nan.weights"), f"{r / 'nan.weights'}:",
                                 ["layer 0", "array 5 of 5", "nan"]),
    "weights_inf": lambda f, r: (_predict(f, r / "inf.weights"), f"{r / 'inf.weights'}:",
                                 ["layer 2", "array 2 of 2", "inf"]),
    "weights_minus_inf": lambda f, r: (_predict(f, r / "minus-inf.weights"), f"{r / 'minus-inf.weights'}:",
                                       ["layer 0", "array 1 of 5", "-inf"]),
    # 8. partial onto its own input
    "partial_onto_its_weights": lambda f, r: (["partial", f["cfg"], r / "own.weights", r / "own.weights", "1"],
                                              f"{r / 'own.weights'}:", ["input"]),
    "partial_onto_its_weights_via_symlink": lambda f, r: (["partial", f["cfg"], r / "own.weights",
                                                           r / "link.weights", "1"], f"{r / 'link.weights'}:",
                                                          ["input"]),
    "partial_onto_its_weights_other_spelling": lambda f, r: (["partial", f["cfg"], r / "own.weights",
                                                              r / "sub" / ".." / "own.weights", "1"],
                                                             f"{r / 'sub' / '..' / 'own.weights'}:", ["input"]),
    "partial_onto_its_cfg": lambda f, r: (["partial", f["cfg"], r / "own.weights", f["cfg"], "1"],
                                          f"{f['cfg']}:", ["input"]),
    "partial_onto_a_folder": lambda f, r: (["partial", f["cfg"], r / "own.weights", r / "sub", "1"],
                                           f"{r / 'sub'}:", ["folder"]),
}


@pytest.fixture(scope="module")
def results(cli, files, tmp_path_factory) -> dict:  # noqa: F811
    root = tmp_path_factory.mktemp("hardening")
    write_inputs(files, root)
    cases = {name: make(files, root) for name, make in CASES.items()}
    before = {"scratch": snapshot(root), "model": snapshot(files["root"])}
    outcomes = dict(zip(cases, cli.run_many([(argv, None) for argv, _, _ in cases.values()])))
    after = {"scratch": snapshot(root), "model": snapshot(files["root"])}
    return {"cases": cases, "results": outcomes, "before": before, "after": after, "root": root}


@pytest.mark.parametrize("case", list(CASES))
def test_case_is_one_located_line_exit_2(results, case):
    _, prefix, words = results["cases"][case]
    assert_one_line_error(results["results"][case], *words, prefix=prefix)


def test_no_case_writes_or_changes_a_file(results):
    assert results["after"] == results["before"]
    assert not Path("/proc/darknetpy-x").exists()


def test_the_versions_darknet_and_alexeyab_write_still_load(cli, files, tmp_path):  # noqa: F811
    floats = files["floats"]
    for version in [(0, 1, 0), (0, 2, 0), (0, 2, 5), (1, 0, 0), (0, 100, 999)]:
        path = tmp_path / f"{'.'.join(map(str, version))}.weights"
        path.write_bytes(weights_file(floats, version=version))
        result = cli("predict", files["cfg"], path, files["images"] / "a.png")
        assert result.returncode == 0, (version, result.stderr)


def test_partial_prints_its_result_on_stdout(cli, files, tmp_path):  # noqa: F811
    out = tmp_path / "first.weights"
    result = cli("partial", files["cfg"], files["weights"], out, "1")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("Saved the first 1 layers to ")


def test_detect_out_folder_is_created_and_filled(cli, files, tmp_path):  # noqa: F811
    (tmp_path / "yolo.cfg").write_text(_yolo_cfg())
    (tmp_path / "yolo.weights").write_bytes(weights_file(np.full(YOLO_FLOATS, 0.01, np.float32)))
    out = tmp_path / "new" / "drawn"
    result = cli("detect", tmp_path / "yolo.cfg", tmp_path / "yolo.weights", files["images"] / "a.png",
                 "--out", out)
    assert result.returncode == 0, result.stderr
    assert [p.name for p in out.iterdir()] == ["a.png"]
    assert Image.open(out / "a.png").size == (8, 8)


def test_detect_failure_removes_the_out_folder_it_created(cli, files, tmp_path):  # noqa: F811
    (tmp_path / "yolo.cfg").write_text(_yolo_cfg())
    (tmp_path / "yolo.weights").write_bytes(weights_file(np.full(YOLO_FLOATS, 0.01, np.float32)))
    (tmp_path / "bad.png").write_text("not an image\n")
    out = tmp_path / "new" / "drawn"
    result = cli("detect", tmp_path / "yolo.cfg", tmp_path / "yolo.weights", tmp_path / "bad.png", "--out", out)
    assert_one_line_error(result, prefix=f"{tmp_path / 'bad.png'}:")
    assert not (tmp_path / "new").exists()


# 9. .data labels against classes and image paths. Decision: more labels than `classes` is an error (the
# images of the extra labels would train with no class at all); labels that match no image path are valid but
# suspicious, so training goes on with exactly one warning line that names them and says what happens.
def _training_set(root: Path, labels: str, classes: int) -> Path:
    from test_training import make_dataset, tiny_model
    data = make_dataset(root / "ds", count=4)
    (root / "ds" / "labels.list").write_text(labels)
    data.write_text(data.read_text().replace("classes=2", f"classes={classes}"))
    return tiny_model(root, 4, 1, "tiny.cfg", max_batches=1), data


def test_more_labels_than_classes_is_an_error(cli, tmp_path):  # noqa: F811
    cfg, data = _training_set(tmp_path, "red\nblue\ngreen\n", 2)
    before = snapshot(tmp_path)
    result = cli("train", cfg, data, "--workers", "1", cwd=tmp_path)
    assert_one_line_error(result, "3 labels but classes=2", "'green'", prefix=f"{data.parent / 'labels.list'}:")
    assert snapshot(tmp_path) == before


def test_labels_matching_no_image_path_give_one_warning(cli, tmp_path):  # noqa: F811
    cfg, data = _training_set(tmp_path, "red\nblue\ngreen\n", 3)
    cfg.write_text(cfg.read_text().replace("output=2", "output=3"))
    result = cli("train", cfg, data, "--workers", "1", cwd=tmp_path)
    warnings = [line for line in result.stderr.splitlines() if "green" in line]
    assert len(warnings) == 1 and "match no path" in warnings[0] and "never sees" in warnings[0], result.stderr
    assert "Traceback" not in result.stderr
