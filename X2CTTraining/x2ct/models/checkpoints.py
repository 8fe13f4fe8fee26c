"""Generator checkpoints: official X2CT-GAN ``.pth`` files and our safetensors + JSON format.

Official files (``<epoch>_net_G.pth``) are dicts ``{'iters', 'epoch', 'state_dict', 'lr'}``. They are
read **only** with ``torch.load(path, map_location="cpu", weights_only=True)``, which refuses any
pickle that would build arbitrary objects. A ``module.`` key prefix (DataParallel) is stripped. +B
vs +S is inferred from the keys (``view1Model.*`` = biplanar).

Our format is a weights file ``<name>.safetensors`` plus a JSON sidecar ``<name>.json`` (or a folder
holding ``model.safetensors`` + ``model.json``). The JSON records the sha256 of the weights file,
which is verified on every load, and everything needed to use the model correctly::

    {"format": "x2ct-generator", "format_version": 1, "weights_file": "model.safetensors",
     "sha256": "...", "architecture": "x2ct_gan_biplanar" | "x2ct_gan_singleview",
     "hyperparameters": {"grid_size": 128, "width": 1.0}, "grid_size": 128, "views": ["PA", "LATERAL"],
     "parameters": 61740467, "input": {...range and normalisation...},
     "intensity": {...output [0,1] <-> HU...}, "output_order": "...", "training_data": ..., "metrics": ...,
     "source": {...provenance...}}

Both files are written and read by :mod:`x2ct.models.safetensors_io` (shared with the classifiers):
the sidecar with sorted keys, the safetensors header's ``__metadata__`` as a single entry, ``"x2ct"``:
a sorted-key JSON string of format, format_version, architecture and hyperparameters, so saving the
same weights and metadata twice gives identical bytes (and sha256). Files written before this change
have two entries (``format``, ``architecture``) in varying order. Loading never reads the header
metadata, so those files still load and still match their recorded sha256.

Every problem with a file (unreadable, not a checkpoint, unsafe pickle, wrong keys or shapes, hash
mismatch) raises :class:`x2ct.errors.InputError` with a one-line message naming the file.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type, Union

import torch
from torch import Tensor, nn

from ..atomic import sha256_file
from ..errors import InputError, PathLike
from ..geometry import AXES
from ..intensity import HU_OFFSET, UNIT_RANGE
from ..resources import bundled_names, resources_dir
from .safetensors_io import HEADER_KEY as HEADER_KEY  # re-exported: the one key of our weights headers
from .safetensors_io import read_verified_metadata, read_weights, write_sidecar, write_weights
from .x2ct_gan import GeneratorConfig, X2CTBiplanar, X2CTSingleView

Generator = Union[X2CTSingleView, X2CTBiplanar]

FORMAT = "x2ct-generator"
FORMAT_VERSION = 1
ARCHITECTURES: Dict[str, Type[nn.Module]] = {
    X2CTBiplanar.architecture: X2CTBiplanar,
    X2CTSingleView.architecture: X2CTSingleView,
}
OFFICIAL_INPUT = {
    "range": [0.0, 1.0],
    "size": 128,
    "normalization": "uint8 / 255 of a per-image min-max scaled DRR-like radiograph (official X2CT-GAN)",
}
"""Input convention of the official weights (kylekma/X2CT ``3DGAN/lib/dataset/data_augmentation_1030.py``)."""
INTENSITY = {
    "convention": "unit = clip(HU + 1024, 0, 2500) / 2500; HU = 2500 * unit - 1024",
    "hu_offset": HU_OFFSET,
    "unit_range": UNIT_RANGE,
    "output_range": [0.0, 1.0],
}
OUTPUT_ORDER = f"(N, 1, D, H, W), canonical axes {AXES}"


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


def build_generator(architecture: str, config: GeneratorConfig) -> Generator:
    """An untrained generator of the named architecture."""
    try:
        return ARCHITECTURES[architecture](config)  # type: ignore[return-value]
    except KeyError:
        raise ValueError(f"unknown architecture {architecture!r} (known: {', '.join(ARCHITECTURES)})") from None


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


def _inference_ready(model: Generator, device: torch.device, metadata: Dict[str, Any]) -> Generator:
    model.metadata = metadata
    model.requires_grad_(False)
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------------
# Official .pth
# --------------------------------------------------------------------------------------------------


def read_official_state_dict(path: PathLike) -> Dict[str, Tensor]:
    """The ``state_dict`` of an official checkpoint (or a bare state_dict), ``module.`` prefix removed."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; the error below says enough
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except Exception as err:  # noqa: BLE001 - garbage bytes make the unpickler raise almost anything
        if "Weights only load failed" in str(err):
            problem = "not a loadable weights-only checkpoint (it would need full unpickling, which x2ct refuses)"
            raise InputError(path, problem) from None
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(path, f"not a loadable PyTorch checkpoint ({first[:160]})") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise InputError(path, "not an X2CT-GAN checkpoint (expected a dict with a 'state_dict' of tensors)")
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}


def load_official(path: PathLike) -> Generator:
    """A generator (training mode, CPU) with the weights of an official ``.pth``; +B/+S inferred from the keys."""
    state = read_official_state_dict(path)
    architecture, config = infer_official_architecture(state, path)
    model = build_generator(architecture, config)
    load_state_strict(model, state, path)
    return model


