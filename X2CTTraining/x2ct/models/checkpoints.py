"""Generator checkpoints: official X2CT-GAN ``.pth`` files and our safetensors + JSON format.

Official files (``<epoch>_net_G.pth``) are dicts ``{'iters', 'epoch', 'state_dict', 'lr'}``. They are
read **only** through :func:`load_weights_only` (``torch.load(..., weights_only=True)``), which refuses any
pickle that would build arbitrary objects; so are x2ct's training checkpoints. A ``module.`` key prefix
(DataParallel) is stripped. +B vs +S is inferred from the keys (``view1Model.*`` = biplanar).

Our format is a weights file ``<name>.safetensors`` plus a JSON sidecar ``<name>.json`` (or a folder
holding ``model.safetensors`` + ``model.json``) in the one metadata schema of x2ct models
(:mod:`x2ct.models.metadata`): the sha256 of the weights (verified on every load), the network
(``x2ct_gan_biplanar`` | ``x2ct_gan_singleview`` and its :class:`GeneratorConfig`) and the
``network_data_format`` (radiograph inputs with the DRR geometry and quantisation they were trained
on; the CT output on the unit scale and canonical axes). :mod:`x2ct.models.safetensors_io` writes both
files byte-reproducibly. Official checkpoints get the same metadata record, built from the file.

Every problem with a file (unreadable, not a checkpoint, unsafe pickle, wrong keys or shapes, hash
mismatch) raises :class:`x2ct.errors.InputError` with a one-line message naming the file.
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type, Union

import torch
from torch import Tensor, nn

from .. import __version__
from ..atomic import sha256_file
from ..errors import InputError, PathLike
from ..resources import bundled_names, resources_dir
from ..views import CT_KEY, PA_KEY, input_key
from .latent_diffusion import LatentDiffusionConfig, LatentDiffusionGenerator
from .metadata import GENERATOR, MINMAX, ModelMetadata, ct_tensor, radiograph_input
from .safetensors_io import HEADER_KEY as HEADER_KEY  # re-exported: the one key of our weights headers
from .safetensors_io import read_verified, read_weights, save_model
from .x2ct_gan import GeneratorConfig, X2CTBiplanar, X2CTSingleView
from .xprospect import (
    BackProjectionConfig,
    BackProjectionUNet,
    DenseUNetConfig,
    DenseUNetGenerator,
    TemplateConfig,
    TemplateGenerator,
)

Generator = Union[X2CTSingleView, X2CTBiplanar, BackProjectionUNet, DenseUNetGenerator, TemplateGenerator,
                  LatentDiffusionGenerator]

ARCHITECTURES: Dict[str, Tuple[Type[nn.Module], Type[Any]]] = {
    X2CTBiplanar.architecture: (X2CTBiplanar, GeneratorConfig),
    X2CTSingleView.architecture: (X2CTSingleView, GeneratorConfig),
    BackProjectionUNet.architecture: (BackProjectionUNet, BackProjectionConfig),
    DenseUNetGenerator.architecture: (DenseUNetGenerator, DenseUNetConfig),
    TemplateGenerator.architecture: (TemplateGenerator, TemplateConfig),
    LatentDiffusionGenerator.architecture: (LatentDiffusionGenerator, LatentDiffusionConfig),
}
"""Generator architectures by name: (network class, its config dataclass; ``network.config`` in model.json)."""
OFFICIAL_TRAINING_DATA = {
    "dataset": "LIDC-IDRI",
    "split": "official X2CT-GAN",
    "train_cases": 916,
    "drrs": "Plastimatch",
}
"""What the official weights were trained on (kylekma/X2CT README)."""


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    """Torch device for "auto" (CUDA when available, else CPU), "cpu" or "cuda" (InputError without CUDA)."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(None, f"device {name!r} requested but CUDA is not available (use --device cpu or auto)")
    if name != "cpu" and not name.startswith("cuda"):
        raise InputError(None, f"unknown device {name!r} (expected auto, cpu or cuda)")
    return torch.device(name)


