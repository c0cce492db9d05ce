"""EfficientNet's compound scaling, explored: scaled networks, their cost, and the grid search.

Tan & Le (2019, section 3.3) scale depth by alpha^phi, width by beta^phi and resolution by
gamma^phi under ``alpha * beta^2 * gamma^2 ~ 2``: a network's multiply-accumulates grow with
depth, with the square of width and with the square of resolution, so each step of phi about
doubles them. They fix phi = 1 and grid-search alpha, beta and gamma under that constraint on
the baseline, then keep them fixed to scale up.

* :func:`scale_table` builds the networks for several phi and reports parameters, MACs and the
  MAC ratio to phi = 0 (``python -m kerascls.models scale efficientnet --phi 0..3``).
* :func:`grid_search` trains the phi = 1 network of each (alpha, beta, gamma) on the grid for
  the same short budget and writes ``compound_search.json``, ``compound_search.md`` and
  ``compound_search.png`` (accuracy against MACs) (``... scale efficientnet --search``).

Resolutions are rounded to a multiple of 8 pixels from a base of 128 px or more (the released
B0-B7 sizes), to an even number of pixels below. In the search the images stay at the base size
and the network's own ``Resizing`` layer (the ``resolution`` builder argument) brings them to the
scaled resolution, so every candidate sees the same data.
"""

from __future__ import annotations

import gc
import itertools
import math
import time
from pathlib import Path

from kerascls.errors import UserError

BASE_MODEL = {"efficientnet": "efficientnet_b0"}
ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15
TARGET = 2.0
# The search grid: alpha and beta are gridded, gamma is solved from alpha * beta^2 * gamma^2 = 2.
ALPHA_GRID = (1.0, 1.2, 1.4, 2.0)
BETA_GRID = (1.0, 1.1, 1.2)


def parse_phis(text: str) -> list[float]:
    """``"0..3"`` -> [0, 1, 2, 3]; ``"0,0.5,1"`` -> [0, 0.5, 1]."""
    try:
        if ".." in text:
            lo, hi = (int(v) for v in text.split(".."))
            phis = [float(p) for p in range(lo, hi + 1)]
        else:
            phis = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--phi takes a range like 0..3 or a list like 0,1,2. "
                        f"Received: --phi {text}") from None
    if not phis or any(p < 0 for p in phis):
        raise UserError(f"--phi must name non-negative values. Received: --phi {text}")
    return phis


def check_bases(alpha: float, beta: float, gamma: float) -> None:
    for flag, value in (("--alpha", alpha), ("--beta", beta), ("--gamma", gamma)):
        if not value >= 1.0:
            raise UserError(f"{flag} must be at least 1 (a scaling base). Received: {value}")


def round_resolution(size: float, base: int) -> int:
    """The scaled input size: a multiple of 8 from a 128-px base up, an even size below."""
    step = 8 if base >= 128 else 2
    return max(step, round(size / step) * step)


def coefficients(phi: float, alpha: float = ALPHA, beta: float = BETA, gamma: float = GAMMA,
                 base: int = 224) -> tuple[float, float, int]:
    """(width, depth, resolution): beta^phi, alpha^phi and base * gamma^phi rounded."""
    return (round(beta ** phi, 6), round(alpha ** phi, 6),
            round_resolution(base * gamma ** phi, base))


def _build(family: str, width: float, depth: float, size: int, resolution: int, classes: int,
           base_width: float = 1.0, base_depth: float = 1.0, **kwargs):
    from kerascls.registry import build_model

    return build_model(BASE_MODEL[family], (size, size, 3), classes,
                       width_coefficient=round(width * base_width, 6),
                       depth_coefficient=round(depth * base_depth, 6),
                       resolution=resolution, **kwargs)


def _free() -> None:
    import keras

    keras.backend.clear_session()
    gc.collect()


def scale_table(family: str, phis, *, alpha: float = ALPHA, beta: float = BETA,
                gamma: float = GAMMA, base: int = 224, num_classes: int = 1000) -> list[dict]:
    """Parameters and MACs of the compound-scaled networks, one row per phi.

    ``mac_ratio`` is each network's MACs over the first phi's; with ``alpha * beta^2 * gamma^2``
    near 2 it is near ``2^(phi - phi_0)`` (rounding of channels, repeats and pixels aside).
    """
    from kerascls.shapes import count_macs

    if family not in BASE_MODEL:
        from kerascls.errors import did_you_mean

        raise UserError(did_you_mean("scaling family", family, BASE_MODEL,
                                     "python -m kerascls.models scale --help"))
    check_bases(alpha, beta, gamma)
    rows: list[dict] = []
    for phi in phis:
        width, depth, resolution = coefficients(phi, alpha, beta, gamma, base)
        model = _build(family, width, depth, resolution, resolution, num_classes)
        macs = count_macs(model)
        rows.append({"phi": phi, "depth": depth, "width": width, "resolution": resolution,
                     "params": model.count_params(), "macs": macs,
                     "mac_ratio": round(macs / rows[0]["macs"], 3) if rows else 1.0,
                     "formula_ratio": round((alpha * beta ** 2 * gamma ** 2) ** (phi - phis[0]),
                                            3)})
        del model
        _free()
    return rows


