"""Torch data set for classifiers: a built data set's cases, a task's labels, and a CT source.

One item is a dict with ``case_id``, ``target`` (K,) float32 (0/1, the task's outputs in order) and
the model inputs it asks for, in the classifier contract's format (docs/classifiers.md):

* ``pa`` / ``lateral``: (1, S, S) float32 in [0, 1], the case's stored DRRs (``xray1`` / ``xray2``)
  through :func:`x2ct.data.loader.xray_to_unit` (the generator's own input transform); rows
  superior->inferior, PA columns patient right->left, lateral columns anterior->posterior.
* ``ct``: (1, S, S, S) float32 on the unit scale of :mod:`x2ct.intensity`, canonical axes (D, H, W) =
  (S->I, A->P, R->L), through :func:`x2ct.data.loader.ct_to_unit`. ``ct_source="real"`` reads the
  case's HDF5 ``ct``; a folder reads ``FOLDER/<case_id>/synthetic_ct.nrrd`` (HU on the canonical
  grid, as written by ``x2ct synthesize-ct`` or ``x2ct predict --manifest``), which must lie on a
  canonical grid; it is resized to S the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import h5py
import numpy as np
import SimpleITK as sitk
import torch

from ..data.loader import ct_to_unit, read_manifest, xray_to_unit
from ..errors import InputError, PathLike
from ..geometry import grid_of
from ..intensity import HU_OFFSET
from .tasks import LabelTable, Task, get_task, read_labels

INPUT_KEYS = ("pa", "lateral", "ct")
"""Batch keys a classifier may read."""

REAL_CT = "real"
"""``ct_source`` value meaning the data set's own CT."""

SYNTHETIC_CT_FILE = "synthetic_ct.nrrd"
"""File name of a case's CT inside a CT-source folder (``x2ct synthesize-ct`` / ``x2ct predict`` output)."""

Item = Dict[str, Union[torch.Tensor, str]]


def check_inputs(inputs: Sequence[str]) -> tuple:
    """``inputs`` as a tuple of known keys in :data:`INPUT_KEYS` order (InputError for an unknown or empty list)."""
    unknown = [k for k in inputs if k not in INPUT_KEYS]
    if unknown or not inputs:
        raise InputError(None, f"inputs {', '.join(inputs) or '(none)'}: choose from {', '.join(INPUT_KEYS)}")
    return tuple(k for k in INPUT_KEYS if k in inputs)


def synthetic_ct_path(ct_source: PathLike, case_id: str) -> Path:
    """``ct_source/<case_id>/synthetic_ct.nrrd``."""
    return Path(os.fspath(ct_source)) / case_id / SYNTHETIC_CT_FILE


def read_synthetic_ct(path: Path, size: int) -> np.ndarray:
    """A CT-source volume as (size, size, size) float32 unit scale; InputError when unreadable or off the
    canonical grid (320 mm cube, spacing 320/n mm, canonical direction)."""
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


class ClassifierDataset(torch.utils.data.Dataset):
    """The usable cases of ``split`` (train / val / test / all) for ``task``, with ``inputs``.

    ``labels_csv``: label file (default ``data_root/manifest.csv``); ``labels``: an already validated
    :class:`LabelTable` instead. ``size_xray`` / ``size_ct``: the model's input sizes. With ``cache``
    items stay in memory after their first read. Dropped cases are counted in ``self.labels.excluded``.
    Raises InputError for a bad data folder or label file, an empty split, a missing case file or a
    missing synthetic CT.
    """

    def __init__(
        self,
        data_root: PathLike,
        labels_csv: Optional[PathLike],
        task: Union[str, Task],
        split: str,
        inputs: Sequence[str],
        ct_source: Union[str, PathLike] = REAL_CT,
        size_xray: int = 128,
        size_ct: int = 128,
        cache: bool = True,
        labels: Optional[LabelTable] = None,
    ) -> None:
        self.root = Path(os.fspath(data_root))
        self.task = task if isinstance(task, Task) else get_task(task)
        self.inputs = check_inputs(inputs)
        self.split, self.size_xray, self.size_ct, self.cache = split, int(size_xray), int(size_ct), cache
        manifest = read_manifest(self.root)
        self.labels = labels if labels is not None else read_labels(labels_csv, self.task, self.root, manifest)
        self.cases = self.labels.require_split(split)
        paths = {row["case_id"]: self.root / row["path"] for row in manifest}
        self.paths = [paths[case.case_id] for case in self.cases]
        for case, path in zip(self.cases, self.paths):
            if not path.is_file():
                raise InputError(path, f"case {case.case_id} listed in the manifest is missing")
        self.ct_source = str(ct_source) if str(ct_source) == REAL_CT else Path(os.fspath(ct_source))
        if "ct" in self.inputs and isinstance(self.ct_source, Path):
            if not self.ct_source.is_dir():
                raise InputError(self.ct_source, "CT source folder not found (write one with x2ct synthesize-ct)")
            for case in self.cases:
                file = synthetic_ct_path(self.ct_source, case.case_id)
                if not file.is_file():
                    raise InputError(file, f"missing: no synthetic CT for case {case.case_id} in the CT source folder")
        self._cache: Dict[int, Item] = {}

    @property
    def case_ids(self) -> List[str]:
        return [case.case_id for case in self.cases]

    @property
    def targets(self) -> np.ndarray:
        """(N, K) int array of the labels."""
        return np.asarray([case.targets for case in self.cases], dtype=np.int64).reshape(len(self.cases), -1)

    def case_file(self, index: int) -> Path:
        """The HDF5 file of case ``index`` (``DATA/<case_id>/ct_xray_data.h5``)."""
        return self.paths[index]

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> Item:
        if index in self._cache:
            return self._cache[index]
        case, path = self.cases[index], self.paths[index]
        real_ct = "ct" in self.inputs and not isinstance(self.ct_source, Path)
        names = {"pa": "xray1", "lateral": "xray2", **({"ct": "ct"} if real_ct else {})}
        try:
            with h5py.File(path, "r") as f:
                stored = {key: f[name][...] for key, name in names.items() if key in self.inputs}
        except (OSError, KeyError) as err:
            raise InputError(path, f"unreadable case file ({' '.join(str(err).split())})") from None
        item: Item = {"case_id": case.case_id, "target": torch.tensor(case.targets, dtype=torch.float32)}
        for key in ("pa", "lateral"):
            if key in stored:
                item[key] = torch.from_numpy(xray_to_unit(stored[key], self.size_xray)[None])
        if real_ct:
            item["ct"] = torch.from_numpy(ct_to_unit(stored["ct"], self.size_ct)[None])
        elif "ct" in self.inputs:
            file = synthetic_ct_path(self.ct_source, case.case_id)
            item["ct"] = torch.from_numpy(read_synthetic_ct(file, self.size_ct)[None])
        if self.cache:
            self._cache[index] = item
        return item


def collate(items: Sequence[Item], device: Optional[torch.device] = None) -> Dict[str, object]:
    """Stack items into a batch: each input key (N, 1, ...), ``target`` (N, K), ``case_id`` a list."""
    batch: Dict[str, object] = {"case_id": [item["case_id"] for item in items]}
    for key in (*INPUT_KEYS, "target"):
        if key in items[0]:
            tensor = torch.stack([item[key] for item in items])  # type: ignore[misc]
            batch[key] = tensor.to(device) if device is not None else tensor
    return batch
