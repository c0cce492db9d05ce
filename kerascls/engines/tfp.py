"""The ``tfp`` engine: Bayesian networks from TensorFlow Probability's Flipout layers.

This module is the only place in kerascls that imports ``tensorflow_probability`` or ``tf_keras``:
TFP's variational layers are Keras 2 layers, so these Bayesian models are ``tf_keras`` models and
everything that touches them (building, training, saving, Monte Carlo prediction, the posterior
ensemble for TFLite) lives here, behind :class:`TfpEngine`. The rest of the package calls the
engine (:mod:`kerascls.engines`) and never asks what is inside.

The model (the visual-sentiment lab's BNN), layouts from :data:`kerascls.models.bayesian.VARIANTS`:

* prior ``p(w) = N(0, sigma^2)`` on every kernel weight (``prior_scale`` = sigma);
* mean-field Gaussian posterior ``q(w) = N(mu, softplus(rho)^2)`` per weight, biases are point
  estimates;
* Flipout estimates the expected log-likelihood with pseudo-independent weight perturbations
  per example (Wen et al. 2018);
* the training loss is the negative ELBO per example: the mean cross-entropy plus
  ``KL(q || p) / num_train_examples``.

Training shares the history CSV, the learning-rate rule and schedule, and the NaN stop with the
``keras`` engine (:mod:`kerascls.training`). Prediction draws ``S`` Monte Carlo forward passes
(fresh weights each pass). The TFLite export is a ``K``-member ensemble of deterministic
networks whose weights are posterior samples (:mod:`kerascls.export.montecarlo`).

A run directory of a TFP model holds ``bnn.weights.h5`` (the tf_keras weights) and ``bnn.json``
(the registry name and the builder arguments that rebuild the model).

References:
    Blundell et al. 2015, "Weight Uncertainty in Neural Networks".
    Wen et al. 2018, "Flipout: Efficient Pseudo-Independent Weight Perturbations on
    Mini-Batches".
"""

from __future__ import annotations

import functools
import logging
import math
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np

from kerascls.errors import UserError
from kerascls.bayes.models import check_arguments
from kerascls.engines.tfp_ensemble import PosteriorEnsemble, posterior_ensemble, variational_layers
from kerascls.export.montecarlo import ENSEMBLE_MEMBERS, ENSEMBLE_SEED
from kerascls.fileio import atomic_path, atomic_write_json, read_json
from kerascls.models.bayesian import VARIANTS
from kerascls.training.callbacks import nan_message, nan_stop
from kerascls.training.history import read_history, truncate_history
from kerascls.training.schedule import epoch_learning_rate, peak_learning_rate

log = logging.getLogger("kerascls.engines.tfp")

__all__ = ["BayesianPredictor", "PosteriorEnsemble", "TfpEngine", "build_bnn", "build_from_spec",
           "fit_run", "kl_per_example", "load_model", "load_predictor", "posterior_ensemble",
           "save_model", "variational_layers"]

WEIGHTS_FILE = "bnn.weights.h5"
BUILD_FILE = "bnn.json"


def _tf():
    import tensorflow as tf

    return tf


def _tfk():
    import tf_keras

    return tf_keras


def _tfp():
    import tensorflow_probability as tfp

    return tfp


# --------------------------------------------------------------------------------------------
# building


def _prior_fn(dtype, shape, name, trainable, add_variable_fn, *, scale: float):
    """The fixed prior ``N(0, scale^2)`` on every element of a kernel (TFP ``kernel_prior_fn``)."""
    tf, tfd = _tf(), _tfp().distributions
    normal = tfd.Normal(loc=tf.zeros(shape, dtype), scale=tf.cast(scale, dtype))
    return tfd.Independent(normal, reinterpreted_batch_ndims=len(shape))


def _scaled_kl(q, p, _, *, weight: float):
    """``KL(q || p) * weight``; with ``weight = 1 / N`` the layer losses sum to KL per example."""
    return _tfp().distributions.kl_divergence(q, p) * weight


