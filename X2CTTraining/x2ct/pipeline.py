"""The one inference pipeline: chest radiographs -> synthetic CT, shared by ``x2ct predict``, Slicer and batch.

Stages (each recorded in :class:`Prediction` and in ``summary.json``):

1. **Input rules** (:func:`check_inputs`): a lateral needs a PA; the ``--pa`` file must not be tagged
   lateral and the ``--lateral`` file must not be tagged frontal (unless ``view_override``); a DICOM
   whose BodyPartExamined is present and not chest is refused (unless ``force``).
2. **Preprocessing** (:func:`preprocess`) into the model's input space, with every parameter taken
   from the model's metadata (:class:`InputSpec`):

   * field of view: the model's training DRRs cover ``fov_mm`` (285 mm for the official geometry:
     500 mm detector / magnification 949/541) at the isocentre. With a known pixel spacing the image
     is centre-cropped or zero-padded (dark = air) to ``fov_mm`` x ``fov_mm`` at the patient. The
     spacing at the patient is taken, in order, from an x2ct DRR header's isocentre pitch, a
     calibrated DICOM PixelSpacing, ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor,
     or raw ImagerPixelSpacing divided by :data:`ASSUMED_MAGNIFICATION`. **Fallback when the spacing
     is unknown** (PNG/JPEG, DICOM without spacing): the central square of the shorter side is taken
     to span the model's field of view (exact for DRRs rendered with the model's geometry; a warning
     is recorded);
   * resize to ``size`` x ``size`` (bilinear with anti-aliasing);
   * intensity: per-image min-max to [0, 1] as in the training DRRs, then, when the model was
     trained on 8-bit DRRs, quantisation to 8 bits (``round(x * 255) / 255``).

   Radiograph pixels arrive from :func:`x2ct.io.read_radiograph` (float32 [0, 1], bone bright);
   rows run along the volume's D axis, PA columns along W, lateral columns along H (x2ct.views).
3. **Generator**: ``forward(pa, lateral)`` on the chosen device, output (D, H, W) in [0, 1].
4. **Volume**: HU = 2500 x - 1024 (x2ct.intensity) on the canonical 320 mm grid centred at the
   origin (LPS, direction diag(1, 1, -1), spacing 320 mm / size), see x2ct.geometry.
5. **Re-projection check**: the synthetic CT is projected with the cone-beam geometry of the model's
   training DRRs (x2ct.drr), put through the same resize / min-max / quantisation as the inputs and
   compared with each preprocessed input radiograph: Pearson correlation (``ncc``) and SSIM (7x7
   window, data range 1). ``consistency`` is the mean ``ncc`` over the views. A QA number only: high
   values mean the CT explains the radiographs, not that it is anatomically right.

:func:`predict` runs stages 1-5; :func:`write_prediction` writes ``synthetic_ct.nrrd``,
``summary.json``, ``report.png`` and optionally a DICOM series into a folder atomically.
``progress(fraction, message)`` is called between stages and ``cancel()`` is polled there; a True
answer raises :class:`PredictionCancelled` (nothing is written).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

from . import __version__
from .atomic import atomic_dir
from .drr import DRRGeometry, normalize, project
from .errors import InputError, PathLike
from .findings import LoadedClassifier, findings_document, load_classifiers, run_classifiers
from .geometry import CanonicalGrid
from .intensity import unit_to_hu
from .io import Radiograph, SyntheticProvenance, read_radiograph, write_synthetic_ct_series
from .io.dicom_ct import source_from_dataset
from .models.checkpoints import bundled_model_names, load_generator, models_dir, resolve_device
from .views import AP, LATERAL, PA, is_frontal

ASSUMED_MAGNIFICATION = 1.1
"""Magnification assumed for a radiograph whose only spacing is the detector's ImagerPixelSpacing (PA chest)."""

CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG", "TORAX", "TORSO")
"""BodyPartExamined values (substrings, upper case) accepted as a chest."""

SYNTHETIC_NOTE = "SYNTHETIC CT generated from radiographs by x2ct; research use only, not for diagnosis"
"""Written into every output (NRRD header, summary.json)."""

NORMALIZATION = "per-image min-max to [0, 1]"
"""Intensity matching of the inputs (as the training DRRs: min-max of each image)."""

OUTPUT_CT = "synthetic_ct.nrrd"
OUTPUT_SUMMARY = "summary.json"
OUTPUT_REPORT = "report.png"
OUTPUT_DICOM = "dicom"
OUTPUT_FINDINGS = "findings.json"
OUTPUT_GRADCAM = "gradcam"

ProgressCallback = Callable[[float, str], None]
"""``progress(fraction in [0, 1], message)``."""
CancelCheck = Callable[[], bool]
"""``cancel() -> True`` to stop at the next stage boundary."""


