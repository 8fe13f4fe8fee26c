"""Known answers for the clinical statistics (x2ct.evaluate.classifier_stats): fast DeLong against a brute-force
DeLong 1988 and scikit-learn (ties included), hand-computed DeLong/Youden/Wilson answers, the ROC PNG, and the
optional-import guard of the eval extra."""

from __future__ import annotations

import importlib
import math
import sys

import matplotlib
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from x2ct.errors import MissingExtraError
from x2ct.evaluate import classifier_stats as cs

Z95 = 1.959963984540054  # standard normal 0.975 quantile


def _brute_delong(y, *scores):
    """DeLong et al. 1988 directly: psi(X, Y) = 1 if X > Y, 1/2 if tied, 0 else over all m * n pairs.

    Returns the AUCs (K,) and the covariance S10 / m + S01 / n (K, K) of the structural components.
    """
    y = np.asarray(y, dtype=bool)
    v10, v01 = [], []
    for s in scores:
        s = np.asarray(s, dtype=float)
        x, z = s[y][:, None], s[~y][None, :]
        psi = (x > z) + 0.5 * (x == z)
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    v10, v01 = np.array(v10), np.array(v01)
    cov = np.atleast_2d(np.cov(v10, ddof=1)) / v10.shape[1] + np.atleast_2d(np.cov(v01, ddof=1)) / v01.shape[1]
    return v10.mean(axis=1), cov


