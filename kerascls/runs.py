"""Loading a finished run directory: its manifest, config, model and data.

Every consumer (evaluate, export, serving, compare, explain) goes through :func:`load_run`, so a
run's labels, input size, normalization and temperature are read from one manifest and never
guessed.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from kerascls.config import Config
from kerascls.errors import UserError
from kerascls.fileio import read_json

MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"
CONFIG_FILE = "config.yaml"


class Run:
    """A trained run directory.

    Attributes:
        path: the run directory.
        metadata: the manifest (``metadata.json``).
        config: the resolved :class:`kerascls.config.Config`.
    """

    def __init__(self, path: Path, metadata: dict, config: Config):
        self.path = path
        self.metadata = metadata
        self.config = config

    # -- identity -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.metadata["model_name"]

    @property
    def labels(self) -> list[str]:
        return list(self.metadata["labels"])

    @property
    def image_size(self) -> int:
        return int(self.metadata["image_size"])

    @property
    def temperature(self) -> float:
        return float(self.metadata.get("temperature", 1.0))

    @property
    def engine(self):
        """The :class:`kerascls.engines.Engine` that trained the run (from the manifest)."""
        from kerascls.engines import engine_of_manifest, get_engine

        return get_engine(engine_of_manifest(self.metadata))

    @functools.cached_property
    def predictor(self):
        """The run's :class:`kerascls.engines.Predictor`, loaded once by its engine."""
        return self.engine.load(self)

    @property
    def is_bayesian(self) -> bool:
        """True when the run predicts by Monte Carlo over posterior samples."""
        return bool(self.predictor.bayesian)

    # -- models ---------------------------------------------------------------------------------
    @property
    def model(self):
        """The trained network (a Keras 3 model; a ``tf_keras`` model for the ``tfp`` engine)."""
        return self.predictor.model

    def deployable(self):
        """The Keras model that exports convert: the model with its fitted temperature applied."""
        deployable = getattr(self.predictor, "deployable", None)
        if deployable is None or self.is_bayesian:
            raise UserError("Bayesian runs are exported through their Monte Carlo predictor")
        return deployable()

    def predict_proba(self, x: np.ndarray, batch_size: int = 256, calibrated: bool = True):
        """Class probabilities for float32 0..255 images at the run's input size."""
        return self.predictor.predict_proba(np.asarray(x, dtype=np.float32),
                                            batch_size=batch_size, calibrated=calibrated)

    def features(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """``(N, D)`` features the classifier layer sees, for float32 0..255 images
        (deterministic runs; Bayesian ones raise :class:`kerascls.errors.UserError`)."""
        return self.predictor.features(np.asarray(x, dtype=np.float32), batch_size=batch_size)

    def signature_outputs(self, pixels, n: int | None = None) -> dict:
        """TF-traceable outputs for a float32 0..255 batch: ``probabilities`` (+ uncertainty for
        Bayesian runs, from ``n`` Monte Carlo samples, default ``eval.mc_samples``)."""
        return self.predictor.signature_outputs(pixels, n or self.config.eval.mc_samples)

    # -- data -----------------------------------------------------------------------------------
    def dataset(self, dataset: str | None = None):
        """The run's splits recreated from its config, its training subset included (or
        ``dataset`` at the run's input size)."""
        from kerascls.data import load_dataset
        from kerascls.data.sources import limit_train

        d = self.config.data
        splits = load_dataset(
            dataset or d.dataset, self.image_size, seed=self.config.train.seed,
            val_fraction=d.val_fraction, test_fraction=d.test_fraction, data_dir=d.data_dir,
            num_examples=d.num_examples, sentiment_size=d.sentiment_size, noise=d.noise,
            imbalance=d.imbalance)
        if dataset is None or dataset == d.dataset:  # the training images the run saw
            splits = limit_train(splits, d.max_train_examples, self.config.train.seed)
        return splits


def load_run(run_dir: str | Path) -> Run:
    """Open a run directory written by ``python -m kerascls.train``; UserError if it is not one."""
    path = Path(run_dir).expanduser()
    if not path.exists():
        raise UserError(f"run directory not found: {run_dir}")
    if not path.is_dir():
        raise UserError(f"not a run directory (not a folder): {run_dir}")
    meta_path = path / METADATA_FILE
    if not meta_path.is_file():
        raise UserError(f"{run_dir} is not a finished run: {METADATA_FILE} is missing")
    try:
        metadata = read_json(meta_path)
    except ValueError as exc:
        raise UserError(f"{meta_path} is not valid JSON: {exc}") from None
    cfg_path = path / CONFIG_FILE
    config = Config.load(cfg_path) if cfg_path.is_file() else Config()
    run = Run(path, metadata, config)
    missing = [f for f in run.engine.model_files if not (path / f).is_file()]
    if missing:
        raise UserError(f"run directory {run_dir} has no model ({', '.join(missing)})")
    return run
