"""Classification tasks and their label files.

A task names the label columns a classifier predicts (one output per column, multi-label for more
than one) and which cases it applies to:

======================  ==========================================================  ====================
task                    outputs (label columns)                                     cases used
======================  ==========================================================  ====================
``tb``                  ``tb_present``                                              all
``tb_type``             ``tb_granuloma``, ``tb_cavitation``, ``tb_calcification``   ``tb_present`` == 1
``tb_activity``         ``tb_active`` (1 = active TB, 0 = sequelae)                 ``tb_present`` == 1
``pe``                  ``pe_present``                                              all
======================  ==========================================================  ====================

A label file is a CSV with a ``case_id`` column, an optional ``split`` column (train / val / test)
and the label columns; every label cell is ``0``, ``1`` or blank (unknown / not applicable). The
manifest written by ``x2ct build-dataset`` (``DATA/manifest.csv``) is such a file and the default.
A case is used by a task when it passes the task's filter and none of the task's labels is blank;
the others are dropped and counted (:attr:`LabelTable.excluded`). A blank ``split`` cell, or no
``split`` column, takes the data set's split of the case.

Every problem with a label file is an :class:`x2ct.errors.InputError` naming the file, on one line:
a missing ``case_id`` or label column, a label that is not 0/1/blank (row, column and value), an
unknown split, a repeated or empty case id, a case the data set does not hold, and (when a split is
asked for) a split without any usable case.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ..data.layout import MANIFEST, SPLITS, read_manifest
from ..errors import InputError, PathLike
from ..userfiles import read_csv_table

LABEL_VALUES = ("0", "1")
"""Allowed non-blank label cells."""


@dataclass(frozen=True)
class Task:
    """One classification task: ``columns`` are its outputs in order; a case is used only when the
    column ``only_if`` (if any) equals 1. ``kind_flag`` names, per output, the
    :class:`x2ct.data.synthetic.KindLabels` attribute whose lesion kinds make that output positive
    (the relevant lesion masks for the CAM hit rate)."""

    name: str
    columns: Tuple[str, ...]
    description: str
    only_if: Optional[str] = None
    kind_flag: Tuple[str, ...] = ()

    @property
    def num_outputs(self) -> int:
        return len(self.columns)

    @property
    def required_columns(self) -> Tuple[str, ...]:
        """Label columns a label file must have for this task (the outputs and the filter column)."""
        return (*((self.only_if,) if self.only_if and self.only_if not in self.columns else ()), *self.columns)

    def relevant_kinds(self, column: str) -> Tuple[str, ...]:
        """Lesion kinds (x2ct.data.synthetic.LESION_KINDS) whose presence makes output ``column`` positive."""
        from ..data.synthetic import KIND_LABELS

        flag = self.kind_flag[self.columns.index(column)]
        return tuple(kind for kind, labels in KIND_LABELS.items() if getattr(labels, flag))


TASKS: Dict[str, Task] = {
    "tb": Task("tb", ("tb_present",), "tuberculosis present (any TB sign) vs not", kind_flag=("tb",)),
    "tb_type": Task(
        "tb_type",
        ("tb_granuloma", "tb_cavitation", "tb_calcification"),
        "TB type, multi-label: granuloma, cavitation, calcification (TB-positive cases only)",
        only_if="tb_present",
        kind_flag=("granuloma", "cavitation", "calcification"),
    ),
    "tb_activity": Task(
        "tb_activity",
        ("tb_active",),
        "active TB (1) vs TB sequelae (0) (TB-positive cases only)",
        only_if="tb_present",
        kind_flag=("active",),
    ),
    "pe": Task("pe", ("pe_present",), "pulmonary embolism present vs not", kind_flag=("pe",)),
}
"""The tasks by name."""


def get_task(name: str) -> Task:
    """The task called ``name`` (InputError listing the known ones otherwise)."""
    try:
        return TASKS[name]
    except KeyError:
        raise InputError(None, f"unknown task {name!r} (known: {', '.join(TASKS)})") from None


@dataclass(frozen=True)
class CaseLabels:
    """One usable case of a task: its id, split and targets (0/1, one per output, task column order)."""

    case_id: str
    split: str
    targets: Tuple[int, ...]


@dataclass
class LabelTable:
    """The cases of a label file that a task can use, plus what was dropped and why.

    ``excluded``: counts by reason (``"not applicable"``: the task's filter column is not 1, e.g.
    TB-negative cases for ``tb_type``; ``"blank label"``: a task label or the filter is blank).
    """

    path: Path
    task: Task
    cases: List[CaseLabels]
    excluded: Dict[str, int] = field(default_factory=dict)
    split_source: str = "data set manifest"

    def split(self, name: str) -> List[CaseLabels]:
        """The usable cases of split ``name`` (``all`` for every split), in file order."""
        return [case for case in self.cases if name == "all" or case.split == name]

    def require_split(self, name: str) -> List[CaseLabels]:
        """:meth:`split`, or an InputError naming the file when that split has no usable case."""
        cases = self.split(name)
        if not cases:
            raise InputError(
                self.path, f"no usable case in the {name!r} split for task {self.task.name} ({self.summary()})"
            )
        return cases

    def summary(self) -> str:
        """One line: usable cases per split and the dropped counts."""
        counts = ", ".join(f"{s} {len(self.split(s))}" for s in SPLITS)
        dropped = ", ".join(f"{n} {why}" for why, n in self.excluded.items() if n) or "none"
        return f"{len(self.cases)} usable cases ({counts}); dropped: {dropped}"


def _read_rows(path: Path) -> Tuple[List[str], List[Dict[str, str]]]:
    if not path.is_file():
        raise InputError(path, "label file not found")
    table = read_csv_table(path)
    return table.columns, table.rows


def read_labels(
    path: Optional[PathLike], task: Task, data_root: PathLike, manifest: Optional[Sequence[Mapping[str, str]]] = None
) -> LabelTable:
    """Validate the label file ``path`` (default: ``data_root/manifest.csv``) for ``task`` against the data set
    and return the usable cases (see the module doc for the rules and errors). ``manifest``: the data set's
    manifest rows when already read."""
    rows_manifest = list(manifest) if manifest is not None else read_manifest(data_root)
    label_path = Path(os.fspath(path)) if path is not None else Path(os.fspath(data_root)) / MANIFEST
    columns, rows = _read_rows(label_path)
    if "case_id" not in columns:
        raise InputError(label_path, f"no case_id column (columns: {', '.join(columns) or 'none'})")
    missing = [c for c in task.required_columns if c not in columns]
    if missing:
        raise InputError(
            label_path,
            f"missing label column(s) {', '.join(missing)} needed by task {task.name}; expected "
            f"case_id, optional split, and {', '.join(task.required_columns)} (cells 0, 1 or blank)",
        )
    dataset_split = {row["case_id"]: row["split"] for row in rows_manifest}
    has_split = "split" in columns
    seen: Dict[str, int] = {}
    cases: List[CaseLabels] = []
    excluded = {"not applicable": 0, "blank label": 0}
    for line, row in enumerate(rows, start=2):
        case_id = row.get("case_id", "")
        if not case_id:
            raise InputError(label_path, f"line {line}: empty case_id")
        if case_id in seen:
            raise InputError(
                label_path, f"line {line}: case_id {case_id!r} appears twice (first on line {seen[case_id]})"
            )
        seen[case_id] = line
        if case_id not in dataset_split:
            raise InputError(
                label_path,
                f"line {line}: case {case_id!r} is not in the data set {Path(os.fspath(data_root)) / MANIFEST}",
            )
        for column in task.required_columns:
            value = row.get(column, "")
            if value and value not in LABEL_VALUES:
                raise InputError(label_path, f"line {line}, column {column}: label {value!r} is not 0, 1 or blank")
        split = row.get("split", "") if has_split else ""
        if split and split not in SPLITS:
            raise InputError(label_path, f"line {line}, column split: {split!r} is not one of {', '.join(SPLITS)}")
        if task.only_if is not None and row[task.only_if] != "1":
            excluded["not applicable" if row[task.only_if] == "0" else "blank label"] += 1
            continue
        values = [row[c] for c in task.columns]
        if "" in values:
            excluded["blank label"] += 1
            continue
        cases.append(CaseLabels(case_id, split or dataset_split[case_id], tuple(int(v) for v in values)))
    source = "label file split column" if has_split else "data set manifest"
    return LabelTable(label_path, task, cases, excluded, source)
