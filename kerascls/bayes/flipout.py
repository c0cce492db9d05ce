"""Flipout layers for Keras 3: variational Dense and Conv2D on every backend.

The layers hold the same model as TensorFlow Probability's ``tfp.layers.DenseFlipout`` and
``tfp.layers.Convolution2DFlipout`` as kerascls builds them (``kerascls.models.bayesian``), written
with ``keras.ops`` and ``keras.random`` only, so they train and predict on tensorflow, jax and torch
and serialize in ``.keras`` files:

* mean-field normal posterior ``q(w) = N(mu, sigma^2)`` per kernel weight with
  ``sigma = softplus(rho) + eps(float32)`` (TFP's ``default_loc_scale_fn`` adds the machine epsilon
  too), ``mu`` initialized He-normal and ``rho`` from ``N(posterior_scale_init, 0.1^2)``;
* a fixed ``N(0, prior_scale^2)`` prior on every kernel weight;
* the analytic ``KL(q || p)``, with TFP's formula for two normals, times ``kl_weight`` added with
  ``add_loss`` at every call (``kl_weight = 1 / num_train_examples`` makes the layer losses the KL
  term of the negative ELBO per example);
* biases are point estimates (TFP's singular ``Deterministic`` bias posterior), starting at zero;
* the Flipout estimator: one Gaussian perturbation ``sigma * eps`` of the kernel per batch,
  decorrelated across examples by random signs,
  ``y = x @ mu + ((x * s_in) @ (sigma * eps)) * s_out`` with ``s_in``, ``s_out`` in ``{-1, 1}``
  drawn per example and per input / output channel.

``stochastic=False`` (a layer attribute, or the call argument ``stochastic``) computes the mean path
``y = x @ mu + b``. :meth:`FlipoutMixin.posterior_sample` draws a kernel from the posterior with
NumPy, for ensembles of deterministic networks (TFLite has no Flipout ops).

References:
    Blundell et al. 2015, "Weight Uncertainty in Neural Networks" (ICML).
    Wen et al. 2018, "Flipout: Efficient Pseudo-Independent Weight Perturbations on
    Mini-Batches" (ICLR).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

FLOAT32_EPS = float(np.finfo(np.float32).eps)


def _softplus_np(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def _rademacher(shape, dtype, seed):
    """Independent random signs in ``{-1, 1}``."""
    return ops.cast(keras.random.randint(shape, 0, 2, seed=seed), dtype) * 2.0 - 1.0


def normal_kl(loc, scale, prior_scale):
    """Elementwise ``KL(N(loc, scale^2) || N(0, prior_scale^2))``, TFP's formula.

    ``0.5 (loc / s_p)^2 + 0.5 expm1(2 d) - d`` with ``d = log(scale) - log(s_p)``, the form
    ``tfp.distributions.kl_divergence`` uses for two normals, so both agree to float32 rounding.
    """
    prior_scale = ops.cast(prior_scale, scale.dtype)
    diff_log_scale = ops.log(scale) - ops.log(prior_scale)
    return (0.5 * ops.square(loc / prior_scale) + 0.5 * ops.expm1(2.0 * diff_log_scale)
            - diff_log_scale)


class FlipoutMixin:
    """The variational kernel shared by :class:`DenseFlipout` and :class:`Conv2DFlipout`.

    Holds the posterior variables ``kernel_loc`` (``mu``) and ``kernel_untransformed_scale``
    (``rho``), the point-estimate ``bias``, the seed generator of the Flipout noise, the KL term
    and the NumPy posterior draw. Subclasses give the kernel shape and the linear map.
    """

    def _init_variational(self, prior_scale, kl_weight, posterior_scale_init, stochastic, seed):
        if not prior_scale > 0:
            raise ValueError(f"prior_scale must be positive. Received: prior_scale={prior_scale}")
        if not kl_weight >= 0:
            raise ValueError(f"kl_weight must be non-negative. Received: kl_weight={kl_weight}")
        self.prior_scale = float(prior_scale)
        self.kl_weight = float(kl_weight)
        self.posterior_scale_init = float(posterior_scale_init)
        self.stochastic = bool(stochastic)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _build_variational(self, kernel_shape, bias_shape):
        self.kernel_loc = self.add_weight(
            name="kernel_loc", shape=kernel_shape, initializer=keras.initializers.HeNormal(),
            dtype=self.variable_dtype)
        self.kernel_untransformed_scale = self.add_weight(
            name="kernel_untransformed_scale", shape=kernel_shape,
            initializer=keras.initializers.RandomNormal(mean=self.posterior_scale_init,
                                                        stddev=0.1),
            dtype=self.variable_dtype)
        self.bias = (self.add_weight(name="bias", shape=bias_shape, initializer="zeros",
                                     dtype=self.variable_dtype)
                     if self.use_bias else None)

    @property
    def kernel(self):
        """The posterior mean ``mu`` of the kernel (the kernel of the mean path)."""
        return self.kernel_loc

    def kernel_scale(self):
        """The posterior standard deviation ``sigma = softplus(rho) + eps`` of each weight."""
        return ops.softplus(self.kernel_untransformed_scale) + FLOAT32_EPS

    def kl_divergence(self):
        """``KL(q || p)`` of the kernel, summed over its weights (not scaled by kl_weight)."""
        scale = self.kernel_scale()
        return ops.sum(normal_kl(ops.convert_to_tensor(self.kernel_loc), scale,
                                 self.prior_scale))

    def kl_loss(self):
        """The layer's loss term: ``kl_weight * KL(q || p)``."""
        return self.kl_divergence() * self.kl_weight

    def posterior_sample(self, rng: np.random.Generator | None = None, sample: bool = True):
        """One draw of ``(kernel, bias)`` as float32 NumPy arrays.

        The kernel is ``mu + sigma * z`` with ``z ~ N(0, 1)`` from ``rng`` (or ``mu`` when
        ``sample`` is False); the bias is its point estimate (``None`` without a bias). A network
        of ordinary layers with these weights is an exact posterior sample, since Flipout's signs
        leave the distribution of the perturbed weights unchanged.
        """
        loc = np.asarray(ops.convert_to_numpy(self.kernel_loc), np.float32)
        bias = (np.asarray(ops.convert_to_numpy(self.bias), np.float32)
                if self.bias is not None else None)
        if not sample:
            return loc, bias
        rng = np.random.default_rng() if rng is None else rng
        rho = np.asarray(ops.convert_to_numpy(self.kernel_untransformed_scale), np.float64)
        scale = _softplus_np(rho) + FLOAT32_EPS
        kernel = loc + scale * rng.standard_normal(loc.shape)
        return kernel.astype(np.float32), bias

    def _flipout(self, inputs, stochastic, linear, sign_in_shape, sign_out_shape):
        """``linear(x, mu)`` plus, when stochastic, the sign-flipped perturbation."""
        stochastic = self.stochastic if stochastic is None else bool(stochastic)
        loc = ops.cast(self.kernel_loc, self.compute_dtype)
        outputs = linear(inputs, loc)
        if stochastic:
            scale = ops.cast(self.kernel_scale(), self.compute_dtype)
            noise = keras.random.normal(ops.shape(loc), dtype=self.compute_dtype,
                                        seed=self.seed_generator)
            sign_in = _rademacher(sign_in_shape, self.compute_dtype, self.seed_generator)
            sign_out = _rademacher(sign_out_shape, self.compute_dtype, self.seed_generator)
            outputs = outputs + linear(inputs * sign_in, scale * noise) * sign_out
        if self.bias is not None:
            outputs = outputs + ops.reshape(ops.cast(self.bias, self.compute_dtype),
                                            self._bias_broadcast_shape())
        if self.activation is not None:
            outputs = self.activation(outputs)
        self.add_loss(ops.cast(self.kl_loss(), "float32"))
        return outputs

    def _bias_broadcast_shape(self) -> tuple:
        return (-1,)

    def _variational_config(self) -> dict:
        return {
            "prior_scale": self.prior_scale,
            "kl_weight": self.kl_weight,
            "posterior_scale_init": self.posterior_scale_init,
            "stochastic": self.stochastic,
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package="kerascls")
class DenseFlipout(FlipoutMixin, keras.layers.Layer):
    """Densely connected variational layer with the Flipout estimator (Wen et al. 2018).

    The Keras 3 twin of ``tfp.layers.DenseFlipout`` with kerascls's prior and posterior: see the
    module docstring. Inputs of any rank >= 2; the last axis is contracted.

    Args:
        units: output width.
        activation: activation applied to the output (name or callable), or None.
        use_bias: whether to add a point-estimate bias.
        prior_scale: standard deviation sigma of the ``N(0, sigma^2)`` kernel prior.
        kl_weight: factor of the KL term added as a layer loss (``1 / num_train_examples`` for
            the negative ELBO per example).
        posterior_scale_init: mean of the initial ``rho`` (posterior scale ``softplus(rho)``).
        stochastic: False computes the mean path ``x @ mu + b`` (no weight noise).
        seed: seed of the layer's ``keras.random.SeedGenerator``.
        **kwargs: ``keras.layers.Layer`` arguments (``name``, ``dtype``, ...).

    Call arguments:
        inputs: the input tensor.
        stochastic: overrides the layer's ``stochastic`` attribute for this call.

    References:
        Blundell et al. 2015, "Weight Uncertainty in Neural Networks".
        Wen et al. 2018, "Flipout: Efficient Pseudo-Independent Weight Perturbations on
        Mini-Batches".
    """

    def __init__(self, units: int, activation=None, use_bias: bool = True,
                 prior_scale: float = 1.0, kl_weight: float = 1.0,
                 posterior_scale_init: float = -5.0, stochastic: bool = True,
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self._init_variational(prior_scale, kl_weight, posterior_scale_init, stochastic, seed)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    def build(self, input_shape):
        in_size = input_shape[-1]
        if in_size is None:
            raise ValueError(f"{self.name}: the last input dimension must be known. "
                             f"Received: input_shape={input_shape}")
        self._build_variational((int(in_size), self.units), (self.units,))
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: int(in_size)})

    def call(self, inputs, stochastic=None):
        shape = ops.shape(inputs)
        return self._flipout(inputs, stochastic, ops.matmul, shape,
                             (*shape[:-1], self.units))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        config = super().get_config()
        config.update({
            "units": self.units,
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            **self._variational_config(),
        })
        return config


