"""Hardened radiograph input (issue #13): library noise, implausible spacing, non-radiographs, truncation.

* Library noise: what pydicom warns or logs and what C libraries print on file descriptor 2 while a
  file is read never reaches the terminal; it becomes a ``warnings`` entry ("pydicom: ...",
  "DICOM decoder: ...") or ends the one-line error. Checked in a fresh interpreter (``x2ct`` as a
  user runs it), where nothing else would hide the noise.
* A pixel spacing outside MIN_SPACING_MM..MAX_SPACING_MM is ignored with a warning (no traceback).
* A DICOM whose Modality or SOP class cannot be a chest radiograph is refused by ``predict`` (exit 2,
  one line) unless ``--force``; ``info`` names what it is.
* A cut-off DICOM is reported as truncated, naming where the file ends.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import List, Optional

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom import uid

from radiograph_factory import write_dx, write_sc, write_sitk_image
from x2ct.cli import main
from x2ct.errors import InputError
from x2ct.inference.preprocess import preprocess, read_input
from x2ct.inference.types import InputSpec
from x2ct.io import read_ct, read_radiograph
from x2ct.io.ct import SeriesChoiceWarning
from x2ct.io.dicom_compat import save_part10
from x2ct.io.kind import NOT_RADIOGRAPH, RADIOGRAPH_SOP_CLASSES, detect_kind, not_radiograph_reason
from x2ct.io.library_output import library_output
from x2ct.io.radiograph import MAX_SPACING_MM, MIN_SPACING_MM
from x2ct.resources import RESOURCES_ENV
from x2ct.views import PA

SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "MR": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "US": "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
    "NM": "1.2.840.10008.5.1.4.1.1.20",  # Nuclear Medicine Image Storage
    "PT": "1.2.840.10008.5.1.4.1.1.128",  # Positron Emission Tomography Image Storage
    "SEG": "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
    "RTSTRUCT": "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set Storage
    "MG": "1.2.840.10008.5.1.4.1.1.1.2",  # Digital Mammography X-Ray Image Storage - For Presentation
}
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
JPEG_START = b"\xff\xd8"  # JPEG start-of-image marker
SOF_BASELINE = b"\xff\xc0"  # JPEG start-of-frame marker of a baseline (8-bit) stream


# --------------------------------------------------------------------------------------------------
# Helpers


def run_x2ct(*args: str, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    """Run ``x2ct`` in a fresh interpreter, as a user would; stdout and stderr as text."""
    return subprocess.run(
        [sys.executable, "-m", "x2ct.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def one_error_line(stderr: str) -> str:
    """The single ``x2ct: error:`` line that stderr must consist of."""
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("x2ct: error: "), stderr
    return lines[0]


def with_raw_value(path: Path, placeholder: bytes, raw: bytes) -> Path:
    """Put ``raw`` in place of the one ``placeholder`` in the file (same length): a value pydicom would not write."""
    data = path.read_bytes()
    assert data.count(placeholder) == 1 and len(placeholder) == len(raw)
    path.write_bytes(data.replace(placeholder, raw))
    return path


def dx_with_number_of_frames(path: Path, raw: bytes) -> Path:
    """A DX radiograph whose NumberOfFrames (IS) holds ``raw`` (6 bytes), e.g. b"1.0   " or b"abc   "."""
    ds = pydicom.dcmread(write_dx(path, view_position="PA"))
    ds.NumberOfFrames = 987654
    save_part10(ds, path)
    return with_raw_value(path, b"987654", raw)


def noisy_jpeg(path: Path, **changes: object) -> Path:
    """An 8-bit JPEG Baseline secondary capture whose JPEG header claims 12-bit samples.

    Pillow's libjpeg (8-bit) prints "Unsupported JPEG data precision 12" on fd 2 when it meets it;
    GDCM then decodes the image. ``changes`` are DICOM keywords set on the data set first.
    """
    write_sc(path, view_position="PA", transfer_syntax=uid.JPEGBaseline8Bit)
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    save_part10(ds, path)
    data = bytearray(path.read_bytes())
    stream = data.index(JPEG_START, data.rindex(PIXEL_DATA_TAG))
    precision = data.index(SOF_BASELINE, stream) + 4  # marker, 2-byte length, then the sample precision
    assert data[precision] == 8
    data[precision] = 12
    path.write_bytes(bytes(data))
    return path


def other_object(path: Path, modality: str, **changes: object) -> Path:
    """The DX phantom re-labelled with ``modality`` and its SOP class (``SOP_CLASSES``)."""
    ds = pydicom.dcmread(write_dx(path, view_position="PA"))
    ds.Modality = modality
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SOP_CLASSES[modality]
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    save_part10(ds, path)
    return path


def one_bit_segmentation(path: Path, frames: int = 1) -> Path:
    """A DICOM SEG whose frames are 1-bit masks (BitsAllocated 1, packed little-endian bits)."""
    ds = pydicom.dcmread(other_object(path, "SEG"))
    mask = np.zeros((frames, ds.Rows, ds.Columns), dtype=np.uint8)
    mask[:, 20:70, 10:40] = 1
    packed = np.packbits(mask.ravel(), bitorder="little").tobytes()
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    ds.NumberOfFrames = frames
    ds.PixelData = packed + b"\0" * (len(packed) % 2)
    ds["PixelData"].VR = "OB"
    save_part10(ds, path)
    return path


def predict(args: List[str], capfd) -> tuple:
    """Run ``x2ct predict`` (PA only, no classifiers) in this process; (status, stdout, stderr at fd level)."""
    status = main(["predict", *args, "--no-classifiers"])
    out, err = capfd.readouterr()
    return status, out, err


# --------------------------------------------------------------------------------------------------
# 1. Library noise


def test_pydicom_warning_on_success_is_a_warning_entry_not_stderr(resources: Path, tmp_path: Path):
    path = dx_with_number_of_frames(tmp_path / "frames_1.0.dcm", b"1.0   ")  # IS must be an integer string
    info = run_x2ct("info", str(path), "--json")
    assert info.returncode == 0 and info.stderr == ""
    assert "pydicom: Invalid value for VR IS: '1.0'" in json.loads(info.stdout)["warnings"]
    out = tmp_path / "out"
    result = run_x2ct(
        "predict", "--pa", str(path), "-o", str(out), "--no-classifiers", env={RESOURCES_ENV: str(resources)}
    )
    assert result.returncode == 0 and result.stderr == ""
    assert "PA: pydicom: Invalid value for VR IS: '1.0'" in json.loads((out / "summary.json").read_text())["warnings"]


def test_pydicom_warning_on_failure_ends_the_one_error_line(tmp_path: Path):
    path = dx_with_number_of_frames(tmp_path / "frames_abc.dcm", b"abc   ")
    result = run_x2ct("info", str(path))
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert line.startswith(f"x2ct: error: {path}: invalid NumberOfFrames 'abc'")
    assert line.endswith("[pydicom: Invalid value for VR IS: 'abc']")


def test_pydicom_end_of_file_warning_joins_the_truncation_error(tmp_path: Path):
    whole = write_dx(tmp_path / "whole.dcm", view_position="PA", transfer_syntax=uid.JPEGLosslessSV1)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole.read_bytes()[:-500])  # inside the compressed pixel data
    result = run_x2ct("info", str(cut))
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert "truncated DICOM: the file ends inside the compressed PixelData" in line
    assert re.search(r"pydicom: End of file reached before delimiter \(FFFE, ?E0DD\)", line, re.IGNORECASE)


def test_native_decoder_output_on_fd2_is_a_warning_entry(tmp_path: Path):
    path = noisy_jpeg(tmp_path / "noisy.dcm")
    # The input really is noisy: decoding it without x2ct's capture prints on fd 2.
    bare = subprocess.run(
        [sys.executable, "-c", "import sys, pydicom; from x2ct.io.dicom_compat import pixel_array; "
         "pixel_array(pydicom.dcmread(sys.argv[1]))", str(path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "Unsupported JPEG data precision 12" in bare.stderr
    result = run_x2ct("info", str(path), "--json")
    assert result.returncode == 0 and result.stderr == ""
    assert "DICOM decoder: Unsupported JPEG data precision 12" in json.loads(result.stdout)["warnings"]


def test_ct_read_keeps_gdcm_output_off_the_terminal(tmp_path: Path):
    """A 16-slice CT series of noisy JPEG slices: ITK's GDCM prints for every slice it decodes."""
    series, frame = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    folder = tmp_path / "ct"
    folder.mkdir()
    for k in range(16):
        noisy_jpeg(
            folder / f"{k:02d}.dcm",
            Modality="CT",
            SOPClassUID=SOP_CLASSES["CT"],
            SeriesInstanceUID=series,
            FrameOfReferenceUID=frame,
            InstanceNumber=k + 1,
            ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
            ImagePositionPatient=[0, 0, 2.5 * k],
            PixelSpacing=[0.8, 0.8],
        )
    result = run_x2ct("info", str(folder), "--json")
    assert result.returncode == 0 and result.stderr == ""
    assert json.loads(result.stdout)["size"] == [80, 96, 16]


