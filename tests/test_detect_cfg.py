"""Darknet cfg reader, the registered YOLO models and Darknet ``.weights`` round trips."""

from __future__ import annotations

import numpy as np
import pytest

from kerascls.detect.cfg import parse_cfg, read_cfg, yolo_layers
from kerascls.detect.models import PARAMS_COCO_416
from kerascls.detect.weights import darknet_weight_count, load_darknet_weights, save_darknet_weights
from kerascls.errors import UserError
from kerascls.registry import build_model, get_spec, list_models

TINY_CFG = """[net]
width=64
height=64
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky

[convolutional]
filters=8
size=3
stride=1
pad=1
activation=leaky

[shortcut]
from=-2
activation=linear

[maxpool]
size=2
stride=2

[convolutional]
filters=14
size=1
stride=1
pad=1
activation=linear

[yolo]
mask=0,1
anchors=10,12, 30,20
classes=2
"""


def test_yolo_models_are_detectors_outside_the_classification_listing():
    assert list_models("yolo*") == []
    assert list_models("yolo*", task="detect") == ["yolov3", "yolov3_tiny"]
    assert get_spec("yolov3").task == "detect" and get_spec("resnet20").task == "classify"


@pytest.mark.parametrize("name", ["yolov3", "yolov3_tiny"])
def test_parameter_parity_with_darknet_at_416(name):
    """80 classes at 416x416: the floats of the official Darknet weights file, exactly.

    yolov3.weights is 248,007,048 bytes: a 20-byte header and 62,001,757 float32 values;
    yolov3-tiny.weights is 35,434,956 bytes: 8,858,734 values.
    """
    model = build_model(name, (416, 416, 3), 80)
    assert model.count_params() == PARAMS_COCO_416[name]
    assert darknet_weight_count(model) == PARAMS_COCO_416[name]
    strides = [416 // o.shape[1] for o in model.outputs]
    assert strides == ([32, 16, 8] if name == "yolov3" else [32, 16])
    assert all(o.shape[3:] == (3, 85) for o in model.outputs)
    masks = [[tuple(a) for a in lay.anchors] for lay in yolo_layers(model)]
    assert masks[0] == ([(116, 90), (156, 198), (373, 326)] if name == "yolov3"
                        else [(81, 82), (135, 169), (344, 319)])


def test_small_cfg_builds_the_layers_it_names(tmp_path):
    path = tmp_path / "small.cfg"
    path.write_text(TINY_CFG)
    model = build_model("yolov3_tiny", (64, 64, 3), 3)  # warm the registry
    from kerascls.detect.cfg import build_from_cfg

    model = build_from_cfg(read_cfg(path))
    assert model.input_shape == (None, 64, 64, 3)
    assert model.outputs[0].shape == (None, 16, 16, 2, 7)
    names = [lay.name for lay in model.layers]
    assert {"layer0_bn", "layer1_conv", "layer2_shortcut", "layer3_maxpool"} <= set(names)
    assert "layer1_bn" not in names  # no batch_normalize: a biased convolution
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    assert np.isfinite(np.asarray(model(x))).all()


@pytest.mark.parametrize("text, message", [
    (TINY_CFG.replace("[maxpool]", "[dropout]"), "small.cfg:25: unknown section [dropout]"),
    (TINY_CFG.replace("filters=14\n", ""),
     "small.cfg:29: [convolutional] is missing the key 'filters'"),
    (TINY_CFG.replace("size=1\n", "size=1\ndilation=2\n"), "small.cfg:32: unknown key 'dilation'"),
    (TINY_CFG.replace("filters=14", "filters=x"), "small.cfg:30: filters=x is not an integer"),
    (TINY_CFG.replace("from=-2", "from=5"), "small.cfg:22: [shortcut] from=5 refers to layer 5"),
    (TINY_CFG.replace("filters=14", "filters=12"), "has 12 filters; 2 anchors x (5 + 2 classes)"),
])
def test_bad_cfg_is_one_line_with_its_line_number(tmp_path, text, message):
    from kerascls.detect.cfg import build_from_cfg

    path = tmp_path / "small.cfg"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        build_from_cfg(read_cfg(path))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_input_size_must_fit_the_stride():
    with pytest.raises(UserError, match="not a multiple of 32"):
        build_model("yolov3_tiny", (100, 100, 3), 3)


def test_shipped_cfgs_parse_to_darknet_layer_counts():
    assert len(read_cfg("yolov3")) == 108 and len(read_cfg("yolov3-tiny.cfg")) == 25
    with pytest.raises(UserError, match="shipped cfgs: yolov3, yolov3-tiny"):
        read_cfg("yolov4")
    with pytest.raises(UserError, match="no \\[yolo\\] section"):
        parse_cfg("[net]\nwidth=32\n", "x.cfg")


def test_darknet_weights_round_trip_gives_identical_outputs(tmp_path):
    """Random weights (batch-norm statistics included) written, read into a fresh model."""
    anchors = [(8, 9), (14, 12), (20, 30), (30, 24), (40, 50), (60, 60)]
    a = build_model("yolov3_tiny", (64, 64, 3), 3, anchors=anchors)
    rng = np.random.default_rng(1)
    for w in a.weights:
        shape = tuple(w.shape)
        value = rng.uniform(0.5, 1.5, shape) if "variance" in w.path else rng.normal(0, 0.05, shape)
        w.assign(value.astype("float32"))
    path = save_darknet_weights(a, tmp_path / "tiny.weights", seen=1234)
    assert path.stat().st_size == 20 + 4 * darknet_weight_count(a)
    b = build_model("yolov3_tiny", (64, 64, 3), 3, anchors=anchors)
    header = load_darknet_weights(b, path)
    assert header == {"version": [0, 2, 0], "seen": 1234}
    x = rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    for ya, yb in zip(a(x, training=False), b(x, training=False)):
        np.testing.assert_array_equal(np.asarray(ya), np.asarray(yb))
    # Written again, the file is byte for byte the same.
    again = save_darknet_weights(b, tmp_path / "again.weights", seen=1234)
    assert again.read_bytes() == path.read_bytes()


def test_weights_of_another_size_are_refused_and_nothing_changes(tmp_path):
    model = build_model("yolov3_tiny", (64, 64, 3), 3)
    other = build_model("yolov3_tiny", (64, 64, 3), 4)
    path = save_darknet_weights(other, tmp_path / "four.weights")
    before = [np.asarray(w).copy() for w in model.weights]
    with pytest.raises(UserError, match="needs 8,6.*float32|holds .* float32 values") as err:
        load_darknet_weights(model, path)
    assert "\n" not in str(err.value) and "four.weights" in str(err.value)
    assert all(np.array_equal(b, np.asarray(w)) for b, w in zip(before, model.weights))
    short = tmp_path / "short.weights"
    short.write_bytes(b"\x00" * 10)
    with pytest.raises(UserError, match="too short for a Darknet header"):
        load_darknet_weights(model, short)
