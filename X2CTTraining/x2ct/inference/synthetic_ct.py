"""The synthetic CT as an image: the one conversion of a generator's HU volume into what every output holds.

``x2ct predict`` (:meth:`x2ct.inference.types.Prediction.image`, hence ``synthetic_ct.nrrd``, the
DICOM series, Slicer's volume node) and ``x2ct synthesize-ct`` both write :func:`synthetic_ct_image`.
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
    image = grid.image_from_array(hu)
    image.SetMetaData("x2ct_synthetic", SYNTHETIC_NOTE)
    image.SetMetaData("x2ct_model", model_name)
    image.SetMetaData("x2ct_weights_sha256", weights_sha256 or "unknown")
    return image
