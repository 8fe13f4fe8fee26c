"""Slicer-side helpers of the X2CTRecon module.

This package holds the glue between the headless ``x2ct`` package and MRML that does not need the
GUI. Nothing here imports ``slicer`` at import time, so the pure parts (finding the bundled ``x2ct``,
turning a SimpleITK image into a voxel array plus an IJKToRAS matrix) are tested with plain pytest.
Geometry conventions themselves (LPS/RAS, the canonical grid) belong to ``x2ct.geometry``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import numpy as np

_HERE = Path(__file__).resolve().parent

BUNDLED_DIR = _HERE / "bundled"
"""Where the extension build copies ``X2CTTraining/x2ct`` (see the top-level CMakeLists.txt)."""

SOURCE_CHECKOUT_DIR = _HERE.parents[1] / "X2CTTraining"
"""``X2CTTraining`` of a source checkout, used when the module runs straight from the repository."""


class DependencyError(RuntimeError):
    """A missing or unusable Python dependency, reported to the user as one message (no traceback)."""


def x2ctSearchPaths() -> List[Path]:
    """Folders that may hold the ``x2ct`` package, in order of preference."""
    return [folder for folder in (BUNDLED_DIR, SOURCE_CHECKOUT_DIR) if (folder / "x2ct" / "__init__.py").is_file()]


def addBundledX2CTToPath() -> Optional[str]:
    """Put the ``x2ct`` copy that ships with this module on ``sys.path``; return that folder, or None.

    The bundled copy is preferred over any ``x2ct`` installed in Slicer's Python so that the module
    and the package it calls always come from the same release. Cheap and idempotent.
    """
    for folder in x2ctSearchPaths():
        path = str(folder)
        if path not in sys.path:
            sys.path.insert(0, path)
        return path
    return None


def ijkToRASFromImage(image) -> np.ndarray:
    """4x4 IJKToRAS matrix of a 2-D or 3-D SimpleITK image (SimpleITK geometry is LPS, Slicer's is RAS).

    A 2-D image becomes a single-slice volume: its third axis gets unit spacing and the identity
    direction.
    """
    addBundledX2CTToPath()
    from x2ct.geometry import LPS_TO_RAS

    dimension = image.GetDimension()
    if dimension not in (2, 3):
        raise ValueError(f"only 2-D and 3-D images can become volumes, not {dimension}-D")
    direction = np.eye(3)
    direction[:dimension, :dimension] = np.reshape(image.GetDirection(), (dimension, dimension))
    spacing = np.ones(3)
    spacing[:dimension] = image.GetSpacing()
    origin = np.zeros(3)
    origin[:dimension] = image.GetOrigin()

    ijkToLPS = np.eye(4)
    ijkToLPS[:3, :3] = direction * spacing  # scales column c (the index axis c) by spacing[c]
    ijkToLPS[:3, 3] = origin
    return LPS_TO_RAS @ ijkToLPS


def voxelArrayFromImage(image) -> np.ndarray:
    """Voxels of a scalar SimpleITK image as a numpy array in Slicer's (K, J, I) order.

    64-bit integers are narrowed because Slicer does not display "long long" volumes.
    """
    import SimpleITK as sitk

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("only single-component (scalar) images can become scalar volumes")
    voxels = sitk.GetArrayFromImage(image)  # (k, j, i): the same order as slicer.util.arrayFromVolume
    if voxels.dtype == np.bool_:
        voxels = voxels.astype(np.uint8)
    elif voxels.dtype in (np.int64, np.uint64):
        info = np.iinfo(np.int32)
        fits = voxels.size == 0 or (voxels.min() >= info.min and voxels.max() <= info.max)
        voxels = voxels.astype(np.int32 if fits else np.float64)
    return voxels
