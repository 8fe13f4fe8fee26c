"""The one volume convention (official X2CT-GAN) and the matrices that place it in patient space.

Canonical grid
--------------
A synthetic CT is a cube of ``EXTENT_MM`` = 320 mm sampled ``size``³ (64, 128 or 256; default 128,
i.e. 2.5 mm voxels). Its numpy array has axes (D, H, W):

* D: superior -> inferior (index 0 is the most cranial slice; radiograph rows run along D),
* H: anterior -> posterior (the PA ray direction; lateral radiograph columns run along H),
* W: patient right -> left (PA columns, radiological display; the lateral ray direction).

In ITK/SimpleITK (LPS: +x = patient left, +y = posterior, +z = superior) the array (D, H, W) is the
image index (k, j, i) with i along W, and the direction matrix is diag(+1, +1, -1): i -> +x, j -> +y,
k -> -z. Slicer uses RAS, which flips the first two physical axes. ``ijk`` below always means the
ITK/VTK index order (i fastest = W, j = H, k = D).

Radiographs carry no patient frame, so a synthetic volume is centred at the origin unless a centre
is given. A real CT brought onto the grid is centred on the body (see :func:`body_center_lps`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .intensity import AIR_HU

EXTENT_MM = 320.0
"""Edge length of the canonical cube in mm."""

GRID_SIZES = (64, 128, 256)
"""Supported voxel counts per edge."""

DIRECTION_LPS = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
"""Row-major 3x3 direction matrix of the canonical grid in LPS (columns are the i, j, k axes)."""

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""4x4 change of physical frame LPS -> RAS (its own inverse)."""

BODY_THRESHOLD_HU = -500.0
"""Voxels above this belong to the body (soft tissue, bone) rather than air."""

LUNG_THRESHOLD_HU = -400.0
"""Voxels inside the body and below this are internal air (lungs, airways)."""

AXIS_DIRECTIONS = ("superior->inferior", "anterior->posterior", "patient right->left")
"""Where the canonical array axes D, H and W point, in words (the definition is this module's docstring)."""

AXES = f"(D, H, W) = ({', '.join(AXIS_DIRECTIONS)})"
"""The canonical array axes in words, for file headers and metadata."""

Vector3 = Tuple[float, float, float]


@dataclass(frozen=True)
class CanonicalGrid:
    """The canonical cube: ``size``³ voxels spanning ``extent_mm`` with its centre at ``center_lps`` (mm)."""

    size: int = 128
    extent_mm: float = EXTENT_MM
    center_lps: Vector3 = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if self.size not in GRID_SIZES:
            raise ValueError(f"grid size must be one of {GRID_SIZES}, got {self.size}")

    @property
    def spacing_mm(self) -> float:
        """Isotropic voxel edge in mm (2.5 mm at 128³)."""
        return self.extent_mm / self.size

    @property
    def shape_dhw(self) -> Tuple[int, int, int]:
        """Array shape (D, H, W)."""
        return (self.size, self.size, self.size)

    @property
    def origin_lps(self) -> Vector3:
        """LPS position (mm) of the centre of voxel ijk = (0, 0, 0)."""
        half = (self.size - 1) / 2.0 * self.spacing_mm
        d = np.asarray(DIRECTION_LPS).reshape(3, 3)
        return tuple(float(v) for v in np.asarray(self.center_lps) - d @ np.full(3, half))

    def centered_at(self, center_lps: Sequence[float]) -> CanonicalGrid:
        """The same grid moved so that its centre is ``center_lps`` (mm)."""
        return replace(self, center_lps=tuple(float(c) for c in center_lps))

    def ijk_to_lps(self) -> np.ndarray:
        """4x4 matrix taking homogeneous index (i=W, j=H, k=D, 1) to LPS mm."""
        m = np.eye(4)
        m[:3, :3] = np.asarray(DIRECTION_LPS).reshape(3, 3) * self.spacing_mm
        m[:3, 3] = self.origin_lps
        return m

    def ijk_to_ras(self) -> np.ndarray:
        """4x4 matrix taking homogeneous index (i=W, j=H, k=D, 1) to RAS mm (Slicer's IJKToRAS)."""
        return LPS_TO_RAS @ self.ijk_to_lps()

    def image_from_array(self, array_dhw: np.ndarray) -> sitk.Image:
        """Wrap a (D, H, W) array as a SimpleITK image placed on this grid (values unchanged)."""
        array_dhw = np.asarray(array_dhw)
        if array_dhw.shape != self.shape_dhw:
            raise ValueError(f"array shape {array_dhw.shape} does not match grid {self.shape_dhw}")
        image = sitk.GetImageFromArray(array_dhw)
        self.apply_to(image)
        return image

    def apply_to(self, image: sitk.Image) -> None:
        """Set spacing, origin and direction of ``image`` (size must already match)."""
        image.SetSpacing((self.spacing_mm,) * 3)
        image.SetOrigin(self.origin_lps)
        image.SetDirection(DIRECTION_LPS)

    def reference_image(self, pixel_id: int = sitk.sitkFloat32) -> sitk.Image:
        """An empty image with this grid's geometry, for resampling onto it."""
        image = sitk.Image([self.size] * 3, pixel_id)
        self.apply_to(image)
        return image


