"""Train a disease classifier (``x2ct train-classifier``): BCE with class weights, Adam, validation-based
model selection, Youden thresholds on validation, resumable with identical results.

A :class:`~x2ct.train.engine.Trainer` on the one training engine (seeding, data order, checkpoints,
resume, torchrun DDP, logging, AMP and best-model selection are the engine's; see
:mod:`x2ct.train.engine`). One step: a batch of training cases, optionally rotated
(:mod:`x2ct.classify.augment`), ``loss = BCEWithLogits(net(batch), target, pos_weight)`` with
``pos_weight[k] = negatives / positives`` of output k in the training split, one Adam step. After
every epoch the network is scored on the validation split in eval mode: the mean AUC over the
outputs (ties: the lower validation loss, same weighted BCE) picks the best epoch, whose weights are
kept. At the end the best weights get one threshold per output, Youden's J on the validation split,
frozen into the model's metadata for test and ``x2ct predict``.

Run folder ``RUN``::

    config.json                 the resolved settings
    checkpoints/last.pt         everything needed to continue (atomic; loads with weights_only=True)
    scalars.csv                 step,tag,value (TensorBoard too when installed)
    history.json                per epoch: validation loss and AUCs, the selected epoch
    model/                      model.safetensors + model.json (x2ct.classify.checkpoint), at the end

Resume: ``--resume`` continues from ``checkpoints/last.pt``; without it an existing run is refused
rather than overwritten.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..atomic import sha256_file
from ..data.layout import read_manifest
from ..data.loader import REAL_CT, case_attributes, collate
from ..errors import InputError
from ..models.classifiers import ClassifierNet, build_classifier
from ..models.metadata import TaskSpec
from ..train.engine import (
    Log,
    RunRecord,
    StepContext,
    Trainer,
    TrainResult,
    Validation,
    Wrap,
    run_training,
    stderr_log,
)
from ..views import CT_KEY
from .augment import rotate_batch, rotation_angles
from .checkpoint import save_classifier
from .config import SETTINGS, ClassifierConfig
from .data import ClassifierDataset
from .evaluate import predict_logits, require_eval_extra
from .tasks import LabelTable, Task, get_task, read_labels

CHECKPOINT_FORMAT = "x2ct-classifier-train-checkpoint/2"
"""``format`` entry of classifier training checkpoints (version 2: the shared training engine)."""

MIN_VAL_CASES_PER_CLASS = 2
"""Validation positives and negatives needed per output (the DeLong AUC of model selection)."""


@dataclass
class ClassifierTrainResult(TrainResult):
    """:class:`~x2ct.train.engine.TrainResult` plus the selected epoch's validation mean AUC and, when finished,
    the frozen thresholds."""

    best_mean_auc: Optional[float] = None
    thresholds: Dict[str, float] = field(default_factory=dict)


def build_network(config: ClassifierConfig, task: Task) -> Tuple[ClassifierNet, Tuple[str, ...]]:
    """The untrained network and the batch keys it will be given (InputError for bad settings)."""
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
    attrs = case_attributes(train.case_file(0))
    keep = ("size", "drr_size", "sad_mm", "sid_mm", "detector_mm", "source_kind", "synthetic_seed")
    ct_source: Any = None
    if CT_KEY in inputs:
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


class ClassifierTrainer(Trainer):
    """A disease classifier for one task (module doc); ``x2ct train-classifier``."""

    checkpoint_format = CHECKPOINT_FORMAT
    min_per_rank = 2
    """Batch normalisation cannot train on a single case."""

    def __init__(self, config: ClassifierConfig, log: Log) -> None:
        config.validate()
        if not config.data or not config.out:
            raise InputError(None, "give the data folder (--data / data=...) and the run folder (-o / out=...)")
        require_eval_extra("train-classifier", ("sklearn",))
        super().__init__(config, SETTINGS)
        data = Path(config.data)
        self.task = get_task(config.task)
        self.net_raw, self.inputs = build_network(config, self.task)
        self.labels = read_labels(config.labels, self.task, data, read_manifest(data))
        common: Dict[str, Any] = dict(
            inputs=self.inputs,
            ct_source=config.ct_source if CT_KEY in self.inputs else REAL_CT,
            size_xray=config.size_xray,
            size_ct=config.size_ct,
            cache=config.cache,
            labels=self.labels,
        )
        self.train_set = ClassifierDataset(data, None, self.task, config.train_split, **common)
        self.val_set = ClassifierDataset(data, None, self.task, config.val_split, **common)
        _check_classes(self.train_set, self.labels, 1, "class weighting")
        _check_classes(self.val_set, self.labels, MIN_VAL_CASES_PER_CLASS, "model selection (validation AUC)")
        log(f"task {self.task.name}: {self.labels.summary()}")
        targets = self.train_set.targets
        positives = targets.sum(axis=0)
        ones = np.ones(self.task.num_outputs)
        self.pos_weight = (len(targets) - positives) / positives if config.class_weights else ones
        self.thresholds: Dict[str, float] = {}

    @property
    def description(self) -> str:
        return f"{self.net_raw.arch} ({self.task.name})"

    def train_size(self) -> int:
        return len(self.train_set)

    def identity(self) -> Dict[str, Any]:
        return {"train": self.train_set.case_ids, "val": self.val_set.case_ids}

    def check_identity(self, saved: Any, out: Path) -> None:
        if saved != self.identity():
            problem = f"gives other training or validation cases than the run {out} started with"
            raise InputError(self.labels.path, problem)

    def setup(self, device: torch.device, wrap: Wrap) -> None:
        # The network was built (and so initialised) in __init__, to check the settings first; rebuild it
        # here from the engine's seed so that its initial weights follow the run's seed.
        config = self.config
        self.device = device
        self.net_raw, _ = build_network(config, self.task)
        self.net_raw = self.net_raw.to(device)
        self.net = wrap(self.net_raw, find_unused_parameters=len(self.inputs) < len(self.net_raw.inputs))
        self.criterion = self._criterion().to(device)
        betas = (config.beta1, config.beta2)
        self.optimizer = torch.optim.Adam(
            self.net_raw.parameters(), lr=config.lr, betas=betas, weight_decay=config.weight_decay
        )

    def _criterion(self) -> nn.Module:
        """Weighted BCE with logits (``pos_weight`` per output), on the CPU."""
        return nn.BCEWithLogitsLoss(pos_weight=torch.tensor(self.pos_weight, dtype=torch.float32))

    def optimizers(self) -> Dict[str, torch.optim.Optimizer]:
        return {"net": self.optimizer}

    def networks(self) -> Dict[str, nn.Module]:
        return {"net": self.net_raw}

    def state_dict(self) -> Dict[str, Any]:
        return {"net": self.net_raw.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.net_raw.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])

    def weights(self) -> Dict[str, torch.Tensor]:
        return self.net_raw.state_dict()

    def load_weights(self, weights: Mapping[str, torch.Tensor]) -> None:
        self.net_raw.load_state_dict(weights)

    def begin_epoch(self, epoch: int) -> Dict[str, float]:
        self.net.train()
        return {"lr": self.config.lr}

    def step(self, indices: Sequence[int], context: StepContext) -> Dict[str, float]:
        config = self.config
        batch = collate([self.train_set[i] for i in indices], context.device)
        images = batch.inputs(self.inputs)
        if config.augment and config.rotation_degrees > 0:
            angles = rotation_angles(config.seed, context.global_step, context.global_count, config.rotation_degrees)
            first, last = context.share
            images = rotate_batch(images, angles[first:last].to(context.device))
        with context.autocast():
            logits = self.net(images)
        loss = self.criterion(context.full(logits), batch.target)
        context.optimize("net", loss)
        return {"train": loss.item()}

    def _scores(self) -> Tuple[Dict[str, float], float, np.ndarray]:
        """(AUC per output, weighted BCE, probabilities (N, K)) on the validation split in eval mode."""
        from ..evaluate.classifier_stats import delong_auc

        logits = predict_logits(self.net_raw, self.val_set, self.inputs, self.device, self.config.batch_size)
        targets = self.val_set.targets
        loss = float(self._criterion()(torch.from_numpy(logits), torch.from_numpy(targets.astype(np.float32))).item())
        probabilities = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        columns = self.val_set.task.columns
        aucs = {c: delong_auc(targets[:, k], probabilities[:, k]).auc for k, c in enumerate(columns)}
        return aucs, loss, probabilities

    def validate(self) -> Validation:
        aucs, loss, _ = self._scores()
        mean_auc = float(np.mean(list(aucs.values())))
        metrics = {"val/loss": loss, "val/mean_auc": mean_auc, **{f"val/auc_{c}": v for c, v in aucs.items()}}
        record = {"val_loss": loss, "val_auc": aucs, "val_mean_auc": mean_auc}
        return Validation(metrics, record, score=(mean_auc, -loss))

    def _freeze_thresholds(self) -> Dict[str, Any]:
        """Youden thresholds per output on validation (kept in ``self.thresholds``), and the validation AUCs
        (DeLong CI) for the metadata."""
        from ..evaluate.classifier_stats import delong_auc, youden_threshold

        _, loss, probabilities = self._scores()
        targets = self.val_set.targets
        validation: Dict[str, Any] = {"loss": loss, "cases": len(self.val_set), "outputs": {}}
        for k, column in enumerate(self.task.columns):
            self.thresholds[column] = youden_threshold(targets[:, k], probabilities[:, k])
            auc = delong_auc(targets[:, k], probabilities[:, k])
            validation["outputs"][column] = {
                "auc": auc.auc,
                "ci_low": auc.ci_low,
                "ci_high": auc.ci_high,
                "n_pos": auc.n_pos,
                "n_neg": auc.n_neg,
                "threshold": self.thresholds[column],
            }
        return validation

    def export(self, run: RunRecord) -> Path:
        """The selected weights with their frozen thresholds into ``RUN/model`` (x2ct.classify.checkpoint)."""
        config = self.config
        validation = self._freeze_thresholds()
        training = {
            "config": config.to_dict(),
            **run.to_dict(),
            "pos_weight": {c: float(w) for c, w in zip(self.task.columns, self.pos_weight)},
        }
        metadata: Dict[str, Any] = {
            "task": TaskSpec(self.task.name, tuple(self.task.columns), dict(self.thresholds)),
            "input_sizes": {k: config.size_ct if k == CT_KEY else config.size_xray for k in self.inputs},
            "training_data": _data_summary(config, self.labels, self.train_set, self.val_set, self.inputs),
            "metrics": {"validation": validation, "selected_epoch": run.best_epoch},
            "training": training,
        }
        target = Path(config.out) / "model"
        save_classifier(copy.deepcopy(self.net_raw).to("cpu"), target, **metadata)
        return target


def train_classifier(config: ClassifierConfig, resume: bool = False, log: Log = stderr_log) -> ClassifierTrainResult:
    """Train (or with ``resume`` continue) the run ``config.out``; see the module docstring."""
    trainer = ClassifierTrainer(config, log)
    result = run_training(trainer, resume=resume, log=log)
    best = result.best_metrics.get("val/mean_auc")
    return ClassifierTrainResult(**vars(result), best_mean_auc=best, thresholds=dict(trainer.thresholds))
