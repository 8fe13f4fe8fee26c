"""Train, measure and bundle the demo latent diffusion generator (``Resources/Models/x2ct-demo-diffusion``).

The CPU recipe (64³, one torch thread, the ``demo_fast`` preset of ``x2ct train-diffusion``: the ``demo`` sizes
with x0 prediction and the back-projection prior, docs/latent_diffusion.md)::

    python docs/bundle_demo_diffusion.py --work WORK [--data DATA] [--vae VAE_RUN] --vae-minutes 8 --ldm-minutes 30

Version 1.1.0 was made with ``--vae`` = the vae run of 1.0.0 (the VAE does not depend on the denoiser's
options) and ``--ldm-minutes 30``; 1.0.0 was the same recipe with ``--preset demo`` (the seed's epsilon
prediction, no prior): its measurements are :data:`BASELINE`, for the before/after table of the model card.

Steps: build the synthetic benchmark of the bundled chest CT (seed 7, 600 cases, 64³; the benchmark of the
demo back-projection generators; ``--data`` reuses one already built), train the VAE, then the latent
denoiser (``--vae-minutes`` / ``--ldm-minutes`` of training time each: the engine's ``max_minutes``), score
the model on the held-out test split (``x2ct evaluate-generator``, one DDIM sample per case), measure the
re-projection consistency (mean NCC between each input radiograph and the re-projection of the synthetic CT,
:func:`x2ct.inference.run.consistency_scores`) with and without guided sampling on ``--consistency-cases``
test cases, the spread of 8 samples per case on ``--spread-cases`` test cases, time 8 DDIM samples of one
case, then export the model with its metrics into
``Resources/Models`` and write its model card. ``--dry-run`` does everything but the export. Reruns skip
what is done.
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
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parents[1]
NAME = "x2ct-demo-diffusion"
VERSION = "1.1.0"
PRESET = "demo_fast"
"""``x2ct train-diffusion --preset``: the demo sizes with x0 prediction and the geometry prior (1.0.0: ``demo``)."""
CHANGELOG = {"1.0.0": "first demo latent diffusion generator (preset demo: epsilon prediction)",
             "1.1.0": "preset demo_fast: x0 prediction + back-projection prior on the latent grid; same VAE, same "
                      "training-time budget"}  # fmt: skip
BASELINE = {"version": "1.0.0", "ldm_cpu_minutes": 15.3, "steps": 1291, "mae_hu_body": 722.8, "honest_mae_hu": 475.6,
            "honest_psnr_db": 10.84, "honest_ssim_3d": 0.236, "ncc_unguided": 0.785, "ncc_guidance_0.5": 0.797,
            "sd_hu_body": 550.1, "mae_hu_body_mean_of_8": 334.7}  # fmt: skip
"""The measurements of version 1.0.0 (this script's 1.0.0 recipe, same data, split and protocol), for the card."""
GUIDANCE = (0.5, 2.0)
"""The guidance weights of the consistency measurement (``x2ct predict --guidance``)."""


def x2ct(*args: object) -> List[str]:
    return [sys.executable, "-m", "x2ct.cli", *map(str, args)]


def run_stage(work: Path, data: Path, stage: str, minutes: float, extra: List[str]) -> float:
    """Train one stage unless its model exists; returns its CPU minutes (os.wait4, stored beside the run)."""
    run = work / stage
    record = run / "cpu_minutes.json"
    if not (run / "model" / "model.json").is_file():
        epochs = {"vae": 3, "ldm": 12}[stage]
        command = x2ct("train-diffusion", "--preset", PRESET, "--data", data, "-o", run, "--stage", stage, *extra,
                       "--set", f"max_minutes={minutes}", "--set", f"epochs={epochs}")  # fmt: skip
        with open(work / f"train_{stage}.log", "w") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                       env=dict(os.environ, OMP_NUM_THREADS="1"))  # fmt: skip
            _, status, usage = os.wait4(process.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"training {stage} failed: see {work / f'train_{stage}.log'}")
        record.write_text(json.dumps((usage.ru_utime + usage.ru_stime) / 60.0))
    return float(json.loads(record.read_text()))


