"""Output sizes, MAC counts and input-size checks (kerascls.shapes), and the models CLI."""

from __future__ import annotations

import itertools

import keras
import pytest
from keras import layers

from kerascls.errors import UserError
from kerascls.models.__main__ import main as models_main
from kerascls.registry import build_model
from kerascls.shapes import (
    OUTPUT_SIZE_FORMULA,
    conv_output_size,
    count_macs,
    keras_output_size,
    keras_padding,
    macs_by_layer,
    resolve_stem,
)


def test_formula_on_the_labs_examples():
    # basic-image-classification: [1, 3, 32, 32] through a 3x3 conv, stride 1, no padding.
    assert conv_output_size(32, 3) == 30
    assert conv_output_size(32, 3, padding=1) == 32
    assert conv_output_size(224, 7, stride=2, padding=3) == 112
    assert conv_output_size(32, 3, dilation=2) == 28
    assert conv_output_size(8, 3, stride=2, padding=(0, 1)) == 4
    assert conv_output_size(4, 5) == 0


def _keras_size(layer, size):
    return layer.compute_output_shape((None, size, size, 4))[1]


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_formula_matches_keras_layers(padding):
    cases = 0
    for size, kernel, stride, dilation in itertools.product(range(1, 26), (1, 2, 3, 5, 7),
                                                            (1, 2, 3), (1, 2)):
        if dilation > 1 and stride > 1:
            continue  # Keras refuses strides and dilation together
        expected = keras_output_size(size, kernel, stride, padding, dilation)
        conv = layers.Conv2D(2, kernel, strides=stride, padding=padding, dilation_rate=dilation)
        depthwise = layers.DepthwiseConv2D(kernel, strides=stride, padding=padding,
                                           dilation_rate=dilation)
        pools = [] if dilation > 1 else [
            layers.MaxPooling2D(kernel, strides=stride, padding=padding),
            layers.AveragePooling2D(kernel, strides=stride, padding=padding),
        ]
        for layer in (conv, depthwise, *pools):
            if expected >= 1:
                assert _keras_size(layer, size) == expected, (layer, size, kernel, stride)
            else:
                with pytest.raises(ValueError):
                    _keras_size(layer, size)
            cases += 1
    assert cases > 1000


def test_explicit_padding_matches_zero_padding_then_valid():
    for size, kernel, stride, pad in itertools.product((5, 8, 13, 32), (3, 5, 7), (1, 2), (1, 3)):
        x = keras.Input((size, size, 1))
        y = layers.Conv2D(1, kernel, strides=stride)(layers.ZeroPadding2D(pad)(x))
        assert y.shape[1] == conv_output_size(size, kernel, stride, pad)


def test_same_padding_puts_the_odd_pixel_after():
    assert keras_padding(224, 3, 2, "same") == (0, 1)
    assert keras_padding(225, 3, 2, "same") == (1, 1)
    assert keras_padding(32, 7, 1, "same") == (3, 3)
    assert keras_padding(32, 3, 1, "valid") == (0, 0)
    with pytest.raises(ValueError, match="padding must be one of"):
        keras_padding(32, 3, 1, "full")


def test_macs_of_each_layer_kind():
    x = keras.Input((16, 16, 3))
    h = layers.Conv2D(8, 3, padding="same", name="conv")(x)                   # 16*16*9*3*8
    h = layers.DepthwiseConv2D(3, strides=2, padding="same", name="dw")(h)    # 8*8*9*8
    h = layers.SeparableConv2D(4, 3, padding="same", name="sep")(h)           # 8*8*(9*8+8*4)
    h = layers.Conv2D(8, 1, groups=2, name="grouped")(h)                      # 8*8*1*2*8
    h = layers.GlobalAveragePooling2D()(h)
    out = layers.Dense(5, name="dense")(h)                                    # 8*5
    model = keras.Model(x, out)
    expected = {"conv": 16 * 16 * 9 * 3 * 8, "dw": 8 * 8 * 9 * 8,
                "sep": 8 * 8 * (9 * 8 + 8 * 4), "grouped": 8 * 8 * 2 * 8, "dense": 8 * 5}
    assert dict(macs_by_layer(model)) == expected
    assert count_macs(model) == sum(expected.values())


