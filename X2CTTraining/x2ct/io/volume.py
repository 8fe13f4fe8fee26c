"""Writing volumes (CT in HU, label maps, heat maps) to NRRD, NIfTI or MHA with their geometry.

Spacing (mm), origin (mm) and direction are written as they are in the SimpleITK image (LPS).
ITK's NIfTI writer stores them as a RAS sform/qform (x and y negated), so a NIfTI round trip keeps
every voxel at the same physical position; ``Testing/test_geometry.py`` checks that, against
nibabel as well. Files are written compressed, under a temporary name, then renamed into place.
"""

from __future__ import annotations

import os
from pathlib import Path

import SimpleITK as sitk

from ..atomic import atomic_path
from ..errors import PathLike

VOLUME_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha")
"""File name endings :func:`write_volume` accepts (single-file formats only, so the write is atomic)."""


def volume_suffix(path: PathLike) -> str:
    """The format ending of ``path`` in lower case (``.nii.gz`` counts as one), or '' if not a volume format."""
    name = Path(os.fspath(path)).name.lower()
    return next((s for s in sorted(VOLUME_SUFFIXES, key=len, reverse=True) if name.endswith(s)), "")


def write_volume(image: sitk.Image, path: PathLike) -> Path:
    """Write ``image`` to ``path`` (.nrrd, .nii, .nii.gz or .mha) atomically with compression; return the path.

    Raises ValueError for any other ending.
    """
    target = Path(os.fspath(path))
    if not volume_suffix(target):
        raise ValueError(f"{target}: cannot write a volume with this ending; use one of {', '.join(VOLUME_SUFFIXES)}")
    with atomic_path(target) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return target
