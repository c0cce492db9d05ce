"""YOLOv3 and YOLOv3-tiny in the model registry, built from the cfgs shipped in ``cfgs/``.

Redmon & Farhadi, "YOLOv3: An Incremental Improvement", 2018, https://arxiv.org/abs/1804.02767.
YOLOv3 with 80 classes at 416x416 has 62,001,757 parameters counted the Keras way (batch-norm
moving statistics included): exactly the floats in Darknet's ``yolov3.weights`` after its 20-byte
header. YOLOv3-tiny has 8,858,734, as in ``yolov3-tiny.weights``.

The models are registered with ``task="detect"``, so classification listings leave them out.
``build_model("yolov3_tiny", (96, 96, 3), 3, anchors=[(w, h), ...])`` builds one for 3 classes
with anchors in input pixels.
"""

from __future__ import annotations

import functools

from kerascls.registry import register

PAPER = "Redmon & Farhadi 2018, YOLOv3: An Incremental Improvement, arXiv:1804.02767"
VARIANTS = {"yolov3": "yolov3", "yolov3_tiny": "yolov3-tiny"}
PARAMS_COCO_416 = {"yolov3": 62_001_757, "yolov3_tiny": 8_858_734}


def build_yolo(input_shape, num_classes, *, cfg: str, name: str, anchors=None):
    """Build a YOLO model from a shipped cfg (or a cfg file path).

    Args:
        input_shape: ``(H, W, 3)``, multiples of 32.
        num_classes: number of object classes.
        cfg: shipped cfg name or path of a Darknet cfg file.
        name: model name.
        anchors: ``[(w, h), ...]`` in input pixels; default the cfg's (COCO at 416 px).
    """
    from kerascls.detect.cfg import build_from_cfg, read_cfg

    return build_from_cfg(read_cfg(cfg), input_shape, num_classes, anchors=anchors, name=name)


for _name, _cfg in VARIANTS.items():
    register(_name, family="yolo", default_size=416, min_size=32, paper=PAPER, task="detect")(
        functools.partial(build_yolo, cfg=_cfg, name=_name))