def _mean_ci(values: Any, rng: Any) -> Dict[str, Any]:
    """Mean and case-bootstrap 95 % CI (2000 resamples)."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    boot = [rng.choice(values, len(values)).mean() for _ in range(2000)]
    return {"mean": float(values.mean()), "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]}


def consistency(model_dir: Path, data: Path, cases: int, target: Path) -> Dict[str, Any]:
    """Mean NCC (input vs re-projection, mean over PA and lateral) per test case, unguided and with each weight of
    :data:`GUIDANCE`, same seed (0), one DDIM sample; means with case-bootstrap CIs, and the gains."""
    if target.is_file():
        return json.loads(target.read_text())
    import numpy as np
    import torch

    from x2ct.data.loader import CaseDataset, collate, generator_sizes
    from x2ct.inference.run import consistency_scores, reproject
    from x2ct.inference.types import InputSpec
    from x2ct.intensity import unit_to_hu
    from x2ct.models import load_generator
    from x2ct.views import LATERAL, LATERAL_KEY, PA, PA_KEY

    torch.set_num_threads(1)
    model = load_generator(model_dir, "cpu")
    config = model.config
    spec = InputSpec(size=config.grid_size, geometry=config.geometry, drr_size=config.drr_size, quantize_bits=8)
    test = CaseDataset(data, "test", generator_sizes(config.grid_size, config.views))
    labels = {"unguided": 0.0, **{f"guidance_{w:g}": w for w in GUIDANCE}}
    rows = []
    for i in range(min(cases, len(test))):
        images = collate([test[i]]).images
        row: Dict[str, Any] = {"case_id": test.case_ids[i]}
        for label, weight in labels.items():
            start = time.perf_counter()
            volume = model.sample(images[PA_KEY], images[LATERAL_KEY], samples=1, guidance=weight, seed=0)[0, 0, 0]
            row[f"{label}_seconds"] = time.perf_counter() - start
            hu = unit_to_hu(volume.clamp(0, 1).numpy())
            nccs = [consistency_scores(reproject(hu, view, spec, torch.device("cpu")), images[key][0, 0].numpy())["ncc"]
                    for view, key in ((PA, PA_KEY), (LATERAL, LATERAL_KEY))]  # fmt: skip
            row[label] = float(np.mean(nccs))
            row[f"{label}_mae_hu"] = float((volume.clamp(0, 1) - images["ct"][0, 0]).abs().mean()) * 2500.0
        rows.append(row)
    rng = np.random.default_rng(0)
    summary: Dict[str, Any] = {"cases": rows, "sampler": f"ddim, {config.sample_steps} steps, seed 0"}
    for label in labels:
        summary[label] = {**_mean_ci([r[label] for r in rows], rng),
                          "mae_hu": float(np.mean([r[f"{label}_mae_hu"] for r in rows])),
                          "seconds": float(np.mean([r[f"{label}_seconds"] for r in rows]))}  # fmt: skip
        if label != "unguided":
            summary[label]["gain"] = _mean_ci([r[label] - r["unguided"] for r in rows], rng)
    target.write_text(json.dumps(summary, indent=2))
    return summary


def spread(model_dir: Path, data: Path, cases: int, target: Path) -> Dict[str, float]:
    """8 DDIM samples (seed 0) of each of the first ``cases`` test cases: the mean per-voxel SD in HU inside the body
    mask (x2ct.evaluate.image_metrics.default_body_mask of the true CT), and the body MAE in HU of one sample and
    of the 8 samples' mean."""
    if target.is_file():
        return json.loads(target.read_text())
    import numpy as np
    import torch

    from x2ct.data.loader import CaseDataset, collate, generator_sizes
    from x2ct.evaluate.image_metrics import default_body_mask
    from x2ct.models import load_generator
    from x2ct.views import LATERAL_KEY, PA_KEY

    torch.set_num_threads(1)
    model = load_generator(model_dir, "cpu")
    test = CaseDataset(data, "test", generator_sizes(model.config.grid_size, model.config.views))
    sd, one, mean = [], [], []
    for i in range(min(cases, len(test))):
        images = collate([test[i]]).images
        with torch.inference_mode():
            hu = model.sample(images[PA_KEY], images[LATERAL_KEY], samples=8)[:, 0, 0].clamp(0, 1).numpy() * 2500.0
        truth = images["ct"][0, 0].numpy() * 2500.0
        body = default_body_mask(truth - 1024.0)
        sd.append(float(hu.std(axis=0)[body].mean()))
        one.append(float(np.abs(hu[0] - truth)[body].mean()))
        mean.append(float(np.abs(hu.mean(axis=0) - truth)[body].mean()))
    result = {"cases": len(sd), "sd_hu_body": float(np.mean(sd)), "mae_hu_body_one_sample": float(np.mean(one)),
              "mae_hu_body_mean_of_8": float(np.mean(mean))}  # fmt: skip
    target.write_text(json.dumps(result, indent=2))
    return result


