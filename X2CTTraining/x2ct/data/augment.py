"""Seeded augmentation of a canonical-grid CT and its label map: affine + elastic warp, HU changes, noise.

Arrays are (D, H, W) on the canonical grid of :mod:`x2ct.geometry` (axes defined there) with isotropic
voxels of ``spacing_mm``; the CT is float32 HU, the label
map integer (TotalSegmentator ids). Every random number comes from the ``np.random.Generator`` passed
in, so the same generator state gives the same arrays.

Geometry (:func:`deform`): one backward mapping from output voxel to source position (mm, about the
cube centre) ``source = S · R · x + t + u(x)``, with

* ``R`` rotations about the D, H and W axes, each uniform in ±``rotation_deg``;
* ``S`` per-axis scale, each uniform in 1 ± ``scale``;
* ``t`` translation, each axis uniform in ±``translation_mm``;
* ``u`` an elastic displacement: a cubic B-spline with control points every ``elastic_grid_mm`` and
  coefficients uniform in ±``elastic_mm`` per axis. B-splines sum to one, so |u| ≤ ``elastic_mm`` on
  each axis, and the field is twice continuously differentiable (smooth, no folding at these strengths).

The CT is sampled trilinearly, the labels by nearest neighbour, both with the same mapping, so they
stay aligned. Positions outside the cube read air (``AIR_HU``) and label 0.

Intensity (:func:`adjust_intensity`): HU scale about air, ``AIR + s · (HU - AIR)`` with ``s`` uniform
in 1 ± ``hu_scale``, plus a shift uniform in ±``hu_shift`` HU that ramps in linearly from air (0) to
water (full), so air stays air; then white Gaussian noise with a standard deviation uniform in
[0, ``noise_hu``] HU on every voxel above ``AIR_HU``. Voxels at or below ``AIR_HU`` (outside the body
once the builder has masked the CT, or outside a scanner's field of view, e.g. -2048) are ``AIR_HU``
afterwards, so outside the body stays exactly air.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import numpy as np
from scipy import ndimage

from ..intensity import AIR_HU


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths of the random augmentation (0 disables a part). Units: degrees, fractions, mm, HU."""

    rotation_deg: float = 5.0
    """Maximum rotation about each axis (degrees)."""
    scale: float = 0.05
    """Maximum relative scale change per axis (0.05 = ±5%)."""
    translation_mm: float = 5.0
    """Maximum shift per axis (mm)."""
    elastic_mm: float = 4.0
    """Maximum elastic displacement per axis (mm)."""
    elastic_grid_mm: float = 50.0
    """Spacing of the elastic B-spline control points (mm); larger is smoother."""
    hu_scale: float = 0.03
    """Maximum relative change of (HU - AIR_HU) (0.03 = ±3%, about ±31 HU at water)."""
    hu_shift: float = 20.0
    """Maximum shift of soft tissue and bone (HU); air is not shifted."""
    noise_hu: float = 15.0
    """Maximum standard deviation of the added Gaussian noise (HU)."""


