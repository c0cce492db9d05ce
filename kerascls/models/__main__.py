"""``python -m kerascls.models``: list the registered models, show one, count parameters and MACs.

Examples:
    python -m kerascls.models list
    python -m kerascls.models list 'resnet*'
    python -m kerascls.models summary resnet50 --image-size 224 --num-classes 1000
    python -m kerascls.models params --image-size 224 --num-classes 1000
    python -m kerascls.models flops 'mobilenet*' --image-size 224
    python -m kerascls.models summary resnet20 --model-arg depth=32 --model-arg widths=8,16,32
    python -m kerascls.models scale efficientnet --phi 0..3 --alpha 1.2 --beta 1.1 --gamma 1.15
    python -m kerascls.models scale efficientnet --search --dataset digits --epochs 3

``summary --model-arg KEY=VALUE`` (repeatable) sets a builder argument, checked against the
builder's signature (the same check as ``python -m kerascls.train --model-arg``). ``scale``
builds compound-scaled networks and prints parameters, MACs and the MAC ratio to the first phi;
``--search`` runs the grid search of alpha, beta and gamma (see :mod:`kerascls.compound`).

``params`` and ``flops`` take shell-style patterns (default: every model) and build each model at
``--image-size`` (default: the model's own default size). ``flops`` reports multiply-accumulates
per image (convolutions and dense layers; see :func:`kerascls.shapes.layer_macs`).
"""

from __future__ import annotations

import argparse
import gc
import sys

from kerascls.cli import Parser, cli_main
from kerascls.errors import UserError

COMMANDS = ("list", "summary", "params", "flops", "scale")


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m kerascls.models", description="Inspect the registered models.")
    sub = p.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")

    def sized(sp):
        sp.add_argument("--image-size", type=int, default=0, metavar="PX",
                        help="square input size in pixels (default: each model's default size)")
        sp.add_argument("--num-classes", type=int, default=10, metavar="N",
                        help="classes (default: 10)")
        sp.add_argument("--stem", default="auto", choices=("auto", "cifar", "imagenet"),
                        help="zoo families: the stem (default: chosen from the input size)")

    sp = sub.add_parser("list", help="registered models with family, sizes and paper")
    sp.add_argument("patterns", nargs="*", default=["*"], metavar="PATTERN",
                    help="shell-style name patterns (default: every model)")
    sp = sub.add_parser("summary", help="layers, output shapes and parameters of one model")
    sp.add_argument("name", metavar="MODEL", help="a registered model name")
    sized(sp)
    sp.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="builder argument, repeatable (e.g. depth=32, widths=8,16,32)")
    for command, text in (("params", "parameter counts"),
                          ("flops", "multiply-accumulates per image")):
        sp = sub.add_parser(command, help=text)
        sp.add_argument("patterns", nargs="*", default=["*"], metavar="PATTERN",
                        help="shell-style name patterns (default: every model)")
        sized(sp)
    _scale_parser(sub)
    return p


def _scale_parser(sub) -> None:
    from kerascls.compound import ALPHA, BETA, GAMMA

    sp = sub.add_parser("scale", help="compound scaling: scaled networks' cost, or a grid search")
    sp.add_argument("family", choices=("efficientnet",), help="the family to scale")
    sp.add_argument("--phi", default="0..3", metavar="PHIS",
                    help="compound coefficients: a range 0..3 or a list 0,1,2 (default: 0..3)")
    for flag, value, what in (("--alpha", ALPHA, "depth"), ("--beta", BETA, "width"),
                              ("--gamma", GAMMA, "resolution")):
        sp.add_argument(flag, type=float, default=value, metavar="X",
                        help=f"{what} base (default: {value})")
    sp.add_argument("--image-size", type=int, default=0, metavar="PX",
                    help="phi=0 resolution (default: 224; 32 with --search)")
    sp.add_argument("--num-classes", type=int, default=1000, metavar="N",
                    help="classes of the table's networks (default: 1000)")
    sp.add_argument("--search", action="store_true",
                    help="grid-search alpha, beta, gamma under alpha*beta^2*gamma^2 = 2 at phi=1")
    sp.add_argument("--dataset", default="digits", help="--search: dataset (default: digits)")
    sp.add_argument("--epochs", type=int, default=3, metavar="N",
                    help="--search: training epochs of every candidate (default: 3)")
    sp.add_argument("--batch-size", type=int, default=64, metavar="N",
                    help="--search: batch size (default: 64)")
    sp.add_argument("--seed", type=int, default=42, metavar="N", help="--search: seed")
    sp.add_argument("--base-width", type=float, default=1.0, metavar="X",
                    help="--search: width coefficient of the phi=0 network (default: 1.0)")
    sp.add_argument("--base-depth", type=float, default=1.0, metavar="X",
                    help="--search: depth coefficient of the phi=0 network (default: 1.0)")
    sp.add_argument("--output", default="compound_search", metavar="DIR",
                    help="--search: folder for the JSON, Markdown and PNG results")


