"""The latent-space classifier (``latent-densenet3d``): a DenseNet on a frozen slice VAE's latents.

A tiny untrained latent diffusion model (64³ grid, VAE compressing in-plane by 8, 2 latent channels) is the VAE;
the DenseNets have one-layer blocks (the default is the real DenseNet-121). Six 64³ synthetic cases (32-pixel
DRRs) train it for one step through ``x2ct train-classifier --vae``.
"""

from __future__ import annotations

import csv
import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Tuple

import numpy as np
import pytest
import torch

from x2ct.classify.checkpoint import load_classifier
from x2ct.cli import main
from x2ct.errors import InputError
from x2ct.gradcam import grad_cam
from x2ct.models import build_classifier, save_generator
from x2ct.models.classifiers import latent_to_ct_map
from x2ct.models.latent_diffusion import LatentDiffusionConfig, LatentDiffusionGenerator

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"init_features": 4, "growth_rate": 4, "block_config": [1, 1]}
SPLITS = {
    "train": {"synth-s5-00000": 0, "synth-s5-00002": 1},
    "val": {"synth-s5-00001": 0, "synth-s5-00004": 0, "synth-s5-00003": 1, "synth-s5-00005": 1},
}
"""``tb_present`` of the six cases ``build-dataset --synthetic-from sample --cases 6 --seed 5`` builds (checked)."""


def run_cli(*args: object) -> Tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def vae(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = LatentDiffusionConfig(
        grid_size=64, views=1, vae_channels=(2, 2, 2, 2), latent_channels=2, unet_channels=(4,), cond_channels=2,
        time_dim=8, encoder={"kind": "cnn", "channels": [4], "embed_dim": 8}, timesteps=10, sample_steps=1,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("vae") / "ldm"
    save_generator(LatentDiffusionGenerator(config), folder)
    return folder


def test_forward_encodes_with_the_frozen_vae(vae):
    torch.manual_seed(1)
    net = build_classifier("latent-densenet3d", 3, vae=str(vae), **TINY)
    ct = torch.rand(2, 1, 32, 32, 32)
    assert net({"ct": ct}).shape == (2, 3)
    assert net.latents(ct).shape == (2, 2, 64, 8, 8)  # the CT resampled to the VAE's 64³ grid, in-plane / 8
    assert net.encoder.features.conv0.in_channels == 2
    assert not any(key.startswith("latent_encoder") for key in net.state_dict())  # the VAE is not the classifier's
    assert all(p.requires_grad for p in net.parameters())
    assert not any(p.requires_grad for p in net.latent_encoder.module.parameters())
    sha = json.loads((vae / "model.json").read_text())["weights"]["sha256"]
    assert net.options["vae_sha256"] == sha
    with pytest.raises(InputError, match="differ"):
        build_classifier("latent-densenet3d", 1, vae=str(vae), vae_sha256="0" * 64, **TINY)


def test_a_latent_peak_maps_onto_its_block_of_ct_voxels():
    latent = torch.zeros(1, 8, 4, 4)
    latent[0, 5, 1, 2] = 1.0
    ct = latent_to_ct_map(latent, (8, 16, 16))[0]  # D kept, in-plane x4
    peak = torch.nonzero(ct == ct.max())
    assert ct.shape == (8, 16, 16) and len(peak)
    assert set(peak[:, 0].tolist()) == {5}
    assert all(4 <= r < 8 for r in peak[:, 1].tolist()) and all(8 <= c < 12 for c in peak[:, 2].tolist())


def test_grad_cam_lands_on_the_ct_grid_where_the_layer_map_peaks(vae):
    torch.manual_seed(2)
    net = build_classifier("latent-densenet3d", 1, vae=str(vae), **TINY).eval()
    ct = torch.rand(1, 1, 32, 32, 32)
    assert grad_cam(net, {"ct": ct}, 0)["ct"].shape == (32, 32, 32)
    layer = torch.zeros(1, *net.latent_grid)  # one transition: the cam layer is on the latent grid (64, 8, 8)
    layer[0, 20, 1, 2] = 1.0
    mapped = net.cam_maps({"ct": layer}, {"ct": ct})["ct"][0]
    d, r, c = np.unravel_index(int(torch.argmax(mapped)), tuple(mapped.shape))
    assert d == 10 and 4 <= r < 8 and 8 <= c < 12  # latent slice 20 of 64 -> CT slice 10 of 32; cell (1, 2) x 4


def test_train_classifier_with_vae_and_reload(vae, tmp_path):
    data = tmp_path / "data"
    code, _, stderr = run_cli("build-dataset", "--synthetic-from", "sample", "--cases", "6", "--seed", "5",
                              "--size", "64", "--drr-size", "32", data)  # fmt: skip
    assert code == 0, stderr
    with open(data / "manifest.csv", newline="") as fh:
        built = {row["case_id"]: int(row["tb_present"]) for row in csv.DictReader(fh)}
    assert all(built[c] == y for cases in SPLITS.values() for c, y in cases.items())
    labels = tmp_path / "labels.csv"
    rows = [f"{c},{s},{y}" for s, cases in SPLITS.items() for c, y in cases.items()]
    labels.write_text("case_id,split,tb_present\n" + "\n".join(rows) + "\n")
    settings = ["size_ct=32", "epochs=1", "batch_size=2", "progress=false", "tensorboard=off", "augment=false",
                f"arch_options={json.dumps(TINY)}"]  # fmt: skip
    code, stdout, stderr = run_cli("train-classifier", "--data", data, "--labels", labels, "--task", "tb", "--arch",
                                   "latent-densenet3d", "--vae", vae, "-o", tmp_path / "run", "--device", "cpu",
                                   *[a for s in settings for a in ("--set", s)])  # fmt: skip
    assert code == 0, stderr
    assert "trained 1 steps" in stdout
    net, metadata = load_classifier(tmp_path / "run")
    assert metadata.architecture == "latent-densenet3d"
    assert metadata.network_config["vae"] == str(vae) and len(metadata.network_config["vae_sha256"]) == 64
    assert net({"ct": torch.rand(1, 1, 32, 32, 32)}).shape == (1, 1)
