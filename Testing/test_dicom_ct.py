"""The synthetic-CT DICOM series: synthetic markers, UIDs, provenance, geometry and atomic writing."""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import List

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, DigitalXRayImageStorageForPresentation, generate_uid

import x2ct
from x2ct.geometry import CanonicalGrid
from x2ct.io.ct import read_ct
from x2ct.io.dicom_compat import SYNTHETIC_DATA, set_pixel_data
from x2ct.io.dicom_ct import SyntheticProvenance, source_from_dataset, write_synthetic_ct_series

SHA = "3f" * 32


def _radiograph(view: str, study_uid: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Müller^Jürgen", "PID-7", "19600101", "M"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240102", "101500", "ACC42", "S1"
    ds.ReferringPhysicianName = "Ref^Doc"
    ds.ViewPosition = view
    return ds


@pytest.fixture(scope="module")
def sources() -> List[Dataset]:
    study = generate_uid()
    return [_radiograph("PA", study), _radiograph("LL", study)]


def _provenance(sources=()) -> SyntheticProvenance:
    return SyntheticProvenance(
        model_name="x2ctgan-demo",
        model_version="1.2",
        weights_sha256=SHA,
        inputs_description="PA and lateral chest radiographs",
        sources=[source_from_dataset(ds) for ds in sources],
    )


def _canonical_ct(size: int = 64, seed: int = 0) -> sitk.Image:
    hu = np.random.default_rng(seed).uniform(-1024, 1476, size=(size,) * 3).astype(np.float32)
    return CanonicalGrid(size=size, center_lps=(5.0, -12.0, 40.0)).image_from_array(hu)


@pytest.fixture(scope="module")
def series(tmp_path_factory, sources):
    """(files, datasets, image) of one series written with DICOM sources."""
    image = _canonical_ct()
    files = write_synthetic_ct_series(image, tmp_path_factory.mktemp("with") / "synthetic", _provenance(sources))
    return files, [pydicom.dcmread(f) for f in files], image


@pytest.fixture(scope="module")
def series_no_sources(tmp_path_factory):
    files = write_synthetic_ct_series(_canonical_ct(seed=1), tmp_path_factory.mktemp("without") / "s", _provenance())
    return [pydicom.dcmread(f) for f in files]


def _code(item: Dataset) -> tuple:
    return (item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning)


def test_every_slice_is_marked_synthetic(series):
    files, datasets, _ = series
    today = datetime.now().strftime("%Y%m%d")
    assert len(files) == 64 and all(f.exists() for f in files)
    for ds in datasets:
        assert ds.file_meta.MediaStorageSOPClassUID == CTImageStorage == ds.SOPClassUID
        assert ds.Modality == "CT" and ds.BodyPartExamined == "CHEST" and ds.PatientPosition == "HFS"
        assert ds[SYNTHETIC_DATA].value == "YES"  # by tag: pydicom 2.4 lacks the keyword
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
        assert ds.SeriesDescription.startswith("SYNTHETIC") and len(ds.SeriesDescription) <= 64
        assert ds.SeriesNumber == 901
        assert ds.ContentQualification == "RESEARCH"
        assert "x2ctgan-demo" in ds.DerivationDescription and SHA in ds.DerivationDescription
        assert "SYNTHETIC" in ds.ImageComments and "not for diagnosis" in ds.ImageComments
        assert ds.BurnedInAnnotation == "NO"
        assert ds.Manufacturer == "SlicerX2CT" and ds.SoftwareVersions == x2ct.__version__
        (equipment,) = ds.ContributingEquipmentSequence
        assert equipment.Manufacturer == "SlicerX2CT" and equipment.SoftwareVersions == x2ct.__version__
        assert [_code(c) for c in equipment.PurposeOfReferenceCodeSequence] == [
            ("109100", "DCM", "Synthesizing Equipment")
        ]
        # No invented acquisition: KVP present but empty, no acquisition date/time.
        assert "KVP" in ds and ds.KVP in (None, "")
        for keyword in ("AcquisitionDate", "AcquisitionTime", "AcquisitionDateTime"):
            assert keyword not in ds
        assert "PositionReferenceIndicator" in ds and not ds.PositionReferenceIndicator
        assert ds.ContentDate == ds.SeriesDate == today and ds.ContentTime and ds.SeriesTime
        assert ds.RescaleSlope == 1 and ds.RescaleIntercept == 0 and ds.RescaleType == "HU"
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 16, 15, 1)
        assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.pixel_array.dtype == np.int16
        assert list(ds.WindowCenter) == [-600, 40] and list(ds.WindowWidth) == [1500, 400]
        assert list(ds.WindowCenterWidthExplanation) == ["LUNG", "MEDIASTINUM"]
    assert [ds.InstanceNumber for ds in datasets] == list(range(1, 65))


