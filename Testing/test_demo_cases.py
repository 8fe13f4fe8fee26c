"""The demo's two sample cases: the TB case's lesions, the Guided Grad-CAM peak's distance to them, and the
demo picture that shows both cases (x2ct.demo, x2ct.inference.report.cases_picture)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from x2ct.demo import DEMO_CASES, peak_to_lesion_mm, sample_case
from x2ct.geometry import EXTENT_MM
from x2ct.inference import load_model, predict
from x2ct.inference.report import TILE, CaseRow, cases_picture, ct_peak_index, lesions_on_grid
from x2ct.inference.types import Finding, VolumePeak
from x2ct.views import CT_KEY

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "Resources" / "SampleData"
GREEN = (0, 255, 0)


def test_the_tb_case_lesions_are_what_the_script_paints_and_what_its_record_says():
    sys.path.insert(0, str(SAMPLE))
    try:
        import make_sample_radiographs as script
    finally:
        sys.path.remove(str(SAMPLE))
    from x2ct.data.body import masked_canonical_ct
    from x2ct.data.synthetic import LESION_KINDS, synthetic_case
    from x2ct.geometry import labels_to_canonical
    from x2ct.io import read_ct
    from x2ct.resources import sample_ct_path, sample_labels_path

    ct = masked_canonical_ct(read_ct(sample_ct_path()), size=script.GRID_SIZE, source=sample_ct_path())
    labels = sitk.GetArrayFromImage(labels_to_canonical(sitk.ReadImage(str(sample_labels_path())), ct))
    case = synthetic_case(sitk.GetArrayFromImage(ct), labels, EXTENT_MM / script.GRID_SIZE, script.TB_SEED, 0,
                          script.NO_AUGMENTATION, script.TB_KINDS)  # fmt: skip
    stored = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE / "radiographs_tb" / "lesions.nrrd")))
    record = json.loads((SAMPLE / "radiographs_tb" / "lesions.json").read_text())
    assert case.targets["tb_present"] == 1 and record["targets"] == case.targets
    assert [x["kind"] for x in record["lesions"]] == case.kinds == ["cavity", "consolidation"]
    for entry in record["lesions"]:
        mask = case.lesion_masks[entry["kind"]]
        assert np.array_equal(stored == LESION_KINDS.index(entry["kind"]) + 1, mask)
        assert np.allclose(entry["centroid_dhw"], np.argwhere(mask).mean(axis=0), atol=0.01)
    # the lesions are the only difference: no contrast-enhanced vessels, and beyond one voxel of the lesions
    # (their anti-aliased edge) the CT is the healthy one
    from scipy import ndimage

    assert not case.contrast
    near = ndimage.binary_dilation(stored > 0, np.ones((3, 3, 3), bool))
    assert np.array_equal(case.ct_hu[~near], sitk.GetArrayFromImage(ct)[~near])
    loaded = sample_case("tb")
    assert loaded.lesions is not None and np.array_equal(loaded.lesions, stored > 0)
    assert sample_case("healthy").lesions is None and set(DEMO_CASES) == {"healthy", "tb"}


class _Grid:
    """The two things :func:`peak_to_lesion_mm` asks of a prediction."""

    def __init__(self, size: int) -> None:
        from x2ct.geometry import CanonicalGrid

        self.volume_hu = np.zeros((size,) * 3, np.float32)
        self.grid = CanonicalGrid(size, center_lps=(12.0, -30.0, 150.0))


def _finding(prediction: _Grid, dhw, two_slice: bool = False) -> Finding:
    d, h, w = dhw
    lps = prediction.grid.ijk_to_lps() @ np.array([w, h, d, 1.0])
    point = (float(lps[0]), None if two_slice else float(lps[1]), float(lps[2]))
    return Finding("tb", "tb_present", "TB", 0.9, 0.5, "positive", "m", None, ["ct"], "x", [],
                   {CT_KEY: VolumePeak(point, point)})  # fmt: skip


def test_peak_to_lesion_distance_on_the_prediction_grid():
    lesions = np.zeros((128,) * 3, bool)
    lesions[40:50, 60:70, 30:40] = True  # on 64³: d 20-24, h 30-34, w 15-19
    prediction = _Grid(64)
    spacing = EXTENT_MM / 64
    assert lesions_on_grid(lesions, 64)[20:25, 30:35, 15:20].all() and lesions_on_grid(lesions, 64).sum() == 125
    inside = peak_to_lesion_mm(_finding(prediction, (22, 32, 17)), prediction, lesions)
    assert inside is not None and inside["inside"] and inside["distance_mm"] == 0.0 and inside["plane"] == "3D"
    assert ct_peak_index(_finding(prediction, (22, 32, 17)).guided_peak[CT_KEY].lps_mm, prediction) == pytest.approx(
        (22, 32, 17)
    )
    away = peak_to_lesion_mm(_finding(prediction, (22, 32, 29)), prediction, lesions)  # 10 voxels right of w 19
    assert not away["inside"] and away["distance_mm"] == pytest.approx(10 * spacing, abs=0.05)
    # a two-slice model's peak (no anterior-posterior position) is measured in the coronal plane
    flat = peak_to_lesion_mm(_finding(prediction, (27, 0, 17), two_slice=True), prediction, lesions)
    assert flat["plane"].startswith("coronal") and flat["distance_mm"] == pytest.approx(3 * spacing, abs=0.05)
    assert peak_to_lesion_mm(Finding("t", "o", "", 0.1, 0.5, "negative", "m", None, [], None, [], {}), prediction,
                             lesions) is None  # fmt: skip


@pytest.fixture(scope="module")
def tiny_prediction(tmp_path_factory):
    from test_predict import save_tiny

    folder = save_tiny("biplanar", tmp_path_factory.mktemp("model") / "tiny")
    case = sample_case("tb")
    return predict(load_model(str(folder)), case.radiographs["pa"], case.radiographs["lateral"])


def test_the_demo_picture_outlines_the_lesions_and_crosses_the_guided_peak(tiny_prediction):
    prediction = tiny_prediction
    size = prediction.volume_hu.shape[0]
    lesions = sample_case("tb").lesions
    on_grid = lesions_on_grid(lesions, size)
    h = int(np.argmax(on_grid.sum(axis=(0, 2))))
    d, w = np.argwhere(on_grid[:, h, :])[0]
    point = prediction.grid.ijk_to_lps() @ np.array([w, h, d, 1.0])
    peak = VolumePeak(tuple(float(v) for v in point[:3]), tuple(float(v) for v in point[:3]))  # type: ignore[arg-type]
    prediction.findings = [Finding("tb", "tb_present", "TB", 0.9, 0.5, "positive", "m", None, ["ct"], "x", [],
                                   {CT_KEY: peak})]  # fmt: skip
    prediction.heat_maps.ct = {"tb_present": np.zeros(prediction.volume_hu.shape, np.float32)}
    picture = np.asarray(cases_picture([CaseRow("healthy", {"+B": prediction}),
                                        CaseRow("tb", {"+B": prediction}, lesions, ["a note"], "tb_present")], "t"))
    green = np.all(picture == GREEN, axis=-1)
    top = 24 + 26  # header and banner
    row_height = green.shape[0] - top - (green.shape[0] - top) // 2
    healthy_rows, tb_rows = green[top : top + row_height], green[top + row_height :]
    assert not healthy_rows.any() and tb_rows.any()
    assert not green[:, :TILE].any()  # the PA tile has no outline; the CT tiles do
    columns = np.flatnonzero(tb_rows.any(axis=0))
    assert columns.min() >= TILE and columns.max() < 3 * TILE
    # the cross at the peak: white pixels at the peak's place on the CT tile of the TB row
    x = int((w + 0.5) * TILE / size) + TILE
    y = int((d + 0.5) * TILE / size) + top + row_height + 18
    patch = picture[y - 2 : y + 3, x - 2 : x + 3]
    assert (patch == 255).all(axis=-1).any()
