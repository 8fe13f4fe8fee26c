"""Is a stochastic generator's per-voxel spread a calibrated uncertainty? K samples per case against the real CT.

A stochastic generator (latent diffusion: ``module.stochastic``) gives K synthetic CTs per case on the unit scale
of :mod:`x2ct.intensity`. Per voxel, :func:`sample_stats_hu` gives their mean and standard deviation (SD, ddof 1)
in HU (``2500·unit − 1024`` and ``2500·SD(unit)``); the error is ``|mean − real|`` in HU, both on the clipped
learning scale. Inside the body mask of the metric protocol (:func:`x2ct.evaluate.image_metrics.default_body_mask`
of the real CT) :func:`case_uncertainty` measures, per case:

* ``spearman``: Spearman's rank correlation between SD and error (``scipy.stats.spearmanr``; on a seeded random
  subsample of at most :data:`MAX_SPEARMAN_VOXELS` voxels when the body is larger): does a larger SD mark a
  larger error?
* ``coverage_range``: the fraction of voxels whose real HU lies inside [min, max] of the K samples (inclusive).
  If the real CT were one more draw from the generator's distribution (exchangeable with the samples) this is
  (K − 1)/(K + 1) in expectation (7/9 = 0.78 for K = 8); below it the samples are overconfident.
* ``coverage_2sd``: the fraction inside mean ± 2 SD. For a calibrated Gaussian generator the real value minus the
  K-sample mean, over the sample SD, is Student-t with K − 1 degrees of freedom times sqrt(1 + 1/K), so the
  expected coverage is ``P(|T_{K-1}| <= 2 / sqrt(1 + 1/K))`` (0.90 for K = 8, 0.95 as K grows):
  :func:`expected_coverage_2sd`.

:func:`summarize_uncertainty` pools the cases: the per-case values' mean with a 95 % percentile bootstrap CI
over cases (:func:`x2ct.evaluate.lesion_metrics.bootstrap_mean_ci`, seeded), the Spearman correlation of the
pooled subsample (:data:`POOL_VOXELS_PER_CASE` voxels of each case, so every case weighs the same) and a binned
calibration curve on that subsample: SD deciles, each bin's mean SD and mean absolute error (MAE). For a
calibrated Gaussian generator the expected error at SD σ is ``sqrt(2/π)·sqrt(1 + 1/K)·σ`` (the real value and
the K-sample mean differ by a draw of SD σ plus the mean's own error of SD σ/√K; ``sqrt(2/π)·σ`` as K → ∞):
the ``ideal_mae_hu`` of each bin. Points above the line: the SD underestimates the error.

:func:`write_uncertainty` writes ``uncertainty.json`` and ``calibration.png`` (needs matplotlib, the ``eval``
extra) into an evaluation folder; ``x2ct evaluate-generator --samples K`` calls it (docs/uncertainty.md).
"""

from __future__ import annotations

import importlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..atomic import atomic_path, write_text_atomic
from ..errors import MissingExtraError, PathLike
from ..intensity import HU_OFFSET, UNIT_RANGE
from .image_metrics import default_body_mask
from .lesion_metrics import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, bootstrap_mean_ci

VERSION = "x2ct-uncertainty/1"
"""Name and version of this calibration protocol (bump when a definition changes)."""

MAX_SPEARMAN_VOXELS = 200_000
"""Most body voxels per case that go into the per-case Spearman correlation (a seeded random subsample)."""

POOL_VOXELS_PER_CASE = 20_000
"""Voxels of each case (seeded random subsample of its body) in the pooled Spearman correlation and calibration
curve."""

CALIBRATION_BINS = 10
"""SD bins of the calibration curve (deciles of the pooled SD)."""

SEED = 0
"""Seed of the voxel subsamples (``numpy.random.default_rng(SEED + case index)``)."""

JSON_NAME = "uncertainty.json"
PNG_NAME = "calibration.png"

HALF_NORMAL_MEAN = math.sqrt(2.0 / math.pi)
"""E|e| / σ for a Gaussian error e of SD σ."""


