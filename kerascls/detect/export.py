"""Detection exports: a SavedModel with decoding and class-aware NMS in the graph, and TFLite.

``python -m kerascls.detect export RUN_DIR [--formats saved_model,tflite-float32]``

SavedModel (``RUN_DIR/models/<model_name>/<version>/``), signature ``serving_default``:

* input ``image_bytes``: DT_STRING [-1], encoded JPEG / PNG / BMP / GIF, decoded and resized in
  the graph by :func:`kerascls.export.saved_model.decode_images`;
* outputs ``boxes`` float [-1, max_detections, 4] (``x1, y1, x2, y2`` in 0..1 of the image),
  ``scores`` float [-1, max_detections], ``classes`` int64 [-1, max_detections] and
  ``num_detections`` int32 [-1]; rows past ``num_detections`` are zero.

Signature ``predict_pixels`` takes ``pixels`` float [-1, H, W, 3] (RGB 0..255 at the input size)
and returns the same. Decoding is that of :mod:`kerascls.detect.decode`; NMS is
``tf.image.combined_non_max_suppression`` per class, so TF Serving's REST ``:predict`` answers
with detections.

TFLite float32 and int8 (``RUN_DIR/tflite/<model_name>_<variant>.tflite``) hold the network with
its raw head outputs; decoding and NMS run in :func:`run_tflite_detect` (and, without kerascls,
in ``edge/run_tflite.py --task detect``, which reads the heads from the sidecar), because TFLite
has no builtin for a class-aware combined NMS. :func:`export_report` scores every artifact's mAP
on the run's test split.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kerascls.errors import UserError
from kerascls.fileio import atomic_path, atomic_write_json, atomic_write_text

FORMATS = ("saved_model", "tflite-float32", "tflite-int8")
MAX_DETECTIONS = 100


def _load(run_dir: Path):
    import keras

    import kerascls.detect.cfg  # noqa: F401 - registers YoloOutput

    meta_path = run_dir / "metadata.json"
    if not meta_path.is_file():
        raise UserError(f"{run_dir} is not a run directory (no metadata.json)")
    meta = json.loads(meta_path.read_text())
    if meta.get("task") != "detect":
        raise UserError(f"{run_dir} is not a detection run")
    return keras.saving.load_model(run_dir / "model.keras", compile=False), meta


def graph_detections(outputs, anchors_per_scale, input_size: int, score_threshold: float,
                     iou_threshold: float, max_detections: int = MAX_DETECTIONS) -> dict:
    """Raw heads -> padded detections, in TensorFlow ops (the graph of the exports)."""
    import tensorflow as tf

    boxes, scores = [], []
    for raw, anchors in zip(outputs, anchors_per_scale):
        raw = tf.cast(raw, tf.float32)
        gh, gw, a = int(raw.shape[1]), int(raw.shape[2]), int(raw.shape[3])
        gy, gx = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        grid = tf.constant(np.stack([gx, gy], -1)[:, :, None, :].astype("float32"))
        xy = (tf.sigmoid(raw[..., 0:2]) + grid) / tf.constant([gw, gh], tf.float32)
        wh = tf.exp(tf.clip_by_value(raw[..., 2:4], -10.0, 6.0)) * tf.constant(
            np.asarray(anchors, "float32") / input_size)
        b = tf.concat([xy - wh / 2, xy + wh / 2], -1)
        boxes.append(tf.reshape(b, [-1, gh * gw * a, 4]))
        s = tf.sigmoid(raw[..., 4:5]) * tf.sigmoid(raw[..., 5:])
        scores.append(tf.reshape(s, [-1, gh * gw * a, int(raw.shape[-1]) - 5]))
    boxes = tf.clip_by_value(tf.concat(boxes, 1), 0.0, 1.0)
    scores = tf.concat(scores, 1)
    yx = tf.stack([boxes[..., 1], boxes[..., 0], boxes[..., 3], boxes[..., 2]], -1)
    nms = tf.image.combined_non_max_suppression(
        yx[:, :, None, :], scores, max_output_size_per_class=max_detections,
        max_total_size=max_detections, iou_threshold=iou_threshold,
        score_threshold=score_threshold, clip_boxes=False)
    nb = nms.nmsed_boxes
    return {"boxes": tf.stack([nb[..., 1], nb[..., 0], nb[..., 3], nb[..., 2]], -1),
            "scores": nms.nmsed_scores,
            "classes": tf.cast(nms.nmsed_classes, tf.int64),
            "num_detections": tf.cast(nms.valid_detections, tf.int32)}


def build_detect_module(model, meta: dict):
    import tensorflow as tf

    from kerascls.detect.cfg import yolo_layers
    from kerascls.export.saved_model import decode_images

    size = int(meta["image_size"])
    anchors = [h.anchors for h in yolo_layers(model)]
    score, iou = float(meta.get("score_threshold", 0.25)), float(meta.get("iou_threshold", 0.45))

    class DetectModule(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def _detect(self, pixels):
            out = self.model(pixels, training=False)
            out = out if isinstance(out, (list, tuple)) else [out]
            return graph_detections(out, anchors, size, score, iou)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve(self, image_bytes):
            return self._detect(decode_images(image_bytes, (size, size)))

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32,
                                                    name="pixels")])
        def pixels(self, pixels):
            return self._detect(pixels)

    return DetectModule()


def export_detect_saved_model(run_dir: Path, models_dir: Path | None = None) -> Path:
    """Write the next SavedModel version of a detection run; return its directory."""
    import tensorflow as tf

    run_dir = Path(run_dir)
    model, meta = _load(run_dir)
    module = build_detect_module(model, meta)
    base = Path(models_dir) if models_dir else run_dir / "models"
    model_dir = base / meta["model_name"]
    versions = [int(p.name) for p in model_dir.glob("*") if p.name.isdigit()] \
        if model_dir.is_dir() else []
    version_dir = model_dir / str(max(versions, default=0) + 1)
    with atomic_path(version_dir, suffix="") as tmp:
        tf.saved_model.save(module, str(tmp), signatures={
            "serving_default": module.serve.get_concrete_function(),
            "predict_pixels": module.pixels.get_concrete_function()})
        atomic_write_text(tmp / "assets" / "labels.txt", "\n".join(meta["labels"]) + "\n")
        atomic_write_json(tmp / "assets" / "metadata.json", {
            **meta, "serving": {"signature": "serving_default", "input": "image_bytes",
                                "outputs": ["boxes", "scores", "classes", "num_detections"],
                                "box_format": "x1,y1,x2,y2 normalized",
                                "max_detections": MAX_DETECTIONS}})
    return version_dir


def _representative(run_dir: Path, meta: dict, count: int = 100) -> np.ndarray:
    """Training images of the run (regenerated from its config) for int8 calibration."""
    import yaml

    from kerascls.detect.data import load_detection

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    splits = load_detection(cfg["dataset"], int(meta["image_size"]), seed=cfg["seed"],
                            num_examples=cfg["num_examples"], val_fraction=cfg["val_fraction"],
                            test_fraction=cfg["test_fraction"])
    return splits.train.images[:count]


def export_detect_tflite(run_dir: Path, variant: str = "float32") -> Path:
    """TFLite of the network (raw heads out); NMS runs in :func:`run_tflite_detect`.

    ``int8`` quantizes weights and activations with the run's training images as the
    representative set; input and outputs stay float32 (quantize and dequantize at the ends).
    """
    import tempfile

    import keras
    import tensorflow as tf

    if variant not in ("float32", "int8"):
        raise UserError(f"TFLite variant must be one of float32, int8. Received: {variant}")
    run_dir = Path(run_dir)
    model, meta = _load(run_dir)
    size = int(meta["image_size"])

    def heads(pixels):
        out = model(pixels, training=False)
        out = out if isinstance(out, (list, tuple)) else [out]
        return {f"head{i}": o for i, o in enumerate(out)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", heads, input_signature=[
        tf.TensorSpec((None, size, size, 3), tf.float32, name="pixels")])
    with tempfile.TemporaryDirectory(prefix="kerascls-detect-tflite-") as tmp:
        archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        if variant == "int8":
            images = _representative(run_dir, meta)

            def samples():
                for image in images:
                    yield [image[None].astype(np.float32)]

            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = samples
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        content = converter.convert()
    out = run_dir / "tflite" / f"{meta['model_name']}_{variant}.tflite"
    with atomic_path(out) as tmp:
        tmp.write_bytes(content)
    atomic_write_json(out.with_suffix(".json"), detect_sidecar(model, meta, variant))
    return out


def detect_sidecar(model, meta: dict, variant: str) -> dict:
    """What a TFLite consumer needs to decode the heads without kerascls (``edge/run_tflite.py
    --task detect``): the run's manifest plus input size and resize, one entry per head (output
    name, grid, stride, anchors in input pixels, values per anchor), thresholds and box format."""
    from kerascls.detect.cfg import yolo_layers

    size = int(meta["image_size"])
    heads = []
    for i, (head, output) in enumerate(zip(yolo_layers(model), model.outputs)):
        grid = [int(output.shape[1]), int(output.shape[2])]
        heads.append({"name": f"head{i}", "grid": grid, "stride": size // grid[0],
                      "anchors": [[float(a), float(b)] for a, b in head.anchors],
                      "values_per_anchor": int(output.shape[-1])})
    return {**meta, "variant": variant, "input_size": [size, size],
            "input_dtype": "float32", "resize_method": "pillow_bilinear",
            "anchors_per_head": [h["anchors"] for h in heads],
            "outputs": [h["name"] for h in heads], "heads": heads,
            "score_threshold": float(meta.get("score_threshold", 0.25)),
            "iou_threshold": float(meta.get("iou_threshold", 0.45)),
            "max_detections": MAX_DETECTIONS,
            "box_format": "x1,y1,x2,y2 normalized; xy = (sigmoid(t_xy) + cell) / grid, "
                          "wh = exp(t_wh) * anchor / input_size, score = sigmoid(obj) * "
                          "sigmoid(class); class-aware greedy NMS"}


def export_report(run_dir: Path, artifacts: dict[str, Path]) -> dict:
    """mAP of the Keras model and of every artifact on the run's test split, into
    ``RUN_DIR/export_report.json``."""
    import tensorflow as tf
    import yaml

    from kerascls.detect.data import load_detection
    from kerascls.detect.decode import detect_batch
    from kerascls.detect.evaluate import coco_eval

    run_dir = Path(run_dir)
    model, meta = _load(run_dir)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    test = load_detection(cfg["dataset"], int(meta["image_size"]), seed=cfg["seed"],
                          num_examples=cfg["num_examples"], val_fraction=cfg["val_fraction"],
                          test_fraction=cfg["test_fraction"]).test
    thr, iou = float(cfg.get("score_threshold", 0.01)), float(meta.get("iou_threshold", 0.45))
    results = {"keras": detect_batch(model, test.images, thr, iou)}
    for name, path in artifacts.items():
        if name == "saved_model":
            sig = tf.saved_model.load(str(path)).signatures["predict_pixels"]
            out = sig(pixels=tf.constant(test.images.astype(np.float32)))
            n = out["num_detections"].numpy()
            results[name] = [(out["boxes"][i, :n[i]].numpy(), out["scores"][i, :n[i]].numpy(),
                              out["classes"][i, :n[i]].numpy()) for i in range(len(n))]
        else:
            results[name] = run_tflite_detect(path, test.images, thr, iou)
    report = {"num_images": len(test), "artifacts": {}}
    for name, dets in results.items():
        ev = coco_eval(test.boxes, dets, meta["labels"], int(meta["image_size"]))
        entry = {"map50": float(ev.stats[1]) if ev else 0.0, "map": float(ev.stats[0]) if ev
                 else 0.0}
        if name in artifacts:
            entry["path"] = str(artifacts[name])
            entry["bytes"] = sum(f.stat().st_size for f in Path(artifacts[name]).rglob("*")
                                 if f.is_file()) if Path(artifacts[name]).is_dir() \
                else Path(artifacts[name]).stat().st_size
        report["artifacts"][name] = entry
    report["note"] = ("the SavedModel keeps at most 100 detections with score >= "
                      f"{meta.get('score_threshold', 0.25)} in the graph; the others score "
                      f"every detection with score >= {thr}")
    atomic_write_json(run_dir / "export_report.json", report)
    return report


def run_tflite_detect(path: Path, images: np.ndarray, score_threshold: float = 0.25,
                      iou_threshold: float = 0.45):
    """Detections ``(boxes, scores, classes)`` per image from a TFLite file and its sidecar."""
    import tensorflow as tf

    from kerascls.detect.decode import decode_outputs, postprocess

    side = json.loads(Path(path).with_suffix(".json").read_text())
    it = tf.lite.Interpreter(model_path=str(path))
    it.allocate_tensors()
    runner = it.get_signature_runner()
    results = []
    for img in images:
        out = runner(pixels=np.asarray(img, np.float32)[None])
        heads = [out[name] for name in side["outputs"]]
        boxes, scores = decode_outputs(heads, side["anchors_per_head"], int(side["image_size"]))
        results.append(postprocess(boxes[0], scores[0], score_threshold, iou_threshold))
    return results
