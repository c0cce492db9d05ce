"""Export a trained run: one ``FORMATS`` table for every artifact kind.

``FORMATS[name] = (function path, allowed options)``; each function has the signature
``fn(run, out_dir: Path, **options) -> list[Path]``. Options a format does not take are refused,
not ignored. Tflite formats go through the run's engine (:mod:`kerascls.engines`), which converts
a deterministic model with the functions named here and a Bayesian one as a posterior-sample
ensemble (:mod:`kerascls.export.montecarlo`).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from kerascls.errors import UserError, did_you_mean

FORMATS: dict[str, tuple[str, tuple[str, ...]]] = {
    "saved_model": ("kerascls.export.saved_model:export_saved_model", ("models_dir", "version")),
    "tflite-float32": ("kerascls.export.tflite:export_tflite_float32", ()),
    "tflite-dynamic": ("kerascls.export.tflite:export_tflite_dynamic", ()),
    "tflite-float16": ("kerascls.export.tflite:export_tflite_float16", ()),
    "tflite-int8": ("kerascls.export.tflite:export_tflite_int8", ("representative_size",)),
}


def parse_formats(spec: str) -> list[str]:
    """``"saved_model,tflite-int8"`` -> names, each checked against :data:`FORMATS`."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise UserError(f"--formats is empty; choose from {', '.join(FORMATS)}")
    for n in names:
        if n not in FORMATS:
            raise UserError("--formats: " + did_you_mean("format", n, FORMATS))
    return names


def resolve_function(path: str):
    """The function ``"module:function"`` names (the :data:`FORMATS` entries)."""
    return _resolve(path)


def _resolve(path: str):
    mod, _, fn = path.partition(":")
    return getattr(importlib.import_module(mod), fn)


def export_format(run, name: str, out_dir: Path, **options) -> list[Path]:
    """Export one format; refuse options the format does not take."""
    path, allowed = FORMATS[name]
    given = {k: v for k, v in options.items() if v is not None}
    members = given.pop("ensemble_members", None)
    if members is not None:
        if not run.is_bayesian:
            raise UserError("--ensemble-members applies to Bayesian runs (their TFLite files are "
                            f"posterior-sample ensembles); {run.path} is not one")
        if isinstance(members, bool) or not isinstance(members, int) or members < 2:
            raise UserError(f"--ensemble-members must be an integer of at least 2. "
                            f"Received: {members!r}")
    bad = sorted(set(given) - set(allowed))
    if bad:
        raise UserError(f"format {name} does not take option(s) {', '.join(bad)}; "
                        f"it takes: {', '.join(allowed) or 'none'}")
    if name.startswith("tflite"):
        if members is not None:
            given["members"] = members
        return run.engine.export_tflite(run, out_dir, name, **given)
    return _resolve(path)(run, out_dir, **given)


def models_base(run, models_dir=None) -> Path:
    """The folder holding the run's SavedModel versions: ``MODELS_DIR/<model_name>``."""
    base = Path(models_dir).expanduser() if models_dir else run.path / "models"
    return base / str(run.metadata["model_name"])


def finished_artifact(run, name: str, models_dir=None) -> list[Path] | None:
    """The paths of format ``name`` when the run already has it complete, else None.

    A SavedModel is complete when a numbered version folder holds ``saved_model.pb`` (versions
    are published by a rename, so a partial one never has a number); a TFLite file when it and
    its sidecar exist (both are written by a rename too).
    """
    if name == "saved_model":
        base = models_base(run, models_dir)
        versions = sorted((int(p.name) for p in base.glob("*")
                           if p.name.isdigit() and (p / "saved_model.pb").is_file()),
                          reverse=True) if base.is_dir() else []
        return [base / str(versions[0])] if versions else None
    from kerascls.export.tflite import sidecar_path, tflite_path

    path = tflite_path(run, run.path / "tflite", name.removeprefix("tflite-"))
    return [path, sidecar_path(path)] if path.is_file() and sidecar_path(path).is_file() else None


def clean_stale_exports(run, models_dir=None) -> list[Path]:
    """Remove what an export killed half-way leaves: hidden ``.export-*`` staging folders in the
    model base path and hidden temporary files in ``RUN_DIR/tflite``. Returns what was removed."""
    import shutil

    removed = []
    base = models_base(run, models_dir)
    stale = list(base.glob(".export-*")) if base.is_dir() else []
    tflite_dir = run.path / "tflite"
    stale += [p for p in tflite_dir.glob(".*") if p.is_file()] if tflite_dir.is_dir() else []
    stale += [p for p in run.path.glob(".export_report*") if p.is_file()]
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def export_run(run_dir, formats: str, *, models_dir=None, version=None,
               representative_size=None, ensemble_members=None,
               report: bool = True, skip_finished: bool = False) -> dict[str, list[Path]]:
    """Export ``run_dir`` in every format of ``formats`` and write the export report.

    On the jax and torch backends the artifacts are written by a TensorFlow-backend child
    process (:mod:`kerascls.export.backend`); the report is built here, on this backend.
    With ``skip_finished`` (a resumed run), formats the run already has complete are not
    written again, and the report covers them all.
    """
    from kerascls.export.backend import export_in_tensorflow, needs_tensorflow_process
    from kerascls.runs import load_run

    run = load_run(run_dir)
    names = parse_formats(formats)
    offered = {"models_dir": models_dir, "version": version,
               "representative_size": representative_size}
    artifacts: dict[str, list[Path]] = {}
    if skip_finished:
        for name in names:
            done = finished_artifact(run, name, models_dir)
            if done is not None:
                artifacts[name] = done
                print(f"{name}: kept {done[0]}")
        names = [n for n in names if n not in artifacts]
    if not names:
        pass
    elif needs_tensorflow_process():  # jax / torch: convert model.keras on the TensorFlow backend
        artifacts.update(export_in_tensorflow(run.path, names,
                                              ensemble_members=ensemble_members, **offered))
    else:
        for name in names:
            allowed = FORMATS[name][1]
            opts = {k: v for k, v in offered.items() if k in allowed}
            out_dir = run.path / "tflite" if name.startswith("tflite") else run.path
            artifacts[name] = export_format(run, name, out_dir,
                                            ensemble_members=ensemble_members, **opts)
            for p in artifacts[name]:
                print(f"{name}: {p}")
    if report:
        from kerascls.export.report import build_report

        build_report(run, artifacts)
    return artifacts
