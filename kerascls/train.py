"""``python -m kerascls.train``: train a registered model on a dataset, evaluate it, export it.

Example:
    python -m kerascls.train                                   # lenet on digits, 32x32
    python -m kerascls.train --dataset sentiment --model seed_cnn --epochs 30

A run killed at any point and started again with the same command resumes after the last
finished epoch (Keras ``BackupAndRestore``). A NaN loss stops the run with a clear message.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np

from kerascls import __version__
from kerascls.cli import progress_verbose
from kerascls.config import Config, make_parser, resolve
from kerascls.errors import UserError, cli_main
from kerascls.fileio import atomic_write_json

log = logging.getLogger("kerascls.train")


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "-" for c in text.replace(":", "-"))
    return keep.strip("-")[:60] or "run"


def run_directory(cfg: Config) -> Path:
    """The run directory: resume an unfinished run, never overwrite a finished one."""
    base = Path(cfg.train.output_dir)
    name = cfg.train.run_name or f"{cfg.model.model}-{_slug(Path(cfg.data.dataset).name if cfg.data.dataset.startswith('folder:') else cfg.data.dataset)}"
    candidate, i = base / name, 1
    while (candidate / "metadata.json").exists() and not (candidate / "backup").exists():
        i += 1
        candidate = base / f"{name}-{i}"
    return candidate


def make_optimizer(cfg: Config, steps_per_epoch: int, lr_scale: float = 1.0):
    """Adam, AdamW or SGD with momentum, on a constant, cosine or step schedule with warmup."""
    import keras

    from kerascls.distribute import lr_factor

    t = cfg.train
    lr = t.learning_rate * lr_scale * lr_factor(t)
    total = max(1, t.epochs * steps_per_epoch)
    warm = t.warmup_epochs * steps_per_epoch
    if t.schedule == "cosine":
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0 if warm else lr, max(1, total - warm), alpha=0.0,
            warmup_target=lr if warm else None, warmup_steps=warm)
    elif t.schedule == "constant":
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0 if warm else lr, max(1, total - warm), alpha=1.0,
            warmup_target=lr if warm else None, warmup_steps=warm) if warm else lr
    else:
        bounds = [warm + k * t.step_epochs * steps_per_epoch
                  for k in range(1, max(1, t.epochs // max(1, t.step_epochs)) + 1)]
        values = [lr * t.step_gamma ** k for k in range(len(bounds) + 1)]
        step = keras.optimizers.schedules.PiecewiseConstantDecay(bounds, values)
        schedule = WarmupSchedule(step, warm, lr) if warm else step
    wd = t.weight_decay or None
    if t.optimizer == "adam":
        return keras.optimizers.Adam(schedule)
    if t.optimizer == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=t.weight_decay or 0.004)
    return keras.optimizers.SGD(schedule, momentum=t.momentum, weight_decay=wd)


def _warmup_base():
    import keras

    return keras.optimizers.schedules.LearningRateSchedule


class WarmupSchedule(_warmup_base()):
    """Linear warmup to ``target`` over ``warmup_steps``, then ``after(step - warmup_steps)``."""

    def __init__(self, after, warmup_steps: int, target: float):
        self.after = after
        self.warmup_steps = int(warmup_steps)
        self.target = float(target)

    def __call__(self, step):
        from keras import ops

        step = ops.cast(step, "float32")
        warm = self.target * step / max(1, self.warmup_steps)
        return ops.where(step < self.warmup_steps, warm, self.after(step))

    def get_config(self):
        import keras

        return {"after": keras.saving.serialize_keras_object(self.after),
                "warmup_steps": self.warmup_steps, "target": self.target}

    @classmethod
    def from_config(cls, config):
        import keras

        config = dict(config)
        config["after"] = keras.saving.deserialize_keras_object(config["after"])
        return cls(**config)


class StopOnNaN:
    """Factory for a callback that stops on a NaN/inf loss and remembers the epoch."""

    @staticmethod
    def make():
        import keras

        class _StopOnNaN(keras.callbacks.Callback):
            nan_epoch = None

            def on_train_batch_end(self, batch, logs=None):
                loss = (logs or {}).get("loss")
                if loss is not None and not math.isfinite(float(loss)):
                    self.nan_epoch = getattr(self, "_epoch", 0) + 1
                    self.model.stop_training = True

            def on_epoch_begin(self, epoch, logs=None):
                self._epoch = epoch

        return _StopOnNaN()


def precise_bn_callback(images: np.ndarray, val_ds, batch_size: int, max_batches: int,
                        seed: int):
    """A callback that re-estimates batch-norm statistics at each epoch end, then re-validates.

    Keras validates with the moving averages, which lag the weights; on a small dataset with a
    handful of steps per epoch they can be far enough off that validation sits at chance while
    training accuracy climbs, and the best-``val_loss`` checkpoint is chosen from noise. Placed
    first among the callbacks, this one replaces ``val_*`` in the epoch's logs, so the
    checkpoint, the CSV log, TensorBoard and the progress bar all see the re-validated figures.
    """
    import keras

    class _PreciseBatchNorm(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs is None or "val_loss" not in logs or not batch_norm_layers(self.model):
                return
            recalibrate_batch_norm(self.model, images, batch_size, max_batches,
                                   seed=seed + epoch)
            result = self.model.evaluate(val_ds, verbose=0, return_dict=True)
            for key, value in result.items():
                logs[f"val_{key}"] = value

    return _PreciseBatchNorm()


def _read_history(path: Path) -> dict[str, list[float]]:
    if not path.is_file():
        return {}
    with path.open() as f:
        rows = list(csv.DictReader(f))
    hist: dict[str, list[float]] = {}
    for row in rows:
        for k, v in row.items():
            if k != "epoch" and v not in (None, ""):
                hist.setdefault(k, []).append(float(v))
    return hist


def _truncate_history(path: Path, epochs_done: int) -> None:
    """Keep the CSV rows of finished epochs only (a kill can land between the log and the backup)."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    if len(lines) > epochs_done + 1:
        path.write_text("\n".join(lines[: epochs_done + 1]) + "\n")


