"""Files the user names: the one check of an output location and the one reader of CSV and list files.

Output locations are checked before a command does any work (:func:`check_output_folder`,
:func:`check_output_file`): a folder where a file is expected, a file where a folder is expected, a
parent that is a file, or a folder that cannot be written raise :class:`~x2ct.errors.InputError`
naming the path, so a bad ``-o`` fails at once with one line.

CSV and list files (:func:`read_text`, :func:`read_csv_rows`, :func:`read_csv_table`) are UTF-8, with or
without a byte-order mark, with Windows (CRLF) or Unix line ends; CSV cells may be quoted and
are stripped of surrounding spaces. Other encodings (Latin-1, UTF-16) and rows with more non-empty
cells than the header names are refused with one line naming the file and the line; missing
trailing cells read as blank. A path listed in such a file (:func:`listed_path`) may be quoted and is
taken relative to the file's own folder unless it is absolute (``~`` is expanded).

Batch commands (``build-dataset``, ``predict --manifest``, ``synthesize-ct``) list the cases that failed
in ``OUT/failures.csv`` (:func:`write_failure_report`); when every case failed that report is all they
leave in OUT (no manifest or summary that could pass for finished output) and they exit with status 2.
"""

from __future__ import annotations

import csv
import errno
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .atomic import write_text_atomic
from .errors import InputError, PathLike

FAILURES_CSV = "failures.csv"
"""The failure report of a batch command inside its output folder."""

FAILURE_COLUMNS = ("case_id", "source", "problem")
"""Columns of :data:`FAILURES_CSV`: the case, its input file(s) and the one-line problem."""

_QUOTES = ("'", '"')


# ------------------------------------------------------------------------------------------- outputs


def _writable(folder: Path) -> bool:
    """Whether this process can create a file in ``folder``: tried with an unnamed temporary file, so that
    read-only file systems, immutable folders and access lists count, which permission bits do not show."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _check_creatable(path: Path) -> None:
    """``path`` does not exist: its nearest existing ancestor must be a folder this process can write in."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(path, f"cannot be created: {ancestor} is a file, not a folder")
    if not _writable(ancestor):
        raise InputError(path, f"cannot be created: no permission to write in the folder {ancestor}")


def check_output_folder(path: PathLike) -> Path:
    """``path`` as a Path when it can be an output folder: an existing writable folder, or a new one whose
    nearest existing parent is a writable folder (nothing is created here). InputError naming it otherwise."""
    out = Path(os.fspath(path))
    try:
        if out.exists():
            if not out.is_dir():
                raise InputError(out, "exists and is a file, not a folder; give a folder for the output")
            if not _writable(out):
                raise InputError(out, "no permission to write in this output folder")
            return out
    except PermissionError:
        raise InputError(out, "no permission to look into a parent folder of this output") from None
    _check_creatable(out)
    return out


def check_output_file(path: PathLike) -> Path:
    """``path`` as a Path when it can be an output file: not a folder, in a folder that exists and can be
    written or can be created (nothing is created here). InputError naming it otherwise."""
    target = Path(os.fspath(path))
    try:
        if target.is_dir():
            raise InputError(target, "is a folder; give a file name for the output")
        parent = target.parent
        if parent.is_dir():
            if not _writable(parent):
                raise InputError(target, f"cannot be written: no permission to write in the folder {parent}")
            return target
    except PermissionError:
        raise InputError(target, "no permission to look into a parent folder of this output") from None
    _check_creatable(target)
    return target


_OS_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "on a read-only file system",
    errno.EISDIR: "is a folder, expected a file",
    errno.ENOTDIR: "a parent of this path is not a folder",
    errno.ENOSPC: "no space left on the disk",
    errno.ENOENT: "no such file or folder",
}


def os_error_line(err: OSError, fallback: PathLike | None = None) -> str:
    """One line for an operating-system error: ``<file>: <reason>`` with the file the error names (else
    ``fallback``), e.g. ``/data/out: permission denied``. A temporary of :mod:`x2ct.atomic` (``.<name>.*.partial*``)
    is named by its folder, the place the user chose."""
    reason = _OS_REASONS.get(err.errno) or " ".join((err.strerror or str(err) or type(err).__name__).lower().split())
    name = err.filename
    path = Path(os.fsdecode(name)) if isinstance(name, (str, bytes, os.PathLike)) else fallback
    if isinstance(path, Path) and path.name.startswith(".") and ".partial" in path.name:
        path = path.parent
    return str(InputError(path, reason))


