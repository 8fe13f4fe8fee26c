"""Multi-reader multi-case (MRMC) ROC analysis: Obuchowski-Rockette (OR) with jackknife covariances and Hillis
degrees of freedom, for two modalities read by the same readers on the same cases (fully crossed design).

The figure of merit is the empirical (trapezoidal / Wilcoxon-Mann-Whitney) AUC of each reader in each modality,
a tie between a diseased and a non-diseased case counting 1/2. The OR error covariances (``var_error``, ``cov1``
same reader / different modality, ``cov2`` same modality / different reader, ``cov3`` both different) come from
the case jackknife: the covariance over the ``K`` leave-one-case-out AUCs multiplied by ``(K - 1)^2 / K`` (Efron
& Stein's inflation, as in RJafroc's ``FOM2ORVarComp``). The jackknife AUCs are computed in closed form from
each case's row or column sum of the Wilcoxon kernel, so one analysis costs one kernel evaluation.

Analyses (the formulas of RJafroc's ``StORAnalysis.R``: ``OR_RRRC``, ``OR_FRRC``, ``OR_RRFC``, and of the Iowa
OR-DBM MRMC 2.5 program; Obuchowski & Rockette 1995, Commun Stat Simul Comput 24:285; Hillis et al. 2005,
Stat Med 24:1579; Hillis 2007, Stat Med 26:596; Hillis, Berbaum & Metz 2008, Acad Radiol 15:647):

* RRRC (random readers and cases, the primary analysis): error term ``MS(T*R) + J * max(cov2 - cov3, 0)``,
  ``F = MS(T) / error term`` on ``(I - 1, ddf_H)`` degrees of freedom with Hillis' ``ddf_H = error term^2 /
  (MS(T*R)^2 / ((I - 1)(J - 1)))``; the CI of the difference is ``d +- t(ddf_H) sqrt(2 / J * error term)``.
* FRRC (fixed readers, random cases): error term ``var_error - cov1 + (J - 1) max(cov2 - cov3, 0)``,
  chi-square ``(I - 1) MS(T) / error term`` on ``I - 1`` df; normal CI.
* RRFC (random readers, fixed cases): error term ``MS(T*R)`` on ``(I - 1)(J - 1)`` df (the paired t test of the
  reader AUCs when ``I = 2``).

Variance components as RJafroc's ``UtilORVarComp``: ``var_TR = MS(T*R) - var_error + cov1 + max(cov2 - cov3, 0)``
(Hillis 2011, Eqn 9) and ``var_R = (MS(R) - var_TR - var_error + cov2 - (I - 1)(cov1 - cov3)) / I`` (Hillis
2006, Table 1); ANOVA estimates, which can be negative.

Validated against the Van Dyke et al. (1993) data set and the OR-DBM MRMC 2.5 output shipped with RJafroc
(Testing/data/mrmc/, Testing/test_mrmc.py). numpy and scipy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class ORComponents:
    """Obuchowski-Rockette mean squares of the reader AUCs and variance components (AUC^2 units).

    ``var_r``: reader variance; ``var_tr``: treatment-by-reader variance; ``cov1``/``cov2``/``cov3``: error
    covariances (same reader / same modality / neither); ``var_error``: error variance of one reader's AUC.
    """

    ms_t: float
    ms_r: float
    ms_tr: float
    var_r: float
    var_tr: float
    cov1: float
    cov2: float
    cov3: float
    var_error: float


@dataclass(frozen=True)
class DifferenceTest:
    """One analysis (RRRC, FRRC or RRFC) of ``difference = AUC(test) - AUC(reference)``, reader averaged.

    ``statistic`` is F (RRRC, RRFC; numerator df 1) or chi-square (FRRC; df 1); ``ddf`` its denominator degrees
    of freedom (None for FRRC: normal / chi-square reference). ``error_term``: the denominator mean square.
    ``std_err``, ``statistic``, ``p_value`` and the CI are None when the error term is not positive.
    """

    analysis: str
    difference: float
    error_term: float
    std_err: Optional[float]
    ddf: Optional[float]
    statistic: Optional[float]
    p_value: Optional[float]
    ci_low: Optional[float]
    ci_high: Optional[float]


@dataclass(frozen=True)
class ModalityAUC:
    """Reader-averaged AUC of one modality with the RRRC single-treatment CI (Hillis 2007 ``ddf_H_single``)."""

    modality: str
    auc: float
    std_err: float
    ddf: Optional[float]
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class MRMCResult:
    """The OR analysis of two modalities. ``reader_aucs[m][j]`` is reader ``readers[j]``'s AUC in modality
    ``modalities[m]`` (``modalities = (reference, test)``). ``rrrc`` and ``rrfc`` are None with one reader."""

    modalities: Tuple[str, str]
    readers: List[str]
    n_cases: int
    n_positive: int
    n_negative: int
    reader_aucs: List[List[float]]
    modality_aucs: List[ModalityAUC]
    components: ORComponents
    rrrc: Optional[DifferenceTest]
    frrc: DifferenceTest
    rrfc: Optional[DifferenceTest]
    alpha: float


def wilcoxon_jackknife(truth: np.ndarray, scores: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Empirical AUCs ``(..., )`` and their leave-one-case-out values ``(..., K)``.

    ``truth``: (K,) 0/1 labels; ``scores``: (..., K), higher = more likely diseased. Deleting diseased case ``i``
    leaves ``(total - row_i) / ((m - 1) n)``, deleting non-diseased case ``j`` leaves ``(total - col_j) / (m (n -
    1))``, where ``row``/``col`` are sums of the kernel ``psi = 1 (x > y), 1/2 (x = y), 0``. Needs m, n >= 2.
    """
    y = np.asarray(truth) == 1
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        raise ValueError(f"an MRMC analysis needs at least 2 diseased and 2 non-diseased cases (got {m} and {n})")
    pos, neg = scores[..., y], scores[..., ~y]
    diff = pos[..., :, None] - neg[..., None, :]
    psi = (diff > 0).astype(np.float64) + 0.5 * (diff == 0)
    rows, cols = psi.sum(axis=-1), psi.sum(axis=-2)
    total = rows.sum(axis=-1, keepdims=True)
    jackknife = np.empty(scores.shape, dtype=np.float64)
    jackknife[..., y] = (total - rows) / ((m - 1) * n)
    jackknife[..., ~y] = (total - cols) / (m * (n - 1))
    return total[..., 0] / (m * n), jackknife


