"""Train a disease classifier (``x2ct train-classifier``): BCE with class weights, Adam, validation-based
model selection, Youden thresholds on validation, resumable with identical results.

One step: a batch of training cases (shuffled per epoch by :func:`x2ct.train.generator.epoch_order`),
optionally rotated (:mod:`x2ct.classify.augment`), ``loss = BCEWithLogits(net(batch), target,
pos_weight)`` with ``pos_weight[k] = negatives / positives`` of output k in the training split, one
Adam step. After every epoch the network is scored on the validation split in eval mode: the mean AUC
over the outputs (ties: the lower validation loss, same weighted BCE) picks the best epoch, whose
weights are kept. At the end the best weights get one threshold per output, Youden's J on the
validation split, frozen into the model's metadata for test and ``x2ct predict``.

Run folder ``RUN``::

    config.json                 the resolved settings
    checkpoints/last.pt         everything needed to continue (atomic; loads with weights_only=True)
    scalars.csv                 step,tag,value (TensorBoard too when installed)
    history.json                per epoch: train loss, validation loss and AUCs, the selected epoch
    model/                      model.safetensors + model.json (x2ct.classify.checkpoint), at the end

Resume: ``--resume`` continues from ``checkpoints/last.pt`` (weights, optimiser, best-so-far weights,
RNG states, data order, history), so a run interrupted after any checkpoint ends with the same weights
as an uninterrupted one (same device, thread count and library versions). Without ``--resume`` an
existing run is refused rather than overwritten.
"""

from __future__ import annotations

import copy
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import h5py
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .. import __version__
from ..atomic import sha256_file, write_text_atomic
from ..data.loader import read_manifest
from ..errors import InputError
from ..models.checkpoints import resolve_device
from ..models.classifiers import ClassifierNet, build_classifier
from ..train.generator import (
    SCALARS,
    ScalarLog,
    epoch_order,
    load_checkpoint,
    position_record,
    restore_position,
    save_checkpoint,
    start_position,
    start_run_folder,
    tensorboard_writer,
)
from .augment import rotate_batch, rotation_angles
from .checkpoint import save_classifier
from .config import SETTINGS, ClassifierConfig
from .data import REAL_CT, ClassifierDataset, collate
from .evaluate import predict_logits, require_eval_extra
from .tasks import LabelTable, Task, get_task, read_labels

CHECKPOINT_FORMAT = "x2ct-classifier-train-checkpoint/1"
"""``format`` entry of classifier training checkpoints."""

LAST = "last.pt"
HISTORY = "history.json"
MIN_VAL_CASES_PER_CLASS = 2
"""Validation positives and negatives needed per output (the DeLong AUC of model selection)."""

Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class ClassifierTrainResult:
    """What :func:`train_classifier` did: progress, the selected epoch and (when finished) the exported model."""

    out: Path
    global_step: int
    epoch: int
    finished: bool
    seconds: float
    best_epoch: Optional[int] = None
    best_mean_auc: Optional[float] = None
    thresholds: Dict[str, float] = field(default_factory=dict)
    model_dir: Optional[Path] = None


