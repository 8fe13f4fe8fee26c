"""Keep what libraries print while x2ct reads a file off the terminal, and report it as x2ct's own lines.

A run of x2ct prints only what x2ct means to say. The libraries under the readers speak in three ways:
Python warnings (pydicom's "Invalid value for VR IS", "End of file reached before delimiter ..."),
records on the ``pydicom`` logger (the same texts; a host such as 3D Slicer shows them in its log), and
C/C++ code writing straight to file descriptor 2 (libjpeg's "Unsupported JPEG data precision 12" from
the JPEG codecs of Pillow and of GDCM, ITK warnings, libtiff). :func:`library_output` captures all
three around one read and turns them into short lines, ``"<library>: <text>"``, deduplicated, which
the caller keeps as warnings on success; an :class:`~x2ct.errors.InputError` raised inside gets them
appended to its one-line message.

File descriptor 2 and the warnings filters belong to the whole process: captures are serialised by a
lock (re-entrant, so a capture may nest inside another in the same thread), and output that another
thread writes to fd 2 during a capture lands in that capture. A capture costs one temporary file and a
few system calls. Where fd 2 cannot be duplicated (a GUI process without one), only the Python
warnings and log records are captured.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, List, Optional

from ..errors import InputError

LIBRARY_LOGGERS = ("pydicom",)
"""Loggers whose records are captured (and kept from the host's log handlers) during a read."""

MAX_LINES = 8
"""Most captured lines kept per read; further ones are counted in a last line."""

MAX_LINE_CHARS = 200
"""Longest kept line (characters); longer ones are cut with "..."."""

MAX_NATIVE_BYTES = 65536
"""Most bytes of fd-2 output read back per read (a library that floods fd 2 is cut here)."""

_LOCK = threading.RLock()
_SEE_ALSO = re.compile(r"\.?\s*Please see <[^>]*> for allowed values for each VR\.?")

# Top-level package (as it appears in a warning's file path) -> the name shown in a captured line.
_PACKAGE_LABELS = {
    "pydicom": "pydicom",
    "PIL": "Pillow",
    "SimpleITK": "SimpleITK",
    "numpy": "numpy",
    "pylibjpeg": "pylibjpeg",
    "openjpeg": "pylibjpeg-openjpeg",
    "jpeg_ls": "pyjpegls",
    "gdcm": "GDCM",
}


def _label_of_file(filename: str) -> Optional[str]:
    """The library a warning was issued from, judged by its source file's path; None when not a known one."""
    parts = Path(filename).parts
    return next((label for package, label in _PACKAGE_LABELS.items() if package in parts), None)


def _one_line(text: str) -> str:
    """Collapse whitespace, drop pydicom's pointer to the standard's VR table, cut to MAX_LINE_CHARS."""
    line = " ".join(_SEE_ALSO.sub("", text).split())
    return line if len(line) <= MAX_LINE_CHARS else line[: MAX_LINE_CHARS - 3] + "..."


class _Records(logging.Handler):
    """A logging handler that keeps the messages of the WARNING (and higher) records it receives."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.name.split('.')[0]}: {record.getMessage()}")


@contextmanager
def _logger_records() -> Iterator[_Records]:
    """Collect the records of LIBRARY_LOGGERS and keep them from the host's handlers while the block runs."""
    handler = _Records()
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    saved = [logger.propagate for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.propagate = False
    try:
        yield handler
    finally:
        for logger, propagate in zip(loggers, saved):
            logger.removeHandler(handler)
            logger.propagate = propagate


@contextmanager
def _fd2_redirected() -> Iterator[Optional[IO[bytes]]]:
    """Point file descriptor 2 at a temporary file while the block runs; yield that file (None if fd 2 is unusable)."""
    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):  # no or closed sys.stderr (GUI hosts)
        pass
    try:
        saved = os.dup(2)
    except OSError:
        yield None
        return
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield sink
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _read_back(sink: Optional[IO[bytes]]) -> bytes:
    """The first MAX_NATIVE_BYTES written to the redirected fd 2."""
    if sink is None:
        return b""
    sink.seek(0)
    return sink.read(MAX_NATIVE_BYTES)


def _lines(
    caught: List[warnings.WarningMessage], logged: List[str], native_text: bytes, native_label: str
) -> List[str]:
    """Captured output as deduplicated one-line entries, at most MAX_LINES (then a count of the rest)."""
    entries = []
    for message in caught:
        label = _label_of_file(message.filename) or message.category.__name__
        entries.append(f"{label}: {message.message}")
    entries.extend(logged)
    decoded = native_text.decode("utf-8", errors="replace")
    entries.extend(f"{native_label}: {line}" for line in decoded.splitlines() if line.strip())
    unique = list(dict.fromkeys(_one_line(entry) for entry in entries))
    if len(unique) > MAX_LINES:
        unique = unique[: MAX_LINES - 1] + [f"... and {len(unique) - MAX_LINES + 1} more library messages"]
    return unique


def _is_own(message: warnings.WarningMessage) -> bool:
    """True for a warning of one of x2ct's own classes, which the caller is meant to see."""
    return message.category.__module__.split(".")[0] == "x2ct"


def _foreign(caught: List[warnings.WarningMessage]) -> List[warnings.WarningMessage]:
    """The captured warnings that came from libraries (not of x2ct's own classes)."""
    return [message for message in caught if not _is_own(message)]


def _write_fd2(data: bytes) -> None:
    """Write ``data`` to file descriptor 2 as it is now (best effort)."""
    try:
        os.write(2, data)
    except OSError:
        pass


@contextmanager
def library_output(native_label: str) -> Iterator[List[str]]:
    """Capture library warnings, log records and fd-2 output while the block runs; yield the list of lines.

    The yielded list is filled when the block ends: ``"<library>: <text>"`` per captured message
    (Python warnings named after the package that issued them, pydicom log records as ``pydicom:``,
    fd-2 lines as ``<native_label>:``), deduplicated, at most MAX_LINES. The caller keeps them as
    warnings. Warnings of x2ct's own classes (e.g. ``SeriesChoiceWarning``) are not captured: they
    are issued again after the block.

    Args:
        native_label: the name given to fd-2 output, i.e. the C/C++ code the block can reach
            (e.g. "DICOM decoder", "ITK", "Pillow").

    Raises:
        InputError: the one raised inside the block, its message ending in the captured lines in
            brackets when there are any. Any other exception passes unchanged, and what was captured
            from fd 2 is written back to fd 2 so that it helps whoever reads the traceback.
    """
    lines: List[str] = []
    with _LOCK:
        with warnings.catch_warnings(record=True) as caught, _logger_records() as logged:
            warnings.simplefilter("always")
            native = b""
            try:
                with _fd2_redirected() as sink:
                    try:
                        yield lines
                    finally:
                        native = _read_back(sink)
            except InputError as err:
                found = _lines(_foreign(caught), logged.messages, native, native_label)
                found = [line for line in found if line.split(": ", 1)[-1] not in err.problem]  # said already
                if not found:
                    raise
                raise InputError(err.path, f"{err.problem} [{'; '.join(found)}]") from err
            except BaseException:
                _write_fd2(native)
                raise
        lines.extend(_lines(_foreign(caught), logged.messages, native, native_label))
        for message in caught:
            if _is_own(message):
                warnings.warn_explicit(message.message, message.category, message.filename, message.lineno)