class PredictionCancelled(Exception):
    """Raised when the ``cancel`` callable answered True; nothing has been written."""


# --------------------------------------------------------------------------------------------------
# Models


@dataclass(frozen=True)
class InputSpec:
    """How radiographs must look to a model (read from its metadata; defaults = official X2CT-GAN).

    ``size``: input pixels per edge (= the output grid edge). ``geometry``: cone-beam geometry (mm) of
    the training DRRs; ``drr_size``: their pixels per edge. Intensities are always per-image min-max
    (the only normalisation of official and x2ct training DRRs); ``quantize_bits``: 8 when training
    inputs were 8-bit images, None for float inputs.
    """

    size: int = 128
    geometry: DRRGeometry = field(default_factory=DRRGeometry)
    drr_size: int = 128
    quantize_bits: Optional[int] = 8

    @property
    def fov_mm(self) -> float:
        """Field of view at the isocentre (mm) of the training DRRs: detector edge / magnification."""
        return self.geometry.detector_mm / self.geometry.magnification

    def to_dict(self) -> Dict[str, Any]:
        """JSON-serialisable record."""
        return {
            "size": self.size,
            "fov_mm_at_isocenter": round(self.fov_mm, 3),
            "drr_geometry_mm": {
                "sad": self.geometry.sad_mm,
                "sid": self.geometry.sid_mm,
                "detector": self.geometry.detector_mm,
            },
            "drr_size": self.drr_size,
            "normalization": NORMALIZATION,
            "quantize_bits": self.quantize_bits,
        }


@dataclass
class LoadedModel:
    """A generator ready for inference with the facts the pipeline needs about it."""

    module: torch.nn.Module
    name: str
    path: str
    architecture: str
    views: Tuple[str, ...]
    sha256: Optional[str]
    spec: InputSpec
    metadata: Dict[str, Any]
    device: torch.device

    @property
    def biplanar(self) -> bool:
        """True when the model takes a PA and a lateral radiograph."""
        return LATERAL in self.views


def input_spec_from_metadata(metadata: Mapping[str, Any], grid_size: int) -> InputSpec:
    """The :class:`InputSpec` of a model from its metadata (model.json), official defaults where absent.

    Read from ``metadata["input"]`` (the ``input_spec`` that x2ct's trainer passes to
    ``x2ct.models.checkpoints.save_generator``): ``size`` (pixels), ``drr_geometry`` =
    {"sad_mm", "sid_mm", "detector_mm", "drr_size"} of the training DRRs, and ``quantize_bits``
    (8 for uint8 training DRRs, the default; null for float ones). Official weights carry none of
    these and get the official geometry, 8 bits and ``drr_size`` = ``size``.
    """
    spec = dict(metadata.get("input") or {})
    geo = {k: v for k, v in dict(spec.get("drr_geometry") or {}).items() if v is not None}
    geometry = DRRGeometry(
        sad_mm=float(geo.get("sad_mm", DRRGeometry.sad_mm)),
        sid_mm=float(geo.get("sid_mm", DRRGeometry.sid_mm)),
        detector_mm=float(geo.get("detector_mm", DRRGeometry.detector_mm)),
    )
    bits = spec.get("quantize_bits", 8)
    size = int(spec.get("size", grid_size))
    return InputSpec(
        size=size,
        geometry=geometry,
        drr_size=int(geo.get("drr_size", size)),
        quantize_bits=int(bits) if bits else None,
    )


DEFAULT_BIPLANAR = "x2ct-demo-biplanar"
"""Bundled model used when a lateral is given and no ``--model``."""
DEFAULT_SINGLEVIEW = "x2ct-demo-singleview"
"""Bundled model used for a PA alone and no ``--model``."""


def _bundled_metadata(name: str) -> Optional[Dict[str, Any]]:
    """model.json of the bundled model called ``name`` (Resources/Models/<name>/), or None when there is none."""
    if name not in bundled_model_names():
        return None
    return json.loads((models_dir() / name / "model.json").read_text(encoding="utf-8"))


def select_model(model: Optional[str], have_lateral: bool) -> str:
    """The model to load for a case: ``model`` as given, or the bundled default for the views at hand.

    A bundled biplanar model named for a PA-only case is swapped for its single-view sibling (the
    same name with "biplanar" -> "singleview") when one is bundled; otherwise InputError.
    """
    if model is None:
        return DEFAULT_BIPLANAR if have_lateral else DEFAULT_SINGLEVIEW
    metadata = _bundled_metadata(model)
    if not have_lateral and metadata is not None and LATERAL in metadata.get("views", ()):
        sibling = model.replace("biplanar", "singleview")
        if sibling != model and _bundled_metadata(sibling) is not None:
            return sibling
        raise InputError(
            model, "is a biplanar (+B) model and needs --lateral; no matching single-view model is bundled"
        )
    return model


