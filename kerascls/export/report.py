"""The export report: every artifact of a run checked against the Keras model on the test split.

:func:`build_report` writes ``export_report.json``, ``export_report.md`` and
``export_report.png`` into the run directory, one row per artifact (the Keras model, the
SavedModel if exported, every TFLite file) with:

* file size (a SavedModel counts its whole version directory);
* test-split accuracy and macro-F1;
* top-1 agreement with the Keras model, max and mean absolute probability difference;
* p50 and p90 latency of one image at 1 and at 2 threads (TFLite: ``set_tensor``, ``invoke``,
  ``get_tensor`` on a prepared input; Keras and SavedModel: a graph call, measured in a fresh
  process when the thread count differs from this process's, because TensorFlow fixes its
  thread pools at start-up);
* the classes whose recall dropped by more than 5 points against the Keras model. These are
  printed as warnings, listed at the top of the Markdown report and under ``warnings`` in the
  JSON.

TFLite inputs are prepared the way a device prepares them: the int8 model gets the test images
rounded to uint8 pixels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from kerascls.errors import UserError
from kerascls.fileio import atomic_path, atomic_write_json, atomic_write_text

REPORT_NAME = "export_report"
RECALL_DROP_POINTS = 5.0
THREADS = (1, 2)
LATENCY_RUNS = 50
WARMUP_RUNS = 5


# ---------------------------------------------------------------------------------------------
# helpers


def _time_calls(fn, runs: int) -> dict:
    from kerascls.timing import percentiles, time_calls

    return percentiles(time_calls(fn, runs, WARMUP_RUNS))


def artifact_size(path: Path) -> int:
    """Bytes of a file, or of every file under a directory (a SavedModel version)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _flatten(artifacts) -> list[Path]:
    if isinstance(artifacts, dict):
        return [Path(p) for paths in artifacts.values() for p in paths]
    return [Path(p) for p in artifacts]


def _sidecar(path: Path) -> dict:
    side = path.with_suffix(".json")
    return json.loads(side.read_text()) if side.is_file() else {}


# ---------------------------------------------------------------------------------------------
# predictions


def tflite_predict(path: Path, x: np.ndarray) -> np.ndarray:
    """Probabilities of a ``.tflite`` file on float32 0..255 images, prepared as a device does."""
    from kerascls.export.tflite import predict

    return predict(path, x)


