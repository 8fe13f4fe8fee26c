"""The Fréchet distance on our classifiers' features and the calibration of a stochastic generator's uncertainty.

Closed forms first (Fréchet distance of known Gaussians; coverage of exchangeable draws; SD units), on arrays built
here; then one ``x2ct evaluate-generator --samples --frechet-classifier`` run with a tiny untrained latent diffusion
model on two built 64³ cases, which checks the wiring (files, summary sections, one-line refusals), not the numbers.
"""

from __future__ import annotations

import io
import json
import math
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Tuple

import numpy as np
import pytest
import torch

from x2ct.classify.checkpoint import save_classifier
from x2ct.cli import main
from x2ct.evaluate.frechet import FeatureExtractor, frechet_distance, frechet_from_features, gaussian_stats
from x2ct.evaluate.uncertainty import (
    calibration_curve,
    case_uncertainty,
    expected_coverage_2sd,
    ideal_mae_hu,
    sample_stats_hu,
    summarize_uncertainty,
)
from x2ct.models import GeneratorConfig, X2CTSingleView, build_classifier, save_generator
from x2ct.models.latent_diffusion import LatentDiffusionConfig, LatentDiffusionGenerator
from x2ct.models.metadata import TaskSpec

pytestmark = pytest.mark.usefixtures("one_thread")

TASK = TaskSpec("tb", ("tb_present",), {"tb_present": 0.5})


def run_cli(*args: object) -> Tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------------------------------- Fréchet


def test_frechet_of_one_dimensional_gaussians_is_the_closed_form():
    m1, s1, m2, s2 = 0.3, 2.0, -1.2, 0.5
    distance, eps_added = frechet_distance(np.array([m1]), np.array([[s1]]), np.array([m2]), np.array([[s2]]))
    assert distance == pytest.approx((m1 - m2) ** 2 + s1 + s2 - 2 * math.sqrt(s1 * s2), rel=1e-12)
    assert not eps_added


def test_frechet_is_zero_for_one_set_and_the_squared_shift_for_a_shifted_copy():
    features = np.random.default_rng(0).normal(size=(40, 5)) @ np.diag([1.0, 2.0, 0.5, 1.5, 3.0])
    same = frechet_from_features(features, features.copy())
    assert same.distance == pytest.approx(0.0, abs=1e-9)
    assert (same.n_real, same.n_synthetic, same.dims, same.biased) == (40, 40, 5, False)
    shift = np.array([0.5, -1.0, 0.0, 2.0, 0.25])
    shifted = frechet_from_features(features, features + shift)  # same covariance: the distance is |shift|²
    assert shifted.distance == pytest.approx(float(shift @ shift), rel=1e-9)
    assert shifted.distance > 0


def test_frechet_with_fewer_cases_than_dimensions_is_flagged_as_biased():
    rng = np.random.default_rng(1)
    result = frechet_from_features(rng.normal(size=(4, 10)), rng.normal(size=(4, 10)))
    assert result.biased and result.dims == 10 and math.isfinite(result.distance) and result.distance > 0
    mean, cov = gaussian_stats(np.array([[1.0, 2.0], [3.0, 6.0]]))
    assert np.allclose(mean, [2.0, 4.0]) and np.allclose(cov, [[2.0, 4.0], [4.0, 8.0]])  # ddof 1


def test_features_are_the_classifier_heads_pooled_input(tmp_path):
    torch.manual_seed(0)
    net = build_classifier("cnn3d", 1, width=0.125)
    save_classifier(net, tmp_path / "cls", TASK, {"ct": 16})
    extract = FeatureExtractor(tmp_path / "cls")
    ct_hu = np.random.default_rng(2).uniform(-1000, 400, size=(16, 16, 16)).astype(np.float32)
    features = extract(ct_hu)
    unit = torch.from_numpy((ct_hu + 1024) / 2500)[None, None]
    with torch.no_grad():
        expected = extract.net.trunk(unit).flatten(2).mean(2)[0].numpy()
    assert features.shape == (net.trunk.out_channels,) and np.allclose(features, expected, atol=1e-5)
    assert extract.description["whole_volume"] and extract.description["sha256"]


# ------------------------------------------------------------------------------------------ uncertainty


def test_sd_map_is_in_hu_with_ddof_1():
    samples = np.stack([np.full((2, 3, 4), 0.40), np.full((2, 3, 4), 0.42)])
    mean_hu, sd_hu = sample_stats_hu(samples)
    assert mean_hu.shape == sd_hu.shape == (2, 3, 4) and sd_hu.dtype == np.float32
    assert np.allclose(mean_hu, 0.41 * 2500 - 1024, atol=1e-3)
    assert np.allclose(sd_hu, 0.02 / math.sqrt(2) * 2500, atol=1e-3)  # 35.36 HU


def gaussian_case(rng: np.random.Generator, k: int, error_follows_sd: bool) -> Tuple[np.ndarray, np.ndarray]:
    """K samples (unit scale) with a per-voxel spread, and a real CT (HU) drawn from the same distribution or with
    an error unrelated to the spread."""
    shape = (12, 12, 12)
    sd = rng.uniform(0.002, 0.04, size=shape)
    centre = 0.4
    samples = centre + sd * rng.standard_normal((k, *shape))
    spread = sd if error_follows_sd else np.full(shape, 0.02)
    real_unit = centre + spread * rng.standard_normal(shape)
    return samples, real_unit * 2500 - 1024


