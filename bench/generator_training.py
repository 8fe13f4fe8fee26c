"""Training speed: back-projection U-Net vs X2CT-GAN at (nearly) equal parameter count, side by side, in one run.

Usage (from the repository root)::

    python bench/generator_training.py --work WORK [--minutes 8] [--cases 120]

Both generators train at the same time on the same data (``x2ct build-dataset --synthetic-from sample --cases
120 --seed 3 --size 64``: 96 train / 12 val / 12 test), each in its own process with one torch thread, for the
same training-time budget (``max_minutes``), batch 4, 64³, validation after every epoch:

* ``bp_unet``: biplanar back-projection U-Net (x2ct.models.xprospect), MAE, NAdam, lr 1e-3;
* ``x2ct_gan``: X2CT-GAN +B with its official losses and optimiser (LSGAN + MSE + projection L1, Adam 2e-4),
  at the width whose generator parameter count is closest to the U-Net's.

Reported, per generator: parameters, steps per second of training time, CPU-minutes used (``os.wait4``),
the validation MAE (HU, whole cube) after each epoch, and the CPU-minutes to reach two target validation
MAEs: the template's (the mean training CT, whatever the input), and 95 % of it, i.e. the time to learn
something from the radiographs. The back-projection U-Net adds its output to the mean CT, but its
untrained output is not zero, so it too starts far above the template. Ratios bp_unet / x2ct_gan are
given for steps per second and minutes to each target ("not reached" when the budget ran out first).

Outputs: ``bench/results/generator_training.json`` and the table between the markers of
``docs/generator_comparison.md``.
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
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "generator_training.json"
DOC = REPO / "docs" / "generator_comparison.md"
BEGIN, END = "<!-- speed:start -->", "<!-- speed:end -->"
COMMON = ("grid_size=64", "batch_size=4", "epochs_constant=1000", "epochs_decay=0", "threads=1", "device=cpu",
          "progress=false", "tensorboard=off", "keep_every_epochs=0", "sample_every_epochs=0", "seed=0",
          "val_every_epochs=1")  # fmt: skip
BP = ("architecture=bp_unet", "views=2", "gan_weight=0", "recon_weight=0", "projection_weight=0", "l1_weight=1",
      "optimizer=nadam", "lr=0.001")  # fmt: skip


def x2ct(*args: object) -> List[str]:
    return [sys.executable, "-m", "x2ct.cli", *map(str, args)]


def matching_width(parameters: int) -> float:
    """The X2CT-GAN +B width (a multiple of 1/64) whose generator has the parameter count closest to ``parameters``."""
    from x2ct.models import GeneratorConfig, X2CTBiplanar

    def count(width: float) -> int:
        return sum(p.numel() for p in X2CTBiplanar(GeneratorConfig(grid_size=64, width=width)).parameters())

    return min((k / 64 for k in range(4, 33)), key=lambda width: abs(count(width) - parameters))


def template_val_mae(data: Path) -> float:
    """Validation MAE (HU, whole cube) of the mean training CT, as the trainer's validation computes it."""
    import torch

    from x2ct.data.loader import CaseDataset, generator_sizes

    train = CaseDataset(data, "train", generator_sizes(64, 2))
    mean = torch.stack([train[i].images["ct"][0].double() for i in range(len(train))]).mean(0).float()
    val = CaseDataset(data, "val", generator_sizes(64, 2))
    return float(sum((mean - val[i].images["ct"][0]).abs().mean() * 2500.0 for i in range(len(val))) / len(val))


