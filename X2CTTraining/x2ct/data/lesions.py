"""Procedural lung lesions painted into a canonical-grid CT, placed with its organ label map.

Arrays are (D, H, W) on the canonical axes of :mod:`x2ct.geometry`, with isotropic voxels of
``spacing_mm``; the CT is float32 HU, the labels TotalSegmentator ids (lung lobes 10-14,
pulmonary vein 53; see Resources/SampleData/structures.csv). Every inserter has the signature
``f(ct_hu, labels, rng, spacing_mm, free=None) -> (ct_hu, mask)``: it returns a modified copy of the CT
and the boolean lesion mask (same shape), draws all randomness from ``rng`` and, when ``free`` (bool,
same shape) is given, only places lesion voxels where ``free`` is True (so lesions do not overlap).

Where lesions go
----------------
* solid nodule, calcified granuloma, calcification flecks, cavity, consolidation, miliary nodules:
  inside the lung lobes (labels 10-14); the mask is a subset of the lobes. Granulomas, flecks and
  cavities prefer the upper lobes, as post-primary tuberculosis does.
* pleural effusion: the dependent (posterior-inferior) part of one or both hemithoraces' lungs. The
  fluid replaces that lung (the label map is left unchanged: fluid and the compressed lung beneath it
  are one soft-tissue density at this resolution).
* pulmonary embolism: a filling defect in a contrast-enhanced pulmonary vessel (see below); the mask is
  in the vessel tree, which reaches out of the lobes at the hila.

Rendering
---------
Compact lesions are lobulated balls, ``|x - c| <= r(direction)``. Voxels whose centre lies inside take
the lesion's value (so the mask holds the documented HU); a one-voxel rim outside blends linearly
towards it (partial volume). Radii are at least :data:`MIN_RADIUS_VOXELS` voxels, so every compact
lesion covers at least its centre voxel; on a coarse grid (5 mm at 64³) small calcifications are
therefore larger than their nominal size. Miliary nodules are much smaller than a voxel: each adds its
volume fraction of nodule density to the voxel it falls in (partial volume).

Pulmonary-embolism approximation
--------------------------------
There is no pulmonary-artery label, and a CT may be unenhanced. :func:`enhance_pulmonary_vessels`
takes as the pulmonary vessel tree the voxels above :data:`VESSEL_THRESHOLD_HU` inside the lobes
(away from the pleura), plus the pulmonary veins (label 53) and unlabelled voxels above
:data:`HILAR_VESSEL_MIN_HU` in a thin band around the lungs near the hila; it keeps the connected parts
that reach a hilum. Arteries and veins are not told apart. Each vessel voxel's blood fraction is
estimated from its HU between lung parenchyma (:data:`LUNG_PARENCHYMA_HU`) and blood (the pulmonary
veins' median HU, at least :data:`UNENHANCED_BLOOD_HU`), and the voxel is raised to
``parenchyma + fraction · (enhanced - parenchyma)`` with enhanced blood in :data:`ENHANCED_BLOOD_HU`
(never lowered). A CT that is already enhanced (like the bundled sample, ~250 HU in the pulmonary
veins) changes little. :func:`pulmonary_embolism` then picks a thick, well-filled branch 10-70 mm
from a hilum (not a pulmonary vein) and replaces the blood of the vessel voxels within a few mm of it
with clot of :data:`CLOT_HU` (same partial-volume rule): an occlusive segmental filling defect. The
mask is the defect's voxels that are at least half vessel.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

LUNG_LOBE_LABELS = (10, 11, 12, 13, 14)
"""Lung lobe ids: upper/lower left 10/11, upper/middle/lower right 12/13/14."""
LEFT_LUNG_LABELS = (10, 11)
RIGHT_LUNG_LABELS = (12, 13, 14)
PULMONARY_VEIN_LABEL = 53
"""Label id of the central pulmonary veins."""

UPPER_LOBE_WEIGHTS = {10: 3.0, 12: 3.0, 11: 1.0, 14: 1.0, 13: 0.5}
"""Relative lobe preference (times lobe volume) for post-primary TB signs (upper lobes, superior segments)."""
EVEN_LOBE_WEIGHTS = {10: 1.0, 11: 1.0, 12: 1.0, 13: 1.0, 14: 1.0}
"""No lobe preference (lobe volume only)."""

MIN_RADIUS_VOXELS = 0.6
"""Smallest compact-lesion radius in voxels (the centre voxel is always inside)."""

SOFT_TISSUE_HU = (20.0, 60.0)
"""Solid nodule and cavity wall density (HU)."""
NODULE_DIAMETER_MM = (6.0, 20.0)
"""Solid nodule diameter (mm): from the smallest reportable to a large nodule (< 30 mm, not a mass)."""
NODULE_LOBULATION = 0.15
"""Maximum relative radius modulation of a nodule (lobulated margin)."""

CALCIFICATION_HU = (400.0, 900.0)
"""Calcified granuloma and fleck density (HU); calcification is diagnosed above ~200 HU."""
GRANULOMA_DIAMETER_MM = (4.0, 10.0)
"""Calcified granuloma diameter (mm)."""
FLECK_DIAMETER_MM = (1.5, 3.0)
"""Calcification fleck diameter (mm); rendered at least one voxel (see module doc)."""
FLECK_COUNT = (3, 8)
"""Number of flecks in a cluster (inclusive)."""
FLECK_SPREAD_MM = (8.0, 20.0)
"""Radius of the region a fleck cluster is scattered over (mm)."""

CAVITY_DIAMETER_MM = (20.0, 45.0)
"""Outer diameter of a cavity (mm)."""
CAVITY_WALL_MM = (3.0, 8.0)
"""Cavity wall thickness (mm); TB cavities are usually thick-walled (> 4 mm)."""
CAVITY_AIR_HU = (-1000.0, -980.0)
"""Air in the cavity lumen (HU)."""

CONSOLIDATION_RADIUS_MM = (18.0, 40.0)
"""Radius of the region an infiltrate grows in (mm); the result is cut to one lobe."""
CONSOLIDATION_HU = (-100.0, 40.0)
"""Mean density of the affected parenchyma (HU): dense infiltrate to full consolidation."""
CONSOLIDATION_TEXTURE_HU = 15.0
"""Standard deviation of the smooth density variation inside a consolidation (HU)."""
CONSOLIDATION_IRREGULARITY = 0.35
"""Weight of the smooth random field that makes the consolidation margin irregular."""
CONSOLIDATION_MARGIN = 0.75
"""Inner edge (in units of q, see :func:`consolidation`) of the ground-glass fringe; 1 = sharp edge."""
TEXTURE_SCALE_MM = 6.0
"""Correlation length of the consolidation's random field (Gaussian sigma, mm)."""

