"""``x2ct demo``: the README's main command: ``x2ct predict`` on the bundled sample cases with both demo models.

Sample cases (``Resources/SampleData``; DRRs of the bundled real chest CT, table removed; neither was a
training case of the demo models; see ``make_sample_radiographs.py`` there):

* ``healthy``: ``radiographs/pa.png`` and ``lateral.png``, the CT as it is;
* ``tb``: ``radiographs_tb/``, the same CT with procedural active-TB lesions (a cavity and a
  consolidation), their masks (``lesions.nrrd``, canonical 128³ cube) and record (``lesions.json``).

Models: the bundled demo generators ``x2ct-demo-biplanar`` (+B: PA + lateral) and
``x2ct-demo-singleview`` (+S: PA only); classifiers: every bundled one (``Resources/Classifiers``),
giving findings and Grad-CAM maps.

Output folder (default ``./x2ct-demo/``), written atomically as a whole::

    <case>/biplanar/    synthetic_ct.nrrd, summary.json, report.png, findings.json, gradcam/
                        (x2ct predict --pa --lateral)
    <case>/singleview/  the same (x2ct predict --pa)
    report.png          both cases side by side: PA, coronal synthetic-CT slices through the lesions (known
                        lesions outlined green, Guided Grad-CAM peak crossed), CT Grad-CAM, findings
    demo.json           every run: model, device, consistency, timings, findings; for the TB case, the distance
                        from each CT Guided Grad-CAM peak to the nearest lesion voxel
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import SimpleITK as sitk

from .atomic import atomic_dir, exclusive_output
from .errors import InputError
from .inference import ModelCache, Prediction, predict, write_prediction
from .inference.report import CaseRow, cases_picture, ct_peak_index, lesions_on_grid
from .inference.types import Finding, VolumePeak
from .resources import resources_dir
from .views import CT_KEY, LATERAL_KEY, PA_KEY

DEMO_MODELS = {"biplanar": "x2ct-demo-biplanar", "singleview": "x2ct-demo-singleview"}
"""Output subfolder -> bundled model name."""

MODEL_LABELS = {"biplanar": "+B", "singleview": "+S"}

DEMO_CASES = {"healthy": "radiographs", "tb": "radiographs_tb"}
"""Case name (output folder) -> its folder under ``Resources/SampleData``."""

FOCUS = "tb_present"
"""The finding whose Grad-CAM map and Guided Grad-CAM peak the demo's report draws next to the lesions."""

DEMO_SUMMARY = "demo.json"
DEMO_REPORT = "report.png"
LESION_MASK = "lesions.nrrd"
LESION_RECORD = "lesions.json"


@dataclass(frozen=True)
class SampleCase:
    """A bundled sample case: its radiographs by input key and, when it has lesions, their mask (bool (D, H, W)
    on the canonical cube) and ``lesions.json`` record."""

    name: str
    radiographs: Dict[str, Path]
    lesions: Optional[np.ndarray] = None
    lesion_record: Optional[Dict[str, Any]] = None


def sample_case(name: str = "healthy") -> SampleCase:
    """The bundled sample case ``name`` (:data:`DEMO_CASES`); InputError naming the missing file."""
    folder = resources_dir() / "SampleData" / DEMO_CASES[name]
    paths = {key: folder / f"{key}.png" for key in (PA_KEY, LATERAL_KEY)}
    for path in paths.values():
        if not path.is_file():
            raise InputError(path, "sample radiograph missing; run Resources/SampleData/make_sample_radiographs.py")
    mask_path, record_path = folder / LESION_MASK, folder / LESION_RECORD
    if not mask_path.is_file():
        return SampleCase(name, paths)
    lesions = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path))) > 0
    record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else None
    return SampleCase(name, paths, lesions, record)


def sample_radiographs() -> Dict[str, Path]:
    """Paths of the healthy sample case's radiographs by input key, ``pa`` and ``lateral``."""
    return sample_case("healthy").radiographs


def peak_to_lesion_mm(finding: Finding, prediction: Prediction, lesions: np.ndarray) -> Optional[Dict[str, Any]]:
    """How far the finding's CT Guided Grad-CAM peak lies from the nearest voxel of ``lesions`` (bool (D, H, W),
    canonical cube), on the synthetic CT's grid: ``distance_mm`` (0 inside) and ``inside``. A two-slice
    model's peak has no anterior-posterior position; then the distance is measured in the coronal plane to
    the lesions' coronal footprint (``plane`` says which). None without a CT peak."""
    peak = finding.guided_peak.get(CT_KEY)
    if not isinstance(peak, VolumePeak):
        return None
    size = prediction.volume_hu.shape[0]
    grid = lesions_on_grid(lesions, size)
    d, h, w = ct_peak_index(peak.lps_mm, prediction)
    spacing = prediction.grid.spacing_mm
    if h is None:
        footprint = np.argwhere(grid.any(axis=1))
        offsets, plane = footprint - np.array([d, w]), "coronal (two-slice model: no anterior-posterior position)"
    else:
        offsets, plane = np.argwhere(grid) - np.array([d, h, w]), "3D"
    distance = float(np.sqrt((offsets.astype(float) ** 2).sum(axis=1)).min()) * spacing
    inside = distance <= spacing * 0.5 + 1e-6
    return {"output": finding.output, "distance_mm": round(0.0 if inside else distance, 1), "inside": inside,
            "plane": plane}  # fmt: skip


