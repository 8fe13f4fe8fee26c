"""Reading CTs: formats, DICOM series choice, HU rescale, and one-line errors for bad inputs."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Optional

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

from x2ct.errors import InputError
from x2ct.io.ct import SeriesChoiceWarning, ct_info, read_ct
from x2ct.io.dicom_compat import save_part10, set_pixel_data
from x2ct.io.volume import write_volume


def _volume(shape_zyx=(20, 24, 28), seed: int = 0) -> sitk.Image:
    """A small HU volume with distinct, non-isotropic geometry (LPS)."""
    arr = np.random.default_rng(seed).integers(-1024, 1500, size=shape_zyx).astype(np.int16)
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((0.8, 0.9, 2.0))
    image.SetOrigin((-10.0, 20.0, -30.0))
    image.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))  # a RAS-stored-like orientation
    return image


def _write_plain_series(
    folder: Path,
    hu_zyx: np.ndarray,
    description: str,
    modality: str = "CT",
    sop_class: str = CTImageStorage,
    series_uid: Optional[str] = None,
) -> str:
    """An independent, minimal DICOM series (uint16 stored, intercept -1024), slices stepping +z by 2 mm."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    frame_uid, study_uid = generate_uid(), generate_uid()
    for k, plane in enumerate(hu_zyx):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality, ds.SeriesDescription, ds.PatientName, ds.PatientID = modality, description, "Test^P", "P1"
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-5.0, -6.0, 100.0 + 2.0 * k]
        ds.PixelSpacing = [0.7, 0.6]
        ds.SliceThickness = 2.0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        set_pixel_data(ds, (plane + 1024).astype(np.uint16), "MONOCHROME2", 12)
        save_part10(ds, folder / f"{series_uid[-6:]}_{k:03d}.dcm")
    return series_uid


def _hu(shape_zyx, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1024, 2000, size=shape_zyx).astype(np.int16)


# --- formats -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nii", "ct.nrrd", "ct.mha"])
def test_read_written_volume_formats(tmp_path, name):
    image = _volume()
    write_volume(image, tmp_path / name)
    back = read_ct(tmp_path / name)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-6)


@pytest.mark.parametrize("name", ["ct.mhd", "ct.nhdr"])
def test_read_header_plus_data_formats(tmp_path, name):
    image = _volume()
    sitk.WriteImage(image, str(tmp_path / name))
    back = read_ct(tmp_path / name)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)


def test_write_volume_refuses_unknown_ending(tmp_path):
    with pytest.raises(ValueError, match="ending"):
        write_volume(_volume(), tmp_path / "ct.png")
    assert list(tmp_path.iterdir()) == []


def test_float64_becomes_float32(tmp_path):
    image = sitk.Cast(_volume(), sitk.sitkFloat64)
    sitk.WriteImage(image, str(tmp_path / "ct.mha"))
    assert read_ct(tmp_path / "ct.mha").GetPixelID() == sitk.sitkFloat32


def test_read_dicom_series_folder_applies_rescale_and_geometry(tmp_path):
    hu = _hu((18, 20, 22))
    _write_plain_series(tmp_path / "s", hu, "plain")
    image = read_ct(tmp_path / "s")
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), hu)
    np.testing.assert_allclose(image.GetSpacing(), (0.6, 0.7, 2.0), atol=1e-6)  # (column, row, slice)
    np.testing.assert_allclose(image.GetOrigin(), (-5.0, -6.0, 100.0), atol=1e-6)
    np.testing.assert_allclose(image.GetDirection(), (1, 0, 0, 0, 1, 0, 0, 0, 1), atol=1e-6)


def test_single_dicom_file_reads_its_whole_series(tmp_path):
    hu = _hu((17, 20, 22), seed=3)
    _write_plain_series(tmp_path / "s", hu, "plain")
    one = sorted((tmp_path / "s").iterdir())[5]
    image = read_ct(one)
    assert image.GetSize() == (22, 20, 17)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), hu)


def test_series_in_subfolder_is_found(tmp_path):
    _write_plain_series(tmp_path / "export" / "DICOM" / "S1", _hu((16, 16, 16)), "nested")
    assert read_ct(tmp_path / "export").GetSize() == (16, 16, 16)


def test_folder_with_two_series_reads_the_larger_and_lists_both(tmp_path):
    small_uid = _write_plain_series(tmp_path, _hu((16, 20, 20), 1), "SMALL SERIES")
    large_hu = _hu((24, 20, 20), 2)
    large_uid = _write_plain_series(tmp_path, large_hu, "LARGE SERIES")
    with pytest.warns(SeriesChoiceWarning) as record:
        image = read_ct(tmp_path)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), large_hu)
    message = str(record[0].message)
    assert f"{large_uid} (24 files, 'LARGE SERIES')" in message
    assert f"{small_uid} (16 files, 'SMALL SERIES')" in message
    assert f"reading the largest {large_uid}" in message


