"""Known answers for the declared image-metric protocol (x2ct.evaluate.image_metrics, docs/metric_protocol.md)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from x2ct.evaluate import image_metrics as im

SHAPE = (16, 18, 20)  # (D, H, W), deliberately not a cube so the orientations cannot be confused


def _cylinder() -> np.ndarray:
    """Boolean (D, H, W) 'body': an elliptic cylinder along D, inside the cube."""
    _, h, w = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1], 0 : SHAPE[2]]
    return ((h - 8.5) / 6.0) ** 2 + ((w - 9.5) / 7.0) ** 2 < 1.0


def _phantom() -> np.ndarray:
    """GT in HU: 0 HU (unit 0.4096, int 1024) inside the cylinder, -1024 HU (air, 0) outside."""
    return np.where(_cylinder(), 0.0, -1024.0)


def _textured() -> np.ndarray:
    """GT in HU with structure in every direction (smooth random texture inside the body)."""
    rng = np.random.default_rng(7)
    texture = rng.normal(0.0, 150.0, SHAPE)
    texture = (texture + np.roll(texture, 1, 0) + np.roll(texture, 1, 1) + np.roll(texture, 1, 2)) / 2.0
    return np.where(_cylinder(), texture, -1024.0)


def test_identical_volumes_score_perfectly():
    gt = _textured()
    row = im.case_metrics("same", gt, gt.copy())
    assert row["case_id"] == "same"
    assert list(row)[1:] == list(im.METRIC_NAMES)
    for name in ("mae_hu_body", "official_mae0", "official_mse0", "official_mae", "official_mse", "honest_mae_hu"):
        assert row[name] == 0.0, name
    for name in ("official_psnr_3d", "official_psnr_1", "official_psnr_2", "official_psnr_3", "official_psnr_avg"):
        assert row[name] == 100.0, name  # the official rule for MSE 0
    for name in ("official_ssim_1", "official_ssim_2", "official_ssim_3", "official_ssim_avg", "honest_ssim_3d"):
        assert row[name] == pytest.approx(1.0, abs=1e-12), name
    assert row["official_cs"] == pytest.approx(1.0, abs=1e-12)
    assert row["honest_psnr_db"] == math.inf


def test_constant_offset_known_answers():
    gt = _phantom()
    pred = gt + 100.0  # int scale: 0 -> 100 outside, 1024 -> 1124 inside; every voxel differs by exactly 100
    row = im.case_metrics("offset", pred, gt)
    assert row["mae_hu_body"] == pytest.approx(100.0, abs=1e-9)
    assert row["body_voxels"] == int(_cylinder().sum())
    assert row["honest_mae_hu"] == pytest.approx(100.0, abs=1e-3)
    assert row["official_mae"] == 100.0
    assert row["official_mse"] == 10000.0
    expected_official = 20.0 * math.log10(4095.0 / 100.0)  # 32.2451 dB
    assert expected_official == pytest.approx(32.2451, abs=1e-4)
    for name in ("official_psnr_3d", "official_psnr_1", "official_psnr_2", "official_psnr_3", "official_psnr_avg"):
        assert row[name] == pytest.approx(expected_official, abs=1e-9), name
    assert row["honest_psnr_db"] == pytest.approx(20.0 * math.log10(2500.0 / 100.0), abs=1e-4)  # 27.9588 dB
    assert row["official_mae0"] == pytest.approx(0.04, rel=1e-6)
    assert row["official_mse0"] == pytest.approx(0.0016, rel=1e-5)
    # Cosine similarity by hand: a = 0.4096 on n1 voxels else 0, b = a + 0.04 everywhere.
    n1 = float(_cylinder().sum())
    n0 = float(np.prod(SHAPE)) - n1
    cs = n1 * 0.4096 * 0.4496 / (0.4096 * math.sqrt(n1) * math.sqrt(n1 * 0.4496**2 + n0 * 0.04**2))
    assert row["official_cs"] == pytest.approx(cs, rel=1e-6)


def test_official_peak_is_4095_not_the_scale_maximum():
    assert im.OFFICIAL_PIXEL_MAX == 4095.0
    assert im.HONEST_DATA_RANGE_HU == 2500.0
    gt = _phantom()
    row = im.case_metrics("offset", gt + 100.0, gt)
    # Same MSE, different peaks: the two PSNRs differ by exactly 20 log10(4095 / 2500) = 4.287 dB.
    gap = row["official_psnr_3d"] - row["honest_psnr_db"]
    assert gap == pytest.approx(20.0 * math.log10(4095.0 / 2500.0), abs=1e-4)


def test_int32_truncation():
    gt = _phantom()
    # 0.6 HU below one integer step: truncation erases it on the official scale, not in HU.
    row = im.case_metrics("sub-integer", gt + 0.6, gt)
    assert row["official_mae"] == 0.0
    assert row["official_psnr_3d"] == 100.0
    assert row["official_psnr_avg"] == 100.0
    assert row["mae_hu_body"] == pytest.approx(0.6, abs=1e-6)
    assert row["honest_mae_hu"] == pytest.approx(0.6, abs=1e-3)
    # 10.6 HU truncates to 10 steps: MSE 100 instead of 112.36.
    row = im.case_metrics("truncated", gt + 10.6, gt)
    assert row["official_mse"] == 100.0
    assert row["official_psnr_3d"] == pytest.approx(20.0 * math.log10(409.5), abs=1e-9)
    assert row["honest_psnr_db"] == pytest.approx(20.0 * math.log10(2500.0 / 10.6), abs=1e-3)
    # The product is formed in float32 as in the official code: stored 7 (-1017 HU) comes back as 6.
    assert im.to_official_int(im.hu_to_metric_unit(np.array([-1017.0, 0.0, -1024.0]))).tolist() == [6, 1024, 0]


def test_ssim_orientations_differ_and_match_skimage():
    gt = _textured()
    pred = gt + 120.0 * np.sin(np.arange(SHAPE[2]) * 1.3)[None, None, :]  # varies along W only
    row = im.case_metrics("stripes", pred, gt)
    gt_u, pred_u = im.hu_to_metric_unit(gt).astype(np.float64), im.hu_to_metric_unit(pred).astype(np.float64)

    def per_slice(axis: int) -> float:
        slices = [np.take(gt_u, i, axis=axis) for i in range(SHAPE[axis])]
        preds = [np.take(pred_u, i, axis=axis) for i in range(SHAPE[axis])]
        return float(np.mean([structural_similarity(g, p, data_range=1.0) for g, p in zip(slices, preds)]))

    direct = [per_slice(axis) for axis in range(3)]
    for i, value in enumerate(direct):
        assert row[f"official_ssim_{i + 1}"] == pytest.approx(value, abs=1e-12)
    assert row["official_ssim_avg"] == pytest.approx(np.mean(direct), abs=1e-12)
    assert min(abs(direct[0] - direct[1]), abs(direct[0] - direct[2]), abs(direct[1] - direct[2])) > 1e-3
    # The official call form: slice axis moved last, channel_axis=-1 (compare_ssim(..., multichannel=True)).
    official_h = structural_similarity(
        np.transpose(gt_u, (0, 2, 1)), np.transpose(pred_u, (0, 2, 1)), data_range=1.0, channel_axis=-1
    )
    assert row["official_ssim_2"] == pytest.approx(official_h, abs=1e-12)
    # The honest 3D SSIM is its own number (Gaussian 3D window, population covariance).
    honest = structural_similarity(
        gt_u, pred_u, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert row["honest_ssim_3d"] == pytest.approx(honest, abs=1e-12)
    assert 0.0 < row["honest_ssim_3d"] < 1.0


def test_mae_restricted_to_body_mask():
    gt = _phantom()
    body = _cylinder()
    assert np.array_equal(im.default_body_mask(gt), body)
    pred = gt + np.where(body, 100.0, 300.0)
    row = im.case_metrics("masked", pred, gt)
    assert row["mae_hu_body"] == pytest.approx(100.0, abs=1e-9)
    n1 = body.sum()
    whole = (100.0 * n1 + 300.0 * (body.size - n1)) / body.size
    assert row["honest_mae_hu"] == pytest.approx(whole, abs=1e-3)
    custom = np.zeros(SHAPE, dtype=bool)
    custom[:, 0, 0] = True  # air only
    row = im.case_metrics("custom", pred, gt, mask=custom)
    assert row["mae_hu_body"] == pytest.approx(300.0, abs=1e-9)
    assert row["body_voxels"] == SHAPE[0]
    row = im.case_metrics("empty", pred, gt, mask=np.zeros(SHAPE, dtype=bool))
    assert math.isnan(row["mae_hu_body"])


def test_summarize_known_values():
    base = {name: 1.0 for name in im.METRIC_NAMES}
    rows = [dict(base, case_id=str(i), mae_hu_body=v) for i, v in enumerate((1.0, 2.0, 6.0, math.nan))]
    stats = im.summarize(rows)["mae_hu_body"]
    assert stats == {"mean": 3.0, "std": pytest.approx(math.sqrt(7.0)), "median": 2.0, "n": 3, "n_nonfinite": 1}
    assert im.summarize(rows[:1])["mae_hu_body"]["std"] is None


def test_write_metrics_csv_and_json(tmp_path):
    gt = _phantom()
    rows = [im.case_metrics("case-a", gt + 100.0, gt), im.case_metrics("case-b", gt, gt)]
    csv_path, json_path = im.write_metrics(rows, tmp_path / "eval")
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == sorted([im.CSV_NAME, im.SUMMARY_NAME])
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["case_id", *im.METRIC_NAMES]
        table = list(reader)
    assert [r["case_id"] for r in table] == ["case-a", "case-b"]
    assert float(table[0]["official_mse"]) == 10000.0
    assert table[1]["honest_psnr_db"] == "inf"
    assert int(table[0]["body_voxels"]) == rows[0]["body_voxels"]
    document = json.loads(json_path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert document["protocol"]["version"] == im.PROTOCOL_VERSION
    assert "4095" in document["protocol"]["description"]
    assert document["n_cases"] == 2
    assert set(document["metrics"]) == set(im.METRIC_NAMES)
    assert document["metrics"]["official_mse"]["mean"] == 5000.0
    assert document["metrics"]["honest_psnr_db"] == {
        "mean": pytest.approx(20.0 * math.log10(25.0)),
        "std": None,
        "median": pytest.approx(20.0 * math.log10(25.0)),
        "n": 1,
        "n_nonfinite": 1,
    }


def test_write_metrics_failure_leaves_previous_files(tmp_path):
    gt = _phantom()
    csv_path, json_path = im.write_metrics([im.case_metrics("old", gt, gt)], tmp_path)
    before = (csv_path.read_text(), json_path.read_text())
    with pytest.raises(KeyError):
        im.write_metrics([{"case_id": "broken"}], tmp_path)  # row without metrics
    assert (csv_path.read_text(), json_path.read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([im.CSV_NAME, im.SUMMARY_NAME])


def test_rejects_mismatched_or_tiny_volumes():
    gt = _phantom()
    with pytest.raises(ValueError, match="one shape"):
        im.case_metrics("x", gt[:-1], gt)
    with pytest.raises(ValueError, match="too small"):
        im.case_metrics("x", gt[:8], gt[:8])
    with pytest.raises(ValueError, match="mask"):
        im.case_metrics("x", gt, gt, mask=np.ones((2, 2, 2), dtype=bool))
