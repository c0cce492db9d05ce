"""Shared building blocks: preprocessing, conv-BN-activation, squeeze-excite, drop-path, the head.

Every block is a function that takes a tensor and a ``name`` prefix and returns a tensor, so
layer names are deterministic (``f"{name}_conv"``) and weight loading and TFLite graphs stay
readable. Only ``keras`` and ``keras.ops`` are used, so blocks run on every Keras backend.
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops

NORMALIZATIONS = {
    # name: (mean, std) on the 0..1 scale; the model input is RGB 0..255.
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "unit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def preprocessing_layer(normalize: str, name: str = "normalize") -> keras.layers.Layer:
    """The normalization that lives inside every model: RGB 0..255 in, normalized out.

    ``imagenet`` gives (x/255 - mean)/std with the ImageNet statistics, ``unit`` gives
    (x/255 - 0.5)/0.5, and ``none`` only rescales to 0..1.
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(
            f"normalize must be one of {', '.join(NORMALIZATIONS)}. Received: normalize={normalize}"
        )
    mean, std = NORMALIZATIONS[normalize]
    return layers.Normalization(
        mean=[m * 255.0 for m in mean],
        variance=[(s * 255.0) ** 2 for s in std],
        name=name,
    )


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels to a multiple of ``divisor`` without dropping more than 10% (MobileNet)."""
    min_value = min_value or divisor
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth_coefficient: float) -> int:
    """EfficientNet's depth scaling: ceil(depth_coefficient * repeats)."""
    return int(math.ceil(depth_coefficient * repeats))


def conv_bn_act(
    x,
    filters: int,
    kernel_size=3,
    strides=1,
    *,
    name: str,
    activation: str | None = "relu",
    use_bias: bool = False,
    bn: bool = True,
    padding: str = "same",
    groups: int = 1,
    bn_epsilon: float = 1e-3,
    bn_momentum: float = 0.99,
):
    """Conv2D, then BatchNormalization, then the activation; layers named ``{name}_conv|bn|act``."""
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=use_bias,
        groups=groups,
        name=f"{name}_conv",
    )(x)
    if bn:
        x = layers.BatchNormalization(epsilon=bn_epsilon, momentum=bn_momentum, name=f"{name}_bn")(x)
    if activation:
        x = layers.Activation(activation, name=f"{name}_act")(x)
    return x


def squeeze_excite(x, filters_in: int, se_filters: int, *, name: str, activation="relu",
                   gate="sigmoid"):
    """Squeeze-and-excitation (Hu et al. 2018): GAP, reduce, expand, gate, rescale."""
    channels = x.shape[-1]
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_squeeze")(x)
    s = layers.Conv2D(se_filters, 1, activation=activation, name=f"{name}_reduce")(s)
    s = layers.Conv2D(channels, 1, activation=gate, name=f"{name}_expand")(s)
    return layers.Multiply(name=f"{name}_excite")([x, s])


@keras.saving.register_keras_serializable(package="kerascls")
class DropPath(layers.Layer):
    """Stochastic depth (Huang et al. 2016): drop the whole residual branch per example.

    Args:
        rate: probability of dropping the branch during training.
    """

    def __init__(self, rate: float = 0.0, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training or self.rate <= 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        mask = ops.floor(keep + keras.random.uniform(shape, seed=self.seed_generator, dtype=x.dtype))
        return x / keep * mask

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


def classifier_head(x, num_classes: int, *, dropout: float = 0.0, pooling: str = "avg",
                    name: str = "head"):
    """The head every family shares: global pooling, dropout, Dense, softmax in float32."""
    if len(x.shape) == 4:
        if pooling == "avg":
            x = layers.GlobalAveragePooling2D(name=f"{name}_pool")(x)
        elif pooling == "max":
            x = layers.GlobalMaxPooling2D(name=f"{name}_pool")(x)
        elif pooling == "flatten":
            x = layers.Flatten(name=f"{name}_flatten")(x)
        else:
            raise ValueError(f"pooling must be one of avg, max, flatten. Received: {pooling}")
    if dropout:
        x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    x = layers.Dense(num_classes, name="logits")(x)
    return layers.Activation("softmax", dtype="float32", name="predictions")(x)


def assemble(name: str, input_shape, backbone, head=None, *, normalize: str | None = None,
             num_classes: int = 10, dropout: float = 0.0, pooling: str = "avg"):
    """Input, optional normalization, backbone, head, as one flat functional model.

    Args:
        name: model name.
        input_shape: ``(H, W, C)``.
        backbone: ``backbone(x) -> features``.
        head: ``head(features) -> probabilities``; defaults to :func:`classifier_head`.
        normalize: a key of :data:`NORMALIZATIONS`, or None for no preprocessing layer
            (reference builds compared with ``keras.applications``).
    """
    inputs = keras.Input(shape=input_shape, name="pixels")
    x = preprocessing_layer(normalize)(inputs) if normalize else inputs
    features = backbone(x)
    if head is None:
        outputs = classifier_head(features, num_classes, dropout=dropout, pooling=pooling)
    else:
        outputs = head(features)
    return keras.Model(inputs, outputs, name=name)


@keras.saving.register_keras_serializable(package="kerascls")
class Temperature(layers.Layer):
    """Temperature scaling of probabilities: softmax(log(p) / T) (Guo et al. 2017).

    Applied after a model's softmax so that the calibrated model keeps the same input and output
    contract; ``T`` is fitted on the validation split and stored in ``metadata.json``.
    """

    def __init__(self, temperature: float = 1.0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.temperature = float(temperature)

    def call(self, probs):
        logp = ops.log(ops.clip(ops.cast(probs, "float32"), 1e-12, 1.0))
        return ops.softmax(logp / self.temperature, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}
