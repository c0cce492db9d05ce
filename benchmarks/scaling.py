"""Scaling figures: images/s on 1 vs 2 logical CPU devices and 1 vs 2 workers; a GPU run.

    python benchmarks/scaling.py                  # CPU figures on this machine
    python benchmarks/scaling.py --gpu            # ResNet-20 on 32x32 data, float32 and bf16, GPU
    python benchmarks/scaling.py --out DIR        # also write DIR/scaling.json and DIR/scaling.png

Every configuration trains in its own process and goes through :mod:`kerascls.distribute` as
``python -m kerascls.train`` does (device setup, strategy, dtype policy), on synthetic 32x32 RGB
images (uniform 0..255, 10 classes) fed by kerascls' tf.data pipeline. One warm-up epoch
(tracing, XLA compilation) is not timed; images/s is the number of training images of the timed
epochs over their wall time, counted globally (all replicas and workers together).

CPU configurations (labelled as CPU figures; the replicas share this machine's cores):
  * 1 device: ``--strategy none``;
  * 2 logical devices: ``--strategy mirrored --cpu-devices 2``;
  * 1 worker / 2 workers: ``--strategy multiworker`` with TF_CONFIG on 127.0.0.1.
GPU configurations (``--gpu``): ResNet-20 with ``--device gpu``, ``--mixed-precision off`` and
``mixed_bfloat16``; the time per epoch is for ``--gpu-images`` images (50,000: CIFAR-10's
training set).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(spec: dict) -> dict:
    """Train ``spec["model"]`` under the spec's scaling options; return its figures."""
    from kerascls.config import Config
    from kerascls.distribute import setup

    cfg = Config()
    cfg.model.model = spec["model"]
    t = cfg.train
    t.strategy, t.cpu_devices, t.device = spec["strategy"], spec["cpu_devices"], spec["device"]
    t.mixed_precision, t.batch_size, t.lr_scaling = spec["mixed_precision"], spec["batch"], "none"
    placement = setup(cfg)

    import keras
    import numpy as np

    from kerascls.data.pipeline import make_dataset
    from kerascls.registry import build_model

    n, size = spec["images"], spec["image_size"]
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (n, size, size, 3)).astype("float32")
    y = rng.integers(0, 10, n)
    ds = make_dataset(x, y, 10, spec["batch"], training=True, seed=0)

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.t0)

    seconds: list[float] = []
    keras.utils.set_random_seed(0)
    with placement.scope():
        model = build_model(spec["model"], (size, size, 3), 10, normalize="unit")
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                      loss="categorical_crossentropy")
        model.fit(ds, epochs=1 + spec["epochs"], verbose=0, callbacks=[EpochTimer()])
    timed = seconds[1:]
    meta = placement.metadata()
    return {
        "label": spec["label"],
        "model": spec["model"],
        "image_size": size,
        "images_per_epoch": n,
        "batch_size": spec["batch"],
        "strategy": spec["strategy"],
        "mixed_precision": spec["mixed_precision"],
        "device_kind": meta["distribution"]["device_kind"],
        "device_names": meta["distribution"]["device_names"],
        "replicas": meta["replicas"],
        "workers": meta["distribution"]["workers"],
        "jit_compile": bool(model.jit_compile),
        "images_per_s": n * len(timed) / sum(timed),
        "seconds_per_epoch": sum(timed) / len(timed),
        "warmup_epoch_seconds": seconds[0],
    }


