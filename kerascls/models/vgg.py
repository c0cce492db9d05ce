"""VGG: very deep networks of stacked 3x3 convolutions (Simonyan & Zisserman 2015).

Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015, https://arxiv.org/abs/1409.1556. Configurations A, B, D and E of Table 1 are VGG-11,
-13, -16 and -19: five blocks of 3x3 convolutions (64, 128, 256, 512, 512 filters), each closed
by a 2x2 max pool, then the classifier.

* ImageNet stem (inputs of 128 px and more): the paper's classifier, flatten, fc-4096, fc-4096,
  fc-N. At 224x224 with 1000 classes VGG-16 and VGG-19 have exactly the parameters of
  ``keras.applications.VGG16/VGG19(weights=None)``: 138,357,544 and 143,667,240; VGG-11 and
  VGG-13 have torchvision's counts, 132,863,336 and 133,047,848.
* CIFAR stem (smaller inputs): the same convolutions with a global-average-pool and a single
  Dense layer, as the CIFAR ports of VGG do (the five pools leave a 1x1 map at 32x32).
* ``_bn`` variants put batch norm between each convolution and its ReLU, as torchvision's
  ``vgg*_bn``; their trainable parameters equal torchvision's counts (132,868,840, 133,053,736,
  138,365,992 and 143,678,248); Keras also counts the batch-norm moving statistics.
* ``vgg_mini``: the same design at the scale of 28x28 and 32x32 images (Fashion-MNIST, CIFAR):
  three blocks of two 3x3 convolutions with batch norm (32, 64, 128 filters), the CIFAR stem's
  global-average pool and one Dense layer; 290,090 parameters at 28x28x3 with 10 classes.
"""

from __future__ import annotations

import functools

from keras import layers

from kerascls.errors import UserError
from kerascls.layers import assemble
from kerascls.registry import register
from kerascls.shapes import resolve_stem, size_checked

PAPER = ("Simonyan & Zisserman 2015, Very Deep Convolutional Networks for Large-Scale Image "
         "Recognition, arXiv:1409.1556")
WIDTHS = (64, 128, 256, 512, 512)

# name: convolutions per block (Table 1: A = VGG-11, B = VGG-13, D = VGG-16, E = VGG-19).
DEPTHS = {
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}
VARIANTS = {
    **{name: dict(layers=d, batch_norm=False) for name, d in DEPTHS.items()},
    **{f"{name}_bn": dict(layers=d, batch_norm=True) for name, d in DEPTHS.items()},
}
MIN_SIZE = 32  # five 2x2 max pools with valid padding

# VGG-mini (see the module docstring)
MINI = dict(layers=(2, 2, 2), batch_norm=True, filters=(32, 64, 128))
MINI_MIN_SIZE = 8  # three 2x2 max pools


def vgg_features(x, depths, *, batch_norm: bool, widths=WIDTHS):
    """The convolution blocks; layer names follow ``keras.applications`` (block1_conv1...)."""
    for b, (n, width) in enumerate(zip(depths, widths), start=1):
        for i in range(1, n + 1):
            name = f"block{b}_conv{i}"
            if batch_norm:
                x = layers.Conv2D(width, 3, padding="same", name=name)(x)
                x = layers.BatchNormalization(epsilon=1e-5, name=f"block{b}_bn{i}")(x)
                x = layers.Activation("relu", name=f"block{b}_relu{i}")(x)
            else:
                x = layers.Conv2D(width, 3, padding="same", activation="relu", name=name)(x)
        x = layers.MaxPooling2D(2, strides=2, name=f"block{b}_pool")(x)
    return x


def fc_head(x, num_classes: int, *, dropout: float = 0.0, units: int = 4096):
    """The paper's classifier: flatten, two fc-4096 with ReLU (and dropout), fc-N, softmax."""
    x = layers.Flatten(name="head_flatten")(x)
    for i in (1, 2):
        x = layers.Dense(units, activation="relu", name=f"head_fc{i}")(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"head_dropout{i}")(x)
    x = layers.Dense(num_classes, name="logits")(x)
    return layers.Activation("softmax", dtype="float32", name="predictions")(x)


def build_vgg(input_shape, num_classes, *, normalize=None, dropout=0.0, stem="auto",
              name="vgg16", layers=DEPTHS["vgg16"], batch_norm=False, filters=WIDTHS):
    """Build a VGG network.

    Args:
        input_shape: ``(H, W, 3)``; at least 32x32.
        num_classes: number of classes.
        normalize: preprocessing inside the model (``imagenet``, ``unit``, ``none``) or None.
        dropout: dropout after each fc-4096 (ImageNet stem) or before the classifier (CIFAR).
        stem: ``auto``, ``cifar`` (GAP + Dense classifier) or ``imagenet`` (fc-4096 pair).
        name: model name.
        layers: 3x3 convolutions in each block (the paper's configurations have five blocks;
            every block ends with a 2x2 max pool, so the input needs 2^blocks pixels).
        batch_norm: batch norm after every convolution.
        filters: filters of each block's convolutions, one per block.
    """
    depths = tuple(int(n) for n in layers)
    if not depths or any(n < 1 for n in depths):
        raise UserError(f"layers must give at least one convolution for each block. "
                        f"Received: layers={tuple(layers)}")
    if len(filters) != len(depths) or any(int(f) < 1 for f in filters):
        raise UserError(f"filters must give a positive filter count for each of the "
                        f"{len(depths)} blocks. Received: filters={tuple(filters)}")
    stem = resolve_stem(stem, input_shape)
    head = None
    if stem == "imagenet":
        head = functools.partial(fc_head, num_classes=num_classes, dropout=dropout)
    return assemble(name, input_shape,
                    lambda x: vgg_features(x, depths, batch_norm=batch_norm,
                                           widths=tuple(int(f) for f in filters)), head,
                    normalize=normalize, num_classes=num_classes, dropout=dropout)


for _name, _arch in VARIANTS.items():
    register(_name, family="vgg", default_size=32, min_size=MIN_SIZE, paper=PAPER)(
        size_checked(functools.partial(build_vgg, name=_name, **_arch), name=_name,
                     min_size=MIN_SIZE)
    )
register("vgg_mini", family="vgg", default_size=32, min_size=MINI_MIN_SIZE,
         paper=PAPER + " (VGG-mini: the same blocks scaled down to 32-64-128 filters)")(
    size_checked(functools.partial(build_vgg, name="vgg_mini", stem="cifar", **MINI),
                 name="vgg_mini", min_size=MINI_MIN_SIZE)
)