def batch_slices(n: int, batch_size: int) -> List[Tuple[int, int]]:
    """(start, stop) of each batch of an epoch of ``n`` cases; a last batch of one case joins the one before
    (batch normalisation cannot train on a single case)."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def build_network(config: ClassifierConfig, task: Task) -> Tuple[ClassifierNet, Tuple[str, ...]]:
    """The untrained network (seeded) and the batch keys it will be given (InputError for bad settings)."""
    torch.manual_seed(config.seed)
    try:
        net = build_classifier(config.arch, task.num_outputs, **config.arch_options)
    except ValueError as err:
        raise InputError(None, f"setting arch={config.arch!r} / arch_options: {err}") from None
    chosen = config.input_list() or net.inputs
    required = [k for k in net.inputs if k not in net.optional_inputs]
    if any(k not in net.inputs for k in chosen) or any(k not in chosen for k in required):
        raise InputError(
            None,
            f"--inputs {','.join(chosen)}: {net.arch} reads {', '.join(net.inputs)}"
            + (f" ({', '.join(net.optional_inputs)} optional)" if net.optional_inputs else ""),
        )
    return net, tuple(k for k in net.inputs if k in chosen)


def _check_classes(dataset: ClassifierDataset, labels: LabelTable, minimum: int, purpose: str) -> None:
    targets = dataset.targets
    for k, column in enumerate(dataset.task.columns):
        pos = int(targets[:, k].sum())
        neg = len(targets) - pos
        if pos < minimum or neg < minimum:
            raise InputError(
                labels.path,
                f"the {dataset.split!r} split has {pos} positive and {neg} negative cases for {column}; "
                f"{purpose} needs at least {minimum} of each",
            )


def _data_summary(
    config: ClassifierConfig,
    labels: LabelTable,
    train: ClassifierDataset,
    val: ClassifierDataset,
    inputs: Tuple[str, ...],
) -> Dict[str, Any]:
    """Provenance of the training data for the model metadata."""
    with h5py.File(train.case_file(0), "r") as f:
        attrs = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in f.attrs.items()}
    keep = ("size", "drr_size", "sad_mm", "sid_mm", "detector_mm", "source_kind", "synthetic_seed")
    ct_source: Any = None
    if "ct" in inputs:
        ct_source = {"kind": "real", "description": "the data set's CT"}
        if train.ct_source != REAL_CT:
            record = Path(train.ct_source) / "synthesis.json"
            generator = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else None
            ct_source = {"kind": "synthetic", "folder": str(Path(train.ct_source).resolve()), "generator": generator}
    return {
        "folder": str(Path(config.data).resolve()),  # type: ignore[arg-type]
        "labels": str(labels.path.resolve()),
        "labels_sha256": sha256_file(labels.path),
        "split_source": labels.split_source,
        "cases": {"train": len(train), "val": len(val)},
        "positives": {
            split: {c: int(ds.targets[:, k].sum()) for k, c in enumerate(ds.task.columns)}
            for split, ds in (("train", train), ("val", val))
        },
        "excluded": dict(labels.excluded),
        "ct_source": ct_source,
        "build": {k: attrs[k] for k in keep if k in attrs},
    }


def _validation_scores(
    net: ClassifierNet,
    dataset: ClassifierDataset,
    inputs: Tuple[str, ...],
    criterion: nn.Module,
    device: torch.device,
    batch_size: int,
) -> Tuple[Dict[str, float], float, np.ndarray]:
    """(AUC per output, weighted BCE, probabilities (N, K)) of ``net`` on ``dataset`` in eval mode."""
    from ..evaluate.classifier_stats import delong_auc

    logits = predict_logits(net, dataset, inputs, device, batch_size)
    targets = dataset.targets
    loss = float(criterion(torch.from_numpy(logits), torch.from_numpy(targets.astype(np.float32))).item())
    probabilities = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    aucs = {c: delong_auc(targets[:, k], probabilities[:, k]).auc for k, c in enumerate(dataset.task.columns)}
    return aucs, loss, probabilities


def train_classifier(config: ClassifierConfig, resume: bool = False, log: Log = _stderr) -> ClassifierTrainResult:
    """Train (or with ``resume`` continue) the run ``config.out``; see the module docstring.

    Sets torch's thread count (``threads``) and flush-denormal mode for the run and restores them after.
    """
    threads = torch.get_num_threads()
    try:
        return _train(config, resume, log)
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)


def _train(config: ClassifierConfig, resume: bool, log: Log) -> ClassifierTrainResult:
    config.validate()
    if not config.data or not config.out:
        raise InputError(None, "give the data folder (--data / data=...) and the run folder (-o / out=...)")
    require_eval_extra("train-classifier", ("sklearn",))
    data, out = Path(config.data), Path(config.out)
    last = out / "checkpoints" / LAST
    if last.is_file() and not resume:
        raise InputError(out, "holds a training run; add --resume to continue it, or choose a new run folder")
    task = get_task(config.task)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    torch.set_flush_denormal(True)  # always on: resumed and uninterrupted runs compute the same way

    writer = tensorboard_writer(config.tensorboard)  # tensorboard=on without the package fails here
    net, inputs = build_network(config, task)
    labels = read_labels(config.labels, task, data, read_manifest(data))
    ct_source = config.ct_source if "ct" in inputs else REAL_CT
    common = dict(
        inputs=inputs,
        ct_source=ct_source,
        size_xray=config.size_xray,
        size_ct=config.size_ct,
        cache=config.cache,
        labels=labels,
    )
    train_set = ClassifierDataset(data, None, task, config.train_split, **common)
    val_set = ClassifierDataset(data, None, task, config.val_split, **common)
    _check_classes(train_set, labels, 1, "class weighting")
    _check_classes(val_set, labels, MIN_VAL_CASES_PER_CLASS, "model selection (validation AUC)")
    log(f"task {task.name}: {labels.summary()}")

    state: Optional[Dict[str, Any]] = (
        load_checkpoint(last, "cpu", CHECKPOINT_FORMAT) if resume and last.is_file() else None
    )
    if state is not None:
        SETTINGS.check_resume(state["config"], config, out)
        if state["cases"] != {"train": train_set.case_ids, "val": val_set.case_ids}:
            raise InputError(labels.path, f"gives other training or validation cases than the run {out} started with")

    net = net.to(device)
    targets = train_set.targets
    positives = targets.sum(axis=0)
    pos_weight = (len(targets) - positives) / positives if config.class_weights else np.ones(task.num_outputs)
    criterion = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight, dtype=torch.float32))
    optimizer = torch.optim.Adam(
        net.parameters(), lr=config.lr, betas=(config.beta1, config.beta2), weight_decay=config.weight_decay
    )
    n = len(train_set)
    slices = batch_slices(n, config.batch_size)
    total_steps = len(slices) * config.epochs

    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    epoch, step_in_epoch, global_step, seconds, order = start_position(config.seed, n)
    best: Dict[str, Any] = {"epoch": None, "mean_auc": -math.inf, "val_loss": math.inf, "state": None}
    history: List[Dict[str, Any]] = []
    if state is not None:
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        history = json.loads(state["history"])
        best = {**json.loads(state["best"]), "state": state["best_state"]}
        position = restore_position(state, out, config.epochs, total_steps, log)
        epoch, step_in_epoch, global_step, seconds, order = position
    else:
        start_run_folder(out, config)

    def checkpoint(next_epoch: int, next_step: int, next_order: torch.Tensor) -> None:
        save_checkpoint(
            last,
            {
                **position_record(
                    CHECKPOINT_FORMAT,
                    config,
                    next_epoch,
                    next_step,
                    global_step,
                    seconds + (time.perf_counter() - started),
                    next_order,
                ),
                "cases": {"train": train_set.case_ids, "val": val_set.case_ids},
                "net": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "best": json.dumps({k: v for k, v in best.items() if k != "state"}),
                "best_state": best["state"],
                "history": json.dumps(history),
            },
        )

    if writer is None and config.tensorboard == "auto":
        log(f"tensorboard is not installed: scalars go to {out / SCALARS} only (pip install 'x2ct[train]')")
    scalars = ScalarLog(out, global_step, writer)
    started = time.perf_counter()
    bar = tqdm(
        total=total_steps,
        initial=global_step,
        desc=f"train {net.arch} ({task.name})",
        unit="step",
        disable=not config.progress,
        dynamic_ncols=True,
    )
    stopped = bool(config.max_steps) and global_step >= config.max_steps
    try:
        while epoch < config.epochs and not stopped:
            net.train()
            for b in range(step_in_epoch, len(slices)):
                start, stop = slices[b]
                batch = collate([train_set[i] for i in order[start:stop].tolist()], device)
                if config.augment and config.rotation_degrees > 0:
                    angles = rotation_angles(config.seed, global_step, stop - start, config.rotation_degrees)
                    batch = rotate_batch(batch, angles.to(device))
                logits = net({k: batch[k] for k in inputs})
                loss = criterion(logits.float(), batch["target"])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                global_step += 1
                scalars.scalars(global_step, {"loss/train": loss.item(), "lr": config.lr})
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}")
                done_epoch = b + 1 == len(slices)
                stopped = bool(config.max_steps) and global_step >= config.max_steps
                every = config.checkpoint_every_steps
                if not done_epoch and (stopped or (every and global_step % every == 0)):
                    checkpoint(epoch, b + 1, order)
                if stopped and not done_epoch:
                    break
            else:
                aucs, val_loss, _ = _validation_scores(net, val_set, inputs, criterion, device, config.batch_size)
                mean_auc = float(np.mean(list(aucs.values())))
                epoch += 1
                improved = mean_auc > best["mean_auc"] or (mean_auc == best["mean_auc"] and val_loss < best["val_loss"])
                if improved:
                    state_copy = {k: v.detach().to("cpu").clone() for k, v in net.state_dict().items()}
                    best = {"epoch": epoch, "mean_auc": mean_auc, "val_loss": val_loss, "state": state_copy}
                history.append(
                    {
                        "epoch": epoch,
                        "step": global_step,
                        "val_loss": val_loss,
                        "val_auc": aucs,
                        "val_mean_auc": mean_auc,
                        "best_epoch": best["epoch"],
                    }
                )
                scalars.scalars(
                    global_step,
                    {"val/loss": val_loss, "val/mean_auc": mean_auc, **{f"val/auc_{c}": v for c, v in aucs.items()}},
                )
                step_in_epoch = 0
                order = epoch_order(config.seed, epoch, n)
                checkpoint(epoch, 0, order)
    finally:
        bar.close()
        scalars.close()

    seconds += time.perf_counter() - started
    write_text_atomic(
        out / HISTORY,
        json.dumps({"task": task.name, "epochs": history, "selected_epoch": best["epoch"]}, indent=2) + "\n",
    )
    finished = epoch >= config.epochs
    result = ClassifierTrainResult(
        out, global_step, epoch, finished, seconds, best["epoch"], None if best["epoch"] is None else best["mean_auc"]
    )
    if not finished:
        log(f"stopped at step {global_step}/{total_steps}; run again with --resume to continue")
        return result
    net.load_state_dict(best["state"])
    result.thresholds, validation = _freeze_thresholds(net, val_set, inputs, criterion, device, config.batch_size)
    metadata = {
        "task": task.name,
        "task_description": task.description,
        "outputs": list(task.columns),
        "inputs": list(inputs),
        "input_sizes": {k: config.size_ct if k == "ct" else config.size_xray for k in inputs},
        "thresholds": result.thresholds,
        "threshold_rule": "Youden's J on the validation split at the selected epoch (calls: probability >= "
        "threshold), frozen for test and inference",
        "probability": "sigmoid of the logit, per output (multi-label)",
        "training_data": _data_summary(config, labels, train_set, val_set, inputs),
        "metrics": {
            "validation": validation,
            "selected_epoch": best["epoch"],
            "selection": "mean validation AUC over the outputs, ties to the lower validation loss",
        },
        "training": {
            "config": config.to_dict(),
            "steps": global_step,
            "seconds": round(seconds, 1),
            "device": str(device),
            "threads": torch.get_num_threads(),
            "loss": "BCE with logits, pos_weight = negatives / positives per output in the training split"
            if config.class_weights
            else "BCE with logits",
            "pos_weight": {c: float(w) for c, w in zip(task.columns, pos_weight)},
            "optimizer": f"Adam lr {config.lr} betas ({config.beta1}, {config.beta2}) weight decay "
            f"{config.weight_decay}; {config.epochs} epochs, batch {config.batch_size}",
            "augmentation": f"random rotation, uniform in +-{config.rotation_degrees} degrees (PA and coronal CT "
            "planes together)"
            if config.augment and config.rotation_degrees > 0
            else "none",
            "x2ct_version": __version__,
            "torch_version": torch.__version__,
        },
    }
    result.model_dir = out / "model"
    save_classifier(copy.deepcopy(net).to("cpu"), result.model_dir, **metadata)
    log(
        f"finished {config.epochs} epochs ({global_step} steps); selected epoch {best['epoch']} "
        f"(validation mean AUC {best['mean_auc']:.3f}); model in {result.model_dir}"
    )
    return result


def _freeze_thresholds(
    net: ClassifierNet,
    val_set: ClassifierDataset,
    inputs: Tuple[str, ...],
    criterion: nn.Module,
    device: torch.device,
    batch_size: int,
) -> Tuple[Dict[str, float], Dict[str, Any]]:
    """Youden thresholds per output on validation, and the validation AUCs (DeLong CI) for the metadata."""
    from ..evaluate.classifier_stats import delong_auc, youden_threshold

    _, loss, probabilities = _validation_scores(net, val_set, inputs, criterion, device, batch_size)
    targets = val_set.targets
    thresholds: Dict[str, float] = {}
    validation: Dict[str, Any] = {"loss": loss, "cases": len(val_set), "outputs": {}}
    for k, column in enumerate(val_set.task.columns):
        thresholds[column] = youden_threshold(targets[:, k], probabilities[:, k])
        auc = delong_auc(targets[:, k], probabilities[:, k])
        validation["outputs"][column] = {
            "auc": auc.auc,
            "ci_low": auc.ci_low,
            "ci_high": auc.ci_high,
            "n_pos": auc.n_pos,
            "n_neg": auc.n_neg,
            "threshold": thresholds[column],
        }
    return thresholds, validation