def _tied_data(seed: int, m: int = 23, n: int = 31):
    """Labels and two correlated score sets rounded to steps of 0.5 (many ties within and across classes)."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.r_[np.ones(m, int), np.zeros(n, int)])
    latent = rng.normal(size=y.size)
    a = np.round(2 * (0.9 * y + latent)) / 2
    b = np.round(2 * (0.5 * y + 0.7 * latent + 0.7 * rng.normal(size=y.size))) / 2
    return y, a, b


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_fast_delong_matches_brute_force_and_sklearn_with_ties(seed):
    y, a, b = _tied_data(seed)
    for s in (a, b):  # the data really has ties, within and across the classes
        assert len(np.unique(s)) < y.size / 3
        assert np.intersect1d(s[y == 1], s[y == 0]).size >= 3
    aucs, cov = _brute_delong(y, a, b)

    single = cs.delong_auc(y, a)
    assert single.auc == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert single.auc == pytest.approx(aucs[0], abs=1e-12)
    assert single.variance == pytest.approx(cov[0, 0], rel=1e-10)
    assert (single.n_pos, single.n_neg) == (23, 31)

    pair = cs.delong_compare(y, a, b)
    assert pair.auc_a == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert pair.auc_b == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    assert pair.difference == pytest.approx(aucs[0] - aucs[1], abs=1e-12)
    se = math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert pair.z == pytest.approx((aucs[0] - aucs[1]) / se, rel=1e-9)
    assert pair.p_value == pytest.approx(2 * (1 - 0.5 * (1 + math.erf(abs(pair.z) / math.sqrt(2)))), abs=1e-12)
    assert pair.ci_low == pytest.approx(max(pair.difference - Z95 * se, -1), rel=1e-9)
    assert pair.ci_high == pytest.approx(min(pair.difference + Z95 * se, 1), rel=1e-9)
    assert (pair.ci_low > 0 or pair.ci_high < 0) == (pair.p_value < 0.05)


def test_delong_hand_example():
    # Positives X = (4, 3, 1), negatives Y = (2, 3) (one cross-class tie: 3 vs 3 counts 1/2).
    # V10 (per positive, share of negatives below): 4 -> 2/2 = 1, 3 -> (1 + 1/2)/2 = 3/4, 1 -> 0.
    # V01 (per negative, share of positives above): 2 -> 2/3, 3 -> (1 + 1/2)/3 = 1/2.
    # AUC = mean V10 = 7/12. S10 = ((5/12)^2 + (2/12)^2 + (7/12)^2) / 2 = 13/48; S01 = 2 (1/12)^2 / 1 = 1/72.
    # Var = S10/m + S01/n = 13/144 + 1/144 = 7/72 (m = 3 positives, n = 2 negatives; swapping them gives 0.140).
    y = [1, 0, 1, 0, 1]
    s = [4.0, 2.0, 3.0, 3.0, 1.0]
    result = cs.delong_auc(y, s)
    assert result.auc == pytest.approx(7 / 12, abs=1e-12)
    assert result.variance == pytest.approx(7 / 72, abs=1e-12)
    # Declared CI: logit scale, expit(logit(AUC) +- z se / (AUC (1 - AUC))).
    half = Z95 * math.sqrt(7 / 72) / (7 / 12 * 5 / 12)
    expected = [1 / (1 + math.exp(-(math.log(7 / 5) + sign * half))) for sign in (-1, 1)]
    assert [result.ci_low, result.ci_high] == pytest.approx(expected, abs=1e-12)
    assert 0 < result.ci_low < result.auc < result.ci_high < 1
    narrower = cs.delong_auc(y, s, alpha=0.2)
    assert result.ci_low < narrower.ci_low < narrower.ci_high < result.ci_high


def test_published_hanley_mcneil_ratings():
    # Hanley & McNeil 1982 (Radiology 143:29), Table 1: 5-point CT ratings of 58 normal and 51 abnormal cases;
    # published area under the (trapezoidal) ROC curve 0.893.
    normal = np.repeat([1, 2, 3, 4, 5], [33, 6, 6, 11, 2])
    abnormal = np.repeat([1, 2, 3, 4, 5], [3, 2, 2, 11, 33])
    result = cs.delong_auc(np.r_[np.zeros(58), np.ones(51)], np.r_[normal, abnormal])
    assert round(result.auc, 3) == 0.893
    assert result.ci_low < 0.893 < result.ci_high


def test_delong_compare_hand_example():
    # y = (1, 1, 0, 0); a = (3, 2 | 1, 2): V10a = (1, 3/4), V01a = (1, 3/4), AUC_a = 7/8.
    # b = (2, 1 | 2, 0): V10b = (3/4, 1/2), V01b = (1/4, 1), AUC_b = 5/8.
    # V10 differences are constant (1/4, 1/4) -> no contribution; V01 differences (3/4, -1/4): sample var 1/2,
    # over n = 2 -> Var(diff) = 1/4, se 1/2, z = (1/4)/(1/2) = 1/2, p = 2 (1 - Phi(0.5)) = 0.617075.
    # CI = 1/4 +- 1.96 * 1/2 = (-0.730, 1.230) -> upper bound clipped to 1.
    result = cs.delong_compare([1, 1, 0, 0], [3, 2, 1, 2], [2, 1, 2, 0])
    assert (result.auc_a, result.auc_b, result.difference) == pytest.approx((7 / 8, 5 / 8, 1 / 4), abs=1e-12)
    assert result.z == pytest.approx(0.5, abs=1e-12)
    assert result.p_value == pytest.approx(0.6170750774519738, abs=1e-12)
    assert result.ci_low == pytest.approx(0.25 - Z95 * 0.5, abs=1e-12)
    assert result.ci_high == 1.0


def test_model_compared_with_itself():
    y, a, _ = _tied_data(7)
    result = cs.delong_compare(y, a, a.copy())
    assert result.difference == 0.0
    assert (result.z, result.p_value) == (0.0, 1.0)
    assert (result.ci_low, result.ci_high) == (0.0, 0.0)


def test_perfect_separation_has_zero_width_ci():
    result = cs.delong_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert (result.auc, result.variance, result.ci_low, result.ci_high) == (1.0, 0.0, 1.0, 1.0)
    # Perfect vs all-tied: variance of the difference is 0 but the difference is not -> z = inf, p = 0.
    versus_tied = cs.delong_compare([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], [0.5] * 4)
    assert versus_tied.difference == 0.5
    assert (versus_tied.z, versus_tied.p_value) == (math.inf, 0.0)


@pytest.mark.parametrize(
    ("y", "scores", "message"),
    [
        ([0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4], "0 positive"),
        ([1, 1, 1], [0.1, 0.2, 0.3], "0 negative"),
        ([1, 0, 0, 0], [0.1, 0.2, 0.3, 0.4], "at least 2 positive"),
        ([1, 0, 1, 0], [0.1, float("nan"), 0.3, 0.4], "finite"),
        ([1, 0, 1, 0], [0.1, 0.2, 0.3], "3 values but y_true has 4"),
        ([1, 0, 2, 0], [0.1, 0.2, 0.3, 0.4], "only 0 and 1"),
    ],
)
def test_delong_rejects_degenerate_input(y, scores, message):
    with pytest.raises(ValueError, match=message):
        cs.delong_auc(y, scores)
    with pytest.raises(ValueError, match=message):
        cs.delong_compare(y, scores, scores)


def test_youden_known_answer():
    # Negatives 0.1, 0.2, 0.6; positives 0.3, 0.5, 0.7, 0.8. J = TP/4 - FP/3 for calls score >= t:
    # t=0.8: 1/4; 0.7: 1/2; 0.6: 1/2 - 1/3; 0.5: 3/4 - 1/3; 0.3: 1 - 1/3 = 2/3 (max); 0.2: 1 - 2/3; 0.1: 0.
    assert cs.youden_threshold([0, 0, 0, 1, 1, 1, 1], [0.1, 0.2, 0.6, 0.3, 0.5, 0.7, 0.8]) == 0.3


def test_youden_ties():
    # Tied J: negatives 0.1, 0.4, 0.8, positives 0.35, 0.7, 0.9 give J = 1/3 at t = 0.9, 0.7 and 0.35
    # (in floating point 1 - 2/3 > 1/3, so only an exact comparison ties them); the highest threshold wins.
    assert cs.youden_threshold([0, 0, 0, 1, 1, 1], [0.1, 0.4, 0.8, 0.35, 0.7, 0.9]) == 0.9
    # Tied scores: at t = 0.5 both positives at 0.5 and the negative at 0.5 are called: J = 3/3 - 1/3 = 2/3 (max).
    assert cs.youden_threshold([0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.5, 0.5, 0.5, 0.9]) == 0.5


def test_youden_never_returns_infinity():
    # All scores tied: J = 0 at +inf and at 0.5; the +inf of roc_curve must not come back.
    assert cs.youden_threshold([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    # Inverted classifier: J < 0 everywhere except calling everything positive (J = 0) -> the lowest score.
    assert cs.youden_threshold([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 0.1
    with pytest.raises(ValueError, match="0 negative"):
        cs.youden_threshold([1, 1], [0.1, 0.2])


def _wilson_closed_form(x: int, n: int, z: float):
    centre = (x + z * z / 2) / (n + z * z)
    half = z / (n + z * z) * math.sqrt(x * (n - x) / n + z * z / 4)
    return centre - half, centre + half


@pytest.mark.parametrize(("x", "n"), [(0, 10), (5, 10), (10, 10), (3, 7)])
def test_wilson_closed_form(x, n):
    assert cs.wilson_interval(x, n) == pytest.approx(_wilson_closed_form(x, n, Z95), abs=1e-12)
    assert cs.wilson_interval(x, n, alpha=0.1) == pytest.approx(_wilson_closed_form(x, n, 1.6448536269514722))


def test_wilson_rejects_bad_counts():
    for x, n in [(0, 0), (11, 10), (-1, 10), (2.5, 10)]:
        with pytest.raises(ValueError):
            cs.wilson_interval(x, n)


def test_binary_metrics_hand_example():
    # Threshold 0.5, calls score >= 0.5: cases (label, score) (0,.1) TN, (0,.2) TN, (0,.5) FP, (1,.5) TP,
    # (1,.5) TP, (1,.9) TP -> TP 3, FP 1, TN 2, FN 0.
    y, s = [0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.5, 0.5, 0.5, 0.9]
    result = cs.binary_metrics(y, s, 0.5)
    expected = {"accuracy": (5, 6), "sensitivity": (3, 3), "specificity": (2, 3), "ppv": (3, 4), "npv": (2, 2)}
    assert list(result) == list(expected)
    for name, (successes, n) in expected.items():
        entry = result[name]
        assert (entry["successes"], entry["n"]) == (successes, n)
        assert entry["value"] == pytest.approx(successes / n)
        assert (entry["ci_low"], entry["ci_high"]) == pytest.approx(_wilson_closed_form(successes, n, Z95))


def test_binary_metrics_empty_denominator_is_none():
    # Threshold above every score: no positive calls -> PPV has n = 0; sensitivity is 0 of 3.
    result = cs.binary_metrics([0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.5, 0.5, 0.5, 0.9], 0.95)
    assert result["ppv"] == {"value": None, "ci_low": None, "ci_high": None, "successes": 0, "n": 0}
    assert (result["sensitivity"]["successes"], result["sensitivity"]["n"]) == (0, 3)
    assert result["npv"]["value"] == pytest.approx(3 / 6)


def test_roc_png_writes_deterministic_png(tmp_path):
    y, a, b = _tied_data(11)
    rc_before = dict(matplotlib.rcParams)
    pyplot_before = "matplotlib.pyplot" in sys.modules
    target = tmp_path / "roc.png"
    cs.roc_png({"model A": (y, a), "model B": (y, b)}, target, "ROC test")
    first = target.read_bytes()
    cs.roc_png({"model A": (y, a), "model B": (y, b)}, target, "ROC test")
    assert target.read_bytes() == first
    with Image.open(target) as image:
        assert (image.format, image.size) == ("PNG", (600, 600))
        assert "Software" not in image.info
    assert [p.name for p in tmp_path.iterdir()] == ["roc.png"]  # no temporary left behind
    assert dict(matplotlib.rcParams) == rc_before
    assert ("matplotlib.pyplot" in sys.modules) == pyplot_before  # drawn without pyplot


def _hide(monkeypatch, package: str) -> None:
    """Make ``package`` (and its submodules) unimportable for the duration of the test."""
    for name in list(sys.modules):
        if name.startswith(package + "."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, package, None)


def test_missing_eval_extra_gives_clear_error(monkeypatch, tmp_path):
    y, a, _ = _tied_data(3)
    for package in ("sklearn", "matplotlib"):
        _hide(monkeypatch, package)
    # The module imports, and DeLong and the Wilson interval work with numpy only.
    import x2ct.evaluate as evaluate

    monkeypatch.setattr(evaluate, "classifier_stats", cs)
    monkeypatch.delitem(sys.modules, cs.__name__)
    fresh = importlib.import_module(cs.__name__)
    assert fresh is not cs
    assert fresh.delong_auc(y, a).auc == pytest.approx(cs.delong_auc(y, a).auc)
    assert fresh.wilson_interval(3, 10) == cs.wilson_interval(3, 10)

    expected = r"^\w+ needs the eval extra: pip install 'x2ct\[eval\]' \(cannot import "
    with pytest.raises(MissingExtraError, match=expected + r"sklearn\.metrics") as error:
        fresh.youden_threshold(y, a)
    assert "\n" not in str(error.value)
    with pytest.raises(MissingExtraError, match=expected + r"sklearn\.metrics"):
        fresh.roc_png({"a": (y, a)}, tmp_path / "roc.png", "t")
    assert not (tmp_path / "roc.png").exists()


def test_missing_matplotlib_only(monkeypatch, tmp_path):
    y, a, _ = _tied_data(3)
    _hide(monkeypatch, "matplotlib")
    with pytest.raises(MissingExtraError, match=r"^roc_png needs the eval extra: .*cannot import matplotlib"):
        cs.roc_png({"a": (y, a)}, tmp_path / "roc.png", "t")