def vae_floor(model_dir: Path, data: Path, cases: int, target: Path) -> Dict[str, float]:
    """What the VAE alone reconstructs, the floor of any denoiser on its latents: the true CT of each of the first
    ``cases`` test cases encoded and decoded (every depth phase when the model keeps every k-th slice, as its
    training does), MAE in HU inside the body mask and over the cube."""
    if target.is_file():
        return json.loads(target.read_text())
    import numpy as np
    import torch

    from x2ct.data.loader import CaseDataset, collate, generator_sizes
    from x2ct.evaluate.image_metrics import default_body_mask
    from x2ct.models import load_generator

    torch.set_num_threads(1)
    model = load_generator(model_dir, "cpu")
    test = CaseDataset(data, "test", generator_sizes(model.config.grid_size, model.config.views))
    body_mae, cube_mae = [], []
    for i in range(min(cases, len(test))):
        ct = collate([test[i]]).images["ct"]
        with torch.inference_mode():
            decoded = model.vae.decode_volume(model.vae.encode_volume(ct))[0, 0].clamp(0, 1).numpy() * 2500.0
        truth = ct[0, 0].numpy() * 2500.0
        body = default_body_mask(truth - 1024.0)
        body_mae.append(float(np.abs(decoded - truth)[body].mean()))
        cube_mae.append(float(np.abs(decoded - truth).mean()))
    result = {"cases": len(body_mae), "mae_hu_body": float(np.mean(body_mae)), "mae_hu_cube": float(np.mean(cube_mae))}
    target.write_text(json.dumps(result, indent=2))
    return result


