"""Training throughput: images/s per Keras backend, and the input pipeline alone.

For each backend (tensorflow, jax, torch; each in its own process) this trains the same model on
the same digits data twice: fed by kerascls' tf.data pipeline, and from in-memory numpy tensors.
It also times the pipeline alone (iterating batches without a model). The pipeline must not be
the bottleneck: pipeline-fed training should reach at least 95% of in-memory speed.

    python benchmarks/train_throughput.py [--model lenet] [--image-size 32] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def measure(model_name: str, image_size: int, epochs: int, batch_size: int) -> dict:
    import keras
    import numpy as np

    from kerascls import build_model, load_dataset
    from kerascls.data.pipeline import make_dataset

    splits = load_dataset("digits", image_size, seed=0)
    x = np.concatenate([splits.x_train, splits.x_val])
    y = np.concatenate([splits.y_train, splits.y_val])
    onehot = np.eye(splits.num_classes, dtype="float32")[y]
    n = len(x)

    def fresh():
        keras.utils.set_random_seed(0)
        m = build_model(model_name, (image_size, image_size, 3), splits.num_classes, normalize="unit")
        m.compile("adam", "categorical_crossentropy")
        return m

    out = {"backend": keras.backend.backend(), "images": n, "epochs": epochs}
    # pipeline alone
    ds = make_dataset(x, y, splits.num_classes, batch_size, training=True, seed=0)
    for _ in ds:
        pass
    t0 = time.perf_counter()
    for _ in range(epochs):
        for _ in ds:
            pass
    out["pipeline_only_images_per_s"] = n * epochs / (time.perf_counter() - t0)
    # training: one warm-up epoch per model, then timed epochs; the two feeds alternate
    # epoch by epoch so that load from other processes hits both alike.
    feeds = {
        "in_memory": lambda m: m.fit(x, onehot, batch_size=batch_size, epochs=1, verbose=0,
                                     shuffle=True),
        "pipeline": lambda m: m.fit(ds, epochs=1, verbose=0),
    }
    models = {name: fresh() for name in feeds}
    seconds = dict.fromkeys(feeds, 0.0)
    for name, fit in feeds.items():
        fit(models[name])
    for _ in range(epochs):
        for name, fit in feeds.items():
            t0 = time.perf_counter()
            fit(models[name])
            seconds[name] += time.perf_counter() - t0
    for name in feeds:
        out[f"{name}_images_per_s"] = n * epochs / seconds[name]
    out["pipeline_vs_in_memory"] = out["pipeline_images_per_s"] / out["in_memory_images_per_s"]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lenet")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--backends", default="tensorflow,jax,torch")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args.model, args.image_size, args.epochs, args.batch_size)))
        return 0
    rows = []
    for backend in args.backends.split(","):
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        res = subprocess.run([sys.executable, __file__, "--child", "--model", args.model,
                              "--image-size", str(args.image_size), "--epochs", str(args.epochs),
                              "--batch-size", str(args.batch_size)],
                             env=env, capture_output=True, text=True)
        if res.returncode != 0:
            print(f"{backend}: failed: {res.stderr.strip().splitlines()[-1:]}")
            continue
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    print(f"model {args.model} at {args.image_size}x{args.image_size}, digits, batch {args.batch_size}, "
          f"{os.cpu_count()} CPU cores")
    print(f"{'backend':<11} {'in-memory img/s':>16} {'pipeline img/s':>15} {'ratio':>6} "
          f"{'pipeline alone img/s':>21}")
    for r in rows:
        print(f"{r['backend']:<11} {r['in_memory_images_per_s']:16.0f} {r['pipeline_images_per_s']:15.0f} "
              f"{r['pipeline_vs_in_memory']:6.2f} {r['pipeline_only_images_per_s']:21.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
