"""MobileNetV4: the Universal Inverted Bottleneck and Mobile MQA (Qin et al. 2024).

Qin et al., "MobileNetV4: Universal Models for the Mobile Ecosystem", ECCV 2024,
https://arxiv.org/abs/2404.10518.

* The **Universal Inverted Bottleneck** (UIB, :func:`uib`) has an optional depthwise
  convolution before the 1x1 expansion (``start``), an optional one between expansion and
  projection (``mid``), and a linear 1x1 projection. Its four instances are the rows of the
  tables: ExtraDW (both depthwise convolutions), IB (the MobileNetV2 block: ``mid`` only),
  ConvNext-like (``start`` only) and FFN (neither). The stride sits on ``mid`` when there is one,
  otherwise on ``start``.
* The **fused IB** (:func:`fused_ib`) of the Medium and Large stems: a full kxk convolution that
  expands and strides, then a linear 1x1 projection.
* **Mobile MQA** (:func:`mobile_mqa`, hybrid variants): batch norm, multi-query attention whose
  heads share one key and one value projection, keys and values optionally downsampled by a
  stride-2 depthwise convolution with batch norm ("v2" in the tables), a 1x1 output projection,
  and a layer scale (:class:`LayerScale`, initialised to 1e-5, on every UIB and MQA block of the
  hybrids).
* The head: global average pooling, a bias-free 1x1 convolution (a Dense layer here, same
  weights) to 1280 with batch norm and the activation, dropout, the classifier.

Variants are the tables :data:`VARIANTS` (``conv_small``, ``conv_medium``, ``conv_large``,
``hybrid_medium`` with ReLU, ``hybrid_large`` with GELU), taken from the architecture tables of
the paper's appendix as timm (``pytorch-image-models``, ``timm/models/mobilenetv3.py``,
``_gen_mobilenet_v4``) encodes them; timm's ``mobilenetv4_*`` models are the reference for the
parameter counts. At 224x224 with 1000 classes the **trainable** parameters equal the sum of
``p.numel()`` over timm's ``model.parameters()``: 3,774,024 (conv_small); 9,715,512
(conv_medium); 32,590,864 (conv_large); 11,074,648 (hybrid_medium) and 37,764,624
(hybrid_large). Keras' ``count_params()`` also counts the batch-norm moving mean and variance,
which torch keeps as buffers: 25,088; 67,904; 149,552; 75,840 and 164,400 more, the sum of
timm's ``running_mean`` and ``running_var`` sizes. ``tests/test_mobilenet_v4.py`` checks both.
Padding is TensorFlow's ``same`` (as the paper's TensorFlow implementation) where timm pads
symmetrically; this changes no parameter count. :func:`kerascls.shapes.count_macs` counts the
convolutions and dense layers; the attention products of Mobile MQA (two matrix products per
block, weight-free) are not in it.

``alpha`` multiplies the channels of the stem and every block (rounded to multiples of 8, never
losing more than 10%); the 1280-unit head stays. With the CIFAR stem (inputs under 128 px) the
stem convolution and the first stride-2 block use stride 1, so a 32x32 input ends on a 4x4 map.
"""

from __future__ import annotations

import functools

import keras
from keras import layers, ops

from kerascls.errors import UserError
from kerascls.layers import assemble, make_divisible
from kerascls.registry import register
from kerascls.shapes import resolve_stem, size_checked

PAPER = ("Qin et al. 2024, MobileNetV4: Universal Models for the Mobile Ecosystem, "
         "arXiv:2404.10518")
BN_EPS = 1e-5
HEAD_UNITS = 1280
MIN_SIZE = 8  # total stride with the CIFAR stem

