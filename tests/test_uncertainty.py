"""minitf.explain.uncertainty against independent references: scipy quadrature and Monte Carlo for the
Beta posterior, brute force over all label permutations, plain BH, scipy correlations, simulations."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy import integrate, optimize, stats

from minitf.explain.metrics import balanced_accuracy
from minitf.explain.correlation import auc_with_se, average_ranks, hanley_mcneil_se, pearson, spearman
from minitf.explain.uncertainty import (
    TOKEN_ONLY_EXPLANATION,
    ba_permutation_test,
    ba_posterior,
    benjamini_hochberg,
    bootstrap_study,
    constant_answers,
    constant_baseline,
    random_explanation_donors,
    score_uncertainty,
    share_above_chance,
    token_only_explanation,
)

# ------------------------------------------------------------------ Beta posterior


def _quad_reference(tp: int, fp: int, tn: int, fn: int) -> tuple[float, float, float]:
    """(2.5 % quantile, 97.5 % quantile, P(BA ≤ ½)) from ``P(X + Y ≤ s) = F_X(s−1) + ∫ f_X(x) F_Y(s − x) dx``."""
    x, y = stats.beta(tp + 1, fn + 1), stats.beta(tn + 1, fp + 1)

    def cdf(t: float) -> float:
        s = 2 * t
        lo, hi = max(0.0, s - 1), min(1.0, s)
        inner = integrate.quad(lambda u: x.pdf(u) * y.cdf(s - u), lo, hi, epsabs=1e-12, epsrel=1e-10, limit=200)[0]
        return (x.cdf(lo) if lo > 0 else 0.0) + inner

    q = [optimize.brentq(lambda t: cdf(t) - p, 0, 1, xtol=1e-12) for p in (0.025, 0.975)]
    return q[0], q[1], cdf(0.5)


@pytest.mark.parametrize("counts", [(3, 2, 4, 1), (5, 0, 5, 0), (1, 4, 2, 3), (0, 0, 5, 0), (400, 3, 2, 20)])
def test_posterior_matches_quadrature(counts):
    post = ba_posterior(*counts)
    low, high, p_half = _quad_reference(*counts)
    assert post.low == pytest.approx(low, abs=1e-5)
    assert post.high == pytest.approx(high, abs=1e-5)
    assert post.p_at_most_chance == pytest.approx(p_half, abs=1e-5)
    assert low < post.mean < high


def test_posterior_matches_monte_carlo():
    # 10 test prompts as in the paper (v-Feb24): 5 active, 5 inactive.
    tp, fp, tn, fn = 4, 1, 3, 2
    post = ba_posterior(tp, fp, tn, fn)
    n = 400_000
    rng = np.random.default_rng(0)
    ba = (stats.beta(tp + 1, fn + 1).rvs(n, random_state=rng) + stats.beta(tn + 1, fp + 1).rvs(n, random_state=rng)) / 2
    # Mean: MC se = sd / sqrt(n). Tail probability: se = sqrt(p(1−p)/n). Quantile q_p: se = sqrt(p(1−p)/n) / f(q_p),
    # with the density f estimated from the MC sample; 5 se each.
    assert post.mean == pytest.approx(ba.mean(), abs=5 * ba.std() / math.sqrt(n))
    assert post.sd == pytest.approx(ba.std(), rel=0.01)
    p = float((ba <= 0.5).mean())
    assert post.p_at_most_chance == pytest.approx(p, abs=5 * math.sqrt(p * (1 - p) / n))
    for level, value in ((0.025, post.low), (0.975, post.high)):
        q = float(np.quantile(ba, level))
        density = float(((ba > q - 0.01) & (ba <= q + 0.01)).mean() / 0.02)
        assert value == pytest.approx(q, abs=5 * math.sqrt(level * (1 - level) / n) / density)


def test_posterior_limits():
    # All correct with many prompts: the whole interval near 1, no mass at chance.
    post = ba_posterior(2000, 0, 2000, 0)
    assert 0.998 < post.low < post.high <= 1.0
    assert post.p_at_most_chance < 1e-12
    # Predictions independent of labels (TN = FN, FP = TP): BA − ½ is symmetric, P(BA ≤ ½) = ½.
    for counts in ((3, 3, 2, 2), (5, 5, 0, 0), (7, 1, 4, 4)):
        tp, fp, tn, fn = counts
        post = ba_posterior(tp, tp, fn, fn)
        assert post.p_at_most_chance == pytest.approx(0.5, abs=1e-12)
        assert post.mean == pytest.approx(0.5)
        assert post.low + post.high == pytest.approx(1.0, abs=1e-9)
    # Mirror: swapping correct and wrong answers reflects the posterior about ½.
    a, b = ba_posterior(4, 1, 3, 2), ba_posterior(2, 3, 1, 4)
    assert a.low == pytest.approx(1 - b.high, abs=1e-9)
    assert a.p_at_most_chance == pytest.approx(1 - b.p_at_most_chance, abs=1e-9)
    # No data: BA = (U1 + U2)/2, a triangle on [0, 1]: 2.5 % quantile sqrt(0.025/2).
    post = ba_posterior(0, 0, 0, 0)
    assert post.low == pytest.approx(math.sqrt(0.0125), abs=1e-5)
    assert post.high == pytest.approx(1 - math.sqrt(0.0125), abs=1e-5)
    # A wider level gives a wider interval.
    narrow, wide = ba_posterior(4, 1, 3, 2, level=0.5), ba_posterior(4, 1, 3, 2, level=0.99)
    assert wide.low < narrow.low < narrow.high < wide.high


def test_posterior_rejects_bad_counts():
    with pytest.raises(ValueError, match="tp"):
        ba_posterior(-1, 0, 0, 0)
    with pytest.raises(ValueError, match="fn"):
        ba_posterior(1, 0, 0, 1.5)
    with pytest.raises(ValueError, match="level"):
        ba_posterior(1, 1, 1, 1, level=1.0)


# ------------------------------------------------------------------ permutation test


def _brute_force_p(labels, predictions) -> float:
    """Share of all n! orderings of the labels whose balanced accuracy ≥ the observed one."""
    kept = [(y, p) for y, p in zip(labels, predictions) if p is not None]
    ys, ps = [y for y, _ in kept], [p for _, p in kept]
    observed = balanced_accuracy(ys, ps)
    perms = list(itertools.permutations(ys))
    return sum(balanced_accuracy(list(perm), ps) >= observed - 1e-12 for perm in perms) / len(perms)


@pytest.mark.parametrize("labels,predictions", [
    ([1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 1]),
    ([1, 1, 0, 0, 0, 0, 0], [1, 0, 1, 0, 0, 0, 0]),
    ([1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0]),
    ([1, 0, 1, 0, 1, 0, 1], [0, 1, 0, 1, 0, 1, 1]),
    ([1, 1, 1, 0, 0, 0, 0, 1], [1, None, 1, 0, None, 1, 0, 0]),
    ([1, 0, 1, 0, 0], [1, 1, 1, 1, 1]),
])
def test_exact_permutation_matches_brute_force(labels, predictions):
    result = ba_permutation_test(labels, predictions)
    assert result.exact and result.seed is None
    assert result.p_value == pytest.approx(_brute_force_p(labels, predictions), abs=1e-12)
    assert result.statistic == balanced_accuracy(labels, predictions)
    # It is the one-sided Fisher exact test (hypergeometric upper tail of TP).
    kept = [(y, p) for y, p in zip(labels, predictions) if p is not None]
    n, n_pos, k = len(kept), sum(y for y, _ in kept), sum(p for _, p in kept)
    tp = sum(1 for y, p in kept if y == 1 and p == 1)
    assert result.p_value == pytest.approx(stats.hypergeom(n, n_pos, k).sf(tp - 1), abs=1e-12)


def test_permutation_sampled_agrees_with_exact():
    rng = np.random.default_rng(1)
    labels = [1] * 15 + [0] * 15
    predictions = [int(rng.random() < (0.75 if y else 0.3)) for y in labels]
    sampled = ba_permutation_test(labels, predictions, n_perm=20_000, seed=3)
    assert not sampled.exact and sampled.n_perm == 20_000 and sampled.seed == 3  # C(30, 15) relabelings: sampled
    # The exact value is the hypergeometric upper tail of TP (checked against brute force above).
    k, tp = sum(predictions), sum(predictions[:15])
    exact = stats.hypergeom(30, 15, k).sf(tp - 1)
    # Binomial se of the sampled share: sqrt(p(1−p)/n_perm).
    se = math.sqrt(exact * (1 - exact) / 20_000)
    assert sampled.p_value == pytest.approx(exact, abs=5 * se + 1 / 20_000)
    assert sampled == ba_permutation_test(labels, predictions, n_perm=20_000, seed=3, max_exact=10)


def test_permutation_separated_and_random():
    labels = [1] * 20 + [0] * 20
    perfect = ba_permutation_test(labels, labels, n_perm=2000, max_exact=10)
    assert perfect.p_value == 1 / 2001  # no shuffle reaches TP = 20
    assert ba_permutation_test([1] * 5 + [0] * 5, [1] * 5 + [0] * 5).p_value == pytest.approx(1 / math.comb(10, 5))
    # Labels shuffled at random (the null): an exact test is uniform at every value it can take,
    # P(p ≤ p*) = p* for each attainable p*; p is discrete (TP takes few values), so check it there.
    predictions = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    rng = np.random.default_rng(7)
    n_draws = 1500
    ps = np.array([ba_permutation_test(rng.permutation([1] * 5 + [0] * 7).tolist(), predictions).p_value
                   for _ in range(n_draws)])
    attainable = np.unique(ps)
    assert len(attainable) >= 5
    for p_star in attainable[:-1]:
        assert np.mean(ps <= p_star) == pytest.approx(p_star, abs=4 * math.sqrt(p_star * (1 - p_star) / n_draws))


def test_permutation_undefined_and_bad_input():
    assert ba_permutation_test([1, 1, 1], [1, 0, 1]) is None
    assert ba_permutation_test([1, 0, 1], [1, None, 0]) is None  # the only negative is malformed
    with pytest.raises(ValueError, match="labels"):
        ba_permutation_test([1, 0], [1])


# ------------------------------------------------------------------ one pair, bundled, and constant baselines


def test_score_uncertainty_bundles_the_pieces():
    labels, predictions = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, None, 0, 0, 0, 1, 0, 0]
    result = score_uncertainty(labels, predictions, n_perm=500, seed=2)
    assert result.balanced_accuracy == balanced_accuracy(labels, predictions)
    assert result.posterior == ba_posterior(3, 1, 4, 1)
    assert result.permutation == ba_permutation_test(labels, predictions)
    encoded = json.loads(json.dumps(result.to_json()))
    assert encoded["posterior"]["low"] == result.posterior.low and encoded["tp"] == 3


def test_constant_baselines():
    labels = [1, 1, 1, 0, 0, 0, 0]
    for answer in (0, 1):
        assert constant_answers(3, answer) == [answer] * 3
        result = constant_baseline(labels, answer)
        assert result.balanced_accuracy == 0.5
        assert result.permutation.p_value == 1.0
        assert result.posterior is not None
    # Equal classes: all Yes gives TPR ~ Beta(n+1, 1), TNR ~ Beta(1, n+1), symmetric about ½.
    assert constant_baseline([1, 1, 0, 0], 1).posterior.p_at_most_chance == pytest.approx(0.5, abs=1e-12)
    # One class absent: undefined, like the pair's own score.
    for answer in (0, 1):
        result = constant_baseline([1, 1, 1], answer)
        assert result.balanced_accuracy is None and result.posterior is None and result.permutation is None
    with pytest.raises(ValueError, match="answer"):
        constant_answers(3, 2)


# ------------------------------------------------------------------ study aggregates


def _bh_reference(p, alpha):
    """Step-up: reject the k smallest for the largest k with p_(k) ≤ k α / m."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    k = max((rank for rank, i in enumerate(order, 1) if p[i] <= rank * alpha / m), default=0)
    return [i in set(order[:k]) for i in range(m)]


