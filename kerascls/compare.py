"""``python -m kerascls.compare --models a,b,c``: train, evaluate and export models side by side.

Every model named in ``--models`` is trained with the same budget (``--epochs``, ``--batch-size``,
``--image-size``, ``--seed``) on ``--dataset`` by :func:`kerascls.train.train`, evaluated on the
test split by :func:`kerascls.evaluate.evaluate_run` and exported to TFLite float32 and int8 by
:func:`kerascls.export.export_run`. An entry of ``--models`` that is an existing run directory is
taken as it is (evaluated and exported if it has not been yet).

The output directory (``--out``, default ``runs/compare-<dataset>``) gets:

* ``comparison.md`` and ``comparison.csv``: one row per model with parameters and MACs, training
  time, test accuracy, macro-F1 and ECE, Keras latency per image, and the TFLite float32 and int8
  files' size, test accuracy and latency per image;
* ``comparison.json``: the same rows with their source files;
* ``accuracy_vs_latency.png`` (with the Pareto front), ``sizes.png`` and ``training_curves.png``;
* ``runs/<model>/``: the run directories, and ``rows/<model>.json``: each finished row.

Where the numbers come from: accuracy and macro-F1 and the Keras latency (one image, warm) from
the run's ``metrics.json``; ECE (15 bins) from the test-split probabilities; training time from
``metadata.json`` (the last training session's time when a run was resumed); sizes from the
``.tflite`` files; TFLite accuracy on the test split and latency (one image per invoke, one
thread, as on the edge device; the fastest of five blocks of 20 invokes) from the TFLite
interpreter. MACs count the convolutions and dense layers of one forward pass
(:func:`kerascls.shapes.count_macs`); for a Bayesian model they are those of one Monte Carlo pass
of its deterministic-shaped layers, and its TFLite files are the posterior-sample ensemble.

An interrupted comparison started again with the same command goes on where it stopped: models
with a finished row are not trained, evaluated or exported again, and a model whose run was
interrupted resumes after its last finished epoch.

Example:
    python -m kerascls.compare --models seed_cnn,lenet,small_cnn --dataset digits --epochs 10
"""

from __future__ import annotations

import csv
import io
import math
import sys
from pathlib import Path

import numpy as np

from kerascls.cli import cli_main
from kerascls.errors import UserError, did_you_mean
from kerascls.fileio import atomic_write_json, atomic_write_text, read_json

TFLITE_VARIANTS = ("float32", "int8")
EXPORT_FORMATS = ",".join(f"tflite-{v}" for v in TFLITE_VARIANTS)
TFLITE_REPEATS = 20
TFLITE_BLOCKS = 5

# (key, markdown header, format). CSV holds the raw values under the keys.
COLUMNS = (
    ("model", "model", "{}"),
    ("image_size", "input", "{}"),
    ("params", "params", "{:,}"),
    ("macs", "MACs (M)", "mega"),
    ("train_seconds", "train (s)", "{:.1f}"),
    ("accuracy", "accuracy", "{:.4f}"),
    ("macro_f1", "macro-F1", "{:.4f}"),
    ("ece", "ECE", "{:.4f}"),
    ("keras_ms", "Keras ms/img", "{:.2f}"),
    ("tflite_float32_bytes", "f32 KiB", "kib"),
    ("tflite_float32_accuracy", "f32 acc", "{:.4f}"),
    ("tflite_float32_ms", "f32 ms/img", "{:.3f}"),
    ("tflite_int8_bytes", "int8 KiB", "kib"),
    ("tflite_int8_accuracy", "int8 acc", "{:.4f}"),
    ("tflite_int8_ms", "int8 ms/img", "{:.3f}"),
)
CSV_EXTRA = ("model_name", "dataset", "epochs", "run_dir")


# ---------------------------------------------------------------------------------------------
# what to compare


