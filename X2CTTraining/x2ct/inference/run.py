"""Running a generator: the one generator call, and the generator stages of a prediction.

:func:`run_generator` is how ``x2ct predict``, ``x2ct synthesize-ct`` and ``x2ct evaluate-generator``
call a generator. :func:`generate` runs the stages of one case before the classifiers, each recorded
in the :class:`~x2ct.inference.types.Prediction`:

1. input rules and 2. preprocessing (:mod:`x2ct.inference.preprocess`);
3. **generator**: ``forward(pa[, lateral])`` on the model's device, output (D, H, W) in [0, 1];
4. **volume**: HU = 2500 x - 1024 (:mod:`x2ct.intensity`) on the canonical 320 mm grid centred at the
   origin (LPS, direction diag(1, 1, -1), spacing 320 mm / size, :mod:`x2ct.geometry`);
5. **re-projection check**: the synthetic CT is projected with the cone-beam geometry of the model's
   training DRRs (:mod:`x2ct.drr`), put through the same resize / min-max / quantisation as the inputs
   and compared with each preprocessed input radiograph: Pearson correlation (``ncc``) and SSIM (7x7
   window, data range 1). ``consistency`` is the mean ``ncc`` over the views. A QA number only: high
   values mean the CT explains the radiographs, not that it is anatomically right.

``progress(fraction, message)`` is called between stages and ``cancel()`` is polled there
(:func:`stage`); a True answer raises :class:`~x2ct.inference.types.PredictionCancelled`.
"""

from __future__ import annotations

import math
import time
from typing import Dict, Mapping, Optional, Union

import numpy as np
import torch
from skimage.metrics import structural_similarity

from ..drr import project
from ..errors import InputError, PathLike
from ..geometry import CanonicalGrid
from ..intensity import unit_to_hu
from ..io import Radiograph
from ..views import LATERAL, LATERAL_KEY, PA, PA_KEY, input_key
from .preprocess import match_intensity, preprocess, read_input, resize_square
from .types import CancelCheck, InputSpec, LoadedModel, Prediction, PredictionCancelled, ProgressCallback


def stage(progress: Optional[ProgressCallback], cancel: Optional[CancelCheck], fraction: float, message: str) -> None:
    """A stage boundary: raise :class:`PredictionCancelled` when ``cancel()`` says so, else report progress."""
    if cancel is not None and cancel():
        raise PredictionCancelled(message)
    if progress is not None:
        progress(fraction, message)


def run_generator(module: torch.nn.Module, images: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """A generator's output for a batch: ``images`` by input key, ``pa`` and (biplanar models) ``lateral``,
    (N, 1, S, S) in [0, 1] on the module's device (other keys are ignored); returns (N, 1, D, H, W) float32
    on the unit scale of :mod:`x2ct.intensity`, on that device. Runs in inference mode."""
    radiographs = [images[PA_KEY]] + ([images[LATERAL_KEY]] if LATERAL_KEY in images else [])
    with torch.inference_mode():
        return module(*radiographs).float()


def reproject(volume_hu: np.ndarray, view: str, spec: InputSpec, device: torch.device) -> np.ndarray:
    """Cone-beam DRR of a canonical (D, H, W) HU volume with the model's training geometry, in the
    model's input space (size x size, min-max, quantised like the inputs)."""
    spacing = CanonicalGrid(size=volume_hu.shape[0]).spacing_mm
    volume = torch.from_numpy(np.ascontiguousarray(volume_hu, dtype=np.float32))[None, None].to(device)
    with torch.no_grad():
        raw = project(volume, spacing, view, spec.drr_size, spec.geometry, units="hu")[0, 0].cpu().numpy()
    return match_intensity(resize_square(raw, spec.size), spec)


def consistency_scores(reprojection: np.ndarray, model_input: np.ndarray) -> Dict[str, float]:
    """Agreement of a re-projection with the preprocessed radiograph (both (S, S) in [0, 1]).

    ``ncc``: Pearson correlation in [-1, 1] (0 when either image is constant); ``ssim``: structural
    similarity (7x7 uniform window, data range 1).
    """
    a = reprojection.astype(np.float64).ravel() - reprojection.mean()
    b = model_input.astype(np.float64).ravel() - model_input.mean()
    denom = math.sqrt(float(a @ a) * float(b @ b))
    ncc = float(a @ b) / denom if denom > 0 else 0.0
    ssim = float(structural_similarity(reprojection, model_input, data_range=1.0))
    return {"ncc": round(ncc, 4), "ssim": round(ssim, 4)}


def generate(
    model: LoadedModel,
    pa: Union[PathLike, Radiograph],
    lateral: Union[PathLike, Radiograph, None] = None,
    force: bool = False,
    view_override: bool = False,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCheck] = None,
) -> Prediction:
    """Stages 1-5 (module doc) of one case: a prediction without findings. ``pa``/``lateral`` are files or
    already-read radiographs. ``timings_s`` holds unrounded seconds of ``read``, ``preprocess``,
    ``generator`` and ``reprojection``.

    Raises InputError for a broken input rule, including a biplanar model without a lateral and a
    single-view model with one; :class:`PredictionCancelled` when ``cancel()`` says so.
    """
    timings: Dict[str, float] = {}
    start = time.perf_counter()
    stage(progress, cancel, 0.0, "reading radiographs")
    if pa is None:
        raise InputError(lateral if not isinstance(lateral, Radiograph) else None, "a lateral radiograph needs a PA")
    if model.biplanar and lateral is None:
        raise InputError(model.path, f"model {model.name} is biplanar (+B) and needs a lateral radiograph")
    if not model.biplanar and lateral is not None:
        raise InputError(
            model.path, f"model {model.name} is single-view (+S) and takes no lateral; choose a biplanar model"
        )
    inputs = {PA: pa} if lateral is None else {PA: pa, LATERAL: lateral}
    radiographs = {
        view: item if isinstance(item, Radiograph) else read_input(item, view, force, view_override)
        for view, item in inputs.items()
    }
    timings["read"] = time.perf_counter() - start

    stage(progress, cancel, 0.1, "preprocessing")
    t = time.perf_counter()
    prepared = {view: preprocess(radiograph, model.spec) for view, radiograph in radiographs.items()}
    timings["preprocess"] = time.perf_counter() - t

    stage(progress, cancel, 0.2, f"running {model.name} on {model.device}")
    t = time.perf_counter()
    images = {input_key(v): torch.from_numpy(p.model_input)[None, None].to(model.device) for v, p in prepared.items()}
    volume_hu = unit_to_hu(run_generator(model.module, images)[0, 0].cpu().numpy())
    timings["generator"] = time.perf_counter() - t

    stage(progress, cancel, 0.7, "re-projection check")
    t = time.perf_counter()
    reprojections = {view: reproject(volume_hu, view, model.spec, model.device) for view in prepared}
    consistency = {view: consistency_scores(reprojections[view], prepared[view].model_input) for view in prepared}
    timings["reprojection"] = time.perf_counter() - t
    return Prediction(
        volume_hu=volume_hu,
        grid=CanonicalGrid(size=volume_hu.shape[0]),
        model=model,
        views=prepared,
        reprojections=reprojections,
        consistency=consistency,
        timings_s=timings,
        warnings=[f"{view}: {note}" for view, p in prepared.items() for note in p.radiograph.warnings],
    )
