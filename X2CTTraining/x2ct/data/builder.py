"""Data set builder: CT folders (or one CT with procedural lesions) -> paired CT / PA / lateral HDF5 files.

One HDF5 file per case, ``OUT/<case_id>/ct_xray_data.h5``, in the official X2CT-GAN layout (kylekma/X2CT
``3DGAN/lib/dataset/alignDataSetViews.py`` reads it) plus metadata; see docs/datasets.md for the full table.

* ``ct``: uint16 (D, H, W) on the canonical grid (x2ct.geometry's axes; 320 mm cube), value = HU + 1024
  rounded and clipped to 0..2500 (the official stored convention; the learning scale is ``ct / 2500``).
  Everything outside the body mask (x2ct.data.body: table and bed removed) is 0 (= -1024 HU).
* ``xray1`` (PA) and ``xray2`` (lateral): uint8 (N, N) DRRs of the masked CT with the official
  cone-beam geometry, per-image min-max of the line integral to 0..255 (official PNG convention);
  rows superior->inferior, PA columns patient right->left, lateral columns anterior->posterior.
* ``spacing``: float64 (3,) voxel edge of ``ct`` in mm, (D, H, W) order.
* ``ori_size``: int64 (3,) array shape of the source CT as read, numpy (z, y, x) order.
* synthetic cases only: ``labels`` (D, H, W) organ label map, ``lesions/<kind>`` uint8 (D, H, W)
  mask per lesion kind (all kinds, zeros when absent), targets as ``target_<name>`` attributes
  (-1 = not applicable).

Split: real cases by patient, ``sha256("<seed>:<patient id>")`` mapped to [0, 1) against the
cumulative ratios, so one patient never straddles splits; the patient id is DICOM PatientID when
present, else the list file's patient_id column, else the case id. Synthetic cases all come from one
patient, so they are split by case index with the golden-ratio sequence ``frac(index x 0.618...)``
(deterministic, independent of the number of cases, close to the ratios from 10 cases on).

Resume: a case whose h5 exists and validates (layout plus the run's size, DRR size and geometry)
is skipped; every file is written under a temporary name and renamed when complete. One run at a time
writes OUT (x2ct.atomic.exclusive_output, which also removes the temporaries of a killed run), and the
worker processes of ``workers > 1`` end with the run, even when it is killed.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import math
import multiprocessing
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import h5py
import numpy as np
import SimpleITK as sitk
import torch
from tqdm import tqdm

from .. import __version__
from ..atomic import atomic_path, exclusive_output, sha256_file, write_text_atomic
from ..drr import MU_WATER_PER_MM, DRRGeometry, normalize, project
from ..errors import InputError, PathLike
from ..geometry import AXES, DIRECTION_LPS, EXTENT_MM, GRID_SIZES, grid_of, labels_to_canonical
from ..intensity import HU_OFFSET, UNIT_RANGE
from ..io import read_ct
from ..io.ct import find_dicom_series
from ..io.volume import VOLUME_SUFFIXES
from ..lifetime import end_with_parent
from ..userfiles import check_output_folder, listed_path, read_csv_rows, read_text, write_failure_report
from ..views import LATERAL, PA
from .body import OPENING_MM, masked_canonical_ct
from .layout import CASE_FILE, MANIFEST, SPLITS

LAYOUT_VERSION = 1
"""Version of the h5 layout written here (attribute ``x2ct_layout_version``)."""

CT_SUFFIXES = (*VOLUME_SUFFIXES, ".mhd", ".nhdr")
"""File endings taken as one CT per file when INPUT is a folder (subfolders are DICOM series)."""

LIST_SUFFIXES = (".txt", ".csv")
"""File endings of list files (one CT path per line)."""

DEFAULT_RATIOS = (0.8, 0.1, 0.1)
"""Default train/val/test fractions."""

LABEL_COLUMNS = ("tb_present", "tb_granuloma", "tb_cavitation", "tb_calcification", "tb_active", "pe_present")
"""Target columns of the manifest (synthetic cases; empty for real CTs and where not applicable)."""

MANIFEST_COLUMNS = (
    "case_id",
    "patient_id",
    "split",
    "path",
    "source",
    "source_sha256",
    "size",
    "drr_size",
    "synthetic_index",
    "lesion_kinds",
)
"""Manifest columns before the label columns."""

NOT_APPLICABLE = -1
"""Stored in ``target_<name>`` attributes for a target that does not apply (None)."""

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_TAG_PATIENT_ID = "0010|0020"
_STORED_MAX = int(UNIT_RANGE)

Log = Callable[[str], None]


@dataclass(frozen=True)
class BuildOptions:
    """Settings of one build: canonical grid ``size`` (voxels per edge: 64, 128 or 256), DRR pixels per
    edge ``drr_size``, process count ``workers``, ``seed`` (split salt; synthetic generator seed),
    train/val/test ``ratios`` and the DRR ``geometry`` (mm; official by default)."""

    size: int = 128
    drr_size: int = 128
    workers: int = 1
    seed: int = 0
    ratios: Tuple[float, float, float] = DEFAULT_RATIOS
    geometry: DRRGeometry = field(default_factory=DRRGeometry)

    def __post_init__(self) -> None:
        if self.size not in GRID_SIZES:
            raise InputError(None, f"--size {self.size}: choose one of {', '.join(map(str, GRID_SIZES))}")
        if not 16 <= self.drr_size <= 2048:
            raise InputError(None, f"--drr-size {self.drr_size}: choose a DRR size between 16 and 2048 pixels")
        if self.workers < 1:
            raise InputError(None, f"--workers {self.workers}: need at least 1")
        check_ratios(self.ratios)

    def expected_attrs(self) -> Dict[str, object]:
        """Attributes a finished case of this build must carry (compared on resume)."""
        return {
            "x2ct_layout_version": LAYOUT_VERSION,
            "size": self.size,
            "drr_size": self.drr_size,
            "sad_mm": self.geometry.sad_mm,
            "sid_mm": self.geometry.sid_mm,
            "detector_mm": self.geometry.detector_mm,
        }


@dataclass(frozen=True)
class CaseSource:
    """One real CT to build: ``case_id`` (folder name under OUT), ``path`` (CT file or DICOM series
    folder) and an optional ``patient_id`` given by a list file."""

    case_id: str
    path: Path
    patient_id: Optional[str] = None


@dataclass(frozen=True)
class CaseResult:
    """Outcome of building one case: ``error`` is the one-line problem (None when built)."""

    case_id: str
    source: str
    error: Optional[str] = None
    warnings: Tuple[str, ...] = ()
    seconds: float = 0.0


@dataclass
class BuildReport:
    """What a run did: case ids built and skipped, failures as (source, one-line problem), the manifest (None
    when OUT holds no finished case) and the failure report (None when nothing failed)."""

    out: Path
    built: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    failed: List[Tuple[str, str]] = field(default_factory=list)
    manifest: Optional[Path] = None
    failures: Optional[Path] = None
    split_counts: Dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """0 when at least one case is finished (built or skipped) or nothing failed; 2 when every case failed."""
        return 2 if self.failed and not (self.built or self.skipped) else 0

    def summary(self) -> str:
        """Multi-line human summary: counts, each failure on its own line, and the manifest."""
        total = len(self.built) + len(self.skipped) + len(self.failed)
        lines = [
            f"build-dataset: {len(self.built)} built, {len(self.skipped)} skipped, {len(self.failed)} failed "
            f"(of {total} cases) in {self.seconds:.1f} s -> {self.out}"
        ]
        lines += [f"  failed: {problem}" for _, problem in self.failed]
        if self.failures is not None:
            lines.append(f"failures: {self.failures}")
        if self.manifest is not None:
            counts = ", ".join(f"{name} {self.split_counts.get(name, 0)}" for name in SPLITS)
            lines.append(f"manifest: {self.manifest} ({sum(self.split_counts.values())} cases: {counts})")
        return "\n".join(lines)


def check_ratios(ratios: Sequence[float]) -> Tuple[float, float, float]:
    """Validate train/val/test fractions: three numbers >= 0 summing to 1 (InputError otherwise)."""
    values = tuple(float(r) for r in ratios)
    if len(values) != 3 or min(values) < 0 or not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise InputError(None, f"--split {','.join(map(str, ratios))}: give three fractions >= 0 that sum to 1")
    return values  # type: ignore[return-value]


def _split_at(u: float, ratios: Sequence[float]) -> str:
    """The split whose cumulative-ratio interval holds ``u`` in [0, 1)."""
    edge = 0.0
    for name, ratio in zip(SPLITS, ratios):
        edge += ratio
        if u < edge:
            return name
    return next(name for name, ratio in zip(reversed(SPLITS), reversed(ratios)) if ratio > 0)


def split_for_patient(patient_id: str, ratios: Sequence[float] = DEFAULT_RATIOS, seed: int = 0) -> str:
    """Patient-level split: the first 8 bytes of ``sha256("<seed>:<patient_id>")`` as u in [0, 1) vs the ratios."""
    digest = hashlib.sha256(f"{seed}:{patient_id}".encode()).digest()
    return _split_at(int.from_bytes(digest[:8], "big") / 2.0**64, ratios)


def split_for_index(index: int, ratios: Sequence[float] = DEFAULT_RATIOS) -> str:
    """Split of synthetic case ``index`` (all one patient): u = frac(index x golden ratio) vs the ratios."""
    return _split_at((index * _GOLDEN) % 1.0, ratios)


# ----------------------------------------------------------------------------------------------- inputs


def _strip_ct_suffix(name: str) -> str:
    lower = name.lower()
    suffix = next((s for s in sorted(CT_SUFFIXES, key=len, reverse=True) if lower.endswith(s)), "")
    return name[: len(name) - len(suffix)] if suffix else name


def _safe_id(text: str) -> str:
    """A folder-safe case id: letters, digits, '-', '_', '.'; never hidden (no leading '.')."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in text).lstrip(".")
    return cleaned or "case"


