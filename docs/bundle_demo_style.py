"""Train, measure and bundle the demo style model (``Resources/Styles/x2ct-demo-style``).

The CPU recipe that made the bundled files (one torch thread, 20 minutes of training time on a shared CPU)::

    python docs/bundle_demo_style.py --work WORK --minutes 20 --threads 1

Steps:

1. build the synthetic benchmark of the bundled chest CT (``BUILD``: 64 px DRRs, split 0.6/0.1/0.3);
2. simulate clinical CR/DX radiographs (``x2ct simulate-radiographs``, docs/clinical_simulator.md) of the
   training split and of the test split;
3. split the training cases in two halves (alternating in case order): the simulated radiographs of the
   first half are the "real" folder, the DRRs of the second half (8-bit PNG, from the case files) the
   "drr" folder, so the two folders are unpaired, as real data would be;
4. ``x2ct train-style`` (``RECIPE``) for at most ``--minutes`` of training time (a rerun with more minutes
   continues the run: delete ``WORK/run/model`` first);
5. measure on the held-out test split, where the simulator gives each simulated radiograph its DRR:
   the mean absolute difference and the SSIM between the simulated radiograph and its DRR, before and
   after style transfer, per case (PA and lateral averaged), with 95% bootstrap CIs over cases; and how
   much the style model changes a DRR that is already in the target style;
6. export into ``Resources/Styles`` with its metrics and write the model card (``--dry-run``: not).

Reruns skip what is done.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
STYLES = REPO / "Resources" / "Styles"
IMAGES = REPO / "docs" / "images"
NAME = "x2ct-demo-style"
VERSION = "1.0.0"
CHANGELOG = {VERSION: "first demo style model: CycleGAN trained on simulated CR/DX of one real CT"}
SIZE = 64
BUILD = f"x2ct build-dataset --synthetic-from sample --cases 120 --seed 1 --size {SIZE} --split 0.6,0.1,0.3"
SIMULATION_SEEDS = {"train": 1, "test": 2}
RECIPE = (
    f"size={SIZE}", "architecture=cyclegan_resnet", "width=16", "blocks=6", "d_width=32", "d_layers=3",
    "batch_size=4", "epochs_constant=25", "epochs_decay=15", "ema_decay=0.995", "val_fraction=0.1",
    "keep_every_epochs=0", "progress=false", "tensorboard=off", "seed=0",
)  # fmt: skip
"""The training settings that differ from x2ct/train/style_default.json (the rest are the defaults)."""


def x2ct(*args: object) -> List[str]:
    return [sys.executable, "-m", "x2ct.cli", *map(str, args)]


def run(command: List[str], log: Path) -> None:
    with open(log, "w") as fh:
        if subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT).returncode != 0:
            raise SystemExit(f"{' '.join(command[2:5])} failed: see {log}")


def cases_of(data: Path, split: str) -> List[Dict[str, str]]:
    from x2ct.data.layout import read_manifest

    return [row for row in read_manifest(data) if row["split"] == split]


def drr_images(data: Path, row: Dict[str, str]) -> Dict[str, np.ndarray]:
    """The stored PA and lateral DRRs of a case, (S, S) float32 in [0, 1] (the one case reader)."""
    from x2ct.data.loader import read_case

    return read_case(data / row["path"], {"pa": SIZE, "lateral": SIZE})


def write_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(path)


def prepare_folders(work: Path) -> None:
    """WORK/real (manifest of simulated radiographs of the first half of the training cases) and WORK/drr (DRR
    PNGs of the second half)."""
    data, simulated = work / "data", work / "sim_train"
    train = sorted(cases_of(data, "train"), key=lambda row: row["case_id"])
    with open(simulated / "manifest.csv", newline="") as fh:
        files = {row["case_id"]: row for row in csv.DictReader(fh)}
    real, drr = work / "real", work / "drr"
    for folder in (real, drr):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
    real_lines, drr_lines = ["case_id,pa,lateral"], ["case_id,pa,lateral"]
    for k, row in enumerate(train):
        case = row["case_id"]
        if k % 2 == 0:
            sim = files[case]
            real_lines.append(f"{case},../sim_train/{sim['pa']},../sim_train/{sim['lateral']}")
        else:
            (drr / case).mkdir()
            for key, image in drr_images(data, row).items():
                write_png(image, drr / case / f"{key}.png")
            drr_lines.append(f"{case},{case}/pa.png,{case}/lateral.png")
    (real / "manifest.csv").write_text("\n".join(real_lines) + "\n")
    (drr / "manifest.csv").write_text("\n".join(drr_lines) + "\n")


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """2D SSIM (skimage defaults, data range 1), as the official X2CT-GAN metrics compute it per slice."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a.astype(np.float64), b.astype(np.float64), data_range=1.0))


