"""Turning an ``x2ct`` prediction into what the panel shows (no Slicer imports here).

* findings (``Prediction.findings``, x2ct.inference.Finding records) -> table columns and rows, and a CSV file;
* re-projection consistency scores -> a few lines of text; the out-of-distribution score, the style model and the
  sampling of a stochastic model -> one line each;
* a Grad-CAM map computed on the radiograph pixels as ``x2ct`` read them -> the same map in the voxel
  order of the radiograph's volume node, so that it can be placed with that node's own IJK->RAS;
* a bundled model's card -> a tooltip.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Mapping, Optional, Sequence

import numpy as np

if TYPE_CHECKING:
    from x2ct.inference import Finding

FINDINGS_COLUMNS = (
    "label", "probability", "threshold", "call", "output", "task", "inputs", "model", "ct_source", "notes",
    "guided_peak", "weights_sha256",
)
"""Columns of the findings table and CSV, in order: fields of x2ct.inference.Finding (one per classifier output);
a field that is None leaves the cell empty."""

RADIOGRAPH_ORIENTATIONS = ("as stored", "rows reversed", "columns reversed")
"""Pixel orders a loader might give a radiograph's volume node relative to the file (and to x2ct)."""


def _cellText(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True)
    return str(value)


_PEAK_INPUTS = (("ct", "CT"), ("pa", "PA"), ("lateral", "lateral"))


def guidedPeakText(peaks: Optional[Mapping[str, Any]]) -> str:
    """A finding's ``guided_peak`` (per x2ct input key: a CT peak with ``ras_mm``, a radiograph peak with
    ``pixel_rc``) as short text: the CT peak in RAS mm (Slicer's coordinates; "?" for the A axis a two-slice
    model cannot give), radiograph peaks as row, column."""
    peaks = peaks or {}
    parts = []
    for key, name in _PEAK_INPUTS:
        if key not in peaks:
            continue
        peak = peaks[key]
        if peak is None:
            parts.append(f"{name}: none")
        elif key == "ct":
            ras = ["?" if v is None else f"{v:.1f}" for v in peak.ras_mm]
            parts.append(f"{name}: R {ras[0]}, A {ras[1]}, S {ras[2]} mm")
        else:
            parts.append(f"{name}: row {peak.pixel_rc[0]:.1f}, column {peak.pixel_rc[1]:.1f}")
    return "; ".join(parts)


def _columnText(finding: Finding, column: str) -> str:
    if column == "guided_peak":
        return guidedPeakText(finding.guided_peak)
    return _cellText(getattr(finding, column))


def findingsRows(findings: Sequence[Finding]) -> List[List[str]]:
    """One row of cell texts per finding, in :data:`FINDINGS_COLUMNS` order (probabilities to 4 digits)."""
    return [[_columnText(finding, column) for column in FINDINGS_COLUMNS] for finding in findings]


