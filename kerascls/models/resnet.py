"""ResNet: residual learning, v1 (post-activation), v2 (pre-activation) and the CIFAR ResNets.

* He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
  https://arxiv.org/abs/1512.03385: ResNet-18/34 (basic blocks), ResNet-50/101/152 (bottleneck
  blocks), and the CIFAR-10 networks of section 4.2, ResNet-20/32/44/56/110: a 3x3 conv with 16
  filters, three stages of n basic blocks with 16, 32 and 64 filters (n = (depth - 2) / 6),
  global average pooling and a Dense layer, with parameter-free shortcuts (option A: stride-2
  subsampling and zero-padded channels).
* He, Zhang, Ren & Sun, "Identity Mappings in Deep Residual Networks", ECCV 2016,
  https://arxiv.org/abs/1603.05027: ResNet-50/101/152 v2 with pre-activation blocks.

Reference parameter counts (ImageNet stem, 224x224, 1000 classes, ``normalize=None``):

* ResNet-50/101/152 and ResNet-50/101/152 v2 equal ``keras.applications`` (``weights=None``):
  25,636,712; 44,707,176; 60,419,944; 25,613,800; 44,675,560; 60,380,648. The bottleneck
  networks follow ``keras.applications`` layer for layer (convolutions with biases, stride on
  the first 1x1 convolution), so its ImageNet weights load into them.
* ResNet-18/34 follow torchvision (no convolution biases, projection shortcuts); their trainable
  parameters equal torchvision's counts, 11,689,512 and 21,797,672 (Keras also counts the
  batch-norm moving statistics).
* ResNet-20/32/44/56/110 at 32x32 with 10 classes have 269,722; 464,154; 658,586; 853,018 and
  1,727,962 trainable parameters, the paper's 0.27M, 0.46M, 0.66M, 0.85M and 1.7M.

With the CIFAR stem (inputs under 128 px) the ImageNet networks start with a 3x3 stride-1
convolution and no max pool, as the common CIFAR ports do.
"""

from __future__ import annotations

import functools

import keras
from keras import layers, ops

from kerascls.errors import UserError
from kerascls.layers import assemble
from kerascls.registry import register
from kerascls.shapes import resolve_stem, size_checked

PAPER_V1 = "He et al. 2016, Deep Residual Learning for Image Recognition, arXiv:1512.03385"
PAPER_V2 = "He et al. 2016, Identity Mappings in Deep Residual Networks, arXiv:1603.05027"

KERAS_EPS = 1.001e-5  # keras.applications' batch-norm epsilon for ResNets
TORCH_EPS = 1e-5