def test_uids_new_and_shared(series, series_no_sources, sources):
    _, datasets, _ = series
    sops = [ds.SOPInstanceUID for ds in datasets]
    assert len(set(sops)) == len(sops)
    assert all(ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID for ds in datasets)
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert len({ds.FrameOfReferenceUID for ds in datasets}) == 1
    first, other = datasets[0], series_no_sources[0]
    source_uids = {str(s.SOPInstanceUID) for s in sources} | {str(s.SeriesInstanceUID) for s in sources}
    new_uids = {first.SeriesInstanceUID, first.FrameOfReferenceUID, *sops}
    assert not new_uids & source_uids
    assert first.FrameOfReferenceUID != first.SeriesInstanceUID
    assert other.SeriesInstanceUID != first.SeriesInstanceUID
    assert other.FrameOfReferenceUID != first.FrameOfReferenceUID


def test_dicom_sources_give_study_patient_and_source_images(series, sources):
    _, datasets, _ = series
    pa, lat = sources
    for ds in datasets:
        assert ds.StudyInstanceUID == pa.StudyInstanceUID
        assert str(ds.PatientName) == "Müller^Jürgen" and ds.PatientID == "PID-7"
        assert ds.PatientBirthDate == "19600101" and ds.PatientSex == "M"
        assert (ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID) == ("20240102", "101500", "ACC42", "S1")
        assert str(ds.ReferringPhysicianName) == "Ref^Doc"
        refs = ds.SourceImageSequence
        assert [(r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID) for r in refs] == [
            (pa.SOPClassUID, pa.SOPInstanceUID),
            (lat.SOPClassUID, lat.SOPInstanceUID),
        ]
        for ref in refs:
            assert [_code(c) for c in ref.PurposeOfReferenceCodeSequence] == [
                ("121322", "DCM", "Source image for image processing operation")
            ]


def test_without_dicom_sources_new_study_and_empty_patient(series, series_no_sources):
    study_uids = {ds.StudyInstanceUID for ds in series_no_sources}
    assert len(study_uids) == 1 and study_uids != {series[1][0].StudyInstanceUID}
    assert pydicom.uid.UID(study_uids.pop()).is_valid
    for ds in series_no_sources:
        assert "SourceImageSequence" not in ds
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
            assert keyword in ds and not ds[keyword].value
        assert ds[SYNTHETIC_DATA].value == "YES"  # by tag: pydicom 2.4 lacks the keyword


def test_canonical_slices_step_inferior(series):
    _, datasets, image = series
    spacing = image.GetSpacing()[2]
    origin = np.asarray(image.GetOrigin())
    for k, ds in enumerate(datasets):
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        ipp = [float(v) for v in ds.ImagePositionPatient]
        np.testing.assert_allclose(ipp, origin + [0, 0, -k * spacing], atol=1e-4)
        assert [float(v) for v in ds.PixelSpacing] == [5.0, 5.0]
        assert float(ds.SliceThickness) == float(ds.SpacingBetweenSlices) == 5.0
    z = [float(ds.ImagePositionPatient[2]) for ds in datasets]
    assert z[0] > z[-1], "InstanceNumber 1 is the most superior slice"


def test_pixels_are_rounded_and_clipped_hu(tmp_path):
    arr = np.full((16, 16, 16), -1024.4, dtype=np.float32)
    arr[0, 0, :3] = [40000.0, -40000.0, 12.6]
    image = CanonicalGrid(size=64).image_from_array(np.pad(arr, ((0, 48), (0, 48), (0, 48)), constant_values=-1024))
    files = write_synthetic_ct_series(image, tmp_path / "s", _provenance())
    first = pydicom.dcmread(files[0]).pixel_array
    assert list(first[0, :4]) == [32767, -32768, 13, -1024]


