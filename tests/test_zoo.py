"""The architecture zoo: every model through the harness, and parameter counts against references.

* ``test_harness``: each registered Keras 3 model at its smallest input on TensorFlow (forward,
  training step, config round trip, ``.keras`` save/load).
* ``test_train_step_on_backend`` (marker ``backends``): one training step on PyTorch and on JAX
  for the smallest model of each family (variants share their family's blocks;
  ``KERASCLS_ALL_BACKEND_MODELS=1`` trains all of them), each backend in one subprocess looping
  over its models, started with the module so it runs beside the tests.
* ``fullsize`` tests: ImageNet-size parameter counts equal ``keras.applications`` (computed
  here) or the count the paper / torchvision / timm give.
"""

from __future__ import annotations

import gc
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from harness import backend_models, check_model, zoo_models

from kerascls.errors import UserError
from kerascls.registry import build_model, get_spec
from kerascls.transfer import REFERENCES

MODELS = zoo_models()
ZOO_FAMILIES = ("vgg", "resnet", "inception", "densenet", "mobilenet", "mobilenet_v4",
                "efficientnet", "darknet")
ZOO = [n for n in MODELS if get_spec(n).family in ZOO_FAMILIES]
HARNESS = Path(__file__).with_name("harness.py")
OTHER_BACKENDS = ("jax", "torch")
JAX_XLA_FLAGS = " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _trainable(model) -> int:
    return sum(int(math.prod(w.shape)) for w in model.trainable_weights)


@pytest.fixture(autouse=True)
def _fresh_session():
    yield
    keras.backend.clear_session()
    gc.collect()


# --------------------------------------------------------------------------------- the harness


@pytest.mark.parametrize("name", MODELS)
def test_harness(name, tmp_path):
    check_model(name, tmp_path)


