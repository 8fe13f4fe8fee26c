"""``x2ct evaluate-classifier``: score a trained classifier on one split under the declared protocol.

Protocol (docs/classifiers.md):

* probabilities: sigmoid of each output's logit, eval mode, every usable case of the split;
* AUC per output with a DeLong 95 % CI (fast DeLong, :mod:`x2ct.evaluate.classifier_stats`);
* calls at the threshold frozen in the model (Youden's J on the validation split), never re-chosen on
  the evaluated split; accuracy, sensitivity, specificity, PPV and NPV with Wilson 95 % CIs;
* ``--compare OTHER``: a paired DeLong test per output against another evaluation folder of the same
  task on the same cases (same ids, same labels);
* ``--cam-hit-rate``: the Grad-CAM localisation figure (:func:`cam_hit_rates`).

Writes ``OUT/predictions.csv`` (case_id, then per output ``<name>_probability``, ``<name>_label``,
``<name>_call``), ``OUT/metrics.json`` and ``OUT/roc.png``; the folder appears whole or not at all.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from tqdm import tqdm

from ..atomic import atomic_dir, exclusive_output
from ..data.loader import REAL_CT, CaseLesions, collate, read_lesions
from ..errors import InputError, MissingExtraError, PathLike
from ..models.checkpoints import resolve_device
from ..models.classifiers import ClassifierNet
from ..models.metadata import ModelMetadata
from ..views import CT_KEY, LATERAL_KEY, PA_KEY, view_of_key
from .data import ClassifierDataset
from .tasks import Task, get_task

PREDICTIONS = "predictions.csv"
METRICS = "metrics.json"
ROC = "roc.png"
EVAL_EXTRA = ("sklearn", "matplotlib")
"""Packages of the optional ``eval`` extra."""

CAM_HIT_DEFINITION = (
    "Positive cases (label 1 for the output) whose case file holds lesion masks (lesions/<kind>) of the kinds that "
    "make the output positive. Two maps per input, both for the output's logit: 'grad_cam' (x2ct.gradcam.grad_cam, "
    "the heat map shown to users) and 'guided_grad_cam' (x2ct.gradcam.guided_grad_cam: Grad-CAM times guided "
    "backpropagation at the input resolution). A case is a hit for a map when the map's argmax lies inside the union "
    "of those masks on the map's grid; 'dilated' allows one voxel/pixel of slack (the mask dilated by a 3x3(x3) "
    "cube). CT: the masks resampled to the classifier's CT grid (a voxel is lesion when any data-set voxel it covers "
    "is); a CT map that is the same on every coronal slice (two-slice models see only the central coronal slices) is "
    "scored in the coronal plane against the masks' footprint along A->P. PA / lateral: the 3D masks projected with "
    "the data set's cone-beam DRR geometry (x2ct.drr.project; a detector pixel is lesion when its ray crosses at "
    "least half a voxel of lesion), resampled to the radiograph input the same way. An all-zero map is a miss. The "
    "headline is the CT map's rates when the network has one, else the PA map's. 'by_kind' counts, for each lesion "
    "kind, the cases that hold it and those whose peak lies inside that kind's own mask."
)


def require_eval_extra(command: str, modules: Sequence[str] = EVAL_EXTRA) -> None:
    """:class:`x2ct.errors.MissingExtraError` (one line, exit 2 from the CLI) when a package of the ``eval``
    extra cannot be imported."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingExtraError("eval", command, missing)


@torch.no_grad()
def predict_logits(
    net: ClassifierNet,
    dataset: ClassifierDataset,
    inputs: Sequence[str],
    device: torch.device,
    batch_size: int = 8,
    progress: bool = False,
) -> np.ndarray:
    """(N, K) float32 logits of ``net`` (eval mode) on every case of ``dataset``, in its order."""
    net.eval()
    chunks = []
    starts = range(0, len(dataset), batch_size)
    for start in tqdm(starts, desc="classify", unit="batch", disable=not progress, dynamic_ncols=True):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))], device)
        chunks.append(net(batch.inputs(inputs)).float().cpu().numpy())
    return np.concatenate(chunks).astype(np.float32)


# ------------------------------------------------------------------------------------------ CAM hit rate


