"""Inception: GoogLeNet (v1), Inception-v3 and Inception-v4, built from module tables.

* Szegedy et al., "Going Deeper with Convolutions", CVPR 2015, https://arxiv.org/abs/1409.4842
  (``inception_v1``): the Inception module runs a 1x1, a 3x3 and a 5x5 convolution and a 3x3
  max pool side by side, with 1x1 "reductions" before the 3x3 and 5x5 convolutions and after the
  pool, and concatenates them. The network is Table 1 of the paper: stem, modules 3a-3b, 4a-4e,
  5a-5b, global average pooling, dropout, a linear layer. Batch normalization follows every
  convolution (as in torchvision's GoogLeNet) in place of local response normalization, and
  the auxiliary classifiers are left out. At 224x224 with 1000 classes it has 7,005,832
  trainable parameters. torchvision's ``googlenet`` uses a 3x3 convolution where the paper has
  the 5x5 one (a discrepancy it keeps for weight compatibility); with ``kernel_5x5=3`` the
  trainable parameters equal torchvision's 6,624,904.
* Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016,
  https://arxiv.org/abs/1512.00567 (``inception_v3``): layer for layer as
  ``keras.applications.InceptionV3``; at 299x299 with 1000 classes it has exactly its
  23,851,784 parameters and loads its ImageNet weights.
* Szegedy et al., "Inception-v4, Inception-ResNet and the Impact of Residual Connections on
  Learning", AAAI 2017, https://arxiv.org/abs/1602.07261 (``inception_v4``): the stem, 4
  Inception-A, Reduction-A (k, l, m, n = 192, 224, 256, 384), 7 Inception-B, Reduction-B and 3
  Inception-C modules of Figures 3-9. At 299x299 with 1000 classes its trainable parameters
  equal timm's ``inception_v4``, 42,679,816.

With the CIFAR stem (inputs under 128 px) the strided stem layers are replaced by stride-1 3x3
convolutions, so a 32x32 image reaches the first modules at full resolution.
"""

from __future__ import annotations

import functools

from keras import layers

from kerascls.errors import UserError
from kerascls.layers import assemble
from kerascls.registry import register
from kerascls.shapes import resolve_stem, size_checked

PAPER_V1 = "Szegedy et al. 2015, Going Deeper with Convolutions, arXiv:1409.4842"
PAPER_V3 = ("Szegedy et al. 2016, Rethinking the Inception Architecture for Computer Vision, "
            "arXiv:1512.00567")
PAPER_V4 = ("Szegedy et al. 2017, Inception-v4, Inception-ResNet and the Impact of Residual "
            "Connections on Learning, arXiv:1602.07261")

# GoogLeNet, Table 1: (name, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj) or "pool".
GOOGLENET = (
    ("3a", 64, 96, 128, 16, 32, 32),
    ("3b", 128, 128, 192, 32, 96, 64),
    "pool",
    ("4a", 192, 96, 208, 16, 48, 64),
    ("4b", 160, 112, 224, 24, 64, 64),
    ("4c", 128, 128, 256, 24, 64, 64),
    ("4d", 112, 144, 288, 32, 64, 64),
    ("4e", 256, 160, 320, 32, 128, 128),
    "pool",
    ("5a", 256, 160, 320, 32, 128, 128),
    ("5b", 384, 192, 384, 48, 128, 128),
)
# Inception-v3 as keras.applications builds it: (kind, concat name, argument).
INCEPTION_V3 = (
    ("a", "mixed0", 32), ("a", "mixed1", 64), ("a", "mixed2", 64),
    ("reduction_a", "mixed3", None),
    ("b", "mixed4", 128), ("b", "mixed5", 160), ("b", "mixed6", 160), ("b", "mixed7", 192),
    ("reduction_b", "mixed8", None),
    ("c", "mixed9", None), ("c", "mixed10", None),
)
# Inception-v4, Figure 9: 4 x A, Reduction-A, 7 x B, Reduction-B, 3 x C.
INCEPTION_V4 = (
    *(("a", f"inception_a{i}") for i in range(1, 5)),
    ("reduction_a", "reduction_a"),
    *(("b", f"inception_b{i}") for i in range(1, 8)),
    ("reduction_b", "reduction_b"),
    *(("c", f"inception_c{i}") for i in range(1, 4)),
)

