"""The Keras 3 Flipout layers (kerascls.bayes) checked against TensorFlow Probability's.

On the TensorFlow backend, with the same variable values in a TFP layer (built with the prior and
posterior of ``kerascls.engines.tfp``) and in the Keras 3 layer:

* the KL term equals TFP's to float32 rounding, layer by layer and for the whole bnn_cnn;
* the mean path (no weight noise) equals TFP's output with its kernel perturbation set to its mean;
* the stochastic outputs have the spread the posterior implies (as TFP's do), differ between
  identical examples of a batch (Flipout's per-example signs) and repeat under the same seed;
* the initial posterior follows the same scheme as TFP's (He-normal means, ``rho ~ N(-5, 0.1^2)``).

The bnn_cnn of Keras 3 layers saves and loads as a ``.keras`` file; on jax and torch (marker
``backends``, one subprocess per backend started with the module, running this file as a script)
it runs forward, Monte Carlo and mean-path prediction, a training step and a save/load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

NUM_CLASSES = 3
SIZE = 16
N_TRAIN = 50
OTHER_BACKENDS = ("jax", "torch")
JAX_XLA_FLAGS = " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _images(n, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, SIZE, SIZE, 3)).astype(np.float32)


def _labels(n, seed=0):
    return np.eye(NUM_CLASSES, dtype=np.float32)[np.random.default_rng(seed).integers(
        0, NUM_CLASSES, n)]


def build_keras_cnn(seed=None, **overrides):
    """The Keras 3 bnn_cnn at 16x16 (the layout of the registry's bnn_cnn)."""
    from kerascls.bayes import build_bnn

    kwargs = {"convs": ((6, 5), (16, 5)), "hidden": (120, 84), "normalize": "unit",
              "num_train_examples": N_TRAIN, "seed": seed, "name": "bnn_cnn", **overrides}
    return build_bnn((SIZE, SIZE, 3), NUM_CLASSES, **kwargs)


# --------------------------------------------------------------------------------------------
# the other backends (this file run as a script)


def backend_checks() -> dict:
    """Forward, Monte Carlo, mean path, seeds, one training step and ``.keras`` save/load."""
    import tempfile

    import keras

    from kerascls.bayes import kl_per_example, mean_path, predict_mc

    out = {"backend": keras.backend.backend()}
    x, y = _images(8), _labels(8)
    keras.utils.set_random_seed(3)
    model = build_keras_cnn(seed=7)
    keras.utils.set_random_seed(3)
    twin = build_keras_cnn(seed=7)
    np_ = keras.ops.convert_to_numpy
    first, again = np_(model(x)), np_(model(x))
    out["probs_shape"] = list(first.shape)
    out["probs_sum_error"] = float(np.abs(first.sum(-1) - 1).max())
    out["repeat_call_difference"] = float(np.abs(first - again).max())
    out["same_seed_difference"] = float(np.abs(first - np_(twin(x))).max())
    out["layer_losses_minus_kl"] = float(sum(float(np_(v)) for v in model.losses)
                                         - kl_per_example(model))
    with mean_path(model):
        out["mean_path_difference"] = float(np.abs(np_(model(x)) - np_(model(x))).max())
    mc = predict_mc(model, x, 3, batch_size=4)
    out["mc_shape"] = list(mc.shape)
    out["mc_pass_difference"] = float(np.abs(mc[0] - mc[1]).max())

    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="categorical_crossentropy")
    rho = lambda: np_(model.get_layer("conv1").kernel_untransformed_scale).copy()
    before = rho()
    kl = kl_per_example(model)
    loss = float(model.train_on_batch(x, y, return_dict=True)["loss"])
    out["loss"], out["kl"] = loss, kl
    out["rho_moved"] = float(np.abs(rho() - before).max())
    out["weights_finite"] = bool(all(np.isfinite(np_(w)).all() for w in model.weights))

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bnn.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
        with mean_path(model), mean_path(loaded):
            out["load_difference"] = float(np.abs(np_(model(x)) - np_(loaded(x))).max())
        out["load_kl_difference"] = abs(kl_per_example(loaded) - kl_per_example(model))
    return out