def _free_ports(k: int) -> list[int]:
    socks = [socket.socket() for _ in range(k)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def run_config(spec: dict, workers: int = 0, timeout: int = 1800) -> dict:
    """Run one configuration in fresh processes (one per worker); return the chief's figures."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    env.pop("TF_CONFIG", None)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    if not workers:
        procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)]
    else:
        cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(workers)]}
        procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=dict(env, TF_CONFIG=json.dumps(
                                      {"cluster": cluster, "task": {"type": "worker", "index": i}})))
                 for i in range(workers)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        raise SystemExit(f"{spec['label']}: did not finish in {timeout} s")
    for p, (out, err) in zip(procs, outs):
        if p.returncode != 0:
            tail = (err.strip().splitlines() or ["(no output)"])[-1]
            raise SystemExit(f"{spec['label']}: failed: {tail}")
    return json.loads(outs[0][0].strip().splitlines()[-1])


def plan(args) -> list[tuple[dict, int]]:
    base = {"model": args.model, "image_size": 32, "images": args.images,
            "batch": args.batch_size, "epochs": args.epochs, "device": "cpu",
            "mixed_precision": "off", "cpu_devices": 0}
    runs = [] if args.skip_cpu else [
        (dict(base, label="CPU, 1 device", strategy="none"), 0),
        (dict(base, label="CPU, 2 logical devices", strategy="mirrored", cpu_devices=2), 0),
        (dict(base, label="CPU, 1 worker", strategy="multiworker"), 1),
        (dict(base, label="CPU, 2 workers", strategy="multiworker"), 2),
    ]
    if args.gpu:
        gpu = dict(base, model="resnet20", images=args.gpu_images, batch=args.gpu_batch_size,
                   epochs=args.gpu_epochs, device="gpu", strategy="none")
        runs += [(dict(gpu, label="GPU, float32"), 0),
                 (dict(gpu, label="GPU, mixed_bfloat16", mixed_precision="mixed_bfloat16"), 0)]
    return runs


def report(rows: list[dict], out: Path | None) -> None:
    print(f"{'configuration':<24} {'model':<9} {'img/s':>9} {'s/epoch':>8} {'images':>7} "
          f"{'batch':>5} {'replicas':>8} {'xla':>4} {'load':>5}  device")
    for r in rows:
        print(f"{r['label']:<24} {r['model']:<9} {r['images_per_s']:9.0f} "
              f"{r['seconds_per_epoch']:8.2f} {r['images_per_epoch']:7d} {r['batch_size']:5d} "
              f"{r['replicas']:8d} {str(r['jit_compile'])[0]:>4} "
              f"{r.get('load_average_before', float('nan')):5.1f}  {', '.join(r['device_names'])}")
    print("load: the 1-minute load average when the configuration started (other processes "
          "on the machine slow every figure alike)")
    if out is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kerascls.fileio import atomic_path, atomic_write_json

    atomic_write_json(out / "scaling.json", {"cpu_count": os.cpu_count(), "results": rows})
    groups = [[r for r in rows if r["device_kind"] == kind] for kind in ("CPU", "GPU")]
    groups = [g for g in groups if g]
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.6), squeeze=False)
    for ax, group in zip(axes[0], groups):
        ax.barh([r["label"] for r in group], [r["images_per_s"] for r in group], color="tab:blue")
        ax.set_xlabel("training images/s")
        ax.set_title(f"{group[0]['model']} at 32x32, {group[0]['device_kind']}")
        ax.invert_yaxis()
    fig.tight_layout()
    with atomic_path(out / "scaling.png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    print(f"wrote {out / 'scaling.json'} and {out / 'scaling.png'}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20", help="model for the CPU figures")
    p.add_argument("--images", type=int, default=1024, help="images per CPU epoch")
    p.add_argument("--batch-size", type=int, default=128, help="global batch, CPU figures")
    p.add_argument("--epochs", type=int, default=2, help="timed CPU epochs (after one warm-up)")
    p.add_argument("--gpu", action="store_true", help="also run ResNet-20 on the GPU")
    p.add_argument("--skip-cpu", action="store_true", help="only the GPU figures")
    p.add_argument("--gpu-images", type=int, default=50000, help="images per GPU epoch")
    p.add_argument("--gpu-batch-size", type=int, default=128)
    p.add_argument("--gpu-epochs", type=int, default=2, help="timed GPU epochs")
    p.add_argument("--out", type=Path, help="write scaling.json and scaling.png here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return 0
    rows = []
    for spec, workers in plan(args):
        print(f"running {spec['label']} ...", file=sys.stderr, flush=True)
        load = os.getloadavg()[0]
        rows.append(run_config(spec, workers))
        rows[-1]["load_average_before"] = round(load, 2)
        rows[-1]["load_average_after"] = round(os.getloadavg()[0], 2)
    print(f"\n{os.cpu_count()} CPU cores; synthetic 32x32 RGB, 10 classes; one untimed warm-up "
          f"epoch; images/s counts all replicas and workers together")
    report(rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
