"""``x2ct reader-study build``: the blinded study folder, its matched volumes, sessions, orders, and the PHI scan.

Models are the tiny untrained generators of the ``resources`` fixture (64³), so the volumes show no anatomy;
what is checked is where things go and what the files give away. The source DICOMs (radiographs from
``radiograph_factory``, a real CT series made here from the sample CT at 10 mm) carry distinctive patient
names, ids, dates and UIDs, and every byte of the study folder is searched for them.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Dict, Iterator, List, Sequence

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from radiograph_factory import write_dx
from test_predict import PA_PNG, assert_one_line_error, run
from x2ct.cli import main
from x2ct.geometry import grid_of
from x2ct.io import read_radiograph
from x2ct.io.dicom_compat import save_part10, set_pixel_data
from x2ct.readerstudy.study import (
    DIAGNOSIS,
    KEY_FILE,
    REAL_VS_SYNTHETIC,
    XRAY,
    XRAY_CT,
    load_definition,
    load_items,
    load_key,
    reader_dir,
    reader_seed,
)

pytestmark = pytest.mark.usefixtures("one_thread")

PHI = {
    "PatientName": "Zyxwvut^Quorrabel",
    "PatientID": "PID-5738291",
    "PatientBirthDate": "19370415",
    "StudyDate": "20230917",
    "SeriesDate": "20230918",
    "AcquisitionDate": "20230919",
    "ContentDate": "20230920",
    "AccessionNumber": "ACC88231907",
    "InstitutionName": "Marigoldshire Infirmary",
    "ReferringPhysicianName": "Quillfeather^Ottoline",
}
"""Patient data put into every source DICOM."""

UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
HEX_ID = re.compile(r"^[0-9a-f]{16}$")
NRRD_KEYS = {"ITK_InputFilterName", "NRRD_kinds[0]", "NRRD_kinds[1]", "NRRD_kinds[2]", "NRRD_space"}
"""What SimpleITK itself reports for a NRRD with no metadata keys (plus ITK_original_* for 3D images)."""


def _variants(value: str) -> List[bytes]:
    """The forms a value could take in a file: as is, DICOM name parts split, dates as ISO/European/US text,
    each as ASCII and UTF-16 (little and big endian)."""
    texts = {value, value.replace("^", " "), *value.split("^")}
    if re.fullmatch(r"\d{8}", value):
        y, m, d = value[:4], value[4:6], value[6:]
        texts |= {f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{m}/{d}/{y}", f"{d}/{m}/{y}", f"{y}/{m}/{d}"}
    return [t.encode(codec) for t in texts for codec in ("ascii", "utf-16-le", "utf-16-be")]


def _files(folder: Path) -> Iterator[Path]:
    return (p for p in sorted(folder.rglob("*")) if p.is_file())


def _found(folder: Path, needles: Sequence[bytes]) -> Dict[str, List[bytes]]:
    """file (relative) -> the needles found in its bytes (case-insensitive)."""
    hits: Dict[str, List[bytes]] = {}
    for path in _files(folder):
        data = path.read_bytes().lower()
        found = [n for n in needles if n.lower() in data]
        if found:
            hits[str(path.relative_to(folder))] = found
    return hits


def _add_phi(ds: Dataset, uids: List[str]) -> None:
    """Put PHI into ``ds`` and record its UIDs."""
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    ds.StudyTime, ds.PatientSex = "101530", "F"
    uids.extend(str(getattr(ds, k)) for k in UID_KEYWORDS if k in ds)


def _radiograph_with_phi(path: Path, view: str, uids: List[str]) -> Path:
    write_dx(path, view_position=view, pixel_spacing=(2.5, 2.5))
    ds = pydicom.dcmread(path)
    _add_phi(ds, uids)
    save_part10(ds, path)
    return path


def _small_ct() -> sitk.Image:
    """The sample CT at 10 mm in LPS orientation (36 x 36 x 33 voxels), int16 HU."""
    sample = Path(__file__).resolve().parents[1] / "Resources" / "SampleData" / "chest_ct.nii.gz"
    return sitk.DICOMOrient(sitk.Cast(sitk.BinShrink(sitk.ReadImage(str(sample)), [4, 4, 4]), sitk.sitkInt16), "LPS")


def _ct_series_with_phi(folder: Path, uids: List[str]) -> Path:
    """A plain CT DICOM series of :func:`_small_ct` (uint16 stored, intercept -1024) carrying PHI."""
    image = _small_ct()
    hu = np.clip(sitk.GetArrayFromImage(image), -1024, 3000)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    sx, sy, sz = image.GetSpacing()
    ox, oy, oz = image.GetOrigin()
    folder.mkdir(parents=True)
    for k, plane in enumerate(hu):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.SeriesDescription, ds.InstanceNumber = "CT", "CHEST SRCSERIES", k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [ox, oy, oz + sz * k]
        ds.PixelSpacing, ds.SliceThickness = [sy, sx], sz
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        _add_phi(ds, uids)
        set_pixel_data(ds, (plane.astype(np.int32) + 1024).astype(np.uint16), "MONOCHROME2", 12)
        save_part10(ds, folder / f"slice{k:03d}.dcm")
    return folder


def _case_list(path: Path, rows: Sequence[Dict[str, str]], columns: Sequence[str]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    return path


# --------------------------------------------------------------------------------------------------
# A study from DICOM sources with patient data


@pytest.fixture(scope="module")
def phi_study(resources: Path, tmp_path_factory) -> Dict[str, object]:
    """Case "caseAlpha": DICOM PA + lateral + real CT series, truth 1; case "caseBravo": PNG PA only, truth 0."""
    root = tmp_path_factory.mktemp("phi")
    sources = root / "srcfolder_Quorrabel"
    sources.mkdir()
    uids: List[str] = []
    pa = _radiograph_with_phi(sources / "frontal_src.dcm", "PA", uids)
    lateral = _radiograph_with_phi(sources / "lateral_src.dcm", "LL", uids)
    ct = _ct_series_with_phi(sources / "ctseries_src", uids)
    cases = _case_list(
        sources / "cases_src.csv",
        [
            {"case_id": "caseAlpha", "pa": pa.name, "lateral": lateral.name, "ct": ct.name, "truth": "1"},
            {"case_id": "caseBravo", "pa": str(PA_PNG), "lateral": "", "ct": "", "truth": "0"},
        ],
        ("case_id", "pa", "lateral", "ct", "truth"),
    )
    out = root / "study"
    args = ["reader-study", "build", str(cases), str(out), "--disease", "pulmonary embolism", "--readers", "R1,R2"]
    assert main([*args, "--device", "cpu"]) == 0
    return {"out": out, "sources": sources, "uids": uids, "paths": [pa, lateral, ct, cases]}


def test_no_patient_identifier_reaches_the_study(phi_study):
    out, sources = phi_study["out"], phi_study["sources"]
    raw = [value.encode() for value in PHI.values()] + [uid.encode() for uid in phi_study["uids"]]
    # The scan finds what it looks for: every value and UID is in the source files.
    in_sources = {n for hits in _found(sources, raw).values() for n in hits}
    assert in_sources == set(raw)
    needles = [v for value in PHI.values() for v in _variants(value)] + raw
    assert _found(out, needles) == {}
    assert len(list(_files(out))) >= 10  # study.json, items.json, key, 3 volumes, 3 radiographs, 2 orders


def test_reader_files_hold_no_input_path_or_case_label(phi_study):
    out = phi_study["out"]
    words = [str(p).encode() for p in phi_study["paths"]] + [p.name.encode() for p in phi_study["paths"]]
    words += [b"srcfolder", b"caseAlpha", b"caseBravo", b"SRCSERIES", str(PA_PNG).encode()]
    hits = _found(out, words)
    assert set(hits) <= {KEY_FILE}  # the key keeps the labels (and only them)
    assert {n for n in hits.get(KEY_FILE, [])} == {b"caseAlpha", b"caseBravo"}


def test_layout_items_key_and_reader_orders(phi_study):
    out = phi_study["out"]
    definition = load_definition(out)
    assert definition.disease == "pulmonary embolism" and definition.design == "sequential"
    items = load_items(out)
    key = {c.source_label: c for c in load_key(out).cases}
    alpha, bravo = key["caseAlpha"], key["caseBravo"]
    assert (alpha.truth, bravo.truth) == (1, 0)
    assert alpha.real_volume is not None and bravo.real_volume is None
    ids = [it.item_id for it in items] + [c.case_id for c in key.values()]
    files = sorted(p.name for p in _files(out / "volumes")) + sorted(p.name for p in _files(out / "radiographs"))
    assert all(HEX_ID.match(i) for i in ids) and all(HEX_ID.match(f[: -len(".nrrd")]) for f in files)
    assert len(set(ids + files)) == len(ids + files)
    assert sorted(p.name for p in _files(out / "volumes")) == sorted([alpha.real_volume, alpha.synthetic_volume,
                                                                      bravo.synthetic_volume])  # fmt: skip
    by_case = {c.case_id: [it for it in items if it.case_id == c.case_id] for c in key.values()}
    rvs = sorted(it.volume for it in by_case[alpha.case_id] if it.task == REAL_VS_SYNTHETIC)
    assert rvs == sorted([alpha.real_volume, alpha.synthetic_volume])
    assert not [it for it in by_case[bravo.case_id] if it.task == REAL_VS_SYNTHETIC]
    for case in key.values():
        diagnosis = {it.phase: it for it in by_case[case.case_id] if it.task == DIAGNOSIS}
        assert set(diagnosis) == {XRAY, XRAY_CT}
        assert diagnosis[XRAY].volume is None and diagnosis[XRAY_CT].volume == case.synthetic_volume
        assert diagnosis[XRAY].radiographs == diagnosis[XRAY_CT].radiographs
    assert set(next(it for it in by_case[alpha.case_id] if it.task == DIAGNOSIS).radiographs) == {"pa", "lateral"}
    assert all(it.session == 1 for it in items)
    assert [it.item_id for it in items] == sorted(it.item_id for it in items)
    for reader in ("R1", "R2"):
        order = json.loads((reader_dir(out, reader) / "order.json").read_text())
        assert order["seed"] == reader_seed(definition.seed, reader)
        assert sorted(order["item_ids"]) == sorted(it.item_id for it in items)
    orders = [json.loads((reader_dir(out, r) / "order.json").read_text())["item_ids"] for r in ("R1", "R2")]
    assert orders[0] != orders[1]


def _header(path: Path) -> bytes:
    data = path.read_bytes()
    return data[: data.index(b"\n\n")]


def test_real_and_synthetic_volumes_cannot_be_told_apart_by_file(phi_study):
    out = phi_study["out"]
    alpha = next(c for c in load_key(out).cases if c.source_label == "caseAlpha")
    real, synthetic = out / "volumes" / alpha.real_volume, out / "volumes" / alpha.synthetic_volume
    assert _header(real) == _header(synthetic)
    assert real.stat().st_size == synthetic.stat().st_size
    assert real.stat().st_mtime == synthetic.stat().st_mtime
    images = [sitk.ReadImage(str(p)) for p in (real, synthetic)]
    for image in images:
        assert image.GetPixelID() == sitk.sitkInt16
        assert grid_of(image).center_lps == pytest.approx((0.0, 0.0, 0.0), abs=1e-6)
        assert {k for k in image.GetMetaDataKeys() if not k.startswith("ITK_original_")} == NRRD_KEYS
        values = sitk.GetArrayViewFromImage(image)
        assert values.min() >= -1024 and values.max() <= 1476
    real_hu = sitk.GetArrayFromImage(images[0])
    # the real CT, body-centred: air at the corners, a body (> -500 HU) through the middle
    assert real_hu[0, 0, 0] == -1024 and (real_hu[32] > -500).mean() > 0.2
    assert not np.array_equal(real_hu, sitk.GetArrayFromImage(images[1]))
    for path in _files(out / "volumes"):
        assert not re.search(rb"x2ct|synthetic|model|sha256", _header(path), re.IGNORECASE)


def test_radiographs_are_stored_as_read_with_spacing_and_no_metadata(phi_study):
    out, sources = phi_study["out"], phi_study["sources"]
    alpha = next(c for c in load_key(out).cases if c.source_label == "caseAlpha")
    item = next(it for it in load_items(out) if it.case_id == alpha.case_id and it.task == DIAGNOSIS)
    image = sitk.ReadImage(str(out / "radiographs" / item.radiographs["pa"]))
    assert image.GetDimension() == 2 and image.GetPixelID() == sitk.sitkFloat32
    assert image.GetSpacing() == pytest.approx((2.5, 2.5))
    assert {k for k in image.GetMetaDataKeys() if not k.startswith("ITK_")} == {"NRRD_kinds[0]", "NRRD_kinds[1]"}
    source = read_radiograph(sources / "frontal_src.dcm").pixels
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), source)


def test_diagnosis_only_study_progress_lines_and_no_real_ct(resources, tmp_path, capsys):
    sitk.WriteImage(_small_ct(), str(tmp_path / "ct.nrrd"))
    cases = tmp_path / "cases.csv"  # Excel's UTF-8: a byte-order mark, CRLF line ends, quoted cells
    cases.write_bytes(f'\ufeffpa,truth,ct\r\n"{PA_PNG}",0,ct.nrrd\r\n"{PA_PNG}", 1,\r\n'.encode())
    (tmp_path / "s").mkdir()  # an empty folder is taken
    status, out, err = run(["reader-study", "build", str(cases), str(tmp_path / "s"), "--tasks", "diagnosis",
                            "--disease", "tuberculosis", "--device", "cpu"], capsys)  # fmt: skip
    assert status == 0
    lines = [line for line in err.splitlines() if line.startswith("x2ct: case ")]
    done = "synthetic CT (x2ct-demo-singleview) written"
    assert lines == [f"x2ct: case 1/2 (line 2): {done}", f"x2ct: case 2/2 (line 3): {done}"]
    assert "2 cases, 4 reading items" in out
    assert not (tmp_path / "s" / "readers").exists()
    assert len(list(_files(tmp_path / "s" / "volumes"))) == 2  # no real CT without the real-vs-synthetic task
    assert all(c.real_volume is None for c in load_key(tmp_path / "s").cases)


def test_real_ct_table_is_removed(resources, tmp_path, capsys):
    """A detached table under the body would tell the real CT from the synthetic one (generators learnt CTs
    without a table), so it is removed."""
    z, y, x = np.mgrid[-117:120:6, -141:144:6, -141:144:6].astype(np.float32)  # LPS mm, 40 x 48 x 48 voxels
    hu = np.full(x.shape, -1024.0, np.float32)
    hu[(x / 100) ** 2 + (y / 70) ** 2 + (z / 100) ** 2 <= 1] = 0.0  # the body, centred at the origin
    hu[(y >= 90) & (y <= 102)] = 200.0  # a table slab 20 mm behind it
    image = sitk.GetImageFromArray(hu.astype(np.int16))
    image.SetSpacing((6.0, 6.0, 6.0))
    image.SetOrigin((-141.0, -141.0, -117.0))
    sitk.WriteImage(image, str(tmp_path / "ct.nrrd"))
    row = {"pa": str(PA_PNG), "ct": "ct.nrrd", "truth": "0"}
    cases = _case_list(tmp_path / "cases.csv", [row], ("pa", "ct", "truth"))
    status, _, err = run(["reader-study", "build", str(cases), str(tmp_path / "s"), "--tasks", "real_vs_synthetic",
                          "--device", "cpu"], capsys)  # fmt: skip
    assert status == 0, err
    (case,) = load_key(tmp_path / "s").cases
    real = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "s" / "volumes" / case.real_volume)))
    # canonical 64³ grid, 5 mm, centred on the body: H index j lies at y = 5 j - 157.5 mm; the table at j = 50, 51
    assert real[32, 32, 32] > -100
    assert (real[16:48, 50:52, 16:48] == -1024).all()


# --------------------------------------------------------------------------------------------------
# Definition and the independent design


def test_independent_design_is_counterbalanced_with_the_seed(resources, tmp_path, capsys):
    ct = tmp_path / "ct.nrrd"
    sitk.WriteImage(_small_ct(), str(ct))
    rows = [{"case_id": f"c{i}", "pa": str(PA_PNG), "truth": str(i % 2), "ct": ct.name if i == 0 else ""}
            for i in range(4)]  # fmt: skip
    cases = _case_list(tmp_path / "cases.csv", rows, ("case_id", "pa", "truth", "ct"))
    definition = tmp_path / "study_def.json"
    definition.write_text(json.dumps({"name": "PE study", "disease": "pulmonary embolism", "design": "independent",
                                      "allow_back": True, "washout_days": 14, "seed": 3,
                                      "window_hu": [40.0, 400.0]}))  # fmt: skip
    xray_sessions = []
    for name in ("a", "b"):
        status, _, err = run(["reader-study", "build", str(cases), str(tmp_path / name), "--definition",
                              str(definition), "--seed", "7", "--device", "cpu"], capsys)  # fmt: skip
        assert status == 0, err
        study = tmp_path / name
        loaded = load_definition(study)
        assert (loaded.design, loaded.allow_back, loaded.washout_days, loaded.seed) == ("independent", True, 14, 7)
        assert loaded.window_hu == [40.0, 400.0] and loaded.name == "PE study"
        labels = {c.case_id: c.source_label for c in load_key(study).cases}
        items = load_items(study)
        sessions = {}
        for it in items:
            if it.task == DIAGNOSIS:
                sessions.setdefault(labels[it.case_id], {})[it.phase] = it.session
        assert all(sorted(s.values()) == [1, 2] for s in sessions.values())
        assert sum(s[XRAY] == 1 for s in sessions.values()) == 2
        assert [it.session for it in items if it.task == REAL_VS_SYNTHETIC] == [2, 2]
        xray_sessions.append({label: s[XRAY] for label, s in sessions.items()})
    assert xray_sessions[0] == xray_sessions[1]


# --------------------------------------------------------------------------------------------------
# Errors: one line, exit 2, nothing written


@pytest.fixture
def good_rows() -> List[Dict[str, str]]:
    return [{"case_id": "a", "pa": str(PA_PNG), "truth": "1"}, {"case_id": "b", "pa": str(PA_PNG), "truth": "0"}]


def _build(cases: Path, out: Path, capsys, *extra: str):
    return run(["reader-study", "build", str(cases), str(out), "--disease", "tb", "--tasks", "diagnosis",
                "--device", "cpu", *extra], capsys)  # fmt: skip


def _leftovers(folder: Path) -> List[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda rows: [{k: v for k, v in r.items() if k != "truth"} for r in rows], ["missing column(s) truth"]),
        (lambda rows: [rows[0], {**rows[1], "truth": "maybe"}], ["line 3", "truth 'maybe'"]),
        (lambda rows: [rows[0], {**rows[1], "pa": "nowhere.png"}], ["line 3", "nowhere.png", "not found"]),
        (lambda rows: [rows[0], {**rows[1], "case_id": "a"}], ["line 3", "appears twice"]),
        (lambda rows: [], ["no cases"]),
    ],
    ids=["missing-column", "bad-truth", "missing-file", "repeated-case", "empty"],
)
def test_malformed_case_list(resources, tmp_path, capsys, good_rows, change, words):
    rows = change(good_rows)
    cases = _case_list(tmp_path / "cases.csv", rows, sorted({k for r in rows for k in r}) or ["pa", "truth"])
    status, _, err = _build(cases, tmp_path / "out", capsys)
    assert_one_line_error(status, err, str(cases), *words)
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "text, words",
    [
        ("{not json", ["not valid JSON"]),
        ('{"name": "s", "disease": "tb", "design": "crossover"}', ["design must be one of"]),
        ('{"name": "s", "disease": "tb", "window_hu": [40]}', ["window_hu"]),
        ('{"name": "s", "disease": "tb", "colour": "red"}', ["does not match StudyDefinition"]),
        ('["name"]', ["expected a JSON object"]),
    ],
    ids=["syntax", "design", "window", "unknown-key", "not-object"],
)
def test_bad_definition(resources, tmp_path, capsys, good_rows, text, words):
    definition = tmp_path / "def.json"
    definition.write_text(text)
    cases = _case_list(tmp_path / "cases.csv", good_rows, ("case_id", "pa", "truth"))
    status, _, err = _build(cases, tmp_path / "out", capsys, "--definition", str(definition))
    assert_one_line_error(status, err, str(definition), *words)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--readers", "R1,../x"], ["--readers", "'../x' is not valid"]),
        (["--tasks", "diagnosis,taste"], ["tasks must be"]),
        (["--tasks", "real_vs_synthetic"], ["needs real CTs"]),
        (["--model", "no-such-generator"], ["no-such-generator"]),
    ],
    ids=["reader", "task", "no-real-ct", "model"],
)
def test_bad_options(resources, tmp_path, capsys, good_rows, extra, words):
    cases = _case_list(tmp_path / "cases.csv", good_rows, ("case_id", "pa", "truth"))
    status, _, err = _build(cases, tmp_path / "out", capsys, *extra)
    assert_one_line_error(status, err, *words)
    assert not (tmp_path / "out").exists()


def test_existing_non_empty_output_is_refused_and_kept(resources, tmp_path, capsys, good_rows):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    cases = _case_list(tmp_path / "cases.csv", good_rows, ("case_id", "pa", "truth"))
    status, _, err = _build(cases, out, capsys)
    assert_one_line_error(status, err, str(out), "not empty")
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and (out / "mine.txt").read_text() == "keep"


def test_unreadable_input_mid_build_leaves_nothing(resources, tmp_path, capsys, good_rows):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    cases = _case_list(tmp_path / "cases.csv", [good_rows[0], {**good_rows[1], "pa": broken.name}],
                       ("case_id", "pa", "truth"))  # fmt: skip
    status, _, err = _build(cases, tmp_path / "out", capsys)
    assert status == 2 and f"x2ct: error: {broken}" in err and "Traceback" not in err
    assert "case 1/2 (a)" in err  # the first case was built before the second failed
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []
