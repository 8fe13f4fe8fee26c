"""``x2ct reader-study analyze STUDY|SCORES.csv -o REPORT``: the readers' answers as statistics and a report.

Input: a study folder (``study.json``, ``items.json``, ``coordinator/key.json``, ``readers/*/answers.jsonl``; see
:mod:`x2ct.readerstudy.study`) or a long-format scores CSV with the columns ``reader,modality,case,truth,score``
(truth 0/1; score higher = more likely diseased) and an optional ``call`` column (0/1, the reader's binary call).
In the CSV the first modality named is the reference, the other the test; in a study folder the reference is
the radiograph alone (``xray``) and the test the radiograph with the synthetic CT (``xray+ct``).

REPORT (written whole, atomically; :data:`x2ct.readerstudy.report.REPORT_FILES`):

* ``analysis.json``: :class:`x2ct.readerstudy.statistics.Analysis` as JSON;
* ``scores.csv``: the diagnosis scores in long format (``reader,modality,case,truth,score``), which MRMCaov
  and RJafroc read;
* ``scores.imrmc``: the same in iMRMC's input format (free-text header, ``BEGIN DATA:``, truth rows
  ``-1,case,truth,0|1``, then ``reader,case,modality,score``);
* ``roc_<modality>.png``: ROC curves per reader; ``reading_times.png`` (study folders);
* ``report.html``: one self-contained page (images embedded).

Readings come from :mod:`~x2ct.readerstudy.readings`, the statistics from :mod:`~x2ct.readerstudy.statistics`
and :mod:`x2ct.evaluate.mrmc` (Obuchowski-Rockette MRMC, exact McNemar; docs/reader_study.md), the folder
from :mod:`~x2ct.readerstudy.report`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..atomic import exclusive_output
from ..errors import InputError
from ..userfiles import check_output_folder
from .readings import load_input
from .report import ANALYSIS_JSON, headline, write_report
from .statistics import analyze

EXTRA_MODULES = ("sklearn", "matplotlib", "statsmodels")
"""Packages of the ``eval`` extra the analysis uses (kappas, ROC curves, plots)."""


def check_report_folder(out: Path, source: Path) -> None:
    """REPORT is replaced whole: refuse one that holds the input, or exists and holds anything but an earlier
    report (a study folder, a home folder)."""
    if source.resolve() == out.resolve() or out.resolve() in source.resolve().parents:
        raise InputError(out, f"the report folder would replace the input {source}; give another -o")
    if out.is_dir() and any(out.iterdir()) and not (out / ANALYSIS_JSON).is_file():
        raise InputError(out, "output folder exists and is not empty (and is not an earlier reader-study report)")


def run_analyze(args: argparse.Namespace) -> int:
    """The ``reader-study analyze`` command: every input check before anything is written."""
    from ..classify.evaluate import require_eval_extra

    source = Path(os.fspath(args.study))
    out = check_output_folder(args.output)
    require_eval_extra("reader-study analyze", EXTRA_MODULES)
    with exclusive_output(out):
        check_report_folder(out, source)
        data = load_input(source)
        result = analyze(data, source)
        write_report(data, result, out)
    print(headline(result))
    print(f"wrote {out}")
    return 0
