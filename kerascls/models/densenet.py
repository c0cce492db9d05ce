"""DenseNet: every layer receives the feature maps of all layers before it in its block.

Huang, Liu, van der Maaten & Weinberger, "Densely Connected Convolutional Networks", CVPR 2017,
https://arxiv.org/abs/1608.06993.

* DenseNet-121/169/201 (growth rate k=32, 4 dense blocks of bottleneck layers BN-ReLU-1x1
  (4k)-BN-ReLU-3x3 (k), transitions BN-ReLU-1x1 (compression 0.5)-2x2 average pool) follow
  ``keras.applications`` layer for layer; at 224x224 with 1000 classes they have exactly its
  8,062,504; 14,307,880 and 20,242,984 parameters and load its ImageNet weights.
* DenseNet-BC (L=100, k=12), ``densenet_bc100``: the paper's CIFAR network (Table 2, 0.8M
  parameters): a 3x3 convolution with 2k filters, three dense blocks of 16 bottleneck layers,
  compression 0.5. At 32x32 with 10 classes it has 769,162 trainable parameters.

The ImageNet stem is a 7x7/2 convolution and a 3x3/2 max pool; the CIFAR stem (inputs under
128 px) is a single 3x3 stride-1 convolution with 2k filters.
"""

from __future__ import annotations

import functools

from keras import layers

from kerascls.errors import UserError
from kerascls.layers import assemble
from kerascls.registry import register
from kerascls.shapes import resolve_stem, size_checked

PAPER = "Huang et al. 2017, Densely Connected Convolutional Networks, arXiv:1608.06993"
EPS = 1.001e-5  # keras.applications' batch-norm epsilon for DenseNets

VARIANTS = {
    "densenet121": dict(blocks=(6, 12, 24, 16), growth_rate=32),
    "densenet169": dict(blocks=(6, 12, 32, 32), growth_rate=32),
    "densenet201": dict(blocks=(6, 12, 48, 32), growth_rate=32),
    "densenet_bc100": dict(blocks=(16, 16, 16), growth_rate=12),
}


def _bn_relu(x, name):
    x = layers.BatchNormalization(epsilon=EPS, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def dense_layer(x, growth_rate, name):
    """Bottleneck layer BN-ReLU-1x1 (4k)-BN-ReLU-3x3 (k), concatenated to its input."""
    y = _bn_relu(x, f"{name}_0")
    y = layers.Conv2D(4 * growth_rate, 1, use_bias=False, name=f"{name}_1_conv")(y)
    y = _bn_relu(y, f"{name}_1")
    y = layers.Conv2D(growth_rate, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
    return layers.Concatenate(axis=-1, name=f"{name}_concat")([x, y])


def transition(x, reduction, name):
    """BN-ReLU-1x1 convolution keeping ``reduction`` of the channels, 2x2 average pool."""
    x = _bn_relu(x, name)
    filters = int(x.shape[-1] * reduction)
    if filters < 1:
        raise UserError(f"compression {reduction} rounds the {x.shape[-1]} channels of "
                        f"transition {name} to zero")
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_conv")(x)
    return layers.AveragePooling2D(2, strides=2, name=f"{name}_pool")(x)


def densenet_features(x, *, blocks, growth_rate, stem, compression=0.5):
    """Stem, dense blocks and transitions; names follow ``keras.applications`` (conv2_block1_...)."""
    if stem == "imagenet":
        x = layers.ZeroPadding2D(3, name="conv1_pad")(x)
        x = layers.Conv2D(2 * growth_rate, 7, strides=2, use_bias=False, name="conv1_conv")(x)
        x = _bn_relu(x, "conv1")
        x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
        x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    else:
        x = layers.Conv2D(2 * growth_rate, 3, padding="same", use_bias=False,
                          name="conv1_conv")(x)
    for b, n in enumerate(blocks):
        for i in range(n):
            x = dense_layer(x, growth_rate, f"conv{b + 2}_block{i + 1}")
        if b < len(blocks) - 1:
            x = transition(x, compression, f"pool{b + 2}")
    x = layers.BatchNormalization(epsilon=EPS, name="bn")(x)
    return layers.Activation("relu", name="relu")(x)


def build_densenet(input_shape, num_classes, *, normalize=None, dropout=0.0, stem="auto",
                   name="densenet121", blocks=(6, 12, 24, 16), growth_rate=32,
                   compression=0.5):
    """Build a DenseNet.

    Args:
        input_shape: ``(H, W, 3)``.
        num_classes: number of classes.
        normalize: preprocessing inside the model (``imagenet``, ``unit``, ``none``) or None.
        dropout: dropout before the classifier.
        stem: ``auto``, ``cifar`` (3x3 conv) or ``imagenet`` (7x7/2 conv, max pool).
        name: model name.
        blocks: bottleneck layers per dense block.
        growth_rate: channels each layer adds (k).
        compression: fraction of channels a transition keeps (theta, 0 < theta <= 1).
    """
    if int(growth_rate) < 1:
        raise UserError(f"growth_rate must be a positive integer (channels each layer adds). "
                        f"Received: growth_rate={growth_rate}")
    if not blocks or any(int(n) < 1 for n in blocks):
        raise UserError(f"blocks must list at least one dense block of at least 1 layer. "
                        f"Received: blocks={tuple(blocks)}")
    if not 0 < compression <= 1:
        raise UserError(f"compression must be in (0, 1]. Received: compression={compression}")
    stem = resolve_stem(stem, input_shape)
    backbone = functools.partial(densenet_features, blocks=tuple(blocks),
                                 growth_rate=growth_rate, stem=stem, compression=compression)
    return assemble(name, input_shape, backbone, normalize=normalize, num_classes=num_classes,
                    dropout=dropout)


for _name, _arch in VARIANTS.items():
    # Smallest input with the CIFAR stem: one 2x2 average pool per transition.
    _min = 2 ** (len(_arch["blocks"]) - 1)
    register(_name, family="densenet", default_size=32, min_size=_min, paper=PAPER)(
        size_checked(functools.partial(build_densenet, name=_name, **_arch), name=_name,
                     min_size=_min)
    )
