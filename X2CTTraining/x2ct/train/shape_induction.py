"""Shape induction: fine-tune a generator on radiographs that have no CT, by projection consistency.

Written from the paper (the authors' code is not public): E. Sizikova, X. Cao, A. Lewis, K. Moise,
M. Coffee, "Improving Computed Tomography (CT) Reconstruction via 3D Shape Induction",
arXiv:2208.10937 (2022). Given a radiograph ``x`` without CT, the generated volume ``G(x)`` is
projected and compared with ``x``::

    L_sind = || Proj(G(x)) - x ||_2^2        (a mean squared error, as in the paper)

weighted by lambda4 (``shape_weight``, 10 by default: the paper's best of 0.1 / 1 / 10 / 100).

**The projection.** The paper uses an average-intensity (ray-sum) orthographic projection of the
predicted CT. x2ct's generators are trained on cone-beam DRRs in a stated geometry, brought to
[0, 1] by per-image min-max (:mod:`x2ct.drr`), and ``x2ct predict`` brings every input radiograph to
that same min-max convention (:mod:`x2ct.inference.preprocess`). So ``Proj`` here is the
differentiable cone-beam projector :func:`x2ct.drr.project` in the training DRRs' geometry, followed
by the same per-image min-max (:func:`x2ct.drr.normalize`), as :func:`x2ct.losses.reprojection`
does: a volume that explains the radiograph then scores 0, whereas a parallel mean projection has a
different magnification and a different (linear, not line-integral) contrast from the inputs and
would score > 0 even for the true CT. With two views the loss is the mean over the views.

**The schedule** (the paper: pre-train G and D on the paired DRR/CT data, then alternate fine-tuning
on the real radiographs and on the paired data): epochs ``0 .. shape_pretrain_epochs - 1`` are
paired; after them, cycles of ``shape_real_epochs`` real-radiograph epochs followed by
``shape_paired_epochs`` paired epochs (90 and 10 by default). Which set an epoch uses is a pure
function of its index (:class:`ShapeSchedule`), so a resumed run draws the same epochs. On a
real-radiograph epoch only ``shape_weight * L_sind`` trains G (there is no CT for the other terms)
and the discriminator does not step (it is conditioned on DRR inputs); paired epochs are the
ordinary training step. Starting from a trained generator (``init_from``) is the pre-training.

**The joint mode** (``shape_mode="joint"``, ours, not the paper's): after the pre-training every step is one
paired step (all its losses, D included) whose G loss also carries ``shape_weight * L_sind`` of a batch of
real radiographs. Its epochs run over the radiograph folder; each step's paired cases are
:func:`paired_partners` of its radiographs, a pure function of (seed, epoch), so a resumed run draws the same.
Why: ``L_sind`` compares per-image min-max projections, which do not change when the attenuation is scaled
or offset, so nothing in it holds the HU level. A real-radiograph epoch can drift the whole volume (the
domain-gap experiment, docs/domain_gap.md: body MAE 179 -> 490 HU after 120 projection-only steps). The
paired loss in every step holds it. :meth:`ShapeSchedule.unanchored` names the real-radiograph epochs of
an alternating run that no paired epoch follows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.radiograph_folder import model_input as prepared_input
from ..data.radiograph_folder import read_radiograph_folder
from ..drr import normalize, project
from ..drr_geometry import DRRGeometry
from ..errors import InputError, PathLike
from ..geometry import EXTENT_MM
from ..inference.types import InputSpec
from ..intensity import unit_to_hu_unclamped
from ..views import LATERAL, PA
from .config import SHAPE_MODES, TrainConfig
from .engine import StepContext, epoch_order

PROJECTION = "cone-beam DRR in the training geometry, per-image min-max"
"""How :func:`shape_induction_loss` projects the generated volume (recorded in the exported model)."""


@dataclass(frozen=True)
class ShapeSchedule:
    """Which epochs draw real radiographs: after ``pretrain_epochs`` paired epochs, either (``mode="alternate"``)
    cycles of ``real_epochs`` real-radiograph epochs then ``paired_epochs`` paired epochs, or (``mode="joint"``)
    joint epochs whose every step takes a paired and a real-radiograph batch (module doc)."""

    pretrain_epochs: int = 0
    real_epochs: int = 90
    paired_epochs: int = 10
    mode: str = "alternate"

    def __post_init__(self) -> None:
        if self.pretrain_epochs < 0 or self.real_epochs < 1 or self.paired_epochs < 0:
            raise ValueError("pretrain_epochs >= 0, real_epochs >= 1 and paired_epochs >= 0 are needed")
        if self.mode not in SHAPE_MODES:
            raise ValueError(f"mode must be one of {', '.join(SHAPE_MODES)}")

    def phase(self, epoch: int) -> str:
        """What 0-based ``epoch`` trains on: ``"paired"`` (DRR/CT cases), ``"real"`` (radiographs only) or
        ``"joint"`` (both in every step)."""
        if epoch < self.pretrain_epochs:
            return "paired"
        if self.mode == "joint":
            return "joint"
        real = (epoch - self.pretrain_epochs) % (self.real_epochs + self.paired_epochs) < self.real_epochs
        return "real" if real else "paired"

    def is_real(self, epoch: int) -> bool:
        """Whether 0-based ``epoch`` trains on the real radiographs only."""
        return self.phase(epoch) == "real"

    def phases(self, epochs: int) -> List[str]:
        """:meth:`phase` of each of the first ``epochs`` epochs."""
        return [self.phase(e) for e in range(epochs)]

    def unanchored(self, epochs: int) -> List[int]:
        """The 0-based real-radiograph epochs of a run of ``epochs`` epochs that no paired epoch follows (the run
        ends on them): nothing pins their CT's HU level (module doc). Empty in joint mode."""
        phases = self.phases(epochs)
        last_paired = max((e for e, p in enumerate(phases) if p != "real"), default=-1)
        return list(range(last_paired + 1, epochs))


