"""Train an X2CT-GAN generator (+B biplanar or +S single view) with the official losses and schedule.

A :class:`~x2ct.train.engine.Trainer` on the one training engine (seeding, data order, checkpoints,
resume, torchrun DDP, logging and AMP are the engine's; see :mod:`x2ct.train.engine`). One
step, as in the official ``optimize_parameters``::

    fake = G(x)                                       # raw ReLU output, dropout on
    G step (D frozen): 0.1·LSGAN(D(x, fake), 1) + 10·MSE(fake, ct) + 10·mean_axes L1(proj fake, proj ct)
    D step:            0.1·(LSGAN(D(x, ct), 1) + LSGAN(D(x, fake.detach()), 0))

With ``clinical_augment`` > 0 each radiograph G and D see is first replaced, with that probability, by a simulated
clinical radiograph of itself (:func:`x2ct.data.clinical.augment_inputs`); the CT and the re-projection target stay
the stored DRRs.

With ``shape_induction`` (a folder of radiographs without CT) the epochs its schedule marks real train G on
those radiographs with the shape-induction loss instead; with ``shape_mode=joint`` every step adds
``shape_weight`` x that loss of a batch of those radiographs to the paired step's G loss, one G forward for both
(:mod:`x2ct.train.shape_induction`). ``init_from`` starts from a trained generator's weights.

Validation (every ``val_every_epochs``): MAE in HU and MSE on the validation split; the exported
generator is the last one (as the official code's), not the best-scoring. Run folder ``OUT``::

    config.json                 the resolved settings
    checkpoints/last.pt         everything needed to continue (atomic; loads with weights_only=True)
    checkpoints/epoch_XXXX.pt   copies every ``keep_every_epochs`` epochs
    scalars.csv                 step,tag,value (always; TensorBoard too, see the ``tensorboard`` setting)
    history.json                one record per validation
    tensorboard/                scalars and sample montages (``tensorboard=auto``: when the package is installed)
    samples/epoch_XXXX.png      montage: input radiograph(s), then GT and prediction mid-slices
    model/                      the final generator, exported with x2ct.models.checkpoints

Resume: running again on the same ``OUT`` continues from ``checkpoints/last.pt``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_path
from ..data.clinical import augment_inputs
from ..data.layout import read_manifest
from ..data.loader import CaseDataset, case_attributes, collate, generator_sizes, read_lesions
from ..data.synthetic import LESION_KINDS
from ..drr_geometry import DRRGeometry
from ..errors import InputError
from ..losses import LossWeights, discriminator_loss, generator_loss
from ..models.x2ct_gan import PatchDiscriminator3D
from ..views import CT_KEY, LATERAL, LATERAL_KEY, PA, PA_KEY
from .config import SETTINGS, TrainConfig
from .engine import (
    Log,
    RunRecord,
    ScalarLog,
    StepContext,
    Trainer,
    TrainResult,
    Validation,
    Wrap,
    load_checkpoint,
    run_training,
    stderr_log,
)
from .shape_induction import ShapeInduction, check_trainable, paired_partners, shape_induction_loss

CHECKPOINT_FORMAT = "x2ct-train-checkpoint/2"
"""``format`` entry of generator training checkpoints (version 2: the shared training engine)."""

INIT_STD = 0.02
"""Official initialisation: every Conv*/Linear weight ~ N(0, 0.02), biases 0 (``init_net`` 'normal')."""


def network_of(config: TrainConfig, drr_geometry: Mapping[str, Any]) -> Tuple[str, Dict[str, Any]]:
    """(architecture, network config) of the generator a run trains. ``drr_geometry``: the training data's
    ``sad_mm``, ``sid_mm`` and ``detector_mm``, which a back-projection generator is built for."""
    if config.architecture == "x2ct_gan":
        name = "x2ct_gan_biplanar" if config.views == 2 else "x2ct_gan_singleview"
        return name, {"grid_size": config.grid_size, "width": config.width, "dropout": config.dropout}
    options: Dict[str, Any] = {"grid_size": config.grid_size, "views": config.views}
    if config.architecture == "bp_unet":
        options.update({k: float(drr_geometry[k]) for k in ("sad_mm", "sid_mm", "detector_mm") if k in drr_geometry})
    return config.architecture, {**options, **config.arch_options}


def build_network(architecture: str, network_config: Mapping[str, Any]) -> nn.Module:
    """An untrained generator (X2CT-GAN with the official initialisation); InputError for a bad config."""
    from ..models.checkpoints import build_generator

    try:
        net = build_generator(architecture, network_config)
    except ValueError as err:
        raise InputError(None, f"setting architecture={architecture!r} / arch_options: {err}") from None
    return init_weights(net) if architecture.startswith("x2ct_gan") else net


def init_weights(net: nn.Module, std: float = INIT_STD) -> nn.Module:
    """Official ``init_weights('normal')``: Conv*/ConvTranspose*/Linear weights ~ N(0, std), biases 0."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return net


