"""Calibration and uncertainty: proper scores, ECE, Monte Carlo summaries, temperature, OOD AUROC
and AUPR.

Pure numpy (and :mod:`scipy.optimize` for the one-dimensional temperature fit). Probabilities are
``(N, C)`` arrays of class probabilities; Monte Carlo predictions are ``(S, N, C)`` arrays of ``S``
stochastic forward passes (a Bayesian network's posterior samples, or MC-dropout). Entropies are in
nats (natural logarithm).

The Monte Carlo decomposition (Gal 2016; Depeweg et al. 2018) splits the predictive entropy of
the mean prediction into the expected entropy of the individual samples (aleatoric: noise the
model expects in the data) and the mutual information between the prediction and the weights
(epistemic: disagreement between posterior samples, which more data would remove)::

    H[mean_s p_s]  =  mean_s H[p_s]  +  I(y; w)
    predictive        expected          mutual
    entropy           entropy           information

References:
    Guo et al. 2017, "On Calibration of Modern Neural Networks" (ECE, temperature scaling).
    Naeini et al. 2015, "Obtaining Well Calibrated Probabilities Using Bayesian Binning" (ECE).
    Brier 1950, "Verification of forecasts expressed in terms of probability".
    Hendrycks and Gimpel 2017, "A Baseline for Detecting Misclassified and Out-of-Distribution
    Examples in Neural Networks" (max-softmax OOD score, AUROC and AUPR).
    Mukhoti et al. 2023, "Deep Deterministic Uncertainty: A New Simple Baseline" (class-conditional
    Gaussian density of the features as the OOD score).
"""

from __future__ import annotations

import dataclasses

import numpy as np

ECE_BINS = 15
_EPS = 1e-12


def _check_probs(probs, name: str = "probs") -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"{name} must have shape (N, C). Received shape {p.shape}")
    return p


def _check_labels(y, n: int) -> np.ndarray:
    y = np.asarray(y, dtype=np.int64).reshape(-1)
    if len(y) != n:
        raise ValueError(f"labels and probabilities disagree in length: {len(y)} vs {n}")
    return y


def _check_mc(mc_probs) -> np.ndarray:
    mc = np.asarray(mc_probs, dtype=np.float64)
    if mc.ndim != 3:
        raise ValueError(f"Monte Carlo probabilities must have shape (S, N, C). "
                         f"Received shape {mc.shape}")
    return mc


# --------------------------------------------------------------------------------------------
# proper scores and calibration


def nll(y, probs) -> float:
    """Mean negative log-likelihood of the true class, ``-mean(log p[y])`` (probabilities clipped
    at 1e-12)."""
    p = _check_probs(probs)
    y = _check_labels(y, len(p))
    if not len(y):
        return 0.0
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], _EPS, 1.0))))


def brier_score(y, probs) -> float:
    """Multi-class Brier score ``mean_i sum_c (p_ic - 1[y_i = c])^2``: 0 is perfect, 2 the worst."""
    p = _check_probs(probs)
    y = _check_labels(y, len(p))
    if not len(y):
        return 0.0
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


@dataclasses.dataclass
class ReliabilityBins:
    """Per-bin statistics of the top-class confidence (the data behind a reliability diagram).

    Attributes:
        edges: ``n_bins + 1`` bin edges from 0 to 1; bin ``b`` holds confidences in
            ``(edges[b], edges[b + 1]]`` (the first bin also holds 0).
        counts: examples per bin.
        accuracy: fraction of correct top-class predictions per bin (0 where the bin is empty).
        confidence: mean top-class probability per bin (0 where the bin is empty).
    """

    edges: np.ndarray
    counts: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray

    @property
    def ece(self) -> float:
        """Expected calibration error: ``sum_b n_b / N * |acc_b - conf_b|``."""
        total = self.counts.sum()
        if total == 0:
            return 0.0
        return float(np.sum(self.counts / total * np.abs(self.accuracy - self.confidence)))

    def to_dict(self) -> dict:
        return {"edges": self.edges.tolist(), "counts": self.counts.tolist(),
                "accuracy": self.accuracy.tolist(), "confidence": self.confidence.tolist()}


