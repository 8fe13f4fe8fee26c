"""Classifier tasks, label files, data sets, training, evaluation and synthesize-ct at a tiny size.

Twelve synthetic 64³ cases of the real CT (32-pixel DRRs) are built once with ``x2ct build-dataset``;
a label file with its own split column gives 4 train / 4 val / 4 test cases for the ``tb`` task, two
of each class in every split. Networks are MONAI DenseNets with one-layer blocks and Zunair CNNs at
width 1/8 on 32-pixel / 32³ inputs, so every training run takes a few seconds on one thread.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import shutil
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Tuple

import h5py
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from edited_defaults import import_with_edited_defaults
from x2ct.classify.augment import rotate_batch
from x2ct.classify.checkpoint import load_classifier
from x2ct.classify.config import DEFAULT_CONFIG, ClassifierConfig, load_config
from x2ct.classify.data import ClassifierDataset
from x2ct.classify.evaluate import projected_mask
from x2ct.classify.tasks import TASKS, read_labels
from x2ct.cli import main
from x2ct.data.loader import xray_to_unit
from x2ct.drr import DRRGeometry
from x2ct.errors import InputError
from x2ct.evaluate.classifier_stats import wilson_interval, youden_threshold
from x2ct.geometry import DIRECTION_LPS, CanonicalGrid
from x2ct.intensity import unit_to_hu
from x2ct.models import GeneratorConfig, X2CTSingleView, save_generator
from x2ct.views import PA

pytestmark = pytest.mark.usefixtures("one_thread")

SPLITS = {
    "train": {"synth-s5-00000": 0, "synth-s5-00001": 0, "synth-s5-00002": 1, "synth-s5-00003": 1},
    "val": {"synth-s5-00004": 0, "synth-s5-00006": 0, "synth-s5-00005": 1, "synth-s5-00007": 1},
    "test": {"synth-s5-00008": 0, "synth-s5-00010": 0, "synth-s5-00009": 1, "synth-s5-00011": 1},
}
"""The label file of the tests: ``tb_present`` as built (checked), in a split of its own (not the manifest's)."""

DENSENET = '{"init_features": 4, "growth_rate": 4, "block_config": [1, 1], "dropout": 0.5}'
TINY = ["size_xray=32", "size_ct=32", "epochs=2", "batch_size=2", "progress=false", "tensorboard=off", "seed=4"]
"""4 training cases, batch 2: 2 steps per epoch, 4 steps in all."""


def run_cli(*args: object) -> Tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.startswith("x2ct")]
    assert len(lines) == 1 and lines[0].startswith("x2ct: error: ") and "Traceback" not in stderr, stderr
    return lines[0]


def evaluate_args(model: Path, data: Path, labels: Path, out: Path, *extra: object) -> List[object]:
    """``x2ct evaluate-classifier`` of ``model`` on ``data`` with ``labels`` into ``out`` (on the CPU)."""
    command = ["evaluate-classifier", "--model", model, "--data", data, "--labels", labels, "--device", "cpu"]
    return [*command, "-o", out, *extra]


def train_args(
    data: Path, labels: Path, out: Path, *extra: str, arch: str = "densenet2d", options: str = DENSENET
) -> List[str]:
    args = [
        "train-classifier",
        "--data",
        data,
        "--task",
        "tb",
        "--arch",
        arch,
        "--labels",
        labels,
        "-o",
        out,
        "--device",
        "cpu",
        "--threads",
        "1",
        "--set",
        f"arch_options={options}",
    ]
    for item in TINY:
        args += ["--set", item]
    return [*map(str, args), *extra]