EFFUSION_HU = (5.0, 25.0)
"""Pleural fluid density (HU): transudate to exudate (TB effusions are exudates, ~20-30 HU)."""
EFFUSION_FRACTION = (0.08, 0.25)
"""Fraction of the hemithorax's lung volume the fluid replaces."""
EFFUSION_TILT_DEG = (30.0, 60.0)
"""Direction of 'down' for the fluid level: 0° = inferior (upright), 90° = posterior (supine)."""
EFFUSION_MENISCUS = 0.3
"""How much the fluid climbs laterally (meniscus), per mm of distance from the lung's medial side."""
EFFUSION_SIDE_P = {"right": 0.45, "left": 0.45, "both": 0.10}
"""Probabilities of the effusion side."""

MILIARY_DIAMETER_MM = (1.0, 3.0)
"""Miliary nodule diameter (mm)."""
MILIARY_DENSITY_PER_ML = (2.0, 6.0)
"""Miliary nodules per ml of free lung (diffuse, innumerable)."""
MILIARY_NODULE_HU = 40.0
"""Density of a miliary nodule (soft tissue, HU) before partial volume."""

LUNG_PARENCHYMA_HU = -850.0
"""Aerated lung (HU): the 'empty' end of a vessel voxel's partial volume."""
UNENHANCED_BLOOD_HU = 40.0
"""Blood without contrast (HU): the lowest 'full vessel' value used for partial-volume fractions."""
ENHANCED_BLOOD_HU = (250.0, 350.0)
"""Pulmonary-arterial blood on CT pulmonary angiography (HU)."""
CLOT_HU = (20.0, 60.0)
"""Acute thrombus (HU)."""
PE_DEFECT_RADIUS_MM = (6.0, 12.0)
"""Half-length of the occluded vessel segment (mm)."""
PE_HILUM_DISTANCE_MM = (10.0, 70.0)
"""Distance of the defect from the nearest hilum (mm): hilar/lobar to segmental branches."""
VESSEL_THRESHOLD_HU = -400.0
"""Lung voxels above this are vessel (or vessel partial volume)."""
HILAR_VESSEL_MIN_HU = 0.0
"""Unlabelled hilar voxels next to the lungs above this count as vessel (not fat)."""
HILUM_RADIUS_MM = 45.0
"""Radius around each hilum within which unlabelled vessels and lung-border voxels are admitted."""
HILAR_BAND_MM = 15.0
"""Width of the band around the lungs in which unlabelled hilar vessels are admitted (mm)."""