def write_failure_report(folder: PathLike, failures: Sequence[Tuple[str, str, str]]) -> Optional[Path]:
    """Write ``folder/failures.csv`` (:data:`FAILURE_COLUMNS` rows, atomically) and return its path; with no
    failures, remove an earlier report and return None."""
    target = Path(os.fspath(folder)) / FAILURES_CSV
    if not failures:
        target.unlink(missing_ok=True)
        return None
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FAILURE_COLUMNS)
    writer.writerows(failures)
    write_text_atomic(target, buffer.getvalue())
    return target


def all_failed_error(folder: PathLike, count: int) -> InputError:
    """The error of a batch run in which all ``count`` cases failed: ``OUT: all N cases failed; see
    OUT/failures.csv``."""
    return InputError(folder, f"all {count} cases failed; see {Path(os.fspath(folder)) / FAILURES_CSV}")


# ---------------------------------------------------------------------------------------- CSV, lists


def read_text(path: PathLike) -> str:
    """The text of a UTF-8 file (a byte-order mark dropped). InputError naming the file and the line of the
    first byte that is not UTF-8 (a file saved as Latin-1 or UTF-16) or of a NUL byte, or when it cannot be
    read."""
    p = Path(os.fspath(path))
    if p.is_dir():
        raise InputError(p, "is a folder, expected a text file")
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise InputError(p, "file not found") from None
    except OSError as err:
        raise InputError(p, f"cannot be read ({(err.strerror or str(err)).lower()})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise InputError(
            p, f"line {line}: byte 0x{data[err.start]:02x} is not UTF-8 text; save the file as UTF-8 (e.g. 'CSV UTF-8')"
        ) from None
    if "\0" in text:
        line = text[: text.index("\0")].count("\n") + 1
        raise InputError(p, f"line {line}: holds a NUL byte, so it is not a text file; save it as UTF-8 text")
    return text


def read_csv_rows(path: PathLike) -> List[Tuple[int, List[str]]]:
    """(line number, stripped cells) of every non-blank row of a CSV file (:func:`read_text` rules; a row's
    line is where it starts). InputError naming the file and line for malformed CSV (e.g. a cell over the csv
    module's size limit)."""
    p = Path(os.fspath(path))
    reader = csv.reader(io.StringIO(read_text(p), newline=""))
    rows: List[Tuple[int, List[str]]] = []
    line = 1
    try:
        for row in reader:
            cells = [cell.strip() for cell in row]
            if any(cells):
                rows.append((line, cells))
            line = reader.line_num + 1
    except csv.Error as err:
        raise InputError(p, f"line {reader.line_num}: not valid CSV ({' '.join(str(err).split())})") from None
    return rows


@dataclass(frozen=True)
class CsvTable:
    """A CSV file with a header row: its ``columns`` (stripped names), ``rows`` (column -> stripped cell,
    blank for a missing trailing cell) and each row's line number in ``lines``."""

    path: Path
    columns: List[str]
    rows: List[Dict[str, str]]
    lines: List[int]


def read_csv_table(path: PathLike) -> CsvTable:
    """A CSV file whose first non-blank row names the columns (:func:`read_csv_rows` rules). InputError naming
    the file for a repeated column name, or for a row with more non-empty cells than the header names
    (empty extra cells, as spreadsheets write them, are ignored)."""
    p = Path(os.fspath(path))
    rows = read_csv_rows(p)
    if not rows:
        return CsvTable(p, [], [], [])
    header_line, header = rows[0]
    while header and not header[-1]:
        header.pop()
    repeated = sorted({name for name in header if name and header.count(name) > 1})
    if repeated:
        raise InputError(p, f"line {header_line}: column(s) {', '.join(repeated)} named twice")
    table: List[Dict[str, str]] = []
    for line, cells in rows[1:]:
        if any(cells[len(header) :]):
            raise InputError(
                p, f"line {line}: {len(cells)} cells but the header (line {header_line}) names {len(header)} columns"
            )
        table.append({name: cells[i] if i < len(cells) else "" for i, name in enumerate(header) if name})
    return CsvTable(p, [name for name in header if name], table, [line for line, _ in rows[1:]])


def listed_path(cell: str, list_file: PathLike) -> Path:
    """The path written in a cell of ``list_file``: quotes around it dropped, ``~`` expanded, and a relative
    path taken from the list file's folder (an absolute one kept)."""
    text = cell.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in _QUOTES:
        text = text[1:-1].strip()
    path = Path(text).expanduser()
    return path if path.is_absolute() else Path(os.fspath(list_file)).parent / path
