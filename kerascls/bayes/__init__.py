"""Bayesian layers and models for Keras 3 (tensorflow, jax and torch backends).

* :mod:`kerascls.bayes.flipout`: :class:`DenseFlipout` and :class:`Conv2DFlipout`, the Keras 3
  twins of TensorFlow Probability's Flipout layers.
* :mod:`kerascls.bayes.models`: :func:`build_bnn` (the ``bnn_mlp`` / ``bnn_cnn`` layouts),
  the KL term, Monte Carlo prediction and posterior-sample networks.
"""

from kerascls.bayes.flipout import Conv2DFlipout, DenseFlipout, FlipoutMixin
from kerascls.bayes.models import (
    build_bnn,
    kl_per_example,
    mean_path,
    posterior_ensemble_model,
    posterior_member,
    posterior_weights,
    predict_mc,
    variational_layers,
)

__all__ = [
    "Conv2DFlipout",
    "DenseFlipout",
    "FlipoutMixin",
    "build_bnn",
    "kl_per_example",
    "mean_path",
    "posterior_ensemble_model",
    "posterior_member",
    "posterior_weights",
    "predict_mc",
    "variational_layers",
]
