"""The bundled demo generators do what their model cards say: the biplanar one puts a 25 mm solid lesion, seen on
both radiographs, where it belongs in the synthetic CT, in every lung lobe; and both are small, checked files.

The lesion check is ``x2ct lesion-check`` (x2ct.evaluate.lesion_check): a sphere painted into a lobe of the
un-augmented sample CT, its DRRs rendered as the training data's, and the synthetic CT with the lesion compared
with the one without it. Two seeds put the lesions at different places in each lobe than the model card's check
(seed 0) did.
"""

from __future__ import annotations

import json

import pytest

from x2ct.evaluate.lesion_check import CLEAR_RISE_HU, LOBES, check_lesions
from x2ct.resources import resources_dir

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = resources_dir() / "Models"
MAX_BYTES = 60 * 2**20
"""The largest bundled model file the project allows (60 MiB)."""


@pytest.mark.parametrize("seed", [1, 2])
def test_the_biplanar_model_shows_a_25mm_lesion_in_place_in_every_lobe(seed):
    results = check_lesions("x2ct-demo-biplanar", lobes=tuple(LOBES), diameter_mm=25.0, seed=seed)
    report = [(r.lobe_name, r.distance_mm, r.rise_hu) for r in results]
    assert all(r.distance_mm <= 25.0 for r in results), report  # within one lesion diameter
    assert all(r.rise_hu >= CLEAR_RISE_HU for r in results), report  # a clear rise over the lesion-free CT
    assert all(r.real_rise_hu > r.rise_hu for r in results)  # and not more than the real CT's


@pytest.mark.parametrize("name", ["x2ct-demo-biplanar", "x2ct-demo-singleview"])
def test_bundled_generators_are_back_projection_models_with_their_checks_recorded(name):
    folder = MODELS / name
    meta = json.loads((folder / "model.json").read_text())
    assert meta["network"]["architecture"] == "bp_unet"
    assert (folder / "model.safetensors").stat().st_size <= MAX_BYTES
    lesions = meta["metrics"]["lesions"]
    assert lesions["n_usable"] > 0 and lesions["relative_contrast_mean"] is not None
    if name == "x2ct-demo-biplanar":  # the card's check: every lobe shows
        assert [r["shows"] for r in meta["metrics"]["lesion_check"]] == [True] * len(LOBES)
