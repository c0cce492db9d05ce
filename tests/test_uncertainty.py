"""The calibration and uncertainty maths against hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kerascls import uncertainty as U
from kerascls.metrics import apply_temperature

LN2 = math.log(2.0)


def test_nll_hand_computed():
    probs = [[0.7, 0.3], [0.7, 0.3]]
    y = [0, 1]
    expected = -(math.log(0.7) + math.log(0.3)) / 2  # 0.780324
    assert U.nll(y, probs) == pytest.approx(expected, abs=1e-9)
    # a zero probability on the true class is clipped, not infinite
    assert U.nll([1], [[1.0, 0.0]]) == pytest.approx(-math.log(1e-12))


def test_brier_hand_computed():
    probs = [[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]]
    y = [0, 2]
    # (0.3^2 + 0.2^2 + 0.1^2) = 0.14 and (0.2^2 + 0.5^2 + 0.7^2) = 0.78
    assert U.brier_score(y, probs) == pytest.approx((0.14 + 0.78) / 2, abs=1e-12)
    assert U.brier_score([1], [[0.0, 1.0]]) == 0.0
    assert U.brier_score([0], [[0.0, 1.0]]) == pytest.approx(2.0)


def test_ece_one_example_per_bin():
    # confidences 0.9, 0.75, 0.7, 0.62 fall in 15-bin indices 13, 11, 10, 9
    probs = [[0.9, 0.1], [0.75, 0.25], [0.3, 0.7], [0.62, 0.38]]
    y = [0, 1, 1, 1]  # correct, wrong, correct, wrong
    bins = U.reliability_bins(y, probs)
    assert bins.counts.tolist() == [0] * 9 + [1, 1, 1, 0, 1, 0]
    assert bins.edges[0] == 0.0 and bins.edges[-1] == 1.0 and len(bins.edges) == 16
    expected = (abs(1 - 0.9) + abs(0 - 0.75) + abs(1 - 0.7) + abs(0 - 0.62)) / 4  # 0.4425
    assert U.expected_calibration_error(y, probs) == pytest.approx(expected, abs=1e-12)


def test_ece_shared_bin_and_weighting():
    # 0.9 (correct) and 0.92 (wrong) share bin 13: acc 0.5, conf 0.91; 0.6 (correct) is alone.
    probs = [[0.9, 0.1], [0.08, 0.92], [0.6, 0.4]]
    y = [0, 0, 0]
    bins = U.reliability_bins(y, probs)
    assert bins.counts[13] == 2 and bins.counts[8] == 1
    assert bins.accuracy[13] == pytest.approx(0.5)
    assert bins.confidence[13] == pytest.approx(0.91)
    expected = 2 / 3 * abs(0.5 - 0.91) + 1 / 3 * abs(1.0 - 0.6)
    assert U.expected_calibration_error(y, probs) == pytest.approx(expected, abs=1e-12)
    # with 2 bins all three land in (0.5, 1]: acc 2/3, conf 2.42/3
    assert U.expected_calibration_error(y, probs, n_bins=2) == pytest.approx(
        abs(2 / 3 - 2.42 / 3), abs=1e-12)


def test_ece_perfect_and_metrics_dict():
    probs = np.eye(3)[[0, 1, 2, 0]]
    m = U.calibration_metrics([0, 1, 2, 0], probs)
    assert m == {"nll": pytest.approx(0.0, abs=1e-9), "brier": 0.0, "ece": 0.0, "ece_bins": 15}
    assert U.reliability_bins([0, 1], [[1.0, 0.0], [0.0, 1.0]]).to_dict()["counts"][-1] == 2


def test_entropy_hand_computed():
    assert U.entropy([0.5, 0.5]) == pytest.approx(LN2)
    assert U.entropy([1.0, 0.0]) == 0.0
    assert U.entropy([0.25] * 4) == pytest.approx(math.log(4))
    np.testing.assert_allclose(U.entropy([[0.5, 0.5], [1.0, 0.0]]), [LN2, 0.0])


def test_mutual_information_hand_computed():
    # example 0: two confident samples that disagree -> all uncertainty is epistemic
    # example 1: two identical uncertain samples -> all uncertainty is aleatoric
    # example 2: 0.9/0.1 and 0.1/0.9
    mc = np.array([
        [[1.0, 0.0], [0.5, 0.5], [0.9, 0.1]],
        [[0.0, 1.0], [0.5, 0.5], [0.1, 0.9]],
    ])
    h09 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))  # 0.325083
    np.testing.assert_allclose(U.predictive_entropy(mc), [LN2, LN2, LN2], atol=1e-12)
    np.testing.assert_allclose(U.expected_entropy(mc), [0.0, LN2, h09], atol=1e-12)
    np.testing.assert_allclose(U.mutual_information(mc), [LN2, 0.0, LN2 - h09], atol=1e-12)
    np.testing.assert_allclose(U.predictive_std(mc), [[0.5, 0.5], [0.0, 0.0], [0.4, 0.4]],
                               atol=1e-12)
    pred = U.MCPrediction.from_samples(mc)
    assert pred.samples == 2
    np.testing.assert_allclose(pred.mean, [[0.5, 0.5]] * 3)
    np.testing.assert_allclose(pred.mutual_information, U.mutual_information(mc))


def test_mutual_information_is_zero_for_identical_samples():
    p = np.array([[0.7, 0.2, 0.1]])
    mc = np.repeat(p[None], 5, axis=0)
    assert U.mutual_information(mc)[0] == pytest.approx(0.0, abs=1e-12)
    assert U.expected_entropy(mc)[0] == pytest.approx(U.entropy(p)[0])


def test_uncertainty_summary_splits_correct_and_wrong():
    mc = np.array([
        [[1.0, 0.0], [0.9, 0.1]],
        [[0.0, 1.0], [0.9, 0.1]],
    ])
    # predictions: example 0 -> tie broken to class 0, example 1 -> class 0
    summary = U.uncertainty_summary(U.MCPrediction.from_samples(mc), y=[1, 0])
    assert summary["mc_samples"] == 2
    assert summary["mean_mutual_information_wrong"] == pytest.approx(LN2)
    assert summary["mean_mutual_information_correct"] == pytest.approx(0.0, abs=1e-12)
    assert summary["error_auroc_mutual_information"] == 1.0
    assert summary["mean_top_class_std"] == pytest.approx(0.25)


def test_auroc_hand_computed():
    # pairs (pos > neg): 0.35>0.1 yes, 0.35>0.4 no, 0.8>0.1 yes, 0.8>0.4 yes -> 3/4
    assert U.auroc([0.1, 0.4], [0.35, 0.8]) == pytest.approx(0.75)
    assert U.auroc([0.5], [0.5]) == pytest.approx(0.5)
    assert U.auroc([0.0, 0.1], [0.2, 0.3]) == 1.0
    assert U.auroc([0.2, 0.3], [0.0, 0.1]) == 0.0
    with pytest.raises(ValueError, match="at least one"):
        U.auroc([], [0.1])


def test_ood_scores_and_auroc():
    p_in = np.array([[0.95, 0.05], [0.9, 0.1]])
    p_out = np.array([[0.55, 0.45], [0.6, 0.4]])
    s_in, s_out = U.ood_scores(p_in), U.ood_scores(p_out)
    np.testing.assert_allclose(s_in["max_softmax"], [0.05, 0.1])
    assert U.ood_auroc(s_in, s_out) == {"max_softmax": 1.0, "entropy": 1.0}
    mc = np.stack([p_in, p_in])
    assert "mutual_information" in U.ood_scores(p_in, mc)


def test_temperature_recovers_overconfidence_and_lowers_ece():
    rng = np.random.default_rng(0)
    n, c = 20000, 5
    logits = rng.normal(0.0, 2.0, (n, c))
    calibrated = apply_temperature(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), 1.0)
    y = np.array([rng.choice(c, p=row / row.sum()) for row in calibrated.astype(np.float64)])
    overconfident = apply_temperature(calibrated, 1.0 / 3.0)  # logits times 3
    t = U.fit_temperature(overconfident, y)
    assert t == pytest.approx(3.0, rel=0.05)
    fixed = apply_temperature(overconfident, t)
    assert U.nll(y, fixed) < U.nll(y, overconfident)
    assert U.expected_calibration_error(y, fixed) < U.expected_calibration_error(y, overconfident)
    assert U.expected_calibration_error(y, fixed) < 0.02


def test_temperature_edge_cases():
    assert U.fit_temperature(np.zeros((0, 3)), []) == 1.0
    # the fitted temperature never makes the validation NLL worse
    probs = np.array([[0.6, 0.4], [0.3, 0.7], [0.8, 0.2]])
    y = [0, 1, 0]
    t = U.fit_temperature(probs, y)
    assert U.nll(y, apply_temperature(probs, t)) <= U.nll(y, probs) + 1e-12


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        U.nll([0], [0.5, 0.5])
    with pytest.raises(ValueError, match=r"\(S, N, C\)"):
        U.mutual_information(np.ones((2, 2)))
    with pytest.raises(ValueError, match="disagree in length"):
        U.brier_score([0, 1], [[0.5, 0.5]])
    with pytest.raises(ValueError, match="n_bins"):
        U.reliability_bins([0], [[1.0, 0.0]], n_bins=0)


def test_feature_density_matches_the_gaussian_mixture_and_flags_far_features():
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(0)
    cov0, cov1 = np.array([[1.0, 0.5], [0.5, 2.0]]), np.array([[0.5, 0.0], [0.0, 0.5]])
    f0 = rng.multivariate_normal([0, 0], cov0, 300)
    f1 = rng.multivariate_normal([6, 6], cov1, 100)
    feats, y = np.concatenate([f0, f1]), np.r_[np.zeros(300), np.ones(100)]
    d = U.FeatureDensity.fit(feats, y)
    assert d.jitter == 0.0 and d.dim == 2 and d.covariance == "class"
    pts = np.array([[0.0, 0.0], [6.0, 6.0], [3.0, -5.0]])
    mix = 0.75 * multivariate_normal(f0.mean(0), np.cov(f0, rowvar=False)).pdf(pts) \
        + 0.25 * multivariate_normal(f1.mean(0), np.cov(f1, rowvar=False)).pdf(pts)
    np.testing.assert_allclose(d.log_density(pts), np.log(mix), rtol=1e-9)
    far = rng.normal([3.0, -5.0], 0.5, (200, 2))  # between and below both classes
    assert U.auroc(d.score(feats), d.score(far)) > 0.99


def test_feature_density_jitters_singular_covariances_and_refuses_bad_input():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(40, 3))
    feats = np.concatenate([base, base[:, :1], np.zeros((40, 1))], axis=1)  # rank 3 of 5
    d = U.FeatureDensity.fit(feats, np.arange(40) % 2)
    assert d.jitter > 0.0 and np.isfinite(d.log_density(feats)).all()
    # fewer vectors per class than dimensions: one covariance pooled over the classes
    wide = rng.normal(size=(30, 20))
    shared = U.FeatureDensity.fit(wide, np.arange(30) % 3)
    assert shared.covariance == "shared" and shared.cholesky.shape == (1, 20, 20)
    pooled = sum(np.cov(wide[np.arange(30) % 3 == c], rowvar=False) * 9 for c in range(3)) / 27
    np.testing.assert_allclose(shared.cholesky[0] @ shared.cholesky[0].T, pooled, atol=1e-12)
    with pytest.raises(ValueError, match="at least 2 per class"):
        U.FeatureDensity.fit(feats[:3], [0, 0, 1])
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        U.FeatureDensity.fit(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match=r"must be \(N, 5\)"):
        d.log_density(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="degenerate"):
        U.FeatureDensity.fit(np.full((6, 2), np.nan), [0, 0, 0, 1, 1, 1])