def write_labels(path: Path, rows: List[Dict[str, object]], columns: List[str]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_csv(path: Path) -> List[Dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("classify_data") / "data"
    code, _, stderr = run_cli(
        "build-dataset",
        "--synthetic-from",
        "sample",
        "--cases",
        "12",
        "--seed",
        "5",
        "--size",
        "64",
        "--drr-size",
        "32",
        out,
    )
    assert code == 0, stderr
    return out


@pytest.fixture(scope="module")
def labels(data) -> Path:
    built = {r["case_id"]: int(r["tb_present"]) for r in read_csv(data / "manifest.csv")}
    assert all(built[c] == y for cases in SPLITS.values() for c, y in cases.items())
    rows = [{"case_id": c, "split": s, "tb_present": y} for s, cases in SPLITS.items() for c, y in cases.items()]
    return write_labels(data.parent / "labels.csv", rows, ["case_id", "split", "tb_present"])


@pytest.fixture(scope="module")
def straight_run(data, labels, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    code, stdout, stderr = run_cli(*train_args(data, labels, out))
    assert code == 0, stderr
    assert "trained 4 steps" in stdout
    return out


@pytest.fixture(scope="module")
def generator(tmp_path_factory) -> Path:
    """A tiny untrained +S generator (64³ grid) saved in the x2ct format."""
    torch.manual_seed(0)
    net = X2CTSingleView(GeneratorConfig(grid_size=64, width=0.0625))
    folder = tmp_path_factory.mktemp("generator") / "gen"
    save_generator(net, folder)
    return folder


@pytest.fixture(scope="module")
def synthetic(data, generator, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "ct"
    code, stdout, stderr = run_cli("synthesize-ct", "--model", generator, "--data", data, "-o", out, "--device", "cpu")
    assert code == 0, stderr
    assert "synthesized 12 CTs" in stdout
    return out


# ------------------------------------------------------------------------------------------- config


def test_default_file_is_the_only_source_of_classifier_defaults(tmp_path):
    """Edit classifier_default.json in a copy of the package: ClassifierConfig() follows; a bad file fails."""
    document = json.loads(DEFAULT_CONFIG.read_text())
    assert {k: v for k, v in document.items() if not k.startswith("_")} == ClassifierConfig().to_dict()
    assert load_config() == ClassifierConfig()
    results = import_with_edited_defaults(
        tmp_path,
        "x2ct.classify.config",
        "ClassifierConfig",
        DEFAULT_CONFIG,
        {
            "changed": lambda d: dict(d, lr=0.001, arch="cnn3d", arch_options={"width": 0.5}, augment=False),
            "missing": lambda d: {k: v for k, v in d.items() if k != "rotation_degrees"},
            "unknown": lambda d: dict(d, learning_rate=0.1),
            "mistyped": lambda d: dict(d, rotation_degrees=10),
        },
    )
    changed = results["changed"]
    assert changed["file"].startswith(changed["root"])
    expected = dict(ClassifierConfig().to_dict(), lr=0.001, arch="cnn3d", arch_options={"width": 0.5}, augment=False)
    assert changed["defaults"] == changed["loaded"] == expected
    assert "the default of setting 'rotation_degrees' is missing" in results["missing"]["error"]
    assert "unknown setting(s) learning_rate" in results["unknown"]["error"]
    assert "setting rotation_degrees=10 is not a float" in results["mistyped"]["error"]


def test_classifier_config_file_then_overrides(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"_comment": "ignored", "arch": "cnn3d", "lr": 1e-3, "labels": "/l.csv"}))
    c = load_config(path, ["lr=5e-4", 'arch_options={"width": 0.25}', "labels=none", "augment=off"])
    expected = dict(arch="cnn3d", lr=5e-4, arch_options={"width": 0.25}, labels=None, augment=False)
    assert c == replace(ClassifierConfig(), **expected)
    for bad, message in [
        (["arch_options=[1]"], "is not a valid dict"),
        (["epochs=1.5"], "is not a valid int"),
        (["batch_size=1"], "at least 2"),
        (["beta2=1"], "must be in \\[0, 1\\)"),
        (["tensorboard=maybe"], "use auto"),
    ]:
        with pytest.raises(InputError, match=message):
            load_config(path, bad)


# ------------------------------------------------------------------------------------ tasks and labels


def test_tasks_follow_the_contract():
    assert {name: task.columns for name, task in TASKS.items()} == {
        "tb": ("tb_present",),
        "tb_type": ("tb_granuloma", "tb_cavitation", "tb_calcification"),
        "tb_activity": ("tb_active",),
        "pe": ("pe_present",),
    }
    assert TASKS["tb_type"].relevant_kinds("tb_cavitation") == ("cavity",)
    assert "calcified_granuloma" in TASKS["tb_type"].relevant_kinds("tb_calcification")
    assert TASKS["pe"].relevant_kinds("pe_present") == ("pulmonary_embolism",)
    assert "solid_nodule" not in TASKS["tb"].relevant_kinds("tb_present")


def test_tb_type_keeps_only_tb_positive_cases(data):
    manifest = read_csv(data / "manifest.csv")
    positive = [r["case_id"] for r in manifest if r["tb_present"] == "1"]
    assert 0 < len(positive) < len(manifest)  # the benchmark has both kinds of case
    ds = ClassifierDataset(data, None, "tb_type", "all", ["pa"], size_xray=32)
    assert ds.case_ids == positive
    assert ds.labels.excluded["not applicable"] == len(manifest) - len(positive)
    expected = [[int(r[c]) for c in TASKS["tb_type"].columns] for r in manifest if r["tb_present"] == "1"]
    assert ds.targets.tolist() == expected
    item = ds[0]
    assert item.images["pa"].shape == (1, 32, 32) and item.target.shape == (3,) and "ct" not in item.images
    activity = ClassifierDataset(data, None, "tb_activity", "all", ["pa"], size_xray=32)
    assert activity.case_ids == positive  # tb_active is blank (n/a) on TB-negative cases


def test_real_ct_items_are_the_loader_transform(data, labels):
    ds = ClassifierDataset(data, labels, "tb", "test", ["pa", "lateral", "ct"], size_xray=32, size_ct=32)
    assert ds.case_ids == list(SPLITS["test"]) and ds.targets[:, 0].tolist() == list(SPLITS["test"].values())
    item = ds[1]
    with h5py.File(data / ds.case_ids[1] / "ct_xray_data.h5", "r") as f:
        lateral = f["xray2"][...]
    np.testing.assert_array_equal(item.images["lateral"][0].numpy(), xray_to_unit(lateral, 32))
    ct = item.images["ct"]
    assert ct.shape == (1, 32, 32, 32) and 0 <= float(ct.min()) and float(ct.max()) <= 1


BAD_LABELS = [
    ("missing column", ["case_id", "split"], lambda r: r, "missing label column(s) tb_present"),
    ("no case_id", ["id", "tb_present"], lambda r: {"id": r["case_id"], "tb_present": 0}, "no case_id column"),
    ("unknown label", ["case_id", "split", "tb_present"], lambda r: {**r, "tb_present": "yes"}, "label 'yes'"),
    (
        "empty split",
        ["case_id", "split", "tb_present"],
        lambda r: {**r, "split": "train"},
        "no usable case in the 'val'",
    ),
    ("unknown split", ["case_id", "split", "tb_present"], lambda r: {**r, "split": "dev"}, "'dev' is not one of"),
]


@pytest.mark.parametrize("name,columns,change,message", BAD_LABELS, ids=[b[0] for b in BAD_LABELS])
def test_bad_label_files_are_one_line_exit_2(data, tmp_path, name, columns, change, message):
    rows = [{"case_id": c, "split": s, "tb_present": y} for s, cases in SPLITS.items() for c, y in cases.items()]
    rows = [{k: v for k, v in change(r).items() if k in columns} for r in rows]
    bad = write_labels(tmp_path / "bad.csv", rows, columns)
    code, _, stderr = run_cli(*train_args(data, bad, tmp_path / "run"))
    line = one_error_line(stderr)
    assert code == 2 and str(bad) in line and message in line, line
    assert not (tmp_path / "run").exists()


def test_duplicate_and_foreign_case_ids_name_the_line(data, tmp_path):
    rows = [{"case_id": c, "split": s, "tb_present": y} for s, cases in SPLITS.items() for c, y in cases.items()]
    duplicate = write_labels(tmp_path / "dup.csv", [*rows, rows[3]], ["case_id", "split", "tb_present"])
    foreign = write_labels(
        tmp_path / "foreign.csv", [*rows, {**rows[0], "case_id": "nobody"}], ["case_id", "split", "tb_present"]
    )
    for path, message in (
        (duplicate, "line 14: case_id 'synth-s5-00003' appears twice (first on line 5)"),
        (foreign, "line 14: case 'nobody' is not in the data set"),
    ):
        code, _, stderr = run_cli(*train_args(data, path, tmp_path / "run"))
        assert code == 2 and message in one_error_line(stderr)
        with pytest.raises(InputError, match=message.split(":")[1].strip().split(" ")[0]):
            read_labels(path, TASKS["tb"], data)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------- synthesize-ct


def test_synthesize_ct_writes_the_canonical_grid_and_resumes(data, generator, synthetic):
    rows = read_csv(synthetic / "manifest.csv")
    assert [r["case_id"] for r in rows] == [r["case_id"] for r in read_csv(data / "manifest.csv")]
    image = sitk.ReadImage(str(synthetic / "synth-s5-00003" / "synthetic_ct.nrrd"))
    grid = CanonicalGrid(size=64)
    assert image.GetSize() == (64, 64, 64) and image.GetPixelID() == sitk.sitkInt16
    np.testing.assert_allclose(image.GetSpacing(), (grid.spacing_mm,) * 3)
    np.testing.assert_allclose(image.GetOrigin(), grid.origin_lps, atol=1e-6)
    np.testing.assert_allclose(image.GetDirection(), DIRECTION_LPS)
    # the values are the generator's output on the case's stored PA through the training transform
    from x2ct.models import load_generator

    net = load_generator(generator, "cpu")
    with h5py.File(data / "synth-s5-00003" / "ct_xray_data.h5", "r") as f:
        pa = torch.from_numpy(xray_to_unit(f["xray1"][...], 64))[None, None]
    with torch.inference_mode():
        expected = np.rint(unit_to_hu(net(pa)[0, 0].numpy()))
    np.testing.assert_allclose(sitk.GetArrayFromImage(image), expected, atol=1)

    written = {p: p.stat().st_mtime_ns for p in synthetic.glob("*/synthetic_ct.nrrd")}
    (synthetic / "synth-s5-00007" / "synthetic_ct.nrrd").unlink()
    code, stdout, stderr = run_cli(
        "synthesize-ct", "--model", generator, "--data", data, "-o", synthetic, "--device", "cpu"
    )
    assert code == 0 and "synthesized 1 CTs" in stdout and "skipped 11" in stdout, stderr
    assert all(p.stat().st_mtime_ns == t for p, t in written.items() if "00007" not in str(p))
    assert (synthetic / "synth-s5-00007" / "synthetic_ct.nrrd").is_file()


def test_synthesize_ct_refuses_other_weights(data, generator, synthetic, tmp_path):
    other = tmp_path / "other"
    torch.manual_seed(1)
    save_generator(X2CTSingleView(GeneratorConfig(grid_size=64, width=0.0625)), other)
    code, _, stderr = run_cli("synthesize-ct", "--model", other, "--data", data, "-o", synthetic, "--device", "cpu")
    assert code == 2 and "holds synthetic CTs of model 'gen'" in one_error_line(stderr)


def test_synthetic_ct_source_is_checked(data, labels, synthetic, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(synthetic, source)
    ds = ClassifierDataset(data, labels, "tb", "val", ["ct"], ct_source=source, size_ct=32)
    assert ds[0].images["ct"].shape == (1, 32, 32, 32)
    off_grid = sitk.ReadImage(str(source / "synth-s5-00005" / "synthetic_ct.nrrd"))
    off_grid.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(off_grid, str(source / "synth-s5-00005" / "synthetic_ct.nrrd"))
    with pytest.raises(InputError, match="synth-s5-00005/synthetic_ct.nrrd: not on the canonical grid"):
        ds[ds.case_ids.index("synth-s5-00005")]
    (source / "synth-s5-00006" / "synthetic_ct.nrrd").unlink()
    with pytest.raises(InputError, match="synth-s5-00006/synthetic_ct.nrrd: missing"):
        ClassifierDataset(data, labels, "tb", "val", ["ct"], ct_source=source, size_ct=32)


# ------------------------------------------------------------------------------------------ training


def test_resume_after_interruption_gives_the_same_model(data, labels, straight_run, tmp_path):
    run = tmp_path / "run"
    code, stdout, stderr = run_cli(*train_args(data, labels, run, "--set", "max_steps=3"))  # "killed" mid-epoch 2
    assert code == 0 and "stopped at step 3" in stdout, stderr
    assert not (run / "model").exists()
    code, _, stderr = run_cli(*train_args(data, labels, run))
    assert code == 2 and "add --resume" in one_error_line(stderr)
    torch.manual_seed(12345)  # the resumed run must restore its own RNG state
    code, stdout, stderr = run_cli(*train_args(data, labels, run, "--resume"))
    assert code == 0 and "resuming" in stderr and "trained 4 steps" in stdout, stderr
    a = load_file(straight_run / "model" / "model.safetensors")
    b = load_file(run / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    meta_a = json.loads((straight_run / "model" / "model.json").read_text())
    meta_b = json.loads((run / "model" / "model.json").read_text())
    assert meta_a["task"]["thresholds"] == meta_b["task"]["thresholds"]
    assert meta_a["weights"]["sha256"] == meta_b["weights"]["sha256"]
    assert (run / "scalars.csv").read_text() == (straight_run / "scalars.csv").read_text()
    assert json.loads((run / "history.json").read_text()) == json.loads((straight_run / "history.json").read_text())


def test_changed_settings_do_not_resume(data, labels, straight_run):
    code, _, stderr = run_cli(*train_args(data, labels, straight_run, "--resume", "--set", "lr=0.01"))
    assert code == 2 and "holds a run with lr=0.0001, not 0.01" in one_error_line(stderr)


def test_model_metadata(straight_run):
    meta = json.loads((straight_run / "model" / "model.json").read_text())
    assert (meta["schema"], meta["kind"], meta["task"]["name"]) == ("x2ct-model", "classifier", "tb")
    assert meta["task"]["outputs"] == ["tb_present"] and set(meta["task"]["thresholds"]) == {"tb_present"}
    pa = meta["network_data_format"]["inputs"]["pa"]
    assert list(meta["network_data_format"]["inputs"]) == ["pa"] and pa["spatial_shape"] == [32, 32]
    assert meta["network_data_format"]["outputs"]["logits"]["channel_def"] == {"0": "tb_present"}
    config = meta["network"]["config"]
    assert meta["network"]["architecture"] == config["arch"] == "densenet2d" and config["block_config"] == [1, 1]
    assert meta["training"]["pos_weight"] == {"tb_present": 1.0}  # 2 positives, 2 negatives
    assert meta["training_data"]["cases"] == {"train": 4, "val": 4}
    history = json.loads((straight_run / "history.json").read_text())
    best = max(history["epochs"], key=lambda e: (e["val_mean_auc"], -e["val_loss"]))
    assert history["selected_epoch"] == best["epoch"] == meta["metrics"]["selected_epoch"]


def test_model_files_are_verified_and_carry_one_header_key(straight_run, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(straight_run / "model", model)
    with safe_open(str(model / "model.safetensors"), framework="pt") as fh:
        header = fh.metadata()
    assert list(header) == ["x2ct"] and json.loads(header["x2ct"])["kind"] == "classifier"
    net, meta = load_classifier(model)
    assert meta.path == str(model) and meta.weights_file == "model.safetensors" and not net.training
    data = bytearray((model / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (model / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(InputError, match="sha256 mismatch"):
        load_classifier(model)


def test_rotation_keeps_pa_and_coronal_ct_aligned():
    ct = torch.zeros(1, 1, 32, 32, 32)
    ct[0, 0, 6:10, 12:18, 20:25] = 1.0  # an off-centre block
    pa = ct.amax(dim=3)  # its parallel projection along A->P: a (D, W) image
    angles = torch.tensor([0.35])
    rotated = rotate_batch({"pa": pa, "ct": ct}, angles)
    np.testing.assert_allclose(rotated["ct"].amax(dim=3).numpy(), rotated["pa"].numpy(), atol=1e-5)
    assert not torch.allclose(rotated["pa"], pa)


# ---------------------------------------------------------------------------------------- evaluation


def test_evaluate_schema_and_frozen_thresholds(data, labels, straight_run, tmp_path):
    val_eval, test_eval = tmp_path / "val", tmp_path / "test"
    for split, out in (("val", val_eval), ("test", test_eval)):
        code, stdout, stderr = run_cli(*evaluate_args(straight_run / "model", data, labels, out, "--split", split))
        assert code == 0 and "tb_present: AUC" in stdout, stderr
    assert sorted(p.name for p in test_eval.iterdir()) == ["metrics.json", "predictions.csv", "roc.png"]
    assert (test_eval / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = read_csv(test_eval / "predictions.csv")
    assert list(rows[0]) == ["case_id", "tb_present_probability", "tb_present_label", "tb_present_call"]
    assert [r["case_id"] for r in rows] == list(SPLITS["test"])
    document = json.loads((test_eval / "metrics.json").read_text())
    assert {"task", "outputs", "model", "data", "comparison", "cam_hit_rate"} <= set(document)
    record = document["outputs"]["tb_present"]
    assert set(record) >= {"auc", "threshold", "metrics", "counts"}
    assert {"value", "ci_low", "ci_high"} <= set(record["auc"])
    assert set(record["metrics"]) == {"accuracy", "sensitivity", "specificity", "ppv", "npv"}
    assert all({"value", "ci_low", "ci_high", "successes", "n"} <= set(m) for m in record["metrics"].values())
    assert record["counts"]["n_pos"] == 2 and record["counts"]["n_neg"] == 2
    # the threshold is Youden's J on the validation predictions, frozen in the model, used as is on test
    frozen = json.loads((straight_run / "model" / "model.json").read_text())["task"]["thresholds"]["tb_present"]
    val_rows = read_csv(val_eval / "predictions.csv")
    y_val = np.array([int(r["tb_present_label"]) for r in val_rows])
    p_val = np.array([float(r["tb_present_probability"]) for r in val_rows])
    assert youden_threshold(y_val, p_val) == pytest.approx(frozen, abs=1e-6)
    assert record["threshold"] == frozen
    assert all(int(r["tb_present_call"]) == int(float(r["tb_present_probability"]) >= frozen) for r in rows)


def test_evaluate_uses_the_threshold_in_the_model_not_one_from_test(data, labels, straight_run, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(straight_run / "model", model)
    meta = json.loads((model / "model.json").read_text())
    meta["task"]["thresholds"]["tb_present"] = 0.123
    (model / "model.json").write_text(json.dumps(meta))
    code, _, stderr = run_cli(*evaluate_args(model, data, labels, tmp_path / "eval"))
    assert code == 0, stderr
    record = json.loads((tmp_path / "eval" / "metrics.json").read_text())["outputs"]["tb_present"]
    assert record["threshold"] == 0.123
    calls = [int(r["tb_present_call"]) for r in read_csv(tmp_path / "eval" / "predictions.csv")]
    probabilities = [float(r["tb_present_probability"]) for r in read_csv(tmp_path / "eval" / "predictions.csv")]
    assert calls == [int(p >= 0.123) for p in probabilities]


def test_compare_needs_the_same_cases(data, labels, straight_run, tmp_path):
    model = straight_run / "model"
    assert run_cli(*evaluate_args(model, data, labels, tmp_path / "a"))[0] == 0
    assert run_cli(*evaluate_args(model, data, labels, tmp_path / "val", "--split", "val"))[0] == 0
    code, stdout, stderr = run_cli(*evaluate_args(model, data, labels, tmp_path / "b", "--compare", tmp_path / "a"))
    assert code == 0, stderr
    comparison = json.loads((tmp_path / "b" / "metrics.json").read_text())["comparison"]["outputs"]["tb_present"]
    assert comparison["difference"] == 0.0 and comparison["p_value"] == 1.0  # the same model on the same cases
    code, _, stderr = run_cli(*evaluate_args(model, data, labels, tmp_path / "c", "--compare", tmp_path / "val"))
    line = one_error_line(stderr)
    assert code == 2 and "holds other cases than this evaluation (4 only here, 4 only there" in line
    assert not (tmp_path / "c").exists()


def test_missing_eval_extra_is_one_line(data, labels, straight_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    code, _, stderr = run_cli(*evaluate_args(straight_run / "model", data, labels, tmp_path / "eval"))
    assert code == 2 and "needs the eval extra" in one_error_line(stderr) and "matplotlib" in stderr
    assert not (tmp_path / "eval").exists()


def test_projected_lesion_mask_follows_the_cone_beam(tmp_path):
    geometry, size, n, spacing = DRRGeometry(), 64, 64, 5.0
    mask = np.zeros((n, n, n), dtype=bool)
    # a 3-voxel block near the patient's left, low, and posterior (near the PA source: magnified most)
    d, h, w = 44, 50, 48
    mask[d - 1 : d + 2, h - 1 : h + 2, w - 1 : w + 2] = True
    pixels = projected_mask(mask, (spacing,) * 3, PA, size, geometry)
    rows, cols = np.nonzero(pixels)
    centre = lambda i: (i - (n - 1) / 2.0) * spacing  # noqa: E731 - mm from the isocentre
    magnification = geometry.sid_mm / (geometry.sad_mm - centre(h))  # source posterior (+H)
    pitch = geometry.detector_spacing_mm(size)
    expected = [
        centre(d) * magnification / pitch + (size - 1) / 2.0,
        centre(w) * magnification / pitch + (size - 1) / 2,
    ]
    assert abs(rows.mean() - expected[0]) < 0.6 and abs(cols.mean() - expected[1]) < 0.6
    plain = ((np.arange(n) - (n - 1) / 2.0) * spacing / geometry.isocenter_spacing_mm(size)) + (size - 1) / 2.0
    assert abs(cols.mean() - plain[w]) > 1.5  # a plain sum along H would put it elsewhere


def reproduction_script(monkeypatch):
    """docs/reproduce_seed_table.py as a module."""
    spec = importlib.util.spec_from_file_location(
        "reproduce_seed_table", Path(__file__).parents[1] / "docs/reproduce_seed_table.py"
    )
    reproduce = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, reproduce)  # its dataclass looks itself up there
    spec.loader.exec_module(reproduce)
    return reproduce


def test_reproduction_record_names_no_machine_folder(tmp_path, monkeypatch):
    reproduce = reproduction_script(monkeypatch)
    elsewhere = tmp_path / "big_disk" / "data"
    elsewhere.mkdir(parents=True)
    work = tmp_path / "work"
    work.mkdir()
    (work / "data").symlink_to(elsewhere)
    text = json.dumps({"model": str(work / "runs/a/model"), "data": str(elsewhere), "labels": f"{elsewhere}/m.csv"})
    assert json.loads(reproduce.portable(text, work)) == {
        "model": "WORK/runs/a/model",
        "data": "WORK/data",
        "labels": "WORK/data/m.csv",
    }


def test_cam_hit_rate_on_ct_and_pa(data, labels, synthetic, tmp_path, monkeypatch):
    run = tmp_path / "run"
    code, _, stderr = run_cli(
        *train_args(
            data,
            labels,
            run,
            "--ct-source",
            synthetic,
            "--set",
            "epochs=1",
            arch="late-fusion",
            options='{"width": 0.125, "init_features": 4, "growth_rate": 4, "block_config": [1, 1]}',
        )
    )
    assert code == 0, stderr
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["training_data"]["ct_source"]["kind"] == "synthetic"
    assert meta["training_data"]["ct_source"]["generator"]["model"] == "gen"
    code, stdout, stderr = run_cli(*evaluate_args(run, data, labels, tmp_path / "eval", "--cam-hit-rate"))
    assert code == 0 and "CAM hit rate (ct map, 2 positive cases): grad_cam" in stdout, stderr
    document = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert document["data"]["ct_source"] == str(synthetic)  # the model's own CT source by default
    cam = document["cam_hit_rate"]["outputs"]["tb_present"]
    assert cam["relevant_lesion_kinds"] == list(TASKS["tb"].relevant_kinds("tb_present")) and cam["positive_cases"] == 2
    assert cam["headline"]["input"] == "ct" and set(cam["per_input"]) == {"pa", "ct"}
    methods = ("grad_cam", "guided_grad_cam")
    assert document["cam_hit_rate"]["methods"] == list(methods)
    for key, shape in (("ct", 3), ("pa", 2)):
        for method in methods:
            tally = cam["per_input"][key][method]
            assert tally["n"] == cam["cases_with_masks"] == 2 and tally["hits"] <= tally["hits_dilated"] <= 2
            assert tally["hit_rate"] == tally["hits"] / 2
            records = [case[key][method] for case in cam["cases"]]
            assert all(len(r["peak"]) == shape for r in records)
            # a hit is a peak inside at least one relevant kind's mask, and the per-kind counts add up
            assert all(
                r["hit"] == bool(r["inside"]) and set(r["inside"]) <= set(c["kinds"])
                for r, c in zip(records, cam["cases"])
            )
            for kind, count in tally["by_kind"].items():
                assert count["n"] == sum(kind in c["kinds"] for c in cam["cases"])
                assert count["hits"] == sum(kind in r["inside"] for r in records)
    assert cam["headline"]["guided_grad_cam"]["hit_rate"] == cam["per_input"]["ct"]["guided_grad_cam"]["hit_rate"]
    # the reproduction script's hit-rate table reads this schema
    reproduce = reproduction_script(monkeypatch)
    lines = reproduce.localisation_table({"test": document})
    ct = cam["per_input"]["ct"]
    assert f"**{ct['guided_grad_cam']['hits']}/2 = " in lines[5] and f"**{ct['grad_cam']['hits']}/2 = " in lines[3]
    twice = reproduce.localisation_table({"test": document, "val": document})  # a pooled column adds them up
    hits = 2 * ct["guided_grad_cam"]["hits"]
    low, high = wilson_interval(hits, 4)
    assert twice[5].endswith(f"| **{hits}/4 = {hits / 4:.0%}** [{low:.0%}, {high:.0%}] |")
    kinds = set(ct["grad_cam"]["by_kind"])
    assert {line.split(" | ")[0][2:] for line in lines if line.startswith("| ") and " | " in line[2:]} >= kinds
