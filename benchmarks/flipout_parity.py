"""Keras 3 Flipout against TFP Flipout: bnn_cnn on the digits, same recipe, side by side.

Trains the bnn_cnn (LeNet-5 in Flipout layers, prior N(0, 1), KL / N) on the digits (seed-42
split, 32x32) with the recipe of the TFP engine's ``fit_run``: Adam at ``--learning-rate`` on a
per-epoch cosine schedule, batch 64, loss = cross-entropy + KL / N, the weights of the epoch with
the lowest validation loss kept. Then predicts the test split with ``--mc-samples`` Monte Carlo
passes and prints accuracy and ECE (15 bins) of the Monte Carlo mean, mean mutual information,
training time and Monte Carlo predict time for each implementation:

* ``tfp``: TensorFlow Probability's layers (``kerascls.engines.tfp.build_bnn``, tf_keras),
  tensorflow backend only;
* ``keras``: kerascls's Keras 3 layers (``kerascls.bayes.build_bnn``), on the process's backend.

Keras fixes its backend per process; run once per backend and keep the JSON rows in one file::

    python benchmarks/flipout_parity.py --output parity.json
    KERAS_BACKEND=jax python benchmarks/flipout_parity.py --output parity.json
    KERAS_BACKEND=torch python benchmarks/flipout_parity.py --output parity.json

Each run adds its rows to ``--output`` and prints every row the file holds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np

CONVS, HIDDEN = ((6, 5), (16, 5)), (120, 84)


def epoch_learning_rate(peak: float, epochs: int, epoch: int) -> float:
    """Cosine decay per epoch from ``peak`` (the TFP engine's schedule, no warmup)."""
    return 0.5 * peak * (1.0 + math.cos(math.pi * epoch / max(1, epochs)))


def best_weights_callback(base):
    """A ``base`` (keras or tf_keras) callback keeping the weights of the lowest val_loss."""

    class BestWeights(base):
        def __init__(self):
            super().__init__()
            self.best, self.weights, self.epoch = math.inf, None, 0

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get("val_loss")
            if value is not None and math.isfinite(value) and value < self.best:
                self.best, self.epoch = float(value), epoch + 1
                self.weights = self.model.get_weights()

    return BestWeights()


def build(impl: str, splits, args):
    """``(model, keras-like module)`` of ``impl`` for the digits splits."""
    kwargs = {"convs": CONVS, "hidden": HIDDEN, "normalize": "unit",
              "prior_scale": args.prior_scale, "num_train_examples": len(splits.x_train),
              "name": "bnn_cnn"}
    shape = (args.image_size, args.image_size, 3)
    if impl == "tfp":
        import tf_keras

        from kerascls.engines.tfp import build_bnn

        tf_keras.utils.set_random_seed(args.seed)
        return build_bnn(shape, splits.num_classes, **kwargs), tf_keras
    import keras

    from kerascls.bayes import build_bnn

    keras.utils.set_random_seed(args.seed)
    return build_bnn(shape, splits.num_classes, **kwargs), keras


def predict_mc(impl: str, model, x, n: int) -> np.ndarray:
    if impl == "keras":
        from kerascls.bayes import predict_mc as keras_predict_mc

        return keras_predict_mc(model, x, n)
    return np.stack([model.predict(x, batch_size=256, verbose=0) for _ in range(n)])


def train_and_evaluate(impl: str, splits, args) -> dict:
    import keras

    from kerascls.data.pipeline import make_dataset
    from kerascls.uncertainty import MCPrediction, expected_calibration_error

    model, K = build(impl, splits, args)
    model.compile(optimizer=K.optimizers.Adam(args.learning_rate),
                  loss=K.losses.CategoricalCrossentropy(), metrics=["accuracy"])
    nc = splits.num_classes
    train_ds = make_dataset(splits.x_train, splits.y_train, nc, args.batch_size, training=True,
                            seed=args.seed)
    val_ds = make_dataset(splits.x_val, splits.y_val, nc, args.batch_size)
    best = best_weights_callback(K.callbacks.Callback)
    schedule = K.callbacks.LearningRateScheduler(
        lambda epoch, lr: epoch_learning_rate(args.learning_rate, args.epochs, epoch))
    t0 = time.perf_counter()
    model.fit(train_ds, validation_data=val_ds, epochs=args.epochs, callbacks=[schedule, best],
              verbose=0)
    train_seconds = time.perf_counter() - t0
    if best.weights is not None:
        model.set_weights(best.weights)
    t0 = time.perf_counter()
    mc = predict_mc(impl, model, splits.x_test, args.mc_samples)
    predict_seconds = time.perf_counter() - t0
    pred = MCPrediction.from_samples(mc)
    y = np.asarray(splits.y_test)
    return {
        "impl": impl,
        "backend": keras.backend.backend(),
        "seed": args.seed,
        "accuracy": float((pred.mean.argmax(1) == y).mean()),
        "ece": float(expected_calibration_error(y, pred.mean)),
        "mean_mutual_information": float(pred.mutual_information.mean()),
        "best_epoch": best.epoch,
        "best_val_loss": best.best,
        "train_seconds": round(train_seconds, 1),
        "train_images_per_second": round(args.epochs * len(splits.x_train) / train_seconds, 1),
        "mc_predict_seconds": round(predict_seconds, 2),
        "num_test": len(y),
        "epochs": args.epochs,
        "mc_samples": args.mc_samples,
        "load": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def print_table(rows: list[dict]) -> None:
    print(f"{'impl':6} {'backend':11} {'seed':>4} {'acc':>7} {'ECE':>7} {'MI':>7} {'best ep':>7}"
          f" {'train s':>8} {'img/s':>7} {'MC s':>6} {'load':>5}  date")
    for r in rows:
        print(f"{r['impl']:6} {r['backend']:11} {r['seed']:4d} {r['accuracy']:7.4f} "
              f"{r['ece']:7.4f} {r['mean_mutual_information']:7.4f} {r['best_epoch']:7d} "
              f"{r['train_seconds']:8.1f} {r['train_images_per_second']:7.1f} "
              f"{r['mc_predict_seconds']:6.2f} {r['load']:5.1f}  {r['date']}")
    tfp = [r for r in rows if r["impl"] == "tfp"]
    if not tfp:
        return
    ref_acc = np.mean([r["accuracy"] for r in tfp])
    ref_ece = np.mean([r["ece"] for r in tfp])
    for backend in sorted({r["backend"] for r in rows if r["impl"] == "keras"}):
        ours = [r for r in rows if r["impl"] == "keras" and r["backend"] == backend]
        d_acc = 100 * (np.mean([r["accuracy"] for r in ours]) - ref_acc)
        d_ece = np.mean([r["ece"] for r in ours]) - ref_ece
        print(f"keras on {backend} - tfp: accuracy {d_acc:+.2f} pp, ECE {d_ece:+.4f} "
              f"({len(ours)} vs {len(tfp)} runs)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--impls", default="", help="comma-separated: tfp, keras (default: both on "
                   "tensorflow, keras elsewhere)")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=0.002)
    p.add_argument("--prior-scale", type=float, default=1.0)
    p.add_argument("--mc-samples", type=int, default=50)
    p.add_argument("--seeds", default="42", help="comma-separated initialization seeds")
    p.add_argument("--output", default="", help="JSON file the rows are added to")
    args = p.parse_args(argv)

    import keras

    from kerascls.data import load_dataset

    backend = keras.backend.backend()
    impls = [s for s in args.impls.split(",") if s] or (
        ["tfp", "keras"] if backend == "tensorflow" else ["keras"])
    if "tfp" in impls and backend != "tensorflow":
        print(f"tfp needs the tensorflow backend; this process runs {backend}", file=sys.stderr)
        return 2
    splits = load_dataset("digits", args.image_size, seed=42)
    out = Path(args.output) if args.output else None
    rows = json.loads(out.read_text()) if out and out.is_file() else []
    for seed in (int(s) for s in args.seeds.split(",")):
        args.seed = seed
        for impl in impls:
            print(f"training {impl} on {backend}, seed {seed} ...", file=sys.stderr, flush=True)
            rows.append(train_and_evaluate(impl, splits, args))
            if out:
                tmp = out.with_suffix(".tmp")
                tmp.write_text(json.dumps(rows, indent=2) + "\n")
                tmp.replace(out)
    print(f"\ndigits {args.image_size}x{args.image_size}, seed-42 split, {rows[-1]['num_test']} "
          f"test images, {args.epochs} epochs, {args.mc_samples} Monte Carlo samples")
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