def paired_partners(seed: int, epoch: int, indices: Sequence[int], paired_cases: int) -> List[int]:
    """The paired cases (indices into the training split of ``paired_cases`` cases) that join the radiographs
    ``indices`` in a joint step: radiograph ``i`` takes case ``order[i % paired_cases]`` of a seeded permutation
    ``order``. A pure function of (seed, epoch, indices), so a resumed run draws the same cases; over an epoch
    of at least ``paired_cases`` radiographs every paired case is drawn."""
    order = epoch_order(seed + 1, epoch, paired_cases)  # not the radiographs' own order (seed)
    return [int(order[i % paired_cases]) for i in indices]


def shape_induction_loss(fake: Tensor, radiographs: Mapping[str, Tensor], geometry: DRRGeometry) -> Tensor:
    """L_sind: the mean over the views of the MSE between the min-max cone-beam DRR of ``fake`` (N, 1, D, H, W) on
    the unit scale (canonical axes, 320 mm cube; projected with :func:`x2ct.drr.project` in ``geometry``) and
    that view's radiograph (N, 1, S, S) in [0, 1] (``radiographs`` by view name, ``x2ct.views.PA``/``LATERAL``)."""
    spacing = EXTENT_MM / fake.shape[-1]
    hu = unit_to_hu_unclamped(fake)
    errors = []
    for view, image in radiographs.items():
        drr = normalize(project(hu, spacing, view, image.shape[-1], geometry, units="hu"), "minmax")
        errors.append(F.mse_loss(drr, image))
    return torch.stack(errors).mean()