def _fit_keras(cfg: Config, splits, run_dir: Path, image_size: int) -> dict[str, list[float]]:
    import keras

    from kerascls.data.pipeline import class_weights, make_dataset, parse_augment
    from kerascls.registry import build_model, model_arg_overrides

    t = cfg.train
    nc = splits.num_classes
    train_ds = make_dataset(splits.x_train, splits.y_train, nc, t.batch_size, training=True,
                            augment=parse_augment(cfg.data.augment), seed=t.seed)
    val_ds = make_dataset(splits.x_val, splits.y_val, nc, t.batch_size)
    steps = max(1, math.ceil(len(splits.x_train) / t.batch_size))

    model = build_model(cfg.model.model, (image_size, image_size, 3), nc,
                        normalize=cfg.data.normalize, dropout=cfg.model.dropout,
                        **model_arg_overrides(cfg.model.args))
    if cfg.model.pretrained:
        from kerascls.transfer import load_pretrained

        load_pretrained(model, cfg.model.pretrained)
    if cfg.model.bn_momentum > 0:
        for bn in batch_norm_layers(model):
            bn.momentum = cfg.model.bn_momentum

    backup = run_dir / "backup"
    meta = backup / "training_metadata.json"
    epochs_done = json.loads(meta.read_text())["epoch"] if meta.is_file() else 0
    _truncate_history(run_dir / "history.csv", epochs_done)
    if epochs_done:
        print(f"Resuming {run_dir} after epoch {epochs_done}/{t.epochs}", file=sys.stderr)

    cw = class_weights(splits.y_train, nc) if cfg.data.class_weight == "balanced" else None
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=t.label_smoothing)

    def callbacks(phase_backup: Path):
        ckpt = keras.callbacks.ModelCheckpoint(
            str(run_dir / "model.keras"), monitor="val_loss", save_best_only=True, verbose=0)
        prev = _read_history(run_dir / "history.csv").get("val_loss")
        if prev:
            ckpt.best = min(prev)
        cbs = [ckpt] if not precise else [
            precise_bn_callback(splits.x_train, val_ds, t.batch_size, t.bn_recalibration,
                                t.seed),
            ckpt,
        ]
        cbs += [
            keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
            keras.callbacks.TensorBoard(str(run_dir / "logs"), write_graph=False),
            nan_cb,
        ]
        if t.early_stopping:
            cbs.append(keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=t.early_stopping, restore_best_weights=False))
        # Last, so an epoch counts as finished only once its model and log rows are written.
        cbs.append(keras.callbacks.BackupAndRestore(str(phase_backup), double_checkpoint=True))
        return cbs

    nan_cb = StopOnNaN.make()
    # Per-epoch batch-norm re-estimation runs eagerly on one device; distributed runs get it
    # once, on the saved model, after training.
    precise = t.bn_recalibration > 0 and t.strategy == "none" and len(splits.x_val) > 0
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
            raise UserError(
                f"loss became NaN at epoch {nan_cb.nan_epoch}; lower --learning-rate "
                f"(was {t.learning_rate}) or check the data. Run kept in {run_dir}")
        if len(phases) > 1:
            model.save_weights(done_marker)
        start = until
    return _read_history(run_dir / "history.csv")


