"""x2ct build-dataset end to end on the real chest CT at 64³: layout, values, table removal, manifest and
split, resume, atomicity, worker pool, bad input, and the synthetic labelled benchmark (2 cases)."""

from __future__ import annotations

import csv
import hashlib
import io
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Dict, List, Tuple

import h5py
import numpy as np
import pytest
import SimpleITK as sitk

from x2ct.cli import main
from x2ct.data import builder
from x2ct.data.body import body_mask_without_table
from x2ct.data.builder import (
    LABEL_COLUMNS,
    MANIFEST_COLUMNS,
    SPLITS,
    check_ratios,
    find_cases,
    split_for_index,
    split_for_patient,
)
from x2ct.data.synthetic import LESION_KINDS, TARGET_NAMES
from x2ct.errors import InputError
from x2ct.geometry import grid_of, labels_to_canonical, to_canonical
from x2ct.io import read_ct

TINY = ("--size", "64", "--drr-size", "64")
SYNTHETIC = ("--synthetic-from", "sample", "--cases", "2", "--seed", "7", *TINY)


def run_cli(*args: object) -> Tuple[int, str, str]:
    """``x2ct build-dataset ARGS`` in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["build-dataset", *map(str, args)])
    return code, out.getvalue(), err.getvalue()


def arrays(h5_path: Path) -> Dict[str, np.ndarray]:
    """Every dataset of a case file by its full name."""
    found: Dict[str, np.ndarray] = {}
    with h5py.File(h5_path, "r") as f:
        f.visititems(lambda name, obj: found.__setitem__(name, obj[...]) if isinstance(obj, h5py.Dataset) else None)
    return found


def digests(out: Path) -> Dict[str, str]:
    """sha256 of every file under ``out`` by relative path."""
    return {
        p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()
    }


def csv_rows(path: Path) -> List[Dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def read_manifest(out: Path) -> List[Dict[str, str]]:
    return csv_rows(out / "manifest.csv")


def lines_naming(text: str, name: str) -> List[str]:
    return [line for line in text.splitlines() if name in line]


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, sample_ct_path):
    """A folder with the real CT, a corrupt CT and a stray text file, built once at 64³."""
    root = tmp_path_factory.mktemp("build")
    inputs = root / "cts"
    inputs.mkdir()
    shutil.copy(sample_ct_path, inputs / "patA.nii.gz")
    (inputs / "broken.nii.gz").write_bytes(b"\x1f\x8b" + bytes(range(256)) * 40)
    (inputs / "notes.txt").write_text("not a CT\n")
    out = root / "out"
    code, stdout, stderr = run_cli(inputs, out, *TINY)
    return {"inputs": inputs, "out": out, "code": code, "stdout": stdout, "stderr": stderr, "files": digests(out)}


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "out"
    code, stdout, stderr = run_cli(*SYNTHETIC, out)
    assert code == 0, stderr
    return out


def test_corrupt_ct_is_reported_while_the_rest_build(folder_run):
    assert folder_run["code"] == 0
    assert "1 built, 0 skipped, 1 failed (of 2 cases)" in folder_run["stdout"]
    reported = lines_naming(folder_run["stderr"], "broken.nii.gz")
    assert len(reported) == 1 and reported[0].startswith("x2ct: error: ") and "Traceback" not in folder_run["stderr"]
    assert len(lines_naming(folder_run["stdout"], "broken.nii.gz")) == 1  # listed once in the summary
    assert sorted(p.name for p in folder_run["out"].iterdir()) == ["failures.csv", "manifest.csv", "patA"]
    with open(folder_run["out"] / "failures.csv", newline="") as fh:
        failures = list(csv.DictReader(fh))
    assert [(r["case_id"], r["source"]) for r in failures] == [("broken", str(folder_run["inputs"] / "broken.nii.gz"))]
    assert failures[0]["problem"].startswith(f"{folder_run['inputs'] / 'broken.nii.gz'}: ")


def test_case_file_layout_and_values(folder_run, sample_ct_path):
    h5_path = folder_run["out"] / "patA" / "ct_xray_data.h5"
    data = arrays(h5_path)
    assert sorted(data) == ["ct", "ori_size", "spacing", "xray1", "xray2"]
    ct = data["ct"]
    assert ct.shape == (64, 64, 64) and ct.dtype == np.uint16
    assert ct.min() == 0 and ct.max() <= 2500
    hu = ct.astype(np.float32) - 1024
    assert (hu > 300).mean() > 0.002 and ((hu > -950) & (hu < -600)).mean() > 0.02  # bone and lung present
    for name in ("xray1", "xray2"):
        assert data[name].shape == (64, 64) and data[name].dtype == np.uint8
        assert data[name].min() == 0 and data[name].max() == 255  # per-image min-max (official)
    assert not np.array_equal(data["xray1"], data["xray2"])
    np.testing.assert_array_equal(data["spacing"], [5.0, 5.0, 5.0])
    np.testing.assert_array_equal(data["ori_size"], read_ct(sample_ct_path).GetSize()[::-1])
    with h5py.File(h5_path, "r") as f:
        attrs = dict(f.attrs)
    assert attrs["source_sha256"] == hashlib.sha256(sample_ct_path.read_bytes()).hexdigest()
    assert attrs["source"] == str((folder_run["inputs"] / "patA.nii.gz").resolve())
    assert (attrs["sad_mm"], attrs["sid_mm"], attrs["detector_mm"]) == (541.0, 949.0, 500.0)
    assert attrs["size"] == 64 and attrs["drr_size"] == 64 and attrs["x2ct_version"]
    assert "anterior->posterior" in attrs["axes"] and "HU + 1024" in attrs["ct_convention"]


def test_table_is_removed_on_the_real_ct(folder_run, sample_ct_path):
    """The bundled CT shows the table behind the patient's back; after masking those rows are pure air."""
    built = arrays(folder_run["out"] / "patA" / "ct_xray_data.h5")["ct"].astype(np.float32) - 1024
    with h5py.File(folder_run["out"] / "patA" / "ct_xray_data.h5", "r") as f:
        center = tuple(f.attrs["grid_center_lps_mm"])
    raw = sitk.GetArrayFromImage(to_canonical(read_ct(sample_ct_path), 64, center_lps=center))
    back = int(np.nonzero((built > -500).any(axis=(0, 2)))[0].max())  # posterior-most body row (H)
    behind = slice(back + 2, None)
    assert (raw[:, behind] > -900).sum() > 100  # the table is there before masking ...
    assert built[:, behind].max() < -1000  # ... and gone after (air; the body edge blurs by a few HU)
    assert (built[:, back - 6 : back + 1] > -500).mean() > 0.05  # while the back itself is kept


