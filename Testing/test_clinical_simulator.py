"""The clinical-radiograph simulator (x2ct.data.clinical), its DICOM output and ``x2ct simulate-radiographs``, and the
generator setting ``clinical_augment``, at tiny sizes: each effect does what its docstring says (edge MTF, noise
variance against dose, collimation mask, heel monotone), seeding, the MONOCHROME1 round trip through the reader, the
command on a hand-built two-case data set, and the augmentation drawing from torch's checkpointed RNG."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Tuple

import h5py
import numpy as np
import pytest
import torch
from pydicom import dcmread
from pydicom.uid import ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation

from radiograph_factory import chest_phantom, write_picture
from x2ct.cli import main
from x2ct.data.clinical import (
    QUANTA_PER_MM2_PER_UGY,
    augment_inputs,
    collimation_mask,
    detector_mtf,
    gaussian_sigma_mm,
    heel_fluence,
    quantum_noise,
    sample_params,
    simulate,
    simulate_batch,
)
from x2ct.data.clinical_dicom import SourceView, write_simulated_dicom
from x2ct.data.loader import ct_to_unit
from x2ct.drr_geometry import DRRGeometry
from x2ct.errors import InputError
from x2ct.io import read_radiograph
from x2ct.train.config import load_config
from x2ct.views import PA


def run_cli(*args: object) -> Tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def params(seed: int = 0, **fixed):
    return sample_params(np.random.default_rng(seed), **fixed)


# ------------------------------------------------------------------------------------------- effects


def test_without_effects_the_output_is_the_drr():
    drr = chest_phantom(40, 36)
    out = simulate(drr, params().with_effects(()), 0.5, np.random.default_rng(0))
    assert np.allclose(out.image, (drr - drr.min()) / (drr.max() - drr.min()), atol=1e-6)
    assert out.collimation.all()


def test_mtf50_measured_on_an_edge_matches_the_parameter():
    pixel_mm, mtf50 = 0.05, 1.2  # sigma = 0.156 mm = 3.1 px
    edge = np.tile(np.where(np.arange(256) < 128, 0.2, 1.0), (4, 1))
    esf = detector_mtf(edge, mtf50, pixel_mm)[2]
    lsf = np.diff(esf)
    mtf = np.abs(np.fft.rfft(lsf)) / abs(lsf.sum())
    freq = np.fft.rfftfreq(lsf.size, d=pixel_mm)
    k = int(np.argmax(mtf < 0.5))
    measured = np.interp(0.5, [mtf[k], mtf[k - 1]], [freq[k], freq[k - 1]])
    assert measured == pytest.approx(mtf50, rel=0.05)
    levels = (esf - 0.2) / 0.8  # the 10-90 % width of a Gaussian edge is 2.563 sigma
    width_px = np.interp(0.9, levels, np.arange(256)) - np.interp(0.1, levels, np.arange(256))
    assert width_px * pixel_mm == pytest.approx(2.563 * gaussian_sigma_mm(mtf50), rel=0.05)


def test_noise_variance_halves_when_the_dose_doubles():
    flat = np.full((96, 96), 0.4)
    relative = []
    for dose in (1.0, 2.0):
        noisy = quantum_noise(flat, 0.4, dose, 0.5, 0.1, np.random.default_rng(1))
        relative.append(noisy.var() / noisy.mean() ** 2)
        assert noisy.mean() == pytest.approx(0.4, rel=0.01)
    quanta = 1.0 * QUANTA_PER_MM2_PER_UGY * 0.1**2 * 0.5
    assert relative[0] == pytest.approx(1 / quanta, rel=0.1)
    assert relative[1] / relative[0] == pytest.approx(0.5, rel=0.1)
    # through the simulator: noise alone makes a flat DRR's image vary; without it the image is flat
    p = params().with_effects(("noise",))
    assert simulate(np.zeros((32, 32)), p, 0.1, np.random.default_rng(2)).image.std() > 0.05
    assert not simulate(np.zeros((32, 32)), p.with_effects(()), 0.1, np.random.default_rng(2)).image.any()


def test_collimation_mask_and_border_value():
    margins = (0.1, 0.05, 0.2, 0.0)
    mask = collimation_mask((40, 50), margins)
    assert mask.sum() == pytest.approx((1 - 0.15) * (1 - 0.2) * 40 * 50, abs=40 + 50)
    assert mask[4:38, 10:50].all() and not mask[:4].any() and not mask[:, :10].any()
    for white in (True, False):
        p = dataclasses.replace(params(), collimation=margins, border_white=white).with_effects(("collimation",))
        out = simulate(chest_phantom(40, 50), p, 0.5, np.random.default_rng(0))
        assert np.array_equal(out.collimation, mask)
        assert np.all(out.image[~mask] == (1.0 if white else 0.0))
        assert 0.0 < out.image[mask].mean() < 1.0


def test_heel_effect_is_monotone_along_its_axis():
    fluence = heel_fluence((20, 30), 0.2, "top")
    assert np.all(np.diff(fluence[:, 0]) > 0) and np.all(fluence == fluence[:, :1])
    assert fluence[0, 0] == pytest.approx(0.8) and fluence[-1, 0] == pytest.approx(1.0)
    assert np.all(np.diff(heel_fluence((20, 30), 0.15, "right")[0]) < 0)
    p = dataclasses.replace(params(), heel_fraction=0.2, anode_side="bottom").with_effects(("heel",))
    image = simulate(np.full((32, 32), 0.5), p, 1.0, np.random.default_rng(0)).image
    assert np.all(np.diff(image.mean(axis=1)) > 0)  # less fluence towards the anode: brighter (denser-looking)


def test_scatter_grid_and_processing_change_the_image():
    drr = chest_phantom(48, 48)
    base = dataclasses.replace(params(), spr=1.0)
    plain = simulate(drr, base.with_effects(()), 1.0, np.random.default_rng(0)).image
    no_grid = simulate(
        drr, dataclasses.replace(base, grid=False).with_effects(("scatter",)), 1.0, np.random.default_rng(0)
    ).image
    grid = simulate(
        drr, dataclasses.replace(base, grid=True).with_effects(("scatter",)), 1.0, np.random.default_rng(0)
    ).image
    contrast = [np.percentile(im, 95) - np.percentile(im, 5) for im in (plain, no_grid, grid)]
    assert np.std(no_grid - plain) > 0.01
    assert np.abs(grid - plain).mean() < np.abs(no_grid - plain).mean()  # the grid removes most scatter
    assert len(set(np.round(contrast, 6))) == 3
    usm = simulate(drr, base.with_effects(("usm",)), 1.0, np.random.default_rng(0)).image
    assert not np.allclose(usm, plain, atol=1e-3)


def test_seeded_determinism_and_every_effect_at_once():
    drr = chest_phantom(48, 40)
    a = simulate(drr, params(5), 0.8, np.random.default_rng(9))
    b = simulate(drr, params(5), 0.8, np.random.default_rng(9))
    c = simulate(drr, params(6), 0.8, np.random.default_rng(9))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.stored, b.stored)
    assert not np.array_equal(a.image, c.image)
    assert a.image.dtype == np.float32 and 0 <= a.image.min() and a.image.max() <= 1
    assert a.stored.dtype == np.uint16 and a.stored.max() < 2**a.params.bits_stored
    assert params(5, modality="DX").modality == "DX" and params(5, grid=True).grid
    assert params(5, dose_ugy=3.0).rotation_deg == params(5).rotation_deg  # fixing one choice leaves the others
    assert type(a.params).from_dict(json.loads(json.dumps(a.params.to_dict()))) == a.params


def test_simulate_batch_is_seeded_by_the_generator():
    images = torch.from_numpy(np.stack([chest_phantom(32, 32)] * 2)[:, None].astype(np.float32))
    a = simulate_batch(images, torch.Generator().manual_seed(3))
    b = simulate_batch(images, torch.Generator().manual_seed(3))
    assert a.shape == images.shape and a.dtype == torch.float32 and torch.equal(a, b)
    assert not torch.equal(a[0], a[1])  # each image its own parameters
    assert a.amin(dim=(1, 2, 3)).eq(0).all() and a.amax(dim=(1, 2, 3)).eq(1).all()


# ------------------------------------------------------------------------------------------- DICOM


@pytest.mark.parametrize("modality,photometric", [("CR", "MONOCHROME1"), ("DX", "MONOCHROME2")])
def test_dicom_round_trip_through_the_reader(tmp_path, modality, photometric):
    drr = chest_phantom(40, 36)
    p = params(2, modality=modality, photometric=photometric)
    sim = simulate(drr, p, 2.0, np.random.default_rng(0))
    path = write_simulated_dicom(tmp_path / "pa.dcm", sim, PA, SourceView(drr, 2.0, DRRGeometry()), "case/1", 0)
    ds = dcmread(path)
    sop = ComputedRadiographyImageStorage if modality == "CR" else DigitalXRayImageStorageForPresentation
    assert ds.SOPClassUID == sop and ds.Modality == modality and ds.PhotometricInterpretation == photometric
    assert ds.BitsStored == p.bits_stored and ds.BodyPartExamined == "CHEST" and ds.ViewPosition == "PA"
    assert "case" not in str(ds.PatientID) and str(ds.PatientName).startswith("Anonymous")
    assert np.array_equal(ds.pixel_array, sim.stored)
    radiograph = read_radiograph(path)
    assert radiograph.view == PA and radiograph.metadata["inverted"] == (photometric == "MONOCHROME1")
    assert np.abs(radiograph.pixels - sim.image).max() <= 1.0 / (2**p.bits_stored - 1) + 1e-6  # inverted once
    assert radiograph.spacing_mm == pytest.approx((2.0 / DRRGeometry().magnification,) * 2, rel=1e-5)
    assert not radiograph.warnings


# ------------------------------------------------------------------------------------------- command line


def tiny_dataset(root: Path, size: int = 64, cases: int = 2) -> Path:
    """A built-data-set folder by hand: manifest.csv and case files with a CT, PA/lateral 8-bit DRRs and the DRR
    geometry attributes (what the loader and the trainer read)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(cases):
        case = f"case{i}"
        phantom = chest_phantom(size, size)
        (root / case).mkdir(parents=True)
        with h5py.File(root / case / "ct_xray_data.h5", "w") as f:
            f["ct"] = rng.integers(0, 2500, (size,) * 3).astype(np.uint16)
            f["xray1"] = np.rint(phantom * 255).astype(np.uint8)
            f["xray2"] = np.rint(phantom[:, ::-1] * 255).astype(np.uint8)
            f.attrs.update(sad_mm=541.0, sid_mm=949.0, detector_mm=500.0, drr_size=size, size=size)
        rows.append(f"{case},{'test' if i == 0 else 'train'},{case}/ct_xray_data.h5")
    (root / "manifest.csv").write_text("case_id,split,path\n" + "\n".join(rows) + "\n")
    return root


