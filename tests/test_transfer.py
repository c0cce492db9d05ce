"""Transfer learning: keras.applications weight files load into the zoo and give identical outputs."""

from __future__ import annotations

import gc

import h5py
import keras
import numpy as np
import pytest

from kerascls.errors import UserError
from kerascls.registry import build_model
from kerascls.transfer import (
    REFERENCE_NORMALIZE,
    REFERENCES,
    is_head,
    load_pretrained,
    set_backbone_trainable,
)


@pytest.fixture(autouse=True)
def _fresh_session():
    yield
    keras.backend.clear_session()
    gc.collect()


def _reference(name, size, **kwargs):
    """The keras.applications network with random weights and non-trivial batch-norm statistics."""
    ref = REFERENCES[name]
    if ref.constructor.startswith("MobileNetV3"):
        kwargs.setdefault("include_preprocessing", False)
    net = getattr(keras.applications, ref.constructor)(weights=None,
                                                       input_shape=(size, size, 3), **kwargs)
    rng = np.random.default_rng(1)
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32")
                               for w in layer.get_weights()])
        if isinstance(layer, keras.layers.Normalization):
            mean, variance, count = layer.get_weights()
            layer.set_weights([rng.uniform(0.3, 0.6, mean.shape).astype("float32"),
                               rng.uniform(0.04, 0.09, variance.shape).astype("float32"), count])
    return net


def _images(size, n=2):
    return np.random.default_rng(0).uniform(0, 255, (n, size, size, 3)).astype("float32")


def _run(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def _save_legacy_h5(net, path):
    """Write ``net``'s weights the way keras.applications' downloadable .h5 files are laid out."""
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, net)


# One network per family and block type (MobileNet v1 and v2 and VGG are covered below).
IDENTICAL = [("resnet50", 32), ("resnet50v2", 32), ("inception_v3", 75), ("densenet121", 32),
             ("mobilenet_v3_small", 32), ("efficientnet_b0", 32)]


@pytest.mark.parametrize("name,size", IDENTICAL)
def test_reference_weights_give_identical_outputs(name, size, tmp_path):
    """Same file, same images: our model and the keras.applications network agree.

    MobileNetV3 keeps its own input rescaling here, matched by ``REFERENCE_NORMALIZE``
    (``unit``); EfficientNet carries its normalization layer, loaded from the file.
    """
    holds_preprocessing = name in ("mobilenet_v3_small", "efficientnet_b0")
    normalize = REFERENCE_NORMALIZE[name] if holds_preprocessing else None
    extra = {"include_preprocessing": True} if name.startswith("mobilenet_v3") else {}
    net = _reference(name, size, **extra)
    path = tmp_path / f"{name}.weights.h5"
    net.save_weights(path)
    model = build_model(name, (size, size, 3), 1000, normalize=normalize, stem="imagenet")
    load_pretrained(model, str(path))
    x = _images(size)
    np.testing.assert_allclose(_run(model, x), _run(net, x), rtol=1e-5, atol=1e-7)


def test_legacy_h5_without_top_loads_backbone_and_keeps_a_fresh_head(tmp_path):
    """The layout of keras.applications' *_notop.h5 downloads, into a 5-class model."""
    net = _reference("mobilenet_v2", 32, include_top=False)
    path = tmp_path / "mobilenet_v2_notop.h5"
    _save_legacy_h5(net, path)
    model = build_model("mobilenet_v2", (32, 32, 3), 5, stem="imagenet")
    fresh_logits = model.get_layer("logits").get_weights()
    load_pretrained(model, str(path))
    features = keras.Model(model.input, model.get_layer("out_relu").output)
    x = _images(32)
    np.testing.assert_allclose(_run(features, x), _run(net, x), rtol=1e-5, atol=1e-6)
    for a, b in zip(model.get_layer("logits").get_weights(), fresh_logits):
        np.testing.assert_array_equal(a, b)


def test_new_number_of_classes_keeps_the_hidden_head_layers(tmp_path):
    """MobileNetV3's classifier has a hidden 1x1 layer: it is copied, the logits are not."""
    net = _reference("mobilenet_v3_small", 32)
    path = tmp_path / "v3.weights.h5"
    net.save_weights(path)
    model = build_model("mobilenet_v3_small", (32, 32, 3), 7, stem="imagenet")
    load_pretrained(model, str(path))
    kernel = net.get_layer("conv_2").get_weights()[0]
    np.testing.assert_array_equal(model.get_layer("head_fc").get_weights()[0],
                                  kernel.reshape(kernel.shape[-2:]))
    assert model.get_layer("logits").kernel.shape == (1024, 7)


