"""The ``tfp`` engine's posterior ensemble: ``K`` posterior draws as plain TensorFlow networks.

Reads the posterior of a TFP (``tf_keras``) Bayesian model through its layers' attributes (no
TFP import is needed here) and computes each member with fixed weights in builtin TensorFlow
ops, so the ensemble converts to TFLite (:mod:`kerascls.export.montecarlo`).
"""

from __future__ import annotations

import numpy as np

from kerascls.errors import UserError
from kerascls.export.montecarlo import ENSEMBLE_MEMBERS, ENSEMBLE_SEED


def _tf():
    import tensorflow as tf

    return tf


def variational_layers(model) -> list:
    """The model's Flipout layers (those holding a kernel posterior)."""
    return [layer for layer in model.layers if hasattr(layer, "kernel_posterior_fn")]


def _posterior_sample(dist, rng: np.random.Generator, sample: bool) -> np.ndarray:
    """A numpy draw from a (possibly ``Independent``) Normal or Deterministic distribution."""
    base = getattr(dist, "distribution", dist)
    loc = np.asarray(base.loc.numpy() if hasattr(base.loc, "numpy") else base.loc, np.float32)
    scale = getattr(base, "scale", None)
    if not sample or scale is None:
        return loc
    scale = np.asarray(scale.numpy() if hasattr(scale, "numpy") else scale, np.float32)
    return (loc + scale * rng.standard_normal(loc.shape)).astype(np.float32)


def _weights_of(layer, rng: np.random.Generator, sample: bool):
    """``(kernel, bias)`` as numpy: a posterior draw for a Flipout layer, the values otherwise."""
    if hasattr(layer, "kernel_posterior"):
        bias = (_posterior_sample(layer.bias_posterior, rng, sample)
                if layer.bias_posterior is not None else None)
        return _posterior_sample(layer.kernel_posterior, rng, sample), bias
    bias = layer.bias.numpy() if getattr(layer, "bias", None) is not None else None
    return layer.kernel.numpy(), bias


def _apply_weighted(layer, kernel, bias, x):
    """A Conv2D / Dense (or their Flipout twins) with fixed weights, in plain TensorFlow ops."""
    tf = _tf()
    if hasattr(layer, "filters"):
        if layer.data_format != "channels_last":
            raise UserError(f"layer {layer.name}: only channels_last convolutions are supported")
        y = tf.nn.convolution(x, kernel, strides=layer.strides, padding=layer.padding.upper(),
                              dilations=layer.dilation_rate)
    else:
        y = tf.matmul(x, kernel)
    if bias is not None:
        y = y + bias
    return layer.activation(y)


class PosteriorEnsemble:
    """``K`` deterministic networks whose weights are draws from a Bayesian model's posterior.

    Every Flipout layer becomes a convolution or matrix product with one draw of its kernel
    (biases are point estimates); layers before the first Flipout layer are computed once and
    shared by the members. Flipout's sign flips leave the distribution of the perturbed weights
    unchanged, so each member is an exact posterior sample of the Bayesian network. The weights
    are constants, so the computation converts to TFLite builtin ops without variables.

    Calling it on a float32 0..255 batch returns the members' probabilities ``(batch, K, C)``.

    Args:
        model: a Bayesian model from :func:`build_bnn` (a chain of layers).
        members: ensemble size ``K``.
        seed: seed of the numpy generator drawing the weights.
        sample: False gives members with the posterior means (all identical).
    """

    def __init__(self, model, members: int = ENSEMBLE_MEMBERS, seed: int = ENSEMBLE_SEED,
                 sample: bool = True):
        if isinstance(members, bool) or not isinstance(members, (int, np.integer)) \
                or members < 1:
            raise UserError(f"ensemble members must be a positive integer. Received: {members}")
        if not variational_layers(model):
            raise UserError(f"{model.name} has no Flipout layer to sample")
        rng = np.random.default_rng(seed)
        self.members = int(members)
        self.input_shape = tuple(int(v) for v in model.input_shape[1:])
        self.num_classes = int(model.output_shape[-1])
        # (layer, None) for weightless layers, (layer, [params]) with one entry per member for
        # Flipout layers, or one shared entry for deterministic weighted layers.
        self.steps = []
        for layer in model.layers[1:]:
            if hasattr(layer, "kernel_posterior"):
                self.steps.append((layer, [_weights_of(layer, rng, sample)
                                           for _ in range(self.members)]))
            elif layer.weights and hasattr(layer, "kernel"):
                self.steps.append((layer, [_weights_of(layer, rng, sample)]))
            elif layer.trainable_weights:
                raise UserError(f"layer {layer.name} ({type(layer).__name__}) cannot go into "
                                "the posterior ensemble")
            else:
                self.steps.append((layer, None))

    def __call__(self, pixels):
        tf = _tf()
        shared = tf.cast(pixels, tf.float32)
        branches = None
        for layer, params in self.steps:
            if params is not None and len(params) == self.members and \
                    hasattr(layer, "kernel_posterior"):
                inputs = branches or [shared] * self.members
                branches = [_apply_weighted(layer, k, b, x)
                            for x, (k, b) in zip(inputs, params)]
            elif params is not None:
                (k, b), = params
                if branches is None:
                    shared = _apply_weighted(layer, k, b, shared)
                else:
                    branches = [_apply_weighted(layer, k, b, x) for x in branches]
            elif branches is None:
                shared = layer(shared, training=False)
            else:
                branches = [layer(x, training=False) for x in branches]
        return tf.stack([tf.cast(x, tf.float32) for x in branches], axis=1)


def posterior_ensemble(model, members: int = ENSEMBLE_MEMBERS, seed: int = ENSEMBLE_SEED,
                       sample: bool = True) -> PosteriorEnsemble:
    """The :class:`PosteriorEnsemble` of ``members`` posterior draws of ``model``."""
    return PosteriorEnsemble(model, members, seed, sample)




