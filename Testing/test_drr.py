"""Tests of the DRR projector (x2ct.drr): analytic ray sums, anatomy and orientation, autograd, files."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from x2ct import drr
from x2ct.geometry import CanonicalGrid, grid_of, labels_to_canonical, to_canonical

GEOM = drr.DRRGeometry()
MU = 0.02  # 1/mm, test phantom attenuation


def _axis_mm(n: int, spacing: float) -> torch.Tensor:
    """Voxel-centre coordinates (mm) from the cube centre along one canonical axis."""
    return (torch.arange(n, dtype=torch.float64) - (n - 1) / 2.0) * spacing


def _ellipsoid(n: int, semi_axes_dhw: Tuple[float, float, float], center_dhw=(0.0, 0.0, 0.0)) -> torch.Tensor:
    """(1, 1, n, n, n) canonical-grid ellipsoid of attenuation MU; one-voxel partial-volume ramp at its surface."""
    s = CanonicalGrid(size=n).spacing_mm
    d, h, w = torch.meshgrid(*[_axis_mm(n, s) - c for c in center_dhw], indexing="ij")
    a = semi_axes_dhw
    f = torch.sqrt((d / a[0]) ** 2 + (h / a[1]) ** 2 + (w / a[2]) ** 2).clamp_min(1e-9)
    grad = torch.sqrt((d / a[0] ** 2) ** 2 + (h / a[1] ** 2) ** 2 + (w / a[2] ** 2) ** 2) / f
    distance = (f - 1.0) / grad.clamp_min(1e-9)
    return (MU * (0.5 - distance / s).clamp(0.0, 1.0)).float()[None, None]


def _source_and_pixel(view: str, row: int, col: int, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Source and detector-pixel-centre positions (d, h, w) in mm from the isocentre, from the documented geometry."""
    pitch = GEOM.detector_spacing_mm(size)
    u_r, u_c = (row - (size - 1) / 2.0) * pitch, (col - (size - 1) / 2.0) * pitch
    far = GEOM.sid_mm - GEOM.sad_mm
    if view == "PA":  # source posterior (+h), detector anterior; columns along w
        return np.array([0.0, GEOM.sad_mm, 0.0]), np.array([u_r, -far, u_c])
    if view == "AP":
        return np.array([0.0, -GEOM.sad_mm, 0.0]), np.array([u_r, far, u_c])
    # LATERAL: source at patient right (-w), detector left; columns along h
    return np.array([0.0, 0.0, -GEOM.sad_mm]), np.array([u_r, u_c, far])


def _chord(src: np.ndarray, dst: np.ndarray, semi_axes, center=(0.0, 0.0, 0.0)) -> float:
    """Length (mm) of the segment of the line src->dst inside an ellipsoid."""
    a = np.asarray(semi_axes)
    o, v = (src - np.asarray(center)) / a, (dst - src) / a
    qa, qb, qc = v @ v, 2 * o @ v, o @ o - 1
    disc = qb * qb - 4 * qa * qc
    return 0.0 if disc <= 0 else math.sqrt(disc) / qa * float(np.linalg.norm(dst - src))


@pytest.mark.parametrize("view", ["PA", "LATERAL"])
def test_ray_sums_match_analytic_chords(view: str) -> None:
    semi = (120.0, 90.0, 110.0)  # (d, h, w) mm
    volume = _ellipsoid(128, semi)
    size = 33  # odd: the central pixel's ray passes through the isocentre
    image = drr.project(volume, CanonicalGrid(128).spacing_mm, view, size)[0, 0].numpy()
    centre = size // 2
    through_centre = 2 * semi[1] if view == "PA" else 2 * semi[2]
    assert image[centre, centre] == pytest.approx(MU * through_centre, rel=0.01)
    for row, col in [(9, 22), (24, 11), (16, 6)]:
        expected = MU * _chord(*_source_and_pixel(view, row, col, size), semi)
        assert expected > 1.0
        assert image[row, col] == pytest.approx(expected, rel=0.01), (row, col)


