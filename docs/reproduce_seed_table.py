"""Reproduce the synthetic-CT TB classification seed's comparison (its Table 1) on the synthetic benchmark.

Rows: radiograph-only classifiers (PA; PA + lateral with HeMIS fusion), classifiers on synthetic CTs
from the single-view (+S) and biplanar (+B) demo generators (full volume and two central coronal
slices), CT + X-ray by input concatenation (and late fusion for +B), and the real CT as a reference.
The TB identification task gets every row; TB type, active vs sequelae and PE get the seed's short
rows (X-ray, CT, CT + X-ray) plus the real-CT reference.

Every number comes from the x2ct commands a user would run (``build-dataset``, ``synthesize-ct``,
``train-classifier``, ``evaluate-classifier --compare``): thresholds are chosen by Youden's J on the
validation split and frozen for test; AUCs carry DeLong 95% CIs; p-values are paired DeLong tests
against the X-ray (PA) row on the same test cases; accuracies carry Wilson CIs. The Grad-CAM hit rate
counts the positive test cases whose map peak lies inside the relevant lesion masks, per input map.

Usage (from the repository root; every step resumes, so an interrupted run can be restarted)::

    python docs/reproduce_seed_table.py --work WORK

Outputs: ``docs/classifier_reproduction.json`` and the table between the markers of
``docs/classifier_reproduction.md``. CPU budget: see the settings below (sizes shrunk for a 2-core CPU;
the JSON records them).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "classifier_reproduction.md"
RESULTS = REPO / "docs" / "classifier_reproduction.json"
START, END = "<!-- reproduction:start -->", "<!-- reproduction:end -->"
LOC_START, LOC_END = "<!-- localisation:start -->", "<!-- localisation:end -->"
PAIRS_START, PAIRS_END = "<!-- views:start -->", "<!-- views:end -->"

GENERATORS = {"S": "x2ct-demo-singleview", "B": "x2ct-demo-biplanar"}
DENSENET_SMALL = {"init_features": 16, "growth_rate": 8, "block_config": [2, 2, 2, 2]}
CNN_SMALL = {"width": 0.25}


@dataclass(frozen=True)
class Row:
    """One table row: a classifier architecture on one kind of input."""

    key: str
    label: str
    arch: str
    ct: Optional[str]  # None (no CT), "S", "B" or "real"
    options: Dict[str, Any]
    size_ct: Optional[int] = None  # None: --size-ct-full for full-volume models, 64 for two-slice ones
    epochs: Optional[int] = None  # None: --epochs


ROWS = (
    Row("xray_pa", "X-ray (PA)", "densenet2d", None, DENSENET_SMALL),
    Row("xray_pa_l", "X-ray (PA + L), HeMIS", "hemis-densenet2d", None, DENSENET_SMALL),
    Row("ct_s_full", "CT (+S), full volume", "cnn3d", "S", CNN_SMALL),
    Row("ct_s_2slice", "CT (+S), 2 slices", "cnn3d-2slice", "S", CNN_SMALL),
    Row("ct_b_full", "CT (+B), full volume", "cnn3d", "B", CNN_SMALL),
    Row("ct_b_2slice", "CT (+B), 2 slices", "cnn3d-2slice", "B", CNN_SMALL),
    Row("ct_s_xray_full", "CT (+S) + X-ray, full volume", "concat-cnn3d", "S", CNN_SMALL),
    Row("ct_s_xray_2slice", "CT (+S) + X-ray, 2 slices", "concat-cnn3d-2slice", "S", CNN_SMALL),
    Row("ct_b_xray_full", "CT (+B) + X-ray, full volume", "concat-cnn3d", "B", CNN_SMALL),
    Row("ct_b_xray_2slice", "CT (+B) + X-ray, 2 slices", "concat-cnn3d-2slice", "B", CNN_SMALL),
    Row("ct_b_xray_late", "CT (+B) + X-ray, late fusion", "late-fusion", "B", {**CNN_SMALL, **DENSENET_SMALL}),
    Row("ct_real_full", "real CT (reference), full volume", "cnn3d", "real", CNN_SMALL),
)
LOCALISATION = Row("ct_real_64", "real CT at 64³ (localisation)", "cnn3d", "real", CNN_SMALL, size_ct=64, epochs=10)
"""The Grad-CAM hit-rate figure: TB identification on the benchmark's own 5 mm grid (test and validation)."""
LOCALISATION_SPLITS = ("test", "val")
BASELINE = "xray_pa"
SHORT_ROWS = ("xray_pa", "ct_b_2slice", "ct_b_xray_2slice", "ct_real_full")
TASK_ROWS = {"tb": tuple(r.key for r in ROWS), "tb_type": SHORT_ROWS, "tb_activity": SHORT_ROWS, "pe": SHORT_ROWS}
PAIRED = {
    "biplanar_vs_single_view": (
        ("ct_b_full", "ct_s_full"),
        ("ct_b_2slice", "ct_s_2slice"),
        ("ct_b_xray_full", "ct_s_xray_full"),
        ("ct_b_xray_2slice", "ct_s_xray_2slice"),
    ),
    "biplanar_vs_xray_pa_l": tuple(
        (key, "xray_pa_l")
        for key in ("ct_b_full", "ct_b_2slice", "ct_b_xray_full", "ct_b_xray_2slice", "ct_b_xray_late")
    ),
}
"""Paired DeLong tests on the TB identification test cases: the biplanar (+B) rows against their single-view (+S)
twins, and against the radiograph classifier that sees the same two views (X-ray PA + L)."""
PAIRED_TITLES = {
    "biplanar_vs_single_view": "Every CT row with +B against its +S twin:",
    "biplanar_vs_xray_pa_l": "Every +B row against the X-ray classifier given the same two radiographs (PA + L):",
}
RESOLUTION_ROW = "ct_b_xray_2slice"
"""The row whose AUC difference to the X-ray (PA) baseline states the resolution of each task's test split."""
TASK_TITLES = {
    "tb": "TB identification (healthy vs TB; seed Table 1)",
    "tb_type": "TB type, multi-label (granuloma, cavitation, calcification; seed Table 2)",
    "tb_activity": "Active TB vs sequelae (seed Table 3)",
    "pe": "Pulmonary embolism (X-ray2CTPA seed's comparison)",
}


