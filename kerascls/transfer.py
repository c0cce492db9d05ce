"""Transfer learning: ImageNet weights from ``keras.applications`` files, and backbone freezing.

The zoo's networks for the families ``keras.applications`` ships follow it layer for layer, so a
weights file for the reference network (the ``.h5`` files ``keras.applications`` downloads, with
or without the top, or a Keras 3 ``.weights.h5``) loads into them: :func:`load_pretrained`
builds the reference with ``weights=None``, loads the file into it, and copies its weights into
the model in graph order, checking every shape first. Nothing is downloaded.

:data:`REFERENCE_NORMALIZE` gives the ``normalize`` setting that reproduces each reference's
own preprocessing (``caffe`` mode, BGR mean subtraction, has no equivalent; fine-tuning adapts).
"""

from __future__ import annotations

import dataclasses
import os

import keras
import numpy as np

from kerascls.errors import UserError
from kerascls.shapes import IMAGENET_STEM_MIN_SIZE

HEAD_NAMES = ("logits", "predictions")
HEAD_PREFIX = "head_"


@dataclasses.dataclass(frozen=True)
class Reference:
    """A ``keras.applications`` network our model mirrors.

    Attributes:
        constructor: attribute of ``keras.applications``.
        size: native input size.
        top_layers: weighted layers its ``include_top=True`` classifier adds.
        alphas: width multipliers it supports (MobileNets), tried when shapes do not match.
    """

    constructor: str
    size: int = 224
    top_layers: int = 1
    alphas: tuple[float, ...] = ()


_EFFICIENTNET_SIZES = (224, 240, 260, 300, 380, 456, 528, 600)
REFERENCES: dict[str, Reference] = {
    "vgg16": Reference("VGG16", top_layers=3),
    "vgg19": Reference("VGG19", top_layers=3),
    "resnet50": Reference("ResNet50"),
    "resnet101": Reference("ResNet101"),
    "resnet152": Reference("ResNet152"),
    "resnet50v2": Reference("ResNet50V2"),
    "resnet101v2": Reference("ResNet101V2"),
    "resnet152v2": Reference("ResNet152V2"),
    "inception_v3": Reference("InceptionV3", size=299),
    "densenet121": Reference("DenseNet121"),
    "densenet169": Reference("DenseNet169"),
    "densenet201": Reference("DenseNet201"),
    "mobilenet_v1": Reference("MobileNet", alphas=(1.0, 0.75, 0.5, 0.25)),
    "mobilenet_v2": Reference("MobileNetV2", alphas=(1.0, 0.75, 0.5, 0.35, 1.3, 1.4)),
    "mobilenet_v3_small": Reference("MobileNetV3Small", top_layers=2, alphas=(1.0, 0.75)),
    "mobilenet_v3_large": Reference("MobileNetV3Large", top_layers=2, alphas=(1.0, 0.75)),
    **{f"efficientnet_b{i}": Reference(f"EfficientNetB{i}", size=s)
       for i, s in enumerate(_EFFICIENTNET_SIZES)},
}

# The ``normalize`` value equal to each reference's preprocess_input (None: the model holds it).
REFERENCE_NORMALIZE = {
    **{n: "unit" for n in ("resnet50v2", "resnet101v2", "resnet152v2", "inception_v3",
                           "mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small",
                           "mobilenet_v3_large")},
    **{n: "imagenet" for n in ("densenet121", "densenet169", "densenet201")},
    **{f"efficientnet_b{i}": None for i in range(8)},
}


def is_head(layer: keras.layers.Layer) -> bool:
    """Whether ``layer`` belongs to the classifier head (``logits``, ``head_*``, ``predictions``)."""
    return layer.name in HEAD_NAMES or layer.name.startswith(HEAD_PREFIX)


def set_backbone_trainable(model: keras.Model, trainable: bool) -> None:
    """Freeze (``False``) or unfreeze every layer except the head.

    A frozen ``BatchNormalization`` layer also runs in inference mode, so fine-tuning the head
    does not disturb the backbone's statistics.
    """
    for layer in model.layers:
        if not is_head(layer) and not isinstance(layer, keras.layers.InputLayer):
            layer.trainable = bool(trainable)


def _weighted(layers_) -> list:
    return [layer for layer in layers_ if layer.weights]