def findingsCsvText(findings: Sequence[Finding]) -> str:
    """The findings as CSV text with a header row; probabilities and thresholds at full precision."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FINDINGS_COLUMNS)
    for finding in findings:
        row = []
        for column in FINDINGS_COLUMNS:
            value = getattr(finding, column)
            row.append(repr(value) if isinstance(value, float) else _columnText(finding, column))
        writer.writerow(row)
    return buffer.getvalue()


def writeFindingsCsv(findings: Sequence[Finding], path: str) -> Path:
    """Write :func:`findingsCsvText` to ``path`` atomically (x2ct.atomic); returns the path."""
    from x2ct.atomic import write_text_atomic

    target = Path(path)
    write_text_atomic(target, findingsCsvText(findings))
    return target


def consistencyText(consistency: Mapping[str, Mapping[str, float]], score: Optional[float]) -> str:
    """Lines like ``PA: NCC 0.912, SSIM 0.801`` per view, then the mean NCC (the pipeline's score)."""
    lines = [
        f"{view}: NCC {values.get('ncc', float('nan')):.3f}, SSIM {values.get('ssim', float('nan')):.3f}"
        for view, values in consistency.items()
    ]
    if score is not None:
        lines.append(f"mean NCC {score:.3f} (agreement of the CT's re-projection with the input; not accuracy)")
    return "\n".join(lines)


OOD_WARNING_STYLE = "color: #d04000; font-weight: bold"
"""Style sheet of the OOD line when the inputs are flagged as out of distribution (a warning colour)."""


def oodText(ood: Any) -> str:
    """An x2ct OOD score (``Prediction.ood``: score, threshold, flagged, per_view) as one line; "" without one."""
    if ood is None:
        return ""
    threshold = "no calibrated threshold" if ood.threshold is None else f"threshold {ood.threshold:.3f}"
    views = ", ".join(f"{view} {value:.3f}" for view, value in (ood.per_view or {}).items())
    verdict = "OUT OF DISTRIBUTION: the inputs are unlike the model's training radiographs; treat the CT with caution" \
        if ood.flagged else "within the training domain"
    return f"Out-of-distribution score {ood.score:.3f} ({threshold}; {views}): {verdict}"


def runText(style: Any, sampling: Any) -> str:
    """The style model (``Prediction.style``) and the sampling (``Prediction.sampling``) of a run as lines; "" for
    a deterministic model without a style."""
    lines = []
    if style is not None:
        lines.append(f"Inputs translated to DRR style by {style.name} (sha256 {str(style.sha256)[:12]}…)")
    if sampling is not None:
        steps = "model default" if sampling.steps is None else sampling.steps
        lines.append(f"Mean of {sampling.samples} samples ({sampling.sampler}, steps {steps}, guidance "
                     f"{sampling.guidance:g}, seed {sampling.seed}); the SD over them is the uncertainty layer")
    return "\n".join(lines)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel() - a.mean()
    b = b.astype(np.float64).ravel() - b.mean()
    denominator = float(np.sqrt((a @ a) * (b @ b)))
    return float(a @ b) / denominator if denominator > 0 else 0.0


def _oriented(image: np.ndarray, orientation: str) -> np.ndarray:
    if orientation == "rows reversed":
        return image[::-1, :]
    if orientation == "columns reversed":
        return image[:, ::-1]
    return image


def radiographOrientation(nodePixels: np.ndarray, x2ctPixels: np.ndarray, margin: float = 0.05,
                          reduction: int = 1) -> str:
    """Which of :data:`RADIOGRAPH_ORIENTATIONS` turns ``x2ctPixels`` into ``nodePixels``.

    Both are (rows, columns) images of the same radiograph: as ``x2ct.io.read_radiograph`` read the
    file (rows as stored) and as the volume node holds it (``arrayFromVolume(node)[0]``). Slicer's
    file readers keep the stored order, so "as stored" is expected; another order is chosen only
    when its absolute correlation beats "as stored" by more than ``margin`` (absolute, because x2ct
    inverts MONOCHROME1 images and Slicer shows them as stored). ``reduction``: the factor by which x2ct
    reduced a large radiograph (``metadata["reduction"]``); the node's pixels are reduced the same way
    (``x2ct.io.radiograph.block_mean``) before they are compared. Raises ValueError when the shapes
    differ (then the node is not the radiograph x2ct read).
    """
    if reduction > 1:
        from x2ct.io.radiograph import block_mean

        nodePixels = block_mean(nodePixels, reduction)
    if nodePixels.shape != x2ctPixels.shape:
        raise ValueError(f"volume holds {nodePixels.shape} pixels but the radiograph read has {x2ctPixels.shape}")
    scores = {o: abs(_pearson(nodePixels, _oriented(x2ctPixels, o))) for o in RADIOGRAPH_ORIENTATIONS}
    best = max(scores, key=scores.get)
    return best if scores[best] > scores["as stored"] + margin else "as stored"


def radiographHeatMapVoxels(heatMap: np.ndarray, nodePixels: np.ndarray, x2ctPixels: np.ndarray,
                            reduction: int = 1) -> np.ndarray:
    """A Grad-CAM map on x2ct's radiograph pixels, reordered like the node's voxels, as a (1, rows, cols) volume.

    When x2ct reduced the radiograph by ``reduction`` (``metadata["reduction"]``), each map pixel is spread back
    over the ``reduction`` x ``reduction`` block of the node's pixels it was the mean of.
    """
    if heatMap.shape != x2ctPixels.shape:
        raise ValueError(f"heat map {heatMap.shape} does not match the radiograph's pixels {x2ctPixels.shape}")
    orientation = radiographOrientation(nodePixels, x2ctPixels, reduction=reduction)
    voxels = np.asarray(heatMap, dtype=np.float32)
    if reduction > 1:
        rows, columns = nodePixels.shape
        voxels = np.repeat(np.repeat(voxels, reduction, axis=0), reduction, axis=1)[:rows, :columns]
    return np.ascontiguousarray(_oriented(voxels, orientation))[None]


def modelCardTooltip(modelsFolder: Path, name: str, maxCharacters: int = 1500) -> str:
    """The first part of ``<modelsFolder>/<name>/MODEL_CARD.md`` as plain text, for a tooltip."""
    card = Path(modelsFolder) / name / "MODEL_CARD.md"
    if not card.is_file():
        return f"{name}: no model card found"
    text = card.read_text(encoding="utf-8").replace("**", "").replace("`", "")
    return text if len(text) <= maxCharacters else text[:maxCharacters].rstrip() + " …"
