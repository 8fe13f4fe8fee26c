"""The synthetic CT as an image: the one conversion of a generator's HU volume into what every output holds.

``x2ct predict`` (:meth:`x2ct.inference.types.Prediction.image`, hence ``synthetic_ct.nrrd``, the
DICOM series, Slicer's volume node) and ``x2ct synthesize-ct`` both write :func:`synthetic_ct_image`; maps on its
grid (the SD over a stochastic generator's samples) are written with :func:`synthetic_map_image`.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import SimpleITK as sitk

from ..geometry import CanonicalGrid

SYNTHETIC_NOTE = "SYNTHETIC CT generated from radiographs by x2ct; research use only, not for diagnosis"
"""Written into every output (NRRD header, summary.json, findings.json)."""


def synthetic_ct_image(
    volume_hu: np.ndarray, grid: CanonicalGrid, model_name: str, weights_sha256: Optional[str]
) -> sitk.Image:
    """A (D, H, W) HU volume on ``grid`` as an int16 SimpleITK image (rounded to whole HU) with the grid's
    spacing, origin and direction (LPS, mm) and the header entries ``x2ct_synthetic`` (:data:`SYNTHETIC_NOTE`),
    ``x2ct_model`` and ``x2ct_weights_sha256`` ("unknown" when None)."""
    hu = np.clip(np.rint(volume_hu), -32768, 32767).astype(np.int16)
    return _mark_synthetic(grid.image_from_array(hu), model_name, weights_sha256)


def synthetic_map_image(
    map_hu: np.ndarray, grid: CanonicalGrid, model_name: str, weights_sha256: Optional[str], quantity: str
) -> sitk.Image:
    """A (D, H, W) map in HU that belongs to a synthetic CT (e.g. its per-voxel SD over samples) as a float32
    image on the CT's ``grid`` (same spacing, origin, direction), with the CT's header entries plus
    ``x2ct_quantity`` (``quantity``, in words) and ``x2ct_units`` ("HU")."""
    image = _mark_synthetic(grid.image_from_array(np.asarray(map_hu, dtype=np.float32)), model_name, weights_sha256)
    image.SetMetaData("x2ct_quantity", quantity)
    image.SetMetaData("x2ct_units", "HU")
    return image


def _mark_synthetic(image: sitk.Image, model_name: str, weights_sha256: Optional[str]) -> sitk.Image:
    """``image`` with the header entries every synthetic output carries (see :func:`synthetic_ct_image`)."""
    image.SetMetaData("x2ct_synthetic", SYNTHETIC_NOTE)
    image.SetMetaData("x2ct_model", model_name)
    image.SetMetaData("x2ct_weights_sha256", weights_sha256 or "unknown")
    return image