def _variational_kwargs(prior_scale: float, kl_weight: float, posterior_scale_init: float):
    """Keyword arguments of a Flipout layer: prior, mean-field posterior, scaled KL."""
    tfk, tfp = _tfk(), _tfp()
    posterior = tfp.layers.default_mean_field_normal_fn(
        loc_initializer=tfk.initializers.HeNormal(),
        untransformed_scale_initializer=tfk.initializers.RandomNormal(
            mean=posterior_scale_init, stddev=0.1))
    return dict(
        kernel_prior_fn=functools.partial(_prior_fn, scale=prior_scale),
        kernel_posterior_fn=posterior,
        kernel_divergence_fn=functools.partial(_scaled_kl, weight=kl_weight),
        # point-estimate biases starting at zero
        bias_posterior_fn=tfp.layers.default_mean_field_normal_fn(
            is_singular=True, loc_initializer=tfk.initializers.Zeros()),
    )


def preprocessing_layer(normalize: str, name: str = "normalize"):
    """The tf_keras twin of :func:`kerascls.layers.preprocessing_layer` (RGB 0..255 in)."""
    from kerascls.layers import NORMALIZATIONS

    if normalize not in NORMALIZATIONS:
        raise ValueError(
            f"normalize must be one of {', '.join(NORMALIZATIONS)}. Received: normalize={normalize}"
        )
    mean, std = NORMALIZATIONS[normalize]
    return _tfk().layers.Normalization(
        mean=[m * 255.0 for m in mean], variance=[(s * 255.0) ** 2 for s in std], name=name)


def build_bnn(input_shape, num_classes: int, *, convs, hidden, normalize: str | None = None,
              trunk: str = "flipout", prior_scale: float = 1.0, num_train_examples: int = 1,
              posterior_scale_init: float = -5.0, dropout: float = 0.0,
              activation: str = "relu", name: str = "bnn"):
    """Build a Bayesian network of Flipout layers as a ``tf_keras`` model.

    Args:
        input_shape: ``(H, W, C)``; the input (``pixels``) is RGB float32 in 0..255.
        num_classes: number of classes; the output (``predictions``) is softmax probabilities.
        convs: ``(filters, kernel)`` per convolution (valid padding, ReLU, 2x2 max pooling).
        hidden: widths of the hidden DenseFlipout layers.
        normalize: normalization inside the model (``imagenet``, ``unit``, ``none``), or None.
        trunk: ``flipout`` (Bayesian convolutions) or ``deterministic`` (ordinary convolutions
            under the Bayesian head).
        prior_scale: standard deviation sigma of the ``N(0, sigma^2)`` weight prior.
        num_train_examples: the KL term is divided by this, so that the training loss is the
            negative ELBO per example.
        posterior_scale_init: initial ``rho`` of the posterior scale ``softplus(rho)``.
        dropout: dropout before the output layer.
        activation: hidden activation.
        name: model name.
    """
    check_arguments(convs=convs, trunk=trunk, prior_scale=prior_scale,
                    num_train_examples=num_train_examples, name=name)
    with warnings.catch_warnings():
        # TFP's variational layers call the deprecated ``add_variable``; nothing to act on.
        warnings.filterwarnings("ignore", message=".*add_variable.* is deprecated")
        return _build_layers(input_shape, num_classes, convs, hidden, normalize, trunk,
                             prior_scale, num_train_examples, posterior_scale_init, dropout,
                             activation, name)


