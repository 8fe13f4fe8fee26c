"""The one reader of built data sets (``DATA/manifest.csv`` + ``DATA/<case>/ct_xray_data.h5``) and the one collate.

Generators, classifiers, their evaluations and ``x2ct synthesize-ct`` all read cases through
:func:`read_case` (arrays) or :class:`CaseDataset` (tensors), and stack them with :func:`collate`.

The transform is the official X2CT-GAN loader's (kylekma/X2CT, ``3DGAN/lib/dataset``), the same for
training and testing, with no augmentation:

1. resize with ``scipy.ndimage.zoom(order=1)`` to the model's grid: CT to (S, S, S), each
   radiograph to (S, S) (a no-op when the stored size is already S);
2. CT clipped to the stored range [0, 2500] (= HU -1024..1476) and divided by 2500; radiographs
   divided by 255 (they are stored as per-image min-max uint8 DRRs, see docs/datasets.md);
3. rounded to 6 decimals (official), float32.

Images are keyed by input key (:data:`x2ct.views.INPUT_KEYS`): ``pa`` (stored ``xray1``), ``lateral``
(``xray2``) and ``ct``, in the canonical orders of :mod:`x2ct.geometry` and :mod:`x2ct.views`. The
CT can come from the case file (``ct_source="real"``) or from a folder of synthetic CTs
(``FOLDER/<case_id>/synthetic_ct.nrrd``, as ``x2ct synthesize-ct`` and ``x2ct predict --manifest``
write them). Items depend only on the files, so a data set is deterministic; the order of a
training epoch is chosen by the training engine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import h5py
import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from ..errors import InputError, PathLike
from ..geometry import grid_of
from ..intensity import HU_OFFSET, UNIT_RANGE
from ..views import CT_KEY, INPUT_KEYS, LATERAL_KEY, PA_KEY
from .layout import MANIFEST, SPLITS, read_manifest

XRAY_RANGE = 255.0
"""Radiographs are stored as uint8 0..255 and divided by this (official XRAY*_MIN_MAX [0, 255])."""

DECIMALS = 6
"""The official loader rounds every normalised array to this many decimals."""

STORED_NAMES = {PA_KEY: "xray1", LATERAL_KEY: "xray2", CT_KEY: "ct"}
"""HDF5 dataset of each input key (official names)."""

REAL_CT = "real"
"""``ct_source`` meaning the case file's own CT."""

SYNTHETIC_CT_FILE = "synthetic_ct.nrrd"
"""File name of a case's CT inside a CT-source folder (``x2ct synthesize-ct`` / ``x2ct predict`` output)."""


# ------------------------------------------------------------------------------------------ transforms


