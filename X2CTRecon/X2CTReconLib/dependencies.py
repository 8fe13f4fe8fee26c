"""Which Python packages the bundled ``x2ct`` still needs inside Slicer, and how to pip-install them safely.

Policy (no Slicer imports here; X2CTReconLogic asks the user and calls ``slicer.util.pip_install``):

* only requirements whose distribution is *absent* are installed; a package that is present is
  never upgraded, whatever its version (Slicer's own numpy, SimpleITK, pydicom stay as shipped);
* every distribution already installed is pinned (``name==version``) in a constraints file, so pip
  cannot upgrade one of them as a dependency of a new package (it fails with a conflict instead);
* Slicer 5.11+ has ``slicer.packaging`` and ``pip_install(requirements, constraints=..., requester=...)``;
  older releases take one argument list, so the constraints go in as ``-c FILE``
  (Base/Python/slicer/util.py at v5.10.0 vs v5.12.3).
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

PACKAGING_API_VERSION = (5, 11)
"""First Slicer (major, minor) whose ``slicer.util.pip_install`` accepts ``constraints=`` (slicer.packaging)."""

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_LOWER_BOUND = re.compile(r">=\s*([0-9][0-9A-Za-z.]*)")


def readRequirements(path: Path) -> List[str]:
    """Requirement lines of a requirements.txt (comments and blank lines dropped)."""
    lines = (line.split("#", 1)[0].strip() for line in Path(path).read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


def requirementName(requirement: str, normalize: bool = True) -> str:
    """The distribution name of a requirement line; ``normalize``: PEP 503 form (lower case, runs of -_. -> -)."""
    match = _NAME.match(requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if normalize else match.group(1)


def _versionTuple(version: str) -> Tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:4])


def installedVersion(name: str) -> Optional[str]:
    """Version of the installed distribution ``name``, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def checkRequirements(
    requirements: Sequence[str], versionOf: Optional[Callable[[str], Optional[str]]] = None
) -> Tuple[List[str], List[str]]:
    """(requirements to install because absent, notes about present packages older than asked).

    ``versionOf(name)`` gives an installed version or None (default :func:`installedVersion`).
    Present packages are left alone even when older than the lower bound: the note says so.
    """
    versionOf = versionOf or installedVersion
    missing, notes = [], []
    for requirement in requirements:
        name = requirementName(requirement)
        version = versionOf(requirementName(requirement, normalize=False))
        if version is None:
            missing.append(requirement)
            continue
        bound = _LOWER_BOUND.search(requirement)
        if bound and _versionTuple(version) < _versionTuple(bound.group(1)):
            notes.append(f"{name} {version} is older than {bound.group(1)} but is kept (it ships with Slicer)")
    return missing, notes


def installedDistributions() -> Dict[str, str]:
    """{normalised name: version} of every distribution in this Python."""
    found: Dict[str, str] = {}
    for distribution in metadata.distributions():
        name = distribution.metadata["Name"]
        if name:
            found[requirementName(name)] = distribution.version
    return found


def constraintsText(installed: Mapping[str, str]) -> str:
    """A pip constraints file pinning every installed distribution to its current version."""
    return "".join(f"{name}=={version}\n" for name, version in sorted(installed.items()))


def pipInstallCall(
    slicerVersion: Tuple[int, int], requirements: Sequence[str], constraintsPath: str, requester: str
) -> Tuple[list, dict]:
    """(positional args, keyword args) for ``slicer.util.pip_install`` on this Slicer version."""
    if tuple(slicerVersion) >= PACKAGING_API_VERSION:
        return [list(requirements)], {"constraints": constraintsPath, "requester": requester}
    return [["-c", constraintsPath, *requirements]], {}
