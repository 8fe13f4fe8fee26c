"""The numbers of docs/uncertainty.md: uncertainty calibration of a diffusion generator and Fréchet distances on the
synthetic benchmark's test split.

Usage::

    python docs/uncertainty_benchmark.py --data DATA --classifier CNN3D --diffusion MODEL --out OUT
        [--samples 8] [--guidance W] [--limit N] [--models NAME_OR_PATH,...]

* ``DATA``: the comparison's benchmark (``x2ct build-dataset --synthetic-from sample --cases 600 --seed 7 --size 64``,
  docs/generator_comparison.md); its 60 test cases are scored.
* ``CNN3D``: the feature extractor of the Fréchet distance, a whole-volume CT classifier (the ``ct_real_64`` row of
  docs/reproduce_seed_table.py: ``cnn3d`` at width 1/4 trained on real 64³ CTs of another seed's benchmark).
* ``x2ct evaluate-generator --samples K [--guidance W] --frechet-classifier CNN3D`` of the diffusion model (through
  its Python API, which takes ``--limit``: the first N test cases) into ``OUT/<name>``, and the Fréchet distance of
  each of ``--models`` (deterministic generators) on the same cases from the features alone.
* The noise floor of the distance at this number of cases: the same features of the real CTs of the validation
  split against those of the test split (both real, so any distance is sampling error and bias).

Prints a markdown table (and writes ``OUT/uncertainty_benchmark.json``). Finished evaluations are reused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np


def evaluate_diffusion(model: str, data: Path, out: Path, classifier: Path, extras: Dict[str, Any],
                       limit: Optional[int]) -> Any:  # fmt: skip
    """The summary of ``x2ct evaluate-generator --samples K [--guidance W] --frechet-classifier CNN3D`` on the first
    ``limit`` test cases (all when None), run when missing; the wall-clock seconds go to ``out/seconds.txt``."""
    from x2ct.evaluate.generator import EvaluationExtras, evaluate_generator

    if not (out / "metrics_summary.json").is_file():
        start = time.monotonic()
        options = EvaluationExtras(frechet_classifier=classifier, **extras)
        evaluate_generator(model, data, out, "test", "cpu", limit=limit, extras=options)
        (out / "seconds.txt").write_text(f"{time.monotonic() - start:.0f}\n")
    return json.loads((out / "metrics_summary.json").read_text())


def generator_features(model: str, data: Path, classifier: Path, limit: Optional[int]) -> Dict[str, Any]:
    """Fréchet distance of a deterministic generator's CTs to the real ones on the first ``limit`` test cases, from the
    features alone (the same :class:`FeatureExtractor` and inputs as ``evaluate-generator --frechet-classifier``,
    without the image metrics, which cost seconds per case)."""
    import torch

    from x2ct.data.loader import CaseDataset, collate, generator_sizes
    from x2ct.evaluate.frechet import FeatureExtractor, frechet_from_features
    from x2ct.evaluate.generator import _grid, _views, load_model
    from x2ct.inference.run import run_generator
    from x2ct.intensity import HU_OFFSET, UNIT_RANGE

    extract = FeatureExtractor(classifier)
    net = load_model(model, torch.device("cpu"))
    dataset = CaseDataset(data, "test", generator_sizes(_grid(net), _views(net)), cache=False)
    real, synthetic = [], []
    for i in range(len(dataset) if limit is None else min(limit, len(dataset))):
        batch = collate([dataset[i]])
        pred = run_generator(net, batch.images).clamp(0, 1).numpy()[0, 0] * UNIT_RANGE - HU_OFFSET
        gt = batch.images["ct"].numpy()[0, 0] * UNIT_RANGE - HU_OFFSET
        pa = batch.images["pa"].numpy()[0, 0]
        real.append(extract(gt, pa))
        synthetic.append(extract(pred, pa))
    return frechet_from_features(np.stack(real), np.stack(synthetic), extract.description).to_dict()


def real_floor(data: Path, classifier: Path, limit: Optional[int]) -> Dict[str, Any]:
    """Fréchet distance between the real CTs of the validation and the test split (the sampling floor)."""
    from x2ct.data.loader import CaseDataset
    from x2ct.evaluate.frechet import FeatureExtractor, frechet_from_features
    from x2ct.intensity import HU_OFFSET, UNIT_RANGE

    extract = FeatureExtractor(classifier)
    sets = []
    for split in ("val", "test"):
        dataset = CaseDataset(data, split, {"ct": 64, "pa": 64}, cache=False)
        count = len(dataset) if limit is None else min(limit, len(dataset))
        features = []
        for i in range(count):
            item = dataset[i]
            hu = item.images["ct"][0].numpy() * UNIT_RANGE - HU_OFFSET
            features.append(extract(hu, item.images["pa"][0].numpy()))
        sets.append(np.stack(features))
    return frechet_from_features(sets[0], sets[1], extract.description).to_dict()


def key_of(model: str) -> str:
    """A short name of a model: its folder's name, or the run's for ``RUN/model``."""
    path = Path(model)
    return path.parent.name if path.name == "model" else path.name


def cached(path: Path, compute: Callable[..., Dict[str, Any]], model: Optional[str], args: Any, limit: Any) -> Any:
    """``compute``'s result, kept in ``path`` (JSON) so that a rerun reuses it."""
    if not path.is_file():
        values = (args.data, args.classifier, limit) if model is None else (model, args.data, args.classifier, limit)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(compute(*values), indent=2) + "\n")
    return json.loads(path.read_text())


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--classifier", type=Path, required=True)
    parser.add_argument("--diffusion", required=True, help="the latent diffusion model (name or folder)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--guidance", type=float)
    parser.add_argument("--limit", type=int, help="first N test cases only (default: all)")
    parser.add_argument("--models", default="", help="comma list of other generators to score (no sampling)")
    args = parser.parse_args(argv)
    extras: Dict[str, Any] = {"samples": args.samples, "guidance": args.guidance}
    name = key_of(args.diffusion)
    summary = evaluate_diffusion(args.diffusion, args.data, args.out / name, args.classifier, extras, args.limit)
    distances: Dict[str, Any] = {f"{name} (mean of {args.samples} samples)": summary["frechet"]}
    for model in filter(None, args.models.split(",")):
        key = key_of(model)
        distances[key] = cached(args.out / f"frechet_{key}.json", generator_features, model, args, args.limit)
    floor = cached(args.out / "frechet_real.json", real_floor, None, args, args.limit)
    distances["real validation vs real test CTs"] = floor
    record = {"diffusion": summary, "frechet": distances, "args": {k: str(v) for k, v in vars(args).items()}}
    (args.out / "uncertainty_benchmark.json").write_text(json.dumps(record, indent=2) + "\n")
    print("| CTs compared with the real test CTs | cases | Fréchet distance | feature dimensions |")
    print("|---|---|---|---|")
    for key, fd in distances.items():
        print(f"| {key} | {fd['n_real']} | {fd['distance']:.4g} | {fd['dims']} |")
    uncertainty = json.loads((args.out / name / "uncertainty.json").read_text())
    print()
    print(summary["uncertainty"]["headline"])
    print(json.dumps({k: uncertainty[k] for k in ("spearman", "pooled_spearman", "coverage_range", "coverage_2sd",
                                                   "mean_sd_hu", "mae_hu")}, indent=1))  # fmt: skip
    print("| SD bin (HU) | mean SD, HU | MAE, HU | calibrated Gaussian, HU | voxels |")
    print("|---|---|---|---|---|")
    for b in uncertainty["calibration"]:
        print(f"| {b['sd_low_hu']:.0f}–{b['sd_high_hu']:.0f} | {b['mean_sd_hu']:.1f} | {b['mae_hu']:.1f} | "
              f"{b['ideal_mae_hu']:.1f} | {b['voxels']} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
