"""Generators side by side at an equal training-time budget on the synthetic benchmark (docs/generator_comparison.md).

Usage::

    python docs/compare_generators.py --work WORK [--minutes 10] [--jobs 2] [--rows ROW,ROW,...]

1. ``WORK/data``: ``x2ct build-dataset --synthetic-from sample --cases 600 --seed 7 --size 64`` (480 / 60 / 60).
2. Every row trains with ``x2ct train-generator`` for ``--minutes`` of training time (``max_minutes``; one
   torch thread each, ``--jobs`` rows at a time on a CPU of as many cores), so each gets the same compute;
   the CPU minutes the process used are measured (``os.wait4``) and reported. The latent diffusion row trains
   with ``x2ct train-diffusion --preset demo`` in its two stages one after the other, the VAE for
   :data:`VAE_SHARE` of the budget and the latent denoiser for the rest (CPU minutes of both summed); it is
   scored like the others, one DDIM sample per case (the model's ``forward``, seed 0).
3. Each model is scored on the test split by ``x2ct evaluate-generator`` (the image metric protocol and the
   lesion metrics, docs/metric_protocol.md) and, for the biplanar rows, by ``x2ct lesion-check`` (a 25 mm
   solid lesion painted into each of the five lobes of the un-augmented CT).
4. The lesion contrast of every row is compared with the template's, lesion by lesion on the same test
   lesions: the mean difference of relative contrasts with a 95 % bootstrap CI over cases.

Writes ``docs/generator_comparison.json`` (paths relative to WORK) and the table between the markers of
``docs/generator_comparison.md``. Rerunning skips finished trainings and evaluations.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from bundle_demo_generators import RECIPE, x2ct  # this folder (docs/) is on sys.path when the script runs

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "generator_comparison.json"
DOC = REPO / "docs" / "generator_comparison.md"
BEGIN, END = "<!-- comparison:start -->", "<!-- comparison:end -->"
BUILD = ["--synthetic-from", "sample", "--cases", "600", "--seed", "7", "--size", "64"]

L1_NADAM = ["gan_weight=0", "recon_weight=0", "projection_weight=0", "l1_weight=1", "optimizer=nadam", "lr=0.001"]
LESION = next(item for item in RECIPE if item.startswith("lesion_weight="))
"""The bundled demo generators' lesion-loss weight (docs/bundle_demo_generators.py)."""


@dataclass(frozen=True)
class Row:
    """One generator of the comparison: its ``x2ct train-generator --set`` settings (``x2ct train-diffusion
    --preset demo --set`` settings when ``diffusion``)."""

    key: str
    label: str
    settings: Tuple[str, ...]
    diffusion: bool = False

    @property
    def biplanar(self) -> bool:
        return "views=1" not in self.settings


ROWS = (
    Row("template", "template (mean training CT)", ("architecture=template", "gan_weight=0", "epochs_constant=1")),
    Row("x2ct_gan_s", "X2CT-GAN +S (width 1/8)", ("architecture=x2ct_gan", "views=1", "width=0.125", "ndf=16")),
    Row("x2ct_gan_b", "X2CT-GAN +B (width 1/8)", ("architecture=x2ct_gan", "views=2", "width=0.125", "ndf=16")),
    Row("bp_unet_s", "back-projection U-Net, PA", ("architecture=bp_unet", "views=1", *L1_NADAM)),
    Row("bp_unet_b", "back-projection U-Net, PA + lateral", ("architecture=bp_unet", "views=2", *L1_NADAM)),
    Row("bp_unet_lesion_s", "back-projection U-Net + lesion loss, PA", ("architecture=bp_unet", "views=1",
        *L1_NADAM, LESION)),  # fmt: skip
    Row("bp_unet_lesion_b", "back-projection U-Net + lesion loss, PA + lateral", ("architecture=bp_unet", "views=2",
        *L1_NADAM, LESION)),  # fmt: skip
    Row("dual_unet_64_b", "dual U-Net, 64-unit dense bottleneck", ("architecture=dual_unet", "views=2",
        'arch_options={"dense_units": 64}', *L1_NADAM)),  # fmt: skip
    Row("dual_unet_512_b", "dual U-Net, 512-unit dense bottleneck", ("architecture=dual_unet", "views=2",
        'arch_options={"dense_units": 512}', *L1_NADAM)),  # fmt: skip
    Row("latent_diffusion_b", "latent diffusion (demo sizes), PA + lateral", ("views=2",), diffusion=True),
)
VAE_SHARE = 0.4
"""Share of the budget the latent diffusion row spends on its VAE stage (the rest on the latent denoiser)."""
DIFFUSION_COMMON = ("epochs=1000", "device=cpu", "progress=false", "tensorboard=off", "keep_every_epochs=0",
                    "val_every_epochs=0", "seed=0")  # fmt: skip
