"""Lesion metrics of a synthetic CT: does each lesion of a case show, and how strongly (``x2ct-lesion-metrics/1``).

The synthetic benchmark (``x2ct build-dataset --synthetic-from``) stores each case's lesion masks
(``lesions/<kind>``, (D, H, W) on the stored CT's canonical grid, axes :mod:`x2ct.geometry`). For one case,
:func:`measure_case` takes the real CT and the generator's CT in HU on the model's grid (the arrays
``x2ct evaluate-generator`` compares) and the masks, resamples the masks to the model's grid
(:func:`resample_mask`), splits each kind into connected components (26-connectivity; one component is one
**lesion**) and measures, per lesion, the mean HU inside it and in its **surroundings** (a shell:
the lesion dilated by :data:`SHELL_MM`, less every lesion voxel of the case) in both CTs. Its **contrast** is
inside − surroundings (HU); its **relative contrast** is synthetic contrast / real contrast. A lesion **shows**
when the relative contrast is at least :data:`SHOWS_FRACTION`: the synthetic contrast has the real one's sign
and at least that fraction of its magnitude. :func:`summarize_lesions` pools lesions over cases: the mean
relative contrast with a case-bootstrap CI, the fraction that shows with a Wilson CI, the mean contrasts,
overall and per kind. docs/metric_protocol.md ("Lesion metrics") states the protocol.

Constants and why:

* :data:`SHELL_MM` = 5 mm (rounded to whole voxels, at least 1: 1 voxel at 64³, 2 at 128³, 4 at 256³): thick
  enough to average the noise of the surroundings, thin enough to stay in the tissue the lesion sits in
  (most lesions are 4-45 mm across, in the lung).
* :data:`MIN_REAL_CONTRAST_HU` = 50 HU: below it the ratio divides by a number of the order of the
  benchmark's noise (σ up to 15 HU per voxel) and of the anatomy's variation around a lesion, so it is not
  meaningful; such lesions (e.g. most miliary clusters, or a cavity whose air lumen and soft-tissue wall
  average out to the lung around it) get no relative contrast and are left out of the means and the fraction.
* :data:`SHOWS_FRACTION` = 0.25: a lesion reproduced at a quarter of its real contrast (≥ 12.5 HU at the
  smallest usable contrast, far more for most) is still a visible density change of the right sign; below
  that it is lost in the synthetic CT's smoothness.
* :data:`MASK_MAJORITY` = 0.5: a model voxel is lesion when at least half of the stored voxels it covers are.
* :data:`BOOTSTRAP_RESAMPLES` = 2000, :data:`BOOTSTRAP_SEED` = 0, 95 % intervals: the CI of the mean relative
  contrast resamples **cases** (lesions of one case share its anatomy, augmentation and prediction, so they
  are not independent), seeded so the numbers are reproducible.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from ..geometry import EXTENT_MM
from .classifier_stats import wilson_interval

PROTOCOL_VERSION = "x2ct-lesion-metrics/1"
"""Name and version of the lesion protocol; bump it whenever a definition or constant changes."""

SHELL_MM = 5.0
"""Thickness (mm) of a lesion's surroundings: the lesion dilated by a ball of this radius, rounded to whole
voxels (at least 1), less every lesion voxel of the case."""

MIN_REAL_CONTRAST_HU = 50.0
"""A lesion's relative contrast is defined only when |real contrast| >= this (HU)."""

SHOWS_FRACTION = 0.25
"""A lesion shows when synthetic contrast / real contrast >= this."""

MASK_MAJORITY = 0.5
"""A model voxel is lesion when at least this fraction of the stored voxels it covers are lesion."""

BOOTSTRAP_RESAMPLES = 2000
"""Resamples of cases for the CI of the mean relative contrast."""

BOOTSTRAP_SEED = 0
"""Seed of the bootstrap's ``numpy.random.default_rng``."""

ALPHA = 0.05
"""Two-sided error rate of every interval (95 % CIs)."""

CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)
"""Structuring element of connected components: 26-connectivity (faces, edges and corners)."""

CSV_NAME = "lesions_per_lesion.csv"
"""Per-lesion table that ``x2ct evaluate-generator`` writes next to ``metrics_per_case.csv``."""

