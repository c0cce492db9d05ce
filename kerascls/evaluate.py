"""``python -m kerascls.evaluate RUN_DIR``: test-split metrics, plots and latency for a run.

Reports accuracy, per-class and macro precision/recall/F1, ROC-AUC (binary, or one-vs-rest macro),
the confusion matrix and mean inference latency per image and per batch, and writes
``metrics.json``, ``confusion_matrix.png`` and ``roc.png`` into the run directory (or ``--out``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from kerascls.errors import UserError, cli_main
from kerascls.fileio import atomic_write_json
from kerascls.metrics import classification_metrics


def predict_tta(run, x: np.ndarray, passes: int, batch_size: int = 256) -> np.ndarray:
    """Average probabilities over the plain images and ``passes - 1`` augmented copies.

    The augmentations are the run's geometric training augmentations (crop, flip, rotation,
    zoom); a run trained without any uses crop and flip.
    """
    from kerascls.data.pipeline import Augmenter, parse_augment

    probs = run.predict_proba(x, batch_size)
    if passes <= 1:
        return probs
    names = [a for a in parse_augment(run.config.data.augment)
             if a in ("crop", "flip", "rotation", "zoom")] or ["crop", "flip"]
    aug = Augmenter(names, x.shape[1], seed=run.config.train.seed)
    total = probs.astype(np.float64)
    for _ in range(passes - 1):
        xa = np.concatenate([np.asarray(aug.images(x[i:i + batch_size]))
                             for i in range(0, len(x), batch_size)])
        total += run.predict_proba(xa, batch_size)
    return (total / passes).astype(np.float32)


def measure_latency(run, x: np.ndarray, batch_size: int = 32, repeats: int = 20) -> dict:
    """Mean latency of one image and of one batch (warm, after a first call), in milliseconds."""
    if run.is_bayesian:
        fn = lambda b: run.predict_proba(b, batch_size=len(b))  # noqa: E731
    else:
        model = run.deployable()
        fn = lambda b: model(b, training=False)  # noqa: E731
    one = x[:1]
    batch = x[:batch_size]
    fn(one)
    fn(batch)
    t0 = time.perf_counter()
    for _ in range(repeats):
        np.asarray(fn(one))
    per_image = (time.perf_counter() - t0) / repeats
    t0 = time.perf_counter()
    for _ in range(max(3, repeats // 4)):
        np.asarray(fn(batch))
    per_batch = (time.perf_counter() - t0) / max(3, repeats // 4)
    return {"latency_ms_per_image": per_image * 1e3, "latency_ms_per_batch": per_batch * 1e3,
            "latency_batch_size": int(len(batch)),
            "latency_ms_per_image_in_batch": per_batch * 1e3 / max(1, len(batch))}


def evaluate_run(run, *, splits=None, dataset: str | None = None, tta: int = 0,
                 out_dir: Path | None = None, batch_size: int = 256) -> dict:
    """Evaluate ``run`` on the test split; write metrics.json and plots; return the metrics."""
    from kerascls import plots

    if splits is None:
        splits = run.dataset(dataset)
    if list(splits.class_names) != run.labels:
        raise UserError(f"dataset classes {splits.class_names[:5]}... do not match the run's labels "
                        f"{run.labels[:5]}...")
    x, y = splits.x_test, splits.y_test
    probs = predict_tta(run, x, tta, batch_size) if tta > 1 else run.predict_proba(x, batch_size)
    metrics = classification_metrics(y, probs, run.labels)
    metrics.update(measure_latency(run, x))
    metrics["dataset"] = dataset or run.metadata.get("dataset")
    metrics["tta"] = int(tta)
    out = Path(out_dir or run.path)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "metrics.json", metrics)
    plots.confusion_matrix(metrics["confusion_matrix"], run.labels, out / "confusion_matrix.png")
    plots.roc_curves(y, probs, run.labels, out / "roc.png")
    return metrics


def _format(metrics: dict) -> str:
    lines = [f"accuracy      {metrics['accuracy']:.4f}  ({metrics['num_examples']} test images)",
             f"macro P/R/F1  {metrics['macro_precision']:.4f} / {metrics['macro_recall']:.4f} / "
             f"{metrics['macro_f1']:.4f}",
             f"ROC-AUC       {metrics['roc_auc']:.4f}" if metrics["roc_auc"] is not None
             else "ROC-AUC       n/a (one class in the test split)",
             f"latency       {metrics['latency_ms_per_image']:.2f} ms/image, "
             f"{metrics['latency_ms_per_batch']:.2f} ms/batch of {metrics['latency_batch_size']}"]
    lines.append(f"{'class':>12} {'precision':>9} {'recall':>7} {'f1':>7} {'n':>5}")
    for cls, m in metrics["per_class"].items():
        lines.append(f"{cls:>12} {m['precision']:9.3f} {m['recall']:7.3f} {m['f1']:7.3f} "
                     f"{m['support']:5d}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from kerascls.config import _Parser

    p = _Parser(prog="python -m kerascls.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="run directory written by python -m kerascls.train")
    p.add_argument("--dataset", help="evaluate on this dataset's test split (same classes)")
    p.add_argument("--tta", type=int, default=0, help="test-time augmentation passes (0 = off)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", help="write results here instead of the run directory")
    return p


def parse_args(argv):
    args = build_parser().parse_args(argv)
    if args.tta < 0:
        raise UserError(f"--tta must be >= 0. Received: {args.tta}")
    if args.batch_size <= 0:
        raise UserError(f"--batch-size must be a positive integer. Received: {args.batch_size}")
    return args


@cli_main
def main(argv: list[str] | None = None) -> int:
    from kerascls.runs import load_run

    args = parse_args(argv)
    run = load_run(args.run_dir)
    metrics = evaluate_run(run, dataset=args.dataset, tta=args.tta,
                           out_dir=Path(args.out) if args.out else None,
                           batch_size=args.batch_size)
    print(_format(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