BUNDLED = ("x2ct-demo-biplanar", "x2ct-demo-singleview", "x2ct-demo-diffusion")
"""The bundled demo generators, scored on the same test cases below the table (trained longer, on two threads; the
diffusion model on one, docs/bundle_demo_diffusion.py); those not installed are left out."""
COMMON = ("grid_size=64", "batch_size=4", "epochs_constant=1000", "epochs_decay=0", "device=cpu",
          "progress=false", "tensorboard=off", "keep_every_epochs=0", "val_every_epochs=0",
          "sample_every_epochs=0", "seed=0")  # fmt: skip


def portable(value: Any, work: Path) -> Any:
    """``value`` with WORK's absolute path replaced by ``WORK`` (and WORK/data's, which may be a link elsewhere) and
    the repository's made relative (the bundled models)."""
    if isinstance(value, dict):
        return {k: portable(v, work) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v, work) for v in value]
    if not isinstance(value, str):
        return value
    value = value.replace(str((work / "data").resolve()), "WORK/data").replace(str(work.resolve()), "WORK")
    return value.replace(str(REPO) + "/", "")


def train_diffusion(row: Row, work: Path, minutes: float) -> None:
    """The two stages of a latent diffusion row, one after the other (VAE in WORK/runs/<key>-vae, then the denoiser
    in WORK/runs/<key>); writes WORK/runs/<key>/cost.json with the CPU minutes of both."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    vae_run, run = work / "runs" / f"{row.key}-vae", work / "runs" / row.key
    cpu = wall = 0.0
    for stage, share, extra in (("vae", VAE_SHARE, []), ("ldm", 1.0 - VAE_SHARE, ["--vae", vae_run / "model"])):
        out = vae_run if stage == "vae" else run
        sets = [f"max_minutes={minutes * share:g}", "threads=1", *DIFFUSION_COMMON, *row.settings]
        args = ["train-diffusion", "--preset", "demo", "--stage", stage, *extra, "--data", work / "data", "-o", out]
        args += [part for item in sets for part in ("--set", item)]
        with open(work / f"train_{row.key}_{stage}.log", "w") as log:
            start = time.monotonic()
            process = subprocess.Popen(x2ct(*args), stdout=log, stderr=subprocess.STDOUT, env=env)
            _, status, usage = os.wait4(process.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"training {row.key} ({stage}) failed: see {work / f'train_{row.key}_{stage}.log'}")
        cpu += (usage.ru_utime + usage.ru_stime) / 60.0
        wall += (time.monotonic() - start) / 60.0
        print(f"trained {row.key} ({stage})", flush=True)
    (run / "cost.json").write_text(json.dumps({"cpu_minutes": cpu, "wall_minutes": wall}) + "\n")


def train_all(rows: Sequence[Row], work: Path, minutes: float, jobs: int) -> Dict[str, Dict[str, float]]:
    """Train the rows not trained yet, ``jobs`` at a time (the diffusion rows first, one at a time); returns {key:
    {cpu_minutes, wall_minutes}} of new runs (earlier ones come from WORK/runs/<key>/cost.json)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    waiting = [row for row in rows if not (work / "runs" / row.key / "model" / "model.json").is_file()]
    for row in [row for row in waiting if row.diffusion]:
        train_diffusion(row, work, minutes)
    waiting = [row for row in waiting if not row.diffusion]
    running: Dict[int, Tuple[Row, float]] = {}
    while waiting or running:
        while waiting and len(running) < jobs:
            row = waiting.pop(0)
            sets = [f"max_minutes={minutes}", "threads=1", *COMMON, *row.settings]
            args = ["train-generator", "--data", work / "data", "-o", work / "runs" / row.key]
            args += [part for item in sets for part in ("--set", item)]
            log = open(work / f"train_{row.key}.log", "w")
            process = subprocess.Popen(x2ct(*args), stdout=log, stderr=subprocess.STDOUT, env=env)
            running[process.pid] = (row, time.monotonic())
            print(f"training {row.key}", flush=True)
        pid, status, usage = os.wait4(-1, 0)
        row, start = running.pop(pid)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"training {row.key} failed: see {work / f'train_{row.key}.log'}")
        cpu = (usage.ru_utime + usage.ru_stime) / 60.0
        cost = {"cpu_minutes": cpu, "wall_minutes": (time.monotonic() - start) / 60.0}
        (work / "runs" / row.key / "cost.json").write_text(json.dumps(cost) + "\n")
        print(f"trained {row.key}: {cost['cpu_minutes']:.1f} CPU min", flush=True)
    return {row.key: json.loads((work / "runs" / row.key / "cost.json").read_text()) for row in rows}


