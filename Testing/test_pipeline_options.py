"""The pipeline's options (issues #16 and #17): a style model before the generator, K samples of a stochastic
generator with their per-voxel SD, the out-of-distribution score, and what ``summary.json``, the SD NRRD, the report
and the CLI make of them.

Models are tiny and random: the ``resources`` fixture's +S generator (64³), a CycleGAN style model (width 2, no
residual blocks, 32 px) saved through :func:`x2ct.inference.style.save_style`, a single-view latent diffusion
generator (64³, 2 DDIM steps of 10) saved through :func:`x2ct.models.checkpoints.save_generator`, and a stochastic
stand-in whose samples are the +S generator's output plus a known offset per sample (so their SD is known in HU).
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path
from typing import List, Optional

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from x2ct.cli import main
from x2ct.inference import GenerationOptions, PredictionCancelled, load_model, predict, write_prediction
from x2ct.inference.models import ModelCache
from x2ct.inference.report import OOD_WORDS, report_picture
from x2ct.inference.types import DEFAULT_STOCHASTIC_SAMPLES, LoadedModel
from x2ct.intensity import UNIT_RANGE
from x2ct.views import PA

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
PA_PNG = REPO / "Resources" / "SampleData" / "radiographs" / "pa.png"
STEP_UNIT = 0.01
"""Offset between consecutive stand-in samples on the unit scale (25 HU)."""


def save_tiny_diffusion(folder: Path) -> Path:
    """A random single-view latent diffusion generator (64³ output, 2 DDIM steps of 10) as an x2ct model folder."""
    from x2ct.models.checkpoints import save_generator
    from x2ct.models.latent_diffusion import LatentDiffusionConfig, LatentDiffusionGenerator

    config = LatentDiffusionConfig(
        grid_size=64, views=1, depth_stride=4, vae_channels=(4, 4, 4), latent_channels=2,
        encoder={"kind": "cnn", "channels": [4, 4], "embed_dim": 8}, unet_channels=(4, 4), cond_channels=2,
        time_dim=8, timesteps=10, sample_steps=2,
    )  # fmt: skip
    torch.manual_seed(0)
    return save_generator(LatentDiffusionGenerator(config), folder)


def save_tiny_style(folder: Path) -> Path:
    """A random CycleGAN style model (ResNet generator, width 2, no residual blocks, 32 px) named "tiny-style"."""
    from x2ct.inference.style import save_style
    from x2ct.models.cyclegan import ResnetGenerator

    torch.manual_seed(1)
    return save_style(ResnetGenerator(width=2, blocks=0), folder, 32, "tiny random style model for tests",
                      {"size": 32}, name="tiny-style")  # fmt: skip


@pytest.fixture(scope="module")
def diffusion_model(tmp_path_factory) -> Path:
    return save_tiny_diffusion(tmp_path_factory.mktemp("diffusion") / "tiny-diffusion")


@pytest.fixture(scope="module")
def style_model(tmp_path_factory) -> Path:
    return save_tiny_style(tmp_path_factory.mktemp("style") / "tiny-style")


class OffsetSamples(torch.nn.Module):
    """A stochastic stand-in: sample k is the wrapped generator's output + k x ``step`` (unit scale)."""

    stochastic = True

    def __init__(self, base: torch.nn.Module, step: float) -> None:
        super().__init__()
        self.base, self.step = base, step
        self.calls: List[dict] = []

    def forward(self, pa, lateral=None):
        return self.base(pa)

    def sample(self, pa, lateral=None, *, samples=8, steps=None, sampler="ddim", guidance=0.0, geometry=None,
               drr_size=None, seed=0, progress=None):
        self.calls.append({"samples": samples, "steps": steps, "guidance": guidance, "seed": seed,
                           "geometry": geometry, "drr_size": drr_size})
        with torch.no_grad():
            volume = self.base(pa).clamp(0.1, 0.8)  # away from the clamp, so offsets stay offsets
        drawn = []
        for k in range(samples):
            drawn.append(volume + k * self.step)
            if progress is not None:
                progress((k + 1) / samples)
        return torch.stack(drawn)


def stochastic(resources: Path, step: float) -> LoadedModel:
    loaded = load_model(str(resources / "Models" / "x2ct-demo-singleview"), "cpu")
    loaded.module = OffsetSamples(loaded.module, step)
    return loaded


