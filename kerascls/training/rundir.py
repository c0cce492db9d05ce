"""Naming run directories: resume an unfinished run, never overwrite a finished one."""

from __future__ import annotations

from pathlib import Path


def slug(text: str) -> str:
    """A file-name-safe form of ``text`` (at most 60 characters)."""
    keep = "".join(c if c.isalnum() or c in "-_." else "-" for c in text.replace(":", "-"))
    return keep.strip("-")[:60] or "run"


def run_directory(cfg) -> Path:
    """``output_dir/<run_name or model-dataset>``, or the next ``-2``, ``-3`` ... if it is finished.

    A directory with a ``backup/`` folder is an unfinished run and is reused (resumed).
    """
    base = Path(cfg.train.output_dir)
    dataset = cfg.data.dataset
    if dataset.startswith("folder:"):
        dataset = Path(dataset).name
    name = cfg.train.run_name or f"{cfg.model.model}-{slug(dataset)}"
    candidate, i = base / name, 1
    while (candidate / "metadata.json").exists() and not (candidate / "backup").exists():
        i += 1
        candidate = base / f"{name}-{i}"
    return candidate
