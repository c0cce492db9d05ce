"""Learning rates: the global-batch rule, the per-epoch and per-step schedules, the optimizer.

Every engine takes its learning rate from here, so a run means the same optimization problem
whichever engine trains it: ``--learning-rate`` times :func:`lr_factor`, then warmup and the
``--schedule`` (``constant``, ``cosine``, ``step``).
"""

from __future__ import annotations

import math

from kerascls.choices import LR_SCALING
from kerascls.errors import UserError


def lr_factor(train_cfg) -> float:
    """The factor ``--lr-scaling`` applies to ``--learning-rate`` for the global batch.

    Args:
        train_cfg: the ``train`` section of the configuration (``batch_size``, ``lr_scaling``,
            ``lr_base_batch``).

    Returns:
        ``batch_size / lr_base_batch`` (linear), its square root (sqrt), or 1 (none).

    Example:
        >>> from kerascls.config import TrainConfig
        >>> lr_factor(TrainConfig(batch_size=256, lr_base_batch=64))
        4.0
    """
    rule = train_cfg.lr_scaling
    if rule not in LR_SCALING:
        raise UserError(f"--lr-scaling must be one of {', '.join(LR_SCALING)}. Received: {rule}")
    if train_cfg.lr_base_batch <= 0:
        raise UserError(f"--lr-base-batch must be a positive integer. "
                        f"Received: {train_cfg.lr_base_batch}")
    ratio = train_cfg.batch_size / train_cfg.lr_base_batch
    if rule == "linear":
        return ratio
    if rule == "sqrt":
        return math.sqrt(ratio)
    return 1.0


def peak_learning_rate(train_cfg, lr_scale: float = 1.0) -> float:
    """``--learning-rate`` with the global-batch rule applied (times ``lr_scale``)."""
    return train_cfg.learning_rate * lr_scale * lr_factor(train_cfg)


def epoch_learning_rate(train_cfg, epoch: int) -> float:
    """The learning rate of ``epoch`` (0-based), for engines that schedule once per epoch.

    Linear warmup over ``warmup_epochs``, then cosine, step or constant: the per-epoch values of
    the per-step schedules :func:`make_optimizer` builds.
    """
    t = train_cfg
    lr = peak_learning_rate(t)
    if epoch < t.warmup_epochs:
        return lr * (epoch + 1) / (t.warmup_epochs + 1)
    if t.schedule == "constant":
        return lr
    if t.schedule == "cosine":
        span = max(1, t.epochs - t.warmup_epochs)
        return 0.5 * lr * (1.0 + math.cos(math.pi * (epoch - t.warmup_epochs) / span))
    return lr * t.step_gamma ** ((epoch - t.warmup_epochs) // max(1, t.step_epochs))


def make_optimizer(cfg, steps_per_epoch: int, lr_scale: float = 1.0):
    """Adam, AdamW or SGD with momentum (Keras 3), on a per-step schedule with warmup."""
    import keras

    t = cfg.train
    lr = peak_learning_rate(t, lr_scale)
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
        schedule = warmup_schedule_class()(step, warm, lr) if warm else step
    wd = t.weight_decay or None
    if t.optimizer == "adam":
        return keras.optimizers.Adam(schedule)
    if t.optimizer == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=t.weight_decay or 0.004)
    return keras.optimizers.SGD(schedule, momentum=t.momentum, weight_decay=wd)


def warmup_schedule_class():
    """:class:`WarmupSchedule`, defined on first use so that importing this module needs no
    Keras (``--help`` and the option checks stay free of TensorFlow's start-up)."""
    global _WARMUP_SCHEDULE
    if _WARMUP_SCHEDULE is None:
        _WARMUP_SCHEDULE = _define_warmup_schedule()
    return _WARMUP_SCHEDULE


_WARMUP_SCHEDULE = None


def __getattr__(name: str):
    if name == "WarmupSchedule":
        return warmup_schedule_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _define_warmup_schedule():
    import keras

    class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
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

    return WarmupSchedule