class Entry:
    """One model of the comparison: a registry name to train, or an existing run directory."""

    def __init__(self, label: str, model_name: str | None, run_dir: Path, existing: bool):
        self.label = label
        self.model_name = model_name
        self.run_dir = run_dir
        self.existing = existing

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Entry({self.label!r}, {self.run_dir})"


def _looks_like_path(item: str) -> bool:
    return "/" in item or "\\" in item or item.startswith(".") or Path(item).exists()


def resolve_entries(models: str, out_dir: Path) -> list[Entry]:
    """Parse ``--models``: registry names and existing run directories, checked before any work.

    Raises:
        UserError: for an empty list, a duplicate, an unknown model name, or a path that is not a
            finished run directory with a model.
    """
    from kerascls.registry import list_models
    from kerascls.runs import load_run

    items = [m.strip() for m in (models or "").split(",") if m.strip()]
    if not items:
        raise UserError("--models is empty; give comma-separated model names or run directories")
    known = list_models()
    entries, labels = [], set()
    for item in items:
        if _looks_like_path(item):
            run = load_run(item)
            label = Path(item).resolve().name
            entry = Entry(label, run.name, Path(item), existing=True)
        elif item in known:
            entry = Entry(item, item, out_dir / "runs" / item, existing=False)
        else:
            raise UserError("--models: " + did_you_mean("model", item, known))
        if entry.label in labels:
            raise UserError(f"--models names '{entry.label}' twice")
        labels.add(entry.label)
        entries.append(entry)
    return entries


# ---------------------------------------------------------------------------------------------
# training, evaluation, export


def run_finished(run_dir: Path) -> bool:
    """A run directory whose training finished (manifest written, resume state removed)."""
    return (run_dir / "metadata.json").is_file() and not (run_dir / "backup").exists()


def make_config(model: str, dataset: str, *, epochs: int, image_size: int, batch_size: int,
                seed: int, out_dir: Path, verbose: int, learning_rate: float | None = None):
    """The training configuration every model of a comparison shares (only the model differs)."""
    from kerascls.config import Config, validate

    cfg = Config()
    cfg.model.model = model
    cfg.data.dataset = dataset
    cfg.data.image_size = image_size
    cfg.train.epochs = epochs
    cfg.train.batch_size = batch_size
    cfg.train.seed = seed
    cfg.train.output_dir = str(out_dir / "runs")
    cfg.train.run_name = model
    cfg.train.verbose = verbose
    if learning_rate is not None:
        cfg.train.learning_rate = learning_rate
    cfg.export.formats = ""
    validate(cfg)
    return cfg


def tflite_files(run) -> dict[str, Path]:
    """``{variant: path}`` of the run's TFLite float32 and int8 files (existing or not)."""
    from kerascls.export.tflite import tflite_path

    return {v: tflite_path(run, Path(run.path) / "tflite", v) for v in TFLITE_VARIANTS}


def ensure_exports(run) -> dict[str, Path]:
    """Export the TFLite variants the run does not have yet; return their paths."""
    from kerascls.export import export_run
    from kerascls.export.tflite import sidecar_path

    files = tflite_files(run)
    missing = [v for v, p in files.items() if not (p.is_file() and sidecar_path(p).is_file())]
    if missing:
        export_run(run.path, ",".join(f"tflite-{v}" for v in missing), report=False)
    return files


def tflite_probabilities(run, path: Path, x: np.ndarray) -> np.ndarray:
    """Test-split probabilities of a ``.tflite`` file, read the way its consumers read it."""
    from kerascls.export.tflite import predict

    return predict(path, x)


def tflite_latency_ms(path: Path, image: np.ndarray, repeats: int = TFLITE_REPEATS,
                      blocks: int = TFLITE_BLOCKS) -> float:
    """Milliseconds of one invoke on one image (one thread, after a warm-up invoke).

    The invokes run in ``blocks`` blocks of ``repeats``; the fastest block's mean is the figure
    (as ``timeit`` does), so that other processes on a shared machine inflate it less.
    """
    from kerascls.export.tflite import single_image_call
    from kerascls.timing import best_block_ms

    return best_block_ms(single_image_call(path, image, threads=1), repeats, blocks)


