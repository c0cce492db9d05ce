"""Training speed per Keras backend against native PyTorch, on the same ResNet-20.

The model is kerascls' ``resnet20`` (He et al. 2016, CIFAR stem: 32x32x3 in, 3x3 conv with 16
filters, three stages of three basic blocks with 16/32/64 filters and parameter-free option-A
shortcuts, global average pooling, 10 classes) and, beside it, the same network written in plain
PyTorch (:class:`TorchResNet20`; the script checks that both have the same number of trainable
parameters). Every configuration trains with batch 128 and SGD with momentum 0.9 on random
in-memory images, one warm-up epoch and then ``--epochs`` timed epochs, each in its own process:

* ``keras-<backend> memory``: ``model.fit`` on numpy arrays, for tensorflow, jax and torch;
* ``keras-<backend> pipeline``: ``model.fit`` on :func:`kerascls.data.pipeline.make_feed`, what
  ``python -m kerascls.train`` feeds (one-hot labels, shuffling; tf.data with prefetch on
  tensorflow, shuffled batches gathered from the arrays on jax and torch);
* ``torch eager``: a plain PyTorch loop (the reference, ratio 1.00);
* ``torch compile``: the same loop with ``torch.compile`` on the model.

Configurations alternate within each round (``--rounds``), so that load from other processes
hits them alike; the figure per configuration is the median over rounds. Output: one table of
images per second and the ratio to native PyTorch eager, with the date, the CPU and the load
average before and after, and (``--json``) the raw figures.

    python benchmarks/backends.py [--epochs 3] [--rounds 2] [--images 2560] [--threads 0]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

BATCH = 128
CLASSES = 10
SIZE = 32
LEARNING_RATE = 0.05
MOMENTUM = 0.9
KERAS_BACKENDS = ("tensorflow", "jax", "torch")
FEEDS = ("memory", "pipeline")


# -- data -------------------------------------------------------------------------------------
def random_data(n: int, seed: int = 0):
    """``n`` random 32x32 RGB images in 0..255 (float32) and integer labels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")
    y = rng.integers(0, CLASSES, n).astype("int64")
    return x, y


# -- Keras --------------------------------------------------------------------------------------
def keras_model():
    import keras

    from kerascls import build_model

    keras.utils.set_random_seed(0)
    model = build_model("resnet20", (SIZE, SIZE, 3), CLASSES, normalize="unit")
    model.compile(keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM),
                  "categorical_crossentropy")
    return model


def keras_trainable(model) -> int:
    import numpy as np

    return int(sum(np.prod(v.shape) for v in model.trainable_weights))


def run_keras(feed: str, n: int, epochs: int) -> dict:
    import keras
    import numpy as np

    x, y = random_data(n)
    model = keras_model()
    if feed == "pipeline":
        from kerascls.data.pipeline import make_feed

        data = make_feed(x, y, CLASSES, BATCH, training=True, seed=0)

        def epoch():
            model.fit(data, epochs=1, verbose=0)
    else:
        onehot = np.eye(CLASSES, dtype="float32")[y]

        def epoch():
            model.fit(x, onehot, batch_size=BATCH, epochs=1, verbose=0, shuffle=True)
    epoch()  # warm-up: tracing, compilation, allocator
    t0 = time.perf_counter()
    for _ in range(epochs):
        epoch()
    seconds = time.perf_counter() - t0
    return {"config": f"keras-{keras.backend.backend()} {feed}", "images_per_s": n * epochs / seconds,
            "trainable_params": keras_trainable(model)}


# -- native PyTorch -----------------------------------------------------------------------------
def torch_resnet20():
    """ResNet-20 for CIFAR in plain PyTorch: the network ``kerascls`` builds as ``resnet20``.

    Inputs are NCHW float32 0..255; the first operation scales them to 0..1 as kerascls'
    ``normalize="unit"`` layer does.
    """
    import torch
    from torch import nn

    class Shortcut(nn.Module):  # option A: subsample, zero-pad the channels
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.stride, self.pad = stride, cout - cin

        def forward(self, x):
            if self.stride > 1:
                x = x[:, :, ::self.stride, ::self.stride]
            if self.pad:
                x = nn.functional.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
            return x

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.shortcut = Shortcut(cin, cout, stride) if (stride > 1 or cin != cout) else None

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return torch.relu(y + (self.shortcut(x) if self.shortcut is not None else x))

    class ResNet20(nn.Module):
        def __init__(self, classes=CLASSES, depth=3, widths=(16, 32, 64)):
            super().__init__()
            self.conv = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
            self.bn = nn.BatchNorm2d(widths[0])
            blocks, cin = [], widths[0]
            for s, w in enumerate(widths):
                for i in range(depth):
                    blocks.append(Block(cin, w, 2 if s > 0 and i == 0 else 1))
                    cin = w
            self.blocks = nn.Sequential(*blocks)
            self.fc = nn.Linear(cin, classes)

        def forward(self, x):
            x = torch.relu(self.bn(self.conv(x / 255.0)))
            x = self.blocks(x)
            return self.fc(x.mean(dim=(2, 3)))

    return ResNet20()