def _assign_ids(paths: Sequence[Tuple[Path, Optional[str]]], origin: Path) -> List[CaseSource]:
    """Case ids from the file or folder names without the CT ending; names that clash keep it (a.nii, a.nrrd)."""
    first = [_safe_id(_strip_ct_suffix(p.name) or p.name) for p, _ in paths]
    ids = [_safe_id(p.name) if first.count(c) > 1 else c for (p, _), c in zip(paths, first)]
    seen: Dict[str, Path] = {}
    for (path, _), case_id in zip(paths, ids):
        if case_id in seen:
            raise InputError(origin, f"{seen[case_id]} and {path} give the same case id {case_id!r}; rename one")
        seen[case_id] = path
    return [CaseSource(case_id, path, patient) for (path, patient), case_id in zip(paths, ids)]


def _read_list(list_file: Path) -> List[Tuple[Path, Optional[str]]]:
    """Entries of a list file, read by the rules of :mod:`x2ct.userfiles` (UTF-8 with or without BOM, CRLF or
    LF, quoted paths, relative paths from the list file's folder); blank lines and '#' lines skipped.

    A .txt holds one CT path per line. A .csv takes the first column as the path and an optional second as
    the patient id; a header row (first cell ``path``) names the columns (``path``, ``patient_id``, others
    ignored). InputError naming the line for a row with more cells than that.
    """
    if list_file.suffix.lower() == ".csv":
        rows = [(line, cells) for line, cells in read_csv_rows(list_file) if not cells[0].startswith("#")]
    else:
        lines = enumerate(read_text(list_file).splitlines(), start=1)
        rows = [(line, [text.strip()]) for line, text in lines if text.strip() and not text.lstrip().startswith("#")]
    names = ["path", "patient_id"]
    if rows and rows[0][1][0].lower() == "path":
        names = [cell.lower() for cell in rows.pop(0)[1]]
    entries = []
    for line, cells in rows:
        if any(cells[len(names) :]):
            expected = f"at most {len(names)} ({', '.join(names)})"
            raise InputError(list_file, f"line {line}: {len(cells)} cells; expected {expected}")
        row = dict(zip(names, cells))
        if row.get("path"):
            entries.append((listed_path(row["path"], list_file), row.get("patient_id") or None))
    return entries


