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

Usage::

    python benchmarks/uncertainty_digits.py [--epochs 60] [--mc-samples 50] [--output-dir DIR]
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


def train_and_evaluate(flags, mode, args, root: Path) -> dict:
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
    for ood in OOD_SETS:
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--mc-samples", type=int, default=50)
    p.add_argument("--output-dir", default="")
    args = p.parse_args(argv)
    root = Path(args.output_dir or tempfile.mkdtemp(prefix="kerascls-uncertainty-"))
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
