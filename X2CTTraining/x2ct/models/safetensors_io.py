"""Our model files: safetensors weights beside a JSON sidecar that records their sha256.

Shared by generators (:mod:`x2ct.models.checkpoints`) and classifiers (:mod:`x2ct.classify.checkpoint`);
each format adds its own entries to the sidecar. Both files are byte-reproducible:

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
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple

from torch import Tensor, nn

from ..atomic import atomic_path, sha256_file, write_text_atomic
from ..errors import InputError

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


def write_sidecar(path: Path, metadata: Mapping[str, Any]) -> None:
    """Write the JSON sidecar ``path`` atomically (sorted keys, indent 2, final newline)."""
    write_text_atomic(path, json.dumps(metadata, indent=2, sort_keys=True) + "\n")


def read_verified_metadata(meta_path: Path, expected_format: str, weights_name: str) -> Tuple[Dict[str, Any], Path]:
    """(sidecar, weights path) of the model whose sidecar is ``meta_path``, once the sidecar's ``format`` is
    ``expected_format`` and the weights' sha256 matches the one it records.

    The weights are the sidecar's ``weights_file`` beside it, or ``weights_name`` when it names none.
    """
    if not meta_path.is_file():
        raise InputError(
            meta_path,
            "model metadata missing (a model is NAME.safetensors + NAME.json, or a folder with "
            "model.safetensors + model.json)",
        )
    try:
        metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(meta_path, f"unreadable model metadata ({' '.join(str(err).split())})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != expected_format:
        raise InputError(meta_path, f"not an {expected_format} metadata file")
    weights = meta_path.parent / str(metadata.get("weights_file", weights_name))
    if not weights.is_file():
        raise InputError(weights, "weights file missing")
    actual = sha256_file(weights)
    if actual != metadata.get("sha256"):
        expected = str(metadata.get("sha256"))[:12]
        raise InputError(weights, f"sha256 mismatch (file {actual[:12]}…, metadata {expected}…): corrupted or replaced")
    return metadata, weights


def read_weights(path: Path) -> Dict[str, Tensor]:
    """The tensors of the safetensors file ``path`` on the CPU (InputError when unreadable)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise InputError(path, f"unreadable safetensors file ({err})") from None