def test_body_mask_keeps_organs_and_drops_table(sample_ct_path, sample_labels_path):
    ct = read_ct(sample_ct_path)
    canonical = to_canonical(ct, 128)
    labels = sitk.GetArrayFromImage(labels_to_canonical(sitk.ReadImage(str(sample_labels_path)), canonical))
    hu = sitk.GetArrayFromImage(canonical)
    mask = sitk.GetArrayFromImage(body_mask_without_table(canonical)).astype(bool)
    assert mask[labels > 0].mean() > 0.995  # lungs, heart, spine, ... are inside
    back = int(np.nonzero(mask.any(axis=(0, 2)))[0].max())
    table = hu[:, back + 1 :] > -500
    assert table.sum() > 200 and not mask[:, back + 1 :].any()
    assert grid_of(canonical).size == 128


def test_manifest_columns_and_patient_split(folder_run):
    rows = read_manifest(folder_run["out"])
    assert list(rows[0]) == [*MANIFEST_COLUMNS, *LABEL_COLUMNS]
    assert [r["case_id"] for r in rows] == ["patA"]
    row = rows[0]
    assert row["patient_id"] == "patA" and row["split"] == split_for_patient("patA")
    assert row["path"] == "patA/ct_xray_data.h5" and row["size"] == "64"
    assert all(row[c] == "" for c in LABEL_COLUMNS)


def test_list_file_input_skips_built_and_reports_missing(folder_run):
    listing = folder_run["inputs"].parent / "cases.csv"
    listing.write_text("path,patient_id\ncts/patA.nii.gz,P1\ncts/missing.nii.gz,P2\n")
    code, stdout, stderr = run_cli(listing, folder_run["out"], *TINY)
    assert code == 0 and "0 built, 1 skipped, 1 failed" in stdout
    assert len(lines_naming(stderr, "missing.nii.gz")) == 1
    files = digests(folder_run["out"])
    files.pop("failures.csv")  # this run's failures: the missing CT, not the corrupt one
    assert [r["case_id"] for r in csv_rows(folder_run["out"] / "failures.csv")] == ["missing"]
    assert files == {k: v for k, v in folder_run["files"].items() if k != "failures.csv"}


def test_resume_skips_then_rebuilds_a_deleted_case_identically(folder_run):
    out = folder_run["out"]
    code, stdout, _ = run_cli(folder_run["inputs"], out, *TINY)
    assert code == 0 and "0 built, 1 skipped, 1 failed" in stdout
    assert digests(out) == folder_run["files"]  # nothing rewritten
    shutil.rmtree(out / "patA")
    code, stdout, _ = run_cli(folder_run["inputs"], out, *TINY)
    assert code == 0 and "1 built, 0 skipped, 1 failed" in stdout
    assert digests(out) == folder_run["files"]  # rebuilt byte for byte
    assert not [p for p in out.rglob("*") if ".partial" in p.name]


