"""The classifier data set: one task's usable cases of a split, with their labels, through the one case reader.

An item is a :class:`x2ct.data.loader.CaseItem` whose ``target`` is (K,) float32 (0/1, the task's
outputs in order) and whose images are the model inputs it asks for, in the classifier contract's
format (docs/classifiers.md):

* ``pa`` / ``lateral``: (1, S, S) float32 in [0, 1], the case's stored DRRs through
  :func:`x2ct.data.loader.xray_to_unit` (the generator's own input transform); rows
  superior->inferior, PA columns patient right->left, lateral columns anterior->posterior.
* ``ct``: (1, S, S, S) float32 on the unit scale of :mod:`x2ct.intensity`, canonical axes (see
  :mod:`x2ct.geometry`), through :func:`x2ct.data.loader.ct_to_unit`. ``ct_source="real"`` reads the
  case's HDF5 ``ct``; a folder reads ``FOLDER/<case_id>/synthetic_ct.nrrd`` (HU on the canonical
  grid, as written by ``x2ct synthesize-ct`` or ``x2ct predict --manifest``), which must lie on a
  canonical grid; it is resized to S the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..data.layout import read_manifest
from ..data.loader import REAL_CT, CaseDataset
from ..errors import InputError, PathLike
from ..views import CT_KEY, INPUT_KEYS
from .tasks import LabelTable, Task, get_task, read_labels


def check_inputs(inputs: Sequence[str]) -> tuple:
    """``inputs`` as a tuple of known keys in :data:`x2ct.views.INPUT_KEYS` order (InputError for an unknown
    or empty list)."""
    unknown = [k for k in inputs if k not in INPUT_KEYS]
    if unknown or not inputs:
        raise InputError(None, f"inputs {', '.join(inputs) or '(none)'}: choose from {', '.join(INPUT_KEYS)}")
    return tuple(k for k in INPUT_KEYS if k in inputs)


class ClassifierDataset(CaseDataset):
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
        root = Path(os.fspath(data_root))
        self.task = task if isinstance(task, Task) else get_task(task)
        self.inputs = check_inputs(inputs)
        self.labels = labels if labels is not None else read_labels(labels_csv, self.task, root, read_manifest(root))
        targets = {case.case_id: case.targets for case in self.labels.require_split(split)}
        sizes = {key: int(size_ct if key == CT_KEY else size_xray) for key in self.inputs}
        super().__init__(root, split, sizes, cache=cache, ct_source=ct_source, targets=targets)

    @property
    def targets(self) -> np.ndarray:
        """(N, K) int array of the labels."""
        return np.asarray([case.target for case in self.cases], dtype=np.int64).reshape(len(self.cases), -1)
