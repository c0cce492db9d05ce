"""edge/run_tflite.py --task detect: boxes against kerascls.detect, bad input, the emulated Pi.

The detection run is the one ``tests/test_detect.py`` trains (yolov3_tiny, 64 px, 40 shapes
images, one epoch); its TFLite float32 and int8 files come from ``kerascls.detect export``. A
model this briefly trained still puts many boxes above a low threshold, which is what the
comparisons need: the runner must find the same boxes as the Keras model, not good ones.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_detect import detect_run  # noqa: F401 - the trained detection run (module fixture)
from test_edge_runner import (  # noqa: F401 - emulated_pi: the cached arm64 root (fixture)
    EMULATE,
    assert_one_line_error,
    emulated_pi,
    json_lines,
    run_cli,
)

from kerascls.detect.data import load_image, make_shapes

SCORE = "0.2"  # the briefly trained model's scores lie around 0.2-0.3


@pytest.fixture(scope="module")
def detect_models(detect_run):  # noqa: F811 - the imported fixture
    from kerascls.detect.export import export_detect_tflite

    return {v: export_detect_tflite(detect_run, v) for v in ("float32", "int8")}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Three PNGs not at the model's input size: 80x80, 80x80 and a stretched 120x90."""
    folder = tmp_path_factory.mktemp("scenes")
    images = make_shapes(3, 80, seed=2).images
    files = []
    for i, img in enumerate(images):
        im = Image.fromarray(img)
        if i == 2:
            im = im.resize((120, 90), Image.BILINEAR)
        files.append(folder / f"scene{i}.png")
        im.save(files[-1])
    return folder, files


def _keras_cli(run_dir, files, tmp_path):
    """What ``python -m kerascls.detect RUN_DIR ... --json`` prints, per image."""
    import contextlib
    import io

    from kerascls.detect.__main__ import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main([str(run_dir), *map(str, files), "--json", "--score-threshold", SCORE,
                     "--output-dir", str(tmp_path)]) == 0
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.startswith("{")]


def _rows(detections):
    """Detections as rows (class, x1, y1, x2, y2, score)."""
    return np.array([(d["class_id"], *d["box"], d["score"]) for d in detections],
                    np.float64).reshape(-1, 6)


def assert_same_detections(mine, ref, box_atol: float, score_atol: float):
    """Both lists hold the same boxes: each of ``mine`` has its own partner in ``ref`` of the
    same class, box within ``box_atol`` pixels and score within ``score_atol`` (matched by
    position, so equal scores listed in another order do not matter)."""
    a, b = _rows(mine), _rows(ref)
    assert len(a) == len(b) > 0
    free = np.ones(len(b), bool)
    for row in a:
        dist = np.abs(b[:, 1:5] - row[1:5]).max(axis=1)
        dist[(b[:, 0] != row[0]) | ~free] = np.inf
        j = int(np.argmin(dist))
        assert dist[j] <= box_atol, (row, b[j] if np.isfinite(dist[j]) else None)
        assert abs(b[j, 5] - row[5]) <= score_atol, (row, b[j])
        free[j] = False


