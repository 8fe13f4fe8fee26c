"""The one volume convention, checked on real anatomy (sample chest CT + TotalSegmentator labels).

Canonical (D, H, W) = (superior->inferior, anterior->posterior, patient right->left); LPS direction
diag(1, 1, -1). The anatomy facts used: the heart lies left of and anterior to the thoracic spine,
the liver lies right of the spine, the lung apices are near the top of the cube and above the liver.
The same facts must hold in physical space after writing and reading NRRD, NIfTI and DICOM.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import pytest
import SimpleITK as sitk

from x2ct.geometry import (
    DIRECTION_LPS,
    EXTENT_MM,
    LPS_TO_RAS,
    CanonicalGrid,
    from_canonical,
    grid_of,
    labels_to_canonical,
    to_canonical,
)
from x2ct.intensity import AIR_HU
from x2ct.io.ct import read_ct
from x2ct.io.dicom_ct import SyntheticProvenance, write_synthetic_ct_series
from x2ct.io.volume import write_volume

LUNG_IDS = (10, 11, 12, 13, 14)


@pytest.fixture(scope="module")
def sample(sample_ct_path: Path, sample_labels_path: Path):
    return read_ct(sample_ct_path), read_ct(sample_labels_path)


@pytest.fixture(scope="module")
def canonical(sample) -> Dict[int, tuple]:
    """size -> (canonical CT float32 HU, canonical labels uint8)."""
    ct, labels = sample
    out = {}
    for size in (64, 128):
        cct = to_canonical(ct, size=size)
        out[size] = (cct, labels_to_canonical(labels, cct))
    return out


@pytest.fixture(scope="module")
def ids(structures: Dict[str, int]) -> Dict[str, List[int]]:
    spine = [structures[f"vertebrae_T{n}"] for n in range(1, 13)]
    assert spine == list(range(43, 31, -1))
    return {"heart": [structures["heart"]], "spine": spine, "liver": [structures["liver"]], "lungs": list(LUNG_IDS)}


def _mask_indices_dhw(labels: sitk.Image, values: Sequence[int]) -> np.ndarray:
    found = np.argwhere(np.isin(sitk.GetArrayViewFromImage(labels), values))
    assert len(found) > 50, f"labels {values} nearly absent"
    return found


def _centroid_dhw(labels: sitk.Image, values: Sequence[int]) -> np.ndarray:
    return _mask_indices_dhw(labels, values).mean(axis=0)


def _centroid_lps(labels: sitk.Image, values: Sequence[int]) -> np.ndarray:
    k, j, i = _centroid_dhw(labels, values)
    return np.asarray(labels.TransformContinuousIndexToPhysicalPoint((float(i), float(j), float(k))))


def _assert_anatomy_lps(labels: sitk.Image, ids: Dict[str, List[int]]) -> None:
    """Direction-independent anatomy facts in LPS (+x left, +y posterior, +z superior)."""
    heart, spine, liver, lungs = (_centroid_lps(labels, ids[n]) for n in ("heart", "spine", "liver", "lungs"))
    assert heart[0] > spine[0] + 10, "heart must be left of the spine (LPS x larger)"
    assert liver[0] < spine[0] - 10, "liver must be right of the spine (LPS x smaller)"
    assert heart[1] < spine[1] - 20, "heart must be anterior to the spine (LPS y smaller)"
    assert lungs[2] > liver[2] + 30, "lungs must be superior to the liver (LPS z larger)"


def _corners_lps(image: sitk.Image) -> np.ndarray:
    size = image.GetSize()
    corners = [image.TransformIndexToPhysicalPoint([c * (n - 1) for c, n in zip(corner, size)])
               for corner in itertools.product((0, 1), repeat=3)]
    return np.asarray(sorted(corners))


def _assert_same_physical_grid(expected: sitk.Image, actual: sitk.Image) -> None:
    """Same voxel centres in space (index order may differ, e.g. DICOM stacks sorted bottom-up)."""
    assert sorted(actual.GetSize()) == sorted(expected.GetSize())
    np.testing.assert_allclose(sorted(actual.GetSpacing()), sorted(expected.GetSpacing()), atol=1e-4)
    np.testing.assert_allclose(_corners_lps(actual), _corners_lps(expected), atol=1e-3)


# --- the convention on the canonical grid -------------------------------------------------------


@pytest.mark.parametrize("size", [64, 128])
def test_canonical_array_axes_follow_anatomy(canonical, ids, size):
    cct, labels = canonical[size]
    assert cct.GetSize() == (size,) * 3 and labels.GetPixelID() == sitk.sitkUInt8
    heart, spine, liver = (_centroid_dhw(labels, ids[n]) for n in ("heart", "spine", "liver"))
    d, h, w = 0, 1, 2
    assert heart[w] > spine[w] + 0.03 * size, "W runs patient right -> left: heart at larger W than spine"
    assert liver[w] < spine[w], "liver (patient right) at smaller W than spine"
    assert heart[h] < spine[h] - 0.05 * size, "H runs anterior -> posterior: heart at smaller H than spine"
    lungs = _mask_indices_dhw(labels, ids["lungs"])
    assert lungs[:, d].min() < 0.15 * size, "D runs superior -> inferior: lung apices in the first slices"
    assert lungs[:, d].mean() < liver[d], "lungs above (smaller D than) the liver"
    assert cct.GetPixelID() == sitk.sitkFloat32


@pytest.mark.parametrize("size", [64, 128])
def test_canonical_anatomy_in_physical_space_lps_and_ras(sample, canonical, ids, size):
    _assert_anatomy_lps(sample[1], ids)  # the source data itself (direction diag(1,-1,1))
    cct, labels = canonical[size]
    _assert_anatomy_lps(labels, ids)
    ijk_to_ras = grid_of(cct).ijk_to_ras()

    def ras(name: str) -> np.ndarray:
        k, j, i = _centroid_dhw(labels, ids[name])
        return (ijk_to_ras @ np.array([i, j, k, 1.0]))[:3]

    heart, spine, lungs, liver = ras("heart"), ras("spine"), ras("lungs"), ras("liver")
    assert heart[0] < spine[0] and liver[0] > spine[0], "RAS +x is patient right"
    assert heart[1] > spine[1], "RAS +y is anterior"
    assert lungs[2] > liver[2], "RAS +z is superior"


def test_grid_matrices_match_simpleitk(canonical):
    cct, _ = canonical[128]
    grid = grid_of(cct)
    assert grid.size == 128 and grid.spacing_mm == pytest.approx(2.5)
    np.testing.assert_allclose(cct.GetDirection(), DIRECTION_LPS)
    np.testing.assert_allclose(cct.TransformContinuousIndexToPhysicalPoint([63.5] * 3), grid.center_lps, atol=1e-6)
    rng = np.random.default_rng(0)
    for ijk in [(0, 0, 0), (127, 127, 127), (5, 60, 100)] + [tuple(int(v) for v in rng.integers(0, 128, 3))]:
        lps = grid.ijk_to_lps() @ np.array([*ijk, 1.0])
        np.testing.assert_allclose(lps[:3], cct.TransformIndexToPhysicalPoint(ijk), atol=1e-6)
        ras = grid.ijk_to_ras() @ np.array([*ijk, 1.0])
        np.testing.assert_allclose(ras[:3], lps[:3] * [-1, -1, 1], atol=1e-6)
    np.testing.assert_allclose(LPS_TO_RAS @ LPS_TO_RAS, np.eye(4))
    # Voxel (0, 0, 0) is the superior, anterior, patient-right corner.
    x0, y0, z0 = grid.origin_lps
    cx, cy, cz = grid.center_lps
    assert x0 < cx and y0 < cy and z0 > cz


@pytest.mark.parametrize("size,spacing", [(64, 5.0), (128, 2.5), (256, 1.25)])
def test_grid_sizes_and_spacing(size, spacing):
    grid = CanonicalGrid(size=size, center_lps=(10.0, -20.0, 30.0))
    assert grid.spacing_mm == spacing and grid.shape_dhw == (size,) * 3
    ref = grid.reference_image()
    assert ref.GetSize() == (size,) * 3 and ref.GetSpacing() == (spacing,) * 3
    assert grid_of(ref) == grid
    corners = _corners_lps(ref)
    np.testing.assert_allclose(corners.max(0) - corners.min(0), [EXTENT_MM - spacing] * 3)


def test_grid_rejects_other_sizes():
    with pytest.raises(ValueError):
        CanonicalGrid(size=100)
    with pytest.raises(ValueError):
        grid_of(sitk.Image([128, 128, 64], sitk.sitkFloat32))


def test_from_canonical_correlates_with_original(sample, canonical):
    ct = sample[0]
    back = from_canonical(canonical[128][0], ct)
    inside = from_canonical(sitk.Image(canonical[128][0]) * 0 + 1, ct, default_value=0)
    mask = sitk.GetArrayViewFromImage(inside) > 0.999
    assert mask.mean() > 0.5
    a = sitk.GetArrayViewFromImage(ct)[mask]
    b = sitk.GetArrayViewFromImage(back)[mask]
    assert np.corrcoef(a, b)[0, 1] > 0.9
    assert np.all(sitk.GetArrayViewFromImage(back)[~mask] == AIR_HU)


def test_small_ct_is_padded_with_air(sample):
    small = sample[0][40:80, 40:80, 50:90]  # 100 mm cube around the mediastinum
    cct = to_canonical(small, size=64)
    arr = sitk.GetArrayViewFromImage(cct)
    for face in (arr[0], arr[-1], arr[:, 0], arr[:, -1], arr[:, :, 0], arr[:, :, -1]):
        assert np.all(face == AIR_HU)
    assert (arr == AIR_HU).mean() > 0.9
    assert arr[32, 32, 32] != AIR_HU


def test_to_canonical_accepts_integer_ct(sample):
    assert sample[0].GetPixelID() == sitk.sitkInt16
    assert to_canonical(sample[0], size=64).GetSize() == (64, 64, 64)


# --- round trips through the writers keep anatomy and geometry --------------------------------------


def _roundtrip(image: sitk.Image, fmt: str, folder: Path) -> sitk.Image:
    if fmt == "dicom":
        write_synthetic_ct_series(image, folder / "series", SyntheticProvenance("test", "0", "0" * 64))
        return read_ct(folder / "series")
    path = folder / f"volume{fmt}"
    write_volume(image, path)
    return read_ct(path)


@pytest.mark.parametrize("fmt", [".nrrd", ".nii.gz", "dicom"])
def test_round_trip_keeps_anatomy_and_geometry(canonical, ids, fmt, tmp_path):
    cct, labels = canonical[64]
    (tmp_path / "ct").mkdir()
    (tmp_path / "labels").mkdir()
    ct_back = _roundtrip(cct, fmt, tmp_path / "ct")
    labels_back = _roundtrip(labels, fmt, tmp_path / "labels")
    for original, back in ((cct, ct_back), (labels, labels_back)):
        _assert_same_physical_grid(original, back)
        if fmt != "dicom":
            np.testing.assert_allclose(back.GetOrigin(), original.GetOrigin(), atol=1e-4)
            np.testing.assert_allclose(back.GetDirection(), original.GetDirection(), atol=1e-6)
    _assert_anatomy_lps(labels_back, ids)
    # Voxel values arrive at the same physical places (nearest-neighbour resampling onto the original grid).
    on_grid = sitk.Resample(labels_back, labels, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(on_grid), sitk.GetArrayViewFromImage(labels))
    hu = sitk.GetArrayFromImage(sitk.Resample(ct_back, cct, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    np.testing.assert_allclose(hu, sitk.GetArrayViewFromImage(cct), atol=0.5 if fmt == "dicom" else 0)


def test_nifti_affine_is_ras_for_an_independent_reader(canonical, tmp_path):
    nibabel = pytest.importorskip("nibabel")
    cct, _ = canonical[64]
    write_volume(cct, tmp_path / "ct.nii.gz")
    affine = nibabel.load(str(tmp_path / "ct.nii.gz")).affine
    np.testing.assert_allclose(affine, grid_of(cct).ijk_to_ras(), atol=1e-4)
