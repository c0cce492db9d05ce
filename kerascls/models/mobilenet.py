"""MobileNet v1, v2 and v3: depthwise-separable convolutions for small devices.

* Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
  Applications", 2017, https://arxiv.org/abs/1704.04861 (``mobilenet_v1``): a 3x3 depthwise
  convolution and a 1x1 pointwise convolution (each with BN and ReLU6) replace each standard
  convolution; the width multiplier ``alpha`` thins every layer. At 224x224 with 1000 classes
  it has exactly the 4,253,864 parameters of ``keras.applications.MobileNet(weights=None)``
  (whose 1x1-convolution classifier is a Dense layer here, with the same weights).
* Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018,
  https://arxiv.org/abs/1801.04381 (``mobilenet_v2``): expand (1x1, ReLU6), depthwise 3x3
  (ReLU6), project (1x1, linear), with a residual between narrow bottlenecks; 3,538,984
  parameters, as ``keras.applications.MobileNetV2``.
* Howard et al., "Searching for MobileNetV3", ICCV 2019, https://arxiv.org/abs/1905.02244
  (``mobilenet_v3_small``, ``mobilenet_v3_large``): the v2 block with squeeze-and-excitation,
  hard-swish and 5x5 kernels where the search chose them; 2,554,968 and 5,507,432 parameters,
  as ``keras.applications.MobileNetV3Small/Large`` (whose input rescaling is the
  ``normalize="unit"`` layer here).

All follow ``keras.applications`` layer for layer, so its ImageNet weights load into them.
With the CIFAR stem (inputs under 128 px) the stem convolution and the first stride-2 block use
stride 1, so a 32x32 input ends on a 4x4 map, as the common CIFAR ports do.
"""

from __future__ import annotations

import functools

from keras import layers

from kerascls.errors import UserError
from kerascls.layers import assemble, make_divisible, squeeze_excite
from kerascls.registry import register
from kerascls.shapes import resolve_stem, size_checked

PAPER_V1 = ("Howard et al. 2017, MobileNets: Efficient Convolutional Neural Networks for Mobile "
            "Vision Applications, arXiv:1704.04861")
PAPER_V2 = ("Sandler et al. 2018, MobileNetV2: Inverted Residuals and Linear Bottlenecks, "
            "arXiv:1801.04381")
PAPER_V3 = "Howard et al. 2019, Searching for MobileNetV3, arXiv:1905.02244"

# v1, Table 1: (pointwise filters, stride) of the 13 depthwise-separable blocks.
V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
             (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
# v2, Table 2: (expansion t, output channels c, repeats n, first stride s).
V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1))
# v3, Tables 1 and 2: (expansion, output channels, kernel, stride, squeeze-excite, activation).
V3_SMALL = (
    (1, 16, 3, 2, True, "relu"), (72 / 16, 24, 3, 2, False, "relu"),
    (88 / 24, 24, 3, 1, False, "relu"), (4, 40, 5, 2, True, "hard_swish"),
    (6, 40, 5, 1, True, "hard_swish"), (6, 40, 5, 1, True, "hard_swish"),
    (3, 48, 5, 1, True, "hard_swish"), (3, 48, 5, 1, True, "hard_swish"),
    (6, 96, 5, 2, True, "hard_swish"), (6, 96, 5, 1, True, "hard_swish"),
    (6, 96, 5, 1, True, "hard_swish"),
)
V3_LARGE = (
    (1, 16, 3, 1, False, "relu"), (4, 24, 3, 2, False, "relu"), (3, 24, 3, 1, False, "relu"),
    (3, 40, 5, 2, True, "relu"), (3, 40, 5, 1, True, "relu"), (3, 40, 5, 1, True, "relu"),
    (6, 80, 3, 2, False, "hard_swish"), (2.5, 80, 3, 1, False, "hard_swish"),
    (2.3, 80, 3, 1, False, "hard_swish"), (2.3, 80, 3, 1, False, "hard_swish"),
    (6, 112, 3, 1, True, "hard_swish"), (6, 112, 3, 1, True, "hard_swish"),
    (6, 160, 5, 2, True, "hard_swish"), (6, 160, 5, 1, True, "hard_swish"),
    (6, 160, 5, 1, True, "hard_swish"),
)

VARIANTS = {
    "mobilenet_v1": dict(version="v1"),
    "mobilenet_v2": dict(version="v2"),
    "mobilenet_v3_small": dict(version="v3_small"),
    "mobilenet_v3_large": dict(version="v3_large"),
}
PAPERS = {"v1": PAPER_V1, "v2": PAPER_V2, "v3_small": PAPER_V3, "v3_large": PAPER_V3}
MIN_SIZE = 8  # total stride with the CIFAR stem
V3_LAST_POINT = {"v3_small": 1024, "v3_large": 1280}


