"""Disease findings for one prediction: classifier calls and Grad-CAM maps, placed on the outputs' grids.

:func:`x2ct.inference.predict.predict` calls :func:`run_classifiers` after the generator stages when
classifiers are given (``x2ct predict`` and ``x2ct demo`` use the bundled ones).

Inputs each classifier gets, exactly as in its training (contract in docs/classifiers.md), by input key:

* ``pa`` / ``lateral``: the generator's preprocessed input of that view (field of view, size,
  per-image min-max, 8-bit quantisation; :func:`x2ct.inference.preprocess.preprocess`), resized
  bilinearly to the classifier's input size when that differs;
* ``ct``: the synthetic CT as written to ``synthetic_ct.nrrd`` (HU rounded to integers) in the unit
  scale of :mod:`x2ct.intensity`, resampled to the classifier's grid with
  :func:`x2ct.data.loader.ct_to_unit` (what training on ``x2ct synthesize-ct`` output used).

One :class:`~x2ct.inference.types.Finding` per classifier output, with ``guided_peak``: per input,
where the output's Guided Grad-CAM map (:func:`x2ct.gradcam.guided_grad_cam`) peaks
(:func:`guided_peak`).

Grad-CAM maps (:class:`~x2ct.inference.types.HeatMaps`, values in [0, 1]): CT maps are (D, H, W) on the
synthetic CT's canonical grid (trilinear resampling when the classifier's grid differs,
corner-aligned like the CT's own resize in :func:`x2ct.data.loader.ct_to_unit`); radiograph maps are
mapped back from the model-input square to the radiograph's own pixels by the view's
:class:`~x2ct.inference.frame.InputFrame` (zero outside the window the model saw), so they overlay the
radiograph as read, pixel for pixel.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from ..classify.tasks import get_task
from ..data.loader import ct_to_unit
from ..errors import InputError
from ..gradcam import constant_along_ap, grad_cam_and_guided
from ..intensity import HU_OFFSET
from ..views import CT_KEY, LATERAL_KEY, PA_KEY, view_of_key
from .frame import resample
from .synthetic_ct import SYNTHETIC_NOTE
from .types import (
    Finding,
    GuidedPeak,
    HeatMaps,
    LoadedClassifier,
    Prediction,
    RadiographPeak,
    VolumePeak,
)

INPUT_WORDS = {PA_KEY: "PA radiograph", LATERAL_KEY: "lateral radiograph", CT_KEY: "synthetic CT"}
"""Words for each classifier input key (``Finding.inputs``)."""

OUTPUT_WORDS = {
    "tb_present": "Tuberculosis present",
    "tb_granuloma": "TB type: granuloma",
    "tb_cavitation": "TB type: cavitation",
    "tb_calcification": "TB type: calcification",
    "tb_active": "Active TB (vs sequelae)",
    "pe_present": "Pulmonary embolism present",
}
"""Words for each label column (findings table, report)."""

CORONAL_NOTE = "two-slice model: the map has no anterior-posterior position"


def classifier_batch(
    prediction: Prediction, classifier: LoadedClassifier, device: torch.device
) -> Dict[str, torch.Tensor]:
    """The batch of one case for ``classifier`` from ``prediction`` (module doc); InputError for a missing view."""
    batch: Dict[str, torch.Tensor] = {}
    for key in classifier.inputs:
        size = classifier.metadata.input_size(key)
        if key == CT_KEY:
            hu = sitk.GetArrayFromImage(prediction.image()).astype(np.float32)  # as synthetic_ct.nrrd holds it
            unit = ct_to_unit(hu + np.float32(HU_OFFSET), size)
            batch[CT_KEY] = torch.from_numpy(unit)[None, None]
            continue
        view = view_of_key(key)
        if view not in prediction.views:
            raise InputError(None, f"classifier {classifier.name} needs a {INPUT_WORDS[key]}, which this case lacks")
        model_input = prediction.views[view].model_input
        batch[key] = torch.from_numpy(resample(model_input, (size, size)))[None, None]
    return {k: v.to(device) for k, v in batch.items()}


def guided_peak(key: str, guided: np.ndarray, prediction: Prediction) -> Optional[GuidedPeak]:
    """Where a Guided Grad-CAM map on a classifier's input grid peaks, in the outputs' coordinates.

    * ``ct`` ((n, n, n) map; the classifier's CT was the synthetic CT resized corner-aligned by
      :func:`x2ct.data.loader.ct_to_unit`, so its voxel c lies at c·(N - 1)/(n - 1) on the N³ grid): a
      :class:`VolumePeak`, the peak voxel's centre in patient coordinates (mm, rounded to 0.1). A
      two-slice model's map carries no anterior-posterior position (:func:`x2ct.gradcam.constant_along_ap`):
      y is None, with a note.
    * ``pa`` / ``lateral`` ((S, S) map on the model-input square): a :class:`RadiographPeak` on the
      radiograph as read (:meth:`x2ct.inference.frame.InputFrame.radiograph_rc`, rounded to 0.1 pixel).

    None for an all-zero map (no input voxel raises the logit).
    """
    if not guided.max() > 0:
        return None
    if key == CT_KEY:
        coronal = constant_along_ap(guided)
        d, h, w = np.unravel_index(int(np.argmax(guided)), guided.shape)
        scale = (prediction.grid.size - 1) / (guided.shape[0] - 1)
        ijk = np.array([w * scale, h * scale, d * scale, 1.0])
        lps, ras = (prediction.grid.ijk_to_lps() @ ijk)[:3], (prediction.grid.ijk_to_ras() @ ijk)[:3]
        known = (True, not coronal, True)
        lps_mm, ras_mm = (tuple(round(float(v), 1) if ok else None for v, ok in zip(xyz, known)) for xyz in (lps, ras))
        return VolumePeak(lps_mm=lps_mm, ras_mm=ras_mm, note=CORONAL_NOTE if coronal else None)
    frame = prediction.views[view_of_key(key)].frame
    r, c = np.unravel_index(int(np.argmax(guided)), guided.shape)
    row, column = frame.radiograph_rc(r, c, guided.shape)
    return RadiographPeak(pixel_rc=(round(float(row), 1), round(float(column), 1)))


def _notes(classifier: LoadedClassifier, prediction: Prediction, output: str) -> List[str]:
    notes = []
    task = get_task(classifier.task.name)
    if task.only_if and task.only_if != output:
        notes.append(f"applies only when {OUTPUT_WORDS.get(task.only_if, task.only_if)} (trained on such cases only)")
    source = classifier.ct_source
    if CT_KEY in classifier.inputs and source and source != prediction.model.name:
        trained_on = "real CTs" if source == "real" else f"synthetic CTs of {source}"
        notes.append(
            f"trained on {trained_on}, applied to synthetic CTs of {prediction.model.name}: expect another calibration"
        )
    return notes


def run_classifiers(prediction: Prediction, classifiers: Sequence[LoadedClassifier]) -> Tuple[List[Finding], HeatMaps]:
    """(findings, Grad-CAM maps) of ``classifiers`` on ``prediction`` (module doc for both)."""
    findings: List[Finding] = []
    heat_maps = HeatMaps()
    grid_shape = tuple(prediction.volume_hu.shape)
    for classifier in classifiers:
        device = next(classifier.net.parameters()).device
        batch = classifier_batch(prediction, classifier, device)
        with torch.inference_mode():
            logits = classifier.net(batch)[0].float().cpu().numpy()
        thresholds = classifier.metadata.thresholds()
        for index, output in enumerate(classifier.outputs):
            coarse, fine = grad_cam_and_guided(classifier.net, batch, index)
            probability = 1.0 / (1.0 + math.exp(-float(logits[index])))
            threshold = thresholds[output]
            findings.append(
                Finding(
                    task=classifier.task.name,
                    output=output,
                    label=OUTPUT_WORDS.get(output, output),
                    probability=round(probability, 4),
                    threshold=round(threshold, 4),
                    call="positive" if probability >= threshold else "negative",
                    model=classifier.name,
                    weights_sha256=classifier.metadata.sha256,
                    inputs=[INPUT_WORDS[key] for key in classifier.inputs],
                    ct_source=classifier.ct_source,
                    notes=_notes(classifier, prediction, output),
                    guided_peak={key: guided_peak(key, guided, prediction) for key, guided in fine.items()},
                )
            )
            for key, cam in coarse.items():
                if key == CT_KEY:
                    heat_maps.ct[output] = np.clip(resample(cam, grid_shape, corners=True), 0.0, 1.0)
                else:
                    view = view_of_key(key)
                    placed = np.clip(prediction.views[view].frame.to_radiograph(cam), 0.0, 1.0)
                    heat_maps.radiographs.setdefault(view, {})[output] = placed
    return findings, heat_maps


def findings_document(prediction: Prediction) -> Dict[str, Any]:
    """The ``findings.json`` record of ``prediction`` (JSON-serialisable; ``gradcam`` lists the heat maps'
    outputs per on-disk input key)."""
    return {
        "synthetic": SYNTHETIC_NOTE,
        "disclaimer": "demonstration classifiers trained on synthetic cases of one CT; not for diagnosis",
        "generator": {"name": prediction.model.name, "weights_sha256": prediction.model.sha256},
        "findings": [finding.to_dict() for finding in prediction.findings],
        "gradcam": {key: sorted(maps) for key, maps in prediction.heat_maps.by_input_key().items()},
    }