def _build_layers(input_shape, num_classes, convs, hidden, normalize, trunk, prior_scale,
                  num_train_examples, posterior_scale_init, dropout, activation, name):
    tfk, tfp = _tfk(), _tfp()
    L = tfk.layers
    kw = lambda: _variational_kwargs(  # noqa: E731 - a fresh posterior initializer per layer
        float(prior_scale), 1.0 / int(num_train_examples), float(posterior_scale_init))
    inputs = tfk.Input(shape=tuple(input_shape), name="pixels")
    x = preprocessing_layer(normalize)(inputs) if normalize else inputs
    for i, (filters, kernel) in enumerate(convs, start=1):
        if trunk == "flipout":
            x = tfp.layers.Convolution2DFlipout(filters, kernel, activation=activation,
                                                name=f"conv{i}", **kw())(x)
        else:
            x = L.Conv2D(filters, kernel, activation=activation, kernel_initializer="he_normal",
                         name=f"conv{i}")(x)
        x = L.MaxPooling2D(2, name=f"pool{i}")(x)
    x = L.Flatten(name="flatten")(x)
    for i, units in enumerate(hidden, start=1):
        x = tfp.layers.DenseFlipout(units, activation=activation, name=f"dense{i}", **kw())(x)
    if dropout:
        x = L.Dropout(dropout, name="head_dropout")(x)
    x = tfp.layers.DenseFlipout(num_classes, name="logits", **kw())(x)
    outputs = L.Activation("softmax", dtype="float32", name="predictions")(x)
    return tfk.Model(inputs, outputs, name=name)


def kl_per_example(model) -> float:
    """The KL term of the loss, ``KL(q || p) / num_train_examples``, summed over the layers."""
    total = 0.0
    for layer in variational_layers(model):
        q, p = layer.kernel_posterior, layer.kernel_prior
        total += float(layer.kernel_divergence_fn(q, p, None))
    return total


# --------------------------------------------------------------------------------------------
# saving and loading


def build_from_spec(spec: dict):
    """The tf_keras model a ``bnn.json`` spec describes (registry name, shape, overrides)."""
    name = spec["model_name"]
    arch = VARIANTS[name]
    return build_bnn(tuple(spec["input_shape"]), int(spec["num_classes"]), convs=arch["convs"],
                     hidden=arch["hidden"], name=name, **spec["overrides"])


def save_model(model, run_dir: Path, spec: dict) -> None:
    """Write ``bnn.weights.h5`` and ``bnn.json`` (atomically, weights first)."""
    run_dir = Path(run_dir)
    with atomic_path(run_dir / WEIGHTS_FILE, suffix=".weights.h5") as tmp:
        model.save_weights(str(tmp))
    atomic_write_json(run_dir / BUILD_FILE, spec)


def load_model(run_dir: Path):
    """Rebuild the tf_keras model of a Bayesian run and load its weights."""
    run_dir = Path(run_dir)
    spec_path, weights = run_dir / BUILD_FILE, run_dir / WEIGHTS_FILE
    if not spec_path.is_file() or not weights.is_file():
        raise UserError(f"{run_dir} holds no Bayesian model ({BUILD_FILE} and {WEIGHTS_FILE})")
    try:
        spec = read_json(spec_path)
        model = build_from_spec(spec)
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{spec_path} is corrupt or not a kerascls build file ({exc})") from None
    try:
        model.load_weights(str(weights))
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"{weights} is corrupt or does not match {spec_path.name} ({first})") \
            from None
    return model, spec


# --------------------------------------------------------------------------------------------
# training


def _optimizer(t):
    """The tf_keras optimizer; its rate is set each epoch by :func:`epoch_learning_rate`."""
    tfk = _tfk()
    lr = peak_learning_rate(t)
    if t.optimizer == "adam":
        return tfk.optimizers.Adam(lr)
    if t.optimizer == "adamw":
        return tfk.optimizers.AdamW(lr, weight_decay=t.weight_decay or 0.004)
    return tfk.optimizers.SGD(lr, momentum=t.momentum, weight_decay=t.weight_decay or None)


