"""The per-epoch training log ``history.csv`` that every engine writes through its CSV logger."""

from __future__ import annotations

import csv
from pathlib import Path

HISTORY_FILE = "history.csv"


def read_history(path: str | Path) -> dict[str, list[float]]:
    """``{"loss": [...], "val_loss": [...], ...}`` from a ``history.csv`` ({} if there is none)."""
    path = Path(path)
    if not path.is_file():
        return {}
    with path.open() as f:
        rows = list(csv.DictReader(f))
    hist: dict[str, list[float]] = {}
    for row in rows:
        for k, v in row.items():
            if k != "epoch" and v not in (None, ""):
                hist.setdefault(k, []).append(float(v))
    return hist


def truncate_history(path: str | Path, epochs_done: int) -> None:
    """Keep the rows of finished epochs only (a kill can land between the log and the backup)."""
    path = Path(path)
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    if len(lines) > epochs_done + 1:
        path.write_text("\n".join(lines[: epochs_done + 1]) + "\n")


def best_val_loss(path: str | Path) -> float | None:
    """The lowest ``val_loss`` logged so far, or None."""
    values = read_history(path).get("val_loss")
    return min(values) if values else None
