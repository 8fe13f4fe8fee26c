"""Paths and text files users get wrong: output locations, CSV / list / JSON files, batches where every case
fails, internal errors, and CTs with NaN or infinite voxels. Every user-caused problem is one line naming the
path, exit 2, nothing written; an unexpected exception is one ``internal error`` line, exit 1.

Runs the CLI in-process (``x2ct.cli.main``). Only the manifest test with a real prediction uses the tiny
generators of test_predict.py; the other batch tests make every case fail before a model is needed.
"""

from __future__ import annotations

import csv
import errno
import io
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Iterator, List, Tuple

import numpy as np
import pytest
import SimpleITK as sitk

import x2ct.cli
import x2ct.inference.batch
from test_predict import PA_PNG, save_tiny
from x2ct.cli import ISSUES_URL, main
from x2ct.data.builder import find_cases
from x2ct.data.layout import read_manifest as read_data_manifest
from x2ct.data.radiograph_manifest import read_radiograph_manifest as read_manifest
from x2ct.errors import InputError
from x2ct.io.ct import NonFiniteVoxelsWarning, read_ct
from x2ct.train.settings import read_settings
from x2ct.userfiles import check_output_file, check_output_folder, read_csv_table

REPO = Path(__file__).resolve().parents[1]


def run(args: List[object], capsys) -> Tuple[int, str, str]:
    """Run the CLI in this process; (exit status, stdout, stderr)."""
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def one_error(status: int, err: str, start: object) -> str:
    """The single ``x2ct: error:`` line of a status-2 run, which must begin with ``start`` (the path)."""
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"x2ct: error: {start}: "), lines[0]
    return lines[0]


def write_ct(path: Path, values: np.ndarray) -> Path:
    """A CT file (float32 HU, 10 mm voxels) of the (z, y, x) array ``values``."""
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.SetSpacing((10.0, 10.0, 10.0))
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def ct(tmp_path: Path) -> Path:
    values = np.full((20, 20, 20), -1000.0)
    values[5:15, 5:15, 5:15] = 40.0
    return write_ct(tmp_path / "ct.nrrd", values)


