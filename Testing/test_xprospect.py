"""The XprospeCT generator family (x2ct.models.xprospect), its losses and its training, at tiny sizes.

* back-projection is the adjoint of the cone-beam projector (⟨Px, y⟩ = ⟨x, Pᵀy⟩ on random tensors),
  normalised to the radiograph's scale, and two views meet at the structure both see;
* the variants' shapes, views, priors and eval-mode clamping;
* the MAE and cone-beam re-projection losses;
* training each architecture on the shared engine, resuming bit for bit, exporting, and running the
  exported model through ``x2ct predict``.
"""

from __future__ import annotations

import csv
import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from x2ct.cli import main
from x2ct.data.loader import CaseDataset, generator_sizes
from x2ct.drr import normalize, project
from x2ct.drr_geometry import DRRGeometry
from x2ct.geometry import EXTENT_MM
from x2ct.losses import LossWeights, absolute, generator_loss, lesion_absolute, reprojection
from x2ct.models import load_generator
from x2ct.models.checkpoints import save_generator
from x2ct.models.xprospect import (
    BackProjectionConfig,
    BackProjectionUNet,
    BackProjector,
    DenseUNetConfig,
    DenseUNetGenerator,
    TemplateConfig,
    TemplateGenerator,
)
from x2ct.views import LATERAL, PA

pytestmark = pytest.mark.usefixtures("one_thread")

GEOMETRY = DRRGeometry()
SAMPLES = Path(__file__).resolve().parents[1] / "Resources" / "SampleData" / "radiographs"


def run_cli(*args: object) -> Tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------------------------------ back-projection