def curve(run: Path) -> List[Dict[str, float]]:
    """(step, validation MAE) after each epoch."""
    with open(run / "scalars.csv", newline="") as fh:
        return [{"step": int(r["step"]), "val_mae_hu": float(r["value"])} for r in csv.DictReader(fh)
                if r["tag"] == "val/mae_hu"]  # fmt: skip


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--work", type=Path, required=True, help="working folder (data and runs)")
    parser.add_argument("--minutes", type=float, default=8.0, help="training-time budget of each (default 8)")
    parser.add_argument("--cases", type=int, default=120, help="synthetic cases (default 120)")
    args = parser.parse_args(argv)
    work: Path = args.work
    data = work / "data"
    if not (data / "manifest.csv").is_file():
        build = ["--synthetic-from", "sample", "--cases", args.cases, "--seed", "3", "--size", "64", "--workers", 2]
        subprocess.run(x2ct("build-dataset", *build, data), check=True, capture_output=True)
    from x2ct.models.xprospect import BackProjectionConfig, BackProjectionUNet

    bp_parameters = sum(p.numel() for p in BackProjectionUNet(BackProjectionConfig(grid_size=64)).parameters())
    width = matching_width(bp_parameters)
    runs = {"bp_unet": BP, "x2ct_gan": ("architecture=x2ct_gan", "views=2", f"width={width}", "ndf=16")}
    env = dict(os.environ, OMP_NUM_THREADS="1")
    started: Dict[int, str] = {}
    for name, settings in runs.items():
        sets = [*COMMON, f"max_minutes={args.minutes}", *settings]
        command = x2ct("train-generator", "--data", data, "-o", work / name, *[x for s in sets for x in ("--set", s)])
        started[subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env).pid] = name
    cpu: Dict[str, float] = {}
    while started:
        pid, status, usage = os.wait4(-1, 0)
        name = started.pop(pid)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"training {name} failed")
        cpu[name] = (usage.ru_utime + usage.ru_stime) / 60.0
    target = template_val_mae(data)
    targets = {"template": target, "95% of template": 0.95 * target}
    results: Dict[str, Any] = {}
    for name in runs:
        meta = json.loads((work / name / "model" / "model.json").read_text())
        steps, seconds = meta["training"]["steps"], meta["training"]["seconds"]
        points = curve(work / name)
        hits = {key: next((p["step"] for p in points if p["val_mae_hu"] <= value), None)
                for key, value in targets.items()}  # fmt: skip
        results[name] = {
            "parameters": meta["weights"]["parameters"],
            "steps": steps,
            "training_seconds": seconds,
            "steps_per_second": steps / seconds,
            "cpu_minutes": cpu[name],
            "validation": points,
            "best_val_mae_hu": min(p["val_mae_hu"] for p in points) if points else None,
            "cpu_minutes_to_target": {k: None if hit is None else cpu[name] * hit / steps for k, hit in hits.items()},
        }
    bp, gan = results["bp_unet"], results["x2ct_gan"]
    ratios: Dict[str, Any] = {"steps_per_second": bp["steps_per_second"] / gan["steps_per_second"]}
    for key in targets:
        mine, theirs = bp["cpu_minutes_to_target"][key], gan["cpu_minutes_to_target"][key]
        ratios[f"cpu_minutes_to_{key}"] = None if mine is None or theirs is None or theirs == 0 else mine / theirs
    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())  # fmt: skip
    document = {
        "command": f"python bench/generator_training.py --work WORK --minutes {args.minutes:g} --cases {args.cases}",
        "cpu": cpu_model,
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "when": time.strftime("%Y-%m-%d"),
        "x2ct_gan_width": width,
        "target_val_mae_hu": targets,
        "runs": results,
        "ratios_bp_unet_over_x2ct_gan": ratios,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    lines = [f"Command: `{document['command']}` ({cpu_model}, {os.cpu_count()} cores, both at once, one thread each)",
             "", "| generator | parameters | steps/s | CPU-min | best val MAE, HU | "
             + " | ".join(f"CPU-min to {key} val MAE ({value:.1f} HU)" for key, value in targets.items()) + " |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, label in (("bp_unet", "back-projection U-Net"), ("x2ct_gan", f"X2CT-GAN +B, width {width:g}")):
        r = results[name]
        reach = ["not reached" if v is None else f"{v:.1f}" for v in r["cpu_minutes_to_target"].values()]
        best = "–" if r["best_val_mae_hu"] is None else f"{r['best_val_mae_hu']:.1f}"
        lines.append(f"| {label} | {r['parameters']:,} | {r['steps_per_second']:.2f} | {r['cpu_minutes']:.1f} | "
                     f"{best} | {' | '.join(reach)} |")  # fmt: skip
    words = [f"steps per second {ratios['steps_per_second']:.2f}"]
    for key in targets:
        ratio = ratios[f"cpu_minutes_to_{key}"]
        words.append(f"CPU minutes to {key} {'–' if ratio is None else f'{ratio:.2f}'}")
    lines += ["", "Ratios back-projection U-Net / X2CT-GAN: " + "; ".join(words) + "."]
    text = DOC.read_text(encoding="utf-8")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(head + BEGIN + "\n" + "\n".join(lines) + "\n" + END + tail, encoding="utf-8")
    print(json.dumps(ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
