"""How far an input radiograph is from a generator's training domain: an out-of-distribution (OOD) warning.

Every x2ct generator learns from DRRs; a clinical CR/DX radiograph differs from them in ways a few image
statistics show (docs/ood.md): the vendor's unsharp masking and tone curve change the band energies and the
histogram, collimation adds bright or dark borders. Statistics of the finest scale (1 px: noise, pixel
gradients) are left out on purpose: at a model's input size (64-256 px) they depend on the resolution the
source was rendered or acquired at (a clean DRR rendered at 256 px and reduced is sharper than one rendered
at 64 px) more than on its domain, and a clinical image reduced 10-40x has averaged its quantum noise away.
:func:`image_features` computes :data:`FEATURES` of one preprocessed input (the (S, S) [0, 1] image the
generator saw, after any style translation), and the score of a view is the Mahalanobis distance of its
features to those of the training split's DRRs, with a Ledoit-Wolf shrinkage covariance (Ledoit & Wolf 2004,
closed form, :func:`ledoit_wolf`) of the standardised features. The score of an input is the largest of its
views' distances; it is flagged when above the reference's threshold (the 99th percentile of held-out DRR
scores, see :mod:`x2ct.inference.ood_calibration` and ``x2ct calibrate-ood``).

The reference (:class:`OODReference`: per-view mean, scale and precision, threshold, how it was calibrated)
lives in ``ood_reference.json`` beside the generator's ``model.json`` (:func:`reference_path`); without it
:func:`ood_score` returns None. Pure numpy/SciPy, no gradients, a few milliseconds per image.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from ..atomic import write_text_atomic
from ..errors import InputError, PathLike
from .types import LoadedModel, PreparedView

REFERENCE_FILE = "ood_reference.json"
"""The OOD reference of a generator, in its model folder beside ``model.json``."""

SCHEMA = "x2ct-ood-reference/1"
"""``schema`` entry of :data:`REFERENCE_FILE`."""

METHOD = "mahalanobis-image-statistics/1"
"""The score's method name (in the reference and in :class:`OODScore`)."""

BAND_SIGMAS_PX = (1.0, 2.0, 4.0, 8.0)
"""Gaussian scales (px of the model input) whose successive differences are the band-pass images."""

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
"""Intensity quantiles of the [0, 1] image."""

BORDER_FRACTION = 1.0 / 16.0
"""Width of the image frame whose mean intensity is a feature (collimation borders), as a fraction of the edge."""

FEATURES: Tuple[str, ...] = (
    *(f"log_band_energy_{a:g}_{b:g}px" for a, b in zip(BAND_SIGMAS_PX[:-1], BAND_SIGMAS_PX[1:])),
    *(f"quantile_{q:g}" for q in QUANTILES),
    "border_mean",
    "fraction_white",
    "fraction_black",
)
"""The statistics of one image, in the order of :func:`image_features`."""


# ----------------------------------------------------------------------------------------------- features


def _log(value: float) -> float:
    return float(np.log10(value + 1e-8))


def image_features(image: np.ndarray) -> np.ndarray:
    """:data:`FEATURES` of one preprocessed input radiograph, (S, S) in [0, 1] (a generator's model input):
    log10 energies of difference-of-Gaussian bands (1-2, 2-4, 4-8 px), intensity quantiles, the mean of the
    outer frame and the fractions of white (>= 0.98) and black (<= 0.02) pixels."""
    x = np.asarray(image, dtype=np.float64)
    if x.ndim != 2 or min(x.shape) < 8:
        raise ValueError(f"image must be (S, S) with S >= 8, got {x.shape}")
    blurred = [ndimage.gaussian_filter(x, sigma, mode="nearest") for sigma in BAND_SIGMAS_PX]
    bands = [_log(float(np.mean((fine - coarse) ** 2))) for fine, coarse in zip(blurred[:-1], blurred[1:])]
    edge = max(1, int(round(min(x.shape) * BORDER_FRACTION)))
    frame = np.ones(x.shape, dtype=bool)
    frame[edge:-edge, edge:-edge] = False
    values = [
        *bands,
        *np.quantile(x, QUANTILES).tolist(),
        float(x[frame].mean()),
        float(np.mean(x >= 0.98)),
        float(np.mean(x <= 0.02)),
    ]
    return np.asarray(values, dtype=np.float64)