def _iou(a, b):
    lt, rb = np.maximum(a[:2], b[:, :2]), np.minimum(a[2:], b[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area_a, area_b = np.prod(a[2:] - a[:2]), np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / (area_a + area_b - inter)


def test_float32_boxes_are_the_keras_models(detect_run, detect_models, scenes, tmp_path):  # noqa: F811
    folder, files = scenes
    keras_results = _keras_cli(detect_run, files, tmp_path / "keras")
    proc = run_cli("--task", "detect", detect_models["float32"], folder, "--json",
                   "--score-threshold", SCORE, "--draw", tmp_path / "drawn")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    results = json_lines(proc)
    assert [Path(r["path"]).name for r in results] == [f.name for f in files]
    for mine, ref, f in zip(results, keras_results, files):
        with Image.open(f) as im:
            assert (mine["width"], mine["height"]) == im.size
        # The CLI rounds boxes to 0.1 px and scores to 1e-4.
        assert_same_detections(mine["detections"], ref["detections"], 0.06, 1e-4)
        boxes = _rows(mine["detections"])[:, 1:5]
        assert boxes.min() >= 0 and boxes[:, [0, 2]].max() <= mine["width"]
        assert boxes[:, [1, 3]].max() <= mine["height"]
        labels = json.loads((detect_run / "metadata.json").read_text())["labels"]
        assert {d["label"] for d in mine["detections"]} <= set(labels)
        with Image.open(mine["output"]) as drawn:  # drawn at 3x (80 px) or 2x (120 px)
            scale = max(1, 256 // max(mine["width"], mine["height"]))
            assert drawn.size == (mine["width"] * scale, mine["height"] * scale)
            assert drawn.mode == "RGB"
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == \
        [f"{f.stem}_detections.png" for f in files]


def test_int8_decodes_like_the_library_and_finds_the_keras_boxes(detect_run, detect_models,  # noqa: F811
                                                                  scenes, tmp_path):
    from kerascls.detect.export import run_tflite_detect

    files = scenes[1]
    proc = run_cli("--task", "detect", detect_models["int8"], *files, "--json",
                   "--score-threshold", SCORE)
    assert proc.returncode == 0, proc.stderr
    results = json_lines(proc)
    keras_results = _keras_cli(detect_run, files, tmp_path)
    for mine, ref, f in zip(results, keras_results, files):
        w, h = mine["width"], mine["height"]
        # The same int8 file through kerascls's own decoding, on the same resized pixels.
        boxes, scores, classes = run_tflite_detect(detect_models["int8"], load_image(f, 64)[None],
                                                   float(SCORE))[0]
        lib = [{"class_id": int(c), "score": float(s),
                "box": [float(b[0]) * w, float(b[1]) * h, float(b[2]) * w, float(b[3]) * h]}
               for b, s, c in zip(boxes, scores, classes)]
        assert_same_detections(mine["detections"], lib, 0.01, 1e-5)
        # Against the float Keras model: each of int8's five best boxes is a Keras box of the
        # same class (IoU >= 0.7), and its score is close.
        ref_rows = _rows(ref["detections"])
        best = sorted(mine["detections"], key=lambda d: -d["score"])[:5]
        for d in best:
            same = ref_rows[ref_rows[:, 0] == d["class_id"]]
            iou = _iou(np.array(d["box"]), same[:, 1:5])
            assert iou.max() >= 0.7, (d, f.name)
            assert abs(same[iou.argmax(), 5] - d["score"]) < 0.05


def test_text_output_and_one_drawn_png(detect_models, scenes, tmp_path):
    out = tmp_path / "one.png"
    proc = run_cli("--task", "detect", detect_models["float32"], scenes[1][0], "--draw", out,
                   "--score-threshold", SCORE)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"{scenes[1][0]}: ") and lines[0].endswith(f"object(s) -> {out}")
    count = int(lines[0].split(": ")[1].split()[0])
    assert count == len(lines) - 1 > 0
    label, score = lines[1].split()[:2]
    assert label in ("circle", "square", "triangle") and 0.2 <= float(score) <= 1
    with Image.open(out) as im:
        assert im.size == (240, 240)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


@pytest.fixture(scope="module")
def bad(detect_models, tmp_path_factory):
    """Copies of the float32 file with altered sidecars, and a non-image beside a good one."""
    root = tmp_path_factory.mktemp("bad-detect")
    side = json.loads(detect_models["float32"].with_suffix(".json").read_text())

    def variant(name, sidecar):
        path = root / f"{name}.tflite"
        shutil.copy(detect_models["float32"], path)
        path.with_suffix(".json").write_text(json.dumps(sidecar))
        return path

    classify = {k: side[k] for k in ("labels", "input_size")}  # a classification sidecar
    no_heads = {k: v for k, v in side.items() if k != "heads"}
    wrong_grid = json.loads(json.dumps(side))
    wrong_grid["heads"][0]["grid"] = [3, 3]
    folder = root / "mixed"
    folder.mkdir()
    Image.fromarray(make_shapes(1, 64, seed=3).images[0]).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"not a png")
    return {"classify": variant("classify", classify), "no_heads": variant("no_heads", no_heads),
            "wrong_grid": variant("wrong_grid", wrong_grid), "mixed": folder}


def test_bad_input_is_one_line(bad, detect_models, scenes):
    image = scenes[1][0]
    cases = [
        (("--task", "detect", bad["classify"], image),
         ["classify.tflite is a classification model, not a detection model",
          "run without --task detect"]),
        ((bad["classify"], image), ["has YOLO detection heads", "run with --task detect"]),
        ((detect_models["int8"], image), ["is a detection model", "run with --task detect"]),
        (("--task", "detect", bad["no_heads"], image), ["has no 'heads' list",
                                                         "python -m kerascls.detect export"]),
        (("--task", "detect", bad["wrong_grid"], image), ["sidecar head head0 (grid 3x3",
                                                           "matches no output"]),
        (("--task", "detect", "--no-sidecar", detect_models["int8"], image),
         ["--task detect needs the sidecar"]),
        (("--task", "detect", "--top-k", "2", detect_models["int8"], image),
         ["--top-k is for classification"]),
        (("--draw", "x.png", detect_models["int8"], image), ["--draw is for --task detect"]),
        (("--task", "detect", "--score-threshold", "2", detect_models["int8"], image),
         ["--score-threshold must be a number in [0, 1]. Received: 2"]),
        (("--task", "detect", "--draw", "out.png", detect_models["int8"], *scenes[1][:2]),
         ["--draw out.png names one PNG but there are 2 inputs; pass a folder"]),
        (("--task", "segment", detect_models["int8"], image), ["--task", "'segment'"]),
    ]
    for args, fragments in cases:
        assert_one_line_error(run_cli(*args), *fragments)


def test_unreadable_image_is_reported_and_the_others_detected(bad, detect_models):
    proc = run_cli("--task", "detect", detect_models["int8"], bad["mixed"], "--json",
                   "--score-threshold", SCORE)
    assert proc.returncode == 1
    assert [Path(r["path"]).name for r in json_lines(proc)] == ["a.png"]
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 2 and "b.png: not an image file" in errors[0]
    assert errors[1] == "error: 1 of 2 input(s) could not be read"


@pytest.mark.arm64
def test_detects_on_the_emulated_pi(emulated_pi, detect_models, scenes, tmp_path):  # noqa: F811
    info = subprocess.run(["bash", str(EMULATE), "info"], capture_output=True, text=True,
                          env=emulated_pi, check=True).stdout.split()
    assert info[0] == "aarch64" and info[2].startswith("3.11.")
    for variant in ("float32", "int8"):
        args = ("--task", "detect", detect_models[variant], scenes[0], "--json",
                "--score-threshold", SCORE)
        pi = run_cli(*args, "--draw", tmp_path / variant, env=emulated_pi,
                     prefix=("bash", str(EMULATE), "run"))
        assert pi.returncode == 0 and pi.stderr == "", pi.stderr
        host = run_cli(*args)
        for a, b in zip(json_lines(pi), json_lines(host), strict=True):
            assert_same_detections(a["detections"], b["detections"], 0.02, 1e-3)
        assert len(list((tmp_path / variant).glob("*_detections.png"))) == 3
