"""The reference labs' small networks: the sentiment seed CNN, LeNet-5 and the Keras 64x64 CNN.

The three are described as layer tables (``ARCHITECTURES``) and built by one function.

* ``seed_cnn``: the visual-sentiment lab's CNN: conv 16@3x3 (same padding), ReLU, max-pool 2,
  flatten, dense.
* ``lenet``: LeCun et al. 1998, "Gradient-based learning applied to document recognition",
  as the CIFAR-10 baseline: conv 6@5x5, pool, conv 16@5x5, pool, fc 120, fc 84, fc N.
  At 32x32x3 with 10 classes it has 62,006 parameters.
* ``small_cnn``: the Keras 64x64 example: convs of 8, 16, 16, 24, 24 filters with max pooling,
  GAP, Dense 64, Dropout 0.5, Dense 16, Dropout 0.5, Dense N.
"""

from __future__ import annotations

import functools

from keras import layers

from kerascls.layers import assemble
from kerascls.registry import register

# Each row: ("conv", filters, kernel, padding) | ("pool", size) | ("flatten",) | ("gap",)
#           | ("dense", units) | ("dropout", rate)
ARCHITECTURES = {
    "seed_cnn": dict(
        layers=[("conv", 16, 3, "same"), ("pool", 2), ("flatten",)],
        default_size=8, min_size=2,
        paper="Visual-sentiment lab CNN (conv 16@3x3, ReLU, max-pool, fc)",
    ),
    "lenet": dict(
        layers=[("conv", 6, 5, "valid"), ("pool", 2), ("conv", 16, 5, "valid"), ("pool", 2),
                ("flatten",), ("dense", 120), ("dense", 84)],
        default_size=32, min_size=16,
        paper="LeCun et al. 1998, Gradient-based learning applied to document recognition",
    ),
    "small_cnn": dict(
        layers=[("conv", 8, 3, "same"), ("pool", 2), ("conv", 16, 3, "same"), ("pool", 2),
                ("conv", 16, 3, "same"), ("pool", 2), ("conv", 24, 3, "same"), ("pool", 2),
                ("conv", 24, 3, "same"), ("gap",), ("dense", 64), ("dropout", 0.5),
                ("dense", 16), ("dropout", 0.5)],
        default_size=64, min_size=16,
        paper="Keras small CNN example for 64x64 images",
    ),
}


def _stack(x, table, activation: str):
    counts: dict[str, int] = {}
    for row in table:
        kind = row[0]
        counts[kind] = counts.get(kind, 0) + 1
        name = f"{kind}{counts[kind]}"
        if kind == "conv":
            _, filters, kernel, padding = row
            x = layers.Conv2D(filters, kernel, padding=padding, activation=activation, name=name)(x)
        elif kind == "pool":
            x = layers.MaxPooling2D(row[1], name=name)(x)
        elif kind == "flatten":
            x = layers.Flatten(name=name)(x)
        elif kind == "gap":
            x = layers.GlobalAveragePooling2D(name=name)(x)
        elif kind == "dense":
            x = layers.Dense(row[1], activation=activation, name=name)(x)
        elif kind == "dropout":
            x = layers.Dropout(row[1], name=name)(x)
        else:  # pragma: no cover - table typo
            raise ValueError(f"unknown layer kind {kind!r}")
    return x


def build_classic(input_shape, num_classes, *, arch: str, normalize: str | None = None,
                  dropout: float = 0.0, activation: str = "relu"):
    """Build one of :data:`ARCHITECTURES` with a Dense-softmax output.

    Args:
        input_shape: ``(H, W, C)``.
        num_classes: number of classes.
        arch: key of :data:`ARCHITECTURES`.
        normalize: preprocessing inside the model (see :func:`kerascls.layers.preprocessing_layer`).
        dropout: extra dropout before the output layer.
        activation: hidden activation.
    """
    table = ARCHITECTURES[arch]["layers"]
    return assemble(
        arch, input_shape, lambda x: _stack(x, table, activation),
        normalize=normalize, num_classes=num_classes, dropout=dropout, pooling="flatten",
    )


for _name, _cfg in ARCHITECTURES.items():
    register(_name, family="classic", default_size=_cfg["default_size"],
             min_size=_cfg["min_size"], paper=_cfg["paper"])(
        functools.partial(build_classic, arch=_name)
    )