# Block rows, each with a repeat count n:
#   ("conv", n, kernel, stride, channels)                       conv-BN-act
#   ("fused", n, kernel, stride, expansion, channels)            fused IB
#   ("uib", n, start, mid, stride, expansion, channels)          UIB; a kernel of 0 = no conv
#   ("mqa", n, heads, key_dim, kv_stride, channels)              Mobile MQA, 3x3 KV downsampling
CONV_SMALL = (
    (("conv", 1, 3, 2, 32), ("conv", 1, 1, 1, 32)),
    (("conv", 1, 3, 2, 96), ("conv", 1, 1, 1, 64)),
    (("uib", 1, 5, 5, 2, 3, 96), ("uib", 4, 0, 3, 1, 2, 96), ("uib", 1, 3, 0, 1, 4, 96)),
    (("uib", 1, 3, 3, 2, 6, 128), ("uib", 1, 5, 5, 1, 4, 128), ("uib", 1, 0, 5, 1, 4, 128),
     ("uib", 1, 0, 5, 1, 3, 128), ("uib", 2, 0, 3, 1, 4, 128)),
    (("conv", 1, 1, 1, 960),),
)
CONV_MEDIUM = (
    (("fused", 1, 3, 2, 4, 48),),
    (("uib", 1, 3, 5, 2, 4, 80), ("uib", 1, 3, 3, 1, 2, 80)),
    (("uib", 1, 3, 5, 2, 6, 160), ("uib", 2, 3, 3, 1, 4, 160), ("uib", 1, 3, 5, 1, 4, 160),
     ("uib", 1, 3, 3, 1, 4, 160), ("uib", 1, 3, 0, 1, 4, 160), ("uib", 1, 0, 0, 1, 2, 160),
     ("uib", 1, 3, 0, 1, 4, 160)),
    (("uib", 1, 5, 5, 2, 6, 256), ("uib", 1, 5, 5, 1, 4, 256), ("uib", 2, 3, 5, 1, 4, 256),
     ("uib", 1, 0, 0, 1, 4, 256), ("uib", 1, 3, 0, 1, 4, 256), ("uib", 1, 3, 5, 1, 2, 256),
     ("uib", 1, 5, 5, 1, 4, 256), ("uib", 2, 0, 0, 1, 4, 256), ("uib", 1, 5, 0, 1, 2, 256)),
    (("conv", 1, 1, 1, 960),),
)
CONV_LARGE = (
    (("fused", 1, 3, 2, 4, 48),),
    (("uib", 1, 3, 5, 2, 4, 96), ("uib", 1, 3, 3, 1, 4, 96)),
    (("uib", 1, 3, 5, 2, 4, 192), ("uib", 3, 3, 3, 1, 4, 192), ("uib", 1, 3, 5, 1, 4, 192),
     ("uib", 5, 5, 3, 1, 4, 192), ("uib", 1, 3, 0, 1, 4, 192)),
    (("uib", 4, 5, 5, 2, 4, 512), ("uib", 1, 5, 0, 1, 4, 512), ("uib", 1, 5, 3, 1, 4, 512),
     ("uib", 2, 5, 0, 1, 4, 512), ("uib", 1, 5, 3, 1, 4, 512), ("uib", 1, 5, 5, 1, 4, 512),
     ("uib", 3, 5, 0, 1, 4, 512)),
    (("conv", 1, 1, 1, 960),),
)
_MQA_M2 = ("mqa", 1, 4, 64, 2, 160)
_MQA_M3 = ("mqa", 1, 4, 64, 1, 256)
HYBRID_MEDIUM = (
    (("fused", 1, 3, 2, 4, 48),),
    (("uib", 1, 3, 5, 2, 4, 80), ("uib", 1, 3, 3, 1, 2, 80)),
    (("uib", 1, 3, 5, 2, 6, 160), ("uib", 1, 0, 0, 1, 2, 160), ("uib", 1, 3, 3, 1, 4, 160),
     ("uib", 1, 3, 5, 1, 4, 160), _MQA_M2, ("uib", 1, 3, 3, 1, 4, 160), _MQA_M2,
     ("uib", 1, 3, 0, 1, 4, 160), _MQA_M2, ("uib", 1, 3, 3, 1, 4, 160), _MQA_M2,
     ("uib", 1, 3, 0, 1, 4, 160)),
    (("uib", 1, 5, 5, 2, 6, 256), ("uib", 1, 5, 5, 1, 4, 256), ("uib", 2, 3, 5, 1, 4, 256),
     ("uib", 1, 0, 0, 1, 2, 256), ("uib", 1, 3, 5, 1, 2, 256), ("uib", 1, 0, 0, 1, 2, 256),
     ("uib", 1, 0, 0, 1, 4, 256), _MQA_M3, ("uib", 1, 3, 0, 1, 4, 256), _MQA_M3,
     ("uib", 1, 5, 5, 1, 4, 256), _MQA_M3, ("uib", 1, 5, 0, 1, 4, 256), _MQA_M3,
     ("uib", 1, 5, 0, 1, 4, 256)),
    (("conv", 1, 1, 1, 960),),
)
_MQA_L2 = ("mqa", 1, 8, 48, 2, 192)
_MQA_L3 = ("mqa", 1, 8, 64, 1, 512)
HYBRID_LARGE = (
    (("fused", 1, 3, 2, 4, 48),),
    (("uib", 1, 3, 5, 2, 4, 96), ("uib", 1, 3, 3, 1, 4, 96)),
    (("uib", 1, 3, 5, 2, 4, 192), ("uib", 3, 3, 3, 1, 4, 192), ("uib", 1, 3, 5, 1, 4, 192),
     ("uib", 2, 5, 3, 1, 4, 192), _MQA_L2, ("uib", 1, 5, 3, 1, 4, 192), _MQA_L2,
     ("uib", 1, 5, 3, 1, 4, 192), _MQA_L2, ("uib", 1, 5, 3, 1, 4, 192), _MQA_L2,
     ("uib", 1, 3, 0, 1, 4, 192)),
    (("uib", 4, 5, 5, 2, 4, 512), ("uib", 1, 5, 0, 1, 4, 512), ("uib", 1, 5, 3, 1, 4, 512),
     ("uib", 2, 5, 0, 1, 4, 512), ("uib", 1, 5, 3, 1, 4, 512), ("uib", 1, 5, 5, 1, 4, 512),
     _MQA_L3, ("uib", 1, 5, 0, 1, 4, 512), _MQA_L3, ("uib", 1, 5, 0, 1, 4, 512), _MQA_L3,
     ("uib", 1, 5, 0, 1, 4, 512), _MQA_L3, ("uib", 1, 5, 0, 1, 4, 512)),
    (("conv", 1, 1, 1, 960),),
)

