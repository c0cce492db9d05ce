"""Calibration and uncertainty on digits: the Bayesian CNN against a deterministic CNN of its shape.

Trains, on the same digits split (seed 42, 32x32):

* ``bnn_cnn``: LeNet-5 in Flipout layers (prior N(0, 1), KL / N);
* ``bnn_cnn`` with a deterministic convolutional trunk under the Flipout head;
* ``lenet``: the deterministic LeNet-5 of the same shape (temperature fitted on validation);
* ``lenet --dropout 0.3``: evaluated with MC-dropout;

then prints, side by side: test accuracy, NLL, Brier, ECE (15 bins) before and after temperature
scaling, and the OOD AUROC of each uncertainty score (BNN and MC-dropout: mutual information and
entropy; deterministic: max softmax) against the synthetic sentiment images and uniform noise.
The figures are also written to ``OUTPUT_DIR/uncertainty_digits.json``.

``--impls`` instead trains ``bnn_cnn`` once per implementation and backend, each in its own
process: TFP's Flipout layers on tensorflow, and kerascls' Keras 3 Flipout layers on tensorflow,
jax and torch; it prints test accuracy, ECE, the OOD AUROC of the mutual information against
uniform noise, training images per second, and the latency of a Monte Carlo prediction
(``--mc-samples`` passes over a batch of 64 images, the fastest of 5).

Usage::

    python benchmarks/uncertainty_digits.py [--epochs 60] [--mc-samples 50] [--output-dir DIR]
    python benchmarks/uncertainty_digits.py --impls [--epochs 30] [--backends tensorflow,jax,torch]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

OOD_SETS = ("sentiment", "noise")

# name -> (training flags, how it is evaluated)
MODELS = {
    "bnn_cnn (Flipout trunk)": (["--model", "bnn_cnn"], "monte_carlo"),
    "bnn_cnn (deterministic trunk)": (["--model", "bnn_cnn", "--bnn-trunk", "deterministic",
                                       "--run-name", "bnn_cnn-dettrunk-digits"], "monte_carlo"),
    "lenet (deterministic)": (["--model", "lenet"], "deterministic"),
    "lenet + MC-dropout 0.3": (["--model", "lenet", "--dropout", "0.3",
                                "--run-name", "lenet-dropout-digits"], "mc_dropout"),
}


def train_and_evaluate(flags, mode, args, root: Path, ood_sets=OOD_SETS) -> dict:
    from kerascls.config import make_parser, resolve
    from kerascls.evaluate import evaluate_run
    from kerascls.runs import load_run
    from kerascls.train import train

    parser = make_parser("train", "")
    cfg = resolve(parser.parse_args([
        "--dataset", "digits", "--image-size", str(args.image_size), "--epochs",
        str(args.epochs), "--mc-samples", str(args.mc_samples), "--formats", "",
        "--output-dir", str(root), "--verbose", "0", *flags]))
    t0 = time.perf_counter()
    run_dir = train(cfg)
    seconds = time.perf_counter() - t0
    run = load_run(run_dir)
    splits = run.dataset()
    row = {"run_dir": str(run_dir), "train_seconds": round(seconds, 1),
           "temperature": run.temperature, "calibration": run.metadata.get("calibration"),
           "ood": {}}
    for ood in ood_sets:
        m = evaluate_run(run, splits=splits, mc_dropout=mode == "mc_dropout", ood=ood,
                         out_dir=run_dir / f"eval-{ood}")
        row["ood"][ood] = m["ood"]["auroc"]
        for key in ("accuracy", "nll", "brier", "ece", "prediction"):
            row[key] = m[key]
        row["uncalibrated"] = m.get("uncalibrated")
        if "uncertainty" in m:
            row["mean_mutual_information"] = m["uncertainty"]["mean_mutual_information"]
        row["num_test"] = m["num_examples"]
    return row


IMPLS = (("tfp", "tensorflow"), ("keras", "tensorflow"), ("keras", "jax"), ("keras", "torch"))


def impl_child(impl: str, args, root: Path) -> dict:
    """In a process on the backend under test: train bnn_cnn with ``impl``, measure it."""
    import numpy as np

    from kerascls.runs import load_run
    from kerascls.timing import best_block_ms

    flags = ["--model", "bnn_cnn", "--bnn-impl", impl,
             "--run-name", f"bnn_cnn-{impl}-{os.environ['KERAS_BACKEND']}"]
    row = train_and_evaluate(flags, "monte_carlo", args, root, ood_sets=("noise",))
    run = load_run(row["run_dir"])
    meta = run.metadata
    row["train_images_per_s"] = round(meta["num_train_examples"] * meta["epochs_trained"]
                                      / max(meta["train_seconds"], 1e-9), 1)
    batch = np.asarray(run.dataset().x_test[:64], np.float32)
    row["mc_predict_ms"] = round(best_block_ms(
        lambda: run.predictor.predict_mc(batch, args.mc_samples), repeats=1, blocks=5), 2)
    row["engine"], row["backend"] = meta["engine"], meta["backend"]
    return row


def compare_impls(args, root: Path) -> int:
    import subprocess

    rows = []
    backends = args.backends.split(",")
    for impl, backend in IMPLS:
        if backend not in backends:
            continue
        print(f"training bnn_cnn, {impl} layers, {backend} backend ...", file=sys.stderr,
              flush=True)
        env = dict(os.environ, KERAS_BACKEND=backend)
        out = root / f"impl-{impl}-{backend}.json"
        cmd = [sys.executable, __file__, "--impl-child", impl, "--epochs", str(args.epochs),
               "--image-size", str(args.image_size), "--mc-samples", str(args.mc_samples),
               "--output-dir", str(root)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not out.is_file():
            print(f"  failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.read_text()))
    print(f"\nbnn_cnn on digits {args.image_size}x{args.image_size}, {args.epochs} epochs, "
          f"{args.mc_samples} Monte Carlo samples; {time.strftime('%Y-%m-%d %H:%M')}, load "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'layers':8} {'backend':11} {'acc':>7} {'ECE':>7} {'NLL':>7} {'AUROC MI':>9} "
          f"{'AUROC H':>8} {'train img/s':>12} {'MC ms':>8}")
    for r in rows:
        o = r["ood"]["noise"]
        print(f"{r['engine']:8} {r['backend']:11} {r['accuracy']:7.4f} {r['ece']:7.4f} "
              f"{r['nll']:7.4f} {o.get('mutual_information', float('nan')):9.4f} "
              f"{o.get('entropy', float('nan')):8.4f} {r['train_images_per_s']:12.1f} "
              f"{r['mc_predict_ms']:8.1f}")
    out = root / "uncertainty_impls.json"
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
    print(f"figures: {out}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--mc-samples", type=int, default=50)
    p.add_argument("--output-dir", default="")
    p.add_argument("--impls", action="store_true",
                   help="TFP and Keras 3 Flipout layers side by side on each backend")
    p.add_argument("--backends", default="tensorflow,jax,torch")
    p.add_argument("--impl-child", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    root = Path(args.output_dir or tempfile.mkdtemp(prefix="kerascls-uncertainty-"))
    if args.impl_child:
        row = impl_child(args.impl_child, args, root)
        out = root / f"impl-{args.impl_child}-{os.environ['KERAS_BACKEND']}.json"
        out.write_text(json.dumps(row, indent=2) + "\n")
        return 0
    if args.impls:
        return compare_impls(args, root)
    rows = {}
    for name, (flags, mode) in MODELS.items():
        print(f"training {name} ...", file=sys.stderr, flush=True)
        rows[name] = train_and_evaluate(flags, mode, args, root)

    print(f"\ndigits {args.image_size}x{args.image_size}, seed 42 split, "
          f"{rows[next(iter(rows))]['num_test']} test images, {args.epochs} epochs, "
          f"{args.mc_samples} Monte Carlo samples")
    print(f"{'model':32} {'acc':>7} {'NLL':>7} {'Brier':>7} {'ECE':>7} {'ECE(T=1)':>9} {'T':>6}"
          f" {'train s':>8}")
    for name, r in rows.items():
        raw = r["uncalibrated"]["ece"] if r["uncalibrated"] else r["ece"]
        print(f"{name:32} {r['accuracy']:7.4f} {r['nll']:7.4f} {r['brier']:7.4f} {r['ece']:7.4f} "
              f"{raw:9.4f} {r['temperature']:6.3f} {r['train_seconds']:8.1f}")
    scores = ("max_softmax", "entropy", "mutual_information")
    for o in OOD_SETS:
        print(f"\nOOD AUROC, test split vs {o} images (higher is better)")
        print(f"{'model':32} " + " ".join(f"{s:>18}" for s in scores))
        for name, r in rows.items():
            cells = [f"{r['ood'][o][s]:18.4f}" if s in r["ood"][o] else f"{'-':>18}"
                     for s in scores]
            print(f"{name:32} " + " ".join(cells))
    bnn, det = rows["bnn_cnn (Flipout trunk)"], rows["lenet (deterministic)"]
    print(f"\nBNN - deterministic accuracy: {100 * (bnn['accuracy'] - det['accuracy']):+.2f} pp")
    before = det["uncalibrated"]["ece"] if det["uncalibrated"] else det["ece"]
    cal = det["calibration"]
    print(f"deterministic CNN, temperature scaling (T = {det['temperature']:.3f}, fitted on "
          f"{cal['num_examples']} validation images):")
    print(f"  validation ECE {cal['ece_before']:.4f} -> {cal['ece_after']:.4f}, NLL "
          f"{cal['nll_before']:.4f} -> {cal['nll_after']:.4f}")
    print(f"  test ECE       {before:.4f} -> {det['ece']:.4f}, NLL "
          f"{(det['uncalibrated'] or det)['nll']:.4f} -> {det['nll']:.4f}")
    out = root / "uncertainty_digits.json"
    out.write_text(json.dumps({"args": vars(args), "models": rows}, indent=2) + "\n")
    print(f"figures: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