def _covariances(jackknife: np.ndarray) -> np.ndarray:
    """(I, J, I, J) case-jackknife covariances of the AUCs: sample covariance times (K - 1)^2 / K."""
    k = jackknife.shape[-1]
    centred = jackknife - jackknife.mean(axis=-1, keepdims=True)
    return np.einsum("ijk,abk->ijab", centred, centred) * (k - 1) / k


def _or_covariances(cov: np.ndarray) -> Tuple[float, float, float, float]:
    """(var_error, cov1, cov2, cov3): means of the (I, J, I, J) covariances over the OR index patterns."""
    n_t, n_r = cov.shape[0], cov.shape[1]
    same_t = np.eye(n_t, dtype=bool)[:, None, :, None]
    same_r = np.eye(n_r, dtype=bool)[None, :, None, :]

    def mean(mask: np.ndarray) -> float:
        mask = np.broadcast_to(mask, cov.shape)
        return float(cov[mask].mean()) if mask.any() else 0.0

    return mean(same_t & same_r), mean(~same_t & same_r), mean(same_t & ~same_r), mean(~same_t & ~same_r)


def _t_interval(centre: float, std_err: float, ddf: Optional[float], alpha: float) -> Tuple[float, float]:
    """``centre +- q * std_err`` with q the t quantile on ``ddf`` df (normal when ``ddf`` is None)."""
    q = stats.norm.ppf(1 - alpha / 2) if ddf is None else stats.t.ppf(1 - alpha / 2, ddf)
    return float(centre - q * std_err), float(centre + q * std_err)


def _difference_test(
    analysis: str,
    difference: float,
    ms_t: float,
    error_term: float,
    ddf: Optional[float],
    n_readers: int,
    alpha: float,
) -> DifferenceTest:
    """F (t^2) test and CI of a two-modality difference for one error term; FRRC (``ddf`` None) is chi-square."""
    if not error_term > 0.0:
        return DifferenceTest(analysis, difference, error_term, None, ddf, None, None, None, None)
    std_err = math.sqrt(2.0 * error_term / n_readers)
    statistic = ms_t / error_term
    if ddf is None:
        p_value = float(stats.chi2.sf(statistic, 1))
    else:
        p_value = float(stats.f.sf(statistic, 1, ddf))
    low, high = _t_interval(difference, std_err, ddf, alpha)
    return DifferenceTest(analysis, difference, error_term, std_err, ddf, statistic, p_value, low, high)


def _hillis_ddf(error_term: float, ms: float, df_ms: int) -> Optional[float]:
    """Satterthwaite-type ``error_term^2 / (ms^2 / df_ms)``; None (infinite) when ``ms`` is 0."""
    return None if ms == 0.0 else error_term**2 / (ms**2 / df_ms)