def sample_stats_hu(samples: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(mean HU, SD HU) per voxel of K samples (K, D, H, W) on the unit scale, clamped to [0, 1] first.

    Mean: ``2500·mean(unit) − 1024``; SD: ``2500·std(unit, ddof=1)`` (HU, a difference, so no offset). K >= 2.
    Float32 arrays on the grid of the samples, (D, H, W) (any (K, ...) works: statistics over the first axis).
    """
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim < 2 or samples.shape[0] < 2:
        raise ValueError(f"samples must be (K, D, H, W) with K >= 2, got shape {samples.shape}")
    unit = np.clip(samples, 0.0, 1.0)
    mean_hu = unit.mean(axis=0) * UNIT_RANGE - HU_OFFSET
    sd_hu = unit.std(axis=0, ddof=1) * UNIT_RANGE
    return mean_hu.astype(np.float32), sd_hu.astype(np.float32)


def ideal_mae_hu(sd_hu: np.ndarray, samples: int) -> np.ndarray:
    """Expected |mean − real| (HU) at SD ``sd_hu`` for a calibrated Gaussian generator with ``samples`` draws."""
    return HALF_NORMAL_MEAN * math.sqrt(1.0 + 1.0 / samples) * np.asarray(sd_hu, dtype=np.float64)


def expected_coverage_2sd(samples: int) -> float:
    """Expected fraction of real values inside mean ± 2 SD of ``samples`` Gaussian draws (module doc)."""
    from scipy.stats import t

    bound = 2.0 / math.sqrt(1.0 + 1.0 / samples)
    return float(t.cdf(bound, samples - 1) - t.cdf(-bound, samples - 1))


@dataclass(frozen=True)
class CaseUncertainty:
    """One case: ``spearman`` (None when SD or error is constant), coverages (fractions of body voxels), ``voxels``
    (body voxels), ``mean_sd_hu`` and ``mae_hu`` (of the sample mean) over the body."""

    case_id: str
    samples: int
    voxels: int
    spearman: Optional[float]
    coverage_range: float
    coverage_2sd: float
    mean_sd_hu: float
    mae_hu: float


@dataclass(frozen=True)
class CaseVoxels:
    """A case's seeded subsample of body voxels for pooling: SD and |error| in HU, float32 (n,)."""

    sd_hu: np.ndarray
    error_hu: np.ndarray


def _spearman(sd: np.ndarray, error: np.ndarray) -> Optional[float]:
    from scipy.stats import spearmanr

    if sd.size < 3 or np.ptp(sd) == 0 or np.ptp(error) == 0:
        return None
    rho = float(spearmanr(sd, error)[0])  # [0]: the coefficient in every SciPy version
    return rho if math.isfinite(rho) else None


def _subsample(n: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``min(n, limit)`` of ``n`` items drawn without replacement (all when n <= limit)."""
    return np.arange(n) if n <= limit else np.sort(rng.choice(n, size=limit, replace=False))


def case_uncertainty(
    case_id: str,
    samples: np.ndarray,
    real_hu: np.ndarray,
    mask: Optional[np.ndarray] = None,
    seed: int = SEED,
) -> Tuple[CaseUncertainty, CaseVoxels]:
    """The measures of one case (module doc) and its pooling subsample.

    ``samples`` (K, D, H, W) unit scale; ``real_hu`` (D, H, W) HU on the same grid; ``mask`` a boolean body mask
    (default: the metric protocol's body mask of ``real_hu``). Raises ValueError for mismatched shapes or an
    empty mask.
    """
    real_hu = np.asarray(real_hu, dtype=np.float64)
    if np.asarray(samples).shape[1:] != real_hu.shape:
        raise ValueError(f"samples {np.asarray(samples).shape} and real CT {real_hu.shape} are not on one grid")
    mask = default_body_mask(real_hu) if mask is None else np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError(f"case {case_id}: the body mask is empty")
    unit = np.clip(np.asarray(samples, dtype=np.float64)[:, mask], 0.0, 1.0)  # (K, n) body voxels
    mean_hu, sd_hu = (v.astype(np.float64) for v in sample_stats_hu(unit))
    real = np.clip(real_hu[mask], -HU_OFFSET, UNIT_RANGE - HU_OFFSET)
    real_unit = (real + HU_OFFSET) / UNIT_RANGE
    error = np.abs(mean_hu - real)
    inside_range = (real_unit >= unit.min(axis=0)) & (real_unit <= unit.max(axis=0))
    inside_2sd = error <= 2.0 * sd_hu
    rng = np.random.default_rng(seed)
    pick = _subsample(error.size, MAX_SPEARMAN_VOXELS, rng)
    pool = _subsample(error.size, POOL_VOXELS_PER_CASE, rng)
    result = CaseUncertainty(
        case_id=str(case_id),
        samples=int(unit.shape[0]),
        voxels=int(error.size),
        spearman=_spearman(sd_hu[pick], error[pick]),
        coverage_range=float(inside_range.mean()),
        coverage_2sd=float(inside_2sd.mean()),
        mean_sd_hu=float(sd_hu.mean()),
        mae_hu=float(error.mean()),
    )
    return result, CaseVoxels(sd_hu[pool].astype(np.float32), error[pool].astype(np.float32))


@dataclass(frozen=True)
class CalibrationBin:
    """One SD bin of the pooled subsample: SD range and mean (HU), MAE (HU), voxels, and the ideal MAE."""

    sd_low_hu: float
    sd_high_hu: float
    mean_sd_hu: float
    mae_hu: float
    voxels: int
    ideal_mae_hu: float


def calibration_curve(
    sd_hu: np.ndarray, error_hu: np.ndarray, samples: int, bins: int = CALIBRATION_BINS
) -> List[CalibrationBin]:
    """SD quantile bins (deciles by default; tied edges merged) of pooled voxels -> :class:`CalibrationBin` s."""
    sd_hu, error_hu = np.asarray(sd_hu, np.float64), np.asarray(error_hu, np.float64)
    edges = np.unique(np.quantile(sd_hu, np.linspace(0.0, 1.0, bins + 1)))
    if edges.size < 2:  # one SD value everywhere: a single bin
        edges = np.array([edges[0], edges[0]])
    index = np.clip(np.searchsorted(edges, sd_hu, side="right") - 1, 0, edges.size - 2)
    curve = []
    for b in range(edges.size - 1):
        chosen = index == b
        if not chosen.any():
            continue
        mean_sd = float(sd_hu[chosen].mean())
        curve.append(
            CalibrationBin(
                sd_low_hu=float(edges[b]),
                sd_high_hu=float(edges[b + 1]),
                mean_sd_hu=mean_sd,
                mae_hu=float(error_hu[chosen].mean()),
                voxels=int(chosen.sum()),
                ideal_mae_hu=float(ideal_mae_hu(np.array(mean_sd), samples)),
            )
        )
    return curve


def _mean_ci(values: Sequence[Optional[float]]) -> Dict[str, Any]:
    """Mean of the finite values with the 95 % case-bootstrap CI (None with fewer than 2 cases)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    ci = bootstrap_mean_ci([[v] for v in finite]) if len(finite) >= 2 else None
    return {
        "mean": float(np.mean(finite)) if finite else None,
        "ci_low": None if ci is None else ci[0],
        "ci_high": None if ci is None else ci[1],
        "n_cases": len(finite),
    }


@dataclass(frozen=True)
class UncertaintySummary:
    """Everything ``uncertainty.json`` holds: the per-case rows, the pooled numbers and the calibration curve."""

    samples: int
    cases: List[CaseUncertainty]
    spearman: Dict[str, Any]
    coverage_range: Dict[str, Any]
    coverage_2sd: Dict[str, Any]
    mean_sd_hu: Dict[str, Any]
    mae_hu: Dict[str, Any]
    pooled_spearman: Optional[float]
    pooled_voxels: int
    calibration: List[CalibrationBin]
    expected_coverage_range: float
    expected_coverage_2sd: float
    settings: Dict[str, Any]

    def to_dict(self) -> Dict[str, Any]:
        return {"version": VERSION, **asdict(self)}


def summarize_uncertainty(cases: Sequence[CaseUncertainty], voxels: Sequence[CaseVoxels]) -> UncertaintySummary:
    """Pool the cases (module doc). All cases must have the same number of samples K."""
    if not cases:
        raise ValueError("no case to summarize")
    counts = {case.samples for case in cases}
    if len(counts) != 1:
        raise ValueError(f"cases have different sample counts {sorted(counts)}")
    k = counts.pop()
    sd = np.concatenate([v.sd_hu for v in voxels]).astype(np.float64)
    error = np.concatenate([v.error_hu for v in voxels]).astype(np.float64)
    return UncertaintySummary(
        samples=k,
        cases=list(cases),
        spearman=_mean_ci([c.spearman for c in cases]),
        coverage_range=_mean_ci([c.coverage_range for c in cases]),
        coverage_2sd=_mean_ci([c.coverage_2sd for c in cases]),
        mean_sd_hu=_mean_ci([c.mean_sd_hu for c in cases]),
        mae_hu=_mean_ci([c.mae_hu for c in cases]),
        pooled_spearman=_spearman(sd, error),
        pooled_voxels=int(sd.size),
        calibration=calibration_curve(sd, error, k),
        expected_coverage_range=(k - 1) / (k + 1),
        expected_coverage_2sd=expected_coverage_2sd(k),
        settings={
            "sd_ddof": 1,
            "mask": "x2ct.evaluate.image_metrics.default_body_mask of the real CT",
            "max_spearman_voxels": MAX_SPEARMAN_VOXELS,
            "pool_voxels_per_case": POOL_VOXELS_PER_CASE,
            "calibration_bins": CALIBRATION_BINS,
            "subsample_seed": SEED,
            "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
            "bootstrap_seed": BOOTSTRAP_SEED,
            "ideal_mae": "sqrt(2/pi) * sqrt(1 + 1/K) * SD",
        },
    )


def _matplotlib() -> Tuple[Any, Any, Any]:
    try:
        return tuple(
            importlib.import_module(m)
            for m in ("matplotlib.backends.backend_agg", "matplotlib.figure", "matplotlib.style")
        )  # type: ignore[return-value]
    except ImportError:
        raise MissingExtraError("eval", "the calibration plot", ["matplotlib"]) from None


def calibration_png(summary: UncertaintySummary, path: PathLike, title: str) -> None:
    """The calibration curve (mean SD vs MAE per bin, HU) with the ideal Gaussian line, as a PNG, atomically."""
    backend_agg, figure_module, style = _matplotlib()
    sd = [b.mean_sd_hu for b in summary.calibration]
    mae = [b.mae_hu for b in summary.calibration]
    top = max([*sd, *mae, 1.0]) * 1.05
    with style.context("default"):
        figure = figure_module.Figure(figsize=(6.0, 6.0), dpi=100)
        backend_agg.FigureCanvasAgg(figure)
        axes = figure.add_subplot(1, 1, 1)
        line = np.linspace(0.0, top, 50)
        ideal = f"calibrated Gaussian: sqrt(2/pi)·sqrt(1+1/{summary.samples})·SD"
        axes.plot(line, ideal_mae_hu(line, summary.samples), linestyle="--", color="0.5", label=ideal)
        rho = "n/a" if summary.pooled_spearman is None else f"{summary.pooled_spearman:.2f}"
        axes.plot(sd, mae, marker="o", label=f"SD deciles (pooled Spearman {rho})")
        axes.set_xlim(0.0, top)
        axes.set_ylim(0.0, top)
        axes.set_xlabel("per-voxel SD of the samples (HU)")
        axes.set_ylabel("mean |mean of samples - real| (HU)")
        axes.set_title(title)
        axes.legend(loc="upper left", fontsize="small")
        figure.tight_layout()
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", metadata={"Software": None})


def write_uncertainty(summary: UncertaintySummary, out: PathLike, title: str) -> Tuple[Path, Path]:
    """Write ``uncertainty.json`` and ``calibration.png`` into the folder ``out``; returns their paths."""
    folder = Path(os.fspath(out))
    json_path, png_path = folder / JSON_NAME, folder / PNG_NAME
    calibration_png(summary, png_path, title)
    write_text_atomic(json_path, json.dumps(summary.to_dict(), indent=2, allow_nan=False) + "\n")
    return json_path, png_path


def headline(summary: UncertaintySummary) -> str:
    """One line with the main numbers."""

    def fmt(section: Dict[str, Any], spec: str) -> str:
        if section["mean"] is None:
            return "n/a"
        ci = "" if section["ci_low"] is None else f" [{section['ci_low']:{spec}}, {section['ci_high']:{spec}}]"
        return f"{section['mean']:{spec}}{ci}"

    return (
        f"uncertainty ({summary.samples} samples): Spearman(SD, error) {fmt(summary.spearman, '.2f')}, "
        f"true HU inside [min, max] {fmt(summary.coverage_range, '.2f')} (exchangeable: "
        f"{summary.expected_coverage_range:.2f}), inside mean ± 2 SD {fmt(summary.coverage_2sd, '.2f')} (Gaussian: "
        f"{summary.expected_coverage_2sd:.2f}), "
        f"mean SD {fmt(summary.mean_sd_hu, '.1f')} HU"
    )


__all__ = [
    "CalibrationBin",
    "CaseUncertainty",
    "CaseVoxels",
    "UncertaintySummary",
    "calibration_curve",
    "case_uncertainty",
    "expected_coverage_2sd",
    "headline",
    "ideal_mae_hu",
    "sample_stats_hu",
    "summarize_uncertainty",
    "write_uncertainty",
]