def reliability_bins(y, probs, n_bins: int = ECE_BINS) -> ReliabilityBins:
    """Bin the top-class confidence into ``n_bins`` equal-width bins on [0, 1]."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer. Received: {n_bins}")
    p = _check_probs(probs)
    y = _check_labels(y, len(p))
    conf = p.max(axis=1) if len(p) else np.zeros(0)
    correct = (p.argmax(axis=1) == y).astype(np.float64) if len(p) else np.zeros(0)
    # Right-closed bins (b/B, (b+1)/B]; a confidence of exactly 0 goes to the first bin.
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins).astype(np.int64)
    safe = np.maximum(counts, 1)
    acc = np.bincount(idx, weights=correct, minlength=n_bins) / safe
    mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / safe
    return ReliabilityBins(np.linspace(0.0, 1.0, n_bins + 1), counts, acc, mean_conf)


def expected_calibration_error(y, probs, n_bins: int = ECE_BINS) -> float:
    """ECE with ``n_bins`` equal-width confidence bins (15 by default, as in Guo et al. 2017)."""
    return reliability_bins(y, probs, n_bins).ece


def calibration_metrics(y, probs, n_bins: int = ECE_BINS) -> dict:
    """``{"nll", "brier", "ece", "ece_bins"}`` for one set of predictions."""
    return {
        "nll": nll(y, probs),
        "brier": brier_score(y, probs),
        "ece": expected_calibration_error(y, probs, n_bins),
        "ece_bins": int(n_bins),
    }


# --------------------------------------------------------------------------------------------
# temperature scaling


def fit_temperature(probs, y, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature ``T`` minimizing the NLL of ``softmax(log(p) / T)`` (Guo et al. 2017).

    The NLL is convex in ``1 / T``, so a bounded one-dimensional search finds the global minimum.
    Fit it on the validation split, never on the test split; apply it with
    :func:`kerascls.metrics.apply_temperature`.

    Args:
        probs: validation probabilities ``(N, C)`` of the uncalibrated model.
        y: validation labels ``(N,)``.
        bounds: the range of ``T`` searched.

    Returns:
        The fitted temperature; 1.0 when there is nothing to fit (no examples, or one class).
    """
    from scipy.optimize import minimize_scalar

    p = _check_probs(probs)
    y = _check_labels(y, len(p))
    if not len(y) or p.shape[1] < 2:
        return 1.0
    logp = np.log(np.clip(p, _EPS, 1.0))
    rows = np.arange(len(y))

    def loss(beta: float) -> float:
        z = logp * beta
        zmax = z.max(axis=1)
        lse = zmax + np.log(np.exp(z - zmax[:, None]).sum(axis=1))
        return float(np.mean(lse - z[rows, y]))

    lo, hi = 1.0 / bounds[1], 1.0 / bounds[0]
    res = minimize_scalar(loss, bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-6, "maxiter": 500})
    beta = float(res.x)
    # Never return a temperature that is worse than leaving the model alone.
    if loss(beta) > loss(1.0):
        return 1.0
    return float(1.0 / beta)


# --------------------------------------------------------------------------------------------
# Monte Carlo uncertainty


def entropy(probs) -> np.ndarray:
    """Shannon entropy in nats of each row of ``(..., C)`` probabilities (0 log 0 = 0)."""
    p = np.asarray(probs, dtype=np.float64)
    return -np.sum(np.where(p > 0, p * np.log(np.clip(p, _EPS, 1.0)), 0.0), axis=-1)


def predictive_entropy(mc_probs) -> np.ndarray:
    """Entropy of the Monte Carlo mean, ``H[mean_s p_s]``: total uncertainty, shape ``(N,)``."""
    return entropy(_check_mc(mc_probs).mean(axis=0))


def expected_entropy(mc_probs) -> np.ndarray:
    """Mean entropy of the individual samples, ``mean_s H[p_s]``: aleatoric part, ``(N,)``."""
    return entropy(_check_mc(mc_probs)).mean(axis=0)


def mutual_information(mc_probs) -> np.ndarray:
    """Predictive entropy minus expected entropy: epistemic part, ``(N,)``, clipped at 0."""
    mc = _check_mc(mc_probs)
    return np.maximum(entropy(mc.mean(axis=0)) - entropy(mc).mean(axis=0), 0.0)


def predictive_std(mc_probs) -> np.ndarray:
    """Per-class standard deviation of the probabilities over the samples, ``(N, C)``."""
    return _check_mc(mc_probs).std(axis=0)


@dataclasses.dataclass
class MCPrediction:
    """A Monte Carlo prediction and its uncertainty decomposition (all per example).

    Attributes:
        mean: predictive mean probabilities ``(N, C)``.
        std: per-class standard deviation ``(N, C)``.
        predictive_entropy: ``H[mean]`` ``(N,)``.
        expected_entropy: ``mean_s H[p_s]`` ``(N,)``.
        mutual_information: epistemic uncertainty ``(N,)``.
        samples: number of Monte Carlo samples.
    """

    mean: np.ndarray
    std: np.ndarray
    predictive_entropy: np.ndarray
    expected_entropy: np.ndarray
    mutual_information: np.ndarray
    samples: int

    @classmethod
    def from_samples(cls, mc_probs) -> MCPrediction:
        """Summarize ``(S, N, C)`` Monte Carlo probabilities."""
        mc = _check_mc(mc_probs)
        mean = mc.mean(axis=0)
        h_total = entropy(mean)
        h_exp = entropy(mc).mean(axis=0)
        return cls(mean=mean, std=mc.std(axis=0), predictive_entropy=h_total,
                   expected_entropy=h_exp, mutual_information=np.maximum(h_total - h_exp, 0.0),
                   samples=int(mc.shape[0]))


