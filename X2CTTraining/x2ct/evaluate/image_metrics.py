"""Image-quality metrics of a synthetic CT against its ground truth, under one declared protocol.

Every volume is a canonical (D, H, W) array (axes: :mod:`x2ct.geometry`). The full protocol, with
formulas and the quirks of the official X2CT-GAN evaluation, is ``docs/metric_protocol.md``;
:data:`PROTOCOL_VERSION` names it.

Three families of columns, all per case:

* ``mae_hu_body``: MAE in HU inside the body mask (the primary number; ``body_voxels`` says how
  many voxels it covers).
* ``official_*``: exactly what the official ``3DGAN/test.py`` computes, for comparison with the
  X2CT-GAN paper: on the [0, 1] learning scale MAE0, MSE0, cosine similarity and 2D per-slice
  SSIM in the three orientations; then on the truncated int32 0..2500 scale MAE, MSE and PSNR with
  a peak of 4095, over the volume and per slice.
* ``honest_*``: PSNR with the true data range (2500 HU, the width of the learning window), a 3D SSIM
  with Wang et al.'s Gaussian window and data range 1 on the [0, 1] scale, and MAE in HU over the
  whole cube.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk
from skimage.metrics import structural_similarity

from ..atomic import write_text_atomic
from ..geometry import body_mask
from ..intensity import HU_OFFSET, UNIT_RANGE, hu_to_unit

PathLike = Union[str, "os.PathLike[str]"]

PROTOCOL_VERSION = "x2ct-image-metrics/1"
"""Name and version of the declared protocol; bump it whenever any column's definition changes."""

PROTOCOL_DESCRIPTION = (
    "Volumes: canonical (D,H,W) grid, HU. Learning scale unit = round(clip(HU+1024,0,2500)/2500, 6) as float32 "
    "(the official loader's rule, applied to prediction and ground truth alike). "
    "mae_hu_body: mean |pred-gt| in HU, both clipped to [-1024,1476], inside the body mask "
    "(x2ct.geometry.body_mask of the ground truth unless a mask is given). "
    "official_*: as kylekma/X2CT 3DGAN/test.py: on [0,1] MAE0, MSE0, cosine similarity of the flattened volumes, "
    "SSIM-1/2/3 = 2D SSIM per slice along D/H/W (skimage defaults: 7x7 uniform window, K1 0.01, K2 0.03, sample "
    "covariance, data_range 1) averaged over slices, SSIM-avg = their mean; then unit*2500 in float32 cast to int32 "
    "(truncation): MAE, MSE, psnr-3d = 20*log10(4095/sqrt(MSE)), PSNR-1/2/3 = per-slice PSNR with peak 4095 "
    "averaged over slices along D/H/W (a slice or volume with MSE 0 scores 100 dB), PSNR-avg = their mean. "
    "honest_*: psnr_db = 20*log10(2500/RMSE in HU) on the clipped (untruncated) scale over the volume "
    "(+inf when identical); ssim_3d = 3D SSIM on [0,1] with data_range 1, Gaussian window sigma 1.5 "
    "(11 taps per axis), K1 0.01, K2 0.03, population covariance; mae_hu = mean |pred-gt| in HU over the whole cube."
)
"""One-paragraph statement of the protocol, embedded in every summary JSON."""

OFFICIAL_PIXEL_MAX = 4095.0
"""Peak the official code uses for PSNR on the 0..2500 integer scale (not the scale's true maximum)."""

OFFICIAL_IDENTICAL_PSNR_DB = 100.0
"""PSNR the official code assigns to a slice (or volume) whose MSE is exactly 0."""

HONEST_DATA_RANGE_HU = UNIT_RANGE
"""True data range of the clipped learning scale: 2500 HU (-1024..1476)."""

SSIM_3D_SIGMA = 1.5
"""Standard deviation (voxels) of the honest 3D SSIM's Gaussian window (11 taps per axis)."""

SSIM_3D_MIN_SIZE = 11
"""Smallest edge (voxels) of an input volume: the honest 3D SSIM's 11-tap window (the 2D one needs 7)."""

