"""Does a lesion seen on the radiographs show up where it belongs in a generator's synthetic CT?

``x2ct lesion-check --model M`` paints a solid sphere (default 25 mm, 40 HU: soft tissue) into a lung
lobe of the bundled real chest CT (or a CT of yours with its TotalSegmentator-style label map),
renders the PA and lateral DRRs the way the data-set builder does (:func:`x2ct.data.builder.render_xrays`,
the model's training geometry and sizes), runs the generator on the radiographs with and without the
lesion, and compares the two synthetic CTs (HU, the model's canonical grid):

* **where**: the centre of the largest rise, i.e. the voxel where the difference (with − without),
  averaged over a ball of the lesion's size, is highest inside the lungs; its distance to the painted
  centre in mm. The lesion is **in place** when that distance is at most one lesion diameter;
* **how much**: the mean rise in HU over the painted sphere (resampled to the model's grid), and the same
  rise in the real CTs (with − without) for reference. The rise is **clear** when it reaches
  :data:`CLEAR_RISE_HU`.

Lobes: the TotalSegmentator ids of :data:`x2ct.data.lesions.LUNG_LOBE_LABELS` (left upper 10, left
lower 11, right upper 12, right middle 13, right lower 14). The centre is a seeded random voxel deep
enough inside the lobe that the whole sphere stays in it where the lobe allows (else the deepest voxel).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from ..errors import InputError, PathLike
from ..geometry import EXTENT_MM
from ..views import LATERAL_KEY, PA_KEY

LOBES = {10: "left upper", 11: "left lower", 12: "right upper", 13: "right middle", 14: "right lower"}
"""TotalSegmentator lung-lobe ids and names."""

LESION_HU = 40.0
"""HU of the painted solid lesion (soft tissue)."""

CLEAR_RISE_HU = 100.0
"""A mean rise over the lesion of at least this many HU counts as clear (lung parenchyma is about -850 HU,
so a solid lesion raises it by some 900 HU in the real CT)."""


@dataclass(frozen=True)
class LesionCheck:
    """The result for one painted lesion (module doc): positions in canonical voxel indices (d, h, w) of the
    model's grid and in mm; rises in HU."""

    lobe: int
    lobe_name: str
    diameter_mm: float
    centre_voxel: Tuple[float, float, float]
    found_voxel: Tuple[int, int, int]
    distance_mm: float
    rise_hu: float
    real_rise_hu: float
    in_place: bool
    clear: bool

    @property
    def shows(self) -> bool:
        """In place and with a clear rise."""
        return self.in_place and self.clear

    def to_dict(self) -> Dict[str, Any]:
        return {**asdict(self), "shows": self.shows}


def _ball(radius_voxels: float) -> np.ndarray:
    r = int(np.ceil(radius_voxels))
    grid = np.mgrid[-r : r + 1, -r : r + 1, -r : r + 1]
    return (grid**2).sum(axis=0) <= radius_voxels**2


def lesion_centre(labels: np.ndarray, lobe: int, radius_voxels: float, rng: np.random.Generator) -> np.ndarray:
    """A voxel (d, h, w) of ``lobe`` at least ``radius_voxels`` from the lobe's edge (the deepest voxel when
    none is); InputError when the label map has no such lobe."""
    inside = labels == lobe
    if not inside.any():
        raise InputError(None, f"the label map has no voxel of lobe {lobe} ({LOBES.get(lobe, 'unknown')})")
    depth = ndimage.distance_transform_edt(inside)
    candidates = np.argwhere(depth >= radius_voxels)
    if len(candidates) == 0:
        return np.array(np.unravel_index(int(np.argmax(depth)), depth.shape))
    return candidates[rng.integers(len(candidates))]


def paint_sphere(hu: np.ndarray, centre: Sequence[float], radius_voxels: float, value: float = LESION_HU) -> np.ndarray:
    """A copy of ``hu`` with the voxels whose centres lie within ``radius_voxels`` of ``centre`` set to ``value``."""
    d, h, w = np.indices(hu.shape, dtype=np.float32)
    inside = (d - centre[0]) ** 2 + (h - centre[1]) ** 2 + (w - centre[2]) ** 2 <= radius_voxels**2
    painted = hu.copy()
    painted[inside] = value
    return painted


def _model_inputs(hu: np.ndarray, model: Any, drr_size: int) -> Dict[str, torch.Tensor]:
    """The generator's radiographs of a canonical HU volume by input key, as its training data made them."""
    from ..data.builder import render_xrays
    from ..data.loader import xray_to_unit

    pa, lateral = render_xrays(hu, EXTENT_MM / hu.shape[0], drr_size, model.spec.geometry)
    images = {PA_KEY: pa, LATERAL_KEY: lateral} if model.biplanar else {PA_KEY: pa}
    return {key: torch.from_numpy(xray_to_unit(image, model.spec.size))[None, None].to(model.device)
            for key, image in images.items()}  # fmt: skip