class RadiographSet:
    """The radiographs of a folder without CT (:func:`x2ct.data.radiograph_folder.read_radiograph_folder`), each
    prepared as ``x2ct predict`` prepares it for a model with ``spec`` and kept in memory after its first read."""

    def __init__(self, folder: PathLike, views: Sequence[str], spec: InputSpec) -> None:
        self.folder = Path(folder)
        self.views = tuple(views)
        self.spec = spec
        self.cases = read_radiograph_folder(self.folder, self.views)
        self._items: Dict[int, Dict[str, Tensor]] = {}

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def case_ids(self) -> List[str]:
        return [case.case_id for case in self.cases]

    def __getitem__(self, index: int) -> Dict[str, Tensor]:
        """Case ``index``'s images by view name, each (1, S, S) float32 in [0, 1]."""
        if index not in self._items:
            files = self.cases[index].files
            self._items[index] = {
                view: torch.from_numpy(np.ascontiguousarray(prepared_input(files[view], view, self.spec)))[None]
                for view in self.views
            }
        return self._items[index]

    def batch(self, indices: Sequence[int], device: torch.device) -> Dict[str, Tensor]:
        """The cases ``indices`` stacked by view name, (N, 1, S, S) on ``device``."""
        items = [self[i] for i in indices]
        return {view: torch.stack([item[view] for item in items]).to(device) for view in self.views}


class ShapeInduction:
    """The real-radiograph side of a generator run: the radiographs, the schedule and the weighted loss step."""

    def __init__(self, radiographs: RadiographSet, schedule: ShapeSchedule, weight: float,
                 geometry: DRRGeometry) -> None:  # fmt: skip
        self.radiographs, self.schedule, self.weight, self.geometry = radiographs, schedule, weight, geometry

    @classmethod
    def of(cls, config: TrainConfig, geometry: DRRGeometry, drr_size: int) -> ShapeInduction:
        """From a generator run's settings (``shape_induction`` folder, ``shape_*`` keys, ``views``, ``grid_size``):
        its radiographs are prepared for a model whose inputs are ``grid_size`` px 8-bit min-max images of DRRs
        rendered in ``geometry`` at ``drr_size`` px (the training data's)."""
        if not config.shape_induction:
            raise ValueError("the run has no shape_induction folder")
        views = (PA,) if config.views == 1 else (PA, LATERAL)
        spec = InputSpec(size=config.grid_size, geometry=geometry, drr_size=drr_size, quantize_bits=8)
        radiographs = RadiographSet(config.shape_induction, views, spec)
        schedule = ShapeSchedule(config.shape_pretrain_epochs, config.shape_real_epochs, config.shape_paired_epochs,
                                 config.shape_mode)  # fmt: skip
        return cls(radiographs, schedule, config.shape_weight, geometry)

    def loss(self, generator: nn.Module, indices: Sequence[int], context: StepContext) -> Tensor:
        """L_sind (unweighted) of ``generator`` on the real radiographs ``indices``."""
        images = self.radiographs.batch(indices, context.device)
        with context.autocast():
            fake = generator(images[PA], images.get(LATERAL))
        return shape_induction_loss(context.full(fake), images, self.geometry)

    def step(self, generator: nn.Module, indices: Sequence[int], context: StepContext) -> Dict[str, float]:
        """One update of optimiser ``"G"`` from ``weight * L_sind`` on the real radiographs ``indices``."""
        loss = self.loss(generator, indices, context)
        total = self.weight * loss
        context.optimize("G", total)
        return {"g_shape": loss.item(), "g_total": total.item()}

    def record(self) -> Dict[str, object]:
        """What the exported model records of it (training metadata)."""
        return {
            "folder": str(self.radiographs.folder),
            "cases": len(self.radiographs),
            "weight": self.weight,
            "projection": PROJECTION,
            "schedule": {
                "mode": self.schedule.mode,
                "pretrain_epochs": self.schedule.pretrain_epochs,
                "real_epochs": self.schedule.real_epochs,
                "paired_epochs": self.schedule.paired_epochs,
            },
            "reference": "Sizikova et al., Improving CT Reconstruction via 3D Shape Induction, arXiv:2208.10937",
        }


def check_trainable(generator: nn.Module, folder: PathLike) -> None:
    """InputError when ``generator`` has nothing to fine-tune (the mean-CT template baseline)."""
    if not any(p.requires_grad for p in generator.parameters()):
        architecture = getattr(generator, "architecture", type(generator).__name__)
        raise InputError(folder, f"shape induction fine-tunes a generator's weights; {architecture} has none")
