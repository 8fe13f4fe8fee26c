"""``x2ct evaluate-generator``: score a generator on one split of a built data set under the metric protocol.

For each case the generator sees the case's stored DRR(s) through the training loader
(:mod:`x2ct.data.loader`: order-1 resize to the model's grid, /255) in
:func:`x2ct.inference.run.run_generator`, and its output, clamped to [0, 1], is compared with the
loader's ground truth on the same grid (the official evaluation resizes the CT to the model's grid
the same way). Both go to HU (``2500·unit − 1024``) and into
:func:`x2ct.evaluate.image_metrics.case_metrics`, so every column is the one docs/metric_protocol.md
declares. Writes ``metrics_per_case.csv`` and ``metrics_summary.json`` (protocol, statistics, plus the
model, data and split that produced them).

When evaluated cases hold lesion masks (synthetic benchmarks, ``lesions/<kind>``), the same two HU volumes
and the masks also go to :func:`x2ct.evaluate.lesion_metrics.measure_case`: ``lesions_per_lesion.csv`` gets
one row per lesion and the summary a ``lesions`` section (docs/metric_protocol.md, "Lesion metrics").
Without masks (real CT data sets) neither appears, and a ``lesions_per_lesion.csv`` left in ``out`` by an
earlier evaluation is removed, so the folder describes one evaluation.

Two opt-in additions (docs/metric_protocol.md §9, docs/uncertainty.md):

* ``frechet_classifier``: the Fréchet distance between the real and the synthetic CTs of the split in the
  penultimate features of that CT classifier (:mod:`x2ct.evaluate.frechet`), a ``frechet`` section in the summary.
* ``samples`` K >= 2, for stochastic generators (``module.stochastic``: latent diffusion): K samples per case
  (``module.sample``, DDIM, seed ``seed``, radiograph guidance weight ``guidance``, the data set's DRR geometry);
  the image and lesion metrics score their mean, and :mod:`x2ct.evaluate.uncertainty` scores whether their
  per-voxel SD predicts the error: ``uncertainty.json`` and ``calibration.png``, and an ``uncertainty`` section in
  the summary. Without ``samples`` a stochastic generator is run once (``forward``: one sample, seed 0).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..atomic import exclusive_output, write_text_atomic
from ..data.loader import CaseDataset, case_attributes, collate, generator_sizes, read_lesions
from ..data.synthetic import LESION_KINDS
from ..drr_geometry import DRRGeometry
from ..errors import InputError, PathLike
from ..geometry import GRID_SIZES
from ..inference.run import run_generator
from ..intensity import HU_OFFSET, UNIT_RANGE
from ..views import CT_KEY, LATERAL, LATERAL_KEY, PA, PA_KEY
from . import lesion_metrics, uncertainty
from .frechet import FeatureExtractor, frechet_from_features
from .image_metrics import case_metrics, default_body_mask, write_metrics

TRAIN_CHECKPOINT_SUFFIX = ".pt"


def load_model(model: Union[str, PathLike, nn.Module], device: torch.device) -> nn.Module:
    """A generator in eval mode: a module as is, a training checkpoint (``.pt`` written by
    ``x2ct train-generator``, or its run folder), else anything :func:`x2ct.models.load_generator` accepts."""
    if isinstance(model, nn.Module):
        return model.to(device).eval()
    path = Path(os.fspath(model))
    if path.is_dir() and (path / "checkpoints" / "last.pt").is_file() and not (path / "model.json").is_file():
        path = path / "checkpoints" / "last.pt"
    if path.suffix == TRAIN_CHECKPOINT_SUFFIX and path.is_file():
        from ..train.generator import generator_from_checkpoint

        return generator_from_checkpoint(path, device)
    from ..models import load_generator

    return load_generator(os.fspath(model), device=device)


def _views(net: nn.Module) -> int:
    views = getattr(net, "views", (PA, LATERAL))
    return len(views)


def _grid(net: nn.Module) -> int:
    config = getattr(net, "config", None)
    return int(getattr(config, "grid_size", 128))


def _case_masks(path: Path) -> Dict[str, np.ndarray]:
    """The non-empty lesion masks of a case file (kind -> (n, n, n) bool on the stored grid); empty without any.
    InputError for a mask that is not a cube of a canonical grid size."""
    lesions = read_lesions(path, LESION_KINDS)
    masks = {} if lesions is None else lesions.masks
    for kind, mask in masks.items():
        if mask.ndim != 3 or len(set(mask.shape)) != 1 or mask.shape[0] not in GRID_SIZES:
            edges = ", ".join(str(n) for n in GRID_SIZES)
            raise InputError(path, f"lesions/{kind} has shape {mask.shape}, expected a cube with edges of {edges}")
    return masks


@dataclass(frozen=True)
class EvaluationExtras:
    """The opt-in parts of an evaluation (module doc): ``frechet_classifier`` (a CT classifier's folder), and for
    stochastic generators ``samples`` K (None: one forward pass), ``guidance`` and ``sampler_steps`` (None: the
    model's defaults) and the sampler ``seed``."""

    frechet_classifier: Optional[PathLike] = None
    samples: Optional[int] = None
    guidance: Optional[float] = None
    sampler_steps: Optional[int] = None
    seed: int = 0

    def check(self, net: nn.Module, model: Any) -> None:
        """InputError for sampling options ``net`` cannot honour or out of range."""
        asked = self.samples is not None or self.guidance is not None or self.sampler_steps is not None
        if asked and not getattr(net, "stochastic", False):
            problem = "is a deterministic generator; --samples, --guidance and --sampler-steps need a stochastic one"
            raise InputError(model if not isinstance(model, nn.Module) else None, problem)
        if asked and (self.samples is None or self.samples < 2):
            raise InputError(None, f"--samples must be at least 2 to measure uncertainty, got {self.samples}")
        if self.guidance is not None and not self.guidance >= 0:
            raise InputError(None, f"--guidance must be a weight >= 0, got {self.guidance}")
        if self.sampler_steps is not None and self.sampler_steps < 1:
            raise InputError(None, f"--sampler-steps must be at least 1, got {self.sampler_steps}")


@torch.no_grad()
def evaluate_generator(
    model: Union[str, PathLike, nn.Module],
    data: PathLike,
    out: PathLike,
    split: str = "test",
    device: Union[str, torch.device] = "cpu",
    progress: bool = True,
    limit: Optional[int] = None,
    extras: Optional[EvaluationExtras] = None,
) -> Tuple[Path, Path, Dict[str, Any]]:
    """Score ``model`` on ``split`` of the data set ``data``; write the CSV and JSON into ``out``.

    Returns (csv path, json path, summary document). When the cases hold lesion masks, also writes
    ``out/lesions_per_lesion.csv`` and puts a ``lesions`` section in the document; ``extras`` adds the Fréchet
    distance and the uncertainty calibration (module doc). Raises :class:`InputError` for a bad data folder, an
    empty split, a model or classifier that cannot be loaded, sampling options a deterministic model cannot
    honour, or an ``out`` that another run is writing (one at a time: :func:`x2ct.atomic.exclusive_output`).
    """
    with exclusive_output(out):
        return _evaluate(model, data, out, split, device, progress, limit, extras or EvaluationExtras())


def _draw_samples(net: nn.Module, batch: Any, extras: EvaluationExtras, geometry: DRRGeometry, drr_size: int) -> Any:
    """(K, D, H, W) float32 unit-scale samples of one case (``net.sample``, DDIM)."""
    given = {"steps": extras.sampler_steps, "guidance": extras.guidance}
    lateral = batch.images.get(LATERAL_KEY)
    drawn = net.sample(
        batch.images[PA_KEY], lateral, samples=extras.samples, sampler="ddim", geometry=geometry, drr_size=drr_size,
        seed=extras.seed, **{k: v for k, v in given.items() if v is not None},
    )  # fmt: skip
    return drawn[:, 0, 0].float().cpu().numpy()


def _evaluate(
    model: Union[str, PathLike, nn.Module],
    data: PathLike,
    out: PathLike,
    split: str,
    device: Union[str, torch.device],
    progress: bool,
    limit: Optional[int],
    extras: EvaluationExtras,
) -> Tuple[Path, Path, Dict[str, Any]]:
    """The body of :func:`evaluate_generator`, with ``out`` held."""
    from ..models.checkpoints import resolve_device

    device = resolve_device(device)
    CaseDataset(data, split, {}, cache=False)  # checks the folder and the split before the model loads
    net = load_model(model, device)
    extras.check(net, model)
    features = None if extras.frechet_classifier is None else FeatureExtractor(extras.frechet_classifier, device)
    dataset = CaseDataset(data, split, generator_sizes(_grid(net), _views(net)), cache=False)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    if features is not None and count < 2:
        raise InputError(None, f"the Fréchet distance needs at least 2 cases; the {split!r} split gives {count}")
    build = case_attributes(dataset.case_file(0))
    geometry = DRRGeometry(**{k: float(build[k]) for k in ("sad_mm", "sid_mm", "detector_mm") if k in build})
    rows: List[Dict[str, Any]] = []
    lesions: List[lesion_metrics.Lesion] = []
    real_features: List[np.ndarray] = []
    synthetic_features: List[np.ndarray] = []
    calibration: List[Tuple[uncertainty.CaseUncertainty, uncertainty.CaseVoxels]] = []
    for i in tqdm(range(count), desc=f"evaluate {split}", unit="case", disable=not progress, dynamic_ncols=True):
        batch = collate([dataset[i]], device)
        gt = batch.images[CT_KEY].cpu().numpy()[0, 0]
        gt_hu = gt * np.float32(UNIT_RANGE) - np.float32(HU_OFFSET)
        body = default_body_mask(gt_hu)
        if extras.samples is not None:
            samples = _draw_samples(net, batch, extras, geometry, int(build.get("drr_size", gt.shape[0])))
            pred_hu, _ = uncertainty.sample_stats_hu(samples)
            calibration.append(
                uncertainty.case_uncertainty(batch.case_ids[0], samples, gt_hu, body, uncertainty.SEED + i)
            )
        else:
            pred = run_generator(net, batch.images).clamp(0, 1).cpu().numpy()[0, 0]
            pred_hu = pred * np.float32(UNIT_RANGE) - np.float32(HU_OFFSET)
        rows.append(case_metrics(batch.case_ids[0], pred_hu, gt_hu, body))
        if features is not None:
            pa = batch.images[PA_KEY].cpu().numpy()[0, 0]
            real_features.append(features(gt_hu, pa))
            synthetic_features.append(features(pred_hu, pa))
        masks = _case_masks(dataset.case_file(i))
        if masks:
            lesions.extend(lesion_metrics.measure_case(batch.case_ids[0], gt_hu, pred_hu, masks))
    csv_path, json_path = write_metrics(rows, out)
    lesions_path = Path(os.fspath(out)) / lesion_metrics.CSV_NAME
    if lesions:
        write_text_atomic(lesions_path, lesion_metrics.lesions_csv(lesions))
    else:
        lesions_path.unlink(missing_ok=True)
    document = json.loads(json_path.read_text(encoding="utf-8"))
    metadata = getattr(net, "metadata", None)
    document["model"] = {
        "name": str(model) if not isinstance(model, nn.Module) else type(model).__name__,
        "architecture": getattr(net, "architecture", type(net).__name__),
        "grid_size": _grid(net),
        "sha256": getattr(metadata, "sha256", None),
    }
    folder = str(Path(os.fspath(data)).resolve())
    document["data"] = {"folder": folder, "split": split, "cases": dataset.case_ids[:count]}
    document["device"] = str(device)
    if lesions:
        summary = lesion_metrics.summarize_lesions(lesions)
        document["lesions"] = lesion_metrics.summary_section(summary, _grid(net))
    if features is not None:
        result = frechet_from_features(np.stack(real_features), np.stack(synthetic_features), features.description)
        document["frechet"] = result.to_dict()
    for name in (uncertainty.JSON_NAME, uncertainty.PNG_NAME):
        (Path(os.fspath(out)) / name).unlink(missing_ok=True)
    if calibration:
        cases, voxels = zip(*calibration)
        summary_u = uncertainty.summarize_uncertainty(cases, voxels)
        title = f"{document['model']['name']}, {split} split, K = {extras.samples}"
        uncertainty.write_uncertainty(summary_u, out, title)
        document["uncertainty"] = {
            "file": uncertainty.JSON_NAME,
            "samples": extras.samples,
            "guidance": extras.guidance,
            "sampler_steps": extras.sampler_steps,
            "seed": extras.seed,
            "headline": uncertainty.headline(summary_u),
        }
    write_text_atomic(json_path, json.dumps(document, indent=2, allow_nan=False) + "\n")
    return csv_path, json_path, document


def headline(document: Dict[str, Any]) -> str:
    """One line with the main means of a summary document."""
    m = document["metrics"]

    def mean(name: str, fmt: str) -> str:
        value = m[name]["mean"]
        return "n/a" if value is None else format(value, fmt)

    return (
        f"{document['n_cases']} cases: MAE body {mean('mae_hu_body', '.1f')} HU, "
        f"official PSNR-3D {mean('official_psnr_3d', '.2f')} dB, SSIM-avg {mean('official_ssim_avg', '.4f')}, "
        f"CS {mean('official_cs', '.4f')}; honest PSNR {mean('honest_psnr_db', '.2f')} dB, "
        f"3D SSIM {mean('honest_ssim_3d', '.4f')}"
    )


def lesion_headline(document: Dict[str, Any]) -> Optional[str]:
    """One line with the main lesion numbers of a summary document, or None when it has no ``lesions`` section."""
    section = document.get("lesions")
    if section is None:
        return None
    pool = section["overall"]
    usable, total = pool["n_usable"], pool["n_lesions"]
    minimum = section["constants"]["min_real_contrast_hu"]
    where = f"{usable} of {total} with |real contrast| >= {minimum:g} HU ({document['data']['split']} split)"
    if not usable:
        return f"lesions: {where}"
    mean, low, high = (pool[f"relative_contrast_{k}"] for k in ("mean", "ci_low", "ci_high"))
    ci = "[CI needs 2 cases]" if low is None else f"[{low:.2f}, {high:.2f}]"
    return (
        f"lesions: {where}, relative contrast {mean:.2f} {ci}, {pool['n_show']}/{usable} show "
        f"(synthetic contrast >= {section['constants']['shows_fraction']:.0%} of the real one)"
    )


__all__ = ["EvaluationExtras", "evaluate_generator", "headline", "lesion_headline", "load_model"]
