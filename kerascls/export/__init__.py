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


def export_run(run_dir, formats: str, *, models_dir=None, version=None,
               representative_size=None, ensemble_members=None,
               report: bool = True) -> dict[str, list[Path]]:
    """Export ``run_dir`` in every format of ``formats`` and write the export report.

    On the jax and torch backends the artifacts are written by a TensorFlow-backend child
    process (:mod:`kerascls.export.backend`); the report is built here, on this backend.
    """
    from kerascls.export.backend import export_in_tensorflow, needs_tensorflow_process
    from kerascls.runs import load_run

    run = load_run(run_dir)
    names = parse_formats(formats)
    offered = {"models_dir": models_dir, "version": version,
               "representative_size": representative_size}
    artifacts: dict[str, list[Path]] = {}
    if needs_tensorflow_process():  # jax / torch: convert model.keras on the TensorFlow backend
        artifacts = export_in_tensorflow(run.path, names, ensemble_members=ensemble_members,
                                         **offered)
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
