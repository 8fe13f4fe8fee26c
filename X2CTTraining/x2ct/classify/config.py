"""Settings of a classifier training run: one flat JSON file, overridable with ``--set key=value``.

The same design as the generator's (:mod:`x2ct.train.config`, parsed by :mod:`x2ct.train.settings`):
``x2ct/train/classifier_default.json`` is the single source of the default values (checked at import),
then a config file, then ``key=value`` overrides; :data:`RESUMABLE_KEYS` are the settings a resume may
change. Defaults follow the seed (synthetic-CT TB classification): Adam, lr 1e-4, 50 epochs with the
best validation epoch kept, random rotation augmentation. docs/classifiers.md lists every key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from ..train.settings import DefaultSettings, Settings, check_shared_settings, setting_error

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "train" / "classifier_default.json"
"""The default config file; the only place the default values are written (as for the generator)."""

_DEFAULTS = DefaultSettings(DEFAULT_CONFIG)


@dataclass(frozen=True)
class ClassifierConfig:
    """Every setting of ``x2ct train-classifier``; see docs/classifiers.md for the meaning of each key.

    Default values come from :data:`DEFAULT_CONFIG`; only the names and types are declared here.
    """

    # data and run folder
    data: Optional[str] = _DEFAULTS["data"]
    out: Optional[str] = _DEFAULTS["out"]
    labels: Optional[str] = _DEFAULTS["labels"]
    task: str = _DEFAULTS["task"]
    ct_source: str = _DEFAULTS["ct_source"]
    train_split: str = _DEFAULTS["train_split"]
    val_split: str = _DEFAULTS["val_split"]
    cache: bool = _DEFAULTS["cache"]
    # model
    arch: str = _DEFAULTS["arch"]
    arch_options: Dict[str, Any] = field(default_factory=lambda: dict(_DEFAULTS["arch_options"]))
    inputs: Optional[str] = _DEFAULTS["inputs"]
    size_xray: int = _DEFAULTS["size_xray"]
    size_ct: int = _DEFAULTS["size_ct"]
    # optimisation
    lr: float = _DEFAULTS["lr"]
    beta1: float = _DEFAULTS["beta1"]
    beta2: float = _DEFAULTS["beta2"]
    weight_decay: float = _DEFAULTS["weight_decay"]
    epochs: int = _DEFAULTS["epochs"]
    batch_size: int = _DEFAULTS["batch_size"]
    class_weights: bool = _DEFAULTS["class_weights"]
    augment: bool = _DEFAULTS["augment"]
    rotation_degrees: float = _DEFAULTS["rotation_degrees"]
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

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def input_list(self) -> Optional[tuple]:
        """``inputs`` as a tuple of keys, or None to take the architecture's own."""
        return tuple(k.strip() for k in self.inputs.split(",") if k.strip()) if self.inputs else None

    def validate(self) -> ClassifierConfig:
        """Raise :class:`InputError` (one line naming the key) for an impossible value; returns self."""
        for key in ("lr", "batch_size", "epochs", "size_xray", "size_ct"):
            if not getattr(self, key) > 0:
                raise setting_error(self, key, "must be positive")
        if self.batch_size < 2:
            raise setting_error(self, "batch_size", "must be at least 2 (batch normalisation in training mode)")
        for key in ("weight_decay", "rotation_degrees"):
            if getattr(self, key) < 0:
                raise setting_error(self, key, "must not be negative")
        if self.val_every_epochs < 1:
            raise setting_error(self, "val_every_epochs", "must be at least 1 (validation selects the model)")
        if not isinstance(self.arch_options, dict):
            raise setting_error(self, "arch_options", "must be a JSON object of architecture options")
        check_shared_settings(self)
        return self


RESUMABLE_KEYS = frozenset(
    {
        "data",
        "out",
        "labels",
        "ct_source",
        "cache",
        "device",
        "amp",
        "threads",
        "checkpoint_every_steps",
        "keep_every_epochs",
        "max_steps",
        "max_minutes",
        "progress",
    }
)
"""Keys that may differ between a checkpoint's config and the resuming run (the labels and CT source are
checked through the case lists and contents they give, not their paths)."""

SETTINGS = Settings(ClassifierConfig, _DEFAULTS, RESUMABLE_KEYS)
"""Parsing of classifier settings (checks the default file at import)."""

load_config = SETTINGS.load
parse_overrides = SETTINGS.parse_overrides
config_from_dict = SETTINGS.from_dict