def resize(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``scipy.ndimage.zoom(order=1)`` of ``array`` to ``shape`` in float64 (the official ``Resize_image``;
    interpolating in float64 rather than the stored integer type avoids re-quantising). No-op if equal.
    ``mode="nearest"``: for some factors (256 -> 768) rounding puts the last output row's sample a hair outside
    the input, where the default ``constant`` mode would give 0."""
    array = np.asarray(array, dtype=np.float64)
    if tuple(array.shape) == tuple(shape):
        return array
    factors = [t / s for t, s in zip(shape, array.shape)]
    out = ndimage.zoom(array, factors, order=1, mode="nearest")
    if out.shape != tuple(shape):  # zoom rounds the output shape; never happens for integer ratios
        raise ValueError(f"resize {array.shape} -> {tuple(shape)} gave {out.shape}")
    return out


def ct_to_unit(stored: np.ndarray, size: int) -> np.ndarray:
    """Stored CT (HU + 1024, (D, H, W)) -> float32 (size, size, size) in [0, 1]: resize, clip, /2500, round to
    6 decimals (in float64, as the official numpy transform), then float32."""
    ct = resize(stored, (size, size, size))
    return np.round(np.clip(ct, 0.0, UNIT_RANGE) / UNIT_RANGE, DECIMALS).astype(np.float32)


def xray_to_unit(stored: np.ndarray, size: int) -> np.ndarray:
    """Stored radiograph (uint8 0..255, (rows, cols)) -> float32 (size, size) in [0, 1]: resize, /255, round
    (float64), then float32."""
    xray = resize(stored, (size, size))
    return np.round(np.clip(xray, 0.0, XRAY_RANGE) / XRAY_RANGE, DECIMALS).astype(np.float32)


# ------------------------------------------------------------------------------------------- files


def _unreadable(path: Path, err: BaseException) -> InputError:
    return InputError(path, f"unreadable case file ({' '.join(str(err).split())})")


def read_case(path: Path, sizes: Mapping[str, int]) -> Dict[str, np.ndarray]:
    """The images of one case file for the input keys of ``sizes`` (key -> model grid edge), on the unit
    scale: ``pa`` / ``lateral`` (S, S) through :func:`xray_to_unit`, ``ct`` (S, S, S) through
    :func:`ct_to_unit`. InputError for an unreadable file or an image of the wrong rank."""
    unknown = [key for key in sizes if key not in STORED_NAMES]
    if unknown:
        raise ValueError(f"unknown input key(s) {unknown}; expected {', '.join(INPUT_KEYS)}")
    try:
        with h5py.File(path, "r") as f:
            stored = {key: f[STORED_NAMES[key]][...] for key in sizes}
    except (OSError, KeyError) as err:
        raise _unreadable(path, err) from None
    images: Dict[str, np.ndarray] = {}
    for key, array in stored.items():
        rank = 3 if key == CT_KEY else 2
        if array.ndim != rank:
            raise InputError(path, f"{STORED_NAMES[key]} has shape {array.shape}, expected {rank} dimensions")
        images[key] = (ct_to_unit if key == CT_KEY else xray_to_unit)(array, int(sizes[key]))
    return images


def case_attributes(path: Path) -> Dict[str, Any]:
    """The HDF5 attributes of a case file as Python values (build conventions, geometry, targets)."""
    try:
        with h5py.File(path, "r") as f:
            return {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in f.attrs.items()}
    except OSError as err:
        raise _unreadable(path, err) from None


@dataclass(frozen=True)
class CaseLesions:
    """The lesion masks of a synthetic case: ``masks`` kind -> (D, H, W) bool on the case's canonical grid
    (only kinds present), with what is needed to project them as the case's DRRs were rendered."""

    masks: Dict[str, np.ndarray]
    spacing_mm: Tuple[float, float, float]
    sad_mm: float
    sid_mm: float
    detector_mm: float
    drr_size: int


def read_lesions(path: Path, kinds: Sequence[str]) -> Optional[CaseLesions]:
    """The masks of ``kinds`` present in a case file (``lesions/<kind>``), or None when it holds none of them."""
    try:
        with h5py.File(path, "r") as f:
            if "lesions" not in f:
                return None
            masks = {kind: f[f"lesions/{kind}"][...] > 0 for kind in kinds if kind in f["lesions"]}
            attrs = dict(f.attrs)
            spacing = tuple(float(s) for s in f["spacing"][...])
    except (OSError, KeyError) as err:
        raise _unreadable(path, err) from None
    masks = {kind: mask for kind, mask in masks.items() if mask.any()}
    if not masks:
        return None
    return CaseLesions(
        masks=masks,
        spacing_mm=spacing,  # type: ignore[arg-type]
        sad_mm=float(attrs["sad_mm"]),
        sid_mm=float(attrs["sid_mm"]),
        detector_mm=float(attrs["detector_mm"]),
        drr_size=int(attrs["drr_size"]),
    )


def lesion_union(path: Path, size: int) -> np.ndarray:
    """The union of every lesion mask of a case file on a (size, size, size) grid, float32 0/1: a grid voxel is
    lesion when any stored voxel it covers is (all zeros for a case without lesions)."""
    from .synthetic import LESION_KINDS

    lesions = read_lesions(path, LESION_KINDS)
    if lesions is None:
        return np.zeros((size,) * 3, np.float32)
    union = torch.from_numpy(np.any(list(lesions.masks.values()), axis=0).astype(np.float32))[None, None]
    if union.shape[-1] >= size:
        resized = torch.nn.functional.adaptive_max_pool3d(union, size)
    else:
        resized = torch.nn.functional.interpolate(union, size=(size,) * 3, mode="nearest")
    return resized[0, 0].numpy()


def synthetic_ct_path(ct_source: PathLike, case_id: str) -> Path:
    """``ct_source/<case_id>/synthetic_ct.nrrd``."""
    return Path(os.fspath(ct_source)) / case_id / SYNTHETIC_CT_FILE


def read_synthetic_ct(path: Path, size: int) -> np.ndarray:
    """A CT-source volume as (size, size, size) float32 unit scale (through :func:`ct_to_unit`); InputError when
    unreadable or off the canonical grid (320 mm cube, spacing 320/n mm, canonical direction)."""
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise InputError(path, f"unreadable CT ({' '.join(str(err).split())[:160]})") from None
    try:
        grid_of(image)
    except ValueError as err:
        raise InputError(path, f"not on the canonical grid ({err}); write it with x2ct synthesize-ct") from None
    hu = sitk.GetArrayFromImage(image).astype(np.float32)
    return ct_to_unit(hu + np.float32(HU_OFFSET), size)


# ------------------------------------------------------------------------------------- data set, batch


@dataclass
class CaseItem:
    """One case as model inputs: ``images`` by input key, (1, S, S) or (1, S, S, S) float32; ``target``
    (K,) float32 labels when the data set has labels; ``lesions`` (1, S, S, S) float32 0/1, the union of the
    case's lesion masks on the CT's grid, when asked for."""

    case_id: str
    images: Dict[str, torch.Tensor]
    target: Optional[torch.Tensor] = None
    lesions: Optional[torch.Tensor] = None


@dataclass
class Batch:
    """Stacked :class:`CaseItem` s: ``images`` by input key, (N, 1, ...); ``target`` (N, K) or None; ``lesions``
    (N, 1, S, S, S) or None."""

    case_ids: List[str]
    images: Dict[str, torch.Tensor]
    target: Optional[torch.Tensor] = None
    lesions: Optional[torch.Tensor] = None

    def inputs(self, keys: Sequence[str]) -> Dict[str, torch.Tensor]:
        """The images of ``keys`` (a classifier's inputs)."""
        return {key: self.images[key] for key in keys}


def collate(items: Sequence[CaseItem], device: Optional[torch.device] = None) -> Batch:
    """Stack items into a :class:`Batch`, on ``device`` when given."""

    def stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        tensor = torch.stack(list(tensors))
        return tensor.to(device) if device is not None else tensor

    first = items[0]
    images = {key: stack([item.images[key] for item in items]) for key in first.images}
    target = stack([item.target for item in items]) if first.target is not None else None  # type: ignore[misc]
    lesions = stack([item.lesions for item in items]) if first.lesions is not None else None  # type: ignore[misc]
    return Batch([item.case_id for item in items], images, target, lesions)


def generator_sizes(size: int, views: int) -> Dict[str, int]:
    """The images a generator trains on: the CT and the PA (and with ``views=2`` the lateral), all at ``size``."""
    if views not in (1, 2):
        raise ValueError(f"views must be 1 or 2, got {views}")
    keys = (CT_KEY, PA_KEY) if views == 1 else (CT_KEY, PA_KEY, LATERAL_KEY)
    return {key: int(size) for key in keys}


@dataclass
class _Case:
    case_id: str
    path: Path
    target: Optional[Tuple[int, ...]] = None


class CaseDataset(torch.utils.data.Dataset):
    """The cases of a built data set as :class:`CaseItem` s with the images of ``sizes`` (input key -> edge).

    Cases: the manifest's ``split`` (``train``, ``val``, ``test`` or ``all``), or ``targets``, an ordered
    mapping case id -> labels, for labelled subsets (classifiers). ``ct_source``: ``"real"`` (the case
    file's CT) or a folder of synthetic CTs. With ``cache`` items stay in memory after their first read
    (a 64³ case is about 1 MB). With ``lesions`` items carry the union of the case's lesion masks
    (:func:`lesion_union`, on the CT's grid). Raises InputError when the folder, its manifest, a case file or a
    synthetic CT is missing, or when the split has no case.
    """

    def __init__(
        self,
        root: PathLike,
        split: str,
        sizes: Mapping[str, int],
        *,
        cache: bool = True,
        ct_source: Union[str, PathLike] = REAL_CT,
        targets: Optional[Mapping[str, Sequence[int]]] = None,
        lesions: bool = False,
    ) -> None:
        if split not in (*SPLITS, "all"):
            raise InputError(None, f"split {split!r}: choose one of {', '.join(SPLITS)} or all")
        self.root = Path(os.fspath(root))
        self.split, self.sizes, self.cache, self.lesions = split, dict(sizes), cache, lesions
        rows = read_manifest(self.root)
        paths = {row["case_id"]: self.root / row["path"] for row in rows}
        if targets is None:
            self.cases = [_Case(r["case_id"], paths[r["case_id"]]) for r in rows if split in ("all", r["split"])]
            if not self.cases:
                raise InputError(self.root / MANIFEST, f"has no case in the {split!r} split ({len(rows)} cases in all)")
        else:
            self.cases = [_Case(case_id, paths[case_id], tuple(t)) for case_id, t in targets.items()]
        for case in self.cases:
            if not case.path.is_file():
                raise InputError(case.path, f"case {case.case_id} listed in the manifest is missing")
        self.ct_source = REAL_CT if str(ct_source) == REAL_CT else Path(os.fspath(ct_source))
        if CT_KEY in self.sizes and isinstance(self.ct_source, Path):
            if not self.ct_source.is_dir():
                raise InputError(self.ct_source, "CT source folder not found (write one with x2ct synthesize-ct)")
            for case in self.cases:
                file = synthetic_ct_path(self.ct_source, case.case_id)
                if not file.is_file():
                    raise InputError(file, f"missing: no synthetic CT for case {case.case_id} in the CT source folder")
        self._cache: Dict[int, CaseItem] = {}

    @property
    def case_ids(self) -> List[str]:
        return [case.case_id for case in self.cases]

    def case_file(self, index: int) -> Path:
        """The HDF5 file of case ``index`` (``DATA/<case_id>/ct_xray_data.h5``)."""
        return self.cases[index].path

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> CaseItem:
        if index in self._cache:
            return self._cache[index]
        case = self.cases[index]
        synthetic = CT_KEY in self.sizes and isinstance(self.ct_source, Path)
        from_file = {k: s for k, s in self.sizes.items() if not (synthetic and k == CT_KEY)}
        arrays = read_case(case.path, from_file)
        if synthetic:
            arrays[CT_KEY] = read_synthetic_ct(synthetic_ct_path(self.ct_source, case.case_id), self.sizes[CT_KEY])
        images = {key: torch.from_numpy(arrays[key][None]) for key in INPUT_KEYS if key in arrays}
        target = None if case.target is None else torch.tensor(case.target, dtype=torch.float32)
        lesions = None
        if self.lesions:
            lesions = torch.from_numpy(lesion_union(case.path, self.sizes.get(CT_KEY, 128)))[None]
        item = CaseItem(case.case_id, images, target, lesions)
        if self.cache:
            self._cache[index] = item
        return item


__all__ = [
    "Batch",
    "CaseDataset",
    "CaseItem",
    "CaseLesions",
    "REAL_CT",
    "SYNTHETIC_CT_FILE",
    "case_attributes",
    "collate",
    "ct_to_unit",
    "generator_sizes",
    "lesion_union",
    "read_case",
    "read_lesions",
    "read_synthetic_ct",
    "resize",
    "synthetic_ct_path",
    "xray_to_unit",
]