def x2ct(*args: str) -> None:
    """Run one x2ct command (the same entry point users call); stop on failure."""
    command = [sys.executable, "-m", "x2ct.cli", *args]
    print("+ x2ct " + " ".join(args), flush=True)
    subprocess.run(command, check=True)


def ct_source(work: Path, ct: Optional[str]) -> Optional[str]:
    if ct is None:
        return None
    return "real" if ct == "real" else str(work / f"ct_{ct}")


def train_and_evaluate(work: Path, task: str, row: Row, settings: argparse.Namespace, split: str = "test") -> Path:
    """Train (resuming) and evaluate one row for one task on ``split``; returns the evaluation folder."""
    run = work / "runs" / f"{task}-{row.key}"
    evaluation = work / "evals" / (f"{task}-{row.key}" + ("" if split == "test" else f"-{split}"))
    if not (run / "model" / "model.json").is_file():
        args = ["train-classifier", "--data", str(work / "data"), "--task", task, "--arch", row.arch, "-o", str(run)]
        source = ct_source(work, row.ct)
        if source:
            args += ["--ct-source", source]
        args += ["--set", f"epochs={row.epochs or settings.epochs}", "--set", f"lr={settings.lr}"]
        args += ["--set", f"size_xray={settings.size_xray}", "--set", "progress=false"]
        full_volume = row.arch in ("cnn3d", "concat-cnn3d", "late-fusion")
        args += ["--set", f"size_ct={row.size_ct or (settings.size_ct_full if full_volume else 64)}"]
        args += ["--set", f"arch_options={json.dumps(row.options)}", "--set", "batch_size=16"]
        args += ["--threads", str(settings.threads)] + (["--resume"] if run.exists() else [])
        x2ct(*args)
    if not (evaluation / "metrics.json").is_file():
        args = ["evaluate-classifier", "--model", str(run / "model"), "--data", str(work / "data")]
        args += ["-o", str(evaluation), "--split", split, "--cam-hit-rate"]
        source = ct_source(work, row.ct)
        if source:
            args += ["--ct-source", source]
        baseline = work / "evals" / f"{task}-{BASELINE}"
        if row.key != BASELINE and split == "test":
            args += ["--compare", str(baseline)]
        x2ct(*args)
    return evaluation