def test_simulate_radiographs_on_a_data_set(tmp_path):
    data = tiny_dataset(tmp_path / "data")
    out = tmp_path / "sim"
    args = ["simulate-radiographs", "--data", data, "--split", "all", "-o", out, "--seed", "4",
            "--photometric", "MONOCHROME1", "--modality", "CR", "--grid", "no"]  # fmt: skip
    code, stdout, stderr = run_cli(*args)
    assert code == 0, stderr
    assert "simulated 2 cases" in stdout
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert [r["case_id"] for r in rows] == ["case0", "case1"]
    assert rows[0]["pa"] == "case0/pa.dcm" and rows[0]["lateral"] == "case0/lateral.dcm"
    recorded = json.loads((out / "case0" / "params.json").read_text())
    assert recorded["pa"]["modality"] == "CR" and recorded["lateral"]["grid"] is False
    pa = read_radiograph(out / rows[0]["pa"])
    assert pa.metadata["photometric"] == "MONOCHROME1" and pa.pixels.shape == (64, 64)
    assert read_radiograph(out / rows[0]["lateral"]).view == "LATERAL"
    first = (out / "case1" / "pa.dcm").read_bytes()
    code, stdout, _ = run_cli(*args)  # a rerun skips every case
    assert code == 0 and "skipped 2" in stdout and (out / "case1" / "pa.dcm").read_bytes() == first
    (out / "case1" / "params.json").unlink()  # an unfinished case is redone, identically (seeded)
    assert run_cli(*args)[0] == 0 and (out / "case1" / "pa.dcm").read_bytes() == first
    code, _, stderr = run_cli(*args[:-1], "yes")  # other options into the same folder
    assert code == 2 and stderr.count("\n") == 1 and "other options" in stderr
    code, _, stderr = run_cli("simulate-radiographs", "--data", tmp_path / "nothing", "-o", tmp_path / "o2")
    assert code == 2 and stderr.startswith("x2ct: error: ") and "Traceback" not in stderr
    code, _, stderr = run_cli("simulate-radiographs", "--data", data, "-o", tmp_path / "o3", "--effects", "blur")
    assert code == 2 and "unknown effect(s) blur" in stderr and not (tmp_path / "o3").exists()


