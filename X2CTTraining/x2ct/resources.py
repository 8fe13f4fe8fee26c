"""Where the repository's ``Resources/`` folder (bundled models, sample data) is found."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

RESOURCES_ENV = "X2CT_RESOURCES"
"""Environment variable that overrides the location of the Resources folder."""


def resources_dir() -> Path:
    """The Resources folder: ``$X2CT_RESOURCES`` if set, else the repository checkout this package lives in.

    Raises FileNotFoundError with a one-line explanation when neither exists (for example a
    non-editable install without ``X2CT_RESOURCES``).
    """
    env = os.environ.get(RESOURCES_ENV)
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "Resources")
    for candidate in candidates:
        if (candidate / "SampleData").is_dir():
            return candidate
    raise FileNotFoundError(
        f"Resources folder not found (looked in {', '.join(map(str, candidates))}); "
        f"install from a checkout with 'pip install -e X2CTTraining' or set {RESOURCES_ENV}"
    )


def sample_ct_path() -> Path:
    """The bundled real chest CT (NIfTI, HU); see Resources/SampleData/PROVENANCE.md."""
    return resources_dir() / "SampleData" / "chest_ct.nii.gz"


def sample_labels_path() -> Path:
    """The bundled organ label map on the sample CT's grid."""
    return resources_dir() / "SampleData" / "chest_labels.nii.gz"


def bundled_names(folder: str) -> List[str]:
    """Names of the bundled models in ``Resources/<folder>`` (sub-folders holding a ``model.json``); [] when
    there is no Resources folder or no such sub-folder."""
    try:
        root = resources_dir() / folder
    except FileNotFoundError:
        return []
    return sorted(p.name for p in root.iterdir() if (p / "model.json").is_file()) if root.is_dir() else []