def or_analysis(
    truth: Sequence[int],
    scores: np.ndarray,
    readers: Sequence[str],
    modalities: Tuple[str, str],
    alpha: float = 0.05,
) -> MRMCResult:
    """Obuchowski-Rockette analysis of ``scores`` (2, J, K): modality (reference, test) x reader x case.

    ``truth`` (K,) holds 0/1 per case; every reader read every case in both modalities. The reported difference
    is ``test - reference``. Raises ValueError for a wrong shape, non-finite scores or too few cases.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(truth)
    if s.ndim != 3 or s.shape[0] != 2 or s.shape[1] != len(readers) or s.shape[2] != y.size:
        raise ValueError(f"scores must have shape (2, {len(readers)}, {y.size}), got {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    n_t, n_r, n_c = s.shape
    aucs, jackknife = wilcoxon_jackknife(y, s)
    cov = _covariances(jackknife)
    var_error, cov1, cov2, cov3 = _or_covariances(cov)

    grand = aucs.mean()
    t_means, r_means = aucs.mean(axis=1), aucs.mean(axis=0)
    ms_t = n_r * float(((t_means - grand) ** 2).sum()) / (n_t - 1)
    ms_r = n_t * float(((r_means - grand) ** 2).sum()) / (n_r - 1) if n_r > 1 else 0.0
    residual = aucs - t_means[:, None] - r_means[None, :] + grand
    ms_tr = float((residual**2).sum()) / ((n_t - 1) * (n_r - 1)) if n_r > 1 else 0.0
    cov_gap = max(cov2 - cov3, 0.0)
    var_tr = ms_tr - var_error + cov1 + cov_gap
    var_r = (ms_r - var_tr - var_error + cov2 - (n_t - 1) * (cov1 - cov3)) / n_t
    components = ORComponents(ms_t, ms_r, ms_tr, var_r, var_tr, cov1, cov2, cov3, var_error)

    difference = float(t_means[1] - t_means[0])
    frrc = _difference_test("FRRC", difference, ms_t, var_error - cov1 + (n_r - 1) * cov_gap, None, n_r, alpha)
    rrrc = rrfc = None
    if n_r > 1:
        df_tr = (n_t - 1) * (n_r - 1)
        error = ms_tr + n_r * cov_gap
        rrrc = _difference_test("RRRC", difference, ms_t, error, _hillis_ddf(error, ms_tr, df_tr), n_r, alpha)
        rrfc = _difference_test("RRFC", difference, ms_t, ms_tr, float(df_tr), n_r, alpha)

    modality_aucs = []
    for t in range(n_t):
        _, _, cov2_t, _ = _or_covariances(cov[t : t + 1, :, t : t + 1, :])
        ms_r_t = float(aucs[t].var(ddof=1)) if n_r > 1 else 0.0
        error = ms_r_t + n_r * max(cov2_t, 0.0) if n_r > 1 else float(cov[t, 0, t, 0])
        ddf = _hillis_ddf(error, ms_r_t, n_r - 1) if n_r > 1 else None
        std_err = math.sqrt(max(error, 0.0) / n_r)
        low, high = _t_interval(float(t_means[t]), std_err, ddf, alpha)
        modality_aucs.append(ModalityAUC(modalities[t], float(t_means[t]), std_err, ddf, low, high))

    return MRMCResult(
        modalities=(modalities[0], modalities[1]),
        readers=list(readers),
        n_cases=n_c,
        n_positive=int((y == 1).sum()),
        n_negative=int((y != 1).sum()),
        reader_aucs=aucs.tolist(),
        modality_aucs=modality_aucs,
        components=components,
        rrrc=rrrc,
        frrc=frrc,
        rrfc=rrfc,
        alpha=alpha,
    )


@dataclass(frozen=True)
class McNemarResult:
    """Exact McNemar test of paired correct/incorrect calls. ``b``: correct only under the reference, ``c``:
    correct only under the test modality; ``p_value``: two-sided exact binomial p of ``b`` in ``b + c`` at 1/2
    (1.0 when there are no discordant pairs)."""

    n_pairs: int
    b: int
    c: int
    p_value: float


def mcnemar_exact(correct_reference: Sequence[bool], correct_test: Sequence[bool]) -> McNemarResult:
    """Exact McNemar test (scipy's ``binomtest``, the same p as statsmodels' ``mcnemar(exact=True)``)."""
    a, t = np.asarray(correct_reference, dtype=bool), np.asarray(correct_test, dtype=bool)
    if a.shape != t.shape or a.ndim != 1:
        raise ValueError("the two lists of calls must be 1-D and of the same length")
    b, c = int(np.sum(a & ~t)), int(np.sum(~a & t))
    p_value = float(stats.binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0
    return McNemarResult(n_pairs=int(a.size), b=b, c=c, p_value=min(p_value, 1.0))


def binomial_p(successes: int, n: int, p: float = 0.5) -> float:
    """Two-sided exact binomial p of ``successes`` in ``n`` against proportion ``p`` (scipy ``binomtest``)."""
    return float(stats.binomtest(int(successes), int(n), p).pvalue)