Lesion = Tuple[np.ndarray, np.ndarray]
"""(modified CT, float32 HU; lesion mask, bool), both (D, H, W)."""


class LesionError(ValueError):
    """A lesion cannot be placed (no lung labels, no free lung, no vessel tree)."""


def lung_mask(labels: np.ndarray) -> np.ndarray:
    """Boolean (D, H, W) mask of the lung lobes (labels 10-14)."""
    return np.isin(labels, LUNG_LOBE_LABELS)


def _free_region(labels: np.ndarray, free: Optional[np.ndarray], lobes: Sequence[int] = LUNG_LOBE_LABELS) -> np.ndarray:
    region = np.isin(labels, lobes)
    if free is not None:
        region &= free
    if not region.any():
        raise LesionError("no free lung-lobe voxels (labels 10-14) to place a lesion in")
    return region


def _choose_lobe(labels: np.ndarray, region: np.ndarray, rng: np.random.Generator, weights: Dict[int, float]) -> int:
    """A lobe id drawn with probability ∝ weight x free voxels of that lobe."""
    counts = np.bincount(labels[region].astype(np.int64), minlength=max(weights) + 1)
    lobes = sorted(weights)
    p = np.array([weights[lobe] * counts[lobe] for lobe in lobes], dtype=np.float64)
    return int(lobes[rng.choice(len(lobes), p=p / p.sum())])


def _ball_offsets(radius_vox: float) -> np.ndarray:
    """(K, 3) integer offsets of the voxels within ``radius_vox`` of a voxel centre."""
    r = int(math.ceil(radius_vox))
    grid = np.mgrid[-r : r + 1, -r : r + 1, -r : r + 1].reshape(3, -1).T
    return grid[(grid**2).sum(1) <= radius_vox**2 + 1e-9]


def _pick_center(
    candidates: np.ndarray, fit: np.ndarray, rng: np.random.Generator, radius_vox: float, tries: int = 48
) -> np.ndarray:
    """A voxel of ``candidates`` whose ball of ``radius_vox`` lies in ``fit`` (the best of ``tries`` draws)."""
    flat = np.flatnonzero(candidates)
    if flat.size == 0:
        raise LesionError("no candidate voxels for the lesion centre")
    offsets = _ball_offsets(radius_vox)
    shape = np.array(candidates.shape)
    best, best_fraction = None, -1.0
    for pick in flat[rng.integers(0, flat.size, size=tries)]:
        center = np.array(np.unravel_index(pick, candidates.shape))
        points = center + offsets
        valid = np.all((points >= 0) & (points < shape), axis=1)
        fraction = fit[tuple(points[valid].T)].sum() / len(offsets)
        if fraction > best_fraction:
            best, best_fraction = center, fraction
        if fraction >= 0.97:
            break
    return best


def _crop(
    center: np.ndarray, reach_vox: float, shape: Sequence[int]
) -> Tuple[Tuple[slice, ...], Tuple[np.ndarray, ...]]:
    """Slices of the box ``center ± reach_vox`` (clipped) and its voxel offsets from ``center`` per axis."""
    r = int(math.ceil(reach_vox))
    slices = tuple(slice(max(0, c - r), min(n, c + r + 1)) for c, n in zip(center, shape))
    offsets = tuple(np.arange(s.start, s.stop) - c for s, c in zip(slices, center))
    return slices, offsets