VARIANTS = {
    "inception_v1": dict(version=1),
    "inception_v3": dict(version=3),
    "inception_v4": dict(version=4),
}
# Smallest input with the CIFAR stem: two stride-2 max pools (v1); two valid 3x3/2
# reductions (v3, v4): 7 -> 3 -> 1.
MIN_SIZE = {1: 4, 3: 7, 4: 7}
PAPERS = {1: PAPER_V1, 3: PAPER_V3, 4: PAPER_V4}


def conv_bn(x, filters, kernel, strides=1, padding="same", *, name, scale=True):
    """Bias-free convolution, batch norm (epsilon 1e-3), ReLU: ``{name}_conv|bn|relu``."""
    x = layers.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=False,
                      name=f"{name}_conv")(x)
    x = layers.BatchNormalization(scale=scale, epsilon=1e-3, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _concat(branches, name):
    return layers.Concatenate(axis=-1, name=name)(branches)


# ----------------------------------------------------------------------------------- GoogLeNet


POOL_TYPES = ("max", "avg")


def googlenet_module(x, n1, n3r, n3, n5r, n5, pool_proj, *, name, kernel_5x5=5,
                     pool_type="max"):
    """The Inception module with its 1x1 reductions (Figure 2b).

    A path whose output filters are 0 is left out (``n3 = 0`` drops the 3x3 path, ``n5 = 0`` the
    5x5 one, ``pool_proj = 0`` the pooling path); a reduction of 0 runs that path's convolution
    on the module input directly. ``pool_type`` is the pooling path's ``max`` or ``avg``.
    """
    branches = []
    if n1:
        branches.append(conv_bn(x, n1, 1, name=f"{name}_1x1"))
    for n_reduce, n_out, kernel, tag in ((n3r, n3, 3, "3x3"), (n5r, n5, kernel_5x5, "5x5")):
        if n_out:
            b = conv_bn(x, n_reduce, 1, name=f"{name}_{tag}_reduce") if n_reduce else x
            branches.append(conv_bn(b, n_out, kernel, name=f"{name}_{tag}"))
    if pool_proj:
        pool = layers.MaxPooling2D if pool_type == "max" else layers.AveragePooling2D
        b4 = pool(3, strides=1, padding="same", name=f"{name}_pool")(x)
        branches.append(conv_bn(b4, pool_proj, 1, name=f"{name}_pool_proj"))
    if len(branches) == 1:
        return branches[0]
    return _concat(branches, f"{name}_concat")


def check_modules(modules) -> None:
    """Raise :class:`UserError` for a GoogLeNet module table the builder cannot build."""
    if not modules:
        raise UserError("modules must list at least one Inception module")
    for row in modules:
        if row == "pool":
            continue
        if (not isinstance(row, (tuple, list)) or len(row) != 7
                or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in row[1:])):
            raise UserError("each Inception module must be [name, #1x1, #3x3 reduce, #3x3, "
                            "#5x5 reduce, #5x5, pool proj] with non-negative filter counts, "
                            f"or 'pool'. Received: {row}")
        if not (row[1] or row[3] or row[5] or row[6]):
            raise UserError(f"Inception module {row[0]} has no path: at least one of #1x1, "
                            f"#3x3, #5x5 and pool proj must be positive. Received: {row}")


def googlenet_features(x, *, stem, kernel_5x5=5, modules=GOOGLENET, pool_type="max"):
    if stem == "imagenet":
        x = conv_bn(x, 64, 7, strides=2, name="conv1")
        x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
        x = conv_bn(x, 64, 1, name="conv2_reduce")
        x = conv_bn(x, 192, 3, name="conv2")
        x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool2")(x)
    else:
        x = conv_bn(x, 192, 3, name="conv1")
    pools = 3
    for row in modules:
        if row == "pool":
            x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"pool{pools}")(x)
            pools += 1
        else:
            x = googlenet_module(x, *row[1:], name=f"inception{row[0]}",
                                 kernel_5x5=kernel_5x5, pool_type=pool_type)
    return x


# -------------------------------------------------------------------------------- Inception-v3