def batch_norm_layers(layer) -> list:
    """Every ``BatchNormalization`` layer in ``layer``, nested models included."""
    import keras

    found = []
    for sub in getattr(layer, "layers", []):
        if isinstance(sub, keras.layers.BatchNormalization):
            found.append(sub)
        else:
            found.extend(batch_norm_layers(sub))
    return found


def recalibrate_batch_norm(model, images: np.ndarray, batch_size: int, max_batches: int,
                           seed: int = 0) -> int:
    """Re-estimate every batch-norm layer's moving mean and variance for the current weights.

    Keras keeps exponential moving averages (momentum 0.99, 0.999 in the MobileNets), which
    after a short training run still carry much of their initial values and of early-epoch
    statistics. Here each layer's moving statistics become the plain average of the batch
    statistics over up to ``max_batches`` shuffled training batches ("precise BN"): the momentum
    of batch ``k`` is ``(k - 1) / k``. Only the moving statistics change. Returns the number of
    batches used.
    """
    import keras

    layers = batch_norm_layers(model)
    if not layers or len(images) == 0:
        return 0
    order = np.random.default_rng(seed).permutation(len(images))
    batch = min(batch_size, len(images))
    n = max(1, min(max_batches, len(images) // batch))
    momenta = [bn.momentum for bn in layers]
    # Only the batch-norm statistics may move: other state (dropout seeds aside) stays put.
    before = {id(v): keras.ops.convert_to_numpy(v) for v in model.non_trainable_variables}
    keep = {id(v) for bn in layers for v in (bn.moving_mean, bn.moving_variance)}
    try:
        for k in range(1, n + 1):
            for bn in layers:
                bn.momentum = (k - 1) / k
            idx = order[(k - 1) * batch:k * batch]
            model(images[idx].astype("float32"), training=True)
    finally:
        for bn, m in zip(layers, momenta):
            bn.momentum = m
    for v in model.non_trainable_variables:
        if id(v) not in keep:
            v.assign(before[id(v)])
    return n


def _val_loss(model, x: np.ndarray, y: np.ndarray, batch_size: int) -> float:
    from kerascls.uncertainty import nll

    return nll(y, model.predict(x.astype("float32"), batch_size=batch_size, verbose=0))


def recalibrate_run(model_path: Path, splits, batch_size: int, max_batches: int,
                    seed: int = 0) -> dict | None:
    """Batch-norm recalibration of a saved run model, kept only if validation loss does not rise.

    Returns what happened for the run's metadata, or ``None`` when the model has no batch norm.
    """
    import keras

    from kerascls.fileio import atomic_path

    model = keras.saving.load_model(model_path, compile=False)
    if not batch_norm_layers(model):
        return None
    has_val = len(splits.x_val) > 0
    loss_before = _val_loss(model, splits.x_val, splits.y_val, batch_size) if has_val else None
    used = recalibrate_batch_norm(model, splits.x_train, batch_size, max_batches, seed=seed)
    loss_after = _val_loss(model, splits.x_val, splits.y_val, batch_size) if has_val else None
    kept = bool(used) and (not has_val or loss_after <= loss_before)
    if kept:
        with atomic_path(model_path, suffix=".keras") as tmp:
            model.save(tmp)
    before, after = ("n/a" if v is None else f"{v:.4f}" for v in (loss_before, loss_after))
    print(f"Batch-norm statistics re-estimated over {used} training batches: validation loss "
          f"{before} -> {after}, "
          f"{'kept' if kept else 'discarded (the training estimate was better)'}",
          file=sys.stderr)
    return {"batches": used, "val_loss_before": loss_before, "val_loss_after": loss_after,
            "kept": kept}


def _check_model_input(cfg: Config, image_size: int):
    from kerascls.registry import get_spec

    spec = get_spec(cfg.model.model)
    if image_size < spec.min_size:
        raise UserError(f"--image-size {image_size} is too small for {spec.name}: it needs at least "
                        f"{spec.min_size}x{spec.min_size}")
    return spec


def check_options(cfg: Config) -> None:
    """Refuse, before TensorFlow starts, what would otherwise fail after training.

    The model name (from :mod:`kerascls.catalog`), the dataset's form, the export formats and
    their options. The dataset's content (classes, images) is checked when it is loaded, which
    is also before training.
    """
    from kerascls import catalog
    from kerascls.data.sources import SOURCES
    from kerascls.errors import did_you_mean
    from kerascls.export import parse_formats
    from kerascls.export.tflite import MIN_REPRESENTATIVE_SIZE

    catalog.info(cfg.model.model)
    kind, _, arg = cfg.data.dataset.partition(":")
    if not ((kind in ("folder", "tfds") and arg) or (cfg.data.dataset in SOURCES)):
        raise UserError(did_you_mean("dataset", cfg.data.dataset, SOURCES).replace(
            "Available:", "Use one of:"))
    e = cfg.export
    if e.formats.strip():
        names = parse_formats(e.formats)
        if "tflite-int8" in names and e.representative_size < MIN_REPRESENTATIVE_SIZE:
            raise UserError(f"--representative-size must be at least {MIN_REPRESENTATIVE_SIZE} "
                            f"images for a sound int8 calibration. Received: "
                            f"{e.representative_size}")
    if e.models_dir and Path(e.models_dir).exists() and not Path(e.models_dir).is_dir():
        raise UserError(f"--models-dir {e.models_dir} exists and is not a folder")
    out = Path(cfg.train.output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output-dir {out} exists and is not a folder")


def train(cfg: Config) -> Path:
    """Train, evaluate and export as ``cfg`` says; return the run directory."""
    from kerascls.distribute import setup as setup_distribution

    check_options(cfg)
    placement = setup_distribution(cfg)  # devices and strategy before any device runtime starts
    import keras

    from kerascls.data import load_dataset
    from kerascls.data.sources import limit_train
    from kerascls.registry import check_model_args, get_spec

    spec = get_spec(cfg.model.model)
    image_size = cfg.data.image_size or spec.default_size
    _check_model_input(cfg, image_size)
    cfg.model.args = check_model_args(spec.name, cfg.model.args, (image_size, image_size, 3))
    if spec.framework == "tf_keras":  # refuse a jax/torch backend before anything is written
        from kerascls.models.bayesian import check_backend

        check_backend(spec.name)
    run_dir = placement.run_directory(run_directory(cfg))
    print(f"train: {spec.name} at {image_size}x{image_size} on {cfg.data.dataset}, "
          f"{keras.backend.backend()} backend ({spec.framework}, {placement.device_kind}); "
          f"run directory {run_dir}", flush=True)
    d = cfg.data
    splits = load_dataset(d.dataset, image_size, seed=cfg.train.seed, val_fraction=d.val_fraction,
                          test_fraction=d.test_fraction, data_dir=d.data_dir,
                          num_examples=d.num_examples, sentiment_size=d.sentiment_size,
                          noise=d.noise, imbalance=d.imbalance)
    splits = limit_train(splits, d.max_train_examples, cfg.train.seed)
    print(f"data: {len(splits.x_train)} training, {len(splits.x_val)} validation and "
          f"{len(splits.x_test)} test images of {splits.num_classes} classes", flush=True)
    cfg.data.image_size = image_size
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "config.yaml")
    keras.utils.set_random_seed(cfg.train.seed)

    t0 = time.perf_counter()
    if spec.framework == "tf_keras":
        from kerascls.models import bayesian

        history = bayesian.fit_run(cfg, splits, run_dir)
    else:
        with placement.scope():
            history = _fit_keras(cfg, splits, run_dir, image_size)
        placement.finish(run_dir / "model.keras")
    train_seconds = time.perf_counter() - t0
    recalibration = None
    if spec.framework == "keras" and cfg.train.bn_recalibration > 0:
        recalibration = recalibrate_run(run_dir / "model.keras", splits, cfg.train.batch_size,
                                        cfg.train.bn_recalibration, seed=cfg.train.seed)

    metadata = {
        "model_name": spec.name,
        "model_args": cfg.model.args,
        "family": spec.family,
        "framework": spec.framework,
        "dataset": d.dataset,
        "labels": splits.class_names,
        "num_classes": splits.num_classes,
        "input_shape": [image_size, image_size, 3],
        "image_size": image_size,
        "resize_method": "bilinear",
        "normalize": d.normalize,
        "input_range": [0, 255],
        "temperature": 1.0,
        "train_seconds": round(train_seconds, 2),
        "epochs_trained": len(history.get("loss", [])),
        "num_train_examples": int(len(splits.x_train)),
        "backend": keras.backend.backend(),
        "versions": _versions(),
        **placement.metadata(),
    }
    if recalibration is not None:
        metadata["bn_recalibration"] = recalibration
    atomic_write_json(run_dir / "metadata.json", metadata)
    from kerascls import plots

    if history:
        plots.training_curves(history, run_dir / "training_curves.png")
    finalize_run(run_dir, splits)
    _cleanup_backup(run_dir)
    if cfg.export.formats.strip() and placement.is_chief:
        from kerascls.export import export_run

        export_run(run_dir, cfg.export.formats, models_dir=cfg.export.models_dir or None,
                   representative_size=cfg.export.representative_size,
                   ensemble_members=(cfg.export.ensemble_members
                                     if spec.framework == "tf_keras" else None))
    return run_dir


def finalize_run(run_dir: Path, splits) -> dict:
    """Post-training steps on the saved best model: temperature scaling fitted on the validation
    split (deterministic models), then evaluation on the test split into metadata."""
    from kerascls.evaluate import calibrate_run, evaluate_run
    from kerascls.fileio import read_json
    from kerascls.runs import load_run

    run = load_run(run_dir)
    if not run.is_bayesian:
        calibrate_run(run, splits)
    metrics = evaluate_run(run, splits=splits)
    meta = read_json(run_dir / "metadata.json")
    meta["metrics"] = {k: v for k, v in metrics.items()
                       if isinstance(v, (int, float)) or v is None}
    atomic_write_json(run_dir / "metadata.json", meta)
    return metrics


def _cleanup_backup(run_dir: Path) -> None:
    import shutil

    shutil.rmtree(run_dir / "backup", ignore_errors=True)


def _versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {"kerascls": __version__, "keras": keras.__version__, "tensorflow": tf.__version__,
            "python": sys.version.split()[0], "numpy": np.__version__}


@cli_main
def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from kerascls.detect.train import main as detect_main, task_of

    task, argv = task_of(sys.argv[1:] if argv is None else list(argv))
    if task == "detect":  # YOLO detectors train through their own entry point
        return detect_main(argv)
    parser = make_parser("python -m kerascls.train", __doc__.splitlines()[0])
    cfg = resolve(parser.parse_args(argv))
    cfg.train.verbose = progress_verbose(cfg.train.verbose)  # no bar redraws in a pipe
    run_dir = train(cfg)
    meta = json.loads((run_dir / "metadata.json").read_text())
    m = meta.get("metrics", {})
    print(f"run: {run_dir}  test accuracy {m.get('accuracy', float('nan')):.4f}  "
          f"macro-F1 {m.get('macro_f1', float('nan')):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