def format_scale_table(rows, alpha, beta, gamma) -> str:
    product = alpha * beta ** 2 * gamma ** 2
    lines = [f"compound scaling with alpha={alpha} (depth), beta={beta} (width), "
             f"gamma={gamma} (resolution): alpha*beta^2*gamma^2 = {product:.3f}",
             f"{'phi':>5} {'depth':>7} {'width':>7} {'input':>7} {'params':>12} {'MACs':>15} "
             f"{'ratio':>7} {'formula':>8}"]
    for r in rows:
        lines.append(f"{r['phi']:>5g} {r['depth']:>7.3f} {r['width']:>7.3f} "
                     f"{r['resolution']:>7d} {r['params']:>12,} {r['macs']:>15,} "
                     f"{r['mac_ratio']:>7.2f} {r['formula_ratio']:>8.2f}")
    return "\n".join(lines)


def search_grid(target: float = TARGET, tolerance: float = 0.1) -> list[tuple[float, float, float]]:
    """(alpha, beta, gamma) candidates: alpha and beta from the grids, gamma solving the target.

    Candidates whose gamma would fall below 1 (the budget used up by depth and width alone) are
    left out, as are those whose gamma exceeds 1 + ``tolerance`` beyond the largest
    resolution-only candidate.
    """
    out = []
    for alpha, beta in itertools.product(ALPHA_GRID, BETA_GRID):
        rest = target / (alpha * beta ** 2)
        if rest < 1.0 - 1e-9:
            continue
        gamma = round(math.sqrt(rest), 3)
        out.append((alpha, beta, gamma))
    if not out:  # pragma: no cover - the grids always hold (1, 1, sqrt(2))
        raise UserError("no candidate meets the constraint")
    # The paper's neighbourhood and the single-dimension extremes first, so that a search cut
    # short still spans the space.
    first = [(1.2, 1.1), (1.0, 1.0), (2.0, 1.0), (1.0, 1.2)]
    return sorted(out, key=lambda c: (first.index(c[:2]) if c[:2] in first else len(first),
                                      c))


def grid_search(family: str, *, dataset: str = "digits", base: int = 32, epochs: int = 3,
                batch_size: int = 64, learning_rate: float = 0.002, seed: int = 42,
                base_width: float = 1.0, base_depth: float = 1.0, candidates=None,
                bn_momentum: float = 0.9,
                out_dir: str | Path = "compound_search", log=print) -> dict:
    """Train the phi = 1 network of every candidate for the same budget; write table and plot.

    Args:
        family: a key of :data:`BASE_MODEL`.
        dataset: a :func:`kerascls.data.load_dataset` source.
        base: the phi = 0 resolution (the images are loaded at this size).
        epochs: the fixed training budget of every candidate.
        base_width: width coefficient of the phi = 0 network (below 1 for a smaller search).
        base_depth: depth coefficient of the phi = 0 network.
        candidates: ``(alpha, beta, gamma)`` triples; default :func:`search_grid`.
        bn_momentum: batch-norm momentum (0.9, as training's default: the architecture's 0.99
            leaves the moving statistics at their initial values after a few hundred steps).
        out_dir: folder for ``compound_search.json|md|png``.

    Returns:
        ``{"rows": [...], "best": row, ...}`` as written to the JSON file.
    """
    import keras

    from kerascls.data import load_dataset
    from kerascls.data.pipeline import make_dataset
    from kerascls.shapes import count_macs

    if family not in BASE_MODEL:
        raise UserError(f"--search supports {', '.join(BASE_MODEL)}. Received: {family}")
    if epochs < 1 or base < 8:
        raise UserError(f"--epochs must be at least 1 and --image-size at least 8. "
                        f"Received: --epochs {epochs} --image-size {base}")
    candidates = list(candidates or search_grid())
    splits = load_dataset(dataset, base, seed=seed)
    nc = splits.num_classes
    train_ds = make_dataset(splits.x_train, splits.y_train, nc, batch_size, training=True,
                            seed=seed)
    val_ds = make_dataset(splits.x_val, splits.y_val, nc, batch_size)
    test_ds = make_dataset(splits.x_test, splits.y_test, nc, batch_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    grid = [(1.0, 1.0, 1.0), *candidates]
    result: dict = {}
    for alpha, beta, gamma in grid:
        phi = 0.0 if (alpha, beta, gamma) == (1.0, 1.0, 1.0) else 1.0
        width, depth, resolution = coefficients(phi, alpha, beta, gamma, base)
        keras.utils.set_random_seed(seed)
        model = _build(family, width, depth, base, resolution, nc, base_width=base_width,
                       base_depth=base_depth, normalize="unit")
        for layer in model.layers:  # as training's --bn-momentum 0.9: a short budget's steps
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = bn_momentum
        model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                      loss="categorical_crossentropy", metrics=["accuracy"])
        start = time.perf_counter()
        history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, verbose=0)
        seconds = time.perf_counter() - start
        test = model.evaluate(test_ds, verbose=0, return_dict=True)
        row = {"phi": phi, "alpha": alpha, "beta": beta, "gamma": gamma,
               "product": round(alpha * beta ** 2 * gamma ** 2, 3),
               "depth": round(depth * base_depth, 6), "width": round(width * base_width, 6),
               "resolution": resolution, "params": model.count_params(),
               "macs": count_macs(model),
               "val_accuracy": round(float(history.history["val_accuracy"][-1]), 4),
               "test_accuracy": round(float(test["accuracy"]), 4),
               "train_seconds": round(seconds, 1)}
        rows.append(row)
        log(f"alpha={alpha} beta={beta} gamma={gamma}: {row['resolution']} px, "
            f"{row['macs'] / 1e6:.1f} M MACs, val {row['val_accuracy']:.3f}, "
            f"test {row['test_accuracy']:.3f} ({seconds:.0f} s)")
        del model
        _free()
        result = _write_search(rows, len(grid), out_dir, family=family, dataset=dataset,
                               base=base, base_width=base_width, base_depth=base_depth,
                               epochs=epochs, batch_size=batch_size,
                               learning_rate=learning_rate, bn_momentum=bn_momentum, seed=seed,
                               num_train_examples=int(len(splits.x_train)))
    return result


