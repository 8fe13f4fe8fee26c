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
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple, Union

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
from .synthetic_ct import synthetic_ct_image, synthetic_map_image

NORMALIZATION = "per-image min-max to [0, 1]"
"""Intensity matching of the inputs (as the training DRRs: min-max of each image)."""

OUTPUT_CT = "synthetic_ct.nrrd"
OUTPUT_SUMMARY = "summary.json"
OUTPUT_REPORT = "report.png"
OUTPUT_DICOM = "dicom"
OUTPUT_FINDINGS = "findings.json"
OUTPUT_GRADCAM = "gradcam"
OUTPUT_UNCERTAINTY = "uncertainty_sd_hu.nrrd"

DEFAULT_STOCHASTIC_SAMPLES = 8
"""Samples per case of a stochastic (diffusion) generator when none are asked for (UPath-X2CT draws 8)."""
DEFAULT_GUIDANCE = 0.0
"""Radiograph-consistency guidance weight when none is asked for: none (guidance back-propagates through the
decoder and the projector at every sampling step, several times slower)."""

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
# Options of one run


@dataclass(frozen=True)
class GenerationOptions:
    """What a run does besides the model's defaults (``x2ct predict --style/--samples/--sampler-steps/--guidance/
    --seed``, the Slicer module's controls).

    ``style``: a style model (bundled name or path, :func:`x2ct.inference.style.load_style`) that translates each
    preprocessed radiograph to DRR style before the generator; None: none. The others apply to stochastic
    (diffusion) generators only: ``samples`` K per case (None: 1 for deterministic models,
    :data:`DEFAULT_STOCHASTIC_SAMPLES` for stochastic ones), ``sampler_steps`` (None: the model's default),
    ``guidance`` weight of the radiograph-consistent sampling (None: :data:`DEFAULT_GUIDANCE`), ``seed`` of the
    sampler (None: 0). Raises InputError for a value out of range (``samples``/``sampler_steps`` < 1,
    ``guidance`` < 0).
    """

    style: Optional[str] = None
    samples: Optional[int] = None
    sampler_steps: Optional[int] = None
    guidance: Optional[float] = None
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        for flag, value in (("--samples", self.samples), ("--sampler-steps", self.sampler_steps)):
            if value is not None and value < 1:
                raise InputError(None, f"{flag} must be at least 1, got {value}")
        if self.guidance is not None and not self.guidance >= 0:
            raise InputError(None, f"--guidance must be a weight >= 0, got {self.guidance}")

    @property
    def sampling_asked(self) -> List[str]:
        """The sampling options given that a deterministic model cannot honour (``samples`` 1 is honoured)."""
        given = {
            "--samples": self.samples is not None and self.samples != 1,
            "--sampler-steps": self.sampler_steps is not None,
            "--guidance": self.guidance is not None,
            "--seed": self.seed is not None,
        }
        return [flag for flag, asked in given.items() if asked]


@dataclass(frozen=True)
class StyleRecord:
    """The style model a run applied to its inputs: ``name``, ``path`` and the sha256 of its weights."""

    name: str
    path: str
    sha256: Optional[str]

    def to_dict(self) -> Dict[str, Any]:
        """The ``summary.json`` record."""
        return {"name": self.name, "path": self.path, "sha256": self.sha256}


@dataclass(frozen=True)
class SamplingRecord:
    """How a stochastic generator was sampled: ``samples`` K, ``sampler`` ("ddim", "ddpm"), ``steps`` (None: the
    model's default, when it does not say how many that is), ``guidance`` weight, ``seed``."""

    samples: int
    sampler: str
    steps: Optional[int]
    guidance: float
    seed: int

    def to_dict(self) -> Dict[str, Any]:
        """The ``summary.json`` record."""
        return {"samples": self.samples, "sampler": self.sampler, "steps": self.steps, "guidance": self.guidance,
                "seed": self.seed}


class OODRecord(Protocol):
    """What the pipeline needs of an out-of-distribution score (:class:`x2ct.inference.ood.OODScore`): the score,
    the calibrated threshold (None: uncalibrated), whether it is flagged, per-view scores, the method in words."""

    score: float
    threshold: Optional[float]
    flagged: bool
    per_view: Dict[str, float]
    method: str

    def to_dict(self) -> Dict[str, Any]: ...


# --------------------------------------------------------------------------------------------------
# Inputs


@dataclass
class PreparedView:
    """One input radiograph in the model's input space.

    ``radiograph``: as read. ``model_input``: float32 (size, size) in [0, 1], display orientation of
    the view (rows S->I; PA columns R->L, lateral columns A->P): what the generator saw. ``frame``: where that
    square lies on the radiograph. ``record``: what was done (JSON, the ``inputs`` entry of ``summary.json``).
    ``before_style``: the preprocessed radiograph before a style model translated it into ``model_input``
    (same shape), None when no style was applied.
    """

    radiograph: Radiograph
    model_input: np.ndarray
    frame: InputFrame
    record: Dict[str, Any]
    before_style: Optional[np.ndarray] = None


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
    ran; ``heat_maps``: their Grad-CAM maps. ``style``: the style model applied to the inputs (None: none).
    ``ood``: how far the inputs are from the model's training domain (None: the model has no reference).
    Stochastic generators: ``sampling`` says how they were sampled, ``volume_hu`` is the mean of the samples and
    ``uncertainty_sd_hu`` the per-voxel standard deviation over them (float32 HU, (D, H, W) on ``grid``; None
    for deterministic models and for a single sample).
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
    style: Optional[StyleRecord] = None
    ood: Optional[OODRecord] = None
    sampling: Optional[SamplingRecord] = None
    uncertainty_sd_hu: Optional[np.ndarray] = None

    def image(self) -> sitk.Image:
        """The synthetic CT as written (:func:`x2ct.inference.synthetic_ct.synthetic_ct_image`): int16 HU, LPS."""
        return synthetic_ct_image(self.volume_hu, self.grid, self.model.name, self.model.sha256)

    def uncertainty_image(self) -> Optional[sitk.Image]:
        """The per-voxel SD map as written (``uncertainty_sd_hu.nrrd``): float32 HU on the CT's grid, with the CT's
        header entries (:func:`x2ct.inference.synthetic_ct.synthetic_map_image`); None without one."""
        if self.uncertainty_sd_hu is None:
            return None
        quantity = f"per-voxel standard deviation (HU) over {self.sampling.samples if self.sampling else '?'} samples"
        return synthetic_map_image(self.uncertainty_sd_hu, self.grid, self.model.name, self.model.sha256, quantity)

    @property
    def consistency_score(self) -> float:
        """Mean NCC over the input views."""
        return round(float(np.mean([s["ncc"] for s in self.consistency.values()])), 4)
