"""Naming run directories: resume an unfinished run, never overwrite a finished one."""

from __future__ import annotations

from pathlib import Path


def slug(text: str) -> str:
    """A file-name-safe form of ``text`` (at most 60 characters)."""
    keep = "".join(c if c.isalnum() or c in "-_." else "-" for c in text.replace(":", "-"))
    return keep.strip("-")[:60] or "run"


UNFINISHED = ("trained", "evaluated")


def run_status(run_dir: Path) -> str:
    """The manifest's ``status``: ``trained``, ``evaluated`` or ``complete``.

    Manifests written before the field existed, and unreadable ones, count as ``complete``:
    such a run is never overwritten.
    """
    import json

    try:
        return str(json.loads((Path(run_dir) / "metadata.json").read_text()).get(
            "status", "complete"))
    except (OSError, ValueError, AttributeError):
        return "complete"


def run_directory(cfg) -> Path:
    """``output_dir/<run_name or model-dataset>``, or the next ``-2``, ``-3`` ... if it is finished.

    An unfinished run is reused: one with a ``backup/`` folder (training was interrupted) or one
    whose manifest says training finished but a later stage (evaluation, export) did not.
    """
    base = Path(cfg.train.output_dir)
    dataset = cfg.data.dataset
    if dataset.startswith("folder:"):
        dataset = Path(dataset).name
    name = cfg.train.run_name or f"{cfg.model.model}-{slug(dataset)}"
    candidate, i = base / name, 1
    while (candidate / "metadata.json").exists() and not (candidate / "backup").exists() \
            and run_status(candidate) not in UNFINISHED:
        i += 1
        candidate = base / f"{name}-{i}"
    return candidate
