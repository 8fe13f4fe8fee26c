"""Radiograph folders without CT (x2ct.data.radiograph_folder) and shape induction (x2ct.train.shape_induction)."""

from __future__ import annotations

import csv
import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from radiograph_factory import write_dx, write_picture
from x2ct.cli import main
from x2ct.data.radiograph_folder import RadiographCase, model_input, read_radiograph_folder
from x2ct.drr import normalize, project
from x2ct.drr_geometry import DRRGeometry
from x2ct.errors import InputError
from x2ct.geometry import EXTENT_MM
from x2ct.inference.preprocess import preprocess, read_input
from x2ct.inference.types import InputSpec
from x2ct.intensity import unit_to_hu_unclamped
from x2ct.models.checkpoints import build_generator, save_generator
from x2ct.train.config import TrainConfig, load_config
from x2ct.train.shape_induction import ShapeSchedule, paired_partners, shape_induction_loss
from x2ct.views import LATERAL, PA

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------ radiograph folders


def test_folder_without_manifest_pairs_views_by_tags(tmp_path: Path):
    for case in ("a", "b"):
        write_dx(tmp_path / case / "front.dcm", view_position="PA")
        write_dx(tmp_path / case / "side.dcm", view_position="LL")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    cases = read_radiograph_folder(tmp_path, (PA, LATERAL))
    assert cases == [
        RadiographCase("a", {PA: tmp_path / "a" / "front.dcm", LATERAL: tmp_path / "a" / "side.dcm"}),
        RadiographCase("b", {PA: tmp_path / "b" / "front.dcm", LATERAL: tmp_path / "b" / "side.dcm"}),
    ]
    frontal = read_radiograph_folder(tmp_path, (PA,))  # laterals left out, untagged PNG taken as PA
    assert [c.case_id for c in frontal] == ["a_front", "b_front"]
    write_picture(tmp_path / "b" / "extra.png")
    assert [c.case_id for c in read_radiograph_folder(tmp_path, (PA,))] == ["a_front", "b_extra", "b_front"]
    with pytest.raises(InputError, match="2 frontal and 1 lateral"):
        read_radiograph_folder(tmp_path, (PA, LATERAL))


def test_manifest_lists_cases_and_names_missing_views(tmp_path: Path):
    write_picture(tmp_path / "x" / "pa.png")
    write_picture(tmp_path / "x" / "lat.png")
    (tmp_path / "manifest.csv").write_text("case_id,pa,lateral\nx,x/pa.png,x/lat.png\ny,x/pa.png,\n")
    assert read_radiograph_folder(tmp_path, (PA,))[1] == RadiographCase("y", {PA: tmp_path / "x" / "pa.png"})
    with pytest.raises(InputError, match="line 3: case_id 'y' has no lateral"):
        read_radiograph_folder(tmp_path, (PA, LATERAL))


def test_empty_or_missing_folder_is_an_input_error(tmp_path: Path):
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(InputError, match="holds no readable radiographs"):
        read_radiograph_folder(tmp_path, (PA,))
    with pytest.raises(InputError, match="not found"):
        read_radiograph_folder(tmp_path / "absent", (PA,))


def test_model_input_is_what_predict_prepares(tmp_path: Path):
    path = write_dx(tmp_path / "pa.dcm", view_position="PA", pixel_spacing=(2.5, 2.5))
    spec = InputSpec(size=24, quantize_bits=8)
    image = model_input(path, PA, spec)
    assert image.shape == (24, 24) and image.dtype == np.float32
    np.testing.assert_array_equal(image, preprocess(read_input(path, PA), spec).model_input)
    assert image.min() == 0.0 and image.max() == 1.0
    with pytest.raises(InputError, match="given as --lateral"):
        model_input(path, LATERAL, spec)


# ------------------------------------------------------------------------------------ shape induction


def _drr_inputs(volume: torch.Tensor, size: int) -> Dict[str, torch.Tensor]:
    """The min-max cone-beam DRRs of a unit-scale volume, as the training DRRs are made (both views)."""
    hu = unit_to_hu_unclamped(volume)
    spacing = EXTENT_MM / volume.shape[-1]
    return {
        view: normalize(project(hu, spacing, view, size, DRRGeometry(), units="hu"), "minmax") for view in (PA, LATERAL)
    }


def test_loss_is_zero_when_the_volume_explains_the_radiographs_and_grows_with_a_perturbation():
    torch.manual_seed(0)
    volume = torch.nn.functional.avg_pool3d(torch.rand(1, 1, 24, 24, 24), 5, 1, 2) * 0.5
    radiographs = _drr_inputs(volume, 16)
    assert shape_induction_loss(volume, radiographs, DRRGeometry()).item() == pytest.approx(0.0, abs=1e-12)
    blob = torch.zeros_like(volume)
    blob[..., 6:12, 8:14, 4:10] = 1.0
    losses = [shape_induction_loss(volume + a * blob, radiographs, DRRGeometry()).item() for a in (0.05, 0.2, 0.5)]
    assert 0 < losses[0] < losses[1] < losses[2]
    # the gradient reaches the volume (so a generator's weights) and a step against it lowers the loss
    moving = torch.nn.Parameter(volume + 0.2 * blob)
    loss = shape_induction_loss(moving, {PA: radiographs[PA]}, DRRGeometry())
    loss.backward()
    assert moving.grad is not None and moving.grad[blob.bool()].abs().sum() > 0
    with torch.no_grad():
        lower = shape_induction_loss(moving - 0.05 * moving.grad / moving.grad.abs().max(), {PA: radiographs[PA]},
                                     DRRGeometry())  # fmt: skip
    assert lower < loss