def test_benjamini_hochberg():
    rng = np.random.default_rng(4)
    for trial in range(50):
        m = int(rng.integers(1, 40))
        p = np.concatenate([rng.random(m // 2), rng.random(m - m // 2) * 0.01])
        p = np.round(p, 3) if trial % 2 else p  # ties on odd trials
        result = benjamini_hochberg(p.tolist(), fdr=0.1)
        assert list(result.rejected) == _bh_reference(p.tolist(), 0.1)
        if hasattr(stats, "false_discovery_control"):
            np.testing.assert_allclose(result.q_values, stats.false_discovery_control(p, method="bh"), rtol=1e-12)
    # Sorted 0.01, 0.03, 0.04, 0.5: m p_(j)/j = 0.04, 0.06, 0.0533, 0.5; running min from the top: 0.04, 0.0533, 0.0533, 0.5.
    result = benjamini_hochberg([0.01, 0.04, 0.03, 0.5], fdr=0.06)
    assert result.q_values == pytest.approx((0.04, 0.16 / 3, 0.16 / 3, 0.5))
    assert result.rejected == (True, True, True, False) and result.n_rejected == 3
    assert benjamini_hochberg([0.01, 0.04, 0.03, 0.5], fdr=0.05).rejected == (True, False, False, False)
    assert benjamini_hochberg([]).q_values == ()
    with pytest.raises(ValueError, match="p-values"):
        benjamini_hochberg([0.2, 1.5])


def test_bootstrap_study_basics():
    scores = [1.0, 0.9, 0.8, 0.6, 0.5, 0.4]
    result = bootstrap_study(scores, n_boot=2000, seed=5)
    assert result.mean.estimate == pytest.approx(np.mean(scores))
    assert result.share.estimate == pytest.approx(0.5)  # 0.8 counts as ≥ 0.8
    assert result.mean.low < result.mean.estimate < result.mean.high
    assert 0.0 <= result.share.low < 0.5 < result.share.high <= 1.0
    assert result == bootstrap_study(scores, n_boot=2000, seed=5)
    assert bootstrap_study([0.7] * 5, n_boot=100).mean.low == pytest.approx(0.7)
    assert bootstrap_study([]) is None
    json.dumps(result.to_json())


def test_bootstrap_covers_the_truth_at_roughly_the_nominal_rate():
    # Scores as balanced accuracies over 5 + 5 prompts: TPR, TNR ~ Binomial(5, 0.7) / 5; 40 pairs a study.
    rng = np.random.default_rng(6)
    p, n_pairs, n_studies = 0.7, 40, 200
    support = np.array([(a + b) / 10 for a in range(6) for b in range(6)])
    weight = np.array([stats.binom.pmf(a, 5, p) * stats.binom.pmf(b, 5, p) for a in range(6) for b in range(6)])
    true_mean, true_share = float(support @ weight), float(weight[support >= 0.8].sum())
    covered_mean = covered_share = 0
    for study in range(n_studies):
        scores = (rng.binomial(5, p, n_pairs) + rng.binomial(5, p, n_pairs)) / 10
        result = bootstrap_study(scores.tolist(), n_boot=500, seed=study)
        covered_mean += result.mean.low <= true_mean <= result.mean.high
        covered_share += result.share.low <= true_share <= result.share.high
    # Nominal 0.95; 200 studies give a binomial se of 0.015; percentile intervals run a little short at n = 40.
    assert 0.88 <= covered_mean / n_studies <= 0.99
    assert 0.86 <= covered_share / n_studies <= 0.99


def test_share_above_chance():
    posteriors = [ba_posterior(5, 0, 5, 0), ba_posterior(3, 2, 3, 2), None]
    assert posteriors[0].above_chance and not posteriors[1].above_chance
    assert share_above_chance(posteriors) == 0.5
    assert share_above_chance([None]) is None


# ------------------------------------------------------------------ baselines: explanations


def test_random_explanation_donors():
    explanations = ["a", "b", None, "c", "d", "a"]
    seen = set()
    for seed in range(40):
        donors = random_explanation_donors(explanations, seed=seed)
        assert donors[2] is None
        assigned = [d for i, d in enumerate(donors) if i != 2]
        assert all(d is not None and d != i and explanations[d] is not None for i, d in enumerate(donors) if i != 2)
        assert sorted(assigned) == [0, 1, 3, 4, 5]  # a derangement: each explanation used once
        seen.add(tuple(donors))
        assert donors == random_explanation_donors(explanations, seed=seed)
    assert len(seen) > 10
    assert random_explanation_donors(["x", "y"], seed=0) == [1, 0]
    assert random_explanation_donors(["x", None], seed=0) == [None, None]
    assert random_explanation_donors([], seed=0) == []


def test_token_only_explanation():
    assert TOKEN_ONLY_EXPLANATION.format(token="X") == 'the next token is "X"'
    assert token_only_explanation(" Israel") == 'the next token is " Israel"'
    assert "\n" not in token_only_explanation("\n")


# ------------------------------------------------------------------ correlations and AUC


def test_average_ranks():
    np.testing.assert_array_equal(average_ranks([5, 1, 5]), [2.5, 1, 2.5])
    np.testing.assert_array_equal(average_ranks([3, 3, 3, 0]), [3, 3, 3, 1])
    x = np.random.default_rng(8).integers(0, 5, 30).astype(float)
    np.testing.assert_allclose(average_ranks(x), stats.rankdata(x))


def test_correlations_against_scipy():
    rng = np.random.default_rng(9)
    for n in (5, 12, 60):
        x = rng.integers(0, 11, n).astype(float)  # 0–10 predictions: many ties
        y = x + rng.normal(0, 3, n)
        r = pearson(x, y)
        ref = stats.pearsonr(x, y)
        assert r.r == pytest.approx(ref.statistic, abs=1e-12)
        ci = ref.confidence_interval(0.95)  # scipy's is the Fisher-z one as well
        assert (r.low, r.high) == pytest.approx((ci.low, ci.high), abs=1e-12)
        rho = spearman(x, y)
        assert rho.r == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
        z = math.atanh(rho.r)
        half = stats.norm.ppf(0.975) / math.sqrt(n - 3)
        assert (rho.low, rho.high) == pytest.approx((math.tanh(z - half), math.tanh(z + half)), abs=1e-12)
    assert pearson([1, 2, 3], [1, 1, 1]).r is None
    assert pearson([], []).r is None and spearman([1.0], [2.0]).r is None
    three = spearman([1, 2, 3], [3, 1, 2])
    assert three.r == pytest.approx(-0.5) and three.low is None
    assert pearson([1, 2, 3, 4], [2, 4, 6, 8]).low == 1.0
    with pytest.raises(ValueError, match="length"):
        pearson([1, 2], [1, 2, 3])


def _auc_rank_reference(labels, scores):
    """(R_pos − P(P + 1)/2) / (P N) with average ranks — the rank-sum form of Mann–Whitney."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels)
    ranks = stats.rankdata(s)
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    return (ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def test_auc_with_se():
    rng = np.random.default_rng(10)
    labels = [1] * 7 + [0] * 9
    scores = rng.integers(0, 4, 16).tolist()  # many ties
    est = auc_with_se(labels, scores)
    assert est.auc == pytest.approx(_auc_rank_reference(labels, scores), abs=1e-12)
    u = stats.mannwhitneyu([s for y, s in zip(labels, scores) if y], [s for y, s in zip(labels, scores) if not y]).statistic
    assert est.auc == pytest.approx(u / 63, abs=1e-12)
    assert est.low <= est.auc <= est.high and (est.n_pos, est.n_neg) == (7, 9)
    # Hanley & McNeil (1982), their worked example: A = 0.893 on 58 abnormal and 51 normal images, SE 0.032.
    assert hanley_mcneil_se(0.893, 58, 51) == pytest.approx(0.032, abs=0.001)
    assert auc_with_se([1, 1], [0.2, 0.3]) is None
    assert auc_with_se([1, 0, 0], [0.9, None, 0.1]).auc == 1.0


def test_hanley_mcneil_se_matches_simulation():
    # The SE formula is derived for exponential scores; there the spread of AUC over studies should match it.
    rng = np.random.default_rng(11)
    n_pos, n_neg, theta = 25, 30, 2.0  # AUC = P(pos > neg) = θ / (1 + θ) for pos ~ Exp(mean θ), neg ~ Exp(1)
    aucs = []
    for _ in range(1500):
        pos, neg = rng.exponential(theta, n_pos), rng.exponential(1.0, n_neg)
        aucs.append(float((pos[:, None] > neg[None, :]).mean()))
    se = hanley_mcneil_se(theta / (1 + theta), n_pos, n_neg)
    assert np.std(aucs, ddof=1) == pytest.approx(se, rel=0.08)  # sd of an sd over 1500 draws: ~2 %


def test_records_are_plain_json():
    records = [
        ba_posterior(3, 1, 4, 1),
        ba_permutation_test([1, 0, 1, 0], [1, 0, 0, 0]),
        score_uncertainty([1, 0, 1, 0], [1, 0, 0, 0]),
        score_uncertainty([1, 1], [1, 0]),
        bootstrap_study([0.5, 0.9], n_boot=50),
        benjamini_hochberg([0.01, 0.2]),
        pearson([1, 2, 3, 5], [2, 1, 4, 4]),
        auc_with_se([1, 0, 1], [0.7, 0.2, 0.1]),
    ]
    for record in records:
        encoded = json.dumps(record.to_json(), allow_nan=False)
        assert json.loads(encoded) == record.to_json()