def test_simulate_radiographs_on_files(tmp_path):
    drr = tmp_path / "drr"
    write_picture(drr / "pa.png", rows=40, cols=40)
    write_picture(drr / "lateral.png", rows=40, cols=40)
    out = tmp_path / "sim"
    code, _, stderr = run_cli(
        "simulate-radiographs", drr / "pa.png", drr / "lateral.png", "-o", out, "--effects", "none"
    )
    assert code == 0, stderr
    rows = {r["case_id"]: r for r in csv.DictReader((out / "manifest.csv").open())}
    assert rows["pa"]["pa"] == "pa/pa.dcm" and rows["lateral"]["lateral"] == "lateral/lateral.dcm"
    pa = read_radiograph(out / "pa" / "pa.dcm")
    drr_pixels = read_radiograph(drr / "pa.png").pixels
    assert np.abs(pa.pixels - (drr_pixels - drr_pixels.min()) / np.ptp(drr_pixels)).max() < 1e-3  # no effect: the DRR
    code, _, stderr = run_cli("simulate-radiographs", drr / "pa.png", "--data", drr, "-o", tmp_path / "x")
    assert code == 2 and "not both" in stderr
    code, _, stderr = run_cli("simulate-radiographs", drr / "missing.png", "-o", tmp_path / "y")
    assert code == 2 and "missing.png: not found" in stderr and not (tmp_path / "y").exists()


