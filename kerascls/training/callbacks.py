"""Callback logic shared by the engines, independent of the callback base class.

Keras 3 and ``tf_keras`` callbacks have the same hooks but different base classes; the logic is
written once as a mixin and each engine makes its class with :func:`nan_stop`.
"""

from __future__ import annotations

import math


class NanStopLogic:
    """Stop training after an epoch whose loss is NaN or infinite; remember it (1-based).

    The check reads the epoch's mean loss, which a single non-finite batch makes non-finite, so
    no step waits on its loss being copied to the host: on jax and torch a per-batch check would
    synchronize every step.
    """

    nan_epoch: int | None = None

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.nan_epoch = epoch + 1
            self.model.stop_training = True


def nan_stop(callback_base: type):
    """A NaN-stop callback instance for a framework's ``Callback`` base class."""
    cls = type("StopOnNaN", (NanStopLogic, callback_base), {})
    return cls()


def nan_message(epoch: int, learning_rate: float, run_dir, hint: str = "check the data") -> str:
    """The one-line error of a run stopped by a NaN loss."""
    return (f"loss became NaN at epoch {epoch}; lower --learning-rate (was {learning_rate}) or "
            f"{hint}. Run kept in {run_dir}")