def _rotation(angles_rad: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix on (D, H, W) coordinates: rotations about D, then H, then W."""
    a, b, c = angles_rad
    about_d = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    about_h = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    about_w = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return about_w @ about_h @ about_d


def _cubic_bspline(t: np.ndarray) -> np.ndarray:
    """Uniform cubic B-spline kernel at ``t`` (in control-point spacings); support |t| < 2."""
    t = np.abs(t)
    inner = 2.0 / 3.0 - t**2 + 0.5 * t**3
    outer = (2.0 - t) ** 3 / 6.0
    return np.where(t < 1.0, inner, np.where(t < 2.0, outer, 0.0))


def _bspline_basis(positions_mm: np.ndarray, grid_mm: float) -> np.ndarray:
    """(len(positions), n_control) basis matrix for control points every ``grid_mm`` covering the positions."""
    low = positions_mm.min() - grid_mm
    count = int(math.ceil((positions_mm.max() + grid_mm - low) / grid_mm)) + 1
    controls = low + grid_mm * np.arange(count)
    return _cubic_bspline((positions_mm[:, None] - controls[None, :]) / grid_mm)


def _elastic_field(axes_mm: Tuple[np.ndarray, ...], rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """(3, D, H, W) float32 displacement in mm; each component a B-spline with coefficients in ±elastic_mm."""
    bases = [_bspline_basis(a, config.elastic_grid_mm) for a in axes_mm]
    shape = tuple(b.shape[1] for b in bases)
    field = []
    for _ in range(3):
        coeff = rng.uniform(-config.elastic_mm, config.elastic_mm, size=shape)
        along_d = np.tensordot(bases[0], coeff, axes=(1, 0))  # (D, nH, nW)
        along_h = np.einsum("bj,ajk->abk", bases[1], along_d)  # (D, H, nW)
        field.append((along_h @ bases[2].T).astype(np.float32))  # (D, H, W)
    return np.stack(field)


def sampling_coordinates(
    shape: Tuple[int, int, int], spacing_mm: float, rng: np.random.Generator, config: AugmentConfig = AugmentConfig()
) -> np.ndarray:
    """(3, D, H, W) float32 source voxel indices of a random affine + elastic warp of a ``shape`` volume.

    ``spacing_mm`` is the isotropic voxel edge; the affine acts about the volume centre (see module doc).
    """
    spacing_mm = float(spacing_mm)
    axes_mm = tuple((np.arange(n) - (n - 1) / 2.0) * spacing_mm for n in shape)
    angles = np.deg2rad(rng.uniform(-config.rotation_deg, config.rotation_deg, size=3))
    scales = rng.uniform(1.0 - config.scale, 1.0 + config.scale, size=3)
    shift = rng.uniform(-config.translation_mm, config.translation_mm, size=3)
    matrix = np.diag(scales) @ _rotation(angles)
    displacement = _elastic_field(axes_mm, rng, config) if config.elastic_mm > 0 else np.zeros((3, *shape), np.float32)
    column = [
        axes_mm[0][:, None, None].astype(np.float32),
        axes_mm[1][None, :, None].astype(np.float32),
        axes_mm[2][None, None, :].astype(np.float32),
    ]
    coords = np.empty((3, *shape), dtype=np.float32)
    for i in range(3):
        source_mm = (
            np.float32(matrix[i, 0]) * column[0]
            + np.float32(matrix[i, 1]) * column[1]
            + np.float32(matrix[i, 2]) * column[2]
            + np.float32(shift[i])
            + displacement[i]
        )
        coords[i] = source_mm / np.float32(spacing_mm) + np.float32((shape[i] - 1) / 2.0)
    return coords


def deform(
    ct_hu: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    spacing_mm: float,
    config: AugmentConfig = AugmentConfig(),
) -> Tuple[np.ndarray, np.ndarray]:
    """Warp CT (trilinear, float32 HU) and labels (nearest, same dtype) with one random affine + elastic map.

    Outside the cube the CT reads ``AIR_HU`` and the labels 0; CT values below ``AIR_HU`` (e.g. -2048
    outside a scanner's field of view) are raised to ``AIR_HU`` first. Shapes are kept.
    """
    if ct_hu.shape != labels.shape or ct_hu.ndim != 3:
        raise ValueError(f"CT {ct_hu.shape} and labels {labels.shape} must be the same 3-D (D, H, W) shape")
    coords = sampling_coordinates(ct_hu.shape, spacing_mm, rng, config)
    warped_ct = ndimage.map_coordinates(
        np.maximum(np.asarray(ct_hu, dtype=np.float32), np.float32(AIR_HU)),
        coords,
        order=1,
        mode="constant",
        cval=AIR_HU,
        prefilter=False,
    )
    warped_labels = ndimage.map_coordinates(labels, coords, order=0, mode="constant", cval=0, prefilter=False)
    return warped_ct.astype(np.float32, copy=False), warped_labels.astype(labels.dtype, copy=False)


def adjust_intensity(
    ct_hu: np.ndarray, rng: np.random.Generator, config: AugmentConfig = AugmentConfig()
) -> np.ndarray:
    """Random HU scale/shift and Gaussian noise (see module doc); returns float32 HU, ≥ ``AIR_HU``."""
    ct = np.asarray(ct_hu, dtype=np.float32)
    scale = np.float32(rng.uniform(1.0 - config.hu_scale, 1.0 + config.hu_scale))
    shift = np.float32(rng.uniform(-config.hu_shift, config.hu_shift))
    sigma = np.float32(rng.uniform(0.0, config.noise_hu))
    noise = rng.standard_normal(ct.shape, dtype=np.float32) * sigma
    above_air = ct - np.float32(AIR_HU)
    body = above_air > 0
    tissue_weight = np.clip(above_air / np.float32(-AIR_HU), 0.0, 1.0)  # 0 at air, 1 from water up
    out = np.float32(AIR_HU) + scale * above_air + shift * tissue_weight + noise
    return np.where(body, np.maximum(out, np.float32(AIR_HU)), np.float32(AIR_HU)).astype(np.float32)


def augment_case(
    ct_hu: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    spacing_mm: float,
    config: AugmentConfig = AugmentConfig(),
) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`deform` then :func:`adjust_intensity`: (float32 HU CT, labels of the input dtype), (D, H, W)."""
    ct, warped = deform(ct_hu, labels, rng, spacing_mm, config)
    return adjust_intensity(ct, rng, config), warped
