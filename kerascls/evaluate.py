"""``python -m kerascls.evaluate RUN_DIR``: test-split metrics, plots and latency for a run.

Reports accuracy, per-class and macro precision/recall/F1, ROC-AUC (binary, or one-vs-rest macro),
the confusion matrix and mean inference latency per image and per batch, and writes
``metrics.json``, ``confusion_matrix.png`` and ``roc.png`` into the run directory (or ``--out``).

Calibration for every model: NLL, Brier score, ECE with 15 equal-width bins and
``reliability.png``; deterministic runs with a fitted temperature also report the uncalibrated
figures. Bayesian runs (and deterministic ones with ``--mc-dropout``) predict by Monte Carlo and
report the uncertainty summaries (predictive and expected entropy, mutual information, spread).
``--ood DATASET`` reports the AUROC and AUPR with which each uncertainty score separates the test
split from out-of-distribution images (``noise``, or a dataset ``kerascls.data.load_dataset``
accepts) and draws ``ood_<dataset>.png``: 1 - max probability, entropy, mutual information (Monte
Carlo runs) and, for deterministic runs, feature density (a Gaussian per class fitted to the
training images' features, the input of the classifier layer).

Example:
    python -m kerascls.evaluate runs/bnn_cnn-digits --ood sentiment
    python -m kerascls.evaluate runs/lenet-digits --mc-dropout --mc-samples 50 --ood noise
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from kerascls.cli import cli_main
from kerascls.errors import UserError
from kerascls.fileio import atomic_write_json
from kerascls.metrics import classification_metrics


def predict_tta(run, x: np.ndarray, passes: int, batch_size: int = 256) -> np.ndarray:
    """Average probabilities over the plain images and ``passes - 1`` augmented copies.

    The augmentations are the run's geometric training augmentations (crop, flip, rotation,
    zoom); a run trained without any uses pad-and-crop shifts (a flip would change digits).
    """
    from kerascls.data.pipeline import Augmenter, parse_augment

    probs = run.predict_proba(x, batch_size)
    if passes <= 1:
        return probs
    names = [a for a in parse_augment(run.config.data.augment)
             if a in ("crop", "flip", "rotation", "zoom")] or ["crop"]
    aug = Augmenter(names, x.shape[1], seed=run.config.train.seed)
    total = probs.astype(np.float64)
    for _ in range(passes - 1):
        xa = np.concatenate([np.asarray(aug.images(x[i:i + batch_size]))
                             for i in range(0, len(x), batch_size)])
        total += run.predict_proba(xa, batch_size)
    return (total / passes).astype(np.float32)


def measure_latency(run, x: np.ndarray, batch_size: int = 32, repeats: int = 20) -> dict:
    """Mean latency of one image and of one batch (warm, after a first call), in milliseconds."""
    import keras

    if run.is_bayesian:
        fn = lambda b: run.predict_proba(b, batch_size=len(b))  # noqa: E731
    else:
        model = run.deployable()
        fn = lambda b: keras.ops.convert_to_numpy(model(b, training=False))  # noqa: E731
    one = x[:1]
    batch = x[:batch_size]
    fn(one)
    fn(batch)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn(one)
    per_image = (time.perf_counter() - t0) / repeats
    t0 = time.perf_counter()
    for _ in range(max(3, repeats // 4)):
        fn(batch)
    per_batch = (time.perf_counter() - t0) / max(3, repeats // 4)
    return {"latency_ms_per_image": per_image * 1e3, "latency_ms_per_batch": per_batch * 1e3,
            "latency_batch_size": int(len(batch)),
            "latency_ms_per_image_in_batch": per_batch * 1e3 / max(1, len(batch))}


# -- calibration, Monte Carlo uncertainty, out-of-distribution detection ----------------------

OOD_SOURCES = ("noise", "sentiment", "digits", "fashion_mnist", "mnist_sample", "folder:PATH",
               "tfds:NAME")


def mc_dropout_model(model):
    """``model`` with its Dropout layers active at prediction (MC-dropout, Gal and Ghahramani 2016).

    The other layers (and their weights) are shared with ``model``; BatchNormalization stays in
    inference mode.
    """
    import keras

    class AlwaysDropout(keras.layers.Dropout):
        def call(self, inputs, training=None):
            return super().call(inputs, training=True)

    if not any(isinstance(layer, keras.layers.Dropout) for layer in model.layers):
        raise UserError(f"--mc-dropout needs a model with dropout layers; {model.name} has none "
                        "(train it with --dropout 0.3, for example)")
    return keras.models.clone_model(
        model, clone_function=lambda layer: AlwaysDropout.from_config(layer.get_config())
        if isinstance(layer, keras.layers.Dropout) else layer)


def predict_mc(run, x: np.ndarray, samples: int, *, mc_dropout: bool = False,
               batch_size: int = 256) -> np.ndarray | None:
    """``(samples, N, C)`` Monte Carlo probabilities, or None for a deterministic evaluation.

    Bayesian runs draw posterior samples; deterministic runs with ``mc_dropout`` keep dropout on
    (without the fitted temperature, which was fitted to the dropout-free model).
    """
    if run.is_bayesian:
        if mc_dropout:
            raise UserError("--mc-dropout applies to deterministic models; a Bayesian run always "
                            "predicts by Monte Carlo (set the samples with --mc-samples)")
        return run.predictor.predict_mc(np.asarray(x, np.float32), samples, batch_size)
    if not mc_dropout:
        return None
    cache = run.__dict__.setdefault("_mc_dropout_model", [])
    if not cache:
        cache.append(mc_dropout_model(run.model))
    model = cache[0]
    return np.stack([np.asarray(model.predict(x, batch_size=batch_size, verbose=0), np.float32)
                     for _ in range(samples)])


def calibrate_run(run, splits, batch_size: int = 256) -> dict:
    """Fit temperature scaling on the validation split; store it in ``metadata.json``.

    For deterministic runs (Bayesian runs keep temperature 1). Returns the fit summary, also
    stored as ``metadata["calibration"]``: the temperature and the validation NLL and ECE before
    and after.
    """
    from kerascls import uncertainty as U
    from kerascls.fileio import read_json
    from kerascls.metrics import apply_temperature
    from kerascls.runs import METADATA_FILE

    if run.is_bayesian:
        raise UserError("temperature scaling applies to deterministic runs")
    x, y = splits.x_val, splits.y_val
    probs = run.predict_proba(x, batch_size, calibrated=False)
    t = U.fit_temperature(probs, y)
    fitted = apply_temperature(probs, t)
    summary = {"temperature": t, "split": "val", "num_examples": int(len(y)),
               "nll_before": U.nll(y, probs), "nll_after": U.nll(y, fitted),
               "ece_before": U.expected_calibration_error(y, probs),
               "ece_after": U.expected_calibration_error(y, fitted)}
    meta = read_json(run.path / METADATA_FILE)
    meta["temperature"] = t
    meta["calibration"] = summary
    atomic_write_json(run.path / METADATA_FILE, meta)
    run.metadata["temperature"] = t
    run.metadata["calibration"] = summary
    run.predictor.temperature = t  # loaded before the fit: later predictions use the new one
    return summary


def ood_images(run, dataset: str, count: int, seed: int = 0) -> np.ndarray:
    """Out-of-distribution images at the run's input size, float32 0..255.

    ``noise`` gives ``count`` images of uniform random pixels; ``mnist_sample`` gives all its
    5,000 digits; any other name is loaded with :func:`kerascls.data.load_dataset` and its test
    split is used.
    """
    from kerascls.errors import did_you_mean

    kind, _, arg = dataset.partition(":")
    if dataset == "noise":
        rng = np.random.default_rng(seed)
        size = run.image_size
        return rng.uniform(0.0, 255.0, (max(1, count), size, size, 3)).astype(np.float32)
    named = ("sentiment", "digits", "fashion_mnist", "mnist_sample")
    if not ((kind in named and not arg) or (kind in ("folder", "tfds") and arg)):
        raise UserError("--ood: " + did_you_mean("dataset", dataset, OOD_SOURCES).replace(
            "Available:", "Use one of:"))
    if dataset == run.metadata.get("dataset"):
        raise UserError(f"--ood {dataset} is the run's own dataset; choose other images "
                        f"({', '.join(OOD_SOURCES)})")
    splits = run.dataset(dataset)
    if dataset == "mnist_sample":  # none of it was seen in training: use every image
        return np.concatenate([splits.x_train, splits.x_val, splits.x_test])
    return splits.x_test


def fit_feature_density(run, x_fit: np.ndarray, y_fit: np.ndarray, batch_size: int = 256):
    """A :class:`kerascls.uncertainty.FeatureDensity` of the run's features of ``x_fit``
    (its training images, labelled ``y_fit``)."""
    from kerascls import uncertainty as U

    return U.FeatureDensity.fit(run.features(x_fit, batch_size), y_fit)


def ood_report(run, dataset: str, probs_in: np.ndarray, mc_in: np.ndarray | None, *,
               samples: int, mc_dropout: bool = False, batch_size: int = 256,
               out_dir: Path | None = None, x_out: np.ndarray | None = None,
               x_in: np.ndarray | None = None, fit: tuple | None = None) -> dict:
    """AUROC and AUPR (OOD positive) of each uncertainty score at telling ``dataset`` images
    from the test split.

    Scores (higher = more likely OOD): ``max_softmax`` (1 - top probability), ``entropy`` and,
    with Monte Carlo predictions, ``mutual_information``; for a deterministic run given its test
    images ``x_in`` and ``fit = (x_train, y_train)``, ``feature_density`` (the negative log
    density of the classifier's input under a Gaussian per class fitted to the training images,
    :class:`kerascls.uncertainty.FeatureDensity`). Draws ``ood_<dataset>.png``.
    ``x_out`` are the OOD images when already loaded (:func:`ood_images`).
    """
    from kerascls import plots
    from kerascls import uncertainty as U

    if x_out is None:
        x_out = ood_images(run, dataset, len(probs_in), seed=run.config.train.seed)
    mc_out = predict_mc(run, x_out, samples, mc_dropout=mc_dropout, batch_size=batch_size)
    probs_out = mc_out.mean(axis=0) if mc_out is not None else run.predict_proba(x_out, batch_size)
    s_in, s_out = U.ood_scores(probs_in, mc_in), U.ood_scores(probs_out, mc_out)
    density = None
    if fit is not None and x_in is not None and not run.is_bayesian:
        density = fit_feature_density(run, *fit, batch_size=batch_size)
        s_in["feature_density"] = density.score(run.features(x_in, batch_size))
        s_out["feature_density"] = density.score(run.features(x_out, batch_size))
    report = {
        "dataset": dataset,
        "num_in": int(len(probs_in)),
        "num_out": int(len(probs_out)),
        "auroc": U.ood_auroc(s_in, s_out),
        "aupr": U.ood_aupr(s_in, s_out),
        "mean_score_in": {k: float(np.mean(v)) for k, v in s_in.items()},
        "mean_score_out": {k: float(np.mean(v)) for k, v in s_out.items()},
    }
    if density is not None:
        report["feature_density"] = {"fitted_on": int(len(fit[0])), "dim": density.dim,
                                     "jitter": density.jitter}
    if out_dir is not None:
        slug = "".join(c if c.isalnum() else "-" for c in dataset).strip("-")
        plots.ood_histograms(s_in, s_out, report["auroc"], Path(out_dir) / f"ood_{slug}.png",
                             title=f"{run.name}: test split vs {dataset}")
    return report


def variant_tag(run, *, dataset: str | None = None, tta: int = 0, mc_samples: int | None = None,
                mc_dropout: bool = False) -> str:
    """``""`` for the run's own evaluation, else a file-name tag such as ``"-tta5"``.

    The run's ``metrics.json`` holds the evaluation the run was trained for (what ``compare``,
    the manifest and the export report quote); an evaluation with test-time augmentation,
    MC-dropout, another Monte Carlo sample count or another dataset is written beside it
    (``metrics-tta5.json``, ``confusion_matrix-tta5.png``, ...), never over it. With ``--out``
    the files keep their plain names in the folder asked for.
    """
    from kerascls.training.rundir import slug

    parts = []
    if dataset and dataset != run.metadata.get("dataset"):
        parts.append(slug(dataset))
    if tta > 1:
        parts.append(f"tta{int(tta)}")
    if mc_dropout:
        parts.append("mc_dropout")
    if mc_samples is not None and int(mc_samples) != int(run.config.eval.mc_samples):
        parts.append(f"mc{int(mc_samples)}")
    return "".join(f"-{p}" for p in parts)


def calibration_report(run, x: np.ndarray, y: np.ndarray, probs: np.ndarray, out_dir: Path,
                       *, calibrated_by_temperature: bool, batch_size: int = 256,
                       tag: str = "") -> dict:
    """NLL, Brier, 15-bin ECE and ``reliability{tag}.png`` (plus the uncalibrated figures when a
    temperature was applied)."""
    from kerascls import plots
    from kerascls import uncertainty as U

    report = U.calibration_metrics(y, probs)
    bins = U.reliability_bins(y, probs)
    report["reliability"] = bins.to_dict()
    if calibrated_by_temperature:
        raw = run.predict_proba(x, batch_size, calibrated=False)
        report["uncalibrated"] = U.calibration_metrics(y, raw)
    plots.reliability_diagram(bins, out_dir / f"reliability{tag}.png",
                              title=f"{run.name}: ECE {report['ece']:.4f} "
                                    f"({U.ECE_BINS} bins)")
    return report


def evaluate_run(run, *, splits=None, dataset: str | None = None, tta: int = 0,
                 out_dir: Path | None = None, batch_size: int = 256,
                 mc_samples: int | None = None, mc_dropout: bool = False,
                 ood: str | None = None) -> dict:
    """Evaluate ``run`` on the test split; write metrics.json and plots; return the metrics.

    Args:
        mc_samples: Monte Carlo samples (Bayesian runs, ``mc_dropout``); default the run's
            ``eval.mc_samples``.
        mc_dropout: predict a deterministic run with dropout active (MC-dropout).
        ood: report OOD-detection AUROCs against this dataset (or ``noise``).
    """
    from kerascls import uncertainty as U
    from kerascls import plots

    if splits is None:
        splits = run.dataset(dataset)
    if list(splits.class_names) != run.labels:
        raise UserError(f"dataset classes {splits.class_names[:5]}... do not match the run's labels "
                        f"{run.labels[:5]}...")
    x, y = splits.x_test, splits.y_test
    samples = int(run.config.eval.mc_samples if mc_samples is None else mc_samples)
    if samples < 1:
        raise UserError(f"--mc-samples must be a positive integer. Received: {samples}")
    x_ood = ood_images(run, ood, len(x), seed=run.config.train.seed) if ood else None
    mc = predict_mc(run, x, samples, mc_dropout=mc_dropout, batch_size=batch_size)
    if tta > 1:
        probs = predict_tta(run, x, tta, batch_size)
    elif mc is not None:
        probs = mc.mean(axis=0).astype(np.float32)
    else:
        probs = run.predict_proba(x, batch_size)
    metrics = classification_metrics(y, probs, run.labels)
    out = Path(out_dir or run.path)
    out.mkdir(parents=True, exist_ok=True)
    # deterministic predictions carry the fitted temperature (TTA averages calibrated passes)
    temperature = run.temperature if not run.is_bayesian and mc is None else 1.0
    # into the run directory, a variant evaluation goes beside the run's own metrics.json
    tag = variant_tag(run, dataset=dataset, tta=tta, mc_samples=mc_samples,
                      mc_dropout=mc_dropout) if out.resolve() == run.path.resolve() else ""
    metrics.update(calibration_report(
        run, x, y, probs, out, batch_size=batch_size,
        calibrated_by_temperature=abs(temperature - 1.0) > 1e-9 and tta <= 1, tag=tag))
    metrics["temperature"] = temperature
    metrics["prediction"] = ("monte_carlo" if run.is_bayesian else
                             "mc_dropout" if mc_dropout else "deterministic")
    if mc is not None:
        metrics["uncertainty"] = U.uncertainty_summary(U.MCPrediction.from_samples(mc), y)
    if ood:
        metrics["ood"] = ood_report(run, ood, probs, mc, samples=samples, mc_dropout=mc_dropout,
                                    batch_size=batch_size, out_dir=out, x_out=x_ood, x_in=x,
                                    fit=(splits.x_train, splits.y_train))
    metrics.update(measure_latency(run, x))
    metrics["dataset"] = dataset or run.metadata.get("dataset")
    metrics["tta"] = int(tta)
    metrics["file"] = f"metrics{tag}.json"
    atomic_write_json(out / f"metrics{tag}.json", metrics)
    plots.confusion_matrix(metrics["confusion_matrix"], run.labels,
                           out / f"confusion_matrix{tag}.png")
    plots.roc_curves(y, probs, run.labels, out / f"roc{tag}.png")
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
    lines.append(f"NLL {metrics['nll']:.4f}  Brier {metrics['brier']:.4f}  "
                 f"ECE ({metrics['ece_bins']} bins) {metrics['ece']:.4f}  "
                 f"[{metrics['prediction']}, temperature {metrics['temperature']:.3f}]")
    if "uncalibrated" in metrics:
        u = metrics["uncalibrated"]
        lines.append(f"uncalibrated  NLL {u['nll']:.4f}  Brier {u['brier']:.4f}  "
                     f"ECE {u['ece']:.4f}")
    if "uncertainty" in metrics:
        u = metrics["uncertainty"]
        lines.append(f"uncertainty ({u['mc_samples']} samples)  predictive entropy "
                     f"{u['mean_predictive_entropy']:.4f}  expected entropy "
                     f"{u['mean_expected_entropy']:.4f}  mutual information "
                     f"{u['mean_mutual_information']:.4f}  top-class std "
                     f"{u['mean_top_class_std']:.4f}")
    if "ood" in metrics:
        o = metrics["ood"]
        aurocs = "  ".join(f"{k} {v:.4f}" for k, v in o["auroc"].items())
        lines.append(f"OOD AUROC vs {o['dataset']} ({o['num_in']} in, {o['num_out']} out)  "
                     f"{aurocs}")
        if "aupr" in o:
            auprs = "  ".join(f"{k} {v:.4f}" for k, v in o["aupr"].items())
            lines.append(f"OOD AUPR  (out-of-distribution positive)  {auprs}")
        if "feature_density" in o:
            f = o["feature_density"]
            lines.append(f"feature density: a Gaussian per class over the classifier's "
                         f"{f['dim']}-d input, fitted on {f['fitted_on']} training images")
        if "mutual_information" not in o["auroc"]:
            lines.append("mutual information needs Monte Carlo predictions: a Bayesian run, "
                         "or --mc-dropout on a model with dropout")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from kerascls.cli import Parser

    p = Parser(prog="python -m kerascls.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="run directory written by python -m kerascls.train")
    p.add_argument("--dataset", help="evaluate on this dataset's test split (same classes)")
    p.add_argument("--tta", type=int, default=0, help="test-time augmentation passes (0 = off)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", help="write results here instead of the run directory")
    p.add_argument("--mc-samples", type=int, default=None,
                   help="Monte Carlo samples for Bayesian runs and --mc-dropout "
                        "(default: the run's eval.mc_samples)")
    p.add_argument("--mc-dropout", action="store_true",
                   help="predict a deterministic model with dropout active (MC-dropout)")
    p.add_argument("--ood", metavar="DATASET",
                   help=f"report OOD-detection AUROCs against {', '.join(OOD_SOURCES)}")
    return p


def parse_args(argv):
    args = build_parser().parse_args(argv)
    if args.tta < 0:
        raise UserError(f"--tta must be >= 0. Received: {args.tta}")
    if args.batch_size <= 0:
        raise UserError(f"--batch-size must be a positive integer. Received: {args.batch_size}")
    if args.mc_samples is not None and args.mc_samples <= 0:
        raise UserError(f"--mc-samples must be a positive integer. Received: {args.mc_samples}")
    return args


@cli_main
def main(argv: list[str] | None = None) -> int:
    from kerascls.runs import load_run

    args = parse_args(argv)
    run = load_run(args.run_dir)
    metrics = evaluate_run(run, dataset=args.dataset, tta=args.tta,
                           out_dir=Path(args.out) if args.out else None,
                           batch_size=args.batch_size, mc_samples=args.mc_samples,
                           mc_dropout=args.mc_dropout, ood=args.ood)
    print(_format(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
