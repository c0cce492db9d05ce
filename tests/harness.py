"""The shared model harness: every registered Keras 3 model is checked the same way.

In the test process (TensorFlow backend) :func:`check_model` builds a model at a small size,
runs a forward pass (right shape, no NaN), a ``.keras`` save/load (the ``get_config`` /
``from_config`` round trip, matching outputs) and one training step.

Keras fixes its backend per process, so the other backends run this file as a script::

    KERAS_BACKEND=jax python tests/harness.py train-step
    KERAS_BACKEND=torch python tests/harness.py train-step resnet20 mobilenet_v2

which builds each model, runs one training step (finite loss, finite weights, moved logits)
and prints one JSON line per model (``{"model", "backend", "ok", "error", "seconds"}``).
"""

from __future__ import annotations

import gc
import json
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

NUM_CLASSES = 3
BATCH = 2


def zoo_models() -> list[str]:
    """Registered models built with Keras 3 (the tf_keras Bayesian models are tested apart)."""
    from kerascls.registry import get_spec, list_models

    return [n for n in list_models() if get_spec(n).engines == ("keras",)]


def _size_key(value) -> float:
    """Sum of the numbers in a builder option (depths, widths...): a proxy for model size."""
    if isinstance(value, (bool, str)):
        return 0.0
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (tuple, list)):
        return sum(_size_key(v) for v in value)
    return 0.0


def smallest_per_family(names) -> list[str]:
    """The smallest registered variant of each family (by the sizes in its builder options)."""
    from kerascls.registry import get_spec

    best: dict[str, tuple] = {}
    for name in names:
        spec = get_spec(name)
        builder = getattr(spec.builder, "__wrapped__", spec.builder)
        options = {k: v for k, v in getattr(builder, "keywords", {}).items() if k != "name"}
        key = (sum(_size_key(v) for v in options.values()), name)
        if spec.family not in best or key < best[spec.family]:
            best[spec.family] = key
    return sorted(name for _, name in best.values())


# Families whose variants differ in their blocks, not only in their tables: the other-backend
# steps run one variant per kind of block; KERASCLS_ALL_BACKEND_MODELS=1 lifts the limit.
BACKEND_VARIANTS = {
    "mobilenet_v4": ("mobilenet_v4_conv_small", "mobilenet_v4_hybrid_medium"),
    "resnet": ("resnet20", "resnet50", "resnet50v2"),  # CIFAR basic, bottleneck, pre-activation
    "mobilenet": ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small"),
    "inception": ("inception_v1", "inception_v3"),
}


def backend_models(backend: str, names) -> list[str]:
    """The models whose training step runs on ``backend`` in the backends test.

    A family's variants share their blocks (variants are data for one builder), so a training
    step per family proves the backend runs that family's code: both backends train the
    smallest model of each family (JAX compiles each model's whole step, 5-80 CPU-seconds per
    zoo model; the TensorFlow harness still checks every model). Families in
    :data:`BACKEND_VARIANTS` train the variants listed there. ``KERASCLS_ALL_BACKEND_MODELS=1``
    trains every model on both backends.
    """
    from kerascls.registry import get_spec

    if os.environ.get("KERASCLS_ALL_BACKEND_MODELS") == "1":
        return list(names)
    names = list(names)
    listed = [n for n in names if get_spec(n).family in BACKEND_VARIANTS]
    rest = [n for n in names if n not in listed]
    chosen = [n for n in listed if n in BACKEND_VARIANTS[get_spec(n).family]]
    return sorted(smallest_per_family(rest) + chosen)


def small_size(name: str) -> int:
    """The size the harness builds ``name`` at: its smallest accepted input."""
    from kerascls.registry import get_spec

    return get_spec(name).min_size


def build_small(name: str):
    """``(model, x, y)``: the model at its small size, a batch of images in 0..255 and labels."""
    import numpy as np

    from kerascls.registry import build_model

    size = small_size(name)
    model = build_model(name, (size, size, 3), NUM_CLASSES, normalize="unit")
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 255.0, (BATCH, size, size, 3)).astype("float32")
    y = np.eye(NUM_CLASSES, dtype="float32")[rng.integers(0, NUM_CLASSES, BATCH)]
    return model, x, y