def grid_of(image: sitk.Image) -> CanonicalGrid:
    """Recover the :class:`CanonicalGrid` of an image that lies on one (raises ValueError otherwise)."""
    size = image.GetSize()
    if len(set(size)) != 1 or size[0] not in GRID_SIZES:
        raise ValueError(f"image of size {size} is not on a canonical grid")
    spacing = image.GetSpacing()
    if not np.allclose(spacing, EXTENT_MM / size[0], rtol=1e-4):
        raise ValueError(f"spacing {spacing} is not {EXTENT_MM / size[0]} mm")
    if not np.allclose(image.GetDirection(), DIRECTION_LPS, atol=1e-4):
        raise ValueError(f"direction {image.GetDirection()} is not the canonical {DIRECTION_LPS}")
    center = image.TransformContinuousIndexToPhysicalPoint([(size[0] - 1) / 2.0] * 3)
    return CanonicalGrid(size=size[0], center_lps=tuple(center))


def body_mask(ct: sitk.Image, threshold_hu: float = BODY_THRESHOLD_HU) -> sitk.Image:
    """Binary body mask (uint8): the largest connected region above ``threshold_hu``, holes filled per slice.

    Filling per axial slice keeps the lungs inside the body. Thin structures not connected to the
    patient (most tables and bed sheets) fall away with the largest-component rule.
    """
    ct = sitk.Cast(ct, sitk.sitkFloat32)  # thresholds below are floats; integer images would overflow
    above = sitk.BinaryThreshold(ct, lowerThreshold=threshold_hu, upperThreshold=1e9, insideValue=1, outsideValue=0)
    components = sitk.RelabelComponent(sitk.ConnectedComponent(above), sortByObjectSize=True)
    largest = sitk.Equal(components, 1)
    # Fill holes in each axial slice (index k of an axial CT); the lungs become part of the body.
    filled = sitk.BinaryFillhole(largest, fullyConnected=False, foregroundValue=1)
    slices = [
        sitk.BinaryFillhole(largest[:, :, k], fullyConnected=False, foregroundValue=1)
        for k in range(largest.GetSize()[2])
    ]
    stacked = sitk.JoinSeries(slices)
    stacked.CopyInformation(largest)
    return sitk.Cast(sitk.Or(filled, stacked), sitk.sitkUInt8)