def count_params_and_macs(run) -> tuple[int, int]:
    """Parameters and multiply-accumulates per image of the run's model (its engine counts)."""
    return run.engine.count_macs(run)


def build_row(entry: Entry, splits=None) -> dict:
    """Measure one finished, exported run into a table row (see :data:`COLUMNS`)."""
    from kerascls.evaluate import evaluate_run
    from kerascls.runs import load_run
    from kerascls.uncertainty import expected_calibration_error

    run = load_run(entry.run_dir)
    splits = splits if splits is not None else run.dataset()
    metrics_path = Path(run.path) / "metrics.json"
    metrics = read_json(metrics_path) if metrics_path.is_file() else \
        evaluate_run(run, splits=splits)
    files = ensure_exports(run)
    x, y = splits.x_test, splits.y_test
    probs = run.predict_proba(x)
    params, macs = count_params_and_macs(run)
    row = {
        "model": entry.label,
        "model_name": run.name,
        "dataset": run.metadata.get("dataset"),
        "image_size": run.image_size,
        "epochs": int(run.metadata.get("epochs_trained", 0)),
        "run_dir": str(run.path),
        "params": params,
        "macs": macs,
        "train_seconds": float(run.metadata.get("train_seconds", float("nan"))),
        "accuracy": float(metrics["accuracy"]),
        "macro_f1": float(metrics["macro_f1"]),
        "ece": float(metrics["ece"]) if "ece" in metrics else
        float(expected_calibration_error(y, probs)),
        "keras_ms": float(metrics["latency_ms_per_image"]),
    }
    sources = {"metrics": str(metrics_path), "metadata": str(Path(run.path) / "metadata.json")}
    for variant, path in files.items():
        tprobs = tflite_probabilities(run, path, x)
        row[f"tflite_{variant}_bytes"] = int(path.stat().st_size)
        row[f"tflite_{variant}_accuracy"] = float((tprobs.argmax(axis=1) == y).mean())
        row[f"tflite_{variant}_ms"] = float(tflite_latency_ms(path, x[0]))
        sources[f"tflite_{variant}"] = str(path)
    row["sources"] = sources
    return row


def compare(models: str, dataset: str = "digits", *, epochs: int = 10, image_size: int = 32,
            batch_size: int = 64, seed: int = 42, out_dir: str | Path | None = None,
            verbose: int = 2, learning_rate: float | None = None) -> dict:
    """Train, evaluate and export each model, then write the table and the plots.

    Args:
        models: comma-separated registry names and/or existing run directories.
        dataset: the dataset every named model trains on (``digits``, ``sentiment``...).
        epochs: training epochs, the same for every model.
        image_size: the input size every named model trains at (0: each model's default).
        batch_size: batch size.
        seed: seed of the splits, the initialization and the shuffling.
        out_dir: output directory (default ``runs/compare-<dataset>``).
        verbose: Keras progress output while training (0, 1 or 2).
        learning_rate: peak learning rate (default: the training default).

    Returns:
        ``{"rows": [...], "files": {...}}``: the table rows and the paths written.
    """
    from kerascls.registry import get_spec
    from kerascls.train import check_model_input, train
    from kerascls.training.rundir import slug

    if epochs < 1:
        raise UserError(f"--epochs must be a positive integer. Received: {epochs}")
    if image_size < 0:
        raise UserError(f"--image-size must be >= 0 (0: each model's default). "
                        f"Received: {image_size}")
    out = Path(out_dir) if out_dir else Path("runs") / f"compare-{slug(dataset)}"
    entries = resolve_entries(models, out)
    configs = {e.label: make_config(e.model_name, dataset, epochs=epochs, image_size=image_size,
                                    batch_size=batch_size, seed=seed, out_dir=out,
                                    verbose=verbose, learning_rate=learning_rate)
               for e in entries if not e.existing}
    for label, cfg in configs.items():
        check_model_input(cfg, cfg.data.image_size or get_spec(cfg.model.model).default_size)
    rows = []
    for i, e in enumerate(entries, start=1):
        row_path = out / "rows" / f"{e.label}.json"
        head = f"[{i}/{len(entries)}] {e.label}"
        if row_path.is_file() and run_finished(e.run_dir):
            print(f"{head}: finished earlier, kept", flush=True)
            rows.append(read_json(row_path))
            continue
        if not e.existing and not run_finished(e.run_dir):
            print(f"{head}: training {epochs} epoch(s) on {dataset}", flush=True)
            run_dir = train(configs[e.label])
            if run_dir.resolve() != e.run_dir.resolve():  # pragma: no cover - train's naming
                raise UserError(f"training wrote {run_dir}, expected {e.run_dir}")
        print(f"{head}: evaluating and exporting {EXPORT_FORMATS}", flush=True)
        row = build_row(e)
        atomic_write_json(row_path, row)
        rows.append(row)
    files = write_outputs(rows, out)
    return {"rows": rows, "files": files}


