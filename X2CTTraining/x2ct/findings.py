"""Disease findings for one prediction: classifier calls and Grad-CAM maps, placed on the outputs' grids.

:func:`x2ct.pipeline.predict` calls :func:`run_classifiers` after the generator when classifiers are
given (``x2ct predict`` and ``x2ct demo`` use the bundled ones, :func:`bundled_classifier_names`).

Inputs each classifier gets, exactly as in its training (contract in docs/classifiers.md):

* ``pa`` / ``lateral``: the generator's preprocessed input of that view (field of view, size,
  per-image min-max, 8-bit quantisation; :func:`x2ct.pipeline.preprocess`), resized bilinearly to the
  classifier's input size when that differs;
* ``ct``: the synthetic CT as written to ``synthetic_ct.nrrd`` (HU rounded to integers) in the unit
  scale of :mod:`x2ct.intensity`, resampled to the classifier's grid with
  :func:`x2ct.data.loader.ct_to_unit` (what training on ``x2ct synthesize-ct`` output used).

One finding per classifier output (``findings.json``): ``task``, ``output`` (label column),
``label`` (words), ``probability`` (sigmoid of the logit), ``threshold`` (frozen Youden point from
the classifier's validation split), ``call`` ("positive" when probability >= threshold),
``model``, ``weights_sha256``, ``inputs`` (which of X-ray / synthetic CT it used), ``ct_source``
(the generator whose CTs it was trained on), ``notes`` (e.g. a generator mismatch, or "applies
only when TB is present") and ``guided_peak``: per input, where the output's Guided Grad-CAM map
(:func:`x2ct.gradcam.guided_grad_cam`) peaks (:func:`guided_peak`).

Grad-CAM maps (``cams[input][output]``, values in [0, 1]): ``ct`` maps are (D, H, W) on the
synthetic CT's canonical grid (trilinear resampling when the classifier's grid differs, corner-aligned
like the CT's own resize in :func:`x2ct.data.loader.ct_to_unit`); ``pa`` /
``lateral`` maps are mapped back from the model-input frame to the radiograph's own pixels (the
inverse of preprocessing's crop/pad and resize; zero outside the window the model saw), so they
overlay the radiograph as read, pixel for pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from .classify.checkpoint import load_classifier, thresholds_of
from .classify.tasks import get_task
from .data.loader import ct_to_unit
from .errors import InputError, PathLike
from .gradcam import constant_along_ap, grad_cam_and_guided
from .intensity import HU_OFFSET
from .models.classifiers import ClassifierNet
from .resources import bundled_names, resources_dir
from .views import LATERAL, PA

if TYPE_CHECKING:
    from .pipeline import Prediction, PreparedView

CLASSIFIERS_FOLDER = "Classifiers"
"""Folder of ``Resources`` that holds the bundled classifiers (one sub-folder per model)."""

INPUT_WORDS = {"pa": "PA radiograph", "lateral": "lateral radiograph", "ct": "synthetic CT"}

OUTPUT_WORDS = {
    "tb_present": "Tuberculosis present",
    "tb_granuloma": "TB type: granuloma",
    "tb_cavitation": "TB type: cavitation",
    "tb_calcification": "TB type: calcification",
    "tb_active": "Active TB (vs sequelae)",
    "pe_present": "Pulmonary embolism present",
}
"""Words for each label column (findings table, report)."""

_VIEW_OF_INPUT = {"pa": PA, "lateral": LATERAL}


@dataclass
class LoadedClassifier:
    """A classifier ready to run: ``net`` in eval mode, its verified ``metadata`` and display ``name``."""

    name: str
    net: ClassifierNet
    metadata: Dict[str, Any]

    @property
    def outputs(self) -> Tuple[str, ...]:
        return tuple(self.metadata["outputs"])

    @property
    def inputs(self) -> Tuple[str, ...]:
        return tuple(self.net.inputs)

    @property
    def ct_source(self) -> Optional[str]:
        """What the classifier's CT input was in training: the generator's name for synthetic CTs
        (``x2ct synthesize-ct``), ``"real"`` for the data set's CTs, None without a CT input."""
        source = (self.metadata.get("training_data") or {}).get("ct_source") or {}
        if source.get("kind") == "real":
            return "real"
        return (source.get("generator") or {}).get("model")


def classifiers_dir() -> Path:
    """``Resources/Classifiers``."""
    return resources_dir() / CLASSIFIERS_FOLDER


def bundled_classifier_names() -> List[str]:
    """Names of the bundled classifiers (folders of ``Resources/Classifiers`` holding a ``model.json``)."""
    return bundled_names(CLASSIFIERS_FOLDER)