def body_center_lps(ct: sitk.Image) -> Vector3:
    """Centre (LPS mm) used to place a real CT on the canonical grid.

    Left-right and antero-posterior: the centre of the body mask's bounding box.
    Cranio-caudal: the centre of the internal air (lungs) when there is any, else of the body.
    Returns the image centre when no body is found.
    """
    ct = _coarse(sitk.Cast(ct, sitk.sitkFloat32))
    mask = body_mask(ct)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    if not stats.HasLabel(1):
        return _image_center(ct)
    body_box = _bbox_center_physical(ct, stats.GetBoundingBox(1))
    lungs = sitk.And(mask, sitk.BinaryThreshold(ct, -1e9, LUNG_THRESHOLD_HU, 1, 0))
    lungs = sitk.BinaryOpeningByReconstruction(lungs, [2, 2, 1])
    stats.Execute(lungs)
    if stats.HasLabel(1) and stats.GetNumberOfPixels(1) > 1000:
        lung_box = _bbox_center_physical(ct, stats.GetBoundingBox(1))
        return (body_box[0], body_box[1], lung_box[2])
    return body_box


def _coarse(image: sitk.Image, min_spacing_mm: float = 2.5) -> sitk.Image:
    """Bin-average an image so no axis is finer than ``min_spacing_mm`` (speeds up mask statistics)."""
    factors = [max(1, int(min_spacing_mm // s)) for s in image.GetSpacing()]
    return sitk.BinShrink(image, factors) if max(factors) > 1 else image


def _image_center(image: sitk.Image) -> Vector3:
    return tuple(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in image.GetSize()]))


def _bbox_center_physical(image: sitk.Image, bbox: Sequence[int]) -> Vector3:
    start, size = bbox[:3], bbox[3:]
    centre_index = [s + (n - 1) / 2.0 for s, n in zip(start, size)]
    return tuple(image.TransformContinuousIndexToPhysicalPoint(centre_index))


def _antialias(image: sitk.Image, target_spacing: float) -> sitk.Image:
    """Gaussian pre-filter before downsampling: sigma (mm) = sqrt(t² - s²) / 2.355 per axis where coarser."""
    sigmas = [math.sqrt(max(target_spacing**2 - s**2, 0.0)) / 2.355 for s in image.GetSpacing()]
    if max(sigmas) <= 0:
        return image
    return sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), [max(s, 1e-3) for s in sigmas])


def to_canonical(
    ct: sitk.Image,
    size: int = 128,
    center_lps: Optional[Sequence[float]] = None,
) -> sitk.Image:
    """Resample a CT in HU onto the canonical grid (float32 HU), body-centred; outside the scan is air.

    The 320 mm cube crops larger scans and pads smaller ones with ``AIR_HU``. Downsampling is
    anti-aliased. ``center_lps`` (mm) overrides the automatic body centre.
    """
    grid = CanonicalGrid(size=size)
    grid = grid.centered_at(center_lps if center_lps is not None else body_center_lps(ct))
    smoothed = _antialias(ct, grid.spacing_mm)
    return sitk.Resample(
        smoothed, grid.reference_image(), sitk.Transform(), sitk.sitkLinear, AIR_HU, sitk.sitkFloat32
    )


def labels_to_canonical(labels: sitk.Image, canonical_ct: sitk.Image) -> sitk.Image:
    """Resample a label map onto the grid of ``canonical_ct`` with nearest-neighbour interpolation (0 outside)."""
    return sitk.Resample(labels, canonical_ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID())


def from_canonical(volume: sitk.Image, reference: sitk.Image, default_value: float = AIR_HU) -> sitk.Image:
    """Resample a canonical-grid volume back onto ``reference``'s grid (linear; ``default_value`` outside the cube)."""
    return sitk.Resample(volume, reference, sitk.Transform(), sitk.sitkLinear, default_value, volume.GetPixelID())


def canonical_array(image: sitk.Image) -> np.ndarray:
    """The (D, H, W) numpy array of a canonical-grid image (a copy)."""
    grid_of(image)
    return sitk.GetArrayFromImage(image)