def forward(model, x):
    """Inference-mode outputs as a NumPy array."""
    import keras

    return keras.ops.convert_to_numpy(model(x, training=False))


def check_forward(model, x) -> None:
    """Probabilities of the right shape, finite, summing to one, in float32."""
    import numpy as np

    probs = forward(model, x)
    assert probs.shape == (x.shape[0], NUM_CLASSES), probs.shape
    assert probs.dtype == np.float32, probs.dtype
    assert np.isfinite(probs).all(), "forward pass produced NaN or inf"
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-4)


def train_step(model, x, y) -> float:
    """One SGD step; returns the loss and checks that it is finite and the logits moved."""
    import keras
    import numpy as np

    # Eager on TensorFlow (tracing a 500-layer graph costs more than one eager step); compiled
    # on JAX, where eager execution compiles every operation separately.
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="categorical_crossentropy",
                  run_eagerly=keras.backend.backend() == "tensorflow")
    before = keras.ops.convert_to_numpy(model.get_layer("logits").kernel).copy()
    logs = model.train_on_batch(x, y, return_dict=True)
    loss = float(logs["loss"])
    assert math.isfinite(loss), f"training loss is {loss}"
    after = keras.ops.convert_to_numpy(model.get_layer("logits").kernel)
    assert not np.array_equal(before, after), "one training step left the logits unchanged"
    return loss


def _as_json(config):
    import json

    return json.loads(json.dumps(config, sort_keys=True))


def check_save_load(model, x, path) -> None:
    """``.keras`` save and load: the configuration round-trips and the outputs match.

    Loading rebuilds the model with ``keras.Model.from_config`` from the saved ``get_config()``,
    so comparing the configurations checks the config round trip without a third build.
    """
    import keras
    import numpy as np

    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    # JSON turns tuples (build shapes) into lists; compare what the file can hold.
    assert _as_json(loaded.get_config()) == _as_json(model.get_config()), \
        "get_config/from_config do not round-trip"
    assert [w.shape for w in loaded.weights] == [w.shape for w in model.weights]
    np.testing.assert_allclose(forward(loaded, x), forward(model, x), rtol=1e-5, atol=1e-6)


def check_weights_finite(model) -> None:
    import keras
    import numpy as np

    for w in model.weights:
        assert np.isfinite(keras.ops.convert_to_numpy(w)).all(), f"{w.path} is not finite"


def check_model(name: str, tmp_dir) -> None:
    """Every check, in the current process (TensorFlow in the test run).

    The training step comes last: at the harness's tiny input a batch-norm layer sees a 1x1 map
    of two images, so one step can move the weights far; the step is checked for a finite loss,
    finite weights and moved logits, not for sensible predictions afterwards.
    """
    model, x, y = build_small(name)
    check_forward(model, x)
    check_save_load(model, x, os.path.join(os.fspath(tmp_dir), f"{name}.keras"))
    train_step(model, x, y)
    check_weights_finite(model)


def run_train_steps(names) -> list[dict]:
    """Build and one training step per model on this process's backend."""
    import keras

    results = []
    for name in names:
        start = time.perf_counter()
        row = {"model": name, "backend": keras.backend.backend(), "ok": True, "error": ""}
        try:
            model, x, y = build_small(name)
            train_step(model, x, y)
            check_weights_finite(model)
            del model
        except Exception as exc:  # noqa: BLE001 - reported per model to the test
            row.update(ok=False, error=f"{type(exc).__name__}: {str(exc).strip()[:500]}")
        row["seconds"] = round(time.perf_counter() - start, 2)
        keras.backend.clear_session()
        gc.collect()
        print(json.dumps(row), flush=True)
        results.append(row)
    return results


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "train-step":
        print("usage: python tests/harness.py train-step [MODEL ...]", file=sys.stderr)
        return 2
    run_train_steps(argv[1:] or zoo_models())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