def _parse(argv):
    args = _parser().parse_args(argv)
    if args.command is None:
        raise UserError(f"a command is required: one of {', '.join(COMMANDS)}")
    return args


def _names(patterns) -> list[str]:
    from kerascls.registry import list_models

    names: list[str] = []
    for pattern in patterns:
        found = list_models(pattern)
        if not found:
            if any(c in pattern for c in "*?["):
                raise UserError(f"no model matches '{pattern}'")
            from kerascls.registry import get_spec

            get_spec(pattern)  # raises the did-you-mean error
        names.extend(n for n in found if n not in names)
    return names


def _build(name: str, args):
    from kerascls.registry import build_model, get_spec

    spec = get_spec(name)
    if args.image_size < 0 or args.num_classes < 1:
        raise UserError(f"--image-size must be positive and --num-classes at least 1. "
                        f"Received: --image-size={args.image_size} "
                        f"--num-classes={args.num_classes}")
    size = args.image_size or spec.default_size
    overrides = {}
    if args.stem != "auto":
        if spec.family in ("classic", "bayesian") or spec.engines != ("keras",):
            raise UserError(f"--stem applies to the zoo families; '{name}' "
                            f"({spec.family}) has no stem option")
        overrides["stem"] = args.stem
    if getattr(args, "model_arg", None):
        from kerascls.registry import check_model_args, model_arg_overrides, parse_model_arg_pairs

        args.resolved_args = check_model_args(name, parse_model_arg_pairs(args.model_arg))
        overrides.update(model_arg_overrides(args.resolved_args))
    return spec, size, build_model(name, (size, size, 3), args.num_classes, **overrides)


def _free() -> None:
    import keras

    keras.backend.clear_session()
    gc.collect()


def _table(rows, header) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 or not isinstance(c, int) else str(c).rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _progress(names):
    from tqdm import tqdm

    return tqdm(names, file=sys.stderr, leave=False, disable=len(names) < 2, unit="model")


def _trainable(model) -> int:
    import math

    return sum(int(math.prod(w.shape)) for w in model.trainable_weights)


@cli_main
def main(argv=None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    if args.command == "scale":
        from kerascls.compound import main_scale

        return main_scale(args)
    if args.command == "list":
        # From the catalog: names, sizes and papers need no Keras (see kerascls.catalog).
        from kerascls import catalog

        rows = []
        for pattern in args.patterns:
            found = catalog.models(pattern)
            if not found:
                if any(c in pattern for c in "*?["):
                    raise UserError(f"no model matches '{pattern}'")
                catalog.info(pattern)  # raises the did-you-mean error
            rows.extend((i.name, i.family, i.default_size, i.min_size, i.paper) for i in found
                        if i.name not in {r[0] for r in rows})
        print(_table(rows, ("model", "family", "default", "min", "paper")))
        return 0
    from kerascls.shapes import count_macs

    if args.command == "summary":
        spec, size, model = _build(args.name, args)
        model.summary(line_length=110)
        macs = count_macs(model)
        print(f"{spec.name}: input {size}x{size}x3, {args.num_classes} classes, "
              f"{model.count_params():,} parameters ({_trainable(model):,} trainable), "
              f"{macs:,} multiply-accumulates per image ({macs / 1e9:.3f} G)")
        if getattr(args, "resolved_args", None):
            print(f"model arguments: {args.resolved_args}")
        return 0
    rows = []
    for name in _progress(_names(args.patterns)):
        spec, size, model = _build(name, args)
        if args.command == "params":
            rows.append((name, f"{size}x{size}", model.count_params(), _trainable(model)))
        else:
            macs = count_macs(model)
            rows.append((name, f"{size}x{size}", macs, f"{macs / 1e9:.3f}"))
        del model
        _free()
    header = (("model", "input", "parameters", "trainable") if args.command == "params"
              else ("model", "input", "MACs", "GMACs"))
    print(_table(rows, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
