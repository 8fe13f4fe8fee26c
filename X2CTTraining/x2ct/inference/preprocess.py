"""Radiographs into a generator's input space: the input rules, then field of view, size and intensity.

1. **Input rules** (:func:`read_input`): a DICOM whose Modality or SOP class cannot be a chest
   radiograph (CT, MR, US, NM, PET, segmentation, RT, mammography, ...; the table is
   :func:`x2ct.io.kind.not_radiograph_reason`) is refused (unless ``force``); the ``--pa`` file must
   not be tagged lateral and the ``--lateral`` file must not be tagged frontal (unless
   ``view_override``); a DICOM whose BodyPartExamined is present and not chest is refused (unless
   ``force``).
2. **Preprocessing** (:func:`preprocess`), every parameter taken from the model's metadata
   (:class:`~x2ct.inference.types.InputSpec`):

   * field of view: the model's training DRRs cover ``fov_mm`` (285 mm for the official geometry:
     500 mm detector / magnification 949/541) at the isocentre. With a known pixel spacing the image
     is centre-cropped or zero-padded (dark = air) to ``fov_mm`` x ``fov_mm`` at the patient
     (:class:`~x2ct.inference.frame.InputFrame`). The spacing at the patient is taken, in order, from
     an x2ct DRR header's isocentre pitch, a calibrated DICOM PixelSpacing, ImagerPixelSpacing /
     EstimatedRadiographicMagnificationFactor, or raw ImagerPixelSpacing divided by
     :data:`ASSUMED_MAGNIFICATION`. **Fallback when the spacing is unknown** (PNG/JPEG, DICOM without
     spacing): the central square of the shorter side is taken to span the model's field of view
     (exact for DRRs rendered with the model's geometry; a warning is recorded);
   * resize to ``size`` x ``size`` (bilinear with anti-aliasing);
   * intensity: per-image min-max to [0, 1] as in the training DRRs, then, when the model was
     trained on 8-bit DRRs, quantisation to 8 bits (``round(x * 255) / 255``).

Radiograph pixels arrive from :func:`x2ct.io.read_radiograph` (float32 [0, 1], bone bright); rows run
along the volume's D axis, PA columns along W, lateral columns along H (:mod:`x2ct.views`).
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ..drr import normalize
from ..errors import InputError, PathLike
from ..io import Radiograph, read_radiograph
from ..io.library_output import library_output
from ..io.radiograph import MAX_SPACING_MM, MIN_SPACING_MM
from ..views import AP, LATERAL, PA, is_frontal
from .frame import InputFrame
from .types import NORMALIZATION, InputSpec, PreparedView

ASSUMED_MAGNIFICATION = 1.1
"""Magnification assumed for a radiograph whose only spacing is the detector's ImagerPixelSpacing (PA chest)."""

CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG", "TORAX", "TORSO")
"""BodyPartExamined values (substrings, upper case) accepted as a chest."""


# --------------------------------------------------------------------------------------------------
# Input rules


def _is_chest(body_part: str) -> bool:
    text = body_part.upper()
    return any(word in text for word in CHEST_BODY_PARTS)


def read_input(path: PathLike, role: str, force: bool = False, view_override: bool = False) -> Radiograph:
    """Read the ``role`` (``x2ct.views.PA`` or ``LATERAL``) radiograph and apply the object, view and body-part rules.

    A DICOM that is not a chest radiograph by its Modality or SOP class (``metadata["not_radiograph"]``)
    is an InputError unless ``force`` (then a warning is kept). A file whose tags name the other view
    is an InputError unless ``view_override`` (then the role wins and a warning is kept). A DICOM
    BodyPartExamined that is present and not chest is an InputError unless ``force``. An AP frontal
    is accepted as the PA input with a warning.
    """
    radiograph = read_radiograph(path)
    not_radiograph = radiograph.metadata.get("not_radiograph")
    if not_radiograph and not force:
        raise InputError(path, f"{not_radiograph}; use --force to run anyway")
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
    if not_radiograph:
        radiograph.warnings.append(f"{not_radiograph}; run anyway (--force)")
    return radiograph


# --------------------------------------------------------------------------------------------------
# Preprocessing


def _isocenter_spacing(radiograph: Radiograph) -> Tuple[Optional[Tuple[float, float]], str, List[str]]:
    """(row, column) pixel spacing at the patient in mm, how it was obtained, and warnings."""
    meta = radiograph.metadata
    notes: List[str] = []
    if meta.get("format") == "nrrd":
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(meta["path"]))
        with library_output("ITK"):  # what ITK says was kept when read_radiograph read this file
            reader.ReadImageInformation()
        key = "x2ct_isocenter_spacing_mm"  # written by x2ct.drr: the detector pitch at the isocentre
        if reader.HasMetaDataKey(key):
            text = reader.GetMetaData(key)
            try:
                pitch = float(text)
            except ValueError:
                pitch = math.nan
            if MIN_SPACING_MM <= pitch <= MAX_SPACING_MM:
                pitch *= int(meta.get("reduction") or 1)  # a reduced image's pixels are that much larger
                return (pitch, pitch), "x2ct DRR header (isocentre pitch)", notes
            notes.append(
                f"{key} '{text}' is not a pixel spacing within {MIN_SPACING_MM:g}-{MAX_SPACING_MM:g} mm; "
                "ignored"
            )
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


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
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
        frame = InputFrame.centred(pixels.shape, side, side)
        notes.append(
            f"pixel spacing unknown: assumed the central {side} x {side} px square spans the model's "
            f"{spec.fov_mm:.0f} mm field of view at the patient"
        )
    else:
        rows = max(1, int(round(spec.fov_mm / spacing[0])))
        cols = max(1, int(round(spec.fov_mm / spacing[1])))
        frame = InputFrame.centred(pixels.shape, rows, cols)
        if frame.padded_fraction > 0.2:
            notes.append(f"the image covers less than the model's {spec.fov_mm:.0f} mm field of view; padded with air")
    model_input = match_intensity(resize_square(frame.crop(pixels), spec.size), spec)
    radiograph.warnings.extend(notes)
    record = {
        "file": radiograph.metadata.get("path"),
        "view": radiograph.view,
        "view_source": radiograph.metadata.get("view_source"),
        "format": radiograph.metadata.get("format"),
        "size_px": list(pixels.shape),
        "spacing_at_patient_mm": [round(s, 5) for s in spacing] if spacing else None,
        "spacing_source": source,
        "window_px": frame.to_record(),
        "window_mm": [round(frame.rows * spacing[0], 2), round(frame.cols * spacing[1], 2)] if spacing else None,
        "resized_to": [spec.size, spec.size],
        "resize": "bilinear, anti-aliased",
        "normalization": NORMALIZATION,
        "quantize_bits": spec.quantize_bits,
        "warnings": list(radiograph.warnings),
    }
    return PreparedView(radiograph=radiograph, model_input=model_input, frame=frame, record=record)