def v3_block(x, kind, name, arg):
    """One Inception-v3 block, branch for branch as ``keras.applications.InceptionV3``."""
    c = functools.partial(conv_bn, scale=False)
    if kind == "a":
        b1 = c(x, 64, 1, name=f"{name}_b1")
        b5 = c(x, 48, 1, name=f"{name}_b5a")
        b5 = c(b5, 64, 5, name=f"{name}_b5b")
        b3 = c(x, 64, 1, name=f"{name}_b3a")
        b3 = c(b3, 96, 3, name=f"{name}_b3b")
        b3 = c(b3, 96, 3, name=f"{name}_b3c")
        bp = layers.AveragePooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x)
        bp = c(bp, arg, 1, name=f"{name}_bp")
        return _concat([b1, b5, b3, bp], name)
    if kind == "reduction_a":
        b3 = c(x, 384, 3, strides=2, padding="valid", name=f"{name}_b3")
        bd = c(x, 64, 1, name=f"{name}_bda")
        bd = c(bd, 96, 3, name=f"{name}_bdb")
        bd = c(bd, 96, 3, strides=2, padding="valid", name=f"{name}_bdc")
        bp = layers.MaxPooling2D(3, strides=2, name=f"{name}_pool")(x)
        return _concat([b3, bd, bp], name)
    if kind == "b":
        b1 = c(x, 192, 1, name=f"{name}_b1")
        b7 = c(x, arg, 1, name=f"{name}_b7a")
        b7 = c(b7, arg, (1, 7), name=f"{name}_b7b")
        b7 = c(b7, 192, (7, 1), name=f"{name}_b7c")
        bd = c(x, arg, 1, name=f"{name}_bda")
        bd = c(bd, arg, (7, 1), name=f"{name}_bdb")
        bd = c(bd, arg, (1, 7), name=f"{name}_bdc")
        bd = c(bd, arg, (7, 1), name=f"{name}_bdd")
        bd = c(bd, 192, (1, 7), name=f"{name}_bde")
        bp = layers.AveragePooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x)
        bp = c(bp, 192, 1, name=f"{name}_bp")
        return _concat([b1, b7, bd, bp], name)
    if kind == "reduction_b":
        b3 = c(x, 192, 1, name=f"{name}_b3a")
        b3 = c(b3, 320, 3, strides=2, padding="valid", name=f"{name}_b3b")
        b7 = c(x, 192, 1, name=f"{name}_b7a")
        b7 = c(b7, 192, (1, 7), name=f"{name}_b7b")
        b7 = c(b7, 192, (7, 1), name=f"{name}_b7c")
        b7 = c(b7, 192, 3, strides=2, padding="valid", name=f"{name}_b7d")
        bp = layers.MaxPooling2D(3, strides=2, name=f"{name}_pool")(x)
        return _concat([b3, b7, bp], name)
    # kind == "c"
    b1 = c(x, 320, 1, name=f"{name}_b1")
    b3 = c(x, 384, 1, name=f"{name}_b3a")
    b3 = _concat([c(b3, 384, (1, 3), name=f"{name}_b3b"),
                  c(b3, 384, (3, 1), name=f"{name}_b3c")], f"{name}_b3")
    bd = c(x, 448, 1, name=f"{name}_bda")
    bd = c(bd, 384, 3, name=f"{name}_bdb")
    bd = _concat([c(bd, 384, (1, 3), name=f"{name}_bdc"),
                  c(bd, 384, (3, 1), name=f"{name}_bdd")], f"{name}_bd")
    bp = layers.AveragePooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x)
    bp = c(bp, 192, 1, name=f"{name}_bp")
    return _concat([b1, b3, bd, bp], name)


def inception_v3_features(x, *, stem):
    c = functools.partial(conv_bn, scale=False)
    if stem == "imagenet":
        x = c(x, 32, 3, strides=2, padding="valid", name="stem1")
        x = c(x, 32, 3, padding="valid", name="stem2")
        x = c(x, 64, 3, name="stem3")
        x = layers.MaxPooling2D(3, strides=2, name="stem_pool1")(x)
        x = c(x, 80, 1, padding="valid", name="stem4")
        x = c(x, 192, 3, padding="valid", name="stem5")
        x = layers.MaxPooling2D(3, strides=2, name="stem_pool2")(x)
    else:
        x = c(x, 32, 3, name="stem1")
        x = c(x, 32, 3, name="stem2")
        x = c(x, 64, 3, name="stem3")
        x = c(x, 80, 1, name="stem4")
        x = c(x, 192, 3, name="stem5")
    for kind, name, arg in INCEPTION_V3:
        x = v3_block(x, kind, name, arg)
    return x