@pytest.mark.parametrize("view", [PA, LATERAL])
def test_back_projection_is_the_adjoint_of_projection(view):
    torch.manual_seed(0)
    grid, size = 32, 24
    x = torch.rand(2, 1, grid, grid, grid, dtype=torch.float64)
    y = torch.rand(2, 1, size, size, dtype=torch.float64)
    projector = BackProjector(view, grid, GEOMETRY)
    px = project(x, EXTENT_MM / grid, view, size, GEOMETRY, units="mu")
    left = float((px * y).sum())
    right = float((x * projector.adjoint(y)).sum())
    assert left == pytest.approx(right, rel=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_cuda_back_projection_and_bp_unet_match_cpu():
    torch.manual_seed(0)
    y = torch.rand(2, 1, 24, 24)
    projector = BackProjector(LATERAL, 32, GEOMETRY)
    on_gpu = projector(y.cuda())
    assert on_gpu.is_cuda and torch.allclose(on_gpu.cpu(), projector(y), atol=1e-5)
    model = BackProjectionUNet(BackProjectionConfig(grid_size=64, views=2, channels=(4, 8))).eval()
    pa, lateral = torch.rand(1, 1, 64, 64), torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        expected = model(pa, lateral)
        found = model.cuda()(pa.cuda(), lateral.cuda()).cpu()
    assert torch.allclose(found, expected, atol=1e-4)


def test_normalised_back_projection_keeps_the_radiograph_scale():
    projector = BackProjector(PA, 32, GEOMETRY)
    flat = projector(torch.full((1, 1, 32, 32), 0.7))
    covered = projector.ray_weight(32, torch.device("cpu"), torch.float32) > 0
    assert torch.allclose(flat[covered], torch.tensor(0.7), atol=1e-5)
    assert float(flat.min()) >= 0.0 and float(flat.max()) <= 0.7 + 1e-5
    assert not covered.all()  # the corners of the cube lie outside the cone of rays


def test_two_views_meet_at_the_structure_both_see():
    grid = 32
    volume = torch.zeros(1, 1, grid, grid, grid)
    d, h, w = 12, 20, 9  # off-centre: superior, posterior, patient right
    volume[0, 0, d - 1 : d + 2, h - 1 : h + 2, w - 1 : w + 2] = 1.0
    product = torch.ones(1, 1, grid, grid, grid)
    for view in (PA, LATERAL):
        drr = normalize(project(volume, EXTENT_MM / grid, view, 48, GEOMETRY, units="mu"), "minmax")
        product = product * BackProjector(view, grid, GEOMETRY)(drr)
    peak = np.unravel_index(int(product.argmax()), product.shape[2:])
    assert max(abs(int(p) - q) for p, q in zip(peak, (d, h, w))) <= 1, peak


# ------------------------------------------------------------------------------------------------ variants


VARIANTS = [
    ("bp_unet", lambda views: BackProjectionUNet(BackProjectionConfig(grid_size=64, views=views, channels=(4, 8)))),
    ("bp_unet", lambda views: BackProjectionUNet(BackProjectionConfig(64, views, (4, 8), 1, False, False))),
    ("dual_unet", lambda views: DenseUNetGenerator(DenseUNetConfig(64, views, 4, 8, levels=3, dense_units=64))),
    ("dual_unet", lambda views: DenseUNetGenerator(DenseUNetConfig(64, views, 4, 8, levels=4, dense_units=512))),
    ("template", lambda views: TemplateGenerator(TemplateConfig(64, views))),
]


@pytest.mark.parametrize("views", [1, 2])
@pytest.mark.parametrize("name,make", VARIANTS)
def test_variants_map_radiographs_to_the_canonical_cube(name, make, views):
    torch.manual_seed(1)
    net = make(views)
    assert net.architecture == name and net.views == ((PA,) if views == 1 else (PA, LATERAL))
    pa, lateral = torch.rand(2, 1, 64, 64), torch.rand(2, 1, 64, 64) if views == 2 else None
    out = net.train()(pa, lateral)
    assert out.shape == (2, 1, 64, 64, 64)
    if any(p.requires_grad for p in net.parameters()):
        out.mean().backward()
        assert all(p.grad is not None for p in net.parameters())
    with torch.no_grad():
        evaluated = net.eval()(pa, lateral)
    assert float(evaluated.min()) >= 0.0 and float(evaluated.max()) <= 1.0
    with pytest.raises(ValueError, match="takes"):
        net(pa, None if views == 2 else pa)


def test_configs_refuse_impossible_shapes():
    with pytest.raises(ValueError, match="grid_size"):
        BackProjectionConfig(grid_size=48)
    with pytest.raises(ValueError, match="halved"):
        BackProjectionConfig(grid_size=64, channels=(4, 8, 16, 32, 64, 128, 256, 512))
    with pytest.raises(ValueError, match="views"):
        DenseUNetConfig(grid_size=64, views=3)
    with pytest.raises(ValueError, match="need 0 < SAD < SID"):
        BackProjectionConfig(grid_size=64, sad_mm=900.0, sid_mm=500.0)


# -------------------------------------------------------------------------------------------------- losses


def test_mae_and_reprojection_losses():
    torch.manual_seed(2)
    fake, real = torch.rand(2, 1, 16, 16, 16), torch.rand(2, 1, 16, 16, 16)
    assert torch.allclose(absolute(fake, real), (fake - real).abs().mean())
    # the re-projection loss is 0 for the volume whose DRRs are the inputs, and grows for another one
    hu = real * 2500.0 - 1024.0
    drrs = {
        view: normalize(project(hu, EXTENT_MM / 16, view, 20, GEOMETRY, units="hu"), "minmax") for view in (PA, LATERAL)
    }
    assert float(reprojection(real, drrs, GEOMETRY)) < 1e-6
    other = fake.clone().requires_grad_(True)
    loss = reprojection(other, drrs, GEOMETRY)
    loss.backward()
    assert float(loss.detach()) > 0.01 and float(other.grad.abs().sum()) > 0
    weights = LossWeights(gan=0.0, recon=0.0, projection=0.0, l1=1.0, reprojection=2.0)
    terms = generator_loss(None, fake, real, weights, drrs, GEOMETRY)
    assert set(terms) == {"g_recon", "g_proj", "g_l1", "g_reproj", "g_total"}
    assert torch.allclose(terms["g_total"], terms["g_l1"] + 2.0 * terms["g_reproj"])
    with pytest.raises(ValueError, match="re-projection loss needs"):
        generator_loss(None, fake, real, weights)


# ------------------------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("xprospect") / "data"
    code, _, stderr = run_cli("build-dataset", "--synthetic-from", "sample", "--cases", "4", "--seed", "7",
                              "--size", "64", out)  # fmt: skip
    assert code == 0, stderr
    return out


def train_args(data: Path, out: Path, *settings: str) -> List[str]:
    base = ["grid_size=64", "epochs_constant=1", "epochs_decay=1", "batch_size=2", "threads=1", "device=cpu",
            "progress=false", "tensorboard=off", "seed=5", "val_split=train", "keep_every_epochs=0"]  # fmt: skip
    args: List[str] = ["train-generator", "--data", str(data), "-o", str(out)]
    for item in [*base, *settings]:
        args += ["--set", item]
    return args


BP = ["architecture=bp_unet", 'arch_options={"channels": [4, 8], "res_units": 1}', "gan_weight=0", "recon_weight=0",
      "projection_weight=0", "l1_weight=1", "reprojection_weight=0.5", "optimizer=nadam"]  # fmt: skip


def test_bp_unet_trains_resumes_bit_for_bit_and_predicts(data, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    code, stdout, stderr = run_cli(*train_args(data, straight, *BP))
    assert code == 0 and "trained 4 steps" in stdout, stderr
    code, stdout, stderr = run_cli(*train_args(data, resumed, *BP, "max_steps=1"))
    assert code == 0 and "stopped at step 1" in stdout, stderr
    code, stdout, stderr = run_cli(*train_args(data, resumed, *BP))
    assert code == 0 and "resuming" in stderr, stderr
    model = "model/model.safetensors"
    assert (resumed / model).read_bytes() == (straight / model).read_bytes()
    tags = {row["tag"] for row in csv.DictReader(open(straight / "scalars.csv"))}
    assert {"loss/g_l1", "loss/g_reproj", "loss/g_total"} <= tags and "loss/d_total" not in tags
    state = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)["trainer"]
    assert "mu_product" in state["opt_G"]["state"][0] and "D" not in state  # NAdam, no discriminator
    meta = json.loads((straight / "model" / "model.json").read_text())
    assert meta["network"]["architecture"] == "bp_unet" and meta["network"]["config"]["sid_mm"] == 949.0
    # the prior is the mean of the training CTs
    train = CaseDataset(data, "train", generator_sizes(64, 2))
    mean = torch.stack([train[i].images["ct"][0] for i in range(len(train))]).double().mean(0).float()
    assert torch.allclose(load_file(straight / model)["prior"][0, 0], mean, atol=1e-6)
    out = tmp_path / "predicted"
    inputs = ["--pa", SAMPLES / "pa.png", "--lateral", SAMPLES / "lateral.png"]
    predict = ["predict", *inputs, "--model", straight / "model"]
    code, stdout, stderr = run_cli(*predict, "-o", out, "--no-classifiers", "--device", "cpu")
    assert code == 0 and (out / "synthetic_ct.nrrd").is_file(), stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["architecture"] == "bp_unet" and summary["output"]["grid_size"] == 64


@pytest.mark.parametrize(
    "settings",
    [
        ["architecture=dual_unet", "views=1", 'arch_options={"levels": 2, "dense_units": 64, "base_channels": 4}',
         "gan_weight=0", "recon_weight=0", "l1_weight=1", "optimizer=nadam"],  # fmt: skip
        ["architecture=template", "gan_weight=0"],
        ["architecture=x2ct_gan", "width=0.0625", "ndf=4"],
    ],
    ids=["dual_unet", "template", "x2ct_gan"],
)
def test_every_architecture_trains_and_loads(data, tmp_path, settings):
    out = tmp_path / "run"
    code, _, stderr = run_cli(*train_args(data, out, *settings))
    assert code == 0, stderr
    net = load_generator(out / "model")
    size = net.config.grid_size
    views = net.views
    with torch.no_grad():
        volume = net(*[torch.rand(1, 1, size, size) for _ in views])
    assert volume.shape == (1, 1, size, size, size)
    if net.architecture == "template":
        train = CaseDataset(data, "train", generator_sizes(size, 2))
        mean = torch.stack([train[i].images["ct"][0] for i in range(len(train))]).double().mean(0).float()
        assert torch.allclose(volume[0, 0], mean.clamp(0, 1), atol=1e-6)


def test_bad_architecture_settings_are_one_line(data, tmp_path):
    for settings, message in [
        (["architecture=vit"], "setting architecture='vit': use one of x2ct_gan, bp_unet, dual_unet, template"),
        (["optimizer=sgd"], "setting optimizer='sgd'"),
        (["architecture=bp_unet", 'arch_options={"channels": [4, 8], "depth": 3}'], "bad bp_unet config"),
        (["arch_options={\"channels\": [4]}"], "x2ct_gan takes width and dropout"),
    ]:
        code, _, stderr = run_cli(*train_args(data, tmp_path / "bad", *settings))
        assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not (tmp_path / "bad" / "model").exists()


def test_saved_models_round_trip(tmp_path):
    torch.manual_seed(3)
    for net in (BackProjectionUNet(BackProjectionConfig(64, 1, (4, 8))), TemplateGenerator(TemplateConfig(64, 2))):
        net.set_prior(torch.rand(64, 64, 64))
        folder = tmp_path / net.architecture
        save_generator(net.eval(), folder)
        loaded = load_generator(folder)
        images = [torch.rand(1, 1, 64, 64) for _ in net.views]
        with torch.no_grad():
            assert torch.equal(loaded(*images), net(*images))
        assert loaded.metadata.architecture == net.architecture and loaded.metadata.views == net.views


def test_a_time_budget_ends_the_run_and_exports_the_model(data, tmp_path):
    out = tmp_path / "budget"
    code, stdout, stderr = run_cli(*train_args(data, out, *BP, "max_minutes=0.00001", "epochs_constant=50"))
    assert code == 0 and "spent the 1e-05 min budget (1 steps" in stderr, stderr
    meta = json.loads((out / "model" / "model.json").read_text())
    assert meta["training"]["steps"] == 1 and meta["training"]["time_budget_minutes"] == 0.00001


def test_lesion_loss_and_lesion_masks_of_the_cases(data, tmp_path):
    fake, real = torch.zeros(1, 1, 6, 6, 6), torch.zeros(1, 1, 6, 6, 6)
    real[0, 0, 1, 1, 1], fake[0, 0, 2, 2, 2], fake[0, 0, 4, 4, 4] = 0.5, 0.2, 0.9
    mask = torch.zeros(1, 1, 6, 6, 6)
    mask[0, 0, 1, 1, 1] = 1.0
    # the lesion voxel and its 26 neighbours (one of them blurred to 0.2); the far voxel does not count
    assert float(lesion_absolute(fake, real, mask)) == pytest.approx((0.5 + 0.2) / 27)
    assert float(lesion_absolute(fake, real, torch.zeros_like(mask))) == 0.0
    # the data set's lesion masks: the union of every kind, pooled onto the model's grid
    from x2ct.data.loader import read_lesions
    from x2ct.data.synthetic import LESION_KINDS

    cases = CaseDataset(data, "all", generator_sizes(32, 1), lesions=True)
    with_lesions = 0
    for i in range(len(cases)):
        item = cases[i]
        stored = read_lesions(cases.case_file(i), LESION_KINDS)
        assert item.lesions.shape == (1, 32, 32, 32)
        if stored is None:
            assert float(item.lesions.sum()) == 0.0
            continue
        with_lesions += 1
        union = np.any(list(stored.masks.values()), axis=0)
        pooled = union.reshape(32, 2, 32, 2, 32, 2).any(axis=(1, 3, 5))  # 64 -> 32: any of the 2x2x2 cell
        assert np.array_equal(item.lesions[0].numpy() > 0, pooled)
    assert with_lesions >= 1
    # a lesion weight on cases that hold no mask is refused
    bare = tmp_path / "bare"
    import shutil

    import h5py

    shutil.copytree(data, bare)
    for case in bare.glob("*/ct_xray_data.h5"):
        with h5py.File(case, "a") as f:
            if "lesions" in f:
                del f["lesions"]
    code, _, stderr = run_cli(*train_args(bare, tmp_path / "run", *BP, "lesion_weight=1"))
    assert code == 2 and "lesion_weight needs lesion masks" in stderr
