"""The manifest: ``metadata.json``, the one description that travels with every artifact.

Labels, input size, normalization, model name, engine, backend, versions and metrics are read
from it by every consumer (evaluate, export, serving, the edge runner's sidecars); nobody
guesses them. Training writes it through :func:`write_manifest`; readers use
:func:`kerascls.runs.load_run`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from kerascls.fileio import atomic_write_json, read_json

METADATA_FILE = "metadata.json"


def versions() -> dict[str, str]:
    """Versions of the packages that shaped a run (the Keras backend's own package included)."""
    import keras
    import numpy as np

    from kerascls import __version__

    out = {"kerascls": __version__, "keras": keras.__version__,
           "python": sys.version.split()[0], "numpy": np.__version__}
    for package in ("tensorflow", "jax", "torch"):
        module = sys.modules.get(package)
        if module is not None and hasattr(module, "__version__"):
            out[package] = module.__version__
    if "tensorflow" not in out:
        import tensorflow as tf

        out["tensorflow"] = tf.__version__
    return out


def build_manifest(*, spec, engine: str, cfg, splits, image_size: int, history: dict,
                   train_seconds: float, backend: str, extra: dict | None = None) -> dict:
    """The manifest of a freshly trained run (metrics are added after evaluation)."""
    d = cfg.data
    manifest: dict[str, Any] = {
        "model_name": spec.name,
        "family": spec.family,
        "status": "trained",
        "engine": engine,
        "dataset": d.dataset,
        "labels": splits.class_names,
        "num_classes": splits.num_classes,
        "input_shape": [image_size, image_size, 3],
        "image_size": image_size,
        "resize_method": "bilinear",
        "normalize": d.normalize,
        "input_range": [0, 255],
        "temperature": 1.0,
        "train_seconds": round(train_seconds, 2),
        "epochs_trained": len(history.get("loss", [])),
        "num_train_examples": int(len(splits.x_train)),
        "backend": backend,
        "versions": versions(),
    }
    manifest.update(extra or {})
    return manifest


def write_manifest(run_dir: str | Path, manifest: dict) -> None:
    """Write ``metadata.json`` atomically."""
    atomic_write_json(Path(run_dir) / METADATA_FILE, manifest)


def read_manifest(run_dir: str | Path) -> dict:
    """Read ``metadata.json`` of a run directory."""
    return read_json(Path(run_dir) / METADATA_FILE)


def update_manifest(run_dir: str | Path, **fields) -> dict:
    """Merge ``fields`` into ``metadata.json`` (atomically); return the new manifest."""
    manifest = read_manifest(run_dir)
    manifest.update(fields)
    write_manifest(run_dir, manifest)
    return manifest