def test_schedule_pretrains_then_alternates_real_and_paired_epochs():
    assert ShapeSchedule(2, 3, 1).phases(10) == ["paired"] * 2 + (["real"] * 3 + ["paired"]) * 2
    seed = ShapeSchedule()  # the paper's: 90 real-radiograph epochs, then 10 paired ones, repeated
    assert seed.phases(200) == (["real"] * 90 + ["paired"] * 10) * 2
    assert ShapeSchedule(0, 1, 0).phases(3) == ["real"] * 3
    defaults = TrainConfig()
    assert (defaults.shape_weight, defaults.shape_real_epochs, defaults.shape_paired_epochs) == (10.0, 90, 10)
    assert defaults.shape_induction is None and defaults.init_from is None
    with pytest.raises(InputError, match="shape_pretrain_epochs=0: shape induction fine-tunes a trained generator"):
        load_config(None, ["shape_induction=/some/folder"])
    with pytest.raises(InputError, match="shape_real_epochs=0"):
        load_config(None, ["shape_real_epochs=0"])
    assert defaults.shape_mode == "alternate"  # the seed's schedule is the default
    with pytest.raises(InputError, match="shape_mode='both': use one of alternate, joint"):
        load_config(None, ["shape_mode=both"])


def test_joint_schedule_anchors_every_real_step_and_alternate_names_its_unanchored_tail():
    assert ShapeSchedule(2, 3, 1, "joint").phases(5) == ["paired"] * 2 + ["joint"] * 3
    assert ShapeSchedule(0, 90, 10, "joint").unanchored(100) == []
    assert ShapeSchedule().unanchored(1) == [0]  # a 1-epoch fine-tune never reaches a paired epoch
    assert ShapeSchedule().unanchored(150) == list(range(100, 150)) and ShapeSchedule().unanchored(95) == []
    assert ShapeSchedule().unanchored(100) == [] and ShapeSchedule(2, 3, 1).unanchored(6) == []
    # the paired partners of a joint step: a pure function of (seed, epoch, radiographs), a permutation per epoch
    first = paired_partners(3, 1, range(5), 5)
    assert sorted(first) == list(range(5)) and paired_partners(3, 1, [4, 0], 5) == [first[4], first[0]]
    assert [paired_partners(3, 1, range(5), 5) for _ in range(2)] == [first, first]
    assert any(paired_partners(3, e, range(5), 5) != first for e in (2, 3, 4))
    assert paired_partners(3, 1, [7], 5) == [first[2]]  # more radiographs than paired cases: they wrap


TINY_NET = {"channels": [4, 8], "res_units": 0, "residual": False, "prior": False}
"""A back-projection U-Net small enough for a CPU test step (an X2CT-GAN's 3D decoder is ~10x slower)."""
TINY = ["architecture=bp_unet", f"arch_options={json.dumps(TINY_NET)}", "gan_weight=0", "grid_size=64", "batch_size=2",
        "threads=1", "device=cpu", "views=1", "progress=false", "seed=3", "val_every_epochs=0", "sample_every_epochs=0",
        "keep_every_epochs=0"]  # fmt: skip
"""3 cases (paired or radiographs), batch 2: 2 steps per epoch."""


def run_cli(*args: object) -> Tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def train(data: Path, out: Path, *settings: str, radiographs: Optional[Path] = None) -> Tuple[int, str, str]:
    args: List[object] = ["train-generator", "--data", data, "-o", out]
    if radiographs is not None:
        args += ["--shape-induction", radiographs]
    for item in [*TINY, *settings]:
        args += ["--set", item]
    return run_cli(*args)


def logged(run: Path, tag: str) -> List[int]:
    """The steps at which ``tag`` was logged."""
    with open(run / "scalars.csv", newline="") as fh:
        return [int(row["step"]) for row in csv.DictReader(fh) if row["tag"] == tag]


@pytest.fixture(scope="module")
def paired_and_real(tmp_path_factory) -> Tuple[Path, Path]:
    """A 3-case 64³ synthetic data set and a folder of 3 radiograph PNGs without CT (the cases' PA DRRs)."""
    root = tmp_path_factory.mktemp("shape")
    code, _, stderr = run_cli("build-dataset", "--synthetic-from", "sample", "--cases", "3", "--seed", "7",
                              "--size", "64", root / "data")  # fmt: skip
    assert code == 0, stderr
    (root / "real").mkdir()
    for i, case in enumerate(sorted((root / "data").glob("*/ct_xray_data.h5"))):
        with h5py.File(case, "r") as f:
            Image.fromarray(np.ascontiguousarray(f["xray1"][...])).save(root / "real" / f"cr{i}.png")
    return root / "data", root / "real"