def _config_from_official(state: Mapping[str, Tensor], prefix: str, path: PathLike) -> GeneratorConfig:
    """Width and grid size from the stem and Connection-A shapes (width 1, grid 128 for the official files)."""
    try:
        stem = state[f"{prefix}encoder_layer.1.weight"].shape[0]
        bottom = state[f"{prefix}base_link.0.weight"].shape[0]
        base_channels = state[f"{prefix}decoder_layer4.0.block.block.0.weight"].shape[0]
    except KeyError as err:
        raise InputError(path, f"not an X2CT-GAN generator state_dict (missing {err.args[0]})") from None
    side = round((bottom // base_channels) ** (1.0 / 3.0))
    try:
        return GeneratorConfig(grid_size=32 * side, width=stem / 64.0)
    except ValueError as err:
        raise InputError(path, f"unsupported generator geometry: {err}") from None


def infer_official_architecture(state: Mapping[str, Tensor], path: PathLike) -> Tuple[str, GeneratorConfig]:
    """('x2ct_gan_biplanar' | 'x2ct_gan_singleview', config) from an official state_dict's keys and shapes."""
    if any(key.startswith("view1Model.") for key in state):
        return X2CTBiplanar.architecture, _config_from_official(state, "view1Model.", path)
    if "encoder_layer.1.weight" in state:
        return X2CTSingleView.architecture, _config_from_official(state, "", path)
    raise InputError(path, "not an X2CT-GAN generator state_dict (no encoder_layer.* or view1Model.* keys)")


def build_generator(architecture: str, config: Mapping[str, Any]) -> Generator:
    """An untrained generator of the named architecture from its config's fields (ValueError for an unknown
    architecture or a bad config)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r} (known: {', '.join(ARCHITECTURES)})")
    network, config_class = ARCHITECTURES[architecture]
    try:
        return network(config_class(**config))  # type: ignore[return-value]
    except TypeError as err:
        raise ValueError(f"bad {architecture} config: {err}") from None


def load_state_strict(model: nn.Module, state: Mapping[str, Tensor], path: PathLike) -> None:
    """``model.load_state_dict(state, strict=True)``, with any mismatch reported as a one-line InputError."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    problems: List[str] = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            problems.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
    if problems:
        raise InputError(path, "state_dict does not match the architecture: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def describe_generator(
    model: Generator, drr_geometry: Optional[Mapping[str, Any]] = None, quantize_bits: Optional[int] = 8, **fields: Any
) -> ModelMetadata:
    """The metadata record of a generator: its network and data format from ``model``; ``drr_geometry``
    ({"sad_mm", "sid_mm", "detector_mm", "drr_size"}) and ``quantize_bits`` of its training radiographs
    (official geometry and 8 bits when not given); any other :class:`ModelMetadata` field in ``fields``."""
    size = model.config.grid_size
    preprocessing: Dict[str, Any] = {"normalization": MINMAX, "quantize_bits": quantize_bits}
    if drr_geometry:
        preprocessing["drr_geometry"] = {k: v for k, v in drr_geometry.items() if v is not None}
    inputs = {input_key(view): radiograph_input(input_key(view), size, preprocessing) for view in model.views}
    fields.setdefault("x2ct_version", __version__)
    fields.setdefault("pytorch_version", torch.__version__)
    return ModelMetadata(
        kind=GENERATOR,
        architecture=model.architecture,
        network_config=model.config.to_dict(),
        inputs=inputs,
        outputs={CT_KEY: ct_tensor(size)},
        parameters=sum(p.numel() for p in model.parameters()),
        **fields,
    )


def _inference_ready(model: Generator, device: torch.device, metadata: ModelMetadata) -> Generator:
    model.metadata = metadata
    model.requires_grad_(False)
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------------
# Pickle-based files
# --------------------------------------------------------------------------------------------------

UNSAFE_PICKLE = (
    "holds Python objects that x2ct will not unpickle (only tensors and plain data are loaded safely); "
    "the file is not from x2ct or is damaged"
)
"""The problem reported for a pickle that refers to classes or functions (x2ct never unpickles those)."""

_REFUSED_OBJECT = ("Unsupported global", "Unsupported class", "not an allowed global")
"""Words of torch's weights-only unpickler when the pickle names a class or function (torch 1.13 to 2.x)."""


def load_weights_only(path: PathLike, device: Any = "cpu", what: str = "PyTorch checkpoint") -> Any:
    """The content of a ``torch.save`` file, on ``device``, read with ``weights_only=True`` (tensors and plain
    data only): the one way x2ct reads a pickle-based file. InputError naming the file when it is missing, is
    not a loadable ``what``, or holds other Python objects (:data:`UNSAFE_PICKLE`); torch's own advice to load
    such a file unsafely is never passed on."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; the error below says enough
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except pickle.UnpicklingError as err:  # the weights-only unpickler refused it
        if any(words in str(err) for words in _REFUSED_OBJECT):
            raise InputError(path, UNSAFE_PICKLE) from None
        raise InputError(path, f"not a loadable {what} (damaged, or another kind of file)") from None
    except Exception as err:  # noqa: BLE001 - garbage bytes make the reader raise almost anything
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        detail = first[:160] if "weights_only" not in first else "damaged, or another kind of file"
        raise InputError(path, f"not a loadable {what} ({detail})") from None


# --------------------------------------------------------------------------------------------------
# Official .pth
# --------------------------------------------------------------------------------------------------


def read_official_state_dict(path: PathLike) -> Dict[str, Tensor]:
    """The ``state_dict`` of an official checkpoint (or a bare state_dict), ``module.`` prefix removed."""
    obj = load_weights_only(path)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise InputError(path, "not an X2CT-GAN checkpoint (expected a dict with a 'state_dict' of tensors)")
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}


def load_official(path: PathLike) -> Generator:
    """A generator (training mode, CPU) with the weights of an official ``.pth``; +B/+S inferred from the keys."""
    state = read_official_state_dict(path)
    architecture, config = infer_official_architecture(state, path)
    model = build_generator(architecture, config.to_dict())
    load_state_strict(model, state, path)
    return model


def official_metadata(path: PathLike, model: Generator) -> ModelMetadata:
    """The metadata record of an official checkpoint (what our JSON would say about it)."""
    return describe_generator(
        model,
        sha256=sha256_file(path),
        weights_file=Path(path).name,
        training_data=dict(OFFICIAL_TRAINING_DATA),
        source={"kind": "official kylekma/X2CT checkpoint", "file": Path(path).name},
        x2ct_version=None,
        pytorch_version=None,
    )


# --------------------------------------------------------------------------------------------------
# Our format
# --------------------------------------------------------------------------------------------------


def _our_paths(path: Path) -> Tuple[Path, Path]:
    """(weights, json) for a folder, a ``.safetensors`` file or a ``.json`` sidecar."""
    if path.is_dir():
        return path / "model.safetensors", path / "model.json"
    if path.suffix == ".json":
        return path.with_suffix(".safetensors"), path
    return path, path.with_suffix(".json")


def save_generator(model: Generator, out_path: PathLike, **fields: Any) -> Path:
    """Write ``model`` in our format; returns the JSON path. ``fields``: :func:`describe_generator`'s
    (``drr_geometry``, ``quantize_bits``, ``name``, ``version``, ``changelog``, ``training``,
    ``training_data``, ``metrics``, ``source``).

    ``out_path`` ending in ``.safetensors`` writes that file and a ``.json`` beside it; any other
    path is a folder receiving ``model.safetensors`` + ``model.json``. Both files are written
    atomically, weights first, and are byte-reproducible: the same weights and metadata (in any dict
    order) give the same bytes.
    """
    out = Path(out_path)
    if out.suffix == ".safetensors":
        weights, meta_path = out, out.with_suffix(".json")
    else:
        out.mkdir(parents=True, exist_ok=True)
        weights, meta_path = out / "model.safetensors", out / "model.json"
    save_model(model, weights, meta_path, describe_generator(model, **fields))
    return meta_path


def load_ours(path: PathLike) -> Tuple[Generator, ModelMetadata]:
    """(generator in training mode on CPU, metadata) from our format; the sha256 is verified first."""
    _, meta_path = _our_paths(Path(path))
    metadata, weights = read_verified(meta_path, GENERATOR)
    try:
        model = build_generator(metadata.architecture, metadata.network_config)
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(meta_path, f"bad architecture description ({err})") from None
    load_state_strict(model, read_weights(weights), weights)
    return model, metadata


# --------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------


MODELS_FOLDER = "Models"
"""Folder of ``Resources`` that holds the bundled generators."""


def models_dir() -> Path:
    """Folder of bundled models: ``Resources/Models``."""
    return resources_dir() / MODELS_FOLDER


def bundled_model_names() -> List[str]:
    """Names of the bundled models (folders of ``Resources/Models`` holding a ``model.json``)."""
    return bundled_names(MODELS_FOLDER)


def _is_ours(path: Path) -> bool:
    return path.is_dir() or path.suffix in (".safetensors", ".json")


def load_generator(name_or_path: PathLike, device: Union[str, torch.device] = "cpu") -> Generator:
    """A generator in inference mode (``eval()``, no gradients) with its ``metadata`` filled in.

    ``name_or_path``: an official ``.pth``; one of ours (``.safetensors`` with its ``.json``, the
    ``.json``, or a folder with ``model.safetensors`` + ``model.json``); or the name of a bundled
    model (``Resources/Models/<name>/``). ``device``: "auto", "cpu" or "cuda".

    The returned module's ``forward(pa, lateral=None)`` takes (N,1,S,S) tensors in the model's input
    range (``metadata.inputs``: [0, 1], per-image min-max) and returns (N,1,D,H,W) in [0,1] in the
    canonical order. Call it under ``torch.inference_mode()``.
    """
    target = resolve_device(device)
    path = Path(name_or_path)
    if path.exists():
        if _is_ours(path):
            model, metadata = load_ours(path)
        else:
            model = load_official(path)
            metadata = official_metadata(path, model)
        return _inference_ready(model, target, replace(metadata, path=str(path)))
    text = str(name_or_path)
    looks_like_path = any(sep in text for sep in ("/", "\\")) or path.suffix in (".pth", ".pt", ".safetensors", ".json")
    if looks_like_path:
        raise InputError(path, "no such file")
    names = bundled_model_names()
    if text not in names:
        available = ", ".join(names) if names else "none are installed"
        raise InputError(None, f"unknown model {text!r}: not a file and not a bundled model (available: {available})")
    model, metadata = load_ours(models_dir() / text)
    return _inference_ready(model, target, replace(metadata, path=str(models_dir() / text), name=text))


def convert_checkpoint(in_path: PathLike, out_path: PathLike, **fields: Any) -> Path:
    """Convert an official ``.pth`` (or re-save one of ours) into our format; returns the JSON path.

    ``out_path``: ``<name>.safetensors`` (JSON written beside it) or a folder. ``fields`` (those of
    :func:`save_generator`) override what the source says.
    """
    src = Path(in_path)
    if not src.exists():
        raise InputError(src, "no such file")
    if _is_ours(src):
        model, old = load_ours(src)
        preprocessing = old.inputs[PA_KEY].preprocessing
        defaults: Dict[str, Any] = {
            "drr_geometry": preprocessing.get("drr_geometry"),
            "quantize_bits": preprocessing.get("quantize_bits", 8),
            "name": old.name,
            "version": old.version,
            "changelog": old.changelog,
            "training": old.training,
            "training_data": old.training_data,
            "metrics": old.metrics,
            "source": old.source,
        }
    else:
        model = load_official(src)
        info = official_metadata(src, model)
        defaults = {"training_data": info.training_data, "source": dict(info.source, sha256=info.sha256)}
    defaults.update(fields)
    return save_generator(model, out_path, **defaults)
