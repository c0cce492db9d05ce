"""Classification metrics shared by evaluate, compare and the export report (pure numpy/sklearn)."""

from __future__ import annotations

import numpy as np


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, per-class and macro precision/recall/F1, ROC-AUC and the confusion matrix.

    ROC-AUC is the binary AUC of the positive class for two classes and the one-vs-rest macro
    average otherwise; classes absent from ``y_true`` are left out of the average.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n = len(labels)
    y_pred = probs.argmax(axis=1)
    p, r, f, s = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(n)), zero_division=0)
    per_class = {
        labels[i]: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                    "support": int(s[i])}
        for i in range(n)
    }
    present = [i for i in range(n) if s[i] > 0]
    roc_auc = None
    if len(present) >= 2:
        if n == 2:
            roc_auc = float(roc_auc_score(y_true, probs[:, 1]))
        else:
            aucs = [roc_auc_score(y_true == i, probs[:, i]) for i in present]
            roc_auc = float(np.mean(aucs))
    return {
        "num_examples": int(len(y_true)),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else 0.0,
        "macro_precision": float(np.mean(p[present])) if present else 0.0,
        "macro_recall": float(np.mean(r[present])) if present else 0.0,
        "macro_f1": float(np.mean(f[present])) if present else 0.0,
        "roc_auc": roc_auc,
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=list(range(n))).tolist(),
    }


def recall_drops(reference: dict, candidate: dict, threshold: float = 0.05) -> list[str]:
    """Classes whose recall in ``candidate`` is more than ``threshold`` below ``reference``."""
    out = []
    for cls, ref in reference["per_class"].items():
        cand = candidate["per_class"].get(cls)
        if cand is not None and ref["recall"] - cand["recall"] > threshold:
            out.append(cls)
    return out


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T): the numpy twin of :class:`kerascls.layers.Temperature`."""
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)) / float(temperature)
    logp -= logp.max(axis=1, keepdims=True)
    e = np.exp(logp)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
