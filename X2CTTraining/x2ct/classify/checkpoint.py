"""Classifier models on disk: a folder with ``model.safetensors`` + ``model.json`` (sha256 verified on load).

The format follows the generators' (:mod:`x2ct.models.checkpoints`): weights in safetensors (never a
pickle), a JSON sidecar with the weights' sha256 and everything needed to use the model correctly::

    {"format": "x2ct-classifier", "format_version": 1, "weights_file": "model.safetensors", "sha256": "...",
     "classifier_config": {"arch": "densenet2d", "num_outputs": 1, ...options},   # build_classifier(**...)
     "arch": "densenet2d", "task": "tb", "task_description": "...", "outputs": ["tb_present"],
     "inputs": ["pa"], "input_sizes": {"pa": 128}, "input_spec": {...value ranges and axes...},
     "thresholds": {"tb_present": 0.41}, "threshold_rule": "...", "ct_source": {...},
     "training_data": {...}, "metrics": {...validation...}, "training": {...}, "parameters": 6955906}

``thresholds`` are the operating points chosen on the validation split (Youden's J) and frozen: the
evaluation on test and ``x2ct predict`` use them as they are. Both files are written and verified by
:mod:`x2ct.models.safetensors_io`: the weights file's safetensors header holds one sorted-key JSON entry,
so the same weights and metadata give the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch

from ..atomic import atomic_dir
from ..errors import InputError, PathLike
from ..geometry import AXES
from ..models.checkpoints import load_state_strict, resolve_device
from ..models.classifiers import ClassifierNet, build_classifier, classifier_config
from ..models.safetensors_io import read_verified_metadata, read_weights, write_sidecar, write_weights

FORMAT = "x2ct-classifier"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
METADATA = "model.json"
INPUT_SPEC = {
    "pa": "(N, 1, S, S) float32 in [0, 1]: the data set's uint8 DRR / 255 (x2ct.data.loader.xray_to_unit), rows "
    "superior->inferior, columns patient right->left",
    "lateral": "(N, 1, S, S) float32 in [0, 1] as pa, columns anterior->posterior",
    "ct": "(N, 1, S, S, S) float32 = clip(HU + 1024, 0, 2500) / 2500 (x2ct.data.loader.ct_to_unit), canonical "
    f"axes {AXES}",
}
"""What each input key must hold (the classifier contract, docs/classifiers.md)."""


def save_classifier(net: ClassifierNet, target: PathLike, **metadata: Any) -> Path:
    """Write ``net`` into the folder ``target`` (replaced whole, atomically) with ``metadata`` merged into the
    JSON (``task``, ``outputs``, ``inputs``, ``input_sizes``, ``thresholds``, ...). Returns the JSON path."""
    config = classifier_config(net)
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "classifier_config": config}
    target = Path(target)
    with atomic_dir(target) as tmp:
        document: Dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "weights_file": WEIGHTS,
            "sha256": write_weights(net, tmp / WEIGHTS, header),
            "classifier_config": config,
            "arch": net.arch,
            "parameters": sum(p.numel() for p in net.parameters()),
            "input_spec": {key: INPUT_SPEC[key] for key in net.inputs},
            **metadata,
        }
        write_sidecar(tmp / METADATA, document)
    return target / METADATA


def metadata_path(path: PathLike) -> Path:
    """The ``model.json`` of a model folder, its ``.json`` or ``.safetensors``, or a training run folder (RUN/model)."""
    path = Path(path)
    if path.is_dir():
        run_model = path / "model" / METADATA
        return run_model if not (path / METADATA).is_file() and run_model.is_file() else path / METADATA
    return path.with_suffix(".json")


def read_metadata(path: PathLike) -> Dict[str, Any]:
    """The verified metadata of a classifier (InputError when missing, not ours, or the weights' sha256 differs)."""
    if not Path(path).exists():
        raise InputError(path, "no such file or folder")
    meta_path = metadata_path(path)
    metadata, weights = read_verified_metadata(meta_path, FORMAT, WEIGHTS)
    return dict(metadata, path=str(meta_path.parent), weights_path=str(weights))


def load_classifier(path: PathLike, device: Union[str, torch.device] = "cpu") -> Tuple[ClassifierNet, Dict[str, Any]]:
    """(network in eval mode on ``device``, metadata) of a saved classifier; ``net.metadata`` is set too.

    ``path``: the model folder, its ``model.json`` / ``model.safetensors``, or a training run folder.
    """
    metadata = read_metadata(path)
    meta_path = Path(metadata["path"]) / METADATA
    try:
        net = build_classifier(**metadata["classifier_config"])
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(meta_path, f"bad classifier description ({' '.join(str(err).split())})") from None
    weights = metadata["weights_path"]
    load_state_strict(net, read_weights(weights), weights)
    net.metadata = metadata
    return net.to(resolve_device(device)).eval(), metadata


def thresholds_of(metadata: Mapping[str, Any], outputs: Optional[Tuple[str, ...]] = None) -> Dict[str, float]:
    """The frozen thresholds of a classifier's metadata, by output name (InputError when one is missing)."""
    names = outputs or tuple(metadata.get("outputs", ()))
    found = metadata.get("thresholds") or {}
    missing = [n for n in names if n not in found]
    if missing:
        raise InputError(metadata.get("path"), f"no frozen threshold for {', '.join(missing)} in the model metadata")
    return {n: float(found[n]) for n in names}
