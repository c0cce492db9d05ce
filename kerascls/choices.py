"""The allowed values of enumerated options, shared by the configuration and the stages.

A ground-floor module: it imports nothing, so ``kerascls.config`` can name the choices without
importing the code that acts on them.
"""

STRATEGIES = ("none", "mirrored", "multiworker", "data-parallel")
DEVICES = ("auto", "cpu", "gpu")
MIXED_PRECISION = ("off", "mixed_float16", "mixed_bfloat16")
LR_SCALING = ("linear", "sqrt", "none")
# Which implementation trains a Bayesian model: ``auto`` is TFP's layers on the tensorflow
# backend and kerascls' Keras 3 Flipout layers on jax and torch.
BNN_IMPLS = ("auto", "tfp", "keras")
