"""X2CT-GAN networks and their checkpoints.

* :class:`X2CTBiplanar` (+B) and :class:`X2CTSingleView` (+S): ``forward(pa, lateral=None)`` takes
  (N,1,S,S) radiographs and returns (N,1,D,H,W) in the canonical order of :mod:`x2ct.geometry`,
  clamped to [0,1] in eval mode. :class:`PatchDiscriminator3D` is the conditional 3D PatchGAN.
* :func:`load_generator` loads an official ``.pth``, one of ours (safetensors + JSON) or a bundled
  model by name, ready for inference; :func:`convert_checkpoint` converts official files to ours;
  :func:`save_generator` writes ours.
"""

from __future__ import annotations

from .checkpoints import (
    bundled_model_names,
    convert_checkpoint,
    load_generator,
    resolve_device,
    save_generator,
)
from .x2ct_gan import GeneratorConfig, PatchDiscriminator3D, X2CTBiplanar, X2CTSingleView, conditional_input

__all__ = [
    "GeneratorConfig",
    "PatchDiscriminator3D",
    "X2CTBiplanar",
    "X2CTSingleView",
    "bundled_model_names",
    "conditional_input",
    "convert_checkpoint",
    "load_generator",
    "resolve_device",
    "save_generator",
]
