"""Digitally reconstructed radiographs (DRRs): a cone-beam projector and orthographic mean projections.

Geometry (official X2CT-GAN, Plastimatch ``drr -g "541 949" -z "500 500"``; see :class:`DRRGeometry`)
----------------------------------------------------------------------------------------------------
The isocentre is the centre of the canonical volume. A point source sits ``sad_mm`` from the
isocentre and a flat square detector of edge ``detector_mm`` sits ``sid_mm`` from the source,
perpendicular to the central ray. Detector pixels are ``detector_mm / size`` wide; objects at the
isocentre are magnified ``sid_mm / sad_mm`` (1.754 for the defaults, so 500 mm of detector see
285 mm at the isocentre).

Views and display (x2ct.views; the volume's (D, H, W) axes are x2ct.geometry's)
-------------------------------------------------------------------------------
* PA: source posterior (+H side), detector anterior. Image rows run along D (row 0 superior),
  columns along W (column 0 = patient right, radiological display).
* AP: source anterior (-H side), detector posterior; same display as PA.
* LATERAL: source at the patient's right (-W side), detector at the left. Rows along D (row 0
  superior), columns along H (column 0 = anterior).

Physics
-------
HU become linear attenuation ``mu = MU_WATER_PER_MM * (1 + HU / 1000)`` in 1/mm, clamped at 0.
Each pixel is the line integral of mu (dimensionless) along the ray from the source through the
pixel centre, restricted to the part of the ray inside the volume box (voxels are cells of edge
``spacing_mm``; the box is ``shape * spacing_mm`` centred on the isocentre; outside it mu = 0).

Sampling: the ray axis of a view (H for PA/AP, W for LATERAL) is cut into K equally spaced planes
(midpoint rule), with K chosen so that the step *along every ray* is at most half the smallest
voxel edge. Every ray crosses every plane once, at an in-plane position that is the detector pixel
position scaled by the plane's distance from the source, so the trilinear value at all K x size²
sample points is computed separably: linear interpolation between the two neighbouring voxel planes,
then linear along rows, then along columns (index gathers, no dense matrices). This is exactly
``grid_sample(mode="bilinear", align_corners=False, padding_mode="border")`` evaluated at those
points and zeroed outside the box (``align_corners=False`` because the box edge is the outer face of
the edge voxels, not their centres), but 4-6x faster on CPU than a 3-D ``grid_sample`` ray march.
Rays enter and leave through the two faces across the central ray exactly (the planes span the box);
where a ray crosses a side face, each sample is weighted by the fraction of its step inside the box.
The test suite checks the result against a fine per-ray ``grid_sample`` march. The sum is multiplied
by the step length in mm along each ray. Everything is differentiable w.r.t. the volume and runs on the
volume's device (CPU or CUDA); N volumes (and C channels) are projected in one call.

Orthographic mean projections (:func:`mean_projections`, as in the official projection loss):
the mean over H has the PA display orientation (rows D, columns W), the mean over W the lateral
one (rows D, columns H); they ignore magnification and divergence.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .atomic import PathLike, atomic_path
from .drr_geometry import DRRGeometry
from .geometry import GRID_SIZES, grid_of, to_canonical
from .views import AP, LATERAL, PA, normalize_view

MU_WATER_PER_MM = 0.0206
"""Linear attenuation of water in 1/mm at ~60 keV effective energy (NIST XCOM: 0.206 cm²/g x 1 g/cm³)."""

NORMALIZATIONS = ("minmax", "beer-lambert", "none")
"""Output scalings: per-image min-max to [0, 1] (official); 1 - exp(-line integral); raw line integral."""

DRR_VIEWS = (PA, AP, LATERAL)
"""Views the projector renders."""

_ELEMENTS_PER_CHUNK = 1 << 19
"""Sample-plane elements processed at once (bounds memory to a few MB per volume; cache friendly)."""

Spacing = Union[float, Sequence[float]]


def hu_to_mu(hu: torch.Tensor, mu_water: float = MU_WATER_PER_MM) -> torch.Tensor:
    """HU -> linear attenuation in 1/mm: ``mu_water * (1 + HU / 1000)``, clamped at 0 (air and below)."""
    return torch.clamp(mu_water * (1.0 + hu / 1000.0), min=0.0)


def drr_view(view: str) -> str:
    """Canonical view name (PA, AP or LATERAL) for ``view`` in any accepted spelling; ValueError otherwise."""
    name = normalize_view(view)
    if name not in DRR_VIEWS:
        raise ValueError(f"unknown DRR view {view!r}; use one of {', '.join(DRR_VIEWS)}")
    return name


def project(
    volume: torch.Tensor,
    spacing_mm: Spacing,
    view: str = PA,
    size: int = 128,
    geometry: Optional[DRRGeometry] = None,
    units: str = "mu",
) -> torch.Tensor:
    """Cone-beam line integrals of a canonical-grid volume.

    ``volume``: (N, C, D, H, W) on the canonical axes, values in ``units`` ("mu": 1/mm, "hu": HU,
    converted with :func:`hu_to_mu`); each of the N x C channels is projected independently.
    ``spacing_mm``: voxel edge in mm, one number or (D, H, W). Returns (N, C, size, size) line
    integrals of mu (dimensionless) in the display convention of ``view``, on the volume's device and
    dtype; differentiable w.r.t. ``volume``.
    """
    if volume.dim() != 5:
        raise ValueError(f"volume must be (N, C, D, H, W), got shape {tuple(volume.shape)}")
    if units not in ("mu", "hu"):
        raise ValueError(f"units must be 'mu' or 'hu', got {units!r}")
    if size < 1:
        raise ValueError(f"size must be a positive pixel count, got {size}")
    geometry = geometry or DRRGeometry()
    view = drr_view(view)
    spacing = _spacing3(spacing_mm)
    n, c, d, h, w = volume.shape
    if min(d, h, w) < 2:
        raise ValueError(f"volume needs at least 2 voxels per axis, got shape {tuple(volume.shape)}")
    mu = hu_to_mu(volume) if units == "hu" else volume
    stack = mu.reshape(n * c, d, h, w)
    if view == LATERAL:
        # Planes across W; source at the patient's right (-W); rows D, columns H.
        planes = stack.permute(0, 3, 1, 2)
        plane_spacing = (spacing[2], spacing[0], spacing[1])
        source_side = -1.0
    else:
        # Planes across H; PA source posterior (+H), AP anterior (-H); rows D, columns W.
        planes = stack.permute(0, 2, 1, 3)
        plane_spacing = (spacing[1], spacing[0], spacing[2])
        source_side = 1.0 if view == PA else -1.0
    image = _project_planes(planes, plane_spacing, source_side, size, geometry)
    return image.reshape(n, c, size, size)


def _spacing3(spacing_mm: Spacing) -> Tuple[float, float, float]:
    """(D, H, W) voxel edges in mm from one number or three."""
    values = [float(spacing_mm)] * 3 if np.isscalar(spacing_mm) else [float(s) for s in spacing_mm]
    if len(values) != 3 or min(values) <= 0:
        raise ValueError(f"spacing_mm must be one positive number or three, got {spacing_mm!r}")
    return values[0], values[1], values[2]


def _linear_weights(
    index: torch.Tensor, count: int, half_width: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Linear interpolation at continuous voxel ``index`` on an axis of ``count`` voxels.

    Returns (lower index, weight of lower, weight of upper). Inside the box (index in
    [-0.5, count - 0.5]) the edge half-voxels repeat the edge value (border); outside it the value is 0.
    With ``half_width`` (voxels) the sample stands for the ray segment [index - half_width,
    index + half_width] and the weights are scaled by the fraction of it inside the box, so that rays
    enter and leave through the box's side faces at the exact point rather than at a sample.
    """
    inside = ((index >= -0.5) & (index <= count - 0.5)).to(index.dtype)
    if half_width is not None:
        low, high = index - half_width, index + half_width
        covered = (high.clamp(max=count - 0.5) - low.clamp(min=-0.5)).clamp(min=0.0)
        inside = torch.where(half_width > 0, covered / (high - low).clamp_min(1e-12), inside).clamp(max=1.0)
    clamped = index.clamp(0.0, count - 1.0)
    lower = clamped.floor().clamp(max=max(count - 2, 0))
    frac = clamped - lower
    return lower.long(), (1.0 - frac) * inside, frac * inside


