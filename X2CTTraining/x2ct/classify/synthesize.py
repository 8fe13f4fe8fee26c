"""``x2ct synthesize-ct``: a generator's synthetic CT of every case of a built data set (a CT source for classifiers).

Each case's stored DRRs (``xray1`` = PA, ``xray2`` = lateral for a biplanar model) go through
:func:`x2ct.data.loader.xray_to_unit` at the model's input size, the input the generator trained
on, in batches. The output is written as ``x2ct predict`` writes it: HU int16 on the canonical grid
centred at the origin (:meth:`x2ct.pipeline.Prediction.image`), so the folder layout ::

    OUT/<case_id>/synthetic_ct.nrrd
    OUT/manifest.csv          case_id, split, path, model, model_sha256 (the finished cases)
    OUT/synthesis.json        the model (name, sha256, input size) and the data set

is the same as ``x2ct predict --manifest``'s per-case output and either can be a classifier's CT
source. Resume: a case whose NRRD exists is skipped (files are written atomically); a folder made
with other weights is refused.
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

import h5py
import numpy as np
import SimpleITK as sitk
import torch
from tqdm import tqdm

from ..atomic import atomic_path, write_text_atomic
from ..data.builder import MANIFEST, SPLITS
from ..data.loader import read_manifest, xray_to_unit
from ..errors import InputError, PathLike
from ..geometry import CanonicalGrid
from ..intensity import unit_to_hu
from .data import SYNTHETIC_CT_FILE, synthetic_ct_path

RECORD = "synthesis.json"
"""Model and data record inside OUT."""

MANIFEST_COLUMNS = ("case_id", "split", "path", "model", "model_sha256")


@dataclass
class SynthesisReport:
    """What a run did: case ids written and skipped (finished earlier), the manifest, and warnings."""

    out: Path
    model: str
    written: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    manifest: Optional[Path] = None


def _check_record(out: Path, record: Dict[str, object]) -> None:
    """Refuse an OUT written with other weights; write the record when absent."""
    path = out / RECORD
    if path.is_file():
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
        return
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")


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
    generator ``model`` (bundled name, official .pth or x2ct model; see :func:`x2ct.pipeline.load_model`).

    Raises InputError (before anything is written) for a bad data folder, an empty split, an unknown model
    or an OUT made with other weights.
    """
    from ..pipeline import Prediction, load_model

    if split not in (*SPLITS, "all"):
        raise InputError(None, f"--split {split}: choose one of {', '.join(SPLITS)} or all")
    if batch_size < 1:
        raise InputError(None, f"--batch-size {batch_size}: need at least 1")
    root, out = Path(os.fspath(data)), Path(os.fspath(out))
    rows = [row for row in read_manifest(root) if split == "all" or row["split"] == split]
    if not rows:
        raise InputError(root / MANIFEST, f"has no case in the {split!r} split")
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    loaded = load_model(model, device)
    report = SynthesisReport(out=out, model=loaded.name)
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
    out.mkdir(parents=True, exist_ok=True)
    _check_record(out, record)
    pending = [row for row in rows if not synthetic_ct_path(out, row["case_id"]).is_file()]
    report.skipped = sorted({row["case_id"] for row in rows} - {row["case_id"] for row in pending})
    geometry = loaded.spec.geometry
    mismatched: Dict[Tuple[float, ...], int] = {}
    bar = tqdm(
        total=len(rows),
        initial=len(report.skipped),
        desc="synthesize-ct",
        unit="case",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    with bar:
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            views: Dict[str, List[np.ndarray]] = {"pa": [], "lateral": []}
            for row in chunk:
                path = root / row["path"]
                try:
                    with h5py.File(path, "r") as f:
                        views["pa"].append(xray_to_unit(f["xray1"][...], loaded.spec.size))
                        if loaded.biplanar:
                            views["lateral"].append(xray_to_unit(f["xray2"][...], loaded.spec.size))
                        drr = tuple(float(f.attrs.get(k, np.nan)) for k in ("sad_mm", "sid_mm", "detector_mm"))
                except (OSError, KeyError) as err:
                    raise InputError(path, f"unreadable case file ({' '.join(str(err).split())})") from None
                if not np.allclose(drr, (geometry.sad_mm, geometry.sid_mm, geometry.detector_mm)):
                    mismatched[drr] = mismatched.get(drr, 0) + 1
            tensors = [torch.from_numpy(np.stack(views[k])[:, None]).to(loaded.device) for k in views if views[k]]
            with torch.inference_mode():
                unit = loaded.module(*tensors).float().cpu().numpy()
            for i, row in enumerate(chunk):
                volume_hu = unit_to_hu(unit[i, 0])
                grid = CanonicalGrid(size=volume_hu.shape[0])
                image = Prediction(
                    volume_hu=volume_hu,
                    grid=grid,
                    model=loaded,
                    views={},
                    reprojections={},
                    consistency={},
                    timings_s={},
                    warnings=[],
                ).image()  # the same HU int16 image x2ct predict writes
                target = synthetic_ct_path(out, row["case_id"])
                target.parent.mkdir(parents=True, exist_ok=True)
                for stale in target.parent.glob(".synthetic_ct.*.partial*"):
                    stale.unlink(missing_ok=True)  # left by a killed earlier run
                with atomic_path(target) as tmp:
                    sitk.WriteImage(image, str(tmp), useCompression=True)
                report.written.append(row["case_id"])
                bar.update(1)
            report.manifest = _write_manifest(out, rows, loaded.name, loaded.sha256)
    if report.manifest is None:
        report.manifest = _write_manifest(out, rows, loaded.name, loaded.sha256)
    expected = (geometry.sad_mm, geometry.sid_mm, geometry.detector_mm)
    for drr, count in mismatched.items():
        report.warnings.append(
            f"{count} case(s) have DRRs with SAD/SID/detector {drr} mm, not the model's training geometry {expected} mm"
        )
    return report