def find_cases(input_path: PathLike, exclude: Optional[PathLike] = None) -> List[CaseSource]:
    """The cases of INPUT: a folder (each CT file or each subfolder = DICOM series is a case, sorted by name;
    hidden entries, other files and ``exclude`` are ignored) or a list file (.txt/.csv, one path per line).

    Raises InputError when INPUT is missing, is another kind of file, or lists no cases. Missing paths
    inside a list file are not an error here; they fail as their own cases.
    """
    p = Path(os.fspath(input_path))
    if not p.exists():
        raise InputError(p, "no such file or folder")
    if p.is_file():
        if p.suffix.lower() not in LIST_SUFFIXES:
            raise InputError(p, "is neither a folder of CTs nor a list file (.txt or .csv, one CT path per line)")
        entries = _read_list(p)
    else:
        skip = Path(exclude).resolve() if exclude is not None else None
        entries = [
            (child, None)
            for child in sorted(p.iterdir())
            if not child.name.startswith(".")
            and child.resolve() != skip
            and (child.is_dir() or child.name.lower().endswith(CT_SUFFIXES))
        ]
    if not entries:
        raise InputError(
            p,
            "lists no CTs"
            if p.is_file()
            else f"holds no CT files ({', '.join(CT_SUFFIXES)}) or DICOM series subfolders (one series per subfolder)",
        )
    return _assign_ids(entries, p)


