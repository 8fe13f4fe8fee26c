"""Clinical statistics of a binary classifier: AUC with a DeLong CI, paired DeLong test, Youden operating point,
accuracy / sensitivity / specificity / PPV / NPV with Wilson CIs, and the ROC plot.

Conventions shared by every function:

* ``y_true`` is a 1-D array of 0/1 labels (1 = disease present); ``scores`` a 1-D array of finite scores of the
  same length, higher = more likely positive (probabilities or logits; only their order matters for the AUC).
* A case is called positive when ``score >= threshold``.
* ``alpha`` is the two-sided error rate: ``alpha = 0.05`` gives 95 % intervals.

DeLong (DeLong, DeLong & Clarke-Pearson 1988, Biometrics 44:837) is computed with the fast algorithm of Sun & Xu
(2014, IEEE Signal Processing Letters 21:1389, "Fast implementation of DeLong's algorithm for comparing the areas
under correlated receiver operating characteristic curves"): the structural components V10 (one per positive case)
and V01 (one per negative case) come from midranks, in O(n log n) instead of the O(m n) pairwise kernel. A tie
between a positive and a negative score counts 1/2, so the AUC equals the Mann-Whitney statistic and
scikit-learn's ``roc_auc_score``. It is written here with numpy because no maintained Python package provides it
(pROC, the reference implementation, is R only; scikit-learn and statsmodels have no DeLong variance). The DeLong
functions need numpy only, and so does the Wilson interval (a closed form; it is also what
``x2ct evaluate-generator``'s lesion metrics use, which must run without the extra).

Youden's threshold and the ROC plot need the optional ``eval`` extra (scikit-learn, matplotlib), imported when they
are called, so that importing this module never needs it; a missing package raises a one-line
:class:`x2ct.errors.MissingExtraError`.
"""

from __future__ import annotations

import importlib
import math
import os
from dataclasses import dataclass
from statistics import NormalDist
from types import ModuleType
from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np

from ..atomic import atomic_path
from ..errors import MissingExtraError

PathLike = Union[str, "os.PathLike[str]"]

METRIC_NAMES: Tuple[str, ...] = ("accuracy", "sensitivity", "specificity", "ppv", "npv")
"""Keys of :func:`binary_metrics`, in report order."""


@dataclass(frozen=True)
class AUCResult:
    """AUC of one classifier with its DeLong variance and a ``1 - alpha`` CI (logit scale, see :func:`delong_auc`)."""

    auc: float
    variance: float
    ci_low: float
    ci_high: float
    n_pos: int
    n_neg: int


@dataclass(frozen=True)
class AUCComparison:
    """Paired DeLong comparison of two classifiers on the same cases; ``difference = auc_a - auc_b``.

    ``ci_low``/``ci_high`` bound the difference (normal approximation, clipped to [-1, 1]); ``z`` is the difference
    over its DeLong standard error and ``p_value`` the two-sided p-value of H0: equal AUCs.
    """

    auc_a: float
    auc_b: float
    difference: float
    ci_low: float
    ci_high: float
    z: float
    p_value: float


def _require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` from the optional eval extra, or raise :class:`x2ct.errors.MissingExtraError`."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError("eval", purpose, [module]) from None


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return alpha


def _z_quantile(alpha: float) -> float:
    """Standard normal quantile for a two-sided ``1 - alpha`` interval (1.95996... for alpha = 0.05)."""
    return NormalDist().inv_cdf(1.0 - _check_alpha(alpha) / 2.0)


def _labels(y_true) -> np.ndarray:
    """``y_true`` as a 1-D bool array (True = positive); anything but 0/1 values is a ValueError."""
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D, got shape {y.shape}")
    if y.dtype == bool:
        return y
    if y.dtype.kind not in "biuf" or not np.all((y == 0) | (y == 1)):
        raise ValueError("y_true must contain only 0 and 1")
    return y == 1


def _scores(scores, n: int, name: str = "scores") -> np.ndarray:
    """``scores`` as a 1-D float64 array of length ``n`` with finite values only."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {s.shape}")
    if s.shape[0] != n:
        raise ValueError(f"{name} has {s.shape[0]} values but y_true has {n}")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{name} must be finite (found NaN or infinity)")
    return s


def _check_classes(y: np.ndarray, minimum: int, purpose: str) -> Tuple[int, int]:
    """Number of positives and negatives; a ValueError when either is below ``minimum``."""
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos < minimum or n_neg < minimum:
        raise ValueError(
            f"{purpose} needs at least {minimum} positive and {minimum} negative cases "
            f"(got {n_pos} positive, {n_neg} negative)"
        )
    return n_pos, n_neg


def _midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` with ties given the mean of the ranks they span (O(n log n), via a sort)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last_rank = np.cumsum(counts)
    return (last_rank - (counts - 1) / 2.0)[inverse.reshape(-1)]


