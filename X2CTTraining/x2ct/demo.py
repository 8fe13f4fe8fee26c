"""``x2ct demo``: the README's main command: ``x2ct predict`` on the bundled sample radiographs.

Inputs: ``Resources/SampleData/radiographs/pa.png`` and ``lateral.png``, DRRs of the bundled real
chest CT (un-augmented, table removed; held out from the demo models' training; see the README
there). Models: the bundled demo generators ``x2ct-demo-biplanar`` (+B: PA + lateral) and
``x2ct-demo-singleview`` (+S: PA only). Classifiers: every bundled one (``Resources/Classifiers``),
giving findings and Grad-CAM maps.

Output folder (default ``./x2ct-demo/``), written atomically as a whole::

    biplanar/    synthetic_ct.nrrd, summary.json, report.png, findings.json, gradcam/  (x2ct predict --pa --lateral)
    singleview/  the same                                                             (x2ct predict --pa)
    demo.json    both runs side by side: model, device, consistency, timings
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

from .atomic import atomic_dir
from .errors import InputError
from .inference import ModelCache, Prediction, predict, write_prediction
from .resources import resources_dir
from .views import LATERAL_KEY, PA_KEY

DEMO_MODELS = {"biplanar": "x2ct-demo-biplanar", "singleview": "x2ct-demo-singleview"}
"""Output subfolder -> bundled model name."""

DEMO_SUMMARY = "demo.json"


def sample_radiographs() -> Dict[str, Path]:
    """Paths of the bundled sample radiographs by input key, ``pa`` and ``lateral`` (InputError when missing)."""
    folder = resources_dir() / "SampleData" / "radiographs"
    paths = {key: folder / f"{key}.png" for key in (PA_KEY, LATERAL_KEY)}
    for path in paths.values():
        if not path.is_file():
            raise InputError(path, "sample radiograph missing; run Resources/SampleData/make_sample_radiographs.py")
    return paths


def _check_models() -> None:
    """Refuse (one line naming the model) when a bundled demo model is not there."""
    for name in DEMO_MODELS.values():
        folder = resources_dir() / "Models" / name
        if not (folder / "model.json").is_file():
            raise InputError(folder, f"bundled demo model {name} not found (not trained yet); the demo needs it")


def run_demo(out: Path, device: str = "auto") -> dict:
    """Run both demo models on the sample radiographs into ``out``; return the ``demo.json`` record."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / DEMO_SUMMARY).is_file())):
        raise InputError(out, "output folder exists and is not empty (and is not an earlier x2ct demo)")
    _check_models()
    inputs = sample_radiographs()
    cache = ModelCache(device)
    predictions: Dict[str, Prediction] = {}
    for n, (folder, name) in enumerate(DEMO_MODELS.items(), start=1):
        lateral = inputs[LATERAL_KEY] if folder == "biplanar" else None
        model = cache.get(name, have_lateral=lateral is not None)
        print(f"[{n}/{len(DEMO_MODELS) + 1}] {name} on {model.device}: {'PA + lateral' if lateral else 'PA only'}")
        classifiers = cache.classifiers(have_lateral=lateral is not None)
        predictions[folder] = predict(model, inputs[PA_KEY], lateral, classifiers=classifiers)
    print(f"[{len(DEMO_MODELS) + 1}/{len(DEMO_MODELS) + 1}] writing {out}/")
    summary = {
        "inputs": {k: str(v) for k, v in inputs.items()},
        "runs": {
            folder: {
                "model": p.model.name,
                "weights_sha256": p.model.sha256,
                "device": str(p.model.device),
                "consistency": p.consistency_score,
                "consistency_per_view": p.consistency,
                "generator_s": p.timings_s["generator"],
                "findings": {f.output: {"probability": f.probability, "call": f.call} for f in p.findings},
                "outputs": f"{folder}/",
            }
            for folder, p in predictions.items()
        },
        "note": "SYNTHETIC CTs from DRRs of the bundled real CT; research use only, not for diagnosis",
    }
    with atomic_dir(out) as tmp:
        for folder, prediction in predictions.items():
            write_prediction(prediction, tmp / folder)
        (tmp / DEMO_SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    for folder, run in summary["runs"].items():
        print(f"  {folder:<10} consistency {run['consistency']:.3f}  -> {out / folder / 'report.png'}")
        for output, finding in run["findings"].items():
            print(f"  {'':<10} {output}: {finding['probability']:.2f} {finding['call']}")
    return summary
