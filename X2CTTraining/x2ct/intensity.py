"""The one intensity convention for CT volumes during learning (official X2CT-GAN).

``unit = clip(HU + 1024, 0, 2500) / 2500`` and back ``HU = 2500 * unit - 1024``, so the learning
range [0, 1] covers HU [-1024, 1476]. Air and padding are -1024 HU (unit 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np

HU_OFFSET = 1024.0
"""Added to HU before scaling (official stored values are HU + 1024)."""

UNIT_RANGE = 2500.0
"""Width of the learning window in HU (-1024..1476)."""

AIR_HU = -1024.0
"""Value used for padding and outside the body, in HU."""


def hu_to_unit(hu: np.ndarray) -> np.ndarray:
    """HU -> [0, 1] float32 learning scale (clipped)."""
    return (np.clip(np.asarray(hu, dtype=np.float32) + HU_OFFSET, 0.0, UNIT_RANGE) / UNIT_RANGE).astype(np.float32)


def unit_to_hu(unit: np.ndarray) -> np.ndarray:
    """[0, 1] learning scale -> HU float32. Values are clamped to [0, 1] first, as official inference does."""
    return (np.clip(np.asarray(unit, dtype=np.float32), 0.0, 1.0) * UNIT_RANGE - HU_OFFSET).astype(np.float32)


def unit_to_hu_unclamped(unit: Any) -> Any:
    """``2500 * unit - 1024`` without clamping, for numpy arrays and torch tensors alike (differentiable: losses)."""
    return unit * UNIT_RANGE - HU_OFFSET