# ---------------------------------------------------------------------------------------------
# table and plots


def _cell(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if fmt == "mega":
        return f"{value / 1e6:.2f}"
    if fmt == "kib":
        return f"{value / 1024:.1f}"
    return fmt.format(value)


def markdown_table(rows: list[dict]) -> str:
    """The comparison as a markdown table (sizes in KiB, MACs in millions)."""
    head = "| " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    rule = "|" + "|".join("---" if k == "model" else "---:" for k, _, _ in COLUMNS) + "|"
    body = ["| " + " | ".join(_cell(r.get(k), f) for k, _, f in COLUMNS) + " |" for r in rows]
    return "\n".join([head, rule, *body]) + "\n"


def csv_table(rows: list[dict]) -> str:
    """The comparison as CSV: raw values (sizes in bytes, MACs and parameters as integers)."""
    keys = [k for k, _, _ in COLUMNS] + list(CSV_EXTRA)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k) for k in keys})
    return buf.getvalue()


def read_csv_table(path: str | Path) -> list[dict]:
    """Rows of ``comparison.csv`` with numbers parsed back (ints stay ints)."""
    out = []
    with open(path, newline="") as f:
        for rec in csv.DictReader(f):
            row = {}
            for k, v in rec.items():
                try:
                    row[k] = int(v)
                except ValueError:
                    try:
                        row[k] = float(v)
                    except ValueError:
                        row[k] = v
            out.append(row)
    return out


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both lower latency and higher accuracy,
    ordered by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _plt():
    from kerascls.plots import pyplot as plots_plt

    return plots_plt()


def _save(fig, path: Path) -> Path:
    from kerascls.plots import save_figure as plots_save

    return plots_save(fig, path)