def sampling_time(model_dir: Path, target: Path) -> Dict[str, float]:
    """Seconds for 8 DDIM samples of one 64³ case (inference mode, CPU), with 1 thread and one per CPU core."""
    if target.is_file():
        return json.loads(target.read_text())
    import torch

    from x2ct.models import load_generator

    model = load_generator(model_dir, "cpu")
    pa = torch.rand(1, 1, model.config.grid_size, model.config.grid_size)
    times = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        with torch.inference_mode():
            start = time.perf_counter()
            model.sample(pa, pa, samples=8)
            times[f"threads_{threads}"] = time.perf_counter() - start
    target.write_text(json.dumps(times, indent=2))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="working folder (data, runs, evaluations)")
    parser.add_argument("--data", type=Path, help="an already built benchmark (default: build WORK/data)")
    parser.add_argument("--cases", type=int, default=600, help="synthetic cases (default 600)")
    parser.add_argument("--vae", type=Path, help="reuse this trained vae run (with its cpu_minutes.json) instead of "
                        "training one: the VAE does not depend on the denoiser's options")  # fmt: skip
    parser.add_argument("--vae-minutes", type=float, default=8.0)
    parser.add_argument("--ldm-minutes", type=float, default=30.0)
    parser.add_argument("--consistency-cases", type=int, default=10)
    parser.add_argument("--spread-cases", type=int, default=10)
    parser.add_argument("--dry-run", action="store_true", help="train and measure, do not touch Resources")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    build = f"x2ct build-dataset --synthetic-from sample --cases {args.cases} --seed 7 --size 64"
    data = args.data.resolve() if args.data else work / "data"
    if not (data / "manifest.csv").is_file():
        subprocess.run(x2ct(*build.split()[1:], data), check=True)
    if args.vae and not (work / "vae").exists():
        (work / "vae").symlink_to(args.vae.resolve(), target_is_directory=True)
    cpu = {"vae": run_stage(work, data, "vae", args.vae_minutes, [])}
    cpu["ldm"] = run_stage(work, data, "ldm", args.ldm_minutes, ["--vae", work / "vae"])
    model_dir = work / "ldm" / "model"
    evaluation = work / "eval"
    if not (evaluation / "metrics_summary.json").is_file():
        subprocess.run(x2ct("evaluate-generator", "--model", model_dir, "--data", data, "--split", "test", "-o",
                            evaluation, "--device", "cpu"), check=True, capture_output=True)  # fmt: skip
    summary = json.loads((evaluation / "metrics_summary.json").read_text())
    scores = consistency(model_dir, data, args.consistency_cases, work / "consistency.json")
    sample_spread = spread(model_dir, data, args.spread_cases, work / "spread.json")
    timing = sampling_time(model_dir, work / "sampling_seconds.json")
    floor = vae_floor(model_dir, data, 20, work / "vae_floor.json")
    facts = {"cpu_minutes": cpu, "consistency": {k: v for k, v in scores.items() if k != "cases"},
             "consistency_cases": len(scores["cases"]), "sampling_seconds_8_samples": timing, "build": build,
             "spread_8_samples": sample_spread, "vae_floor_20_cases": floor,
             "machine": platform.processor() or platform.machine()}
    (work / "facts.json").write_text(json.dumps(facts, indent=2))
    print(json.dumps({"metrics": {k: summary["metrics"][k]["mean"] for k in ("mae_hu_body", "honest_psnr_db",
                                                                             "honest_ssim_3d")}, **facts}, indent=2))
    if args.dry_run:
        return
    export(model_dir, summary, facts, {work: "WORK", data: "DATA", (work / "vae").resolve(): "WORK/vae"})


def export(model_dir: Path, summary: Dict[str, Any], facts: Dict[str, Any], placeholders: Dict[Path, str]) -> None:
    """Re-save the trained model under Resources/Models/NAME with its name, version and metrics, and its card;
    this machine's folders in its ``model.json`` become the ``placeholders`` (WORK, DATA)."""
    from bundle_demo_generators import without_machine_paths  # this folder (docs/) is on sys.path

    from x2ct.models import load_generator
    from x2ct.models.checkpoints import models_dir, save_generator

    model = load_generator(model_dir, "cpu")
    meta = model.metadata
    target = models_dir() / NAME
    metrics = {"test": {k: summary["metrics"][k] for k in ("mae_hu_body", "honest_mae_hu", "honest_psnr_db",
                                                           "honest_ssim_3d")},  # fmt: skip
               "reprojection_consistency": facts["consistency"]}
    preprocessing = meta.inputs["pa"].preprocessing
    save_generator(model, target, drr_geometry=preprocessing.get("drr_geometry"), quantize_bits=8, name=NAME,
                   version=VERSION, changelog=CHANGELOG,
                   training=meta.training, training_data=meta.training_data, metrics=metrics,
                   source={"kind": "docs/bundle_demo_diffusion.py", "build": facts["build"]})  # fmt: skip
    (target / "MODEL_CARD.md").write_text(model_card(without_machine_paths(target / "model.json", placeholders),
                                                     summary, facts))  # fmt: skip


