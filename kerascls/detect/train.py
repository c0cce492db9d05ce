"""Detection training: ``python -m kerascls.train --task detect --model yolov3_tiny``.

A run directory gets ``model.keras`` (the detector with the best validation loss), its Darknet
``model.weights``, ``config.yaml``, ``history.csv``, ``metadata.json`` (labels, input size,
anchors, test metrics) and the evaluation report of :mod:`kerascls.detect.evaluate`.
Anchors come from k-means over the training boxes (``--anchors kmeans``, the default) or from
the cfg (``--anchors cfg``, COCO anchors at 416 px, scaled to the input size).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from kerascls.errors import UserError


@dataclasses.dataclass
class DetectConfig:
    """Every option of a detection run; the field defaults are the defaults."""

    model: str = "yolov3_tiny"
    dataset: str = "shapes"
    image_size: int = 96
    num_examples: int = 1200
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    augment: str = "flip,affine,color"
    anchors: str = "kmeans"
    weights: str = ""
    epochs: int = 40
    batch_size: int = 16
    learning_rate: float = 0.001
    warmup_epochs: int = 2
    bn_momentum: float = 0.9
    max_minutes: float = 0.0
    score_threshold: float = 0.01
    iou_threshold: float = 0.45
    seed: int = 0
    output_dir: str = "runs"
    run_name: str = ""
    verbose: int = 2


HELP = {
    "model": "detection model (yolov3, yolov3_tiny)",
    "dataset": "shapes | yolo:PATH | coco:PATH",
    "image_size": "square input size, a multiple of 32",
    "num_examples": "shapes: number of generated images",
    "augment": "comma-separated box-aware augmentations: flip, affine, color; empty for none",
    "anchors": "kmeans (from the training boxes) or cfg (the cfg's, scaled to the input size)",
    "weights": "Darknet .weights file to start from (same cfg and class count)",
    "warmup_epochs": "linear learning-rate warmup, then cosine decay",
    "bn_momentum": "momentum of the batch-norm moving statistics",
    "max_minutes": "stop after this many minutes of training (0: no limit)",
    "score_threshold": "evaluation: lowest score kept before NMS",
    "iou_threshold": "NMS IoU threshold",
    "verbose": "Keras progress output: 0 silent, 1 bar, 2 one line per epoch",
}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kerascls.train --task detect",
        description="Train a YOLO detector, evaluate it with COCO mAP.", allow_abbrev=False)
    for f in dataclasses.fields(DetectConfig):
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=f.default,
                            type=type(f.default), metavar="V",
                            help=f"{HELP.get(f.name, f.name.replace('_', ' '))} "
                                 f"(default: {f.default!r})")
    return parser


def parse_args(argv) -> DetectConfig:
    cfg = DetectConfig(**vars(make_parser().parse_args(argv)))
    if cfg.anchors not in ("kmeans", "cfg"):
        raise UserError(f"--anchors must be one of kmeans, cfg. Received: --anchors={cfg.anchors}")
    for name in ("epochs", "batch_size", "image_size", "num_examples"):
        if getattr(cfg, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer. Received: "
                            f"{getattr(cfg, name)}")
    if cfg.image_size % 32:
        raise UserError(f"--image-size must be a multiple of 32. Received: {cfg.image_size}")
    return cfg


def _trainer_class():
    import keras

    class YoloTrainer(keras.Model):
        """Wraps a detector for ``fit``: the loss reads the targets and the true boxes."""

        def __init__(self, detector, **kwargs):
            super().__init__(**kwargs)
            from kerascls.detect.cfg import yolo_layers

            self.detector = detector
            self.heads = yolo_layers(detector)
            self.input_size = int(detector.input_shape[1])

        def call(self, x, training=False):
            return self.detector(x, training=training)

        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            from kerascls.detect.loss import yolo_loss

            total, _ = yolo_loss(y, y_pred, self.heads, self.input_size)
            return total

    return YoloTrainer


def build_detector(cfg: DetectConfig, num_classes: int, anchors):
    from kerascls.registry import build_model, get_spec

    spec = get_spec(cfg.model)
    if spec.task != "detect":
        raise UserError(f"--task detect needs a detection model (yolov3, yolov3_tiny). "
                        f"Received: --model={cfg.model}")
    model = build_model(cfg.model, (cfg.image_size, cfg.image_size, 3), num_classes,
                        anchors=anchors)
    if cfg.weights:
        from kerascls.detect.weights import load_darknet_weights

        load_darknet_weights(model, cfg.weights)
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = cfg.bn_momentum
    return model


def choose_anchors(cfg: DetectConfig, splits) -> list[tuple[float, float]]:
    """Anchors in input pixels: k-means on the training boxes, or the cfg's scaled."""
    from kerascls.detect.anchors import kmeans_anchors
    from kerascls.detect.cfg import cfg_anchors, read_cfg
    from kerascls.detect.data import box_sizes
    from kerascls.detect.models import VARIANTS

    sections = read_cfg(VARIANTS[cfg.model])
    base = cfg_anchors(sections)
    if cfg.anchors == "cfg":
        net = sections[0].int("width", 416)
        return [(w * cfg.image_size / net, h * cfg.image_size / net) for w, h in base]
    found = kmeans_anchors(box_sizes(splits.train), len(base), seed=cfg.seed)
    return [(round(float(w) * cfg.image_size, 2), round(float(h) * cfg.image_size, 2))
            for w, h in found]