@keras.saving.register_keras_serializable(package="kerascls")
class Conv2DFlipout(FlipoutMixin, keras.layers.Layer):
    """2-D variational convolution with the Flipout estimator (Wen et al. 2018).

    The Keras 3 twin of ``tfp.layers.Convolution2DFlipout`` with kerascls's prior and posterior:
    see the module docstring. The random signs are drawn per example and channel (shape
    ``(batch, 1, 1, channels)`` for ``channels_last``), as in TFP.

    Args:
        filters: output channels.
        kernel_size: int or pair.
        strides: int or pair.
        padding: ``valid`` or ``same``.
        data_format: ``channels_last`` or ``channels_first``; None takes Keras's setting.
        dilation_rate: int or pair.
        activation: activation applied to the output (name or callable), or None.
        use_bias: whether to add a point-estimate bias.
        prior_scale: standard deviation sigma of the ``N(0, sigma^2)`` kernel prior.
        kl_weight: factor of the KL term added as a layer loss.
        posterior_scale_init: mean of the initial ``rho`` (posterior scale ``softplus(rho)``).
        stochastic: False computes the mean path ``conv(x, mu) + b`` (no weight noise).
        seed: seed of the layer's ``keras.random.SeedGenerator``.
        **kwargs: ``keras.layers.Layer`` arguments (``name``, ``dtype``, ...).

    Call arguments:
        inputs: a 4-D tensor.
        stochastic: overrides the layer's ``stochastic`` attribute for this call.

    References:
        Blundell et al. 2015, "Weight Uncertainty in Neural Networks".
        Wen et al. 2018, "Flipout: Efficient Pseudo-Independent Weight Perturbations on
        Mini-Batches".
    """

    def __init__(self, filters: int, kernel_size, strides=1, padding: str = "valid",
                 data_format: str | None = None, dilation_rate=1, activation=None,
                 use_bias: bool = True, prior_scale: float = 1.0, kl_weight: float = 1.0,
                 posterior_scale_init: float = -5.0, stochastic: bool = True,
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.strides = _pair(strides, "strides")
        self.dilation_rate = _pair(dilation_rate, "dilation_rate")
        padding = str(padding).lower()
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be one of valid, same. Received: padding={padding}")
        self.padding = padding
        data_format = data_format or keras.config.image_data_format()
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError("data_format must be one of channels_last, channels_first. "
                             f"Received: data_format={data_format}")
        self.data_format = data_format
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self._init_variational(prior_scale, kl_weight, posterior_scale_init, stochastic, seed)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    @property
    def _channel_axis(self) -> int:
        return -1 if self.data_format == "channels_last" else 1

    def build(self, input_shape):
        channels = input_shape[self._channel_axis]
        if channels is None:
            raise ValueError(f"{self.name}: the channel dimension must be known. "
                             f"Received: input_shape={input_shape}")
        self._build_variational((*self.kernel_size, int(channels), self.filters),
                                (self.filters,))
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={self._channel_axis: int(channels)})

    def _conv(self, x, kernel):
        return ops.conv(x, kernel, strides=self.strides, padding=self.padding,
                        data_format=self.data_format, dilation_rate=self.dilation_rate)

    def call(self, inputs, stochastic=None):
        batch = ops.shape(inputs)[0]
        channels = ops.shape(inputs)[self._channel_axis]
        if self.data_format == "channels_last":
            sign_in, sign_out = (batch, 1, 1, channels), (batch, 1, 1, self.filters)
        else:
            sign_in, sign_out = (batch, channels, 1, 1), (batch, self.filters, 1, 1)
        return self._flipout(inputs, stochastic, self._conv, sign_in, sign_out)

    def _bias_broadcast_shape(self) -> tuple:
        return (-1,) if self.data_format == "channels_last" else (-1, 1, 1)

    def compute_output_shape(self, input_shape):
        spatial = (input_shape[1:3] if self.data_format == "channels_last"
                   else input_shape[2:4])
        out = []
        for size, k, s, d in zip(spatial, self.kernel_size, self.strides, self.dilation_rate):
            if size is None:
                out.append(None)
            elif self.padding == "same":
                out.append(-(-size // s))
            else:
                out.append((size - d * (k - 1) - 1) // s + 1)
        if self.data_format == "channels_last":
            return (input_shape[0], *out, self.filters)
        return (input_shape[0], self.filters, *out)

    def get_config(self):
        config = super().get_config()
        config.update({
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "data_format": self.data_format,
            "dilation_rate": self.dilation_rate,
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            **self._variational_config(),
        })
        return config


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints. Received: {name}={value}")
    return value
