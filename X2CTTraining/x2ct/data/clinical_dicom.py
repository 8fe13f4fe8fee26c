"""Simulated clinical radiographs as CR/DX DICOM files, and ``x2ct simulate-radiographs``: a built data set's DRRs
(or radiograph files) through :mod:`x2ct.data.clinical` into a folder that ``x2ct predict --manifest`` reads.

Output folder ``OUT``::

    simulation.json          the options (seed, modality, ...) and the source; a rerun must match them
    <case_id>/pa.dcm         the simulated PA (and lateral.dcm for the lateral), written per case, atomically
    <case_id>/params.json    every simulator parameter of each view (ClinicalParams.to_dict)
    manifest.csv             case_id,pa,lateral with paths relative to OUT

Finished cases (their folder holds params.json) are skipped, so an interrupted run continues. Seeds: each case has
its own stream ``numpy.random.default_rng([seed, crc32(case_id)])``; the "machine" (modality, photometric
interpretation, grid) is drawn once per case, then each view's parameters and noise. Same seed, same files.

DICOM (PS3.3 A.2 CR Image, A.26 DX Image For Presentation): uncompressed 12-16-bit unsigned pixels
(``ClinicalParams.bits_stored``), MONOCHROME1 (PresentationLUTShape INVERSE) or MONOCHROME2 (IDENTITY), a
window spanning the whole stored range, ImagerPixelSpacing = the detector pitch, PixelSpacing = the pitch at the
isocentre (calibration GEOMETRY) with EstimatedRadiographicMagnificationFactor = SID/SAD, ViewPosition PA or LL
(x2ct's lateral: source on the patient's right), PatientOrientation L\\F or P\\F, BodyPartExamined CHEST, the
exposure index of IEC 62494-1 (100 x detector air kerma in µGy), Synthetic Data YES and a SeriesDescription that
starts with SYNTHETIC. No patient identifiers: the name is ``Anonymous^Simulated``, the ID a hash of the case id,
no dates; UIDs are derived from the case, view and seed (the same run gives the same files).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sys
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)
from tqdm import tqdm

from ..atomic import atomic_dir, atomic_path, exclusive_output, write_text_atomic
from ..drr_geometry import DRRGeometry
from ..errors import InputError, PathLike
from ..io.dicom_compat import SYNTHETIC_DATA, save_part10, set_pixel_data
from ..views import LATERAL, LATERAL_KEY, PA, PA_KEY, is_frontal, normalize_view
from .clinical import DEFAULT_RANGES, EFFECTS, SimulatedRadiograph, sample_params, simulate

SOP_CLASSES = {"CR": ComputedRadiographyImageStorage, "DX": DigitalXRayImageStorageForPresentation}
"""SOP Class UID of each modality: CR Image Storage, Digital X-Ray Image Storage - For Presentation."""

VIEW_TAGS = {PA: ("PA", ["L", "F"]), LATERAL: ("LL", ["P", "F"])}
"""ViewPosition and PatientOrientation (row, column directions) of each x2ct view in display orientation."""

FILE_NAMES = {PA: "pa.dcm", LATERAL: "lateral.dcm"}
"""File of each view inside ``OUT/<case_id>/``."""

PARAMS_FILE = "params.json"
OPTIONS_FILE = "simulation.json"
MANIFEST_FILE = "manifest.csv"
UID_SALT = "x2ct-clinical-simulator"


@dataclass(frozen=True)
class SimulationOptions:
    """The choices of ``x2ct simulate-radiographs``: None draws the value from the simulator's ranges."""

    seed: int = 0
    modality: Optional[str] = None
    photometric: Optional[str] = None
    grid: Optional[bool] = None
    dose_ugy: Optional[float] = None
    effects: Tuple[str, ...] = EFFECTS

    def to_dict(self) -> Dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class SourceView:
    """One radiograph to simulate: ``drr`` (rows, cols) float [0, 1] dense bright, its detector pitch (mm) and the
    geometry it was rendered with (for the pixel spacing at the patient)."""

    drr: np.ndarray
    pixel_mm: float
    geometry: DRRGeometry


@dataclass
class SimulationReport:
    """What a run wrote (case ids), skipped (finished earlier) and the manifest."""

    out: Path
    written: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    manifest: Optional[Path] = None


# ------------------------------------------------------------------------------------------- DICOM


def _uid(*parts: object) -> str:
    return str(generate_uid(entropy_srcs=[UID_SALT, *(str(p) for p in parts)]))


