"""x2ct train-generator / evaluate-generator at a tiny size: loader transform, losses, config parsing,
bit-identical resume after an interruption (the resume runs in a new process), one-line errors, and the
evaluation's protocol columns. Three synthetic 64³ cases of the real CT are built once for the module."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Dict, List, Tuple

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from edited_defaults import import_with_edited_defaults
from x2ct.cli import main
from x2ct.data.loader import CaseDataset, collate, ct_to_unit, generator_sizes, xray_to_unit
from x2ct.errors import InputError
from x2ct.evaluate.image_metrics import METRIC_NAMES, PROTOCOL_VERSION
from x2ct.losses import discriminator_loss, generator_loss, projection
from x2ct.train.config import DEFAULT_CONFIG, TrainConfig, load_config, parse_overrides
from x2ct.train.engine import tensorboard_writer

TINY = [
    "grid_size=64",
    "width=0.0625",
    "ndf=4",
    "batch_size=2",
    "epochs_constant=1",
    "epochs_decay=1",
    "threads=1",
    "device=cpu",
    "val_split=train",
    "keep_every_epochs=1",
    "progress=false",
    "seed=3",
]
"""3 training cases, batch 2 -> 2 steps per epoch (the second a partial batch), 4 steps in all."""


def run_cli(*args: object) -> Tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def train_args(data: Path, out: Path, *extra: str) -> List[str]:
    args = ["train-generator", "--data", str(data), "-o", str(out)]
    for item in [*TINY, *extra]:
        args += ["--set", item]
    return args


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("x2ct: error: ") and "Traceback" not in stderr, stderr
    return lines[0]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train_data") / "data"
    code, _, stderr = run_cli(
        "build-dataset", "--synthetic-from", "sample", "--cases", "3", "--seed", "7", "--size", "64", out
    )
    assert code == 0, stderr
    return out


@pytest.fixture(scope="module")
def straight_run(dataset, tmp_path_factory) -> Path:
    """The uninterrupted reference run (4 steps, in this process)."""
    out = tmp_path_factory.mktemp("straight") / "run"
    code, stdout, stderr = run_cli(*train_args(dataset, out))
    assert code == 0, stderr
    assert "trained 4 steps" in stdout
    return out


# ------------------------------------------------------------------------------------------- loader


def test_loader_transform_is_the_official_one(dataset):
    ds = CaseDataset(dataset, "train", generator_sizes(64, 2))
    assert len(ds) == 3 and ds.case_ids == sorted(ds.case_ids)
    item = ds[1]
    with h5py.File(ds.case_file(1), "r") as f:
        ct, pa, lateral = f["ct"][...], f["xray1"][...], f["xray2"][...]
    images = item.images
    assert images["ct"].shape == (1, 64, 64, 64) and images["pa"].shape == (1, 64, 64)
    assert images["ct"].dtype == torch.float32 and item.target is None
    np.testing.assert_array_equal(images["ct"][0].numpy(), np.round(ct / 2500.0, 6).astype(np.float32))
    np.testing.assert_array_equal(images["lateral"][0].numpy(), np.round(lateral / 255.0, 6).astype(np.float32))
    again = CaseDataset(dataset, "train", generator_sizes(64, 2), cache=False)[1]
    assert all(torch.equal(images[k], again.images[k]) for k in ("ct", "pa", "lateral"))
    # order-1 resize to another grid, then clip and scale
    up = ct_to_unit(ct, 128)
    assert up.shape == (128, 128, 128) and 0 <= up.min() and up.max() <= 1
    assert xray_to_unit(pa, 128).shape == (128, 128)
    assert "lateral" not in CaseDataset(dataset, "train", generator_sizes(64, 1))[0].images
    batch = collate([ds[0], ds[2]])
    assert batch.case_ids == [ds.case_ids[0], ds.case_ids[2]] and batch.target is None
    assert batch.images["ct"].shape == (2, 1, 64, 64, 64) and torch.equal(batch.images["pa"][1], ds[2].images["pa"])


def test_loader_errors_are_input_errors(dataset, tmp_path):
    with pytest.raises(InputError, match="no case in the 'test' split"):
        CaseDataset(dataset, "test", generator_sizes(64, 2))
    with pytest.raises(InputError, match="data folder not found"):
        CaseDataset(tmp_path / "nothing", "train", generator_sizes(64, 2))
    with pytest.raises(InputError, match="manifest.csv: not found"):
        CaseDataset(tmp_path, "train", generator_sizes(64, 2))


# ------------------------------------------------------------------------------------------- losses


def test_losses_are_the_official_combination():
    torch.manual_seed(0)
    fake, real = torch.rand(2, 1, 8, 8, 8), torch.rand(2, 1, 8, 8, 8)
    d_fake, d_real = torch.randn(2, 1, 3, 3, 3), torch.randn(2, 1, 3, 3, 3)
    g = generator_loss(d_fake, fake, real)
    proj = sum((fake.mean(dim=a) - real.mean(dim=a)).abs().mean() for a in (2, 3, 4)) / 3
    assert torch.allclose(g["g_proj"], proj) and torch.allclose(projection(fake, real), proj)
    expected = (
        0.1 * ((d_fake - 1) ** 2).mean()
        + 10 * ((fake - real) ** 2).mean()
        + (10 / 3) * sum((fake.mean(dim=a) - real.mean(dim=a)).abs().mean() for a in (2, 3, 4))
    )
    assert torch.allclose(g["g_total"], expected)
    d = discriminator_loss(d_real, d_fake)
    assert torch.allclose(d["d_total"], 0.1 * (((d_real - 1) ** 2).mean() + (d_fake**2).mean()))  # no 1/2


# ------------------------------------------------------------------------------------------- config


def test_default_file_is_the_official_config():
    assert load_config() == TrainConfig()
    document = json.loads(DEFAULT_CONFIG.read_text())
    assert {k: v for k, v in document.items() if not k.startswith("_")} == TrainConfig().to_dict()
    c = TrainConfig()
    assert (c.lr, c.beta1, c.beta2, c.gan_weight, c.recon_weight, c.projection_weight) == (2e-4, 0.5, 0.99, 0.1, 10, 10)
    assert [c.lr_factor(e) for e in (0, 49)] == [1.0, 1.0]
    assert c.lr_factor(50) == pytest.approx(1 - 1 / 51) and c.lr_factor(99) == pytest.approx(1 / 51)


def test_default_file_is_the_only_source_of_defaults(tmp_path):
    """Edit generator_default.json in a copy of the package: TrainConfig() follows; a bad file fails the import."""
    results = import_with_edited_defaults(
        tmp_path,
        "x2ct.train.config",
        "TrainConfig",
        DEFAULT_CONFIG,
        {
            "changed": lambda d: dict(d, lr=0.001, batch_size=2, tensorboard="off"),
            "missing": lambda d: {k: v for k, v in d.items() if k != "ndf"},
            "unknown": lambda d: dict(d, learning_rate=0.1),
            "mistyped": lambda d: dict(d, width=1),
        },
    )
    changed = results["changed"]
    assert changed["file"].startswith(changed["root"])
    expected = dict(TrainConfig().to_dict(), lr=0.001, batch_size=2, tensorboard="off")
    assert changed["defaults"] == changed["loaded"] == expected
    assert "the default of setting 'ndf' is missing" in results["missing"]["error"]
    assert "unknown setting(s) learning_rate" in results["unknown"]["error"]
    assert "setting width=1 is not a float" in results["mistyped"]["error"]


def test_config_file_then_overrides(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"_comment": "ignored", "views": 1, "lr": 1e-3, "width": 0.5, "data": "/d"}))
    c = load_config(path, ["lr=5e-4", "amp=false", "data=none", "epochs_decay=0"])
    assert (c.views, c.lr, c.width, c.amp, c.data, c.epochs_decay, c.grid_size) == (1, 5e-4, 0.5, False, None, 0, 128)
    assert parse_overrides(["batch_size = 8", "device=cuda:1"]) == {"batch_size": 8, "device": "cuda:1"}
    for bad, message in [
        (["nonsense=1"], "unknown setting 'nonsense'"),
        (["batch_size=two"], "is not a valid int"),
        (["lr"], "write key=value"),
        (["views=3"], "views=3"),
        (["grid_size=100"], "multiple of 32"),
    ]:
        with pytest.raises(InputError, match=message):
            load_config(path, bad)
    path.write_text("{not json")
    with pytest.raises(InputError, match="not a readable JSON config"):
        load_config(path)


# ------------------------------------------------------------------------------------------- resume


def test_resume_after_interruption_is_bit_identical(dataset, straight_run, tmp_path):
    run = tmp_path / "run"
    code, stdout, stderr = run_cli(*train_args(dataset, run, "max_steps=1"))  # "killed" after step 1 of 4
    assert code == 0 and "stopped at step 1" in stdout, stderr
    partial = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert (partial["global_step"], partial["epoch"], partial["step_in_epoch"]) == (1, 0, 1)
    assert not (run / "model").exists()
    # resume in a new process, with the global RNGs of this one deliberately elsewhere
    torch.manual_seed(12345)
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.run(
        [sys.executable, "-m", "x2ct.cli", *train_args(dataset, run)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "resuming" in proc.stderr and "trained 4 steps" in proc.stdout

    a = torch.load(straight_run / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    a, b = a["trainer"], b["trainer"]
    for part in ("G", "D"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    for part in ("opt_G", "opt_D"):
        sa, sb = a[part]["state"], b[part]["state"]
        assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i]), part
    ra = torch.load(straight_run / "checkpoints" / "last.pt", weights_only=True)["rng"]
    rb = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["rng"]
    assert len(ra) == len(rb) == 1 and torch.equal(ra[0]["torch"], rb[0]["torch"])
    assert (run / "scalars.csv").read_text() == (straight_run / "scalars.csv").read_text()  # every loss, every step
    meta_b = json.loads((run / "model" / "model.json").read_text())
    assert meta_b["weights"]["sha256"] == sha256(run / "model" / "model.safetensors")
    # the exported weights file is the same, byte for byte, and holds the final G
    exported = run / "model" / "model.safetensors"
    assert exported.read_bytes() == (straight_run / "model" / "model.safetensors").read_bytes()
    fb = load_file(exported)
    assert fb.keys() == b["G"].keys() and all(torch.equal(fb[k], b["G"][k]) for k in fb)
    assert (run / "checkpoints" / "epoch_0002.pt").is_file() and (run / "samples" / "epoch_0002.png").is_file()


def test_run_folder_and_model_metadata(straight_run):
    rows = list(csv.DictReader(open(straight_run / "scalars.csv")))
    tags = {r["tag"] for r in rows}
    assert {"loss/g_total", "loss/g_gan", "loss/g_recon", "loss/g_proj", "loss/d_total", "lr", "val/mae_hu"} <= tags
    lrs = {int(r["step"]): float(r["value"]) for r in rows if r["tag"] == "lr"}
    assert lrs == {1: 2e-4, 2: 2e-4, 3: 1e-4, 4: 1e-4}  # 1 constant + 1 decay epoch: factor 1 - 1/2
    meta = json.loads((straight_run / "model" / "model.json").read_text())
    assert meta["network"]["architecture"] == "x2ct_gan_biplanar" and meta["network"]["config"]["grid_size"] == 64
    pa = meta["network_data_format"]["inputs"]["pa"]
    assert pa["value_range"] == [0.0, 1.0] and pa["spatial_shape"] == [64, 64]
    assert pa["preprocessing"] == {
        "normalization": "per_image_minmax",
        "quantize_bits": 8,
        "drr_geometry": {"sad_mm": 541.0, "sid_mm": 949.0, "detector_mm": 500.0, "drr_size": 64},
    }
    assert meta["training_data"]["build"]["synthetic_seed"] == 7 and meta["training"]["steps"] == 4
    assert (meta["training"]["world_size"], meta["training"]["global_batch"]) == (1, 2)


def test_changed_settings_do_not_resume(dataset, straight_run):
    code, _, stderr = run_cli(*train_args(dataset, straight_run, "lr=0.001"))
    assert code == 2 and "holds a run with lr=0.0002, not 0.001" in one_error_line(stderr)


# -------------------------------------------------------------------------------------- tensorboard

ONE_STEP = ["batch_size=3", "epochs_decay=0"]
"""With TINY: one epoch of one step (all 3 cases), then validation, a montage and the export."""


def test_tensorboard_holds_the_scalars_and_the_montage(dataset, tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard package (x2ct[train] extra) is not installed")
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    code, _, stderr = run_cli(*train_args(dataset, out, *ONE_STEP, "tensorboard=on"))
    assert code == 0, stderr
    assert "not installed" not in stderr
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    with open(out / "scalars.csv", newline="") as fh:
        logged = {row["tag"]: float(row["value"]) for row in csv.DictReader(fh)}  # one step: one value per tag
    losses = {f"loss/{k}" for k in ("g_gan", "g_recon", "g_proj", "g_total", "d_real", "d_fake", "d_total")}
    assert losses | {"lr", "val/mae_hu", "val/mse"} == set(logged) == set(events.Tags()["scalars"])
    for tag, value in logged.items():
        (event,) = events.Scalars(tag)
        assert event.step == 1 and event.value == pytest.approx(value, rel=1e-6), tag
    assert events.Tags()["images"] == ["samples/pa_lateral__gt__prediction"]
    (image,) = events.Images("samples/pa_lateral__gt__prediction")
    decoded = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)))
    png = np.asarray(Image.open(out / "samples" / "epoch_0001.png"))
    assert image.step == 1 and (image.height, image.width) == png.shape == (3 * 64, 3 * 64)
    np.testing.assert_array_equal(decoded, np.repeat(png[..., None], 3, axis=2))  # grey montage stored as RGB


def test_missing_tensorboard_is_one_line_or_one_note(dataset, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    assert tensorboard_writer("off") is None and tensorboard_writer("auto") is None
    code, _, stderr = run_cli(*train_args(dataset, tmp_path / "on", "tensorboard=on"))
    line = one_error_line(stderr)
    assert code == 2 and "tensorboard=on but the tensorboard package is not installed" in line
    assert not (tmp_path / "on").exists()  # refused before anything was written
    out = tmp_path / "auto"
    code, _, stderr = run_cli(*train_args(dataset, out, *ONE_STEP))  # tensorboard=auto (the default)
    assert code == 0, stderr
    notes = [line for line in stderr.splitlines() if "not installed" in line]
    assert len(notes) == 1 and notes[0].startswith("tensorboard is not installed: scalars go to "), stderr
    assert (out / "scalars.csv").is_file() and (out / "samples" / "epoch_0001.png").is_file()
    assert not (out / "tensorboard").exists()


# ------------------------------------------------------------------------------------------- errors


def test_training_user_errors_are_one_line(dataset, tmp_path):
    cases = [
        (train_args(tmp_path / "missing", tmp_path / "r1"), "data folder not found"),
        (train_args(dataset, tmp_path / "r2", "train_split=test"), "no case in the 'test' split"),
        (train_args(dataset, tmp_path / "r3", "bogus=1"), "unknown setting 'bogus'"),
        (["train-generator", "--data", str(dataset)], "give the data folder"),
        (
            ["train-generator", "--config", str(tmp_path / "none.json"), "--data", str(dataset), "-o", str(tmp_path)],
            "config file not found",
        ),
    ]
    for args, message in cases:
        code, _, stderr = run_cli(*args)
        assert code == 2 and message in one_error_line(stderr), (args, stderr)
    assert not (tmp_path / "r2").exists()


def test_evaluate_user_errors_are_one_line(dataset, straight_run, tmp_path):
    for args, message in [
        (["--model", straight_run / "model", "--data", tmp_path / "missing"], "data folder not found"),
        (["--model", straight_run / "model", "--data", dataset, "--split", "test"], "no case in the 'test' split"),
        (["--model", tmp_path / "nope.safetensors", "--data", dataset, "--split", "train"], "no such file"),
    ]:
        code, _, stderr = run_cli("evaluate-generator", *args, "-o", tmp_path / "eval", "--device", "cpu")
        assert code == 2 and message in one_error_line(stderr), (args, stderr)
    assert not (tmp_path / "eval").exists()


# ------------------------------------------------------------------------------------------- evaluate


def test_evaluate_writes_the_protocol_columns(dataset, straight_run, tmp_path, one_thread):
    out = tmp_path / "eval"
    code, stdout, stderr = run_cli(
        "evaluate-generator",
        "--model",
        straight_run / "model",
        "--data",
        dataset,
        "--split",
        "train",
        "-o",
        out,
        "--device",
        "cpu",
    )
    assert code == 0, stderr
    assert "3 cases: MAE body" in stdout
    with open(out / "metrics_per_case.csv", newline="") as fh:
        rows: List[Dict[str, str]] = list(csv.DictReader(fh))
        header = list(rows[0])
    assert header == ["case_id", *METRIC_NAMES]
    assert [r["case_id"] for r in rows] == [f"synth-s7-0000{i}" for i in range(3)]
    assert all(0 < float(r["mae_hu_body"]) < 2500 for r in rows)
    summary = json.loads((out / "metrics_summary.json").read_text())
    assert summary["protocol"]["version"] == PROTOCOL_VERSION and summary["n_cases"] == 3
    assert set(summary["metrics"]) == set(METRIC_NAMES)
    assert summary["model"]["architecture"] == "x2ct_gan_biplanar" and summary["data"]["split"] == "train"
    recorded = json.loads((straight_run / "model" / "model.json").read_text())["weights"]["sha256"]
    assert summary["model"]["sha256"] == recorded
    # a training checkpoint (or its run folder) evaluates the same weights
    code, _, stderr = run_cli(
        "evaluate-generator",
        "--model",
        straight_run,
        "--data",
        dataset,
        "--split",
        "train",
        "-o",
        tmp_path / "eval2",
        "--device",
        "cpu",
    )
    assert code == 0, stderr
    assert (tmp_path / "eval2" / "metrics_per_case.csv").read_text() == (out / "metrics_per_case.csv").read_text()


@pytest.mark.parametrize("source, target", [(256, 768), (64, 128), (100, 128), (128, 64)])
def test_resize_keeps_the_edges(source: int, target: int):
    """Upsampling a constant image gives the constant everywhere, the last row and column included (scipy's zoom
    puts the last sample a rounding error outside the input for some factors; mode "nearest" keeps it there)."""
    from x2ct.data.loader import resize

    out = resize(np.full((source, source), 3.0), (target, target))
    assert out.shape == (target, target)
    np.testing.assert_allclose(out, 3.0)
