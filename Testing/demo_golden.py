"""The demo's outputs reduced to what must not change when the code is reorganised.

``snapshot(demo_dir)`` reads an ``x2ct demo`` folder and returns, per run (:data:`RUNS`: each sample case
with the biplanar and the single-view model):

* ``synthetic_ct``: the sha256 of the int16 voxels of ``synthetic_ct.nrrd`` with their shape, spacing,
  origin, direction and the x2ct header entries, plus a summary that survives tiny rounding
  differences (another CPU may round a convolution differently and so change the hash):
  ``mean_hu`` (mean of the voxels, HU) and ``voxels_above_minus500_hu`` (how many voxels exceed
  -500 HU, i.e. are not lung or air);
* ``findings``: ``findings.json`` as written;
* ``summary``: ``summary.json`` without ``timings_s``.

Absolute paths (this checkout's ``Resources`` folder) become ``<RESOURCES>`` so the snapshot does not
depend on where the repository lives. The stored snapshot is ``Testing/data/demo_golden.json``; it was
made with torch on one thread (the thread count changes float reduction order and so a few voxels).

Regenerate it only when the bundled models or the documented outputs change on purpose::

    python Testing/demo_golden.py            # runs the demo on one thread and rewrites the snapshot
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict

import numpy as np
import SimpleITK as sitk

GOLDEN = Path(__file__).resolve().parent / "data" / "demo_golden.json"
RUNS = tuple(f"{case}/{model}" for case in ("healthy", "tb") for model in ("biplanar", "singleview"))
"""The demo's runs: sample case / model folder."""
TISSUE_HU = -500
"""Voxels above this (HU) are counted in ``voxels_above_minus500_hu``."""


def _portable(value: Any, resources: str) -> Any:
    """``value`` with every occurrence of the Resources folder's absolute path replaced by ``<RESOURCES>``."""
    if isinstance(value, dict):
        return {k: _portable(v, resources) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v, resources) for v in value]
    if isinstance(value, str):
        return value.replace(resources, "<RESOURCES>")
    return value


def _ct_record(path: Path) -> Dict[str, Any]:
    image = sitk.ReadImage(str(path))
    voxels = np.ascontiguousarray(sitk.GetArrayFromImage(image))
    return {
        "voxels_sha256": hashlib.sha256(voxels.tobytes()).hexdigest(),
        "dtype": str(voxels.dtype),
        "shape": list(voxels.shape),
        "spacing": list(image.GetSpacing()),
        "origin": list(image.GetOrigin()),
        "direction": list(image.GetDirection()),
        "x2ct_header": {k: image.GetMetaData(k) for k in sorted(image.GetMetaDataKeys()) if k.startswith("x2ct")},
        "mean_hu": round(float(voxels.mean(dtype=np.float64)), 3),
        "voxels_above_minus500_hu": int((voxels > TISSUE_HU).sum()),
    }


def snapshot(demo_dir: Path) -> Dict[str, Any]:
    """The comparable content of an ``x2ct demo`` output folder (module doc)."""
    from x2ct.resources import resources_dir

    resources = str(resources_dir())
    runs: Dict[str, Any] = {}
    for run in RUNS:
        folder = demo_dir / run
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        summary.pop("timings_s")
        runs[run] = {
            "synthetic_ct": _ct_record(folder / "synthetic_ct.nrrd"),
            "findings": json.loads((folder / "findings.json").read_text(encoding="utf-8")),
            "summary": summary,
        }
    return _portable(runs, resources)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_demo_one_thread(out: Path) -> None:
    """``x2ct demo -o OUT --device cpu`` in this process with torch on one thread."""
    import torch

    from x2ct.demo import run_demo

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_demo(out, device="cpu")
    finally:
        torch.set_num_threads(before)


def main() -> int:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        run_demo_one_thread(Path(tmp) / "demo")
        document = {
            "made_with": {"torch": torch.__version__, "cpu": cpu_model(), "threads": 1},
            "runs": snapshot(Path(tmp) / "demo"),
        }
    GOLDEN.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {GOLDEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
