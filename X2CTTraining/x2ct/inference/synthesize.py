"""``x2ct synthesize-ct``: a generator's synthetic CT of every case of a built data set (a CT source for classifiers).

Each case's stored DRRs (``pa``, and ``lateral`` for a biplanar model) are read with
:func:`x2ct.data.loader.read_case` at the model's input size, the input the generator trained on, and
run in batches through :func:`x2ct.inference.run.run_generator`. The output is written as
``x2ct predict`` writes it (:func:`x2ct.inference.synthetic_ct.synthetic_ct_image`: HU int16 on the
canonical grid centred at the origin), so the folder layout ::

    OUT/<case_id>/synthetic_ct.nrrd
    OUT/manifest.csv          case_id, split, path, model, model_sha256 (the finished cases)
    OUT/synthesis.json        the model (name, sha256, input size) and the data set

is the same as ``x2ct predict --manifest``'s per-case output and either can be a classifier's CT
source. Resume: a case whose NRRD exists is skipped (files are written atomically); a folder made
with other weights is refused. A case whose file cannot be read is reported (one line) and listed in
``OUT/failures.csv`` (:func:`x2ct.userfiles.write_failure_report`) while the others go on; when every
case failed, ``failures.csv`` is all that is left in OUT (no manifest or record).

Under ``torchrun`` with several processes (:mod:`x2ct.distributed`) the batches are shared out
round-robin (each batch holds the same cases as in one process, so the voxels are the same); each
rank writes its own cases and rank 0 writes ``synthesis.json`` and the merged ``manifest.csv``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import SimpleITK as sitk
import torch
from tqdm import tqdm

from ..atomic import atomic_path, write_text_atomic
from ..data.layout import MANIFEST, SPLITS, read_manifest
from ..data.loader import SYNTHETIC_CT_FILE, case_attributes, read_case, synthetic_ct_path
from ..distributed import barrier, gather, main_rank_owns, session, shard
from ..errors import InputError, PathLike
from ..geometry import CanonicalGrid
from ..intensity import unit_to_hu
from ..models.checkpoints import resolve_device
from ..userfiles import check_output_folder, write_failure_report
from ..views import LATERAL_KEY, PA_KEY
from .models import load_model
from .run import run_generator
from .synthetic_ct import synthetic_ct_image

RECORD = "synthesis.json"
"""Model and data record inside OUT."""

MANIFEST_COLUMNS = ("case_id", "split", "path", "model", "model_sha256")

GEOMETRY_ATTRIBUTES = ("sad_mm", "sid_mm", "detector_mm")
"""Case-file attributes holding the geometry (mm) its DRRs were rendered with."""


@dataclass
class SynthesisReport:
    """What a run did: case ids written and skipped (finished earlier), failures as (case id, one-line problem),
    the manifest and warnings. ``rank``: this process's rank under torchrun (0 otherwise); only rank 0 reports."""

    out: Path
    model: str
    written: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    failed: List[Tuple[str, str]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    manifest: Optional[Path] = None
    rank: int = 0


def _check_record(out: Path, record: Dict[str, object]) -> None:
    """Refuse an OUT written with other weights (InputError)."""
    path = out / RECORD
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        old = {}
    if old.get("model_sha256") != record["model_sha256"]:
        raise InputError(
            out,
            f"holds synthetic CTs of model {old.get('model')!r} (sha256 {str(old.get('model_sha256'))[:12]}…), "
            f"not of {record['model']!r}; choose another output folder",
        )


def _write_manifest(out: Path, rows: List[Dict[str, str]], model: str, sha256: Optional[str]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for row in rows:
        if synthetic_ct_path(out, row["case_id"]).is_file():
            path = f"{row['case_id']}/{SYNTHETIC_CT_FILE}"
            writer.writerow([row["case_id"], row["split"], path, model, sha256 or ""])
    target = out / MANIFEST
    write_text_atomic(target, buffer.getvalue())
    return target


def _read_chunk(
    root: Path, chunk: List[Dict[str, str]], sizes: Dict[str, int], device: torch.device
) -> Tuple[Dict[str, torch.Tensor], List[Tuple[float, ...]], List[Dict[str, str]], List[Tuple[str, str]]]:
    """The DRRs of the readable cases of ``chunk`` (manifest rows) by input key, (N, 1, S, S) on ``device``,
    each one's DRR geometry (SAD, SID, detector; mm, NaN when not recorded), those rows, and (case id,
    one-line problem) of the cases that could not be read."""
    images: Dict[str, List[np.ndarray]] = {key: [] for key in sizes}
    geometries, readable, failed = [], [], []
    for row in chunk:
        path = root / row["path"]
        try:
            case = read_case(path, sizes)
            attributes = case_attributes(path)
        except InputError as err:
            failed.append((row["case_id"], str(err)))
            continue
        for key, image in case.items():
            images[key].append(image)
        geometries.append(tuple(float(attributes.get(name, np.nan)) for name in GEOMETRY_ATTRIBUTES))
        readable.append(row)
    batch = {key: torch.from_numpy(np.stack(stack)[:, None]).to(device) for key, stack in images.items() if stack}
    return batch, geometries, readable, failed


def _write_case(out: Path, case_id: str, image: sitk.Image) -> None:
    """``OUT/<case_id>/synthetic_ct.nrrd``, atomically."""
    target = synthetic_ct_path(out, case_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)


def synthesize_ct(
    model: str,
    data: PathLike,
    out: PathLike,
    split: str = "all",
    device: Union[str, torch.device] = "auto",
    batch_size: int = 4,
    progress: bool = True,
) -> SynthesisReport:
    """Write ``OUT/<case_id>/synthetic_ct.nrrd`` for every case of ``split`` of the data set ``data`` with the
    generator ``model`` (bundled name, official .pth or x2ct model; see :func:`x2ct.inference.models.load_model`).

    Raises InputError (before anything is written) for a bad data folder, an empty split, an unknown model,
    an OUT made with other weights, or an OUT another run is writing (:func:`x2ct.distributed.main_rank_owns`,
    which also removes what a killed run left there).
    """
    if split not in (*SPLITS, "all"):
        raise InputError(None, f"--split {split}: choose one of {', '.join(SPLITS)} or all")
    if batch_size < 1:
        raise InputError(None, f"--batch-size {batch_size}: need at least 1")
    root, out = Path(os.fspath(data)), Path(os.fspath(out))
    rows = [row for row in read_manifest(root) if split == "all" or row["split"] == split]
    if not rows:
        raise InputError(root / MANIFEST, f"has no case in the {split!r} split")
    check_output_folder(out)
    chosen = resolve_device(device)
    with session(chosen) as ctx, main_rank_owns(out, ctx):
        loaded = load_model(model, ctx.device(chosen))
        report = SynthesisReport(out=out, model=loaded.name, rank=ctx.rank)
        record = {
            "model": loaded.name,
            "model_path": loaded.path,
            "model_sha256": loaded.sha256,
            "architecture": loaded.architecture,
            "views": list(loaded.views),
            "input_size": loaded.spec.size,
            "input": "stored DRRs (xray1 = PA, xray2 = lateral) through x2ct.data.loader.xray_to_unit",
            "data": str(root.resolve()),
            "split": split,
            "output": "HU int16 on the canonical 320 mm grid centred at the origin (LPS), as x2ct predict writes it",
        }
        _check_record(out, record)
        pending = [row for row in rows if not synthetic_ct_path(out, row["case_id"]).is_file()]
        report.skipped = sorted({row["case_id"] for row in rows} - {row["case_id"] for row in pending})
        barrier(ctx)  # every rank has seen which cases were finished before any rank writes one
        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            if not (out / RECORD).is_file():
                write_text_atomic(out / RECORD, json.dumps(record, indent=2) + "\n")
        sizes = {PA_KEY: loaded.spec.size, **({LATERAL_KEY: loaded.spec.size} if loaded.biplanar else {})}
        geometry = loaded.spec.geometry
        expected = (geometry.sad_mm, geometry.sid_mm, geometry.detector_mm)
        mismatched: Dict[Tuple[float, ...], int] = {}
        written: List[str] = []
        failed: List[Tuple[str, str]] = []
        batches = shard([pending[i : i + batch_size] for i in range(0, len(pending), batch_size)], ctx)
        bar = tqdm(
            total=len(report.skipped) + sum(len(chunk) for chunk in batches),
            initial=len(report.skipped),
            desc="synthesize-ct",
            unit="case",
            disable=not (progress and ctx.is_main),
            file=sys.stderr,
            dynamic_ncols=True,
        )
        with bar:
            for chunk in batches:
                batch, geometries, readable, unreadable = _read_chunk(root, chunk, sizes, loaded.device)
                for case_id, problem in unreadable:
                    bar.write(f"x2ct: case {case_id} failed: {problem}", file=sys.stderr)
                    bar.update(1)
                failed += unreadable
                for drr in geometries:
                    if not np.allclose(drr, expected):
                        mismatched[drr] = mismatched.get(drr, 0) + 1
                unit = run_generator(loaded.module, batch).cpu().numpy() if readable else None
                for i, row in enumerate(readable):
                    volume_hu = unit_to_hu(unit[i, 0])
                    grid = CanonicalGrid(size=volume_hu.shape[0])
                    _write_case(out, row["case_id"], synthetic_ct_image(volume_hu, grid, loaded.name, loaded.sha256))
                    written.append(row["case_id"])
                    bar.update(1)
                if not ctx.distributed and written:
                    report.manifest = _write_manifest(out, rows, loaded.name, loaded.sha256)
        parts = gather((written, mismatched, failed), ctx)
        done = {case_id for part_written, _, _ in parts for case_id in part_written}
        report.written = [row["case_id"] for row in pending if row["case_id"] in done]
        report.failed = sorted(failure for _, _, part_failed in parts for failure in part_failed)
        if ctx.is_main:
            paths = {row["case_id"]: str(root / row["path"]) for row in rows}
            write_failure_report(out, [(case_id, paths[case_id], problem) for case_id, problem in report.failed])
            if report.written or report.skipped:
                report.manifest = _write_manifest(out, rows, loaded.name, loaded.sha256)
            else:  # every case failed: leave no manifest or record that could pass for synthetic CTs
                for name in (MANIFEST, RECORD):
                    (out / name).unlink(missing_ok=True)
    counts: Dict[Tuple[float, ...], int] = {}
    for _, part_mismatched, _ in parts:
        for drr, count in part_mismatched.items():
            counts[drr] = counts.get(drr, 0) + count
    for drr, count in counts.items():
        report.warnings.append(
            f"{count} case(s) have DRRs with SAD/SID/detector {drr} mm, not the model's training geometry {expected} mm"
        )
    return report
