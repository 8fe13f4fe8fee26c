"""x2ct.evaluate.mrmc: the Obuchowski-Rockette MRMC analysis against a published data set and its published
results, the closed-form jackknife against brute force, and the exact McNemar / binomial tests.

Published reference: the Van Dyke et al. (1993) data (RJafroc's ``dataset02``, shipped as
``inst/extdata/RocData.csv``) analysed by the University of Iowa's OR-DBM MRMC 2.5 (trapezoidal AUC, jackknife
covariances), whose output RJafroc keeps as ``inst/obumrm2/VanDyke-traparea-jackknife-obuch-anova.txt``. Both
files are in Testing/data/mrmc/ (see PROVENANCE.md there); every number below is copied from that output.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from statsmodels.stats.contingency_tables import mcnemar

from x2ct.evaluate.mrmc import binomial_p, mcnemar_exact, or_analysis, wilcoxon_jackknife

DATA = Path(__file__).resolve().parent / "data" / "mrmc"


def van_dyke():
    """(truth (114,), scores (2, 5, 114)) with modality order (treatment "2", treatment "1") of the published
    output, so that the difference test - reference is its "1 - 2"."""
    with open(DATA / "VanDyke_RocData.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    cases = sorted({int(r["case"]) for r in rows})
    index = {c: k for k, c in enumerate(cases)}
    truth = np.zeros(len(cases), dtype=int)
    scores = np.full((2, 5, len(cases)), np.nan)
    for r in rows:
        k = index[int(r["case"])]
        truth[k] = int(r["truth"])
        scores[1 - int(r["treatment"]), int(r["reader"]), k] = float(r["rating"])
    assert not np.isnan(scores).any()
    return truth, scores


def test_van_dyke_matches_the_published_or_dbm_mrmc_output():
    truth, scores = van_dyke()
    result = or_analysis(truth, scores, ["1", "2", "3", "4", "5"], ("trt2", "trt1"))
    assert (result.n_cases, result.n_positive, result.n_negative) == (114, 45, 69)
    # TREATMENT x READER AUC ESTIMATES (rows: reader; columns: treatment 1, 2)
    published_aucs = [
        [0.91964573, 0.94782609],
        [0.85877617, 0.90531401],
        [0.90386473, 0.92173913],
        [0.97310789, 0.99935588],
        [0.82979066, 0.92995169],
    ]
    np.testing.assert_allclose(np.array(result.reader_aucs)[::-1].T, published_aucs, atol=5e-9)
    c = result.components
    assert c.ms_t == pytest.approx(0.00479617, abs=5e-9)
    assert c.ms_r == pytest.approx(0.00383620, abs=5e-9)
    assert c.ms_tr == pytest.approx(0.00055103, abs=5e-9)
    assert c.var_r == pytest.approx(0.00153500, abs=5e-9)
    assert c.var_tr == pytest.approx(0.00020040, abs=5e-9)
    assert c.cov1 == pytest.approx(0.00034661, abs=5e-9)
    assert c.cov2 == pytest.approx(0.00034407, abs=5e-9)
    assert c.cov3 == pytest.approx(0.00023903, abs=5e-9)
    assert c.var_error == pytest.approx(0.00080229, abs=5e-9)

    rrrc = result.rrrc  # Analysis 1: random readers and random cases
    assert rrrc.difference == pytest.approx(-0.04380032, abs=5e-9)
    assert rrrc.error_term == pytest.approx(0.00107626, abs=5e-9)
    assert rrrc.statistic == pytest.approx(4.46, abs=5e-3)
    assert rrrc.ddf == pytest.approx(15.26, abs=5e-3)
    assert rrrc.p_value == pytest.approx(0.0517, abs=5e-5)
    assert rrrc.std_err == pytest.approx(0.02075, abs=5e-6)
    assert (rrrc.ci_low, rrrc.ci_high) == (pytest.approx(-0.08796, abs=5e-6), pytest.approx(0.00036, abs=5e-6))
    single = {a.modality: a for a in result.modality_aucs}  # part (c): single-treatment CIs
    assert single["trt1"].auc == pytest.approx(0.89703704, abs=5e-9)
    assert single["trt1"].std_err == pytest.approx(0.03317360, abs=5e-9)
    assert single["trt1"].ddf == pytest.approx(12.74, abs=5e-3)
    assert (single["trt1"].ci_low, single["trt1"].ci_high) == (pytest.approx(0.82522360, abs=5e-8),
                                                               pytest.approx(0.96885048, abs=5e-8))  # fmt: skip
    assert single["trt2"].auc == pytest.approx(0.94083736, abs=5e-9)
    assert single["trt2"].ddf == pytest.approx(12.71, abs=5e-3)
    assert (single["trt2"].ci_low, single["trt2"].ci_high) == (pytest.approx(0.89413783, abs=5e-8),
                                                               pytest.approx(0.98753689, abs=5e-8))  # fmt: skip

    frrc = result.frrc  # Analysis 2: fixed readers, random cases (chi-square / z)
    assert frrc.statistic == pytest.approx(5.47595, abs=5e-6)
    assert frrc.ddf is None
    assert frrc.p_value == pytest.approx(0.0193, abs=5e-5)
    assert frrc.std_err == pytest.approx(0.01872, abs=5e-6)
    assert (frrc.ci_low, frrc.ci_high) == (pytest.approx(-0.08049, abs=5e-6), pytest.approx(-0.00711, abs=5e-6))

    rrfc = result.rrfc  # Analysis 3: random readers, fixed cases
    assert rrfc.statistic == pytest.approx(8.70, abs=5e-3)
    assert rrfc.ddf == 4
    assert rrfc.p_value == pytest.approx(0.0420, abs=5e-5)
    assert rrfc.std_err == pytest.approx(0.01485, abs=5e-6)
    assert (rrfc.ci_low, rrfc.ci_high) == (pytest.approx(-0.08502, abs=5e-6), pytest.approx(-0.00258, abs=5e-6))


def test_swapping_the_modalities_negates_the_difference_only():
    truth, scores = van_dyke()
    readers = list("abcde")
    forward = or_analysis(truth, scores, readers, ("x", "y"))
    backward = or_analysis(truth, scores[::-1], readers, ("y", "x"))
    assert backward.rrrc.difference == pytest.approx(-forward.rrrc.difference)
    assert backward.rrrc.p_value == pytest.approx(forward.rrrc.p_value)
    assert (backward.rrrc.ci_low, backward.rrrc.ci_high) == (pytest.approx(-forward.rrrc.ci_high),
                                                             pytest.approx(-forward.rrrc.ci_low))  # fmt: skip


def test_closed_form_jackknife_equals_leaving_each_case_out():
    rng = np.random.default_rng(3)
    truth = np.array([0, 1] * 9 + [1])
    scores = rng.integers(0, 5, size=(2, 3, truth.size)).astype(float)  # many ties
    aucs, jackknife = wilcoxon_jackknife(truth, scores)
    for t in range(2):
        for j in range(3):
            assert aucs[t, j] == pytest.approx(roc_auc_score(truth, scores[t, j]))
            for k in range(truth.size):
                keep = np.arange(truth.size) != k
                assert jackknife[t, j, k] == pytest.approx(roc_auc_score(truth[keep], scores[t, j, keep]))


def test_too_few_cases_and_wrong_shapes_are_refused():
    with pytest.raises(ValueError, match="at least 2 diseased"):
        or_analysis([0, 0, 1], np.zeros((2, 2, 3)), ["a", "b"], ("x", "y"))
    with pytest.raises(ValueError, match="shape"):
        or_analysis([0, 0, 1, 1], np.zeros((2, 3, 4)), ["a", "b"], ("x", "y"))


def test_one_reader_has_only_the_fixed_reader_analysis():
    truth, scores = van_dyke()
    result = or_analysis(truth, scores[:, :1], ["1"], ("trt2", "trt1"))
    assert result.rrrc is None and result.rrfc is None
    # OR-DBM MRMC's part 2(d) for reader 1: difference -0.02818, StdErr sqrt(2 (Var - Cov1)) = 0.02551, p 0.2693
    assert result.frrc.difference == pytest.approx(-0.02818, abs=5e-6)
    assert result.frrc.std_err == pytest.approx(0.02551, abs=5e-6)
    assert result.frrc.p_value == pytest.approx(0.2693, abs=5e-5)


def test_exact_mcnemar_counts_discordant_pairs_and_matches_statsmodels():
    reference = [True] * 10 + [False] * 12 + [True] * 2 + [False] * 6
    test = [True] * 10 + [True] * 12 + [False] * 2 + [False] * 6
    result = mcnemar_exact(reference, test)
    assert (result.n_pairs, result.b, result.c) == (30, 2, 12)
    assert result.p_value == pytest.approx(mcnemar([[10, 2], [12, 6]], exact=True).pvalue)
    assert result.p_value == pytest.approx(2 * sum(math.comb(14, k) for k in range(3)) / 2**14)
    assert mcnemar_exact([True, False], [True, False]).p_value == 1.0


def test_binomial_p_against_half():
    assert binomial_p(5, 10) == pytest.approx(1.0)
    assert binomial_p(9, 10) == pytest.approx(22 / 1024)