ORIENTATIONS = ("d", "h", "w")
"""Slice stacks of the official per-slice metrics: 1 = along D (axial), 2 = along H (coronal), 3 = along W
(sagittal). Column suffixes ``_1``, ``_2``, ``_3`` follow this order."""

METRIC_NAMES: Tuple[str, ...] = (
    "mae_hu_body",
    "body_voxels",
    "official_mae0",
    "official_mse0",
    "official_cs",
    "official_ssim_1",
    "official_ssim_2",
    "official_ssim_3",
    "official_ssim_avg",
    "official_mae",
    "official_mse",
    "official_psnr_3d",
    "official_psnr_1",
    "official_psnr_2",
    "official_psnr_3",
    "official_psnr_avg",
    "honest_psnr_db",
    "honest_ssim_3d",
    "honest_mae_hu",
)
"""Columns of one case's metrics, in CSV order (after ``case_id``)."""

CSV_NAME = "metrics_per_case.csv"
"""Per-case table written by :func:`write_metrics`."""

SUMMARY_NAME = "metrics_summary.json"
"""Summary (protocol + statistics) written by :func:`write_metrics`."""


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.ndim != 3 or pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} must be (D, H, W) volumes of one shape")
    if min(pred.shape) < SSIM_3D_MIN_SIZE:
        raise ValueError(f"volume {pred.shape} is too small: every edge needs >= {SSIM_3D_MIN_SIZE} voxels for SSIM")
    if not (np.isfinite(pred).all() and np.isfinite(gt).all()):
        raise ValueError("volumes contain NaN or infinite values")
    return pred, gt


def hu_to_metric_unit(hu: np.ndarray) -> np.ndarray:
    """HU (D, H, W) -> float32 [0, 1] learning scale rounded to 6 decimals, as the official loader makes its GT."""
    return np.round(hu_to_unit(hu).astype(np.float64), 6).astype(np.float32)


def to_official_int(unit: np.ndarray) -> np.ndarray:
    """[0, 1] volume -> the official int32 0..2500 scale: ``unit * 2500`` in float32, then truncated.

    The product is formed in float32 as in the official code (its arrays are float32 torch outputs),
    so a stored value k can come back as k - 1 (e.g. 7/2500 -> 6); this quirk is part of parity.
    """
    return (np.asarray(unit, dtype=np.float32) * np.float32(UNIT_RANGE)).astype(np.int32)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """<a, b> / (|a| |b|) over the flattened volumes in float64 (NaN when either volume is all zero)."""
    a64 = np.asarray(a, dtype=np.float64).ravel()
    b64 = np.asarray(b, dtype=np.float64).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.dot(a64, b64) / (np.linalg.norm(a64) * np.linalg.norm(b64)))


def _psnr_db(mse: np.ndarray, peak: float) -> np.ndarray:
    """20 log10(peak / sqrt(mse)) with the official rule: MSE 0 -> 100 dB."""
    mse = np.asarray(mse, dtype=np.float64)
    safe = np.where(mse == 0, 1.0, mse)
    return np.where(mse == 0, OFFICIAL_IDENTICAL_PSNR_DB, 20.0 * np.log10(peak / np.sqrt(safe)))


def official_ssim_per_slice(pred_unit: np.ndarray, gt_unit: np.ndarray, axis: int) -> float:
    """Official SSIM-(axis+1): 2D SSIM of every slice along ``axis`` (0 = D, 1 = H, 2 = W), averaged.

    skimage defaults (7x7 uniform window, K1 0.01, K2 0.03, sample covariance), data_range 1, float64;
    the same as the official ``compare_ssim(..., multichannel=True)`` with the slice axis last.
    """
    return float(
        structural_similarity(
            np.asarray(gt_unit, dtype=np.float64),
            np.asarray(pred_unit, dtype=np.float64),
            data_range=1.0,
            channel_axis=axis,
        )
    )