def _lobulated_distance(
    offsets: Tuple[np.ndarray, ...], spacing_mm: float, radius_mm: float, lobulation: float, rng: np.random.Generator
) -> np.ndarray:
    """Signed distance-like field (mm, negative inside) of a ball whose radius varies smoothly with direction.

    ``r(n) = radius_mm · (1 + sum_j a_j cos(k_j n·v_j + phi_j))`` with three random terms and
    ``sum |a_j| <= lobulation``.
    """
    d, h, w = np.meshgrid(*(o * spacing_mm for o in offsets), indexing="ij")
    dist = np.sqrt(d**2 + h**2 + w**2)
    safe = np.maximum(dist, 1e-6)
    modulation = np.zeros_like(dist)
    if lobulation > 0:
        amplitudes = rng.uniform(-1.0, 1.0, 3)
        amplitudes *= lobulation / np.abs(amplitudes).sum()
        for a in amplitudes:
            v = rng.normal(size=3)
            v /= np.linalg.norm(v)
            k = rng.uniform(2.0, 4.0)
            phase = rng.uniform(0.0, 2.0 * math.pi)
            modulation += a * np.cos(k * (d * v[0] + h * v[1] + w * v[2]) / safe + phase)
    return dist - radius_mm * (1.0 + modulation)


def _paint(
    local_ct: np.ndarray, local_region: np.ndarray, signed_mm: np.ndarray, value_hu: float, spacing_mm: float
) -> np.ndarray:
    """Set ``value_hu`` where ``signed_mm <= 0`` and blend a one-voxel rim outside; only inside ``local_region``.

    Modifies ``local_ct`` in place; returns the inside mask (bool, crop shape).
    """
    inside = (signed_mm <= 0) & local_region
    rim = (signed_mm > 0) & (signed_mm < spacing_mm) & local_region
    weight = (1.0 - signed_mm[rim] / spacing_mm).astype(np.float32)
    local_ct[rim] += weight * (np.float32(value_hu) - local_ct[rim])
    local_ct[inside] = value_hu
    return inside


def _compact_lesion(
    ct_hu: np.ndarray,
    region: np.ndarray,
    center: np.ndarray,
    rng: np.random.Generator,
    spacing_mm: float,
    radius_mm: float,
    value_hu: float,
    lobulation: float,
    ct: Optional[np.ndarray] = None,
    mask: Optional[np.ndarray] = None,
) -> Lesion:
    """Paint one lobulated ball into ``ct`` (a copy of ``ct_hu`` unless given) and OR it into ``mask``."""
    ct = ct_hu.astype(np.float32, copy=True) if ct is None else ct
    mask = np.zeros(ct.shape, dtype=bool) if mask is None else mask
    sl, offsets = _crop(center, radius_mm * (1.0 + lobulation) / spacing_mm + 1.0, ct.shape)
    signed = _lobulated_distance(offsets, spacing_mm, radius_mm, lobulation, rng)
    mask[sl] |= _paint(ct[sl], region[sl], signed, value_hu, spacing_mm)
    return ct, mask


def _radius(diameter_mm: float, spacing_mm: float) -> float:
    """Rendered radius (mm): half the diameter, at least MIN_RADIUS_VOXELS voxels."""
    return max(0.5 * diameter_mm, MIN_RADIUS_VOXELS * spacing_mm)


def solid_nodule(
    ct_hu: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    spacing_mm: float,
    free: Optional[np.ndarray] = None,
) -> Lesion:
    """A lobulated soft-tissue nodule (:data:`NODULE_DIAMETER_MM`, :data:`SOFT_TISSUE_HU`) in any lobe."""
    region = _free_region(labels, free)
    radius = _radius(rng.uniform(*NODULE_DIAMETER_MM), spacing_mm)
    lobe = _choose_lobe(labels, region, rng, EVEN_LOBE_WEIGHTS)
    center = _pick_center(region & (labels == lobe), region, rng, radius / spacing_mm)
    return _compact_lesion(
        ct_hu, region, center, rng, spacing_mm, radius, rng.uniform(*SOFT_TISSUE_HU), NODULE_LOBULATION
    )


def calcified_granuloma(
    ct_hu: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    spacing_mm: float,
    free: Optional[np.ndarray] = None,
) -> Lesion:
    """A densely calcified round nodule (:data:`GRANULOMA_DIAMETER_MM`, :data:`CALCIFICATION_HU`); upper lobes first."""
    region = _free_region(labels, free)
    radius = _radius(rng.uniform(*GRANULOMA_DIAMETER_MM), spacing_mm)
    lobe = _choose_lobe(labels, region, rng, UPPER_LOBE_WEIGHTS)
    center = _pick_center(region & (labels == lobe), region, rng, radius / spacing_mm)
    return _compact_lesion(ct_hu, region, center, rng, spacing_mm, radius, rng.uniform(*CALCIFICATION_HU), 0.05)