def _ci(record: Dict[str, Any], digits: int = 2) -> str:
    if record.get("value") is None:
        return "–"
    return f"{record['value']:.{digits}f} [{record['ci_low']:.{digits}f}, {record['ci_high']:.{digits}f}]"


def _p(value: Optional[float]) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def _hits(document: Dict[str, Any], output: str, method: str) -> str:
    """CAM hit rate per input map of one method, e.g. "ct 12/30, pa 5/30" (peak inside the lesion mask)."""
    record = ((document.get("cam_hit_rate") or {}).get("outputs") or {}).get(output) or {}
    inputs = record.get("per_input") or {}
    return ", ".join(f"{key} {v[method]['hits']}/{v[method]['n']}" for key, v in inputs.items()) or "–"


def table(task: str, rows: Sequence[Row], metrics: Dict[str, Dict[str, Any]]) -> List[str]:
    """Markdown lines of one task's table (one line per row and output)."""
    lines = [
        f"### {TASK_TITLES[task]}",
        "",
        "| input | output | AUC [95% CI] | p vs X-ray (PA) | accuracy [95% CI] | sensitivity | specificity | n (pos) "
        "| Grad-CAM hit rate | Guided Grad-CAM hit rate |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        document = metrics[row.key]
        for output, record in document["outputs"].items():
            m = record["metrics"]
            comparison = (document.get("comparison") or {}).get("outputs", {}).get(output, {})
            p = None if row.key == BASELINE else comparison.get("p_value")
            counts = record["counts"]
            lines.append(
                f"| {row.label} | {output} | {_ci(record['auc'])} | {_p(p)} | {_ci(m['accuracy'])} | "
                f"{_ci(m['sensitivity'])} | {_ci(m['specificity'])} | {counts['n']} ({counts['n_pos']}) | "
                f"{_hits(document, output, 'grad_cam')} | {_hits(document, output, 'guided_grad_cam')} |"
            )
    return lines + [""]


def localisation_table(metrics: Dict[str, Dict[str, Any]]) -> List[str]:
    """Markdown lines of the hit-rate figure: a column per evaluated split (``metrics``: split -> metrics.json),
    and the splits pooled when there are several."""
    from x2ct.evaluate.classifier_stats import wilson_interval

    splits = list(metrics)
    cams = {split: m["cam_hit_rate"]["outputs"]["tb_present"] for split, m in metrics.items()}
    pooled = len(splits) > 1
    lines = ["| | " + " | ".join(f"{split} split" for split in splits) + (" | pooled |" if pooled else " |")]
    lines.append("|---" * (len(splits) + 1 + pooled) + "|")
    aucs = [_ci(m["outputs"]["tb_present"]["auc"], 3) for m in metrics.values()]
    lines.append("| AUC [95% DeLong CI] | " + " | ".join(aucs) + (" | – |" if pooled else " |"))
    for method, name in (("grad_cam", "Grad-CAM"), ("guided_grad_cam", "Guided Grad-CAM")):
        tallies = [cams[split]["per_input"]["ct"][method] for split in splits]
        if pooled:
            hits, n = sum(t["hits"] for t in tallies), sum(t["n"] for t in tallies)
            low, high = wilson_interval(hits, n)
            near = sum(t["hits_dilated"] for t in tallies)
            tallies.append({"hits": hits, "n": n, "hit_rate": hits / n, "ci_low": low, "ci_high": high,
                            "hits_dilated": near, "hit_rate_dilated": near / n})  # fmt: skip
        cells = [
            f"**{t['hits']}/{t['n']} = {t['hit_rate']:.0%}** [{t['ci_low']:.0%}, {t['ci_high']:.0%}]" for t in tallies
        ]
        near_cells = [f"{t['hits_dilated']}/{t['n']} = {t['hit_rate_dilated']:.0%}" for t in tallies]
        lines.append(f"| {name} peak inside a TB lesion mask | " + " | ".join(cells) + " |")
        lines.append(f"| {name} peak within one voxel (5 mm) | " + " | ".join(near_cells) + " |")
    lines += ["", "By lesion kind (cases holding the kind; peak inside that kind's mask), splits pooled:", ""]
    lines += ["| lesion kind | cases | Grad-CAM | Guided Grad-CAM |", "|---|---|---|---|"]
    kinds = sorted({kind for cam in cams.values() for kind in cam["per_input"]["ct"]["grad_cam"]["by_kind"]})
    for kind in kinds:
        counts = {
            method: [cam["per_input"]["ct"][method]["by_kind"].get(kind, {"n": 0, "hits": 0}) for cam in cams.values()]
            for method in ("grad_cam", "guided_grad_cam")
        }
        n = sum(c["n"] for c in counts["grad_cam"])
        hits = {method: sum(c["hits"] for c in cs) for method, cs in counts.items()}
        lines.append(f"| {kind} | {n} | {hits['grad_cam']} | {hits['guided_grad_cam']} |")
    return lines


def paired_tests(work: Path, pairs: Sequence[Sequence[str]]) -> Dict[str, Any]:
    """Paired DeLong tests of ``pairs`` of row keys (a, b) on the TB identification test cases."""
    from x2ct.classify.evaluate import read_evaluation
    from x2ct.classify.tasks import get_task
    from x2ct.evaluate.classifier_stats import delong_compare

    task = get_task("tb")
    column = task.columns[0]
    results = {}
    for key_a, key_b in pairs:
        _, a = read_evaluation(work / "evals" / f"tb-{key_a}", task)
        _, b = read_evaluation(work / "evals" / f"tb-{key_b}", task)
        cases = sorted(a)
        labels = [a[c][f"{column}_label"] for c in cases]
        result = delong_compare(labels, [a[c][column] for c in cases], [b[c][column] for c in cases])
        results[f"{key_a} vs {key_b}"] = {"a": key_a, "b": key_b, "n": len(cases), **vars(result)}
    return results


def paired_table(pairs: Dict[str, Any], by_key: Dict[str, Row]) -> List[str]:
    lines = ["| row | compared with | AUC | AUC of the other | difference [95% CI] | paired DeLong p |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for record in pairs.values():
        lines.append(
            f"| {by_key[record['a']].label} | {by_key[record['b']].label} | {record['auc_a']:.2f} | "
            f"{record['auc_b']:.2f} | {record['difference']:+.2f} [{record['ci_low']:+.2f}, {record['ci_high']:+.2f}] "
            f"| {_p(record['p_value'])} |"
        )
    return lines


def resolution(task: str, metrics: Dict[str, Dict[str, Any]]) -> str:
    """One sentence: the test split's size and the half-width of the 95 % CI of the paired AUC difference between
    :data:`RESOLUTION_ROW` and the X-ray (PA) row: differences larger than it are resolved."""
    document = metrics[RESOLUTION_ROW]
    parts = []
    for output, record in document["outputs"].items():
        comparison = (document.get("comparison") or {}).get("outputs", {}).get(output, {})
        if comparison.get("ci_low") is None:
            continue
        half = (comparison["ci_high"] - comparison["ci_low"]) / 2.0
        counts = record["counts"]
        parts.append(f"{output}: {counts['n']} test cases ({counts['n_pos']} positive), ± {half:.2f}")
    return ("Resolution (half-width of the 95% CI of the paired AUC difference, CT (+B) + X-ray 2 slices vs "
            "X-ray (PA)): " + "; ".join(parts) + ".")  # fmt: skip


def portable(text: str, work: Path) -> str:
    """``text`` with the working folder's paths written as WORK (its symlinked sub-folders' targets included),
    so the committed JSON names no machine's folders."""
    places = {str(work): "WORK", str(work.resolve()): "WORK"}
    for child in work.iterdir():
        if child.is_symlink():
            places[str(child.resolve())] = f"WORK/{child.name}"
    for path in sorted(places, key=len, reverse=True):  # the longest first: a target may lie inside WORK
        text = text.replace(path, places[path])
    return text


def write_doc(block: str, start: str = START, end: str = END) -> None:
    text = DOC.read_text(encoding="utf-8")
    head, rest = text.split(start, 1)
    DOC.write_text(head + start + "\n" + block + "\n" + end + rest.split(end, 1)[1], encoding="utf-8")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--work", type=Path, required=True, help="working folder (data, synthetic CTs, runs)")
    parser.add_argument("--cases", type=int, default=1200, help="synthetic cases (default 1200)")
    parser.add_argument("--split", default="0.6,0.1,0.3", help="train,val,test fractions (default 0.6,0.1,0.3)")
    parser.add_argument("--seed", type=int, default=11, help="synthetic benchmark seed (default 11)")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs per classifier (default 20)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3; see the doc)")
    parser.add_argument("--size-xray", type=int, default=64, help="radiograph input pixels (default 64)")
    parser.add_argument("--size-ct-full", type=int, default=32, help="grid of full-volume CT models (default 32)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--tasks", nargs="+", default=list(TASK_ROWS), choices=list(TASK_ROWS))
    settings = parser.parse_args(argv)
    work = settings.work
    start = time.time()
    x2ct("build-dataset", "--synthetic-from", "sample", "--cases", str(settings.cases), "--seed", str(settings.seed),
         "--split", settings.split, "--size", "64", "--workers", "2", str(work / "data"))  # fmt: skip
    for key, model in GENERATORS.items():
        x2ct("synthesize-ct", "--model", model, "--data", str(work / "data"), "-o", str(work / f"ct_{key}"))
    by_key = {row.key: row for row in ROWS}
    command = "python docs/reproduce_seed_table.py --work WORK" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in vars(settings).items() if k not in ("work", "tasks")
    )
    results: Dict[str, Any] = {}
    blocks = []
    for task in settings.tasks:
        rows = [by_key[k] for k in TASK_ROWS[task]]
        metrics = {}
        for row in rows:  # the baseline first: the others compare against it
            evaluation = train_and_evaluate(work, task, row, settings)
            metrics[row.key] = json.loads((evaluation / "metrics.json").read_text(encoding="utf-8"))
        results[task] = {row.key: {"label": row.label, **metrics[row.key]} for row in rows}
        blocks.append("\n".join(table(task, rows, metrics)) + "\n" + resolution(task, metrics) + "\n")
        done = len(results) == len(settings.tasks)
        record = {
            "command": command,
            "complete": done,
            "settings": {k: v for k, v in vars(settings).items() if k != "work"},
            "rows": {r.key: {"label": r.label, "arch": r.arch, "ct": r.ct, "options": r.options} for r in ROWS},
            "generators": GENERATORS,
            "wall_time_s": round(time.time() - start, 1),
            "results": results,
        }
        RESULTS.write_text(portable(json.dumps(record, indent=2, default=str), work) + "\n", encoding="utf-8")
        status = "" if done else f"\n\n**Partial run:** only {', '.join(results)} finished so far."
        write_doc(f"Command: `{command}`{status}\n\n" + "\n".join(blocks))
    if "tb" in settings.tasks:
        blocks = []
        for name, pairs in PAIRED.items():
            record[name] = paired_tests(work, pairs)
            blocks.append(PAIRED_TITLES[name] + "\n\n" + "\n".join(paired_table(record[name], by_key)))
        RESULTS.write_text(portable(json.dumps(record, indent=2, default=str), work) + "\n", encoding="utf-8")
        write_doc("\n\n".join(blocks), PAIRS_START, PAIRS_END)
        located = {
            split: train_and_evaluate(work, "tb", LOCALISATION, settings, split) for split in LOCALISATION_SPLITS
        }
        found = {split: json.loads((e / "metrics.json").read_text(encoding="utf-8")) for split, e in located.items()}
        record["localisation"] = {
            "row": {"arch": LOCALISATION.arch, "options": LOCALISATION.options, "size_ct": LOCALISATION.size_ct,
                    "epochs": LOCALISATION.epochs, "ct": LOCALISATION.ct},
            "results": found,
        }  # fmt: skip
        record["wall_time_s"] = round(time.time() - start, 1)
        RESULTS.write_text(portable(json.dumps(record, indent=2, default=str), work) + "\n", encoding="utf-8")
        write_doc("\n".join(localisation_table(found)), LOC_START, LOC_END)
    print(f"wrote {RESULTS.relative_to(REPO)} and the tables in {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
