"""The one inference pipeline: chest radiographs -> synthetic CT (and findings), shared by ``x2ct predict``,
``x2ct demo``, the Slicer module and batch scripts.

:func:`predict` runs the generator stages of :mod:`x2ct.inference.run` (input rules, preprocessing,
generator, HU volume, re-projection check), then the classifiers when given
(:mod:`x2ct.inference.findings`). :func:`predict_to_folder` checks, predicts and writes one case
(:func:`x2ct.inference.outputs.write_prediction`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Optional, Sequence, Union

from ..atomic import exclusive_output
from ..errors import InputError, PathLike
from ..io import Radiograph
from ..views import LATERAL, PA
from .findings import run_classifiers
from .models import ModelCache
from .outputs import check_output_dir, write_prediction
from .preprocess import read_input
from .run import generate, stage
from .types import CancelCheck, GenerationOptions, LoadedClassifier, LoadedModel, Prediction, ProgressCallback

if TYPE_CHECKING:
    from .style import LoadedStyle


def predict(
    model: LoadedModel,
    pa: Union[PathLike, Radiograph],
    lateral: Union[PathLike, Radiograph, None] = None,
    force: bool = False,
    view_override: bool = False,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCheck] = None,
    classifiers: Sequence[LoadedClassifier] = (),
    options: Optional[GenerationOptions] = None,
    style: Optional[LoadedStyle] = None,
) -> Prediction:
    """Run the pipeline on one case. ``pa``/``lateral`` are files or already-read radiographs;
    ``classifiers`` (:func:`x2ct.inference.models.load_classifiers`) add findings and Grad-CAM maps;
    ``options`` (style, sampling) and ``style`` (the loaded style of ``options.style``, else loaded here) as in
    :func:`x2ct.inference.run.generate`. ``timings_s``: seconds (rounded to ms) of read, preprocess, [style,]
    generator, reprojection, ood, classifiers, total.

    Raises InputError for a broken input rule (:func:`x2ct.inference.run.generate`);
    :class:`~x2ct.inference.types.PredictionCancelled` when ``cancel()`` says so.
    """
    start = time.perf_counter()
    prediction = generate(model, pa, lateral, force, view_override, progress, cancel, options, style)
    timings = dict(prediction.timings_s)
    if classifiers:
        stage(progress, cancel, 0.8, f"classifiers and Grad-CAM ({len(classifiers)} models)")
        t = time.perf_counter()
        prediction.findings, prediction.heat_maps = run_classifiers(prediction, classifiers)
        timings["classifiers"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start
    prediction.timings_s = {k: round(v, 3) for k, v in timings.items()}
    stage(progress, cancel, 0.9, "prediction done")
    return prediction


def predict_to_folder(
    out_dir: PathLike,
    pa: Optional[PathLike],
    lateral: Optional[PathLike] = None,
    model: Optional[str] = None,
    device: str = "auto",
    dicom: bool = False,
    force: bool = False,
    view_override: bool = False,
    cache: Optional[ModelCache] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCheck] = None,
    classifiers: Optional[Sequence[PathLike]] = None,
    options: Optional[GenerationOptions] = None,
) -> Prediction:
    """Check, predict and write one case into ``out_dir`` (atomically); returns the prediction.

    ``classifiers`` as in :class:`~x2ct.inference.models.ModelCache` (used when no ``cache`` is given).
    ``options``: style and sampling (:class:`~x2ct.inference.types.GenerationOptions`; None: the model's
    defaults, no style); the style model is loaded once by the cache.
    Every user error (InputError) is raised before anything is written; one run at a time writes
    ``out_dir`` (:func:`x2ct.atomic.exclusive_output`: InputError while another holds it).
    """
    if pa is None:
        raise InputError(lateral, "a lateral radiograph needs a PA radiograph (--pa)")
    check_output_dir(out_dir)
    # The radiographs first: a refused input is reported in about a second, before the models load.
    t = time.perf_counter()
    pa_read = pa if isinstance(pa, Radiograph) else read_input(pa, PA, force, view_override)
    lateral_read = lateral if lateral is None or isinstance(lateral, Radiograph) else read_input(
        lateral, LATERAL, force, view_override
    )
    read_s = time.perf_counter() - t
    cache = cache or ModelCache(device, classifiers)
    with exclusive_output(out_dir):
        t = time.perf_counter()
        loaded = cache.get(model, have_lateral=lateral is not None)
        chosen = cache.classifiers(have_lateral=lateral is not None)
        style = cache.style(options.style) if options is not None and options.style is not None else None
        load_s = time.perf_counter() - t
        prediction = predict(
            loaded, pa_read, lateral_read, force, view_override, progress, cancel, chosen, options, style
        )
        prediction.timings_s = {**prediction.timings_s, "read": round(read_s, 3),
                                "total": round(prediction.timings_s["total"] + read_s, 3)}  # fmt: skip
        stage(progress, cancel, 0.95, "writing outputs")
        write_prediction(prediction, out_dir, dicom=dicom, extra_timings={"model_load": round(load_s, 3)})
    if progress is not None:
        progress(1.0, "done")
    return prediction