def simulated_dataset(sim: SimulatedRadiograph, view: str, source: SourceView, case_id: str, seed: int) -> Dataset:
    """The DICOM data set of one simulated radiograph (module doc)."""
    p = sim.params
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SOP_CLASSES[p.modality]
    ds.SOPInstanceUID = _uid(case_id, seed, view, "instance")
    ds.StudyInstanceUID = _uid(case_id, seed, "study")
    ds.SeriesInstanceUID = _uid(case_id, seed, view, "series")
    ds.FrameOfReferenceUID = _uid(case_id, seed, "frame")
    ds.PatientName = "Anonymous^Simulated"
    ds.PatientID = "SIM-" + hashlib.sha256(case_id.encode("utf-8")).hexdigest()[:12]
    for keyword in ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "ReferringPhysicianName",
                    "AccessionNumber", "StudyID"):  # fmt: skip
        setattr(ds, keyword, "")
    ds.Modality = p.modality
    ds.Manufacturer = "x2ct clinical-radiograph simulator"
    ds.SeriesNumber = 1 if view == PA else 2
    ds.InstanceNumber = 1
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.add_new(SYNTHETIC_DATA, "CS", "YES")
    ds.SeriesDescription = f"SYNTHETIC simulated {p.modality} {VIEW_TAGS[view][0]} chest radiograph"
    ds.ImageComments = "Simulated from a DRR by x2ct.data.clinical; not an acquired image. Research use only."
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition, ds.PatientOrientation = VIEW_TAGS[view]
    ds.ImagerPixelSpacing = [round(source.pixel_mm, 6)] * 2
    magnification = source.geometry.magnification
    ds.PixelSpacing = [round(source.pixel_mm / magnification, 6)] * 2
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.EstimatedRadiographicMagnificationFactor = round(magnification, 6)
    ds.DistanceSourceToDetector = source.geometry.sid_mm
    ds.DistanceSourceToPatient = source.geometry.sad_mm
    ds.ExposureIndex = round(100.0 * p.dose_ugy, 1)
    ds.Grid = "FOCUSED" if p.grid else "NONE"
    ds.BurnedInAnnotation = "NO"
    set_pixel_data(ds, sim.stored, p.photometric, p.bits_stored)
    inverted = p.photometric == "MONOCHROME1"
    ds.PresentationLUTShape = "INVERSE" if inverted else "IDENTITY"
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1 if inverted else -1  # +1: lower values = less beam intensity
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.WindowCenter, ds.WindowWidth = 2 ** (p.bits_stored - 1), 2**p.bits_stored  # the whole stored range
    if p.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    return ds


def write_simulated_dicom(path: PathLike, sim: SimulatedRadiograph, view: str, source: SourceView, case_id: str,
                          seed: int) -> Path:  # fmt: skip
    """Write :func:`simulated_dataset` as a DICOM Part 10 file (atomically); returns the path."""
    with atomic_path(path) as tmp:
        save_part10(simulated_dataset(sim, view, source, case_id, seed), tmp)
    return Path(os.fspath(path))


# ------------------------------------------------------------------------------------------- folders


def case_rng(seed: int, case_id: str) -> np.random.Generator:
    """The random stream of one case: ``default_rng([seed, crc32(case_id)])``."""
    return np.random.default_rng([int(seed), zlib.crc32(case_id.encode("utf-8"))])


def simulate_case(
    views: Dict[str, SourceView], options: SimulationOptions, case_id: str
) -> Dict[str, SimulatedRadiograph]:
    """Simulate every view of one case (module doc: one machine per case, then each view)."""
    rng = case_rng(options.seed, case_id)
    r = DEFAULT_RANGES
    drawn_dx, drawn_m1, drawn_grid = (rng.random() < p for p in (r.dx_probability, r.monochrome1_probability,
                                                                 r.grid_probability))  # fmt: skip
    modality = options.modality or ("DX" if drawn_dx else "CR")
    photometric = options.photometric or ("MONOCHROME1" if drawn_m1 else "MONOCHROME2")
    grid = bool(drawn_grid) if options.grid is None else options.grid
    out = {}
    for view in (PA, LATERAL):
        if view in views:
            params = sample_params(rng, modality=modality, photometric=photometric, grid=grid,
                                   dose_ugy=options.dose_ugy, effects=options.effects)  # fmt: skip
            out[view] = simulate(views[view].drr, params, views[view].pixel_mm, rng)
    return out


def _check_options(out: Path, record: Dict[str, Any]) -> None:
    """Write ``OUT/simulation.json``, or refuse when it holds another run's options."""
    path = out / OPTIONS_FILE
    if path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            saved = None
        if saved != record:
            raise InputError(out, f"holds simulated radiographs made with other options or another source (see "
                             f"{OPTIONS_FILE}); choose a new output folder")  # fmt: skip
        return
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


