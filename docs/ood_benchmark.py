"""Calibrate the bundled generators' OOD references and measure the warning (docs/ood.md).

    python docs/ood_benchmark.py [--work WORK/ood]

1. the bundled models' training cases (``x2ct build-dataset --synthetic-from sample --seed 7``; train 50 %, val
   25 %, test 25 %) rendered twice: ``WORK/data64`` (240 cases, 64 px DRRs of 64³ CTs: what the models
   trained on) and ``WORK/data128`` (the first 160 of the same cases, same splits, 128 px DRRs of 128³ CTs:
   how a clean radiograph larger than the model input looks once predict has reduced it), unless present;
2. ``x2ct simulate-radiographs`` (seed 0) of the test split of ``data128`` with every effect
   (``WORK/sim128_all``) and with each effect alone (``WORK/sim128_<effect>``), and of ``data64`` with every
   effect (``WORK/sim64_all``);
3. ``x2ct calibrate-ood`` of ``x2ct-demo-singleview`` and ``x2ct-demo-biplanar`` with ``--data data64 --data
   data128 --simulated WORK/sim128_all`` (writes ``Resources/Models/<model>/ood_reference.json``);
4. the detection rate of each single-effect folder and the scores of the bundled sample radiographs
   (``Resources/SampleData/radiographs*``), written to ``docs/ood_benchmark.json`` and printed as a table.

Every number comes from the files it writes; rerunning on the same folders gives the same numbers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from x2ct.data.clinical import EFFECTS
from x2ct.evaluate.classifier_stats import wilson_interval
from x2ct.inference.models import load_model
from x2ct.inference.ood import read_reference
from x2ct.inference.ood_calibration import folder_cases
from x2ct.inference.preprocess import preprocess, read_input
from x2ct.resources import resources_dir
from x2ct.views import LATERAL, PA

MODELS = ("x2ct-demo-singleview", "x2ct-demo-biplanar")
HERE = Path(__file__).resolve().parent


def x2ct(*args: object) -> str:
    """Run the x2ct CLI (a fresh process, as a user would); its stdout."""
    done = subprocess.run([sys.executable, "-m", "x2ct.cli", *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr.strip())
    return done.stdout.strip()


def rate(flags: List[bool]) -> Dict[str, Any]:
    low, high = wilson_interval(int(sum(flags)), len(flags))
    return {"rate": float(np.mean(flags)), "count": int(sum(flags)), "n": len(flags), "ci95": [low, high]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("WORK/ood"))
    args = parser.parse_args()
    data = {64: args.work / "data64", 128: args.work / "data128"}
    for (size, folder), cases in zip(data.items(), (240, 160)):
        if not folder.is_dir():
            x2ct("build-dataset", "--synthetic-from", "sample", "--size", size, "--seed", 7, "--cases", cases,
                 "--split", "0.5,0.25,0.25", "--workers", 2, folder)  # fmt: skip
    folders = {"all (64 px DRRs)": (data[64], "all"), "all": (data[128], "all"), **{e: (data[128], e) for e in EFFECTS}}
    out = {name: args.work / f"sim{64 if source == data[64] else 128}_{effects}" for name, (source, effects)
           in folders.items()}  # fmt: skip
    for name, (source, effects) in folders.items():
        x2ct("simulate-radiographs", "--data", source, "--split", "test", "--seed", 0, "--effects", effects,
             "-o", out[name])  # fmt: skip
    samples = sorted((resources_dir() / "SampleData").glob("radiographs*/pa.png"))
    results: Dict[str, Any] = {"data": [str(folder) for folder in data.values()], "models": {}}
    for name in MODELS:
        print(x2ct("calibrate-ood", "--model", name, "--data", data[64], "--data", data[128], "--simulated",
                   out["all"]))  # fmt: skip
        model = load_model(name)
        reference = read_reference(model.path)
        assert reference is not None and reference.threshold is not None
        per_effect = {}
        for effects, folder in out.items():
            scores = [reference.score(case) for case in folder_cases(folder, model.views, model.spec, progress=False)]
            per_effect[effects] = {**rate([s > reference.threshold for s in scores]),
                                   "median_score": float(np.median(scores))}  # fmt: skip
        sample_scores = {}
        for pa in samples:
            files = {PA: pa, LATERAL: pa.with_name("lateral.png")}
            images = {view: preprocess(read_input(files[view], view), model.spec).model_input for view in model.views}
            sample_scores[pa.parent.name] = reference.score(images)
        results["models"][name] = {
            "threshold": reference.threshold,
            "calibration": reference.calibration,
            "simulated_by_effect": per_effect,
            "sample_radiographs": sample_scores,
        }
    (HERE / "ood_benchmark.json").write_text(json.dumps(results, indent=1) + "\n")
    print("| simulated effects | " + " | ".join(MODELS) + " |\n|---|" + "---|" * len(MODELS))
    for effects in out:
        cells = []
        for name in MODELS:
            r = results["models"][name]["simulated_by_effect"][effects]
            low, high = (100 * bound for bound in r["ci95"])
            cells.append(f"{100 * r['rate']:.0f}% ({r['count']}/{r['n']}; {low:.0f}-{high:.0f})")
        print(f"| {effects} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
