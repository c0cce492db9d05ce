"""Darknet-53: YOLOv3's backbone as an image classifier.

Redmon & Farhadi, "YOLOv3: An Incremental Improvement", 2018, https://arxiv.org/abs/1804.02767,
Table 1: a 3x3 convolution with 32 filters, then five stages, each a 3x3 stride-2 convolution
(64, 128, 256, 512, 1024 filters) followed by 1, 2, 8, 8 and 4 residual blocks of a 1x1
convolution halving the channels and a 3x3 convolution restoring them. Every convolution is
followed by batch norm and leaky ReLU (slope 0.1). The classifier is global average pooling and
a fully connected layer. At 256x256 (the paper's classification size) with 1000 classes its
trainable parameters equal timm's ``darknet53``, 41,609,928, and it costs 9.3 G
multiply-accumulates, the paper's 18.7 billion operations.

With the CIFAR stem (inputs under 128 px) the first stride-2 convolution uses stride 1, so a
32x32 input ends on a 2x2 map.
"""

from __future__ import annotations

import functools

from keras import layers

from kerascls.layers import assemble
from kerascls.registry import register
from kerascls.shapes import resolve_stem, size_checked

PAPER = "Redmon & Farhadi 2018, YOLOv3: An Incremental Improvement, arXiv:1804.02767"
# (filters, residual blocks) per stage, Table 1.
STAGES = ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4))
VARIANTS = {"darknet53": dict(stages=STAGES)}
NATIVE_SIZE = 256
MIN_SIZE = 16  # total stride with the CIFAR stem


def conv_bn_leaky(x, filters, kernel, strides=1, *, name):
    """Bias-free convolution, batch norm, leaky ReLU (0.1): Darknet's only layer type."""
    if strides == 2:
        # Darknet pads one pixel on each side before its stride-2 3x3 convolutions.
        x = layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
    x = layers.Conv2D(filters, kernel, strides=strides,
                      padding="valid" if strides == 2 else "same", use_bias=False,
                      name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=1e-5, name=f"{name}_bn")(x)
    return layers.LeakyReLU(negative_slope=0.1, name=f"{name}_act")(x)


def residual(x, filters, *, name):
    """1x1 (filters / 2) then 3x3 (filters) with an identity shortcut."""
    y = conv_bn_leaky(x, filters // 2, 1, name=f"{name}_1")
    y = conv_bn_leaky(y, filters, 3, name=f"{name}_2")
    return layers.Add(name=f"{name}_add")([x, y])


def darknet_features(x, *, stages, stem):
    x = conv_bn_leaky(x, 32, 3, name="stem")
    for s, (filters, blocks) in enumerate(stages, start=1):
        stride = 1 if stem == "cifar" and s == 1 else 2
        x = conv_bn_leaky(x, filters, 3, strides=stride, name=f"stage{s}_down")
        for i in range(1, blocks + 1):
            x = residual(x, filters, name=f"stage{s}_block{i}")
    return x


def build_darknet(input_shape, num_classes, *, normalize=None, dropout=0.0, stem="auto",
                  name="darknet53", stages=STAGES):
    """Build Darknet-53.

    Args:
        input_shape: ``(H, W, 3)``.
        num_classes: number of classes.
        normalize: preprocessing inside the model (``imagenet``, ``unit``, ``none``) or None.
        dropout: dropout before the classifier.
        stem: ``auto``, ``cifar`` (first downsampling removed) or ``imagenet``.
        name: model name.
        stages: ``(filters, residual blocks)`` per stage.
    """
    stem = resolve_stem(stem, input_shape)
    backbone = functools.partial(darknet_features, stages=tuple(stages), stem=stem)
    return assemble(name, input_shape, backbone, normalize=normalize, num_classes=num_classes,
                    dropout=dropout)


for _name, _arch in VARIANTS.items():
    register(_name, family="darknet", default_size=32, min_size=MIN_SIZE, paper=PAPER)(
        size_checked(functools.partial(build_darknet, name=_name, **_arch), name=_name,
                     min_size=MIN_SIZE)
    )