def load_classifiers(
    names: Optional[Sequence[PathLike]] = None, device: Union[str, torch.device] = "cpu"
) -> List[LoadedClassifier]:
    """Load classifiers by bundled name or path (folder, ``model.json`` or training run); ``None``: all bundled."""
    chosen = bundled_classifier_names() if names is None else list(names)
    loaded = []
    for item in chosen:
        bundled = classifiers_dir() / str(item) if str(item) in bundled_classifier_names() else None
        path = bundled if bundled is not None else Path(item)
        if bundled is None and not path.exists():
            known = ", ".join(bundled_classifier_names()) or "none"
            raise InputError(path, f"no such classifier (bundled ones: {known})")
        net, metadata = load_classifier(path, device)
        loaded.append(LoadedClassifier(name=path.name if bundled is None else str(item), net=net, metadata=metadata))
    return loaded


# --------------------------------------------------------------------------------------------------
# Inputs and map placement


def _resample(array: np.ndarray, shape: Tuple[int, ...], corners: bool = False) -> np.ndarray:
    """Bilinear (2D) or trilinear (3D) resampling, no anti-aliasing (for maps and same-scale inputs), of a
    float array; float32, unchanged when the shape already matches. Half-pixel centres by default;
    ``corners``: first and last samples on the first and last positions (the inverse of
    :func:`x2ct.data.loader.ct_to_unit`'s resize, for maps on a classifier's CT grid)."""
    if array.shape == tuple(shape):
        return array.astype(np.float32, copy=False)
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    mode = "bilinear" if array.ndim == 2 else "trilinear"
    return F.interpolate(tensor, size=tuple(shape), mode=mode, align_corners=corners)[0, 0].numpy()


def classifier_batch(
    prediction: Prediction, classifier: LoadedClassifier, device: torch.device
) -> Dict[str, torch.Tensor]:
    """The batch of one case for ``classifier`` from ``prediction`` (module doc); InputError for a missing view."""
    sizes = classifier.metadata.get("input_sizes", {})
    batch: Dict[str, torch.Tensor] = {}
    for key in classifier.inputs:
        if key == "ct":
            hu = sitk.GetArrayFromImage(prediction.image()).astype(np.float32)  # as synthetic_ct.nrrd holds it
            unit = ct_to_unit(hu + np.float32(HU_OFFSET), int(sizes.get("ct", hu.shape[0])))
            batch["ct"] = torch.from_numpy(unit)[None, None]
            continue
        view = _VIEW_OF_INPUT[key]
        if view not in prediction.views:
            raise InputError(None, f"classifier {classifier.name} needs a {INPUT_WORDS[key]}, which this case lacks")
        model_input = prediction.views[view].model_input
        size = int(sizes.get(key, model_input.shape[0]))
        batch[key] = torch.from_numpy(_resample(model_input, (size, size)))[None, None]
    return {k: v.to(device) for k, v in batch.items()}


def guided_peak(key: str, guided: np.ndarray, prediction: Prediction) -> Optional[Dict[str, Any]]:
    """Where a Guided Grad-CAM map on a classifier's input grid peaks, in the outputs' coordinates.

    * ``ct`` ((n, n, n) map; the classifier's CT was the synthetic CT resized corner-aligned by
      :func:`x2ct.data.loader.ct_to_unit`, so its voxel c lies at c·(N - 1)/(n - 1) on the N³ grid):
      ``{"lps_mm": [x, y, z], "ras_mm": [...]}``, the peak voxel's centre in patient coordinates (mm).
      A two-slice model's map carries no anterior-posterior position (:func:`x2ct.gradcam.constant_along_ap`):
      y is None, with a note.
    * ``pa`` / ``lateral`` ((S, S) map on the model-input square): ``{"pixel_rc": [row, column]}`` in
      the radiograph as read (rows top to bottom, half-pixel convention of :func:`to_radiograph_frame`).

    None for an all-zero map (no input voxel raises the logit).
    """
    if not guided.max() > 0:
        return None
    if key == "ct":
        coronal = constant_along_ap(guided)
        d, h, w = np.unravel_index(int(np.argmax(guided)), guided.shape)
        scale = (prediction.grid.size - 1) / (guided.shape[0] - 1)
        ijk = np.array([w * scale, h * scale, d * scale, 1.0])
        lps, ras = (prediction.grid.ijk_to_lps() @ ijk)[:3], (prediction.grid.ijk_to_ras() @ ijk)[:3]
        known = [True, not coronal, True]
        peak: Dict[str, Any] = {
            name: [round(float(v), 1) if ok else None for v, ok in zip(xyz, known)]
            for name, xyz in (("lps_mm", lps), ("ras_mm", ras))
        }
        if coronal:
            peak["note"] = "two-slice model: the map has no anterior-posterior position"
        return peak
    box = prediction.views[_VIEW_OF_INPUT[key]].record["window_px"]
    r, c = np.unravel_index(int(np.argmax(guided)), guided.shape)
    row = int(box["top"]) + (r + 0.5) * int(box["rows"]) / guided.shape[0] - 0.5
    column = int(box["left"]) + (c + 0.5) * int(box["cols"]) / guided.shape[1] - 0.5
    return {"pixel_rc": [round(float(row), 1), round(float(column), 1)]}


