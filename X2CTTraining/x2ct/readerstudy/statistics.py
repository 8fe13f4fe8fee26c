"""The reader-study statistics as typed records: call metrics with Wilson CIs, AUCs, Obuchowski-Rockette MRMC,
McNemar, kappas, real-vs-synthetic, Likert and reading-time summaries. See docs/reader_study.md."""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..evaluate.classifier_stats import delong_auc, wilson_interval
from ..evaluate.mrmc import MRMCResult, binomial_p, mcnemar_exact, or_analysis
from . import study as st
from .readings import Reading, StudyData

POOLED = "pooled"
"""The reader name of rows pooled over readers (every read counted once; reads of one case are not
independent, so pooled CIs are narrower than a reader-random analysis would give)."""


# ------------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class Proportion:
    """``successes / n`` with its Wilson CI."""

    successes: int
    n: int
    value: float
    ci_low: float
    ci_high: float


def proportion(successes: int, n: int, alpha: float = 0.05) -> Optional[Proportion]:
    if n == 0:
        return None
    low, high = wilson_interval(successes, n, alpha)
    return Proportion(int(successes), int(n), successes / n, low, high)


@dataclass(frozen=True)
class CallMetrics:
    """Accuracy, sensitivity, specificity of one reader's (or the pooled) calls in one modality."""

    reader: str
    modality: str
    accuracy: Optional[Proportion]
    sensitivity: Optional[Proportion]
    specificity: Optional[Proportion]


@dataclass(frozen=True)
class ReaderAUC:
    """Empirical AUC of one reader in one modality with its DeLong CI (logit scale; see ``delong_auc``);
    None when the reader read fewer than 2 diseased or 2 non-diseased cases."""

    reader: str
    modality: str
    n_positive: int
    n_negative: int
    auc: Optional[float]
    ci_low: Optional[float]
    ci_high: Optional[float]


@dataclass(frozen=True)
class McNemarRow:
    """Exact McNemar of correct calls, reference vs test, over cases read in both (``b``: correct only in the
    reference, ``c``: correct only in the test modality)."""

    reader: str
    n_pairs: int
    b: int
    c: int
    p_value: float
    accuracy_reference: float
    accuracy_test: float


@dataclass(frozen=True)
class KappaRow:
    """Agreement of the calls in one modality: Cohen's kappa of a reader pair, or Fleiss' kappa of all readers
    (``readers`` lists who); over the cases all of them read. None when undefined (e.g. one call only)."""

    modality: str
    readers: List[str]
    n_cases: int
    kappa: Optional[float]


@dataclass(frozen=True)
class RealSyntheticRow:
    """How often a reader told real from synthetic CT: accuracy with Wilson CI, exact binomial p against 50 %."""

    reader: str
    accuracy: Proportion
    p_value_vs_chance: float


@dataclass(frozen=True)
class LikertRow:
    """Summary of one Likert scale for one reader (or pooled) and one volume source (real or synthetic)."""

    reader: str
    scale: str
    volume: str
    n: int
    median: float
    q25: float
    q75: float
    mean: float


@dataclass(frozen=True)
class TimeRow:
    """Reading times (seconds) of one reader in one task ("diagnosis xray", "diagnosis xray+ct",
    "real_vs_synthetic")."""

    reader: str
    task: str
    n: int
    median_s: float
    mean_s: float


@dataclass
class Analysis:
    """``analysis.json``. ``mrmc`` is None (with ``mrmc_note`` saying why) unless two modalities were read
    by every reader on at least 2 diseased and 2 non-diseased common cases; ``mrmc.rrrc`` is the primary
    analysis. ``modalities = [reference, test]``; every difference is test - reference."""

    source: str
    input: str
    name: str
    alpha: float
    modalities: List[str]
    readers: List[str]
    n_cases: int
    mrmc: Optional[MRMCResult]
    mrmc_note: str
    reader_aucs: List[ReaderAUC]
    calls: List[CallMetrics]
    mcnemar: List[McNemarRow]
    cohen_kappa: List[KappaRow]
    fleiss_kappa: List[KappaRow]
    real_vs_synthetic: List[RealSyntheticRow]
    likert: List[LikertRow]
    reading_times: List[TimeRow]
    files: Dict[str, str]
    schema_version: int = 1


# ------------------------------------------------------------------------------------------ statistics


def reads_by(readings: Sequence[Reading], reader: Optional[str], modality: str) -> Dict[str, Reading]:
    """case -> the reading of ``reader`` (every reader when None) in ``modality``."""
    return {r.case: r for r in readings if r.modality == modality and (reader is None or r.reader == reader)}


