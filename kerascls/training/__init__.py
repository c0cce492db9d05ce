"""What every training engine shares, written once below them.

* :mod:`kerascls.training.history`: the per-epoch ``history.csv`` (read, trim after a kill).
* :mod:`kerascls.training.schedule`: the learning-rate rule for the global batch, per-epoch and
  per-step schedules, the Keras 3 optimizer.
* :mod:`kerascls.training.callbacks`: the NaN stop, for Keras 3 and ``tf_keras`` callbacks alike.
* :mod:`kerascls.training.rundir`: naming run directories (resume, never overwrite).

Nothing here imports an engine; engines import these.
"""
