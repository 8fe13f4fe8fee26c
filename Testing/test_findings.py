"""Classifiers in ``x2ct predict`` / ``x2ct demo``: findings.json, Grad-CAM files and their alignment.

The generators are the tiny random ones of test_predict.py; the classifiers are tiny networks with
random weights saved in the classifier format with chosen thresholds under a temporary
``Resources/Classifiers``, so the wiring (inputs, calls, files, geometry) is tested without training.
Whether a trained classifier's maps find lesions is tested in test_gradcam.py and test_classify.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Iterator

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from test_predict import LATERAL_PNG, PA_PNG, make_resources, run
from x2ct.classify.checkpoint import save_classifier
from x2ct.data.loader import ct_to_unit
from x2ct.inference import (
    InputSpec,
    RadiographPeak,
    VolumePeak,
    bundled_classifier_names,
    load_classifiers,
    load_model,
    predict,
)
from x2ct.inference.findings import guided_peak
from x2ct.inference.preprocess import preprocess
from x2ct.io import read_radiograph
from x2ct.models.classifiers import build_classifier
from x2ct.models.metadata import TaskSpec
from x2ct.resources import RESOURCES_ENV
from x2ct.views import CT_KEY, PA, PA_KEY

FINDING_KEYS = {
    "task", "output", "label", "probability", "threshold", "call", "model", "weights_sha256", "inputs", "ct_source",
    "notes", "guided_peak",
}  # fmt: skip
TB_THRESHOLD = 0.37


def save_tiny_classifier(folder: Path, arch: str, task: str, outputs: Dict[str, float], sizes: Dict[str, int]) -> None:
    """A random-weight classifier with frozen thresholds ``outputs`` (output -> threshold)."""
    torch.manual_seed(1)
    options = {"width": 1 / 16} if "cnn3d" in arch else {"init_features": 4, "growth_rate": 4, "block_config": (1, 1)}
    net = build_classifier(arch, len(outputs), **options)
    save_classifier(
        net,
        folder,
        task=TaskSpec(task, tuple(outputs), dict(outputs)),
        input_sizes={key: sizes[key] for key in net.inputs},
        training_data={"ct_source": {"kind": "synthetic", "generator": {"model": "x2ct-demo-biplanar"}}},
    )


@pytest.fixture(scope="module")
def resources(tmp_path_factory) -> Iterator[Path]:
    """Resources with tiny generators and two tiny classifiers: PA+CT (tb) and PA+lateral (pe)."""
    root = make_resources(tmp_path_factory.mktemp("Resources"))
    classifiers = root / "Classifiers"
    save_tiny_classifier(
        classifiers / "tiny-tb", "concat-cnn3d-2slice", "tb", {"tb_present": TB_THRESHOLD}, {"pa": 64, "ct": 64}
    )
    save_tiny_classifier(
        classifiers / "tiny-pe-views", "hemis-densenet2d", "pe", {"pe_present": 0.5}, {"pa": 32, "lateral": 32}
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(RESOURCES_ENV, str(root))
        yield root


def test_bundled_classifiers_are_listed(resources: Path):
    assert bundled_classifier_names() == ["tiny-pe-views", "tiny-tb"]


def test_predict_writes_findings_and_aligned_gradcam_files(resources: Path, tmp_path: Path, capsys):
    out = tmp_path / "case"
    status, stdout, _ = run(["predict", "--pa", str(PA_PNG), "--lateral", str(LATERAL_PNG), "-o", str(out)], capsys)
    assert status == 0
    document = json.loads((out / "findings.json").read_text())
    assert "SYNTHETIC" in document["synthetic"]
    findings = {f["output"]: f for f in document["findings"]}
    assert set(findings) == {"tb_present", "pe_present"}
    for finding in findings.values():
        assert set(finding) == FINDING_KEYS
        assert 0.0 <= finding["probability"] <= 1.0
        assert finding["call"] == ("positive" if finding["probability"] >= finding["threshold"] else "negative")
        assert len(finding["weights_sha256"]) == 64
        assert finding["label"] in stdout
    assert findings["tb_present"]["threshold"] == pytest.approx(TB_THRESHOLD)
    assert findings["tb_present"]["inputs"] == ["PA radiograph", "synthetic CT"]
    assert findings["pe_present"]["inputs"] == ["PA radiograph", "lateral radiograph"]
    # Guided Grad-CAM peaks: one per input map; the two-slice CT map has no A->P position
    assert set(findings["tb_present"]["guided_peak"]) == {"pa", "ct"}
    assert set(findings["pe_present"]["guided_peak"]) == {"pa", "lateral"}
    ct_peak = findings["tb_present"]["guided_peak"]["ct"]
    assert ct_peak["lps_mm"][1] is None and ct_peak["ras_mm"][1] is None and "anterior-posterior" in ct_peak["note"]
    assert ct_peak["ras_mm"][0] == -ct_peak["lps_mm"][0] and ct_peak["ras_mm"][2] == ct_peak["lps_mm"][2]
    pa_rows, pa_cols = read_radiograph(PA_PNG).pixels.shape
    for finding in findings.values():
        row, col = finding["guided_peak"]["pa"]["pixel_rc"]
        assert -0.5 <= row <= pa_rows - 0.5 and -0.5 <= col <= pa_cols - 0.5
    summary = json.loads((out / "summary.json").read_text())
    assert {"findings.json", "gradcam/"} <= set(summary["outputs"])
    assert [f["output"] for f in summary["findings"]] == [f["output"] for f in document["findings"]]

    ct = sitk.ReadImage(str(out / "synthetic_ct.nrrd"))
    cam_ct = sitk.ReadImage(str(out / "gradcam" / "tb_present_ct.nrrd"))
    assert cam_ct.GetSize() == ct.GetSize()
    assert cam_ct.GetOrigin() == ct.GetOrigin() and cam_ct.GetDirection() == ct.GetDirection()
    assert cam_ct.GetSpacing() == ct.GetSpacing()
    values = sitk.GetArrayFromImage(cam_ct)
    assert values.min() >= 0.0 and values.max() <= 1.0
    pa_pixels = read_radiograph(PA_PNG).pixels
    for output, key in (("tb_present", "pa"), ("pe_present", "pa"), ("pe_present", "lateral")):
        cam = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "gradcam" / f"{output}_{key}.nrrd")))
        assert cam.shape == pa_pixels.shape
        overlay = Image.open(out / "gradcam" / f"{output}_{key}.png")
        assert overlay.size == (pa_pixels.shape[1], pa_pixels.shape[0]) and overlay.mode == "RGB"
    report = Image.open(out / "report.png")
    assert report.height > 2 * 256 + 100  # the two finding rows were added under the inputs and slices


def test_pa_only_case_leaves_out_bundled_classifiers_that_need_a_lateral(resources: Path, tmp_path: Path, capsys):
    out = tmp_path / "pa_only"
    assert run(["predict", "--pa", str(PA_PNG), "-o", str(out)], capsys)[0] == 0
    findings = json.loads((out / "findings.json").read_text())["findings"]
    assert [f["output"] for f in findings] == ["tb_present"]
    assert any("x2ct-demo-biplanar" in note for note in findings[0]["notes"])  # CT from +S, trained on +B


def test_named_classifier_that_needs_a_lateral_is_a_one_line_error(resources: Path, tmp_path: Path, capsys):
    out = tmp_path / "refused"
    status, _, err = run(["predict", "--pa", str(PA_PNG), "--classifier", "tiny-pe-views", "-o", str(out)], capsys)
    assert status == 2 and "needs a lateral" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_unknown_classifier_is_a_one_line_error(resources: Path, tmp_path: Path, capsys):
    status, _, err = run(["predict", "--pa", str(PA_PNG), "--classifier", "nope", "-o", str(tmp_path / "x")], capsys)
    assert status == 2 and "no such classifier" in err and len(err.strip().splitlines()) == 1


def test_no_classifiers_writes_no_findings(resources: Path, tmp_path: Path, capsys):
    out = tmp_path / "plain"
    assert run(["predict", "--pa", str(PA_PNG), "--no-classifiers", "-o", str(out)], capsys)[0] == 0
    assert not (out / "findings.json").exists() and not (out / "gradcam").exists()


@pytest.mark.parametrize("spacing", [None, (0.4, 0.4), (1.2, 1.2)], ids=["unknown", "pad", "crop"])
def test_maps_go_back_onto_the_radiographs_own_pixels(tmp_path: Path, spacing):
    """The model input mapped back by its InputFrame lands on the radiograph where it came from:
    an asymmetric picture (bright block at the top left) is recovered in place for a crop, a pad and the
    unknown-spacing square."""
    rows, cols = 300, 240
    pixels = np.zeros((rows, cols), dtype=np.float32)
    pixels[40:100, 30:90] = 1.0
    path = tmp_path / "x.nrrd"
    image = sitk.GetImageFromArray(pixels)
    if spacing:
        image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    radiograph = read_radiograph(path, view="PA")
    if spacing is None:
        radiograph.spacing_mm = None
        radiograph.metadata["format"] = "png"
    spec = InputSpec(size=64, drr_size=64, quantize_bits=8)
    prepared = preprocess(radiograph, spec)
    frame = prepared.frame
    back = frame.to_radiograph(prepared.model_input)
    assert back.shape == (rows, cols)
    assert prepared.record["window_px"] == frame.to_record()
    inside = np.zeros_like(pixels, dtype=bool)
    inside[max(frame.top, 0) : frame.top + frame.rows, max(frame.left, 0) : frame.left + frame.cols] = True
    assert np.all(back[~inside] == 0)
    a, b = back[inside] - back[inside].mean(), pixels[inside] - pixels[inside].mean()
    assert float(a @ b / np.sqrt((a @ a) * (b @ b))) > 0.9
    peak = np.argwhere(back > 0.5).mean(axis=0)
    assert np.allclose(peak, [70, 60], atol=4)  # the block's centre, not mirrored or shifted


def test_predict_api_fills_findings_and_maps_on_the_outputs_grids(resources: Path):
    model = load_model("x2ct-demo-biplanar")
    classifiers = load_classifiers(["tiny-tb"])
    prediction = predict(model, PA_PNG, LATERAL_PNG, classifiers=classifiers)
    assert prediction.heat_maps.ct["tb_present"].shape == prediction.volume_hu.shape
    assert prediction.heat_maps.radiographs[PA]["tb_present"].shape == prediction.views[PA].radiograph.pixels.shape
    assert list(prediction.heat_maps.by_input_key()) == [CT_KEY, PA_KEY]
    assert "classifiers" in prediction.timings_s
    assert predict(model, PA_PNG, LATERAL_PNG).findings == []


def test_report_shows_the_coronal_slice_of_the_map_peak_or_the_central_one():
    from x2ct.inference.report import _peak_coronal_index

    cam = np.zeros((8, 16, 8), dtype=np.float32)
    cam[3, 11, 5] = 1.0
    assert _peak_coronal_index(cam) == 11
    two_slice = np.repeat(np.random.default_rng(0).random((8, 1, 8)), 16, axis=1)  # the same on every H slice
    assert _peak_coronal_index(two_slice) == 8


def test_guided_peak_puts_a_ct_impulse_and_a_radiograph_spot_back_where_they_were(resources: Path):
    """A bright voxel at a known place of the synthetic CT's grid, resized to a classifier's 32³ grid as
    the classifier sees it (ct_to_unit), peaks where guided_peak says (LPS and RAS, within one classifier
    voxel); a bright pixel of the radiograph, taken to the model-input square as the classifier sees it,
    comes back onto its own pixel; a two-slice (coronal) map has no A->P position; an empty map has no peak."""
    prediction = predict(
        load_model("x2ct-demo-biplanar"), PA_PNG, LATERAL_PNG, classifiers=load_classifiers(["tiny-tb"])
    )
    grid = prediction.grid
    n = grid.size
    ijk = (int(0.7 * n), int(0.25 * n), int(0.8 * n))  # (i, j, k) = (W: R->L, H: A->P, D: S->I), off-centre
    volume = np.full(grid.shape_dhw, -1000.0, dtype=np.float32)
    volume[ijk[2] - 2 : ijk[2] + 3, ijk[1] - 2 : ijk[1] + 3, ijk[0] - 2 : ijk[0] + 3] = 1000.0
    small = ct_to_unit(volume + 1024.0, 32)
    peak = guided_peak(CT_KEY, small, prediction)
    expected_lps = (grid.ijk_to_lps() @ np.array([*ijk, 1.0]))[:3]
    expected_ras = (grid.ijk_to_ras() @ np.array([*ijk, 1.0]))[:3]
    tolerance = grid.extent_mm / 32
    np.testing.assert_allclose(peak.lps_mm, expected_lps, atol=tolerance)
    np.testing.assert_allclose(peak.ras_mm, expected_ras, atol=tolerance)
    assert peak.note is None and "note" not in peak.to_dict()

    coronal = np.repeat(small.max(axis=1, keepdims=True), 32, axis=1)
    flat = guided_peak(CT_KEY, coronal, prediction)
    assert flat.lps_mm[1] is None and flat.ras_mm[1] is None and "note" in flat.to_dict()
    np.testing.assert_allclose([flat.lps_mm[0], flat.lps_mm[2]], expected_lps[[0, 2]], atol=tolerance)
    assert guided_peak(CT_KEY, np.zeros_like(small), prediction) is None

    view = prediction.views[PA]
    rows, cols = view.radiograph.pixels.shape
    spot = (rows // 3, 2 * cols // 3)
    frame = view.frame
    size = 48  # a classifier input size other than the generator's
    r = (spot[0] - frame.top + 0.5) * size / frame.rows - 0.5
    c = (spot[1] - frame.left + 0.5) * size / frame.cols - 0.5
    square = np.zeros((size, size), dtype=np.float32)
    square[int(round(r)), int(round(c))] = 1.0
    back = guided_peak(PA_KEY, square, prediction).pixel_rc
    np.testing.assert_allclose(back, spot, atol=max(frame.rows, frame.cols) / size)


def test_report_marks_the_guided_peak_on_the_heat_map_tiles(resources: Path):
    """The cross sits where guided_peak says: on the PA tile (pixel -> tile) and on the CT tile (LPS -> grid
    index -> tile), also when the peak is moved; LPS goes back to the grid index it came from."""
    from x2ct.inference.report import _BANNER_HEIGHT, _HEADER, _LABEL, TILE, _tile_xy, ct_peak_index, report_picture

    prediction = predict(
        load_model("x2ct-demo-biplanar"), PA_PNG, LATERAL_PNG, classifiers=load_classifiers(["tiny-tb"])
    )
    grid = prediction.grid
    ijk = np.array([0.7, 0.25, 0.8]) * (grid.size - 1)
    lps = (grid.ijk_to_lps() @ np.array([*ijk, 1.0]))[:3]
    np.testing.assert_allclose(ct_peak_index(list(lps), prediction), ijk[::-1], atol=1e-6)
    d, h, w = ct_peak_index([lps[0], None, lps[2]], prediction)
    assert h is None and np.allclose((d, w), (ijk[2], ijk[0]))
    assert _tile_xy((0.0, 0.0), (TILE, TILE)) == (0.0, 0.0) and _tile_xy((9.5, 19.5), (20, 40)) == (127.5, 127.5)

    top = _HEADER + _BANNER_HEIGHT
    pixels = prediction.views[PA].radiograph.pixels
    finding = next(f for f in prediction.findings if f.output == "tb_present")
    for pixel_rc, ct_lps in (
        (finding.guided_peak[PA_KEY].pixel_rc, finding.guided_peak[CT_KEY].lps_mm),
        ((pixels.shape[0] * 0.3, pixels.shape[1] * 0.6), (lps[0], None, lps[2])),  # moved
    ):
        finding.guided_peak = {PA_KEY: RadiographPeak(pixel_rc), CT_KEY: VolumePeak(lps_mm=ct_lps, ras_mm=ct_lps)}
        picture = np.asarray(report_picture(prediction))
        finding.guided_peak = {PA_KEY: None, CT_KEY: None}  # an empty map: no cross
        unmarked = np.asarray(report_picture(prediction))
        d, _, w = ct_peak_index(ct_lps, prediction)
        for row, (x, y) in ((2, _tile_xy(pixel_rc, pixels.shape)), (3, _tile_xy((d, w), (grid.size, grid.size)))):
            at = (top + row * (_LABEL + TILE) + _LABEL + int(round(y)), int(round(x)))  # first tile of rows 3 and 4
            assert tuple(picture[at]) == (255, 255, 255) and tuple(unmarked[at]) != (255, 255, 255)