def _metric(summary: Dict[str, Any], name: str, digits: int) -> str:
    m = summary["metrics"][name]
    return f"{m['mean']:.{digits}f} ± {m['std']:.{digits}f}"


def _reference_mae() -> str:
    """The test MAE of the bundled biplanar back-projection generator, from its model.json."""
    meta = json.loads((REPO / "Resources" / "Models" / "x2ct-demo-biplanar" / "model.json").read_text())
    return f"has {meta['metrics']['mean']['honest_mae_hu']:.0f} HU MAE over the whole cube on the same test split"


def model_card(meta: Dict[str, Any], summary: Dict[str, Any], facts: Dict[str, Any]) -> str:
    """The MODEL_CARD.md text."""
    config = meta["network"]["config"]
    c = facts["consistency"]
    timing = facts["sampling_seconds_8_samples"]
    cpu = facts["cpu_minutes"]
    spread = facts["spread_8_samples"]
    b, m = BASELINE, {k: v["mean"] for k, v in summary["metrics"].items() if isinstance(v, dict) and "mean" in v}
    steps = meta["training"]["steps"]
    size = config["grid_size"]
    reference = _reference_mae()
    prior = " and the radiographs' back-projections on the latent grid as input channels" \
        if config.get("geometry_prior") else ""  # fmt: skip
    architecture = (
        f"`latent_diffusion` (docs/latent_diffusion.md): per-slice 2D KL-VAE /{2 ** (len(config['vae_channels']) - 1)} "
        f"({config['latent_channels']} latent channels) on every {config['depth_stride']}nd axial slice, a 3D U-Net "
        f"{config['unet_channels']} with the {config['encoder']['embed_dim']}-d per-view radiograph embedding "
        f"concatenated at every block{prior}, predicting {config.get('prediction', 'epsilon')}, {config['timesteps']} "
        f"cosine steps, {config['sample_steps']} DDIM steps per sample; {meta['weights']['parameters']:,} parameters"
    )
    inputs = (
        f"PA + lateral, {size} × {size}, DRR-like (cone beam, SAD {config['sad_mm']:g} mm, SID {config['sid_mm']:g} "
        f"mm, {config['detector_mm']:g} mm detector), per-image min–max, 8 bits"
    )
    def cell(value: Dict[str, Any]) -> str:
        return f"{value['mean']:.3f} [{value['ci95'][0]:.3f}, {value['ci95'][1]:.3f}]"

    table = [f"| DDIM, no guidance | {cell(c['unguided'])} | — | {c['unguided']['mae_hu']:.0f} | "
             f"{c['unguided']['seconds']:.1f} |"]  # fmt: skip
    for w in GUIDANCE:
        entry = c[f"guidance_{w:g}"]
        table.append(f"| DDIM, guidance {w:g} | {cell(entry)} | {cell(entry['gain'])} | {entry['mae_hu']:.0f} | "
                     f"{entry['seconds']:.1f} |")  # fmt: skip
    rows = "\n".join(table)
    return f"""# {NAME} — SYNTHETIC CT, research use only, not for diagnosis

A **latent diffusion** generator in the style of X-ray2CTPA (Cahan et al.; NoaCahan/X-ray2CTPA), made by
`docs/bundle_demo_diffusion.py` in CPU minutes to show the pipeline: trained on one patient's CT deformed 480
ways, it is not a clinical reconstructor. It is not in the demo's automatic model choice; select it with
`x2ct predict --model {NAME}`.

| | |
|---|---|
| version | {meta['version']} |
| architecture | {architecture} |
| input | {inputs} |
| output | {size}³ CT on the 320 mm canonical cube (5 mm voxels), unit scale → HU; stochastic: K samples give a mean \
and a per-voxel SD |
| training data | the synthetic benchmark of the bundled chest CT: `{facts['build']}` (480 train cases; every case \
is the same patient, deformed, with synthetic lesions) |
| training | stage vae then stage ldm, `--preset {PRESET}`, one thread: {cpu['vae']:.1f} + {cpu['ldm']:.1f} CPU \
minutes, {steps} denoiser steps ({meta['training']['config']['epochs']} epochs or the engine's \
{meta['training']['config']['max_minutes']:g}-minute training-time budget, whichever comes first) |

## Held-out metrics (test split, {summary['n_cases']} cases, one DDIM sample per case, seed 0)

| metric | value |
|---|---|
| MAE in HU inside the body mask | {_metric(summary, 'mae_hu_body', 1)} |
| MAE in HU over the whole cube | {_metric(summary, 'honest_mae_hu', 1)} |
| honest PSNR, dB | {_metric(summary, 'honest_psnr_db', 2)} |
| honest 3D SSIM | {_metric(summary, 'honest_ssim_3d', 4)} |

## Re-projection consistency ({facts['consistency_cases']} test cases)

Mean NCC between each input radiograph and the DRR of the synthetic CT (`x2ct.inference.run.consistency_scores`,
mean over PA and lateral), one sample per case ({c['sampler']}), case-bootstrap 95 % CIs; the gain is paired
(same case, same seed); MAE in HU over the whole cube; seconds per sample on the shared CPU:

| sampling | mean NCC | gain over no guidance | MAE, HU | s / sample |
|---|---|---|---|---|
{rows}

## Before / after (version {BASELINE['version']} → {meta['version']}, same data, split, VAE and protocol)

| | {BASELINE['version']} (`--preset demo`: ε prediction) | {meta['version']} (`--preset {PRESET}`) |
|---|---|---|
| denoiser training, CPU minutes (steps of 1440: 12 epochs) | {b['ldm_cpu_minutes']:.1f} ({b['steps']}, stopped by \
the 30-minute budget) | {cpu['ldm']:.1f} ({steps}) |
| MAE in HU inside the body, one sample | {b['mae_hu_body']:.1f} | {m['mae_hu_body']:.1f} |
| MAE in HU, whole cube | {b['honest_mae_hu']:.1f} | {m['honest_mae_hu']:.1f} |
| honest PSNR, dB | {b['honest_psnr_db']:.2f} | {m['honest_psnr_db']:.2f} |
| honest 3D SSIM | {b['honest_ssim_3d']:.3f} | {m['honest_ssim_3d']:.3f} |
| mean NCC of the re-projections, no guidance / guidance 0.5 | {BASELINE['ncc_unguided']:.3f} / \
{BASELINE['ncc_guidance_0.5']:.3f} | {c['unguided']['mean']:.3f} / {c['guidance_0.5']['mean']:.3f} |
| per-voxel SD of 8 samples inside the body, HU ({spread['cases']} test cases) | {BASELINE['sd_hu_body']:.0f} | \
{spread['sd_hu_body']:.0f} |
| MAE in HU inside the body of the mean of 8 samples (same cases) | {BASELINE['mae_hu_body_mean_of_8']:.1f} | \
{spread['mae_hu_body_mean_of_8']:.1f} |

## Speed

8 DDIM samples of one case on this machine's CPU ({facts['machine']}; shared with other jobs while measured):
{', '.join(f"{v:.1f} s with {k.split('_')[1]} thread(s)" for k, v in timing.items())}. Guided sampling is several
times slower (the VAE decoder and the projector run with gradients at every step).

## Limits

- Trained for CPU minutes ({steps} steps of batch 4) on one patient's CT deformed 480 ways (the bundled
  back-projection generator {reference}): it has seen one anatomy, and a new patient is out of its
  distribution. The x0 prediction and the back-projection prior make its samples close to the truth on this
  benchmark; they also make the samples of one case similar (SD above), so its uncertainty maps are narrow.
- The per-voxel SD of its samples has not been shown to predict its errors (docs/uncertainty.md measures that).
- Inputs must look like the training DRRs; real radiographs are out of distribution.
"""


if __name__ == "__main__":
    main()
