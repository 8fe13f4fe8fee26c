"""Decide whether a path holds a radiograph (2D), a CT (3D) or another DICOM object, reading headers only.

It also holds x2ct's one table of which DICOM objects can be a chest radiograph
(:func:`not_radiograph_reason`): the Modality must be a projection X-ray modality of
:data:`RADIOGRAPH_MODALITIES` (or absent) and the SOP class one of :data:`RADIOGRAPH_SOP_CLASSES`
(or absent). Anything else (CT, MR, US, NM, PET, segmentations, RT objects, reports, documents,
presentation states, mammography, dental X-rays, ...) is named in one line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple

import SimpleITK as sitk

from ..errors import InputError, PathLike
from .library_output import library_output

RADIOGRAPH = "radiograph"
CT = "ct"
NOT_RADIOGRAPH = "not-radiograph"
"""A DICOM file that is neither a radiograph nor a CT (a segmentation, an MR image, a report, ...)."""

RADIOGRAPH_MODALITIES = ("CR", "DX", "DR", "RG", "RF", "XA", "OT")
"""Modality values accepted for a chest radiograph (DICOM PS3.3 C.7.3.1.1.1): computed and digital
radiography (CR, DX; DR is a common non-standard spelling of DX), radiographic imaging (RG),
radiofluoroscopy (RF), X-ray angiography (XA), and other (OT, e.g. a secondary capture of a radiograph).
Projection X-rays of other body parts (MG mammography, IO intra-oral, PX panoramic) are not accepted."""

RADIOGRAPH_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
        "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
        "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
        "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte Secondary Capture Image Storage
        "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word Secondary Capture Image Storage
        "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color Secondary Capture Image Storage
        "1.2.840.10008.5.1.4.1.1.12.1",  # X-Ray Angiographic Image Storage
        "1.2.840.10008.5.1.4.1.1.12.1.1",  # Enhanced XA Image Storage
        "1.2.840.10008.5.1.4.1.1.12.2",  # X-Ray Radiofluoroscopic Image Storage
        "1.2.840.10008.5.1.4.1.1.12.2.1",  # Enhanced XRF Image Storage
    }
)
"""SOP classes (DICOM PS3.4 B.5) whose image can be a chest radiograph; every other class is refused
(CT/MR/US/NM/PET images, Segmentation, RT objects, SR, encapsulated PDF, raw data, presentation
states, mammography and dental X-ray classes, 1-bit secondary capture, ...)."""

MODALITY_NAMES = {
    "CT": "computed tomography",
    "MR": "magnetic resonance",
    "US": "ultrasound",
    "NM": "nuclear medicine",
    "PT": "positron emission tomography",
    "SEG": "segmentation",
    "RTSTRUCT": "radiotherapy structure set",
    "RTDOSE": "radiotherapy dose",
    "RTPLAN": "radiotherapy plan",
    "RTIMAGE": "radiotherapy image",
    "RTRECORD": "radiotherapy treatment record",
    "REG": "registration",
    "SR": "structured report",
    "KO": "key object selection",
    "PR": "presentation state",
    "DOC": "document",
    "MG": "mammography",
    "IO": "intra-oral radiography",
    "PX": "panoramic X-ray",
    "XC": "external-camera photography",
    "OP": "ophthalmic photography",
    "ES": "endoscopy",
    "SM": "slide microscopy",
    "ECG": "electrocardiography",
}
"""Modality values (DICOM PS3.3 C.7.3.1.1.1) that are not radiographs, named for messages."""

_PICTURE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
_VOLUME_SUFFIXES = {".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"}
_CT_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
}


def _sop_class_name(sop_class_uid: str) -> str:
    """pydicom's name of a SOP class UID (the UID itself when pydicom does not know it)."""
    from pydicom.uid import UID

    return UID(sop_class_uid).name


def not_radiograph_reason(modality: Optional[str], sop_class_uid: Optional[str]) -> Optional[str]:
    """Why a DICOM object with this Modality and SOPClassUID cannot be a chest radiograph; None when it can.

    Accepted: Modality absent or in RADIOGRAPH_MODALITIES, and SOPClassUID absent or in
    RADIOGRAPH_SOP_CLASSES. The reason is one line such as "DICOM Segmentation Storage object,
    Modality SEG (segmentation), not a chest radiograph".
    """
    modality = (modality or "").strip().upper() or None
    sop_class_uid = (sop_class_uid or "").strip() or None
    if (modality is None or modality in RADIOGRAPH_MODALITIES) and (
        sop_class_uid is None or sop_class_uid in RADIOGRAPH_SOP_CLASSES
    ):
        return None
    what = f"DICOM {_sop_class_name(sop_class_uid)} object" if sop_class_uid else "DICOM object"
    if modality:
        named = MODALITY_NAMES.get(modality)
        what += f", Modality {modality}" + (f" ({named})" if named else "")
    return f"{what}, not a chest radiograph"


def dicom_identity(path: PathLike) -> Tuple[Optional[str], Optional[str]]:
    """(Modality, SOPClassUID) from a DICOM file's header, each None when absent or not readable (a deflated
    header is inflated with a cap, see ``x2ct.io.dicom_compat.dcmread``)."""
    from .dicom_compat import dcmread

    try:
        with library_output("DICOM reader"):
            ds = dcmread(os.fspath(path), stop_before_pixels=True)
            modality, sop_class = str(ds.get("Modality") or ""), str(ds.get("SOPClassUID") or "")
    except Exception:  # pydicom raises many types (struct.error, EOFError, ...); the readers name the problem
        return None, None
    return modality.strip() or None, sop_class.strip() or None


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def detect_kind(path: PathLike) -> str:
    """Return ``"ct"``, ``"radiograph"`` or ``"not-radiograph"`` for ``path`` without reading pixel data.

    A folder is a DICOM series (CT). A DICOM file is a CT when its SOP class is a CT class or its
    modality is CT; else ``"not-radiograph"`` when :func:`not_radiograph_reason` names it; otherwise
    a radiograph. NIfTI/NRRD/MHA are CTs when they have more than one slice. PNG/JPEG/TIFF are
    radiographs. Anything else is left to the radiograph reader, which names the problem.
    """
    p = Path(os.fspath(path))
    if not p.exists():
        raise InputError(p, "no such file or folder")
    if p.is_dir():
        return CT
    suffix = _suffix(p)
    if suffix in _PICTURE_SUFFIXES:
        return RADIOGRAPH
    if suffix in _VOLUME_SUFFIXES:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        try:
            with library_output("ITK"):
                reader.ReadImageInformation()
        except RuntimeError:
            raise InputError(p, "unreadable or corrupt image header") from None
        size = reader.GetSize()
        return CT if len(size) >= 3 and size[2] > 1 else RADIOGRAPH
    return _dicom_kind(p)


def _dicom_kind(p: Path) -> str:
    modality, sop_class = dicom_identity(p)
    if sop_class in _CT_SOP_CLASSES or (modality or "").upper() == "CT":
        return CT
    return NOT_RADIOGRAPH if not_radiograph_reason(modality, sop_class) else RADIOGRAPH
