"""Atomic file and folder writes (temporary name beside the target, then rename), and file hashing.

A crash or an error half-way leaves either the old target or nothing, never a partial file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]


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

    An existing ``target`` folder is replaced only after the new one is complete.
    """
    target = Path(target)
    tmp = _temporary_sibling(target, is_dir=True)
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
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


def sha256_file(path: PathLike) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