def test_width_multiplier_is_found(tmp_path):
    net = _reference("mobilenet_v1", 32, alpha=0.5)
    path = tmp_path / "mobilenet_half.weights.h5"
    net.save_weights(path)
    model = build_model("mobilenet_v1", (32, 32, 3), 1000, alpha=0.5, stem="imagenet")
    load_pretrained(model, str(path))
    x = _images(32)
    np.testing.assert_allclose(_run(model, x), _run(net, x), rtol=1e-5, atol=1e-7)


def test_vgg_backbone_loads_at_a_small_input(tmp_path):
    """A 224x224 VGG16 file into a 32x32 model: the convolutions load, the fc layers cannot."""
    net = _reference("vgg16", 32, include_top=False)
    path = tmp_path / "vgg16_notop.weights.h5"
    net.save_weights(path)
    model = build_model("vgg16", (32, 32, 3), 10)
    load_pretrained(model, str(path))
    features = keras.Model(model.input, model.get_layer("block5_pool").output)
    x = _images(32)
    np.testing.assert_allclose(_run(features, x), _run(net, x), rtol=1e-5, atol=1e-5)


def test_errors_are_one_line_user_errors(tmp_path):
    model = build_model("resnet18", (32, 32, 3), 10)
    with pytest.raises(UserError, match="no such file"):
        load_pretrained(model, str(tmp_path / "missing.h5"))
    other = tmp_path / "other.weights.h5"
    _reference("mobilenet_v1", 32, include_top=False).save_weights(other)
    with pytest.raises(UserError, match="keras.applications ships no ImageNet weights for "
                                        "'resnet18'"):
        load_pretrained(model, str(other))
    with pytest.raises(UserError, match="is not a keras.applications.EfficientNetB0 weights"):
        load_pretrained(build_model("efficientnet_b0", (32, 32, 3), 10), str(other))
    resnet_file = tmp_path / "resnet50.weights.h5"
    _reference("resnet50", 32, include_top=False).save_weights(resnet_file)
    with pytest.raises(UserError) as info:
        load_pretrained(build_model("resnet50", (32, 32, 3), 10), str(resnet_file))
    message = str(info.value)
    assert "conv1_conv" in message and "stem='imagenet'" in message and "\n" not in message


def test_set_backbone_trainable():
    model = build_model("mobilenet_v3_small", (32, 32, 3), 4)
    set_backbone_trainable(model, False)
    trainable = {v.path.split("/")[0] for v in model.trainable_weights}
    assert trainable == {"head_fc", "logits"}
    assert all(not layer.trainable for layer in model.layers
               if layer.weights and not is_head(layer))
    set_backbone_trainable(model, True)
    assert len(model.trainable_weights) > 100


@pytest.mark.slow
def test_train_cli_pretrained_and_frozen_backbone(tmp_path):
    """``--pretrained`` through the training CLI: with one epoch, only the head phase trains,
    so the saved model's backbone is exactly the file's weights and its head has moved."""
    from conftest import train_run

    net = _reference("mobilenet_v3_small", 32)
    path = tmp_path / "v3.weights.h5"
    net.save_weights(path)
    run = train_run(tmp_path / "runs", "--dataset", "sentiment", "--num-examples", "48",
                    "--model", "mobilenet_v3_small", "--image-size", "32", "--epochs", "1",
                    "--batch-size", "16", "--formats", "", "--pretrained", str(path),
                    "--freeze-backbone", "true")
    trained = keras.saving.load_model(run / "model.keras")
    reference = build_model("mobilenet_v3_small", (32, 32, 3), 2, normalize="unit")
    load_pretrained(reference, str(path))
    backbone = [(a, b) for a, b in zip(trained.layers, reference.layers)
                if a.weights and not is_head(a)]
    assert len(backbone) > 50
    for a, b in backbone:
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_array_equal(wa, wb, err_msg=a.name)
    assert not np.array_equal(trained.get_layer("head_fc").get_weights()[0],
                              reference.get_layer("head_fc").get_weights()[0])