def official_metadata(path: PathLike, model: Generator) -> Dict[str, Any]:
    """Metadata describing an official checkpoint (what our JSON would say about it)."""
    return {
        "format": "official-x2ct-gan-pth",
        "architecture": model.architecture,
        "hyperparameters": model.config.to_dict(),
        "grid_size": model.config.grid_size,
        "views": list(model.views),
        "parameters": sum(p.numel() for p in model.parameters()),
        "sha256": sha256_file(path),
        "input": dict(OFFICIAL_INPUT),
        "intensity": dict(INTENSITY),
        "output_order": OUTPUT_ORDER,
        "training_data": "LIDC-IDRI, official X2CT-GAN split (916 training scans), DRRs (Plastimatch)",
        "metrics": None,
        "source": {"file": Path(path).name, "kind": "official kylekma/X2CT checkpoint"},
    }


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


def weights_header(model: Generator) -> Dict[str, Any]:
    """What the safetensors header of a generator's weights file records (its one ``"x2ct"`` entry)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": model.architecture,
        "hyperparameters": model.config.to_dict(),
    }


def save_generator(
    model: Generator,
    out_path: PathLike,
    *,
    training_data: Any = None,
    metrics: Any = None,
    input_spec: Optional[Mapping[str, Any]] = None,
    source: Optional[Mapping[str, Any]] = None,
    extra: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write ``model`` in our format; returns the JSON path.

    ``out_path`` ending in ``.safetensors`` writes that file and a ``.json`` beside it; any other
    path is a folder receiving ``model.safetensors`` + ``model.json``. Both files are written
    atomically, weights first, so a crash never leaves a JSON whose hash matches partial weights.
    Both are byte-reproducible: the same weights and metadata (in any dict order) give the same bytes.
    """
    out = Path(out_path)
    if out.suffix == ".safetensors":
        weights, meta_path = out, out.with_suffix(".json")
    else:
        out.mkdir(parents=True, exist_ok=True)
        weights, meta_path = out / "model.safetensors", out / "model.json"
    sha256 = write_weights(model, weights, weights_header(model))
    metadata: Dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "weights_file": weights.name,
        "sha256": sha256,
        "architecture": model.architecture,
        "hyperparameters": model.config.to_dict(),
        "grid_size": model.config.grid_size,
        "views": list(model.views),
        "parameters": sum(p.numel() for p in model.parameters()),
        "input": dict(input_spec) if input_spec is not None else dict(OFFICIAL_INPUT, size=model.config.grid_size),
        "intensity": dict(INTENSITY),
        "output_order": OUTPUT_ORDER,
        "training_data": training_data,
        "metrics": metrics,
        "source": dict(source) if source is not None else None,
    }
    metadata.update(extra or {})
    write_sidecar(meta_path, metadata)
    return meta_path


def load_ours(path: PathLike) -> Tuple[Generator, Dict[str, Any]]:
    """(generator in training mode on CPU, metadata) from our format; the sha256 is verified first."""
    weights, meta_path = _our_paths(Path(path))
    metadata, weights = read_verified_metadata(meta_path, FORMAT, weights.name)
    try:
        config = GeneratorConfig(**metadata["hyperparameters"])
        model = build_generator(metadata["architecture"], config)
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
    range (``metadata["input"]``; [0,1] for official weights) and returns (N,1,D,H,W) in [0,1] in the
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
        metadata = dict(metadata, path=str(path))
        return _inference_ready(model, target, metadata)
    text = str(name_or_path)
    looks_like_path = any(sep in text for sep in ("/", "\\")) or path.suffix in (".pth", ".pt", ".safetensors", ".json")
    if looks_like_path:
        raise InputError(path, "no such file")
    names = bundled_model_names()
    if text not in names:
        available = ", ".join(names) if names else "none are installed"
        raise InputError(None, f"unknown model {text!r}: not a file and not a bundled model (available: {available})")
    model, metadata = load_ours(models_dir() / text)
    return _inference_ready(model, target, dict(metadata, path=str(models_dir() / text), name=text))


def convert_checkpoint(in_path: PathLike, out_path: PathLike, **metadata: Any) -> Path:
    """Convert an official ``.pth`` (or re-save one of ours) into our format; returns the JSON path.

    ``out_path``: ``<name>.safetensors`` (JSON written beside it) or a folder. Keyword arguments
    (``training_data``, ``metrics``, ``input_spec``, ``source``, ``extra``) override the metadata.
    """
    src = Path(in_path)
    if not src.exists():
        raise InputError(src, "no such file")
    if _is_ours(src):
        model, old = load_ours(src)
        defaults: Dict[str, Any] = {
            "training_data": old.get("training_data"),
            "metrics": old.get("metrics"),
            "input_spec": old.get("input"),
            "source": old.get("source"),
        }
    else:
        model = load_official(src)
        info = official_metadata(src, model)
        defaults = {
            "training_data": info["training_data"],
            "metrics": None,
            "input_spec": info["input"],
            "source": dict(info["source"], sha256=info["sha256"]),
        }
    defaults.update(metadata)
    return save_generator(model, out_path, **defaults)
