"""Radiograph style transfer: a CycleGAN generator that gives a radiograph the look of the DRRs the generators
were trained on, as an optional step after preprocessing (docs/style_transfer.md).

A style model is a folder ``model.safetensors`` + ``model.json`` (the one metadata schema,
:mod:`x2ct.models.metadata`, kind ``style``; the weights' sha256 is checked on every load) +
``MODEL_CARD.md``; ``x2ct train-style`` writes one into ``RUN/model`` and the bundled ones live in
``Resources/Styles/<name>/``. Its network is a generator of :mod:`x2ct.models.cyclegan` (G: real -> DRR,
the exponential moving average of its weights). Its one input and output, ``image``, is a radiograph in
the model-input space of ``x2ct predict``: (S, S) float32 in [0, 1], per-image min-max, dense bright,
rows superior -> inferior, PA and lateral alike; S is the style model's ``size``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..atomic import atomic_dir
from ..classify.checkpoint import metadata_path
from ..drr import normalize
from ..errors import InputError, PathLike
from ..models.checkpoints import load_state_strict, resolve_device
from ..models.cyclegan import build_generator
from ..models.metadata import METADATA_FILE, MINMAX, MODEL_CARD, STYLE, WEIGHTS_FILE, ModelMetadata, TensorFormat
from ..models.safetensors_io import read_verified, read_weights, save_model
from ..resources import bundled_names, resources_dir
from .preprocess import resize_square

STYLES_FOLDER = "Styles"
"""Folder of ``Resources`` holding the bundled style models (one sub-folder per model, beside ``Models``)."""

IMAGE_KEY = "image"
"""The input and output key of a style model's ``network_data_format``."""

IMAGE_AXES = "rows superior->inferior; columns as the view's display (x2ct.views)"


@dataclass
class LoadedStyle:
    """A style model ready to run: ``module`` (eval mode, no gradients) on ``device``; ``size``: the image edge in
    pixels it works at; ``sha256`` of its weights (verified when loaded)."""

    name: str
    path: str
    sha256: Optional[str]
    size: int
    module: nn.Module
    metadata: ModelMetadata
    device: torch.device


def image_format(size: int, domain: str, preprocessing: Optional[Mapping[str, Any]] = None) -> TensorFormat:
    """The ``image`` tensor of a style model: (size, size) radiograph in [0, 1], per-image min-max; ``domain``
    ("real" or "drr") says which look it has."""
    return TensorFormat(
        type="image",
        format="radiograph",
        num_channels=1,
        spatial_shape=(int(size), int(size)),
        modality="DX",
        axes=IMAGE_AXES,
        preprocessing={**dict(preprocessing or {}), "normalization": MINMAX, "domain": domain},
    )


def save_style(
    module: nn.Module, target: PathLike, size: int, card: str, preprocessing: Mapping[str, Any], **fields: Any
) -> Path:
    """Write the generator ``module`` (:mod:`x2ct.models.cyclegan`, real -> DRR) as a style model into the folder
    ``target`` (replaced whole, atomically) with the model card text ``card``. ``preprocessing``: how its input
    images were prepared besides size and min-max (field of view, quantisation); ``fields``: other
    :class:`ModelMetadata` fields (``training``, ``training_data``, ``metrics``, ``name``, ...). Returns the folder."""
    fields.setdefault("x2ct_version", __version__)
    fields.setdefault("pytorch_version", torch.__version__)
    metadata = ModelMetadata(
        kind=STYLE,
        architecture=module.architecture,
        network_config=module.config(),
        inputs={IMAGE_KEY: image_format(size, "real", preprocessing)},
        outputs={IMAGE_KEY: image_format(size, "drr")},
        **fields,
    )
    target = Path(target)
    with atomic_dir(target) as tmp:
        save_model(module.to("cpu").eval(), tmp / WEIGHTS_FILE, tmp / METADATA_FILE, metadata)
        (tmp / MODEL_CARD).write_text(card, encoding="utf-8")
    return target


def styles_dir() -> Path:
    """``Resources/Styles``."""
    return resources_dir() / STYLES_FOLDER


def bundled_style_names() -> List[str]:
    """Names of the bundled style models (folders of ``Resources/Styles`` holding a ``model.json``)."""
    return bundled_names(STYLES_FOLDER)


def load_style(name_or_path: PathLike, device: Union[str, torch.device] = "cpu") -> LoadedStyle:
    """A style model by bundled name (``Resources/Styles/<name>``) or path (its folder, ``model.json`` or
    ``model.safetensors``, or a ``x2ct train-style`` run folder). InputError (one line naming the file) when it is
    missing, not a style model, its weights' sha256 differs from the metadata's, or they do not fit."""
    name = str(name_or_path)
    bundled = name in bundled_style_names()
    path = styles_dir() / name if bundled else Path(name)
    if not path.exists():
        known = ", ".join(bundled_style_names()) or "none"
        raise InputError(path, f"no such style model (bundled ones: {known})")
    metadata, weights = read_verified(metadata_path(path), STYLE)
    meta_file = Path(str(metadata.path)) / METADATA_FILE
    try:
        size = int(metadata.inputs[IMAGE_KEY].spatial_shape[0])
        net = build_generator(metadata.architecture, metadata.network_config)
    except (KeyError, IndexError, ValueError) as err:
        raise InputError(meta_file, f"bad style model description ({' '.join(str(err).split())})") from None
    load_state_strict(net, read_weights(weights), weights)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    return LoadedStyle(
        name=name if bundled else str(metadata.name or Path(str(metadata.path)).name),
        path=str(metadata.path),
        sha256=metadata.sha256,
        size=size,
        module=net.to(dev).eval().requires_grad_(False),
        metadata=metadata,
        device=dev,
    )


def apply_style(style: LoadedStyle, image: np.ndarray) -> np.ndarray:
    """``image`` (S, S) float in [0, 1] (a prepared model input) -> its DRR-like version, (S, S) float32 in [0, 1].

    The image is resized (bilinear, anti-aliased) to the style model's size and min-max normalised, translated,
    resized back to S and min-max normalised like a DRR. ValueError for an image that is not square 2D.
    """
    array = np.asarray(image, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise ValueError(f"apply_style takes one square (S, S) image, not shape {array.shape}")
    edge = array.shape[0]
    x = normalize(torch.from_numpy(resize_square(array, style.size)), "minmax")
    with torch.inference_mode():
        y = style.module(x[None, None].to(style.device)).float().cpu()[0, 0]
    y = normalize(torch.from_numpy(resize_square(y.numpy(), edge)), "minmax")
    return y.numpy().astype(np.float32)