# ------------------------------------------------------------------------------------------- per case


def _dicom_files(path: Path) -> List[Path]:
    """The files of the series :func:`x2ct.io.read_ct` reads from a folder (the largest series)."""
    return [Path(f) for f in max(find_dicom_series(path), key=lambda s: len(s.files)).files]


def source_sha256(path: Path) -> str:
    """sha256 of a CT file; for a DICOM folder, of the series' files' sha256s with their names (sorted by name)."""
    if not path.is_dir():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(_dicom_files(path), key=lambda f: f.name):
        digest.update(f"{file.name}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def _dicom_patient_id(path: Path) -> Optional[str]:
    """PatientID (0010,0020) of a DICOM folder's series or a DICOM file; None when absent or not DICOM."""
    first = _dicom_files(path)[0] if path.is_dir() else path
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(first))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    if not reader.HasMetaDataKey(_TAG_PATIENT_ID):  # only DICOM headers carry this key
        return None
    value = reader.GetMetaData(_TAG_PATIENT_ID).strip().rstrip("\x00").strip()
    return value or None


def render_xrays(hu: np.ndarray, spacing_mm: float, size: int, geometry: DRRGeometry) -> Tuple[np.ndarray, np.ndarray]:
    """PA and lateral DRRs of a (D, H, W) HU volume as uint8 (size, size): per-image min-max to 0..255 (official)."""
    volume = torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))[None, None]
    images = []
    with torch.no_grad():
        for view in (PA, LATERAL):
            unit = normalize(project(volume, spacing_mm, view, size, geometry, units="hu"))[0, 0].numpy()
            images.append(np.round(unit * 255.0).astype(np.uint8))
    return images[0], images[1]


def stored_ct(hu: np.ndarray) -> np.ndarray:
    """HU -> the official stored CT convention: uint16 round(HU + 1024) clipped to 0..2500."""
    return np.clip(np.rint(np.asarray(hu, dtype=np.float32) + HU_OFFSET), 0, _STORED_MAX).astype(np.uint16)


def _conventions(options: BuildOptions, grid_center: Sequence[float]) -> Dict[str, object]:
    spacing = EXTENT_MM / options.size
    return {
        **options.expected_attrs(),
        "x2ct_version": __version__,
        "synthetic_drrs": "xray1/xray2 are SYNTHETIC digitally reconstructed radiographs; research use only",
        "ct_convention": "uint16 = round(HU + 1024) clipped to 0..2500 (official stored values); learning scale "
        "ct/2500; 0 = -1024 HU = air, also everywhere outside the body mask (table and bed removed)",
        "axes": f"ct {AXES}; xray rows "
        "superior->inferior; xray1 = PA, columns patient right->left; xray2 = lateral, columns anterior->posterior",
        "xray_convention": "uint8 0..255 = per-image min-max of the cone-beam line integral of the masked CT "
        "(mu = mu_water (1 + HU/1000)), dense = bright (official DRR PNG convention)",
        "grid_extent_mm": EXTENT_MM,
        "grid_spacing_mm": spacing,
        "grid_center_lps_mm": np.asarray(grid_center, dtype=np.float64),
        "grid_direction_lps": np.asarray(DIRECTION_LPS, dtype=np.float64),
        "detector_spacing_mm": options.geometry.detector_spacing_mm(options.drr_size),
        "isocenter_spacing_mm": options.geometry.isocenter_spacing_mm(options.drr_size),
        "mu_water_per_mm": MU_WATER_PER_MM,
        "body_mask": f"threshold -500 HU, in-plane opening {OPENING_MM:g} mm, largest component, per-slice hole fill",
    }