def to_radiograph_frame(cam: np.ndarray, prepared: PreparedView) -> np.ndarray:
    """A map on the model-input square of ``prepared`` -> the radiograph's own pixel grid (rows, cols).

    Inverts preprocessing's geometry: the square covered ``window_px`` (top, left, rows, cols) of the
    radiograph (negative offsets = zero padding). The map is resized to that window and pasted; the
    parts of the radiograph outside the window get 0.
    """
    box = prepared.record["window_px"]
    window = _resample(cam, (int(box["rows"]), int(box["cols"])))
    rows, cols = np.asarray(prepared.radiograph.pixels).shape
    out = np.zeros((rows, cols), dtype=np.float32)
    top, left = int(box["top"]), int(box["left"])
    r0, r1 = max(top, 0), min(top + window.shape[0], rows)
    c0, c1 = max(left, 0), min(left + window.shape[1], cols)
    out[r0:r1, c0:c1] = window[r0 - top : r1 - top, c0 - left : c1 - left]
    return np.clip(out, 0.0, 1.0)


# --------------------------------------------------------------------------------------------------
# Running


def _notes(classifier: LoadedClassifier, prediction: Prediction, output: str) -> List[str]:
    notes = []
    task = get_task(str(classifier.metadata["task"]))
    if task.only_if and task.only_if != output:
        notes.append(f"applies only when {OUTPUT_WORDS.get(task.only_if, task.only_if)} (trained on such cases only)")
    source = classifier.ct_source
    if "ct" in classifier.inputs and source and source != prediction.model.name:
        trained_on = "real CTs" if source == "real" else f"synthetic CTs of {source}"
        notes.append(
            f"trained on {trained_on}, applied to synthetic CTs of {prediction.model.name}: expect another calibration"
        )
    return notes


def run_classifiers(
    prediction: Prediction, classifiers: Sequence[LoadedClassifier]
) -> Tuple[List[Dict[str, Any]], Dict[str, Dict[str, np.ndarray]]]:
    """(findings, Grad-CAM maps) of ``classifiers`` on ``prediction`` (module doc for both formats)."""
    findings: List[Dict[str, Any]] = []
    cams: Dict[str, Dict[str, np.ndarray]] = {}
    grid_shape = tuple(prediction.volume_hu.shape)
    for classifier in classifiers:
        device = next(classifier.net.parameters()).device
        batch = classifier_batch(prediction, classifier, device)
        with torch.inference_mode():
            logits = classifier.net(batch)[0].float().cpu().numpy()
        thresholds = thresholds_of(classifier.metadata)
        for index, output in enumerate(classifier.outputs):
            coarse, fine = grad_cam_and_guided(classifier.net, batch, index)
            probability = 1.0 / (1.0 + math.exp(-float(logits[index])))
            threshold = thresholds[output]
            findings.append(
                {
                    "task": str(classifier.metadata["task"]),
                    "output": output,
                    "label": OUTPUT_WORDS.get(output, output),
                    "probability": round(probability, 4),
                    "threshold": round(threshold, 4),
                    "call": "positive" if probability >= threshold else "negative",
                    "model": classifier.name,
                    "weights_sha256": classifier.metadata.get("sha256"),
                    "inputs": [INPUT_WORDS[key] for key in classifier.inputs],
                    "ct_source": classifier.ct_source,
                    "notes": _notes(classifier, prediction, output),
                    "guided_peak": {key: guided_peak(key, guided, prediction) for key, guided in fine.items()},
                }
            )
            for key, cam in coarse.items():
                if key == "ct":
                    placed = np.clip(_resample(cam, grid_shape, corners=True), 0.0, 1.0)
                else:
                    placed = to_radiograph_frame(cam, prediction.views[_VIEW_OF_INPUT[key]])
                cams.setdefault(key, {})[output] = placed
    return findings, cams


def findings_document(prediction: Prediction) -> Dict[str, Any]:
    """The ``findings.json`` record of ``prediction`` (JSON-serialisable)."""
    from .pipeline import SYNTHETIC_NOTE

    return {
        "synthetic": SYNTHETIC_NOTE,
        "disclaimer": "demonstration classifiers trained on synthetic cases of one CT; not for diagnosis",
        "generator": {"name": prediction.model.name, "weights_sha256": prediction.model.sha256},
        "findings": prediction.findings,
        "gradcam": {key: sorted(maps) for key, maps in prediction.cams.items()},
    }