def evaluate(row: Row, work: Path, model: Optional[Path] = None) -> Dict[str, Any]:
    """The row's test metrics (evaluate-generator) and, for biplanar rows, its lesion check; ``model``: a model
    other than the row's own training run (a bundled one)."""
    model = model or work / "runs" / row.key / "model"
    out = work / "evals" / row.key
    if not (out / "metrics_summary.json").is_file():
        subprocess.run(x2ct("evaluate-generator", "--model", model, "--data", work / "data", "--split", "test",
                            "-o", out, "--device", "cpu"), check=True, capture_output=True)  # fmt: skip
    record: Dict[str, Any] = {"summary": json.loads((out / "metrics_summary.json").read_text())}
    check = out / "lesion_check.json"
    if row.biplanar:
        if not check.is_file():
            done = subprocess.run(x2ct("lesion-check", "--model", model, "--device", "cpu", "--json"), check=True,
                                  capture_output=True, text=True)  # fmt: skip
            check.write_text(done.stdout)
        record["lesion_check"] = json.loads(check.read_text())
    meta = json.loads((model / "model.json").read_text())
    record["steps"] = meta["training"]["steps"]
    vae_meta = work / "runs" / f"{row.key}-vae" / "model" / "model.json"
    if row.diffusion and vae_meta.is_file():  # both stages' steps
        record["steps"] = f"VAE {json.loads(vae_meta.read_text())['training']['steps']} + LDM {record['steps']}"
    record["parameters"] = meta["weights"]["parameters"]
    record["training_minutes"] = meta["training"]["seconds"] / 60.0
    record["threads"] = meta["training"]["threads"]
    return record


def evaluate_bundled(work: Path) -> Dict[str, Dict[str, Any]]:
    """:data:`BUNDLED` scored like the rows, with their difference to the template."""
    from x2ct.resources import resources_dir

    records = {}
    for name in BUNDLED:
        folder = resources_dir() / "Models" / name
        if not (folder / "model.json").is_file():
            continue
        views = json.loads((folder / "model.json").read_text())["network"]["config"].get("views", 2)
        row = Row(name, name, (f"views={views}",))
        record = evaluate(row, work, folder)
        if (work / "evals" / "template" / "lesions_per_lesion.csv").is_file():
            record["minus_template"] = difference_to_template(work, name)
        records[name] = record
    return records