def _write_case(
    target: Path,
    hu: np.ndarray,
    options: BuildOptions,
    grid_center: Sequence[float],
    ori_size: Sequence[int],
    attrs: Mapping[str, object],
    extra: Mapping[str, np.ndarray],
) -> None:
    """Render both DRRs of ``hu`` and write the case file atomically (datasets, then attributes)."""
    xray1, xray2 = render_xrays(hu, EXTENT_MM / options.size, options.drr_size, options.geometry)
    target.parent.mkdir(parents=True, exist_ok=True)
    volume_options = {"compression": "gzip", "compression_opts": 4, "shuffle": True, "chunks": True}
    with atomic_path(target) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("ct", data=stored_ct(hu), track_times=False, **volume_options)
        f.create_dataset("xray1", data=xray1, track_times=False)
        f.create_dataset("xray2", data=xray2, track_times=False)
        f.create_dataset("spacing", data=np.full(3, EXTENT_MM / options.size, dtype=np.float64), track_times=False)
        f.create_dataset("ori_size", data=np.asarray(ori_size, dtype=np.int64), track_times=False)
        for name, array in extra.items():
            f.create_dataset(name, data=array, track_times=False, **volume_options)
        for key, value in {**_conventions(options, grid_center), **attrs}.items():
            f.attrs[key] = value


@dataclass(frozen=True)
class _RealTask:
    """Build one real CT (picklable for the process pool)."""

    source: CaseSource
    options: BuildOptions

    @property
    def case_id(self) -> str:
        return self.source.case_id

    @property
    def label(self) -> str:
        return str(self.source.path)

    def expected(self) -> Dict[str, object]:
        return self.options.expected_attrs()

    def build(self, target: Path) -> None:
        path = self.source.path
        ct = read_ct(path)
        canonical = masked_canonical_ct(ct, size=self.options.size, source=path)
        patient = self.source.patient_id or _dicom_patient_id(path) or self.source.case_id
        attrs = {
            "case_id": self.source.case_id,
            "patient_id": patient,
            "source": str(path.resolve()),
            "source_sha256": source_sha256(path),
            "source_kind": "dicom-series" if path.is_dir() else "file",
            "ori_spacing_mm": np.asarray(ct.GetSpacing()[::-1], dtype=np.float64),
        }
        hu = sitk.GetArrayFromImage(canonical)
        ori_size = ct.GetSize()[::-1]
        _write_case(target, hu, self.options, grid_of(canonical).center_lps, ori_size, attrs, {})


@dataclass(frozen=True)
class _SyntheticBase:
    """The masked canonical CT (HU) and label map one synthetic benchmark is built from."""

    hu: np.ndarray
    labels: np.ndarray
    center_lps: Tuple[float, float, float]
    ori_size: Tuple[int, int, int]
    ori_spacing: Tuple[float, float, float]


def _read_labels(path: Path) -> sitk.Image:
    try:
        labels = sitk.ReadImage(str(path))
    except RuntimeError:
        raise InputError(path, "cannot be read as a label map (expected NIfTI, NRRD or MHA)") from None
    if labels.GetDimension() != 3 or labels.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, "is not a 3-D single-component label map")
    if labels.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        raise InputError(path, "holds floating-point values, not integer labels")
    return labels


_BaseKey = Tuple[Path, Path, int]
_BASES: Dict[_BaseKey, _SyntheticBase] = {}
"""This process's synthetic bases by (CT path, labels path, grid size); handed to pool workers at start."""


def _synthetic_base(ct_path: Path, labels_path: Path, size: int) -> _SyntheticBase:
    """Masked canonical CT and its labels (nearest neighbour), computed once per process (read-only arrays)."""
    key = (ct_path, labels_path, size)
    if key not in _BASES:
        _BASES.clear()  # one benchmark at a time; a base is up to 80 MB at 256³
        _BASES[key] = _compute_synthetic_base(*key)
    return _BASES[key]


