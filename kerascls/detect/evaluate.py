"""COCO-style detection metrics through ``pycocotools``, a precision-recall plot and a gallery.

``evaluate_detector`` returns mAP@0.5, mAP@0.5:0.95 (COCO's 101-point interpolated AP, area
"all", up to 100 detections per image) and per-class AP at both; ``write_report`` writes
``detection_report.json``, ``pr_curves.png`` and ``gallery.png`` into a run directory.

Ground truth and detections are handed to pycocotools in pixel ``x, y, w, h`` of the model input.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from kerascls.detect.decode import detect_batch
from kerascls.fileio import atomic_path, atomic_write_json

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128)]


def _coco():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as exc:  # pragma: no cover - a declared dependency
        from kerascls.errors import UserError

        raise UserError("detection evaluation needs pycocotools: pip install pycocotools") from exc
    return COCO, COCOeval


def coco_eval(true_boxes, detections, class_names, size: int):
    """Run COCOeval; returns the ``COCOeval`` object after ``accumulate`` (or None if nothing
    was detected).

    Args:
        true_boxes: per image a ``(k, 5)`` array ``x1, y1, x2, y2, class`` (0..1).
        detections: per image ``(boxes (n, 4) 0..1, scores (n,), classes (n,))``.
        class_names: the labels.
        size: image size in pixels.
    """
    COCO, COCOeval = _coco()
    images, anns = [], []
    for i, boxes in enumerate(true_boxes):
        images.append({"id": i + 1, "width": size, "height": size})
        for b in boxes:
            x1, y1, x2, y2 = (float(v) * size for v in b[:4])
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(b[4]) + 1,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                         "iscrowd": 0})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": k + 1, "name": n} for k, n in enumerate(class_names)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    dets = []
    for i, (boxes, scores, classes) in enumerate(detections):
        for b, s, c in zip(boxes, scores, classes):
            x1, y1, x2, y2 = (float(v) * size for v in b)
            dets.append({"image_id": i + 1, "category_id": int(c) + 1,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(s)})
    if not dets or not anns:
        return None
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _ap(precision: np.ndarray) -> float:
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else float("nan")


def evaluate_detector(model, data, class_names, *, score_threshold: float = 0.01,
                      iou_threshold: float = 0.45) -> dict:
    """mAP@0.5, mAP@0.5:0.95 and per-class AP of ``model`` on ``data`` (a ``DetectionSet``)."""
    size = int(model.input_shape[1])
    detections = detect_batch(model, data.images, score_threshold, iou_threshold)
    report = {"num_images": len(data), "num_objects": int(sum(len(b) for b in data.boxes)),
              "score_threshold": score_threshold, "iou_threshold": iou_threshold}
    ev = coco_eval(data.boxes, detections, class_names, size)
    if ev is None:
        report.update({"map50": 0.0, "map": 0.0,
                       "per_class": {n: {"ap50": 0.0, "ap": 0.0} for n in class_names}})
        return report
    p = ev.eval["precision"]  # [IoU thresholds, recall points, classes, areas, max dets]
    report["map50"] = float(ev.stats[1])
    report["map"] = float(ev.stats[0])
    report["per_class"] = {n: {"ap50": _ap(p[0, :, k, 0, 2]), "ap": _ap(p[:, :, k, 0, 2])}
                           for k, n in enumerate(class_names)}
    report["pr_curve_50"] = {"recall": [float(r) for r in ev.params.recThrs],
                             **{n: [float(v) for v in p[0, :, k, 0, 2]]
                                for k, n in enumerate(class_names)}}
    report["_detections"] = detections
    return report


def pr_plot(report: dict, path: str | Path) -> Path:
    """Precision against recall at IoU 0.5, one curve per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    curves = report.get("pr_curve_50", {})
    recall = curves.get("recall", [])
    for name, ap in report["per_class"].items():
        prec = np.array(curves.get(name, []), float)
        if len(prec):
            prec = np.where(prec < 0, np.nan, prec)
            ax.plot(recall, prec, label=f"{name} (AP50 {ap['ap50']:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title=f"PR at IoU 0.5: mAP@0.5 {report['map50']:.3f}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def draw_detections(image: np.ndarray, boxes, scores, classes, class_names, *, scale: int = 1):
    """A PIL image of ``image`` with each box, label and score drawn."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(np.asarray(image, np.uint8))
    if scale != 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(im)
    for b, s, c in zip(boxes, scores, classes):
        x1, y1, x2, y2 = (float(v) for v in (b[0] * im.width, b[1] * im.height,
                                             b[2] * im.width, b[3] * im.height))
        colour = PALETTE[int(c) % len(PALETTE)]
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=2)
        name = class_names[int(c)] if int(c) < len(class_names) else str(int(c))
        draw.text((x1 + 2, max(0, y1 - 11)), f"{name} {float(s):.2f}", fill=colour)
    return im


def gallery(images, detections, class_names, path: str | Path, n: int = 12,
            min_score: float = 0.25) -> Path:
    """A grid of the first ``n`` images with their detections (score >= ``min_score``)."""
    from PIL import Image

    tiles = []
    for img, (b, s, c) in list(zip(images, detections))[:n]:
        keep = s >= min_score
        scale = max(1, 192 // img.shape[0])
        tiles.append(draw_detections(img, b[keep], s[keep], c[keep], class_names, scale=scale))
    cols = min(4, len(tiles))
    rows = int(np.ceil(len(tiles) / cols))
    w, h = tiles[0].size
    sheet = Image.new("RGB", (cols * w, rows * h), (255, 255, 255))
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % cols) * w, (i // cols) * h))
    path = Path(path)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path


def write_report(run_dir: Path, report: dict, model, data, class_names) -> dict:
    """``detection_report.json``, ``pr_curves.png`` and ``gallery.png`` in ``run_dir``."""
    run_dir = Path(run_dir)
    detections = report.pop("_detections", None)
    if detections is None:
        detections = detect_batch(model, data.images[:12])
    atomic_write_json(run_dir / "detection_report.json", report)
    pr_plot(report, run_dir / "pr_curves.png")
    if len(data):
        gallery(data.images, detections, class_names, run_dir / "gallery.png")
    return report
