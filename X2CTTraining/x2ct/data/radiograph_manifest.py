"""Radiograph case lists: :class:`RadiographCase` and the one reader of radiograph manifest CSVs.

A radiograph manifest has the columns ``case_id``, ``pa`` and (optional, column or cell) ``lateral``; it is
the input of ``x2ct predict --manifest``, what ``x2ct simulate-radiographs`` writes, and the optional case
list of a radiograph folder (:mod:`x2ct.data.radiograph_folder`). Standard library + x2ct's file helpers
only, so the inference package and the training code can both import it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import InputError, PathLike
from ..userfiles import listed_path, read_csv_table
from ..views import LATERAL, PA, RADIOGRAPH_VIEWS, input_key

MANIFEST = "manifest.csv"
"""The optional case list inside a radiograph folder (columns ``case_id``, ``pa`` [, ``lateral``])."""


@dataclass(frozen=True)
class RadiographCase:
    """One patient's radiographs: ``files`` maps a view name (``x2ct.views.PA``, ``LATERAL``) to its file."""

    case_id: str
    files: Dict[str, Path]

    @property
    def pa(self) -> Path:
        """The frontal (PA) radiograph."""
        return self.files[PA]

    @property
    def lateral(self) -> Optional[Path]:
        """The lateral radiograph, None when the case has none."""
        return self.files.get(LATERAL)


def check_views(views: Sequence[str]) -> Tuple[str, ...]:
    wanted = tuple(views)
    if not wanted or PA not in wanted or not set(wanted) <= set(RADIOGRAPH_VIEWS):
        raise ValueError(f"views must be (PA,) or (PA, LATERAL), got {wanted!r}")
    return wanted


_CASE_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def read_radiograph_manifest(path: PathLike, views: Sequence[str] = (PA,)) -> List[RadiographCase]:
    """The rows of a radiograph manifest CSV (``case_id``, ``pa`` [, ``lateral``]; the ``x2ct predict --manifest``
    and ``x2ct simulate-radiographs`` layout), read by :func:`x2ct.userfiles.read_csv_table` (UTF-8 with or
    without BOM, CRLF or LF, quoted cells); paths by :func:`x2ct.userfiles.listed_path` (relative to the CSV's
    folder). Every case has a file for each of ``views``; a ``lateral`` cell given beyond them is kept.

    Raises InputError (naming the CSV and the line) for a missing file or column, an empty manifest, a case
    without a required view, or a case id that is empty, repeated, or not a plain file name (letters, digits,
    ``.``, ``_``, ``-``).
    """
    manifest = Path(os.fspath(path))
    wanted = check_views(views)
    if not manifest.exists():
        raise InputError(manifest, "manifest file not found")
    table = read_csv_table(manifest)
    required = ["case_id", *(input_key(view) for view in wanted)]
    missing = [name for name in required if name not in table.columns]
    if missing:
        raise InputError(manifest, f"missing column(s) {', '.join(missing)}; expected {', '.join(required)}"
                         + ("" if LATERAL in wanted else f" [, {input_key(LATERAL)}]"))  # fmt: skip
    cases: List[RadiographCase] = []
    seen = set()
    for line, row in zip(table.lines, table.rows):
        case_id = row["case_id"]
        if not case_id or case_id.startswith(".") or not set(case_id) <= _CASE_ID_CHARS:
            raise InputError(
                manifest, f"line {line}: case_id '{case_id}' must be a plain name (letters, digits, . _ -)"
            )
        if case_id in seen:
            raise InputError(manifest, f"line {line}: case_id '{case_id}' appears twice")
        seen.add(case_id)
        files: Dict[str, Path] = {}
        for view in RADIOGRAPH_VIEWS:
            cell = row.get(input_key(view), "")
            if cell:
                files[view] = listed_path(cell, manifest)
            elif view in wanted:
                raise InputError(manifest, f"line {line}: case_id '{case_id}' has no {input_key(view)} radiograph")
        cases.append(RadiographCase(case_id, files))
    if not cases:
        raise InputError(manifest, "manifest lists no cases")
    return cases
