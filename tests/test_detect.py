"""Detection: shapes data, augmentation, targets, loss, anchors, training, evaluation, the CLIs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from kerascls.detect.anchors import kmeans_anchors, mean_best_iou
from kerascls.detect.data import (
    HeadLayout,
    assign_targets,
    augment,
    load_detection,
    make_shapes,
    read_yolo_labels,
)
from kerascls.detect.decode import nms, postprocess
from kerascls.detect.evaluate import coco_eval
from kerascls.errors import UserError

REPO = Path(__file__).resolve().parent.parent
ANCHORS = [(10, 10), (16, 16), (22, 22), (30, 30), (40, 40), (56, 56)]

# One training step of yolov3_tiny (64 px, 3 classes) on the backend in KERAS_BACKEND.
TRAIN_STEP = textwrap.dedent("""
    import numpy as np, keras
    from kerascls.detect.data import HeadLayout, detection_batches, make_shapes
    from kerascls.detect.train import DetectConfig, _trainer_class, build_detector
    cfg = DetectConfig(image_size=64, batch_size=4)
    det = build_detector(cfg, 3, %r)
    batches = detection_batches(make_shapes(4, 64, seed=1), HeadLayout.of(det), 4,
                                training=True, augment_kinds=("flip", "affine", "color"))
    trainer = _trainer_class()(det)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    before = [np.array(keras.ops.convert_to_numpy(w)) for w in det.trainable_weights]
    hist = trainer.fit(batches, epochs=1, verbose=0)
    loss = hist.history["loss"][0]
    moved = sum(not np.array_equal(b, keras.ops.convert_to_numpy(w))
                for b, w in zip(before, det.trainable_weights))
    assert np.isfinite(loss) and moved == len(before), (loss, moved)
    print("OK", keras.backend.backend(), loss)