# -------------------------------------------------------------------------------- Inception-v4


def v4_block(x, kind, name):
    """One Inception-v4 module (Figures 4-8)."""
    c = conv_bn
    if kind == "a":
        b0 = c(x, 96, 1, name=f"{name}_b0")
        b1 = c(x, 64, 1, name=f"{name}_b1a")
        b1 = c(b1, 96, 3, name=f"{name}_b1b")
        b2 = c(x, 64, 1, name=f"{name}_b2a")
        b2 = c(b2, 96, 3, name=f"{name}_b2b")
        b2 = c(b2, 96, 3, name=f"{name}_b2c")
        b3 = layers.AveragePooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x)
        b3 = c(b3, 96, 1, name=f"{name}_b3")
        return _concat([b0, b1, b2, b3], name)
    if kind == "reduction_a":  # k, l, m, n = 192, 224, 256, 384
        b0 = c(x, 384, 3, strides=2, padding="valid", name=f"{name}_b0")
        b1 = c(x, 192, 1, name=f"{name}_b1a")
        b1 = c(b1, 224, 3, name=f"{name}_b1b")
        b1 = c(b1, 256, 3, strides=2, padding="valid", name=f"{name}_b1c")
        b2 = layers.MaxPooling2D(3, strides=2, name=f"{name}_pool")(x)
        return _concat([b0, b1, b2], name)
    if kind == "b":
        b0 = c(x, 384, 1, name=f"{name}_b0")
        b1 = c(x, 192, 1, name=f"{name}_b1a")
        b1 = c(b1, 224, (1, 7), name=f"{name}_b1b")
        b1 = c(b1, 256, (7, 1), name=f"{name}_b1c")
        b2 = c(x, 192, 1, name=f"{name}_b2a")
        b2 = c(b2, 192, (7, 1), name=f"{name}_b2b")
        b2 = c(b2, 224, (1, 7), name=f"{name}_b2c")
        b2 = c(b2, 224, (7, 1), name=f"{name}_b2d")
        b2 = c(b2, 256, (1, 7), name=f"{name}_b2e")
        b3 = layers.AveragePooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x)
        b3 = c(b3, 128, 1, name=f"{name}_b3")
        return _concat([b0, b1, b2, b3], name)
    if kind == "reduction_b":
        b0 = c(x, 192, 1, name=f"{name}_b0a")
        b0 = c(b0, 192, 3, strides=2, padding="valid", name=f"{name}_b0b")
        b1 = c(x, 256, 1, name=f"{name}_b1a")
        b1 = c(b1, 256, (1, 7), name=f"{name}_b1b")
        b1 = c(b1, 320, (7, 1), name=f"{name}_b1c")
        b1 = c(b1, 320, 3, strides=2, padding="valid", name=f"{name}_b1d")
        b2 = layers.MaxPooling2D(3, strides=2, name=f"{name}_pool")(x)
        return _concat([b0, b1, b2], name)
    # kind == "c"
    b0 = c(x, 256, 1, name=f"{name}_b0")
    b1 = c(x, 384, 1, name=f"{name}_b1a")
    b1 = _concat([c(b1, 256, (1, 3), name=f"{name}_b1b"),
                  c(b1, 256, (3, 1), name=f"{name}_b1c")], f"{name}_b1")
    b2 = c(x, 384, 1, name=f"{name}_b2a")
    b2 = c(b2, 448, (3, 1), name=f"{name}_b2b")
    b2 = c(b2, 512, (1, 3), name=f"{name}_b2c")
    b2 = _concat([c(b2, 256, (1, 3), name=f"{name}_b2d"),
                  c(b2, 256, (3, 1), name=f"{name}_b2e")], f"{name}_b2")
    b3 = layers.AveragePooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x)
    b3 = c(b3, 256, 1, name=f"{name}_b3")
    return _concat([b0, b1, b2, b3], name)


