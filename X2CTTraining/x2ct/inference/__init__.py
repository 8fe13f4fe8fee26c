"""Inference: chest radiographs -> synthetic CT, findings and heat maps (``x2ct predict``, ``x2ct demo``,
``x2ct synthesize-ct``, the Slicer module).

Modules, each importing only those above it:

* :mod:`.frame`: :class:`InputFrame`, the window of a radiograph the model saw, and its inverse;
* :mod:`.synthetic_ct`: :func:`synthetic_ct_image`, the one HU volume -> int16 image with provenance;
* :mod:`.types`: the records passed between modules (:class:`Prediction`, :class:`Finding`, ...);
* :mod:`.models`: loading generators and classifiers, :class:`ModelCache`;
* :mod:`.preprocess`: input rules and preprocessing into the model's input space;
* :mod:`.run`: :func:`run_generator` and the generator stages (volume, re-projection check);
* :mod:`.findings`: classifiers and Grad-CAM on a prediction, ``findings.json``;
* :mod:`.report`: ``report.png``;
* :mod:`.outputs`: writing a prediction's folder;
* :mod:`.predict`: :func:`predict` and :func:`predict_to_folder`;
* :mod:`.batch`: ``predict --manifest``; :mod:`.synthesize`: ``x2ct synthesize-ct``.
"""

from __future__ import annotations

from .batch import BatchReport, CaseResult, predict_manifest
from .frame import InputFrame
from .models import ModelCache, bundled_classifier_names, load_classifiers, load_model, select_model
from .outputs import check_output_dir, is_finished, write_prediction
from .predict import predict, predict_to_folder
from .run import run_generator
from .synthesize import SynthesisReport, synthesize_ct
from .synthetic_ct import SYNTHETIC_NOTE, synthetic_ct_image
from .types import (
    OUTPUT_CT,
    OUTPUT_DICOM,
    OUTPUT_FINDINGS,
    OUTPUT_GRADCAM,
    OUTPUT_REPORT,
    OUTPUT_SUMMARY,
    OUTPUT_UNCERTAINTY,
    Finding,
    GenerationOptions,
    HeatMaps,
    InputSpec,
    LoadedClassifier,
    LoadedModel,
    Prediction,
    PredictionCancelled,
    PreparedView,
    RadiographPeak,
    VolumePeak,
)

__all__ = [
    "OUTPUT_CT",
    "OUTPUT_DICOM",
    "OUTPUT_FINDINGS",
    "OUTPUT_GRADCAM",
    "OUTPUT_REPORT",
    "OUTPUT_SUMMARY",
    "OUTPUT_UNCERTAINTY",
    "SYNTHETIC_NOTE",
    "BatchReport",
    "CaseResult",
    "Finding",
    "GenerationOptions",
    "HeatMaps",
    "InputFrame",
    "InputSpec",
    "LoadedClassifier",
    "LoadedModel",
    "ModelCache",
    "Prediction",
    "PredictionCancelled",
    "PreparedView",
    "RadiographPeak",
    "SynthesisReport",
    "VolumePeak",
    "bundled_classifier_names",
    "check_output_dir",
    "is_finished",
    "load_classifiers",
    "load_model",
    "predict",
    "predict_manifest",
    "predict_to_folder",
    "run_generator",
    "select_model",
    "synthesize_ct",
    "synthetic_ct_image",
    "write_prediction",
]
