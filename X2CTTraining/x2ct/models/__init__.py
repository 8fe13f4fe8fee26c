"""X2CT-GAN networks and their checkpoints; the disease classifiers.

* :class:`X2CTBiplanar` (+B) and :class:`X2CTSingleView` (+S): ``forward(pa, lateral=None)`` takes
  (N,1,S,S) radiographs and returns (N,1,D,H,W) in the canonical order of :mod:`x2ct.geometry`,
  clamped to [0,1] in eval mode. :class:`PatchDiscriminator3D` is the conditional 3D PatchGAN.
* :func:`load_generator` loads an official ``.pth``, one of ours (safetensors + JSON) or a bundled
  model by name, ready for inference; :func:`convert_checkpoint` converts official files to ours;
  :func:`save_generator` writes ours.
* :func:`build_classifier` builds a disease classifier by registry name (:data:`CLASSIFIER_ARCHS`);
  ``forward(batch)`` takes a dict of "pa" / "lateral" / "ct" tensors and returns logits (N, K);
  :func:`classifier_config` gives the JSON-able arguments that rebuild it (see :mod:`.classifiers`).
"""

from __future__ import annotations

from .checkpoints import (
    bundled_model_names,
    convert_checkpoint,
    load_generator,
    resolve_device,
    save_generator,
)
from .classifiers import CLASSIFIER_ARCHS, ClassifierNet, build_classifier, classifier_config
from .x2ct_gan import GeneratorConfig, PatchDiscriminator3D, X2CTBiplanar, X2CTSingleView, conditional_input

__all__ = [
    "CLASSIFIER_ARCHS",
    "ClassifierNet",
    "GeneratorConfig",
    "PatchDiscriminator3D",
    "X2CTBiplanar",
    "X2CTSingleView",
    "build_classifier",
    "bundled_model_names",
    "classifier_config",
    "conditional_input",
    "convert_checkpoint",
    "load_generator",
    "resolve_device",
    "save_generator",
]
