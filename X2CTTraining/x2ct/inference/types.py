"""The records that pass between the inference modules: models, prepared inputs, findings, heat maps, a prediction.

Keys: everything per radiograph on a :class:`Prediction` is keyed by view name (``x2ct.views.PA``,
``x2ct.views.LATERAL``); classifier inputs and the on-disk names (``findings.json``, ``gradcam/``
files) use the input keys of :mod:`x2ct.views` (``pa``, ``lateral``, ``ct``), translated with
``x2ct.views.input_key`` / ``view_of_key`` where they meet.

Axes: volumes are (D, H, W) on the canonical grid of :mod:`x2ct.geometry`; radiographs are (rows,
columns) as in :mod:`x2ct.views`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import SimpleITK as sitk
import torch

from ..drr_geometry import DRRGeometry
from ..errors import InputError
from ..geometry import CanonicalGrid
from ..io import Radiograph
from ..models.classifiers import ClassifierNet
from ..models.metadata import ModelMetadata, TaskSpec
from ..views import CT_KEY, LATERAL, RADIOGRAPH_VIEWS, input_key
from .frame import InputFrame
from .synthetic_ct import synthetic_ct_image

NORMALIZATION = "per-image min-max to [0, 1]"
"""Intensity matching of the inputs (as the training DRRs: min-max of each image)."""

OUTPUT_CT = "synthetic_ct.nrrd"
OUTPUT_SUMMARY = "summary.json"
OUTPUT_REPORT = "report.png"
OUTPUT_DICOM = "dicom"
OUTPUT_FINDINGS = "findings.json"
OUTPUT_GRADCAM = "gradcam"

ProgressCallback = Callable[[float, str], None]
"""``progress(fraction in [0, 1], message)``."""
CancelCheck = Callable[[], bool]
"""``cancel() -> True`` to stop at the next stage boundary."""


class PredictionCancelled(Exception):
    """Raised when the ``cancel`` callable answered True; nothing has been written."""


# --------------------------------------------------------------------------------------------------
# Models


@dataclass(frozen=True)
class InputSpec:
    """How radiographs must look to a model (read from its metadata; defaults = official X2CT-GAN).

    ``size``: input pixels per edge (= the output grid edge). ``geometry``: cone-beam geometry (mm) of
    the training DRRs; ``drr_size``: their pixels per edge. Intensities are always per-image min-max
    (the only normalisation of official and x2ct training DRRs); ``quantize_bits``: 8 when training
    inputs were 8-bit images, None for float inputs.
    """

    size: int = 128
    geometry: DRRGeometry = field(default_factory=DRRGeometry)
    drr_size: int = 128
    quantize_bits: Optional[int] = 8

    @property
    def fov_mm(self) -> float:
        """Field of view at the isocentre (mm) of the training DRRs: detector edge / magnification."""
        return self.geometry.detector_mm / self.geometry.magnification

    def to_dict(self) -> Dict[str, Any]:
        """JSON-serialisable record."""
        return {
            "size": self.size,
            "fov_mm_at_isocenter": round(self.fov_mm, 3),
            "drr_geometry_mm": {
                "sad": self.geometry.sad_mm,
                "sid": self.geometry.sid_mm,
                "detector": self.geometry.detector_mm,
            },
            "drr_size": self.drr_size,
            "normalization": NORMALIZATION,
            "quantize_bits": self.quantize_bits,
        }


@dataclass
class LoadedModel:
    """A generator ready for inference with the facts the pipeline needs about it (``views``: view names)."""

    module: torch.nn.Module
    name: str
    path: str
    architecture: str
    views: Tuple[str, ...]
    sha256: Optional[str]
    spec: InputSpec
    metadata: ModelMetadata
    device: torch.device

    @property
    def biplanar(self) -> bool:
        """True when the model takes a PA and a lateral radiograph."""
        return LATERAL in self.views


@dataclass
class LoadedClassifier:
    """A classifier ready to run: ``net`` in eval mode, its verified ``metadata`` and display ``name``."""

    name: str
    net: ClassifierNet
    metadata: ModelMetadata

    @property
    def task(self) -> TaskSpec:
        """Its task: name, outputs (label columns, in logit order) and frozen thresholds."""
        if self.metadata.task is None:
            raise InputError(self.metadata.path, "not a classifier: no task in the model metadata")
        return self.metadata.task

    @property
    def outputs(self) -> Tuple[str, ...]:
        """Its label columns, in logit order."""
        return self.task.outputs

    @property
    def inputs(self) -> Tuple[str, ...]:
        """The input keys it was trained on (``pa``, ``lateral``, ``ct``)."""
        return self.metadata.input_keys

    @property
    def ct_source(self) -> Optional[str]:
        """What the classifier's CT input was in training: the generator's name for synthetic CTs
        (``x2ct synthesize-ct``), ``"real"`` for the data set's CTs, None without a CT input."""
        return self.metadata.ct_source


# --------------------------------------------------------------------------------------------------
# Inputs


@dataclass
class PreparedView:
    """One input radiograph in the model's input space.

    ``radiograph``: as read. ``model_input``: float32 (size, size) in [0, 1], display orientation of
    the view (rows S->I; PA columns R->L, lateral columns A->P). ``frame``: where that square lies on
    the radiograph. ``record``: what was done (JSON, the ``inputs`` entry of ``summary.json``).
    """

    radiograph: Radiograph
    model_input: np.ndarray
    frame: InputFrame
    record: Dict[str, Any]