def _compute_synthetic_base(ct_path: Path, labels_path: Path, size: int) -> _SyntheticBase:
    ct = read_ct(ct_path)
    labels = _read_labels(labels_path)
    canonical = masked_canonical_ct(ct, size=size, source=ct_path)
    label_array = sitk.GetArrayFromImage(labels_to_canonical(labels, canonical))
    hu = sitk.GetArrayFromImage(canonical)
    for array in (hu, label_array):
        array.flags.writeable = False
    return _SyntheticBase(
        hu, label_array, grid_of(canonical).center_lps, tuple(ct.GetSize()[::-1]), tuple(ct.GetSpacing()[::-1])
    )


def synthetic_case_id(seed: int, index: int) -> str:
    """Case id of synthetic case ``index`` generated with ``seed``."""
    return f"synth-s{seed}-{index:05d}"


@dataclass(frozen=True)
class _SyntheticTask:
    """Build synthetic case ``index`` from one CT and its label map (picklable for the process pool)."""

    ct_path: Path
    labels_path: Path
    index: int
    options: BuildOptions

    @property
    def case_id(self) -> str:
        return synthetic_case_id(self.options.seed, self.index)

    @property
    def label(self) -> str:
        return f"{self.ct_path} (synthetic case {self.index}, seed {self.options.seed})"

    def expected(self) -> Dict[str, object]:
        return {**self.options.expected_attrs(), "synthetic_seed": self.options.seed, "synthetic_index": self.index}

    def build(self, target: Path) -> None:
        from .lesions import LesionError
        from .synthetic import LESION_KINDS, synthetic_case

        base = _synthetic_base(self.ct_path, self.labels_path, self.options.size)
        spacing = EXTENT_MM / self.options.size
        try:
            case = synthetic_case(base.hu.copy(), base.labels.copy(), spacing, self.options.seed, self.index)
        except LesionError as err:
            raise InputError(self.labels_path, f"synthetic case {self.index}: {err}") from None
        label_dtype = np.uint8 if int(case.labels.max(initial=0)) < 256 else np.uint16
        extra = {"labels": np.asarray(case.labels).astype(label_dtype)}
        empty = np.zeros(case.labels.shape, dtype=np.uint8)
        for kind in LESION_KINDS:
            mask = case.lesion_masks.get(kind)
            extra[f"lesions/{kind}"] = empty if mask is None else np.asarray(mask, dtype=np.uint8)
        attrs: Dict[str, object] = {
            "case_id": self.case_id,
            "patient_id": f"synthetic:{_safe_id(_strip_ct_suffix(self.ct_path.name))}",
            "source": str(self.ct_path.resolve()),
            "source_sha256": sha256_file(self.ct_path),
            "source_kind": "synthetic",
            "labels_source": str(self.labels_path.resolve()),
            "labels_sha256": sha256_file(self.labels_path),
            "ori_spacing_mm": np.asarray(base.ori_spacing, dtype=np.float64),
            "synthetic_seed": self.options.seed,
            "synthetic_index": self.index,
            "lesion_kinds": ";".join(case.kinds),
        }
        for name, value in case.targets.items():
            attrs[f"target_{name}"] = NOT_APPLICABLE if value is None else int(value)
        _write_case(target, np.asarray(case.ct_hu), self.options, base.center_lps, base.ori_size, attrs, extra)


# ----------------------------------------------------------------------------------------------- runs


def case_path(out: PathLike, case_id: str) -> Path:
    """``OUT/<case_id>/ct_xray_data.h5``."""
    return Path(out) / case_id / CASE_FILE