def start_from(net: nn.Module, name_or_path: str) -> None:
    """Load the weights of the trained generator ``name_or_path`` (:func:`x2ct.models.load_generator`: a bundled
    name or a model path) into ``net``, whose architecture and network config must be the same (the ``init_from``
    setting); InputError naming the model otherwise."""
    from ..models.checkpoints import load_generator

    trained = load_generator(name_or_path, "cpu")
    ours, theirs = net.config.to_dict(), trained.config.to_dict()
    if trained.architecture != net.architecture or ours != theirs:
        differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        raise InputError(
            name_or_path,
            f"init_from is a {trained.architecture} generator ({', '.join(f'{k}={theirs.get(k)!r}' for k in differ)}); "
            f"the run's settings build a {net.architecture} ({', '.join(f'{k}={ours.get(k)!r}' for k in differ)}): "
            "set architecture, views, grid_size and arch_options to match it",
        )
    net.load_state_dict(trained.state_dict())


def generator_from_checkpoint(path: Path, device: Union[str, torch.device] = "cpu") -> nn.Module:
    """The generator of a training checkpoint, on ``device``, in eval mode."""
    from ..models.checkpoints import describe_generator

    state = load_checkpoint(path, CHECKPOINT_FORMAT, device)
    network = state["trainer"]["network"]
    net = build_network(network["architecture"], network["config"])
    net.load_state_dict(state["trainer"]["G"])
    source = {"kind": "x2ct training checkpoint", "file": str(path), "global_step": state["global_step"]}
    net.metadata = describe_generator(net, source=source, path=str(path))
    return net.to(device).eval()


