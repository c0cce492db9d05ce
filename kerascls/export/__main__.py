"""``python -m kerascls.export RUN_DIR --formats saved_model,tflite-float32,...``."""

from __future__ import annotations

import sys

from kerascls.cli import cli_main
from kerascls.errors import UserError
from kerascls.export import FORMATS, export_run


def build_parser():
    from kerascls.cli import Parser

    p = Parser(prog="python -m kerascls.export",
                description="Export a trained run as TF Serving SavedModel and TFLite models.")
    p.add_argument("run_dir", help="run directory written by python -m kerascls.train")
    p.add_argument("--formats", default="saved_model,tflite-float32,tflite-int8",
                   help=f"comma-separated, from: {', '.join(FORMATS)}")
    p.add_argument("--models-dir", help="SavedModel base directory (default RUN_DIR/models)")
    p.add_argument("--version", type=int, help="SavedModel version (default: next integer)")
    p.add_argument("--representative-size", type=int,
                   help="int8: number of class-stratified representative images (default 300)")
    p.add_argument("--ensemble-members", type=int,
                   help="Bayesian runs: posterior samples in the TFLite ensemble (default 10)")
    p.add_argument("--no-report", action="store_true", help="skip export_report.json/.md")
    return p


@cli_main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.version is not None and args.version <= 0:
        raise UserError(f"--version must be a positive integer. Received: {args.version}")
    export_run(args.run_dir, args.formats, models_dir=args.models_dir, version=args.version,
               representative_size=args.representative_size,
               ensemble_members=args.ensemble_members, report=not args.no_report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
