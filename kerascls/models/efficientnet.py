"""EfficientNet B0-B7: one baseline (B0) scaled in depth, width and resolution together.

Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019,
https://arxiv.org/abs/1905.11946.

B0 is the searched baseline of Table 1: a 3x3 stem and seven stages of MBConv blocks (expand 1x1,
depthwise 3x3 or 5x5, squeeze-and-excitation with ratio 0.25 of the block input, linear 1x1
projection, swish activations), stochastic depth on the residual branches (drop rate growing
linearly to 0.2 over the blocks), a 1x1 convolution to 1280 channels and the classifier.

Compound scaling (section 3.3) multiplies depth by alpha^phi, width by beta^phi and resolution by
gamma^phi with alpha=1.2, beta=1.1, gamma=1.15 (:func:`compound_coefficients`); channels are
rounded to multiples of 8 (never losing more than 10%) and block repeats are rounded up. B1-B7
use the coefficients released with the paper (:data:`COEFFICIENTS`, those of the reference
implementation and ``keras.applications``). Only B2's width and depth are the formula exactly
(phi = 1: 1.1 and 1.2); the others depart from it beyond rounding (B7's depth 3.1 means phi = 6.2, whose
width would be 1.81, not 2.0). ``python -m kerascls.models scale efficientnet`` tabulates
the formula's networks (:mod:`kerascls.compound`). With the released coefficients every variant
at its native resolution with 1000 classes and ``normalize=None`` has exactly the parameters of
``keras.applications.EfficientNetB0..B7(weights=None)``: 5,330,571; 7,856,239; 9,177,569;
12,320,535; 19,466,823; 30,562,527; 43,265,143 and 66,658,687. Pass ``phi=`` to build a network
scaled by the formula itself.

With ``normalize=None`` the network standardizes its 0..255 input itself, as
``keras.applications`` does (a 1/255 rescaling and a ``Normalization`` layer whose mean and
variance come with the ImageNet weights), so those weights load unchanged; with ``normalize``
set, that layer is the only preprocessing. With the CIFAR stem (inputs under 128 px) the stem and
the first stride-2 stage use stride 1, so a 32x32 input ends on a 4x4 map.
"""

from __future__ import annotations

import functools

from keras import layers

from kerascls.errors import UserError
from kerascls.layers import (
    DropPath,
    assemble,
    make_divisible,
    round_repeats,
    squeeze_excite,
)
from kerascls.models.mobilenet import correct_pad
from kerascls.registry import register
from kerascls.shapes import resolve_stem, size_checked

PAPER = ("Tan & Le 2019, EfficientNet: Rethinking Model Scaling for Convolutional Neural "
         "Networks, arXiv:1905.11946")
ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15  # depth, width, resolution bases (section 3.3)
BASE_RESOLUTION = 224

# B0, Table 1: (kernel, repeats, filters in, filters out, expansion, stride) per stage;
# every block has squeeze-excite with ratio 0.25.
B0_STAGES = (
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
)
SE_RATIO = 0.25
# The released coefficients: (width, depth, resolution, classifier dropout).
COEFFICIENTS = {
    "efficientnet_b0": (1.0, 1.0, 224, 0.2),
    "efficientnet_b1": (1.0, 1.1, 240, 0.2),
    "efficientnet_b2": (1.1, 1.2, 260, 0.3),
    "efficientnet_b3": (1.2, 1.4, 300, 0.3),
    "efficientnet_b4": (1.4, 1.8, 380, 0.4),
    "efficientnet_b5": (1.6, 2.2, 456, 0.4),
    "efficientnet_b6": (1.8, 2.6, 528, 0.5),
    "efficientnet_b7": (2.0, 3.1, 600, 0.5),
}
VARIANTS = {name: dict(width_coefficient=w, depth_coefficient=d)
            for name, (w, d, _, _) in COEFFICIENTS.items()}