@pytest.fixture(scope="module", autouse=True)
def backend_processes(request, tmp_path_factory):
    """Start the JAX and PyTorch train-step loops when the module starts, if they are selected.

    They run side by side with each other and with the TensorFlow harness tests; their results
    are collected by :func:`backend_results` at the end of the module.
    """
    if not any(item.get_closest_marker("backends") for item in request.session.items):
        yield {}
        return
    logs = tmp_path_factory.mktemp("backends")
    procs = {}
    for backend in OTHER_BACKENDS:
        out = open(logs / f"{backend}.out", "w+")  # noqa: SIM115 - closed below
        err = open(logs / f"{backend}.err", "w+")  # noqa: SIM115 - closed below
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
        if backend == "jax":
            # One training step compiles once; XLA's expensive optimizations would only slow it.
            env["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + JAX_XLA_FLAGS).strip()
        proc = subprocess.Popen([sys.executable, str(HARNESS), "train-step",
                                 *backend_models(backend, MODELS)], env=env,
                                stdout=out, stderr=err, text=True, cwd=HARNESS.parent.parent)
        procs[backend] = (proc, out, err)
    yield procs
    for proc, out, err in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()
        err.close()


@pytest.fixture(scope="module")
def backend_results(backend_processes):
    """``{backend: (rows by model, exit status, end of stderr)}`` once both loops finish."""
    results = {}
    for backend, (proc, out, err) in backend_processes.items():
        proc.wait(timeout=3600)
        out.seek(0)
        err.seek(0)
        rows = {}
        for line in out.read().splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                rows[row["model"]] = row
        results[backend] = (rows, proc.returncode, err.read().strip()[-1500:])
    return results


@pytest.mark.backends
@pytest.mark.parametrize("backend,name", [(b, n) for b in OTHER_BACKENDS
                                          for n in backend_models(b, MODELS)])
def test_train_step_on_backend(backend_results, backend, name):
    rows, returncode, stderr = backend_results[backend]
    assert name in rows, f"{backend} process (exit {returncode}) did not reach {name}: {stderr}"
    row = rows[name]
    assert row["backend"] == backend
    assert row["ok"], f"{name} on {backend}: {row['error']}"


# ------------------------------------------------------------------------- registry and stems


def test_every_family_registers_its_variants():
    expected = {
        "vgg": {f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")} | {"vgg_mini"},
        "resnet": {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet50v2",
                   "resnet101v2", "resnet152v2", "resnet20", "resnet32", "resnet44", "resnet56",
                   "resnet110"},
        "inception": {"inception_v1", "inception_v3", "inception_v4"},
        "densenet": {"densenet121", "densenet169", "densenet201", "densenet_bc100"},
        "mobilenet": {"mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small",
                      "mobilenet_v3_large"},
        "mobilenet_v4": {f"mobilenet_v4_{v}" for v in ("conv_small", "conv_medium", "conv_large",
                                                          "hybrid_medium", "hybrid_large")},
        "efficientnet": {f"efficientnet_b{i}" for i in range(8)},
        "darknet": {"darknet53"},
    }
    for family, names in expected.items():
        assert {n for n in ZOO if get_spec(n).family == family} == names
    for name in ZOO:
        spec = get_spec(name)
        assert spec.default_size == 32 and spec.engines == ("keras",)
        assert 1 <= spec.min_size <= 32 and "arXiv:" in spec.paper


def test_stem_follows_the_input_size_and_can_be_overridden():
    def first_kernel(model):
        return next(layer for layer in model.layers
                    if isinstance(layer, keras.layers.Conv2D)).kernel_size

    assert first_kernel(build_model("resnet18", (32, 32, 3), 10)) == (3, 3)
    assert first_kernel(build_model("resnet18", (128, 128, 3), 10)) == (7, 7)
    assert first_kernel(build_model("resnet18", (64, 64, 3), 10, stem="imagenet")) == (7, 7)
    with pytest.raises(UserError, match="stem must be one of"):
        build_model("resnet18", (32, 32, 3), 10, stem="tiny")


def test_cifar_stem_keeps_a_spatial_map_at_32():
    for name, side in (("resnet50", 4), ("mobilenet_v2", 4), ("efficientnet_b0", 4),
                       ("darknet53", 2), ("densenet121", 4)):
        model = build_model(name, (32, 32, 3), 10)
        pool = model.get_layer("head_pool")
        assert tuple(pool.input.shape[1:3]) == (side, side), name


def test_cifar_resnets_match_he_et_al():
    """Section 4.2: 0.27M, 0.46M, 0.66M, 0.85M and 1.7M parameters, shortcuts without any."""
    expected = {"resnet20": 269_722, "resnet32": 464_154, "resnet44": 658_586,
                "resnet56": 853_018, "resnet110": 1_727_962}
    for name, count in expected.items():
        model = build_model(name, (32, 32, 3), 10)
        assert _trainable(model) == count, name
        assert [layer.count_params() for layer in model.layers
                if type(layer).__name__ == "ShortcutA"] == [0, 0]


def test_densenet_bc100_matches_the_paper():
    """Table 2: DenseNet-BC (L=100, k=12), 0.8M parameters: 769,162 at 32x32, 10 classes."""
    assert _trainable(build_model("densenet_bc100", (32, 32, 3), 10)) == 769_162


def test_efficientnet_compound_scaling():
    from kerascls.models.efficientnet import COEFFICIENTS, compound_coefficients

    assert compound_coefficients(0.0) == (1.0, 1.0, 224)
    width, depth, resolution = compound_coefficients(1.0)
    assert (width, depth, resolution) == (1.1, 1.2, 256)
    # phi = 1 gives exactly B2's released width and depth.
    assert COEFFICIENTS["efficientnet_b2"][:2] == (width, depth)
    by_phi = build_model("efficientnet_b0", (32, 32, 3), 10, phi=1.0)
    b2 = build_model("efficientnet_b2", (32, 32, 3), 10)
    assert by_phi.count_params() == b2.count_params()
    # Stochastic depth grows linearly over the blocks, below the final rate of 0.2.
    rates = [layer.rate for layer in b2.layers if type(layer).__name__ == "DropPath"]
    assert rates == sorted(rates) and 0.0 < rates[0] and rates[-1] < 0.2
    with pytest.raises(UserError, match="phi"):
        build_model("efficientnet_b0", (32, 32, 3), 10, phi=-1.0)


def test_inception_v1_modules_have_their_reductions():
    model = build_model("inception_v1", (32, 32, 3), 10)
    layer = model.get_layer("inception3a_5x5_reduce_conv")
    assert layer.kernel_size == (1, 1) and layer.filters == 16
    assert model.get_layer("inception3a_concat").output.shape[-1] == 256
    assert model.get_layer("inception5b_concat").output.shape[-1] == 1024


# ------------------------------------------------------------------------- full-size references

# Models keras.applications lacks: (input size, trainable parameters with 1000 classes, source).
PAPER_COUNTS = {
    "vgg11": (224, 132_863_336, "torchvision vgg11"),
    "vgg13": (224, 133_047_848, "torchvision vgg13"),
    "vgg11_bn": (224, 132_868_840, "torchvision vgg11_bn"),
    "vgg13_bn": (224, 133_053_736, "torchvision vgg13_bn"),
    "vgg16_bn": (224, 138_365_992, "torchvision vgg16_bn"),
    "vgg19_bn": (224, 143_678_248, "torchvision vgg19_bn"),
    "resnet18": (224, 11_689_512, "torchvision resnet18"),
    "resnet34": (224, 21_797_672, "torchvision resnet34"),
    "inception_v4": (299, 42_679_816, "timm inception_v4"),
    "darknet53": (256, 41_609_928, "timm darknet53"),
}


@pytest.mark.fullsize
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_parameters_equal_keras_applications(name):
    ref = REFERENCES[name]
    shape = (ref.size, ref.size, 3)
    ours = build_model(name, shape, 1000).count_params()
    keras.backend.clear_session()
    theirs = getattr(keras.applications, ref.constructor)(weights=None, input_shape=shape)
    assert ours == theirs.count_params()


@pytest.mark.fullsize
@pytest.mark.parametrize("name", sorted(PAPER_COUNTS))
def test_parameters_equal_published_counts(name):
    size, count, source = PAPER_COUNTS[name]
    model = build_model(name, (size, size, 3), 1000)
    assert _trainable(model) == count, source


@pytest.mark.fullsize
def test_googlenet_matches_torchvision_with_its_3x3_branch():
    """torchvision's googlenet (6,624,904) uses 3x3 where the paper has 5x5."""
    paper = build_model("inception_v1", (224, 224, 3), 1000)
    torchvision = build_model("inception_v1", (224, 224, 3), 1000, kernel_5x5=3)
    assert _trainable(torchvision) == 6_624_904
    # Each module's 5x5 branch holds 16 more weights per (reduce, output) channel pair.
    from kerascls.models.inception import GOOGLENET

    extra = sum(16 * row[4] * row[5] for row in GOOGLENET if row != "pool")
    assert _trainable(paper) - _trainable(torchvision) == extra


def test_full_size_build_predicts_a_distribution():
    model = build_model("mobilenet_v3_small", (224, 224, 3), 1000, normalize="imagenet")
    x = np.random.default_rng(0).uniform(0, 255, (1, 224, 224, 3)).astype("float32")
    probs = keras.ops.convert_to_numpy(model(x, training=False))
    assert probs.shape == (1, 1000) and np.isclose(probs.sum(), 1.0, atol=1e-4)


# --------------------------------------------------------------------------------- docs/zoo.md


def test_zoo_table_has_one_row_per_model():
    """``docs/zoo.md`` (written by benchmarks/zoo.py) is complete and matches the registry."""
    root = Path(__file__).resolve().parent.parent
    table = (root / "docs" / "zoo.md").read_text()
    assert "Partial:" not in table
    rows = [line.split("|")[1].strip() for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| model ")]
    assert sorted(rows) == sorted(MODELS)
    data = json.loads((root / "docs" / "zoo.json").read_text())
    by_name = {r["model"]: r for r in data["rows"]}
    assert sorted(by_name) == sorted(MODELS)
    for name in ("resnet20", "mobilenet_v2"):
        row = by_name[name]
        assert row["params_32"] == build_model(name, (32, 32, 3), 10).count_params()
        assert row["macs_224"] > row["macs_32"] > 0 and row["train_ips_32"] > 0