def test_shape_induction_run_pretrains_fine_tunes_from_a_model_and_resumes_exactly(paired_and_real, tmp_path):
    data, real = paired_and_real
    pre = tmp_path / "pre"  # 1 paired pre-training epoch, then 1 real-radiograph epoch
    code, stdout, stderr = train(data, pre, "epochs_constant=2", "epochs_decay=0", "shape_pretrain_epochs=1",
                                 "shape_real_epochs=1", "shape_paired_epochs=1", radiographs=real)  # fmt: skip
    assert code == 0 and "trained 4 steps" in stdout, stderr
    assert logged(pre, "loss/g_recon") == [1, 2] and logged(pre, "loss/g_shape") == [3, 4]
    meta = json.loads((pre / "model" / "model.json").read_text())
    assert meta["training_data"]["shape_induction"]["cases"] == 3

    fine = ["epochs_constant=1", "epochs_decay=0", f"init_from={pre / 'model'}", "shape_weight=10"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    code, stdout, stderr = train(data, straight, *fine, radiographs=real)
    assert code == 0 and "trained 2 steps" in stdout, stderr
    assert logged(straight, "loss/g_shape") == [1, 2] and not logged(straight, "loss/g_recon")
    code, stdout, _ = train(data, resumed, *fine, "max_steps=1", radiographs=real)
    assert code == 0 and "stopped at step 1" in stdout
    code, stdout, stderr = train(data, resumed, *fine, radiographs=real)
    assert code == 0 and "trained 2 steps" in stdout and "resuming" in stderr, stderr

    start, a, b = (load_file(run / "model" / "model.safetensors") for run in (pre, straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(start[k], a[k]) for k in a if a[k].is_floating_point())  # the real epoch trained G
    assert (straight / "scalars.csv").read_text() == (resumed / "scalars.csv").read_text()


def test_init_from_must_match_the_runs_architecture(paired_and_real, tmp_path):
    data, real = paired_and_real
    wider = build_generator("bp_unet", {"grid_size": 64, "views": 1, **TINY_NET, "channels": [4, 16]})
    save_generator(wider, tmp_path / "wider")
    code, _, stderr = train(data, tmp_path / "run", f"init_from={tmp_path / 'wider'}", radiographs=real)
    assert code == 2 and stderr.count("\n") == 1 and "channels=[4, 16]" in stderr and "channels=[4, 8]" in stderr, (
        stderr
    )
    assert not (tmp_path / "run").exists()


def test_joint_mode_adds_the_paired_losses_to_every_step_and_resumes_exactly(paired_and_real, tmp_path):
    data, real = paired_and_real
    # 1 paired pre-training epoch, then 1 joint epoch over the 3 radiographs: 2 steps, each with a paired batch too
    two = ["epochs_constant=2", "epochs_decay=0", "shape_pretrain_epochs=1", "shape_mode=joint", "shape_weight=10"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    code, stdout, stderr = train(data, straight, *two, radiographs=real)
    assert code == 0 and "trained 4 steps" in stdout and "warning" not in stderr, stderr
    assert logged(straight, "loss/g_recon") == [1, 2, 3, 4] and logged(straight, "loss/g_shape") == [3, 4]
    code, stdout, _ = train(data, resumed, *two, "max_steps=3", radiographs=real)
    assert code == 0 and "stopped at step 3" in stdout
    code, stdout, stderr = train(data, resumed, *two, radiographs=real)
    assert code == 0 and "trained 4 steps" in stdout and "resuming" in stderr, stderr
    a, b = (load_file(run / "model" / "model.safetensors") for run in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (straight / "scalars.csv").read_text() == (resumed / "scalars.csv").read_text()
    meta = json.loads((straight / "model" / "model.json").read_text())
    assert meta["training_data"]["shape_induction"]["schedule"]["mode"] == "joint"


def test_alternate_run_that_never_reaches_a_paired_epoch_warns_once(paired_and_real, tmp_path):
    data, real = paired_and_real
    code, stdout, stderr = train(data, tmp_path / "run", "epochs_constant=1", "epochs_decay=0", "max_steps=1",
                                 f"init_from={_tiny_model(tmp_path)}", radiographs=real)  # fmt: skip
    assert code == 0, stderr
    warnings = [line for line in stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "epochs 1-1 of 1" in warnings[0] and "shape_mode=joint" in warnings[0], stderr


def _tiny_model(tmp_path: Path) -> Path:
    """An untrained tiny generator with the TINY settings' network, saved as a model folder."""
    save_generator(build_generator("bp_unet", {"grid_size": 64, "views": 1, **TINY_NET}), tmp_path / "tiny")
    return tmp_path / "tiny"
