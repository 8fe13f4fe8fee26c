"""``x2ct calibrate-ood``: a generator's OOD reference from its training data, its threshold, and its detection rate.

1. **Reference**: the :data:`~x2ct.inference.ood.FEATURES` of the training split's DRRs of one or more built
   data sets (``x2ct build-dataset``; the cases the generator learnt from, possibly rendered at several DRR
   sizes), each DRR prepared as ``x2ct predict`` prepares a DRR file
   (:func:`~x2ct.inference.preprocess.resize_square` to the model's input size, then
   :func:`~x2ct.inference.preprocess.match_intensity`), per view: mean, scale, Ledoit-Wolf precision.
2. **Threshold**: the ``percentile`` (99 by default) of the scores of the held-out DRRs (the ``val`` and
   ``test`` splits): about 1 % of training-domain inputs are flagged. That in-sample rate is 1 % by
   construction, so the false-alarm rate is also estimated **cross-fitted**: the threshold of the ``val``
   scores applied to the ``test`` ones and vice versa (pooled, with a Wilson 95 % CI).
3. **Detection rate** (optional): the fraction of flagged cases in a folder of simulated clinical radiographs
   (``x2ct simulate-radiographs`` output, read with :func:`~x2ct.data.radiograph_folder.read_radiograph_folder`,
   each file prepared exactly as predict does), with a Wilson 95 % CI.

The reference is written atomically to ``ood_reference.json`` in the model folder
(:func:`~x2ct.inference.ood.reference_path`), where :func:`~x2ct.inference.ood.ood_score` finds it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from .. import __version__
from ..data.layout import read_manifest
from ..data.loader import case_attributes, read_case
from ..data.radiograph_folder import model_input, read_radiograph_folder
from ..errors import InputError, PathLike
from ..evaluate.classifier_stats import wilson_interval
from ..userfiles import check_output_file
from ..views import input_key
from .models import load_model
from .ood import OODReference, ViewReference, image_features, reference_path
from .preprocess import match_intensity, resize_square
from .types import InputSpec

HELDOUT_SPLITS = ("val", "test")
"""The splits whose DRR scores set the threshold."""

Case = Dict[str, np.ndarray]
"""One case's preprocessed images by view name, (S, S) [0, 1]."""


@dataclass(frozen=True)
class Calibration:
    """What ``x2ct calibrate-ood`` did: the reference written to ``path`` and the scores behind its numbers."""

    reference: OODReference
    path: Path
    heldout_scores: List[float]
    simulated_scores: Optional[List[float]]


def _rate(flags: Sequence[bool]) -> Dict[str, Any]:
    hits, n = int(sum(flags)), len(flags)
    low, high = wilson_interval(hits, n)
    return {"rate": hits / n, "count": hits, "n": n, "ci95": [round(low, 4), round(high, 4)]}


def drr_cases(data: PathLike, split: str, views: Sequence[str], spec: InputSpec, progress: bool = True) -> List[Case]:
    """The DRRs of ``split`` of a built data set, each view prepared as predict prepares a DRR file for a model
    with ``spec`` (the stored 8-bit DRR at its own size, resized to the input size, min-max, quantised)."""
    root = Path(os.fspath(data))
    rows = [row for row in read_manifest(root) if row["split"] == split]
    cases: List[Case] = []
    for row in tqdm(rows, desc=f"DRRs ({split})", unit="case", disable=not progress or not rows):
        path = root / row["path"]
        stored = int(case_attributes(path).get("drr_size") or spec.size)
        arrays = read_case(path, {input_key(view): stored for view in views})
        cases.append({view: match_intensity(resize_square(arrays[input_key(view)], spec.size), spec) for view in views})
    return cases


def folder_cases(folder: PathLike, views: Sequence[str], spec: InputSpec, progress: bool = True) -> List[Case]:
    """The radiographs of a folder without CT, each prepared exactly as predict prepares it."""
    cases = read_radiograph_folder(folder, views)
    return [
        {view: model_input(case.files[view], view, spec) for view in views}
        for case in tqdm(cases, desc="radiographs", unit="case", disable=not progress)
    ]


def fit_reference(cases: Sequence[Case], views: Sequence[str], size: int) -> OODReference:
    """The per-view statistics of the training cases (no threshold yet)."""
    per_view = {view: ViewReference.fit(np.stack([image_features(case[view]) for case in cases])) for view in views}
    return OODReference(per_view, size, None)


