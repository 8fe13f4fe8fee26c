"""A built data set's folder: the manifest and its reader, the case files and the splits (no heavy imports here,
so the command line can offer the split names quickly). :mod:`x2ct.data.builder` writes this layout."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List

from ..errors import InputError, PathLike
from ..userfiles import read_csv_table

CASE_FILE = "ct_xray_data.h5"
"""File name of a case inside ``DATA/<case_id>/`` (official)."""

MANIFEST = "manifest.csv"
"""Manifest file name inside DATA."""

SPLITS = ("train", "val", "test")
"""The splits a case can belong to."""

ALL = "all"
"""Split name meaning every case."""

SPLIT_CHOICES = (*SPLITS, ALL)
"""What a ``--split`` option accepts."""


def read_manifest(root: PathLike) -> List[Dict[str, str]]:
    """Rows of ``root/manifest.csv`` (InputError when the folder or the manifest is missing or unreadable). Read
    by :func:`x2ct.userfiles.read_csv_table`; its ``path`` cells are relative to ``root``, the manifest's folder."""
    root = Path(os.fspath(root))
    if not root.is_dir():
        raise InputError(root, "data folder not found (build one with 'x2ct build-dataset')")
    path = root / MANIFEST
    if not path.is_file():
        raise InputError(path, "not found; is this a folder written by 'x2ct build-dataset'?")
    table = read_csv_table(path)
    if not {"case_id", "split", "path"} <= set(table.columns):
        raise InputError(path, "not a data-set manifest (needs the columns case_id, split and path)")
    return table.rows