def test_capture_passes_x2ct_warnings_restores_fd2_and_replays_it_for_other_errors(tmp_path: Path, capfd):
    capfd.readouterr()
    with pytest.warns(SeriesChoiceWarning):
        with library_output("test") as lines:
            warnings.warn("x2ct's own", SeriesChoiceWarning, stacklevel=1)
            warnings.warn("from a library", UserWarning, stacklevel=1)
            os.write(2, b"native text\n")
    assert lines == ["UserWarning: from a library", "test: native text"]
    assert capfd.readouterr().err == ""
    with pytest.raises(RuntimeError):
        with library_output("test"):
            os.write(2, b"context for a traceback\n")
            raise RuntimeError("a bug")
    assert capfd.readouterr().err == "context for a traceback\n"
    os.write(2, b"fd 2 is back\n")
    assert capfd.readouterr().err == "fd 2 is back\n"


def test_pydicom_log_records_are_captured_and_kept_from_the_hosts_handlers(caplog):
    caplog.set_level(logging.WARNING)
    with library_output("test") as lines:
        logging.getLogger("pydicom").warning("a log record")
    assert lines == ["pydicom: a log record"]
    assert "a log record" not in caplog.text
    assert logging.getLogger("pydicom").propagate


def test_concurrent_captures_keep_their_own_output(tmp_path: Path):
    results = {}

    def read(name: str) -> None:
        with library_output(name) as lines:
            for _ in range(50):
                os.write(2, f"{name} says\n".encode())
        results[name] = lines

    threads = [threading.Thread(target=read, args=(f"t{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {f"t{n}": [f"t{n}: t{n} says"] for n in range(4)}


# --------------------------------------------------------------------------------------------------
# 2. Implausible pixel spacing


@pytest.mark.parametrize(
    "options, warning",
    [
        (dict(pixel_spacing=(1e-6, 1e-6)), "PixelSpacing 1e-06\\1e-06 mm is outside"),
        (dict(pixel_spacing=(1e-30, 1e-30)), "PixelSpacing 1e-30\\1e-30 mm is outside"),
        (dict(pixel_spacing=(1e6, 1e6)), "PixelSpacing 1e+06\\1e+06 mm is outside"),
        (dict(imager_pixel_spacing=(1e-6, 1e-6)), "ImagerPixelSpacing 1e-06\\1e-06 mm is outside"),
    ],
    ids=["1e-6", "1e-30", "1e6", "imager-1e-6"],
)
def test_implausible_dicom_spacing_is_unknown_with_a_warning(tmp_path: Path, options, warning):
    radiograph = read_radiograph(write_dx(tmp_path / "s.dcm", view_position="PA", **options))
    assert radiograph.spacing_mm is None and radiograph.metadata["spacing_source"] is None
    assert any(warning in w for w in radiograph.warnings)
    record = preprocess(radiograph, InputSpec(size=64)).record
    assert record["spacing_source"] == "unknown" and record["window_px"]["rows"] == min(radiograph.pixels.shape)


def test_implausible_pixel_spacing_falls_back_to_imager_pixel_spacing(tmp_path: Path):
    radiograph = read_radiograph(
        write_dx(tmp_path / "s.dcm", pixel_spacing=(1e-6, 1e-6), imager_pixel_spacing=(0.2, 0.2))
    )
    assert radiograph.spacing_mm == pytest.approx((0.2, 0.2))
    assert radiograph.metadata["spacing_source"] == "ImagerPixelSpacing"


def test_implausible_magnification_is_ignored(tmp_path: Path):
    path = write_dx(tmp_path / "m.dcm", imager_pixel_spacing=(0.2, 0.2), magnification=1e-9)
    radiograph = read_radiograph(path)
    assert radiograph.spacing_mm == pytest.approx((0.2, 0.2))
    assert radiograph.metadata["spacing_source"] == "ImagerPixelSpacing"
    assert any("EstimatedRadiographicMagnificationFactor 1e-09 is outside" in w for w in radiograph.warnings)


def test_spacing_at_the_limits_is_kept(tmp_path: Path):
    for spacing in (MIN_SPACING_MM, MAX_SPACING_MM):
        radiograph = read_radiograph(write_dx(tmp_path / f"{spacing}.dcm", pixel_spacing=(spacing, spacing)))
        assert radiograph.spacing_mm == pytest.approx((spacing, spacing))


def test_implausible_nrrd_spacing_is_unknown_with_a_warning(tmp_path: Path):
    radiograph = read_radiograph(write_sitk_image(tmp_path / "tiny.nrrd", spacing_mm=(1e-6, 1e-6)))
    assert radiograph.spacing_mm is None
    assert any("header pixel spacing 1e-06 x 1e-06 mm is outside" in w for w in radiograph.warnings)


@pytest.mark.parametrize("pitch", ["1e-30", "not a number"])
def test_implausible_drr_pitch_in_an_nrrd_header_is_ignored(tmp_path: Path, pitch: str):
    path = write_sitk_image(tmp_path / "drr.nrrd", spacing_mm=(0.5, 0.5))
    image = sitk.ReadImage(str(path))
    image.SetMetaData("x2ct_isocenter_spacing_mm", pitch)
    sitk.WriteImage(image, str(path))
    record = preprocess(read_radiograph(path), InputSpec(size=64)).record
    assert record["spacing_source"] == "header" and record["spacing_at_patient_mm"] == [0.5, 0.5]
    assert any(f"x2ct_isocenter_spacing_mm '{pitch}'" in w for w in record["warnings"])


def test_tiny_pixel_spacing_predicts_without_a_traceback(resources: Path, tmp_path: Path, capfd):
    path = write_dx(tmp_path / "tiny.dcm", view_position="PA", pixel_spacing=(1e-6, 1e-6))
    status, _, err = predict(["--pa", str(path), "-o", str(tmp_path / "out")], capfd)
    assert status == 0 and err == ""
    assert any(
        "PixelSpacing 1e-06" in w for w in json.loads((tmp_path / "out" / "summary.json").read_text())["warnings"]
    )


# --------------------------------------------------------------------------------------------------
# 3. Objects that are not radiographs


@pytest.mark.parametrize("modality", ["CT", "MR", "US", "NM", "PT", "SEG"])
def test_non_projection_dicom_is_refused_unless_forced(resources: Path, tmp_path: Path, capfd, modality: str):
    path = (
        one_bit_segmentation(tmp_path / "seg.dcm") if modality == "SEG" else other_object(tmp_path / "x.dcm", modality)
    )
    out = tmp_path / "out"
    status, _, err = predict(["--pa", str(path), "-o", str(out)], capfd)
    assert status == 2
    line = one_error_line(err)
    assert line.startswith(f"x2ct: error: {path}: ") and f"Modality {modality}" in line and "--force" in line
    assert not out.exists()
    status, _, err = predict(["--pa", str(path), "-o", str(out), "--force"], capfd)
    assert status == 0 and err == ""
    notes = json.loads((out / "summary.json").read_text())["warnings"]
    assert any(f"Modality {modality}" in w and "not a chest radiograph" in w and "--force" in w for w in notes)


@pytest.mark.parametrize(
    "modality, sop_class",
    [
        ("CR", "1.2.840.10008.5.1.4.1.1.1"),
        ("DX", "1.2.840.10008.5.1.4.1.1.1.1"),
        ("RF", "1.2.840.10008.5.1.4.1.1.12.2"),
        ("XA", "1.2.840.10008.5.1.4.1.1.12.1"),
        ("OT", "1.2.840.10008.5.1.4.1.1.7"),
        (None, "1.2.840.10008.5.1.4.1.1.7"),
        ("DX", None),
        (None, None),
    ],
)
def test_projection_radiographs_are_accepted(modality, sop_class):
    assert sop_class is None or sop_class in RADIOGRAPH_SOP_CLASSES
    assert not_radiograph_reason(modality, sop_class) is None


@pytest.mark.parametrize(
    "modality, sop_class, words",
    [
        ("MG", SOP_CLASSES["MG"], "Mammography"),
        ("OT", SOP_CLASSES["SEG"], "Segmentation Storage"),  # the SOP class decides when Modality is OT
        ("CT", "1.2.840.10008.5.1.4.1.1.7", "Modality CT (computed tomography)"),  # a screenshot of a CT
        ("SR", "1.2.840.10008.5.1.4.1.1.88.22", "Enhanced SR"),
        ("OT", "1.2.840.10008.5.1.4.1.1.104.1", "Encapsulated PDF"),
        ("XYZ", None, "Modality XYZ"),
    ],
)
def test_other_objects_are_named(modality, sop_class, words):
    reason = not_radiograph_reason(modality, sop_class)
    assert reason is not None and words in reason and reason.endswith("not a chest radiograph")


def test_read_input_refuses_a_single_ct_slice_and_records_it_when_forced(tmp_path: Path):
    path = other_object(tmp_path / "slice.dcm", "CT")
    assert read_radiograph(path).metadata["not_radiograph"].startswith("DICOM CT Image Storage object, Modality CT")
    with pytest.raises(InputError, match="Modality CT .* not a chest radiograph; use --force"):
        read_input(path, PA)
    assert any("Modality CT" in w for w in read_input(path, PA, force=True).warnings)


def test_info_names_a_segmentation_without_reading_it_as_a_radiograph(tmp_path: Path):
    path = one_bit_segmentation(tmp_path / "seg.dcm", frames=3)
    assert detect_kind(path) == NOT_RADIOGRAPH
    result = run_x2ct("info", str(path), "--json")
    assert result.returncode == 0 and result.stderr == ""
    data = json.loads(result.stdout)
    assert data["kind"] == "not-radiograph" and data["modality"] == "SEG"
    assert data["sop_class_uid"] == SOP_CLASSES["SEG"]
    assert data["description"] == (
        "DICOM Segmentation Storage object, Modality SEG (segmentation), not a chest radiograph"
    )


def test_object_without_an_image_is_named_even_when_forced(tmp_path: Path, capfd):
    ds = pydicom.dcmread(other_object(tmp_path / "rtstruct.dcm", "RTSTRUCT"))
    for keyword in ("Rows", "Columns", "PixelData"):
        del ds[keyword]
    save_part10(ds, tmp_path / "rtstruct.dcm")
    assert main(["info", str(tmp_path / "rtstruct.dcm"), "--json"]) == 0
    assert json.loads(capfd.readouterr().out)["description"].startswith("DICOM RT Structure Set Storage object")
    with pytest.raises(InputError, match="RT Structure Set Storage object.*: DICOM file holds no image"):
        read_input(tmp_path / "rtstruct.dcm", PA, force=True)


# --------------------------------------------------------------------------------------------------
# 4. Truncated DICOM files


def test_file_ending_inside_a_header_element_is_truncated(tmp_path: Path):
    path = write_dx(tmp_path / "whole.dcm")
    whole = path.read_bytes()
    value = pydicom.dcmread(path).SOPInstanceUID.encode()
    length = len(value) + len(value) % 2  # stored padded to an even length
    start = whole.rindex(value)  # the data set's copy (the file meta holds one too)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole[: start + 10])  # 10 bytes into SOPInstanceUID, before Rows/Columns
    expected = f"truncated DICOM: the file ends inside (0008,0018) SOPInstanceUID (10 of its {length} bytes)"
    with pytest.raises(InputError, match=re.escape(expected)):
        read_radiograph(cut)


def test_file_ending_between_elements_is_truncated(tmp_path: Path):
    path = write_dx(tmp_path / "whole.dcm")
    whole = path.read_bytes()
    pixel_tag = whole.rindex(PIXEL_DATA_TAG)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole[: pixel_tag + 6])  # inside the 12-byte header of PixelData
    with pytest.raises(InputError, match="truncated DICOM: the file ends inside the header of the element after"):
        read_radiograph(cut)


def test_file_ending_inside_uncompressed_pixel_data_is_truncated(tmp_path: Path):
    whole = write_dx(tmp_path / "whole.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole[:-1000])
    with pytest.raises(InputError, match=r"truncated DICOM: pixel data is \d+ bytes, the header needs \d+"):
        read_radiograph(cut)


@pytest.mark.parametrize("syntax", [uid.JPEGLosslessSV1, uid.RLELossless], ids=["JPEG-lossless", "RLE"])
def test_file_ending_inside_compressed_pixel_data_is_truncated(tmp_path: Path, syntax):
    whole = write_dx(tmp_path / "whole.dcm", transfer_syntax=syntax).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole[:-300])
    with pytest.raises(InputError, match="truncated DICOM: the file ends inside the compressed PixelData"):
        read_radiograph(cut)


def test_complete_file_without_pixel_data_is_not_called_truncated(tmp_path: Path):
    ds = pydicom.dcmread(write_dx(tmp_path / "x.dcm"))
    del ds["PixelData"]
    save_part10(ds, tmp_path / "x.dcm")
    with pytest.raises(InputError) as err:
        read_radiograph(tmp_path / "x.dcm")
    assert "holds no pixel data" in str(err.value) and "truncated" not in str(err.value)


def test_ct_reader_still_refuses_a_radiograph(tmp_path: Path):
    with pytest.raises(InputError, match="not a CT volume"):
        read_ct(write_dx(tmp_path / "dx.dcm"))
