"""MobileNetV4: parameter parity with timm, the UIB instances, Mobile MQA, and TFLite conversion.

The harness (``tests/test_zoo.py``) builds, trains and saves every variant on TensorFlow, and
``conv_small`` and ``hybrid_medium`` on JAX and PyTorch; this file checks what is particular
to the family.
"""

from __future__ import annotations

import gc
import math

import keras
import numpy as np
import pytest

from kerascls.errors import UserError
from kerascls.models import mobilenet_v4 as M
from kerascls.registry import build_model

# timm's mobilenetv4_* at 224x224 with 1000 classes: sum of p.numel() over model.parameters(),
# and the sizes of the batch-norm running_mean and running_var buffers.
TIMM_COUNTS = {
    "mobilenet_v4_conv_small": (3_774_024, 25_088),
    "mobilenet_v4_conv_medium": (9_715_512, 67_904),
    "mobilenet_v4_conv_large": (32_590_864, 149_552),
    "mobilenet_v4_hybrid_medium": (11_074_648, 75_840),
    "mobilenet_v4_hybrid_large": (37_764_624, 164_400),
}


@pytest.fixture(autouse=True)
def _fresh_session():
    yield
    keras.backend.clear_session()
    gc.collect()


def _trainable(model) -> int:
    return sum(int(math.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.fullsize
@pytest.mark.parametrize("name", sorted(TIMM_COUNTS))
def test_parameters_equal_timm(name):
    trainable, bn_statistics = TIMM_COUNTS[name]
    model = build_model(name, (224, 224, 3), 1000)
    assert _trainable(model) == trainable
    assert model.count_params() == trainable + bn_statistics


def _layer_kinds(model, prefix):
    return {layer.name[len(prefix):] for layer in model.layers if layer.name.startswith(prefix)}


def test_uib_instances_follow_the_table():
    """conv_small's stage 2: ExtraDW (start + mid), IB (mid only), ConvNext (start only)."""
    model = build_model("mobilenet_v4_conv_small", (32, 32, 3), 10)
    extra_dw = _layer_kinds(model, "stage2_block0_")
    assert {"start_dw", "expand_conv", "mid_dw", "project_conv"} <= extra_dw
    assert model.get_layer("stage2_block0_start_dw").kernel_size == (5, 5)
    ib = _layer_kinds(model, "stage2_block1_")
    assert "mid_dw" in ib and "start_dw" not in ib and "add" in ib
    convnext = _layer_kinds(model, "stage2_block5_")
    assert "start_dw" in convnext and "mid_dw" not in convnext
    # conv_medium's stage 2 has an FFN (no depthwise convolution at all) as its sixth block.
    medium = build_model("mobilenet_v4_conv_medium", (32, 32, 3), 10)
    ffn = _layer_kinds(medium, "stage2_block6_")
    assert not {"start_dw", "mid_dw"} & ffn and {"expand_conv", "project_conv"} <= ffn
    # and a fused IB stem block: a 3x3 expanding convolution to 4 x 32 channels.
    fused = medium.get_layer("stage0_block0_expand_conv")
    assert fused.kernel_size == (3, 3) and fused.filters == 128


def test_cifar_stem_ends_on_a_4x4_map_and_imagenet_stem_strides_32():
    small = build_model("mobilenet_v4_hybrid_medium", (32, 32, 3), 10)
    assert tuple(small.get_layer("head_pool").input.shape[1:3]) == (4, 4)
    large = build_model("mobilenet_v4_conv_small", (128, 128, 3), 10)
    assert tuple(large.get_layer("head_pool").input.shape[1:3]) == (4, 4)


def test_multi_query_attention_matches_the_formula():
    rng = np.random.default_rng(0)
    heads, key_dim, value_dim = 2, 4, 3
    q = rng.normal(size=(2, 3, 3, heads * key_dim)).astype("float32")
    k = rng.normal(size=(2, 2, 2, key_dim)).astype("float32")
    v = rng.normal(size=(2, 2, 2, value_dim)).astype("float32")
    layer = M.MultiQueryAttention(heads, key_dim, value_dim)
    out = keras.ops.convert_to_numpy(layer([q, k, v]))
    assert out.shape == (2, 3, 3, heads * value_dim)
    for b in range(2):
        keys, values = k[b].reshape(4, key_dim), v[b].reshape(4, value_dim)
        for h in range(heads):
            query = q[b].reshape(9, heads, key_dim)[:, h]
            logits = query @ keys.T / math.sqrt(key_dim)
            weights = np.exp(logits - logits.max(-1, keepdims=True))
            weights /= weights.sum(-1, keepdims=True)
            expected = (weights @ values).reshape(3, 3, value_dim)
            np.testing.assert_allclose(out[b, ..., h * value_dim:(h + 1) * value_dim], expected,
                                       rtol=1e-5, atol=1e-5)


def test_hybrid_blocks_have_shared_key_value_and_layer_scale():
    model = build_model("mobilenet_v4_hybrid_medium", (32, 32, 3), 10)
    mqa = [layer for layer in model.layers if isinstance(layer, M.MultiQueryAttention)]
    assert len(mqa) == 8 and {layer.heads for layer in mqa} == {4}
    assert model.get_layer("stage2_block4_key").filters == 64  # one key for the 4 heads
    assert model.get_layer("stage2_block4_key_down_dw").strides == (2, 2)
    assert "stage3_block8_key_down_dw" not in {layer.name for layer in model.layers}
    scales = [layer for layer in model.layers if isinstance(layer, M.LayerScale)]
    assert scales and all(np.allclose(keras.ops.convert_to_numpy(s.gamma), 1e-5)
                          for s in scales)
    conv = build_model("mobilenet_v4_conv_medium", (32, 32, 3), 10)
    assert not any(isinstance(layer, M.LayerScale) for layer in conv.layers)


def test_bad_tables_and_widths_are_refused():
    with pytest.raises(UserError, match="alpha must be positive"):
        build_model("mobilenet_v4_conv_small", (32, 32, 3), 10, alpha=0.0)
    with pytest.raises(UserError, match="each row must be one of"):
        build_model("mobilenet_v4_conv_small", (32, 32, 3), 10,
                    table=((("attention", 1, 3),),))
    with pytest.raises(UserError, match="strided UIB needs a depthwise"):
        build_model("mobilenet_v4_conv_small", (32, 32, 3), 10, stem="imagenet",
                    table=((("uib", 1, 0, 0, 2, 2, 16),),))


def test_tflite_float32_and_int8_with_attention():
    """hybrid_medium (Mobile MQA included) converts; float32 matches, int8 stays close."""
    from kerascls.export import tflite as T

    model = build_model("mobilenet_v4_hybrid_medium", (32, 32, 3), 3, normalize="unit")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    float_probs = T.predict(T.interpreter(model_content=T.convert(model, (32, 32, 3),
                                                                  "float32")), x)
    np.testing.assert_allclose(float_probs, expected, atol=1e-4)
    content = T.convert(model, (32, 32, 3), "int8", representative=x)
    it = T.interpreter(model_content=content)
    ops = {d["op_name"] for d in it._get_ops_details()}
    assert "BATCH_MATMUL" in ops and "SOFTMAX" in ops
    int8_probs = T.predict(it, x)
    assert int8_probs.shape == expected.shape and np.isfinite(int8_probs).all()
    assert np.abs(int8_probs - expected).max() < 0.1