def _readers(data: StudyData) -> List[str]:
    return sorted({r.reader for r in data.readings} | {v.reader for v in data.volume_readings})


def mrmc_of(data: StudyData, alpha: float = 0.05) -> Tuple[Optional[MRMCResult], str]:
    """The OR analysis over the cases every diagnosis reader read in both modalities, or None and why not."""
    if len(data.modalities) != 2:
        return None, "needs two modalities (reference and test); the input has " + (
            ", ".join(data.modalities) or "none"
        )
    readers = sorted({r.reader for r in data.readings})
    grid = {(r.reader, r.modality, r.case): r for r in data.readings}
    every = set.intersection(*({r.case for r in data.readings if r.reader == j and r.modality == m}
                               for j in readers for m in data.modalities))  # fmt: skip
    cases = sorted(every)
    truth = np.array([grid[(readers[0], data.modalities[0], c)].truth for c in cases], dtype=int)
    if min(int(truth.sum()), int(truth.size - truth.sum())) < 2:
        return None, (f"needs at least 2 diseased and 2 non-diseased cases read by every reader in both modalities "
                      f"(there are {int(truth.sum())} and {int(truth.size - truth.sum())})")  # fmt: skip
    scores = np.array([[[grid[(j, m, c)].score for c in cases] for j in readers] for m in data.modalities])
    left = len({r.case for r in data.readings}) - len(cases)
    note = "" if not left else f"{left} case(s) not read by every reader in both modalities left out"
    return or_analysis(truth, scores, readers, (data.modalities[0], data.modalities[1]), alpha), note


def reader_aucs(data: StudyData, alpha: float = 0.05) -> List[ReaderAUC]:
    rows = []
    for modality in data.modalities:
        for reader in sorted({r.reader for r in data.readings}):
            reads = list(reads_by(data.readings, reader, modality).values())
            y = np.array([r.truth for r in reads], dtype=int)
            pos, neg = int(y.sum()), int(y.size - y.sum())
            if min(pos, neg) < 2:
                rows.append(ReaderAUC(reader, modality, pos, neg, None, None, None))
                continue
            auc = delong_auc(y, [r.score for r in reads], alpha)
            rows.append(ReaderAUC(reader, modality, pos, neg, auc.auc, auc.ci_low, auc.ci_high))
    return rows


def call_metrics(data: StudyData, alpha: float = 0.05) -> List[CallMetrics]:
    """Per reader and pooled, per modality, over the reads that have a call."""
    rows = []
    for modality in data.modalities:
        for reader in [*sorted({r.reader for r in data.readings}), POOLED]:
            reads = [r for r in data.readings if r.modality == modality and r.call is not None
                     and (reader == POOLED or r.reader == reader)]  # fmt: skip
            if not reads:
                continue
            tp = sum(r.call == 1 and r.truth == 1 for r in reads)
            tn = sum(r.call == 0 and r.truth == 0 for r in reads)
            pos = sum(r.truth == 1 for r in reads)
            rows.append(CallMetrics(reader, modality, proportion(tp + tn, len(reads), alpha),
                                    proportion(tp, pos, alpha), proportion(tn, len(reads) - pos, alpha)))  # fmt: skip
    return rows


def mcnemar_rows(data: StudyData) -> List[McNemarRow]:
    """Exact McNemar per reader and pooled (all reader-case pairs) over cases with calls in both modalities."""
    if len(data.modalities) != 2:
        return []
    rows = []
    pooled_ref: List[bool] = []
    pooled_test: List[bool] = []
    for reader in sorted({r.reader for r in data.readings}):
        ref, test = (reads_by(data.readings, reader, m) for m in data.modalities)
        common = sorted(c for c in ref if c in test and ref[c].call is not None and test[c].call is not None)
        if not common:
            continue
        a = [ref[c].call == ref[c].truth for c in common]
        b = [test[c].call == test[c].truth for c in common]
        pooled_ref += a
        pooled_test += b
        rows.append(_mcnemar_row(reader, a, b))
    if rows:
        rows.append(_mcnemar_row(POOLED, pooled_ref, pooled_test))
    return rows


def _mcnemar_row(reader: str, correct_ref: List[bool], correct_test: List[bool]) -> McNemarRow:
    result = mcnemar_exact(correct_ref, correct_test)
    n = result.n_pairs
    return McNemarRow(reader, n, result.b, result.c, result.p_value, sum(correct_ref) / n, sum(correct_test) / n)


def _finite(value: float) -> Optional[float]:
    return float(value) if math.isfinite(value) else None