def resample_mask(mask: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A boolean mask on another grid of the same extent: max-pooling when shrinking (a cell is in the mask
    when any source voxel it covers is), nearest neighbour when growing."""
    if tuple(mask.shape) == tuple(shape):
        return mask.astype(bool)
    x = torch.from_numpy(mask.astype(np.float32))[None, None]
    if all(t <= s for t, s in zip(shape, mask.shape)):
        pool = F.adaptive_max_pool3d if mask.ndim == 3 else F.adaptive_max_pool2d
        y = pool(x, tuple(shape))
    else:
        y = F.interpolate(x, size=tuple(shape), mode="nearest")
    return y[0, 0].numpy() > 0.5


def projected_mask(mask: np.ndarray, spacing_mm: Sequence[float], view: str, drr_size: int, geometry) -> np.ndarray:
    """The detector pixels (drr_size, drr_size) whose cone-beam ray crosses at least half a voxel of ``mask``
    ((D, H, W) bool on the canonical grid), in the display frame of ``view`` (the data set's DRR frame)."""
    from ..drr import project

    volume = torch.from_numpy(mask.astype(np.float32))[None, None]
    with torch.no_grad():
        path_mm = project(volume, tuple(spacing_mm), view, drr_size, geometry, units="mu")[0, 0].numpy()
    return path_mm >= 0.5 * float(min(spacing_mm))


def _mask_on_map(mask: np.ndarray, key: str, cam: np.ndarray, lesions: CaseLesions) -> np.ndarray:
    """A (D, H, W) lesion mask on the grid of input ``key``'s map ``cam`` (see :data:`CAM_HIT_DEFINITION`)."""
    if key == CT_KEY and cam.ndim == 2:  # the coronal map of a two-slice model
        return resample_mask(mask.any(axis=1), cam.shape)
    if key == CT_KEY:
        return resample_mask(mask, cam.shape)
    from ..drr import DRRGeometry

    geometry = DRRGeometry(sad_mm=lesions.sad_mm, sid_mm=lesions.sid_mm, detector_mm=lesions.detector_mm)
    drr = projected_mask(mask, lesions.spacing_mm, view_of_key(key), lesions.drr_size, geometry)
    return resample_mask(drr, cam.shape)


def _hit(cam: np.ndarray, mask: np.ndarray) -> Tuple[bool, bool, List[int]]:
    """(argmax inside mask, argmax inside mask dilated by one cell, argmax index)."""
    peak = [int(i) for i in np.unravel_index(int(np.argmax(cam)), cam.shape)]
    if not cam.max() > 0:
        return False, False, peak
    dilated = ndimage.binary_dilation(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    return bool(mask[tuple(peak)]), bool(dilated[tuple(peak)]), peak


CAM_METHODS = ("grad_cam", "guided_grad_cam")
"""The maps the hit rate scores (x2ct.gradcam.grad_cam and x2ct.gradcam.guided_grad_cam)."""


def _rates(tally: Dict[str, Any]) -> Dict[str, Any]:
    """A hit tally with its rates and the Wilson 95 % CI of the strict rate."""
    from ..evaluate.classifier_stats import wilson_interval

    low, high = wilson_interval(tally["hits"], tally["n"])
    return {
        **tally,
        "hit_rate": tally["hits"] / tally["n"],
        "ci_low": low,
        "ci_high": high,
        "hit_rate_dilated": tally["hits_dilated"] / tally["n"],
    }


def cam_hit_rates(
    net: ClassifierNet, dataset: ClassifierDataset, inputs: Sequence[str], device: torch.device, progress: bool = False
) -> Dict[str, Any]:
    """The CAM hit rate per output, input map and method (see :data:`CAM_HIT_DEFINITION`), with Wilson 95 % CIs,
    a count per lesion kind and per-case peaks."""
    from ..gradcam import constant_along_ap, grad_cam_and_guided

    task: Task = dataset.task
    targets = dataset.targets
    result: Dict[str, Any] = {"definition": CAM_HIT_DEFINITION, "methods": list(CAM_METHODS), "outputs": {}}
    for k, column in enumerate(task.columns):
        kinds = task.relevant_kinds(column)
        positives = [i for i in range(len(dataset)) if targets[i, k] == 1]
        tallies: Dict[str, Dict[str, Dict[str, Any]]] = {}
        cases: List[Dict[str, Any]] = []
        for i in tqdm(positives, desc=f"Grad-CAM {column}", unit="case", disable=not progress, dynamic_ncols=True):
            lesions = read_lesions(dataset.case_file(i), kinds)
            if lesions is None:
                continue
            masks = lesions.masks
            union = np.any(list(masks.values()), axis=0)
            batch = collate([dataset[i]], device)
            record: Dict[str, Any] = {"case_id": dataset.case_ids[i], "kinds": sorted(masks)}
            maps = grad_cam_and_guided(net, batch.inputs(inputs), k)
            placed: Dict[Tuple[str, Tuple[int, ...]], Tuple[np.ndarray, Dict[str, np.ndarray]]] = {}
            for method, by_input in zip(CAM_METHODS, maps):
                for key, cam in by_input.items():
                    if key == CT_KEY and constant_along_ap(cam):  # two-slice models: a coronal map repeated along H
                        cam = cam[:, 0, :]
                    if (key, cam.shape) not in placed:  # the masks on this map's grid, shared by both methods
                        placed[key, cam.shape] = (
                            _mask_on_map(union, key, cam, lesions),
                            {kind: _mask_on_map(mask, key, cam, lesions) for kind, mask in masks.items()},
                        )
                    union_on_map, on_map = placed[key, cam.shape]
                    hit, near, peak = _hit(cam, union_on_map)  # peak: (d, h, w), (d, w), (row, col)
                    inside = sorted(kind for kind, mask in on_map.items() if mask[tuple(peak)])
                    empty = {"n": 0, "hits": 0, "hits_dilated": 0, "zero_maps": 0, "by_kind": {}}
                    tally = tallies.setdefault(key, {}).setdefault(method, empty)
                    tally["n"] += 1
                    tally["hits"] += hit
                    tally["hits_dilated"] += near
                    tally["zero_maps"] += not cam.max() > 0
                    for kind in masks:
                        by_kind = tally["by_kind"].setdefault(kind, {"n": 0, "hits": 0})
                        by_kind["n"] += 1
                        by_kind["hits"] += kind in inside
                    record.setdefault(key, {})[method] = {
                        "hit": hit,
                        "hit_dilated": near,
                        "peak": peak,
                        "inside": inside,
                    }
            cases.append(record)
        per_input = {key: {m: _rates(t) for m, t in by_method.items()} for key, by_method in tallies.items()}
        headline_key = CT_KEY if CT_KEY in per_input else (PA_KEY if PA_KEY in per_input else None)
        fields = ("hit_rate", "ci_low", "ci_high", "hit_rate_dilated", "n")
        result["outputs"][column] = {
            "relevant_lesion_kinds": list(kinds),
            "positive_cases": len(positives),
            "cases_with_masks": len(cases),
            "headline": None
            if headline_key is None
            else {
                "input": headline_key,
                **{m: {f: per_input[headline_key][m][f] for f in fields} for m in CAM_METHODS},
            },
            "per_input": per_input,
            "cases": cases,
        }
    return result


# ------------------------------------------------------------------------------------------- evaluation


def _resolve_ct_source(metadata: ModelMetadata, given: Optional[str]) -> str:
    """The CT source: as given, else the one the model was trained with (real, or its synthetic folder)."""
    if given is not None:
        return given
    data = metadata.training_data if isinstance(metadata.training_data, dict) else {}
    source = data.get("ct_source") or {"kind": "real"}
    if source.get("kind") == "real":
        return REAL_CT
    folder = source.get("folder")
    if folder and Path(folder).is_dir():
        return str(folder)
    raise InputError(
        None,
        f"the model was trained on synthetic CT ({folder}); give --ct-source DIR "
        "(written by x2ct synthesize-ct or x2ct predict --manifest)",
    )


def check_output_dir(out: Path) -> None:
    """Refuse an output folder that exists and holds anything but an earlier evaluation (it is replaced whole)."""
    if out.exists() and not out.is_dir():
        raise InputError(out, "output exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / METRICS).is_file():
        raise InputError(out, "output folder exists and is not empty (and is not an earlier x2ct evaluation)")


def read_evaluation(folder: PathLike, task: Task) -> Tuple[Path, Dict[str, Dict[str, float]]]:
    """(predictions CSV, {case_id: {column: probability, column + "_label": label}}) of an evaluation folder of
    ``task`` (InputError when it is not one)."""
    folder = Path(os.fspath(folder))
    csv_path, json_path = folder / PREDICTIONS, folder / METRICS
    if not csv_path.is_file() or not json_path.is_file():
        raise InputError(folder, f"not an evaluation folder (needs {PREDICTIONS} and {METRICS})")
    try:
        other_task = json.loads(json_path.read_text(encoding="utf-8")).get("task")
        with open(csv_path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as err:
        raise InputError(folder, f"unreadable evaluation ({' '.join(str(err).split())})") from None
    if other_task != task.name:
        raise InputError(json_path, f"is an evaluation of task {other_task!r}, not {task.name!r}")
    table: Dict[str, Dict[str, float]] = {}
    try:
        for row in rows:
            table[row["case_id"]] = {
                **{c: float(row[f"{c}_probability"]) for c in task.columns},
                **{f"{c}_label": float(row[f"{c}_label"]) for c in task.columns},
            }
    except (KeyError, ValueError) as err:
        raise InputError(csv_path, f"missing or bad column ({err})") from None
    return csv_path, table


def _comparison(
    csv_path: Path,
    other: Dict[str, Dict[str, float]],
    case_ids: List[str],
    targets: np.ndarray,
    probabilities: np.ndarray,
    task: Task,
) -> Dict[str, Any]:
    """Paired DeLong test per output of this evaluation (a) against ``other`` (b) on the same cases."""
    from ..evaluate.classifier_stats import delong_compare

    here, there = set(case_ids), set(other)
    if here != there:
        only_here, only_there = sorted(here - there), sorted(there - here)
        example = (only_here or only_there)[0]
        raise InputError(
            csv_path,
            f"holds other cases than this evaluation ({len(only_here)} only here, "
            f"{len(only_there)} only there, e.g. {example}); --compare needs the same cases",
        )
    result: Dict[str, Any] = {"other": str(csv_path.parent.resolve()), "outputs": {}}
    for k, column in enumerate(task.columns):
        other_labels = np.asarray([other[c][f"{column}_label"] for c in case_ids])
        if not np.array_equal(other_labels, targets[:, k]):
            raise InputError(csv_path, f"labels of {column} differ from this evaluation's on the same cases")
        scores_b = np.asarray([other[c][column] for c in case_ids])
        try:
            cmp = delong_compare(targets[:, k], probabilities[:, k], scores_b)
        except ValueError as err:
            result["outputs"][column] = {"error": str(err)}
            continue
        record = {f: getattr(cmp, f) for f in ("auc_a", "auc_b", "difference", "ci_low", "ci_high", "z", "p_value")}
        if not np.isfinite(record["z"]):  # zero DeLong variance with a non-zero difference; JSON has no infinity
            record["z"] = None
        result["outputs"][column] = record
    result["note"] = "a = this evaluation, b = the other; two-sided p-value of H0: equal AUCs (paired DeLong)"
    return result


def _output_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> Dict[str, Any]:
    from ..evaluate.classifier_stats import binary_metrics, delong_auc

    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    called = p >= threshold
    counts = {
        "n": len(y),
        "n_pos": n_pos,
        "n_neg": n_neg,
        "tp": int(np.sum(called & (y == 1))),
        "fp": int(np.sum(called & (y == 0))),
        "tn": int(np.sum(~called & (y == 0))),
        "fn": int(np.sum(~called & (y == 1))),
    }
    try:
        auc = delong_auc(y, p)
        auc_record: Dict[str, Any] = {
            "value": auc.auc,
            "ci_low": auc.ci_low,
            "ci_high": auc.ci_high,
            "variance": auc.variance,
            "method": "DeLong (fast, Sun & Xu 2014), 95% CI on the logit scale",
        }
    except ValueError as err:
        auc_record = {"value": None, "ci_low": None, "ci_high": None, "variance": None, "note": str(err)}
    return {
        "auc": auc_record,
        "threshold": threshold,
        "threshold_source": "frozen in the model: Youden's J on the validation split",
        "metrics": binary_metrics(y, p, threshold),
        "counts": counts,
    }


def evaluate_classifier(
    model: PathLike,
    data: PathLike,
    out: PathLike,
    split: str = "test",
    labels: Optional[PathLike] = None,
    ct_source: Optional[str] = None,
    device: Union[str, torch.device] = "auto",
    compare: Optional[PathLike] = None,
    cam_hit_rate: bool = False,
    batch_size: int = 8,
    progress: bool = True,
) -> Dict[str, Any]:
    """Evaluate the classifier ``model`` on ``split`` of ``data``; write the folder ``out``; return metrics.json.

    Every user error (model, data, labels, CT source, --compare folder, output folder, missing eval extra, another
    run writing ``out``: :func:`x2ct.atomic.exclusive_output`) is an InputError raised before anything is written.
    """
    with exclusive_output(out):
        return _evaluate(model, data, Path(os.fspath(out)), split, labels, ct_source, device, compare, cam_hit_rate,
                         batch_size, progress)  # fmt: skip


def _evaluate(
    model: PathLike,
    data: PathLike,
    out: Path,
    split: str,
    labels: Optional[PathLike],
    ct_source: Optional[str],
    device: Union[str, torch.device],
    compare: Optional[PathLike],
    cam_hit_rate: bool,
    batch_size: int,
    progress: bool,
) -> Dict[str, Any]:
    """The body of :func:`evaluate_classifier`, with ``out`` held."""
    from ..evaluate.classifier_stats import roc_png
    from .checkpoint import load_classifier

    require_eval_extra("evaluate-classifier")
    check_output_dir(out)
    if compare is not None and Path(os.fspath(compare)).resolve() == out.resolve():
        raise InputError(compare, "--compare must name another evaluation folder than -o")
    device = resolve_device(device)
    net, metadata = load_classifier(model, device)
    task = get_task(metadata.task.name if metadata.task else "")
    inputs = metadata.input_keys
    sizes = {key: metadata.input_size(key) for key in inputs}
    source = _resolve_ct_source(metadata, ct_source) if CT_KEY in inputs else REAL_CT
    dataset = ClassifierDataset(
        data,
        labels,
        task,
        split,
        inputs,
        source,
        size_xray=int(sizes.get(PA_KEY, sizes.get(LATERAL_KEY, 128))),
        size_ct=int(sizes.get(CT_KEY, 128)),
        cache=False,
    )
    thresholds = metadata.thresholds()
    other = read_evaluation(compare, task) if compare is not None else None

    logits = predict_logits(net, dataset, inputs, device, batch_size, progress)
    probabilities = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    targets = dataset.targets
    comparison = _comparison(*other, dataset.case_ids, targets, probabilities, task) if other else None
    document: Dict[str, Any] = {
        "task": task.name,
        "task_description": task.description,
        "outputs": {
            c: _output_metrics(targets[:, k], probabilities[:, k], thresholds[c]) for k, c in enumerate(task.columns)
        },
        "model": {
            "path": metadata.path,
            "arch": metadata.architecture,
            "sha256": metadata.sha256,
            "inputs": list(inputs),
            "input_sizes": sizes,
        },
        "data": {
            "folder": str(Path(os.fspath(data)).resolve()),
            "split": split,
            "labels": str(dataset.labels.path),
            "split_source": dataset.labels.split_source,
            "cases": len(dataset),
            "excluded": dict(dataset.labels.excluded),
            "ct_source": None if CT_KEY not in inputs else str(source),
        },
        "device": str(device),
        "comparison": comparison,
        "cam_hit_rate": cam_hit_rates(net, dataset, inputs, device, progress) if cam_hit_rate else None,
        "files": {"predictions": PREDICTIONS, "metrics": METRICS, "roc": None},
    }
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case_id", *[f"{c}_{f}" for c in task.columns for f in ("probability", "label", "call")]])
    for i, case_id in enumerate(dataset.case_ids):
        cells = []
        for k, c in enumerate(task.columns):
            cells += [f"{probabilities[i, k]:.6f}", int(targets[i, k]), int(probabilities[i, k] >= thresholds[c])]
        writer.writerow([case_id, *cells])
    curves = {
        c: (targets[:, k], probabilities[:, k])
        for k, c in enumerate(task.columns)
        if document["outputs"][c]["auc"]["value"] is not None
    }
    with atomic_dir(out) as tmp:
        if curves:
            title = f"{task.name} ({metadata.architecture}) on the {split} split, {len(dataset)} cases"
            roc_png(curves, tmp / ROC, title)
            document["files"]["roc"] = ROC
        (tmp / PREDICTIONS).write_text(buffer.getvalue(), encoding="utf-8")
        (tmp / METRICS).write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return document


def _value(record: Dict[str, Any], digits: int = 2) -> str:
    """A metric record's value, or n/a."""
    return "n/a" if record["value"] is None else f"{record['value']:.{digits}f}"


def headline(document: Dict[str, Any]) -> str:
    """One line per output: AUC with CI, the threshold and sensitivity / specificity there."""
    lines = []
    for column, record in document["outputs"].items():
        auc, m = record["auc"], record["metrics"]
        ci = "" if auc["value"] is None else f" [{auc['ci_low']:.3f}, {auc['ci_high']:.3f}]"
        lines.append(
            f"{column}: AUC {_value(auc, 3)}{ci}; threshold {record['threshold']:.3f}: sensitivity "
            f"{_value(m['sensitivity'])}, specificity {_value(m['specificity'])} ({record['counts']['n']} cases)"
        )
    return "\n".join(lines)
