"""Import a settings module of x2ct from copies of the package whose default settings file was edited.

Proves that a settings dataclass (TrainConfig, ClassifierConfig) takes its defaults from its default JSON
file only: edit the file in a copy, import the copy in a fresh interpreter, look at what the class gives.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List

Edit = Callable[[Dict[str, Any]], Dict[str, Any]]

_IMPORT = """
import importlib, json, sys
module, kind = sys.argv[1:3]
results = []
for root in sys.argv[3:]:
    sys.path.insert(0, root)
    for name in [m for m in sys.modules if m == "x2ct" or m.startswith("x2ct.")]:
        del sys.modules[name]
    try:
        config = importlib.import_module(module)
        results.append({"file": config.__file__, "defaults": getattr(config, kind)().to_dict(),
                        "loaded": config.load_config().to_dict()})
    except Exception as err:
        results.append({"error": f"{type(err).__name__}: {err}"})
    sys.path.remove(root)
print(json.dumps(results))
"""


def import_with_edited_defaults(
    tmp_path: Path, module: str, kind: str, default_file: Path, edits: Dict[str, Edit]
) -> Dict[str, Dict[str, Any]]:
    """Per edit name: ``{"root", "file", "defaults", "loaded"}`` (module file, ``kind().to_dict()``,
    ``load_config().to_dict()``) or ``{"root", "error"}`` (the import's exception) of ``module`` imported from
    a copy of x2ct whose ``default_file`` (a file of the installed package) holds ``edit(its JSON object)``."""
    import x2ct

    package = Path(x2ct.__file__).resolve().parent
    inside = default_file.resolve().relative_to(package)
    roots: List[Path] = []
    for name, edit in edits.items():
        root = tmp_path / name
        shutil.copytree(package, root / "x2ct", ignore=shutil.ignore_patterns("__pycache__"))
        copied = root / "x2ct" / inside
        copied.write_text(json.dumps(edit(json.loads(copied.read_text()))))
        roots.append(root)
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT, module, kind, *map(str, roots)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    return {name: dict(result, root=str(root)) for name, root, result in zip(edits, roots, results)}