def calcification_flecks(
    ct_hu: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    spacing_mm: float,
    free: Optional[np.ndarray] = None,
) -> Lesion:
    """A cluster of :data:`FLECK_COUNT` small calcifications within :data:`FLECK_SPREAD_MM`; upper lobes first."""
    region = _free_region(labels, free)
    lobe = _choose_lobe(labels, region, rng, UPPER_LOBE_WEIGHTS)
    spread_vox = rng.uniform(*FLECK_SPREAD_MM) / spacing_mm
    cluster = _pick_center(region & (labels == lobe), region, rng, spread_vox)
    ct, mask = ct_hu.astype(np.float32, copy=True), np.zeros(ct_hu.shape, dtype=bool)
    shape = np.array(ct.shape)
    count = int(rng.integers(FLECK_COUNT[0], FLECK_COUNT[1] + 1))
    placed, center = 0, cluster
    for _ in range(4 * count):  # scatter draws that miss free lung or hit a fleck are redrawn
        if placed == count:
            break
        if placed:
            direction = rng.normal(size=3)
            offset = direction / np.linalg.norm(direction) * spread_vox * rng.uniform() ** (1.0 / 3.0)
            center = np.clip(np.rint(cluster + offset).astype(int), 0, shape - 1)
            if not region[tuple(center)] or mask[tuple(center)]:
                continue
        placed += 1
        radius = _radius(rng.uniform(*FLECK_DIAMETER_MM), spacing_mm)
        _compact_lesion(
            ct_hu, region, center, rng, spacing_mm, radius, rng.uniform(*CALCIFICATION_HU), 0.0, ct=ct, mask=mask
        )
    return ct, mask


def cavity(
    ct_hu: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    spacing_mm: float,
    free: Optional[np.ndarray] = None,
) -> Lesion:
    """A thick-walled cavity: soft-tissue wall (:data:`CAVITY_WALL_MM`, :data:`SOFT_TISSUE_HU`) around air.

    Outer diameter :data:`CAVITY_DIAMETER_MM`; wall and lumen are each at least one voxel thick; the
    lumen sits off-centre by up to half the wall. The mask covers wall and lumen. Upper lobes preferred.
    """
    region = _free_region(labels, free)
    wall = max(rng.uniform(*CAVITY_WALL_MM), spacing_mm)
    inner = max(0.5 * rng.uniform(*CAVITY_DIAMETER_MM) - wall, spacing_mm)
    outer = inner + wall
    lobe = _choose_lobe(labels, region, rng, UPPER_LOBE_WEIGHTS)
    center = _pick_center(region & (labels == lobe), region, rng, outer / spacing_mm)
    ct, mask = _compact_lesion(ct_hu, region, center, rng, spacing_mm, outer, rng.uniform(*SOFT_TISSUE_HU), 0.1)
    direction = rng.normal(size=3)
    shift_vox = direction / np.linalg.norm(direction) * rng.uniform(0.0, 0.5 * (wall - spacing_mm)) / spacing_mm
    sl, offsets = _crop(center, outer * 1.1 / spacing_mm + 1.0, ct.shape)
    shifted = tuple(o - s for o, s in zip(offsets, shift_vox))
    signed = _lobulated_distance(shifted, spacing_mm, inner, 0.1, rng)
    _paint(ct[sl], mask[sl], signed, rng.uniform(*CAVITY_AIR_HU), spacing_mm)
    return ct, mask