def _unlock(folder: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    folder.chmod(0o755)


@pytest.fixture
def lock() -> Iterator[Callable[[Path], Path]]:
    """Make a folder unwritable for this process (permission bits, or as root the immutable attribute of
    ``chattr +i``); undone after the test. Skips the test where neither works."""
    locked: List[Path] = []

    def make(folder: Path) -> Path:
        locked.append(folder)
        if os.geteuid() != 0:
            folder.chmod(0o555)
        elif shutil.which("chattr"):
            subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
        try:
            (folder / ".probe").touch()
        except OSError:
            return folder
        (folder / ".probe").unlink()
        pytest.skip("cannot make a folder unwritable here (running as root without a working 'chattr +i')")

    yield make
    for folder in locked:
        _unlock(folder)


@pytest.fixture
def locked(tmp_path: Path, lock) -> Path:
    """An existing empty folder this process cannot write in."""
    (tmp_path / "locked").mkdir()
    return lock(tmp_path / "locked")


def write_manifest(path: Path, rows: List[List[str]], encoding: str = "utf-8", newline: str = "\n") -> Path:
    with open(path, "w", newline="", encoding=encoding) as fh:
        csv.writer(fh, lineterminator=newline).writerows(rows)
    return path


# --------------------------------------------------------------------------------------------------
# Output locations


def output_commands(ct: Path, tmp_path: Path) -> dict:
    """Command lines whose output is OUT (a folder) or a file, by name, before OUT is filled in."""
    manifest = write_manifest(tmp_path / "m.csv", [["case_id", "pa"], ["c1", "a.png"]])
    return {
        "drr": ["drr", ct, "-o"],
        "build-dataset": ["build-dataset", "--size", "64", ct.parent],
        "predict": ["predict", "--pa", PA_PNG, "-o"],
        "predict --manifest": ["predict", "--manifest", manifest, "-o"],
        "demo": ["demo", "-o"],
        "train-generator": ["train-generator", "--data", tmp_path, "-o"],
        "evaluate-generator": ["evaluate-generator", "--model", "m", "--data", tmp_path, "-o"],
        "evaluate-classifier": ["evaluate-classifier", "--model", "m", "--data", tmp_path, "-o"],
    }


FOLDER_COMMANDS = ("drr", "build-dataset", "predict", "predict --manifest", "demo", "train-generator",
                   "evaluate-generator", "evaluate-classifier")  # fmt: skip


@pytest.mark.parametrize("command", FOLDER_COMMANDS)
def test_output_folder_that_is_a_file_or_lies_under_one_is_one_line(command, ct, tmp_path, capsys):
    afile = tmp_path / "notes.txt"
    afile.write_text("keep me\n")
    for out, problem in ((afile, "exists and is a file"), (afile / "out", f"{afile} is a file, not a folder")):
        status, _, err = run([*output_commands(ct, tmp_path)[command], out], capsys)
        assert problem in one_error(status, err, out)
    assert afile.read_text() == "keep me\n"


def test_output_file_that_is_a_folder_or_lies_under_a_file_is_one_line(ct, tmp_path, capsys):
    folder = tmp_path / "out.nrrd"
    folder.mkdir()
    status, _, err = run(["convert", ct, folder], capsys)
    assert "is a folder" in one_error(status, err, folder)
    preview = tmp_path / "preview.png"
    preview.mkdir()
    status, _, err = run(["convert", ct, tmp_path / "c.nrrd", "--canonical", "--size", "64", "--preview", preview],
                         capsys)  # fmt: skip
    assert "is a folder" in one_error(status, err, preview)
    (tmp_path / "notes.txt").write_text("x")
    for args in (["convert", ct, tmp_path / "notes.txt" / "c.nrrd"],
                 ["convert-checkpoint", ct, tmp_path / "notes.txt" / "g.safetensors"]):  # fmt: skip
        status, _, err = run(args, capsys)
        one_error(status, err, args[-1])
    assert not (tmp_path / "c.nrrd").exists()


def test_unwritable_output_folder_is_named(locked, ct, tmp_path, capsys):
    status, _, err = run(["drr", ct, "-o", locked], capsys)
    assert "no permission to write" in one_error(status, err, locked)
    status, _, err = run(["drr", ct, "-o", locked / "sub" / "out"], capsys)
    assert f"no permission to write in the folder {locked}" in one_error(status, err, locked / "sub" / "out")
    status, _, err = run(["convert", ct, locked / "c.nrrd"], capsys)
    one_error(status, err, locked / "c.nrrd")
    manifest = write_manifest(tmp_path / "m.csv", [["case_id", "pa"], ["c1", str(PA_PNG)]])
    status, _, err = run(["predict", "--manifest", manifest, "-o", locked], capsys)
    assert "Errno" not in one_error(status, err, locked)


def test_synthesize_ct_into_an_unwritable_or_file_output_names_it(locked, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    write_manifest(data / "manifest.csv", [["case_id", "split", "path"], ["c1", "test", "c1/ct_xray_data.h5"]])
    (tmp_path / "notes.txt").write_text("x")
    for out in (locked, tmp_path / "notes.txt"):
        status, _, err = run(["synthesize-ct", "--model", "m", "--data", data, "-o", out, "--device", "cpu"], capsys)
        one_error(status, err, out)


def test_migrate_model_in_an_unwritable_folder_names_the_folder(lock, tmp_path, capsys):
    folder = tmp_path / "old"
    folder.mkdir()
    schema1 = REPO / "Testing" / "data" / "schema1"
    shutil.copy(schema1 / "generator_model.safetensors", folder / "model.safetensors")
    shutil.copy(schema1 / "generator_model.json", folder / "model.json")
    before = (folder / "model.json").read_bytes()
    status, _, err = run(["migrate-model", lock(folder)], capsys)
    assert err.strip() == f"x2ct: error: {folder}: permission denied" and status == 2
    assert (folder / "model.json").read_bytes() == before


def test_output_checks_accept_new_and_existing_places(tmp_path):
    assert check_output_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert check_output_folder(tmp_path) == tmp_path
    assert check_output_file(tmp_path / "new" / "c.nrrd") == tmp_path / "new" / "c.nrrd"
    (tmp_path / "old.nrrd").write_text("x")
    assert check_output_file(tmp_path / "old.nrrd") == tmp_path / "old.nrrd"
    assert not (tmp_path / "a").exists() and not (tmp_path / "new").exists()  # nothing created


# --------------------------------------------------------------------------------------------------
# Operating-system errors and bugs


@pytest.mark.parametrize(
    "error, line",
    [
        (PermissionError(errno.EACCES, "Permission denied"), "x2ct: error: permission denied"),
        (PermissionError(errno.EACCES, "Permission denied", "/data/out"), "x2ct: error: /data/out: permission denied"),
        (
            OSError(errno.ENOSPC, "No space left on device", "/data/out/x.h5"),
            "x2ct: error: /data/out/x.h5: no space left on the disk",
        ),  # fmt: skip
        (
            IsADirectoryError(errno.EISDIR, "Is a directory", "/data/x"),
            "x2ct: error: /data/x: is a folder, expected a file",
        ),
    ],
)
def test_operating_system_errors_are_one_line_with_the_path_when_known(error, line, ct, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(x2ct.cli, "info_dict", fail)
    status, _, err = run(["info", ct], capsys)
    assert status == 2 and err.strip() == line


def test_an_unexpected_exception_is_one_internal_error_line_with_the_tracker(ct, monkeypatch, capsys):
    def bug(*args, **kwargs):
        raise ZeroDivisionError("division by zero\nsecond line")

    monkeypatch.setattr(x2ct.cli, "info_dict", bug)
    monkeypatch.delenv("X2CT_DEBUG", raising=False)
    status, _, err = run(["info", ct], capsys)
    assert status == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("x2ct: error: internal error (ZeroDivisionError: division by zero second line); ")
    assert f"please report it at {ISSUES_URL} with the command line" in err
    monkeypatch.setenv("X2CT_DEBUG", "1")
    status, _, err = run(["info", ct], capsys)
    assert status == 1 and "Traceback" in err and err.strip().splitlines()[-1].startswith("x2ct: error: internal")


def test_the_issue_tracker_is_the_one_in_pyproject():
    text = (REPO / "X2CTTraining" / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^Issues = "([^"]+)"', text, re.MULTILINE).group(1) == ISSUES_URL


# --------------------------------------------------------------------------------------------------
# CSV, list and JSON files


def test_latin1_manifest_is_one_line_naming_file_and_line(tmp_path, capsys):
    manifest = write_manifest(tmp_path / "m.csv", [["case_id", "pa"], ["c1", "a.png"], ["c2", "Röntgen.png"]],
                              encoding="latin-1")  # fmt: skip
    status, _, err = run(["predict", "--manifest", manifest, "-o", tmp_path / "out"], capsys)
    assert "line 3: byte 0xf6 is not UTF-8" in one_error(status, err, manifest)
    assert not (tmp_path / "out").exists()


def test_ragged_manifest_row_is_one_line_naming_the_line(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("case_id,pa,lateral\nc1,a.png,,\nc2,b.png,b_lat.png,extra\n")  # empty extra cell: fine
    status, _, err = run(["predict", "--manifest", manifest, "-o", tmp_path / "out"], capsys)
    assert "line 3: 4 cells but the header (line 1) names 3 columns" in one_error(status, err, manifest)
    assert not (tmp_path / "out").exists()


def test_manifest_row_without_pa_names_the_line(tmp_path, capsys):
    manifest = write_manifest(tmp_path / "m.csv", [["case_id", "pa", "lateral"], ["c1", "a.png"], ["c2", "", "l.png"]])
    status, _, err = run(["predict", "--manifest", manifest, "-o", tmp_path / "out"], capsys)
    assert "line 3: case_id 'c2' has no pa radiograph" in one_error(status, err, manifest)
    assert not (tmp_path / "out").exists()


def test_build_dataset_list_file_errors_name_file_and_line(tmp_path, capsys):
    listing = tmp_path / "cts.txt"
    listing.write_bytes("a.nii\nb\xe9.nii\n".encode("latin-1"))
    status, _, err = run(["build-dataset", listing, tmp_path / "out"], capsys)
    assert "line 2" in one_error(status, err, listing)
    listing = tmp_path / "cts.csv"
    listing.write_text("path,patient_id\na.nii,P1,oops\n")
    status, _, err = run(["build-dataset", listing, tmp_path / "out"], capsys)
    assert "line 2: 3 cells" in one_error(status, err, listing)
    assert not (tmp_path / "out").exists()


def test_ragged_or_latin1_label_and_data_manifests_are_input_errors(tmp_path):
    (tmp_path / "manifest.csv").write_text("case_id,split,path\nc1,test,c1/x.h5,more\n")
    with pytest.raises(InputError, match="line 2: 4 cells"):
        read_data_manifest(tmp_path)
    (tmp_path / "manifest.csv").write_bytes(b"case_id,split,path\nc\xe91,test,c1/x.h5\n")
    with pytest.raises(InputError, match="line 2: byte 0xe9"):
        read_data_manifest(tmp_path)


VARIANTS = ("plain", "bom", "crlf", "quoted", "bom-crlf-quoted")
"""Ways of saving one CSV that must read the same: UTF-8 BOM, Windows line ends, every cell quoted."""


def csv_bytes(rows: List[List[str]], variant: str) -> bytes:
    """``rows`` as a CSV file's bytes in one of the VARIANTS."""
    buffer = io.StringIO()
    quoting = csv.QUOTE_ALL if "quoted" in variant else csv.QUOTE_MINIMAL
    csv.writer(buffer, lineterminator="\r\n" if "crlf" in variant else "\n", quoting=quoting).writerows(rows)
    return (b"\xef\xbb\xbf" if "bom" in variant else b"") + buffer.getvalue().encode("utf-8")


@pytest.mark.parametrize("variant", VARIANTS)
def test_manifest_variants_read_the_same_with_paths_from_the_csv_folder(variant, tmp_path, monkeypatch):
    folder = tmp_path / "my cases"
    folder.mkdir()
    absolute = tmp_path / "elsewhere" / "x lat.png"
    rows = [["case_id", "pa", "lateral"], ["c1", "img/a b.png", str(absolute)], ["c2", "../b.png", ""]]
    manifest = folder / "cases.csv"
    manifest.write_bytes(csv_bytes(rows, variant))
    monkeypatch.chdir(REPO)  # relative to the CSV's folder, not the working folder
    cases = read_manifest(manifest)
    assert [(c.case_id, c.pa, c.lateral) for c in cases] == [
        ("c1", folder / "img" / "a b.png", absolute),
        ("c2", folder / ".." / "b.png", None),
    ]


@pytest.mark.parametrize("variant", VARIANTS)
def test_build_dataset_list_variants_read_the_same_with_paths_from_the_list_folder(variant, tmp_path, monkeypatch):
    folder = tmp_path / "lists"
    folder.mkdir()
    absolute = tmp_path / "scans" / "ct two.nii.gz"
    rows = [["path", "patient_id"], ["cts/ct one.nii.gz", "P1"], [str(absolute), "P2"]]
    listing = folder / "cases.csv"
    listing.write_bytes(csv_bytes(rows, variant))
    text = folder / "cases.txt"
    lines = "\n".join(['"cts/ct one.nii.gz"' if "quoted" in variant else "cts/ct one.nii.gz", f"  {absolute}  ", ""])
    newline = "\r\n" if "crlf" in variant else "\n"
    text.write_bytes((b"\xef\xbb\xbf" if "bom" in variant else b"") + lines.replace("\n", newline).encode())
    monkeypatch.chdir(REPO)
    expected = [folder / "cts" / "ct one.nii.gz", absolute]
    assert [(c.path, c.patient_id) for c in find_cases(listing)] == list(zip(expected, ["P1", "P2"]))
    assert [(c.path, c.patient_id) for c in find_cases(text)] == [(p, None) for p in expected]


@pytest.mark.parametrize("variant", VARIANTS)
def test_label_csv_variants_read_the_same(variant, tmp_path):
    (tmp_path / "labels.csv").write_bytes(csv_bytes([["case_id", "split", "tb_present"], ["c1", "test", "1"]], variant))
    table = read_csv_table(tmp_path / "labels.csv")
    assert table.columns == ["case_id", "split", "tb_present"]
    assert table.rows == [{"case_id": "c1", "split": "test", "tb_present": "1"}] and table.lines == [2]


def test_config_json_with_bom_reads_and_latin1_names_the_line(tmp_path):
    config = tmp_path / "config.json"
    config.write_bytes(b'\xef\xbb\xbf{"lr": 0.001, "_note": "x"}')
    assert read_settings(config) == {"lr": 0.001}
    config.write_bytes(b'{\n"data": "d\xe9"}')
    with pytest.raises(InputError, match="line 2: byte 0xe9 is not UTF-8"):
        read_settings(config)


# --------------------------------------------------------------------------------------------------
# Batches where every case fails


def failure_rows(out: Path) -> List[dict]:
    with open(out / "failures.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def visible_files(out: Path) -> List[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if not p.name.startswith("."))


def test_predict_manifest_where_every_case_fails_leaves_only_failures_csv(tmp_path, monkeypatch, capsys):
    def unwritable(case_dir, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(case_dir))

    monkeypatch.setattr(x2ct.inference.batch, "predict_to_folder", unwritable)
    manifest = write_manifest(tmp_path / "m.csv", [["case_id", "pa"], ["c1", "a.png"], ["c2", "b.png"]])
    out = tmp_path / "out"
    status, stdout, err = run(["predict", "--manifest", manifest, "-o", out, "--device", "cpu"], capsys)
    lines = err.strip().splitlines()
    assert status == 2 and stdout == "" and "Traceback" not in err
    assert lines[-1] == f"x2ct: error: {out}: all 2 cases failed; see {out / 'failures.csv'}"
    assert [line for line in lines if "case c1" in line] == [f"x2ct: case c1 failed: {out / 'c1'}: permission denied"]
    assert visible_files(out) == ["failures.csv"]
    assert failure_rows(out) == [
        {"case_id": "c1", "source": str(tmp_path / "a.png"), "problem": f"{out / 'c1'}: permission denied"},
        {"case_id": "c2", "source": str(tmp_path / "b.png"), "problem": f"{out / 'c2'}: permission denied"},
    ]


def test_predict_manifest_all_failed_then_fixed_with_bom_crlf_quoted_relative_paths(resources, tmp_path, capsys):
    folder = tmp_path / "my cases"
    (folder / "img").mkdir(parents=True)
    manifest = write_manifest(folder / "m.csv", [["case_id", "pa"], ["c1", "img/missing.png"]])
    out = tmp_path / "out"
    args = ["predict", "--manifest", manifest, "-o", out, "--device", "cpu", "--no-classifiers"]
    status, _, err = run(args, capsys)
    assert status == 2 and err.strip().splitlines()[-1].endswith(f"all 1 cases failed; see {out / 'failures.csv'}")
    assert visible_files(out) == ["failures.csv"] and "not found" in failure_rows(out)[0]["problem"]
    shutil.copy(PA_PNG, folder / "img" / "chest pa.png")
    manifest.write_bytes(b'\xef\xbb\xbf"case_id","pa"\r\n"c1","img/chest pa.png"\r\n')
    status, stdout, err = run(args, capsys)
    assert status == 0 and "predicted 1" in stdout, err
    assert (out / "c1" / "summary.json").is_file() and (out / "batch_summary.csv").is_file()
    assert not (out / "failures.csv").exists()


def test_build_dataset_where_every_case_fails_leaves_only_failures_csv(tmp_path, capsys):
    listing = tmp_path / "cts.txt"
    listing.write_text("missing-a.nii.gz\nmissing-b.nii.gz\n")
    out = tmp_path / "out"
    status, stdout, err = run(["build-dataset", listing, out, "--size", "64"], capsys)
    assert status == 2 and stdout == ""
    assert err.strip().splitlines()[-1] == f"x2ct: error: {out}: all 2 cases failed; see {out / 'failures.csv'}"
    assert visible_files(out) == ["failures.csv"]
    assert [(r["case_id"], r["source"]) for r in failure_rows(out)] == [
        ("missing-a", str(tmp_path / "missing-a.nii.gz")),
        ("missing-b", str(tmp_path / "missing-b.nii.gz")),
    ]


def test_synthesize_ct_where_every_case_fails_leaves_only_failures_csv(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "c2").mkdir(parents=True)
    (data / "c2" / "ct_xray_data.h5").write_bytes(b"not hdf5")
    rows = [["case_id", "split", "path"], ["c1", "test", "c1/ct_xray_data.h5"], ["c2", "test", "c2/ct_xray_data.h5"]]
    write_manifest(data / "manifest.csv", rows)
    generator = save_tiny("singleview", tmp_path / "gen")
    out = tmp_path / "out"
    status, stdout, err = run(["synthesize-ct", "--model", generator, "--data", data, "-o", out, "--device", "cpu"],
                              capsys)  # fmt: skip
    assert status == 2 and stdout == "" and "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"x2ct: error: {out}: all 2 cases failed; see {out / 'failures.csv'}"
    assert visible_files(out) == ["failures.csv"]
    assert [(r["case_id"], r["problem"].split(": ")[0]) for r in failure_rows(out)] == [
        ("c1", str(data / "c1" / "ct_xray_data.h5")),
        ("c2", str(data / "c2" / "ct_xray_data.h5")),
    ]


# --------------------------------------------------------------------------------------------------
# Non-finite CT voxels


@pytest.mark.parametrize("fraction", [1.0, 0.6])
def test_ct_mostly_nan_is_refused_by_convert_and_drr(fraction, tmp_path, capsys):
    values = np.full((20, 20, 20), 30.0)
    values.reshape(-1)[: int(fraction * values.size)] = np.nan
    path = write_ct(tmp_path / "nan.nrrd", values)
    status, _, err = run(["convert", path, tmp_path / "c.nrrd"], capsys)
    assert f"{int(fraction * 8000)} of 8000 voxels are NaN or infinite" in one_error(status, err, path)
    status, _, err = run(["drr", path, "-o", tmp_path / "drr", "--size", "16"], capsys)
    one_error(status, err, path)
    assert not (tmp_path / "c.nrrd").exists() and not (tmp_path / "drr").exists()


def test_a_few_non_finite_voxels_become_air_with_a_counting_warning(tmp_path, capsys):
    values = np.full((20, 20, 20), 30.0)
    values[0, 0, :3] = np.nan
    values[1, 1, 1], values[2, 2, 2] = np.inf, -np.inf
    path = write_ct(tmp_path / "few.nrrd", values)
    warning = f"x2ct: warning: {path}: 5 of 8000 voxels are NaN or infinite; set to -1024 HU (air)"
    status, _, err = run(["convert", path, tmp_path / "c.nrrd"], capsys)
    assert status == 0 and err.strip() == warning
    converted = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "c.nrrd")))
    assert np.isfinite(converted).all() and (converted == -1024).sum() == 5 and (converted == 30).sum() == 7995
    status, _, err = run(["drr", path, "-o", tmp_path / "drr", "--size", "16"], capsys)
    assert status == 0 and err.strip() == warning
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "drr" / "pa.nrrd")))).all()
    with pytest.warns(NonFiniteVoxelsWarning, match="5 of 8000"):
        image = read_ct(path)
    assert image.GetSpacing() == (10.0, 10.0, 10.0)