def official_metrics(pred_unit: np.ndarray, gt_unit: np.ndarray) -> Dict[str, float]:
    """The official X2CT-GAN test metrics of one case, from [0, 1] volumes (D, H, W).

    Both are cast to float32 (the official arrays are float32 torch outputs) and the prediction is
    clipped to [0, 1]. Pass the raw generator output and the loader's GT here for bit parity with the
    official script; :func:`case_metrics` does this from HU. Keys: ``official_mae0`` ... ``official_psnr_avg``
    (see :data:`METRIC_NAMES`); MAE/MSE are on the 0..2500 integer scale, PSNR in dB with peak 4095.
    """
    pred_unit, gt_unit = _check_pair(pred_unit, gt_unit)
    pred32 = np.clip(pred_unit.astype(np.float32), 0.0, 1.0)
    gt32 = gt_unit.astype(np.float32)
    diff0 = pred32.astype(np.float64) - gt32.astype(np.float64)
    out: Dict[str, float] = {
        "official_mae0": float(np.abs(diff0).mean()),
        "official_mse0": float(np.square(diff0).mean()),
        "official_cs": cosine_similarity(gt32, pred32),
    }
    ssims = [official_ssim_per_slice(pred32, gt32, axis) for axis in range(3)]
    out.update({f"official_ssim_{i + 1}": s for i, s in enumerate(ssims)})
    out["official_ssim_avg"] = float(np.mean(ssims))

    diff = to_official_int(pred32).astype(np.float64) - to_official_int(gt32).astype(np.float64)
    se = np.square(diff)
    out["official_mae"] = float(np.abs(diff).mean())
    out["official_mse"] = float(se.mean())
    out["official_psnr_3d"] = float(_psnr_db(se.mean(), OFFICIAL_PIXEL_MAX))
    psnrs = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        psnrs.append(float(_psnr_db(se.mean(axis=others), OFFICIAL_PIXEL_MAX).mean()))
    out.update({f"official_psnr_{i + 1}": p for i, p in enumerate(psnrs)})
    out["official_psnr_avg"] = float(np.mean(psnrs))
    return out


def honest_metrics(pred_unit: np.ndarray, gt_unit: np.ndarray) -> Dict[str, float]:
    """Metrics with an honest data range, from [0, 1] volumes (D, H, W) (prediction clipped to [0, 1]).

    ``honest_psnr_db``: 20 log10(2500 HU / RMSE in HU) over the volume, untruncated (+inf if identical);
    ``honest_ssim_3d``: 3D SSIM, Gaussian window sigma 1.5 voxels (11 taps), K1 0.01, K2 0.03, population
    covariance, data_range 1 (= 2500 HU), mean over the volume less a 5-voxel border;
    ``honest_mae_hu``: mean |pred - gt| in HU over the whole cube.
    """
    pred_unit, gt_unit = _check_pair(pred_unit, gt_unit)
    pred64 = np.clip(pred_unit.astype(np.float32), 0.0, 1.0).astype(np.float64)
    gt64 = gt_unit.astype(np.float32).astype(np.float64)
    diff_hu = (pred64 - gt64) * UNIT_RANGE
    mse_hu = float(np.square(diff_hu).mean())
    return {
        "honest_psnr_db": math.inf if mse_hu == 0 else 20.0 * math.log10(HONEST_DATA_RANGE_HU / math.sqrt(mse_hu)),
        "honest_ssim_3d": float(
            structural_similarity(
                gt64,
                pred64,
                data_range=1.0,
                gaussian_weights=True,
                sigma=SSIM_3D_SIGMA,
                use_sample_covariance=False,
            )
        ),
        "honest_mae_hu": float(np.abs(diff_hu).mean()),
    }


def default_body_mask(gt_hu: np.ndarray) -> np.ndarray:
    """Boolean (D, H, W) body mask of a ground-truth HU volume: :func:`x2ct.geometry.body_mask`.

    That is the largest connected region above -500 HU with holes filled per axial (D) slice, so the
    lungs count as body and the table mostly does not.
    """
    image = sitk.GetImageFromArray(np.asarray(gt_hu, dtype=np.float32))  # array (D,H,W) = image index (k,j,i)
    return sitk.GetArrayFromImage(body_mask(image)).astype(bool)


def case_metrics(
    case_id: str,
    pred_hu: np.ndarray,
    gt_hu: np.ndarray,
    mask: Optional[np.ndarray] = None,
) -> Dict[str, Union[str, float]]:
    """All protocol metrics of one case as a flat dict: ``case_id`` then :data:`METRIC_NAMES`.

    ``pred_hu`` and ``gt_hu`` are canonical (D, H, W) volumes in HU (every edge >= 11 voxels); ``mask``
    is an optional boolean (D, H, W) body mask (default: :func:`default_body_mask` of ``gt_hu``).
    ``mae_hu_body`` is NaN when the mask is empty.
    """
    pred_hu, gt_hu = _check_pair(pred_hu, gt_hu)
    if mask is None:
        mask = default_body_mask(gt_hu)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != gt_hu.shape:
        raise ValueError(f"mask {mask.shape} does not match the volumes {gt_hu.shape}")
    lo, hi = -HU_OFFSET, UNIT_RANGE - HU_OFFSET
    abs_hu = np.abs(np.clip(pred_hu.astype(np.float64), lo, hi)[mask] - np.clip(gt_hu.astype(np.float64), lo, hi)[mask])
    pred_unit, gt_unit = hu_to_metric_unit(pred_hu), hu_to_metric_unit(gt_hu)
    row: Dict[str, Union[str, float]] = {
        "case_id": str(case_id),
        "mae_hu_body": float(abs_hu.mean()) if abs_hu.size else math.nan,
        "body_voxels": int(abs_hu.size),
    }
    row.update(official_metrics(pred_unit, gt_unit))
    row.update(honest_metrics(pred_unit, gt_unit))
    return row


def summarize(rows: Sequence[Mapping[str, Union[str, float]]]) -> Dict[str, Dict[str, Optional[float]]]:
    """Per metric over cases: ``mean``, ``std`` (sample, ddof 1), ``median``, ``n`` and ``n_nonfinite``.

    Statistics use the finite values only (``n`` of them); NaN or infinite values (an empty body
    mask, an honest PSNR of identical volumes) are counted in ``n_nonfinite``. A statistic that
    cannot be formed (no finite value; std of a single value) is None.
    """
    summary: Dict[str, Dict[str, Optional[float]]] = {}
    for name in METRIC_NAMES:
        values = np.array([float(row[name]) for row in rows], dtype=np.float64)
        finite = values[np.isfinite(values)]
        summary[name] = {
            "mean": float(finite.mean()) if finite.size else None,
            "std": float(finite.std(ddof=1)) if finite.size > 1 else None,
            "median": float(np.median(finite)) if finite.size else None,
            "n": int(finite.size),
            "n_nonfinite": int(values.size - finite.size),
        }
    return summary


def _csv_value(value: Union[str, float]) -> str:
    """Integers as digits, floats as ``repr`` (round-trips through ``float()``, including nan and inf)."""
    return str(value) if isinstance(value, (int, np.integer)) else repr(float(value))


def write_metrics(rows: Sequence[Mapping[str, Union[str, float]]], out_dir: PathLike) -> Tuple[Path, Path]:
    """Write ``metrics_per_case.csv`` and ``metrics_summary.json`` into ``out_dir``, each atomically.

    CSV columns: ``case_id`` then :data:`METRIC_NAMES` (floats as ``repr``, so ``nan``/``inf`` stay
    readable by ``float()``; ``body_voxels`` as an integer). The JSON holds ``protocol`` (version and
    description), ``n_cases`` and ``metrics`` (:func:`summarize`); it is strict JSON (no non-finite numbers).
    Returns (csv path, json path).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("case_id", *METRIC_NAMES))
    for row in rows:
        writer.writerow((row["case_id"], *(_csv_value(row[name]) for name in METRIC_NAMES)))
    document = {
        "protocol": {"version": PROTOCOL_VERSION, "description": PROTOCOL_DESCRIPTION},
        "n_cases": len(rows),
        "metrics": summarize(rows),
    }
    summary_text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    # Both texts are complete before either file is replaced, so a bad row changes neither file.
    csv_path, json_path = out / CSV_NAME, out / SUMMARY_NAME
    write_text_atomic(csv_path, buffer.getvalue())
    write_text_atomic(json_path, summary_text)
    return csv_path, json_path