def _structural_components(y: np.ndarray, scores: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Sun & Xu's midrank form of DeLong's structural components for K classifiers.

    ``scores`` is (K, N). Returns V10 (K, m): for each positive, the fraction of negatives it outscores (ties 1/2),
    and V01 (K, n): for each negative, the fraction of positives that outscore it (ties 1/2). Each row of either
    averages to that classifier's AUC.
    """
    m = int(y.sum())
    n = y.size - m
    v10 = np.empty((scores.shape[0], m))
    v01 = np.empty((scores.shape[0], n))
    for k, row in enumerate(scores):
        positives, negatives = row[y], row[~y]
        combined = _midranks(np.concatenate([positives, negatives]))
        # Rank among all cases minus rank among its own class = negatives below (+ 1/2 per tie with a negative).
        v10[k] = (combined[:m] - _midranks(positives)) / n
        v01[k] = 1.0 - (combined[m:] - _midranks(negatives)) / m
    return v10, v01


def _delong(y_true, *scores) -> Tuple[np.ndarray, np.ndarray, int, int]:
    """AUCs (K,) and their DeLong covariance matrix (K, K) = S10 / m + S01 / n (sample covariances, ddof 1)."""
    y = _labels(y_true)
    n_pos, n_neg = _check_classes(y, 2, "a DeLong AUC variance")
    names = ["scores"] if len(scores) == 1 else [f"scores_{c}" for c in "ab"]
    matrix = np.stack([_scores(s, y.size, name) for s, name in zip(scores, names)])
    v10, v01 = _structural_components(y, matrix)
    covariance = np.atleast_2d(np.cov(v10)) / n_pos + np.atleast_2d(np.cov(v01)) / n_neg
    return v10.mean(axis=1), covariance, n_pos, n_neg


def delong_auc(y_true, scores, alpha: float = 0.05) -> AUCResult:
    """AUC with its DeLong variance and a ``1 - alpha`` confidence interval.

    The interval is computed on the logit scale and transformed back: ``expit(logit(AUC) +- z * se / (AUC (1 -
    AUC)))`` (delta method). Unlike ``AUC +- z * se`` clipped to [0, 1] (what pROC's ``ci.auc`` reports), it stays
    inside (0, 1) without clipping and is asymmetric like the AUC's sampling distribution near 1, which gives better
    coverage for the small test sets and high AUCs this project works with (Pepe 2003, The Statistical Evaluation of
    Medical Tests for Classification and Prediction, on transformed CIs for ROC summaries). It is 0 wide when the
    DeLong variance is 0, which happens when the AUC is exactly 0 or 1 (and when every score is tied): DeLong has
    no uncertainty to offer then, so report ``n_pos``/``n_neg`` alongside.

    Raises ValueError for fewer than 2 positive or 2 negative cases (the structural components' sample variances
    need two of each), NaN or infinite scores, a length mismatch, or labels other than 0/1.
    """
    aucs, covariance, n_pos, n_neg = _delong(y_true, scores)
    auc, variance = float(aucs[0]), max(float(covariance[0, 0]), 0.0)
    z = _z_quantile(alpha)
    if variance == 0.0 or auc in (0.0, 1.0):
        low = high = auc
    else:
        centre = math.log(auc / (1.0 - auc))
        half = z * math.sqrt(variance) / (auc * (1.0 - auc))
        low, high = (1.0 / (1.0 + math.exp(-(centre + sign * half))) for sign in (-1.0, 1.0))
    return AUCResult(auc=auc, variance=variance, ci_low=low, ci_high=high, n_pos=n_pos, n_neg=n_neg)


def delong_compare(y_true, scores_a, scores_b, alpha: float = 0.05) -> AUCComparison:
    """Paired DeLong test of two classifiers' AUCs on the same cases (``scores_a[i]``, ``scores_b[i]`` = case i).

    ``Var(AUC_a - AUC_b) = Var_a + Var_b - 2 Cov_ab`` with the covariance taken from the two classifiers'
    structural components; ``z = difference / se`` and ``p = erfc(|z| / sqrt 2)`` (two-sided); the CI of the
    difference is ``difference +- z_(1-alpha/2) * se`` clipped to [-1, 1] (an AUC difference cannot leave it, and
    clipping never moves a bound across 0, so the CI excludes 0 exactly when ``p < alpha``).

    A variance of 0 (e.g. a model compared with itself, or two models whose calls never differ in rank) gives
    ``z = 0, p = 1`` when the difference is 0, and ``z = +-inf, p = 0`` otherwise. Errors as :func:`delong_auc`.
    """
    aucs, covariance, _, _ = _delong(y_true, scores_a, scores_b)
    difference = float(aucs[0] - aucs[1])
    variance = max(float(covariance[0, 0] + covariance[1, 1] - 2.0 * covariance[0, 1]), 0.0)
    half = _z_quantile(alpha) * math.sqrt(variance)
    if variance > 0.0:
        z = difference / math.sqrt(variance)
    else:
        z = 0.0 if difference == 0.0 else math.copysign(math.inf, difference)
    return AUCComparison(
        auc_a=float(aucs[0]),
        auc_b=float(aucs[1]),
        difference=difference,
        ci_low=max(difference - half, -1.0),
        ci_high=min(difference + half, 1.0),
        z=z,
        p_value=math.erfc(abs(z) / math.sqrt(2.0)),
    )


def youden_threshold(y_true, scores) -> float:
    """Score threshold maximising Youden's J = sensitivity + specificity - 1, for calls ``score >= threshold``.

    Candidates are the distinct observed scores (scikit-learn's ``roc_curve`` with ``drop_intermediate=False``);
    its first threshold (+inf in scikit-learn >= 1.3, max + 1 before), at which nothing is called positive, is
    never returned, so the result is always one of the scores. J is compared exactly on integer counts
    (``TP * n_neg - FP * n_pos``), so equal J values tie regardless of rounding, and a tie goes to the HIGHEST
    threshold (fewest positive calls, the more specific operating point). Choose it on validation data and freeze
    it for test. Raises ValueError without at least one positive and one negative case.
    """
    y = _labels(y_true)
    s = _scores(scores, y.size)
    n_pos, n_neg = _check_classes(y, 1, "a Youden threshold")
    metrics = _require("sklearn.metrics", "youden_threshold")
    fpr, tpr, thresholds = metrics.roc_curve(y, s, drop_intermediate=False)
    true_pos = np.rint(tpr[1:] * n_pos).astype(np.int64)
    false_pos = np.rint(fpr[1:] * n_neg).astype(np.int64)
    # Thresholds decrease along the curve, so argmax's first maximum is the highest tied threshold.
    return float(thresholds[1:][int(np.argmax(true_pos * n_neg - false_pos * n_pos))])


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> Tuple[float, float]:
    """Wilson score interval ``(low, high)`` for a proportion ``successes / n`` (Wilson 1927), clipped to [0, 1].

    With p = successes / n and z the normal quantile of ``1 - alpha/2``: centre (p + z²/2n) / (1 + z²/n),
    half-width z·sqrt(p(1 - p)/n + z²/4n²) / (1 + z²/n); the same numbers as statsmodels'
    ``proportion_confint(method="wilson")``. Raises ValueError when ``n < 1`` or ``successes`` is not an integer
    in [0, n].
    """
    if int(successes) != successes or int(n) != n:
        raise ValueError(f"successes and n must be integers, got {successes} and {n}")
    successes, n = int(successes), int(n)
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    z2 = _z_quantile(alpha) ** 2
    p = successes / n
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denominator
    half = math.sqrt(z2 * (p * (1.0 - p) / n + z2 / (4.0 * n * n))) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def binary_metrics(y_true, scores, threshold: float, alpha: float = 0.05) -> Dict[str, Dict[str, Optional[float]]]:
    """Accuracy, sensitivity, specificity, PPV and NPV of the calls ``score >= threshold``, with Wilson CIs.

    Each key of :data:`METRIC_NAMES` maps to ``{"value", "ci_low", "ci_high", "successes", "n"}``: the proportion
    ``successes / n`` (accuracy: correct calls / cases; sensitivity: TP / positives; specificity: TN / negatives;
    PPV: TP / positive calls; NPV: TN / negative calls) and its Wilson interval. ``successes`` and ``n`` are ints.
    When ``n`` is 0 (e.g. no positive calls for the PPV) the value and both bounds are None.
    """
    y = _labels(y_true)
    s = _scores(scores, y.size)
    threshold = float(threshold)
    if math.isnan(threshold):
        raise ValueError("threshold must not be NaN")
    _check_alpha(alpha)
    called = s >= threshold
    tp, fp = int(np.sum(called & y)), int(np.sum(called & ~y))
    fn, tn = int(np.sum(~called & y)), int(np.sum(~called & ~y))
    counts = {
        "accuracy": (tp + tn, y.size),
        "sensitivity": (tp, tp + fn),
        "specificity": (tn, tn + fp),
        "ppv": (tp, tp + fp),
        "npv": (tn, tn + fn),
    }
    result: Dict[str, Dict[str, Optional[float]]] = {}
    for name in METRIC_NAMES:
        successes, n = counts[name]
        low, high = wilson_interval(successes, n, alpha) if n else (None, None)
        result[name] = {
            "value": successes / n if n else None,
            "ci_low": low,
            "ci_high": high,
            "successes": successes,
            "n": n,
        }
    return result


def roc_png(curves: Mapping[str, Tuple[object, object]], path: PathLike, title: str) -> None:
    """Write a ROC plot (PNG, 600 x 600 pixels) of one or more classifiers, atomically.

    ``curves`` maps a legend name to ``(y_true, scores)``; the legend gives each AUC with its 95 % DeLong CI
    (:func:`delong_auc`). x axis: 1 - specificity (false-positive rate); y axis: sensitivity. Drawn on a private
    Agg canvas with matplotlib's default style (no pyplot, no global backend or rcParams change), and written
    without a software tag, so the same inputs give the same bytes with a given matplotlib version.
    """
    if not curves:
        raise ValueError("roc_png needs at least one curve")
    metrics = _require("sklearn.metrics", "roc_png")
    backend_agg = _require("matplotlib.backends.backend_agg", "roc_png")
    figure_module = _require("matplotlib.figure", "roc_png")
    style = _require("matplotlib.style", "roc_png")
    with style.context("default"):
        figure = figure_module.Figure(figsize=(6.0, 6.0), dpi=100)
        backend_agg.FigureCanvasAgg(figure)
        axes = figure.add_subplot(1, 1, 1)
        axes.plot([0.0, 1.0], [0.0, 1.0], linestyle="--", color="0.6", linewidth=1.0, label="chance")
        for name, (y_true, scores) in curves.items():
            auc = delong_auc(y_true, scores)
            fpr, tpr, _ = metrics.roc_curve(_labels(y_true), np.asarray(scores, dtype=np.float64))
            axes.plot(fpr, tpr, linewidth=1.5, label=f"{name}: AUC {auc.auc:.3f} [{auc.ci_low:.3f}, {auc.ci_high:.3f}]")
        axes.set_xlim(0.0, 1.0)
        axes.set_ylim(0.0, 1.0)
        axes.set_aspect("equal")
        axes.set_xlabel("1 - specificity (false-positive rate)")
        axes.set_ylabel("sensitivity (true-positive rate)")
        axes.set_title(title)
        axes.legend(loc="lower right", fontsize="small", title="AUC [95% DeLong CI]", title_fontsize="small")
        figure.tight_layout()
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", metadata={"Software": None})
