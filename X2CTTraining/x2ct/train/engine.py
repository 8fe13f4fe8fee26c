"""The one training engine: every ``x2ct train-*`` command is a :class:`Trainer` run by :func:`run_training`.

A trainer supplies its networks and optimisers, one training step, its validation and its export.
The engine owns everything else, the same way for every kind of model:

* **seeding and data order**: torch, numpy and python are seeded with ``seed`` before the trainer
  builds its networks; each epoch's case order is :func:`epoch_order` (a pure function of seed and
  epoch) over the epoch's cases (:meth:`Trainer.epoch_size`, the training split unless the trainer
  draws some epochs from another set, as shape induction does). Batches follow :func:`batch_plan`; a
  final batch too small for every rank to get ``Trainer.min_per_rank`` cases joins the one before it.
* **data parallelism** (``torchrun``, :mod:`x2ct.distributed`): each rank takes its contiguous share
  of every global batch (:func:`x2ct.distributed.split_evenly`), the networks are wrapped in
  ``DistributedDataParallel`` (BatchNorm becomes SyncBatchNorm on CUDA), each rank's loss is
  weighted by its share (:meth:`StepContext.scaled`) and the networks' floating-point buffers
  (normalisation statistics) are averaged over the ranks, share-weighted, after every step. So N
  ranks with batch ``b`` take the steps of one process with batch ``N·b``, up to floating-point
  reduction order, for networks whose layers treat cases independently (instance norm, as in
  X2CT-GAN) and without dropout; batch norm on the CPU normalises by each rank's own cases. Rank
  r > 0 reseeds its random streams (dropout) with :func:`rank_seed` after the networks are built.
  Logs, checkpoints and exports come from rank 0; the ranks' random states are gathered into every
  checkpoint, and a checkpoint refuses replicas that differ.
* **checkpoints and resume**: ``RUN/checkpoints/last.pt`` (atomic, loads with ``weights_only=True``)
  after every epoch, every ``checkpoint_every_steps`` steps and when ``max_steps`` stops the run. It
  holds the trainer's state, the AMP scalers, every rank's torch/CUDA/numpy/python random state, the
  data order of the epoch in progress, the best weights so far and the history, so a run
  interrupted after any checkpoint and resumed ends with the same weights, bit for bit, as an
  uninterrupted one (same device, world size, thread count and library versions). One run at a time
  writes a run folder (:func:`x2ct.distributed.main_rank_owns`), and the temporaries of a killed run
  (``checkpoints/.last.<8 characters>.partial.pt`` ...) are removed when the next run takes it.
* **time budget**: ``max_minutes`` ends the run after the step that spends it (rank 0's clock decides)
  and exports the model as it is then, for comparisons at equal compute; where it stops depends on
  the clock, so such a run is not reproducible bit for bit.
* **validation and model selection**: every ``val_every_epochs`` epochs; a trainer whose validation
  returns a score gets its best-scoring weights exported (ties: the earlier epoch).
* **logging**: a progress bar, ``RUN/scalars.csv`` (step,tag,value), TensorBoard
  (``tensorboard=auto|on|off``) and ``RUN/history.json`` (``epochs``: one record per validation;
  ``selected_epoch``).
* **execution**: CUDA autocast and gradient scaling (``amp``), the thread count, deterministic cuDNN,
  and the CPU's denormal flush (always on, so resumed and uninterrupted runs compute alike).
"""

from __future__ import annotations

import contextlib
import csv
import inspect
import io
import json
import random
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .. import __version__
from .. import distributed as dist_
from ..atomic import atomic_path, write_text_atomic
from ..errors import InputError, PathLike
from ..models.checkpoints import load_weights_only, resolve_device
from .settings import Settings

LAST = "last.pt"
SCALARS = "scalars.csv"
HISTORY = "history.json"
CHECKPOINTS = "checkpoints"

Log = Callable[[str], None]
Wrap = Callable[..., nn.Module]
"""``wrap(module, find_unused_parameters=False)``: the module as the run trains it (DDP under torchrun)."""