# ------------------------------------------------------------------------------------------ the distance


def ledoit_wolf(centred: np.ndarray) -> Tuple[np.ndarray, float]:
    """(shrunk covariance, shrinkage) of ``centred`` (n, p) data (column means removed): the Ledoit & Wolf (2004)
    optimal convex combination ``(1 - s) S + s mu I`` of the sample covariance S (divided by n) and the scaled
    identity (mu = trace(S) / p), the same estimate as scikit-learn's ``LedoitWolf(assume_centered=True)``."""
    x = np.asarray(centred, dtype=np.float64)
    n, p = x.shape
    sample = x.T @ x / n
    mu = float(np.trace(sample)) / p
    squares = x**2
    delta_sum = float(np.sum(sample**2))
    beta = (float(np.sum(squares.T @ squares)) / n - delta_sum) / (p * n)
    delta = (delta_sum - 2.0 * mu * float(np.trace(sample)) + p * mu * mu) / p
    shrinkage = 0.0 if delta <= 0 else min(beta, delta) / delta
    return (1.0 - shrinkage) * sample + shrinkage * mu * np.eye(p), shrinkage


@dataclass(frozen=True)
class ViewReference:
    """The training-domain statistics of one view: feature ``mean`` and ``scale`` (standard deviation, the
    standardisation) and the ``precision`` (inverse shrunk covariance) of the standardised features."""

    mean: np.ndarray
    scale: np.ndarray
    precision: np.ndarray
    cases: int
    shrinkage: float

    @classmethod
    def fit(cls, features: np.ndarray) -> ViewReference:
        """From the (n, p) features of the training images (n >= 2)."""
        data = np.asarray(features, dtype=np.float64)
        if data.ndim != 2 or data.shape[0] < 2:
            raise ValueError(f"need the features of at least 2 images, got shape {data.shape}")
        mean = data.mean(axis=0)
        scale = data.std(axis=0)
        scale = np.where(scale > 1e-12, scale, 1.0)
        covariance, shrinkage = ledoit_wolf((data - mean) / scale)
        return cls(mean, scale, np.linalg.pinv(covariance, hermitian=True), data.shape[0], shrinkage)

    def distance(self, features: np.ndarray) -> float:
        """Mahalanobis distance of one image's features to the training images (in standard deviations)."""
        z = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        return float(np.sqrt(max(0.0, float(z @ self.precision @ z))))

    def to_dict(self) -> Dict[str, Any]:
        return {
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "precision": self.precision.tolist(),
            "cases": self.cases,
            "shrinkage": self.shrinkage,
        }

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> ViewReference:
        p = len(FEATURES)
        mean, scale = np.asarray(record["mean"], float), np.asarray(record["scale"], float)
        precision = np.asarray(record["precision"], float)
        if mean.shape != (p,) or scale.shape != (p,) or precision.shape != (p, p):
            raise ValueError(f"mean, scale and precision must have {p}, {p} and {p}x{p} entries")
        return cls(mean, scale, precision, int(record["cases"]), float(record["shrinkage"]))


@dataclass(frozen=True)
class OODReference:
    """A generator's training-domain reference: per-view statistics (view name -> :class:`ViewReference`), the
    model input ``size`` (px) they were computed at, the ``threshold`` on the score and ``calibration`` (how the
    threshold was set and what it does on held-out and simulated data; JSON)."""

    views: Dict[str, ViewReference]
    size: int
    threshold: Optional[float]
    calibration: Dict[str, Any] = field(default_factory=dict)

    def distances(self, images: Mapping[str, np.ndarray]) -> Dict[str, float]:
        """Per-view Mahalanobis distance of preprocessed images (view name -> (S, S) [0, 1]) that the
        reference has statistics for."""
        return {view: self.views[view].distance(image_features(image)) for view, image in images.items()
                if view in self.views}  # fmt: skip

    def score(self, images: Mapping[str, np.ndarray]) -> float:
        """The input's score: the largest of its views' distances."""
        return max(self.distances(images).values())

    def to_dict(self) -> Dict[str, Any]:
        return {
            "schema": SCHEMA,
            "method": METHOD,
            "features": list(FEATURES),
            "size": self.size,
            "score": "largest over the views of the Mahalanobis distance (Ledoit-Wolf shrinkage) of the "
            "standardised features to the training split's DRRs",
            "threshold": self.threshold,
            "calibration": self.calibration,
            "views": {view: ref.to_dict() for view, ref in sorted(self.views.items())},
        }

    @classmethod
    def from_dict(cls, record: Mapping[str, Any], source: PathLike) -> OODReference:
        """From :meth:`to_dict`'s record; InputError naming ``source`` when it is not one of this version."""
        if record.get("schema") != SCHEMA or record.get("method") != METHOD:
            raise InputError(source, f"not an x2ct OOD reference of schema {SCHEMA} (run x2ct calibrate-ood again)")
        if list(record.get("features", [])) != list(FEATURES):
            raise InputError(source, "holds other features than this x2ct computes (run x2ct calibrate-ood again)")
        try:
            views = {str(view): ViewReference.from_dict(ref) for view, ref in record["views"].items()}
            threshold = record.get("threshold")
            return cls(views, int(record["size"]), None if threshold is None else float(threshold),
                       dict(record.get("calibration") or {}))  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise InputError(source, f"malformed OOD reference ({err})") from None

    def write(self, path: PathLike) -> None:
        """Write as JSON, atomically."""
        write_text_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n")


