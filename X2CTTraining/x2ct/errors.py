"""Errors a user can cause, reported as one line naming the file and the problem."""

from __future__ import annotations

import os
from typing import Sequence, Union

PathLike = Union[str, "os.PathLike[str]"]


class InputError(ValueError):
    """A user-caused problem with one input file (bad format, wrong view, too large, ...).

    ``str(err)`` is the one line shown to the user: ``<file>: <problem>``.
    The CLI prints it as ``x2ct: error: <file>: <problem>`` and exits with status 2.
    """

    def __init__(self, path: PathLike | None, problem: str) -> None:
        self.path = os.fspath(path) if path is not None else None
        self.problem = " ".join(str(problem).split())  # always a single line
        super().__init__(f"{self.path}: {self.problem}" if self.path else self.problem)


class MissingExtraError(InputError):
    """A command needs an optional extra of the package (``pip install 'x2ct[NAME]'``) that is not installed."""

    def __init__(self, extra: str, needed_by: str, missing: Sequence[str]) -> None:
        self.extra, self.missing = extra, list(missing)
        super().__init__(
            None,
            f"{needed_by} needs the {extra} extra: pip install 'x2ct[{extra}]' (cannot import {', '.join(missing)})",
        )
