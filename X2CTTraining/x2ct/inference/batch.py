"""``x2ct predict --manifest``: many cases from a CSV, with resume, per-case failure isolation and sharding.

The manifest has the columns ``case_id``, ``pa`` and (optional, column or cell) ``lateral``; relative
paths are taken from the CSV's folder. Each case goes to ``OUT/<case_id>/`` through
:func:`x2ct.inference.predict.predict_to_folder`; ``OUT/batch_summary.csv`` lists every case's status and
``OUT/failures.csv`` (:func:`x2ct.userfiles.write_failure_report`) the failed ones. When every case failed,
``failures.csv`` is all that is written (no ``batch_summary.csv``).

Under ``torchrun`` with several processes (:mod:`x2ct.distributed`) the cases are shared out
round-robin; each rank writes its own case folders (atomically) and rank 0 writes the merged
``batch_summary.csv`` once every rank is done. One process rewrites it after every case.
"""

from __future__ import annotations

import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from tqdm import tqdm

from ..atomic import write_text_atomic
from ..data.radiograph_manifest import RadiographCase, read_radiograph_manifest
from ..distributed import gather, main_rank_owns, session, shard
from ..errors import InputError, PathLike
from ..models.checkpoints import resolve_device
from ..userfiles import check_output_folder, os_error_line, write_failure_report
from .models import ModelCache
from .outputs import is_finished
from .predict import predict_to_folder
from .types import GenerationOptions

BATCH_SUMMARY = "batch_summary.csv"
"""Per-case status table written into the batch output folder."""

@dataclass
class CaseResult:
    """Outcome of one manifest row: ``status`` is "done", "skipped" (finished earlier) or "failed"; for a done case
    its re-projection ``consistency`` and, when the model has an OOD reference, ``ood_score`` and ``ood_flagged``."""

    case_id: str
    status: str
    message: str = ""
    consistency: Optional[float] = None
    ood_score: Optional[float] = None
    ood_flagged: Optional[bool] = None


@dataclass
class BatchReport:
    """What :func:`predict_manifest` did: every case's result in manifest order, the summary CSV and the failure
    report (None when nothing failed). ``rank``: this process's rank under torchrun (0 otherwise); only rank 0
    reports."""

    cases: List[CaseResult]
    summary_csv: Path
    rank: int = 0
    failures_csv: Optional[Path] = None

    def count(self, status: str) -> int:
        """How many cases have ``status``."""
        return sum(case.status == status for case in self.cases)


def _write_batch_summary(
    out_root: Path, results: Sequence[CaseResult], cases: Dict[str, RadiographCase]
) -> Optional[Path]:
    """``out_root/batch_summary.csv`` (case id, status, consistency, OOD score and flag, message of every result;
    empty cells where they do not apply) when a case
    is finished, and ``out_root/failures.csv`` of the failed ones; returns the failure report's path."""
    out_root.mkdir(parents=True, exist_ok=True)
    failed = [r for r in results if r.status == "failed"]
    if len(failed) < len(results):
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["case_id", "status", "consistency", "ood_score", "ood_flagged", "message"])
        for r in results:
            cells = [r.consistency, r.ood_score, None if r.ood_flagged is None else str(r.ood_flagged).lower()]
            writer.writerow([r.case_id, r.status, *("" if c is None else c for c in cells), r.message])
        write_text_atomic(out_root / BATCH_SUMMARY, buffer.getvalue())
    else:  # nothing finished: no summary that could pass for a finished batch (an earlier one is stale)
        (out_root / BATCH_SUMMARY).unlink(missing_ok=True)
    sources = {c.case_id: " + ".join(str(p) for p in (c.pa, c.lateral) if p is not None) for c in cases.values()}
    return write_failure_report(out_root, [(r.case_id, sources[r.case_id], r.message) for r in failed])


def _run_case(
    case: RadiographCase,
    out: Path,
    cache: ModelCache,
    model: Optional[str],
    dicom: bool,
    force: bool,
    view_override: bool,
    options: Optional[GenerationOptions],
) -> CaseResult:
    """One case into ``out/<case_id>/``: skipped when finished earlier; any failure becomes a "failed" result."""
    case_dir = out / case.case_id
    if is_finished(case_dir):
        return CaseResult(case.case_id, "skipped", "finished earlier")
    try:
        prediction = predict_to_folder(
            case_dir, case.pa, case.lateral, model, dicom=dicom, force=force, view_override=view_override,
            cache=cache, options=options,
        )  # fmt: skip
        ood = prediction.ood
        return CaseResult(case.case_id, "done", consistency=prediction.consistency_score,
                          ood_score=None if ood is None else round(ood.score, 4),
                          ood_flagged=None if ood is None else ood.flagged)  # fmt: skip
    except InputError as err:
        return CaseResult(case.case_id, "failed", str(err))
    except OSError as err:  # e.g. an unwritable case folder or a full disk
        return CaseResult(case.case_id, "failed", os_error_line(err, case_dir))
    except Exception as err:  # isolation: an unexpected failure of one case must not stop the batch
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        return CaseResult(case.case_id, "failed", f"{case_dir}: internal error ({reason})")


def predict_manifest(
    manifest: PathLike,
    out_root: PathLike,
    model: Optional[str] = None,
    device: str = "auto",
    dicom: bool = False,
    force: bool = False,
    view_override: bool = False,
    show_progress: bool = True,
    classifiers: Optional[Sequence[PathLike]] = None,
    options: Optional[GenerationOptions] = None,
) -> BatchReport:
    """Predict every case of a manifest CSV into ``out_root/<case_id>/`` (module doc).

    Resume: a case whose folder already holds a finished prediction is skipped. Failure isolation:
    a case that fails is recorded (one line on stderr) and the others go on. The manifest is
    validated before any case runs. ``classifiers`` as in :class:`~x2ct.inference.models.ModelCache`.
    ``options`` (style, sampling) apply to every case; a style model that cannot be loaded stops the batch before
    any case runs (InputError); sampling options a case's model cannot honour fail that case.
    One run at a time writes ``out_root`` (:func:`x2ct.distributed.main_rank_owns`; InputError while another
    holds it), and what a killed run left there is removed first.
    """
    cases = read_radiograph_manifest(manifest)
    out = check_output_folder(out_root)
    by_case = {case.case_id: case for case in cases}
    chosen = resolve_device(device)
    with session(chosen) as ctx, main_rank_owns(out, ctx):
        cache = ModelCache(ctx.device(chosen), classifiers)
        if options is not None and options.style is not None:
            cache.style(options.style)
        results: List[CaseResult] = []
        failures: Optional[Path] = None
        mine = shard(cases, ctx)
        bar = tqdm(mine, desc="predict", unit="case", disable=not (show_progress and ctx.is_main))
        for case in bar:
            results.append(_run_case(case, out, cache, model, dicom, force, view_override, options))
            if results[-1].status == "failed":
                bar.write(f"x2ct: case {case.case_id} failed: {results[-1].message}", file=sys.stderr)
            if not ctx.distributed:
                failures = _write_batch_summary(out, results, by_case)
        by_id: Dict[str, CaseResult] = {r.case_id: r for part in gather(results, ctx) for r in part}
        merged = [by_id[case.case_id] for case in cases]
        if ctx.distributed and ctx.is_main:
            failures = _write_batch_summary(out, merged, by_case)
    return BatchReport(merged, out / BATCH_SUMMARY, ctx.rank, failures)