def reference_path(model_path: PathLike) -> Path:
    """Where a generator's reference lives: ``FOLDER/ood_reference.json`` for a model folder, else beside the
    model file as ``<stem>.ood_reference.json``."""
    path = Path(os.fspath(model_path))
    if path.is_dir():
        return path / REFERENCE_FILE
    return path.with_name(f"{path.stem}.{REFERENCE_FILE}")


@lru_cache(maxsize=8)
def _read(path: str, modified_ns: int) -> OODReference:
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(path, f"unreadable OOD reference ({' '.join(str(err).split())})") from None
    if not isinstance(record, dict):
        raise InputError(path, "an OOD reference must be one JSON object")
    return OODReference.from_dict(record, path)


def read_reference(model_path: PathLike) -> Optional[OODReference]:
    """The reference of the generator at ``model_path`` (folder or file), None when it has none."""
    path = reference_path(model_path)
    if not path.is_file():
        return None
    return _read(str(path), path.stat().st_mtime_ns)


# ------------------------------------------------------------------------------------------------ the score


@dataclass
class OODScore:
    """An input's distance from the generator's training domain: ``score`` (the largest per-view distance, in
    standard deviations of the training DRRs' statistics), the reference's ``threshold`` (None: not
    calibrated), ``flagged`` (score above the threshold), ``per_view`` (view name -> distance), ``method``."""

    score: float
    threshold: Optional[float]
    flagged: bool
    per_view: Dict[str, float]
    method: str

    def to_dict(self) -> Dict[str, Any]:
        """The JSON record (``summary.json``)."""
        return {
            "score": round(self.score, 4),
            "threshold": None if self.threshold is None else round(self.threshold, 4),
            "flagged": self.flagged,
            "per_view": {view: round(value, 4) for view, value in self.per_view.items()},
            "method": self.method,
        }


def score_images(reference: OODReference, images: Mapping[str, np.ndarray]) -> Optional[OODScore]:
    """The :class:`OODScore` of preprocessed images (view name -> (S, S) [0, 1]); None when the reference has no
    statistics for any of their views or was computed at another input size."""
    usable = {view: image for view, image in images.items() if view in reference.views}
    if not usable or any(np.shape(image) != (reference.size, reference.size) for image in usable.values()):
        return None
    per_view = reference.distances(usable)
    score = max(per_view.values())
    flagged = reference.threshold is not None and score > reference.threshold
    return OODScore(score, reference.threshold, flagged, per_view, METHOD)


def ood_score(model: LoadedModel, views: Mapping[str, PreparedView]) -> Optional[OODScore]:
    """The OOD score of a prediction's inputs (view name -> :class:`PreparedView`, scored on ``model_input``,
    what the generator saw) against ``model``'s ``ood_reference.json``; None when the model has none."""
    reference = read_reference(model.path)
    if reference is None:
        return None
    return score_images(reference, {view: prepared.model_input for view, prepared in views.items()})


def scores_of(reference: OODReference, cases: Sequence[Mapping[str, np.ndarray]]) -> List[float]:
    """The score of each case (view name -> preprocessed image)."""
    return [reference.score(case) for case in cases]
