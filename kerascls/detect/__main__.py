"""``python -m kerascls.detect``: detect objects with a trained run, or compute anchors.

Examples:
    python -m kerascls.detect RUN_DIR image.png          # boxes printed, image_detections.png
    python -m kerascls.detect RUN_DIR a.png b.jpg --output-dir out --score-threshold 0.3 --json
    python -m kerascls.detect anchors shapes --num 6 --image-size 96
    python -m kerascls.detect anchors yolo:data/my_set --num 9 --image-size 416
    python -m kerascls.detect export RUN_DIR --formats saved_model,tflite-float32,tflite-int8
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kerascls.cli import cli_main
from kerascls.errors import UserError


def _anchors(argv) -> int:
    from kerascls.detect.anchors import kmeans_anchors, mean_best_iou
    from kerascls.detect.data import box_sizes, load_detection

    p = argparse.ArgumentParser(prog="python -m kerascls.detect anchors",
                                description="Anchors from k-means with 1 - IoU distance.")
    p.add_argument("dataset", help="shapes | yolo:PATH | coco:PATH")
    p.add_argument("--num", type=int, default=9, help="number of anchors (9 yolov3, 6 tiny)")
    p.add_argument("--image-size", type=int, default=416, help="anchors are in pixels of this")
    p.add_argument("--num-examples", type=int, default=1200, help="shapes: images generated")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.num <= 0:
        raise UserError(f"--num must be a positive integer. Received: {args.num}")
    data = load_detection(args.dataset, args.image_size, seed=args.seed,
                          num_examples=args.num_examples, val_fraction=0, test_fraction=0)
    wh = box_sizes(data.train)
    anchors = kmeans_anchors(wh, args.num, seed=args.seed)
    pixels = [(round(float(w) * args.image_size), round(float(h) * args.image_size))
              for w, h in anchors]
    print(f"anchors = {',  '.join(f'{w},{h}' for w, h in pixels)}")
    print(f"{len(wh)} boxes; mean IoU with the best anchor {mean_best_iou(wh, anchors):.3f}")
    return 0


def _export(argv) -> int:
    from kerascls.detect.export import (
        FORMATS,
        export_detect_saved_model,
        export_detect_tflite,
        export_report,
    )

    p = argparse.ArgumentParser(prog="python -m kerascls.detect export",
                                description="SavedModel (NMS in the graph) and TFLite exports.")
    p.add_argument("run_dir")
    p.add_argument("--formats", default=",".join(FORMATS), help=", ".join(FORMATS))
    p.add_argument("--models-dir", default="", help="SavedModel base (default RUN_DIR/models)")
    args = p.parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    for f in formats:
        if f not in FORMATS:
            raise UserError(f"--formats items must be among {', '.join(FORMATS)}. Received: {f}")
    run = Path(args.run_dir)
    artifacts = {}
    if "saved_model" in formats:
        artifacts["saved_model"] = export_detect_saved_model(run, args.models_dir or None)
    for f in formats:
        if f.startswith("tflite-"):
            artifacts[f] = export_detect_tflite(run, f.removeprefix("tflite-"))
    report = export_report(run, artifacts)
    for name, entry in report["artifacts"].items():
        where = f"  {entry['path']}" if "path" in entry else ""
        print(f"{name:<15} mAP@0.5 {entry['map50']:.4f}  mAP@0.5:0.95 {entry['map']:.4f}{where}")
    return 0


def _detect(argv) -> int:
    import numpy as np

    p = argparse.ArgumentParser(prog="python -m kerascls.detect",
                                description="Detect objects in images with a trained run.")
    p.add_argument("run_dir", help="a run directory from python -m kerascls.train --task detect")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--output-dir", default="", help="where drawn PNGs go (default: beside "
                   "each image, NAME_detections.png)")
    p.add_argument("--score-threshold", type=float, default=None,
                   help="lowest score shown (default: the run's, 0.25)")
    p.add_argument("--iou-threshold", type=float, default=None, help="NMS IoU threshold")
    p.add_argument("--json", action="store_true", help="print one JSON object per image")
    args = p.parse_args(argv)
    run = Path(args.run_dir)
    meta_path = run / "metadata.json"
    if not meta_path.is_file():
        raise UserError(f"{run} is not a run directory (no metadata.json)")
    meta = json.loads(meta_path.read_text())
    if meta.get("task") != "detect":
        raise UserError(f"{run} is a classification run; use python -m kerascls.evaluate")
    for img in args.images:
        if not Path(img).is_file():
            raise UserError(f"image {img} not found")
    import keras

    import kerascls.detect.cfg  # noqa: F401 - registers YoloOutput for loading
    from kerascls.detect.data import load_image
    from kerascls.detect.decode import detect_batch
    from kerascls.detect.evaluate import draw_detections
    from kerascls.fileio import atomic_path

    model = keras.saving.load_model(run / "model.keras", compile=False)
    size = int(meta["image_size"])
    labels = meta["labels"]
    score = meta.get("score_threshold", 0.25) if args.score_threshold is None \
        else args.score_threshold
    iou = meta.get("iou_threshold", 0.45) if args.iou_threshold is None else args.iou_threshold
    from PIL import Image

    for img in args.images:
        path = Path(img)
        x = load_image(path, size)
        boxes, scores, classes = detect_batch(model, x[None], score, iou)[0]
        with Image.open(path) as im:
            original = np.asarray(im.convert("RGB"))
        h, w = original.shape[:2]
        found = [{"label": labels[int(c)], "class_id": int(c), "score": round(float(s), 4),
                  "box": [round(float(b[0]) * w, 1), round(float(b[1]) * h, 1),
                          round(float(b[2]) * w, 1), round(float(b[3]) * h, 1)]}
                 for b, s, c in zip(boxes, scores, classes)]
        out_dir = Path(args.output_dir) if args.output_dir else path.parent
        out = out_dir / f"{path.stem}_detections.png"
        drawn = draw_detections(original, boxes, scores, classes, labels,
                                scale=max(1, 256 // max(h, w)))
        with atomic_path(out) as tmp:
            drawn.save(tmp, format="PNG")
        if args.json:
            print(json.dumps({"image": str(path), "detections": found, "output": str(out)}))
        else:
            print(f"{path}: {len(found)} object(s) -> {out}")
            for d in found:
                x1, y1, x2, y2 = d["box"]
                print(f"  {d['label']:<12} {d['score']:.3f}  [{x1:.1f}, {y1:.1f}, {x2:.1f}, "
                      f"{y2:.1f}]")
    return 0


@cli_main
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "anchors":
        return _anchors(argv[1:])
    if argv and argv[0] == "export":
        return _export(argv[1:])
    return _detect(argv)


if __name__ == "__main__":
    sys.exit(main())
