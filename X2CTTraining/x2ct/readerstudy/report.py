"""The reader-study report folder: analysis.json, scores.csv, scores.imrmc, plots and report.html
(see :mod:`x2ct.readerstudy.analyze` for the list)."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from ..atomic import atomic_dir
from ..evaluate.classifier_stats import roc_png
from .readings import SCORE_COLUMNS, StudyData
from .statistics import Analysis, Proportion, reads_by, timed_reads

ANALYSIS_JSON = "analysis.json"
SCORES_CSV = "scores.csv"
SCORES_IMRMC = "scores.imrmc"
READING_TIMES_PNG = "reading_times.png"
REPORT_HTML = "report.html"
REPORT_FILES = (ANALYSIS_JSON, SCORES_CSV, SCORES_IMRMC, REPORT_HTML)
"""Files every report has; ``roc_<modality>.png`` and ``reading_times.png`` come when there is data for them."""


# ------------------------------------------------------------------------------------------ outputs


def roc_file(modality: str) -> str:
    """``roc_<modality>.png`` with characters other than letters and digits as '_' (``xray+ct`` -> ``xray_ct``)."""
    return "roc_" + "".join(c if c.isalnum() else "_" for c in modality) + ".png"


def scores_csv_text(data: StudyData) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SCORE_COLUMNS)
    for r in sorted(data.readings, key=lambda r: (r.reader, data.modalities.index(r.modality), r.case)):
        writer.writerow([r.reader, r.modality, r.case, r.truth, repr(r.score)])
    return buffer.getvalue()


def imrmc_text(data: StudyData) -> str:
    """iMRMC's input format (DIDSR/iMRMC ``InputFile.java``): header, ``BEGIN DATA:``, truth rows with reader
    ``-1`` and modality ``truth``, then one ``reader,case,modality,score`` row per read."""
    truths = {r.case: r.truth for r in data.readings}
    lines = [
        f"x2ct reader-study analyze: {' '.join(data.name.split())} (diagnosis scores)",
        f"NR: {len({r.reader for r in data.readings})}",
        f"N0: {sum(1 for t in truths.values() if t == 0)}",
        f"N1: {sum(1 for t in truths.values() if t == 1)}",
        f"NM: {len(data.modalities)}",
        "BEGIN DATA:",
        *(f"-1,{case},truth,{truth}" for case, truth in sorted(truths.items())),
        *(f"{r.reader},{r.case},{r.modality},{r.score!r}"
          for r in sorted(data.readings, key=lambda r: (r.reader, data.modalities.index(r.modality), r.case))),
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def reading_times_png(data: StudyData, path: Path) -> None:
    """Box plots of the reading times per reader and task (PNG, private Agg canvas as ``roc_png``)."""
    from matplotlib import style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    times = timed_reads(data)
    with style.context("default"):
        figure = Figure(figsize=(8.0, 4.5), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot(1, 1, 1)
        labels = [f"{reader}\n{task}" for reader, task in sorted(times)]
        axes.boxplot([times[k] for k in sorted(times)], showfliers=True)
        axes.set_xticks(range(1, len(labels) + 1))
        axes.set_xticklabels(labels, fontsize="x-small", rotation=45, ha="right")
        axes.set_ylabel("reading time (s)")
        axes.set_title("Reading time per reader and task")
        figure.tight_layout()
        figure.savefig(path, format="png", metadata={"Software": None})


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def _ci(p: Optional[Proportion]) -> str:
    return "n/a" if p is None else f"{p.value:.2f} [{p.ci_low:.2f}, {p.ci_high:.2f}] ({p.successes}/{p.n})"


def report_html(result: Analysis, images: Dict[str, bytes]) -> str:
    """One self-contained HTML page: the MRMC result first, then the tables, images inline as base64 PNG."""
    summary = f"{len(result.readers)} readers, {result.n_cases} cases; input {result.input}."
    parts = [f"<h1>Reader study: {html.escape(result.name)}</h1>", f"<p>{html.escape(summary)}</p>"]
    m = result.mrmc
    if m is not None:
        ref, test = m.modalities
        parts.append(f"<h2>MRMC ROC analysis (Obuchowski-Rockette, jackknife, Hillis ddf): {html.escape(test)} "
                     f"vs {html.escape(ref)}</h2>")  # fmt: skip
        rows = [[t.analysis, _fmt(t.difference), f"[{_fmt(t.ci_low)}, {_fmt(t.ci_high)}]", _fmt(t.statistic, 2),
                 "inf" if t.ddf is None else _fmt(t.ddf, 2), _fmt(t.p_value, 4)]
                for t in (m.rrrc, m.frrc, m.rrfc) if t is not None]  # fmt: skip
        parts.append(_table(["analysis", "AUC difference", "95% CI", "F / chi2", "ddf", "p"], rows))
        parts.append(_table(["modality", "reader-averaged AUC", "95% CI (RRRC)"],
                            [[a.modality, _fmt(a.auc), f"[{_fmt(a.ci_low)}, {_fmt(a.ci_high)}]"]
                             for a in m.modality_aucs]))  # fmt: skip
        c = m.components
        parts.append(
            _table(
                ["var_R", "var_TR", "cov1", "cov2", "cov3", "var_error"],
                [[f"{v:.3g}" for v in (c.var_r, c.var_tr, c.cov1, c.cov2, c.cov3, c.var_error)]],
            )
        )
        parts.append(f"<p>{m.n_cases} cases ({m.n_positive} diseased). {html.escape(result.mrmc_note)}</p>")
    else:
        parts.append(f"<h2>MRMC ROC analysis</h2><p>Not run: {html.escape(result.mrmc_note)}</p>")
    parts.append("<h2>ROC AUC per reader</h2>")
    parts.append(_table(["reader", "modality", "AUC", "95% CI (DeLong)"],
                        [[r.reader, r.modality, _fmt(r.auc), f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]"]
                         for r in result.reader_aucs]))  # fmt: skip
    if result.calls:
        parts.append("<h2>Calls (Wilson 95% CIs)</h2>")
        parts.append(_table(["reader", "modality", "accuracy", "sensitivity", "specificity"],
                            [[c.reader, c.modality, _ci(c.accuracy), _ci(c.sensitivity), _ci(c.specificity)]
                             for c in result.calls]))  # fmt: skip
    if result.mcnemar:
        parts.append("<h2>Exact McNemar, correct calls (b: correct only in the reference, c: only in the test)</h2>")
        parts.append(_table(["reader", "pairs", "b", "c", "p", "accuracy ref", "accuracy test"],
                            [[r.reader, r.n_pairs, r.b, r.c, _fmt(r.p_value, 4), _fmt(r.accuracy_reference, 2),
                              _fmt(r.accuracy_test, 2)] for r in result.mcnemar]))  # fmt: skip
    if result.cohen_kappa or result.fleiss_kappa:
        parts.append("<h2>Agreement of the calls</h2>")
        parts.append(_table(["modality", "readers", "cases", "kappa"],
                            [[k.modality, " & ".join(k.readers), k.n_cases, _fmt(k.kappa)]
                             for k in [*result.cohen_kappa, *result.fleiss_kappa]]))  # fmt: skip
    if result.real_vs_synthetic:
        parts.append("<h2>Real vs synthetic: correct calls (Wilson 95% CI; exact binomial test against 50%)</h2>")
        parts.append(_table(["reader", "accuracy", "p vs 50%"],
                            [[r.reader, _ci(r.accuracy), _fmt(r.p_value_vs_chance, 4)]
                             for r in result.real_vs_synthetic]))  # fmt: skip
    if result.likert:
        parts.append("<h2>Likert ratings</h2>")
        parts.append(_table(["reader", "scale", "volume", "n", "median", "IQR", "mean"],
                            [[r.reader, r.scale, r.volume, r.n, _fmt(r.median, 1), f"{r.q25:.1f}-{r.q75:.1f}",
                              _fmt(r.mean, 2)] for r in result.likert]))  # fmt: skip
    for name, data in images.items():
        encoded = base64.b64encode(data).decode("ascii")
        parts.append(
            f'<h2>{html.escape(name)}</h2><img alt="{html.escape(name)}" src="data:image/png;base64,{encoded}">'
        )
    style = ("body{font-family:sans-serif;max-width:60em;margin:auto}table{border-collapse:collapse;margin:0.5em 0}"
             "td,th{border:1px solid #999;padding:2px 6px;font-size:small}img{max-width:100%}")  # fmt: skip
    title = html.escape(result.name)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}</body></html>\n")  # fmt: skip


def write_report(data: StudyData, result: Analysis, out: Path) -> None:
    """Write REPORT (module doc) whole: into a temporary folder beside ``out``, renamed onto it at the end."""
    with atomic_dir(out) as tmp:
        images: Dict[str, bytes] = {}
        for modality in data.modalities:
            curves = {}
            for row in result.reader_aucs:
                if row.modality == modality and row.auc is not None:
                    reads = list(reads_by(data.readings, row.reader, modality).values())
                    curves[row.reader] = (np.array([r.truth for r in reads]), np.array([r.score for r in reads]))
            if curves:
                roc_png(curves, tmp / roc_file(modality), f"ROC per reader: {modality}")
                result.files[f"roc {modality}"] = roc_file(modality)
        if timed_reads(data):
            reading_times_png(data, tmp / READING_TIMES_PNG)
            result.files["reading times"] = READING_TIMES_PNG
        for name, file in result.files.items():
            images[name] = (tmp / file).read_bytes()
        result.files.update(analysis=ANALYSIS_JSON, scores=SCORES_CSV, imrmc=SCORES_IMRMC, report=REPORT_HTML)
        (tmp / SCORES_CSV).write_text(scores_csv_text(data), encoding="utf-8")
        (tmp / SCORES_IMRMC).write_text(imrmc_text(data), encoding="utf-8")
        (tmp / REPORT_HTML).write_text(report_html(result, images), encoding="utf-8")
        document = json.dumps(asdict(result), indent=2, allow_nan=False)
        (tmp / ANALYSIS_JSON).write_text(document + "\n", encoding="utf-8")


def headline(result: Analysis) -> str:
    """One line: the primary (RRRC) result, or why there is none."""
    m = result.mrmc
    if m is None or m.rrrc is None or m.rrrc.p_value is None:
        return f"MRMC analysis not run: {result.mrmc_note or 'one reader only'}"
    t = m.rrrc
    ref, test = m.modalities
    return (
        f"AUC {test} - {ref}: {t.difference:+.3f} [{t.ci_low:.3f}, {t.ci_high:.3f}] (RRRC, F = {t.statistic:.2f}, "
        f"ddf = {_fmt(t.ddf, 1)}, p = {t.p_value:.3g}; {len(m.readers)} readers, {m.n_cases} cases)"
    )
