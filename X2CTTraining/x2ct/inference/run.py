"""Running a generator: the one generator call, and the generator stages of a prediction.

:func:`run_generator` is how ``x2ct predict``, ``x2ct synthesize-ct`` and ``x2ct evaluate-generator``
call a generator. :func:`generate` runs the stages of one case before the classifiers, each recorded
in the :class:`~x2ct.inference.types.Prediction`:

1. input rules and 2. preprocessing (:mod:`x2ct.inference.preprocess`);
   With a style model (:class:`~x2ct.inference.types.GenerationOptions` ``style``), each preprocessed
   radiograph is translated to DRR style (:func:`x2ct.inference.style.apply_style`) and brought back to the
   model's intensity convention (min-max, quantisation); the view's record names the style and its sha256;
3. **generator**: ``forward(pa[, lateral])`` on the model's device, output (D, H, W) in [0, 1]. A
   stochastic generator (``module.stochastic``, the latent diffusion model) is sampled instead: K samples
   (``module.sample``) with the sampler settings of the options and the model's training DRR geometry;
   the volume is their mean and the per-voxel uncertainty their standard deviation x 2500 in HU (K >= 2 only;
   :func:`x2ct.evaluate.uncertainty.sample_stats_hu`: samples clamped to [0, 1], SD with ddof 1);
4. **volume**: HU = 2500 x - 1024 (:mod:`x2ct.intensity`) on the canonical 320 mm grid centred at the
   origin (LPS, direction diag(1, 1, -1), spacing 320 mm / size, :mod:`x2ct.geometry`);
5. **re-projection check**: the synthetic CT is projected with the cone-beam geometry of the model's
   training DRRs (:mod:`x2ct.drr`), put through the same resize / min-max / quantisation as the inputs
   and compared with each preprocessed input radiograph: Pearson correlation (``ncc``) and SSIM (7x7
   window, data range 1). ``consistency`` is the mean ``ncc`` over the views. A QA number only: high
   values mean the CT explains the radiographs, not that it is anatomically right;
6. **out-of-distribution check**: how far the model inputs are from the model's training domain
   (:func:`x2ct.inference.ood.ood_score`; None when the model has no reference).

``progress(fraction, message)`` is called between stages and ``cancel()`` is polled there
(:func:`stage`); a True answer raises :class:`~x2ct.inference.types.PredictionCancelled`. Sampling a
stochastic generator reports its own progress inside the generator stage and is cancelled at its next step.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Callable, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from skimage.metrics import structural_similarity

from ..drr import project
from ..errors import InputError, PathLike
from ..evaluate.uncertainty import sample_stats_hu
from ..geometry import CanonicalGrid
from ..intensity import unit_to_hu
from ..io import Radiograph
from ..views import LATERAL, LATERAL_KEY, PA, PA_KEY, input_key
from .ood import ood_score
from .preprocess import match_intensity, preprocess, read_input, resize_square
from .types import (
    DEFAULT_GUIDANCE,
    DEFAULT_STOCHASTIC_SAMPLES,
    CancelCheck,
    GenerationOptions,
    InputSpec,
    LoadedModel,
    Prediction,
    PredictionCancelled,
    PreparedView,
    ProgressCallback,
    SamplingRecord,
    StyleRecord,
)

if TYPE_CHECKING:
    from .style import LoadedStyle

SAMPLER = "ddim"
"""The sampler a stochastic generator is run with (deterministic given the seed; UPath-X2CT uses DDIM)."""


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


def check_options(model: LoadedModel, options: GenerationOptions) -> None:
    """Refuse sampling options that ``model`` cannot honour: a deterministic generator given ``--samples`` K > 1,
    ``--sampler-steps``, ``--guidance`` or ``--seed`` (InputError naming the model)."""
    asked = options.sampling_asked
    if asked and not getattr(model.module, "stochastic", False):
        raise InputError(
            model.path,
            f"model {model.name} ({model.architecture}) is deterministic; {', '.join(asked)} apply only to "
            "stochastic (diffusion) generators",
        )


def apply_style_to_views(
    views: Mapping[str, PreparedView], style: LoadedStyle, spec: InputSpec
) -> Tuple[Dict[str, PreparedView], StyleRecord]:
    """Each view's model input translated to DRR style by ``style`` (then min-max and quantised like every model
    input, :func:`match_intensity`); the input before is kept in ``before_style`` and the record names the style."""
    from .style import apply_style

    record = StyleRecord(name=style.name, path=str(style.path), sha256=style.sha256)
    styled = {}
    for view, prepared in views.items():
        translated = match_intensity(apply_style(style, prepared.model_input), spec)
        styled[view] = PreparedView(
            radiograph=prepared.radiograph,
            model_input=translated,
            frame=prepared.frame,
            record={**prepared.record, "style": {"name": style.name, "sha256": style.sha256}},
            before_style=prepared.model_input,
        )
    return styled, record


def sample_generator(
    model: LoadedModel,
    images: Mapping[str, torch.Tensor],
    options: GenerationOptions,
    progress: Optional[Callable[[float], None]] = None,
) -> Tuple[np.ndarray, Optional[np.ndarray], SamplingRecord]:
    """K samples of a stochastic generator for one case (``images`` by input key, (1, 1, S, S) on its device):
    (mean volume in HU, per-voxel SD in HU (float32, None for K = 1), the record), as in
    :func:`x2ct.evaluate.uncertainty.sample_stats_hu`. Sampler settings left None
    in ``options`` are the defaults (steps: the model's; guidance :data:`DEFAULT_GUIDANCE`; seed 0); the DRR
    geometry is the model's training one (guidance)."""
    samples = options.samples or DEFAULT_STOCHASTIC_SAMPLES
    seed = 0 if options.seed is None else options.seed
    guidance = DEFAULT_GUIDANCE if options.guidance is None else options.guidance
    default_steps = getattr(getattr(model.module, "config", None), "sample_steps", None)  # latent diffusion's config
    record = SamplingRecord(samples=samples, sampler=SAMPLER, steps=options.sampler_steps or default_steps,
                            guidance=guidance, seed=seed)  # fmt: skip
    drawn = model.module.sample(
        images[PA_KEY], images.get(LATERAL_KEY), samples=samples, steps=options.sampler_steps, sampler=SAMPLER,
        guidance=guidance, geometry=model.spec.geometry, drr_size=model.spec.drr_size, seed=seed, progress=progress,
    )  # fmt: skip
    unit = drawn[:, 0, 0].detach().float().cpu().numpy()  # (K, D, H, W) unit scale
    if samples == 1:
        return unit_to_hu(unit[0]), None, record
    volume_hu, sd_hu = sample_stats_hu(unit)
    return volume_hu, sd_hu, record


def generate(
    model: LoadedModel,
    pa: Union[PathLike, Radiograph],
    lateral: Union[PathLike, Radiograph, None] = None,
    force: bool = False,
    view_override: bool = False,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCheck] = None,
    options: Optional[GenerationOptions] = None,
    style: Optional[LoadedStyle] = None,
) -> Prediction:
    """Stages 1-6 (module doc) of one case: a prediction without findings. ``pa``/``lateral`` are files or
    already-read radiographs. ``options``: style and sampling (None: the model's defaults, no style); ``style``:
    the loaded style model of ``options.style`` when the caller holds one (else it is loaded here).
    ``timings_s`` holds unrounded seconds of ``read``, ``preprocess``, ``style`` (with a style), ``generator``,
    ``reprojection`` and ``ood``.

    Raises InputError for a broken input rule, including a biplanar model without a lateral and a
    single-view model with one, and for sampling options a deterministic model cannot honour
    (:func:`check_options`); :class:`PredictionCancelled` when ``cancel()`` says so.
    """
    options = options or GenerationOptions()
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
    check_options(model, options)
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
    style_record = None
    if options.style is not None:
        t = time.perf_counter()
        if style is None:
            from .style import load_style

            style = load_style(options.style, model.device)
        stage(progress, cancel, 0.15, f"translating to DRR style with {style.name}")
        prepared, style_record = apply_style_to_views(prepared, style, model.spec)
        timings["style"] = time.perf_counter() - t

    images = {input_key(v): torch.from_numpy(p.model_input)[None, None].to(model.device) for v, p in prepared.items()}
    sd_hu, sampling = None, None
    t = time.perf_counter()
    if getattr(model.module, "stochastic", False):
        samples = options.samples or DEFAULT_STOCHASTIC_SAMPLES
        message = f"sampling {model.name} ({samples} samples) on {model.device}"
        stage(progress, cancel, 0.2, message)

        def step(fraction: float) -> None:
            stage(progress, cancel, 0.2 + 0.5 * min(max(fraction, 0.0), 1.0), f"{message}: {fraction:.0%}")

        volume_hu, sd_hu, sampling = sample_generator(model, images, options, step)
    else:
        stage(progress, cancel, 0.2, f"running {model.name} on {model.device}")
        volume_hu = unit_to_hu(run_generator(model.module, images)[0, 0].cpu().numpy())
    timings["generator"] = time.perf_counter() - t

    stage(progress, cancel, 0.7, "re-projection check")
    t = time.perf_counter()
    reprojections = {view: reproject(volume_hu, view, model.spec, model.device) for view in prepared}
    consistency = {view: consistency_scores(reprojections[view], prepared[view].model_input) for view in prepared}
    timings["reprojection"] = time.perf_counter() - t

    stage(progress, cancel, 0.75, "out-of-distribution check")
    t = time.perf_counter()
    ood = ood_score(model, prepared)
    timings["ood"] = time.perf_counter() - t
    return Prediction(
        volume_hu=volume_hu,
        grid=CanonicalGrid(size=volume_hu.shape[0]),
        model=model,
        views=prepared,
        reprojections=reprojections,
        consistency=consistency,
        timings_s=timings,
        warnings=[f"{view}: {note}" for view, p in prepared.items() for note in p.radiograph.warnings],
        style=style_record,
        ood=ood,
        sampling=sampling,
        uncertainty_sd_hu=sd_hu,
    )
