"""``python -m kerascls.eda --dataset ...``: the lab's exploration step.

Reports the per-channel mean and variance (0..1 scale), the label distribution and each channel's
correlation with the label, and writes ``eda.json``, a sample-grid PNG and per-channel histogram
PNGs into ``--out``.

For two classes the correlation is Pearson's r between the image's mean channel value and the
label (point-biserial, as in the lab); for more classes it is the correlation ratio eta, which
measures how much of the channel's variance the class explains.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from kerascls.cli import cli_main
from kerascls.errors import UserError
from kerascls.fileio import atomic_write_json

CHANNELS = ("red", "green", "blue")


def explore(x: np.ndarray, y: np.ndarray, class_names: list[str]) -> dict:
    """Channel statistics, label balance and channel-label correlations of images ``x`` (0..255)."""
    x01 = np.asarray(x, dtype=np.float64) / 255.0
    y = np.asarray(y, dtype=np.int64)
    counts = np.bincount(y, minlength=len(class_names))
    per_image = x01.mean(axis=(1, 2))  # (N, 3)
    stats = {}
    for c, name in enumerate(CHANNELS):
        v = per_image[:, c]
        if len(class_names) == 2:
            corr = float(np.corrcoef(v, y)[0, 1]) if v.std() > 0 and y.std() > 0 else 0.0
            kind = "pearson"
        else:
            groups = [v[y == k] for k in range(len(class_names)) if (y == k).any()]
            between = sum(len(g) * (g.mean() - v.mean()) ** 2 for g in groups)
            total = ((v - v.mean()) ** 2).sum()
            corr = float(np.sqrt(between / total)) if total > 0 else 0.0
            kind = "correlation_ratio"
        stats[name] = {"mean": float(x01[..., c].mean()), "variance": float(x01[..., c].var()),
                       "label_correlation": corr, "correlation_kind": kind}
    return {
        "num_images": int(len(x)),
        "image_shape": list(x.shape[1:]),
        "channels": stats,
        "label_distribution": {class_names[i]: int(n) for i, n in enumerate(counts)},
        "imbalance_ratio": float(counts.max() / max(1, counts[counts > 0].min())),
    }


def write_report(x, y, class_names, out: Path, samples: int = 32, seed: int = 0) -> dict:
    from kerascls import plots

    report = explore(x, y, class_names)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(x), size=min(samples, len(x)), replace=False)
    plots.image_grid(x[idx], [class_names[int(y[i])] for i in idx], out / "sample_grid.png")
    plots.channel_histograms(x, out / "channel_histograms.png")
    report["plots"] = ["sample_grid.png", "channel_histograms.png"]
    atomic_write_json(out / "eda.json", report)
    return report


@cli_main
def main(argv=None) -> int:
    from kerascls.cli import Parser
    from kerascls.data import load_dataset

    p = Parser(prog="python -m kerascls.eda", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits", help="sentiment | digits | folder:PATH | tfds:NAME")
    p.add_argument("--image-size", type=int, default=0, help="resize to this size (0 = native)")
    p.add_argument("--data-dir", default="", help="TFDS data directory")
    p.add_argument("--split", default="train", choices=("train", "val", "test"),
                   help="which split to describe (default: train)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default="eda", help="output directory")
    args = p.parse_args(argv)
    if args.image_size < 0:
        raise UserError(f"--image-size must be >= 0. Received: {args.image_size}")
    splits = load_dataset(args.dataset, args.image_size, seed=args.seed, data_dir=args.data_dir)
    x, y = splits.split(args.split)
    r = write_report(x, y, splits.class_names, Path(args.out), seed=args.seed)
    print(f"{args.dataset} ({args.split}): {r['num_images']} images of {r['image_shape']}")
    for name, s in r["channels"].items():
        print(f"  {name:5s} mean {s['mean']:.3f}  variance {s['variance']:.4f}  "
              f"label corr ({s['correlation_kind']}) {s['label_correlation']:+.3f}")
    print("  labels: " + ", ".join(f"{k}={v}" for k, v in r["label_distribution"].items()))
    print(f"wrote {Path(args.out) / 'eda.json'}, sample_grid.png, channel_histograms.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