def load_model(name_or_path: str, device: Union[str, torch.device] = "cpu") -> LoadedModel:
    """Load a generator (bundled name, official .pth or x2ct checkpoint) for inference on ``device``.

    Raises InputError naming the model when it cannot be found or loaded (x2ct.models.checkpoints).
    """
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    module = load_generator(name_or_path, device=dev)
    metadata = dict(module.metadata)
    return LoadedModel(
        module=module,
        name=str(metadata.get("name") or Path(str(name_or_path)).name),
        path=str(metadata.get("path") or name_or_path),
        architecture=module.architecture,
        views=tuple(module.views),
        sha256=metadata.get("sha256"),
        spec=input_spec_from_metadata(metadata, module.config.grid_size),
        metadata=metadata,
        device=dev,
    )


# --------------------------------------------------------------------------------------------------
# Input rules


def _is_chest(body_part: str) -> bool:
    text = body_part.upper()
    return any(word in text for word in CHEST_BODY_PARTS)


def read_input(path: PathLike, role: str, force: bool = False, view_override: bool = False) -> Radiograph:
    """Read the ``role`` ("PA" or "LATERAL") radiograph and apply the view and body-part rules.

    A file whose tags name the other view is an InputError unless ``view_override`` (then the role
    wins and a warning is kept). A DICOM BodyPartExamined that is present and not chest is an
    InputError unless ``force``. An AP frontal is accepted as the PA input with a warning.
    """
    radiograph = read_radiograph(path)
    found = radiograph.view
    wrong = (role == PA and found == LATERAL) or (role == LATERAL and is_frontal(found))
    if wrong:
        source = radiograph.metadata.get("view_source") or "its tags"
        option = "--pa" if role == PA else "--lateral"
        if not view_override:
            raise InputError(
                path,
                f"{source} says {found}, but it was given as {option}; give a "
                f"{'frontal' if role == PA else 'lateral'} radiograph, or --view-override if the tag is wrong",
            )
        radiograph = read_radiograph(path, view=role)
    elif found is None:
        radiograph.warnings.append(f"view unknown; taken as {role} (given as the {role} input)")
        radiograph.view = role
    if role == PA and found == AP:
        radiograph.warnings.append("AP frontal used as PA (the model was trained on PA-geometry DRRs)")
    body_part = radiograph.metadata.get("body_part")
    if body_part and not _is_chest(body_part):
        if not force:
            raise InputError(path, f"BodyPartExamined is {body_part}, not chest; use --force to run anyway")
        radiograph.warnings.append(f"BodyPartExamined {body_part} is not chest; run anyway (--force)")
    return radiograph


# --------------------------------------------------------------------------------------------------
# Preprocessing


@dataclass
class PreparedView:
    """One input radiograph in the model's input space.

    ``radiograph``: as read. ``model_input``: float32 (size, size) in [0, 1], display orientation of
    the view (rows S->I; PA columns R->L, lateral columns A->P). ``record``: what was done (JSON).
    """

    radiograph: Radiograph
    model_input: np.ndarray
    record: Dict[str, Any]


def _isocenter_spacing(radiograph: Radiograph) -> Tuple[Optional[Tuple[float, float]], str, List[str]]:
    """(row, column) pixel spacing at the patient in mm, how it was obtained, and warnings."""
    meta = radiograph.metadata
    notes: List[str] = []
    if meta.get("format") == "nrrd":
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(meta["path"]))
        reader.ReadImageInformation()
        if reader.HasMetaDataKey("x2ct_isocenter_spacing_mm"):
            pitch = float(reader.GetMetaData("x2ct_isocenter_spacing_mm"))
            return (pitch, pitch), "x2ct DRR header (isocentre pitch)", notes
    spacing = radiograph.spacing_mm
    source = meta.get("spacing_source")
    if spacing is None:
        return None, "unknown", notes
    if source == "ImagerPixelSpacing":
        notes.append(
            f"detector-plane ImagerPixelSpacing divided by an assumed magnification of {ASSUMED_MAGNIFICATION}"
        )
        return (spacing[0] / ASSUMED_MAGNIFICATION, spacing[1] / ASSUMED_MAGNIFICATION), source, notes
    if source == "header":
        notes.append("header pixel spacing taken as the spacing at the patient")
    return spacing, str(source), notes


