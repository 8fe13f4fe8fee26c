"""The demo's outputs have not changed: ``x2ct demo`` (CPU, one thread) against the stored snapshot.

``Testing/data/demo_golden.json`` was made by ``Testing/demo_golden.py`` from the code before the
inference package was reorganised, and remade when the demo models changed on purpose (see that module). It
holds, per run (each sample case with each demo model), the synthetic CT's voxel
hash, grid and header, ``findings.json`` and ``summary.json`` without timings (see that module).

* Same torch version and CPU model as the snapshot (``made_with``): everything must be **equal**.
* Otherwise another CPU may round a convolution differently, so the comparison has a stated
  tolerance: the same structure (keys, list lengths), strings, booleans, None and integers;
  floats within :data:`FLOAT_ATOL`. The CT's voxel hash cannot be compared then; its robust summary
  is instead: mean HU within :data:`MEAN_HU_ATOL` and the number of voxels above -500 HU within
  :data:`TISSUE_VOXELS_RTOL` (relative).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, List

import torch

from demo_golden import GOLDEN, cpu_model, run_demo_one_thread, snapshot

FLOAT_ATOL = 2e-3
"""Largest difference allowed between two floats (probabilities, scores, mm) on another CPU."""
MEAN_HU_ATOL = 1.0
"""Largest difference (HU) of the synthetic CT's mean on another CPU."""
TISSUE_VOXELS_RTOL = 0.002
"""Largest relative difference of the count of voxels above -500 HU on another CPU."""
ROBUST_CT_FIELDS = ("voxels_sha256", "mean_hu", "voxels_above_minus500_hu")
"""The CT fields compared with their own rule on another CPU (the hash is skipped)."""


def differences(expected: Any, actual: Any, where: str = "") -> List[str]:
    """Where ``actual`` differs from ``expected`` beyond the tolerance (module doc); empty when it does not."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        if set(expected) != set(actual):
            return [f"{where}: keys {sorted(set(expected) ^ set(actual))} differ"]
        return [d for key in expected for d in differences(expected[key], actual[key], f"{where}/{key}")]
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{where}: {len(actual)} items, expected {len(expected)}"]
        return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in differences(e, a, f"{where}[{i}]")]
    if isinstance(expected, float) and isinstance(actual, (float, int)) and not isinstance(actual, bool):
        close = math.isclose(expected, actual, rel_tol=0.0, abs_tol=FLOAT_ATOL)
        return [] if close else [f"{where}: {actual!r}, expected {expected!r} (± {FLOAT_ATOL})"]
    if type(expected) is not type(actual) or expected != actual:
        return [f"{where}: {actual!r}, expected {expected!r}"]
    return []


def ct_differences(expected: dict, actual: dict, where: str) -> List[str]:
    """The robust CT summary of another CPU: mean HU and tissue voxel count within their tolerances."""
    found = []
    if abs(actual["mean_hu"] - expected["mean_hu"]) > MEAN_HU_ATOL:
        found.append(f"{where}/mean_hu: {actual['mean_hu']}, expected {expected['mean_hu']} (± {MEAN_HU_ATOL})")
    tissue, reference = actual["voxels_above_minus500_hu"], expected["voxels_above_minus500_hu"]
    if abs(tissue - reference) > TISSUE_VOXELS_RTOL * reference:
        found.append(f"{where}/voxels_above_minus500_hu: {tissue}, expected {reference} (± {TISSUE_VOXELS_RTOL:.1%})")
    return found


def tolerant_differences(expected_runs: dict, actual_runs: dict) -> List[str]:
    """Differences between two snapshots' runs under the tolerance for another CPU."""
    found = []
    for run in expected_runs:
        if run not in actual_runs:
            found.append(f"{run}: missing")
            continue
        expected, actual = dict(expected_runs[run]), dict(actual_runs[run])
        expected_ct, actual_ct = dict(expected.pop("synthetic_ct")), dict(actual.pop("synthetic_ct"))
        found += ct_differences(expected_ct, actual_ct, f"{run}/synthetic_ct")
        for name in ROBUST_CT_FIELDS:
            expected_ct.pop(name)
            actual_ct.pop(name)
        found += differences(expected_ct, actual_ct, f"{run}/synthetic_ct")
        found += differences(expected, actual, run)
    return found


def test_the_tolerant_comparison_catches_what_it_must():
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))["runs"]
    changed = json.loads(json.dumps(golden))
    run = changed["tb/biplanar"]
    run["synthetic_ct"]["voxels_sha256"] = "0" * 64  # another CPU: the hash may differ
    run["findings"]["findings"][0]["probability"] += FLOAT_ATOL / 2
    assert tolerant_differences(golden, changed) == []
    run["findings"]["findings"][0]["probability"] += FLOAT_ATOL
    run["findings"]["findings"][0]["call"] = "maybe"
    run["synthetic_ct"]["mean_hu"] += 2 * MEAN_HU_ATOL
    assert len(tolerant_differences(golden, changed)) == 3


def test_demo_outputs_match_the_snapshot(tmp_path: Path):
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    run_demo_one_thread(tmp_path / "demo")
    runs = json.loads(json.dumps(snapshot(tmp_path / "demo")))  # through JSON, as the snapshot was stored
    made_with = golden["made_with"]
    if made_with["torch"] == torch.__version__ and made_with["cpu"] == cpu_model():
        assert runs == golden["runs"], "\n".join(differences(golden["runs"], runs))
    else:
        found = tolerant_differences(golden["runs"], runs)
        here = f"snapshot made with {made_with}, here torch {torch.__version__} on {cpu_model()}"
        assert not found, here + ":\n" + "\n".join(found)
