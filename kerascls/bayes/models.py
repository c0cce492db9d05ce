"""Bayesian networks of Keras 3 Flipout layers: builder, KL term, Monte Carlo prediction.

:func:`build_bnn` builds the ``bnn_mlp`` / ``bnn_cnn`` layouts of ``kerascls.models.bayesian``
(same layer names, same arguments) from :class:`~kerascls.bayes.flipout.DenseFlipout` and
:class:`~kerascls.bayes.flipout.Conv2DFlipout`, as an ordinary ``keras.Model`` that trains with
``model.fit`` on tensorflow, jax and torch: the Flipout layers add ``KL(q || p) / N`` as layer
losses, so the compiled loss is the negative ELBO per example.

Prediction draws Monte Carlo passes (:func:`predict_mc`); :func:`mean_path` switches the weight
noise off; :func:`posterior_member` and :func:`posterior_ensemble_model` turn posterior draws into
networks of ordinary ``Dense`` / ``Conv2D`` layers (what a TFLite file can hold).

References:
    Blundell et al. 2015, "Weight Uncertainty in Neural Networks".
    Wen et al. 2018, "Flipout: Efficient Pseudo-Independent Weight Perturbations on
    Mini-Batches".
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np

from kerascls.bayes.flipout import Conv2DFlipout, DenseFlipout, FlipoutMixin
from kerascls.errors import UserError
from kerascls.layers import preprocessing_layer

TRUNKS = ("flipout", "deterministic")


def check_arguments(*, convs, trunk: str, prior_scale: float, num_train_examples: int,
                    name: str) -> None:
    """Refuse what no Bayesian network of these layouts can be built with (either engine)."""
    if trunk not in TRUNKS:
        raise UserError(f"--bnn-trunk must be one of {', '.join(TRUNKS)}. Received: {trunk}")
    if not convs and trunk != "flipout":
        raise UserError(f"--bnn-trunk {trunk} needs a convolutional model; {name} has no "
                        "convolutions (use bnn_cnn)")
    if not prior_scale > 0:
        raise UserError(f"--prior-scale must be positive. Received: {prior_scale}")
    if int(num_train_examples) < 1:
        raise UserError(f"num_train_examples must be a positive integer. "
                        f"Received: {num_train_examples}")


def build_bnn(input_shape, num_classes: int, *, convs, hidden, normalize: str | None = None,
              trunk: str = "flipout", prior_scale: float = 1.0, num_train_examples: int = 1,
              kl_weight: float | None = None, posterior_scale_init: float = -5.0,
              dropout: float = 0.0, activation: str = "relu", seed: int | None = None,
              name: str = "bnn") -> keras.Model:
    """Build a Bayesian network of Keras 3 Flipout layers.

    The layout and arguments are those of ``kerascls.models.bayesian.build_bnn``: input
    ``pixels`` (RGB float32 0..255), ``normalize``, then per convolution ``conv{i}`` (valid
    padding) and ``pool{i}`` (2x2 max pooling), ``flatten``, ``dense{i}`` per hidden width,
    ``head_dropout`` (if ``dropout``), ``logits`` and the float32 softmax ``predictions``.

    Args:
        input_shape: ``(H, W, C)``.
        num_classes: number of classes.
        convs: ``(filters, kernel)`` per convolution; empty for ``bnn_mlp``.
        hidden: widths of the hidden DenseFlipout layers.
        normalize: normalization inside the model (``imagenet``, ``unit``, ``none``), or None.
        trunk: ``flipout`` (Bayesian convolutions) or ``deterministic`` (ordinary He-normal
            convolutions under the Bayesian head).
        prior_scale: standard deviation sigma of the ``N(0, sigma^2)`` weight prior.
        num_train_examples: the KL term is divided by this, so the training loss is the
            negative ELBO per example.
        kl_weight: the factor of the KL term directly; default ``1 / num_train_examples``.
            Giving both is an error.
        posterior_scale_init: initial ``rho`` of the posterior scale ``softplus(rho)``.
        dropout: dropout before the output layer.
        activation: hidden activation.
        seed: seed of the Flipout noise (layer ``i`` gets ``seed + i``); None draws one from
            Keras's global seed (``keras.utils.set_random_seed``).
        name: model name.

    Returns:
        A ``keras.Model`` from ``pixels`` to ``predictions``.
    """
    check_arguments(convs=convs, trunk=trunk, prior_scale=prior_scale,
                    num_train_examples=num_train_examples, name=name)
    if kl_weight is None:
        kl_weight = 1.0 / int(num_train_examples)
    elif int(num_train_examples) != 1:
        raise UserError("give num_train_examples or kl_weight, not both. Received: "
                        f"num_train_examples={num_train_examples}, kl_weight={kl_weight}")
    layer_index = iter(range(10**6))
    variational = {"prior_scale": float(prior_scale), "kl_weight": float(kl_weight),
                   "posterior_scale_init": float(posterior_scale_init)}

    def next_seed():
        index = next(layer_index)
        return None if seed is None else int(seed) + index

    L = keras.layers
    inputs = keras.Input(shape=tuple(input_shape), name="pixels")
    x = preprocessing_layer(normalize)(inputs) if normalize else inputs
    for i, (filters, kernel) in enumerate(convs, start=1):
        if trunk == "flipout":
            x = Conv2DFlipout(filters, kernel, activation=activation, seed=next_seed(),
                              name=f"conv{i}", **variational)(x)
        else:
            x = L.Conv2D(filters, kernel, activation=activation, kernel_initializer="he_normal",
                         name=f"conv{i}")(x)
        x = L.MaxPooling2D(2, name=f"pool{i}")(x)
    x = L.Flatten(name="flatten")(x)
    for i, units in enumerate(hidden, start=1):
        x = DenseFlipout(units, activation=activation, seed=next_seed(), name=f"dense{i}",
                         **variational)(x)
    if dropout:
        x = L.Dropout(dropout, name="head_dropout")(x)
    x = DenseFlipout(num_classes, seed=next_seed(), name="logits", **variational)(x)
    outputs = L.Activation("softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


def variational_layers(model) -> list:
    """The model's Flipout layers (nested models included), in layer order."""
    found = []
    for layer in model.layers:
        if isinstance(layer, FlipoutMixin):
            found.append(layer)
        elif hasattr(layer, "layers"):
            found.extend(variational_layers(layer))
    return found