def montage(pa: torch.Tensor, lateral: Optional[torch.Tensor], ct: torch.Tensor, fake: torch.Tensor) -> np.ndarray:
    """uint8 image: row 1 the radiograph(s); rows 2-3 GT and prediction mid-slices (axial, coronal, sagittal)."""

    def slices(v: torch.Tensor) -> List[np.ndarray]:
        v = v.detach().float().clamp(0, 1).cpu().numpy()[0, 0]
        d, h, w = (s // 2 for s in v.shape)
        return [v[d], v[:, h], v[:, :, w]]

    s = ct.shape[-1]
    blank = np.zeros((s, s), np.float32)
    second = blank if lateral is None else lateral.detach().float().cpu().numpy()[0, 0]
    top = [pa.detach().float().cpu().numpy()[0, 0], second, blank]
    rows = [np.concatenate(r, axis=1) for r in (top, slices(ct), slices(fake))]
    return (np.concatenate(rows, axis=0).clip(0, 1) * 255).round().astype(np.uint8)


def _dataset_summary(data: Path, train: CaseDataset) -> Dict[str, Any]:
    """Provenance of the training data (for the model metadata): manifest counts and the build's conventions."""
    from ..data.loader import case_attributes

    counts: Dict[str, int] = {}
    for row in read_manifest(data):
        counts[row["split"]] = counts.get(row["split"], 0) + 1
    attrs = case_attributes(train.case_file(0))
    keep = ("size", "drr_size", "sad_mm", "sid_mm", "detector_mm", "source_kind", "source", "source_sha256",
            "synthetic_seed")  # fmt: skip
    return {
        "folder": str(data),
        "split_counts": counts,
        "train_cases": len(train),
        "build": {k: attrs[k] for k in keep if k in attrs},
    }


class GeneratorTrainer(Trainer):
    """X2CT-GAN +B / +S with the official losses (module doc); ``x2ct train-generator``."""

    checkpoint_format = CHECKPOINT_FORMAT
    progress_keys = ("g_total", "d_total")

    def __init__(self, config: TrainConfig) -> None:
        config.validate()
        if not config.data or not config.out:
            raise InputError(None, "give the data folder (--data / data=...) and the run folder (-o / out=...)")
        super().__init__(config, SETTINGS)
        self.data = Path(config.data)
        sizes = generator_sizes(config.grid_size, config.views)
        self.train_set = CaseDataset(self.data, config.train_split, sizes, cache=config.cache,
                                     lesions=config.lesion_weight > 0)  # fmt: skip
        self.val_set: Optional[CaseDataset] = None
        self.notes: List[str] = []
        if config.val_split and config.val_every_epochs:
            try:
                self.val_set = CaseDataset(self.data, config.val_split, sizes, cache=config.cache)
            except InputError as err:
                self.notes.append(f"no validation: {err}")
        self.weights_of_losses = LossWeights(
            config.gan_weight, config.recon_weight, config.projection_weight, config.l1_weight,
            config.reprojection_weight, config.lesion_weight,
        )  # fmt: skip
        files = [self.train_set.case_file(i) for i in range(len(self.train_set))]
        if config.lesion_weight and not any(read_lesions(file, LESION_KINDS) for file in files):
            raise InputError(self.data, "lesion_weight needs lesion masks, and no training case holds one "
                             "(the synthetic benchmark of x2ct build-dataset --synthetic-from has them)")  # fmt: skip
        build = case_attributes(self.train_set.case_file(0))
        self.geometry = DRRGeometry(**{k: float(build[k]) for k in ("sad_mm", "sid_mm", "detector_mm") if k in build})
        self.network = network_of(config, build)
        self.shape: Optional[ShapeInduction] = None
        if config.shape_induction:
            self.shape = ShapeInduction.of(config, self.geometry, int(build.get("drr_size", config.grid_size)))
            tail = self.shape.schedule.unanchored(config.epochs)
            if tail:
                self.notes.append(
                    f"warning: shape_mode=alternate: epochs {tail[0] + 1}-{tail[-1] + 1} of {config.epochs} train on "
                    "the radiographs alone and no paired epoch follows them; the shape-induction loss does not hold "
                    "the HU level, so the CT can drift (docs/shape_induction.md): use --set shape_mode=joint"
                )

    @property
    def description(self) -> str:
        return self.G_raw.architecture

    def train_size(self) -> int:
        return len(self.train_set)

    def epoch_size(self, epoch: int) -> int:
        if self.shape is not None and self.shape.schedule.phase(epoch) != "paired":
            return len(self.shape.radiographs)
        return len(self.train_set)

    def identity(self) -> Any:
        if self.shape is None:
            return self.train_set.case_ids
        return {"train": self.train_set.case_ids, "shape_induction": self.shape.radiographs.case_ids}

    def check_identity(self, saved: Any, out: Path) -> None:
        if saved != self.identity():
            split = self.config.train_split
            which = "" if self.shape is None else " or the shape-induction folder's cases"
            raise InputError(self.data, f"the {split!r} split{which} differs from the one {out} was trained on")

    def setup(self, device: torch.device, wrap: Wrap) -> None:
        config = self.config
        self.device = device
        self.G_raw = build_network(*self.network).to(device)
        if hasattr(self.G_raw, "set_prior") and getattr(self.G_raw, "prior", None) is not None:
            self.G_raw.set_prior(self.mean_training_ct())
        if config.init_from:
            start_from(self.G_raw, config.init_from)
        if self.shape is not None:
            check_trainable(self.G_raw, self.shape.radiographs.folder)
        # The official +B generator holds layers its forward never uses (kept so official weights load strictly).
        self.G = wrap(self.G_raw, find_unused_parameters=True) if self._trains(self.G_raw) else self.G_raw
        self.D_raw: Optional[nn.Module] = None
        if config.gan_weight > 0:
            self.D_raw = init_weights(PatchDiscriminator3D(views=config.views, ndf=config.ndf)).to(device)
        self.D = wrap(self.D_raw) if self.D_raw is not None else None
        self._optimizers = {name: self._optimizer(net) for name, net in self.networks().items() if self._trains(net)}

    @staticmethod
    def _trains(net: nn.Module) -> bool:
        return any(p.requires_grad for p in net.parameters())

    def _optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        config = self.config
        kind = torch.optim.NAdam if config.optimizer == "nadam" else torch.optim.Adam
        return kind(net.parameters(), lr=config.lr, betas=(config.beta1, config.beta2))

    def mean_training_ct(self) -> torch.Tensor:
        """The voxel-wise mean of the training split's CTs on the unit scale, (S, S, S): the prior and template."""
        total = torch.zeros((), dtype=torch.float64)
        for i in range(len(self.train_set)):
            total = total + self.train_set[i].images[CT_KEY][0].double()
        return (total / len(self.train_set)).float()

    def optimizers(self) -> Dict[str, torch.optim.Optimizer]:
        return dict(self._optimizers)

    def networks(self) -> Dict[str, nn.Module]:
        return {"G": self.G_raw} if self.D_raw is None else {"G": self.G_raw, "D": self.D_raw}

    def state_dict(self) -> Dict[str, Any]:
        return {**super().state_dict(), "network": {"architecture": self.network[0], "config": self.network[1]}}

    def weights(self) -> Dict[str, torch.Tensor]:
        return self.G_raw.state_dict()

    def load_weights(self, weights: Mapping[str, torch.Tensor]) -> None:
        self.G_raw.load_state_dict(weights)

    def begin_epoch(self, epoch: int) -> Dict[str, float]:
        lr = self.config.lr * self.config.lr_factor(epoch)
        for opt in self._optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr
        for net in self.networks().values():
            net.train()
        if self.shape is not None:
            return {"lr": lr, "shape/real_epoch": float(self.shape.schedule.is_real(epoch))}
        return {"lr": lr}

    def step(self, indices: Sequence[int], context: StepContext) -> Dict[str, float]:
        phase = "paired" if self.shape is None else self.shape.schedule.phase(context.epoch)
        if phase == "real" and self.shape is not None:
            return self.shape.step(self.G, indices, context)
        if phase == "joint" and self.shape is not None:  # ``indices`` are radiographs; their paired partners
            real = self.shape.radiographs.batch(indices, context.device)
            partners = paired_partners(self.config.seed, context.epoch, indices, len(self.train_set))
            return self._paired_step(partners, context, real)
        return self._paired_step(indices, context, None)

    def _paired_step(self, indices: Sequence[int], context: StepContext,
                     real: Optional[Dict[str, torch.Tensor]]) -> Dict[str, float]:  # fmt: skip
        """The paired step on training cases ``indices``; with ``real`` (radiographs without CT by view name, shape
        mode joint) G also gets ``shape_weight`` x L_sind of them, from the same G forward and update."""
        batch = collate([self.train_set[i] for i in indices], context.device)
        pa, lateral, ct = batch.images[PA_KEY], batch.images.get(LATERAL_KEY), batch.images[CT_KEY]
        radiographs = {PA: pa} if lateral is None else {PA: pa, LATERAL: lateral}  # clean DRRs: re-projection target
        if self.config.clinical_augment > 0:  # simulated clinical radiographs as inputs only (x2ct.data.clinical)
            inputs = augment_inputs(radiographs, self.config.clinical_augment,
                                    self.geometry.detector_spacing_mm(pa.shape[-1]))  # fmt: skip
            pa, lateral = inputs[PA], inputs.get(LATERAL)
        g_pa, g_lateral = pa, lateral
        if real is not None:  # one forward for both batches (one DDP forward per backward)
            g_pa = torch.cat([pa, real[PA]])
            g_lateral = None if lateral is None else torch.cat([lateral, real[LATERAL]])
        with context.autocast():
            output = self.G(g_pa, g_lateral)
        fake = output[: pa.shape[0]]
        d_fake = None
        if self.D_raw is not None:  # G step with D frozen (the unwrapped D takes no step, so nothing to synchronise)
            self.D_raw.requires_grad_(False)
            with context.autocast():
                d_fake = context.full(self.D_raw(fake, pa, lateral))
        g_terms = generator_loss(d_fake, context.full(fake), ct, self.weights_of_losses, radiographs, self.geometry,
                                 batch.lesions)  # fmt: skip
        if real is not None and self.shape is not None:
            shape = shape_induction_loss(context.full(output[pa.shape[0] :]), real, self.geometry)
            g_terms = {**g_terms, "g_shape": shape, "g_total": g_terms["g_total"] + self.shape.weight * shape}
        if "G" in self._optimizers:
            context.optimize("G", g_terms["g_total"])
        losses = {k: v.item() for k, v in g_terms.items()}
        if self.D is not None and self.D_raw is not None:  # D step on the same (detached) fake
            self.D_raw.requires_grad_(True)
            with context.autocast():
                d_real, d_fake = self.D(ct, pa, lateral), self.D(fake.detach(), pa, lateral)
            d_terms = discriminator_loss(context.full(d_real), context.full(d_fake), self.weights_of_losses)
            context.optimize("D", d_terms["d_total"])
            losses.update({k: v.item() for k, v in d_terms.items()})
        return losses

    @torch.no_grad()
    def validate(self) -> Optional[Validation]:
        """Mean over the validation cases of MAE (HU, whole cube) and MSE on the [0, 1] scale, eval mode."""
        if self.val_set is None:
            return None
        self.G_raw.eval()
        mae, mse = [], []
        for i in range(len(self.val_set)):
            batch = collate([self.val_set[i]], self.device)
            fake = self.G_raw(batch.images[PA_KEY], batch.images.get(LATERAL_KEY)).float()
            ct = batch.images[CT_KEY]
            mae.append((fake - ct).abs().mean().item() * 2500.0)
            mse.append(((fake - ct) ** 2).mean().item())
        self.G_raw.train()
        metrics = {"val/mae_hu": float(np.mean(mae)), "val/mse": float(np.mean(mse))}
        return Validation(metrics, record={"val_mae_hu": metrics["val/mae_hu"], "val_mse": metrics["val/mse"]})

    @torch.no_grad()
    def end_epoch(self, epoch: int, global_step: int, scalars: ScalarLog) -> None:
        """Montage of the first validation (else training) case to ``OUT/samples/epoch_XXXX.png`` and TensorBoard."""
        every = self.config.sample_every_epochs
        if not every or epoch % every:
            return
        from PIL import Image

        dataset = self.val_set or self.train_set
        self.G_raw.eval()
        batch = collate([dataset[0]], self.device)
        pa, lateral = batch.images[PA_KEY], batch.images.get(LATERAL_KEY)
        fake = self.G_raw(pa, lateral)
        self.G_raw.train()
        image = montage(pa, lateral, batch.images[CT_KEY], fake)
        target = Path(self.config.out) / "samples" / f"epoch_{epoch:04d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            Image.fromarray(image).save(tmp, format="PNG")
        scalars.image("samples/pa_lateral__gt__prediction", image, global_step)

    def export(self, run: RunRecord) -> Path:
        """The generator with :func:`x2ct.models.save_generator` into ``OUT/model``."""
        from ..models.checkpoints import save_generator

        target = Path(self.config.out) / "model"
        fields = training_metadata(self.config, self.data, self.train_set, run)
        if self.shape is not None:
            fields["training_data"]["shape_induction"] = self.shape.record()
        save_generator(self.G_raw.to("cpu").eval(), target, **fields)
        return target


def training_metadata(config: TrainConfig, data: Path, train_set: CaseDataset, run: RunRecord) -> Dict[str, Any]:
    """Metadata of a trained generator, as :func:`x2ct.models.save_generator` keyword arguments: the DRR
    geometry of its training radiographs (8-bit per-image min-max DRRs, see docs/datasets.md), the
    training data and the run (settings, steps, time, processes)."""
    summary = _dataset_summary(data, train_set)
    build = summary["build"]
    return {
        "drr_geometry": {k: build.get(k) for k in ("sad_mm", "sid_mm", "detector_mm", "drr_size")},
        "quantize_bits": 8,
        "training_data": summary,
        "training": {"config": config.to_dict(), **run.to_dict()},
    }


def train_generator(config: TrainConfig, log: Log = stderr_log) -> TrainResult:
    """Train (or resume) the run ``config.out`` on ``config.data``; see the module docstring."""
    trainer = GeneratorTrainer(config)
    for note in trainer.notes:
        log(note)
    return run_training(trainer, resume=None, log=log)
