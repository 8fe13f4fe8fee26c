"""Train a CycleGAN style model, real radiographs -> DRR look (``x2ct train-style``; docs/style_transfer.md).

A :class:`~x2ct.train.engine.Trainer` on the one training engine (seeding, data order, checkpoints,
resume, logging and AMP are the engine's; see :mod:`x2ct.train.engine`). The data are two unpaired
folders of radiographs (:func:`x2ct.data.radiograph_folder.read_radiograph_folder`): ``real`` (clinical
CR/DX, or simulated ones) and ``drr`` (DRRs like the generators' training inputs). Every image is
prepared as ``x2ct predict`` prepares a generator input (:func:`~x2ct.data.radiograph_folder.model_input`
with ``InputSpec(size)``: the official field of view, ``size`` x ``size`` pixels, per-image min-max,
8 bits); PA and lateral images are pooled into one model. A seeded ``val_fraction`` of each folder's
cases is held out.

An epoch runs over the larger folder's training images in the engine's order (:func:`~x2ct.train.engine.epoch_order`);
each is paired with an image of the other folder through a permutation that is a pure function of
``seed`` and the epoch (:func:`partner`). One step, as in the official ``optimize_parameters``
(:mod:`x2ct.models.cyclegan` for the networks and losses)::

    G: real -> DRR, F: DRR -> real; D_drr, D_real: PatchGANs
    G and F step (D frozen): LSGAN(D_drr(G(x)), 1) + LSGAN(D_real(F(y)), 1)
                             + cycle_weight * (|F(G(x)) - x| + |G(F(y)) - y|)
                             + identity_weight * cycle_weight * (|G(y) - y| + |F(x) - x|)
    EMA of G's weights
    D step: 0.5 * (LSGAN(D_drr(y), 1) + LSGAN(D_drr(pool(G(x))), 0)) + the same for D_real

``pool`` is the paper's history of ``pool_size`` generated images. Validation (every ``val_every_epochs``):
the mean cycle errors of the held-out images through the EMA generator, and how much it changes a
held-out DRR; no model selection. The export (``RUN/model``) is the EMA of G as a style model
(:func:`x2ct.inference.style.save_style`). Run folder as for every trainer: ``config.json``,
``checkpoints/last.pt``, ``scalars.csv``, ``history.json``, ``model/``; running again on the same
``RUN`` resumes. One process (not under torchrun: the image pools are per-process state).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..data.radiograph_folder import model_input, read_radiograph_folder
from ..errors import InputError
from ..inference.style import save_style
from ..inference.types import InputSpec
from ..models.cyclegan import (
    ARCHITECTURES,
    UNET,
    ExponentialMovingAverage,
    PatchDiscriminator,
    build_generator,
    cycle_loss,
    discriminator_loss,
    identity_loss,
    lsgan_loss,
    size_multiple,
)
from ..views import LATERAL, PA, input_key, normalize_view
from .config import OPTIMIZERS, TrainConfig
from .engine import (
    Log,
    RunRecord,
    StepContext,
    Trainer,
    TrainResult,
    Validation,
    Wrap,
    epoch_order,
    run_training,
    stderr_log,
)
from .generator import init_weights
from .settings import DefaultSettings, Settings, check_shared_settings, setting_error

CHECKPOINT_FORMAT = "x2ct-style-train-checkpoint/1"
"""``format`` entry of style training checkpoints."""

DEFAULT_CONFIG = Path(__file__).with_name("style_default.json")
"""The default config file; the only place the default values are written."""

_DEFAULTS = DefaultSettings(DEFAULT_CONFIG)

PARTNER_SALT = 1_000_003
"""Added to ``seed`` for the smaller folder's permutation, so that it differs from the engine's order."""

VAL_BATCH = 16
"""Held-out images per validation forward pass."""


@dataclass(frozen=True)
class StyleConfig:
    """Every setting of ``x2ct train-style``; docs/style_transfer.md gives the meaning and source of each key.

    Default values come from :data:`DEFAULT_CONFIG`; only the names and types are declared here.
    """

    # data and run folder
    real: Optional[str] = _DEFAULTS["real"]
    drr: Optional[str] = _DEFAULTS["drr"]
    out: Optional[str] = _DEFAULTS["out"]
    views: str = _DEFAULTS["views"]
    val_fraction: float = _DEFAULTS["val_fraction"]
    size: int = _DEFAULTS["size"]
    # model
    architecture: str = _DEFAULTS["architecture"]
    width: int = _DEFAULTS["width"]
    blocks: int = _DEFAULTS["blocks"]
    levels: int = _DEFAULTS["levels"]
    d_width: int = _DEFAULTS["d_width"]
    d_layers: int = _DEFAULTS["d_layers"]
    # losses
    cycle_weight: float = _DEFAULTS["cycle_weight"]
    identity_weight: float = _DEFAULTS["identity_weight"]
    pool_size: int = _DEFAULTS["pool_size"]
    ema_decay: float = _DEFAULTS["ema_decay"]
    ema_warmup: bool = _DEFAULTS["ema_warmup"]
    # optimisation
    optimizer: str = _DEFAULTS["optimizer"]
    lr: float = _DEFAULTS["lr"]
    beta1: float = _DEFAULTS["beta1"]
    beta2: float = _DEFAULTS["beta2"]
    epochs_constant: int = _DEFAULTS["epochs_constant"]
    epochs_decay: int = _DEFAULTS["epochs_decay"]
    batch_size: int = _DEFAULTS["batch_size"]
    seed: int = _DEFAULTS["seed"]
    # execution
    device: str = _DEFAULTS["device"]
    amp: bool = _DEFAULTS["amp"]
    threads: int = _DEFAULTS["threads"]
    # bookkeeping
    checkpoint_every_steps: int = _DEFAULTS["checkpoint_every_steps"]
    keep_every_epochs: int = _DEFAULTS["keep_every_epochs"]
    max_steps: int = _DEFAULTS["max_steps"]
    max_minutes: float = _DEFAULTS["max_minutes"]
    val_every_epochs: int = _DEFAULTS["val_every_epochs"]
    progress: bool = _DEFAULTS["progress"]
    tensorboard: str = _DEFAULTS["tensorboard"]

    epochs = TrainConfig.epochs
    lr_factor = TrainConfig.lr_factor
    """The generator's schedule (the paper's): constant ``lr`` for ``epochs_constant``, then linear decay."""

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def view_list(self) -> Tuple[str, ...]:
        """``views`` as view names: (PA,) or (PA, LATERAL); InputError otherwise."""
        found = tuple(normalize_view(v) for v in self.views.split(",") if v.strip())
        if found not in ((PA,), (PA, LATERAL)):
            raise setting_error(self, "views", "use pa (frontal images) or pa,lateral (both views of each case)")
        return found

    def network(self) -> Dict[str, int]:
        """The generator's config (:func:`x2ct.models.cyclegan.build_generator`)."""
        if self.architecture == UNET:
            return {"width": self.width, "levels": self.levels}
        return {"width": self.width, "blocks": self.blocks}

    def validate(self) -> StyleConfig:
        """Raise :class:`InputError` (one line naming the key) for an impossible value; returns self."""
        if self.architecture not in ARCHITECTURES:
            raise setting_error(self, "architecture", f"use one of {', '.join(ARCHITECTURES)}")
        if self.optimizer not in OPTIMIZERS:
            raise setting_error(self, "optimizer", f"use one of {', '.join(OPTIMIZERS)}")
        self.view_list()
        for key in ("width", "d_width", "d_layers", "levels", "lr", "batch_size"):
            if not getattr(self, key) > 0:
                raise setting_error(self, key, "must be positive")
        for key in ("blocks", "cycle_weight", "identity_weight", "pool_size", "epochs_constant", "epochs_decay"):
            if getattr(self, key) < 0:
                raise setting_error(self, key, "must not be negative")
        if self.epochs < 1:
            raise setting_error(self, "epochs_constant", "epochs_constant + epochs_decay must be at least 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise setting_error(self, "val_fraction", "must be in [0, 1)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise setting_error(self, "ema_decay", "must be in [0, 1)")
        multiple = size_multiple(self.architecture, self.network())
        if self.size % multiple or self.size // 2**self.d_layers < 3:
            raise setting_error(
                self, "size", f"must be a multiple of {multiple} and at least {3 * 2**self.d_layers} (d_layers)"
            )
        check_shared_settings(self)
        return self


RESUMABLE_KEYS = frozenset(
    {"real", "drr", "out", "device", "amp", "threads", "checkpoint_every_steps", "keep_every_epochs", "max_steps",
     "max_minutes", "val_every_epochs", "progress", "tensorboard"}
)  # fmt: skip
"""Keys that may differ between a checkpoint's config and the resuming run (the folders may move: their
images are checked by :meth:`StyleTrainer.check_identity`)."""

SETTINGS = Settings(StyleConfig, _DEFAULTS, RESUMABLE_KEYS)
"""Parsing of style settings (checks the default file at import)."""

load_config = SETTINGS.load


# --------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DomainImages:
    """One folder's prepared images: ``train`` and ``val`` (N, 1, S, S) float32 in [0, 1], and the names
    (``<case_id>/<view key>``) of each."""

    folder: Path
    train: torch.Tensor
    val: torch.Tensor
    train_names: List[str]
    val_names: List[str]

    def summary(self) -> Dict[str, Any]:
        folder = str(self.folder.resolve())
        return {"folder": folder, "train_images": len(self.train_names), "val_images": len(self.val_names)}


def read_domain(folder: Path, config: StyleConfig, salt: int) -> DomainImages:
    """The images of ``folder`` in the model-input space (module doc), a seeded ``val_fraction`` of its cases
    held out (the permutation of seed ``config.seed + salt``)."""
    cases = read_radiograph_folder(folder, config.view_list())
    held = int(round(config.val_fraction * len(cases)))
    held = min(held, len(cases) - 1)
    order = torch.randperm(len(cases), generator=torch.Generator().manual_seed(config.seed + salt)).tolist()
    val_cases = set(order[:held])
    spec = InputSpec(size=config.size)
    images: Dict[bool, List[np.ndarray]] = {True: [], False: []}
    names: Dict[bool, List[str]] = {True: [], False: []}
    items = [(k, view, path) for k, case in enumerate(cases) for view, path in case.files.items()]
    for k, view, path in tqdm(items, desc=f"read {folder.name}", unit="image", disable=not config.progress):
        images[k in val_cases].append(model_input(path, view, spec))
        names[k in val_cases].append(f"{cases[k].case_id}/{input_key(view)}")

    def stack(arrays: List[np.ndarray]) -> torch.Tensor:
        if not arrays:
            return torch.zeros((0, 1, config.size, config.size))
        return torch.from_numpy(np.stack(arrays)[:, None].astype(np.float32))

    return DomainImages(folder, stack(images[False]), stack(images[True]), names[False], names[True])


def partner(seed: int, epoch: int, index: int, count: int) -> int:
    """The image of the smaller folder (``count`` images) paired with image ``index`` of the larger one in
    ``epoch``: a seeded permutation of the smaller folder, repeated as often as needed."""
    return int(epoch_order(seed + PARTNER_SALT, epoch, count)[index % count])


class ImagePool:
    """The paper's history of generated images (after Shrivastava et al. 2017): while fewer than ``size`` are
    stored each new one is stored and passed on; then each new image is, with probability 1/2, swapped for
    a random stored one (which it replaces). ``size`` 0 passes images through. Draws from torch's global RNG."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.images: List[torch.Tensor] = []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            image = image[None]
            if len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
            elif float(torch.rand(())) < 0.5:
                k = int(torch.randint(0, self.size, ()))
                out.append(self.images[k])
                self.images[k] = image
            else:
                out.append(image)
        return torch.cat(out)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {"images": torch.cat(self.images) if self.images else torch.zeros(0)}

    def load_state_dict(self, state: Mapping[str, torch.Tensor], device: torch.device) -> None:
        stored = state["images"].to(device)
        self.images = [stored[i : i + 1] for i in range(stored.shape[0])] if stored.ndim == 4 else []


# ------------------------------------------------------------------------------------------- trainer


class StyleTrainer(Trainer):
    """CycleGAN real -> DRR (module doc); ``x2ct train-style``."""

    checkpoint_format = CHECKPOINT_FORMAT
    progress_keys = ("g_total", "d_total")

    def __init__(self, config: StyleConfig) -> None:
        config.validate()
        if not config.real or not config.drr or not config.out:
            raise InputError(None, "give the two radiograph folders (--real DIR --drr DIR) and the run folder (-o RUN)")
        super().__init__(config, SETTINGS)
        self.real = read_domain(Path(config.real), config, salt=0)
        self.drr = read_domain(Path(config.drr), config, salt=1)

    @property
    def description(self) -> str:
        return f"style ({self.config.architecture})"

    def train_size(self) -> int:
        return max(len(self.real.train), len(self.drr.train))

    def identity(self) -> Dict[str, Any]:
        return {domain: {"train": images.train_names, "val": images.val_names}
                for domain, images in (("real", self.real), ("drr", self.drr))}  # fmt: skip

    def check_identity(self, saved: Any, out: Path) -> None:
        if saved != self.identity():
            raise InputError(out, "was trained on other radiographs than the --real and --drr folders hold now")

    def setup(self, device: torch.device, wrap: Wrap) -> None:
        config = self.config
        self.device = device
        network = config.network()
        self.G_raw = init_weights(build_generator(config.architecture, network)).to(device)  # real -> DRR
        self.F_raw = init_weights(build_generator(config.architecture, network)).to(device)  # DRR -> real
        self.D_drr_raw = init_weights(PatchDiscriminator(config.d_width, config.d_layers)).to(device)
        self.D_real_raw = init_weights(PatchDiscriminator(config.d_width, config.d_layers)).to(device)
        self.G, self.F = wrap(self.G_raw), wrap(self.F_raw)
        self.D_drr, self.D_real = wrap(self.D_drr_raw), wrap(self.D_real_raw)
        self.ema = ExponentialMovingAverage(self.G_raw, config.ema_decay, config.ema_warmup)
        self.pools = {"drr": ImagePool(config.pool_size), "real": ImagePool(config.pool_size)}
        kind = torch.optim.NAdam if config.optimizer == "nadam" else torch.optim.Adam
        betas = (config.beta1, config.beta2)
        generators = itertools.chain(self.G_raw.parameters(), self.F_raw.parameters())
        discriminators = itertools.chain(self.D_drr_raw.parameters(), self.D_real_raw.parameters())
        self._optimizers = {"G": kind(generators, lr=config.lr, betas=betas),
                            "D": kind(discriminators, lr=config.lr, betas=betas)}  # fmt: skip

    def optimizers(self) -> Dict[str, torch.optim.Optimizer]:
        return dict(self._optimizers)

    def networks(self) -> Dict[str, nn.Module]:
        return {"G": self.G_raw, "F": self.F_raw, "D_drr": self.D_drr_raw, "D_real": self.D_real_raw}

    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        state["ema"] = self.ema.state_dict()
        state["pools"] = {name: pool.state_dict() for name, pool in self.pools.items()}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.ema.load_state_dict(state["ema"])
        for name, pool in self.pools.items():
            pool.load_state_dict(state["pools"][name], self.device)

    def weights(self) -> Dict[str, torch.Tensor]:
        return self.ema.module.state_dict()

    def load_weights(self, weights: Mapping[str, torch.Tensor]) -> None:
        self.ema.module.load_state_dict(weights)

    def begin_epoch(self, epoch: int) -> Dict[str, float]:
        lr = self.config.lr * self.config.lr_factor(epoch)
        for opt in self._optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr
        for net in self.networks().values():
            net.train()
        return {"lr": lr}

    def _batch(self, indices: Sequence[int], epoch: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(real, drr) images of a step: the larger folder's ``indices``, each with its :func:`partner`."""
        real, drr = self.real.train, self.drr.train
        if len(real) >= len(drr):
            real_ids, drr_ids = list(indices), [partner(self.config.seed, epoch, i, len(drr)) for i in indices]
        else:
            drr_ids, real_ids = list(indices), [partner(self.config.seed, epoch, i, len(real)) for i in indices]
        return real[real_ids].to(self.device), drr[drr_ids].to(self.device)

    def step(self, indices: Sequence[int], context: StepContext) -> Dict[str, float]:
        config, full = self.config, context.full
        real, drr = self._batch(indices, context.epoch)
        lam, lam_idt = config.cycle_weight, config.identity_weight * config.cycle_weight
        with context.autocast():
            fake_drr, fake_real = self.G(real), self.F(drr)
            back_real, back_drr = self.F(fake_drr), self.G(fake_real)
        for d in (self.D_drr_raw, self.D_real_raw):  # G step with the discriminators frozen
            d.requires_grad_(False)
        with context.autocast():
            score_drr, score_real = self.D_drr_raw(fake_drr), self.D_real_raw(fake_real)
        terms = {
            "gan_g": lsgan_loss(score_drr, real=True),
            "gan_f": lsgan_loss(score_real, real=True),
            "cycle_real": cycle_loss(full(back_real), real, lam),
            "cycle_drr": cycle_loss(full(back_drr), drr, lam),
        }
        if lam_idt > 0:
            with context.autocast():
                same_drr, same_real = self.G(drr), self.F(real)
            terms["identity_drr"] = identity_loss(full(same_drr), drr, lam_idt)
            terms["identity_real"] = identity_loss(full(same_real), real, lam_idt)
        g_total = sum(terms.values())
        context.optimize("G", g_total)
        self.ema.update(self.G_raw)
        for d in (self.D_drr_raw, self.D_real_raw):
            d.requires_grad_(True)
        pooled_drr, pooled_real = self.pools["drr"].query(fake_drr), self.pools["real"].query(fake_real)
        with context.autocast():
            d_drr = discriminator_loss(self.D_drr, drr, pooled_drr)
            d_real = discriminator_loss(self.D_real, real, pooled_real)
        context.optimize("D", d_drr + d_real)
        losses = {k: float(v.item()) for k, v in terms.items()}
        losses.update(g_total=float(g_total.item()), d_drr=float(d_drr.item()), d_real=float(d_real.item()))
        losses["d_total"] = losses["d_drr"] + losses["d_real"]
        return losses

    @torch.no_grad()
    def _mean_l1(self, images: torch.Tensor, *nets: nn.Module) -> float:
        """Mean |nets(images) - images| over ``images`` (batches of :data:`VAL_BATCH`)."""
        total = 0.0
        for start in range(0, len(images), VAL_BATCH):
            x = images[start : start + VAL_BATCH].to(self.device)
            y = x
            for net in nets:
                y = net(y).float()
            total += float((y - x).abs().mean(dim=(1, 2, 3)).sum())
        return total / len(images)

    def validate(self) -> Optional[Validation]:
        """Mean absolute cycle errors of the held-out images through the EMA generator (G_ema then F for real
        images, F then G_ema for DRRs) and the mean change G_ema makes to a held-out DRR; no model selection."""
        if not len(self.real.val) or not len(self.drr.val):
            return None
        G, F = self.ema.module, self.F_raw
        F.eval()
        metrics = {
            "val/cycle_real": self._mean_l1(self.real.val, G, F),
            "val/cycle_drr": self._mean_l1(self.drr.val, F, G),
            "val/drr_change": self._mean_l1(self.drr.val, G),
        }
        F.train()
        return Validation(metrics, record={k.split("/", 1)[1]: v for k, v in metrics.items()})

    def export(self, run: RunRecord) -> Path:
        """The EMA generator as a style model into ``RUN/model`` (:func:`x2ct.inference.style.save_style`), named
        after the run folder."""
        config = self.config
        spec = InputSpec(size=config.size).to_dict()
        preprocessing = {key: spec[key] for key in ("fov_mm_at_isocenter", "drr_geometry_mm", "quantize_bits")}
        training = {"config": config.to_dict(), **run.to_dict(), "ema_updates": self.ema.updates}
        data = {"real": self.real.summary(), "drr": self.drr.summary(), "views": [v for v in config.view_list()]}
        target = Path(config.out) / "model"
        card = style_card(config, run, data)
        source = {"kind": "trained with x2ct train-style"}
        return save_style(self.ema.module, target, config.size, card, preprocessing, training=training,
                          training_data=data, source=source, name=Path(config.out).resolve().name)  # fmt: skip


def style_card(config: StyleConfig, run: RunRecord, data: Mapping[str, Any]) -> str:
    """The MODEL_CARD.md of a freshly trained style model (the facts of the run; describe the data yourself)."""
    real, drr = data["real"], data["drr"]
    return f"""# Model card: CycleGAN style model (real radiograph -> DRR look)

Trained with `x2ct train-style` ({run.steps} steps, {run.seconds / 60:.1f} min on {run.device}); every setting
is in `model.json` under `training.config`, the method in docs/style_transfer.md.

- real radiographs: `{real['folder']}`, {real['train_images']} training and {real['val_images']} held-out images
- DRRs: `{drr['folder']}`, {drr['train_images']} training and {drr['val_images']} held-out images
- network: the exponential moving average (decay {config.ema_decay:g}) of the real -> DRR generator
  `{config.architecture}` {config.network()}, working at {config.size} x {config.size} pixels

Describe here what the real radiographs were (source, devices, patients), what the model was checked on, and
its limits. A style model changes what the CT generator sees; it never makes a synthetic CT a measurement.
Research use only; not for diagnosis.
"""


def train_style(config: StyleConfig, log: Log = stderr_log) -> TrainResult:
    """Train (or resume) the run ``config.out`` on the ``config.real`` and ``config.drr`` folders (module doc)."""
    return run_training(StyleTrainer(config), resume=None, log=log)