def _crop_or_pad(pixels: np.ndarray, rows: int, cols: int) -> Tuple[np.ndarray, Dict[str, int]]:
    """Centre crop or zero-pad ``pixels`` to (rows, cols); returns the image and the source window used."""
    src_rows, src_cols = pixels.shape
    top, left = (src_rows - rows) // 2, (src_cols - cols) // 2
    out = np.zeros((rows, cols), dtype=np.float32)
    r0, r1 = max(top, 0), min(top + rows, src_rows)
    c0, c1 = max(left, 0), min(left + cols, src_cols)
    out[r0 - top : r1 - top, c0 - left : c1 - left] = pixels[r0:r1, c0:c1]
    return out, {"top": int(top), "left": int(left), "rows": int(rows), "cols": int(cols)}


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize with anti-aliasing of a (rows, cols) float32 array to (size, size)."""
    if image.shape == (size, size):
        return image.astype(np.float32, copy=False)
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    resized = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return resized[0, 0].numpy()


def match_intensity(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The model's intensity normalisation: per-image min-max to [0, 1], then optional quantisation."""
    unit = normalize(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), "minmax").numpy()
    if spec.quantize_bits:
        levels = float(2**spec.quantize_bits - 1)
        unit = np.round(unit * levels) / levels
    return unit.astype(np.float32)


def preprocess(radiograph: Radiograph, spec: InputSpec) -> PreparedView:
    """Bring one radiograph into the model's input space (field of view, size, intensity); see the module doc."""
    pixels = np.asarray(radiograph.pixels, dtype=np.float32)
    spacing, source, notes = _isocenter_spacing(radiograph)
    if spacing is None:
        side = min(pixels.shape)
        window, box = _crop_or_pad(pixels, side, side)
        notes.append(
            f"pixel spacing unknown: assumed the central {side} x {side} px square spans the model's "
            f"{spec.fov_mm:.0f} mm field of view at the patient"
        )
    else:
        rows = max(1, int(round(spec.fov_mm / spacing[0])))
        cols = max(1, int(round(spec.fov_mm / spacing[1])))
        window, box = _crop_or_pad(pixels, rows, cols)
        padded = max(0, -box["top"]) * 2 / rows + max(0, -box["left"]) * 2 / cols
        if padded > 0.2:
            notes.append(f"the image covers less than the model's {spec.fov_mm:.0f} mm field of view; padded with air")
    resized = _resize(window, spec.size)
    model_input = match_intensity(resized, spec)
    radiograph.warnings.extend(notes)
    record = {
        "file": radiograph.metadata.get("path"),
        "view": radiograph.view,
        "view_source": radiograph.metadata.get("view_source"),
        "format": radiograph.metadata.get("format"),
        "size_px": list(pixels.shape),
        "spacing_at_patient_mm": [round(s, 5) for s in spacing] if spacing else None,
        "spacing_source": source,
        "window_px": box,
        "window_mm": [round(box["rows"] * spacing[0], 2), round(box["cols"] * spacing[1], 2)] if spacing else None,
        "resized_to": [spec.size, spec.size],
        "resize": "bilinear, anti-aliased",
        "normalization": NORMALIZATION,
        "quantize_bits": spec.quantize_bits,
        "warnings": list(radiograph.warnings),
    }
    return PreparedView(radiograph=radiograph, model_input=model_input, record=record)


# --------------------------------------------------------------------------------------------------
# Re-projection check


def reproject(volume_hu: np.ndarray, view: str, spec: InputSpec, device: torch.device) -> np.ndarray:
    """Cone-beam DRR of a canonical (D, H, W) HU volume with the model's training geometry, in the
    model's input space (size x size, min-max, quantised like the inputs)."""
    spacing = CanonicalGrid(size=volume_hu.shape[0]).spacing_mm
    volume = torch.from_numpy(np.ascontiguousarray(volume_hu, dtype=np.float32))[None, None].to(device)
    with torch.no_grad():
        raw = project(volume, spacing, view, spec.drr_size, spec.geometry, units="hu")[0, 0].cpu().numpy()
    return match_intensity(_resize(raw, spec.size), spec)


def consistency_scores(reprojection: np.ndarray, model_input: np.ndarray) -> Dict[str, float]:
    """Agreement of a re-projection with the preprocessed radiograph (both (S, S) in [0, 1]).

    ``ncc``: Pearson correlation in [-1, 1] (0 when either image is constant); ``ssim``: structural
    similarity (7x7 uniform window, data range 1).
    """
    a = reprojection.astype(np.float64).ravel() - reprojection.mean()
    b = model_input.astype(np.float64).ravel() - model_input.mean()
    denom = math.sqrt(float(a @ a) * float(b @ b))
    ncc = float(a @ b) / denom if denom > 0 else 0.0
    ssim = float(structural_similarity(reprojection, model_input, data_range=1.0))
    return {"ncc": round(ncc, 4), "ssim": round(ssim, 4)}


# --------------------------------------------------------------------------------------------------
# Prediction