def test_exchangeable_samples_cover_the_truth_as_expected_and_sd_ranks_the_error():
    rng = np.random.default_rng(3)
    k = 4
    samples, real_hu = gaussian_case(rng, k, error_follows_sd=True)
    mask = np.ones(real_hu.shape, bool)
    case, voxels = case_uncertainty("a", samples, real_hu, mask)
    assert case.voxels == mask.sum() and case.samples == k
    assert case.coverage_range == pytest.approx((k - 1) / (k + 1), abs=0.04)  # 0.6 for K = 4
    assert case.coverage_2sd == pytest.approx(expected_coverage_2sd(k), abs=0.04)
    assert case.spearman > 0.25
    unrelated, real_unrelated = gaussian_case(rng, k, error_follows_sd=False)
    assert abs(case_uncertainty("b", unrelated, real_unrelated, mask)[0].spearman) < 0.1
    summary = summarize_uncertainty([case, case], [voxels, voxels])
    assert summary.coverage_range["mean"] == pytest.approx(case.coverage_range)
    assert summary.expected_coverage_range == pytest.approx(0.6) and summary.pooled_spearman > 0.25


def test_calibration_curve_bins_by_sd_deciles_against_the_gaussian_line():
    rng = np.random.default_rng(4)
    sd = rng.uniform(10, 100, size=5000)
    error = np.abs(rng.normal(0, sd))
    curve = calibration_curve(sd, error, samples=8)
    assert len(curve) == 10 and sum(b.voxels for b in curve) == sd.size
    assert all(a.mean_sd_hu < b.mean_sd_hu for a, b in zip(curve, curve[1:]))
    for b in curve:  # errors drawn with SD = the reported SD: each bin's MAE near sqrt(2/pi)·SD
        assert b.ideal_mae_hu == pytest.approx(math.sqrt(2 / math.pi) * math.sqrt(1 + 1 / 8) * b.mean_sd_hu)
        assert b.mae_hu == pytest.approx(float(ideal_mae_hu(b.mean_sd_hu, 10**9)), rel=0.15)


# ------------------------------------------------------------------------------------------ evaluate-generator


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory) -> Path:
    """Two built 64³ cases in the test split, a tiny untrained latent diffusion model, a tiny cnn3d and a tiny +S."""
    root = tmp_path_factory.mktemp("uncertainty")
    code, _, stderr = run_cli("build-dataset", "--synthetic-from", "sample", "--cases", "2", "--seed", "5",
                              "--size", "64", "--drr-size", "32", "--split", "0,0,1", root / "data")  # fmt: skip
    assert code == 0, stderr
    torch.manual_seed(0)
    config = LatentDiffusionConfig(
        grid_size=64, views=1, vae_channels=(2, 2), latent_channels=2, unet_channels=(4,), cond_channels=2,
        time_dim=8, encoder={"kind": "cnn", "channels": [4], "embed_dim": 8}, timesteps=10, sample_steps=1,
    )  # fmt: skip
    save_generator(LatentDiffusionGenerator(config), root / "ldm")
    save_generator(X2CTSingleView(GeneratorConfig(grid_size=64, width=0.0625)), root / "gan")
    save_classifier(build_classifier("cnn3d", 1, width=0.125), root / "cls", TASK, {"ct": 16})
    return root


def test_evaluate_generator_writes_uncertainty_and_frechet(benchmark):
    out = benchmark / "eval"
    code, stdout, stderr = run_cli("evaluate-generator", "--model", benchmark / "ldm", "--data", benchmark / "data",
                                   "-o", out, "--samples", "2", "--frechet-classifier", benchmark / "cls",
                                   "--device", "cpu")  # fmt: skip
    assert code == 0, stderr
    assert "Fréchet distance" in stdout and "uncertainty (2 samples)" in stdout
    summary = json.loads((out / "metrics_summary.json").read_text())
    assert summary["frechet"]["n_real"] == summary["frechet"]["n_synthetic"] == 2
    assert summary["frechet"]["biased"] and summary["frechet"]["classifier"]["architecture"] == "cnn3d"
    assert summary["uncertainty"]["samples"] == 2
    document = json.loads((out / "uncertainty.json").read_text())
    assert [c["case_id"] for c in document["cases"]] == summary["data"]["cases"]
    assert document["expected_coverage_range"] == pytest.approx(1 / 3)
    assert all(0 <= c["coverage_range"] <= 1 and c["voxels"] > 0 for c in document["cases"])
    assert (out / "calibration.png").read_bytes()[:4] == b"\x89PNG"


def test_sampling_options_need_a_stochastic_generator(benchmark, tmp_path):
    code, _, stderr = run_cli("evaluate-generator", "--model", benchmark / "gan", "--data", benchmark / "data",
                              "-o", tmp_path / "eval", "--samples", "4", "--device", "cpu")  # fmt: skip
    lines = [line for line in stderr.splitlines() if line.startswith("x2ct")]
    assert code == 2 and len(lines) == 1 and "deterministic" in lines[0] and "Traceback" not in stderr
    assert not (tmp_path / "eval" / "metrics_summary.json").exists()