def write_simulations(out: PathLike, cases: Sequence[Tuple[str, Any]], load: Any, options: SimulationOptions,
                      source: Dict[str, Any]) -> SimulationReport:  # fmt: skip
    """Simulate ``cases`` (case id, handle) into ``out``: ``load(handle)`` gives the case's views (view ->
    :class:`SourceView`). Holds the output lock; skips finished cases; writes the manifest last."""
    out = Path(os.fspath(out))
    report = SimulationReport(out)
    with exclusive_output(out):
        _check_options(out, {"options": options.to_dict(), "source": source})
        rows: List[Dict[str, str]] = []
        bar = tqdm(cases, unit="case", desc="simulate-radiographs", file=sys.stderr, disable=None)
        for case_id, handle in bar:
            folder = out / case_id
            if (folder / PARAMS_FILE).is_file():
                report.skipped.append(case_id)
                names = {view: name for view, name in FILE_NAMES.items() if (folder / name).is_file()}
            else:
                views = load(handle)
                simulated = simulate_case(views, options, case_id)
                with atomic_dir(folder) as tmp:
                    for view, sim in simulated.items():
                        write_simulated_dicom(tmp / FILE_NAMES[view], sim, view, views[view], case_id, options.seed)
                    params = {view.lower(): sim.params.to_dict() for view, sim in simulated.items()}
                    (tmp / PARAMS_FILE).write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
                report.written.append(case_id)
                names = {view: FILE_NAMES[view] for view in simulated}
            rows.append({"case_id": case_id, PA_KEY: f"{case_id}/{names[PA]}" if PA in names else "",
                         LATERAL_KEY: f"{case_id}/{names[LATERAL]}" if LATERAL in names else ""})  # fmt: skip
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=["case_id", PA_KEY, LATERAL_KEY], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        report.manifest = out / MANIFEST_FILE
        write_text_atomic(report.manifest, text.getvalue())
    return report


def simulate_dataset(data: PathLike, split: str, out: PathLike, options: SimulationOptions) -> SimulationReport:
    """Simulate the stored DRRs (``xray1`` = PA, ``xray2`` = lateral) of every case of a built data set's split,
    at their stored size and detector pitch (the case file's DRR geometry)."""
    from .layout import ALL, read_manifest
    from .loader import case_attributes, read_case

    root = Path(os.fspath(data))
    rows = [row for row in read_manifest(root) if split in (ALL, row["split"])]
    if not rows:
        raise InputError(root / "manifest.csv", f"has no case in the {split!r} split")

    def load(path: Path) -> Dict[str, SourceView]:
        if not path.is_file():
            raise InputError(path, "case file listed in the manifest is missing")
        attrs = case_attributes(path)
        geometry = DRRGeometry(**{k: float(attrs[k]) for k in ("sad_mm", "sid_mm", "detector_mm") if k in attrs})
        size = int(attrs.get("drr_size", 0))
        if size <= 0:
            raise InputError(path, "has no drr_size attribute; rebuild it with x2ct build-dataset")
        images = read_case(path, {PA_KEY: size, LATERAL_KEY: size})
        pitch = geometry.detector_spacing_mm(size)
        return {PA: SourceView(images[PA_KEY], pitch, geometry), LATERAL: SourceView(images[LATERAL_KEY], pitch,
                                                                                     geometry)}  # fmt: skip

    cases = [(row["case_id"], root / row["path"]) for row in rows]
    return write_simulations(out, cases, load, options, {"data": str(root.resolve()), "split": split})


def simulate_files(files: Sequence[PathLike], out: PathLike, options: SimulationOptions) -> SimulationReport:
    """Simulate radiograph files (``x2ct drr`` output, PNG, NRRD, DICOM): each is a case named by its file stem,
    taken as a DRR of the official geometry (500 mm detector across its width) unless it states its pixel
    spacing; its view is the file's, else its name's (``lateral.png``), else PA; a lateral file gives a lateral-only
    row."""
    from ..io import read_radiograph

    paths = [Path(os.fspath(f)) for f in files]
    stems = [p.name.split(".")[0] for p in paths]
    for path, stem in zip(paths, stems):
        if not path.is_file():
            raise InputError(path, "not found" if not path.exists() else "is not a file")
        if stems.count(stem) > 1:
            raise InputError(path, f"another input has the same name {stem!r}; each file becomes OUT/<name>/")

    def load(path: Path) -> Dict[str, SourceView]:
        radiograph = read_radiograph(path)
        cols = radiograph.pixels.shape[1]
        pitch = radiograph.spacing_mm[1] if radiograph.spacing_mm else DRRGeometry().detector_spacing_mm(cols)
        named = radiograph.view or normalize_view(path.name.split(".")[0])  # x2ct drr writes pa.* and lateral.*
        view = PA if named is None or is_frontal(named) else LATERAL
        return {view: SourceView(radiograph.pixels, float(pitch), DRRGeometry())}

    record = {"files": [str(p.resolve()) for p in paths]}
    return write_simulations(out, list(zip(stems, paths)), load, options, record)


def parse_effects(text: str) -> Tuple[str, ...]:
    """``--effects``: ``all``, ``none`` or a comma list of :data:`EFFECTS` (InputError for an unknown name)."""
    if text.strip().lower() == "all":
        return EFFECTS
    if text.strip().lower() == "none":
        return ()
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in EFFECTS]
    if unknown:
        raise InputError(None, f"--effects: unknown effect(s) {', '.join(unknown)}; choose from {', '.join(EFFECTS)}, "
                         "all or none")  # fmt: skip
    return tuple(e for e in EFFECTS if e in names)
