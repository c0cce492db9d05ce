"""From raw YOLO outputs to boxes: decoding, score threshold, class-aware NMS (NumPy).

A detection is ``x1, y1, x2, y2`` (0..1 of the image), a score (objectness times class
probability) and a class id; boxes of different classes never suppress each other.
"""

from __future__ import annotations

import numpy as np


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def decode_outputs(outputs, anchors_per_scale, input_size: int):
    """All candidate boxes of a batch: ``boxes (B, N, 4)`` and ``scores (B, N, C)``."""
    all_boxes, all_scores = [], []
    for raw, anchors in zip(outputs, anchors_per_scale):
        raw = np.asarray(raw, np.float32)
        b, gh, gw, a, _ = raw.shape
        gy, gx = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        grid = np.stack([gx, gy], -1)[:, :, None, :]
        xy = (_sigmoid(raw[..., 0:2]) + grid) / np.array([gw, gh], np.float32)
        wh = np.exp(np.clip(raw[..., 2:4], -10, 6)) * (np.asarray(anchors, np.float32)
                                                       / input_size)
        boxes = np.concatenate([xy - wh / 2, xy + wh / 2], -1).reshape(b, -1, 4)
        scores = (_sigmoid(raw[..., 4:5]) * _sigmoid(raw[..., 5:])).reshape(b, gh * gw * a, -1)
        all_boxes.append(boxes)
        all_scores.append(scores)
    return np.concatenate(all_boxes, 1), np.concatenate(all_scores, 1)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best first."""
    order = np.argsort(-scores)
    keep = []
    area = np.prod(np.maximum(boxes[:, 2:] - boxes[:, :2], 0), axis=1)
    while len(order):
        i = order[0]
        keep.append(i)
        rest = order[1:]
        lt = np.maximum(boxes[i, :2], boxes[rest, :2])
        rb = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = np.prod(np.maximum(rb - lt, 0), axis=1)
        iou = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.array(keep, np.int64)


def postprocess(boxes: np.ndarray, scores: np.ndarray, score_threshold: float = 0.25,
                iou_threshold: float = 0.45, max_detections: int = 100):
    """One image's candidates -> ``(boxes (n, 4), scores (n,), classes (n,))``, best first."""
    cand, cls = np.nonzero(scores >= score_threshold)
    if not len(cand):
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    b = np.clip(boxes[cand], 0, 1)
    s = scores[cand, cls]
    kept = []
    for c in np.unique(cls):
        idx = np.nonzero(cls == c)[0]
        kept.extend(idx[nms(b[idx], s[idx], iou_threshold)])
    kept = np.array(kept)[np.argsort(-s[kept])][:max_detections]
    return b[kept].astype(np.float32), s[kept].astype(np.float32), cls[kept].astype(np.int64)


def detect_batch(model, images: np.ndarray, score_threshold: float = 0.25,
                 iou_threshold: float = 0.45, batch_size: int = 16):
    """Run ``model`` on ``images`` (RGB 0..255, model size) -> per image ``(boxes, scores,
    classes)``."""
    from keras import ops

    from kerascls.detect.cfg import yolo_layers

    anchors = [h.anchors for h in yolo_layers(model)]
    size = int(model.input_shape[1])
    results = []
    for start in range(0, len(images), batch_size):
        x = np.asarray(images[start:start + batch_size], np.float32)
        out = model(x, training=False)
        out = out if isinstance(out, (list, tuple)) else [out]
        boxes, scores = decode_outputs([ops.convert_to_numpy(o) for o in out], anchors, size)
        for i in range(len(x)):
            results.append(postprocess(boxes[i], scores[i], score_threshold, iou_threshold))
    return results