# ------------------------------------------------------------------------------------------- augmentation


def test_clinical_augment_draws_from_the_global_torch_rng():
    views = {PA: torch.from_numpy(chest_phantom(32, 32)[None, None].astype(np.float32)).repeat(3, 1, 1, 1)}
    before = views[PA].clone()
    torch.manual_seed(11)
    state = torch.get_rng_state()
    torch.randint(0, 2**62, (1,))
    after_one_draw = torch.get_rng_state()
    torch.set_rng_state(state)
    a = augment_inputs(views, 1.0)
    assert torch.equal(torch.get_rng_state(), after_one_draw)  # exactly one draw from the global RNG
    torch.set_rng_state(state)
    b = augment_inputs(views, 1.0)
    assert torch.equal(torch.get_rng_state(), after_one_draw)
    assert torch.equal(a[PA], b[PA]) and not torch.equal(a[PA], before)
    assert torch.equal(views[PA], before)  # the inputs (maybe the loader's cache) are untouched
    torch.set_rng_state(state)
    assert augment_inputs(views, 0.0)[PA] is views[PA] and torch.equal(torch.get_rng_state(), state)  # no draw
    half = augment_inputs({PA: views[PA].repeat(8, 1, 1, 1)}, 0.5)[PA]
    kept = [torch.equal(half[i], before[0]) for i in range(half.shape[0])]
    assert 0 < sum(kept) < len(kept)


def test_clinical_augment_setting_is_validated():
    assert load_config(overrides=["clinical_augment=0.3"]).clinical_augment == 0.3
    with pytest.raises(InputError, match="clinical_augment"):
        load_config(overrides=["clinical_augment=1.5"])


def test_training_augments_the_inputs_and_keeps_the_targets(tmp_path, monkeypatch):
    """One training step with clinical_augment=1 (the template generator: no weights, so the step is cheap): the
    generator sees simulated radiographs, the losses keep the clean DRRs (re-projection target) and the CT."""
    import x2ct.train.generator as trainer_module

    seen = {}

    def spy_augment(radiographs, probability, pixel_mm):
        out = augment_inputs(radiographs, probability, pixel_mm)
        seen.update(clean={k: v.clone() for k, v in radiographs.items()}, augmented=out, pixel_mm=pixel_mm)
        return out

    def spy_loss(d_fake, fake, ct, weights, radiographs, geometry, lesions):
        seen.update(loss_radiographs=radiographs, ct=ct)
        return original_loss(d_fake, fake, ct, weights, radiographs, geometry, lesions)

    original_loss = trainer_module.generator_loss
    monkeypatch.setattr(trainer_module, "augment_inputs", spy_augment)
    monkeypatch.setattr(trainer_module, "generator_loss", spy_loss)
    data = tiny_dataset(tmp_path / "data", cases=2)
    settings = ["architecture=template", "gan_weight=0", "grid_size=64", "batch_size=2", "epochs_constant=1",
                "epochs_decay=0", "threads=1", "device=cpu", "val_split=", "progress=false", "sample_every_epochs=0",
                "keep_every_epochs=0", "train_split=all", "clinical_augment=1", "max_steps=1"]  # fmt: skip
    code, _, stderr = run_cli("train-generator", "--data", data, "-o", tmp_path / "run",
                              *[a for s in settings for a in ("--set", s)])  # fmt: skip
    assert code == 0, stderr
    assert seen["pixel_mm"] == pytest.approx(500.0 / 64)
    for view, clean in seen["clean"].items():
        assert torch.equal(seen["loss_radiographs"][view], clean)
        assert not torch.equal(seen["augmented"][view], clean)
    expected = []
    for case in ("case0", "case1"):
        with h5py.File(data / case / "ct_xray_data.h5", "r") as f:
            expected.append(torch.from_numpy(ct_to_unit(f["ct"][...], 64)))
    for ct in seen["ct"][:, 0]:
        assert any(torch.equal(ct, target) for target in expected)  # the CT target as stored, not simulated