def consolidation(
    ct_hu: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    spacing_mm: float,
    free: Optional[np.ndarray] = None,
) -> Lesion:
    """An irregular infiltrate/consolidation in one lobe (:data:`CONSOLIDATION_RADIUS_MM`, :data:`CONSOLIDATION_HU`).

    The region is ``q = dist / R + irregularity · n < 1`` cut to the lobe, with ``n`` a smooth
    unit-variance random field. Its density is the drawn mean plus smooth texture; towards the margin
    (``q`` from :data:`CONSOLIDATION_MARGIN` to 1) it blends linearly back to the aerated lung (a
    ground-glass fringe). Voxels are never lowered (vessels stay visible).
    """
    region = _free_region(labels, free)
    lobe = _choose_lobe(labels, region, rng, UPPER_LOBE_WEIGHTS)
    lobe_region = region & (labels == lobe)
    center = _pick_center(lobe_region, lobe_region, rng, 0.0, tries=1)
    radius = rng.uniform(*CONSOLIDATION_RADIUS_MM)
    sl, offsets = _crop(center, 1.5 * radius / spacing_mm, ct_hu.shape)
    d, h, w = np.meshgrid(*(o * spacing_mm for o in offsets), indexing="ij")
    field = ndimage.gaussian_filter(rng.standard_normal(d.shape), TEXTURE_SCALE_MM / spacing_mm, mode="nearest")
    field /= max(float(field.std()), 1e-6)
    q = np.sqrt(d**2 + h**2 + w**2) / radius + CONSOLIDATION_IRREGULARITY * field
    inside = (q < 1.0) & lobe_region[sl]
    inside[tuple(c - s.start for c, s in zip(center, sl))] = True
    density = np.float32(rng.uniform(*CONSOLIDATION_HU)) + np.float32(CONSOLIDATION_TEXTURE_HU) * field.astype(
        np.float32
    )
    weight = np.clip((1.0 - q) / (1.0 - CONSOLIDATION_MARGIN), 0.0, 1.0).astype(np.float32)
    ct = ct_hu.astype(np.float32, copy=True)
    local = ct[sl]
    blended = local + weight * (density - local)
    local[inside] = np.maximum(local[inside], blended[inside])
    mask = np.zeros(ct.shape, dtype=bool)
    mask[sl] = inside
    return ct, mask


def pleural_effusion(
    ct_hu: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    spacing_mm: float,
    free: Optional[np.ndarray] = None,
) -> Lesion:
    """Dependent pleural fluid (:data:`EFFUSION_HU`) at the posterior-inferior base of one or both lungs.

    In each affected hemithorax the lung voxels with the highest ``cos(t)·D + sin(t)·H + meniscus·lateral``
    (mm; t in :data:`EFFUSION_TILT_DEG`, larger D = inferior, larger H = posterior) are filled, an
    :data:`EFFUSION_FRACTION` of that lung's volume, with a flat fluid level that rises laterally.
    """
    region = _free_region(labels, free)
    side = str(rng.choice(list(EFFUSION_SIDE_P), p=list(EFFUSION_SIDE_P.values())))
    sides = {"right": [RIGHT_LUNG_LABELS], "left": [LEFT_LUNG_LABELS], "both": [RIGHT_LUNG_LABELS, LEFT_LUNG_LABELS]}
    ct = ct_hu.astype(np.float32, copy=True)
    mask = np.zeros(ct.shape, dtype=bool)
    lungs = lung_mask(labels)
    midline_w = float(np.nonzero(lungs)[2].mean()) if lungs.any() else (ct.shape[2] - 1) / 2.0
    value = np.float32(rng.uniform(*EFFUSION_HU))
    for lobes in sides[side]:
        hemithorax = region & np.isin(labels, lobes)
        index = np.nonzero(hemithorax)
        if index[0].size == 0:
            continue
        tilt = math.radians(rng.uniform(*EFFUSION_TILT_DEG))
        lateral = np.abs(index[2] - midline_w)  # voxels from the midline (W grows to the patient's left)
        score = spacing_mm * (
            math.cos(tilt) * index[0] + math.sin(tilt) * index[1] + EFFUSION_MENISCUS * (lateral - lateral.min())
        )
        level = np.quantile(score, 1.0 - rng.uniform(*EFFUSION_FRACTION))
        fluid = tuple(i[score >= level] for i in index)
        ct[fluid] = value
        mask[fluid] = True
    if not mask.any():
        raise LesionError(f"no free lung on the {side} side for a pleural effusion")
    return ct, mask


def miliary(
    ct_hu: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    spacing_mm: float,
    free: Optional[np.ndarray] = None,
) -> Lesion:
    """Innumerable 1-3 mm nodules (:data:`MILIARY_DIAMETER_MM`) spread uniformly through both lungs.

    :data:`MILIARY_DENSITY_PER_ML` nodules per ml; each raises its voxel towards :data:`MILIARY_NODULE_HU` by
    its volume fraction (sub-voxel partial volume, summed when several share a voxel, at most 1).
    The mask holds the voxels that received a nodule.
    """
    region = _free_region(labels, free)
    flat = np.flatnonzero(region)
    voxel_ml = spacing_mm**3 / 1000.0
    count = max(1, int(rng.poisson(rng.uniform(*MILIARY_DENSITY_PER_ML) * flat.size * voxel_ml)))
    picks = flat[rng.integers(0, flat.size, size=count)]
    diameters = rng.uniform(*MILIARY_DIAMETER_MM, size=count)
    fractions = (math.pi / 6.0) * diameters**3 / spacing_mm**3
    voxels, inverse = np.unique(picks, return_inverse=True)
    filled = np.minimum(np.bincount(inverse, weights=fractions), 1.0).astype(np.float32)
    ct = ct_hu.astype(np.float32, copy=True)
    flat_ct = ct.reshape(-1)
    flat_ct[voxels] += filled * (np.float32(MILIARY_NODULE_HU) - flat_ct[voxels])
    mask = np.zeros(ct.shape, dtype=bool)
    mask.reshape(-1)[voxels] = True
    return ct, mask