def _check_models() -> None:
    """Refuse (one line naming the model) when a bundled demo model is not there."""
    for name in DEMO_MODELS.values():
        folder = resources_dir() / "Models" / name
        if not (folder / "model.json").is_file():
            raise InputError(folder, f"bundled demo model {name} not found (not trained yet); the demo needs it")


def _run_record(prediction: Prediction, folder: str, case: SampleCase) -> Dict[str, Any]:
    record = {
        "model": prediction.model.name,
        "weights_sha256": prediction.model.sha256,
        "device": str(prediction.model.device),
        "consistency": prediction.consistency_score,
        "consistency_per_view": prediction.consistency,
        "generator_s": prediction.timings_s["generator"],
        "findings": {f.output: {"probability": f.probability, "call": f.call} for f in prediction.findings},
        "outputs": f"{case.name}/{folder}/",
    }
    if case.lesions is not None:
        located = [peak_to_lesion_mm(f, prediction, case.lesions) for f in prediction.findings]
        record["guided_peak_to_lesion"] = [x for x in located if x is not None]
    return record


def _notes(case: SampleCase, runs: Dict[str, Dict[str, Any]]) -> List[str]:
    """The report's words on a case: its lesions and, per model, where the CT Guided Grad-CAM peak fell."""
    if case.lesion_record is None:
        return ["no lesion (the CT as it is)"]
    kinds = ", ".join(f"{x['kind']} {x['equivalent_diameter_mm']:g} mm" for x in case.lesion_record["lesions"])
    lines = [f"lesions (green): {kinds}"]
    for folder, run in runs.items():
        for x in (x for x in run.get("guided_peak_to_lesion", []) if x["output"] == FOCUS):
            where = "inside a lesion" if x["inside"] else f"{x['distance_mm']:g} mm from a lesion"
            lines.append(f"{MODEL_LABELS[folder]} {x['output']} Guided Grad-CAM peak (+): {where}")
    return lines


def run_demo(out: Path, device: str = "auto") -> dict:
    """Run both demo models on both sample cases into ``out``; return the ``demo.json`` record. One run at a
    time writes ``out`` (:func:`x2ct.atomic.exclusive_output`; InputError while another holds it)."""
    with exclusive_output(out):
        return _demo(out, device)


def _demo(out: Path, device: str) -> dict:
    """The body of :func:`run_demo`, with ``out`` held."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / DEMO_SUMMARY).is_file())):
        raise InputError(out, "output folder exists and is not empty (and is not an earlier x2ct demo)")
    _check_models()
    cases = [sample_case(name) for name in DEMO_CASES]
    cache = ModelCache(device)
    predictions: Dict[str, Dict[str, Prediction]] = {case.name: {} for case in cases}
    steps, step = len(cases) * len(DEMO_MODELS) + 1, 0
    for case in cases:
        for folder, name in DEMO_MODELS.items():
            lateral = case.radiographs[LATERAL_KEY] if folder == "biplanar" else None
            model = cache.get(name, have_lateral=lateral is not None)
            step += 1
            views = "PA + lateral" if lateral else "PA only"
            print(f"[{step}/{steps}] {case.name} case: {name} on {model.device}: {views}", flush=True)
            classifiers = cache.classifiers(have_lateral=lateral is not None)
            predictions[case.name][folder] = predict(model, case.radiographs[PA_KEY], lateral, classifiers=classifiers)
    print(f"[{steps}/{steps}] writing {out}/", flush=True)
    summary: Dict[str, Any] = {"cases": {}}
    rows = []
    for case in cases:
        runs = {folder: _run_record(p, folder, case) for folder, p in predictions[case.name].items()}
        summary["cases"][case.name] = {
            "inputs": {k: str(v) for k, v in case.radiographs.items()},
            "lesions": None if case.lesion_record is None else case.lesion_record["lesions"],
            "runs": runs,
        }
        labelled = {MODEL_LABELS[folder]: p for folder, p in predictions[case.name].items()}
        rows.append(CaseRow(f"{case.name} case", labelled, case.lesions, _notes(case, runs), FOCUS))
    summary["note"] = "SYNTHETIC CTs from DRRs of the bundled real CT; research use only, not for diagnosis"
    with atomic_dir(out) as tmp:
        for case_name, by_model in predictions.items():
            for folder, prediction in by_model.items():
                write_prediction(prediction, tmp / case_name / folder)
        cases_picture(rows, "x2ct demo - the two sample cases, +B and +S").save(tmp / DEMO_REPORT, format="PNG")
        (tmp / DEMO_SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    for case_name, record in summary["cases"].items():
        for folder, run in record["runs"].items():
            print(f"  {case_name:<8} {folder:<10} consistency {run['consistency']:.3f}")
            for output, finding in run["findings"].items():
                print(f"  {'':<19} {output}: {finding['probability']:.2f} {finding['call']}")
    print(f"  report: {out / DEMO_REPORT}")
    return summary