def uncertainty_summary(mc: MCPrediction, y=None) -> dict:
    """Scalar summaries of a Monte Carlo prediction, for ``metrics.json``.

    Means of the predictive entropy, expected entropy, mutual information and of the top-class
    standard deviation, over all examples and (when ``y`` is given) separately over correctly and
    wrongly classified ones, plus the AUROC with which each score separates errors from correct
    predictions (higher score = more likely an error).
    """
    top = mc.mean.argmax(axis=1)
    top_std = mc.std[np.arange(len(top)), top] if len(top) else np.zeros(0)
    scores = {
        "predictive_entropy": mc.predictive_entropy,
        "expected_entropy": mc.expected_entropy,
        "mutual_information": mc.mutual_information,
        "top_class_std": top_std,
    }
    out: dict = {"mc_samples": mc.samples}
    for key, val in scores.items():
        out[f"mean_{key}"] = float(np.mean(val)) if len(val) else 0.0
    if y is not None:
        y = _check_labels(y, len(top))
        wrong = top != y
        for key, val in scores.items():
            out[f"mean_{key}_correct"] = float(np.mean(val[~wrong])) if (~wrong).any() else None
            out[f"mean_{key}_wrong"] = float(np.mean(val[wrong])) if wrong.any() else None
            out[f"error_auroc_{key}"] = (auroc(val[~wrong], val[wrong])
                                         if wrong.any() and (~wrong).any() else None)
    return out


# --------------------------------------------------------------------------------------------
# out-of-distribution detection


def auroc(negatives, positives) -> float:
    """Area under the ROC curve of a score that should be higher on ``positives``.

    Equals ``P(s_pos > s_neg) + 0.5 P(s_pos = s_neg)`` (the Mann-Whitney statistic), computed from
    average ranks so ties count one half.
    """
    from scipy.stats import rankdata

    neg = np.asarray(negatives, dtype=np.float64).reshape(-1)
    pos = np.asarray(positives, dtype=np.float64).reshape(-1)
    if not len(neg) or not len(pos):
        raise ValueError("AUROC needs at least one negative and one positive score")
    ranks = rankdata(np.concatenate([neg, pos]))
    r_pos = ranks[len(neg):].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2.0) / (len(pos) * len(neg)))


def ood_scores(probs, mc_probs=None) -> dict[str, np.ndarray]:
    """Uncertainty scores, higher = more likely out of distribution.

    ``max_softmax`` is ``1 - max_c p_c`` (Hendrycks and Gimpel 2017) and ``entropy`` the entropy
    of ``probs``; with Monte Carlo samples ``mc_probs`` (their mean should be ``probs``),
    ``mutual_information`` is added.
    """
    p = _check_probs(probs)
    out = {"max_softmax": 1.0 - p.max(axis=1), "entropy": entropy(p)}
    if mc_probs is not None:
        out["mutual_information"] = mutual_information(mc_probs)
    return out


def ood_auroc(scores_in: dict[str, np.ndarray], scores_out: dict[str, np.ndarray]) -> dict:
    """AUROC of each score in both dicts at separating OOD (positive) from in-distribution."""
    return {k: auroc(scores_in[k], scores_out[k]) for k in scores_in if k in scores_out}