def _cross_fitted(val: Sequence[float], test: Sequence[float], percentile: float) -> Optional[Dict[str, Any]]:
    """False alarms of the threshold of one held-out split on the other, both ways, pooled (None without both)."""
    if not val or not test:
        return None
    flags = [s > np.percentile(val, percentile) for s in test] + [s > np.percentile(test, percentile) for s in val]
    return _rate(flags)


def calibrate(
    model: str,
    data: Sequence[PathLike],
    simulated: Optional[PathLike] = None,
    percentile: float = 99.0,
    progress: bool = True,
) -> Calibration:
    """Compute, calibrate and write ``model``'s OOD reference from the data sets ``data`` (module doc); returns
    what was done.

    InputError (one line) for a model or data set that cannot be read, a training split with fewer than 2 or a
    held-out split with no DRRs, a model folder that cannot be written, or a bad ``percentile``.
    """
    if not 50.0 <= percentile < 100.0:
        raise InputError(None, f"--percentile {percentile:g}: use a value in [50, 100)")
    loaded = load_model(model, "cpu")
    target = check_output_file(reference_path(loaded.path))
    views, spec = loaded.views, loaded.spec
    if not data:
        raise InputError(None, "give the data set(s) the model was trained on (--data DIR)")
    train = [case for folder in data for case in drr_cases(folder, "train", views, spec, progress)]
    if len(train) < 2:
        raise InputError(data[0], f"the train split has {len(train)} case(s); the reference needs at least 2")
    reference = fit_reference(train, views, spec.size)

    def scored(split: str) -> List[float]:
        return [reference.score(case) for folder in data for case in drr_cases(folder, split, views, spec, progress)]

    heldout = {split: scored(split) for split in HELDOUT_SPLITS}
    scores = [s for split in HELDOUT_SPLITS for s in heldout[split]]
    if not scores:
        raise InputError(data[0], "has no val or test cases: the threshold is set on held-out DRRs")
    threshold = float(np.percentile(scores, percentile))
    calibration: Dict[str, Any] = {
        "data": [str(folder) for folder in data],
        "reference": {"split": "train", "cases": len(train), "size": spec.size, "views": list(views)},
        "threshold_rule": f"{percentile:g}th percentile (linear interpolation) of the scores of the held-out DRRs",
        "heldout": {
            "splits": [s for s in HELDOUT_SPLITS if heldout[s]],
            "cases": len(scores),
            "median_score": float(np.median(scores)),
        },
        "false_alarms_in_sample": _rate([s > threshold for s in scores]),
        "false_alarms_cross_fitted": _cross_fitted(heldout["val"], heldout["test"], percentile),
        "x2ct_version": __version__,
    }
    simulated_scores = None
    if simulated is not None:
        simulated_scores = [reference.score(case) for case in folder_cases(simulated, views, spec, progress)]
        calibration["simulated"] = {
            "folder": str(simulated),
            "median_score": float(np.median(simulated_scores)),
            "detection": _rate([s > threshold for s in simulated_scores]),
        }
    reference = OODReference(reference.views, spec.size, threshold, calibration)
    reference.write(target)
    return Calibration(reference, target, scores, simulated_scores)


def summary_line(result: Calibration) -> str:
    """One line of what ``x2ct calibrate-ood`` measured."""
    c = result.reference.calibration

    def rate(record: Optional[Dict[str, Any]]) -> str:
        if not record:
            return "n/a"
        low, high = record["ci95"]
        return f"{100 * record['rate']:.1f}% ({record['count']}/{record['n']}, 95% CI {100 * low:.1f}-{100 * high:.1f})"

    rule = c["threshold_rule"].split(" (")[0]
    parts: List[Tuple[str, str]] = [
        ("threshold", f"{result.reference.threshold:.3f} ({rule} of {len(result.heldout_scores)})"),
        ("false alarms on held-out DRRs, cross-fitted", rate(c.get("false_alarms_cross_fitted"))),
    ]
    if "simulated" in c:
        parts.append(("detected simulated radiographs", rate(c["simulated"]["detection"])))
    return f"wrote {result.path}: " + "; ".join(f"{name} {value}" for name, value in parts)