@pytest.mark.parametrize("view", ["PA", "AP", "LATERAL"])
def test_magnified_position_and_orientation(view: str) -> None:
    """A small ball inferior (+d), posterior (+h) and at the patient's left (+w) lands where the cone beam puts it."""
    centre = (50.0, 30.0, 70.0)
    ball = _ellipsoid(64, (15.0, 15.0, 15.0), centre)
    size = 64
    image = drr.project(ball, CanonicalGrid(64).spacing_mm, view, size)[0, 0].numpy()
    rows, cols = np.indices(image.shape)
    got = np.array([(image * rows).sum(), (image * cols).sum()]) / image.sum()
    src, _ = _source_and_pixel(view, 0, 0, size)
    axis = 1 if view in ("PA", "AP") else 2  # ray axis: h or w
    magnification = GEOM.sid_mm / abs(src[axis] - centre[axis])
    lateral_mm = centre[2] if axis == 1 else centre[1]  # column coordinate: w (PA/AP) or h (lateral)
    expected = (size - 1) / 2.0 + np.array([centre[0], lateral_mm]) * magnification / GEOM.detector_spacing_mm(size)
    np.testing.assert_allclose(got, expected, atol=0.25)
    assert got[0] > size / 2 and got[1] > size / 2  # inferior -> lower half; left (PA) / posterior (lateral) -> right


@pytest.mark.parametrize("view", ["PA", "AP", "LATERAL"])
def test_trilinear_matches_fine_grid_sample_ray_march(view: str) -> None:
    """Reference: per-ray entry/exit and a 0.02-voxel march with grid_sample(align_corners=False, border)."""
    torch.manual_seed(0)
    n, spacing, size = 12, 20.0, 7  # a 240 mm cube of smooth random mu
    coarse = torch.rand(1, 1, 4, 4, 4, dtype=torch.float64) * MU
    volume = torch.nn.functional.interpolate(coarse, size=(n, n, n), mode="trilinear", align_corners=True)
    got = drr.project(volume, spacing, view, size)[0, 0]
    half = n * spacing / 2.0
    expected = torch.zeros(size, size, dtype=torch.float64)
    for row in range(size):
        for col in range(size):
            src, dst = _source_and_pixel(view, row, col, size)
            ray = dst - src
            with np.errstate(divide="ignore"):
                t_a, t_b = (-half - src) / ray, (half - src) / ray
            t0 = max(0.0, np.nanmax(np.minimum(t_a, t_b)))
            t1 = min(1.0, np.nanmin(np.maximum(t_a, t_b)))
            if t1 <= t0:
                continue
            steps = int(n / 0.02)
            t = t0 + (torch.arange(steps, dtype=torch.float64) + 0.5) * (t1 - t0) / steps
            points = torch.from_numpy(src) + t[:, None] * torch.from_numpy(ray)  # (d, h, w) mm
            grid = (points.flip(-1) / half).view(1, 1, 1, steps, 3)  # grid_sample wants (x=w, y=h, z=d)
            values = torch.nn.functional.grid_sample(
                volume, grid, mode="bilinear", padding_mode="border", align_corners=False
            )
            expected[row, col] = values.sum() * (t1 - t0) / steps * float(np.linalg.norm(ray))
    torch.testing.assert_close(got[1:-1, 1:-1], expected[1:-1, 1:-1], rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(got, expected, rtol=5e-3, atol=1e-5)  # edge rays leave through side faces


def test_hu_units_and_normalizations() -> None:
    hu = torch.full((1, 1, 8, 8, 8), 0.0)  # water
    hu[..., :2, :, :] = -1024.0  # air, clamped to mu = 0
    line = drr.project(hu, 40.0, "PA", 5, units="hu")
    mu = drr.project(drr.hu_to_mu(hu), 40.0, "PA", 5)
    torch.testing.assert_close(line, mu)
    assert float(drr.hu_to_mu(torch.tensor(-1024.0))) == 0.0
    assert float(drr.hu_to_mu(torch.tensor(1000.0))) == pytest.approx(2 * drr.MU_WATER_PER_MM)
    scaled = drr.normalize(line, "minmax")
    assert float(scaled.min()) == 0.0 and float(scaled.max()) == pytest.approx(1.0)
    torch.testing.assert_close(drr.normalize(line, "beer-lambert"), 1.0 - torch.exp(-line))
    assert float(drr.normalize(torch.ones(1, 4, 4)).abs().max()) == 0.0  # constant image -> zeros
    with pytest.raises(ValueError):
        drr.normalize(line, "log")
    with pytest.raises(ValueError):
        drr.project(hu, 40.0, "axial", 5)
    with pytest.raises(ValueError):
        drr.DRRGeometry(sad_mm=1000.0, sid_mm=900.0)


def test_gradients_and_batching() -> None:
    torch.manual_seed(1)
    small = (torch.rand(1, 1, 4, 5, 6, dtype=torch.float64) * MU).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: drr.project(v, 30.0, "LATERAL", 3), (small,))
    volume = (torch.rand(2, 1, 16, 16, 16) * MU).requires_grad_(True)
    batched = drr.project(volume, 20.0, "PA", 12)
    batched.sum().backward()
    assert volume.grad is not None and torch.isfinite(volume.grad).all() and float(volume.grad.abs().sum()) > 0
    for i in range(2):
        torch.testing.assert_close(batched[i : i + 1], drr.project(volume[i : i + 1], 20.0, "PA", 12))
    channels = drr.project(volume.detach().reshape(1, 2, 16, 16, 16), 20.0, "PA", 12)
    torch.testing.assert_close(channels.reshape(2, 1, 12, 12), batched.detach())