""") % (ANCHORS,)


@pytest.fixture(scope="module", autouse=True)
def train_steps(request, tmp_path_factory):
    """One train step per backend, each in a subprocess started with the module so they run
    beside the other tests: TensorFlow always, JAX and PyTorch when ``backends`` tests are
    selected."""
    backends = ["tensorflow"]
    if any(item.get_closest_marker("backends") for item in request.session.items):
        backends += ["jax", "torch"]
    logs = tmp_path_factory.mktemp("train_steps")
    procs = {}
    for backend in backends:
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        if backend == "jax":  # one step compiles once; XLA's expensive passes would only slow it
            env["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_"
                                "level=0 --xla_llvm_disable_expensive_passes=true").strip()
        log = open(logs / f"{backend}.log", "w+")  # noqa: SIM115 - closed below
        procs[backend] = (subprocess.Popen([sys.executable, "-c", TRAIN_STEP], cwd=REPO, env=env,
                                           stdout=log, stderr=subprocess.STDOUT, text=True), log)
    yield procs
    for proc, log in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def _train_step_result(procs, backend) -> tuple[int, str]:
    proc, log = procs[backend]
    proc.wait(timeout=900)
    log.seek(0)
    return proc.returncode, log.read()


# ------------------------------------------------------------------------------------- data


def test_shapes_are_deterministic_with_exact_boxes():
    a, b = make_shapes(6, 64, seed=3), make_shapes(6, 64, seed=3)
    assert np.array_equal(a.images, b.images)
    assert all(np.array_equal(x, y) for x, y in zip(a.boxes, b.boxes))
    assert not np.array_equal(a.images, make_shapes(6, 64, seed=4).images)
    for img, boxes in zip(a.images, a.boxes):
        assert 1 <= len(boxes) <= 4 and set(boxes[:, 4]) <= {0, 1, 2}
        assert (boxes[:, :4] >= 0).all() and (boxes[:, :4] <= 1).all()
        for x1, y1, x2, y2, _ in boxes:
            # Box edges are pixel edges; shapes span 14-42% of the image.
            px = np.array([x1, y1, x2, y2]) * 64
            np.testing.assert_allclose(px, np.round(px), atol=1e-4)
            assert px[2] - px[0] >= 8 and px[3] - px[1] >= 8


def test_augment_moves_boxes_with_the_pixels():
    img = np.zeros((64, 64, 3), np.uint8)
    img[8:24, 40:56] = 255  # a white square
    boxes = np.array([[40 / 64, 8 / 64, 56 / 64, 24 / 64, 1]], np.float32)
    rng = np.random.default_rng(0)
    for _ in range(10):
        out, b = augment(img, boxes, rng, ("flip", "affine"))
        assert len(b) == 1 and b[0, 4] == 1
        mask = out.mean(axis=2) > 128
        ys, xs = np.nonzero(mask)
        found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / 64
        np.testing.assert_allclose(found, b[0, :4], atol=2.5 / 64)


def test_targets_go_to_the_best_anchor_in_the_centre_cell():
    layout = HeadLayout(64, [(2, 2), (4, 4)], [ANCHORS[3:], ANCHORS[:3]], classes=3)
    box = np.array([[0.30, 0.30, 0.30 + 16 / 64, 0.30 + 16 / 64, 2]], np.float32)  # anchor 1
    big = np.array([[0.5, 0.5, 0.5 + 40 / 64, 0.5 + 40 / 64, 0]], np.float32)  # anchor 4
    big[:, 2:4] = np.minimum(big[:, 2:4], 1.0)
    targets, padded = assign_targets([box, np.zeros((0, 5), np.float32)], layout)
    t = targets[1][0]  # stride-16 scale, first image
    (gy, gx, a), = np.argwhere(t[..., 4] == 1)
    assert (gy, gx, a) == (int(0.3 * 4 + 8 / 64 * 4), int(0.3 * 4 + 8 / 64 * 4), 1)
    assert t[gy, gx, a, 5 + 2] == 1 and targets[0][0, ..., 4].sum() == 0
    assert targets[1][1].sum() == 0 and padded[1].sum() == 0
    np.testing.assert_allclose(padded[0, 0], box[0, :4])
    targets, _ = assign_targets([np.array([[0.2, 0.2, 0.82, 0.82, 0]], np.float32)], layout)
    assert targets[0][0, ..., 4].sum() == 1 and targets[1][0, ..., 4].sum() == 0


def test_kmeans_anchors_recover_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([[0.1, 0.1], [0.3, 0.15], [0.5, 0.6]])
    wh = np.concatenate([c * rng.uniform(0.95, 1.05, (200, 2)) for c in centres])
    found = kmeans_anchors(wh, 3)
    np.testing.assert_allclose(found, centres, rtol=0.06)
    assert mean_best_iou(wh, found) > 0.9 > mean_best_iou(wh, found[:1])


def test_nms_is_class_aware():
    boxes = np.array([[0.1, 0.1, 0.5, 0.5], [0.12, 0.1, 0.5, 0.52], [0.6, 0.6, 0.9, 0.9]])
    assert list(nms(boxes, np.array([0.9, 0.8, 0.7]), 0.5)) == [0, 2]
    scores = np.zeros((3, 2))
    scores[0, 0], scores[1, 1], scores[2, 0] = 0.9, 0.8, 0.1
    _, s, c = postprocess(boxes, scores, score_threshold=0.2)
    assert list(c) == [0, 1] and np.allclose(s, [0.9, 0.8])  # overlapping, other class: kept


def test_coco_map_through_pycocotools():
    truth = [np.array([[0.1, 0.1, 0.4, 0.4, 0], [0.5, 0.5, 0.9, 0.8, 1]], np.float32),
             np.array([[0.2, 0.3, 0.6, 0.7, 1]], np.float32)]
    perfect = [(t[:, :4], np.ones(len(t)), t[:, 4].astype(int)) for t in truth]
    ev = coco_eval(truth, perfect, ["a", "b"], 64)
    assert ev.stats[0] == pytest.approx(1.0) and ev.stats[1] == pytest.approx(1.0)
    shifted = [(t[:, :4] + 0.05, np.ones(len(t)), t[:, 4].astype(int)) for t in truth]
    ev = coco_eval(truth, shifted, ["a", "b"], 64)
    assert ev.stats[1] == pytest.approx(1.0) and ev.stats[0] < 0.8  # IoU > 0.5, not > 0.95
    only_b = [(t[t[:, 4] == 1, :4], np.ones(int((t[:, 4] == 1).sum())), t[t[:, 4] == 1, 4]
               .astype(int)) for t in truth]
    ev = coco_eval(truth, only_b, ["a", "b"], 64)
    assert ev.stats[1] == pytest.approx(0.5)


def test_loss_is_lower_for_outputs_that_match_the_targets():
    import keras

    from kerascls.detect.loss import yolo_loss
    from kerascls.registry import build_model

    det = build_model("yolov3_tiny", (64, 64, 3), 3, anchors=ANCHORS)
    from kerascls.detect.cfg import yolo_layers

    layout = HeadLayout.of(det)
    data = make_shapes(2, 64, seed=5)
    targets, padded = assign_targets(data.boxes, layout)
    good = []
    for t, head in zip(targets, yolo_layers(det)):
        gh, gw = t.shape[1:3]
        gy, gx = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        off = np.clip(t[..., 0:2] * [gw, gh] - np.stack([gx, gy], -1)[:, :, None], 1e-3,
                      1 - 1e-3)
        raw = np.full(t.shape, -8.0, np.float32)
        raw[..., 0:2] = np.log(off / (1 - off))
        anchors = np.array(head.anchors, np.float32) / 64
        raw[..., 2:4] = np.log(np.maximum(t[..., 2:4], 1e-6) / anchors)
        raw[..., 4:] = np.where(t[..., 4:] > 0, 8.0, -8.0)
        good.append(raw)
    y = (*targets, padded)
    total_good, parts = yolo_loss(y, good, yolo_layers(det), 64)
    total_zero, _ = yolo_loss(y, [np.zeros_like(g) for g in good], yolo_layers(det), 64)
    total_good = float(keras.ops.convert_to_numpy(total_good))
    assert total_good < 0.2 * float(keras.ops.convert_to_numpy(total_zero))
    assert float(keras.ops.convert_to_numpy(parts["cls"])) < 0.05


# ------------------------------------------------------------------------------- bad labels


def _yolo_folder(root: Path, labels: dict[str, str], names="circle\nsquare\n") -> Path:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text(names)
    for stem, text in labels.items():
        Image.new("RGB", (40, 30), (90, 90, 90)).save(root / f"{stem}.png")
        if text is not None:
            (root / f"{stem}.txt").write_text(text)
    return root


@pytest.mark.parametrize("text, message", [
    ("0 0.5 0.5 0.2 0.2\n1 0.5 1.2 0.2 0.2\n", "b.txt:2: box 0.5 1.2 0.2 0.2 is not inside"),
    ("0 0.5 0.5 0.2 0.2\n\n7 0.5 0.5 0.2 0.2\n", "b.txt:3: unknown class id 7 (classes are 0..1)"),
    ("0 0.5 0.5 0.2\n", "b.txt:1: expected 'class cx cy w h'"),
    ("x 0.5 0.5 0.2 0.2\n", "b.txt:1: expected an integer class"),
])
def test_bad_yolo_labels_name_file_and_line(tmp_path, text, message):
    root = _yolo_folder(tmp_path / "set", {"a": "0 0.5 0.5 0.2 0.2\n", "b": text})
    with pytest.raises(UserError, match=None) as err:
        load_detection(f"yolo:{root}", 32, val_fraction=0, test_fraction=0)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert (root / "b.txt").read_text() == text  # the data is left as it was


def test_yolo_folder_keeps_good_images_and_says_what_it_left_out(tmp_path, capsys):
    root = _yolo_folder(tmp_path / "set", {"a": "1 0.5 0.5 0.5 0.4\n", "b": "", "c": None})
    splits = load_detection(f"yolo:{root}", 32, val_fraction=0, test_fraction=0)
    err = capsys.readouterr().err
    assert "1 image(s) without a label file left out" in err and "c.png" in err
    assert "1 image(s) with no objects kept as background" in err
    assert splits.class_names == ["circle", "square"] and len(splits.train) == 2
    assert [len(b) for b in splits.train.boxes] == [1, 0]
    np.testing.assert_allclose(splits.train.boxes[0][0], [0.25, 0.3, 0.75, 0.7, 1])
    assert read_yolo_labels(root / "b.txt", 2).shape == (0, 5)


def test_coco_annotation_file(tmp_path):
    from PIL import Image

    Image.new("RGB", (50, 40)).save(tmp_path / "im.png")
    ann = {"images": [{"id": 3, "file_name": "im.png", "width": 50, "height": 40}],
           "categories": [{"id": 7, "name": "cat"}, {"id": 9, "name": "dog"}],
           "annotations": [{"id": 1, "image_id": 3, "category_id": 9, "bbox": [5, 4, 20, 10]}]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    splits = load_detection(f"coco:{tmp_path / 'ann.json'}", 32, val_fraction=0, test_fraction=0)
    assert splits.class_names == ["cat", "dog"]
    np.testing.assert_allclose(splits.train.boxes[0], [[0.1, 0.1, 0.5, 0.35, 1]], atol=1e-6)
    ann["annotations"][0]["category_id"] = 4
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    with pytest.raises(UserError, match="annotation 1 has unknown category_id 4"):
        load_detection(f"coco:{tmp_path / 'ann.json'}", 32, val_fraction=0, test_fraction=0)


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    from kerascls.train import main

    root = _yolo_folder(tmp_path / "set", {"a": "5 0.5 0.5 0.2 0.2\n"})
    assert main(["--task", "detect", "--dataset", f"yolo:{root}", "--output-dir",
                 str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "a.txt:1: unknown class id 5" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "runs").exists()
    assert main(["--model", "yolov3_tiny", "--output-dir", str(tmp_path / "runs")]) == 2
    assert "yolov3_tiny is a detection model; add --task detect" in capsys.readouterr().err
    assert main(["--task", "detect", "--image-size", "100"]) == 2
    assert "--image-size must be a multiple of 32" in capsys.readouterr().err


# ------------------------------------------------------------------------- training end to end


@pytest.fixture(scope="module")
def detect_run(tmp_path_factory):
    from kerascls.train import main

    root = tmp_path_factory.mktemp("detect_runs")
    assert main(["--task", "detect", "--model", "yolov3_tiny", "--dataset", "shapes",
                 "--image-size", "64", "--num-examples", "40", "--epochs", "1",
                 "--batch-size", "8", "--verbose", "0", "--output-dir", str(root)]) == 0
    return root / "yolov3_tiny-shapes"


def test_training_writes_a_complete_run(detect_run):
    for name in ("model.keras", "model.weights", "config.yaml", "history.csv", "metadata.json",
                 "detection_report.json", "pr_curves.png", "gallery.png"):
        assert (detect_run / name).is_file(), name
    meta = json.loads((detect_run / "metadata.json").read_text())
    assert meta["task"] == "detect" and meta["labels"] == ["circle", "square", "triangle"]
    assert len(meta["anchors"]) == 6 and 0 <= meta["metrics"]["map50"] <= 1
    report = json.loads((detect_run / "detection_report.json").read_text())
    assert set(report["per_class"]) == {"circle", "square", "triangle"}
    assert report["map"] <= report["map50"]


def test_detect_cli_draws_and_prints_boxes(detect_run, tmp_path, capsys):
    from PIL import Image

    from kerascls.detect.__main__ import main

    img = tmp_path / "scene.png"
    Image.fromarray(make_shapes(1, 80, seed=2).images[0]).save(img)
    assert main([str(detect_run), str(img), "--score-threshold", "0.0", "--json",
                 "--output-dir", str(tmp_path / "out")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["detections"] and Path(result["output"]).is_file()
    d = result["detections"][0]
    assert d["label"] in ("circle", "square", "triangle") and len(d["box"]) == 4
    assert all(0 <= v <= 80 for v in d["box"])
    with Image.open(result["output"]) as drawn:
        assert drawn.size == (240, 240)  # 80 px scaled x3 for legibility
    assert main([str(tmp_path), str(img)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_anchors_cli(capsys):
    from kerascls.detect.__main__ import main

    assert main(["anchors", "shapes", "--num", "6", "--image-size", "96",
                 "--num-examples", "60"]) == 0
    out = capsys.readouterr().out
    pairs = out.splitlines()[0].removeprefix("anchors = ").split(",  ")
    assert len(pairs) == 6 and "mean IoU with the best anchor" in out


# --------------------------------------------------------------------------------- backends


def test_one_train_step_on_tensorflow(train_steps):
    code, out = _train_step_result(train_steps, "tensorflow")
    assert code == 0 and "OK tensorflow" in out, out[-2000:]


@pytest.mark.backends
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_one_train_step_on_other_backends(train_steps, backend):
    code, out = _train_step_result(train_steps, backend)
    assert code == 0 and f"OK {backend}" in out, out[-2000:]


@pytest.mark.slow
def test_yolov3_trains_one_step_at_64px():
    """The full 62M-parameter network, one step on TensorFlow at 64x64 (3 classes)."""
    import keras

    from kerascls.detect.data import detection_batches
    from kerascls.detect.train import DetectConfig, _trainer_class, build_detector

    det = build_detector(DetectConfig(model="yolov3", image_size=64), 3,
                         [(a * 64 / 416, b * 64 / 416) for a, b in
                          [(10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119),
                           (116, 90), (156, 198), (373, 326)]])
    batches = detection_batches(make_shapes(2, 64, seed=1), HeadLayout.of(det), 2, training=True)
    trainer = _trainer_class()(det)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-4))
    loss = trainer.fit(batches, epochs=1, verbose=0).history["loss"][0]
    assert np.isfinite(loss)


# ---------------------------------------------------------------------------------- exports


@pytest.fixture(scope="module")
def detect_exports(detect_run):
    from kerascls.detect.export import export_detect_saved_model, export_detect_tflite

    return (export_detect_saved_model(detect_run), export_detect_tflite(detect_run),
            export_detect_tflite(detect_run, "int8"))


def _png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def test_saved_model_detects_like_the_keras_model(detect_run, detect_exports):
    import keras
    import tensorflow as tf

    from kerascls.detect.decode import detect_batch

    model = keras.saving.load_model(detect_run / "model.keras", compile=False)
    images = make_shapes(3, 64, seed=7).images
    ref = detect_batch(model, images, 0.25, 0.45)
    loaded = tf.saved_model.load(str(detect_exports[0]))
    out = loaded.signatures["serving_default"](image_bytes=tf.constant([_png(i) for i in images]))
    assert sorted(out) == ["boxes", "classes", "num_detections", "scores"]
    for i, (boxes, scores, classes) in enumerate(ref):
        n = int(out["num_detections"][i])
        assert n == min(len(boxes), 100)
        np.testing.assert_allclose(out["boxes"][i, :n].numpy(), boxes[:n], atol=1e-5)
        np.testing.assert_allclose(out["scores"][i, :n].numpy(), scores[:n], atol=1e-5)
        assert list(out["classes"][i, :n].numpy()) == list(classes[:n])
    meta = json.loads((detect_exports[0] / "assets" / "metadata.json").read_text())
    assert meta["serving"]["outputs"] == ["boxes", "scores", "classes", "num_detections"]


def test_saved_model_answers_rest_predict_with_boxes(detect_exports):
    import base64
    import http.client

    from kerascls.serving.manager import ModelSource
    from kerascls.serving.server import ModelServer

    image = make_shapes(1, 64, seed=8).images[0]
    server = ModelServer([ModelSource("yolo", detect_exports[0].parent)], rest_port=0,
                         grpc_port=None, poll_seconds=0.2)
    server.start()
    try:
        body = json.dumps({"instances": [{"b64": base64.b64encode(_png(image)).decode()}]})
        for _ in range(300):
            conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=60)
            conn.request("POST", "/v1/models/yolo:predict", body=body,
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            doc = json.loads(resp.read())
            if resp.status not in (404, 503):  # until the version is loaded
                break
            time.sleep(0.2)
    finally:
        server.stop()
    assert resp.status == 200, doc
    pred = doc["predictions"][0]
    assert sorted(pred) == ["boxes", "classes", "num_detections", "scores"]
    assert np.array(pred["boxes"]).shape == (100, 4) and 0 <= pred["num_detections"] <= 100


def test_tflite_float32_detects_like_the_keras_model(detect_run, detect_exports):
    import keras

    from kerascls.detect.decode import detect_batch
    from kerascls.detect.export import run_tflite_detect

    model = keras.saving.load_model(detect_run / "model.keras", compile=False)
    images = make_shapes(2, 64, seed=7).images
    for (b1, s1, c1), (b2, s2, c2) in zip(run_tflite_detect(detect_exports[1], images),
                                          detect_batch(model, images)):
        assert len(b1) == len(b2) and list(c1) == list(c2)
        np.testing.assert_allclose(b1, b2, atol=1e-4)


def test_export_report_scores_every_artifact(detect_run, detect_exports):
    from kerascls.detect.export import export_report

    names = ("saved_model", "tflite-float32", "tflite-int8")
    report = export_report(detect_run, dict(zip(names, detect_exports)))
    arts = report["artifacts"]
    assert sorted(arts) == sorted(("keras", *names)) and report["num_images"] == 4
    assert arts["tflite-float32"]["map50"] == pytest.approx(arts["keras"]["map50"], abs=1e-6)
    assert all(0 <= a["map50"] <= 1 and a["map"] <= a["map50"] for a in arts.values())
    assert arts["tflite-int8"]["bytes"] < 0.5 * arts["tflite-float32"]["bytes"]
    assert json.loads((detect_run / "export_report.json").read_text()) == report