def stderr_log(line: str) -> None:
    """The default log: one line on stderr."""
    print(line, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------- order and seeds


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The shuffled case order of one epoch: a pure function of (seed, epoch), independent of global RNG."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


def batch_plan(n: int, batch_size: int, min_size: int = 1) -> List[Tuple[int, int]]:
    """(start, stop) of each batch of an epoch of ``n`` cases; a last batch of fewer than ``min_size`` cases
    joins the one before it."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < min_size:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s random streams after the networks are built (rank 0 keeps ``seed``'s)."""
    return seed + 7_919 * rank


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def rng_state() -> Dict[str, Any]:
    """torch, CUDA, numpy and python RNG states as tensors/lists/ints (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "state": list(py_state), "gauss": py_gauss},
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


# ------------------------------------------------------------------------------------------- logging


def tensorboard_writer(mode: str) -> Optional[type]:
    """``SummaryWriter`` for ``tensorboard=on|auto`` when the package imports, else None.

    ``on`` without the package is an :class:`InputError` (one line, raised before anything is written);
    ``auto`` without it returns None and the run logs one note; ``off`` always returns None.
    """
    if mode == "off":
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if mode == "on":
            raise InputError(
                None,
                "tensorboard=on but the tensorboard package is not installed "
                "(pip install 'x2ct[train]', or --set tensorboard=auto|off)",
            ) from None
        return None
    return SummaryWriter


class ScalarLog:
    """Scalars to ``RUN/scalars.csv`` (step,tag,value) and, given a ``writer`` class, TensorBoard; images likewise."""

    def __init__(self, out: Path, resume_step: int, writer: Optional[type]) -> None:
        self.path = out / SCALARS
        kept: List[List[str]] = []
        if resume_step and self.path.is_file():  # drop what was logged after the checkpoint
            with open(self.path, newline="") as fh:
                kept = [row for row in list(csv.reader(fh))[1:] if int(row[0]) <= resume_step]
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows([["step", "tag", "value"], *kept])
        write_text_atomic(self.path, buffer.getvalue())
        self._fh = open(self.path, "a", newline="")
        self._csv = csv.writer(self._fh, lineterminator="\n")
        purge = resume_step + 1 if resume_step else None
        self.tb = writer(str(out / "tensorboard"), purge_step=purge) if writer is not None else None

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        for tag, value in values.items():
            self._csv.writerow([step, tag, repr(float(value))])
            if self.tb is not None:
                self.tb.add_scalar(tag, value, step)
        self._fh.flush()

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """A (H, W) uint8 picture for TensorBoard (nothing without it)."""
        if self.tb is not None:
            self.tb.add_image(tag, image[None], step)

    def close(self) -> None:
        self._fh.close()
        if self.tb is not None:
            self.tb.close()


# --------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """``torch.save`` under a temporary name, then rename (x2ct.atomic)."""
    with atomic_path(path) as tmp:
        torch.save(dict(state), tmp)


def load_checkpoint(path: PathLike, expected_format: str, device: Any = "cpu") -> Dict[str, Any]:
    """A training checkpoint whose ``format`` entry is ``expected_format``, read by
    :func:`x2ct.models.checkpoints.load_weights_only`. InputError when it is not one (x2ct never unpickles
    arbitrary objects)."""
    state = load_weights_only(path, device, "training checkpoint")
    if not isinstance(state, dict) or state.get("format") != expected_format:
        found = state.get("format") if isinstance(state, dict) else None
        if isinstance(found, str) and found.rsplit("/", 1)[0] == expected_format.rsplit("/", 1)[0]:
            raise InputError(
                path, f"is a {found} checkpoint of an older x2ct; this version resumes {expected_format} only "
                "(finish the run with the older version, or start a new run folder)"
            )
        raise InputError(path, f"not an x2ct training checkpoint (expected format {expected_format})")
    return state


# ------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class RunSettings:
    """What the engine reads of a run's settings (the same keys in every kind of run; docs/training.md)."""

    out: Path
    seed: int
    epochs: int
    batch_size: int
    device: str
    amp: bool
    threads: int
    checkpoint_every_steps: int
    keep_every_epochs: int
    max_steps: int
    max_minutes: float
    val_every_epochs: int
    progress: bool
    tensorboard: str

    @classmethod
    def of(cls, config: Any) -> RunSettings:
        """The engine's settings of a run config (a settings dataclass with these attribute names)."""
        if not config.out:
            raise InputError(None, "give the run folder (-o / out=...)")
        names = [f for f in cls.__dataclass_fields__ if f != "out"]
        return cls(out=Path(config.out), **{name: getattr(config, name) for name in names})


@dataclass(frozen=True)
class Validation:
    """One validation: ``metrics`` (scalar tags -> values, logged), ``record`` (added to history.json) and
    ``score`` (higher is better, compared as a tuple; None when the trainer selects no best model)."""

    metrics: Dict[str, float]
    record: Dict[str, Any] = field(default_factory=dict)
    score: Optional[Tuple[float, ...]] = None


@dataclass(frozen=True)
class RunRecord:
    """How a finished run went, for the exported model's training metadata."""

    steps: int
    seconds: float
    epochs: int
    world_size: int
    batch_per_rank: int
    device: str
    threads: int
    best_epoch: Optional[int]
    best_metrics: Dict[str, float]
    time_budget_minutes: Optional[float] = None
    """Set when the run ended because its ``max_minutes`` budget was spent (the model is the one at that step)."""

    @property
    def global_batch(self) -> int:
        """Cases per optimisation step over all ranks (the last batch of an epoch may hold more or fewer)."""
        return self.world_size * self.batch_per_rank

    def to_dict(self) -> Dict[str, Any]:
        """The run facts every exported model records under ``training``."""
        return {
            "steps": self.steps,
            "seconds": round(self.seconds, 1),
            "device": self.device,
            "threads": self.threads,
            "world_size": self.world_size,
            "batch_per_rank": self.batch_per_rank,
            "global_batch": self.global_batch,
            **({} if self.time_budget_minutes is None else {"time_budget_minutes": self.time_budget_minutes}),
            "x2ct_version": __version__,
            "torch_version": torch.__version__,
        }


@dataclass
class TrainResult:
    """What :func:`run_training` did: progress, the last losses, the selected epoch and the export."""

    out: Path
    global_step: int
    epoch: int
    finished: bool
    seconds: float
    last_losses: Dict[str, float] = field(default_factory=dict)
    best_epoch: Optional[int] = None
    best_metrics: Dict[str, float] = field(default_factory=dict)
    model_dir: Optional[Path] = None
    rank: int = 0
    """This process's rank under torchrun (0 otherwise); only rank 0 exports and reports."""


class StepContext:
    """What a training step gets from the engine: the device, this rank's share of the global batch, autocast
    and the optimiser update (with AMP gradient scaling)."""

    def __init__(self, device: torch.device, amp: bool, optimizers: Mapping[str, torch.optim.Optimizer],
                 scalers: Mapping[str, torch.amp.GradScaler]) -> None:  # fmt: skip
        self.device, self.amp = device, amp
        self._optimizers, self._scalers = optimizers, scalers
        self.epoch = 0
        self.global_step = 0
        self.global_count = 0
        self.share = (0, 0)
        self.loss_scale = 1.0

    @property
    def local_count(self) -> int:
        return self.share[1] - self.share[0]

    def autocast(self) -> ContextManager[Any]:
        """Mixed precision on CUDA when ``amp`` is on; a no-op otherwise."""
        return torch.autocast(self.device.type, enabled=self.amp)

    @staticmethod
    def full(tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` in at least single precision for the losses (autocast outputs may be half precision;
        double precision stays double)."""
        return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss`` (a mean over this rank's cases) weighted so that averaging the ranks' gradients gives the
        gradient of the mean over the global batch (unchanged in one process)."""
        return loss if self.loss_scale == 1.0 else loss * self.loss_scale

    def optimize(self, name: str, loss: torch.Tensor) -> None:
        """One update of optimiser ``name`` from ``loss``: zero the gradients, backward (scaled for AMP and
        for this rank's share), step and update the scaler."""
        optimizer, scaler = self._optimizers[name], self._scalers[name]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(self.scaled(loss)).backward()
        scaler.step(optimizer)
        scaler.update()


class Trainer(ABC):
    """One kind of training run. The engine calls, in order: :meth:`setup` (after seeding), then per epoch
    :meth:`begin_epoch` and :meth:`step` per batch, :meth:`validate`, :meth:`end_epoch`; :meth:`export` at the end.

    ``config``: the run's settings dataclass (``to_dict()`` and the :class:`RunSettings` keys); ``settings``:
    its parser, which checks a resumed run's settings. ``checkpoint_format`` names its checkpoints.
    ``min_per_rank``: the fewest cases a rank's share of a batch may hold (2 for BatchNorm training).
    """

    checkpoint_format: str = ""
    min_per_rank: int = 1

    def __init__(self, config: Any, settings: Settings) -> None:
        self.config, self.settings = config, settings

    @property
    @abstractmethod
    def description(self) -> str:
        """The progress bar's label."""

    @abstractmethod
    def train_size(self) -> int:
        """Number of training cases (indices 0..n-1 are handed to :meth:`step`)."""

    def epoch_size(self, epoch: int) -> int:
        """Number of cases of 0-based ``epoch`` (indices 0..n-1 go to :meth:`step`): :meth:`train_size` unless a
        trainer draws some epochs from another set (a pure function of ``epoch``, so that resume is exact)."""
        return self.train_size()

    @abstractmethod
    def identity(self) -> Any:
        """What a resumed run must find unchanged (its case lists), stored in the checkpoint."""

    @abstractmethod
    def check_identity(self, saved: Any, out: Path) -> None:
        """InputError when the run's data differ from ``saved`` (:meth:`identity` of the checkpoint)."""

    @abstractmethod
    def setup(self, device: torch.device, wrap: Wrap) -> None:
        """Build the networks on ``device`` (the engine has seeded every RNG) and their optimisers; networks
        that train are passed through ``wrap``."""

    @abstractmethod
    def optimizers(self) -> Dict[str, torch.optim.Optimizer]:
        """The optimisers by name (:meth:`StepContext.optimize` takes the name)."""

    def state_dict(self) -> Dict[str, Any]:
        """Networks and optimisers (tensors, weights-only loadable): each network under its name, each optimiser
        under ``opt_<name>``. Trainers with more state extend it."""
        state: Dict[str, Any] = {name: net.state_dict() for name, net in self.networks().items()}
        state.update({f"opt_{name}": opt.state_dict() for name, opt in self.optimizers().items()})
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        for name, net in self.networks().items():
            net.load_state_dict(state[name])
        for name, opt in self.optimizers().items():
            opt.load_state_dict(state[f"opt_{name}"])

    @abstractmethod
    def networks(self) -> Dict[str, nn.Module]:
        """The networks that train, unwrapped (their parameters and buffers are kept equal on every rank)."""

    @abstractmethod
    def weights(self) -> Dict[str, torch.Tensor]:
        """The exported network's weights (a snapshot is kept for the best validation)."""

    @abstractmethod
    def load_weights(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Put :meth:`weights` back (the best ones, before export)."""

    def begin_epoch(self, epoch: int) -> Dict[str, float]:
        """Set per-epoch values (learning rate); returns scalars logged with every step of the epoch."""
        return {}

    @abstractmethod
    def step(self, indices: Sequence[int], context: StepContext) -> Dict[str, float]:
        """One optimisation step on the training cases ``indices`` (this rank's share); returns its losses
        (means over those cases)."""

    def validate(self) -> Optional[Validation]:
        """Score the current weights on the validation split (None: no validation)."""
        return None

    def end_epoch(self, epoch: int, global_step: int, scalars: ScalarLog) -> None:  # noqa: B027 - optional hook
        """After an epoch's validation, on rank 0 only (e.g. a sample picture)."""

    @abstractmethod
    def export(self, run: RunRecord) -> Path:
        """Write the trained model (rank 0 only); returns its folder."""

    progress_keys: Tuple[str, ...] = ()
    """Losses shown on the progress bar (all when empty)."""


# ------------------------------------------------------------------------------------------- engine


@contextlib.contextmanager
def _execution(threads: int) -> Iterator[None]:
    """The thread count and flush-denormal mode for the run, restored afterwards."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    # Denormal floats take a slow path in CPU kernels; flushing them to zero is part of the procedure
    # (always on, so an interrupted and resumed run computes exactly what an uninterrupted one does).
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(before)


def _wrapper(context: dist_.Context, device: torch.device) -> Wrap:
    def wrap(module: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
        if not context.distributed:
            return module
        if device.type == "cuda":
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        # Buffers (normalisation statistics) are averaged by the engine after every step instead of being
        # broadcast from rank 0 before every forward, so they follow the whole global batch. torch 2.13
        # renamed the option (the new one still syncs at construction, where every rank agrees anyway).
        options = inspect.signature(DistributedDataParallel).parameters
        no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in options else {"broadcast_buffers": False}
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused_parameters, **no_sync)

    return wrap


def _checksum(networks: Mapping[str, nn.Module]) -> List[float]:
    """Per-tensor sums and sums of squares (float64) of every parameter and buffer: equal on every rank when the
    replicas are."""
    sums: List[float] = []
    for net in networks.values():
        for tensor in (*net.parameters(), *net.buffers()):
            t = tensor.detach().double()
            sums += [float(t.sum()), float((t * t).sum())]
    return sums


def _float_buffers(networks: Mapping[str, nn.Module]) -> List[torch.Tensor]:
    """The floating-point buffers of the networks (running statistics), in a fixed order."""
    return [b for net in networks.values() for b in net.buffers() if b.is_floating_point()]


class _Engine:
    """One run of a trainer (see the module doc); :func:`run_training` drives it."""

    def __init__(self, trainer: Trainer, settings: RunSettings, resume: Optional[bool], log: Log) -> None:
        self.trainer, self.settings, self.log = trainer, settings, log
        self.resume = resume
        self.budget_spent = False

    def run(self) -> TrainResult:
        device = resolve_device(self.settings.device)
        writer = tensorboard_writer(self.settings.tensorboard)  # tensorboard=on without the package fails here
        with _execution(self.settings.threads), dist_.session(device) as context:
            self.context = context
            with dist_.main_rank_owns(self.settings.out, context):  # one run at a time writes the run folder
                return self._run(context.device(device), writer)

    # -- checkpoint

    def _checkpoint(self, next_epoch: int, next_step: int, order: torch.Tensor) -> None:
        rng = dist_.gather(rng_state(), self.context)
        sums = dist_.gather(_checksum(self.trainer.networks()), self.context)
        if any(s != sums[0] for s in sums):
            raise RuntimeError("the ranks' model replicas differ; data-parallel training went wrong")
        if not self.context.is_main:
            return
        state = {
            "format": self.trainer.checkpoint_format,
            "x2ct_version": __version__,
            "config": self.trainer.config.to_dict(),
            "world_size": self.context.world_size,
            "identity": self.trainer.identity(),
            "epoch": next_epoch,
            "step_in_epoch": next_step,
            "global_step": self.global_step,
            "seconds": self.seconds + (time.perf_counter() - self.started),
            "order": order,
            "rng": rng,
            "trainer": self.trainer.state_dict(),
            "scalers": {name: scaler.state_dict() for name, scaler in self.scalers.items()},
            "best": json.dumps({k: v for k, v in self.best.items() if k != "weights"}),
            "best_weights": self.best["weights"],
            "history": json.dumps(self.history),
        }
        save_checkpoint(self.last, state)

    # -- the run

    def _run(self, device: torch.device, writer: Optional[type]) -> TrainResult:
        trainer, s, context = self.trainer, self.settings, self.context
        out = s.out
        self.last = out / CHECKPOINTS / LAST
        exists = self.last.is_file()
        if exists and self.resume is False:
            raise InputError(out, "holds a training run; add --resume to continue it, or choose a new run folder")
        state = load_checkpoint(self.last, trainer.checkpoint_format) if exists and self.resume is not False else None
        if state is not None:
            trainer.settings.check_resume(state["config"], trainer.config, out)
            trainer.check_identity(state["identity"], out)
            if state["world_size"] != context.world_size:
                raise InputError(
                    out,
                    f"holds a run trained by {state['world_size']} process(es), not {context.world_size}; resume it "
                    f"with the same number (torchrun --nproc_per_node); the data order and random streams depend on it",
                )
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        amp = s.amp and device.type == "cuda"

        seed_everything(s.seed)
        trainer.setup(device, _wrapper(context, device))
        if context.rank:
            seed_everything(rank_seed(s.seed, context.rank))
        optimizers = trainer.optimizers()
        self.scalers = {name: torch.amp.GradScaler(device.type, enabled=amp) for name in optimizers}
        n = min(trainer.epoch_size(e) for e in range(s.epochs))
        if n < trainer.min_per_rank * context.world_size:
            raise InputError(
                out, f"the training split has {n} case(s); {context.world_size} process(es) need at least "
                f"{trainer.min_per_rank * context.world_size} (at least {trainer.min_per_rank} each)",
            )

        def plan_of(e: int) -> List[Tuple[int, int]]:
            least = trainer.min_per_rank * context.world_size
            return batch_plan(trainer.epoch_size(e), s.batch_size * context.world_size, least)

        total_steps = sum(len(plan_of(e)) for e in range(s.epochs))

        epoch, step_in_epoch, self.global_step, self.seconds = 0, 0, 0, 0.0
        order = epoch_order(s.seed, 0, trainer.epoch_size(0))
        self.best: Dict[str, Any] = {"epoch": None, "score": None, "metrics": {}, "weights": None}
        self.history: List[Dict[str, Any]] = []
        if state is not None:
            trainer.load_state_dict(state["trainer"])
            for name, scaler in self.scalers.items():
                scaler.load_state_dict(state["scalers"][name])
            set_rng_state(state["rng"][context.rank])
            epoch, step_in_epoch = state["epoch"], state["step_in_epoch"]
            self.global_step, self.seconds, order = state["global_step"], state["seconds"], state["order"].cpu()
            self.best = {**json.loads(state["best"]), "weights": state["best_weights"]}
            self.history = json.loads(state["history"])
            if context.is_main:
                self.log(f"resuming {out} at epoch {epoch + 1}/{s.epochs}, step {self.global_step}/{total_steps}")
        elif context.is_main:
            out.mkdir(parents=True, exist_ok=True)
            write_text_atomic(out / "config.json", json.dumps(trainer.config.to_dict(), indent=2) + "\n")
        dist_.barrier(context)

        scalars: Optional[ScalarLog] = None
        if context.is_main:
            if writer is None and s.tensorboard == "auto":
                self.log(f"tensorboard is not installed: scalars go to {out / SCALARS} only "
                         "(pip install 'x2ct[train]' for TensorBoard)")  # fmt: skip
            scalars = ScalarLog(out, self.global_step, writer)
        step_context = StepContext(device, amp, optimizers, self.scalers)
        self.started = time.perf_counter()
        bar = tqdm(total=total_steps, initial=self.global_step, desc=f"train {trainer.description}", unit="step",
                   disable=not (s.progress and context.is_main), dynamic_ncols=True)  # fmt: skip
        losses: Dict[str, float] = {}
        stopped = self._should_stop()
        try:
            while epoch < s.epochs and not stopped:
                epoch_scalars = trainer.begin_epoch(epoch)
                plan = plan_of(epoch)
                for b in range(step_in_epoch, len(plan)):
                    start, stop = plan[b]
                    global_indices = order[start:stop].tolist()
                    mine = dist_.split_evenly(list(range(len(global_indices))), context)
                    step_context.epoch, step_context.global_step = epoch, self.global_step
                    step_context.global_count = len(global_indices)
                    step_context.share = (mine[0], mine[-1] + 1)
                    step_context.loss_scale = len(mine) * context.world_size / len(global_indices)
                    local = [global_indices[i] for i in mine]
                    losses = self._mean_losses(trainer.step(local, step_context), len(mine), len(global_indices))
                    dist_.weighted_sum_(_float_buffers(trainer.networks()), len(mine) / len(global_indices), context)
                    self.global_step += 1
                    if scalars is not None:
                        tagged = {f"loss/{k}": v for k, v in losses.items()}
                        scalars.scalars(self.global_step, {**tagged, **epoch_scalars})
                    keys = trainer.progress_keys or tuple(losses)
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, **{k: f"{losses[k]:.4f}" for k in keys if k in losses})
                    done_epoch = b + 1 == len(plan)
                    stopped = self._should_stop()
                    every = s.checkpoint_every_steps
                    if not done_epoch and (stopped or (every and self.global_step % every == 0)):
                        self._checkpoint(epoch, b + 1, order)
                    if stopped and not done_epoch:
                        break
                else:
                    epoch += 1
                    step_in_epoch = 0
                    if s.val_every_epochs and epoch % s.val_every_epochs == 0:
                        self._validate(epoch, scalars)
                    if scalars is not None:
                        trainer.end_epoch(epoch, self.global_step, scalars)
                    order = epoch_order(s.seed, epoch, trainer.epoch_size(epoch))
                    self._checkpoint(epoch, 0, order)
                    if context.is_main and s.keep_every_epochs and epoch % s.keep_every_epochs == 0:
                        with atomic_path(self.last.with_name(f"epoch_{epoch:04d}.pt")) as tmp:
                            tmp.write_bytes(self.last.read_bytes())
        except RuntimeError as err:
            if context.distributed and not isinstance(err, dist_.PeerFailure) and dist_.is_peer_failure(err):
                raise dist_.PeerFailure(f"training failed: another rank stopped ({dist_.first_line(err)})") from None
            raise
        finally:
            bar.close()
            if scalars is not None:
                scalars.close()

        self.seconds += time.perf_counter() - self.started
        if context.is_main:
            record = {"run": trainer.description, "epochs": self.history, "selected_epoch": self.best["epoch"]}
            write_text_atomic(out / HISTORY, json.dumps(record, indent=2) + "\n")
        finished = epoch >= s.epochs or self.budget_spent
        result = TrainResult(out, self.global_step, epoch, finished, self.seconds, losses, self.best["epoch"],
                             dict(self.best["metrics"]), rank=context.rank)  # fmt: skip
        if not finished:
            if context.is_main:
                self.log(f"stopped at step {self.global_step}/{total_steps}; run the same command again to continue")
            return result
        if self.best["weights"] is not None:
            trainer.load_weights(self.best["weights"])
        run = RunRecord(
            steps=self.global_step,
            seconds=self.seconds,
            epochs=s.epochs,
            world_size=context.world_size,
            batch_per_rank=s.batch_size,
            device=str(device),
            threads=torch.get_num_threads(),
            best_epoch=self.best["epoch"],
            best_metrics=dict(self.best["metrics"]),
            time_budget_minutes=s.max_minutes if self.budget_spent else None,
        )
        if context.is_main:
            result.model_dir = trainer.export(run)
            done = f"finished {s.epochs} epochs" if epoch >= s.epochs else f"spent the {s.max_minutes:g} min budget"
            self.log(f"{done} ({self.global_step} steps, {self.seconds / 60:.1f} min); model in {result.model_dir}")
        dist_.barrier(context)
        return result

    def _should_stop(self) -> bool:
        """True once ``max_steps`` steps are done or ``max_minutes`` of training time have passed (rank 0's
        clock decides, so that every rank stops after the same step)."""
        s = self.settings
        if s.max_steps and self.global_step >= s.max_steps:
            return True
        if not s.max_minutes:
            return False
        over = self.seconds + (time.perf_counter() - self.started) >= 60.0 * s.max_minutes
        self.budget_spent = bool(dist_.gather(over, self.context)[0])
        return self.budget_spent

    def _mean_losses(self, losses: Mapping[str, float], local: int, total: int) -> Dict[str, float]:
        """The step's losses as means over the global batch (each rank's mean weighted by its share)."""
        if not self.context.distributed:
            return dict(losses)
        shares = dist_.gather({k: v * local / total for k, v in losses.items()}, self.context)
        return {k: float(sum(share[k] for share in shares)) for k in losses}

    def _validate(self, epoch: int, scalars: Optional[ScalarLog]) -> None:
        validation = self.trainer.validate()
        if validation is None:
            return
        score = validation.score
        if score is not None and (self.best["score"] is None or tuple(score) > tuple(self.best["score"])):
            weights = {k: v.detach().to("cpu").clone() for k, v in self.trainer.weights().items()}
            self.best = {"epoch": epoch, "score": list(score), "metrics": dict(validation.metrics), "weights": weights}
        self.history.append(
            {"epoch": epoch, "step": self.global_step, **validation.record, "best_epoch": self.best["epoch"]}
        )
        if scalars is not None:
            scalars.scalars(self.global_step, validation.metrics)


def run_training(trainer: Trainer, resume: Optional[bool] = None, log: Log = stderr_log) -> TrainResult:
    """Train (or resume) ``trainer``'s run; see the module doc.

    ``resume``: None resumes when the run folder holds a checkpoint; False refuses such a folder; True
    resumes it (a folder without one starts a new run). Under torchrun every rank calls this.
    """
    return _Engine(trainer, RunSettings.of(trainer.config), resume, log).run()