def _check_backend_result(r: dict) -> None:
    assert r["probs_shape"] == [8, NUM_CLASSES]
    assert r["probs_sum_error"] < 1e-5
    assert r["repeat_call_difference"] > 1e-4, "two calls drew the same weight noise"
    assert r["same_seed_difference"] < 1e-6, "the same seeds gave different outputs"
    assert abs(r["layer_losses_minus_kl"]) < 1e-3 * r["kl"]
    assert r["mean_path_difference"] == 0.0
    assert r["mc_shape"] == [3, 8, NUM_CLASSES]
    assert r["mc_pass_difference"] > 1e-4, "Monte Carlo passes are identical"
    # the loss is the negative ELBO: cross-entropy plus KL / N (KL / N is far above log 3 here)
    assert np.isfinite(r["loss"]) and r["loss"] > r["kl"] > 10
    assert r["rho_moved"] > 0, "the posterior scales did not train"
    assert r["weights_finite"]
    assert r["load_difference"] < 1e-5
    assert r["load_kl_difference"] < 1e-3


# --------------------------------------------------------------------------------------------
# TensorFlow: against TFP


def _tfp_layer(kind, *args, mean_path=False, prior_scale=1.0, kl_weight=1.0 / N_TRAIN, **kw):
    """A TFP Flipout layer with kerascls's prior / posterior / KL (``engines.tfp``)."""
    import tensorflow_probability as tfp

    from kerascls.engines import tfp as T

    options = T._variational_kwargs(prior_scale, kl_weight, -5.0)
    if mean_path:
        # the kernel perturbation's mean is zero: TFP's layer then computes x @ mu + b
        options["kernel_posterior_tensor_fn"] = lambda d: d.mean()
    cls = {"dense": tfp.layers.DenseFlipout, "conv": tfp.layers.Convolution2DFlipout}[kind]
    return cls(*args, **options, **kw)


def _random_posterior(shapes, seed):
    """Posterior values away from initialization: means, varied scales, non-zero biases."""
    rng = np.random.default_rng(seed)
    loc = rng.normal(0.0, 0.3, shapes[0]).astype(np.float32)
    rho = rng.normal(-3.0, 1.5, shapes[1]).astype(np.float32)
    bias = rng.normal(0.0, 0.5, shapes[2]).astype(np.float32)
    return [loc, rho, bias]


LAYERS = {
    # kind: (Keras 3 layer args, TFP layer args, input shape)
    "dense": ((37,), (37,), (6, 50)),
    "conv": ((7, 3), (7, 3), (6, 9, 9, 4)),
}


def _pair(kind, prior_scale=1.0, seed=0, activation="relu"):
    """Built TFP (mean path) and Keras 3 layers sharing random posterior values, and an input."""
    import keras

    from kerascls.bayes import Conv2DFlipout, DenseFlipout

    k_args, t_args, shape = LAYERS[kind]
    x = np.random.default_rng(seed + 1).normal(0, 1, shape).astype(np.float32)
    tfp_layer = _tfp_layer(kind, *t_args, mean_path=True, prior_scale=prior_scale,
                           activation=activation)
    tfp_layer(x)
    cls = DenseFlipout if kind == "dense" else Conv2DFlipout
    layer = cls(*k_args, activation=activation, prior_scale=prior_scale,
                kl_weight=1.0 / N_TRAIN, seed=seed)
    layer(x)
    values = _random_posterior([w.shape for w in tfp_layer.get_weights()], seed)
    tfp_layer.set_weights(values)
    layer.set_weights(values)
    assert [w.path.split("/")[-1] for w in layer.weights] == \
        ["kernel_loc", "kernel_untransformed_scale", "bias"]
    assert keras.backend.backend() == "tensorflow"
    return tfp_layer, layer, x


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("prior_scale", [1.0, 0.1])
def test_kl_and_mean_path_equal_tfp(kind, prior_scale):
    import keras

    tfp_layer, layer, x = _pair(kind, prior_scale)
    expected = tfp_layer(x).numpy()
    tfp_kl = float(tfp_layer.losses[-1].numpy())
    got = keras.ops.convert_to_numpy(layer(x, stochastic=False))
    kl = float(keras.ops.convert_to_numpy(layer.losses[-1]))
    assert kl == pytest.approx(float(keras.ops.convert_to_numpy(layer.kl_loss())), rel=1e-7)
    assert kl == pytest.approx(tfp_kl, rel=2e-6), (kl, tfp_kl)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # the noise does change the output, by more than the tolerance above
    assert np.abs(keras.ops.convert_to_numpy(layer(x)) - expected).max() > 1e-3