PROTOCOL_DESCRIPTION = (
    "Lesions: the case file's lesions/<kind> masks, resampled to the model's grid (a model voxel is lesion when at "
    "least half of the stored voxels it covers are; a stored lesion that would vanish keeps every model voxel it "
    "touches), split per kind into 26-connected components, one lesion each. Per lesion, on the model's grid in HU "
    "(the arrays the image metrics compare): inside = mean over the lesion; surroundings = mean over a shell, the "
    f"lesion dilated by a ball of {SHELL_MM:g} mm (rounded to voxels, at least 1) less every lesion voxel of the case; "
    "contrast = inside - surroundings, in the real and in the synthetic CT; relative contrast = synthetic / real "
    f"contrast, defined only when |real contrast| >= {MIN_REAL_CONTRAST_HU:g} HU (usable lesions). A lesion shows when "
    f"its relative contrast >= {SHOWS_FRACTION:g} (same sign as the real contrast and at least {SHOWS_FRACTION:.0%} "
    "of its magnitude). Summary over usable lesions, overall and per kind: mean relative contrast with a 95% "
    f"percentile bootstrap CI that resamples cases ({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}; none with "
    "fewer than 2 cases), the fraction that shows with a Wilson 95% CI (lesions counted as independent), and the "
    "mean real and synthetic contrasts in HU."
)
"""One-paragraph statement of the lesion protocol, embedded in the summary JSON."""


@dataclass(frozen=True)
class Lesion:
    """One lesion (connected component of one kind's mask) of one case, measured on the model's grid.

    ``index`` numbers the kind's components in the case from 1 (scipy's labelling order); ``voxels`` and
    ``shell_voxels`` count model voxels; ``diameter_mm`` is the diameter of the sphere of the same volume;
    ``centroid_*`` are voxel indices along D, H, W. Every ``*_hu`` is HU. Surroundings and contrasts are None
    when the shell is empty (a lesion walled in by other lesions); ``relative_contrast`` and ``shows`` are None
    when |real contrast| < :data:`MIN_REAL_CONTRAST_HU`.
    """

    case_id: str
    kind: str
    index: int
    voxels: int
    diameter_mm: float
    centroid_d: float
    centroid_h: float
    centroid_w: float
    real_inside_hu: float
    synthetic_inside_hu: float
    shell_voxels: int
    real_surround_hu: Optional[float]
    synthetic_surround_hu: Optional[float]
    real_contrast_hu: Optional[float]
    synthetic_contrast_hu: Optional[float]
    relative_contrast: Optional[float]
    shows: Optional[bool]


CSV_COLUMNS: Tuple[str, ...] = tuple(f.name for f in fields(Lesion))
"""Columns of :data:`CSV_NAME`: the fields of :class:`Lesion`, ``case_id`` first."""


@dataclass(frozen=True)
class ContrastSummary:
    """Lesions pooled over cases (all, or one kind).

    ``n_lesions``: every lesion; ``n_usable``: those with a relative contrast, over which every other number is
    formed; ``n_cases``: the cases those come from (the bootstrap's units). ``relative_contrast_*``: mean and
    95 % case-bootstrap CI (CI None with fewer than 2 cases); ``n_show`` / ``show_fraction`` with a Wilson
    95 % CI; ``*_contrast_mean_hu``: mean contrasts in HU. Means and intervals are None without usable lesions.
    """

    n_lesions: int
    n_usable: int
    n_cases: int
    relative_contrast_mean: Optional[float]
    relative_contrast_ci_low: Optional[float]
    relative_contrast_ci_high: Optional[float]
    n_show: int
    show_fraction: Optional[float]
    show_ci_low: Optional[float]
    show_ci_high: Optional[float]
    real_contrast_mean_hu: Optional[float]
    synthetic_contrast_mean_hu: Optional[float]


@dataclass(frozen=True)
class LesionSummary:
    """:func:`summarize_lesions`: ``n_cases`` holding at least one lesion, the ``overall`` pool and one pool per
    kind (``by_kind``, kinds in alphabetical order)."""

    n_cases: int
    overall: ContrastSummary
    by_kind: Dict[str, ContrastSummary]


