"""The engine seam: how a stage trains, loads, converts and measures a model without asking
what is inside it.

An :class:`Engine` knows one way of holding a network:

* ``keras`` (:mod:`kerascls.engines.keras`): Keras 3 models on any backend, the Bayesian
  models built from kerascls' own Flipout layers included;
* ``tfp`` (:mod:`kerascls.engines.tfp`): the Bayesian models built from TensorFlow
  Probability's Flipout layers, which are ``tf_keras`` (Keras 2) layers. That module is the only
  importer of ``tensorflow_probability`` and ``tf_keras`` in kerascls.

Training, evaluation, export and comparison call the engine named by the model's registry spec
(at training) or by the run's manifest (afterwards) and never branch on the framework.

A :class:`Predictor` is what :meth:`Engine.load` returns for a run: probabilities, Monte Carlo
samples when the model is Bayesian, and TF-traceable outputs for the SavedModel.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from kerascls.choices import BNN_IMPLS
from kerascls.errors import UserError

ENGINES = {
    "keras": "kerascls.engines.keras:KerasEngine",
    "tfp": "kerascls.engines.tfp:TfpEngine",
}


class Predictor(Protocol):
    """A loaded run's model, as every consumer uses it.

    Attributes:
        model: the underlying network (a Keras 3 model, or a ``tf_keras`` model for ``tfp``).
        bayesian: True when predictions are Monte Carlo averages over posterior samples.
        mc_samples: the default number of Monte Carlo samples.
        trackable: what a SavedModel attaches so that the model's variables are saved.
    """

    model: Any
    bayesian: bool
    mc_samples: int
    trackable: Any

    def predict_proba(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """``(N, C)`` probabilities of float32 0..255 images (Monte Carlo mean if Bayesian)."""

    def predict_mc(self, x: np.ndarray, n: int | None = None,
                   batch_size: int = 256) -> np.ndarray:
        """``(n, N, C)`` Monte Carlo probabilities (Bayesian predictors only)."""

    def predict_uncertainty(self, x: np.ndarray, n: int | None = None, batch_size: int = 256):
        """A :class:`kerascls.uncertainty.MCPrediction` of ``n`` passes (Bayesian predictors)."""

    def features(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """``(N, D)`` features the classifier layer sees (deterministic predictors only)."""

    def signature_outputs(self, pixels, n: int) -> dict:
        """TF-traceable outputs of a float32 0..255 batch: ``probabilities`` and, for Bayesian
        predictors, ``entropy`` and ``mutual_information`` from ``n`` samples in the graph."""


class Engine(Protocol):
    """One way of training and holding a network."""

    name: str

    def check(self, cfg, spec) -> None:
        """Refuse, before anything is written, what this engine cannot do with ``cfg``."""

    def fit(self, cfg, spec, splits, run_dir: Path, placement) -> dict[str, list[float]]:
        """Train into ``run_dir`` (best model, ``history.csv``, resume state); return history."""

    def finish(self, cfg, splits, run_dir: Path) -> dict:
        """Post-training steps on the saved model; manifest entries they produce."""

    def load(self, run) -> Predictor:
        """The :class:`Predictor` of a finished run."""

    def export_tflite(self, run, out_dir: Path, variant: str, **options) -> list[Path]:
        """Write ``out_dir/<model>-<variant>.tflite`` and its sidecar; return both paths."""

    def count_macs(self, run) -> tuple[int, int]:
        """Parameters and multiply-accumulates per image (one Monte Carlo pass)."""


# What an engine cannot do, as data, so that it is refused before devices are set up:
# engine -> (what the message calls a model of it, {train option: allowed values}, a hint).
LIMITS = {
    "tfp": ("the Bayesian model {name} with --bnn-impl tfp (tf_keras layers)",
            {"strategy": ("none",), "mixed_precision": ("off",)},
            "or train it with --bnn-impl keras"),
}

_cache: dict[str, Engine] = {}


def check_limits(engine: str, cfg, model_name: str) -> None:
    """Refuse training options ``engine`` cannot honour (see :data:`LIMITS`), in one line."""
    if engine not in LIMITS:
        return
    what, options, hint = LIMITS[engine]
    for option, allowed in options.items():
        value = getattr(cfg.train, option)
        if value not in allowed:
            flag = "--" + option.replace("_", "-")
            raise UserError(f"{flag} {value} is not available for {what.format(name=model_name)}; "
                            f"use {flag} {allowed[0]} {hint}")


def get_engine(name: str) -> Engine:
    """The engine called ``name`` (``keras`` or ``tfp``)."""
    if name not in ENGINES:
        raise UserError(f"unknown engine '{name}'; engines: {', '.join(ENGINES)}")
    if name not in _cache:
        module, _, cls = ENGINES[name].partition(":")
        _cache[name] = getattr(importlib.import_module(module), cls)()
    return _cache[name]


def resolve_engine(spec, bnn_impl: str = "auto", backend: str | None = None) -> str:
    """The engine that trains ``spec`` with ``--bnn-impl bnn_impl`` on ``backend``.

    A model lists the engines that can build it (``spec.engines``, preferred first). For the
    Bayesian models that is ``("tfp", "keras")``: TFP's layers on the tensorflow backend, the Keras
    3 Flipout layers on jax and torch, where TFP cannot run. ``--bnn-impl tfp|keras`` picks one
    explicitly; ``tfp`` on another backend is refused.
    """
    if backend is None:
        import keras

        backend = keras.backend.backend()
    if bnn_impl not in BNN_IMPLS:
        raise UserError(f"--bnn-impl must be one of {', '.join(BNN_IMPLS)}. "
                        f"Received: --bnn-impl={bnn_impl}")
    engines = tuple(spec.engines)
    if bnn_impl == "auto":
        usable = [e for e in engines if e != "tfp" or backend == "tensorflow"]
        if not usable:
            raise UserError(f"{spec.name} needs the tensorflow Keras backend; received "
                            f"KERAS_BACKEND={backend}")
        return usable[0]
    if len(engines) == 1 or bnn_impl not in engines:
        raise UserError(f"--bnn-impl {bnn_impl} applies to Bayesian models; {spec.name} is "
                        f"built by the {engines[0]} engine only (leave --bnn-impl auto)")
    if bnn_impl == "tfp" and backend != "tensorflow":
        raise UserError(f"--bnn-impl tfp needs the tensorflow Keras backend (TFP's Flipout layers "
                        f"are tf_keras layers); received KERAS_BACKEND={backend}. Use "
                        f"--bnn-impl keras for the Keras 3 Flipout layers")
    return bnn_impl


def engine_of_manifest(metadata: dict) -> str:
    """The engine a run was trained with, from its manifest (older manifests name a framework)."""
    if "engine" in metadata:
        return str(metadata["engine"])
    return "tfp" if metadata.get("framework") == "tf_keras" else "keras"
