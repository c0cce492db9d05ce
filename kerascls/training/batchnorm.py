"""Precise batch norm: re-estimating Keras 3 batch-norm statistics for the current weights.

Keras validates with moving averages that lag the weights; on small datasets and short schedules
they can sit far from the statistics the final weights produce. These helpers re-estimate them
(per epoch as a callback, and once on the saved model), so the checkpoint is chosen and the model
is exported on figures the exported model reproduces.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


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


# the weight the moving averages may still give to statistics from before the epoch for the
# per-epoch re-estimation to be skipped
STALE_WEIGHT = 0.01


def moving_averages_lag(model, steps_per_epoch: int) -> bool:
    """Whether an epoch of ``steps_per_epoch`` steps leaves the batch-norm moving averages stale.

    After ``n`` steps a moving average of momentum ``m`` still gives weight ``m ** n`` to what it
    held before them; when that is under :data:`STALE_WEIGHT` for every layer (momentum 0.9 and
    45 steps or more, 0.99 and 459), the moving averages already describe the epoch's weights
    and a per-epoch re-estimation would only cost time (an eager pass over its batches and a
    second validation).
    """
    return any(float(bn.momentum) ** steps_per_epoch >= STALE_WEIGHT
               for bn in batch_norm_layers(model))


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