def correct_pad(size: int, kernel: int):
    """Zero padding before a stride-2 'valid' convolution, as ``keras.applications`` does."""
    adjust = 1 - size % 2
    k = kernel // 2
    return ((k - adjust, k), (k - adjust, k))


def _bn(x, name, momentum=0.999):
    return layers.BatchNormalization(epsilon=1e-3, momentum=momentum, name=name)(x)


def _act(x, activation, name):
    if activation == "relu6":
        return layers.ReLU(6.0, name=name)(x)
    return layers.Activation(activation, name=name)(x)


def _depthwise(x, kernel, stride, name):
    """Depthwise convolution; stride 2 pads explicitly then runs 'valid'."""
    if stride == 2:
        x = layers.ZeroPadding2D(correct_pad(x.shape[1], kernel), name=f"{name}_pad")(x)
    return layers.DepthwiseConv2D(kernel, strides=stride, use_bias=False,
                                  padding="same" if stride == 1 else "valid", name=name)(x)


def mobilenet_v1_features(x, *, alpha, depth_multiplier, stem):
    """Stem and the 13 depthwise-separable blocks (names as ``keras.applications``)."""
    cifar = stem == "cifar"
    x = layers.Conv2D(int(32 * alpha), 3, strides=1 if cifar else 2, padding="same",
                      use_bias=False, name="conv1")(x)
    x = layers.BatchNormalization(name="conv1_bn")(x)
    x = layers.ReLU(6.0, name="conv1_relu")(x)
    first_stride2 = True
    for i, (filters, stride) in enumerate(V1_BLOCKS, start=1):
        if stride == 2 and cifar and first_stride2:
            stride, first_stride2 = 1, False
        if stride == 2:
            x = layers.ZeroPadding2D(((0, 1), (0, 1)), name=f"conv_pad_{i}")(x)
        x = layers.DepthwiseConv2D(3, strides=stride, depth_multiplier=depth_multiplier,
                                   padding="same" if stride == 1 else "valid",
                                   use_bias=False, name=f"conv_dw_{i}")(x)
        x = layers.BatchNormalization(name=f"conv_dw_{i}_bn")(x)
        x = layers.ReLU(6.0, name=f"conv_dw_{i}_relu")(x)
        x = layers.Conv2D(int(filters * alpha), 1, use_bias=False, name=f"conv_pw_{i}")(x)
        x = layers.BatchNormalization(name=f"conv_pw_{i}_bn")(x)
        x = layers.ReLU(6.0, name=f"conv_pw_{i}_relu")(x)
    return x


def inverted_residual(x, *, expansion, filters, kernel, stride, se, activation, name,
                      expand_always=False, se_divisor=8):
    """Expand (1x1), depthwise, optional squeeze-excite, project (1x1, linear), residual.

    ``expansion`` multiplies the input channels; the block is expanded when ``expansion != 1``
    or ``expand_always``.
    """
    cin = x.shape[-1]
    inputs = x
    mid = make_divisible(cin * expansion, 8)
    if expansion != 1 or expand_always:
        x = layers.Conv2D(mid, 1, use_bias=False, name=f"{name}_expand")(x)
        x = _bn(x, f"{name}_expand_bn")
        x = _act(x, activation, f"{name}_expand_act")
    else:
        mid = cin
    x = _depthwise(x, kernel, stride, f"{name}_depthwise")
    x = _bn(x, f"{name}_depthwise_bn")
    x = _act(x, activation, f"{name}_depthwise_act")
    if se:
        x = squeeze_excite(x, mid, make_divisible(mid * 0.25, se_divisor), name=f"{name}_se",
                           activation="relu", gate="hard_sigmoid")
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_project")(x)
    x = _bn(x, f"{name}_project_bn")
    if stride == 1 and cin == filters:
        x = layers.Add(name=f"{name}_add")([inputs, x])
    return x


def mobilenet_v2_features(x, *, alpha, stem):
    cifar = stem == "cifar"
    x = layers.Conv2D(make_divisible(32 * alpha, 8), 3, strides=1 if cifar else 2,
                      padding="same", use_bias=False, name="conv1")(x)
    x = _bn(x, "conv1_bn")
    x = layers.ReLU(6.0, name="conv1_relu")(x)
    block = 0
    first_stride2 = True
    for t, c, n, s in V2_STAGES:
        for i in range(n):
            stride = s if i == 0 else 1
            if stride == 2 and cifar and first_stride2:
                stride, first_stride2 = 1, False
            filters = make_divisible(int(c * alpha), 8)
            x = inverted_residual(x, expansion=t, filters=filters, kernel=3, stride=stride,
                                  se=False, activation="relu6", name=f"block_{block}",
                                  expand_always=block > 0)
            block += 1
    last = make_divisible(1280 * alpha, 8) if alpha > 1.0 else 1280
    x = layers.Conv2D(last, 1, use_bias=False, name="conv_last")(x)
    x = _bn(x, "conv_last_bn")
    return layers.ReLU(6.0, name="out_relu")(x)


