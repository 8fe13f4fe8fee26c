"""Fréchet distance between real and synthetic CTs in the feature space of one of our own 3D classifiers.

The Fréchet Inception Distance (Heusel et al. 2017) compares two image sets by the Gaussians fitted to
their features in a pretrained network; its 3D variants use I3D or MedicalNet features, which would have
to be downloaded. Here the features come from an x2ct classifier that reads a CT (trained with
``x2ct train-classifier``): :func:`penultimate_features` is the input of the network's head, globally
average-pooled where it is still a feature map: for ``cnn3d`` and the concatenation models the pooled
last conv block (64 values at width 1/4, 256 at width 1), for ``densenet3d`` / ``latent-densenet3d`` the
pooled DenseNet features, for ``late-fusion`` both branches' pooled features. A classifier that also
reads the PA gets the case's PA for both the real and the synthetic CT, so only the CT differs.

Which classifier: one that sees the whole volume (``cnn3d``, ``densenet3d``, ``late-fusion``,
``latent-densenet3d``) describes the whole CT. The bundled demo classifiers are ``concat-cnn3d-2slice``
models: they see the PA and two central coronal slices only, so their Fréchet distance is blind to the
rest of the volume. :class:`FeatureExtractor` accepts them and records ``whole_volume: false`` with the result.

:func:`frechet_distance` is the closed form between two Gaussians,
``|mu1 - mu2|² + tr(S1) + tr(S2) - 2 tr((S1 S2)^½)``, with the matrix square root of
``scipy.linalg.sqrtm`` handled as in the reference FID code (pytorch-fid): a non-finite square root is
recomputed with ``eps`` added to both diagonals, and an imaginary part that numerical error leaves on the
root is dropped when it is small (its diagonal within :data:`IMAGINARY_TOLERANCE`), a larger one is an
error. The distance of sample statistics is biased (upward in expectation, shrinking like 1/N; Chong &
Forsyth 2020), and with fewer cases than feature dimensions the sample covariances are singular and it is noisy
too; :class:`FrechetResult` records the number of cases and dimensions so that only distances with the same N
and classifier are compared.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from scipy import linalg
from torch import Tensor

from ..data.loader import ct_to_unit, resize
from ..errors import InputError, PathLike
from ..intensity import HU_OFFSET
from ..models.classifiers import ClassifierNet
from ..views import CT_KEY, PA_KEY

EPS = 1e-6
"""Added to both covariance diagonals when the square root of their product is not finite (pytorch-fid's default)."""

IMAGINARY_TOLERANCE = 1e-3
"""Largest |imaginary part| on the diagonal of sqrtm(S1 S2) dropped as numerical error (pytorch-fid's tolerance)."""

WHOLE_VOLUME_ARCHS = ("cnn3d", "densenet3d", "late-fusion", "latent-densenet3d")
"""Classifier architectures whose CT input is the whole volume (the others see two central coronal slices)."""


@dataclass(frozen=True)
class FrechetResult:
    """A Fréchet distance and what it was computed from.

    ``distance``: squared-feature units of the classifier (not comparable across classifiers);
    ``n_real`` / ``n_synthetic``: cases; ``dims``: feature dimensions; ``biased``: fewer cases than dimensions
    in either set (singular covariances: a biased, noisy estimate); ``eps_added``: the ``eps`` regularisation had
    to be used; ``classifier``: its name/path, architecture, sha256 and ``whole_volume`` when known.
    """

    distance: float
    n_real: int
    n_synthetic: int
    dims: int
    biased: bool
    eps_added: bool
    classifier: Optional[Dict[str, Any]] = None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def gaussian_stats(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(mean (F,), sample covariance (F, F), ddof 1) of features (N, F), in float64; N >= 2."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be (N, F) with N >= 2, got shape {features.shape}")
    return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = EPS
) -> Tuple[float, bool]:
    """(Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), whether ``eps`` was added) (module doc)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        shapes = f"means {mu1.shape}, {mu2.shape}; covariances {sigma1.shape}, {sigma2.shape}"
        raise ValueError(f"mismatched shapes: {shapes}")
    diff = mu1 - mu2
    with warnings.catch_warnings():  # singular products are expected with few cases; handled below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        eps_added = not np.isfinite(covmean).all()
        if eps_added:
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imaginary = float(np.max(np.abs(np.diagonal(covmean).imag)))
        if imaginary > IMAGINARY_TOLERANCE:
            raise ValueError(f"the covariance square root has an imaginary component {imaginary:.3g}")
        covmean = covmean.real
    distance = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))
    return max(distance, 0.0), eps_added  # tiny negative values are rounding error of identical sets


def frechet_from_features(
    real: np.ndarray, synthetic: np.ndarray, classifier: Optional[Dict[str, Any]] = None, eps: float = EPS
) -> FrechetResult:
    """The :class:`FrechetResult` of two feature sets (N1, F) and (N2, F), N >= 2 each."""
    real, synthetic = np.asarray(real, np.float64), np.asarray(synthetic, np.float64)
    if real.ndim != 2 or synthetic.ndim != 2 or real.shape[1] != synthetic.shape[1]:
        raise ValueError(f"feature sets must be (N, F) with the same F, got {real.shape} and {synthetic.shape}")
    distance, eps_added = frechet_distance(*gaussian_stats(real), *gaussian_stats(synthetic), eps=eps)
    dims = real.shape[1]
    return FrechetResult(
        distance=distance,
        n_real=real.shape[0],
        n_synthetic=synthetic.shape[0],
        dims=dims,
        biased=min(real.shape[0], synthetic.shape[0]) <= dims,
        eps_added=eps_added,
        classifier=classifier,
    )


def penultimate_features(net: ClassifierNet, batch: Mapping[str, Tensor]) -> Tensor:
    """(N, F) float32: the input of ``net.head`` for ``batch``, spatially averaged when it is a feature map."""
    head = getattr(net, "head", None)
    if head is None:
        raise ValueError(f"{net.arch} has no head whose input could serve as features")
    captured: Dict[str, Tensor] = {}

    def hook(module: torch.nn.Module, args: Tuple[Tensor, ...]) -> None:
        captured["features"] = args[0]

    handle = head.register_forward_pre_hook(hook)
    try:
        net(batch)
    finally:
        handle.remove()
    features = captured["features"]
    return (features.flatten(2).mean(2) if features.ndim > 2 else features).float()


class FeatureExtractor:
    """A CT classifier (``x2ct train-classifier`` output) in eval mode as a feature extractor for one case at a time.

    ``model``: the classifier's folder, its ``model.json`` or a training run folder. InputError when it cannot be
    loaded or reads no CT.
    """

    def __init__(self, model: PathLike, device: Union[str, torch.device] = "cpu") -> None:
        from ..classify.checkpoint import load_classifier

        self.net, self.metadata = load_classifier(model, device)
        self.device = next(self.net.parameters()).device
        if CT_KEY not in self.net.inputs:
            problem = f"is a {self.net.arch} classifier, which reads no CT: the Fréchet distance needs one"
            raise InputError(model, problem)
        missing = [k for k in self.net.inputs if k not in self.net.optional_inputs and k not in (CT_KEY, PA_KEY)]
        if missing:
            raise InputError(model, f"{self.net.arch} needs {', '.join(missing)}; the Fréchet features give CT and PA")
        self.inputs = tuple(k for k in self.net.inputs if k in (CT_KEY, PA_KEY))
        self.description = {
            "model": str(model),
            "name": self.metadata.name,
            "architecture": self.net.arch,
            "sha256": self.metadata.sha256,
            "whole_volume": self.net.arch in WHOLE_VOLUME_ARCHS,
            "ct_size": self.metadata.input_size(CT_KEY),
        }

    @torch.no_grad()
    def __call__(self, ct_hu: np.ndarray, pa_unit: Optional[np.ndarray] = None) -> np.ndarray:
        """(F,) features of one CT: ``ct_hu`` (D, H, W) HU on a canonical grid, resized to the classifier's grid
        by :func:`x2ct.data.loader.ct_to_unit` (as its training data); ``pa_unit`` (S, S) in [0, 1], resized
        bilinearly, for classifiers that read the PA."""
        stored = np.asarray(ct_hu, np.float32) + np.float32(HU_OFFSET)
        batch = {CT_KEY: ct_to_unit(stored, self.metadata.input_size(CT_KEY))}
        if PA_KEY in self.inputs:
            if pa_unit is None:
                raise ValueError(f"{self.net.arch} reads the PA; give pa_unit")
            size = self.metadata.input_size(PA_KEY)
            batch[PA_KEY] = np.clip(resize(pa_unit, (size, size)), 0.0, 1.0).astype(np.float32)
        tensors = {k: torch.from_numpy(v)[None, None].to(self.device) for k, v in batch.items()}
        return penultimate_features(self.net, tensors)[0].cpu().numpy()


__all__ = [
    "EPS",
    "FeatureExtractor",
    "FrechetResult",
    "frechet_distance",
    "frechet_from_features",
    "gaussian_stats",
    "penultimate_features",
]
