"""``python -m kerascls.train``: train a registered model on a dataset, evaluate it, export it.

Example:
    python -m kerascls.train                                   # lenet on digits, 32x32
    python -m kerascls.train --dataset sentiment --model seed_cnn --epochs 30

A run killed at any point and started again with the same command resumes after the last
finished epoch (Keras ``BackupAndRestore``). A NaN loss stops the run with a clear message.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from kerascls.cli import cli_main, progress_verbose
from kerascls.config import Config, make_parser, resolve
from kerascls.errors import UserError

log = logging.getLogger("kerascls.train")


def check_model_input(cfg: Config, image_size: int):
    """The model's registry spec; UserError when ``image_size`` is below its minimum input."""
    from kerascls.registry import get_spec

    spec = get_spec(cfg.model.model)
    if image_size < spec.min_size:
        raise UserError(f"--image-size {image_size} is too small for {spec.name}: it needs at least "
                        f"{spec.min_size}x{spec.min_size}")
    return spec


def check_options(cfg: Config) -> None:
    """Refuse, before TensorFlow starts, what would otherwise fail after training.

    The model name (from :mod:`kerascls.catalog`), the dataset's form, the export formats and
    their options. The dataset's content (classes, images) is checked when it is loaded, which
    is also before training.
    """
    from kerascls import catalog
    from kerascls.data.sources import SOURCES
    from kerascls.errors import did_you_mean
    from kerascls.export import parse_formats
    from kerascls.export.tflite import MIN_REPRESENTATIVE_SIZE

    catalog.info(cfg.model.model)
    kind, _, arg = cfg.data.dataset.partition(":")
    if not ((kind in ("folder", "tfds") and arg) or (cfg.data.dataset in SOURCES)):
        raise UserError(did_you_mean("dataset", cfg.data.dataset, SOURCES).replace(
            "Available:", "Use one of:"))
    e = cfg.export
    if e.formats.strip():
        names = parse_formats(e.formats)
        if "tflite-int8" in names and e.representative_size < MIN_REPRESENTATIVE_SIZE:
            raise UserError(f"--representative-size must be at least {MIN_REPRESENTATIVE_SIZE} "
                            f"images for a sound int8 calibration. Received: "
                            f"{e.representative_size}")
    if e.models_dir and Path(e.models_dir).exists() and not Path(e.models_dir).is_dir():
        raise UserError(f"--models-dir {e.models_dir} exists and is not a folder")
    out = Path(cfg.train.output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output-dir {out} exists and is not a folder")


def train(cfg: Config) -> Path:
    """Train, evaluate and export as ``cfg`` says; return the run directory.

    The model's engine (:mod:`kerascls.engines`) trains it; everything around the training
    (data, run directory, manifest, evaluation, export) is the same for every engine.
    """
    from kerascls.distribute import setup as setup_distribution

    check_options(cfg)
    from kerascls import catalog
    from kerascls.distribute import current_backend
    from kerascls.engines import check_limits, resolve_engine

    info = catalog.info(cfg.model.model)
    engine_name = resolve_engine(info, cfg.model.bnn_impl, current_backend())
    check_limits(engine_name, cfg, info.name)  # before the devices: some are set up only once
    placement = setup_distribution(cfg)  # devices and strategy before any device runtime starts
    import keras

    from kerascls.data import load_dataset
    from kerascls.data.sources import limit_train
    from kerascls.engines import get_engine
    from kerascls.manifest import build_manifest, update_manifest, write_manifest
    from kerascls.registry import check_model_args, get_spec
    from kerascls.training.rundir import UNFINISHED, run_directory, run_status

    spec = get_spec(cfg.model.model)
    image_size = cfg.data.image_size or spec.default_size
    check_model_input(cfg, image_size)
    cfg.model.args = check_model_args(spec.name, cfg.model.args, (image_size, image_size, 3))
    backend = keras.backend.backend()
    engine = get_engine(engine_name)
    engine.check(cfg, spec)  # refuse what the engine cannot do before anything is written
    run_dir = placement.run_directory(run_directory(cfg))
    print(f"train: {spec.name} at {image_size}x{image_size} on {cfg.data.dataset}, "
          f"{backend} backend ({engine_name} engine, {placement.device_kind}); "
          f"run directory {run_dir}", flush=True)
    d = cfg.data
    splits = load_dataset(d.dataset, image_size, seed=cfg.train.seed, val_fraction=d.val_fraction,
                          test_fraction=d.test_fraction, data_dir=d.data_dir,
                          num_examples=d.num_examples, sentiment_size=d.sentiment_size,
                          noise=d.noise, imbalance=d.imbalance)
    splits = limit_train(splits, d.max_train_examples, cfg.train.seed)
    print(f"data: {len(splits.x_train)} training, {len(splits.x_val)} validation and "
          f"{len(splits.x_test)} test images of {splits.num_classes} classes", flush=True)
    cfg.data.image_size = image_size
    status = run_status(run_dir) if (run_dir / "metadata.json").is_file() \
        and not (run_dir / "backup").exists() else None
    if status in UNFINISHED:
        print(f"{run_dir}: training finished earlier; running the stages that did not "
              f"({'export' if status == 'evaluated' else 'evaluation and export'})", flush=True)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.yaml")
        keras.utils.set_random_seed(cfg.train.seed)
        t0 = time.perf_counter()
        history = engine.fit(cfg, spec, splits, run_dir, placement)
        train_seconds = time.perf_counter() - t0
        extra = engine.finish(cfg, splits, run_dir)
        write_manifest(run_dir, build_manifest(
            spec=spec, engine=engine_name, cfg=cfg, splits=splits, image_size=image_size,
            history=history, train_seconds=train_seconds, backend=backend,
            extra={"model_args": cfg.model.args, **placement.metadata(), **extra}))
        from kerascls import plots

        if history:
            plots.training_curves(history, run_dir / "training_curves.png")
    if status == "evaluated":
        from kerascls.runs import load_run

        run = load_run(run_dir)
    else:
        run = finalize_run(run_dir, splits)
    _cleanup_backup(run_dir)
    if cfg.export.formats.strip() and placement.is_chief:
        from kerascls.export import clean_stale_exports, export_run

        models_dir = cfg.export.models_dir or None
        for path in clean_stale_exports(run, models_dir):
            print(f"removed {path}, left by an export that did not finish", flush=True)
        export_run(run_dir, cfg.export.formats, models_dir=models_dir,
                   representative_size=cfg.export.representative_size,
                   ensemble_members=cfg.export.ensemble_members if run.is_bayesian else None,
                   skip_finished=status in UNFINISHED)
    if placement.is_chief:
        update_manifest(run_dir, status="complete")
    return run_dir


def finalize_run(run_dir: Path, splits):
    """Post-training steps on the saved best model: temperature scaling fitted on the validation
    split (deterministic models), then evaluation on the test split into the manifest. Returns
    the loaded run."""
    from kerascls.evaluate import calibrate_run, evaluate_run
    from kerascls.manifest import update_manifest
    from kerascls.runs import load_run

    run = load_run(run_dir)
    if not run.is_bayesian:
        calibrate_run(run, splits)
    metrics = evaluate_run(run, splits=splits)
    update_manifest(run_dir, status="evaluated",
                    metrics={k: v for k, v in metrics.items()
                             if isinstance(v, (int, float)) or v is None})
    return run


def _cleanup_backup(run_dir: Path) -> None:
    import shutil

    shutil.rmtree(run_dir / "backup", ignore_errors=True)


@cli_main
def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from kerascls.detect.train import main as detect_main, task_of

    task, argv = task_of(sys.argv[1:] if argv is None else list(argv))
    if task == "detect":  # YOLO detectors train through their own entry point
        return detect_main(argv)
    parser = make_parser("python -m kerascls.train", __doc__.splitlines()[0])
    cfg = resolve(parser.parse_args(argv))
    cfg.train.verbose = progress_verbose(cfg.train.verbose)  # no bar redraws in a pipe
    run_dir = train(cfg)
    meta = json.loads((run_dir / "metadata.json").read_text())
    m = meta.get("metrics", {})
    print(f"run: {run_dir}  test accuracy {m.get('accuracy', float('nan')):.4f}  "
          f"macro-F1 {m.get('macro_f1', float('nan')):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
