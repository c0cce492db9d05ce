"""Benchmark the model zoo and write ``docs/zoo.md``.

For every registered Keras 3 model, one row: parameters (ImageNet configuration: 224x224, 1000
classes; and CIFAR configuration: 32x32, 10 classes), multiply-accumulates per image at 32x32 and
at 224x224, and CPU training throughput at 32x32 (images per second over timed steps after a
warm-up step that compiles the training function).

Usage:
    python benchmarks/zoo.py                       # every model, writes docs/zoo.md and docs/zoo.json
    python benchmarks/zoo.py --models 'resnet*' --output /tmp/zoo.md --steps 5
    python benchmarks/zoo.py --resume              # keep the rows docs/zoo.json already holds
    python benchmarks/zoo.py --resume --models 'mobilenet_v4*'   # measure new models, keep the rest

It takes a while (the largest models compile for a minute each); run it in the background. The
table and its JSON are rewritten (atomically) after every model, marked partial until the last
one, so an interrupted run loses at most one model and ``--resume`` picks up where it stopped.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import sys
import time
from pathlib import Path

from kerascls.distribute import cpu_name

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

ROOT = Path(__file__).resolve().parent.parent


def _free() -> None:
    import keras

    keras.backend.clear_session()
    gc.collect()


def _trainable(model) -> int:
    import math

    return sum(int(math.prod(w.shape)) for w in model.trainable_weights)


def measure_static(name: str, size: int, classes: int) -> dict:
    """Parameters and MACs of ``name`` at ``size`` x ``size`` with ``classes`` outputs."""
    from kerascls.registry import build_model
    from kerascls.shapes import count_macs

    model = build_model(name, (size, size, 3), classes)
    row = {"params": model.count_params(), "trainable": _trainable(model),
           "macs": count_macs(model)}
    del model
    _free()
    return row


def measure_training(name: str, batch_size: int, steps: int, min_seconds: float) -> float:
    """Training images per second at 32x32 (Adam, cross-entropy, random data)."""
    import keras
    import numpy as np

    from kerascls.registry import build_model

    model = build_model(name, (32, 32, 3), 10, normalize="unit")
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch_size, 32, 32, 3)).astype("float32")
    y = np.eye(10, dtype="float32")[rng.integers(0, 10, batch_size)]
    model.train_on_batch(x, y)  # compiles the training step
    done, start = 0, time.perf_counter()
    while done < steps or time.perf_counter() - start < min_seconds:
        model.train_on_batch(x, y)
        done += 1
        if done >= 10 * steps:
            break
    elapsed = time.perf_counter() - start
    del model
    keras.backend.clear_session()
    gc.collect()
    return done * batch_size / elapsed


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def _fmt_macs(n: int) -> str:
    return f"{n / 1e9:.3f} G" if n >= 1e8 else f"{n / 1e6:.1f} M"


def render(rows: list[dict], meta: dict, total: int | None = None) -> str:
    partial = ([f"**Partial: {len(rows)} of {total} models measured so far.**", ""]
               if total is not None and len(rows) < total else [])
    lines = [
        "# The model zoo in figures",
        "",
        "Written by `python benchmarks/zoo.py`; do not edit by hand. The same rows, unformatted, "
        "are in `zoo.json` beside this file.",
        "",
        *partial,
        ("- Parameters: the ImageNet configuration (224x224, 1000 classes, `normalize=None`) "
         "and the CIFAR configuration (32x32, 10 classes), counted as Keras counts them "
         "(`count_params()`, which includes batch norm's moving mean and variance; "
         "torchvision's counts leave those out). The stem is chosen from the input size: the "
         "ImageNet stem at 224, the CIFAR stem at 32, which keeps the full 32x32 resolution "
         "where the ImageNet stem would downsample, so some models do more work at 32 than "
         "at 224."),
        ("- MACs: multiply-accumulates per image in convolutions and dense layers "
         "(`python -m kerascls.models flops`)."),
        (f"- Training: images/s at 32x32 on the CPU ({meta['cpu']}, {meta['cores']} cores), "
         f"Keras {meta['keras']} on TensorFlow {meta['tensorflow']}, Adam, batch "
         f"{meta['batch_size']}, timed after a warm-up step that compiles the training "
         "function."),
        (f"- Measured {meta['date']} on a machine shared with other jobs: 1-minute load average "
         f"{meta['load_start']:.1f} at the start and up to {meta['load_max']:.1f} after a model "
         f"(above {meta['cores']}, jobs wait for a core), so the throughput column is a lower bound and its ratios matter more "
         "than its values." if max(meta["load_start"], meta["load_max"]) > meta["cores"]
         else f"- Measured {meta['date']}."),
        "",
        ("| model | family | params 224 / 1000 | params 32 / 10 | MACs 32x32 | MACs 224x224 "
         "| train img/s 32x32 |"),
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    later = [r for r in rows if r.get("date", meta["date"]) != meta["date"]]
    at = next(i for i, line in enumerate(lines) if line.startswith("- Measured")) + 1
    for date in sorted({r["date"] for r in later}, reverse=True):
        same = [r for r in later if r["date"] == date]
        lines.insert(at, f"- Measured {date} (1-minute load average up to "
                     f"{max(r['load_max'] for r in same):.1f}): "
                     f"{', '.join(r['model'] for r in same)}.")
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['family']} | {_fmt_int(r['params_224'])} | "
            f"{_fmt_int(r['params_32'])} | {_fmt_macs(r['macs_32'])} | "
            f"{_fmt_macs(r['macs_224'])} | {r['train_ips_32']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="*", help="shell-style pattern (default: all)")
    parser.add_argument("--output", default=str(ROOT / "docs" / "zoo.md"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (at least)")
    parser.add_argument("--min-seconds", type=float, default=5.0,
                        help="keep timing until this many seconds have passed")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the rows the JSON beside --output already holds")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf
    from tqdm import tqdm

    from kerascls.fileio import atomic_write_json, atomic_write_text
    from kerascls.registry import get_spec, list_models

    names = [n for n in list_models(args.models) if get_spec(n).engines == ("keras",)]
    if not names:
        print(f"error: no Keras 3 model matches '{args.models}'", file=sys.stderr)
        return 2
    json_path = Path(args.output).with_suffix(".json")
    done: dict[str, dict] = {}
    meta = {"cpu": cpu_name(), "cores": os.cpu_count(), "keras": keras.__version__,
            "tensorflow": tf.__version__, "batch_size": args.batch_size,
            "date": datetime.date.today().isoformat(), "load_start": os.getloadavg()[0],
            "load_max": os.getloadavg()[0]}
    if args.resume and json_path.exists():
        try:
            previous = json.loads(json_path.read_text())
            done = {r["model"]: r for r in previous["rows"]}
            # the kept rows were measured then: keep when, where and under what load
            meta.update({k: previous["meta"][k] for k in ("date", "load_start", "batch_size")})
            meta["load_max"] = previous["meta"]["load_max"]
        except (ValueError, KeyError, TypeError) as exc:
            print(f"error: {json_path} is not a zoo table ({exc}); run without --resume",
                  file=sys.stderr)
            return 2
        # rows of other models stay in the table (--models picks what to measure)
        names = sorted(set(names) | {n for n in done if n in list_models("*")})
        if meta["batch_size"] != args.batch_size:
            print(f"error: {json_path} was measured at --batch-size {meta['batch_size']}, not "
                  f"{args.batch_size}; resume with the same batch size", file=sys.stderr)
            return 2
    rows = []

    def write() -> None:
        if meta["date"] == datetime.date.today().isoformat():  # kept rows keep their load
            meta["load_max"] = max(meta["load_max"], os.getloadavg()[0])
        atomic_write_text(args.output, render(rows, meta, total=len(names)))
        atomic_write_json(json_path, {"meta": meta, "rows": rows})

    for name in tqdm(names, unit="model", file=sys.stderr):
        if name in done:
            rows.append(done[name])
            continue
        big = measure_static(name, 224, 1000)
        small = measure_static(name, 32, 10)
        ips = measure_training(name, args.batch_size, args.steps, args.min_seconds)
        row = {"model": name, "family": get_spec(name).family, "params_224": big["params"],
               "params_32": small["params"], "macs_32": small["macs"],
               "macs_224": big["macs"], "train_ips_32": ips,
               "date": datetime.date.today().isoformat(), "load_max": os.getloadavg()[0]}
        rows.append(row)
        tqdm.write(f"{name:20s} params {big['params']:>12,}  MACs@32 {_fmt_macs(small['macs']):>9}"
                   f"  MACs@224 {_fmt_macs(big['macs']):>9}  train@32 {ips:8.1f} img/s",
                   file=sys.stderr)
        write()
    write()
    print(f"wrote {args.output} ({len(rows)} models)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
