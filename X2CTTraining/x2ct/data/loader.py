"""Torch data set over a built data set (``OUT/manifest.csv`` + ``OUT/<case>/ct_xray_data.h5``).

The transform is the official X2CT-GAN loader's (reference/x2ct_official.md §3.3), the same for
training and testing, with no augmentation:

1. resize with ``scipy.ndimage.zoom(order=1)`` to the model's grid: CT to (S, S, S), each
   radiograph to (S, S) (a no-op when the stored size is already S);
2. CT clipped to the stored range [0, 2500] (= HU -1024..1476) and divided by 2500; radiographs
   divided by 255 (they are stored as per-image min-max uint8 DRRs, see docs/datasets.md);
3. rounded to 6 decimals (official), float32.

One item is a dict: ``ct`` (1, S, S, S), ``pa`` (1, S, S), ``lateral`` (1, S, S), all float32 in
[0, 1] in the canonical order of :mod:`x2ct.geometry`, and ``case_id``. Items depend only on the
files, so the data set is deterministic; the order of a training epoch is chosen by the trainer.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import h5py
import numpy as np
import torch
from scipy import ndimage

from ..errors import InputError, PathLike
from ..intensity import UNIT_RANGE
from .builder import MANIFEST, SPLITS

XRAY_RANGE = 255.0
"""Radiographs are stored as uint8 0..255 and divided by this (official XRAY*_MIN_MAX [0, 255])."""

DECIMALS = 6
"""The official loader rounds every normalised array to this many decimals."""

Item = Dict[str, Union[torch.Tensor, str]]


def resize(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``scipy.ndimage.zoom(order=1)`` of ``array`` to ``shape`` in float64 (the official ``Resize_image``;
    interpolating in float64 rather than the stored integer type avoids re-quantising). No-op if equal."""
    array = np.asarray(array, dtype=np.float64)
    if tuple(array.shape) == tuple(shape):
        return array
    factors = [t / s for t, s in zip(shape, array.shape)]
    out = ndimage.zoom(array, factors, order=1)
    if out.shape != tuple(shape):  # zoom rounds the output shape; never happens for integer ratios
        raise ValueError(f"resize {array.shape} -> {tuple(shape)} gave {out.shape}")
    return out


def ct_to_unit(stored: np.ndarray, size: int) -> np.ndarray:
    """Stored CT (HU + 1024, uint16, (D, H, W)) -> float32 (size, size, size) in [0, 1]: resize, clip, /2500,
    round to 6 decimals (in float64, as the official numpy transform), then float32."""
    ct = resize(stored, (size, size, size))
    return np.round(np.clip(ct, 0.0, UNIT_RANGE) / UNIT_RANGE, DECIMALS).astype(np.float32)


def xray_to_unit(stored: np.ndarray, size: int) -> np.ndarray:
    """Stored radiograph (uint8 0..255, (rows, cols)) -> float32 (size, size) in [0, 1]: resize, /255, round
    (float64), then float32."""
    xray = resize(stored, (size, size))
    return np.round(np.clip(xray, 0.0, XRAY_RANGE) / XRAY_RANGE, DECIMALS).astype(np.float32)


def read_manifest(root: PathLike) -> List[Dict[str, str]]:
    """Rows of ``root/manifest.csv`` (InputError when the folder or the manifest is missing or unreadable)."""
    root = Path(os.fspath(root))
    if not root.is_dir():
        raise InputError(root, "data folder not found (build one with 'x2ct build-dataset')")
    path = root / MANIFEST
    if not path.is_file():
        raise InputError(path, "not found; is this a folder written by 'x2ct build-dataset'?")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(path, f"unreadable manifest ({err})") from None
    if rows and not {"case_id", "split", "path"} <= set(rows[0]):
        raise InputError(path, "not a data-set manifest (needs the columns case_id, split and path)")
    return rows


class X2CTDataset(torch.utils.data.Dataset):
    """Cases of one split of a built data set, transformed for a model with grid ``size`` and ``views`` (1 or 2).

    ``split`` is ``train``, ``val``, ``test`` or ``all``. With ``cache`` every item is kept in memory
    after its first read (a 64³ case is about 1 MB). Raises :class:`InputError` when the folder, its
    manifest or a case file is missing, or when the split has no case.
    """

    def __init__(
        self, root: PathLike, split: str = "train", size: int = 128, views: int = 2, cache: bool = True
    ) -> None:
        if split not in (*SPLITS, "all"):
            raise InputError(None, f"split {split!r}: choose one of {', '.join(SPLITS)} or all")
        if views not in (1, 2):
            raise ValueError(f"views must be 1 or 2, got {views}")
        self.root = Path(os.fspath(root))
        self.split, self.size, self.views, self.cache = split, int(size), views, cache
        rows = read_manifest(self.root)
        self.rows = [row for row in rows if split == "all" or row["split"] == split]
        if not self.rows:
            raise InputError(self.root / MANIFEST, f"has no case in the {split!r} split ({len(rows)} cases in all)")
        for row in self.rows:
            if not (self.root / row["path"]).is_file():
                raise InputError(self.root / row["path"], f"case {row['case_id']} listed in the manifest is missing")
        self._cache: Dict[int, Item] = {}

    @property
    def case_ids(self) -> List[str]:
        return [row["case_id"] for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Item:
        if index in self._cache:
            return self._cache[index]
        row = self.rows[index]
        path = self.root / row["path"]
        try:
            with h5py.File(path, "r") as f:
                ct, pa = f["ct"][...], f["xray1"][...]
                lateral = f["xray2"][...] if self.views == 2 else None
        except (OSError, KeyError) as err:
            raise InputError(path, f"unreadable case file ({' '.join(str(err).split())})") from None
        if ct.ndim != 3 or pa.ndim != 2 or (lateral is not None and lateral.ndim != 2):
            raise InputError(path, f"unexpected shapes ct {ct.shape}, xray1 {pa.shape}")
        item: Item = {
            "case_id": row["case_id"],
            "ct": torch.from_numpy(ct_to_unit(ct, self.size)[None]),
            "pa": torch.from_numpy(xray_to_unit(pa, self.size)[None]),
        }
        if lateral is not None:
            item["lateral"] = torch.from_numpy(xray_to_unit(lateral, self.size)[None])
        if self.cache:
            self._cache[index] = item
        return item


def collate(items: Sequence[Item], device: Optional[torch.device] = None) -> Dict[str, object]:
    """Stack items into a batch: ``ct`` (N,1,S,S,S), ``pa`` and ``lateral`` (N,1,S,S) (None for one view)."""
    batch: Dict[str, object] = {"case_id": [item["case_id"] for item in items]}
    for key in ("ct", "pa", "lateral"):
        if key in items[0]:
            tensor = torch.stack([item[key] for item in items])  # type: ignore[misc]
            batch[key] = tensor.to(device) if device is not None else tensor
        else:
            batch[key] = None
    return batch
