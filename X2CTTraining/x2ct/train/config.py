"""Settings of a generator training run: one flat JSON file, overridable with ``--set key=value``.

``generator_default.json`` beside this file is the single source of the default values: the fields of
:class:`TrainConfig` take their defaults from it when this module is imported, and the import fails if
the file lacks a setting, has an unknown one or gives one a value of the wrong type (the parsing is
:mod:`x2ct.train.settings`, shared with the classifier's settings). The defaults are the
official X2CT-GAN ones (kylekma/X2CT ``d2_multiview2500.yml``): LSGAN ×0.1 with a conditional 3D PatchGAN,
MSE ×10, projection L1 ×10 (averaged over three axes), Adam 2e-4 with betas (0.5, 0.99) for G and D,
50 constant + 50 linearly decaying epochs, batch 4, 128³ grid, full width. docs/training.md lists
every key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from .settings import DefaultSettings, Settings, check_shared_settings, setting_error

DEFAULT_CONFIG = Path(__file__).with_name("generator_default.json")
"""The default config file (official settings); the only place the default values are written."""

_DEFAULTS = DefaultSettings(DEFAULT_CONFIG)

GENERATOR_ARCHITECTURES = ("x2ct_gan", "bp_unet", "dual_unet", "template")
"""``architecture`` values: X2CT-GAN (+B/+S by ``views``), the XprospeCT back-projection U-Net and dense-bottleneck
dual U-Net, and the mean-CT template baseline (x2ct.models.xprospect)."""

SHAPE_MODES = ("alternate", "joint")
"""``shape_mode`` values (x2ct.train.shape_induction): the seed's alternation of whole real-radiograph and paired
epochs, or every step a paired batch's losses plus ``shape_weight`` x the shape-induction loss on real radiographs."""