def check_lesions(
    model_name: PathLike,
    lobes: Sequence[int] = tuple(LOBES),
    diameter_mm: float = 25.0,
    seed: int = 0,
    ct: Optional[PathLike] = None,
    labels: Optional[PathLike] = None,
    device: str = "cpu",
) -> List[LesionCheck]:
    """Paint one lesion per lobe of ``lobes`` (one at a time) and check it in the synthetic CT (module doc).

    ``ct`` / ``labels``: a CT and its label map (default: the bundled sample CT). The CT is brought onto the
    canonical grid at the size of the model's training data (its metadata), as the data-set builder does.
    """
    from ..data.body import masked_canonical_ct
    from ..geometry import labels_to_canonical
    from ..inference.models import load_model
    from ..inference.run import run_generator
    from ..intensity import hu_to_unit, unit_to_hu
    from ..io import read_ct
    from ..resources import sample_ct_path, sample_labels_path

    if not 4.0 <= diameter_mm <= 120.0:
        raise InputError(None, f"--diameter-mm {diameter_mm}: choose 4 to 120 mm")
    unknown = [lobe for lobe in lobes if lobe not in LOBES]
    if unknown:
        raise InputError(None, f"lobe(s) {unknown}: choose from {', '.join(f'{k} ({v})' for k, v in LOBES.items())}")
    model = load_model(str(model_name), device)
    data = model.metadata.training_data if isinstance(model.metadata.training_data, dict) else {}
    build = data.get("build") or {}
    size = int(build.get("size", model.spec.size))
    drr_size = int(build.get("drr_size", model.spec.drr_size))
    ct_path = Path(ct) if ct is not None else sample_ct_path()
    label_path = Path(labels) if labels is not None else sample_labels_path()
    image = read_ct(ct_path)
    canonical = masked_canonical_ct(image, size=size, source=ct_path)
    try:
        label_image = sitk.ReadImage(str(label_path))
    except RuntimeError as err:
        raise InputError(label_path, f"unreadable label map ({' '.join(str(err).split())[:160]})") from None
    label_array = sitk.GetArrayFromImage(labels_to_canonical(label_image, canonical))
    hu = sitk.GetArrayFromImage(canonical).astype(np.float32)
    rng = np.random.default_rng(seed)
    spacing = EXTENT_MM / size
    radius = diameter_mm / 2.0 / spacing

    def synthetic(volume: np.ndarray) -> np.ndarray:
        output = run_generator(model.module, _model_inputs(volume, model, drr_size))
        return unit_to_hu(output[0, 0].cpu().numpy())

    baseline = synthetic(hu)
    grid = baseline.shape[0]
    scale = grid / size  # data-grid voxel -> model-grid voxel
    lungs = np.isin(label_array, list(LOBES))
    lungs_model = ndimage.zoom(lungs.astype(np.float32), scale, order=1) >= 0.5 if scale != 1 else lungs
    ball = _ball(radius * scale)
    results = []
    for lobe in lobes:
        centre = lesion_centre(label_array, lobe, radius, rng)
        painted = paint_sphere(hu, centre, radius)
        rise = synthetic(painted) - baseline
        smoothed = ndimage.convolve(rise, ball.astype(np.float32) / ball.sum(), mode="constant")
        smoothed[~lungs_model] = -np.inf
        found = np.unravel_index(int(np.argmax(smoothed)), smoothed.shape)
        centre_model = (np.asarray(centre, dtype=np.float64) + 0.5) * scale - 0.5
        distance = float(np.linalg.norm((np.asarray(found) - centre_model) * (EXTENT_MM / grid)))
        sphere = paint_sphere(np.zeros(baseline.shape, np.float32), centre_model, radius * scale, 1.0) > 0
        real = unit_to_hu(hu_to_unit(painted)) - unit_to_hu(hu_to_unit(hu))  # the same clipping as the outputs
        real_model = ndimage.zoom(real, scale, order=1) if scale != 1 else real
        mean_rise = float(rise[sphere].mean())
        results.append(
            LesionCheck(
                lobe=int(lobe),
                lobe_name=LOBES[lobe],
                diameter_mm=float(diameter_mm),
                centre_voxel=tuple(round(float(c), 2) for c in centre_model),  # type: ignore[arg-type]
                found_voxel=tuple(int(i) for i in found),  # type: ignore[arg-type]
                distance_mm=round(distance, 1),
                rise_hu=round(mean_rise, 1),
                real_rise_hu=round(float(real_model[sphere].mean()), 1),
                in_place=distance <= diameter_mm,
                clear=mean_rise >= CLEAR_RISE_HU,
            )
        )
    return results
