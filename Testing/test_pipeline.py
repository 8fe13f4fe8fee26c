"""The inference pipeline (x2ct.inference): preprocessing, re-projection check, output geometry, progress/cancel.

Generators here are stand-ins with known outputs (a volume with a blob at the patient's left, or the
real sample CT itself), so the geometry of the written NRRD can be checked exactly. The trained
demo model's heart-on-the-left check runs once Resources/Models/x2ct-demo-biplanar exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from radiograph_factory import write_dx
from x2ct.data.body import masked_canonical_ct
from x2ct.errors import InputError
from x2ct.geometry import DIRECTION_LPS, CanonicalGrid, labels_to_canonical
from x2ct.inference import InputSpec, LoadedModel, PredictionCancelled, load_model, predict, write_prediction
from x2ct.inference.models import input_spec_from_metadata
from x2ct.inference.preprocess import match_intensity, preprocess
from x2ct.intensity import hu_to_unit
from x2ct.io import read_ct, read_radiograph
from x2ct.models import GeneratorConfig, X2CTSingleView
from x2ct.models.checkpoints import describe_generator, resolve_device
from x2ct.resources import resources_dir

REPO = Path(__file__).resolve().parents[1]
RADIOGRAPHS = REPO / "Resources" / "SampleData" / "radiographs"
DEMO_BIPLANAR = REPO / "Resources" / "Models" / "x2ct-demo-biplanar"
HEART = 51


class FixedVolume(torch.nn.Module):
    """A stand-in generator: returns the same (1, 1, D, H, W) [0, 1] volume for any input."""

    def __init__(self, unit_dhw: np.ndarray) -> None:
        super().__init__()
        self.volume = torch.from_numpy(np.asarray(unit_dhw, dtype=np.float32))[None, None]

    def forward(self, pa: torch.Tensor, lateral=None) -> torch.Tensor:
        assert pa.shape[-1] == self.volume.shape[-1] and pa.min() >= 0 and pa.max() <= 1
        return self.volume.clone()


def stand_in(unit_dhw: np.ndarray, biplanar: bool = True) -> LoadedModel:
    size = unit_dhw.shape[0]
    views = ("PA", "LATERAL") if biplanar else ("PA",)
    arch = "x2ct_gan_biplanar" if biplanar else "x2ct_gan_singleview"
    spec = InputSpec(size=size, drr_size=size)
    return LoadedModel(FixedVolume(unit_dhw), "stand-in", "stand-in", arch, views, None, spec, {}, torch.device("cpu"))


@pytest.fixture(scope="module")
def real_ct_canonical(sample_ct_path: Path, sample_labels_path: Path) -> Dict[str, sitk.Image]:
    """The un-augmented sample CT without table on the canonical 128³ grid, and its labels there."""
    ct = masked_canonical_ct(read_ct(sample_ct_path), size=128)
    return {"ct": ct, "labels": labels_to_canonical(sitk.ReadImage(str(sample_labels_path)), ct)}


# --------------------------------------------------------------------------------------------------
# Preprocessing


def test_input_spec_comes_from_the_model_metadata():
    geometry = {"sad_mm": 500.0, "sid_mm": 1000.0, "detector_mm": 400.0, "drr_size": 96}
    model = X2CTSingleView(GeneratorConfig(grid_size=64, width=1 / 16))
    spec = input_spec_from_metadata(describe_generator(model, drr_geometry=geometry))
    assert spec.size == 64 and spec.fov_mm == pytest.approx(200.0) and spec.drr_size == 96 and spec.quantize_bits == 8
    official_size = X2CTSingleView(GeneratorConfig(grid_size=128, width=1 / 16))
    official = input_spec_from_metadata(describe_generator(official_size))
    assert official.fov_mm == pytest.approx(285.04, abs=0.01) and official.drr_size == 128
    assert input_spec_from_metadata(describe_generator(model, quantize_bits=None)).quantize_bits is None


def test_intensity_matching_is_min_max_then_8_bit():
    image = np.linspace(0.2, 0.7, 64 * 64, dtype=np.float32).reshape(64, 64)
    out = match_intensity(image, InputSpec(size=64))
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.allclose(out * 255, np.round(out * 255), atol=1e-4)
    assert len(np.unique(match_intensity(image, InputSpec(size=64, quantize_bits=None)))) > 256


def test_known_spacing_crops_or_pads_to_the_model_field_of_view(tmp_path: Path):
    spec = InputSpec(size=64)
    wide = read_radiograph(write_dx(tmp_path / "wide.dcm", pixel_spacing=(5.0, 5.0), view_position="PA"))
    record = preprocess(wide, spec).record  # 96 x 80 px at 5 mm = 480 x 400 mm: centre crop
    assert record["spacing_source"] == "PixelSpacing"
    assert record["window_px"]["rows"] == record["window_px"]["cols"] == round(spec.fov_mm / 5.0)
    assert record["window_mm"] == pytest.approx([spec.fov_mm, spec.fov_mm], abs=5.0)
    narrow = read_radiograph(write_dx(tmp_path / "narrow.dcm", pixel_spacing=(1.0, 1.0), view_position="PA"))
    prepared = preprocess(narrow, spec)  # 96 x 80 mm: zero padded (air) to 285 mm
    assert prepared.record["window_px"]["top"] < 0 and prepared.model_input.shape == (64, 64)
    assert prepared.model_input[0, 0] == 0.0 and any("padded" in w for w in prepared.record["warnings"])


def test_detector_spacing_is_corrected_for_magnification_and_unknown_spacing_falls_back(tmp_path: Path):
    spec = InputSpec(size=64)
    detector = read_radiograph(write_dx(tmp_path / "d.dcm", imager_pixel_spacing=(3.3, 3.3), view_position="PA"))
    record = preprocess(detector, spec).record
    assert record["spacing_source"] == "ImagerPixelSpacing"
    assert record["spacing_at_patient_mm"][0] == pytest.approx(3.0)
    png = read_radiograph(RADIOGRAPHS / "pa.png")
    record = preprocess(png, spec).record
    assert record["spacing_source"] == "unknown" and record["window_px"]["rows"] == min(png.pixels.shape)
    assert any("spacing unknown" in w for w in record["warnings"])


def test_drr_nrrd_header_gives_the_isocentre_spacing():
    record = preprocess(read_radiograph(RADIOGRAPHS / "pa.nrrd"), InputSpec(size=64)).record
    assert record["spacing_source"].startswith("x2ct DRR header")
    assert record["window_mm"] == pytest.approx([285.0, 285.0], abs=1.5)


# --------------------------------------------------------------------------------------------------
# Output geometry


def test_output_nrrd_is_on_the_canonical_grid_and_the_patients_left_is_plus_x(tmp_path: Path):
    size = 64
    unit = np.zeros((size, size, size), dtype=np.float32)
    # Asymmetric blob: superior half, anterior, and at the patient's LEFT (high W index).
    unit[10:20, 12:22, 48:58] = 0.6
    prediction = predict(stand_in(unit, biplanar=False), RADIOGRAPHS / "pa.png")
    write_prediction(prediction, tmp_path / "out")
    image = sitk.ReadImage(str(tmp_path / "out" / "synthetic_ct.nrrd"))
    grid = CanonicalGrid(size=size)
    assert image.GetSize() == (size,) * 3
    assert image.GetSpacing() == pytest.approx((grid.spacing_mm,) * 3)
    assert image.GetOrigin() == pytest.approx(grid.origin_lps)
    assert image.GetDirection() == pytest.approx(DIRECTION_LPS)
    assert np.allclose(image.TransformContinuousIndexToPhysicalPoint([(size - 1) / 2] * 3), 0.0)
    hu = sitk.GetArrayFromImage(image)
    blob = np.argwhere(hu > 0).mean(axis=0)  # (k, j, i)
    x, y, z = image.TransformContinuousIndexToPhysicalPoint([float(v) for v in blob[::-1]])
    assert x > 50  # LPS +x = patient left
    assert y < -50  # anterior
    assert z > 50  # superior
    ras = np.diag([-1, -1, 1]) @ np.array([x, y, z])
    assert ras[0] < -50  # RAS: the patient's left is negative x


def test_real_ct_through_the_pipeline_keeps_the_heart_left_and_reprojects_consistently(
    tmp_path: Path, real_ct_canonical: Dict[str, sitk.Image]
):
    """A generator that returns the real CT: the re-projection matches its DRRs, the heart lands at +x."""
    unit = hu_to_unit(sitk.GetArrayFromImage(real_ct_canonical["ct"]))
    prediction = predict(stand_in(unit), RADIOGRAPHS / "pa.png", RADIOGRAPHS / "lateral.png")
    for view in ("PA", "LATERAL"):
        assert prediction.consistency[view]["ncc"] > 0.99 and prediction.consistency[view]["ssim"] > 0.95
    # The same model, inputs mirrored left-right: the check notices.
    flipped = read_radiograph(RADIOGRAPHS / "pa.png")
    flipped.pixels = flipped.pixels[:, ::-1].copy()
    assert predict(stand_in(unit), flipped, RADIOGRAPHS / "lateral.png").consistency["PA"]["ncc"] < 0.95
    write_prediction(prediction, tmp_path / "out")
    image = sitk.ReadImage(str(tmp_path / "out" / "synthetic_ct.nrrd"))
    heart = np.argwhere(sitk.GetArrayViewFromImage(real_ct_canonical["labels"]) == HEART).mean(axis=0)
    x = image.TransformContinuousIndexToPhysicalPoint([float(v) for v in heart[::-1]])[0]
    assert x > 10


@pytest.mark.skipif(
    not (DEMO_BIPLANAR / "model.json").is_file(),
    reason="needs the bundled demo model Resources/Models/x2ct-demo-biplanar (not trained yet)",
)
def test_trained_biplanar_model_puts_the_heart_on_the_patients_left(
    tmp_path: Path, real_ct_canonical: Dict[str, sitk.Image]
):
    """The demo +B model on DRRs of the real CT: in the NRRD's physical space the heart is at +x (LPS).

    The real CT's heart mask (centred like the synthetic grid: the DRR isocentre is the body centre)
    is resampled onto the written NRRD by physical position; the synthetic CT must be denser inside
    the heart than inside the heart's left-right mirror image (which is right lung).
    """
    assert resources_dir()  # the bundled model is found through the Resources folder
    model = load_model("x2ct-demo-biplanar", "cpu")
    prediction = predict(model, RADIOGRAPHS / "pa.png", RADIOGRAPHS / "lateral.png")
    write_prediction(prediction, tmp_path / "out")
    synthetic = sitk.ReadImage(str(tmp_path / "out" / "synthetic_ct.nrrd"), sitk.sitkFloat32)
    labels = real_ct_canonical["labels"]
    heart = sitk.Cast(sitk.Equal(labels, HEART), sitk.sitkUInt8)
    heart.SetOrigin(CanonicalGrid(size=labels.GetSize()[0]).origin_lps)  # same grid, centred at the origin
    mask = sitk.GetArrayFromImage(sitk.Resample(heart, synthetic, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    mirror = mask[:, :, ::-1]  # x -> -x on a grid centred at the origin
    hu = sitk.GetArrayFromImage(synthetic)
    assert mask.sum() > 100
    assert hu[mask > 0].mean() > hu[(mirror > 0) & (mask == 0)].mean() + 200


# --------------------------------------------------------------------------------------------------
# Progress, cancel, device


def test_progress_is_reported_and_cancel_stops_before_anything_is_written(tmp_path: Path):
    unit = np.zeros((64, 64, 64), dtype=np.float32)
    seen = []
    predict(stand_in(unit, biplanar=False), RADIOGRAPHS / "pa.png", progress=lambda f, m: seen.append(f))
    assert seen == sorted(seen) and seen[0] == 0.0 and len(seen) >= 4
    calls = []

    def cancel_second_time() -> bool:
        calls.append(1)
        return len(calls) >= 2

    with pytest.raises(PredictionCancelled):
        predict(stand_in(unit, biplanar=False), RADIOGRAPHS / "pa.png", cancel=cancel_second_time)
    assert list(tmp_path.iterdir()) == []


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            resolve_device("cuda")
