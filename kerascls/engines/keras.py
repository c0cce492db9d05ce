"""The ``keras`` engine: Keras 3 models on the tensorflow, jax and torch backends.

It trains every registered Keras 3 model (the Bayesian ``bnn_mlp`` / ``bnn_cnn`` built from
:mod:`kerascls.bayes` Flipout layers included) with ``model.fit``, keeps the best epoch as
``model.keras``, resumes through ``keras.callbacks.BackupAndRestore``, and loads a run as a
:class:`KerasPredictor`. A model holding Flipout layers predicts by Monte Carlo and exports to
TFLite as a posterior-sample ensemble (:mod:`kerascls.export.montecarlo`); any other model
exports through the TFLite converter functions in :mod:`kerascls.export.tflite`.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from kerascls.errors import UserError
from kerascls.training.history import best_val_loss, read_history, truncate_history

MODEL_FILE = "model.keras"


def build_arguments(cfg, spec, num_train_examples: int) -> dict:
    """The builder arguments of a run, besides input shape and classes."""
    from kerascls.registry import model_arg_overrides

    overrides = {"normalize": cfg.data.normalize, "dropout": cfg.model.dropout,
                 **model_arg_overrides(cfg.model.args)}
    if spec.family == "bayesian":
        overrides.update(prior_scale=float(cfg.model.prior_scale), trunk=cfg.model.bnn_trunk,
                         num_train_examples=int(num_train_examples))
    return overrides


def _readable_weights(path: Path) -> bool:
    """True when ``path`` is an HDF5 file that opens (a kill can leave it truncated)."""
    import h5py

    try:
        with h5py.File(path, "r"):
            return True
    except OSError:
        return False


def usable_backup(backup: Path) -> None:
    """Make ``backup/`` resumable, or remove it, saying which.

    ``BackupAndRestore(double_checkpoint=True)`` keeps the previous epoch's state as ``*.bkp``.
    When ``latest.weights.h5`` does not open, that copy (weights and training metadata) takes
    its place; when neither opens, the backup is removed and training starts over.
    """
    import shutil

    weights = backup / "latest.weights.h5"
    if not weights.exists() or _readable_weights(weights):
        return
    previous = Path(f"{weights}.bkp")
    meta, previous_meta = backup / "training_metadata.json", backup / "training_metadata.json.bkp"
    if previous.is_file() and _readable_weights(previous):
        shutil.copyfile(previous, weights)
        if previous_meta.is_file():
            shutil.copyfile(previous_meta, meta)
        else:
            meta.unlink(missing_ok=True)
        epoch = json.loads(meta.read_text())["epoch"] if meta.is_file() else 0
        print(f"warning: {weights} is corrupt; resuming from the previous epoch's copy "
              f"(after epoch {epoch})", file=sys.stderr)
        return
    shutil.rmtree(backup, ignore_errors=True)
    print(f"warning: {weights} is corrupt and no intact copy is left; training starts over",
          file=sys.stderr)


class KerasEngine:
    """Train, load and export Keras 3 models (see the module docstring)."""

    name = "keras"
    model_files = (MODEL_FILE,)

    # -- training -------------------------------------------------------------------------------
    def check(self, cfg, spec) -> None:
        if spec.family == "bayesian":
            if not cfg.model.prior_scale > 0:
                raise UserError(f"--prior-scale must be positive. "
                                f"Received: {cfg.model.prior_scale}")
            if cfg.model.pretrained:
                raise UserError(f"--pretrained is not available for the Bayesian model "
                                f"{spec.name}")
            if cfg.model.freeze_backbone:
                raise UserError(f"--freeze-backbone is not available for the Bayesian model "
                                f"{spec.name}")

    def build(self, cfg, spec, splits, image_size: int):
        from kerascls.registry import build_model

        return build_model(spec.name, (image_size, image_size, 3), splits.num_classes,
                           **build_arguments(cfg, spec, len(splits.x_train)))

    def fit(self, cfg, spec, splits, run_dir: Path, placement) -> dict[str, list[float]]:
        with placement.scope():
            history = self._fit(cfg, spec, splits, run_dir)
        placement.finish(run_dir / MODEL_FILE)
        return history

    def _fit(self, cfg, spec, splits, run_dir: Path) -> dict[str, list[float]]:
        import keras

        from kerascls.data.pipeline import class_weights, make_feed, parse_augment
        from kerascls.training.batchnorm import (batch_norm_layers, moving_averages_lag,
                                                 precise_bn_callback)
        from kerascls.training.callbacks import nan_message, nan_stop
        from kerascls.training.schedule import make_optimizer

        t = cfg.train
        nc = splits.num_classes
        image_size = splits.image_size
        train_ds = make_feed(splits.x_train, splits.y_train, nc, t.batch_size, training=True,
                             augment=parse_augment(cfg.data.augment), seed=t.seed)
        val_ds = make_feed(splits.x_val, splits.y_val, nc, t.batch_size)
        steps = max(1, math.ceil(len(splits.x_train) / t.batch_size))

        model = self.build(cfg, spec, splits, image_size)
        if cfg.model.pretrained:
            from kerascls.transfer import load_pretrained

            load_pretrained(model, cfg.model.pretrained)
        if cfg.model.bn_momentum > 0:
            for bn in batch_norm_layers(model):
                bn.momentum = cfg.model.bn_momentum

        backup = run_dir / "backup"
        usable_backup(backup)
        meta = backup / "training_metadata.json"
        epochs_done = json.loads(meta.read_text())["epoch"] if meta.is_file() else 0
        history_csv = run_dir / "history.csv"
        truncate_history(history_csv, epochs_done)
        if epochs_done:
            print(f"Resuming {run_dir} after epoch {epochs_done}/{t.epochs}", file=sys.stderr)

        cw = class_weights(splits.y_train, nc) if cfg.data.class_weight == "balanced" else None
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=t.label_smoothing)
        nan_cb = nan_stop(keras.callbacks.Callback)
        # Per-epoch batch-norm re-estimation runs eagerly on one device, and only where an epoch
        # is too short for the moving averages to follow the weights; distributed runs get it
        # once, on the saved model, after training.
        precise = (t.bn_recalibration > 0 and t.strategy == "none" and len(splits.x_val) > 0
                   and moving_averages_lag(model, steps))

        def callbacks(phase_backup: Path):
            ckpt = keras.callbacks.ModelCheckpoint(
                str(run_dir / MODEL_FILE), monitor="val_loss", save_best_only=True, verbose=0)
            best = best_val_loss(history_csv)
            if best is not None:
                ckpt.best = best
            cbs = [ckpt] if not precise else [
                precise_bn_callback(splits.x_train, val_ds, t.batch_size, t.bn_recalibration,
                                    t.seed),
                ckpt,
            ]
            cbs += [
                keras.callbacks.CSVLogger(str(history_csv), append=True),
                keras.callbacks.TensorBoard(str(run_dir / "logs"), write_graph=False),
                nan_cb,
            ]
            if t.early_stopping:
                cbs.append(keras.callbacks.EarlyStopping(
                    monitor="val_loss", patience=t.early_stopping, restore_best_weights=False))
            # Last, so an epoch counts as finished only once its model and log rows are written.
            cbs.append(keras.callbacks.BackupAndRestore(str(phase_backup),
                                                        double_checkpoint=True))
            return cbs

        phases = []
        if cfg.model.freeze_backbone:
            from kerascls.transfer import set_backbone_trainable

            head_epochs = max(1, t.epochs // 3)
            phases.append(("head", head_epochs, 1.0, False, set_backbone_trainable))
            phases.append(("finetune", t.epochs, 0.1, True, set_backbone_trainable))
        else:
            phases.append(("all", t.epochs, 1.0, True, None))

        start = 0
        for phase, until, lr_scale, trainable, set_trainable in phases:
            if set_trainable is not None:
                set_trainable(model, trainable)
            model.compile(optimizer=make_optimizer(cfg, steps, lr_scale), loss=loss,
                          metrics=["accuracy"])
            phase_backup = backup / phase if len(phases) > 1 else backup
            done_marker = backup / f"{phase}.done.weights.h5"
            if done_marker.is_file():
                model.load_weights(done_marker)
                start = until
                continue
            if not model.built:
                model.build((None, image_size, image_size, 3))
            model.fit(train_ds, validation_data=val_ds, epochs=until, initial_epoch=start,
                      callbacks=callbacks(phase_backup), class_weight=cw, verbose=t.verbose)
            if nan_cb.nan_epoch is not None:
                raise UserError(nan_message(nan_cb.nan_epoch, t.learning_rate, run_dir,
                                            "raise --prior-scale" if spec.family == "bayesian"
                                            else "check the data"))
            if len(phases) > 1:
                model.save_weights(done_marker)
            start = until
        if not (run_dir / MODEL_FILE).is_file():
            # no finite validation loss was ever seen: keep the last weights
            model.save(run_dir / MODEL_FILE)
        return read_history(history_csv)

    def finish(self, cfg, splits, run_dir: Path) -> dict:
        """Batch-norm re-estimation of the saved model (kept when validation loss improves)."""
        from kerascls.training.batchnorm import recalibrate_run

        if cfg.train.bn_recalibration <= 0:
            return {}
        result = recalibrate_run(run_dir / MODEL_FILE, splits, cfg.train.batch_size,
                                 cfg.train.bn_recalibration, seed=cfg.train.seed)
        return {} if result is None else {"bn_recalibration": result}

    # -- loading --------------------------------------------------------------------------------
    def load(self, run) -> KerasPredictor:
        import keras

        import kerascls.bayes  # noqa: F401 - registers the Flipout layers for deserialization
        import kerascls.layers  # noqa: F401 - registers custom layers for deserialization
        from kerascls.registry import list_models

        list_models()  # imports every family, registering its custom layers (ShortcutA, ...)
        path = run.path / MODEL_FILE
        if not path.is_file():
            raise UserError(f"run directory {run.path} has no model ({MODEL_FILE})")
        try:
            model = keras.saving.load_model(path, compile=False)
        except Exception as exc:  # noqa: BLE001 - any failure to read the file is a corrupt file
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise UserError(f"{path} is corrupt or not a Keras model file ({first}); train the run "
                            "again or restore the file") from None
        return KerasPredictor(model, run.temperature, run.config.eval.mc_samples)

    # -- export and measurement -----------------------------------------------------------------
    def export_tflite(self, run, out_dir: Path, variant: str, **options) -> list[Path]:
        if run.predictor.bayesian:
            from kerascls.bayes import posterior_ensemble_model
            from kerascls.export.montecarlo import ENSEMBLE_MEMBERS, ENSEMBLE_SEED, export_ensemble

            members = options.pop("members", ENSEMBLE_MEMBERS)
            seed = options.pop("seed", ENSEMBLE_SEED)
            ensemble = posterior_ensemble_model(run.model, members=members, seed=seed)
            return export_ensemble(run, out_dir, variant, ensemble, members=members, seed=seed,
                                   **options)
        from kerascls.export import FORMATS, resolve_function

        return resolve_function(FORMATS[variant][0])(run, out_dir, **options)

    def count_macs(self, run) -> tuple[int, int]:
        from kerascls.shapes import count_macs

        return int(run.model.count_params()), int(count_macs(run.model))


class KerasPredictor:
    """A Keras 3 model of a finished run: probabilities, and Monte Carlo when it is Bayesian.

    Attributes:
        model: the Keras 3 model.
        temperature: the fitted temperature (deterministic models; applied by default).
        mc_samples: default number of Monte Carlo samples (Bayesian models).
        bayesian: True when the model holds Flipout layers.
        trackable: the object a SavedModel attaches to save the variables (the model).
    """

    def __init__(self, model, temperature: float = 1.0, mc_samples: int = 30):
        from kerascls.bayes import variational_layers

        self.model = model
        self.temperature = float(temperature)
        self.mc_samples = int(mc_samples)
        flipout = variational_layers(model)
        self.bayesian = bool(flipout)
        self.trackable = model
        if flipout:
            # The Flipout layers' seed states are variables the graph updates at every call;
            # a SavedModel must track them next to the weights.
            import tensorflow as tf

            self.trackable = tf.Module(name="bnn_variables")
            self.trackable.model = model
            self.trackable.variables_list = list(model.variables) + [
                layer.seed_generator.state for layer in flipout]

    def _check_n(self, n) -> int:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise UserError(f"--mc-samples must be a positive integer. Received: {n}")
        return int(n)

    def predict_mc(self, x, n: int | None = None, batch_size: int = 256) -> np.ndarray:
        """``(n, N, C)`` probabilities of ``n`` passes, each with fresh posterior weights."""
        from kerascls.bayes import predict_mc

        if not self.bayesian:
            raise UserError(f"{self.model.name} is deterministic; Monte Carlo prediction needs a "
                            "Bayesian model (or --mc-dropout)")
        n = self._check_n(self.mc_samples if n is None else n)
        return np.asarray(predict_mc(self.model, np.asarray(x, np.float32), n,
                                     batch_size=batch_size), np.float32)

    def predict_uncertainty(self, x, n: int | None = None, batch_size: int = 256):
        """A :class:`kerascls.uncertainty.MCPrediction` of ``n`` Monte Carlo passes."""
        from kerascls.uncertainty import MCPrediction

        return MCPrediction.from_samples(self.predict_mc(x, n, batch_size))

    def predict_proba(self, x, batch_size: int = 256, calibrated: bool = True) -> np.ndarray:
        """``(N, C)`` probabilities: the Monte Carlo mean, or the calibrated softmax."""
        x = np.asarray(x, dtype=np.float32)
        if self.bayesian:
            return self.predict_mc(x, None, batch_size).mean(axis=0)
        probs = np.asarray(self.model.predict(x, batch_size=batch_size, verbose=0), np.float32)
        if calibrated and abs(self.temperature - 1.0) > 1e-9:
            from kerascls.metrics import apply_temperature

            probs = apply_temperature(probs, self.temperature)
        return probs

    def features(self, x, batch_size: int = 256) -> np.ndarray:
        """``(N, D)`` features: the input of the model's last Dense layer, its classifier (after
        global pooling or flattening; dropout is inactive at inference)."""
        if self.bayesian:
            raise UserError(f"{self.model.name} is Bayesian; its features change with every "
                            "posterior sample, so feature density needs a deterministic model")
        if getattr(self, "_feature_model", None) is None:
            import keras

            dense = [layer for layer in self.model.layers if isinstance(layer, keras.layers.Dense)]
            if not dense:
                raise UserError(f"{self.model.name} has no Dense classifier layer to take "
                                "features from")
            self._feature_model = keras.Model(self.model.inputs, dense[-1].input,
                                              name=f"{self.model.name}_features")
        out = self._feature_model.predict(np.asarray(x, np.float32), batch_size=batch_size,
                                          verbose=0)
        return np.asarray(out, np.float32).reshape(len(out), -1)

    def deployable(self):
        """The model that exports convert: the model with its fitted temperature applied."""
        if self.bayesian:
            raise UserError("Bayesian runs are exported through their Monte Carlo predictor")
        if abs(self.temperature - 1.0) < 1e-9:
            return self.model
        import keras

        from kerascls.layers import Temperature

        outputs = Temperature(self.temperature, name="calibrated")(self.model.outputs[0])
        return keras.Model(self.model.inputs, outputs, name=f"{self.model.name}_calibrated")

    def signature_outputs(self, pixels, n: int | None = None) -> dict:
        """TF-traceable serving outputs (tensorflow backend): probabilities, and for Bayesian
        models the Monte Carlo mean, entropy and mutual information of ``n`` passes."""
        if not self.bayesian:
            return {"probabilities": self.deployable()(pixels, training=False)}
        import tensorflow as tf

        from kerascls.export.montecarlo import mc_summary_tensors

        n = self._check_n(self.mc_samples if n is None else n)
        model = self.model
        # One pass after another: each draws the Flipout noise from the layers' seed state.
        mc = tf.map_fn(lambda _: tf.cast(model(pixels, training=False), tf.float32),
                       tf.range(n), fn_output_signature=tf.float32, parallel_iterations=1)
        out = mc_summary_tensors(mc)
        return {k: out[k] for k in ("probabilities", "entropy", "mutual_information")}