def aupr(negatives, positives) -> float:
    """Area under the precision-recall curve of a score that should be higher on ``positives``,
    as average precision (``sum_k (R_k - R_{k-1}) P_k`` over the distinct thresholds; ties share
    a threshold). Unlike the AUROC it depends on the share of positives: a score that says
    nothing gets that share."""
    neg = np.asarray(negatives, dtype=np.float64).reshape(-1)
    pos = np.asarray(positives, dtype=np.float64).reshape(-1)
    if not len(neg) or not len(pos):
        raise ValueError("AUPR needs at least one negative and one positive score")
    scores = np.concatenate([pos, neg])
    is_pos = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    order = np.argsort(-scores, kind="mergesort")
    scores, is_pos = scores[order], is_pos[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # end of each tie group
    tp = np.cumsum(is_pos)[last]
    precision = tp / (last + 1)
    recall_gain = np.diff(np.r_[0.0, tp]) / len(pos)
    return float(np.sum(recall_gain * precision))


def ood_aupr(scores_in: dict[str, np.ndarray], scores_out: dict[str, np.ndarray]) -> dict:
    """AUPR of each score in both dicts, out-of-distribution images as the positive class."""
    return {k: aupr(scores_in[k], scores_out[k]) for k in scores_in if k in scores_out}


# --------------------------------------------------------------------------------------------
# feature-space density


@dataclasses.dataclass
class FeatureDensity:
    """A Gaussian per class over a network's features: out-of-distribution by feature density.

    Gaussian discriminant analysis fitted to the training split's features (the input of the
    classifier layer): one mean per class, class weights from the counts, and a full covariance
    per class where every class has more feature vectors than dimensions (``covariance ==
    "class"``), else one covariance pooled over the classes (``"shared"``, the Mahalanobis
    score's; a per-class one would be singular). ``score`` is the negative log density
    ``-log sum_c pi_c N(f; mu_c, Sigma_c)``, higher for images whose features lie away from every
    class: the score Deep Deterministic Uncertainty (Mukhoti et al. 2023) uses and softmax scores
    miss, since a confidently classified digit is still far from every garment's features. A
    singular covariance (dead units) gets the smallest diagonal jitter, relative to its mean
    variance, that makes its Cholesky factor exist (``jitter``).
    """

    means: np.ndarray  # (C, D)
    cholesky: np.ndarray  # (C, D, D) or, shared, (1, D, D); lower triangular
    log_weights: np.ndarray  # (C,)
    jitter: float = 0.0

    JITTERS = (0.0,) + tuple(10.0 ** e for e in range(-10, 1))

    @classmethod
    def fit(cls, features, labels) -> FeatureDensity:
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or not len(f):
            raise ValueError(f"features must be a non-empty (N, D) array; got shape {f.shape}")
        y = _check_labels(labels, len(f))
        classes = np.unique(y)
        counts = np.array([(y == c).sum() for c in classes])
        if counts.min() < 2:
            raise ValueError(f"class {classes[counts.argmin()]} has {counts.min()} feature "
                             "vector; a covariance needs at least 2 per class")
        dim = f.shape[1]
        means = np.stack([f[y == c].mean(axis=0) for c in classes])
        if counts.min() > dim:
            covs = np.stack([np.cov(f[y == c], rowvar=False).reshape(dim, dim) for c in classes])
        else:
            centred = f - means[np.searchsorted(classes, y)]
            covs = (centred.T @ centred / (len(f) - len(classes)))[None]
        scale = max(float(np.mean(np.trace(covs, axis1=1, axis2=2))) / dim, _EPS)
        eye = np.eye(dim)
        for jitter in cls.JITTERS:
            try:
                chol = np.linalg.cholesky(covs + jitter * scale * eye)
            except np.linalg.LinAlgError:
                continue
            if np.all(np.isfinite(chol)):
                return cls(means, chol, np.log(counts / counts.sum()), jitter)
        raise ValueError("the class covariances stay singular with a diagonal jitter of the mean "
                         "variance; the features are degenerate (constant or not finite)")

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def covariance(self) -> str:
        """``"class"`` (one covariance per class) or ``"shared"`` (pooled)."""
        return "shared" if len(self.cholesky) == 1 and len(self.means) > 1 else "class"

    def log_density(self, features) -> np.ndarray:
        """``log sum_c pi_c N(f; mu_c, Sigma_c)`` for each row of ``features``."""
        from scipy.linalg import solve_triangular
        from scipy.special import logsumexp

        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise ValueError(f"features must be (N, {self.dim}); got shape {f.shape}")
        per_class = np.empty((len(f), len(self.means)))
        # L^-1 (f - mu) = L^-1 f - L^-1 mu: one solve of the features per covariance
        whitened = [solve_triangular(chol, f.T, lower=True) for chol in self.cholesky]
        for c, mu in enumerate(self.means):
            k = min(c, len(self.cholesky) - 1)
            chol = self.cholesky[k]
            z = whitened[k] - solve_triangular(chol, mu, lower=True)[:, None]
            log_det = 2.0 * np.log(np.diag(chol)).sum()
            per_class[:, c] = (self.log_weights[c] - 0.5 * (z * z).sum(axis=0)
                               - 0.5 * (log_det + self.dim * np.log(2.0 * np.pi)))
        return logsumexp(per_class, axis=1)

    def score(self, features) -> np.ndarray:
        """Negative log density: higher = more likely out of distribution."""
        return -self.log_density(features)
