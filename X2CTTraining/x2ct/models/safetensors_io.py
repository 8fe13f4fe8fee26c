"""Our model files: safetensors weights beside a JSON sidecar (:mod:`x2ct.models.metadata`) that records their sha256.

Shared by generators (:mod:`x2ct.models.checkpoints`) and classifiers (:mod:`x2ct.classify.checkpoint`).
Both files are byte-reproducible:

* the weights' safetensors header ``__metadata__`` holds one entry, :data:`HEADER_KEY`, a sorted-key
  JSON string. The library keeps ``__metadata__`` in a hash map whose order changes from one save to
  the next, so a single entry is what makes the same weights and header give the same bytes (and
  sha256). Loading never reads the header, so files written with other headers load as long as their
  sha256 matches the sidecar;
* the sidecar is written with sorted keys and an indent of 2.

Every problem with a file (missing, unreadable, another format, hash mismatch) raises
:class:`x2ct.errors.InputError` with a one-line message naming the file.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple

from torch import Tensor, nn

from ..atomic import atomic_path, sha256_file, write_text_atomic
from ..errors import InputError
from .metadata import SCHEMA, SCHEMA_VERSION, ModelMetadata, read_document

HEADER_KEY = "x2ct"
"""The one key of the safetensors ``__metadata__`` we write."""


def header_metadata(header: Mapping[str, Any]) -> Dict[str, str]:
    """The safetensors ``__metadata__`` holding ``header``: ``{HEADER_KEY: sorted-key compact JSON}``."""
    return {HEADER_KEY: json.dumps(header, sort_keys=True, separators=(",", ":"))}


def write_weights(module: nn.Module, path: Path, header: Mapping[str, Any]) -> str:
    """Write ``module``'s state dict (CPU copies) to the safetensors file ``path`` atomically, with ``header``
    as its one metadata entry; returns the file's sha256."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=header_metadata(header))
    return sha256_file(path)


def save_model(module: nn.Module, weights: Path, meta_path: Path, metadata: ModelMetadata) -> ModelMetadata:
    """Write ``module``'s weights to ``weights`` and ``metadata`` (schema 2, with the weights' file name, sha256
    and parameter count filled in) to ``meta_path``, each atomically, weights first, so a crash never
    leaves a sidecar whose hash matches partial weights. Returns the metadata as written."""
    header = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "kind": metadata.kind,
        "architecture": metadata.architecture,
        "config": metadata.network_config,
    }
    sha256 = write_weights(module, weights, header)
    parameters = sum(p.numel() for p in module.parameters())
    written = replace(metadata, sha256=sha256, weights_file=weights.name, parameters=parameters, path=None)
    write_text_atomic(meta_path, json.dumps(written.to_dict(), indent=2, sort_keys=True) + "\n")
    return replace(written, path=str(meta_path.parent))


def read_verified(meta_path: Path, kind: str) -> Tuple[ModelMetadata, Path]:
    """(metadata, weights path) of the model whose sidecar is ``meta_path``, once it is a model of ``kind``
    (schema 2, or schema 1 migrated in memory) and the weights' sha256 matches the one it records."""
    metadata = ModelMetadata.from_dict(read_document(meta_path), str(meta_path))
    if metadata.kind != kind:
        raise InputError(meta_path, f"holds a {metadata.kind}, not a {kind}")
    weights = meta_path.parent / metadata.weights_file
    if not weights.is_file():
        raise InputError(weights, "weights file missing")
    actual = sha256_file(weights)
    if actual != metadata.sha256:
        expected = str(metadata.sha256)[:12]
        raise InputError(weights, f"sha256 mismatch (file {actual[:12]}…, metadata {expected}…): corrupted or replaced")
    return replace(metadata, path=str(meta_path.parent)), weights


def read_weights(path: Path) -> Dict[str, Tensor]:
    """The tensors of the safetensors file ``path`` on the CPU (InputError when unreadable)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise InputError(path, f"unreadable safetensors file ({err})") from None
