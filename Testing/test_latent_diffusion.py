"""The latent diffusion generator (x2ct.models.latent_diffusion) and its trainer (x2ct.train.diffusion), at tiny
sizes: the noise schedule and prediction targets, seeded samplers, conditioning shapes, the geometry prior,
guided sampling, LoRA, the pretrained-encoder file, resume and save -> load_generator -> forward."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from x2ct.drr import normalize, project
from x2ct.errors import InputError
from x2ct.models import load_generator
from x2ct.models.latent_diffusion import (
    PREDICTIONS,
    LatentDiffusionGenerator,
    LoRALayer,
    NoiseSchedule,
    drr_distance,
    load_radiograph_encoder,
    lora_parameter_count,
)
from x2ct.models.xprospect import BackProjector
from x2ct.train.diffusion import PRESETS, load_diffusion_config, train_diffusion

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = load_diffusion_config(preset="tiny").network()
"""The architecture of the tiny preset (64³, depth stride 2, VAE /4, 8-channel U-Net, 50 timesteps)."""


def tiny_model(views: int = 2, **changes) -> LatentDiffusionGenerator:
    torch.manual_seed(0)
    return LatentDiffusionGenerator(replace(TINY, views=views, drr_size=32, **changes)).eval().requires_grad_(False)


def radiographs(n: int = 1, size: int = 32, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=generator), torch.rand(n, 1, size, size, generator=generator)


# ---------------------------------------------------------------------------------------- noise schedule


def test_cosine_schedule_follows_its_closed_form():
    schedule = NoiseSchedule(1000, "cosine")
    abar = schedule.alphas_cumprod
    assert torch.all(abar[1:] < abar[:-1]) and abar.dtype == torch.float64
    f = [math.cos((k / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2 for k in (0, 1, 500)]
    assert abar[0].item() == pytest.approx(f[1] / f[0], rel=1e-9)
    assert abar[499].item() == pytest.approx(f[2] / f[0], rel=1e-9)
    assert abar[-1].item() < 1e-6 and schedule.betas.max().item() <= 0.999


def test_linear_schedule_ends_and_q_sample():
    schedule = NoiseSchedule(1000, "linear")
    assert schedule.betas[0].item() == pytest.approx(1e-4) and schedule.betas[-1].item() == pytest.approx(0.02)
    abar = schedule.alphas_cumprod
    assert torch.all(abar[1:] < abar[:-1])
    assert abar[-1].item() == pytest.approx(math.exp(sum(math.log(1 - b) for b in schedule.betas.tolist())), rel=1e-9)
    z0, noise = torch.randn(3, 2, 4, 4, 4), torch.randn(3, 2, 4, 4, 4)
    t = torch.tensor([0, 400, 999])
    expected = torch.stack([math.sqrt(abar[k]) * z0[i] + math.sqrt(1 - abar[k]) * noise[i] for i, k in enumerate(t)])
    assert torch.allclose(schedule.q_sample(z0, t, noise), expected, atol=1e-5)
    # the x0 prediction from the true noise gives z0 back, and a DDIM step to t = -1 lands on it
    zt = schedule.q_sample(z0, t, noise)
    assert torch.allclose(schedule.predict_x0(zt, t, noise), z0, atol=1e-3)
    # deterministic DDIM with the true x0 moves along the forward process: z_t -> z_t' = q_sample(z0, t', noise)
    x0 = z0[1:2]
    assert torch.allclose(schedule.ddim_step(zt[1:2], 400, 100, x0, 0.0, noise[1:2]),
                          schedule.q_sample(x0, torch.tensor([100]), noise[1:2]), atol=1e-5)  # fmt: skip
    assert torch.allclose(schedule.ddim_step(zt[1:2], 400, -1, x0, 0.0, noise[1:2]), x0)
    assert NoiseSchedule(50, "cosine").ddim_timesteps(3) == [49, 24, 0]


def test_prediction_targets_convert_to_x0_in_closed_form():
    schedule = NoiseSchedule(1000, "cosine")
    f = [math.cos((k / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2 for k in range(1001)]
    t = torch.tensor([0, 300, 900])  # (near T the betas are clipped at 0.999, off the closed form)
    abar = torch.tensor([f[k + 1] / f[0] for k in t.tolist()]).reshape(-1, 1, 1, 1, 1)  # closed form, not the cumprod
    z0, noise = torch.randn(3, 2, 4, 4, 4), torch.randn(3, 2, 4, 4, 4)
    zt = abar.sqrt() * z0 + (1 - abar).sqrt() * noise
    v = abar.sqrt() * noise - (1 - abar).sqrt() * z0  # Salimans & Ho 2022
    assert torch.allclose(schedule.target(z0, t, noise, "v"), v, atol=1e-6)
    assert torch.equal(schedule.target(z0, t, noise, "epsilon"), noise)
    assert torch.equal(schedule.target(z0, t, noise, "x0"), z0)
    assert torch.allclose(schedule.predict_x0(zt, t, v, "v"), z0, atol=1e-5)
    assert torch.allclose(schedule.predict_x0(zt, t, noise, "epsilon"), z0, atol=1e-4)
    assert torch.equal(schedule.predict_x0(zt, t, z0, "x0"), z0)
    for prediction in PREDICTIONS:  # every target's output gives the same x0, hence the same sampler step
        assert torch.allclose(schedule.predict_x0(zt[1:2], t[1:2], schedule.target(z0, t, noise, prediction)[1:2],
                                                  prediction), z0[1:2], atol=1e-5)  # fmt: skip
    with pytest.raises(ValueError):
        tiny_model(prediction="noise")


# ------------------------------------------------------------------------------------------- samplers


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_samplers_are_seeded(sampler):
    model = tiny_model(timesteps=10)
    pa, lateral = radiographs()
    calls = []
    first = model.sample_latents(pa, lateral, samples=2, sampler=sampler, seed=3, eta=1.0, progress=calls.append)
    again = model.sample_latents(pa, lateral, samples=2, sampler=sampler, seed=3, eta=1.0)
    other = model.sample_latents(pa, lateral, samples=2, sampler=sampler, seed=4, eta=1.0)
    assert first.shape == (2, *TINY.latent_shape)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert not torch.equal(first[0], first[1])  # the K samples differ
    assert len(calls) == (10 if sampler == "ddpm" else TINY.sample_steps) and calls[-1] == 1.0


# ---------------------------------------------------------------------------------------- conditioning


@pytest.mark.parametrize("views", [1, 2])
def test_conditioning_is_concatenated_at_every_block(views):
    model = tiny_model(views)
    pa, lateral = radiographs(2)
    images = [pa] if views == 1 else [pa, lateral]
    embedding = model.denoiser.embed(images)
    assert embedding.shape == (2, views * TINY.encoder["embed_dim"])
    seen = []
    blocks = [m for m in model.denoiser.unet.modules() if hasattr(m, "cond")]
    assert len(blocks) == 2 * len(TINY.unet_channels)  # down, middle and merge blocks
    hooks = [b.conv1.register_forward_hook(lambda m, args, out: seen.append((m, args[0].shape))) for b in blocks]
    z = torch.randn(2, *TINY.latent_shape)
    out = model.denoiser(z, torch.tensor([10, 40]), images)
    for hook in hooks:
        hook.remove()
    assert out.shape == z.shape
    for conv, shape in seen:  # every block's first convolution sees its features + the embedding's channels
        assert shape[1] == conv.in_channels and conv.in_channels - TINY.cond_channels in TINY.unet_channels + tuple(
            2 * c for c in TINY.unet_channels
        )
    changed = [images[0].flip(-1)] + images[1:]
    assert not torch.allclose(out, model.denoiser(z, torch.tensor([10, 40]), changed))  # the radiographs matter
    with pytest.raises(ValueError):
        model.sample(pa, None if views == 2 else lateral, samples=1)


def test_geometry_prior_is_the_pooled_back_projection_on_the_latent_grid():
    model = tiny_model(geometry_prior=True)
    pa, lateral = radiographs(2)
    prior = model.denoiser.geometry([pa, lateral])
    c, d, h, w = TINY.latent_shape
    assert prior.shape == (2, 2, d, h, w)
    projector = model.denoiser.prior.projectors[1]
    assert isinstance(projector, BackProjector) and projector.view == "LATERAL"
    back = projector(lateral)  # the (N, 1, 64, 64, 64) back-projection, pooled by (depth stride, VAE factor²)
    k = TINY.compression
    assert torch.allclose(prior[:, 1:], torch.nn.functional.avg_pool3d(back, (TINY.depth_stride, k, k)), atol=1e-6)
    assert model.denoiser.unet.stem.in_channels == c + 2
    z, t = torch.randn(2, *TINY.latent_shape), torch.tensor([10, 40])
    out = model.denoiser(z, t, [pa, lateral])
    assert torch.equal(out, model.denoiser(z, t, [pa, lateral], prior))  # a cached prior is the same input
    assert not torch.allclose(out, model.denoiser(z, t, [pa, lateral], prior.flip(-1)))  # the prior is used
    assert tiny_model().denoiser.geometry([pa, lateral]) is None


# -------------------------------------------------------------------------------------------- guidance


def test_guidance_brings_the_drrs_closer_to_the_radiographs():
    model = tiny_model()
    volume = torch.zeros(1, 1, 64, 64, 64)
    volume[:, :, 12:52, 16:48, 10:54] = 0.42  # a water-like box
    volume[:, :, 20:44, 22:40, 14:28] = 0.2  # a lung-like hole
    geometry = model.config.geometry
    target = {view: normalize(project(volume * 2500 - 1024, 5.0, view, 32, geometry, units="hu"), "minmax")
              for view in model.views}  # fmt: skip
    embedding = model.denoiser.embed([target["PA"], target["LATERAL"]])
    generator = torch.Generator().manual_seed(0)
    z, noise = torch.randn(1, *TINY.latent_shape, generator=generator), torch.randn(1, *TINY.latent_shape)
    index = torch.tensor([0])
    # the last sampler step (t = 0 -> z_0), the same state and noise, without and with guidance
    plain = model._step(z, 0, [0], 0, "ddim", model._x0(z, index, model.denoiser.unet(z, index, embedding)), 0.0, noise)
    guided = model._guided_step(z, 0, index, embedding, None, [0], 0, "ddim", 0.0, noise, 1.0, target, geometry, 32)
    before = drr_distance(model.vae.decode_volume(plain), target, geometry, 32).item()
    after = drr_distance(model.vae.decode_volume(guided), target, geometry, 32).item()
    assert after < 0.97 * before, (before, after)
    # through the public sampler (also under inference mode, as x2ct predict runs it): guidance changes the sample
    pa, lateral = target["PA"], target["LATERAL"]
    with torch.inference_mode():
        unguided = model.sample_latents(pa, lateral, samples=1, steps=1)
        steered = model.sample_latents(pa, lateral, samples=1, steps=1, guidance=1.0)
    assert not torch.equal(unguided, steered)


# ------------------------------------------------------------------------------------------------ LoRA


def test_lora_trains_only_the_adapters_and_counts_them():
    model = tiny_model()
    model.requires_grad_(True)
    z, t = torch.randn(1, *TINY.latent_shape), torch.tensor([7])
    images = list(radiographs())
    before = model.denoiser(z, t, images)
    bases = [m for m in model.denoiser.unet.modules() if isinstance(m, (nn.Conv3d, nn.Linear))]
    expected = sum(4 * (m.in_channels * math.prod(m.kernel_size) + m.out_channels) if isinstance(m, nn.Conv3d)
                   else 4 * (m.in_features + m.out_features) for m in bases)  # fmt: skip
    wrapped = model.enable_lora(4, 8.0)
    assert wrapped == len(bases) and model.config.lora_rank == 4
    assert lora_parameter_count(model.denoiser.unet) == expected
    trainable = {id(p) for p in model.denoiser.unet.parameters() if p.requires_grad}
    adapters = {id(p) for m in model.denoiser.unet.modules() if isinstance(m, LoRALayer)
                for p in (*m.down.parameters(), *m.up.parameters())}  # fmt: skip
    assert trainable == adapters
    assert torch.allclose(model.denoiser(z, t, images), before)  # up starts at zero
    rebuilt = LatentDiffusionGenerator(model.config)  # a saved LoRA model rebuilds with the same keys
    assert set(rebuilt.state_dict()) == set(model.state_dict())


# -------------------------------------------------------------------------------------- encoder files


def test_pretrained_encoder_file_is_read_safely(tmp_path):
    from safetensors.torch import save_file

    model = tiny_model()
    weights = tmp_path / "enc.safetensors"
    save_file({k: v.contiguous() for k, v in model.denoiser.encoders[0].state_dict().items()}, str(weights))
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    (tmp_path / "enc.json").write_text(json.dumps({"architecture": TINY.encoder, "sha256": digest}))
    description, state = load_radiograph_encoder(weights)
    assert description == TINY.encoder and torch.equal(state["head.weight"], model.denoiser.encoders[0].head.weight)
    (tmp_path / "enc.json").write_text(json.dumps({"architecture": TINY.encoder, "sha256": "0" * 64}))
    with pytest.raises(InputError, match="sha256"):
        load_radiograph_encoder(weights)


# ------------------------------------------------------------------------------------- training, resume


def write_dataset(root: Path, cases: int = 3) -> Path:
    """A data set in the build-dataset layout: box phantoms with a moving dense blob, their DRRs as 8-bit images."""
    root.mkdir(parents=True)
    rows = []
    for i in range(cases):
        hu = np.full((64, 64, 64), -1000.0, np.float32)
        hu[8:56, 14:50, 8:56] = 0.0
        hu[14:44, 18:44, 12:28] = -800.0
        hu[14:44, 18:44, 36:52] = -800.0
        hu[20 + 4 * i : 30 + 4 * i, 30:40, 28:36] = 700.0
        volume = torch.from_numpy(hu)[None, None]
        case = f"case{i}"
        (root / case).mkdir()
        with h5py.File(root / case / "ct_xray_data.h5", "w") as f:
            f.create_dataset("ct", data=np.clip(hu + 1024, 0, 2500).astype(np.int16))
            for name, view in (("xray1", "PA"), ("xray2", "LATERAL")):
                drr = normalize(project(volume, 5.0, view, 64, units="hu"), "minmax")[0, 0]
                f.create_dataset(name, data=(drr.numpy() * 255).round().astype(np.uint8))
            f.attrs.update({"size": 64, "drr_size": 64, "sad_mm": 541.0, "sid_mm": 949.0, "detector_mm": 500.0})
        rows.append({"case_id": case, "split": "val" if i == cases - 1 else "train", "path": f"{case}/ct_xray_data.h5"})
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["case_id", "split", "path"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def run(data: Path, out: Path, *sets: str):
    config = load_diffusion_config(str(PRESETS["tiny"]), [f"data={data}", f"out={out}", *sets])
    return train_diffusion(config, log=lambda line: None)


def test_training_stages_resume_and_load(tmp_path):
    data = write_dataset(tmp_path / "data")
    vae = run(data, tmp_path / "vae", "epochs=1")
    assert vae.finished and (tmp_path / "vae" / "model" / "model.json").is_file()
    ldm_args = ("stage=ldm", f"vae={tmp_path / 'vae'}", "epochs=1", "batch_size=1", "val_every_epochs=0")
    straight = run(data, tmp_path / "straight", *ldm_args)
    first = run(data, tmp_path / "resumed", *ldm_args, "max_steps=1", "checkpoint_every_steps=1")
    assert not first.finished and first.global_step == 1
    resumed = run(data, tmp_path / "resumed", *ldm_args)
    assert resumed.finished and resumed.global_step == straight.global_step == 2
    weights = [(tmp_path / name / "model" / "model.safetensors").read_bytes() for name in ("straight", "resumed")]
    assert weights[0] == weights[1]

    model = load_generator(tmp_path / "straight" / "model", "cpu")
    assert isinstance(model, LatentDiffusionGenerator) and model.stochastic and model.views == ("PA", "LATERAL")
    assert model.vae.latent_scale.item() != 1.0  # the ldm stage normalised the latents
    meta = json.loads((tmp_path / "straight" / "model" / "model.json").read_text())
    assert meta["network"]["architecture"] == "latent_diffusion" and meta["training"]["stage"] == "ldm"
    assert meta["network"]["config"]["depth_stride"] == 2 and meta["network"]["config"]["drr_size"] == 64
    pa, lateral = radiographs(1, 64)
    with torch.inference_mode():
        out = model(pa, lateral)
        samples = model.sample(pa, lateral, samples=2)
        z = model.vae.encode_volume(out)
    assert out.shape == (1, 1, 64, 64, 64) and out.min() >= 0 and out.max() <= 1
    assert samples.shape == (2, 1, 1, 64, 64, 64) and not torch.equal(samples[0], samples[1])
    assert z.shape == (1, *model.config.latent_shape)

    # the options train (v target, cached priors) and are rebuilt from model.json
    options = json.dumps({**load_diffusion_config(preset="tiny").model, "prediction": "v", "geometry_prior": True})
    run(data, tmp_path / "options", *ldm_args, f"model={options}")
    model = load_generator(tmp_path / "options" / "model", "cpu")
    assert model.config.prediction == "v" and model.config.geometry_prior and model.denoiser.prior is not None
    with torch.inference_mode():
        assert model.sample(pa, lateral, samples=1).shape == (1, 1, 1, 64, 64, 64)