def kappas(data: StudyData) -> Tuple[List[KappaRow], List[KappaRow]]:
    """Cohen's kappa (scikit-learn) for each pair of readers and Fleiss' kappa (statsmodels) for all readers,
    on the binary calls, per modality, over the cases the readers concerned all read."""
    from sklearn.metrics import cohen_kappa_score
    from statsmodels.stats.inter_rater import fleiss_kappa

    cohen, fleiss = [], []
    for modality in data.modalities:
        calls = {}
        for reader in sorted({r.reader for r in data.readings}):
            reads = {c: r.call for c, r in reads_by(data.readings, reader, modality).items() if r.call is not None}
            if reads:
                calls[reader] = reads
        with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
            warnings.simplefilter("ignore")  # an undefined kappa (one call only) is reported as None
            for a, b in itertools.combinations(sorted(calls), 2):
                common = sorted(set(calls[a]) & set(calls[b]))
                if common:
                    value = cohen_kappa_score(
                        [calls[a][c] for c in common], [calls[b][c] for c in common], labels=[0, 1]
                    )
                    cohen.append(KappaRow(modality, [a, b], len(common), _finite(value)))
            if len(calls) >= 2:
                common = sorted(set.intersection(*(set(v) for v in calls.values())))
                if common:
                    table = np.array([[sum(calls[j][c] == k for j in calls) for k in (0, 1)] for c in common])
                    fleiss.append(KappaRow(modality, sorted(calls), len(common), _finite(fleiss_kappa(table))))
    return cohen, fleiss


def real_vs_synthetic(data: StudyData, alpha: float = 0.05) -> List[RealSyntheticRow]:
    """Per reader and pooled: the share of correct real/synthetic calls, Wilson CI, exact binomial p vs 1/2."""
    rows = []
    for reader in [*sorted({v.reader for v in data.volume_readings}), POOLED]:
        reads = [v for v in data.volume_readings if reader == POOLED or v.reader == reader]
        if not reads:
            continue
        correct = sum(v.is_real == v.called_real for v in reads)
        accuracy = proportion(correct, len(reads), alpha)
        assert accuracy is not None
        rows.append(RealSyntheticRow(reader, accuracy, binomial_p(correct, len(reads))))
    return rows


def likert_rows(data: StudyData) -> List[LikertRow]:
    """Median, IQR and mean of the anatomy and consistency ratings, per reader and pooled, real vs synthetic."""
    rows = []
    for reader in [*sorted({v.reader for v in data.volume_readings}), POOLED]:
        for scale in (st.ANATOMY, st.CONSISTENCY):
            for volume, is_real in (("real", True), ("synthetic", False)):
                values = [getattr(v, scale) for v in data.volume_readings
                          if v.is_real == is_real and (reader == POOLED or v.reader == reader)]  # fmt: skip
                values = np.array([x for x in values if x is not None], dtype=float)
                if values.size:
                    q25, median, q75 = (float(q) for q in np.percentile(values, [25, 50, 75]))
                    rows.append(LikertRow(reader, scale, volume, int(values.size), median, q25, q75,
                                          float(values.mean())))  # fmt: skip
    return rows


def timed_reads(data: StudyData) -> Dict[Tuple[str, str], List[float]]:
    """(reader, task) -> reading times in seconds."""
    times: Dict[Tuple[str, str], List[float]] = {}
    for r in data.readings:
        if r.reading_time_s is not None:
            times.setdefault((r.reader, f"{st.DIAGNOSIS} {r.modality}"), []).append(r.reading_time_s)
    for v in data.volume_readings:
        times.setdefault((v.reader, st.REAL_VS_SYNTHETIC), []).append(v.reading_time_s)
    return times


def time_rows(data: StudyData) -> List[TimeRow]:
    return [TimeRow(reader, task, len(t), float(np.median(t)), float(np.mean(t)))
            for (reader, task), t in sorted(timed_reads(data).items())]  # fmt: skip


def analyze(data: StudyData, source_path: Path, alpha: float = 0.05) -> Analysis:
    """Every statistic of the module doc (no files written)."""
    mrmc, note = mrmc_of(data, alpha)
    cohen, fleiss = kappas(data)
    return Analysis(
        source=data.source,
        input=str(source_path),
        name=data.name,
        alpha=alpha,
        modalities=list(data.modalities),
        readers=_readers(data),
        n_cases=len({r.case for r in data.readings} | {v.case for v in data.volume_readings}),
        mrmc=mrmc,
        mrmc_note=note,
        reader_aucs=reader_aucs(data, alpha),
        calls=call_metrics(data, alpha),
        mcnemar=mcnemar_rows(data),
        cohen_kappa=cohen,
        fleiss_kappa=fleiss,
        real_vs_synthetic=real_vs_synthetic(data, alpha),
        likert=likert_rows(data),
        reading_times=time_rows(data),
        files={},
    )
