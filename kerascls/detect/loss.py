"""The YOLOv3 loss, in ``keras.ops`` so it trains on TensorFlow, JAX and PyTorch.

Per scale, with ``t`` the raw outputs of a cell's anchor and ``obj`` 1 where a box was assigned
(:func:`kerascls.detect.data.assign_targets`):

* box: ``obj * (2 - w * h) * [BCE(sigmoid(t_xy), offset in cell) + 0.5 * (t_wh - log(wh /
  anchor))^2]``; the ``2 - w * h`` factor weighs small boxes up, as Darknet does;
* objectness: BCE towards 1 on assigned anchors, towards 0 on the others except those whose
  predicted box already overlaps a true box by more than ``ignore_thresh`` (IoU), which are
  left out of the loss;
* classes: independent logistic BCE on assigned anchors.

The terms are summed over cells and anchors and averaged over the batch.
"""

from __future__ import annotations

import numpy as np
from keras import ops


def _grid(gh: int, gw: int) -> np.ndarray:
    gy, gx = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    return np.stack([gx, gy], axis=-1).reshape(gh, gw, 1, 2).astype("float32")


def decode_head(raw, anchors, input_size: int):
    """Raw head ``(B, H, W, A, 5 + C)`` -> centre ``xy`` and size ``wh`` (0..1), obj and class
    logits."""
    gh, gw = int(raw.shape[1]), int(raw.shape[2])
    grid = ops.convert_to_tensor(_grid(gh, gw))
    scale = ops.convert_to_tensor(np.array([gw, gh], "float32"))
    anchors = ops.convert_to_tensor(np.asarray(anchors, "float32") / float(input_size))
    xy = (ops.sigmoid(raw[..., 0:2]) + grid) / scale
    wh = ops.exp(ops.clip(raw[..., 2:4], -10.0, 6.0)) * anchors
    return xy, wh, raw[..., 4:5], raw[..., 5:]


def box_iou(b1, b2):
    """IoU of broadcastable ``(..., 4)`` boxes given as ``x1, y1, x2, y2``."""
    lt = ops.maximum(b1[..., 0:2], b2[..., 0:2])
    rb = ops.minimum(b1[..., 2:4], b2[..., 2:4])
    inter = ops.prod(ops.maximum(rb - lt, 0.0), axis=-1)
    a1 = ops.prod(b1[..., 2:4] - b1[..., 0:2], axis=-1)
    a2 = ops.prod(b2[..., 2:4] - b2[..., 0:2], axis=-1)
    return inter / ops.maximum(a1 + a2 - inter, 1e-9)


def yolo_loss(y_true, y_pred, heads, input_size: int):
    """Total loss and its parts for outputs ``y_pred`` (one per scale) and targets ``y_true``
    (one per scale, then the padded true boxes), ``heads`` the model's ``YoloOutput`` layers."""
    *targets, true_boxes = y_true
    batch = ops.cast(ops.shape(true_boxes)[0], "float32")
    parts = {"box": 0.0, "obj": 0.0, "cls": 0.0}
    for raw, t, head in zip(y_pred, targets, heads):
        raw = ops.cast(raw, "float32")
        t = ops.cast(t, "float32")
        gh, gw = int(raw.shape[1]), int(raw.shape[2])
        xy, wh, obj_logit, cls_logit = decode_head(raw, head.anchors, input_size)
        obj = t[..., 4:5]
        grid = ops.convert_to_tensor(_grid(gh, gw))
        scale = ops.convert_to_tensor(np.array([gw, gh], "float32"))
        anchors = ops.convert_to_tensor(np.asarray(head.anchors, "float32") / float(input_size))
        true_xy = t[..., 0:2] * scale - grid
        true_wh = ops.log(ops.where(obj > 0, t[..., 2:4], anchors) / anchors)
        weight = obj * (2.0 - t[..., 2:3] * t[..., 3:4])
        xy_loss = weight * ops.binary_crossentropy(true_xy, raw[..., 0:2], from_logits=True)
        wh_loss = weight * 0.5 * ops.square(true_wh - raw[..., 2:4])
        pred_box = ops.concatenate([xy - wh / 2, xy + wh / 2], axis=-1)
        iou = box_iou(pred_box[..., None, :], true_boxes[:, None, None, None, :, :])
        best = ops.max(iou, axis=-1, keepdims=True)
        ignore = ops.stop_gradient(ops.cast(best < head.ignore_thresh, "float32"))
        bce_obj = ops.binary_crossentropy(obj, obj_logit, from_logits=True)
        obj_loss = obj * bce_obj + (1.0 - obj) * ignore * bce_obj
        cls_loss = obj * ops.binary_crossentropy(t[..., 5:], cls_logit, from_logits=True)
        parts["box"] = parts["box"] + (ops.sum(xy_loss) + ops.sum(wh_loss)) / batch
        parts["obj"] = parts["obj"] + ops.sum(obj_loss) / batch
        parts["cls"] = parts["cls"] + ops.sum(cls_loss) / batch
    return parts["box"] + parts["obj"] + parts["cls"], parts