OPTIMIZERS = ("adam", "nadam")
"""``optimizer`` values: Adam (X2CT-GAN) or NAdam (XprospeCT), with ``lr``, ``beta1`` and ``beta2``."""


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of ``x2ct train-generator``; see docs/training.md for the meaning of each key.

    Default values come from :data:`DEFAULT_CONFIG`; only the names and types are declared here.
    """

    # data and run folder
    data: Optional[str] = _DEFAULTS["data"]
    out: Optional[str] = _DEFAULTS["out"]
    train_split: str = _DEFAULTS["train_split"]
    val_split: str = _DEFAULTS["val_split"]
    cache: bool = _DEFAULTS["cache"]
    clinical_augment: float = _DEFAULTS["clinical_augment"]
    # model
    architecture: str = _DEFAULTS["architecture"]
    views: int = _DEFAULTS["views"]
    grid_size: int = _DEFAULTS["grid_size"]
    width: float = _DEFAULTS["width"]
    dropout: float = _DEFAULTS["dropout"]
    arch_options: Dict[str, Any] = field(default_factory=lambda: dict(_DEFAULTS["arch_options"]))
    ndf: int = _DEFAULTS["ndf"]
    # losses
    gan_weight: float = _DEFAULTS["gan_weight"]
    recon_weight: float = _DEFAULTS["recon_weight"]
    projection_weight: float = _DEFAULTS["projection_weight"]
    l1_weight: float = _DEFAULTS["l1_weight"]
    reprojection_weight: float = _DEFAULTS["reprojection_weight"]
    lesion_weight: float = _DEFAULTS["lesion_weight"]
    # start from a trained generator; shape induction on radiographs without CT (x2ct.train.shape_induction)
    init_from: Optional[str] = _DEFAULTS["init_from"]
    shape_induction: Optional[str] = _DEFAULTS["shape_induction"]
    shape_weight: float = _DEFAULTS["shape_weight"]
    shape_mode: str = _DEFAULTS["shape_mode"]
    shape_pretrain_epochs: int = _DEFAULTS["shape_pretrain_epochs"]
    shape_real_epochs: int = _DEFAULTS["shape_real_epochs"]
    shape_paired_epochs: int = _DEFAULTS["shape_paired_epochs"]
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
    sample_every_epochs: int = _DEFAULTS["sample_every_epochs"]
    progress: bool = _DEFAULTS["progress"]
    tensorboard: str = _DEFAULTS["tensorboard"]

    @property
    def epochs(self) -> int:
        return self.epochs_constant + self.epochs_decay

    def lr_factor(self, epoch: int) -> float:
        """LR multiplier of 0-based ``epoch``: 1 for the constant epochs, then linear decay towards 0.

        Epoch ``epochs_constant + k`` (k = 0..decay-1) gets ``1 - (k + 1) / (epochs_decay + 1)``, so the
        last epoch still learns a little. (The official code starts the decay about 2 epochs early through
        an ``epoch_count`` offset; we do not reproduce that quirk.)
        """
        return 1.0 - max(0, epoch - self.epochs_constant + 1) / (self.epochs_decay + 1)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def validate(self) -> TrainConfig:
        """Raise :class:`InputError` (one line naming the key) for an impossible value; returns self."""
        if self.architecture not in GENERATOR_ARCHITECTURES:
            raise setting_error(self, "architecture", f"use one of {', '.join(GENERATOR_ARCHITECTURES)}")
        if self.views not in (1, 2):
            raise setting_error(self, "views", "use 2 (PA + lateral, +B) or 1 (PA only, +S)")
        if self.optimizer not in OPTIMIZERS:
            raise setting_error(self, "optimizer", f"use one of {', '.join(OPTIMIZERS)}")
        if not isinstance(self.arch_options, dict):
            raise setting_error(self, "arch_options", "must be a JSON object of architecture options")
        if self.architecture == "x2ct_gan" and self.arch_options:
            raise setting_error(self, "arch_options", "x2ct_gan takes width and dropout, not arch_options")
        if self.grid_size < 64 or self.grid_size % 32:
            raise setting_error(self, "grid_size", "must be a multiple of 32 and at least 64")
        if not 0.0 <= self.dropout < 1.0:
            raise setting_error(self, "dropout", "must be in [0, 1)")
        if not 0.0 <= self.clinical_augment <= 1.0:
            raise setting_error(self, "clinical_augment", "must be in [0, 1] (the chance per training radiograph)")
        for key in ("width", "lr", "batch_size", "ndf"):
            if not getattr(self, key) > 0:
                raise setting_error(self, key, "must be positive")
        for key in ("gan_weight", "recon_weight", "projection_weight", "l1_weight", "reprojection_weight",
                    "lesion_weight", "epochs_constant", "epochs_decay", "sample_every_epochs"):  # fmt: skip
            if getattr(self, key) < 0:
                raise setting_error(self, key, "must not be negative")
        if self.epochs < 1:
            raise setting_error(self, "epochs_constant", "epochs_constant + epochs_decay must be at least 1")
        for key in ("shape_weight", "shape_pretrain_epochs", "shape_paired_epochs"):
            if getattr(self, key) < 0:
                raise setting_error(self, key, "must not be negative")
        if self.shape_mode not in SHAPE_MODES:
            raise setting_error(self, "shape_mode", f"use one of {', '.join(SHAPE_MODES)}")
        if self.shape_real_epochs < 1:
            raise setting_error(self, "shape_real_epochs", "must be at least 1")
        if self.shape_induction and not self.init_from and not self.shape_pretrain_epochs:
            raise setting_error(self, "shape_pretrain_epochs", "shape induction fine-tunes a trained generator: "
                                "give init_from=MODEL or some paired pre-training epochs")  # fmt: skip
        check_shared_settings(self)
        return self


RESUMABLE_KEYS = frozenset(
    {
        "data",
        "shape_induction",
        "out",
        "cache",
        "device",
        "amp",
        "threads",
        "checkpoint_every_steps",
        "keep_every_epochs",
        "max_steps",
        "max_minutes",
        "val_every_epochs",
        "sample_every_epochs",
        "progress",
        "tensorboard",
    }
)
"""Keys that may differ between a checkpoint's config and the resuming run (they do not change the
mathematics on one device; changing ``device``, ``amp`` or ``threads`` may change rounding)."""

SETTINGS = Settings(TrainConfig, _DEFAULTS, RESUMABLE_KEYS)
"""Parsing of generator settings (checks the default file at import)."""

load_config = SETTINGS.load
parse_overrides = SETTINGS.parse_overrides
config_from_dict = SETTINGS.from_dict