def validate_case(path: PathLike, expected: Optional[Mapping[str, object]] = None) -> bool:
    """Whether ``path`` is a complete case file: readable, every dataset present with the shape and dtype
    its own ``size``/``drr_size`` attributes call for, and (when given) attributes equal to ``expected``."""
    try:
        with h5py.File(path, "r") as f:
            attrs = f.attrs
            if attrs.get("x2ct_layout_version") != LAYOUT_VERSION:
                return False
            if expected is not None and any(attrs.get(k) != v for k, v in expected.items()):
                return False
            n, m = int(attrs["size"]), int(attrs["drr_size"])
            shapes = {
                "ct": ((n, n, n), np.uint16),
                "xray1": ((m, m), np.uint8),
                "xray2": ((m, m), np.uint8),
                "spacing": ((3,), np.float64),
                "ori_size": ((3,), np.int64),
            }
            if attrs.get("source_kind") == "synthetic":
                shapes["labels"] = ((n, n, n), None)
                if "lesions" not in f:
                    return False
                shapes.update({f"lesions/{kind}": ((n, n, n), np.uint8) for kind in f["lesions"]})
            return all(
                name in f and f[name].shape == shape and (dtype is None or f[name].dtype == dtype)
                for name, (shape, dtype) in shapes.items()
            )
    except (OSError, KeyError, ValueError, TypeError):
        return False


def _init_worker(threads: int, bases: Mapping[_BaseKey, _SyntheticBase]) -> None:
    """Pool worker start: end with the run even when it is killed (the pool spawns from the thread that runs
    :func:`_results`, which outlives the pool), share the cores among the workers and adopt the parent's
    synthetic bases."""
    end_with_parent(kernel_signal=True)
    torch.set_num_threads(threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    _BASES.update(bases)


def _run_task(task: _RealTask | _SyntheticTask, out: Path) -> CaseResult:
    """Build one case; every exception becomes the one-line ``error`` of the result (the run goes on)."""
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            task.build(case_path(out, task.case_id))
            error = None
        except InputError as err:
            error = str(err) if err.path else f"{task.label}: {err}"
        except MemoryError:
            error = f"{task.label}: out of memory"
        except Exception as err:  # noqa: BLE001 - one bad case must not stop the batch; reported in full
            error = f"{task.label}: internal error ({type(err).__name__}: {' '.join(str(err).split())})"
    texts = (" ".join(str(w.message).split()) for w in caught)
    notes = tuple(text if text.startswith(f"{task.label}: ") else f"{task.label}: {text}" for text in texts)
    return CaseResult(task.case_id, task.label, error, notes, time.perf_counter() - start)


def _results(tasks: Sequence[_RealTask | _SyntheticTask], out: Path, workers: int) -> Iterator[CaseResult]:
    """Results in completion order: in this process, or in a spawned pool of ``workers`` processes."""
    if workers == 1 or len(tasks) <= 1:
        yield from (_run_task(task, out) for task in tasks)
        return
    workers = min(workers, len(tasks))
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")  # fork after torch/ITK threads have started can deadlock
    initargs = (threads, dict(_BASES))
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=initargs) as pool:
        futures = [pool.submit(_run_task, task, out) for task in tasks]
        yield from (future.result() for future in as_completed(futures))


def default_log(line: str) -> None:
    """Print a log line to stderr without breaking the progress bar."""
    tqdm.write(line, file=sys.stderr)


def _run(tasks: Sequence[_RealTask | _SyntheticTask], out: Path, options: BuildOptions, log: Log) -> BuildReport:
    start = time.perf_counter()
    report = BuildReport(out=out)
    pending = []
    for task in tasks:
        if validate_case(case_path(out, task.case_id), task.expected()):
            report.skipped.append(task.case_id)
        else:
            pending.append(task)
    bar = tqdm(total=len(tasks), initial=len(report.skipped), unit="case", desc="build-dataset", file=sys.stderr)
    failures: List[Tuple[str, str, str]] = []
    with bar:
        for result in _results(pending, out, options.workers):
            for note in result.warnings:
                log(f"x2ct: warning: {note}")
            if result.error is None:
                report.built.append(result.case_id)
            else:
                report.failed.append((result.source, result.error))
                failures.append((result.case_id, result.source, result.error))
                log(f"x2ct: error: {result.error}")
            bar.update(1)
    report.built.sort()
    report.failed.sort()
    report.failures = write_failure_report(out, sorted(failures))
    report.manifest, report.split_counts = write_manifest(out, options.ratios, options.seed)
    report.seconds = time.perf_counter() - start
    return report


@contextlib.contextmanager
def _held_out(out: PathLike) -> Iterator[Path]:
    """OUT checked (x2ct.userfiles), held by this run (x2ct.atomic.exclusive_output), then created."""
    folder = check_output_folder(out)
    with exclusive_output(folder):
        folder.mkdir(parents=True, exist_ok=True)
        yield folder