@pytest.mark.parametrize("kind", list(LAYERS))
def test_flipout_noise_has_the_posterior_spread(kind):
    """Over many draws each output's spread is the posterior's, as TFP's: std of x.(sigma*z).

    Before the activation, ``Var[y_j] = sum_i x_i^2 sigma_ij^2`` (signs square to one); the
    comparison uses the dense layer (for the convolution, the same sum over each patch).
    """
    import keras
    import tensorflow as tf

    tfp_layer, layer, x = _pair(kind, activation=None)
    tfp_noisy = _tfp_layer(kind, *LAYERS[kind][1])
    tfp_noisy(x)
    tfp_noisy.set_weights(tfp_layer.get_weights())
    draws = 150
    ours_fn, theirs_fn = tf.function(lambda: layer(x)), tf.function(lambda: tfp_noisy(x))
    ours = np.stack([keras.ops.convert_to_numpy(ours_fn()) for _ in range(draws)])
    theirs = np.stack([theirs_fn().numpy() for _ in range(draws)])
    _, rho, _ = layer.get_weights()
    sigma = np.logaddexp(0.0, rho) + np.finfo(np.float32).eps
    if kind == "dense":
        expected = np.sqrt(np.square(x) @ np.square(sigma))
    else:
        expected = tf.sqrt(tf.nn.conv2d(np.square(x), np.square(sigma), 1, "VALID")).numpy()
    for name, samples in (("keras", ours), ("tfp", theirs)):
        spread = samples.std(axis=0)
        ratio = np.median(spread / expected)
        assert 0.93 < ratio < 1.07, f"{name}: spread / expected = {ratio}"
    # means agree with the mean path within sampling error
    mean_path = keras.ops.convert_to_numpy(layer(x, stochastic=False))
    assert np.median(np.abs(ours.mean(0) - mean_path) / expected) < 4 / np.sqrt(draws)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_signs_decorrelate_examples_and_seeds_repeat(kind):
    """Identical examples in a batch get different perturbations, uncorrelated over draws (the
    Flipout signs, Wen et al. 2018); two layers with one seed draw the same noise."""
    import keras
    import tensorflow as tf

    from kerascls.bayes import Conv2DFlipout, DenseFlipout

    _, layer, x = _pair(kind, activation=None)
    batch = np.repeat(x[:1], 4, axis=0)
    mean = keras.ops.convert_to_numpy(layer(batch, stochastic=False))
    draw = tf.function(lambda: layer(batch))
    noise = np.stack([keras.ops.convert_to_numpy(draw()) - mean for _ in range(200)])
    assert np.abs(noise[0, 0] - noise[0, 1]).max() > 1e-3, "identical examples, same output"
    a, b = noise[:, 0].reshape(200, -1), noise[:, 1].reshape(200, -1)
    corr = (a * b).mean(0) / np.sqrt((a * a).mean(0) * (b * b).mean(0))
    assert abs(np.median(corr)) < 0.15, f"median correlation {np.median(corr)}"

    cls = DenseFlipout if kind == "dense" else Conv2DFlipout
    twin = cls.from_config(layer.get_config())
    twin(x)
    twin.set_weights(layer.get_weights())
    fresh = cls.from_config(layer.get_config())
    fresh(x)
    fresh.set_weights(layer.get_weights())
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(twin(x)),
                                  keras.ops.convert_to_numpy(fresh(x)))