def summary(per_case: List[List[float]]) -> Dict[str, Any]:
    """Mean over cases (of per-case view means) and its 95% bootstrap CI over cases (seeded)."""
    from x2ct.evaluate.lesion_metrics import bootstrap_mean_ci

    values = [float(np.mean(v)) for v in per_case]
    low, high = bootstrap_mean_ci([[v] for v in values]) or (None, None)
    return {"mean": float(np.mean(values)), "ci_low": low, "ci_high": high, "n_cases": len(values)}


def measure(work: Path, model: Path) -> Dict[str, Any]:
    """Before/after metrics on the test split (module doc, step 5); also writes the example figure."""
    from x2ct.data.radiograph_folder import model_input
    from x2ct.inference.style import apply_style, load_style
    from x2ct.inference.types import InputSpec
    from x2ct.views import LATERAL, PA

    style = load_style(model, "cpu")
    spec = InputSpec(size=SIZE)
    with open(work / "sim_test" / "manifest.csv", newline="") as fh:
        simulated = {row["case_id"]: row for row in csv.DictReader(fh)}
    rows = sorted(cases_of(work / "data", "test"), key=lambda row: row["case_id"])
    names = ("mad_before", "mad_after", "ssim_before", "ssim_after", "mad_change", "drr_change")
    per_case: Dict[str, List[List[float]]] = {name: [] for name in names}
    examples = []
    for row in rows:
        drrs = drr_images(work / "data", row)
        values: Dict[str, List[float]] = {name: [] for name in names}
        for view, key in ((PA, "pa"), (LATERAL, "lateral")):
            real = model_input(work / "sim_test" / simulated[row["case_id"]][key], view, spec)
            styled, drr = apply_style(style, real), drrs[key]
            values["mad_before"].append(float(np.abs(real - drr).mean()))
            values["mad_after"].append(float(np.abs(styled - drr).mean()))
            values["ssim_before"].append(ssim(real, drr))
            values["ssim_after"].append(ssim(styled, drr))
            values["drr_change"].append(float(np.abs(apply_style(style, drr) - drr).mean()))
            if key == "pa" and len(examples) < 4:
                examples.append((real, styled, drr))
        values["mad_change"] = [a - b for a, b in zip(values["mad_after"], values["mad_before"])]
        for name in names:
            per_case[name].append(values[name])
    result = {name: summary(per_case[name]) for name in names}
    pairs = zip(per_case["ssim_after"], per_case["ssim_before"])
    result["ssim_change"] = summary([[a - b for a, b in zip(after, before)] for after, before in pairs])
    montage = np.concatenate([np.concatenate(triple, axis=0) for triple in examples], axis=1)
    write_png(montage, work / "examples.png")
    return result