def build_dataset(
    input_path: PathLike, out: PathLike, options: Optional[BuildOptions] = None, log: Log = default_log
) -> BuildReport:
    """Build ``OUT/<case_id>/ct_xray_data.h5`` for every CT of a folder or list file, then ``OUT/manifest.csv``.

    Finished cases are skipped; a failing case is logged (one line) and the rest go on.
    Raises InputError only for problems with INPUT or OUT as a whole.
    """
    options = options or BuildOptions()
    cases = find_cases(input_path, exclude=out)
    with _held_out(out) as folder:
        return _run([_RealTask(case, options) for case in cases], folder, options, log)


def build_synthetic_dataset(
    ct_path: PathLike,
    labels_path: PathLike,
    out: PathLike,
    cases: int,
    options: Optional[BuildOptions] = None,
    log: Log = default_log,
) -> BuildReport:
    """Build ``cases`` synthetic cases (index 0..cases-1, ``options.seed``) from one CT and its label map.

    Each case is :func:`x2ct.data.synthetic.synthetic_case` of the masked canonical CT; it is stored
    with its label map, lesion masks and targets. Raises InputError when the CT or label map is unusable.
    """
    options = options or BuildOptions()
    if cases < 1:
        raise InputError(None, f"--cases {cases}: need at least 1")
    ct_path, labels_path = Path(os.fspath(ct_path)), Path(os.fspath(labels_path))
    _synthetic_base(ct_path, labels_path, options.size)  # fail early, as a whole, on a bad CT or label map
    tasks = [_SyntheticTask(ct_path, labels_path, index, options) for index in range(cases)]
    with _held_out(out) as folder:
        return _run(tasks, folder, options, log)


# ------------------------------------------------------------------------------------------- manifest


def _manifest_row(out: Path, path: Path, ratios: Sequence[float], seed: int) -> Dict[str, object]:
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
    index = attrs.get("synthetic_index")
    patient = str(attrs["patient_id"])
    row: Dict[str, object] = {
        "case_id": str(attrs["case_id"]),
        "patient_id": patient,
        "split": split_for_patient(patient, ratios, seed) if index is None else split_for_index(int(index), ratios),
        "path": path.relative_to(out).as_posix(),
        "source": str(attrs["source"]),
        "source_sha256": str(attrs["source_sha256"]),
        "size": int(attrs["size"]),
        "drr_size": int(attrs["drr_size"]),
        "synthetic_index": "" if index is None else int(index),
        "lesion_kinds": str(attrs.get("lesion_kinds", "")),
    }
    for key, value in attrs.items():
        if key.startswith("target_"):
            row[key[len("target_") :]] = "" if int(value) == NOT_APPLICABLE else int(value)
    return row


def write_manifest(
    out: PathLike, ratios: Sequence[float] = DEFAULT_RATIOS, seed: int = 0
) -> Tuple[Optional[Path], Dict[str, int]]:
    """(Re)write ``OUT/manifest.csv`` atomically from every valid case file under OUT (sorted by case id).

    Columns: :data:`MANIFEST_COLUMNS`, then :data:`LABEL_COLUMNS`, then any further ``target_*`` names
    (sorted); label cells are empty for real CTs and for targets that do not apply.
    Returns the path and the number of cases per split. With no valid case there is no data set: an earlier
    manifest is removed and the path is None.
    """
    out = Path(os.fspath(out))
    rows = [
        _manifest_row(out, path, ratios, seed)
        for path in sorted(out.glob(f"*/{CASE_FILE}"))
        if not path.parent.name.startswith(".") and validate_case(path)
    ]
    counts = {name: sum(row["split"] == name for row in rows) for name in SPLITS}
    if not rows:
        (out / MANIFEST).unlink(missing_ok=True)
        return None, counts
    extra = sorted({key for row in rows for key in row} - set(MANIFEST_COLUMNS) - set(LABEL_COLUMNS))
    columns = [*MANIFEST_COLUMNS, *LABEL_COLUMNS, *extra]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    target = out / MANIFEST
    write_text_atomic(target, buffer.getvalue())
    return target, counts
