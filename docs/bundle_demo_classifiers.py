"""Copy the reproduction run's "CT (+B) + X-ray, 2 slices" classifiers into ``Resources/Classifiers`` with model cards.

Usage (after ``python docs/reproduce_seed_table.py --work WORK``)::

    python docs/bundle_demo_classifiers.py --work WORK

For each task it copies ``WORK/runs/<task>-ct_b_xray_2slice/model`` to
``Resources/Classifiers/x2ct-demo-<task>/``, replaces the machine's absolute paths in ``model.json`` by
what they were (the weights and their sha256 are untouched, so the sha256 check still holds), adds
the held-out test metrics from ``WORK/evals/<task>-ct_b_xray_2slice/metrics.json`` and writes
``MODEL_CARD.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from x2ct.classify.tasks import get_task
from x2ct.models.metadata import ModelMetadata

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "Resources" / "Classifiers"
REPRODUCTION = REPO / "docs" / "classifier_reproduction.json"
ROW = "ct_b_xray_2slice"
VERSION = "2.0.0"
CHANGELOG = {
    "1.0.0": "first release (metadata schema 1, migrated to schema 2): trained on 480 cases with the CTs of the "
    "X2CT-GAN demo generators",
    "2.0.0": "retrained on 720 cases with the CTs of the back-projection demo generators (x2ct-demo-biplanar 2.0.0)",
}
TASKS = {"tb": "tb", "tb_type": "tb-type", "tb_activity": "tb-activity", "pe": "pe"}


def _scrub(value: Any, work: Path) -> Any:
    """Absolute paths of this machine -> a description relative to the reproduction's working folder."""
    if isinstance(value, dict):
        return {k: _scrub(v, work) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, work) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        path = Path(value).resolve()
        links = [(child.resolve(), f"WORK/{child.name}") for child in work.iterdir() if child.is_symlink()]
        for root, name in (*links, (work.resolve(), "WORK"), (REPO, "REPO")):
            try:
                return f"{name}/{path.relative_to(root)}".rstrip("/.")
            except ValueError:
                continue
        return "(a local path)"
    return value


def _ci(record: Dict[str, Any]) -> str:
    if record.get("value") is None:
        return "–"
    return f"{record['value']:.2f} [{record['ci_low']:.2f}, {record['ci_high']:.2f}]"


def model_card(name: str, task: str, meta: ModelMetadata, metrics: Dict[str, Any]) -> str:
    """The MODEL_CARD.md text of one bundled classifier."""
    rows = []
    for output, record in metrics["outputs"].items():
        m = record["metrics"]
        counts = record["counts"]
        rows.append(
            f"| {output} | {_ci(record['auc'])} | {record['threshold']:.3f} | {_ci(m['accuracy'])} | "
            f"{_ci(m['sensitivity'])} | {_ci(m['specificity'])} | {counts['n']} ({counts['n_pos']}) |"
        )
    data = meta.training_data or {}
    width = meta.network_config.get("width")
    sizes = {key: meta.input_size(key) for key in meta.input_keys}
    outputs = ", ".join(f"`{o}`" for o in meta.task.outputs)
    thresholds = ", ".join(f"`{k}` {v:.3f}" for k, v in meta.thresholds().items())
    run = json.loads(REPRODUCTION.read_text(encoding="utf-8"))["settings"]  # the reproduction run's settings
    return f"""# Model card: {name}

**A demonstration classifier, not a clinical one. It was trained and tested on SYNTHETIC cases of one
CT. Research use only; not for diagnosis.**

| | |
|---|---|
| task | `{task}`: {get_task(task).description} |
| architecture | `{meta.architecture}`: the seed's input concatenation, the PA radiograph stacked with the two central \
coronal slices of the synthetic CT, through the Zunair 3D CNN at width ×{width}; {meta.parameters:,} parameters |
| inputs | `pa`: the PA radiograph as the generator's preprocessing gives it ({sizes.get("pa")} px, [0, 1]); \
`ct`: the synthetic CT of `x2ct-demo-biplanar` ({sizes.get("ct")}³, unit scale (HU + 1024) / 2500) |
| outputs | {outputs} (sigmoid probabilities) |
| thresholds | {thresholds}: Youden's J on the validation split, frozen |
| weights | `model.safetensors`, sha256 `{meta.sha256}` (checked on every load) |

## Data

`x2ct build-dataset --synthetic-from sample --cases {run["cases"]} --seed {run["seed"]} --split {run["split"]} \
--size 64` (one real chest CT with seeded deformations, intensity changes and procedural lesions; \
docs/synthetic_lesions.md), split
{data.get("cases", {}).get("train")} train / {data.get("cases", {}).get("val")} validation cases for this task
(TB type and activity use TB-positive cases only), and the synthetic CTs `x2ct synthesize-ct` made
from every case's DRRs with `x2ct-demo-biplanar`. **Every case is the same patient**; the lesions are
painted, not acquired. The classifier cannot be expected to work on real radiographs.

## Training

`x2ct train-classifier --task {task} --arch {meta.architecture} --ct-source WORK/ct_B` with the settings of
`docs/reproduce_seed_table.py` ({run["epochs"]} epochs, Adam {run["lr"]:g}, batch 16, BCE with class weights, rotation
augmentation; the epoch with the best validation AUC kept). Full settings: `model.json` → `training`.

## Held-out test metrics (test split, thresholds frozen from validation)

| output | AUC [95% DeLong CI] | threshold | accuracy [Wilson CI] | sensitivity | specificity | n (pos) |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

The comparison with the radiograph-only and CT-only classifiers is in
`docs/classifier_reproduction.md`. With a few dozen test cases the intervals are wide.

## Use

`x2ct predict` and `x2ct demo` run every bundled classifier; the findings go to `findings.json`
with the probability, this threshold, the call and this sha256, and the Grad-CAM maps to `gradcam/`.
Applied to CTs of another generator (e.g. `x2ct-demo-singleview`), each finding carries a note that
the calibration differs.
"""


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--work", type=Path, required=True, help="the reproduction's working folder")
    work = parser.parse_args(argv).work
    for task, suffix in TASKS.items():
        name = f"x2ct-demo-{suffix}"
        source = work / "runs" / f"{task}-{ROW}" / "model"
        metrics = json.loads((work / "evals" / f"{task}-{ROW}" / "metrics.json").read_text(encoding="utf-8"))
        target = TARGET / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target)
        document = _scrub(json.loads((target / "model.json").read_text(encoding="utf-8")), work)
        test = _scrub({k: metrics[k] for k in ("outputs", "split", "n_cases") if k in metrics}, work)
        meta = replace(ModelMetadata.from_dict(document), name=name, version=VERSION, changelog=CHANGELOG,
                       metrics=dict(document["metrics"], test=test))  # fmt: skip
        text = json.dumps(meta.to_dict(), indent=2, sort_keys=True) + "\n"
        (target / "model.json").write_text(text, encoding="utf-8")
        (target / "MODEL_CARD.md").write_text(model_card(name, task, meta, metrics), encoding="utf-8")
        print(f"bundled {name} from {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