def mobilenet_v3_features(x, *, alpha, table, stem):
    cifar = stem == "cifar"
    x = layers.Conv2D(16, 3, strides=1 if cifar else 2, padding="same", use_bias=False,
                      name="conv1")(x)
    x = _bn(x, "conv1_bn")
    x = layers.Activation("hard_swish", name="conv1_act")(x)
    first_stride2 = True
    for i, (t, c, k, s, se, act) in enumerate(table):
        if s == 2 and cifar and first_stride2:
            s, first_stride2 = 1, False
        x = inverted_residual(x, expansion=t, filters=make_divisible(c * alpha, 8), kernel=k,
                              stride=s, se=se, activation=act, name=f"block_{i}",
                              expand_always=i > 0)
    x = layers.Conv2D(make_divisible(x.shape[-1] * 6, 8), 1, use_bias=False, name="conv_last")(x)
    x = _bn(x, "conv_last_bn")
    return layers.Activation("hard_swish", name="conv_last_act")(x)


def v3_head(x, num_classes, *, units, dropout):
    """MobileNetV3's classifier: pool, a hard-swish layer of ``units``, dropout, logits."""
    x = layers.GlobalAveragePooling2D(name="head_pool")(x)
    x = layers.Dense(units, name="head_fc")(x)
    x = layers.Activation("hard_swish", name="head_act")(x)
    if dropout:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    x = layers.Dense(num_classes, name="logits")(x)
    return layers.Activation("softmax", dtype="float32", name="predictions")(x)


def build_mobilenet(input_shape, num_classes, *, normalize=None, dropout=0.0, stem="auto",
                    name="mobilenet_v2", version="v2", alpha=1.0, depth_multiplier=1):
    """Build MobileNet v1, v2 or v3.

    Args:
        input_shape: ``(H, W, 3)``.
        num_classes: number of classes.
        normalize: preprocessing inside the model (``imagenet``, ``unit``, ``none``) or None.
        dropout: dropout before the classifier (the papers use 0.001 for v1, 0.2 for v3).
        stem: ``auto``, ``cifar`` (stride-1 stem) or ``imagenet``.
        name: model name.
        version: ``v1``, ``v2``, ``v3_small`` or ``v3_large``.
        alpha: width multiplier.
        depth_multiplier: depthwise channel multiplier (v1 only).
    """
    if not alpha > 0:
        raise UserError(f"alpha must be positive. Received: alpha={alpha}")
    if version == "v1" and int(32 * alpha) < 1:
        raise UserError(f"alpha={alpha} rounds the 32 channels of mobilenet_v1's stem to "
                        f"{int(32 * alpha)}")
    if int(depth_multiplier) < 1 or (depth_multiplier != 1 and version != "v1"):
        raise UserError(f"depth_multiplier must be a positive integer and applies to "
                        f"mobilenet_v1 only. Received: depth_multiplier={depth_multiplier}")
    stem = resolve_stem(stem, input_shape)
    head = None
    if version == "v1":
        backbone = functools.partial(mobilenet_v1_features, alpha=alpha,
                                     depth_multiplier=depth_multiplier, stem=stem)
    elif version == "v2":
        backbone = functools.partial(mobilenet_v2_features, alpha=alpha, stem=stem)
    else:
        table = V3_SMALL if version == "v3_small" else V3_LARGE
        backbone = functools.partial(mobilenet_v3_features, alpha=alpha, table=table, stem=stem)
        units = V3_LAST_POINT[version]
        if alpha > 1.0:
            units = make_divisible(units * alpha, 8)
        head = functools.partial(v3_head, num_classes=num_classes, units=units, dropout=dropout)
    return assemble(name, input_shape, backbone, head, normalize=normalize,
                    num_classes=num_classes, dropout=dropout)


for _name, _arch in VARIANTS.items():
    register(_name, family="mobilenet", default_size=32, min_size=MIN_SIZE,
             paper=PAPERS[_arch["version"]])(
        size_checked(functools.partial(build_mobilenet, name=_name, **_arch), name=_name,
                     min_size=MIN_SIZE)
    )
