"""``x2ct predict`` and ``x2ct demo``: input rules, outputs, DICOM, manifest batch with resume.

Models are tiny randomly initialised +B / +S generators (64³, width 1/16) saved through
x2ct.models.checkpoints into a temporary Resources folder (``X2CT_RESOURCES``) under the demo
models' names, so bundled-name resolution is exercised too. Random weights make no anatomy: the
output geometry is checked in test_pipeline.py with stand-in generators of known output.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import List

import pydicom
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from radiograph_factory import write_dx
from x2ct.cli import main
from x2ct.geometry import DIRECTION_LPS, CanonicalGrid
from x2ct.models.x2ct_gan import GeneratorConfig, X2CTBiplanar, X2CTSingleView
from x2ct.resources import RESOURCES_ENV

REPO = Path(__file__).resolve().parents[1]
RADIOGRAPHS = REPO / "Resources" / "SampleData" / "radiographs"
PA_PNG, LATERAL_PNG = RADIOGRAPHS / "pa.png", RADIOGRAPHS / "lateral.png"
TINY = GeneratorConfig(grid_size=64, width=1 / 16)


def save_tiny(kind: str, folder: Path) -> Path:
    """Save a tiny random +B ("biplanar") or +S ("singleview") generator as an x2ct model folder."""
    from x2ct.models.checkpoints import save_generator

    torch.manual_seed(0)
    model = X2CTBiplanar(TINY) if kind == "biplanar" else X2CTSingleView(TINY)
    save_generator(model, folder)
    return folder


def make_resources(root: Path) -> Path:
    """Fill ``root`` as a Resources folder: the sample radiographs and tiny models named like the demo models."""
    (root / "SampleData").mkdir()
    (root / "SampleData" / "radiographs").symlink_to(RADIOGRAPHS)
    (root / "SampleData" / "radiographs_tb").symlink_to(RADIOGRAPHS.parent / "radiographs_tb")
    for kind in ("biplanar", "singleview"):
        save_tiny(kind, root / "Models" / f"x2ct-demo-{kind}")
    return root


def run(args: List[str], capsys) -> tuple:
    """Run the CLI; return (exit status, stdout, stderr)."""
    status = main(args)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(status: int, err: str, *words: str) -> None:
    assert status == 2
    line = err.strip()
    assert line.startswith("x2ct: error: ") and "\n" not in line and "Traceback" not in line
    for word in words:
        assert word in line


# --------------------------------------------------------------------------------------------------
# Error rules: one line, exit 2, no output folder


def test_lateral_without_pa_is_an_error(resources: Path, tmp_path: Path, capsys):
    status, _, err = run(["predict", "--lateral", str(LATERAL_PNG), "-o", str(tmp_path / "out")], capsys)
    assert_one_line_error(status, err, str(LATERAL_PNG), "needs a PA")
    assert not (tmp_path / "out").exists()


def test_view_mismatch_is_an_error_unless_overridden(resources: Path, tmp_path: Path, capsys):
    lateral_dicom = write_dx(tmp_path / "lat.dcm", view_position="LL")
    frontal_dicom = write_dx(tmp_path / "pa.dcm", view_position="PA")
    out = tmp_path / "out"
    status, _, err = run(["predict", "--pa", str(lateral_dicom), "-o", str(out)], capsys)
    assert_one_line_error(status, err, str(lateral_dicom), "LATERAL", "--view-override")
    status, _, err = run(["predict", "--pa", str(PA_PNG), "--lateral", str(frontal_dicom), "-o", str(out)], capsys)
    assert_one_line_error(status, err, str(frontal_dicom), "PA")
    assert not out.exists()
    status, _, _ = run(["predict", "--pa", str(lateral_dicom), "-o", str(out), "--view-override"], capsys)
    assert status == 0
    assert any("overrides" in w for w in json.loads((out / "summary.json").read_text())["warnings"])


def test_non_chest_dicom_is_refused_unless_forced(resources: Path, tmp_path: Path, capsys):
    knee = write_dx(tmp_path / "knee.dcm", view_position="PA", body_part="KNEE")
    out = tmp_path / "out"
    status, _, err = run(["predict", "--pa", str(knee), "-o", str(out)], capsys)
    assert_one_line_error(status, err, str(knee), "KNEE", "--force")
    assert not out.exists()
    assert run(["predict", "--pa", str(knee), "-o", str(out), "--force"], capsys)[0] == 0


def test_a_refused_radiograph_is_reported_before_any_model_loads(resources: Path, tmp_path: Path, capsys, monkeypatch):
    from x2ct.inference.models import ModelCache

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(ModelCache, "get", no_loading)
    monkeypatch.setattr(ModelCache, "classifiers", no_loading)
    knee = write_dx(tmp_path / "knee.dcm", view_position="PA", body_part="KNEE")
    lateral = write_dx(tmp_path / "lateral.dcm", view_position="PA")  # tagged frontal, given as the lateral
    cases = [(["--pa", str(knee)], (str(knee), "KNEE")),
             (["--pa", str(PA_PNG), "--lateral", str(lateral)], (str(lateral), "--view-override"))]  # fmt: skip
    for args, words in cases:
        status, _, err = run(["predict", *args, "-o", str(tmp_path / "out")], capsys)
        assert_one_line_error(status, err, *words)


def test_biplanar_model_without_lateral_uses_its_single_view_sibling_or_refuses(
    resources: Path, tmp_path: Path, capsys
):
    out = tmp_path / "out"
    assert run(["predict", "--pa", str(PA_PNG), "-o", str(out), "--model", "x2ct-demo-biplanar"], capsys)[0] == 0
    assert json.loads((out / "summary.json").read_text())["model"]["name"] == "x2ct-demo-singleview"
    lonely = save_tiny("biplanar", tmp_path / "lonely-biplanar")
    out2 = tmp_path / "out2"
    status, _, err = run(["predict", "--pa", str(PA_PNG), "-o", str(out2), "--model", str(lonely)], capsys)
    assert_one_line_error(status, err, "biplanar", "lateral")
    assert not out2.exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (["--pa", "missing.png"], ["missing.png", "not found"]),
        (["--pa", str(PA_PNG), "--model", "no-such-model"], ["no-such-model"]),
        (["--manifest", "missing.csv"], ["missing.csv"]),
        ([], ["--pa"]),
    ],
)
def test_other_user_errors_are_one_line(resources: Path, tmp_path: Path, capsys, args, words):
    out = tmp_path / "out"
    status, _, err = run(["predict", *args, "-o", str(out)], capsys)
    assert_one_line_error(status, err, *words)
    assert not out.exists()


def test_non_empty_foreign_output_folder_is_refused(resources: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    status, _, err = run(["predict", "--pa", str(PA_PNG), "-o", str(out)], capsys)
    assert_one_line_error(status, err, "not empty")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_cuda_request_without_cuda_is_an_error(resources: Path, tmp_path: Path, capsys):
    status, _, err = run(["predict", "--pa", str(PA_PNG), "-o", str(tmp_path / "o"), "--device", "cuda"], capsys)
    assert_one_line_error(status, err, "CUDA")


# --------------------------------------------------------------------------------------------------
# Outputs


def test_biplanar_prediction_writes_nrrd_summary_and_report(resources: Path, tmp_path: Path, capsys):
    out = tmp_path / "case"
    status, stdout, _ = run(["predict", "--pa", str(PA_PNG), "--lateral", str(LATERAL_PNG), "-o", str(out)], capsys)
    assert status == 0 and "consistency" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["report.png", "summary.json", "synthetic_ct.nrrd"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["synthetic"].startswith("SYNTHETIC")
    assert summary["model"]["name"] == "x2ct-demo-biplanar" and summary["model"]["views"] == ["PA", "LATERAL"]
    assert len(summary["model"]["weights_sha256"]) == 64
    assert summary["device"] == "cpu" or summary["device"].startswith("cuda")
    assert set(summary["inputs"]) == {"PA", "LATERAL"}
    for record in summary["inputs"].values():
        assert record["resized_to"] == [64, 64] and record["normalization"].startswith("per-image min-max")
    assert summary["preprocessing"]["fov_mm_at_isocenter"] == pytest.approx(285.04, abs=0.01)
    assert set(summary["consistency"]["per_view"]) == {"PA", "LATERAL"}
    for scores in summary["consistency"]["per_view"].values():
        assert -1 <= scores["ncc"] <= 1 and -1 <= scores["ssim"] <= 1
    assert {"read", "preprocess", "generator", "reprojection", "total", "model_load", "write"} <= set(
        summary["timings_s"]
    )
    assert isinstance(summary["warnings"], list) and summary["outputs"]
    image = sitk.ReadImage(str(out / "synthetic_ct.nrrd"))
    grid = CanonicalGrid(size=64)
    assert image.GetSpacing() == pytest.approx((5.0,) * 3) and image.GetOrigin() == pytest.approx(grid.origin_lps)
    assert image.GetDirection() == pytest.approx(DIRECTION_LPS)
    assert -1024 <= sitk.GetArrayViewFromImage(image).min() and sitk.GetArrayViewFromImage(image).max() <= 1476
    assert image.GetMetaData("x2ct_synthetic").startswith("SYNTHETIC")
    with Image.open(out / "report.png") as report:
        assert report.size[0] == 4 * 256 and report.size[1] > 2 * 256


def test_pa_only_uses_the_single_view_model(resources: Path, tmp_path: Path, capsys):
    out = tmp_path / "case"
    assert run(["predict", "--pa", str(PA_PNG), "-o", str(out), "--device", "cpu"], capsys)[0] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["name"] == "x2ct-demo-singleview" and list(summary["inputs"]) == ["PA"]


def test_dicom_series_is_marked_synthetic_and_references_dicom_inputs(resources: Path, tmp_path: Path, capsys):
    pa = write_dx(tmp_path / "pa.dcm", view_position="PA", pixel_spacing=(3.0, 3.0))
    lateral = write_dx(tmp_path / "lat.dcm", view_position="LL", pixel_spacing=(3.0, 3.0))
    out = tmp_path / "case"
    assert run(["predict", "--pa", str(pa), "--lateral", str(lateral), "-o", str(out), "--dicom"], capsys)[0] == 0
    files = sorted((out / "dicom").iterdir())
    assert len(files) == 64
    ds = pydicom.dcmread(files[0])
    assert ds.SyntheticData == "YES" and ds.SeriesDescription.startswith("SYNTHETIC")
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    referenced = {item.ReferencedSOPInstanceUID for item in ds.SourceImageSequence}
    assert referenced == {pydicom.dcmread(pa).SOPInstanceUID, pydicom.dcmread(lateral).SOPInstanceUID}
    assert ds.StudyInstanceUID == pydicom.dcmread(pa).StudyInstanceUID


# --------------------------------------------------------------------------------------------------
# Manifest batch


def test_manifest_isolates_a_failing_case_and_resumes(resources: Path, tmp_path: Path, capsys):
    manifest = tmp_path / "cases.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case_id", "pa", "lateral"])
        writer.writerow(["both", str(PA_PNG), str(LATERAL_PNG)])
        writer.writerow(["broken", "does-not-exist.png", ""])
        writer.writerow(["pa-only", os.path.relpath(PA_PNG, tmp_path), ""])
    out = tmp_path / "batch"
    status, stdout, err = run(["predict", "--manifest", str(manifest), "-o", str(out)], capsys)
    assert status == 0 and "predicted 2" in stdout and "failed 1" in stdout
    assert "broken" in err and "not found" in err
    assert (out / "both" / "summary.json").is_file() and (out / "pa-only" / "summary.json").is_file()
    assert not (out / "broken").exists()
    rows = {r["case_id"]: r for r in csv.DictReader(open(out / "batch_summary.csv"))}
    assert {k: r["status"] for k, r in rows.items()} == {"both": "done", "broken": "failed", "pa-only": "done"}
    before = (out / "both" / "summary.json").stat().st_mtime_ns
    status, stdout, _ = run(["predict", "--manifest", str(manifest), "-o", str(out)], capsys)
    assert status == 0 and "skipped 2" in stdout and "failed 1" in stdout
    assert (out / "both" / "summary.json").stat().st_mtime_ns == before


def test_manifest_without_needed_columns_is_refused(resources: Path, tmp_path: Path, capsys):
    manifest = tmp_path / "cases.csv"
    manifest.write_text("case,pa\nx,a.png\n")
    status, _, err = run(["predict", "--manifest", str(manifest), "-o", str(tmp_path / "batch")], capsys)
    assert_one_line_error(status, err, "case_id")
    assert not (tmp_path / "batch").exists()


# --------------------------------------------------------------------------------------------------
# Demo


def test_demo_runs_both_models_on_both_sample_cases(resources: Path, tmp_path: Path, capsys):
    out = tmp_path / "x2ct-demo"
    status, stdout, _ = run(["demo", "-o", str(out), "--device", "cpu"], capsys)
    assert status == 0 and "consistency" in stdout and "[5/5]" in stdout
    summary = json.loads((out / "demo.json").read_text())
    assert set(summary["cases"]) == {"healthy", "tb"}
    for case in ("healthy", "tb"):
        assert set(summary["cases"][case]["runs"]) == {"biplanar", "singleview"}
        for folder in ("biplanar", "singleview"):
            # no findings.json: these tiny resources have no classifier
            for name in ("synthetic_ct.nrrd", "report.png"):
                assert (out / case / folder / name).is_file()
    assert summary["cases"]["healthy"]["lesions"] is None
    assert {x["kind"] for x in summary["cases"]["tb"]["lesions"]} == {"cavity", "consolidation"}
    assert (out / "report.png").is_file()


def test_demo_without_bundled_models_fails_with_one_line_naming_the_model(tmp_path: Path, capsys, monkeypatch):
    empty = tmp_path / "Resources"
    (empty / "SampleData").mkdir(parents=True)
    monkeypatch.setenv(RESOURCES_ENV, str(empty))
    status, _, err = run(["demo", "-o", str(tmp_path / "x2ct-demo")], capsys)
    assert_one_line_error(status, err, "x2ct-demo-biplanar", "not found")
    assert not (tmp_path / "x2ct-demo").exists()
