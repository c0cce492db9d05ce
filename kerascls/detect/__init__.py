"""Object detection: YOLOv3 and YOLOv3-tiny built from Darknet cfg files.

``cfg`` reads Darknet cfgs into Keras 3 models, ``weights`` reads and writes Darknet ``.weights``,
``data`` holds the detection datasets, target assignment and augmentation, ``loss`` the YOLOv3
loss, ``decode`` turns outputs into boxes, ``train`` / ``evaluate`` run them, and
``python -m kerascls.detect`` detects on images and computes anchors.
"""