def run_cli(args: List[str], capsys) -> tuple:
    status = main(args)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def one_line_error(status: int, err: str, *words: str) -> None:
    line = err.strip()
    assert status == 2 and line.startswith("x2ct: error: ") and "\n" not in line, err
    for word in words:
        assert word in line, line


def grid_of(image: sitk.Image) -> tuple:
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def test_style_changes_the_model_input_and_is_recorded(resources: Path, style_model: Path, tmp_path: Path, capsys):
    out, plain_out = tmp_path / "styled", tmp_path / "plain"
    base = ["predict", "--pa", str(PA_PNG), "--no-classifiers", "--device", "cpu"]
    assert run_cli([*base, "-o", str(out), "--style", str(style_model)], capsys)[0] == 0
    assert run_cli([*base, "-o", str(plain_out)], capsys)[0] == 0
    summary = json.loads((out / "summary.json").read_text())
    sha256 = hashlib.sha256((style_model / "model.safetensors").read_bytes()).hexdigest()
    assert summary["style"]["name"] == "tiny-style" and summary["style"]["sha256"] == sha256
    assert summary["inputs"]["PA"]["style"] == {"name": "tiny-style", "sha256": sha256}
    plain = json.loads((plain_out / "summary.json").read_text())
    assert plain["style"] is None and "style" not in plain["inputs"]["PA"] and "sampling" not in plain
    assert plain["ood"] is None  # the tiny model has no ood_reference.json
    styled_ct = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "synthetic_ct.nrrd")))
    assert not np.array_equal(styled_ct, sitk.GetArrayFromImage(sitk.ReadImage(str(plain_out / "synthetic_ct.nrrd"))))

    cache = ModelCache("cpu", classifiers=())
    model = cache.get(None, have_lateral=False)
    styled = predict(model, PA_PNG, options=GenerationOptions(style=str(style_model)),
                     style=cache.style(str(style_model)))
    unstyled = predict(model, PA_PNG)
    view = styled.views[PA]
    np.testing.assert_array_equal(view.before_style, unstyled.views[PA].model_input)
    assert view.model_input.shape == view.before_style.shape and not np.array_equal(view.model_input,
                                                                                     view.before_style)
    assert cache.style(str(style_model)) is cache.style(str(style_model))  # loaded once


@pytest.mark.parametrize("step", [0.0, STEP_UNIT])
def test_sd_map_is_zero_for_identical_samples_and_known_for_offset_ones(resources: Path, tmp_path: Path, step: float):
    model = stochastic(resources, step)
    options = GenerationOptions(samples=3, sampler_steps=5, guidance=0.5, seed=7)
    prediction = predict(model, PA_PNG, options=options)
    call = model.module.calls[-1]
    assert (call["samples"], call["steps"], call["guidance"], call["seed"]) == (3, 5, 0.5, 7)
    assert call["geometry"] == model.spec.geometry and call["drr_size"] == model.spec.drr_size
    out = write_prediction(prediction, tmp_path / "out")

    ct = sitk.ReadImage(str(out / "synthetic_ct.nrrd"))
    sd = sitk.ReadImage(str(out / "uncertainty_sd_hu.nrrd"))
    assert grid_of(sd) == grid_of(ct) and sd.GetPixelID() == sitk.sitkFloat32
    assert sd.GetMetaData("x2ct_units") == "HU" and sd.GetMetaData("x2ct_synthetic") == ct.GetMetaData("x2ct_synthetic")
    expected_sd_hu = np.std([0.0, step, 2 * step], ddof=1) * UNIT_RANGE  # offsets 0, 1, 2 steps
    np.testing.assert_allclose(sitk.GetArrayFromImage(sd), expected_sd_hu, atol=0.05)
    if step == 0.0:
        assert not sitk.GetArrayFromImage(sd).any()
    else:
        assert sitk.GetArrayFromImage(sd).min() > 0

    summary = json.loads((out / "summary.json").read_text())
    assert summary["sampling"] == {"samples": 3, "sampler": "ddim", "steps": 5, "guidance": 0.5, "seed": 7,
                                   "uncertainty": "uncertainty_sd_hu.nrrd"}
    assert "uncertainty_sd_hu.nrrd" in summary["outputs"]


