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
from x2ct.findings import bundled_classifier_names, to_radiograph_frame
from x2ct.io import read_radiograph
from x2ct.models.classifiers import build_classifier
from x2ct.pipeline import InputSpec, load_model, predict, preprocess
from x2ct.resources import RESOURCES_ENV

FINDING_KEYS = {
    "task", "output", "label", "probability", "threshold", "call", "model", "weights_sha256", "inputs", "ct_source",
    "notes",
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
        task=task,
        outputs=list(outputs),
        inputs=list(net.inputs),
        input_sizes=sizes,
        thresholds=outputs,
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
    """The model input mapped back with to_radiograph_frame lands on the radiograph where it came from:
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
    back = to_radiograph_frame(prepared.model_input, prepared)
    assert back.shape == (rows, cols)
    box = prepared.record["window_px"]
    inside = np.zeros_like(pixels, dtype=bool)
    inside[max(box["top"], 0) : box["top"] + box["rows"], max(box["left"], 0) : box["left"] + box["cols"]] = True
    assert np.all(back[~inside] == 0)
    a, b = back[inside] - back[inside].mean(), pixels[inside] - pixels[inside].mean()
    assert float(a @ b / np.sqrt((a @ a) * (b @ b))) > 0.9
    peak = np.argwhere(back > 0.5).mean(axis=0)
    assert np.allclose(peak, [70, 60], atol=4)  # the block's centre, not mirrored or shifted


def test_predict_api_fills_findings_and_maps_on_the_outputs_grids(resources: Path):
    from x2ct.findings import load_classifiers

    model = load_model("x2ct-demo-biplanar")
    classifiers = load_classifiers(["tiny-tb"])
    prediction = predict(model, PA_PNG, LATERAL_PNG, classifiers=classifiers)
    assert prediction.cams["ct"]["tb_present"].shape == prediction.volume_hu.shape
    assert prediction.cams["pa"]["tb_present"].shape == prediction.views["PA"].radiograph.pixels.shape
    assert "classifiers" in prediction.timings_s
    assert predict(model, PA_PNG, LATERAL_PNG).findings == []


def test_report_shows_the_coronal_slice_of_the_map_peak_or_the_central_one():
    from x2ct.report import _peak_coronal_index

    cam = np.zeros((8, 16, 8), dtype=np.float32)
    cam[3, 11, 5] = 1.0
    assert _peak_coronal_index(cam) == 11
    two_slice = np.repeat(np.random.default_rng(0).random((8, 1, 8)), 16, axis=1)  # the same on every H slice
    assert _peak_coronal_index(two_slice) == 8
