"""PNG plots written next to the JSON results (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (atomically) and close it."""
    from kerascls.fileio import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    pyplot().close(fig)
    return path


_plt = pyplot
_save = save_figure


def training_curves(history: dict[str, list[float]], path: str | Path) -> Path:
    """Loss and accuracy per epoch, training and validation."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            vals = history.get(prefix + key)
            if vals:
                ax.plot(range(1, len(vals) + 1), vals, style, label=(prefix or "train_") + key)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def confusion_matrix(cm, labels: list[str], path: str | Path, title: str = "Confusion matrix") -> Path:
    plt = _plt()
    cm = np.asarray(cm)
    size = max(4.0, 0.5 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    thresh = cm.max() / 2 if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > thresh else "black", fontsize=8)
    ax.set_title(title)
    return _save(fig, path)


def roc_curves(y_true, probs, labels: list[str], path: str | Path) -> Path:
    """ROC of the positive class (binary) or one-vs-rest per class."""
    from sklearn.metrics import roc_curve

    plt = _plt()
    y_true = np.asarray(y_true)
    probs = np.asarray(probs)
    fig, ax = plt.subplots(figsize=(5, 5))
    classes = [1] if len(labels) == 2 else range(len(labels))
    for i in classes:
        if (y_true == i).any() and (y_true != i).any():
            fpr, tpr, _ = roc_curve(y_true == i, probs[:, i])
            ax.plot(fpr, tpr, label=labels[i])
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC" + (" (one-vs-rest)" if len(labels) > 2 else ""))
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def image_grid(images, titles: list[str], path: str | Path, ncols: int = 8,
               title: str = "") -> Path:
    """A grid of RGB images (float 0..255 or uint8)."""
    plt = _plt()
    n = len(images)
    ncols = min(ncols, max(n, 1))
    nrows = max(1, int(np.ceil(n / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, 1.8 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, t in zip(axes.ravel(), images, titles):
        ax.imshow(np.clip(np.asarray(img), 0, 255).astype(np.uint8), interpolation="nearest")
        ax.set_title(t, fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def channel_histograms(images, path: str | Path, bins: int = 32) -> Path:
    """Per-channel pixel histograms (R, G, B)."""
    plt = _plt()
    images = np.asarray(images)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3), sharey=True)
    for c, (ax, color) in enumerate(zip(axes, ("red", "green", "blue"))):
        ax.hist(images[..., c].ravel(), bins=bins, range=(0, 255), color=color, alpha=0.8)
        ax.set_title(f"{color} channel")
        ax.set_xlabel("pixel value (0..255)")
    return _save(fig, path)


def reliability_diagram(bins, path: str | Path, title: str = "Reliability diagram") -> Path:
    """Accuracy against confidence per bin, with the gap to the diagonal and the bin counts.

    Args:
        bins: a :class:`kerascls.uncertainty.ReliabilityBins`.
    """
    plt = _plt()
    edges = np.asarray(bins.edges)
    counts = np.asarray(bins.counts)
    width = np.diff(edges)
    centers = edges[:-1] + width / 2
    filled = counts > 0
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(5, 6), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(centers[filled], np.asarray(bins.accuracy)[filled], width=width[filled],
           edgecolor="black", color="tab:blue", alpha=0.8, label="accuracy")
    ax.bar(centers[filled], (np.asarray(bins.confidence) - np.asarray(bins.accuracy))[filled],
           bottom=np.asarray(bins.accuracy)[filled], width=width[filled], color="tab:red",
           alpha=0.3, edgecolor="tab:red", hatch="//", label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    axc.bar(centers, counts, width=width, color="gray", edgecolor="black")
    axc.set_xlabel("confidence (top-class probability)")
    axc.set_ylabel("examples")
    axc.set_xlim(0, 1)
    return _save(fig, path)


def ood_histograms(scores_in: dict, scores_out: dict, aurocs: dict, path: str | Path,
                   title: str = "Out-of-distribution scores") -> Path:
    """One histogram per uncertainty score: in-distribution test images against OOD images."""
    plt = _plt()
    keys = [k for k in scores_in if k in scores_out]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        a, b = np.asarray(scores_in[key], float), np.asarray(scores_out[key], float)
        both = np.concatenate([a, b])
        both = both[np.isfinite(both)]
        # the bulk of both sets (a density score's far tail would squeeze it into one bin)
        lo = min(0.0, float(np.percentile(both, 0.5))) if len(both) else 0.0
        hi = float(np.percentile(both, 99.5)) if len(both) else 1.0
        hi = hi if hi > lo else lo + 1.0
        ax.hist(a, bins=30, range=(lo, hi), alpha=0.6, label="in-distribution", density=True)
        ax.hist(b, bins=30, range=(lo, hi), alpha=0.6, label="OOD", density=True)
        ax.set_title(f"{key}: AUROC {aurocs.get(key, float('nan')):.3f}", fontsize=9)
        ax.set_xlabel("score (higher = more uncertain)")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def accuracy_vs_macs(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Validation accuracy against multiply-accumulates, one labelled point per row.

    Rows carry ``macs``, ``val_accuracy`` and ``alpha``, ``beta``, ``gamma`` (a compound-scaling
    search, :mod:`kerascls.compound`); the first row, the unscaled baseline, is drawn apart.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, r in enumerate(rows):
        base = i == 0
        ax.scatter(r["macs"] / 1e6, r["val_accuracy"], marker="s" if base else "o",
                   color="gray" if base else "tab:blue", zorder=3)
        label = "phi=0" if base else f"{r['alpha']:g}/{r['beta']:g}/{r['gamma']:g}"
        ax.annotate(label, (r["macs"] / 1e6, r["val_accuracy"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=7)
    ax.set_xlabel("multiply-accumulates per image (millions)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title or "accuracy against MACs (alpha/beta/gamma)", fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, path)
