"""Classifier models on disk: a folder with ``model.safetensors`` + ``model.json`` (sha256 verified on load).

The format is the one of every x2ct model (:mod:`x2ct.models.metadata`, written and verified by
:mod:`x2ct.models.safetensors_io`): weights in safetensors (never a pickle) and a JSON sidecar with the
weights' sha256, the network (``architecture`` and the :func:`x2ct.models.classifiers.classifier_config`
that rebuilds it), the ``network_data_format`` (each input key's tensor: radiographs (S, S) in [0, 1]
as :func:`x2ct.data.loader.xray_to_unit` gives them, the CT (S, S, S) on the unit scale as
:func:`x2ct.data.loader.ct_to_unit` gives it; one logit per output) and the ``task``: its name, the
outputs and the thresholds chosen on the validation split (Youden's J) and frozen: the evaluation on
test and ``x2ct predict`` use them as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Tuple, Union

import torch

from .. import __version__
from ..atomic import atomic_dir
from ..errors import InputError, PathLike
from ..models.checkpoints import load_state_strict, resolve_device
from ..models.classifiers import ClassifierNet, build_classifier, classifier_config
from ..models.metadata import (
    CLASSIFIER,
    METADATA_FILE,
    WEIGHTS_FILE,
    ModelMetadata,
    TaskSpec,
    ct_tensor,
    logits,
    radiograph_input,
)
from ..models.safetensors_io import read_verified, read_weights, save_model
from ..views import CT_KEY


def save_classifier(
    net: ClassifierNet, target: PathLike, task: TaskSpec, input_sizes: Mapping[str, int], **fields: Any
) -> Path:
    """Write ``net`` into the folder ``target`` (replaced whole, atomically). ``input_sizes``: the edge of each
    input key it was trained with (the keys it reads); ``fields``: other :class:`ModelMetadata` fields
    (``training``, ``training_data``, ``metrics``, ``name``, ``version``, ...). Returns the JSON path."""
    inputs = {key: ct_tensor(n) if key == CT_KEY else radiograph_input(key, n) for key, n in input_sizes.items()}
    fields.setdefault("x2ct_version", __version__)
    fields.setdefault("pytorch_version", torch.__version__)
    metadata = ModelMetadata(
        kind=CLASSIFIER,
        architecture=net.arch,
        network_config=classifier_config(net),
        inputs=inputs,
        outputs={"logits": logits(list(task.outputs))},
        task=task,
        **fields,
    )
    target = Path(target)
    with atomic_dir(target) as tmp:
        save_model(net, tmp / WEIGHTS_FILE, tmp / METADATA_FILE, metadata)
    return target / METADATA_FILE


def metadata_path(path: PathLike) -> Path:
    """The ``model.json`` of a model folder, its ``.json`` or ``.safetensors``, or a training run folder (RUN/model)."""
    path = Path(path)
    if path.is_dir():
        run_model = path / "model" / METADATA_FILE
        return run_model if not (path / METADATA_FILE).is_file() and run_model.is_file() else path / METADATA_FILE
    return path.with_suffix(".json")


def read_metadata(path: PathLike) -> Tuple[ModelMetadata, Path]:
    """(verified metadata, weights path) of a classifier (InputError when missing, not ours, not a classifier,
    or the weights' sha256 differs)."""
    if not Path(path).exists():
        raise InputError(path, "no such file or folder")
    return read_verified(metadata_path(path), CLASSIFIER)


def load_classifier(path: PathLike, device: Union[str, torch.device] = "cpu") -> Tuple[ClassifierNet, ModelMetadata]:
    """(network in eval mode on ``device``, metadata) of a saved classifier; ``net.metadata`` is set too.

    ``path``: the model folder, its ``model.json`` / ``model.safetensors``, or a training run folder.
    """
    metadata, weights = read_metadata(path)
    try:
        net = build_classifier(**metadata.network_config)
    except (KeyError, TypeError, ValueError) as err:
        problem = f"bad classifier description ({' '.join(str(err).split())})"
        raise InputError(Path(str(metadata.path)) / METADATA_FILE, problem) from None
    load_state_strict(net, read_weights(weights), weights)
    net.metadata = metadata
    return net.to(resolve_device(device)).eval(), metadata