def test_mean_projections_follow_display_convention() -> None:
    ball = _ellipsoid(64, (20.0, 20.0, 20.0), (60.0, -50.0, 80.0))  # inferior, anterior, patient left
    maps = drr.mean_projections(ball)
    assert maps["axial"].shape == maps["coronal"].shape == maps["sagittal"].shape == (1, 1, 64, 64)

    def peak(image: torch.Tensor) -> Tuple[int, int]:
        return divmod(int(image.reshape(-1).argmax()), image.shape[-1])

    coronal, sagittal = peak(maps["coronal"]), peak(maps["sagittal"])
    assert coronal[0] > 32 and coronal[1] > 32  # PA-like: inferior row, patient-left column
    assert sagittal[0] > 32 and sagittal[1] < 32  # lateral-like: inferior row, anterior column
    pa = drr.project(ball, CanonicalGrid(64).spacing_mm, "PA", 64)
    lateral = drr.project(ball, CanonicalGrid(64).spacing_mm, "LATERAL", 64)
    assert peak(pa)[0] > 32 and peak(pa)[1] > 32 and peak(lateral)[0] > 32 and peak(lateral)[1] < 32


@pytest.fixture(scope="module")
def chest(sample_ct_path: Path, sample_labels_path: Path, structures: Dict[str, int]):
    """Canonical 64³ sample CT, its float CT on the original grid, and label masks on the canonical grid."""
    ct = sitk.Cast(sitk.ReadImage(str(sample_ct_path)), sitk.sitkFloat32)
    canonical = to_canonical(ct, size=64)
    labels = sitk.GetArrayFromImage(labels_to_canonical(sitk.ReadImage(str(sample_labels_path)), canonical))
    groups = {
        "heart": [structures["heart"]],
        "lungs": list(range(10, 15)),
        "spine": [structures[f"vertebrae_T{i}"] for i in range(1, 13)],
        "liver": [structures["liver"]],
    }
    masks = {name: np.isin(labels, ids).astype(np.float32) for name, ids in groups.items()}
    return ct, canonical, masks


def _label_projections(masks: Dict[str, np.ndarray], view: str, size: int) -> Dict[str, np.ndarray]:
    """Each mask projected with the DRR projector (mm of the structure along each ray)."""
    stack = torch.from_numpy(np.stack(list(masks.values())))[None]
    out = drr.project(stack, CanonicalGrid(64).spacing_mm, view, size)[0].numpy()
    return dict(zip(masks, out))


def _centroid(image: np.ndarray) -> np.ndarray:
    rows, cols = np.indices(image.shape)
    return np.array([(image * rows).sum(), (image * cols).sum()]) / image.sum()


