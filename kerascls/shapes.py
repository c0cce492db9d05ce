"""Feature-map sizes, multiply-accumulate counts, and input-size checks.

The labs give the output size of a convolution or pooling layer as::

    H_out = floor((H + 2p - d(k - 1) - 1) / s) + 1

with input size ``H``, padding ``p`` on each side, dilation ``d``, kernel ``k`` and stride ``s``.
:func:`conv_output_size` is that formula; :func:`keras_padding` turns Keras' ``"valid"`` and
``"same"`` modes into explicit (before, after) padding so the same formula predicts what Keras
layers do. :func:`count_macs` counts multiply-accumulates per image, and :func:`size_checked`
wraps a model builder so that an input too small for some layer fails with a message naming that
layer instead of a shape error from deep inside Keras.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import keras

from kerascls.errors import UserError

OUTPUT_SIZE_FORMULA = "floor((H + 2p - d(k-1) - 1)/s) + 1"

# Inputs at least this large (the smaller side) get the ImageNet stem when ``stem="auto"``.
IMAGENET_STEM_MIN_SIZE = 128
STEMS = ("auto", "cifar", "imagenet")


def conv_output_size(size: int, kernel_size: int, stride: int = 1, padding=0,
                     dilation: int = 1) -> int:
    """Output length of a convolution or pooling window along one axis.

    Args:
        size: input length ``H``.
        kernel_size: window length ``k``.
        stride: step ``s``.
        padding: ``p`` added on each side, or a ``(before, after)`` pair for asymmetric padding.
        dilation: spacing ``d`` between window taps.

    Returns:
        ``floor((H + p_before + p_after - d(k-1) - 1)/s) + 1``; zero or negative when the window
        does not fit.

    Example:
        >>> conv_output_size(32, 3, stride=1, padding=0)
        30
        >>> conv_output_size(224, 7, stride=2, padding=3)
        112
    """
    before, after = (padding, padding) if isinstance(padding, int) else padding
    return (size + before + after - dilation * (kernel_size - 1) - 1) // stride + 1


def keras_padding(size: int, kernel_size: int, stride: int = 1, padding: str = "valid",
                  dilation: int = 1) -> tuple[int, int]:
    """The (before, after) zero padding a Keras layer applies for ``padding`` mode.

    ``"valid"`` pads nothing. ``"same"`` pads so that the output is ``ceil(H / s)``, putting the
    odd pixel after (TensorFlow's convention, which every Keras backend follows).
    """
    if padding == "valid":
        return (0, 0)
    if padding != "same":
        raise ValueError(f"padding must be one of valid, same. Received: padding={padding}")
    effective = dilation * (kernel_size - 1) + 1
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + effective - size, 0)
    return (total // 2, total - total // 2)


def keras_output_size(size: int, kernel_size: int, stride: int = 1, padding: str = "valid",
                      dilation: int = 1) -> int:
    """Output length of a Keras layer with ``padding="valid"|"same"``, via the labs' formula."""
    pad = keras_padding(size, kernel_size, stride, padding, dilation)
    return conv_output_size(size, kernel_size, stride, pad, dilation)


def resolve_stem(stem: str, input_shape: Sequence[int]) -> str:
    """``"cifar"`` or ``"imagenet"``: the stem a family uses for ``input_shape``.

    ``"auto"`` picks the CIFAR stem (no early downsampling) for inputs whose smaller side is
    under :data:`IMAGENET_STEM_MIN_SIZE` pixels and the ImageNet stem otherwise.
    """
    if stem not in STEMS:
        raise UserError(f"stem must be one of {', '.join(STEMS)}. Received: stem={stem}")
    if stem != "auto":
        return stem
    return "cifar" if min(input_shape[0], input_shape[1]) < IMAGENET_STEM_MIN_SIZE else "imagenet"


# --------------------------------------------------------------------------- multiply-accumulates


def _spatial(shape) -> int:
    return int(math.prod(int(d) for d in shape[1:-1]))


def _shape(tensor) -> tuple:
    return tuple(None if d is None else int(d) for d in tensor.shape)


def layer_macs(layer) -> int:
    """Multiply-accumulates one image costs in ``layer`` (convolutions and dense layers).

    Biases, batch norm, activations, pooling and element-wise ops are not counted, following
    the convention of the papers' "mult-adds" (MobileNet) and "FLOPs" (EfficientNet) tables.
    Layers are recognised by their attributes, so ``tf_keras`` and TFP layers (Flipout
    convolutions) count too.
    """
    kind = type(layer).__name__
    kernel = getattr(layer, "kernel_size", None)
    if kernel is not None and hasattr(layer, "filters") or "Depthwise" in kind:
        k = math.prod(kernel)
        out = _shape(layer.output)
        cin = _shape(layer.input)[-1]
        if "Separable" in kind:
            mid = cin * layer.depth_multiplier
            return _spatial(out) * (k * mid + mid * layer.filters)
        if "Depthwise" in kind:
            return _spatial(out) * k * out[-1]
        if "Transpose" in kind:
            return _spatial(_shape(layer.input)) * k * cin * layer.filters
        groups = getattr(layer, "groups", 1) or 1
        return _spatial(out) * k * (cin // groups) * layer.filters
    if "Dense" in kind and hasattr(layer, "units"):
        shape = _shape(layer.input)
        return math.prod(shape[1:-1]) * shape[-1] * layer.units
    return 0


def macs_by_layer(model: keras.Model) -> list[tuple[str, int]]:
    """``(layer name, MACs)`` for every layer of ``model`` that costs any, in graph order."""
    rows = []
    for layer in model.layers:
        if hasattr(layer, "layers") and layer is not model and hasattr(layer, "inputs"):
            rows.extend((f"{layer.name}/{n}", m) for n, m in macs_by_layer(layer))
            continue
        macs = layer_macs(layer)
        if macs:
            rows.append((layer.name, macs))
    return rows


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates ``model`` spends on one image (see :func:`layer_macs`)."""
    return sum(m for _, m in macs_by_layer(model))


# ------------------------------------------------------------------------------ input-size checks


def _window(layer) -> tuple | None:
    """(kernel, strides, padding, dilation) of a windowed layer, or None."""
    kernel = getattr(layer, "kernel_size", None) or getattr(layer, "pool_size", None)
    if kernel is None:
        return None
    strides = getattr(layer, "strides", None) or kernel
    dilation = getattr(layer, "dilation_rate", None) or (1, 1)
    return tuple(kernel), tuple(strides), getattr(layer, "padding", "valid"), tuple(dilation)


def _failing_layer(exc: BaseException):
    """The innermost Keras layer (not a model) in ``exc``'s traceback, with its input shape."""
    layer, shape = None, None
    tb = exc.__traceback__
    while tb is not None:
        frame_locals = tb.tb_frame.f_locals
        obj = frame_locals.get("self")
        if isinstance(obj, keras.layers.Layer) and not isinstance(obj, keras.Model):
            if obj is not layer:
                layer, shape = obj, None
            for key in ("input_shape", "arg"):
                candidate = frame_locals.get(key)
                if isinstance(candidate, (tuple, list)) and all(
                        d is None or isinstance(d, int) for d in candidate):
                    shape = tuple(candidate)
        tb = tb.tb_next
    return None if layer is None else (layer, shape)


def describe_too_small(layer, input_shape) -> str:
    """Why ``layer`` cannot take a map of ``input_shape``, with the output-size formula."""
    window = _window(layer)
    kind = type(layer).__name__
    if window is None or input_shape is None or len(input_shape) != 4:
        return f"layer '{layer.name}' ({kind}) cannot take its input {tuple(input_shape or ())}"
    kernel, strides, padding, dilation = window
    h, w = int(input_shape[1]), int(input_shape[2])
    oh = keras_output_size(h, kernel[0], strides[0], padding, dilation[0])
    ow = keras_output_size(w, kernel[1], strides[1], padding, dilation[1])
    return (
        f"layer '{layer.name}' ({kind}, {kernel[0]}x{kernel[1]} window, stride "
        f"{strides[0]}, padding {padding}) receives a {h}x{w} map and would output {oh}x{ow} "
        f"(output size = {OUTPUT_SIZE_FORMULA})"
    )


def check_feature_maps(model: keras.Model) -> None:
    """Raise :class:`UserError` naming the first layer whose output has an empty dimension."""
    for layer in model.layers:
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):
            continue
        if any(d is not None and int(d) <= 0 for d in shape[1:]):
            in_shape = getattr(layer.input, "shape", None)
            raise UserError(f"input of model '{model.name}' is too small: "
                            + describe_too_small(layer, in_shape))


def size_checked(builder: Callable[..., keras.Model], *, name: str, min_size: int):
    """Wrap ``builder`` so an input too small for the architecture fails with a clear message.

    The message names the model, the layer that cannot take its input (kind, window, stride,
    padding), the map it receives, the output the formula gives, and the smallest input the
    model accepts.
    """

    @functools.wraps(builder)
    def wrapper(input_shape, num_classes, **kwargs):
        input_shape = tuple(int(v) for v in input_shape)
        if len(input_shape) != 3 or min(input_shape) < 1:
            raise UserError(f"input_shape must be (height, width, channels) with positive sizes. "
                            f"Received: input_shape={input_shape}")
        if int(num_classes) < 1:
            raise UserError(f"num_classes must be at least 1. Received: num_classes={num_classes}")
        filtering = keras.config.is_traceback_filtering_enabled()
        keras.config.disable_traceback_filtering()
        try:
            model = builder(input_shape, num_classes, **kwargs)
        except ValueError as exc:
            if isinstance(exc, UserError):
                raise
            found = _failing_layer(exc)
            message = str(exc)
            if found is None or not ("negative" in message or "zero" in message):
                raise
            layer, shape = found
            raise UserError(
                f"input {input_shape[0]}x{input_shape[1]} is too small for '{name}': "
                f"{describe_too_small(layer, shape)}; the smallest input it takes is "
                f"{min_size}x{min_size}"
            ) from None
        finally:
            if filtering:
                keras.config.enable_traceback_filtering()
        check_feature_maps(model)
        return model

    return wrapper