# ------------------------------------------------------------------------------------------------ grid


def voxel_mm(grid_size: int) -> float:
    """Edge (mm) of a voxel of the canonical ``grid_size``³ cube (320 mm / grid_size)."""
    return EXTENT_MM / int(grid_size)


def shell_radius(grid_size: int) -> int:
    """:data:`SHELL_MM` in whole voxels of a ``grid_size``³ grid, at least 1."""
    return max(1, int(round(SHELL_MM / voxel_mm(grid_size))))


def ball(radius: int) -> np.ndarray:
    """Boolean structuring element: the voxels whose centres lie within ``radius`` voxels of the centre."""
    offsets = np.arange(-radius, radius + 1)
    d, h, w = np.meshgrid(offsets, offsets, offsets, indexing="ij")
    return d**2 + h**2 + w**2 <= radius**2


def resample_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A (n, n, n) boolean lesion mask on the stored grid -> (size, size, size) on the model's grid.

    Both are the same 320 mm cube, so n and ``size`` must divide one another. Finer model grid: a model voxel is
    lesion when the stored voxel holding it is. Coarser: a model voxel is lesion when at least half
    (:data:`MASK_MAJORITY`) of the f³ stored voxels it covers are (f = n / size); a stored connected component
    (26-connectivity) that would thus vanish (no model voxel it touches is lesion) falls back to "any": every
    model voxel covering one of its voxels is lesion, so no lesion is lost. The blocks are the grid's own cells;
    the CT's order-1 zoom (:func:`x2ct.data.loader.ct_to_unit`, corner-aligned) samples up to half a voxel of the
    coarser grid off their centres near the cube's faces (none at its centre).
    """
    mask, size = np.asarray(mask, dtype=bool), int(size)
    n = mask.shape[0] if mask.ndim == 3 else 0
    if n == 0 or len(set(mask.shape)) != 1 or size < 1 or max(n, size) % min(n, size):
        raise ValueError(f"mask {mask.shape} and grid {size} must be cubes whose edges divide one another")
    if size >= n:
        f = size // n
        return mask.repeat(f, 0).repeat(f, 1).repeat(f, 2)
    f = n // size
    blocks = (size, f, size, f, size, f)
    out = mask.reshape(blocks).sum(axis=(1, 3, 5)) >= MASK_MAJORITY * f**3
    labels, count = ndimage.label(mask, CONNECTIVITY)
    if count:
        kept = np.asarray(ndimage.maximum(resample_mask(out, n), labels, np.arange(1, count + 1)))
        vanished = np.flatnonzero(kept == 0) + 1
        if vanished.size:
            out |= np.isin(labels, vanished).reshape(blocks).any(axis=(1, 3, 5))
    return out


# ------------------------------------------------------------------------------------------------ one case


def relative_contrast(real_contrast_hu: Optional[float], synthetic_contrast_hu: Optional[float]) -> Optional[float]:
    """synthetic / real contrast, or None when either is None or |real| < :data:`MIN_REAL_CONTRAST_HU`."""
    if real_contrast_hu is None or synthetic_contrast_hu is None or abs(real_contrast_hu) < MIN_REAL_CONTRAST_HU:
        return None
    return synthetic_contrast_hu / real_contrast_hu


def shows(relative: Optional[float]) -> Optional[bool]:
    """True when the relative contrast reaches :data:`SHOWS_FRACTION`; None without a relative contrast."""
    return None if relative is None else relative >= SHOWS_FRACTION


def _mean(values: np.ndarray) -> Optional[float]:
    """Mean in float64, None for no values."""
    return float(values.mean(dtype=np.float64)) if values.size else None


def _measure_component(
    case_id: str,
    kind: str,
    index: int,
    component: np.ndarray,
    box: Tuple[slice, ...],
    real_hu: np.ndarray,
    synthetic_hu: np.ndarray,
    any_lesion: np.ndarray,
    radius: int,
) -> Lesion:
    """One lesion: ``component`` is its boolean mask within the crop ``box`` (its bounding box grown by
    ``radius`` voxels, clipped to the cube), ``any_lesion`` every lesion voxel of the case (whole grid)."""
    shell = ndimage.binary_dilation(component, ball(radius)) & ~any_lesion[box]
    real, synthetic = real_hu[box], synthetic_hu[box]
    real_inside = float(real[component].mean(dtype=np.float64))
    synthetic_inside = float(synthetic[component].mean(dtype=np.float64))
    real_surround, synthetic_surround = _mean(real[shell]), _mean(synthetic[shell])
    real_contrast = None if real_surround is None else real_inside - real_surround
    synthetic_contrast = None if synthetic_surround is None else synthetic_inside - synthetic_surround
    relative = relative_contrast(real_contrast, synthetic_contrast)
    voxels = int(component.sum())
    centroid = [float(axis.mean()) + s.start for axis, s in zip(np.nonzero(component), box)]
    return Lesion(
        case_id=str(case_id),
        kind=kind,
        index=index,
        voxels=voxels,
        diameter_mm=(6.0 * voxels / math.pi) ** (1.0 / 3.0) * voxel_mm(real_hu.shape[0]),
        centroid_d=centroid[0],
        centroid_h=centroid[1],
        centroid_w=centroid[2],
        real_inside_hu=real_inside,
        synthetic_inside_hu=synthetic_inside,
        shell_voxels=int(shell.sum()),
        real_surround_hu=real_surround,
        synthetic_surround_hu=synthetic_surround,
        real_contrast_hu=real_contrast,
        synthetic_contrast_hu=synthetic_contrast,
        relative_contrast=relative,
        shows=shows(relative),
    )


def measure_case(
    case_id: str, real_hu: np.ndarray, synthetic_hu: np.ndarray, masks: Mapping[str, np.ndarray]
) -> List[Lesion]:
    """Every lesion of one case, kinds in the order of ``masks``, components in scipy's labelling order.

    ``real_hu`` and ``synthetic_hu``: (S, S, S) HU on the model's canonical grid (D, H, W); ``masks``: lesion
    kind -> boolean (n, n, n) mask on the stored grid (n and S dividing one another), resampled with
    :func:`resample_mask`. The shell of every lesion excludes the lesion voxels of all kinds.
    """
    real_hu, synthetic_hu = np.asarray(real_hu), np.asarray(synthetic_hu)
    if real_hu.ndim != 3 or len(set(real_hu.shape)) != 1 or synthetic_hu.shape != real_hu.shape:
        raise ValueError(f"real {real_hu.shape} and synthetic {synthetic_hu.shape} CTs must be cubes of one shape")
    size = real_hu.shape[0]
    radius = shell_radius(size)
    on_grid = {kind: resample_mask(mask, size) for kind, mask in masks.items()}
    any_lesion = np.zeros(real_hu.shape, dtype=bool)
    for mask in on_grid.values():
        any_lesion |= mask
    lesions: List[Lesion] = []
    for kind, mask in on_grid.items():
        labels, _ = ndimage.label(mask, CONNECTIVITY)
        for index, found in enumerate(ndimage.find_objects(labels), start=1):
            box = tuple(slice(max(0, s.start - radius), min(size, s.stop + radius)) for s in found)
            component = labels[box] == index
            lesions.append(
                _measure_component(case_id, kind, index, component, box, real_hu, synthetic_hu, any_lesion, radius)
            )
    return lesions


# ------------------------------------------------------------------------------------------------ summary


def bootstrap_mean_ci(
    groups: Sequence[Sequence[float]],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    alpha: float = ALPHA,
) -> Optional[Tuple[float, float]]:
    """Percentile ``1 - alpha`` CI of the pooled mean of ``groups`` (one non-empty group of values per case) when
    whole groups are drawn with replacement: each resample draws as many groups as there are and takes the mean of
    all their values. Seeded (``numpy.random.default_rng(seed)``); None with fewer than 2 groups."""
    if len(groups) < 2:
        return None
    arrays = [np.asarray(group, dtype=np.float64) for group in groups]
    if min(a.size for a in arrays) == 0:
        raise ValueError("every group needs at least one value")
    sums = np.array([a.sum() for a in arrays])
    counts = np.array([a.size for a in arrays])
    picks = np.random.default_rng(seed).integers(0, len(arrays), size=(int(resamples), len(arrays)))
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    low, high = np.percentile(means, [50.0 * alpha, 100.0 - 50.0 * alpha])
    return float(low), float(high)


def _contrast_summary(lesions: Sequence[Lesion]) -> ContrastSummary:
    usable = [lesion for lesion in lesions if lesion.relative_contrast is not None]
    by_case: Dict[str, List[float]] = {}
    for lesion in usable:
        by_case.setdefault(lesion.case_id, []).append(float(lesion.relative_contrast))  # type: ignore[arg-type]
    n_show = sum(1 for lesion in usable if lesion.shows)
    ci = bootstrap_mean_ci(list(by_case.values()))
    wilson = wilson_interval(n_show, len(usable), ALPHA) if usable else None

    def mean(name: str) -> Optional[float]:
        return float(np.mean([getattr(lesion, name) for lesion in usable])) if usable else None

    return ContrastSummary(
        n_lesions=len(lesions),
        n_usable=len(usable),
        n_cases=len(by_case),
        relative_contrast_mean=mean("relative_contrast"),
        relative_contrast_ci_low=None if ci is None else ci[0],
        relative_contrast_ci_high=None if ci is None else ci[1],
        n_show=n_show,
        show_fraction=n_show / len(usable) if usable else None,
        show_ci_low=None if wilson is None else wilson[0],
        show_ci_high=None if wilson is None else wilson[1],
        real_contrast_mean_hu=mean("real_contrast_hu"),
        synthetic_contrast_mean_hu=mean("synthetic_contrast_hu"),
    )


def summarize_lesions(lesions: Sequence[Lesion]) -> LesionSummary:
    """Pool the lesions of many cases: overall and per kind (see :class:`ContrastSummary`)."""
    kinds = sorted({lesion.kind for lesion in lesions})
    return LesionSummary(
        n_cases=len({lesion.case_id for lesion in lesions}),
        overall=_contrast_summary(lesions),
        by_kind={kind: _contrast_summary([lesion for lesion in lesions if lesion.kind == kind]) for kind in kinds},
    )


def summary_section(summary: LesionSummary, grid_size: int) -> Dict[str, Any]:
    """The ``lesions`` section of ``metrics_summary.json``: protocol, constants, grid, and the summary."""
    return {
        "protocol": {"version": PROTOCOL_VERSION, "description": PROTOCOL_DESCRIPTION},
        "constants": {
            "shell_mm": SHELL_MM,
            "min_real_contrast_hu": MIN_REAL_CONTRAST_HU,
            "shows_fraction": SHOWS_FRACTION,
            "mask_majority": MASK_MAJORITY,
            "connectivity": int(CONNECTIVITY.sum()) - 1,
            "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
            "bootstrap_seed": BOOTSTRAP_SEED,
            "confidence": 1.0 - ALPHA,
        },
        "grid_size": int(grid_size),
        "voxel_mm": voxel_mm(grid_size),
        "shell_radius_voxels": shell_radius(grid_size),
        "n_cases": summary.n_cases,
        "overall": asdict(summary.overall),
        "by_kind": {kind: asdict(pool) for kind, pool in summary.by_kind.items()},
    }


def _csv_value(value: Any) -> str:
    """None blank, booleans 1/0, integers as digits, floats as ``repr`` (round-trips through ``float()``)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return repr(float(value))
    return str(value)


def lesions_csv(lesions: Sequence[Lesion]) -> str:
    """The text of :data:`CSV_NAME`: a header of :data:`CSV_COLUMNS`, then one row per lesion."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for lesion in lesions:
        writer.writerow([_csv_value(getattr(lesion, name)) for name in CSV_COLUMNS])
    return buffer.getvalue()


__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "CSV_COLUMNS",
    "CSV_NAME",
    "MASK_MAJORITY",
    "MIN_REAL_CONTRAST_HU",
    "PROTOCOL_DESCRIPTION",
    "PROTOCOL_VERSION",
    "SHELL_MM",
    "SHOWS_FRACTION",
    "ContrastSummary",
    "Lesion",
    "LesionSummary",
    "bootstrap_mean_ci",
    "lesions_csv",
    "measure_case",
    "relative_contrast",
    "resample_mask",
    "summarize_lesions",
    "summary_section",
]