def test_failed_write_leaves_only_the_failure_report_and_exit_2_when_no_case_built(folder_run, tmp_path, monkeypatch):
    def fail(hu):
        raise RuntimeError("disk full")

    monkeypatch.setattr(builder, "stored_ct", fail)
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(folder_run["inputs"], out, *TINY)
    assert code == 2 and stdout == ""
    assert len(lines_naming(stderr, "disk full")) == 1
    assert stderr.strip().splitlines()[-1] == f"x2ct: error: {out}: all 2 cases failed; see {out / 'failures.csv'}"
    assert [p.name for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")] == ["failures.csv"]
    assert len(csv_rows(out / "failures.csv")) == 2


def test_missing_input_is_one_line_exit_2(tmp_path):
    code, stdout, stderr = run_cli(tmp_path / "nowhere", tmp_path / "out", *TINY)
    assert code == 2 and stdout == ""
    assert stderr.strip().splitlines() == [f"x2ct: error: {tmp_path / 'nowhere'}: no such file or folder"]
    assert not (tmp_path / "out").exists()


def test_synthetic_benchmark_layout_labels_and_manifest(synthetic_run):
    rows = read_manifest(synthetic_run)
    assert [r["case_id"] for r in rows] == ["synth-s7-00000", "synth-s7-00001"]
    assert tuple(TARGET_NAMES) == LABEL_COLUMNS
    for index, row in enumerate(rows):
        h5_path = synthetic_run / row["path"]
        data = arrays(h5_path)
        assert data["ct"].shape == data["labels"].shape == (64, 64, 64)
        assert sorted(k for k in data if k.startswith("lesions/")) == sorted(f"lesions/{k}" for k in LESION_KINDS)
        assert {np.asarray(data["labels"]).dtype} <= {np.dtype(np.uint8), np.dtype(np.uint16)}
        assert np.isin(np.unique(data["labels"]), np.arange(1, 200)).sum() > 10  # organs carried over
        with h5py.File(h5_path, "r") as f:
            attrs = dict(f.attrs)
        kinds = [k for k in attrs["lesion_kinds"].split(";") if k]
        assert row["lesion_kinds"] == attrs["lesion_kinds"]
        for kind in LESION_KINDS:
            assert data[f"lesions/{kind}"].any() == (kind in kinds)
        for name in LABEL_COLUMNS:
            value = int(attrs[f"target_{name}"])
            assert row[name] == ("" if value == -1 else str(value))
        assert row["split"] == split_for_index(index) and row["synthetic_index"] == str(index)
        assert attrs["patient_id"] == row["patient_id"] == "synthetic:chest_ct"


def test_workers_give_identical_files_and_same_seed_same_arrays(synthetic_run, tmp_path):
    out = tmp_path / "out"
    code, _, stderr = run_cli(*SYNTHETIC, "--workers", "2", out)
    assert code == 0, stderr
    assert digests(out) == digests(synthetic_run)


def test_split_rules():
    assert [split_for_index(i) for i in range(10)].count("train") == 8
    assert {split_for_index(i) for i in range(10)} == set(SPLITS)
    assert split_for_patient("LIDC-IDRI-0001") == split_for_patient("LIDC-IDRI-0001")
    shares = [split_for_patient(f"P{i}") for i in range(3000)]
    assert abs(shares.count("train") / 3000 - 0.8) < 0.03 and abs(shares.count("test") / 3000 - 0.1) < 0.02
    assert split_for_patient("P1", (0.0, 0.0, 1.0)) == "test"
    with pytest.raises(InputError):
        check_ratios((0.8, 0.3, 0.1))


def test_find_cases_names_and_skips(tmp_path):
    for name in ("a.nii", "a.nrrd", "b.mha", ".hidden.nii", "readme.md"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "series1").mkdir()
    cases = find_cases(tmp_path)
    assert [(c.case_id, c.path.name) for c in cases] == [
        ("a.nii", "a.nii"),
        ("a.nrrd", "a.nrrd"),
        ("b", "b.mha"),
        ("series1", "series1"),
    ]
    with pytest.raises(InputError, match="holds no CT files"):
        find_cases(tmp_path / "series1")


def test_dicom_series_case_uses_patient_id(tmp_path):
    series = tmp_path / "cts" / "study1"
    series.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(3):
        image = sitk.Image(8, 8, sitk.sitkInt16)
        for tag, value in (
            ("0010|0020", "PAT-007"),
            ("0008|0060", "CT"),
            ("0020|000e", "1.2.826.0.1.7"),
            ("0020|0013", str(k)),
            ("0020|0032", f"0\\0\\{2.5 * k}"),
            ("0020|0037", "1\\0\\0\\0\\1\\0"),
        ):
            image.SetMetaData(tag, value)
        writer.SetFileName(str(series / f"s{k}.dcm"))
        writer.Execute(image)
    (case,) = find_cases(tmp_path / "cts")
    assert case.case_id == "study1" and case.path == series
    assert builder._dicom_patient_id(series) == "PAT-007"
    assert builder.source_sha256(series) == builder.source_sha256(series)