def model_card(meta: Dict[str, Any], metrics: Dict[str, Any], cpu_minutes: float) -> str:
    training, config = meta["training"], meta["training"]["config"]
    real, drr = meta["training_data"]["real"], meta["training_data"]["drr"]
    w = config["width"]
    layers = f"c7s1-{w}, d{2 * w}, d{4 * w}, R{4 * w} × {config['blocks']}, u{2 * w}, u{w}, c7s1-1"
    budget = training.get("time_budget_minutes")
    stopped = f", stopped by the {budget:g}-minute budget" if budget else ""
    facts = [
        ("version", f"{meta['version']} (changelog in `model.json`)"),
        ("what it does", f"translates a radiograph in the model-input space of `x2ct predict` ({SIZE} × {SIZE}, "
         "per-image min–max, PA or lateral) towards the look of the DRRs the bundled generators were trained on: "
         f"`x2ct predict --style {meta['name']}`"),
        ("architecture", f"CycleGAN (Zhu et al. 2017) real → DRR generator, ResNet `{layers}` with instance norm and "
         f"reflection padding; {meta['weights']['parameters']:,} parameters; the weights are the exponential moving "
         f"average (decay {config['ema_decay']:g}, with warm-up) of the generator's"),
        ("weights", f"`model.safetensors`, sha256 `{meta['weights']['sha256']}` (checked on every load)"),
    ]  # fmt: skip
    table = "\n".join(f"| {key} | {value} |" for key, value in facts)
    losses = (f"cycle λ {config['cycle_weight']:g}, identity loss {config['identity_weight']:g} λ, image pool "
              f"{config['pool_size']}, {config['optimizer']} lr {config['lr']:g}, betas ({config['beta1']:g}, "
              f"{config['beta2']:g})")  # fmt: skip
    network = (f"size {SIZE}, width {w}, {config['blocks']} residual blocks, discriminator width "
               f"{config['d_width']}, batch {config['batch_size']}")  # fmt: skip
    run = (f"{training['steps']} steps, {cpu_minutes:.1f} CPU minutes with {training['threads']} thread(s) on "
           f"{training['device']}{stopped}")  # fmt: skip

    def cell(name: str, digits: int = 3) -> str:
        m = metrics[name]
        return f"{m['mean']:.{digits}f} [{m['ci_low']:.{digits}f}, {m['ci_high']:.{digits}f}]"

    return f"""# Model card: {meta['name']}

**A demonstration model, not a clinical one. It was trained on SIMULATED clinical radiographs of ONE real CT and
says nothing about real clinical images. Research use only; not for diagnosis.**

| | |
|---|---|
{table}

## Training data

- **"real" domain**: {real['train_images']} simulated CR/DX radiographs, PA and lateral ({real['val_images']} more held
  out for validation), made by `x2ct simulate-radiographs` (docs/clinical_simulator.md: scatter and grid, heel
  effect, detector blur and quantum noise, vendor log/LUT with multi-scale unsharp masking, collimation, side
  markers, positioning) from the DRRs of the first half of the training cases of `{BUILD}`;
- **DRR domain**: the {drr['train_images']} stored DRRs ({drr['val_images']} more held out) of the other half of those
  training cases, so the two folders hold no pair of the same case.

Every case of that benchmark is a seeded deformation of **the same patient** (the bundled sample CT,
`Resources/SampleData/PROVENANCE.md`), and the "real" images come from our simulator, not from any clinical
device. Nothing here shows how the model behaves on real clinical radiographs.

## Training

`x2ct train-style` with the defaults of `x2ct/train/style_default.json` (LSGAN, 70 × 70 PatchGANs, {losses})
except the settings in `RECIPE` of `docs/bundle_demo_style.py` ({network}); {run}.

## Measured effect (held-out test split, {metrics['mad_before']['n_cases']} cases; mean [95% bootstrap CI over cases])

The simulator gives each simulated test radiograph the DRR it was made from. Both are prepared as `x2ct
predict` prepares an input ({SIZE} px, min–max, 8 bits); per case the PA and lateral values are averaged.

| simulated radiograph vs its DRR | before style transfer | after | after − before |
|---|---|---|---|
| mean absolute difference ([0, 1] scale) | {cell('mad_before')} | {cell('mad_after')} | {cell('mad_change')} |
| SSIM | {cell('ssim_before')} | {cell('ssim_after')} | {cell('ssim_change')} |

Change the model makes to a test DRR (already in the target style), mean absolute difference:
{cell('drr_change')}.

The simulated radiographs also differ from their DRRs in position (rotation, shift, magnification),
collimation and markers, which a style model cannot undo; that part of the difference stays.
`docs/images/style_transfer_demo.png` shows four test PAs: simulated (top), translated (middle), their DRRs
(bottom). At this short training the translated images are smoother than the DRRs and show a faint
checkerboard pattern (the transposed convolutions' known artefact).

## Intended use and limits

- It shows the `--style` option end to end (`x2ct predict`, the Slicer module, the batch script).
- It was trained on a simulation of one patient and can only learn what the simulator adds; on real
  radiographs it may do nothing useful or harm the input. Train your own with `x2ct train-style` on your
  radiographs and DRRs (docs/style_transfer.md) and check it before use.
- CycleGAN translation can add or remove structure (the shape-induction paper, Sizikova et al.,
  arXiv:2208.10937, found that it degrades inputs); the synthetic CT of a translated radiograph is still a
  synthetic image, not a measurement.
"""


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--work", type=Path, required=True, help="working folder (data, runs, evaluations)")
    parser.add_argument("--minutes", type=float, default=20.0, help="training time budget (default 20)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--dry-run", action="store_true", help="train and measure, but do not bundle")
    args = parser.parse_args(argv)
    work: Path = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "data" / "manifest.csv").is_file():
        run([*x2ct(*BUILD.split()[1:]), work / "data"], work / "build.log")
    for split, seed in SIMULATION_SEEDS.items():
        if not (work / f"sim_{split}" / "manifest.csv").is_file():
            command = x2ct("simulate-radiographs", "--data", work / "data", "-o", work / f"sim_{split}", "--split",
                           split, "--seed", seed)  # fmt: skip
            run(command, work / f"simulate_{split}.log")
    if not (work / "drr" / "manifest.csv").is_file():
        prepare_folders(work)
    model = work / "run" / "model"
    if not (model / "model.json").is_file():
        sets = [*RECIPE, f"threads={args.threads}", f"max_minutes={args.minutes}", "device=cpu"]
        command = x2ct("train-style", "--real", work / "real", "--drr", work / "drr", "-o", work / "run",
                       *[x for s in sets for x in ("--set", s)])  # fmt: skip
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        with open(work / "train.log", "w") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            _, status, usage = os.wait4(process.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"training failed: see {work / 'train.log'}")
        earlier = work / "cpu_minutes.json"  # a rerun with more --minutes resumes the run: CPU time adds up
        before = float(json.loads(earlier.read_text())) if earlier.is_file() else 0.0
        earlier.write_text(json.dumps(before + (usage.ru_utime + usage.ru_stime) / 60.0))
    cpu_minutes = float(json.loads((work / "cpu_minutes.json").read_text()))
    metrics = measure(work, model)
    record = {"when": time.strftime("%Y-%m-%d"), "cpu": platform.processor() or platform.machine(),
              "cpu_minutes": cpu_minutes, "metrics": metrics}  # fmt: skip
    print(json.dumps(record, indent=2))
    if args.dry_run:
        return 0
    from x2ct.atomic import atomic_dir
    from x2ct.inference.style import load_style

    target = STYLES / NAME
    with atomic_dir(target) as tmp:
        shutil.copy(model / "model.safetensors", tmp / "model.safetensors")
        meta = json.loads((model / "model.json").read_text())
        meta.update(name=NAME, version=VERSION, changelog=CHANGELOG, metrics={"split": "test", **metrics},
                    source={"kind": "trained with x2ct train-style", "script": "docs/bundle_demo_style.py",
                            "data": BUILD, "simulation_seeds": SIMULATION_SEEDS})  # fmt: skip
        text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
        text = text.replace(str(work), "WORK")  # this machine's folders (the weights' sha256 is untouched)
        (tmp / "model.json").write_text(text)
        (tmp / "MODEL_CARD.md").write_text(model_card(json.loads(text), metrics, cpu_minutes), encoding="utf-8")
    load_style(target, "cpu")  # verifies the sha256 and the network
    IMAGES.mkdir(exist_ok=True)
    shutil.copy(work / "examples.png", IMAGES / "style_transfer_demo.png")
    print(f"bundled {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