@dataclass
class Prediction:
    """Everything one run produced.

    ``volume_hu``: float32 (D, H, W) synthetic CT in HU on ``grid`` (canonical axes S->I, A->P, R->L).
    ``views``: the prepared inputs by view name ("PA", "LATERAL"). ``reprojections``: (S, S) per view in
    the model's input space. ``consistency``: {view: {"ncc", "ssim"}}. ``timings_s``: seconds per stage.
    ``findings``: one record per classifier task (the ``findings.json`` entries: ``task``, ``label``,
    ``probability``, ``threshold``, ``call``, ``model``, ``weights_sha256``, ``inputs``), empty when no
    classifier ran. ``cams``: Grad-CAM maps in [0, 1] by input then task: ``cams["ct"][task]`` float32
    (D, H, W) on ``grid`` (same axes as ``volume_hu``), ``cams["pa"][task]`` / ``cams["lateral"][task]``
    float32 with the shape of that radiograph's ``pixels`` as read (aligned pixel for pixel).
    """

    volume_hu: np.ndarray
    grid: CanonicalGrid
    model: LoadedModel
    views: Dict[str, PreparedView]
    reprojections: Dict[str, np.ndarray]
    consistency: Dict[str, Dict[str, float]]
    timings_s: Dict[str, float]
    warnings: List[str]
    findings: List[Dict[str, Any]] = field(default_factory=list)
    cams: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)

    def image(self) -> sitk.Image:
        """The synthetic CT as a SimpleITK image in HU (int16) with the grid's spacing/origin/direction (LPS)."""
        hu = np.clip(np.rint(self.volume_hu), -32768, 32767).astype(np.int16)
        image = self.grid.image_from_array(hu)
        image.SetMetaData("x2ct_synthetic", SYNTHETIC_NOTE)
        image.SetMetaData("x2ct_model", self.model.name)
        image.SetMetaData("x2ct_weights_sha256", self.model.sha256 or "unknown")
        return image

    @property
    def consistency_score(self) -> float:
        """Mean NCC over the input views."""
        return round(float(np.mean([s["ncc"] for s in self.consistency.values()])), 4)

    def summary(self) -> Dict[str, Any]:
        """The ``summary.json`` record (JSON-serialisable)."""
        return {
            "synthetic": SYNTHETIC_NOTE,
            "x2ct_version": __version__,
            "model": {
                "name": self.model.name,
                "path": self.model.path,
                "architecture": self.model.architecture,
                "views": list(self.model.views),
                "weights_sha256": self.model.sha256,
            },
            "device": str(self.model.device),
            "inputs": {view: prepared.record for view, prepared in self.views.items()},
            "preprocessing": self.model.spec.to_dict(),
            "output": {
                "grid_size": self.grid.size,
                "spacing_mm": [self.grid.spacing_mm] * 3,
                "origin_lps_mm": [round(v, 4) for v in self.grid.origin_lps],
                "direction_lps": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0],
                "array_axes": "D,H,W = superior->inferior, anterior->posterior, patient right->left",
                "units": "HU",
            },
            "consistency": {
                "score": self.consistency_score,
                "per_view": self.consistency,
                "method": "cone-beam re-projection with the training DRR geometry vs the preprocessed input; "
                "ncc = Pearson correlation, ssim = SSIM (7x7, data range 1)",
            },
            "findings": [
                {k: f[k] for k in ("output", "probability", "threshold", "call", "model")} for f in self.findings
            ],
            "timings_s": self.timings_s,
            "warnings": self.warnings,
        }


def _stage(progress: Optional[ProgressCallback], cancel: Optional[CancelCheck], fraction: float, message: str) -> None:
    if cancel is not None and cancel():
        raise PredictionCancelled(message)
    if progress is not None:
        progress(fraction, message)