def run_torch(compiled: bool, n: int, epochs: int) -> dict:
    import torch

    torch.manual_seed(0)
    x, y = random_data(n)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    yt = torch.from_numpy(y)
    model = torch_resnet20()
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    loss_fn = torch.nn.CrossEntropyLoss()
    step_model = torch.compile(model) if compiled else model
    model.train()

    def epoch():
        order = torch.randperm(n)
        for i in range(0, n, BATCH):
            idx = order[i:i + BATCH]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(step_model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
        return float(loss)

    epoch()
    t0 = time.perf_counter()
    for _ in range(epochs):
        epoch()
    seconds = time.perf_counter() - t0
    return {"config": "torch compile" if compiled else "torch eager",
            "images_per_s": n * epochs / seconds, "trainable_params": int(params)}


# -- where a step of python -m kerascls.train goes ----------------------------------------------
PROFILE_STAGES = ("arrays", "pipeline", "pipeline+callbacks", "pipeline+callbacks+validation")


def profile_train(epochs: int) -> dict:
    """Milliseconds per training step of train's default run (LeNet, digits, 32x32, batch 64,
    Adam), adding one piece of ``python -m kerascls.train`` at a time: numpy arrays, the tf.data
    pipeline, train's callbacks (NaN stop, checkpoint, CSV log, TensorBoard, backup), validation.
    """
    import tempfile

    import keras
    import numpy as np

    from kerascls import build_model, load_dataset
    from kerascls.data.pipeline import make_feed

    s = load_dataset("digits", 32, seed=42)
    nc = s.num_classes
    onehot = np.eye(nc, dtype="float32")[s.y_train]
    train_ds = make_feed(s.x_train, s.y_train, nc, 64, training=True, seed=42)
    val_ds = make_feed(s.x_val, s.y_val, nc, 64)
    steps = -(-len(s.x_train) // 64)
    out = {"config": f"profile keras-{keras.backend.backend()}", "steps_per_epoch": steps}
    with tempfile.TemporaryDirectory() as tmp:
        for stage in PROFILE_STAGES:
            keras.utils.set_random_seed(42)
            model = build_model("lenet", (32, 32, 3), nc, normalize="unit")
            model.compile(keras.optimizers.Adam(0.002), "categorical_crossentropy",
                          metrics=["accuracy"])
            cbs = []
            if "callbacks" in stage:
                from kerascls.training.callbacks import nan_stop

                d = os.path.join(tmp, stage)
                os.makedirs(d)
                cbs = [keras.callbacks.ModelCheckpoint(os.path.join(d, "model.keras"),
                                                       monitor="loss", save_best_only=True),
                       keras.callbacks.CSVLogger(os.path.join(d, "history.csv")),
                       keras.callbacks.TensorBoard(os.path.join(d, "logs"), write_graph=False),
                       nan_stop(keras.callbacks.Callback),
                       keras.callbacks.BackupAndRestore(os.path.join(d, "backup"))]
            kw = {"validation_data": val_ds} if "validation" in stage else {}

            def fit(n, stage=stage, model=model, cbs=cbs, kw=kw):
                if stage == "arrays":
                    model.fit(s.x_train, onehot, batch_size=64, epochs=n, verbose=0,
                              shuffle=True)
                else:
                    model.fit(train_ds, epochs=n, verbose=0, callbacks=cbs, **kw)

            fit(1)
            t0 = time.perf_counter()
            fit(epochs)
            out[stage] = 1e3 * (time.perf_counter() - t0) / (epochs * steps)
    return out


# -- driver -------------------------------------------------------------------------------------
def configs(backends) -> list[tuple[str, str | None, str]]:
    """``(name, keras backend or None, feed or torch mode)`` in the order one round runs them."""
    out = [("torch eager", None, "eager")]
    for b in backends:
        for feed in FEEDS:
            out.append((f"keras-{b} {feed}", b, feed))
    out.append(("torch compile", None, "compile"))
    return out


def child(backend: str | None, mode: str, n: int, epochs: int, threads: int) -> dict:
    if threads and backend in (None, "torch"):
        import torch

        torch.set_num_threads(threads)
    if mode == "profile":
        return profile_train(epochs)
    if backend is None:
        return run_torch(mode == "compile", n, epochs)
    return run_keras(mode, n, epochs)


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover - not Unix
        return "n/a"


def _run_child(backend: str | None, mode: str, args) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND=backend or "torch")
    proc = subprocess.run([sys.executable, __file__, "--child", backend or "native", mode,
                           "--images", str(args.images), "--epochs", str(args.epochs),
                           "--threads", str(args.threads)],
                          env=env, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError((proc.stderr.strip().splitlines() or ["no output"])[-1])
    return json.loads(lines[-1])


def profile(args) -> int:
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = _load()
    rows = [_run_child(b, "profile", args) for b in args.backends.split(",")]
    print(f"ms per step, LeNet on digits 32x32, batch 64 ({rows[0]['steps_per_epoch']} steps per "
          f"epoch), 1 warm-up + {args.epochs} timed epochs; measured {started:%Y-%m-%d %H:%M} "
          f"UTC, load average {load_before} before, {_load()} after")
    print(f"| {'backend':<18} | " + " | ".join(f"{s:>29}" for s in PROFILE_STAGES) + " |")
    for r in rows:
        print(f"| {r['config']:<18} | " + " | ".join(f"{r[s]:29.1f}" for s in PROFILE_STAGES)
              + " |")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3, help="timed epochs after the warm-up epoch")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; median is reported")
    p.add_argument("--images", type=int, default=2560, help="random images per epoch")
    p.add_argument("--backends", default=",".join(KERAS_BACKENDS))
    p.add_argument("--skip", default="", help="comma-separated configurations to leave out, "
                   "e.g. 'torch compile'")
    p.add_argument("--threads", type=int, default=0,
                   help="PyTorch threads, native and Keras on torch (0: PyTorch's default)")
    p.add_argument("--json", help="also write the raw figures here")
    p.add_argument("--profile", action="store_true",
                   help="instead: milliseconds per step of train's default run on each backend, "
                        "adding the pipeline, the callbacks and validation one at a time")
    p.add_argument("--child", nargs=2, metavar=("BACKEND", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        backend = None if args.child[0] == "native" else args.child[0]
        print(json.dumps(child(backend, args.child[1], args.images, args.epochs, args.threads)))
        return 0

    if args.profile:
        return profile(args)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    plan = [c for c in configs(args.backends.split(",")) if c[0] not in skip]
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = _load()
    figures: dict[str, list[float]] = {name: [] for name, _, _ in plan}
    params: dict[str, int] = {}
    errors: dict[str, str] = {}
    for r in range(args.rounds):
        for name, backend, mode in plan:
            try:
                row = _run_child(backend, mode, args)
            except RuntimeError as exc:
                errors[name] = str(exc)
                print(f"round {r + 1}: {name}: failed: {errors[name]}", file=sys.stderr)
                continue
            figures[name].append(row["images_per_s"])
            params[name] = row["trainable_params"]
            print(f"round {r + 1}: {name}: {row['images_per_s']:.1f} img/s", file=sys.stderr)
    load_after = _load()
    counts = set(params.values())
    if len(counts) > 1:
        print(f"error: the configurations train different models: {params}", file=sys.stderr)
        return 1
    median = {k: statistics.median(v) for k, v in figures.items() if v}
    ref = median.get("torch eager")
    from kerascls.distribute import cpu_name

    print(f"ResNet-20 (CIFAR, 32x32x3, 10 classes, {counts.pop() if counts else '?'} trainable "
          f"parameters), batch {BATCH}, SGD momentum {MOMENTUM}, {args.images} random images per "
          f"epoch, 1 warm-up + {args.epochs} timed epochs, median of {args.rounds} alternating "
          f"rounds")
    print(f"measured {started:%Y-%m-%d %H:%M} UTC on {cpu_name()}, {os.cpu_count()} cores; "
          f"load average (1/5/15 min) {load_before} before, {load_after} after")
    print()
    print(f"| {'configuration':<26} | {'img/s':>8} | {'vs torch eager':>14} |")
    print(f"|{'-' * 28}|{'-' * 10}|{'-' * 16}|")
    for name, _, _ in plan:
        if name not in median:
            print(f"| {name:<26} | {'failed':>8} | {'':>14} |")
            continue
        ratio = f"{median[name] / ref:.2f}x" if ref else "n/a"
        print(f"| {name:<26} | {median[name]:8.1f} | {ratio:>14} |")
    for backend in args.backends.split(","):
        mem, pipe = median.get(f"keras-{backend} memory"), median.get(f"keras-{backend} pipeline")
        if mem and pipe:
            print(f"pipeline / in-memory on {backend}: {pipe / mem:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": started.isoformat(timespec="minutes"), "cpu": cpu_name(),
                       "cores": os.cpu_count(), "load_before": load_before,
                       "load_after": load_after, "args": vars(args), "figures": figures,
                       "median": median, "errors": errors}, f, indent=2)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
