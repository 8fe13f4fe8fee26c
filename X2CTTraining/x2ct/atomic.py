"""Atomic file and folder writes (temporary name beside the target, then rename), the one-writer lock of an
output, the removal of what killed runs left, and file hashing.

A crash or an error half-way leaves either the old target or nothing, never a partial file. A kill leaves
temporaries under x2ct's own names (``.<name>.<8 characters>.partial[<endings>]``, and a replaced folder
``.<name>.<8 characters>.replaced``); :func:`exclusive_output` removes them when the next run takes the output.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Union

from .errors import InputError

PathLike = Union[str, "os.PathLike[str]"]

LOCK_SUFFIX = ".x2ct-lock"
"""Ending of the lock file ``.<name>.x2ct-lock`` beside an output ``<name>`` while a run writes it."""

_LEFTOVER = re.compile(
    r"^\.(?P<stem>.+)\.[a-z0-9_]{8}\.(?:partial(?P<suffixes>(?:\.[^.]+)*)|replaced)$"
    rf"|^\.(?P<locked>.+){re.escape(LOCK_SUFFIX)}$"
)
"""x2ct's own temporary names (mkstemp/mkdtemp use 8 characters of a-z, 0-9 and _) and lock files."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: Path, target: Path, is_dir: bool) -> None:
    """Give the temporary the permissions a normal create would have (mkstemp uses 0600), then rename."""
    os.chmod(tmp, (0o777 if is_dir else 0o666) & ~_umask())
    os.replace(tmp, target)


def _temporary_sibling(target: Path, is_dir: bool) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    # Keep the full suffix chain (".nii.gz") so format-sniffing writers see the right extension.
    suffix = "".join(target.suffixes)
    if is_dir:
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    fd, name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".partial{suffix}", dir=target.parent)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_path(target: PathLike) -> Iterator[Path]:
    """Yield a temporary file path in the target's folder; rename it onto ``target`` on success.

    On any exception the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    tmp = _temporary_sibling(target, is_dir=False)
    try:
        yield tmp
        _publish(tmp, target, is_dir=False)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(target: PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` whole.

    An existing ``target`` folder is replaced only after the new one is complete (moved aside as
    ``.<name>.<8 characters>.replaced`` for the two renames, then removed).
    """
    target = Path(target)
    tmp = _temporary_sibling(target, is_dir=True)
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.{secrets.token_hex(4)}.replaced")
            os.replace(target, old)
            _publish(tmp, target, is_dir=True)
            shutil.rmtree(old, ignore_errors=True)
        else:
            _publish(tmp, target, is_dir=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(target: PathLike, text: str) -> None:
    """Write a UTF-8 text file atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


# ----------------------------------------------------------------------------------- one writer


def _lock_path(out: Path) -> Path:
    """``.<name>.x2ct-lock`` beside ``out``; inside ``out`` when it is a folder in a read-only parent."""
    if out.is_dir() and not os.access(out.parent, os.W_OK):
        return out / LOCK_SUFFIX
    return out.parent / f".{out.name}{LOCK_SUFFIX}"


def _try_lock(fd: int) -> bool:
    """Take the exclusive lock of an open lock file without waiting; False when another holder has it."""
    try:
        if sys.platform == "win32":
            import msvcrt

            os.lseek(fd, 1 << 20, os.SEEK_SET)  # lock a byte past the pid, which stays readable
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):
        return False
    return True


def _holder(lock: Path) -> str:
    """``pid N`` of the process a lock file names (what it wrote when it took the lock)."""
    try:
        text = lock.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        text = ""
    return f"pid {text}" if text.isdigit() else "another process"


def _acquire(out: PathLike, lock: Path) -> int:
    """The open, locked lock file of ``out`` with this process's pid in it (InputError naming ``out`` when
    another holds it)."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        if not _try_lock(fd):
            os.close(fd)
            raise InputError(out, f"another x2ct run is writing this output (lock held by {_holder(lock)})")
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file between our open and our lock: take the new one
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    return fd


def _release(fd: int, lock: Path) -> None:
    """Remove the lock file, then let go (POSIX: removed while held, so no one locks a file on its way out)."""
    if sys.platform != "win32":
        lock.unlink(missing_ok=True)
    os.close(fd)
    if sys.platform == "win32":
        with contextlib.suppress(OSError):  # another run may hold it open
            lock.unlink()


def _make_parents(folder: Path) -> List[Path]:
    """Create ``folder`` and its missing parents; the ones created, innermost first."""
    created = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        created.append(path)
    folder.mkdir(parents=True, exist_ok=True)
    return created


@contextlib.contextmanager
def output_lock(out: PathLike) -> Iterator[Path]:
    """Hold the one-writer lock of output ``out`` (a file or folder) while the block runs; yields its path.

    The lock is an OS file lock (flock; msvcrt on Windows) on ``.<name>.x2ct-lock`` beside ``out`` (inside a
    folder ``out`` whose parent is read-only), which holds the holder's pid and is removed on release. The OS
    drops the lock when a process dies, so a killed run never blocks the next one. Raises InputError
    (``<out>: another x2ct run is writing this output (lock held by pid N)``) when another process, or another
    part of this one, holds it. Parent folders created for the lock file and still empty at the end are removed.
    """
    path = Path(os.path.abspath(os.fspath(out)))
    created = _make_parents(path.parent)
    lock = _lock_path(path)
    try:
        fd = _acquire(out, lock)
        try:
            yield path
        finally:
            _release(fd, lock)
    finally:
        for folder in created:
            with contextlib.suppress(OSError):  # not empty: the run wrote there
                folder.rmdir()


def _owner(name: str) -> Optional[str]:
    """The entry a temporary, replaced folder or lock file of that name belongs to (None: not an x2ct name)."""
    match = _LEFTOVER.match(name)
    if match is None:
        return None
    if match.group("locked") is not None:
        return match.group("locked")
    suffixes = match.group("suffixes") or ""
    return match.group("stem") + (suffixes[suffixes.rfind(".") :] if suffixes else "")


def _leftovers(folder: Path) -> Dict[str, List[Path]]:
    """x2ct's temporaries, replaced folders and lock files in ``folder`` by the name of the entry they belong to
    (none in a folder this process may not list)."""
    found: Dict[str, List[Path]] = {}
    try:
        entries = list(folder.iterdir())
    except OSError:
        return found
    for entry in entries:
        owner = _owner(entry.name)
        if owner is not None:
            found.setdefault(owner, []).append(entry)
    return found


def _clean(folder: Path, name: str, entries: List[Path]) -> None:
    """Remove the temporaries of ``folder/name``; a replaced folder goes back when its replacement never arrived."""
    for entry in sorted(entries):
        if entry.name.endswith(LOCK_SUFFIX):
            continue  # released (and removed) by its holder
        if entry.name.endswith(".replaced") and not os.path.lexists(folder / name):
            os.replace(entry, folder / name)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def remove_leftovers(out: PathLike) -> None:
    """Remove what killed x2ct runs left of output ``out``; the caller holds its lock (:func:`output_lock`).

    Only x2ct's own names are touched (module doc): the temporaries of ``out`` beside it, and, in ``out`` and
    its subfolders (x2ct writes at most one level down), the temporaries and stale lock files of the entries
    whose lock no running x2ct holds. A folder replaced half-way (``.<name>.<8 characters>.replaced`` without
    ``<name>``) is put back.
    """
    out = Path(out)
    _clean(out.parent, out.name, _leftovers(out.parent).get(out.name, []))
    if not out.is_dir():
        return
    subfolders = (c for c in out.iterdir() if c.is_dir() and not c.is_symlink() and not c.name.startswith("."))
    for folder in (out, *sorted(subfolders)):
        for name, entries in _leftovers(folder).items():
            with contextlib.suppress(InputError), output_lock(folder / name):  # held: a running x2ct writes it
                _clean(folder, name, entries)


@contextlib.contextmanager
def exclusive_output(out: PathLike) -> Iterator[Path]:
    """:func:`output_lock` on ``out``, then :func:`remove_leftovers` of it; yields ``out`` (absolute)."""
    with output_lock(out) as path:
        remove_leftovers(path)
        yield path


# ------------------------------------------------------------------------------------------ hashing


def sha256_file(path: PathLike) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
