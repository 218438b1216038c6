"""mAP: the pure function against pycocotools (an independent evaluator) and hand-computed cases; the
`darknetpy map` command's plumbing and its errors."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from darknetpy.metrics import ImageDetections, ImageTruths, average_precision, detection_map, iou_matrix

pycocotools = pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402


# ------------------------------------------------------------------------------------------- helpers

def det(boxes, scores) -> ImageDetections:
    boxes = np.array(boxes, np.float64).reshape(-1, 4)
    return ImageDetections(boxes, np.array(scores, np.float32).reshape(len(boxes), -1 if len(boxes) else 1))


def truth(boxes, classes) -> ImageTruths:
    return ImageTruths(np.array(boxes, np.float64).reshape(-1, 4), np.array(classes, np.int64))


def random_case(seed: int, images: int = 25, classes: int = 3, ties: bool = False):
    """Truths at random; detections: jittered copies (some several times), random boxes, wrong classes."""
    rng = np.random.default_rng(seed)
    sizes = [(int(rng.integers(200, 640)), int(rng.integers(200, 640))) for _ in range(images)]
    dets, truths = [], []
    for _ in range(images):
        m = int(rng.integers(0, 7))
        wh = rng.uniform(0.05, 0.4, (m, 2))
        xy = rng.uniform(0.2, 0.8, (m, 2))
        tb = np.concatenate([xy, wh], 1)
        tc = rng.integers(0, classes, m)
        boxes, scores = [], []
        for b, c in zip(tb, tc):
            for _ in range(int(rng.integers(0, 3))):  # 0, 1 or 2 detections of this truth
                jitter = rng.normal(0, rng.uniform(0.02, 0.2), 4) * np.array([b[2], b[3], b[2], b[3]])
                nb = b + jitter
                nb[2:] = np.abs(nb[2:]) + 0.01
                s = np.zeros(classes)
                s[c if rng.random() < 0.85 else rng.integers(0, classes)] = rng.uniform(0.01, 1)
                boxes.append(nb)
                scores.append(s)
        for _ in range(int(rng.integers(0, 4))):  # background detections
            s = np.zeros(classes)
            s[rng.integers(0, classes)] = rng.uniform(0.01, 1)
            boxes.append(np.concatenate([rng.uniform(0.2, 0.8, 2), rng.uniform(0.05, 0.4, 2)]))
            scores.append(s)
        scores = np.array(scores).reshape(-1, classes)
        if ties:
            scores = np.round(scores * 4) / 4  # many equal scores
        dets.append(det(np.array(boxes).reshape(-1, 4), scores))
        truths.append(truth(tb, tc))
    return dets, truths, sizes


def coco_precision(dets, truths, sizes, classes):
    """pycocotools' precision array [T, R, K] (areaRng all, every detection kept)."""
    images, annotations, results = [], [], []
    for i, ((w, h), d, t) in enumerate(zip(sizes, dets, truths)):
        images.append({"id": i + 1, "width": w, "height": h})
        for b, c in zip(t.boxes, t.classes):
            bw, bh = b[2] * w, b[3] * h
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(c) + 1,
                                "bbox": [(b[0] - b[2] / 2) * w, (b[1] - b[3] / 2) * h, bw, bh],
                                "area": bw * bh, "iscrowd": 0})
        for b, s in zip(d.boxes, d.scores):
            for c in np.nonzero(s > 0)[0]:
                results.append({"image_id": i + 1, "category_id": int(c) + 1, "score": float(s[c]),
                                "bbox": [(b[0] - b[2] / 2) * w, (b[1] - b[3] / 2) * h, b[2] * w, b[3] * h]})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations,
                  "categories": [{"id": c + 1, "name": str(c)} for c in range(classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.maxDets = [10000]
        ev.params.areaRng = [[0, 1e10]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
    return ev.eval["precision"][:, :, :, 0, 0]


def coco_ap(precision_tk):
    """AP from pycocotools' precision over recall thresholds; None for a class it leaves out (-1)."""
    return None if np.all(precision_tk < 0) else float(precision_tk.mean())


# --------------------------------------------------------------------------------------- pycocotools

@pytest.mark.parametrize("seed,ties", [(1, False), (2, False), (3, True), (4, True)])
def test_map_equals_pycocotools(seed, ties):
    classes = 3
    dets, truths, sizes = random_case(seed, classes=classes, ties=ties)
    precision = coco_precision(dets, truths, sizes, classes)
    result = detection_map(dets, truths, [str(c) for c in range(classes)], points=101)
    valid = precision[0] > -1
    assert result.map50_95 == pytest.approx(precision[precision > -1].mean(), abs=1e-4)
    assert result.map50 == pytest.approx(precision[0][valid].mean(), abs=1e-4)
    for c, class_result in enumerate(result.classes):
        expected = coco_ap(precision[0, :, c])
        if expected is None:
            assert class_result.ap is None
        else:
            assert class_result.ap == pytest.approx(expected, abs=1e-4)
            assert class_result.ap50_95 == pytest.approx(precision[:, :, c].mean(), abs=1e-4)


def test_pycocotools_case_is_not_trivial():
    """The random cases hold duplicates, misses and false positives (else equality proves little)."""
    dets, truths, sizes = random_case(1)
    result = detection_map(dets, truths, ["0", "1", "2"], points=101, thresh=0.0)
    assert 0.2 < result.map50 < 0.95 and result.fp > 10 and result.tp > 10
    assert result.map50_95 < result.map50


def test_iou_matrix_matches_pycocotools_iou():
    from pycocotools import mask as mask_utils
    rng = np.random.default_rng(5)
    a = np.concatenate([rng.uniform(10, 90, (6, 2)), rng.uniform(1, 40, (6, 2))], 1)
    b = np.concatenate([rng.uniform(10, 90, (4, 2)), rng.uniform(1, 40, (4, 2))], 1)
    corner = lambda x: np.concatenate([x[:, :2] - x[:, 2:] / 2, x[:, 2:]], 1).tolist()  # noqa: E731
    expected = mask_utils.iou(corner(a), corner(b), [0] * len(b))
    np.testing.assert_allclose(iou_matrix(a, b), expected, atol=1e-12)


# ------------------------------------------------------------------------------------- hand-computed

# Three ranked detections of one class with two truths: TP, FP, TP. Precision 1, 1/2, 2/3; recall 1/2, 1/2, 1.
RANKED = np.array([True, False, True])


def test_area_rule_by_hand():
    # recall 0 -> 1/2 at precision envelope 1, 1/2 -> 1 at 2/3
    assert average_precision(RANKED, 2, points=0) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_eleven_point_rule_by_hand():
    # recall thresholds 0, .1, .., .5 reach precision 1 (6 points); .6 .. 1.0 only 2/3 (5 points)
    assert average_precision(RANKED, 2, points=11) == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)


def test_101_point_rule_by_hand():
    assert average_precision(RANKED, 2, points=101) == pytest.approx((51 * 1 + 50 * 2 / 3) / 101)


def test_area_rule_uses_the_envelope():
    # FP, TP, TP with 2 truths: precision 0, 1/2, 2/3; the envelope lifts the first step to 2/3
    assert average_precision(np.array([False, True, True]), 2, points=0) == pytest.approx(2 / 3)
    assert average_precision(np.array([False, True, True]), 2, points=11) == pytest.approx(2 / 3)


def test_recall_never_reached_counts_zero():
    # one of four truths found, first: recall 1/4 at precision 1
    assert average_precision(np.array([True]), 4, points=0) == pytest.approx(0.25)
    assert average_precision(np.array([True]), 4, points=11) == pytest.approx(3 / 11)  # 0, .1, .2


def test_eleven_point_thresholds_as_voc_devkit():
    # recall exactly 3/10 does not reach the devkit's 0.30000000000000004 (np.arange(0, 1.1, .1))
    ranked = np.array([True, True, True])
    assert average_precision(ranked, 10, points=11) == pytest.approx(3 / 11)  # 0, .1, .2 only


BOX = [0.5, 0.5, 0.2, 0.2]
NEAR = [0.51, 0.5, 0.2, 0.2]     # IoU with BOX 0.818
OTHER = [0.2, 0.2, 0.1, 0.1]


def test_ties_in_score_keep_list_order():
    # the same score: image 0's false positive ranks before image 1's true positive
    dets = [det([OTHER], [[0.8]]), det([BOX], [[0.8]])]
    truths = [truth([], []), truth([BOX], [0])]
    assert detection_map(dets, truths, ["a"]).map50 == pytest.approx(0.5)
    # swapped images: the true positive first
    assert detection_map(dets[::-1], truths[::-1], ["a"]).map50 == pytest.approx(1.0)


def test_duplicate_detections_of_one_truth():
    # the higher score takes the truth; the duplicate (higher IoU, lower score) is a false positive
    result = detection_map([det([NEAR, BOX], [[0.9], [0.6]])], [truth([BOX], [0])], ["a"], thresh=0.5)
    assert result.map50 == pytest.approx(1.0)
    assert (result.classes[0].tp, result.classes[0].fp) == (1, 1)
    assert result.precision == pytest.approx(0.5) and result.recall == pytest.approx(1.0)
    assert result.f1 == pytest.approx(2 * 0.5 / 1.5)
    iou_near = iou_matrix([NEAR], [BOX])[0, 0]
    assert result.avg_iou == pytest.approx(iou_near / 2)  # AlexeyAB: FPs count 0 in the average


def test_duplicate_takes_another_unmatched_truth():
    # two overlapping truths; the second detection's best truth is taken, the other still clears .5
    a, b = [0.5, 0.5, 0.2, 0.2], [0.53, 0.5, 0.2, 0.2]
    result = detection_map([det([a, a], [[0.9], [0.8]])], [truth([a, b], [0, 0])], ["x"], thresh=0.5)
    assert (result.classes[0].tp, result.classes[0].fp) == (2, 0)
    assert result.map50 == pytest.approx(1.0)


def test_class_without_truths_and_class_without_detections():
    dets = [det([BOX, OTHER], [[0.9, 0.0, 0.0], [0.0, 0.7, 0.0]])]
    truths = [truth([BOX, [0.8, 0.8, 0.1, 0.1]], [0, 2])]
    result = detection_map(dets, truths, ["a", "b", "c"], thresh=0.25)
    a, b, c = result.classes
    assert (a.ap, a.tp, a.fp, a.truths) == (1.0, 1, 0, 1)
    assert b.ap is None and (b.tp, b.fp, b.truths) == (0, 1, 0)   # no truths: no AP, left out of the mean
    assert c.ap == 0.0 and (c.tp, c.fp, c.truths) == (0, 0, 1)    # truths but no detections: 0
    assert result.map50 == pytest.approx(0.5)
    assert result.precision == pytest.approx(0.5) and result.recall == pytest.approx(0.5)
    d = result.as_dict()
    assert d["classes"][1]["ap50"] is None
    json.dumps(d)


def test_confidence_threshold_is_strict():
    dets = [det([BOX], [[0.25]])]
    result = detection_map(dets, [truth([BOX], [0])], ["a"], thresh=0.25)
    assert (result.tp, result.fp) == (0, 0) and result.map50 == pytest.approx(1.0)


def test_iou_threshold_is_strict_and_chosen():
    # equal boxes shifted by a third of their width: intersection 2/3, union 4/3 of a box, IoU 0.5
    t = [0.5, 0.5, 0.3, 0.2]
    d = [0.6, 0.5, 0.3, 0.2]
    assert iou_matrix([d], [t])[0, 0] == pytest.approx(0.5)
    result = detection_map([det([d], [[0.9]])], [truth([t], [0])], ["a"], iou_thresh=0.45)
    assert result.map50 == pytest.approx(1.0)
    result = detection_map([det([d], [[0.9]])], [truth([t], [0])], ["a"], iou_thresh=0.55)
    assert result.map50 == pytest.approx(0.0)


def test_as_dict_keys():
    result = detection_map([det([BOX], [[0.9]])], [truth([BOX], [0])], ["a"])
    d = result.as_dict()
    assert list(d) == ["map50", "map50_95", "precision", "recall", "f1", "avg_iou", "classes"]
    assert list(d["classes"][0]) == ["name", "ap50", "tp", "fp", "truths"]
    assert d["map50"] == 1.0 and d["map50_95"] == 1.0 and d["avg_iou"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------ darknetpy map

# A detector whose answer is known without running darknetpy: global average pooling, then a 1x1
# convolution with zero weights, so every image gets one box from the biases alone: centre (0.5, 0.5)
# (sigmoid(0)), size exp(0) * anchor 16 / 32 = 0.5, objectness sigmoid(4), classes sigmoid(2), sigmoid(-1).
TINY_CFG = """[net]
width=32
height=32
channels=3

[avgpool]

[convolutional]
filters=7
size=1
stride=1
activation=linear

[yolo]
mask=0
anchors=16,16
classes=2
num=1
"""
BIASES = [0.0, 0.0, 0.0, 0.0, 4.0, 2.0, -1.0]
CENTRE = "0.5 0.5 0.5 0.5"


def write_weights(path, biases, inputs=3):
    header = np.array([0, 2, 0], np.int32).tobytes() + np.array([0], np.uint64).tobytes()  # spec §5
    path.write_bytes(header + np.array(biases, np.float32).tobytes()
                     + np.zeros(len(biases) * inputs, np.float32).tobytes())


def tiny_dataset(root, labels, names=("a", "b"), valid=True):
    """Images (48x32, to show boxes are fractions of the image) with the given label lines beside them."""
    from PIL import Image
    root.mkdir(parents=True, exist_ok=True)
    (root / "tiny.cfg").write_text(TINY_CFG)
    write_weights(root / "tiny.weights", BIASES)
    entries = []
    for i, lines in enumerate(labels):
        Image.fromarray(np.full((32, 48, 3), 40 * i, np.uint8)).save(root / f"img{i}.png")
        (root / f"img{i}.txt").write_text("".join(line + "\n" for line in lines))
        entries.append(f"img{i}.png")
    (root / "valid.list").write_text("\n".join(entries) + "\n")
    (root / "names.list").write_text("\n".join(names) + "\n")
    data = ["classes=2", "names=names.list"] + (["valid=valid.list"] if valid else [])
    (root / "tiny.data").write_text("\n".join(data) + "\n")
    return root


def run_cli(capsys, *args):
    from darknetpy.cli import main
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_map_command_end_to_end(tmp_path, capsys):
    # image 0 holds an "a" exactly where the box is, image 1 a "b" there and a missed "b" elsewhere
    root = tiny_dataset(tmp_path / "d", [[f"0 {CENTRE}"], [f"1 {CENTRE}", "1 0.1 0.1 0.1 0.1"]])
    code, out, err = run_cli(capsys, "map", root / "tiny.cfg", root / "tiny.weights", root / "tiny.data", "--json")
    assert code == 0, err
    result = json.loads(out)
    # a: TP (image 0) then FP (image 1), equal scores in list order -> AP 1. b: FP then TP, 1 of 2 truths
    # -> precision 1/2 up to recall 1/2 -> AP 0.25
    assert result["map50"] == pytest.approx((1.0 + 0.25) / 2)
    assert result["map50_95"] == pytest.approx((1.0 + (51 * 0.5 / 101)) / 2)  # IoU 1 passes every threshold
    assert result["classes"] == [{"name": "a", "ap50": pytest.approx(1.0), "tp": 1, "fp": 1, "truths": 1},
                                 {"name": "b", "ap50": pytest.approx(0.25), "tp": 1, "fp": 1, "truths": 2}]
    # sigmoid(4) * sigmoid(-1) = 0.259 > 0.25: both classes count at the threshold
    assert result["precision"] == pytest.approx(0.5) and result["recall"] == pytest.approx(2 / 3)
    assert result["avg_iou"] == pytest.approx(0.5)
    code, out, err = run_cli(capsys, "map", root / "tiny.cfg", root / "tiny.weights", root / "tiny.data",
                             "--thresh", "0.3", "--points", "11")
    assert code == 0, err
    assert "class_id = 0, name = a, ap = 100.00%" in out and "(TP = 1, FP = 1)" in out
    assert "class_id = 1, name = b, ap = 27.27%" in out  # 11 points: recall 0 .. .5 reach 1/2: 6/11 * .5
    assert "for conf_thresh = 0.30, precision = 0.50, recall = 0.33, F1-score = 0.40" in out
    assert "mean average precision (mAP@0.50) = 0.636364" in out and "mAP@[.5:.95]" in out


def one_located_line(err: str, where: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(where), err


def test_map_bad_inputs(tmp_path, capsys):
    root = tiny_dataset(tmp_path / "d", [[f"0 {CENTRE}"]])
    cfg, weights = root / "tiny.cfg", root / "tiny.weights"

    no_valid = tiny_dataset(tmp_path / "nv", [[f"0 {CENTRE}"]], valid=False)
    code, _, err = run_cli(capsys, "map", cfg, weights, no_valid / "tiny.data")
    assert code == 2 and "valid" in err
    one_located_line(err, str(no_valid / "tiny.data"))

    few = tiny_dataset(tmp_path / "few", [[f"0 {CENTRE}"]], names=("a",))
    code, _, err = run_cli(capsys, "map", cfg, weights, few / "tiny.data")
    assert code == 2
    one_located_line(err, str(few / "names.list"))

    other = tmp_path / "other.weights"
    write_weights(other, BIASES + [0.0] * 7)  # a network with twice the filters
    code, _, err = run_cli(capsys, "map", cfg, other, root / "tiny.data")
    assert code == 2
    one_located_line(err, str(other))

    unlabelled = tiny_dataset(tmp_path / "u", [[]])
    code, _, err = run_cli(capsys, "map", cfg, weights, unlabelled / "tiny.data")
    assert code == 2 and err.strip().splitlines()[-1].startswith(f"{unlabelled / 'valid.list'}: no image")

    (root / "valid.list").write_text("\n")
    code, _, err = run_cli(capsys, "map", cfg, weights, root / "tiny.data")
    assert code == 2 and "empty" in err
    one_located_line(err, str(root / "valid.list"))
