"""Exporting a run trained on the jax or torch Keras backend.

The SavedModel and TFLite converters trace the model into a TensorFlow graph, which only the
TensorFlow backend can do. ``model.keras`` is backend-neutral, so a run trained on another
backend is exported by a child process on the TensorFlow backend that loads it and writes the
artifacts (:func:`export_in_tensorflow`). The export report is then built in the calling process,
so every artifact is compared with the model as the training backend computes it.

The child is ``python -m kerascls.export.child REQUEST.json``: the request names the run, the
formats and their options, and the file to which the child writes the artifact paths.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from kerascls.errors import UserError

EXPORT_BACKEND = "tensorflow"
DEBUG_HINT = "(set KERASCLS_DEBUG=1 for the traceback)"


def needs_tensorflow_process() -> bool:
    """True when this process runs Keras on a backend that cannot trace TensorFlow graphs."""
    import keras

    return keras.backend.backend() != EXPORT_BACKEND


def export_in_tensorflow(run_dir: Path, names: list[str], **options) -> dict[str, list[Path]]:
    """Export ``names`` of ``run_dir`` in a TensorFlow-backend child process; no report.

    Args:
        run_dir: the run directory.
        names: checked format names (see :func:`kerascls.export.parse_formats`).
        **options: what :func:`kerascls.export.export_run` takes besides the formats.

    Returns:
        ``{format: [paths]}`` as the exporters returned them.

    Raises:
        UserError: what the child refused, as its one line said it.
        RuntimeError: the child failed otherwise (its last error line).
    """
    with tempfile.TemporaryDirectory(prefix="kerascls-export-") as tmp:
        request = Path(tmp) / "request.json"
        answer = Path(tmp) / "artifacts.json"
        request.write_text(json.dumps({
            "run_dir": str(Path(run_dir).resolve()), "formats": ",".join(names),
            "options": {k: (str(Path(v).resolve()) if k == "models_dir" and v else v)
                        for k, v in options.items()},
            "answer": str(answer)}))
        env = dict(os.environ, KERAS_BACKEND=EXPORT_BACKEND)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        print(f"exporting on the {EXPORT_BACKEND} backend (model.keras is backend-neutral) ...",
              flush=True)
        proc = subprocess.run([sys.executable, "-m", "kerascls.export.child", str(request)],
                              stdout=None, stderr=subprocess.PIPE, text=True, env=env,
                              check=False)
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
        if proc.returncode == 2 and errors:
            raise UserError(errors[-1][len("error: "):])
        if proc.returncode != 0 or not answer.is_file():
            tail = (errors or proc.stderr.strip().splitlines() or ["no output"])[-1]
            tail = tail.removeprefix("error: ").removesuffix(DEBUG_HINT).strip()
            raise RuntimeError(f"export on the {EXPORT_BACKEND} backend failed "
                               f"(exit {proc.returncode}): {tail}")
        found = json.loads(answer.read_text())
    return {name: [Path(p) for p in paths] for name, paths in found.items()}
