"""Anchor boxes from k-means over box shapes with ``1 - IoU`` as the distance (YOLOv2/v3).

Boxes are compared by width and height only, placed on a common centre, so a large box and a
small box of the same shape are still far apart, as Euclidean k-means on sizes would not do.
"""

from __future__ import annotations

import numpy as np

from kerascls.detect.data import wh_iou
from kerascls.errors import UserError


def kmeans_anchors(wh: np.ndarray, k: int, seed: int = 0, iterations: int = 300) -> np.ndarray:
    """``k`` anchors ``(k, 2)`` from box sizes ``wh`` ``(n, 2)``, sorted by area.

    k-means++ seeding on ``1 - IoU``, then Lloyd iterations where each centre becomes the
    median of its boxes (robust to outliers) until assignments stop changing.
    """
    wh = np.asarray(wh, np.float64)
    wh = wh[(wh > 0).all(axis=1)]
    if len(wh) < k:
        raise UserError(f"k-means needs at least {k} boxes for {k} anchors; the data has "
                        f"{len(wh)}")
    rng = np.random.default_rng(seed)
    centres = [wh[rng.integers(len(wh))]]
    while len(centres) < k:
        d = 1 - wh_iou(wh, np.array(centres)).max(axis=1)
        p = d ** 2
        centres.append(wh[rng.choice(len(wh), p=p / p.sum())] if p.sum() > 0
                       else wh[rng.integers(len(wh))])
    centres = np.array(centres)
    assign = None
    for _ in range(iterations):
        new = wh_iou(wh, centres).argmax(axis=1)
        if assign is not None and np.array_equal(new, assign):
            break
        assign = new
        for j in range(k):
            if (assign == j).any():
                centres[j] = np.median(wh[assign == j], axis=0)
    return centres[np.argsort(centres.prod(axis=1))]


def mean_best_iou(wh: np.ndarray, anchors: np.ndarray) -> float:
    """Average over boxes of the IoU with their best-fitting anchor."""
    return float(wh_iou(np.asarray(wh, np.float64), np.asarray(anchors, np.float64))
                 .max(axis=1).mean())