def test_ct_info_is_json_serialisable(tmp_path):
    image = _volume()
    info = ct_info(image)
    assert json.loads(json.dumps(info)) == info
    arr = sitk.GetArrayViewFromImage(image)
    assert info["size"] == [28, 24, 20]
    assert info["spacing_mm"] == pytest.approx([0.8, 0.9, 2.0])
    assert info["origin_mm"] == pytest.approx([-10.0, 20.0, -30.0])
    assert info["direction"] == pytest.approx([1, 0, 0, 0, -1, 0, 0, 0, 1])
    assert info["hu_range"] == [float(arr.min()), float(arr.max())]


# --- user errors: one line naming the file --------------------------------------------------------


def _expect_input_error(path: Path, fragment: str) -> InputError:
    with pytest.raises(InputError) as info:
        read_ct(path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: ")
    assert fragment in info.value.problem, text
    return info.value


def test_missing_path(tmp_path):
    _expect_input_error(tmp_path / "nothing.nii.gz", "no such file")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    _expect_input_error(tmp_path / "empty", "empty folder")


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not dicom")
    _expect_input_error(tmp_path / "notes", "no DICOM series")


def test_garbage_file(tmp_path):
    path = tmp_path / "scan.nii.gz"
    path.write_bytes(b"\x00garbage" * 100)
    _expect_input_error(path, "cannot be read as a CT volume")


@pytest.mark.parametrize("name", ["cut.nii", "cut.nii.gz", "cut.nrrd", "cut.mha"])
def test_truncated_pixel_data(tmp_path, name):
    # ITK's NIfTI reader would silently zero-fill a truncated file; read_ct must refuse it.
    path = tmp_path / name
    write_volume(_volume(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header intact, pixels missing
    _expect_input_error(path, "corrupt")


def test_multi_member_gzip_nifti_is_complete(tmp_path):
    # A valid .nii.gz whose gzip trailer does not give the whole length (two gzip members).
    write_volume(_volume(), tmp_path / "ct.nii")
    raw = (tmp_path / "ct.nii").read_bytes()
    (tmp_path / "ct.nii.gz").write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    back = read_ct(tmp_path / "ct.nii.gz")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(_volume()))


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_damaged_or_missing_dicom_slice(tmp_path, damage):
    # GDCM silently drops an unreadable slice from the series; the gap it leaves must be refused.
    _write_plain_series(tmp_path / "s", _hu((20, 20, 20)), "plain")
    victim = sorted((tmp_path / "s").iterdir())[7]
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:-400])
    else:
        victim.unlink()
    error = _expect_input_error(tmp_path / "s", "missing, unreadable or unevenly spaced slices")
    assert "gap of 4.00 mm" in error.problem


def test_png_radiograph_is_2d(tmp_path):
    path = tmp_path / "cxr.png"
    sitk.WriteImage(sitk.Image([64, 80], sitk.sitkUInt8), str(path))
    _expect_input_error(path, "holds a 2D image, not a CT volume")


def test_single_slice_volume_is_2d(tmp_path):
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.Image([64, 64, 1], sitk.sitkInt16), str(path))
    _expect_input_error(path, "holds a 2D image, not a CT volume")


def test_dicom_radiograph_is_2d(tmp_path):
    uid = _write_plain_series(
        tmp_path / "dx", _hu((1, 40, 30)), "CHEST PA", modality="DX", sop_class=DigitalXRayImageStorageForPresentation
    )
    files = sorted((tmp_path / "dx").iterdir())
    assert pydicom.dcmread(files[0]).SeriesInstanceUID == uid
    _expect_input_error(files[0], "holds a 2D image (a DX radiograph), not a CT volume")
    _expect_input_error(tmp_path / "dx", "holds a 2D image")


def test_too_few_slices(tmp_path):
    path = tmp_path / "thin.nii.gz"
    write_volume(_volume((5, 64, 64)), path)
    _expect_input_error(path, "too few slices")


def test_rgb_volume(tmp_path):
    path = tmp_path / "colour.mha"
    sitk.WriteImage(sitk.Image([20, 20, 20], sitk.sitkVectorUInt8, 3), str(path))
    _expect_input_error(path, "3-component")


@pytest.mark.parametrize("dims", ["3000 20 20", "2000 2000 400"])
def test_absurd_size_refused_from_header(tmp_path, dims):
    path = tmp_path / "huge.mhd"
    path.write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = " + dims + "\nElementType = MET_SHORT\n"
        "ElementSpacing = 1 1 1\nElementDataFile = huge.raw\n"
    )  # the data file does not exist: only the header may be read
    _expect_input_error(path, "too large")