# name: block table, stem width, activation, layer scale on UIB and MQA blocks.
VARIANTS = {
    "mobilenet_v4_conv_small": dict(table=CONV_SMALL, stem_width=32, activation="relu",
                                    layer_scale=False),
    "mobilenet_v4_conv_medium": dict(table=CONV_MEDIUM, stem_width=32, activation="relu",
                                     layer_scale=False),
    "mobilenet_v4_conv_large": dict(table=CONV_LARGE, stem_width=24, activation="relu",
                                    layer_scale=False),
    "mobilenet_v4_hybrid_medium": dict(table=HYBRID_MEDIUM, stem_width=32, activation="relu",
                                       layer_scale=True),
    "mobilenet_v4_hybrid_large": dict(table=HYBRID_LARGE, stem_width=24, activation="gelu",
                                      layer_scale=True),
}
BLOCK_KINDS = ("conv", "fused", "uib", "mqa")


@keras.saving.register_keras_serializable(package="kerascls")
class LayerScale(layers.Layer):
    """Per-channel learned scale of a residual branch (Touvron et al. 2021, CaiT).

    Args:
        init_value: initial value of every channel's scale.
    """

    def __init__(self, init_value: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.init_value = float(init_value)

    def build(self, input_shape):
        self.gamma = self.add_weight(
            shape=(input_shape[-1],), name="gamma",
            initializer=keras.initializers.Constant(self.init_value))

    def call(self, x):
        return x * ops.cast(self.gamma, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "init_value": self.init_value}


@keras.saving.register_keras_serializable(package="kerascls")
class MultiQueryAttention(layers.Layer):
    """Scaled dot-product attention of ``heads`` queries against one shared key and value.

    Takes ``[q, k, v]`` feature maps: ``q`` of shape (B, H, W, heads * key_dim), ``k`` of
    (B, h, w, key_dim) and ``v`` of (B, h, w, value_dim); returns (B, H, W, heads * value_dim).
    The projections are ordinary 1x1 convolutions around this layer, so it has no weights.

    Args:
        heads: number of query heads.
        key_dim: channels per query head and of the shared key.
        value_dim: channels of the shared value (and of each head's output).
    """

    def __init__(self, heads: int, key_dim: int, value_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.heads = int(heads)
        self.key_dim = int(key_dim)
        self.value_dim = int(value_dim)

    def call(self, inputs):
        q, k, v = inputs
        height, width = q.shape[1], q.shape[2]
        q = ops.reshape(q, (-1, height * width, self.heads, self.key_dim))
        q = ops.transpose(q, (0, 2, 1, 3))                                # B, heads, L, key
        k = ops.reshape(k, (-1, 1, k.shape[1] * k.shape[2], self.key_dim))  # B, 1, P, key
        v = ops.reshape(v, (-1, 1, v.shape[1] * v.shape[2], self.value_dim))
        logits = ops.matmul(q * (self.key_dim ** -0.5), ops.transpose(k, (0, 1, 3, 2)))
        attn = ops.softmax(logits, axis=-1)                                # B, heads, L, P
        out = ops.matmul(attn, v)                                          # B, heads, L, value
        out = ops.transpose(out, (0, 2, 1, 3))
        return ops.reshape(out, (-1, height, width, self.heads * self.value_dim))

    def compute_output_shape(self, input_shapes):
        q = input_shapes[0]
        return (q[0], q[1], q[2], self.heads * self.value_dim)

    def get_config(self):
        return {**super().get_config(), "heads": self.heads, "key_dim": self.key_dim,
                "value_dim": self.value_dim}


def _bn(x, name):
    return layers.BatchNormalization(epsilon=BN_EPS, name=name)(x)


def _conv(x, filters, kernel, stride, name, *, activation, depthwise=False):
    """Bias-free (depthwise) convolution and batch norm, then ``activation`` if given."""
    if depthwise:
        x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False,
                                   name=f"{name}_dw")(x)
    else:
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                          name=f"{name}_conv")(x)
    x = _bn(x, f"{name}_bn")
    if activation:
        x = layers.Activation(activation, name=f"{name}_act")(x)
    return x


