"""Bundled networks: found by bare name from anywhere, and carried by a wheel built from the project."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from darknetpy import bundled
from darknetpy.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_bare_names_find_the_repository_folders():
    assert bundled.bundled_file("vgg-16", "cfg") == ROOT / "cfg" / "vgg-16.cfg"
    assert bundled.bundled_file("mnist.cfg", "cfg") == ROOT / "cfg" / "mnist.cfg"
    assert bundled.bundled_file("mnist", "weights") == ROOT / "weights" / "mnist.weights"
    assert bundled.bundled_file("digits-seg", "names") == ROOT / "weights" / "digits-seg.names"
    assert bundled.bundled_file("cfg/vgg-16", "cfg") is None          # only bare names
    assert bundled.bundled_file("no-such-net", "cfg") is None
    assert {"mnist", "vgg-16", "digits-seg"} <= set(bundled.bundled_names("cfg"))


def test_an_existing_path_wins_over_a_bundled_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vgg-16").write_text("mine")
    assert bundled.resolve("vgg-16", "cfg") == "vgg-16"
    assert bundled.resolve("missing", "cfg") == "missing"


def test_summary_of_vgg16_by_name_from_elsewhere(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["summary", "vgg-16"]) == 0
    out = capsys.readouterr().out
    # the VGG-16 of the paper: 13 convolutions, 3 fully connected layers, 138,357,544 parameters
    assert out.count(" conv ") == 13 and out.count("connected") == 3
    assert "parameters: 138,357,544" in out


def test_wheel_carries_cfg_and_weights(tmp_path):
    pytest.importorskip("setuptools")
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for folder in ("darknetpy", "cfg", "weights"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "-w", str(tmp_path / "dist"),
                             "--no-deps", "--no-build-isolation", "-q"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "dist").glob("darknetpy-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, patterns in (("cfg", ("*.cfg",)), ("weights", ("*.weights", "*.names"))):
        for pattern in patterns:
            for path in (ROOT / folder).glob(pattern):
                assert f"darknetpy/networks/{folder}/{path.name}" in names
    # unpacked on its own (no repository beside it), the package finds its networks inside itself
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    probe = ("import darknetpy.bundled as b; print(b.bundled_file('vgg-16', 'cfg')); "
             "print(b.bundled_file('mnist', 'weights'))")
    env = dict(os.environ, PYTHONPATH=str(unpacked))
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    cfg_path, weights_path = out.stdout.split()
    assert cfg_path == str(unpacked / "darknetpy" / "networks" / "cfg" / "vgg-16.cfg")
    assert weights_path == str(unpacked / "darknetpy" / "networks" / "weights" / "mnist.weights")