def _build_reference(ref: Reference, include_top: bool, alpha: float | None):
    kwargs = {"weights": None, "include_top": include_top, "input_shape": (ref.size, ref.size, 3)}
    if alpha is not None:
        kwargs["alpha"] = alpha
    return getattr(keras.applications, ref.constructor)(**kwargs)


def _load_reference(ref: Reference, path: str, alpha: float | None):
    """The reference network with ``path`` loaded, trying with and without the top."""
    errors = []
    for include_top in (True, False):
        net = _build_reference(ref, include_top, alpha)
        try:
            net.load_weights(path)
        except Exception as exc:  # noqa: BLE001 - every failure becomes one reason below
            errors.append(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))
            continue
        return net, include_top
    raise UserError(f"--pretrained {path} is not a keras.applications.{ref.constructor} "
                    f"weights file: {errors[-1]}")


def _pair_backbone(model, net, include_top, ref):
    ours = _weighted(layer for layer in model.layers if not is_head(layer))
    theirs = _weighted(net.layers)
    top = theirs[len(theirs) - ref.top_layers:] if include_top else []
    if include_top:
        theirs = theirs[: len(theirs) - ref.top_layers]
    if not any(isinstance(layer, keras.layers.Normalization) for layer in ours):
        # Our model normalizes with its own `normalize` layer instead of the reference's.
        theirs = [layer for layer in theirs if not isinstance(layer, keras.layers.Normalization)]
    if len(ours) != len(theirs):
        return None, top, (f"the model has {len(ours)} layers with weights, "
                           f"{ref.constructor} has {len(theirs)}")
    for a, b in zip(ours, theirs):
        shapes_a = [tuple(w.shape) for w in a.weights]
        shapes_b = [tuple(w.shape) for w in b.weights]
        if shapes_a != shapes_b:
            return None, top, (f"layer '{a.name}' has weights {shapes_a}, the file's "
                               f"'{b.name}' has {shapes_b}")
    return list(zip(ours, theirs)), top, ""


def _copy_head(model, top) -> None:
    """Copy the reference classifier where its shapes fit ours; the rest stays fresh."""
    ours = _weighted(layer for layer in model.layers if is_head(layer))
    if len(ours) != len(top):
        return
    for a, b in zip(ours, top):
        values = [np.asarray(w) for w in b.get_weights()]
        if len(values) != len(a.weights):
            continue
        if all(v.size == int(np.prod(w.shape)) and np.squeeze(v).shape == tuple(
                d for d in w.shape if d != 1) for v, w in zip(values, a.weights)):
            a.set_weights([v.reshape(tuple(w.shape)) for v, w in zip(values, a.weights)])


def load_pretrained(model: keras.Model, path: str) -> None:
    """Load ImageNet weights from a ``keras.applications``-compatible file into ``model``.

    The backbone must match the reference exactly (build the model with the ImageNet stem:
    ``stem="imagenet"`` or an input of at least 128 px). The classifier is copied where its
    shapes fit (same number of classes, and for VGG the same input size); otherwise the new
    head keeps its fresh initialization.

    Args:
        model: a zoo model of a family ``keras.applications`` ships (see :data:`REFERENCES`).
        path: an ``.h5`` or ``.weights.h5`` file, with or without the top.

    Raises:
        UserError: the file is missing or is not weights of the reference network, the model
            has no ``keras.applications`` counterpart, or the shapes do not match.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"--pretrained: no such file: {path}")
    ref = REFERENCES.get(model.name)
    if ref is None:
        raise UserError(
            f"--pretrained: keras.applications ships no ImageNet weights for '{model.name}'. "
            f"Models that take them: {', '.join(sorted(REFERENCES))}"
        )
    reason = ""
    for alpha in ref.alphas or (None,):
        try:
            net, include_top = _load_reference(ref, path, alpha)
        except UserError as exc:
            reason = str(exc)
            continue
        pairs, top, reason = _pair_backbone(model, net, include_top, ref)
        if pairs is not None:
            break
    else:
        if reason.startswith("--pretrained"):
            raise UserError(reason)
        hint = ""
        if min(model.input_shape[1:3]) < IMAGENET_STEM_MIN_SIZE:
            hint = (f" (the small-input stem differs from ImageNet's: build the model with "
                    f"stem='imagenet' or an input of at least {IMAGENET_STEM_MIN_SIZE} px)")
        raise UserError(f"--pretrained {path} does not fit '{model.name}': {reason}{hint}")
    for ours, theirs in pairs:
        ours.set_weights(theirs.get_weights())
    _copy_head(model, top)
