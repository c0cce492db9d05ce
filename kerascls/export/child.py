"""The TensorFlow-backend child of :func:`kerascls.export.backend.export_in_tensorflow`.

``python -m kerascls.export.child REQUEST.json`` exports the run the request names (formats and
options) with no report, and writes the artifact paths to the request's ``answer`` file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kerascls.cli import cli_main
from kerascls.errors import UserError
from kerascls.export import export_run
from kerascls.export.backend import EXPORT_BACKEND, needs_tensorflow_process


@cli_main
def main(argv: list[str] | None = None) -> int:
    from kerascls.fileio import atomic_write_json

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise UserError("usage: python -m kerascls.export.child REQUEST.json")
    req = json.loads(Path(args[0]).read_text())
    if needs_tensorflow_process():
        raise UserError(f"the export child must run on the {EXPORT_BACKEND} backend")
    artifacts = export_run(req["run_dir"], req["formats"], report=False, **req["options"])
    atomic_write_json(req["answer"], {k: [str(p) for p in v] for k, v in artifacts.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