def saved_model_predict(directory: Path, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Probabilities of a SavedModel's ``predict_pixels`` signature (input ``pixels``)."""
    import tensorflow as tf

    fn = tf.saved_model.load(str(directory)).signatures["predict_pixels"]
    out = [fn(pixels=tf.constant(x[i:i + batch_size]))["probabilities"].numpy()
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out).astype(np.float32)


def keras_predict(run, x: np.ndarray) -> np.ndarray:
    """Probabilities of the deployed model (temperature applied): the reference of every row."""
    if run.is_bayesian:
        return np.asarray(run.predict_proba(x), dtype=np.float32)
    return np.asarray(run.deployable().predict(x, batch_size=256, verbose=0), dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# latency


def tflite_latency(path: Path, image: np.ndarray, threads: int, runs: int) -> dict:
    """p50/p90 of ``set_tensor`` + ``invoke`` + ``get_tensor`` for one prepared image."""
    from kerascls.export.tflite import single_image_call

    return _time_calls(single_image_call(path, image, threads), runs)


def _this_process_threads() -> int | None:
    """TensorFlow's thread count in this process when both pools are at their default size.

    The jax and torch backends then use every core as well, so the Keras model is timed here at
    that count on any backend; other counts are timed in a fresh process that pins TensorFlow's
    pools and PyTorch's threads (see :func:`_latency_worker`).
    """
    import tensorflow as tf

    t = tf.config.threading
    if t.get_intra_op_parallelism_threads() or t.get_inter_op_parallelism_threads():
        return None
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count()


def tf_latency(run, saved_models: list[Path], image: np.ndarray, threads: int,
               runs: int) -> dict:
    """Keras and SavedModel latency at ``threads``.

    TensorFlow sizes its thread pools once per process, so a thread count other than this
    process's own is measured in a fresh Python process.
    """
    if threads == _this_process_threads():
        return _tf_times(run, saved_models, image[None].astype(np.float32), runs)
    with tempfile.TemporaryDirectory(prefix="kerascls-latency-") as tmp:
        npy = Path(tmp) / "image.npy"
        np.save(npy, image[None].astype(np.float32))
        cmd = [sys.executable, "-c",
               "import sys; from kerascls.export.report import _latency_worker; "
               "_latency_worker(sys.argv[1:])",
               str(run.path), str(threads), str(runs), str(npy), *map(str, saved_models)]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"latency measurement at {threads} thread(s) failed: {tail}")
    return json.loads(lines[-1])


def _latency_worker(argv: list[str]) -> None:
    """Child process of :func:`tf_latency`: fix the thread pools, then time the TF artifacts."""
    run_dir, threads, runs, npy, *saved_models = argv
    threads, runs = int(threads), int(runs)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    import keras

    if keras.backend.backend() == "torch":
        import torch

        torch.set_num_threads(threads)
    from kerascls.runs import load_run

    print(json.dumps(_tf_times(load_run(run_dir), saved_models, np.load(npy), runs)), flush=True)


def _keras_call(model, batch: np.ndarray):
    """One inference call of a Keras model as its backend compiles it: a ``tf.function`` graph
    on TensorFlow, ``predict_on_batch`` (jitted on jax, eager under ``no_grad`` on torch)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return lambda: model.predict_on_batch(batch)
    import tensorflow as tf

    x = tf.constant(batch)
    graph = tf.function(lambda p: model(p, training=False), reduce_retracing=True)
    return lambda: graph(x).numpy()


def _tf_times(run, saved_models, batch: np.ndarray, runs: int) -> dict:
    """p50/p90 of one graph call of the Keras model and of each SavedModel on ``batch``."""
    import tensorflow as tf

    x = tf.constant(batch)
    result = {}
    if run.is_bayesian:
        result["keras"] = _time_calls(lambda: run.predict_proba(batch), runs)
    else:
        result["keras"] = _time_calls(_keras_call(run.deployable(), batch), runs)
    for directory in saved_models:
        fn = tf.saved_model.load(str(directory)).signatures["predict_pixels"]
        result[str(directory)] = _time_calls(lambda: fn(pixels=x)["probabilities"].numpy(), runs)
    return result


# ---------------------------------------------------------------------------------------------
# the report


def _backend() -> str:
    import keras

    return keras.backend.backend()


def compare(reference: np.ndarray, probs: np.ndarray, y: np.ndarray, labels: list[str],
            reference_metrics: dict | None = None) -> dict:
    """Accuracy, macro-F1, agreement, probability differences and recall drops of one artifact."""
    from kerascls.metrics import classification_metrics

    metrics = classification_metrics(y, probs, labels)
    row = {
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "top1_agreement": float((probs.argmax(1) == reference.argmax(1)).mean()),
        "max_abs_prob_diff": float(np.abs(probs - reference).max()),
        "mean_abs_prob_diff": float(np.abs(probs - reference).mean()),
        "recall": {c: v["recall"] for c, v in metrics["per_class"].items()},
        "recall_drops": [],
    }
    if reference_metrics is not None:
        for cls, ref in reference_metrics["per_class"].items():
            drop = round((ref["recall"] - metrics["per_class"][cls]["recall"]) * 100.0, 6)
            if drop > RECALL_DROP_POINTS:
                row["recall_drops"].append({
                    "class": cls, "keras_recall": ref["recall"],
                    "recall": metrics["per_class"][cls]["recall"], "drop_points": round(drop, 2)})
    return row


def build_report(run, artifacts, *, latency_runs: int = LATENCY_RUNS,
                 threads: tuple[int, ...] = THREADS) -> dict:
    """Check every exported artifact of ``run`` on its test split and write the report.

    Args:
        run: the :class:`kerascls.runs.Run` that was exported.
        artifacts: what the exporters returned: ``{format: [paths]}`` or a list of paths.
            SavedModel version directories and ``.tflite`` files get a row; sidecars are read
            for the ``.tflite`` files.
        latency_runs: timed calls per latency figure.
        threads: thread counts to time.

    Returns:
        The report dict (also written to ``RUN_DIR/export_report.json``).
    """
    from kerascls.metrics import classification_metrics

    if latency_runs < 1:
        raise UserError(f"latency_runs must be a positive integer. Received: {latency_runs}")
    paths = _flatten(artifacts)
    saved_models = [p for p in paths if p.is_dir() and (p / "saved_model.pb").is_file()]
    tflites = [p for p in paths if p.suffix == ".tflite" and p.is_file()]
    print(f"export report: checking {1 + len(saved_models) + len(tflites)} artifacts on the "
          "test split ...", flush=True)
    splits = run.dataset()
    x, y, labels = splits.x_test, splits.y_test, list(run.labels)
    reference = keras_predict(run, x)
    ref_metrics = classification_metrics(y, reference, labels)
    keras_file = Path(run.path) / "model.keras"
    rows = [{"artifact": "keras", "path": str(keras_file) if keras_file.is_file() else None,
             "size_bytes": artifact_size(keras_file) if keras_file.is_file() else None,
             **compare(reference, reference, y, labels)}]
    for directory in saved_models:
        probs = saved_model_predict(directory, x)
        rows.append({"artifact": "saved_model", "path": str(directory),
                     "size_bytes": artifact_size(directory),
                     **compare(reference, probs, y, labels, ref_metrics)})
    for path in tflites:
        sidecar = _sidecar(path)
        probs = tflite_predict(path, x)
        rows.append({"artifact": sidecar.get("format", path.stem), "path": str(path),
                     "size_bytes": artifact_size(path), "input_dtype": sidecar.get("input_dtype"),
                     **compare(reference, probs, y, labels, ref_metrics)})

    image = x[0]
    tf_times = {t: tf_latency(run, saved_models, image, t, latency_runs) for t in threads}
    for row in rows:
        row["latency"] = {}
        for t in threads:
            if row["artifact"] == "keras":
                row["latency"][str(t)] = tf_times[t]["keras"]
            elif row["artifact"] == "saved_model":
                row["latency"][str(t)] = tf_times[t][row["path"]]
            else:
                row["latency"][str(t)] = tflite_latency(Path(row["path"]), image, t, latency_runs)

    float32 = next((r for r in rows if r["artifact"] == "tflite-float32"), None)
    for row in rows:
        if float32 and row["size_bytes"] is not None and row["artifact"].startswith("tflite"):
            row["size_vs_tflite_float32"] = round(row["size_bytes"] / float32["size_bytes"], 4)
    warnings = [f"{r['artifact']}: recall of class {d['class']} dropped by {d['drop_points']:.1f} "
                f"points against the Keras model ({d['keras_recall']:.3f} -> {d['recall']:.3f})"
                for r in rows for d in r["recall_drops"]]
    report = {
        "run": str(Path(run.path).resolve()),
        "model_name": run.name,
        "test_examples": int(len(y)),
        "reference": f"keras on the {_backend()} backend (the deployed model, temperature "
                     "applied)",
        "backend": _backend(),
        "recall_drop_threshold_points": RECALL_DROP_POINTS,
        "latency": {"batch": 1, "runs": latency_runs, "threads": list(threads),
                    "what": "tflite: set_tensor + invoke + get_tensor; keras and saved_model: "
                            f"one graph call (keras on the {_backend()} backend)"},
        "rows": rows,
        "warnings": warnings,
    }
    out = Path(run.path)
    atomic_write_json(out / f"{REPORT_NAME}.json", report)
    atomic_write_text(out / f"{REPORT_NAME}.md", to_markdown(report))
    plot_report(report, out / f"{REPORT_NAME}.png")
    for w in warnings:
        print(f"WARNING: {w}", file=sys.stderr, flush=True)
    print(f"export report: {out / (REPORT_NAME + '.md')}", flush=True)
    return report


def to_markdown(report: dict) -> str:
    """The report as a Markdown page: warnings first, then one table row per artifact."""
    lines = [f"# Export report: {report['model_name']}", "",
             f"Run `{report['run']}`; {report['test_examples']} test images; reference: "
             f"{report['reference']}.", ""]
    if report["warnings"]:
        lines += ["## WARNING: recall dropped by more than "
                  f"{report['recall_drop_threshold_points']:g} points", ""]
        lines += [f"- **{w}**" for w in report["warnings"]] + [""]
    threads = report["latency"]["threads"]
    head = ["artifact", "size (KiB)", "accuracy", "macro-F1", "agreement", "max abs diff",
            "mean abs diff"] + [f"p50 / p90 ms ({t} thr)" for t in threads] + ["recall drops"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["rows"]:
        size = f"{r['size_bytes'] / 1024:.1f}" if r["size_bytes"] is not None else "n/a"
        lat = [f"{r['latency'][str(t)]['p50_ms']:.3f} / {r['latency'][str(t)]['p90_ms']:.3f}"
               for t in threads]
        drops = ", ".join(f"**{d['class']} (-{d['drop_points']:.1f})**"
                          for d in r["recall_drops"]) or "none"
        cells = [r["artifact"], size, f"{r['accuracy']:.4f}", f"{r['macro_f1']:.4f}",
                 f"{r['top1_agreement']:.4f}", f"{r['max_abs_prob_diff']:.2e}",
                 f"{r['mean_abs_prob_diff']:.2e}", *lat, drops]
        lines.append("| " + " | ".join(cells) + " |")
    lat = report["latency"]
    lines += ["", f"Latency: batch {lat['batch']}, {lat['runs']} timed runs after "
              f"{WARMUP_RUNS} warm-up runs; {lat['what']}.", ""]
    return "\n".join(lines)


def report_figure(report: dict):
    """Size, test accuracy and p50 latency per artifact, as three bar charts side by side.

    The artifact names label the first panel only (the panels share the y axis), and every
    panel's x range leaves room for the value printed at the end of each bar, so no value
    runs into the next panel's names.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    names = [r["artifact"] for r in rows]
    t = str(report["latency"]["threads"][0])
    panels = [("size (KiB)", [(r["size_bytes"] or 0) / 1024 for r in rows]),
              ("test accuracy", [r["accuracy"] for r in rows]),
              (f"p50 latency, {t} thread (ms)", [r["latency"][t]["p50_ms"] for r in rows])]
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.45 * len(rows) + 1.6), sharey=True)
    colors = ["tab:red" if r["recall_drops"] else "tab:blue" for r in rows]
    for ax, (title, values) in zip(axes, panels):
        ax.barh(names, values, color=colors)
        ax.set_title(title)
        ax.grid(axis="x", alpha=0.3)
        lo = 0.0
        if ax is axes[1]:
            lo = max(0.0, min(values) - 0.05)
        hi = max([lo, *values]) or 1.0
        ax.set_xlim(lo, hi + (hi - lo) * 0.35)  # room for the value labels
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.3g}", va="center", ha="left", fontsize=8, clip_on=True)
    axes[0].invert_yaxis()  # shared: once inverts all three
    fig.suptitle(f"Export report: {report['model_name']} (red: recall drop > "
                 f"{report['recall_drop_threshold_points']:g} points)")
    return fig


def plot_report(report: dict, path: Path) -> Path:
    """:func:`report_figure` written to ``path`` as PNG."""
    import matplotlib.pyplot as plt

    fig = report_figure(report)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path