def _residual(inputs, x, stride, layer_scale, name):
    if layer_scale:
        x = LayerScale(1e-5, name=f"{name}_layer_scale")(x)
    if stride == 1 and inputs.shape[-1] == x.shape[-1]:
        x = layers.Add(name=f"{name}_add")([inputs, x])
    return x


def fused_ib(x, *, kernel, stride, expansion, filters, activation, name):
    """Fused inverted bottleneck: kxk expanding convolution (strided), linear 1x1 projection."""
    inputs = x
    x = _conv(x, make_divisible(x.shape[-1] * expansion), kernel, stride, f"{name}_expand",
              activation=activation)
    x = _conv(x, filters, 1, 1, f"{name}_project", activation=None)
    return _residual(inputs, x, stride, False, name)


def uib(x, *, start, mid, stride, expansion, filters, activation, layer_scale, name):
    """Universal Inverted Bottleneck: [dw start], 1x1 expand, [dw mid], 1x1 project.

    ``start`` and ``mid`` are depthwise kernel sizes, 0 for none: ExtraDW has both, IB only
    ``mid``, ConvNext only ``start``, FFN neither. The stride goes to ``mid`` when it exists.
    """
    if stride > 1 and not (start or mid):
        raise UserError(f"block {name}: a strided UIB needs a depthwise convolution")
    inputs = x
    if start:
        x = _conv(x, None, start, 1 if mid else stride, f"{name}_start", activation=None,
                  depthwise=True)
    x = _conv(x, make_divisible(inputs.shape[-1] * expansion), 1, 1, f"{name}_expand",
              activation=activation)
    if mid:
        x = _conv(x, None, mid, stride, f"{name}_mid", activation=activation, depthwise=True)
    x = _conv(x, filters, 1, 1, f"{name}_project", activation=None)
    return _residual(inputs, x, stride, layer_scale, name)


def mobile_mqa(x, *, heads, key_dim, kv_stride, filters, layer_scale, name):
    """Mobile MQA block: BN, multi-query attention with optional KV downsampling, residual."""
    inputs = x
    x = _bn(x, f"{name}_norm")
    q = layers.Conv2D(heads * key_dim, 1, use_bias=False, name=f"{name}_query")(x)
    kv = {}
    for part in ("key", "value"):
        y = x
        if kv_stride > 1:
            y = _conv(y, None, 3, kv_stride, f"{name}_{part}_down", activation=None,
                      depthwise=True)
        kv[part] = layers.Conv2D(key_dim, 1, use_bias=False, name=f"{name}_{part}")(y)
    x = MultiQueryAttention(heads, key_dim, key_dim, name=f"{name}_attention")(
        [q, kv["key"], kv["value"]])
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_output")(x)
    return _residual(inputs, x, 1, layer_scale, name)