def run_directory(cfg: DetectConfig) -> Path:
    base = Path(cfg.output_dir)
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in
                   Path(cfg.dataset.split(":", 1)[-1]).name)[:40] or "data"
    name = cfg.run_name or f"{cfg.model}-{slug}"
    candidate, i = base / name, 1
    while candidate.exists():
        i += 1
        candidate = base / f"{name}-{i}"
    return candidate


def _callbacks(run_dir: Path, detector, cfg: DetectConfig):
    import keras

    from kerascls.fileio import atomic_path

    class _BestDetector(keras.callbacks.Callback):
        best = math.inf
        nan_epoch = None

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            loss = logs.get("loss", math.nan)
            if not math.isfinite(loss):
                self.nan_epoch = epoch + 1
                self.model.stop_training = True
                return
            monitor = logs.get("val_loss", loss)
            if monitor < self.best:
                self.best = monitor
                with atomic_path(run_dir / "model.keras", suffix=".keras") as tmp:
                    detector.save(tmp)

    class _TimeBudget(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            spent = (time.perf_counter() - self.start) / 60
            per_epoch = spent / (epoch + 1)
            if cfg.max_minutes and spent + per_epoch > cfg.max_minutes:
                print(f"time budget: stopping after epoch {epoch + 1} ({spent:.1f} min of "
                      f"{cfg.max_minutes:g})", file=sys.stderr)
                self.model.stop_training = True

    best = _BestDetector()
    return best, [best, keras.callbacks.CSVLogger(str(run_dir / "history.csv")), _TimeBudget()]


def train_detector(cfg: DetectConfig) -> Path:
    """Train, save and evaluate a detection run; return its directory."""
    import keras

    from kerascls import __version__
    from kerascls.detect.data import HeadLayout, detection_batches, load_detection, parse_augment
    from kerascls.fileio import atomic_write_json, atomic_write_text

    kinds = parse_augment(cfg.augment)
    splits = load_detection(cfg.dataset, cfg.image_size, seed=cfg.seed,
                            num_examples=cfg.num_examples, val_fraction=cfg.val_fraction,
                            test_fraction=cfg.test_fraction)
    keras.utils.set_random_seed(cfg.seed)
    anchors = choose_anchors(cfg, splits)
    detector = build_detector(cfg, splits.num_classes, anchors)
    layout = HeadLayout.of(detector)
    run_dir = run_directory(cfg)
    run_dir.mkdir(parents=True)
    import yaml

    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(
        {"task": "detect", **dataclasses.asdict(cfg)}, sort_keys=False))
    train_ds = detection_batches(splits.train, layout, cfg.batch_size, training=True,
                                 augment_kinds=kinds, seed=cfg.seed)
    val_ds = (detection_batches(splits.val, layout, cfg.batch_size, training=False)
              if len(splits.val) else None)
    steps = len(train_ds)
    total, warm = cfg.epochs * steps, cfg.warmup_epochs * steps
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0 if warm else cfg.learning_rate, max(1, total - warm), alpha=0.01,
        warmup_target=cfg.learning_rate if warm else None, warmup_steps=warm)
    trainer = _trainer_class()(detector)
    trainer.compile(optimizer=keras.optimizers.Adam(schedule, clipnorm=10.0))
    best, callbacks = _callbacks(run_dir, detector, cfg)
    t0 = time.perf_counter()
    trainer.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs, callbacks=callbacks,
                verbose=cfg.verbose)
    seconds = time.perf_counter() - t0
    if best.nan_epoch is not None:
        raise UserError(f"loss became NaN at epoch {best.nan_epoch}; lower --learning-rate "
                        f"(was {cfg.learning_rate}). Run kept in {run_dir}")
    detector = keras.saving.load_model(run_dir / "model.keras", compile=False)
    from kerascls.detect.weights import save_darknet_weights

    save_darknet_weights(detector, run_dir / "model.weights")
    epochs = sum(1 for _ in (run_dir / "history.csv").open()) - 1
    meta = {
        "task": "detect",
        "model_name": cfg.model,
        "dataset": cfg.dataset,
        "labels": splits.class_names,
        "num_classes": splits.num_classes,
        "input_shape": [cfg.image_size, cfg.image_size, 3],
        "image_size": cfg.image_size,
        "input_range": [0, 255],
        "resize_method": "bilinear",
        "anchors": [[float(a), float(b)] for a, b in anchors],
        "score_threshold": 0.25,
        "iou_threshold": cfg.iou_threshold,
        "train_seconds": round(seconds, 1),
        "epochs_trained": epochs,
        "num_train_images": len(splits.train),
        "backend": keras.backend.backend(),
        "versions": {"kerascls": __version__, "keras": keras.__version__,
                     "python": sys.version.split()[0], "numpy": np.__version__},
    }
    atomic_write_json(run_dir / "metadata.json", meta)
    from kerascls.detect.evaluate import evaluate_detector, write_report

    report = evaluate_detector(detector, splits.test, splits.class_names,
                               score_threshold=cfg.score_threshold,
                               iou_threshold=cfg.iou_threshold)
    write_report(run_dir, report, detector, splits.test, splits.class_names)
    meta["metrics"] = {k: v for k, v in report.items() if isinstance(v, (int, float))}
    atomic_write_json(run_dir / "metadata.json", meta)
    return run_dir