def _gather_lerp(
    rows: torch.Tensor, per_plane: int, lower: torch.Tensor, w_lower: torch.Tensor, w_upper: torch.Tensor
) -> torch.Tensor:
    """Interpolate along dim 1 of ``rows`` (B, planes*per_plane, L), plane by plane.

    ``lower``/weights are (planes, out): for plane k, output row j mixes input rows
    ``lower[k, j]`` and ``lower[k, j] + 1`` of that plane. Returns (B, planes, out, L).
    """
    planes, out = lower.shape
    flat = (lower + per_plane * torch.arange(planes, device=lower.device)[:, None]).reshape(-1)
    below = rows.index_select(1, flat).view(rows.shape[0], planes, out, rows.shape[2])
    above = rows.index_select(1, flat + 1).view(rows.shape[0], planes, out, rows.shape[2])
    return w_lower[..., None] * below + w_upper[..., None] * above


def _project_planes(
    planes: torch.Tensor,
    spacing: Tuple[float, float, float],
    source_side: float,
    size: int,
    geometry: DRRGeometry,
) -> torch.Tensor:
    """Line integrals through ``planes`` (B, P, R, C): P along the central ray, R -> image rows, C -> columns.

    ``spacing`` = (P, R, C) voxel edges in mm; the source is at plane coordinate ``source_side * SAD``
    (mm from the isocentre) and the detector on the opposite side. Returns (B, size, size).
    """
    batch, n_p, n_r, n_c = planes.shape
    dev, dtype = planes.device, planes.dtype
    sad, sid = geometry.sad_mm, geometry.sid_mm
    pitch = geometry.detector_spacing_mm(size)
    pixel = (torch.arange(size, device=dev, dtype=dtype) - (size - 1) / 2.0) * pitch  # detector mm from centre
    half_corner = (size - 1) / 2.0 * pitch
    cos_min = sid / math.sqrt(sid**2 + 2.0 * half_corner**2)  # most oblique ray
    extent = n_p * spacing[0]
    count = max(1, math.ceil(extent / (0.5 * min(spacing) * cos_min)))
    step = extent / count  # plane spacing (mm along the central ray)
    offsets = -extent / 2.0 + (torch.arange(count, device=dev, dtype=dtype) + 0.5) * step
    scale = (sad - source_side * offsets) / sid  # in-plane position = scale x detector position
    p_lower, p_wl, p_wu = _linear_weights(offsets / spacing[0] + (n_p - 1) / 2.0, n_p)
    drift = (0.5 * step / sid) * pixel.abs()[None, :]  # in-plane mm moved over half a plane step, (1, size)
    flat_planes = planes.contiguous().reshape(batch, n_p, n_r * n_c)
    chunk = max(1, _ELEMENTS_PER_CHUNK // (n_r * n_c))
    total = planes.new_zeros(batch, size, size)  # accumulated as (B, columns, rows)
    for start in range(0, count, chunk):
        sel = slice(start, min(count, start + chunk))
        k = p_lower[sel]
        sampled = p_wl[sel, None] * flat_planes.index_select(1, k) + p_wu[sel, None] * flat_planes.index_select(
            1, k + 1
        )  # (B, k, R*C): trilinear along the ray axis
        n_k = sampled.shape[1]
        in_plane = scale[sel, None] * pixel[None, :]  # (k, size) mm
        r_idx = _linear_weights(in_plane / spacing[1] + (n_r - 1) / 2.0, n_r, drift / spacing[1])
        by_rows = _gather_lerp(sampled.reshape(batch, n_k * n_r, n_c), n_r, *r_idx)  # (B, k, size, C)
        columns_first = by_rows.transpose(2, 3).reshape(batch, n_k * n_c, size)
        c_idx = _linear_weights(in_plane / spacing[2] + (n_c - 1) / 2.0, n_c, drift / spacing[2])
        total = total + _gather_lerp(columns_first, n_c, *c_idx).sum(1)  # (B, size_c, size_r)
    path_factor = torch.sqrt(sid**2 + pixel[:, None] ** 2 + pixel[None, :] ** 2) / sid  # 1 / cos(ray angle)
    return total.transpose(1, 2) * (path_factor * step)


def normalize(line_integrals: torch.Tensor, mode: str = "minmax") -> torch.Tensor:
    """Scale (..., H, W) line integrals for display or learning; dense (bone) stays bright.

    "minmax": per image to [0, 1] (official X2CT-GAN PNGs; a constant image becomes 0);
    "beer-lambert": ``1 - exp(-integral)``, the absorbed fraction (radiograph look, in [0, 1));
    "none": unchanged.
    """
    if mode == "none":
        return line_integrals
    if mode == "beer-lambert":
        return -torch.expm1(-line_integrals)
    if mode == "minmax":
        low = line_integrals.amin(dim=(-2, -1), keepdim=True)
        span = line_integrals.amax(dim=(-2, -1), keepdim=True) - low
        return torch.where(span > 0, (line_integrals - low) / span.clamp_min(1e-12), torch.zeros_like(line_integrals))
    raise ValueError(f"unknown normalization {mode!r}; use one of {', '.join(NORMALIZATIONS)}")


def mean_projections(volume: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Orthographic mean projections of (N, C, D, H, W), as in the official projection loss.

    "axial": mean over D -> (N, C, H, W); "coronal": mean over H -> (N, C, D, W), oriented like the
    PA display (rows S->I, columns patient R->L); "sagittal": mean over W -> (N, C, D, H), oriented like
    the lateral display (rows S->I, columns A->P). Parallel rays, no magnification, values are means
    (not line integrals).
    """
    if volume.dim() != 5:
        raise ValueError(f"volume must be (N, C, D, H, W), got shape {tuple(volume.shape)}")
    return {"axial": volume.mean(dim=2), "coronal": volume.mean(dim=3), "sagittal": volume.mean(dim=4)}


def resolve_device(device: Union[str, torch.device] = "cpu") -> torch.device:
    """torch.device for "cpu", "cuda[:i]" or "auto"; CUDA falls back to CPU (with a warning) when absent."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        warnings.warn("CUDA requested but not available; rendering DRRs on the CPU", RuntimeWarning, stacklevel=2)
        return torch.device("cpu")
    return dev


def canonical_grid_size(size: int) -> int:
    """Canonical grid edge (voxels) used for a ``size``-pixel DRR: the smallest of 64/128/256 >= size (max 256)."""
    return next((g for g in GRID_SIZES if g >= size), GRID_SIZES[-1])


def canonical_volume(ct: sitk.Image, size: int = 128) -> Tuple[np.ndarray, float]:
    """A CT in HU as a (D, H, W) float32 canonical-grid array and its spacing in mm.

    A CT already on a canonical grid is used as is; any other is resampled with
    :func:`x2ct.geometry.to_canonical` onto a grid of :func:`canonical_grid_size` (``size``) voxels.
    """
    try:
        grid = grid_of(ct)
        image = ct
    except ValueError:
        image = to_canonical(ct, size=canonical_grid_size(size))
        grid = grid_of(image)
    return sitk.GetArrayFromImage(image).astype(np.float32, copy=False), grid.spacing_mm


def _render_views(
    ct: sitk.Image,
    views: Iterable[str],
    size: int,
    geometry: Optional[DRRGeometry],
    device: Union[str, torch.device],
) -> Dict[str, np.ndarray]:
    """Raw line-integral images (size, size) float32 per view name, from one canonical resampling."""
    hu, spacing = canonical_volume(ct, size)
    volume = torch.from_numpy(hu)[None, None].to(resolve_device(device))
    with torch.no_grad():
        return {
            view: project(volume, spacing, view, size, geometry, units="hu")[0, 0].cpu().numpy()
            for view in dict.fromkeys(drr_view(v) for v in views)
        }


def render(
    ct: sitk.Image,
    view: str = PA,
    size: int = 128,
    geometry: Optional[DRRGeometry] = None,
    normalization: str = "minmax",
    device: Union[str, torch.device] = "cpu",
) -> np.ndarray:
    """DRR of a CT in HU (any grid; see :func:`canonical_volume`) as float32 (size, size) in the view's display.

    ``normalization`` is one of :data:`NORMALIZATIONS`; "none" returns the line integral of mu.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; use one of {', '.join(NORMALIZATIONS)}")
    raw = _render_views(ct, [view], size, geometry, device)[drr_view(view)]
    return normalize(torch.from_numpy(raw), normalization).numpy().astype(np.float32, copy=False)


def write_drrs(
    ct: sitk.Image,
    out_dir: PathLike,
    views: Sequence[str] = (PA, LATERAL),
    size: int = 128,
    geometry: Optional[DRRGeometry] = None,
    normalization: str = "minmax",
    device: Union[str, torch.device] = "cpu",
) -> Dict[str, Dict[str, Path]]:
    """Write ``<view>.png`` (16-bit grey, "I;16") and ``<view>.nrrd`` (2-D float32) per view into ``out_dir``.

    File stems are lower-case view names (``pa``, ``ap``, ``lateral``). Pixels are the
    ``normalization`` of the line integral (default per-image min-max, [0, 1]); the PNG maps [0, 1] to
    0..65535 (with "none" the PNG is min-max scaled). The NRRD's spacing is the detector pitch
    ``detector_mm / size`` (mm), its origin puts the central ray at (0, 0), and its metadata records the
    view, geometry, isocentre pitch (detector pitch x SAD / SID), the raw line-integral range and
    that the image is a synthetic DRR. Writes are atomic. Returns {view: {"png": path, "nrrd": path}}.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; use one of {', '.join(NORMALIZATIONS)}")
    geometry = geometry or DRRGeometry()
    out = Path(out_dir)
    written: Dict[str, Dict[str, Path]] = {}
    for view, raw in _render_views(ct, views, size, geometry, device).items():
        image = normalize(torch.from_numpy(raw), normalization).numpy().astype(np.float32, copy=False)
        display = image if normalization != "none" else normalize(torch.from_numpy(raw)).numpy()
        stem = view.lower()
        png_path, nrrd_path = out / f"{stem}.png", out / f"{stem}.nrrd"
        description = f"SYNTHETIC digitally reconstructed radiograph ({view}), x2ct.drr; not for diagnosis"
        with atomic_path(png_path) as tmp:
            info = PngInfo()
            info.add_text("Description", description)
            pixels = np.round(np.clip(display, 0.0, 1.0) * 65535.0).astype(np.uint16)
            Image.fromarray(pixels).save(tmp, format="PNG", pnginfo=info)
        nrrd = sitk.GetImageFromArray(image)
        pitch = geometry.detector_spacing_mm(size)
        nrrd.SetSpacing((pitch, pitch))
        nrrd.SetOrigin((-(size - 1) / 2.0 * pitch,) * 2)
        metadata = {
            "x2ct_synthetic": description,
            "x2ct_view": view,
            "x2ct_display": "rows superior->inferior; columns "
            + ("anterior->posterior" if view == LATERAL else "patient right->left"),
            "x2ct_sad_mm": repr(geometry.sad_mm),
            "x2ct_sid_mm": repr(geometry.sid_mm),
            "x2ct_detector_mm": repr(geometry.detector_mm),
            "x2ct_detector_spacing_mm": repr(pitch),
            "x2ct_isocenter_spacing_mm": repr(geometry.isocenter_spacing_mm(size)),
            "x2ct_normalization": normalization,
            "x2ct_line_integral_min": repr(float(raw.min())),
            "x2ct_line_integral_max": repr(float(raw.max())),
            "x2ct_mu_water_per_mm": repr(MU_WATER_PER_MM),
        }
        for key, value in metadata.items():
            nrrd.SetMetaData(key, value)
        with atomic_path(nrrd_path) as tmp:
            sitk.WriteImage(nrrd, str(tmp), useCompression=True)
        written[view] = {"png": png_path, "nrrd": nrrd_path}
    return written