def kl_per_example(model) -> float:
    """The KL term of the loss, ``sum_layers kl_weight * KL(q || p)``, as a Python float.

    With ``kl_weight = 1 / num_train_examples`` this is ``KL(q || p) / num_train_examples``,
    the value ``kerascls.models.bayesian.kl_per_example`` gives for the TFP models.
    """
    return float(sum(float(keras.ops.convert_to_numpy(layer.kl_loss()))
                     for layer in variational_layers(model)))


def _reset_compiled(model) -> None:
    """Drop the traced predict / test functions so that they see a changed ``stochastic``."""
    for attr in ("predict_function", "test_function"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)


@contextlib.contextmanager
def mean_path(model):
    """Within the block every Flipout layer of ``model`` computes its mean path (no noise).

    ``model(x)`` and ``model.predict(x)`` then give the network with the posterior means as
    weights; the layers' previous ``stochastic`` settings come back afterwards.
    """
    layers = variational_layers(model)
    before = [layer.stochastic for layer in layers]
    for layer in layers:
        layer.stochastic = False
    _reset_compiled(model)
    try:
        yield model
    finally:
        for layer, value in zip(layers, before):
            layer.stochastic = value
        _reset_compiled(model)


def _check_samples(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise UserError(f"--mc-samples must be a positive integer. Received: {n}")
    return int(n)


def predict_mc(model, x, n: int, batch_size: int = 256) -> np.ndarray:
    """``(n, N, C)`` float32 probabilities of ``n`` Monte Carlo passes over images ``x``.

    Each pass runs the model over ``x`` in batches of ``batch_size`` (``predict_on_batch``, the
    compiled predict step without ``predict``'s per-call set-up, which would dominate a Monte
    Carlo loop on small batches); the Flipout layers draw fresh weight noise and signs for every
    batch, so the passes are independent posterior predictive samples.

    Args:
        model: a model from :func:`build_bnn` (or any model with Flipout layers).
        x: float32 images ``(N, H, W, C)`` in 0..255.
        n: number of passes (positive).
        batch_size: prediction batch size.
    """
    n = _check_samples(n)
    x = np.asarray(x, dtype=np.float32)
    if not len(x):
        return np.zeros((n, 0, int(model.output_shape[-1])), np.float32)
    batches = [x[i:i + batch_size] for i in range(0, len(x), batch_size)]
    return np.stack([np.concatenate([np.asarray(keras.ops.convert_to_numpy(
        model.predict_on_batch(b)), np.float32) for b in batches]) for _ in range(n)])


def posterior_weights(model, rng: np.random.Generator | None = None,
                      sample: bool = True) -> dict[str, tuple]:
    """``{layer name: (kernel, bias)}``: one posterior draw of every Flipout layer (NumPy).

    See :meth:`kerascls.bayes.flipout.FlipoutMixin.posterior_sample`; ``sample=False`` gives the
    posterior means.
    """
    rng = np.random.default_rng() if rng is None else rng
    return {layer.name: layer.posterior_sample(rng, sample) for layer in variational_layers(model)}


def deterministic_twin(layer, name: str | None = None):
    """An ordinary ``Dense`` / ``Conv2D`` with the configuration of a Flipout layer (unbuilt)."""
    common = {"activation": layer.activation, "use_bias": layer.use_bias,
              "name": name or layer.name, "dtype": layer.dtype_policy}
    if isinstance(layer, DenseFlipout):
        return keras.layers.Dense(layer.units, **common)
    if isinstance(layer, Conv2DFlipout):
        return keras.layers.Conv2D(layer.filters, layer.kernel_size, strides=layer.strides,
                                   padding=layer.padding, data_format=layer.data_format,
                                   dilation_rate=layer.dilation_rate, **common)
    raise TypeError(f"{layer.name} ({type(layer).__name__}) is not a Flipout layer")


def _chain(model) -> list:
    """The model's layers after the input; each must take a single input tensor."""
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    for layer in layers:
        if isinstance(layer.input, (list, tuple, dict)):
            raise UserError(f"{model.name} is not a chain of layers ({layer.name} takes several "
                            "inputs); it cannot be turned into posterior samples")
    return layers


def _set(new_layer, weights) -> None:
    new_layer.set_weights([w for w in weights if w is not None])


def posterior_member(model, rng: np.random.Generator | None = None,
                     sample: bool = True) -> keras.Model:
    """A network of ordinary layers whose weights are one posterior draw of ``model``.

    Every Flipout layer becomes a ``Dense`` / ``Conv2D`` of the same name holding a draw of its
    kernel (and its point-estimate bias); the other layers keep their weights. Its output is an
    exact sample of the Bayesian network's predictive distribution given that draw.
    """
    draws = posterior_weights(model, rng, sample)
    inputs = keras.Input(shape=tuple(model.input_shape[1:]), name="pixels")
    x, pending = inputs, []
    for layer in _chain(model):
        if layer.name in draws:
            new = deterministic_twin(layer)
            x = new(x)
            pending.append((new, draws[layer.name]))
        else:
            new = layer.__class__.from_config(layer.get_config())
            x = new(x)
            if layer.weights:
                pending.append((new, layer.get_weights()))
    for new, weights in pending:
        _set(new, weights)
    return keras.Model(inputs, x, name=f"{model.name}_member")


def posterior_ensemble_model(model, members: int, seed: int = 0,
                             sample: bool = True) -> keras.Model:
    """``members`` posterior draws of ``model`` as one Keras model of ordinary layers.

    Layers before the first Flipout layer are computed once and shared; from there each member
    is a branch whose Flipout layers are ``Dense`` / ``Conv2D`` with one posterior draw
    (names ``m{k}_{layer}``). The output (``member_probabilities``) is ``(batch, members,
    classes)``. Built from builtin layers only, it converts to TFLite without random ops.

    Args:
        model: a chain of layers from :func:`build_bnn`.
        members: ensemble size ``K`` (positive).
        seed: seed of the NumPy generator drawing the weights.
        sample: False gives members with the posterior means (all identical).
    """
    if isinstance(members, bool) or not isinstance(members, (int, np.integer)) or members < 1:
        raise UserError(f"ensemble members must be a positive integer. Received: {members}")
    if not variational_layers(model):
        raise UserError(f"{model.name} has no Flipout layer to sample")
    rng = np.random.default_rng(seed)
    draws = [posterior_weights(model, rng, sample) for _ in range(int(members))]
    layers = _chain(model)
    first = next(i for i, layer in enumerate(layers) if isinstance(layer, FlipoutMixin))
    inputs = keras.Input(shape=tuple(model.input_shape[1:]), name="pixels")
    pending = []
    shared = inputs
    for layer in layers[:first]:
        new = layer.__class__.from_config(layer.get_config())
        shared = new(shared)
        if layer.weights:
            pending.append((new, layer.get_weights()))
    outputs = []
    for k, draw in enumerate(draws):
        x = shared
        for layer in layers[first:]:
            if layer.name in draw:
                new = deterministic_twin(layer, name=f"m{k}_{layer.name}")
                pending.append((new, draw[layer.name]))
            else:
                config = {**layer.get_config(), "name": f"m{k}_{layer.name}"}
                new = layer.__class__.from_config(config)
                if layer.weights:
                    pending.append((new, layer.get_weights()))
            x = new(x)
        num_classes = int(x.shape[-1])
        outputs.append(keras.layers.Reshape((1, num_classes), name=f"m{k}_member")(x))
    if len(outputs) > 1:
        stacked = keras.layers.Concatenate(axis=1, name="member_probabilities")(outputs)
    else:
        stacked = keras.layers.Identity(name="member_probabilities")(outputs[0])
    for new, weights in pending:
        _set(new, weights)
    return keras.Model(inputs, stacked, name=f"{model.name}_ensemble")