def plot_accuracy_vs_latency(rows: list[dict], path: Path) -> Path:
    """Test accuracy against latency per image for Keras, TFLite float32 and int8, with the
    Pareto front over all of them."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    kinds = (("keras", "keras_ms", "accuracy", "o"),
             ("tflite float32", "tflite_float32_ms", "tflite_float32_accuracy", "s"),
             ("tflite int8", "tflite_int8_ms", "tflite_int8_accuracy", "^"))
    points, names = [], []
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, r in enumerate(rows):
        c = colours[j % len(colours)]
        for kind, lat, acc, marker in kinds:
            if r.get(lat) is None or r.get(acc) is None:
                continue
            ax.scatter(r[lat], r[acc], marker=marker, color=c, s=36,
                       label=r["model"] if kind == "keras" else None)
            points.append((r[lat], r[acc]))
            names.append(f"{r['model']} ({kind})")
    front = pareto_front(points)
    if front:
        ax.step([points[i][0] for i in front], [points[i][1] for i in front], where="post",
                color="black", lw=1, alpha=0.6, label="Pareto front")
        for n, i in enumerate(front):
            ax.annotate(names[i], points[i], fontsize=7, xytext=(5, -10 if n % 2 else 4),
                        textcoords="offset points")
    for kind, _, _, marker in kinds:
        ax.scatter([], [], marker=marker, color="gray", label=kind)
    ax.set_xscale("log")
    ax.set_xlabel("latency per image (ms, log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("accuracy vs latency")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best", ncol=2)
    return _save(fig, path)


def plot_sizes(rows: list[dict], path: Path) -> Path:
    """TFLite float32 and int8 file sizes per model (KiB, log scale)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(rows) + 2), 3.8))
    xs = np.arange(len(rows))
    width = 0.38
    for k, (variant, offset) in enumerate((("float32", -width / 2), ("int8", width / 2))):
        sizes = [r[f"tflite_{variant}_bytes"] / 1024 for r in rows]
        bars = ax.bar(xs + offset, sizes, width, label=f"tflite {variant}")
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(xs, [r["model"] for r in rows], rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("size (KiB, log scale)")
    ax.set_title("TFLite model size")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_training_curves(rows: list[dict], path: Path) -> Path:
    """Training and validation accuracy per epoch of every model, overlaid.

    Accuracy, not loss: a Bayesian model's loss is the negative ELBO (cross-entropy plus the KL
    term), which is not on the same scale as the others' cross-entropy.
    """
    from kerascls.training.history import read_history

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        hist = read_history(Path(r["run_dir"]) / "history.csv")
        for ax, key in zip(axes, ("accuracy", "val_accuracy")):
            vals = hist.get(key)
            if vals:
                ax.plot(range(1, len(vals) + 1), vals, marker=".", label=r["model"])
    for ax, key in zip(axes, ("training accuracy", "validation accuracy")):
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def write_outputs(rows: list[dict], out: Path) -> dict[str, Path]:
    """Write the markdown and CSV tables, the JSON rows and the three plots into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"markdown": out / "comparison.md", "csv": out / "comparison.csv",
             "json": out / "comparison.json"}
    atomic_write_text(files["markdown"], markdown_table(rows))
    atomic_write_text(files["csv"], csv_table(rows))
    atomic_write_json(files["json"], {"columns": [k for k, _, _ in COLUMNS], "rows": rows})
    if rows:
        files["accuracy_vs_latency"] = plot_accuracy_vs_latency(
            rows, out / "accuracy_vs_latency.png")
        files["sizes"] = plot_sizes(rows, out / "sizes.png")
        files["training_curves"] = plot_training_curves(rows, out / "training_curves.png")
    return files


# ---------------------------------------------------------------------------------------------
# CLI


def build_parser():
    from kerascls.cli import Parser

    p = Parser(prog="python -m kerascls.compare", description=__doc__.splitlines()[0])
    p.add_argument("--models", required=True,
                   help="comma-separated registry names and/or existing run directories")
    p.add_argument("--dataset", default="digits",
                   help="sentiment | digits | folder:PATH | tfds:NAME")
    p.add_argument("--epochs", type=int, default=10, help="training epochs for every model")
    p.add_argument("--image-size", type=int, default=32,
                   help="input size for every model (0: each model's default)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning-rate", type=float, help="peak learning rate (default: train's)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", help="output directory (default runs/compare-<dataset>)")
    p.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2),
                   help="Keras progress: 0 silent, 1 bar, 2 one line per epoch")
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = compare(args.models, args.dataset, epochs=args.epochs, image_size=args.image_size,
                     batch_size=args.batch_size, seed=args.seed, out_dir=args.out,
                     verbose=args.verbose, learning_rate=args.learning_rate)
    print()
    print(markdown_table(result["rows"]), end="")
    print("wrote " + ", ".join(str(p) for p in result["files"].values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