def mobilenet_v4_features(x, *, table, stem_width, activation, layer_scale, alpha, stem):
    """Stem convolution and the block table's stages."""
    cifar = stem == "cifar"

    def width(c):
        return make_divisible(c * alpha)

    x = _conv(x, width(stem_width), 3, 1 if cifar else 2, "stem", activation=activation)
    first_stride2 = True
    for s, stage in enumerate(table):
        b = 0
        for row in stage:
            kind, repeats = row[0], row[1]
            for i in range(repeats):
                name = f"stage{s}_block{b}"
                b += 1
                if kind == "conv":
                    _, _, kernel, stride, filters = row
                elif kind == "fused":
                    _, _, kernel, stride, expansion, filters = row
                elif kind == "uib":
                    _, _, start, mid, stride, expansion, filters = row
                else:
                    _, _, heads, key_dim, kv_stride, filters = row
                    stride = 1
                stride = stride if i == 0 else 1
                if stride == 2 and cifar and first_stride2:
                    stride, first_stride2 = 1, False
                if kind == "conv":
                    x = _conv(x, width(filters), kernel, stride, name, activation=activation)
                elif kind == "fused":
                    x = fused_ib(x, kernel=kernel, stride=stride, expansion=expansion,
                                 filters=width(filters), activation=activation, name=name)
                elif kind == "uib":
                    x = uib(x, start=start, mid=mid, stride=stride, expansion=expansion,
                            filters=width(filters), activation=activation,
                            layer_scale=layer_scale, name=name)
                else:
                    x = mobile_mqa(x, heads=heads, key_dim=key_dim, kv_stride=kv_stride,
                                   filters=width(filters), layer_scale=layer_scale, name=name)
    return x


def v4_head(x, num_classes, *, activation, dropout, units=HEAD_UNITS):
    """Pool, bias-free 1280-unit layer with batch norm and the activation, dropout, logits."""
    x = layers.GlobalAveragePooling2D(name="head_pool")(x)
    x = layers.Dense(units, use_bias=False, name="head_fc")(x)
    x = layers.BatchNormalization(epsilon=BN_EPS, name="head_bn")(x)
    x = layers.Activation(activation, name="head_act")(x)
    if dropout:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    x = layers.Dense(num_classes, name="logits")(x)
    return layers.Activation("softmax", dtype="float32", name="predictions")(x)


def check_table(table) -> None:
    """Raise :class:`UserError` for a block table the builder cannot build."""
    sizes = {"conv": 5, "fused": 6, "uib": 7, "mqa": 6}
    for s, stage in enumerate(table):
        for row in stage:
            if not row or row[0] not in BLOCK_KINDS or len(row) != sizes[row[0]]:
                raise UserError(f"table stage {s}: each row must be one of "
                                f"(conv, n, kernel, stride, c), (fused, n, kernel, stride, e, c), "
                                f"(uib, n, start, mid, stride, e, c), "
                                f"(mqa, n, heads, key_dim, kv_stride, c). Received: {row}")
            if any(not isinstance(v, (int, float)) or v < 0 for v in row[1:]):
                raise UserError(f"table stage {s}: numbers must be non-negative. "
                                f"Received: {row}")


def build_mobilenet_v4(input_shape, num_classes, *, normalize=None, dropout=0.0, stem="auto",
                       name="mobilenet_v4_conv_small", table=CONV_SMALL, stem_width=32,
                       activation="relu", layer_scale=False, alpha=1.0):
    """Build a MobileNetV4.

    Args:
        input_shape: ``(H, W, 3)``.
        num_classes: number of classes.
        normalize: preprocessing inside the model (``imagenet``, ``unit``, ``none``) or None.
        dropout: dropout before the classifier.
        stem: ``auto``, ``cifar`` (stride-1 stem and first stride-2 block) or ``imagenet``.
        name: model name.
        table: stages of block rows (see :data:`CONV_SMALL` for the row formats).
        stem_width: filters of the stem convolution.
        activation: activation of every block and the head (``relu``, ``gelu``...).
        layer_scale: a learned per-channel scale (init 1e-5) on UIB and MQA branches.
        alpha: width multiplier of the stem and every block.
    """
    if not alpha > 0:
        raise UserError(f"alpha must be positive. Received: alpha={alpha}")
    check_table(table)
    stem = resolve_stem(stem, input_shape)
    backbone = functools.partial(mobilenet_v4_features, table=table, stem_width=stem_width,
                                 activation=activation, layer_scale=layer_scale, alpha=alpha,
                                 stem=stem)
    head = functools.partial(v4_head, num_classes=num_classes, activation=activation,
                             dropout=dropout)
    return assemble(name, input_shape, backbone, head, normalize=normalize,
                    num_classes=num_classes, dropout=dropout)


for _name, _arch in VARIANTS.items():
    register(_name, family="mobilenet_v4", default_size=32, min_size=MIN_SIZE, paper=PAPER)(
        size_checked(functools.partial(build_mobilenet_v4, name=_name, **_arch), name=_name,
                     min_size=MIN_SIZE)
    )