def main(argv) -> int:
    """The ``--task detect`` branch of ``python -m kerascls.train`` (``argv`` without it)."""
    cfg = parse_args(argv)
    run_dir = train_detector(cfg)
    meta = json.loads((run_dir / "metadata.json").read_text())
    m = meta.get("metrics", {})
    print(f"run: {run_dir}  test mAP@0.5 {m.get('map50', float('nan')):.4f}  "
          f"mAP@0.5:0.95 {m.get('map', float('nan')):.4f}")
    return 0


def task_of(argv: list[str]) -> tuple[str, list[str]]:
    """Split ``--task X`` (or ``--task=X``) out of ``argv``; the task defaults to classify."""
    rest, task, it = [], "classify", iter(argv)
    for arg in it:
        if arg == "--task":
            task = next(it, "")
        elif arg.startswith("--task="):
            task = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    if task not in ("classify", "detect"):
        raise UserError(f"--task must be one of classify, detect. Received: --task={task}")
    if task == "classify":
        for i, arg in enumerate(rest):
            name = (rest[i + 1] if arg == "--model" and i + 1 < len(rest)
                    else arg.split("=", 1)[1] if arg.startswith("--model=") else None)
            if name:
                from kerascls import catalog  # names without importing Keras

                if name in {i.name for i in catalog.models(task="detect")}:
                    raise UserError(f"{name} is a detection model; add --task detect")
    return task, rest