def _write_search(rows, total, out_dir, *, family, dataset, base, base_width, base_depth,
                  epochs, batch_size, learning_rate, bn_momentum, seed,
                  num_train_examples) -> dict:
    """Write the JSON, Markdown and PNG of the rows so far (after every candidate)."""
    from kerascls.fileio import atomic_write_json, atomic_write_text

    searched = [r for r in rows if r["phi"] == 1.0] or rows
    best = max(searched, key=lambda r: (r["val_accuracy"], -r["macs"]))
    result = {"family": family, "model": BASE_MODEL[family], "dataset": dataset,
              "base_resolution": base, "base_width": base_width, "base_depth": base_depth,
              "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
              "bn_momentum": bn_momentum,
              "seed": seed, "num_train_examples": num_train_examples,
              "candidates": total, "finished": len(rows),
              "target": TARGET, "rows": rows, "best": best,
              "selection": "highest validation accuracy among the phi = 1 candidates"}
    atomic_write_json(out_dir / "compound_search.json", result)
    atomic_write_text(out_dir / "compound_search.md", search_markdown(result))
    from kerascls.plots import accuracy_vs_macs

    accuracy_vs_macs(rows, out_dir / "compound_search.png",
                     title=f"{BASE_MODEL[family]} phi=1 candidates on {dataset} "
                           f"({epochs} epochs, base {base} px)")
    return result


def search_markdown(result: dict) -> str:
    """The search table as Markdown, best candidate first line after the header."""
    lines = [f"Compound-scaling grid search: {result['model']} (base width "
             f"{result['base_width']}, depth {result['base_depth']}, {result['base_resolution']} "
             f"px) on {result['dataset']}, {result['epochs']} epochs each "
             f"({result['num_train_examples']} training images), alpha*beta^2*gamma^2 = "
             f"{result['target']:g}. Selected by {result['selection']}.",
             *(["", f"**Partial: {result['finished']} of {result['candidates']} runs "
                f"finished.**"] if result.get("finished", 0) < result.get("candidates", 0)
               else []),
             "",
             "| phi | alpha | beta | gamma | product | input | params | MACs | val acc | "
             "test acc | train s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        mark = " **(best)**" if r is result["best"] or r == result["best"] else ""
        lines.append(f"| {r['phi']:g} | {r['alpha']} | {r['beta']} | {r['gamma']} | "
                     f"{r['product']} | {r['resolution']} | {r['params']:,} | "
                     f"{r['macs'] / 1e6:.1f} M | {r['val_accuracy']:.3f}{mark} | "
                     f"{r['test_accuracy']:.3f} | {r['train_seconds']} |")
    return "\n".join(lines) + "\n"


def main_scale(args) -> int:
    """``python -m kerascls.models scale``: the table, or with ``--search`` the grid search."""
    if args.search:
        result = grid_search(args.family, dataset=args.dataset, base=args.image_size or 32,
                             epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                             base_width=args.base_width, base_depth=args.base_depth,
                             out_dir=args.output)
        best = result["best"]
        print(search_markdown(result))
        print(f"best: alpha={best['alpha']} beta={best['beta']} gamma={best['gamma']}; "
              f"wrote {Path(args.output) / 'compound_search.json'}, .md and .png")
        return 0
    phis = parse_phis(args.phi)
    rows = scale_table(args.family, phis, alpha=args.alpha, beta=args.beta, gamma=args.gamma,
                       base=args.image_size or 224, num_classes=args.num_classes)
    print(format_scale_table(rows, args.alpha, args.beta, args.gamma))
    return 0