# name: block type, blocks per stage, stage widths, paper, smallest input (CIFAR stem).
VARIANTS = {
    "resnet18": dict(block="basic", depths=(2, 2, 2, 2), widths=(64, 128, 256, 512)),
    "resnet34": dict(block="basic", depths=(3, 4, 6, 3), widths=(64, 128, 256, 512)),
    "resnet50": dict(block="bottleneck", depths=(3, 4, 6, 3), widths=(64, 128, 256, 512)),
    "resnet101": dict(block="bottleneck", depths=(3, 4, 23, 3), widths=(64, 128, 256, 512)),
    "resnet152": dict(block="bottleneck", depths=(3, 8, 36, 3), widths=(64, 128, 256, 512)),
    "resnet50v2": dict(block="preact", depths=(3, 4, 6, 3), widths=(64, 128, 256, 512)),
    "resnet101v2": dict(block="preact", depths=(3, 4, 23, 3), widths=(64, 128, 256, 512)),
    "resnet152v2": dict(block="preact", depths=(3, 8, 36, 3), widths=(64, 128, 256, 512)),
    **{
        f"resnet{depth}": dict(block="cifar", depths=((depth - 2) // 6,) * 3, widths=(16, 32, 64))
        for depth in (20, 32, 44, 56, 110)
    },
}
# Smallest input: the total stride with the CIFAR stem (the final map is then 1x1).
MIN_SIZE = {"basic": 8, "bottleneck": 8, "preact": 8, "cifar": 4}
PAPERS = {"basic": PAPER_V1, "bottleneck": PAPER_V1, "preact": PAPER_V2, "cifar": PAPER_V1}


@keras.saving.register_keras_serializable(package="kerascls")
class ShortcutA(layers.Layer):
    """The parameter-free shortcut of the CIFAR ResNets (option A): subsample, pad channels.

    Args:
        filters: output channels; the extra channels are zeros, split evenly on both sides.
        stride: spatial subsampling step.
    """

    def __init__(self, filters: int, stride: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.stride = int(stride)

    def call(self, x):
        if self.stride > 1:
            x = x[:, :: self.stride, :: self.stride, :]
        extra = self.filters - x.shape[-1]
        if extra > 0:
            x = ops.pad(x, [[0, 0], [0, 0], [0, 0], [extra // 2, extra - extra // 2]])
        return x

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        s = self.stride
        h = None if h is None else -(-h // s)
        w = None if w is None else -(-w // s)
        return (b, h, w, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "stride": self.stride}


def _bn(x, name, eps):
    return layers.BatchNormalization(epsilon=eps, name=name)(x)


def basic_block(x, filters, stride, name, *, eps=TORCH_EPS, use_bias=False, shortcut="conv"):
    """Two 3x3 convolutions with an identity or projection shortcut (post-activation)."""
    cin = x.shape[-1]
    if stride != 1 or cin != filters:
        if shortcut == "conv":
            sc = layers.Conv2D(filters, 1, strides=stride, use_bias=use_bias,
                               name=f"{name}_0_conv")(x)
            sc = _bn(sc, f"{name}_0_bn", eps)
        else:
            sc = ShortcutA(filters, stride, name=f"{name}_0_shortcut")(x)
    else:
        sc = x
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=use_bias,
                      name=f"{name}_1_conv")(x)
    y = _bn(y, f"{name}_1_bn", eps)
    y = layers.Activation("relu", name=f"{name}_1_relu")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=use_bias, name=f"{name}_2_conv")(y)
    y = _bn(y, f"{name}_2_bn", eps)
    y = layers.Add(name=f"{name}_add")([sc, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def bottleneck_block(x, filters, stride, name, *, conv_shortcut):
    """1x1, 3x3, 1x1 (x4 channels) bottleneck, as ``keras.applications`` ResNet v1."""
    if conv_shortcut:
        sc = layers.Conv2D(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(x)
        sc = _bn(sc, f"{name}_0_bn", KERAS_EPS)
    else:
        sc = x
    y = layers.Conv2D(filters, 1, strides=stride, name=f"{name}_1_conv")(x)
    y = _bn(y, f"{name}_1_bn", KERAS_EPS)
    y = layers.Activation("relu", name=f"{name}_1_relu")(y)
    y = layers.Conv2D(filters, 3, padding="same", name=f"{name}_2_conv")(y)
    y = _bn(y, f"{name}_2_bn", KERAS_EPS)
    y = layers.Activation("relu", name=f"{name}_2_relu")(y)
    y = layers.Conv2D(4 * filters, 1, name=f"{name}_3_conv")(y)
    y = _bn(y, f"{name}_3_bn", KERAS_EPS)
    y = layers.Add(name=f"{name}_add")([sc, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def preact_block(x, filters, stride, name, *, conv_shortcut):
    """Pre-activation bottleneck (v2): BN-ReLU first, stride on the 3x3 convolution."""
    pre = _bn(x, f"{name}_preact_bn", KERAS_EPS)
    pre = layers.Activation("relu", name=f"{name}_preact_relu")(pre)
    if conv_shortcut:
        sc = layers.Conv2D(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(pre)
    elif stride > 1:
        sc = layers.MaxPooling2D(1, strides=stride, name=f"{name}_0_pool")(x)
    else:
        sc = x
    y = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_1_conv")(pre)
    y = _bn(y, f"{name}_1_bn", KERAS_EPS)
    y = layers.Activation("relu", name=f"{name}_1_relu")(y)
    y = layers.ZeroPadding2D(1, name=f"{name}_2_pad")(y)
    y = layers.Conv2D(filters, 3, strides=stride, use_bias=False, name=f"{name}_2_conv")(y)
    y = _bn(y, f"{name}_2_bn", KERAS_EPS)
    y = layers.Activation("relu", name=f"{name}_2_relu")(y)
    y = layers.Conv2D(4 * filters, 1, name=f"{name}_3_conv")(y)
    return layers.Add(name=f"{name}_out")([sc, y])


def _stem(x, filters, *, stem, use_bias, eps, bn):
    """7x7/2 conv and 3x3/2 max pool (ImageNet) or a 3x3 stride-1 conv (CIFAR)."""
    if stem == "imagenet":
        x = layers.ZeroPadding2D(3, name="conv1_pad")(x)
        x = layers.Conv2D(filters, 7, strides=2, use_bias=use_bias, name="conv1_conv")(x)
    else:
        x = layers.Conv2D(filters, 3, padding="same", use_bias=use_bias, name="conv1_conv")(x)
    if bn:
        x = _bn(x, "conv1_bn", eps)
        x = layers.Activation("relu", name="conv1_relu")(x)
    if stem == "imagenet":
        x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
        x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    return x


def resnet_features(x, *, block, depths, widths, stem):
    """Stem and residual stages; layer names follow ``keras.applications`` (conv2_block1_1_conv)."""
    if block == "cifar":
        x = _stem(x, widths[0], stem=stem, use_bias=False, eps=TORCH_EPS, bn=True)
        for s, (n, w) in enumerate(zip(depths, widths)):
            for i in range(n):
                stride = 2 if s > 0 and i == 0 else 1
                x = basic_block(x, w, stride, f"conv{s + 2}_block{i + 1}", shortcut="zero_pad")
        return x
    if block == "basic":
        x = _stem(x, 64, stem=stem, use_bias=False, eps=TORCH_EPS, bn=True)
        for s, (n, w) in enumerate(zip(depths, widths)):
            for i in range(n):
                stride = 2 if s > 0 and i == 0 else 1
                x = basic_block(x, w, stride, f"conv{s + 2}_block{i + 1}")
        return x
    if block == "bottleneck":
        x = _stem(x, 64, stem=stem, use_bias=True, eps=KERAS_EPS, bn=True)
        for s, (n, w) in enumerate(zip(depths, widths)):
            for i in range(n):
                stride = 2 if s > 0 and i == 0 else 1
                x = bottleneck_block(x, w, stride, f"conv{s + 2}_block{i + 1}",
                                     conv_shortcut=i == 0)
        return x
    # preact (v2): the stride sits in the last block of every stage but the last.
    x = _stem(x, 64, stem=stem, use_bias=True, eps=KERAS_EPS, bn=False)
    for s, (n, w) in enumerate(zip(depths, widths)):
        for i in range(n):
            stride = 2 if i == n - 1 and s < len(depths) - 1 else 1
            x = preact_block(x, w, stride, f"conv{s + 2}_block{i + 1}", conv_shortcut=i == 0)
    x = _bn(x, "post_bn", KERAS_EPS)
    return layers.Activation("relu", name="post_relu")(x)


BLOCKS = ("basic", "bottleneck", "preact", "cifar")
# Layers per block and the stage depths of the published networks (the CIFAR ResNets take any
# depth 6n + 2).
STANDARD_DEPTHS = {
    "basic": {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)},
    "bottleneck": {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)},
    "preact": {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)},
}


def depths_for(block: str, depth: int, stages: int) -> tuple[int, ...]:
    """Blocks per stage that give a ResNet of ``depth`` weighted layers with ``block``.

    The CIFAR ResNets have ``depth = 6n + 2`` (n blocks in each of 3 stages); the ImageNet ones
    are the published depths of their block type.
    """
    if block == "cifar":
        if depth < 8 or (depth - 2) % (2 * stages):
            raise UserError(f"ResNet depth {depth} cannot be made from cifar blocks: it must be "
                            f"{2 * stages}n + 2 with n >= 1 (e.g. 20, 32, 44, 56, 110). "
                            f"Received: depth={depth}")
        return ((depth - 2) // (2 * stages),) * stages
    known = STANDARD_DEPTHS[block]
    if depth not in known:
        raise UserError(f"ResNet depth {depth} cannot be made from {block} blocks: it must be "
                        f"one of {', '.join(map(str, known))} (or set depths per stage). "
                        f"Received: depth={depth}")
    return known[depth]


def check_resnet_args(block, depths, widths) -> None:
    if block not in BLOCKS:
        raise UserError(f"block must be one of {', '.join(BLOCKS)}. Received: block={block}")
    if not depths or any(int(d) < 1 for d in depths):
        raise UserError(f"depths must list at least one stage of at least 1 block. "
                        f"Received: depths={tuple(depths)}")
    if len(widths) != len(depths) or any(int(w) < 1 for w in widths):
        raise UserError(f"widths must give a positive width for each of the {len(depths)} "
                        f"stages. Received: widths={tuple(widths)}")


def build_resnet(input_shape, num_classes, *, normalize=None, dropout=0.0, stem="auto",
                 name="resnet50", block="bottleneck", depths=(3, 4, 6, 3),
                 widths=(64, 128, 256, 512), depth=0):
    """Build a ResNet.

    Args:
        input_shape: ``(H, W, 3)``.
        num_classes: number of classes.
        normalize: preprocessing inside the model (``imagenet``, ``unit``, ``none``) or None.
        dropout: dropout before the classifier.
        stem: ``auto``, ``cifar`` (3x3 stride-1 conv) or ``imagenet`` (7x7/2 conv, max pool).
        name: model name.
        block: ``basic``, ``bottleneck``, ``preact`` (v2) or ``cifar`` (option-A shortcuts).
        depths: residual blocks per stage.
        widths: filters per stage (bottleneck blocks output four times as many).
        depth: total weighted layers; when not 0 it sets ``depths`` (6n + 2 for ``cifar``
            blocks with three stages, 18/34 for ``basic``, 50/101/152 for the bottlenecks).
    """
    if depth:
        if block not in BLOCKS:
            raise UserError(f"block must be one of {', '.join(BLOCKS)}. Received: block={block}")
        depths = depths_for(block, int(depth), len(widths))
    check_resnet_args(block, depths, widths)
    stem = resolve_stem(stem, input_shape)
    backbone = functools.partial(resnet_features, block=block, depths=tuple(depths),
                                 widths=tuple(widths), stem=stem)
    return assemble(name, input_shape, backbone, normalize=normalize, num_classes=num_classes,
                    dropout=dropout)


for _name, _arch in VARIANTS.items():
    _min = MIN_SIZE[_arch["block"]]
    register(_name, family="resnet", default_size=32, min_size=_min,
             paper=PAPERS[_arch["block"]])(
        size_checked(functools.partial(build_resnet, name=_name, **_arch), name=_name,
                     min_size=_min)
    )