def test_anatomy_lands_where_labels_project(chest) -> None:
    ct, canonical, masks = chest
    size = 64
    grid = grid_of(canonical)
    pa = drr.render(canonical, "PA", size)
    lateral = drr.render(canonical, "LATERAL", size)
    assert pa.shape == lateral.shape == (size, size) and pa.dtype == np.float32
    assert 0.0 <= pa.min() and pa.max() == pytest.approx(1.0)
    # Any CT is first brought onto the canonical grid: same picture as rendering the canonical copy.
    assert np.corrcoef(drr.render(ct, "PA", size).ravel(), pa.ravel())[0, 1] > 0.999

    pa_labels = _label_projections(masks, "PA", size)
    lat_labels = _label_projections(masks, "LATERAL", size)
    heart_pa, spine_pa = _centroid(pa_labels["heart"]), _centroid(pa_labels["spine"])
    heart_lat, spine_lat = _centroid(lat_labels["heart"]), _centroid(lat_labels["spine"])

    # Independent of array axes: the heart's physical (LPS) centroid, cone-beam projected by hand.
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(grid.image_from_array(masks["heart"]), sitk.sitkUInt8))
    x, y, z = np.subtract(stats.GetCentroid(1), grid.center_lps)  # +x left, +y posterior, +z superior (mm)
    assert x > 0  # this patient's heart really is on the left
    pitch = GEOM.detector_spacing_mm(size)
    pa_expected = (size - 1) / 2 + np.array([-z, x]) * GEOM.sid_mm / (GEOM.sad_mm - y) / pitch
    lat_expected = (size - 1) / 2 + np.array([-z, y]) * GEOM.sid_mm / (GEOM.sad_mm + x) / pitch
    np.testing.assert_allclose(heart_pa, pa_expected, atol=1.0)
    np.testing.assert_allclose(heart_lat, lat_expected, atol=1.0)

    # Left/right in PA: heart on the image's right half (patient left), right of the midline spine.
    assert heart_pa[1] > size / 2 + 3 and heart_pa[1] > spine_pa[1] + 3
    assert abs(spine_pa[1] - (size - 1) / 2) < 3
    # Front/back in lateral: heart anterior (small column) of the spine.
    assert heart_lat[1] < spine_lat[1] - 5 and spine_lat[1] > size / 2
    # Up/down: lungs superior (smaller row) to the liver in both views.
    for view_labels in (pa_labels, lat_labels):
        assert _centroid(view_labels["lungs"])[0] + 5 < _centroid(view_labels["liver"])[0]

    # The DRR itself shows the anatomy there (mirror images would not).
    def mean_over(image: np.ndarray, region: np.ndarray) -> float:
        return float(image[region].mean())

    heart_only = (pa_labels["heart"] > 30) & (pa_labels["spine"] == 0)
    assert mean_over(pa, heart_only) > mean_over(pa, heart_only[:, ::-1]) + 0.05
    lungs_pa = (pa_labels["lungs"] > 60) & (pa_labels["heart"] == 0) & (pa_labels["spine"] == 0)
    assert mean_over(pa, lungs_pa) < mean_over(pa, pa_labels["liver"] > 60) - 0.1
    above_heart = np.arange(size) < np.nonzero(pa_labels["heart"].sum(1))[0][0]
    upper_thorax = above_heart & (pa_labels["spine"].sum(1) > 0)
    assert upper_thorax.sum() >= 5
    assert abs(int(np.argmax(pa[upper_thorax].mean(0))) - spine_pa[1]) <= 2  # spine = brightest column

    # Correlation of each DRR with a label projection beats its left-right (A-P) mirror and its up-down flip.
    def corr(image: np.ndarray, labels: np.ndarray) -> float:
        return float(np.corrcoef(image.ravel(), labels.ravel())[0, 1])

    lungs = pa_labels["lungs"]  # lung fields are dark in PA
    assert corr(pa, lungs) < corr(pa[:, ::-1], lungs) - 0.1 and corr(pa, lungs) < corr(pa[::-1], lungs) - 0.5
    for name in ("heart", "liver"):  # bright anteriorly (heart) and inferiorly (liver) in the lateral view
        assert corr(lateral, lat_labels[name]) > corr(lateral[:, ::-1], lat_labels[name]) + 0.1
    assert corr(lateral, lat_labels["liver"]) > corr(lateral[::-1], lat_labels["liver"]) + 0.3


def test_write_drrs_files(chest, tmp_path: Path) -> None:
    _, canonical, _ = chest
    size = 48
    written = drr.write_drrs(canonical, tmp_path / "out", views=("pa", "LATERAL"), size=size)
    assert set(written) == {"PA", "LATERAL"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["lateral.nrrd", "lateral.png", "pa.nrrd", "pa.png"]
    for view, paths in written.items():
        with Image.open(paths["png"]) as png:
            assert png.mode == "I;16" and png.size == (size, size)
            pixels = np.asarray(png)
        assert pixels.max() == 65535 and pixels.min() == 0
        image = sitk.ReadImage(str(paths["nrrd"]))
        assert image.GetDimension() == 2 and image.GetSize() == (size, size)
        assert image.GetPixelID() == sitk.sitkFloat32
        assert image.GetSpacing() == pytest.approx((500.0 / size,) * 2)
        assert float(image.GetMetaData("x2ct_isocenter_spacing_mm")) == pytest.approx(500.0 / size * 541.0 / 949.0)
        assert image.GetMetaData("x2ct_view") == view
        array = sitk.GetArrayFromImage(image)
        np.testing.assert_allclose(array, drr.render(canonical, view, size), atol=1e-6)
        np.testing.assert_allclose(pixels / 65535.0, array, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_cuda_matches_cpu() -> None:
    volume = _ellipsoid(64, (100.0, 80.0, 90.0))
    cpu = drr.project(volume, CanonicalGrid(64).spacing_mm, "LATERAL", 32)
    gpu = drr.project(volume.cuda(), CanonicalGrid(64).spacing_mm, "LATERAL", 32)
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)