def test_initial_posterior_follows_tfp():
    """He-normal means and ``rho ~ N(-5, 0.1^2)`` in both; zero biases."""
    import keras

    from kerascls.bayes import DenseFlipout

    x = np.zeros((1, 400), np.float32)
    tfp_layer = _tfp_layer("dense", 300)
    tfp_layer(x)
    layer = DenseFlipout(300, seed=0)
    layer(x)
    for ours, theirs in zip(layer.get_weights(), tfp_layer.get_weights()):
        assert ours.shape == theirs.shape
        assert ours.mean() == pytest.approx(theirs.mean(), abs=0.01)
        assert ours.std() == pytest.approx(theirs.std(), rel=0.02, abs=1e-6)
    assert layer.get_weights()[0].std() == pytest.approx(np.sqrt(2 / 400), rel=0.02)
    scale = keras.ops.convert_to_numpy(layer.kernel_scale())
    assert np.median(scale) == pytest.approx(np.logaddexp(0, -5.0), rel=0.02)


def _copy_tfp_to_keras(tfp_model, keras_model):
    for t_layer in tfp_model.layers:
        if t_layer.weights:
            keras_model.get_layer(t_layer.name).set_weights(t_layer.get_weights())


def test_bnn_cnn_matches_the_tfp_model():
    """Same layer names and shapes as the TFP bnn_cnn; with its weights, same KL per example and
    same mean-path probabilities; the Keras 3 model's layer losses are that KL."""
    import keras

    from kerascls.bayes import kl_per_example, mean_path, variational_layers
    from kerascls.engines import tfp as T

    tfp_model = T.build_bnn((SIZE, SIZE, 3), NUM_CLASSES, convs=((6, 5), (16, 5)),
                            hidden=(120, 84), normalize="unit", prior_scale=0.5,
                            num_train_examples=N_TRAIN, name="bnn_cnn")
    model = build_keras_cnn(prior_scale=0.5)
    assert [layer.name for layer in model.layers] == [layer.name for layer in tfp_model.layers]
    assert [layer.name for layer in variational_layers(model)] == \
        [layer.name for layer in T.variational_layers(tfp_model)]
    assert model.count_params() == tfp_model.count_params()
    rng = np.random.default_rng(5)
    for layer in T.variational_layers(tfp_model):
        layer.set_weights(_random_posterior([w.shape for w in layer.get_weights()],
                                            int(rng.integers(1 << 30))))
    _copy_tfp_to_keras(tfp_model, model)
    assert kl_per_example(model) == pytest.approx(T.kl_per_example(tfp_model), rel=2e-6)

    x = _images(6)
    for layer in T.variational_layers(tfp_model):
        layer.kernel_posterior_tensor_fn = lambda d: d.mean()
    expected = tfp_model(x).numpy()
    with mean_path(model):
        got = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    layer_losses = sum(float(keras.ops.convert_to_numpy(v)) for v in model.losses)
    assert layer_losses == pytest.approx(kl_per_example(model), rel=1e-6)


def test_save_load_round_trip(tmp_path):
    import keras

    from kerascls.bayes import Conv2DFlipout, DenseFlipout, kl_per_example, mean_path

    model = build_keras_cnn(seed=1, trunk="deterministic", dropout=0.2)
    for layer in (DenseFlipout(4, prior_scale=0.3, kl_weight=0.01, seed=2, name="d"),
                  Conv2DFlipout(4, (3, 2), strides=2, padding="same", seed=2, name="c")):
        again = type(layer).from_config(layer.get_config())
        assert again.get_config() == layer.get_config()
    path = tmp_path / "bnn.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    as_json = lambda c: json.loads(json.dumps(c, sort_keys=True))
    assert as_json(loaded.get_config()) == as_json(model.get_config())
    assert type(loaded.get_layer("logits")) is DenseFlipout
    x = _images(4)
    with mean_path(model), mean_path(loaded):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)),
                                   keras.ops.convert_to_numpy(model(x)), rtol=1e-6, atol=1e-7)
    assert kl_per_example(loaded) == pytest.approx(kl_per_example(model), rel=1e-7)
    assert loaded.get_layer("logits").stochastic  # mean_path restored the setting


