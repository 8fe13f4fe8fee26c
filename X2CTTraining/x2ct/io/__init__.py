"""Reading and writing images: radiographs in, CT volumes and synthetic DICOM series out."""

from __future__ import annotations

from .ct import ct_info, read_ct
from .dicom_ct import SyntheticProvenance, write_synthetic_ct_series
from .radiograph import Radiograph, read_radiograph
from .volume import write_volume

__all__ = [
    "Radiograph",
    "SyntheticProvenance",
    "ct_info",
    "read_ct",
    "read_radiograph",
    "write_synthetic_ct_series",
    "write_volume",
]