def _oblique_image() -> sitk.Image:
    """Anisotropic, non-cubic, rotated (tilted about two axes) test volume with integer HU."""
    arr = np.random.default_rng(5).integers(-1024, 1500, size=(18, 20, 30)).astype(np.int16)  # (k, j, i)
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((0.7, 0.9, 2.0))
    image.SetOrigin((-30.0, 12.5, 80.0))
    rotation = sitk.Euler3DTransform((0, 0, 0), 0.3, -0.2, 0.5)
    flip_k = np.diag([1.0, 1.0, -1.0])  # left-handed like the canonical grid
    image.SetDirection(tuple((np.asarray(rotation.GetMatrix()).reshape(3, 3) @ flip_k).ravel()))
    return image


def _corners(image: sitk.Image) -> np.ndarray:
    size = image.GetSize()
    return np.asarray(sorted(
        image.TransformIndexToPhysicalPoint([c * (n - 1) for c, n in zip(corner, size)])
        for corner in itertools.product((0, 1), repeat=3)
    ))


def test_any_direction_loads_back_with_same_hu_and_geometry(tmp_path):
    image = _oblique_image()
    files = write_synthetic_ct_series(image, tmp_path / "s", _provenance())
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    ds = pydicom.dcmread(files[3])
    np.testing.assert_allclose([float(v) for v in ds.ImageOrientationPatient], [*direction[:, 0], *direction[:, 1]],
                               atol=1e-6)
    assert [float(v) for v in ds.PixelSpacing] == [0.9, 0.7]  # [between rows (j), between columns (i)]
    assert (ds.Rows, ds.Columns) == (20, 30)
    expected_ipp = np.asarray(image.GetOrigin()) + 3 * 2.0 * direction[:, 2]
    np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], expected_ipp, atol=1e-4)

    # Slicer-style loading: GDCM series sorting + ITK reader (also what read_ct does).
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "s")))
    for back in (reader.Execute(), read_ct(tmp_path / "s")):
        np.testing.assert_allclose(_corners(back), _corners(image), atol=1e-3)
        np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-5)
        on_grid = sitk.Resample(back, image, sitk.Transform(), sitk.sitkNearestNeighbor, -5000)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(on_grid), sitk.GetArrayFromImage(image))


def test_folder_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "synthetic"
    calls = {"n": 0}
    real_save = Dataset.save_as

    def failing_save(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Dataset, "save_as", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_synthetic_ct_series(_canonical_ct(), target, _provenance())
    assert list(tmp_path.iterdir()) == [], "nothing, not even a temporary folder, is left behind"

    # An existing series is kept whole when the replacement fails.
    monkeypatch.setattr(Dataset, "save_as", real_save)
    old = write_synthetic_ct_series(_canonical_ct(), target, _provenance())
    old_uid = pydicom.dcmread(old[0]).SeriesInstanceUID
    calls["n"] = 0
    monkeypatch.setattr(Dataset, "save_as", failing_save)
    with pytest.raises(OSError):
        write_synthetic_ct_series(_canonical_ct(), target, _provenance())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]
    assert len(list(target.iterdir())) == 64
    assert {pydicom.dcmread(f).SeriesInstanceUID for f in old} == {old_uid}


@pytest.mark.parametrize(
    "arr, bits_stored",
    [(np.array([[0, 4096]], dtype=np.uint16), 12), (np.array([[-129, 0]], dtype=np.int16), 8),
     (np.zeros((2, 2), dtype=np.float32), 16)],
    ids=["over-12-bits", "under-signed-8-bits", "float"],
)
def test_set_pixel_data_refuses_what_does_not_fit(arr, bits_stored):
    with pytest.raises(ValueError):
        set_pixel_data(Dataset(), arr, "MONOCHROME2", bits_stored)


def test_provenance_source_entries_are_checked():
    with pytest.raises(ValueError, match="missing"):
        SyntheticProvenance("m", "1", SHA, sources=[{"sop_class_uid": "1.2"}])
    with pytest.raises(ValueError, match="unknown"):
        SyntheticProvenance("m", "1", SHA, sources=[{
            "sop_class_uid": "1.2", "sop_instance_uid": "1.3", "study_instance_uid": "1.4", "PatientName": "x"
        }])