# --------------------------------------------------------------------------------------------------
# Findings


@dataclass(frozen=True)
class VolumePeak:
    """Where a Guided Grad-CAM map on a CT input peaks: the peak voxel's centre in patient coordinates (mm),
    [x, y, z] in LPS and in RAS. A two-slice model's map has no anterior-posterior position: y is None and
    ``note`` says why."""

    lps_mm: Tuple[Optional[float], Optional[float], Optional[float]]
    ras_mm: Tuple[Optional[float], Optional[float], Optional[float]]
    note: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        """The ``findings.json`` record: ``lps_mm``, ``ras_mm`` and, when there is one, ``note``."""
        record: Dict[str, Any] = {"lps_mm": list(self.lps_mm), "ras_mm": list(self.ras_mm)}
        if self.note is not None:
            record["note"] = self.note
        return record


@dataclass(frozen=True)
class RadiographPeak:
    """Where a Guided Grad-CAM map on a radiograph input peaks: (row, column) on the radiograph as read (pixels,
    rows top to bottom, half-pixel convention of :class:`x2ct.inference.frame.InputFrame`)."""

    pixel_rc: Tuple[float, float]

    def to_dict(self) -> Dict[str, Any]:
        """The ``findings.json`` record: ``pixel_rc``."""
        return {"pixel_rc": list(self.pixel_rc)}


GuidedPeak = Union[VolumePeak, RadiographPeak]


@dataclass
class Finding:
    """One classifier output on one case (an entry of ``findings.json``).

    ``probability``: sigmoid of the logit; ``threshold``: the frozen Youden point of the classifier's
    validation split; ``call``: "positive" when probability >= threshold, else "negative". ``model`` and
    ``weights_sha256``: the classifier. ``inputs``: in words, which of X-ray / synthetic CT it used.
    ``ct_source``: the generator whose CTs it was trained on ("real" for real CTs, None without a CT
    input). ``guided_peak``: per classifier input key (``ct``, ``pa``, ``lateral``, in the classifier's
    order), where the output's Guided Grad-CAM map peaks, None for an all-zero map.
    """

    task: str
    output: str
    label: str
    probability: float
    threshold: float
    call: str
    model: str
    weights_sha256: Optional[str]
    inputs: List[str]
    ct_source: Optional[str]
    notes: List[str]
    guided_peak: Dict[str, Optional[GuidedPeak]]

    def to_dict(self) -> Dict[str, Any]:
        """The ``findings.json`` record (JSON-serialisable, keys in the documented order)."""
        return {
            "task": self.task,
            "output": self.output,
            "label": self.label,
            "probability": self.probability,
            "threshold": self.threshold,
            "call": self.call,
            "model": self.model,
            "weights_sha256": self.weights_sha256,
            "inputs": list(self.inputs),
            "ct_source": self.ct_source,
            "notes": list(self.notes),
            "guided_peak": {key: None if peak is None else peak.to_dict() for key, peak in self.guided_peak.items()},
        }


@dataclass
class HeatMaps:
    """Grad-CAM maps in [0, 1] by finding output: ``ct[output]`` float32 (D, H, W) on the synthetic CT's grid;
    ``radiographs[view][output]`` float32 with the shape of that radiograph as read (aligned pixel for pixel)."""

    ct: Dict[str, np.ndarray] = field(default_factory=dict)
    radiographs: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)

    def by_input_key(self) -> Dict[str, Dict[str, np.ndarray]]:
        """The maps under the on-disk input keys: ``ct`` first, then ``pa``, ``lateral`` (those that have maps)."""
        maps = {CT_KEY: self.ct} if self.ct else {}
        for view in RADIOGRAPH_VIEWS:
            if self.radiographs.get(view):
                maps[input_key(view)] = self.radiographs[view]
        return maps


# --------------------------------------------------------------------------------------------------
# Prediction


@dataclass
class Prediction:
    """Everything one run produced.

    ``volume_hu``: float32 (D, H, W) synthetic CT in HU on ``grid``. ``views``, ``reprojections`` ((S, S)
    in the model's input space) and ``consistency`` ({"ncc", "ssim"}) are keyed by view name.
    ``timings_s``: seconds per stage. ``findings``: one per classifier output, empty when no classifier
    ran; ``heat_maps``: their Grad-CAM maps.
    """

    volume_hu: np.ndarray
    grid: CanonicalGrid
    model: LoadedModel
    views: Dict[str, PreparedView]
    reprojections: Dict[str, np.ndarray]
    consistency: Dict[str, Dict[str, float]]
    timings_s: Dict[str, float]
    warnings: List[str]
    findings: List[Finding] = field(default_factory=list)
    heat_maps: HeatMaps = field(default_factory=HeatMaps)

    def image(self) -> sitk.Image:
        """The synthetic CT as written (:func:`x2ct.inference.synthetic_ct.synthetic_ct_image`): int16 HU, LPS."""
        return synthetic_ct_image(self.volume_hu, self.grid, self.model.name, self.model.sha256)

    @property
    def consistency_score(self) -> float:
        """Mean NCC over the input views."""
        return round(float(np.mean([s["ncc"] for s in self.consistency.values()])), 4)