def test_posterior_networks_are_draws_of_the_model():
    """Ensemble members with the posterior means reproduce the mean path; sampled members
    differ from each other and average near the Monte Carlo mean."""
    import keras

    from kerascls.bayes import (
        mean_path,
        posterior_ensemble_model,
        posterior_member,
        posterior_weights,
        predict_mc,
    )
    from kerascls.errors import UserError

    model = build_keras_cnn(seed=1, posterior_scale_init=-2.0)
    x = _images(5)
    with mean_path(model):
        mean = keras.ops.convert_to_numpy(model(x))
    means = posterior_ensemble_model(model, 2, sample=False)
    got = keras.ops.convert_to_numpy(means(x))
    assert got.shape == (5, 2, NUM_CLASSES)
    np.testing.assert_allclose(got[:, 1], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(
        posterior_member(model, sample=False)(x)), mean, rtol=1e-5, atol=1e-6)
    assert not any(type(layer).__name__.endswith("Flipout") for layer in means.layers)

    draws = 16
    members = keras.ops.convert_to_numpy(posterior_ensemble_model(model, draws, seed=0)(x))
    assert np.abs(members[:, 0] - members[:, 1]).max() > 1e-3
    mc = predict_mc(model, x, draws)
    # the two means estimate the same posterior predictive mean: within 5 standard errors
    error = np.sqrt((members.var(1) + mc.var(0)) / draws)
    np.testing.assert_array_less(np.abs(members.mean(1) - mc.mean(0)), 5 * error + 1e-3)
    a = posterior_weights(model, np.random.default_rng(0))
    b = posterior_weights(model, np.random.default_rng(0))
    assert set(a) == {"conv1", "conv2", "dense1", "dense2", "logits"}
    np.testing.assert_array_equal(a["logits"][0], b["logits"][0])
    with pytest.raises(UserError, match="members must be a positive integer"):
        posterior_ensemble_model(model, 0)
    with pytest.raises(UserError, match="--mc-samples must be a positive integer"):
        predict_mc(model, x, 0)


def test_bad_arguments():
    from kerascls.bayes import DenseFlipout, build_bnn
    from kerascls.errors import UserError

    with pytest.raises(UserError, match="--prior-scale must be positive"):
        build_bnn((16, 16, 3), 3, convs=(), hidden=(8,), prior_scale=0.0)
    with pytest.raises(UserError, match="--bnn-trunk must be one of flipout, deterministic"):
        build_bnn((16, 16, 3), 3, convs=((6, 5),), hidden=(8,), trunk="frozen")
    with pytest.raises(UserError, match="not both"):
        build_bnn((16, 16, 3), 3, convs=(), hidden=(8,), num_train_examples=10, kl_weight=0.1)
    with pytest.raises(ValueError, match="prior_scale must be positive"):
        DenseFlipout(3, prior_scale=-1.0)


# --------------------------------------------------------------------------------------------
# jax and torch


@pytest.fixture(scope="module", autouse=True)
def backend_processes(request, tmp_path_factory):
    """Start this file as a script on jax and torch when the module starts, if selected."""
    if not any(item.get_closest_marker("backends") for item in request.session.items
               if item.module.__name__ == __name__):
        yield {}
        return
    logs = tmp_path_factory.mktemp("flipout-backends")
    procs = {}
    for backend in OTHER_BACKENDS:
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
        if backend == "jax":
            env["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + JAX_XLA_FLAGS).strip()
        out = open(logs / f"{backend}.out", "w+")  # noqa: SIM115 - closed below
        err = open(logs / f"{backend}.err", "w+")  # noqa: SIM115 - closed below
        proc = subprocess.Popen([sys.executable, __file__], env=env, stdout=out, stderr=err,
                                text=True, cwd=Path(__file__).resolve().parents[1])
        procs[backend] = (proc, out, err)
    yield procs
    for proc, out, err in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()
        err.close()


@pytest.mark.backends
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_forward_and_training_step_on_backend(backend_processes, backend):
    proc, out, err = backend_processes[backend]
    proc.wait(timeout=600)
    out.seek(0)
    err.seek(0)
    lines = [line for line in out.read().splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, \
        f"{backend} (exit {proc.returncode}): {err.read().strip()[-1500:]}"
    result = json.loads(lines[-1])
    assert result["backend"] == backend
    _check_backend_result(result)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    print(json.dumps(backend_checks()), flush=True)