def _hila(labels: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    """(k, 3) voxel positions of the hila: the pulmonary-vein centroid on each side of the midline.

    A side without pulmonary-vein voxels uses the centroid of its lung's most medial 10%.
    """
    index = np.array(np.nonzero(lungs), dtype=np.float64)
    midline = index[2].mean()
    veins = np.array(np.nonzero(labels == PULMONARY_VEIN_LABEL), dtype=np.float64)
    hila = []
    for is_left in (False, True):
        if veins.size:
            side = veins[:, (veins[2] > midline) == is_left]
            if side.shape[1]:
                hila.append(side.mean(axis=1))
                continue
        side = index[:, (index[2] > midline) == is_left]
        if side.shape[1]:
            medial = np.abs(side[2] - midline)
            hila.append(side[:, medial <= np.quantile(medial, 0.1)].mean(axis=1))
    return np.array(hila)


def _near_points(shape: Sequence[int], points: np.ndarray, radius_vox: float) -> np.ndarray:
    """Boolean mask of voxels within ``radius_vox`` of any of ``points`` (k, 3)."""
    near = np.zeros(shape, dtype=bool)
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    for p in points:
        near |= sum((g - c) ** 2 for g, c in zip(grids, p)) <= radius_vox**2
    return near


def _vessel_tree(ct_hu: np.ndarray, labels: np.ndarray, spacing_mm: float) -> Tuple[np.ndarray, np.ndarray, float]:
    """(vessel mask, hila (k, 3) voxel positions, full-vessel blood HU) of the pulmonary vessels (module doc)."""
    lungs = lung_mask(labels)
    if not lungs.any():
        raise LesionError("no lung-lobe labels (10-14): cannot find the pulmonary vessels")
    hila = _hila(labels, lungs)
    near_hilum = _near_points(ct_hu.shape, hila, HILUM_RADIUS_MM / spacing_mm)
    veins = labels == PULMONARY_VEIN_LABEL
    interior = ndimage.binary_erosion(lungs)
    band = ndimage.binary_dilation(lungs, iterations=max(1, round(HILAR_BAND_MM / spacing_mm))) & (labels == 0)
    candidates = (
        ((interior | (lungs & near_hilum)) & (ct_hu > VESSEL_THRESHOLD_HU))
        | (band & near_hilum & (ct_hu > HILAR_VESSEL_MIN_HU))
        | veins
    )
    components, _ = ndimage.label(candidates)
    keep = np.unique(components[near_hilum & candidates])
    vessels = np.isin(components, keep[keep > 0])
    if not vessels.any():
        raise LesionError("no pulmonary vessel tree found near the hila")
    vein_hu = ct_hu[veins]
    blood_hu = max(UNENHANCED_BLOOD_HU, float(np.median(vein_hu))) if vein_hu.size else UNENHANCED_BLOOD_HU
    return vessels, hila, blood_hu


def _blood_fraction(hu: np.ndarray, blood_hu: float) -> np.ndarray:
    """Vessel fraction of a voxel from its HU, between lung parenchyma (0) and blood (1)."""
    return np.clip((hu - LUNG_PARENCHYMA_HU) / (blood_hu - LUNG_PARENCHYMA_HU), 0.0, 1.0).astype(np.float32)


def enhance_pulmonary_vessels(
    ct_hu: np.ndarray, labels: np.ndarray, rng: np.random.Generator, spacing_mm: float
) -> Tuple[np.ndarray, np.ndarray]:
    """Contrast-enhance the pulmonary vessel tree to :data:`ENHANCED_BLOOD_HU` (module doc).

    Returns (CT copy, float32 HU; vessel-tree mask, bool), (D, H, W).
    """
    vessels, _, blood_hu = _vessel_tree(ct_hu, labels, spacing_mm)
    return _enhance(ct_hu, vessels, blood_hu, rng), vessels


def _enhance(ct_hu: np.ndarray, vessels: np.ndarray, blood_hu: float, rng: np.random.Generator) -> np.ndarray:
    """CT copy with the ``vessels`` voxels raised to their blood fraction of an enhanced-blood HU (never lowered)."""
    ct = ct_hu.astype(np.float32, copy=True)
    fraction = _blood_fraction(ct[vessels], blood_hu)
    target = np.float32(rng.uniform(*ENHANCED_BLOOD_HU))
    enhanced = np.float32(LUNG_PARENCHYMA_HU) + fraction * (target - np.float32(LUNG_PARENCHYMA_HU))
    ct[vessels] = np.maximum(ct[vessels], enhanced)
    return ct


def pulmonary_embolism(
    ct_hu: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    spacing_mm: float,
    free: Optional[np.ndarray] = None,
) -> Lesion:
    """Enhance the pulmonary vessels, then put a clot (:data:`CLOT_HU`) into one hilar/lobar/segmental branch.

    The defect is the vessel voxels within :data:`PE_DEFECT_RADIUS_MM` of a seed that are connected to
    it inside that ball. The seed is a vessel voxel outside the pulmonary-vein label,
    :data:`PE_HILUM_DISTANCE_MM` from a hilum, in the top decile of (blood fraction x distance to the
    vessel's edge), i.e. in a thick, well-filled branch. The defect's blood becomes clot with the same
    partial-volume fraction. The mask is the defect voxels that are at least half vessel. ``free``
    restricts the branch choice.
    """
    vessels, hila, blood_hu = _vessel_tree(ct_hu, labels, spacing_mm)
    original_fraction = _blood_fraction(ct_hu, blood_hu)
    ct = _enhance(ct_hu, vessels, blood_hu, rng)
    near = _near_points(ct.shape, hila, PE_HILUM_DISTANCE_MM[1] / spacing_mm)
    near &= ~_near_points(ct.shape, hila, PE_HILUM_DISTANCE_MM[0] / spacing_mm)
    base = vessels & (labels != PULMONARY_VEIN_LABEL) & near & (original_fraction >= 0.5)
    if free is not None:
        base &= free
    if not base.any():
        raise LesionError("no pulmonary vessel branch 10-70 mm from a hilum for a filling defect")
    # Thick, well-filled branches: top decile of blood fraction x distance to the vessel wall.
    box = ndimage.find_objects(vessels.astype(np.uint8))[0]
    depth = np.zeros(ct.shape, dtype=np.float32)
    depth[box] = ndimage.distance_transform_edt(vessels[box])
    fullness = depth[base] * original_fraction[base]
    flat = np.flatnonzero(base)[fullness >= np.quantile(fullness, 0.9)]
    seed = np.array(np.unravel_index(flat[rng.integers(0, flat.size)], ct.shape))
    radius_vox = max(rng.uniform(*PE_DEFECT_RADIUS_MM) / spacing_mm, 1.5)
    sl, offsets = _crop(seed, radius_vox, ct.shape)
    d, h, w = np.meshgrid(*offsets, indexing="ij")
    ball = (d**2 + h**2 + w**2 <= radius_vox**2) & vessels[sl]
    parts, _ = ndimage.label(ball)
    defect = parts == parts[tuple(s - c.start for s, c in zip(seed, sl))]
    clot = np.float32(rng.uniform(*CLOT_HU))
    fraction = original_fraction[sl][defect]
    ct[sl][defect] = np.float32(LUNG_PARENCHYMA_HU) + fraction * (clot - np.float32(LUNG_PARENCHYMA_HU))
    mask = np.zeros(ct.shape, dtype=bool)
    mask[sl] = defect & (original_fraction[sl] >= 0.5)
    return ct, mask


Inserter = Callable[..., Lesion]

INSERTERS: Dict[str, Inserter] = {
    "solid_nodule": solid_nodule,
    "calcified_granuloma": calcified_granuloma,
    "calcification_flecks": calcification_flecks,
    "cavity": cavity,
    "consolidation": consolidation,
    "pleural_effusion": pleural_effusion,
    "miliary": miliary,
    "pulmonary_embolism": pulmonary_embolism,
}
"""Lesion kind -> inserter ``f(ct_hu, labels, rng, spacing_mm, free=None) -> (ct_hu, mask)``."""