def test_diffusion_samples_write_the_mean_ct_and_the_sd_of_the_samples(diffusion_model: Path, tmp_path: Path,
                                                                       capsys):
    out = tmp_path / "out"
    args = ["predict", "--pa", str(PA_PNG), "-o", str(out), "--model", str(diffusion_model), "--no-classifiers",
            "--device", "cpu", "--samples", "3", "--seed", "5", "--guidance", "0"]
    assert run_cli(args, capsys)[0] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sampling"] == {"samples": 3, "sampler": "ddim", "steps": 2, "guidance": 0.0, "seed": 5,
                                   "uncertainty": "uncertainty_sd_hu.nrrd"}  # steps: the model's sample_steps
    ct, sd = (sitk.ReadImage(str(out / name)) for name in ("synthetic_ct.nrrd", "uncertainty_sd_hu.nrrd"))
    assert grid_of(sd) == grid_of(ct) and sd.GetPixelID() == sitk.sitkFloat32

    model = load_model(str(diffusion_model), "cpu")
    prediction = predict(model, PA_PNG, options=GenerationOptions(samples=3, seed=5))
    pa = torch.from_numpy(prediction.views[PA].model_input)[None, None]
    unit = model.module.sample(pa, samples=3, seed=5)[:, 0, 0].clamp(0, 1).numpy().astype(np.float64)
    np.testing.assert_allclose(sitk.GetArrayFromImage(sd), unit.std(axis=0, ddof=1) * UNIT_RANGE, atol=0.05)
    np.testing.assert_allclose(sitk.GetArrayFromImage(ct), unit.mean(axis=0) * UNIT_RANGE - 1024, atol=0.51)
    assert sitk.GetArrayFromImage(sd).max() > 0

    again = predict(model, PA_PNG, options=GenerationOptions(samples=3, seed=5))
    np.testing.assert_array_equal(again.uncertainty_sd_hu, prediction.uncertainty_sd_hu)  # seeded
    other = predict(model, PA_PNG, options=GenerationOptions(samples=3, seed=6))
    assert not np.array_equal(other.uncertainty_sd_hu, prediction.uncertainty_sd_hu)


def test_stochastic_defaults_and_a_single_sample(diffusion_model: Path, tmp_path: Path):
    model = load_model(str(diffusion_model), "cpu")
    prediction = predict(model, PA_PNG)
    sampling = prediction.sampling
    assert sampling.samples == DEFAULT_STOCHASTIC_SAMPLES and (sampling.steps, sampling.guidance, sampling.seed) == (
        model.module.config.sample_steps, 0.0, 0)
    single = predict(model, PA_PNG, options=GenerationOptions(samples=1))
    assert single.uncertainty_sd_hu is None
    out = write_prediction(single, tmp_path / "single")
    assert not (out / "uncertainty_sd_hu.nrrd").exists()
    assert json.loads((out / "summary.json").read_text())["sampling"]["uncertainty"] is None


def test_sampling_reports_progress_and_is_cancelled_between_steps(diffusion_model: Path):
    model = load_model(str(diffusion_model), "cpu")
    options = GenerationOptions(samples=2, sampler_steps=4)
    seen: List[tuple] = []
    predict(model, PA_PNG, progress=lambda f, m: seen.append((f, m)), options=options)
    steps = [f for f, m in seen if m.startswith("sampling") and "%" in m]
    assert len(steps) == 4 and steps == sorted(steps) and 0.2 < steps[0] < steps[-1] <= 0.7

    polls = {"n": 0}

    def cancel_during_sampling() -> bool:
        polls["n"] += 1
        return polls["n"] > 4  # reading, preprocessing, sampling started, first step: then cancel

    with pytest.raises(PredictionCancelled, match="sampling"):
        predict(model, PA_PNG, cancel=cancel_during_sampling, options=options)
    assert polls["n"] == 5  # stopped at the second step, not at the end of sampling


