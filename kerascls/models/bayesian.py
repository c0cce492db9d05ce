"""Bayesian neural networks: ``bnn_mlp`` and ``bnn_cnn``, built by two engines.

The model (the visual-sentiment lab's BNN):

* prior ``p(w) = N(0, sigma^2)`` on every kernel weight (``prior_scale`` = sigma);
* mean-field Gaussian posterior ``q(w) = N(mu, softplus(rho)^2)`` per weight, biases are point
  estimates;
* Flipout estimates the expected log-likelihood with pseudo-independent weight perturbations
  per example (Wen et al. 2018);
* the training loss is the negative ELBO per example: the mean cross-entropy plus
  ``KL(q || p) / num_train_examples``.

Two implementations hold that model (``ModelSpec.engines = ("tfp", "keras")``):

* ``tfp``: TensorFlow Probability's ``DenseFlipout`` / ``Convolution2DFlipout`` (``tf_keras``
  layers), in :mod:`kerascls.engines.tfp`; the default on the tensorflow backend;
* ``keras``: kerascls' Keras 3 Flipout layers (:mod:`kerascls.bayes`), which run on tensorflow,
  jax and torch; the default on jax and torch, and what ``--bnn-impl keras`` picks anywhere.
  The registry's builder below is this one.

Variants (``VARIANTS``):

* ``bnn_mlp``: flatten, DenseFlipout 128, DenseFlipout 64, DenseFlipout N.
* ``bnn_cnn``: LeNet-5 in Flipout layers, as in TensorFlow Probability's
  ``bayesian_neural_network`` example: conv 6@5x5, pool, conv 16@5x5, pool, fc 120, fc 84, fc N.
  ``trunk="flipout"`` makes the convolutions Flipout layers too; ``trunk="deterministic"`` keeps
  ordinary convolutions under the Flipout head. The shape matches the registry's ``lenet``, which
  is the deterministic baseline it is compared with.

References:
    Blundell et al. 2015, "Weight Uncertainty in Neural Networks".
    Wen et al. 2018, "Flipout: Efficient Pseudo-Independent Weight Perturbations on
    Mini-Batches".
"""

from __future__ import annotations

import functools

from kerascls.bayes.models import TRUNKS, build_bnn
from kerascls.registry import register

__all__ = ["ENGINES", "TRUNKS", "VARIANTS"]

PAPER = ("Blundell et al. 2015, Weight Uncertainty in Neural Networks; Wen et al. 2018, "
         "Flipout: Efficient Pseudo-Independent Weight Perturbations on Mini-Batches")
ENGINES = ("tfp", "keras")

# name -> architecture: convolutions as (filters, kernel) with 2x2 max pooling after each,
# then the hidden Dense widths; the output layer has num_classes units.
VARIANTS = {
    "bnn_mlp": dict(convs=(), hidden=(128, 64), default_size=16, min_size=4,
                    paper=f"Bayesian MLP with Flipout layers ({PAPER})"),
    "bnn_cnn": dict(convs=((6, 5), (16, 5)), hidden=(120, 84), default_size=32, min_size=16,
                    paper=f"LeNet-5 (LeCun et al. 1998) with Flipout layers ({PAPER})"),
}

for _name, _cfg in VARIANTS.items():
    register(_name, family="bayesian", engines=ENGINES, default_size=_cfg["default_size"],
             min_size=_cfg["min_size"], paper=_cfg["paper"])(
        functools.partial(build_bnn, convs=_cfg["convs"], hidden=_cfg["hidden"], name=_name)
    )
