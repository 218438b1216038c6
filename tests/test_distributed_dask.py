"""Batch prediction on Dask (darknetpy/distributed/dask.py): the records of `--dask` are the single-process
command's `--json` records for every image (order aside, timing aside), for a classifier, a detector and a
segmenter; a corrupt image is an error record while the rest is done; a failing job leaves no results file;
no extra, or a bad address, is one line and exit 2.

One LocalCluster serves the whole session, and every connection goes to 127.0.0.1."""
from __future__ import annotations

import json
import sys
import time

import numpy as np
import pytest
from PIL import Image

import darknetpy
import darknetpy.distributed.dask
from darknetpy.cli import main

if not __import__("os").environ.get("CI"):
    pytest.importorskip("distributed", reason="needs the distributed extra")
from test_segmentation_cli import CFG as SEGMENTER  # noqa: E402
from test_train_detect_cli import TINY_DETECTOR  # noqa: E402
from test_training import TINY_CFG  # noqa: E402

from darknetpy.distributed.dask import local_cluster, predict_images, run_batch_command  # noqa: E402


@pytest.fixture(scope="session")
def dask_client():
    import distributed
    with local_cluster(workers=2) as cluster, distributed.Client(cluster) as client:
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        assert cluster.scheduler.http_server.address == "127.0.0.1"   # its HTTP API too
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 2 and all(address.startswith("tcp://127.0.0.1:") for address in workers)
        yield client


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Small scenes of various sizes, one of them grey."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(4)
    for i in range(9):
        h, w = int(rng.integers(12, 70)), int(rng.integers(12, 70))
        pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        pixels[h // 4: h // 2, w // 4: w // 2, i % 3] = 255
        Image.fromarray(pixels if i != 4 else pixels[..., 0]).save(folder / f"img{i}.png")
    return folder


@pytest.fixture(scope="module")
def networks(tmp_path_factory):
    """cfg and random weights of a tiny classifier, detector and segmenter."""
    folder = tmp_path_factory.mktemp("nets")
    made = {}
    for task, text in (("classification", TINY_CFG.format(batch=1, subdivisions=1, max_batches=1)),
                       ("detection", TINY_DETECTOR.format(max_batches=1, random=0)),
                       ("segmentation", SEGMENTER)):
        cfg = folder / f"{task}.cfg"
        cfg.write_text(text)
        weights = folder / f"{task}.weights"
        darknetpy.load(cfg, seed=7).save_weights(weights)
        made[task] = (cfg, weights)
    return made


COMMANDS = {"classification": ["predict", "--top", "2"], "detection": ["detect", "--thresh", "0.05"],
            "segmentation": ["segment"]}


def by_image(lines: list[str]) -> dict[str, dict]:
    records = {}
    for line in lines:
        record = json.loads(line)
        record.pop("seconds", None)
        assert record["image"] not in records
        records[record["image"]] = record
    return records


def run(args, capsys) -> tuple[int, list[str], str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


@pytest.mark.parametrize("task", ["classification", "detection", "segmentation"])
def test_dask_records_are_the_json_records(task, networks, images, dask_client, capsys, monkeypatch):
    monkeypatch.chdir(images.parent)   # relative image paths: the workers must find them from here too
    cfg, weights = networks[task]
    command, *options = COMMANDS[task]
    code, single, err = run([command, cfg, weights, images.name, "--json", *options], capsys)
    assert code == 0, err
    code, distributed, err = run([command, cfg, weights, images.name, *options, "--dask",
                                  dask_client.scheduler.address], capsys)
    assert code == 0, err
    assert len(single) == len(distributed) == 9
    assert by_image(distributed) == by_image(single)
    if task == "detection":
        assert any(record["detections"] for record in by_image(single).values())


def test_a_corrupt_image_is_an_error_record_and_the_rest_is_done(networks, images, tmp_path, dask_client):
    cfg, weights = networks["classification"]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    paths = sorted(str(p) for p in images.iterdir())
    paths.insert(4, str(corrupt))
    records = predict_images(dask_client, cfg, weights, paths, partition_size=3)
    assert sorted(r["image"] for r in records) == sorted(paths)
    errors = [r for r in records if "error" in r]
    assert [r["image"] for r in errors] == [str(corrupt)] and "corrupt.png" in errors[0]["error"]
    assert all(len(r["predictions"]) == 2 for r in records if "error" not in r)


def test_results_file_is_complete_or_absent(networks, images, tmp_path, dask_client, capsys):
    cfg, weights = networks["segmentation"]
    results = tmp_path / "out.jsonl"
    code, out, err = run(["segment", cfg, weights, images, "--dask", dask_client.scheduler.address,
                          "--results", results], capsys)
    assert code == 0 and out == [], err
    assert len(by_image(results.read_text().splitlines())) == 9
    broken = tmp_path / "broken.weights"
    broken.write_bytes(weights.read_bytes()[:50])   # the workers cannot load it: the whole job fails
    failed = tmp_path / "failed.jsonl"
    with pytest.raises(darknetpy.DarknetError, match="broken.weights"):
        run_batch_command(dask_client.scheduler.address, None, str(failed), str(cfg), str(broken),
                          sorted(str(p) for p in images.iterdir()), "segmentation")
    assert not failed.exists() and [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_dask_without_the_extra_is_one_line(networks, images, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)   # as if dask[distributed] were not installed
    cfg, weights = networks["classification"]
    code, out, err = run(["predict", cfg, weights, images, "--dask"], capsys)
    assert code == 2 and out == []
    assert len(err.splitlines()) == 1 and 'pip install "darknetpy[distributed]"' in err


def test_a_bad_address_is_one_line_quickly(networks, images, capsys, monkeypatch):
    # a real connection attempt that gives up, with a shorter wait than the command's default
    monkeypatch.setattr(darknetpy.distributed.dask, "CONNECT_TIMEOUT", 1.0)
    cfg, weights = networks["classification"]
    started = time.monotonic()
    code, out, err = run(["predict", cfg, weights, images, "--dask", "tcp://127.0.0.1:9"], capsys)
    assert time.monotonic() - started < 10
    assert code == 2 and out == []
    assert len(err.splitlines()) == 1 and err.startswith("tcp://127.0.0.1:9: cannot reach a Dask scheduler")


def test_dask_options_need_dask(networks, images, capsys):
    cfg, weights = networks["classification"]
    code, out, err = run(["predict", cfg, weights, images, "--results", "r.jsonl"], capsys)
    assert code == 2 and "--results goes with --dask" in err


def test_a_worker_that_dies_has_its_partitions_rerun(networks, images, dask_client):
    import os
    import signal

    from darknetpy.distributed.dask import iter_predictions
    cfg, weights = networks["detection"]
    paths = sorted(str(p) for p in images.iterdir()) * 3
    pids = dask_client.run(os.getpid)
    records = iter_predictions(dask_client, cfg, weights, paths, thresh=0.05, partition_size=1)
    done = [next(records)]
    os.kill(next(iter(pids.values())), signal.SIGKILL)   # mid-job, with partitions left on both workers
    done += list(records)
    assert sorted(r["image"] for r in done) == sorted(paths)
    assert not any("error" in r for r in done)
    # the nanny restarts the worker; the tests that run later in the session need only one of the two