def predict(
    model: LoadedModel,
    pa: Union[PathLike, Radiograph],
    lateral: Union[PathLike, Radiograph, None] = None,
    force: bool = False,
    view_override: bool = False,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCheck] = None,
    classifiers: Sequence[LoadedClassifier] = (),
) -> Prediction:
    """Run the pipeline on one case. ``pa``/``lateral`` are files or already-read radiographs;
    ``classifiers`` (x2ct.findings.load_classifiers) add findings and Grad-CAM maps (stage 6).

    Raises InputError for a broken input rule (module doc), including a biplanar model without a
    lateral and a single-view model with one; :class:`PredictionCancelled` when ``cancel()`` says so.
    """
    timings: Dict[str, float] = {}
    start = time.perf_counter()
    _stage(progress, cancel, 0.0, "reading radiographs")
    if pa is None:
        raise InputError(lateral if not isinstance(lateral, Radiograph) else None, "a lateral radiograph needs a PA")
    if model.biplanar and lateral is None:
        raise InputError(model.path, f"model {model.name} is biplanar (+B) and needs a lateral radiograph")
    if not model.biplanar and lateral is not None:
        raise InputError(
            model.path, f"model {model.name} is single-view (+S) and takes no lateral; choose a biplanar model"
        )
    inputs = {PA: pa} if lateral is None else {PA: pa, LATERAL: lateral}
    radiographs = {
        view: item if isinstance(item, Radiograph) else read_input(item, view, force, view_override)
        for view, item in inputs.items()
    }
    timings["read"] = time.perf_counter() - start

    _stage(progress, cancel, 0.1, "preprocessing")
    t = time.perf_counter()
    prepared = {view: preprocess(radiograph, model.spec) for view, radiograph in radiographs.items()}
    timings["preprocess"] = time.perf_counter() - t

    _stage(progress, cancel, 0.2, f"running {model.name} on {model.device}")
    t = time.perf_counter()
    tensors = [torch.from_numpy(prepared[v].model_input)[None, None].to(model.device) for v in prepared]
    with torch.inference_mode():
        unit = model.module(*tensors)
    volume_hu = unit_to_hu(unit[0, 0].float().cpu().numpy())
    timings["generator"] = time.perf_counter() - t

    _stage(progress, cancel, 0.7, "re-projection check")
    t = time.perf_counter()
    reprojections = {view: reproject(volume_hu, view, model.spec, model.device) for view in prepared}
    consistency = {view: consistency_scores(reprojections[view], prepared[view].model_input) for view in prepared}
    timings["reprojection"] = time.perf_counter() - t
    warnings = [f"{view}: {note}" for view, p in prepared.items() for note in p.radiograph.warnings]
    prediction = Prediction(
        volume_hu=volume_hu,
        grid=CanonicalGrid(size=volume_hu.shape[0]),
        model=model,
        views=prepared,
        reprojections=reprojections,
        consistency=consistency,
        timings_s={},
        warnings=warnings,
    )
    if classifiers:
        _stage(progress, cancel, 0.8, f"classifiers and Grad-CAM ({len(classifiers)} models)")
        t = time.perf_counter()
        prediction.findings, prediction.cams = run_classifiers(prediction, classifiers)
        timings["classifiers"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start
    prediction.timings_s = {k: round(v, 3) for k, v in timings.items()}
    _stage(progress, cancel, 0.9, "prediction done")
    return prediction


# --------------------------------------------------------------------------------------------------
# Outputs


def _dicom_sources(prediction: Prediction) -> List[Dict[str, str]]:
    """SourceImageSequence entries (with patient/study) for the inputs that were DICOM."""
    import pydicom

    sources = []
    for prepared in prediction.views.values():
        meta = prepared.radiograph.metadata
        if meta.get("format") == "dicom" and meta.get("sop_instance_uid") and meta.get("study_instance_uid"):
            sources.append(source_from_dataset(pydicom.dcmread(meta["path"], stop_before_pixels=True)))
    return sources


def check_output_dir(out_dir: PathLike) -> Path:
    """Refuse an output folder that exists and holds anything but an earlier prediction (InputError)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(out, "output exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / OUTPUT_SUMMARY).is_file():
        raise InputError(out, "output folder exists and is not empty (and is not an earlier x2ct prediction)")
    return out


def _write_findings(prediction: Prediction, ct_image: sitk.Image, folder: Path) -> List[str]:
    """``findings.json`` and ``gradcam/``: per output ``<output>_ct.nrrd`` (float32 map on the synthetic CT's
    grid), ``<output>_pa.nrrd`` / ``_lateral.nrrd`` (float32 map on the radiograph's pixel grid, its spacing
    when known) and ``<output>_pa.png`` / ``_lateral.png`` (heat map over the radiograph). Returns the names."""
    from PIL import Image

    from .gradcam import cam_overlay_rgb, cam_volume_image

    (folder / OUTPUT_FINDINGS).write_text(json.dumps(findings_document(prediction), indent=2) + "\n", encoding="utf-8")
    if not prediction.cams:
        return [OUTPUT_FINDINGS]
    cam_dir = folder / OUTPUT_GRADCAM
    cam_dir.mkdir()
    for key, maps in prediction.cams.items():
        for output, cam in maps.items():
            stem = cam_dir / f"{output}_{key}"
            if key == "ct":
                sitk.WriteImage(cam_volume_image(cam, ct_image), f"{stem}.nrrd", useCompression=True)
                continue
            radiograph = prediction.views[PA if key == "pa" else LATERAL].radiograph
            image = sitk.GetImageFromArray(cam.astype(np.float32))
            if radiograph.spacing_mm:
                image.SetSpacing((float(radiograph.spacing_mm[1]), float(radiograph.spacing_mm[0])))
            sitk.WriteImage(image, f"{stem}.nrrd", useCompression=True)
            Image.fromarray(cam_overlay_rgb(radiograph.pixels, cam)).save(f"{stem}.png", format="PNG")
    return [OUTPUT_FINDINGS, OUTPUT_GRADCAM + "/"]


def write_prediction(
    prediction: Prediction, out_dir: PathLike, dicom: bool = False, extra_timings: Optional[Dict[str, float]] = None
) -> Path:
    """Write ``synthetic_ct.nrrd``, ``report.png``, ``summary.json`` (``findings.json`` and ``gradcam/`` when
    classifiers ran, ``dicom/`` with ``dicom``) into ``out_dir`` atomically: the folder appears complete or
    not at all (an earlier one is replaced whole)."""
    from .report import report_picture

    out = check_output_dir(out_dir)
    t = time.perf_counter()
    with atomic_dir(out) as tmp:
        image = prediction.image()
        sitk.WriteImage(image, str(tmp / OUTPUT_CT), useCompression=True)
        report_picture(prediction).save(tmp / OUTPUT_REPORT, format="PNG")
        outputs = [OUTPUT_CT, OUTPUT_REPORT, OUTPUT_SUMMARY]
        if prediction.findings:
            outputs += _write_findings(prediction, image, tmp)
        if dicom:
            views = " and ".join("PA" if v == PA else "lateral" for v in prediction.views)
            provenance = SyntheticProvenance(
                model_name=prediction.model.name,
                model_version=str(prediction.model.metadata.get("version", "unversioned")),
                weights_sha256=prediction.model.sha256 or "unknown",
                inputs_description=f"{views} chest radiograph{'s' if len(prediction.views) > 1 else ''}",
                sources=_dicom_sources(prediction),
            )
            write_synthetic_ct_series(image, tmp / OUTPUT_DICOM, provenance)
            outputs.append(OUTPUT_DICOM + "/")
        summary = prediction.summary()
        summary["timings_s"] = {**summary["timings_s"], **(extra_timings or {})}
        summary["timings_s"]["write"] = round(time.perf_counter() - t, 3)
        summary["outputs"] = outputs
        (tmp / OUTPUT_SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return out


def is_finished(out_dir: PathLike) -> bool:
    """True when ``out_dir`` holds a complete prediction (written atomically, so summary.json means done)."""
    return (Path(out_dir) / OUTPUT_SUMMARY).is_file() and (Path(out_dir) / OUTPUT_CT).is_file()


# --------------------------------------------------------------------------------------------------
# One case into a folder, and a manifest of cases (the ``x2ct predict`` command and batch scripts)


class ModelCache:
    """Loaded generators by choice, and the classifiers, so a batch loads each model once.

    ``classifiers``: names or paths (x2ct.findings.load_classifiers); ``None`` = every bundled classifier,
    an empty sequence = none.
    """

    def __init__(self, device: str = "auto", classifiers: Optional[Sequence[PathLike]] = None) -> None:
        self.device = resolve_device(device)
        self._models: Dict[str, LoadedModel] = {}
        self._classifier_choice = None if classifiers is None else list(classifiers)
        self._classifiers: Optional[List[LoadedClassifier]] = None

    def classifiers(self, have_lateral: bool) -> List[LoadedClassifier]:
        """The classifiers for a case. Bundled ones that need a lateral are left out of a PA-only case; a
        classifier the user named that needs a lateral is an InputError for such a case."""
        if self._classifiers is None:
            self._classifiers = load_classifiers(self._classifier_choice, self.device)
        if have_lateral:
            return list(self._classifiers)
        needs_lateral = [c for c in self._classifiers if "lateral" in c.inputs]
        if needs_lateral and self._classifier_choice is not None:
            raise InputError(None, f"classifier {needs_lateral[0].name} needs a lateral radiograph (--lateral)")
        return [c for c in self._classifiers if "lateral" not in c.inputs]

    def get(self, model: Optional[str], have_lateral: bool) -> LoadedModel:
        """The model for a case: :func:`select_model` of ``model`` given whether a lateral is present."""
        choice = select_model(model, have_lateral)
        if choice not in self._models:
            self._models[choice] = load_model(choice, self.device)
        return self._models[choice]


def predict_to_folder(
    out_dir: PathLike,
    pa: Optional[PathLike],
    lateral: Optional[PathLike] = None,
    model: Optional[str] = None,
    device: str = "auto",
    dicom: bool = False,
    force: bool = False,
    view_override: bool = False,
    cache: Optional[ModelCache] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCheck] = None,
    classifiers: Optional[Sequence[PathLike]] = None,
) -> Prediction:
    """Check, predict and write one case into ``out_dir`` (atomically); returns the prediction.

    ``classifiers`` as in :class:`ModelCache` (used when no ``cache`` is given). Every user error
    (InputError) is raised before anything is written.
    """
    if pa is None:
        raise InputError(lateral, "a lateral radiograph needs a PA radiograph (--pa)")
    check_output_dir(out_dir)
    cache = cache or ModelCache(device, classifiers)
    t = time.perf_counter()
    loaded = cache.get(model, have_lateral=lateral is not None)
    chosen = cache.classifiers(have_lateral=lateral is not None)
    load_s = time.perf_counter() - t
    prediction = predict(loaded, pa, lateral, force, view_override, progress, cancel, chosen)
    _stage(progress, cancel, 0.95, "writing outputs")
    write_prediction(prediction, out_dir, dicom=dicom, extra_timings={"model_load": round(load_s, 3)})
    if progress is not None:
        progress(1.0, "done")
    return prediction


MANIFEST_COLUMNS = ("pa", "lateral", "case_id")
"""Columns of a ``--manifest`` CSV; ``lateral`` is optional (column or cell)."""

BATCH_SUMMARY = "batch_summary.csv"
"""Per-case status table written into the batch output folder after every case."""

_CASE_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


@dataclass
class CaseResult:
    """Outcome of one manifest row: ``status`` is "done", "skipped" (finished earlier) or "failed"."""

    case_id: str
    status: str
    message: str = ""
    consistency: Optional[float] = None


def read_manifest(path: PathLike) -> List[Dict[str, Optional[Path]]]:
    """Rows {"case_id", "pa", "lateral"} of a manifest CSV; relative paths are taken from the CSV's folder.

    Raises InputError (naming the CSV) for a missing file or column, an empty manifest, or a case id
    that is empty, repeated, or not a plain file name (letters, digits, ``.``, ``_``, ``-``).
    """
    import csv

    manifest = Path(path)
    if not manifest.is_file():
        raise InputError(manifest, "manifest file not found")
    with open(manifest, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in ("pa", "case_id") if c not in columns]
        if missing:
            raise InputError(
                manifest, f"missing column(s) {', '.join(missing)}; expected {', '.join(MANIFEST_COLUMNS)}"
            )
        raw_rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    rows: List[Dict[str, Any]] = []
    seen = set()
    for number, row in enumerate(raw_rows, start=2):
        case_id = row.get("case_id", "")
        if not case_id or case_id.startswith(".") or not set(case_id) <= _CASE_ID_CHARS:
            raise InputError(
                manifest, f"line {number}: case_id '{case_id}' must be a plain name (letters, digits, . _ -)"
            )
        if case_id in seen:
            raise InputError(manifest, f"line {number}: case_id '{case_id}' appears twice")
        seen.add(case_id)

        def resolve(cell: str) -> Optional[Path]:
            return (manifest.parent / cell) if cell else None

        rows.append({"case_id": case_id, "pa": resolve(row.get("pa", "")), "lateral": resolve(row.get("lateral", ""))})
    if not rows:
        raise InputError(manifest, "manifest lists no cases")
    return rows


def _write_batch_summary(out_root: Path, results: Sequence[CaseResult]) -> None:
    import csv
    import io

    from .atomic import write_text_atomic

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["case_id", "status", "consistency", "message"])
    for r in results:
        writer.writerow([r.case_id, r.status, "" if r.consistency is None else r.consistency, r.message])
    write_text_atomic(out_root / BATCH_SUMMARY, buffer.getvalue())


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
) -> List[CaseResult]:
    """Predict every case of a manifest CSV into ``out_root/<case_id>/``.

    Resume: a case whose folder already holds a finished prediction is skipped. Failure isolation:
    a case that fails is recorded (one line) and the others go on. ``out_root/batch_summary.csv`` is
    rewritten after every case. The manifest is validated before any case runs. ``classifiers`` as in
    :class:`ModelCache`.
    """
    from tqdm import tqdm

    rows = read_manifest(manifest)
    out = Path(out_root)
    if out.exists() and not out.is_dir():
        raise InputError(out, "output exists and is not a folder")
    cache = ModelCache(device, classifiers)
    results: List[CaseResult] = []
    bar = tqdm(rows, desc="predict", unit="case", disable=not show_progress)
    for row in bar:
        case_dir = out / row["case_id"]
        if is_finished(case_dir):
            results.append(CaseResult(row["case_id"], "skipped", "finished earlier"))
        else:
            try:
                prediction = predict_to_folder(
                    case_dir, row["pa"], row["lateral"], model, device, dicom, force, view_override, cache=cache
                )
                results.append(CaseResult(row["case_id"], "done", consistency=prediction.consistency_score))
            except InputError as err:
                results.append(CaseResult(row["case_id"], "failed", str(err)))
            except Exception as err:  # isolation: an unexpected failure of one case must not stop the batch
                results.append(CaseResult(row["case_id"], "failed", f"{type(err).__name__}: {err}"))
            if results[-1].status == "failed":
                bar.write(f"x2ct: case {row['case_id']} failed: {results[-1].message}", file=sys.stderr)
        out.mkdir(parents=True, exist_ok=True)
        _write_batch_summary(out, results)
    return results