def test_ood_score_is_recorded_next_to_the_consistency(resources: Path, tmp_path: Path, capsys):
    from x2ct.inference.ood import OODReference, ViewReference, image_features, reference_path, score_images

    model = tmp_path / "model"
    shutil.copytree(resources / "Models" / "x2ct-demo-singleview", model)
    rng = np.random.default_rng(0)
    training = np.stack([image_features(rng.random((64, 64))) for _ in range(4)])  # a made-up training domain
    reference = OODReference({PA: ViewReference.fit(training)}, size=64, threshold=5.0)
    reference.write(reference_path(model))
    out = tmp_path / "out"
    args = ["predict", "--pa", str(PA_PNG), "-o", str(out), "--model", str(model), "--no-classifiers", "--device",
            "cpu"]
    status, stdout, _ = run_cli(args, capsys)
    assert status == 0 and "out-of-distribution score" in stdout
    summary = json.loads((out / "summary.json").read_text())
    keys = list(summary)
    assert keys.index("ood") == keys.index("consistency") + 1
    prediction = predict(load_model(str(model), "cpu"), PA_PNG)
    expected = score_images(reference, {PA: prediction.views[PA].model_input})
    assert summary["ood"] == json.loads(json.dumps(expected.to_dict())) and summary["ood"]["threshold"] == 5.0
    assert summary["ood"]["flagged"] is (expected.score > 5.0) and ("OUT OF DISTRIBUTION" in stdout) is expected.flagged

    manifest = tmp_path / "cases.csv"
    manifest.write_text(f"case_id,pa\nc1,{PA_PNG}\n")
    assert run_cli(["predict", "--manifest", str(manifest), "-o", str(tmp_path / "batch"), "--model", str(model),
                    "--no-classifiers", "--device", "cpu"], capsys)[0] == 0
    row = next(csv.DictReader((tmp_path / "batch" / "batch_summary.csv").open()))
    assert float(row["ood_score"]) == summary["ood"]["score"]
    assert row["ood_flagged"] == str(summary["ood"]["flagged"]).lower()


def _ood(flagged: bool, threshold: Optional[float] = 0.5):
    from types import SimpleNamespace

    record = {"score": 0.9 if flagged else 0.1, "threshold": threshold, "flagged": flagged, "per_view": {PA: 0.9},
              "method": "test"}
    return SimpleNamespace(**record, to_dict=lambda: dict(record))


def _red_pixels(picture) -> int:
    pixels = np.asarray(picture)[:44]  # title and info lines, above the banner
    return int(((pixels[..., 0] > 200) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)).sum())


def test_report_shows_the_sd_panel_and_the_ood_line(diffusion_model: Path):
    prediction = predict(load_model(str(diffusion_model), "cpu"), PA_PNG, options=GenerationOptions(samples=2))
    with_sd = report_picture(prediction)
    prediction.uncertainty_sd_hu = None
    assert with_sd.height > report_picture(prediction).height  # the SD row
    prediction.ood = _ood(flagged=True)
    assert _red_pixels(report_picture(prediction)) > 0 and OOD_WORDS == "out of distribution"
    prediction.ood = _ood(flagged=False)
    assert _red_pixels(report_picture(prediction)) == 0


def test_manifest_applies_the_style_to_every_case_and_refuses_a_bad_one_first(resources: Path, style_model: Path,
                                                                             tmp_path: Path, capsys):
    manifest = tmp_path / "cases.csv"
    manifest.write_text(f"case_id,pa\na,{PA_PNG}\nb,{PA_PNG}\n")
    base = ["predict", "--manifest", str(manifest), "--no-classifiers", "--device", "cpu"]
    assert run_cli([*base, "-o", str(tmp_path / "out"), "--style", str(style_model)], capsys)[0] == 0
    for case in ("a", "b"):
        assert json.loads((tmp_path / "out" / case / "summary.json").read_text())["style"]["name"] == "tiny-style"
    missing = tmp_path / "no-such-style"
    one_line_error(*run_cli([*base, "-o", str(tmp_path / "bad"), "--style", str(missing)], capsys)[::2], str(missing))
    assert not (tmp_path / "bad" / "a").exists()


def test_cli_option_errors_are_one_line(resources: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    base = ["predict", "--pa", str(PA_PNG), "-o", str(out), "--no-classifiers", "--device", "cpu"]
    one_line_error(*run_cli([*base, "--samples", "0"], capsys)[::2], "--samples", "at least 1")
    one_line_error(*run_cli([*base, "--guidance", "-1"], capsys)[::2], "--guidance")
    missing = tmp_path / "no-such-style"
    one_line_error(*run_cli([*base, "--style", str(missing)], capsys)[::2], str(missing), "style")
    one_line_error(*run_cli([*base, "--samples", "4", "--seed", "3"], capsys)[::2], "deterministic", "--samples",
                   "--seed")
    assert not out.exists()
    assert run_cli([*base, "--samples", "1"], capsys)[0] == 0  # one sample is what a deterministic model gives