NATIVE_SIZE = {name: r for name, (_, _, r, _) in COEFFICIENTS.items()}
MIN_SIZE = 8  # total stride with the CIFAR stem


# keras.applications' initializer for EfficientNet convolutions (He, fan-out, truncated normal).
CONV_INIT = {"class_name": "VarianceScaling",
             "config": {"scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"}}


def compound_coefficients(phi: float) -> tuple[float, float, int]:
    """(width, depth, resolution) of compound scaling: beta^phi, alpha^phi, 224 gamma^phi.

    The resolution is rounded to a multiple of 8 pixels.

    Example:
        >>> compound_coefficients(1.0)
        (1.1, 1.2, 256)
    """
    width = round(BETA ** phi, 6)
    depth = round(ALPHA ** phi, 6)
    resolution = round(BASE_RESOLUTION * GAMMA ** phi / 8.0) * 8
    return width, depth, resolution


def mbconv(x, *, filters_in, filters_out, kernel, stride, expand_ratio, drop_rate, name,
           se_ratio=SE_RATIO):
    """Mobile inverted bottleneck with squeeze-excite and stochastic depth."""
    inputs = x
    filters = filters_in * expand_ratio
    if expand_ratio != 1:
        x = layers.Conv2D(filters, 1, padding="same", use_bias=False,
                          kernel_initializer=CONV_INIT, name=f"{name}expand_conv")(x)
        x = layers.BatchNormalization(name=f"{name}expand_bn")(x)
        x = layers.Activation("swish", name=f"{name}expand_activation")(x)
    if stride == 2:
        x = layers.ZeroPadding2D(correct_pad(x.shape[1], kernel), name=f"{name}dwconv_pad")(x)
    x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same" if stride == 1 else "valid",
                               use_bias=False, depthwise_initializer=CONV_INIT,
                               name=f"{name}dwconv")(x)
    x = layers.BatchNormalization(name=f"{name}bn")(x)
    x = layers.Activation("swish", name=f"{name}activation")(x)
    x = squeeze_excite(x, filters, max(1, int(filters_in * se_ratio)), name=f"{name}se",
                       activation="swish", gate="sigmoid")
    x = layers.Conv2D(filters_out, 1, padding="same", use_bias=False,
                      kernel_initializer=CONV_INIT, name=f"{name}project_conv")(x)
    x = layers.BatchNormalization(name=f"{name}project_bn")(x)
    if stride == 1 and filters_in == filters_out:
        if drop_rate > 0:
            x = DropPath(drop_rate, name=f"{name}drop")(x)
        x = layers.Add(name=f"{name}add")([x, inputs])
    return x


def efficientnet_features(x, *, width, depth, drop_path_rate, stem, standardize):
    """Input standardization (optional), stem, MBConv stages, 1x1 head convolution."""
    cifar = stem == "cifar"
    if standardize:
        x = layers.Rescaling(1.0 / 255.0, name="rescaling")(x)
        x = layers.Normalization(axis=-1, name="normalization")(x)
    stem_filters = make_divisible(32 * width, 8)
    if cifar:
        x = layers.Conv2D(stem_filters, 3, padding="same", use_bias=False,
                          kernel_initializer=CONV_INIT, name="stem_conv")(x)
    else:
        x = layers.ZeroPadding2D(correct_pad(x.shape[1], 3), name="stem_conv_pad")(x)
        x = layers.Conv2D(stem_filters, 3, strides=2, padding="valid", use_bias=False,
                          kernel_initializer=CONV_INIT, name="stem_conv")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation("swish", name="stem_activation")(x)
    total = float(sum(round_repeats(row[1], depth) for row in B0_STAGES))
    b = 0
    first_stride2 = True
    for i, (kernel, repeats, f_in, f_out, expand, stride) in enumerate(B0_STAGES):
        f_in, f_out = make_divisible(f_in * width, 8), make_divisible(f_out * width, 8)
        if stride == 2 and cifar and first_stride2:
            stride, first_stride2 = 1, False
        for j in range(round_repeats(repeats, depth)):
            x = mbconv(x, filters_in=f_in if j == 0 else f_out, filters_out=f_out,
                       kernel=kernel, stride=stride if j == 0 else 1, expand_ratio=expand,
                       drop_rate=drop_path_rate * b / total, name=f"block{i + 1}{chr(j + 97)}_")
            b += 1
    x = layers.Conv2D(make_divisible(1280 * width, 8), 1, padding="same", use_bias=False,
                      kernel_initializer=CONV_INIT, name="top_conv")(x)
    x = layers.BatchNormalization(name="top_bn")(x)
    return layers.Activation("swish", name="top_activation")(x)


