"""A folder of radiographs without CT: the cases it holds and each image as a generator sees it.

Used wherever x2ct learns from or measures radiographs that have no paired CT (shape induction, the
CycleGAN style transfer, the out-of-distribution calibration). Two layouts are read:

* **with** ``manifest.csv`` (the layout ``x2ct simulate-radiographs`` and ``x2ct predict --manifest``
  use): columns ``case_id``, ``pa`` and, optional as a column or a cell, ``lateral``; paths relative to
  the folder. A case lacking a view the caller needs is an InputError naming the manifest line.
* **without** it: every readable radiograph file under the folder (recursive, hidden files skipped),
  its view from its tags (PA when unknown; an AP frontal counts as PA). For frontal-only work every
  frontal file is a case (id: its path below the folder); for biplanar work each folder holding one
  frontal and one lateral file is a case (id: the folder's path below the folder), and any other
  folder that holds radiographs is an InputError naming it.

:func:`model_input` prepares one file exactly as ``x2ct predict`` does
(:func:`x2ct.inference.preprocess.read_input` then :func:`~x2ct.inference.preprocess.preprocess`):
field of view, size, per-image min-max intensity and quantisation from the model's
:class:`~x2ct.inference.types.InputSpec`.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from ..errors import InputError, PathLike
from ..inference.preprocess import preprocess, read_input
from ..inference.types import InputSpec
from ..io import read_radiograph
from ..views import LATERAL, PA, is_frontal
from .radiograph_manifest import MANIFEST, RadiographCase, check_views, read_radiograph_manifest


def _radiograph_views(folder: Path) -> List[Tuple[Path, str]]:
    """(file, PA or LATERAL) of every readable radiograph under ``folder``, in path order."""
    found: List[Tuple[Path, str]] = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith(".") or name == MANIFEST:
                continue
            path = Path(root) / name
            try:
                radiograph = read_radiograph(path)
            except InputError:
                continue  # not a radiograph file (a note, a CSV, a corrupt image): skipped
            if radiograph.metadata.get("not_radiograph"):
                continue
            found.append((path, LATERAL if radiograph.view == LATERAL else PA))
    return found


def _case_id(folder: Path, path: Path) -> str:
    relative = path.relative_to(folder)
    return "_".join(relative.parts) if relative.parts else folder.name


def _from_files(folder: Path, views: Tuple[str, ...]) -> List[RadiographCase]:
    found = _radiograph_views(folder)
    if LATERAL not in views:
        return [
            RadiographCase(_case_id(folder, path.with_suffix("")), {PA: path})
            for path, view in found
            if is_frontal(view)
        ]
    by_folder: Dict[Path, Dict[str, List[Path]]] = defaultdict(lambda: defaultdict(list))
    for path, view in found:
        by_folder[path.parent][view].append(path)
    cases: List[RadiographCase] = []
    for parent in sorted(by_folder):
        files = by_folder[parent]
        if len(files[PA]) != 1 or len(files[LATERAL]) != 1:
            raise InputError(
                parent,
                f"holds {len(files[PA])} frontal and {len(files[LATERAL])} lateral radiograph(s); a biplanar case "
                f"folder needs one of each (or list the cases in {MANIFEST})",
            )
        cases.append(RadiographCase(_case_id(folder, parent), {PA: files[PA][0], LATERAL: files[LATERAL][0]}))
    return cases


def read_radiograph_folder(folder: PathLike, views: Sequence[str]) -> List[RadiographCase]:
    """The cases of a radiograph folder (module doc) with a file for each of ``views`` (``(PA,)`` or
    ``(PA, LATERAL)``), in manifest or path order.

    Raises InputError naming the folder when it is missing, not a folder, or holds no case, and naming
    the manifest or a case folder for the problems described in the module doc.
    """
    root = Path(os.fspath(folder))
    wanted = check_views(views)
    if not root.exists():
        raise InputError(root, "radiograph folder not found")
    if not root.is_dir():
        raise InputError(root, "is a file; give a folder of radiographs")
    manifest = root / MANIFEST
    cases = read_radiograph_manifest(manifest, wanted) if manifest.is_file() else _from_files(root, wanted)
    if not cases:
        needs = "PA" if LATERAL not in wanted else "PA + lateral pairs"
        raise InputError(root, f"holds no readable radiographs ({needs}) and no {MANIFEST}")
    return cases


def model_input(path: PathLike, view: str, spec: InputSpec) -> np.ndarray:
    """The (S, S) float32 [0, 1] image a model with ``spec`` gets from the ``view`` radiograph at ``path``,
    prepared exactly as ``x2ct predict`` prepares it (input rules, field of view, size, intensity)."""
    return preprocess(read_input(path, view), spec).model_input