def _best_weights_callback(model, run_dir: Path, spec: dict, best: float):
    """A tf_keras callback saving the model whenever ``val_loss`` improves on ``best``."""
    tfk = _tfk()

    class BestWeights(tfk.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best = best

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get("val_loss")
            if value is None or not math.isfinite(value) or value >= self.best:
                return
            self.best = float(value)
            save_model(model, run_dir, {**spec, "best_epoch": epoch + 1,
                                        "best_val_loss": self.best})

    return BestWeights()


def backup_epochs(backup: Path) -> int:
    """Epochs finished according to a tf_keras ``BackupAndRestore`` directory (0 if none)."""
    tf = _tf()
    ckpt = tf.train.latest_checkpoint(str(Path(backup) / "chief")) if Path(backup).is_dir() \
        else None
    if not ckpt:
        return 0
    for name, _ in tf.train.list_variables(ckpt):
        if name.startswith("ckpt_saved_epoch"):
            return int(tf.train.load_variable(ckpt, name)) + 1
    return 0


def check_backend(model_name: str) -> None:
    """Refuse to train a tf_keras model unless Keras runs on TensorFlow."""
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise UserError(f"{model_name} needs the tensorflow Keras backend; received "
                        f"KERAS_BACKEND={backend}")


def fit_run(cfg, splits, run_dir: Path) -> dict[str, list[float]]:
    """Train the Bayesian model ``cfg.model.model`` on ``splits`` into ``run_dir``.

    The loss is the negative ELBO per example (cross-entropy plus KL / number of training
    examples). The epoch with the lowest validation loss is saved as ``bnn.weights.h5`` and
    ``bnn.json``; the per-epoch log goes to ``history.csv`` and TensorBoard logs to ``logs/``. A
    run killed and started again resumes after its last finished epoch
    (``tf_keras.callbacks.BackupAndRestore`` in ``run_dir/backup``).

    Args:
        cfg: the resolved :class:`kerascls.config.Config`.
        splits: :class:`kerascls.data.DatasetSplits` at the model's input size.
        run_dir: the run directory.

    Returns:
        The history, ``{"loss": [...], "accuracy": [...], "val_loss": [...], ...}``, of every
        epoch, resumed ones included.
    """
    from kerascls.data.pipeline import class_weights, make_dataset, parse_augment

    name = cfg.model.model
    check_backend(name)
    if cfg.model.pretrained:
        raise UserError(f"--pretrained is not available for the Bayesian model {name}")
    if cfg.model.freeze_backbone:
        raise UserError(f"--freeze-backbone is not available for the Bayesian model {name}")
    tfk = _tfk()
    t = cfg.train
    run_dir = Path(run_dir)
    size = splits.image_size
    nc = splits.num_classes
    n_train = int(len(splits.x_train))
    tfk.utils.set_random_seed(t.seed)
    spec = {
        "model_name": name,
        "input_shape": [size, size, 3],
        "num_classes": nc,
        "overrides": {
            "normalize": cfg.data.normalize,
            "dropout": float(cfg.model.dropout),
            "prior_scale": float(cfg.model.prior_scale),
            "trunk": cfg.model.bnn_trunk,
            "num_train_examples": n_train,
        },
    }
    model = build_from_spec(spec)
    model.compile(optimizer=_optimizer(t),
                  loss=tfk.losses.CategoricalCrossentropy(label_smoothing=t.label_smoothing),
                  metrics=["accuracy"])

    train_ds = make_dataset(splits.x_train, splits.y_train, nc, t.batch_size, training=True,
                            augment=parse_augment(cfg.data.augment), seed=t.seed)
    val_ds = make_dataset(splits.x_val, splits.y_val, nc, t.batch_size)

    backup = run_dir / "backup"
    history_csv = run_dir / "history.csv"
    epochs_done = backup_epochs(backup)
    best = math.inf
    if epochs_done:
        # A kill between an epoch's CSV row and its backup leaves a row the resumed run redoes.
        truncate_history(history_csv, epochs_done)
        previous = read_history(history_csv).get("val_loss")
        if previous:
            best = min(previous)
        print(f"Resuming {run_dir} after epoch {epochs_done}/{t.epochs}", file=sys.stderr)
    elif history_csv.exists():
        history_csv.unlink()

    nan_cb = nan_stop(tfk.callbacks.Callback)
    callbacks = [
        tfk.callbacks.LearningRateScheduler(lambda epoch, lr: epoch_learning_rate(t, epoch)),
        tfk.callbacks.CSVLogger(str(history_csv), append=True),
        _best_weights_callback(model, run_dir, spec, best),
        tfk.callbacks.TensorBoard(str(run_dir / "logs"), write_graph=False),
        nan_cb,
    ]
    if t.early_stopping:
        callbacks.append(tfk.callbacks.EarlyStopping(monitor="val_loss",
                                                     patience=t.early_stopping))
    # Last, so an epoch counts as finished only once its weights and log row are written.
    callbacks.append(tfk.callbacks.BackupAndRestore(str(backup)))
    cw = class_weights(splits.y_train, nc) if cfg.data.class_weight == "balanced" else None
    model.fit(train_ds, validation_data=val_ds, epochs=t.epochs, callbacks=callbacks,
              class_weight=cw, verbose=t.verbose)
    if nan_cb.nan_epoch is not None:
        raise UserError(nan_message(nan_cb.nan_epoch, t.learning_rate, run_dir,
                                    "raise --prior-scale"))
    if not (run_dir / WEIGHTS_FILE).is_file():
        # no finite validation loss was ever seen: keep the last weights
        save_model(model, run_dir, spec)
    shutil.rmtree(backup, ignore_errors=True)
    return read_history(history_csv)


# --------------------------------------------------------------------------------------------
# Monte Carlo prediction


def mc_tensors(model, pixels, n):
    """``(n, batch, classes)`` probabilities of ``n`` forward passes, each with fresh weights.

    TF-traceable: the passes run in a ``tf.while_loop`` (``tf.map_fn``), so ``n`` may be a
    tensor and a SavedModel draws its samples in the graph.
    """
    tf = _tf()
    return tf.map_fn(lambda _: tf.cast(model(pixels, training=False), tf.float32),
                     tf.range(n), fn_output_signature=tf.float32)


class BayesianPredictor:
    """Monte Carlo prediction with a trained Bayesian run's model.

    Attributes:
        model: the tf_keras model.
        trackable: a ``tf.Module`` holding the model's variables, which the SavedModel exporter
            attaches to its module so that they are saved (lighter than tracking the tf_keras
            model, whose layers tf_keras would trace one by one).
        mc_samples: the default number of Monte Carlo samples (the run's ``eval.mc_samples``).
        spec: the build arguments (``bnn.json``).
    """

    def __init__(self, model, mc_samples: int = 30, spec: dict | None = None):
        tf = _tf()
        self.model = model
        self.bayesian = True
        self.temperature = 1.0
        self.mc_samples = int(mc_samples)
        self.spec = dict(spec or {})
        self.trackable = tf.Module(name="bnn_variables")
        self.trackable.variables_list = list(model.weights)
        h, w, c = (int(v) for v in model.input_shape[1:])
        self._mc = tf.function(
            lambda pixels, n: mc_tensors(model, pixels, n),
            input_signature=[tf.TensorSpec([None, h, w, c], tf.float32),
                             tf.TensorSpec([], tf.int32)])

    def _check_n(self, n) -> int:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise UserError(f"--mc-samples must be a positive integer. Received: {n}")
        return int(n)

    def predict_mc(self, x, n: int | None = None, batch_size: int = 256) -> np.ndarray:
        """``(n, N, C)`` float32 probabilities of ``n`` Monte Carlo passes over images ``x``."""
        n = self._check_n(self.mc_samples if n is None else n)
        x = np.asarray(x, dtype=np.float32)
        if not len(x):
            return np.zeros((n, 0, int(self.model.output_shape[-1])), np.float32)
        parts = [self._mc(x[i:i + batch_size], np.int32(n)).numpy()
                 for i in range(0, len(x), batch_size)]
        return np.concatenate(parts, axis=1)

    def features(self, x, batch_size: int = 256) -> np.ndarray:
        """Not defined: a Bayesian network's features change with every posterior sample."""
        raise UserError(f"{self.model.name} is Bayesian; its features change with every "
                        "posterior sample, so feature density needs a deterministic model")

    def predict_proba(self, x, batch_size: int = 256, calibrated: bool = True,
                      n: int | None = None) -> np.ndarray:
        """The Monte Carlo mean probabilities ``(N, C)`` over ``n`` (default ``mc_samples``).

        ``calibrated`` is accepted for the :class:`kerascls.engines.Predictor` interface; a
        Bayesian run keeps temperature 1.
        """
        return self.predict_mc(x, n, batch_size).mean(axis=0)

    def predict_uncertainty(self, x, n: int | None = None, batch_size: int = 256):
        """A :class:`kerascls.uncertainty.MCPrediction` of ``n`` Monte Carlo passes."""
        from kerascls.uncertainty import MCPrediction

        return MCPrediction.from_samples(self.predict_mc(x, n, batch_size))

    def signature_outputs(self, pixels, n: int) -> dict:
        """TF-traceable serving outputs of a float32 0..255 batch, ``n`` samples in the graph.

        Returns ``probabilities`` (the Monte Carlo mean), ``entropy`` (predictive entropy) and
        ``mutual_information`` (epistemic uncertainty), in nats.
        """
        n = self._check_n(n)
        from kerascls.export.montecarlo import mc_summary_tensors

        out = mc_summary_tensors(mc_tensors(self.model, pixels, n))
        return {k: out[k] for k in ("probabilities", "entropy", "mutual_information")}


def load_predictor(run_dir: Path) -> BayesianPredictor:
    """The :class:`BayesianPredictor` of a Bayesian run directory."""
    from kerascls.config import Config

    run_dir = Path(run_dir)
    model, spec = load_model(run_dir)
    cfg_path = run_dir / "config.yaml"
    mc = Config.load(cfg_path).eval.mc_samples if cfg_path.is_file() else Config().eval.mc_samples
    return BayesianPredictor(model, mc, spec)


def _duck_macs(model) -> int:
    """MACs of a tf_keras model's convolution and dense layers (one Monte Carlo pass)."""
    total = 0
    for layer in model.layers:
        out = getattr(layer, "output_shape", None)
        inp = getattr(layer, "input_shape", None)
        if not out or not inp or isinstance(out, list):
            continue
        if hasattr(layer, "filters") and hasattr(layer, "kernel_size"):
            k = math.prod(layer.kernel_size)
            total += math.prod(int(d) for d in out[1:-1]) * k * int(inp[-1]) * int(layer.filters)
        elif hasattr(layer, "units"):
            total += math.prod(int(d) for d in inp[1:-1]) * int(inp[-1]) * int(layer.units)
    return int(total)


class TfpEngine:
    """Train, load and export the TFP (``tf_keras``) Bayesian models (see the module docstring)."""

    name = "tfp"
    model_files = (BUILD_FILE, WEIGHTS_FILE)

    def check(self, cfg, spec) -> None:
        from kerascls.engines import check_limits

        check_backend(spec.name)
        check_limits(self.name, cfg, spec.name)
        if not cfg.model.prior_scale > 0:
            raise UserError(f"--prior-scale must be positive. Received: {cfg.model.prior_scale}")
        if cfg.model.pretrained:
            raise UserError(f"--pretrained is not available for the Bayesian model {spec.name}")
        if cfg.model.freeze_backbone:
            raise UserError(f"--freeze-backbone is not available for the Bayesian model "
                            f"{spec.name}")

    def fit(self, cfg, spec, splits, run_dir: Path, placement) -> dict[str, list[float]]:
        return fit_run(cfg, splits, run_dir)

    def finish(self, cfg, splits, run_dir: Path) -> dict:
        return {}

    def load(self, run) -> BayesianPredictor:
        check_backend(run.name)
        model, spec = load_model(run.path)
        return BayesianPredictor(model, run.config.eval.mc_samples, spec)

    def export_tflite(self, run, out_dir: Path, variant: str, **options) -> list[Path]:
        from kerascls.export.montecarlo import export_ensemble

        members = options.pop("members", ENSEMBLE_MEMBERS)
        seed = options.pop("seed", ENSEMBLE_SEED)
        ensemble = posterior_ensemble(run.model, members, seed)
        return export_ensemble(run, out_dir, variant, ensemble, members=members, seed=seed,
                               **options)

    def count_macs(self, run) -> tuple[int, int]:
        return int(run.model.count_params()), _duck_macs(run.model)