def check_coefficients(width_coefficient: float, depth_coefficient: float) -> None:
    """Refuse coefficients that leave a stage without channels or blocks."""
    if not width_coefficient > 0 or not depth_coefficient > 0:
        raise UserError(f"width_coefficient and depth_coefficient must be positive. Received: "
                        f"width_coefficient={width_coefficient}, "
                        f"depth_coefficient={depth_coefficient}")
    narrowest = min(min(row[2], row[3]) for row in B0_STAGES)
    if int(narrowest * width_coefficient) < 1:
        raise UserError(f"width_coefficient={width_coefficient} rounds the {narrowest}-channel "
                        f"stage to {int(narrowest * width_coefficient)} channels")


def build_efficientnet(input_shape, num_classes, *, normalize=None, dropout=0.0, stem="auto",
                       name="efficientnet_b0", width_coefficient=1.0, depth_coefficient=1.0,
                       resolution=0, phi=None, drop_path_rate=0.2):
    """Build an EfficientNet.

    Args:
        input_shape: ``(H, W, 3)``.
        num_classes: number of classes.
        normalize: preprocessing inside the model (``imagenet``, ``unit``, ``none``), or None
            for ``keras.applications``' own input standardization (see the module docstring).
        dropout: dropout before the classifier (the paper uses 0.2 for B0 up to 0.5 for B7).
        stem: ``auto``, ``cifar`` (stride-1 stem and first stage) or ``imagenet``.
        name: model name.
        width_coefficient: channel multiplier (beta^phi in compound scaling).
        depth_coefficient: block-repeat multiplier (alpha^phi).
        resolution: the resolution the network runs at (gamma^phi times the base); when not 0
            and not the input size, a bilinear ``Resizing`` layer after the input resizes the
            images to it, so the data can stay at its own size.
        phi: if given, replaces the width and depth coefficients with the formula's.
        drop_path_rate: stochastic-depth rate of the last block.
    """
    if phi is not None:
        if phi < 0:
            raise UserError(f"phi must be non-negative. Received: phi={phi}")
        width_coefficient, depth_coefficient, _ = compound_coefficients(phi)
    check_coefficients(width_coefficient, depth_coefficient)
    if resolution < 0:
        raise UserError(f"resolution must be positive (or 0 for the input size). "
                        f"Received: resolution={resolution}")
    resize = bool(resolution) and tuple(input_shape[:2]) != (resolution, resolution)
    stem = resolve_stem(stem, (resolution, resolution) if resize else input_shape)
    backbone = functools.partial(efficientnet_features, width=width_coefficient,
                                 depth=depth_coefficient, drop_path_rate=drop_path_rate,
                                 stem=stem, standardize=normalize is None)
    if resize:
        features = backbone

        def backbone(x):
            x = layers.Resizing(resolution, resolution, interpolation="bilinear",
                                name="resolution")(x)
            return features(x)
    return assemble(name, input_shape, backbone, normalize=normalize, num_classes=num_classes,
                    dropout=dropout)


for _name, _arch in VARIANTS.items():
    register(_name, family="efficientnet", default_size=32, min_size=MIN_SIZE, paper=PAPER)(
        size_checked(functools.partial(build_efficientnet, name=_name, **_arch), name=_name,
                     min_size=MIN_SIZE)
    )