def relative_contrasts(work: Path, key: str) -> Dict[Tuple[str, str, str], float]:
    """(case, kind, index) -> relative contrast, for the usable lesions of a row's evaluation."""
    with open(work / "evals" / key / "lesions_per_lesion.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    usable = [r for r in rows if r["relative_contrast"]]
    return {(r["case_id"], r["kind"], r["index"]): float(r["relative_contrast"]) for r in usable}


def difference_to_template(work: Path, key: str) -> Dict[str, Any]:
    """Mean (row − template) relative contrast over the same lesions, with a 95 % bootstrap CI over cases."""
    from x2ct.evaluate.lesion_metrics import bootstrap_mean_ci

    mine, base = relative_contrasts(work, key), relative_contrasts(work, "template")
    by_case: Dict[str, List[float]] = {}
    for lesion, value in mine.items():
        if lesion in base:
            by_case.setdefault(lesion[0], []).append(value - base[lesion])
    values = [v for group in by_case.values() for v in group]
    ci = bootstrap_mean_ci(list(by_case.values()))
    return {"mean": sum(values) / len(values), "ci": ci, "lesions": len(values), "cases": len(by_case)}


def _ci(mean: Optional[float], ci: Optional[Sequence[float]], digits: int = 2) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def _normal_ci(summary: Dict[str, Any], name: str, digits: int) -> str:
    """Mean of an image metric with its normal-approximation 95 % CI (mean ± 1.96 SD / sqrt n)."""
    m, n = summary["metrics"][name], summary["n_cases"]
    half = 1.96 * m["std"] / n**0.5
    return _ci(m["mean"], (m["mean"] - half, m["mean"] + half), digits)


def table(results: Dict[str, Any]) -> List[str]:
    lines = ["| generator | parameters | training CPU-min (steps) | MAE in the body, HU | 3D SSIM | lesion relative "
             "contrast [95% CI] | minus template [95% CI] | lesions shown | 25 mm lesion check |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in ROWS:
        if row.key in results["rows"]:
            r = results["rows"][row.key]
            cost = f"{r['parameters']:,} | {r['cost']['cpu_minutes']:.1f} ({r['steps']})"
            lines.append(f"| {row.label} | {cost} | {_scores(r)} |")
    return lines


def _scores(r: Dict[str, Any]) -> str:
    """The image, lesion and lesion-check cells of one evaluated model."""
    lesions = r["summary"]["lesions"]["overall"]
    low, high = lesions["relative_contrast_ci_low"], lesions["relative_contrast_ci_high"]
    contrast = _ci(lesions["relative_contrast_mean"], None if low is None else (low, high))
    diff = r.get("minus_template")
    minus = "–" if diff is None else _ci(diff["mean"], diff["ci"])
    check = r.get("lesion_check")
    checked = "–" if check is None else f"{sum(x['shows'] for x in check['results'])}/{len(check['results'])}"
    mae, ssim = _normal_ci(r["summary"], "mae_hu_body", 1), _normal_ci(r["summary"], "honest_ssim_3d", 3)
    return f"{mae} | {ssim} | {contrast} | {minus} | {lesions['n_show']}/{lesions['n_usable']} | {checked}"


def bundled_table(results: Dict[str, Any]) -> List[str]:
    lines = ["| bundled model | training (steps) | MAE in the body, HU | 3D SSIM | lesion relative contrast [95% CI] | "
             "minus template [95% CI] | lesions shown | 25 mm lesion check |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.get("bundled", {}).items():
        training = f"{r['training_minutes']:.0f} min on {r['threads']} threads ({r['steps']})"
        lines.append(f"| `{name}` | {training} | {_scores(r)} |")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--work", type=Path, required=True, help="working folder (data, runs, evaluations)")
    parser.add_argument("--minutes", type=float, default=10.0, help="training-time budget of every row (default 10)")
    parser.add_argument("--jobs", type=int, default=2, help="rows trained at once, one thread each (default 2)")
    parser.add_argument("--rows", help="comma list of row keys (default: all)")
    args = parser.parse_args(argv)
    work: Path = args.work
    rows = [row for row in ROWS if not args.rows or row.key in args.rows.split(",")]
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "data" / "manifest.csv").is_file():
        subprocess.run(x2ct("build-dataset", *BUILD, "--workers", "2", work / "data"), check=True)
    costs = train_all(rows, work, args.minutes, args.jobs)
    results: Dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"rows": {}}
    for row in rows:
        record = evaluate(row, work)
        record["cost"] = costs[row.key]
        if row.key != "template" and (work / "evals" / "template" / "lesions_per_lesion.csv").is_file():
            record["minus_template"] = difference_to_template(work, row.key)
        results["rows"][row.key] = record
    results["bundled"] = evaluate_bundled(work)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    command = "python docs/compare_generators.py --work WORK --minutes " + f"{args.minutes:g} --jobs {args.jobs}"
    results.update({"command": command, "budget_minutes": args.minutes, "cpu": cpu, "cores": os.cpu_count(),
                    "data": " ".join(["x2ct build-dataset", *BUILD, "WORK/data"])})  # fmt: skip
    RESULTS.write_text(json.dumps(portable(results, work), indent=2) + "\n")
    text = DOC.read_text(encoding="utf-8")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    body = [f"Command: `{command}` ({cpu}, {os.cpu_count()} cores)", "", *table(results), "",
            "The bundled demo models on the same test cases, not at the table's budget "
            "(docs/bundle_demo_generators.py: the lesion-loss recipe, trained longer and on two threads; "
            "x2ct-demo-diffusion: docs/bundle_demo_diffusion.py, one thread):", "", *bundled_table(results)]
    DOC.write_text(head + BEGIN + "\n" + "\n".join(body) + "\n" + END + tail, encoding="utf-8")
    print(f"wrote {RESULTS} and {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