def inception_v4_features(x, *, stem):
    """The stem of Figure 3 (ImageNet) or stride-1 3x3 convolutions (CIFAR), then the modules."""
    valid = "valid" if stem == "imagenet" else "same"
    if stem == "imagenet":
        x = conv_bn(x, 32, 3, strides=2, padding="valid", name="stem1")
        x = conv_bn(x, 32, 3, padding="valid", name="stem2")
        x = conv_bn(x, 64, 3, name="stem3")
        x = _concat([layers.MaxPooling2D(3, strides=2, name="mixed_3a_pool")(x),
                     conv_bn(x, 96, 3, strides=2, padding="valid", name="mixed_3a_conv")],
                    "mixed_3a")
    else:
        x = conv_bn(x, 32, 3, name="stem1")
        x = conv_bn(x, 64, 3, name="stem2")
    b0 = conv_bn(x, 64, 1, name="mixed_4a_b0a")
    b0 = conv_bn(b0, 96, 3, padding=valid, name="mixed_4a_b0b")
    b1 = conv_bn(x, 64, 1, name="mixed_4a_b1a")
    b1 = conv_bn(b1, 64, (1, 7), name="mixed_4a_b1b")
    b1 = conv_bn(b1, 64, (7, 1), name="mixed_4a_b1c")
    b1 = conv_bn(b1, 96, 3, padding=valid, name="mixed_4a_b1d")
    x = _concat([b0, b1], "mixed_4a")
    if stem == "imagenet":
        x = _concat([conv_bn(x, 192, 3, strides=2, padding="valid", name="mixed_5a_conv"),
                     layers.MaxPooling2D(3, strides=2, name="mixed_5a_pool")(x)], "mixed_5a")
    for kind, name in INCEPTION_V4:
        x = v4_block(x, kind, name)
    return x


FEATURES = {1: googlenet_features, 3: inception_v3_features, 4: inception_v4_features}


def build_inception(input_shape, num_classes, *, normalize=None, dropout=0.0, stem="auto",
                    name="inception_v3", version=3, kernel_5x5=5, modules=GOOGLENET,
                    pool_type="max"):
    """Build GoogLeNet (``version=1``), Inception-v3 or Inception-v4.

    Args:
        input_shape: ``(H, W, 3)``; the ImageNet stems need at least 75x75.
        num_classes: number of classes.
        normalize: preprocessing inside the model (``imagenet``, ``unit``, ``none``) or None.
        dropout: dropout before the classifier (the papers use 0.4, 0.2 and 0.2).
        stem: ``auto``, ``cifar`` (stride-1 stem) or ``imagenet`` (the papers' stems).
        name: model name.
        version: 1, 3 or 4.
        kernel_5x5: kernel of GoogLeNet's "5x5" branch (3 gives torchvision's variant).
        modules: GoogLeNet's module table (Table 1): rows ``[name, #1x1, #3x3 reduce, #3x3,
            #5x5 reduce, #5x5, pool proj]`` and ``"pool"`` for a 3x3/2 max pool between them;
            a path with 0 output filters is left out (see :func:`googlenet_module`).
        pool_type: pooling of the modules' pooling path, ``max`` (the paper) or ``avg``.
    """
    if pool_type not in POOL_TYPES:
        raise UserError(f"pool_type must be one of {', '.join(POOL_TYPES)}. "
                        f"Received: pool_type={pool_type}")
    stem = resolve_stem(stem, input_shape)
    if version == 1:
        check_modules(modules)
        backbone = functools.partial(googlenet_features, stem=stem, kernel_5x5=kernel_5x5,
                                     modules=tuple(modules), pool_type=pool_type)
    elif kernel_5x5 != 5 or tuple(modules) != GOOGLENET or pool_type != "max":
        raise UserError("kernel_5x5, modules and pool_type apply to inception_v1 only. "
                        f"Received: kernel_5x5={kernel_5x5}, pool_type={pool_type}"
                        + ("" if tuple(modules) == GOOGLENET else ", modules=..."))
    else:
        backbone = functools.partial(FEATURES[version], stem=stem)
    return assemble(name, input_shape, backbone, normalize=normalize, num_classes=num_classes,
                    dropout=dropout)


for _name, _arch in VARIANTS.items():
    _v = _arch["version"]
    register(_name, family="inception", default_size=32, min_size=MIN_SIZE[_v],
             paper=PAPERS[_v])(
        size_checked(functools.partial(build_inception, name=_name, **_arch), name=_name,
                     min_size=MIN_SIZE[_v])
    )
