"""Decide whether a path holds a radiograph (2D) or a CT (3D), reading headers only."""

from __future__ import annotations

import os
from pathlib import Path

import SimpleITK as sitk

from ..errors import InputError, PathLike

RADIOGRAPH = "radiograph"
CT = "ct"

_PICTURE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
_VOLUME_SUFFIXES = {".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"}
_CT_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
}


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def detect_kind(path: PathLike) -> str:
    """Return ``"ct"`` or ``"radiograph"`` for ``path`` without reading pixel data.

    A folder is a DICOM series (CT). A DICOM file is a CT when its SOP class is a CT class or its
    modality is CT; otherwise a radiograph. NIfTI/NRRD/MHA are CTs when they have more than one
    slice. PNG/JPEG/TIFF are radiographs. Anything else is left to the radiograph reader, which
    names the problem.
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
            reader.ReadImageInformation()
        except RuntimeError:
            raise InputError(p, "unreadable or corrupt image header") from None
        size = reader.GetSize()
        return CT if len(size) >= 3 and size[2] > 1 else RADIOGRAPH
    return _dicom_kind(p)


def _dicom_kind(p: Path) -> str:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, KeyError, TypeError):
        return RADIOGRAPH  # the radiograph reader gives the precise one-line reason
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class in _CT_SOP_CLASSES or str(ds.get("Modality", "")).upper() == "CT":
        return CT
    return RADIOGRAPH