@pytest.mark.fullsize
@pytest.mark.parametrize("name,size,published,source", [
    ("mobilenet_v1", 224, 569e6, "Howard et al. 2017, Table 8: 569M mult-adds"),
    ("mobilenet_v2", 224, 300e6, "Sandler et al. 2018, Table 4: 300M multiply-adds"),
    ("mobilenet_v3_large", 224, 219e6, "Howard et al. 2019, Table 3: 219M MAdds"),
    ("mobilenet_v3_small", 224, 56e6, "Howard et al. 2019, Table 4: 56M MAdds"),
    ("efficientnet_b0", 224, 0.39e9, "Tan & Le 2019, Table 2: 0.39B FLOPs"),
    ("resnet50", 224, 3.8e9, "He et al. 2016, Table 1: 3.8 x 10^9 FLOPs"),
    ("darknet53", 256, 18.7e9 / 2, "Redmon & Farhadi 2018, Table 2: 18.7 Bn operations"),
])
def test_macs_match_the_papers(name, size, published, source):
    macs = count_macs(build_model(name, (size, size, 3), 1000))
    assert abs(macs - published) / published < 0.02, f"{macs:,} vs {source}"


def test_resolve_stem():
    assert resolve_stem("auto", (32, 32, 3)) == "cifar"
    assert resolve_stem("auto", (224, 160, 3)) == "imagenet"
    assert resolve_stem("cifar", (224, 224, 3)) == "cifar"
    with pytest.raises(UserError, match="Received: stem=big"):
        resolve_stem("big", (32, 32, 3))


def test_too_small_input_names_the_layer_and_why():
    with pytest.raises(UserError) as info:
        build_model("vgg11", (16, 16, 3), 10)
    message = str(info.value)
    assert "'vgg11'" in message and "'block5_pool'" in message
    assert "receives a 1x1 map and would output 0x0" in message
    assert OUTPUT_SIZE_FORMULA in message and "32x32" in message
    assert "\n" not in message


def test_too_small_for_a_kernel():
    # A 5x5 kernel on a 4x4 map (the example), inside a model.
    def builder(input_shape, num_classes):
        x = keras.Input(input_shape)
        h = layers.Conv2D(4, 3, name="c3")(x)
        h = layers.Conv2D(4, 5, name="c5")(h)
        return keras.Model(x, layers.Dense(num_classes)(layers.Flatten()(h)))

    from kerascls.shapes import size_checked

    checked = size_checked(builder, name="toy", min_size=7)
    assert checked((7, 7, 3), 2).output_shape == (None, 2)
    with pytest.raises(UserError, match=r"layer 'c5' \(Conv2D, 5x5 window, stride 1, padding "
                                        r"valid\) receives a 4x4 map and would output 0x0"):
        checked((6, 6, 3), 2)


@pytest.mark.parametrize("name,min_size", [("vgg11", 32), ("inception_v3", 7),
                                           ("densenet_bc100", 4)])
def test_min_size_is_the_smallest_input(name, min_size):
    build_model(name, (min_size, min_size, 3), 10)
    keras.backend.clear_session()
    with pytest.raises(UserError, match=f"smallest input it takes is {min_size}x{min_size}"):
        build_model(name, (min_size - 1, min_size - 1, 3), 10)


def test_imagenet_stem_on_a_small_input_is_refused_clearly():
    with pytest.raises(UserError, match=r"input 32x32 is too small for 'inception_v3': layer "):
        build_model("inception_v3", (32, 32, 3), 10, stem="imagenet")


# ----------------------------------------------------------------------------- the models CLI


def test_cli_list(capsys):
    assert models_main(["list", "resnet*"]) == 0
    out = capsys.readouterr().out
    assert "resnet50v2" in out and "arXiv:1603.05027" in out and "vgg16" not in out


def test_cli_summary(capsys):
    assert models_main(["summary", "resnet20", "--num-classes", "10"]) == 0
    out = capsys.readouterr().out
    assert "conv4_block3_out" in out and "(None, 8, 8, 64)" in out
    assert "271,098 parameters (269,722 trainable)" in out


def test_cli_params_and_flops(capsys):
    assert models_main(["params", "mobilenet_v3_small", "lenet", "--image-size", "224",
                        "--num-classes", "1000"]) == 0
    out = capsys.readouterr().out
    assert "2554968" in out and "lenet" in out
    assert models_main(["flops", "mobilenet_v1", "--image-size", "224",
                        "--num-classes", "1000"]) == 0
    assert "568740352" in capsys.readouterr().out


def test_cli_errors_are_one_line(capsys):
    assert models_main(["summary", "resnt50"]) == 2
    assert "Did you mean: resnet50" in capsys.readouterr().err
    assert models_main(["summary", "vgg11", "--image-size", "16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "block5_pool" in err
    assert models_main(["flops", "nothing*"]) == 2
    assert "no model matches" in capsys.readouterr().err
    assert models_main(["params", "lenet", "--stem", "imagenet"]) == 2
    assert "no stem option" in capsys.readouterr().err
    assert models_main([]) == 2
    assert models_main(["summary", "lenet", "--image-size", "x"]) == 2
    assert "invalid int value" in capsys.readouterr().err
