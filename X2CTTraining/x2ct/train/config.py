"""Settings of a generator training run: one flat JSON file, overridable with ``--set key=value``.

``generator_default.json`` beside this file is the single source of the default values: the fields of
:class:`TrainConfig` take their defaults from it when this module is imported, and the import fails if
the file lacks a setting, has an unknown one or gives one a value of the wrong type. The defaults are the
official X2CT-GAN ones (reference/x2ct_official.md §2): LSGAN ×0.1 with a conditional 3D PatchGAN,
MSE ×10, projection L1 ×10 (averaged over three axes), Adam 2e-4 with betas (0.5, 0.99) for G and D,
50 constant + 50 linearly decaying epochs, batch 4, 128³ grid, full width. docs/training.md lists
every key.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Union

from ..errors import InputError, PathLike

DEFAULT_CONFIG = Path(__file__).with_name("generator_default.json")
"""The default config file (official settings); the only place the default values are written."""

TENSORBOARD_MODES = ("auto", "on", "off")
"""``tensorboard`` setting: use it when installed / require it / never."""


def read_settings(file: Path) -> Dict[str, Any]:
    """The settings of a flat JSON config file, minus keys starting with ``_`` (comments); InputError if unreadable."""
    try:
        document = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(file, "config file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(file, f"not a readable JSON config ({' '.join(str(err).split())})") from None
    if not isinstance(document, dict):
        raise InputError(file, "a config file must hold one JSON object of settings")
    return {k: v for k, v in document.items() if not k.startswith("_")}


_DEFAULTS = read_settings(DEFAULT_CONFIG)


def _default(key: str) -> Any:
    """The value of ``key`` in the default config file (a packaging error when it is missing)."""
    try:
        return _DEFAULTS[key]
    except KeyError:
        raise RuntimeError(f"{DEFAULT_CONFIG}: the default of setting {key!r} is missing") from None


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of ``x2ct train-generator``; see docs/training.md for the meaning of each key.

    Default values come from :data:`DEFAULT_CONFIG`; only the names and types are declared here.
    """

    # data and run folder
    data: Optional[str] = _default("data")
    out: Optional[str] = _default("out")
    train_split: str = _default("train_split")
    val_split: str = _default("val_split")
    cache: bool = _default("cache")
    # model
    views: int = _default("views")
    grid_size: int = _default("grid_size")
    width: float = _default("width")
    ndf: int = _default("ndf")
    # losses
    gan_weight: float = _default("gan_weight")
    recon_weight: float = _default("recon_weight")
    projection_weight: float = _default("projection_weight")
    # optimisation
    lr: float = _default("lr")
    beta1: float = _default("beta1")
    beta2: float = _default("beta2")
    epochs_constant: int = _default("epochs_constant")
    epochs_decay: int = _default("epochs_decay")
    batch_size: int = _default("batch_size")
    seed: int = _default("seed")
    # execution
    device: str = _default("device")
    amp: bool = _default("amp")
    threads: int = _default("threads")
    # bookkeeping
    checkpoint_every_steps: int = _default("checkpoint_every_steps")
    keep_every_epochs: int = _default("keep_every_epochs")
    max_steps: int = _default("max_steps")
    val_every_epochs: int = _default("val_every_epochs")
    sample_every_epochs: int = _default("sample_every_epochs")
    progress: bool = _default("progress")
    tensorboard: str = _default("tensorboard")

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

        def bad(key: str, why: str) -> InputError:
            return InputError(None, f"setting {key}={getattr(self, key)!r}: {why}")

        if self.views not in (1, 2):
            raise bad("views", "use 2 (PA + lateral, +B) or 1 (PA only, +S)")
        if self.grid_size < 64 or self.grid_size % 32:
            raise bad("grid_size", "must be a multiple of 32 and at least 64")
        positive = ("width", "lr", "batch_size", "ndf")
        for key in positive:
            if not getattr(self, key) > 0:
                raise bad(key, "must be positive")
        for key in (
            "gan_weight",
            "recon_weight",
            "projection_weight",
            "epochs_constant",
            "epochs_decay",
            "threads",
            "checkpoint_every_steps",
            "keep_every_epochs",
            "max_steps",
            "val_every_epochs",
            "sample_every_epochs",
        ):
            if getattr(self, key) < 0:
                raise bad(key, "must not be negative")
        if self.epochs < 1:
            raise bad("epochs_constant", "epochs_constant + epochs_decay must be at least 1")
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise bad(key, "must be in [0, 1)")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise bad("device", "use auto, cpu or cuda[:index]")
        if self.tensorboard not in TENSORBOARD_MODES:
            raise bad("tensorboard", "use auto (when installed), on (required) or off")
        return self


RESUMABLE_KEYS = frozenset(
    {
        "data",
        "out",
        "cache",
        "device",
        "amp",
        "threads",
        "checkpoint_every_steps",
        "keep_every_epochs",
        "max_steps",
        "val_every_epochs",
        "sample_every_epochs",
        "progress",
        "tensorboard",
    }
)
"""Keys that may differ between a checkpoint's config and the resuming run (they do not change the
mathematics on one device; changing ``device``, ``amp`` or ``threads`` may change rounding)."""

_FIELDS = {f.name: f for f in fields(TrainConfig)}
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _coerce(key: str, value: Any, source: str) -> Any:
    """``value`` (JSON value, or a string from ``--set``) converted to the type of setting ``key``."""
    if key not in _FIELDS:
        raise InputError(None, f"{source}: unknown setting {key!r} (known: {', '.join(_FIELDS)})")
    kind = str(_FIELDS[key].type)
    text = isinstance(value, str)
    if kind.startswith("Optional"):
        if value is None or (text and value.lower() in ("none", "null", "")):
            return None
        return str(value)
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if text and value.lower() in _TRUE | _FALSE:
                return value.lower() in _TRUE
            raise ValueError
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value) if not text else int(value, 10)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind == "str":
            if not isinstance(value, str):
                raise ValueError
            return value
    except (TypeError, ValueError):
        pass
    raise InputError(None, f"{source}: setting {key}={value!r} is not a valid {kind}")


def load_config(path: Optional[PathLike] = None, overrides: Iterable[str] = ()) -> TrainConfig:
    """The defaults, updated by the JSON file ``path`` (flat object of settings), then by ``key=value`` overrides."""
    values: Dict[str, Any] = {}
    if path is not None:
        file = Path(os.fspath(path))
        values = {k: _coerce(k, v, str(file)) for k, v in read_settings(file).items()}
    values.update(parse_overrides(overrides))
    return replace(TrainConfig(), **values).validate()


def parse_overrides(overrides: Iterable[str]) -> Dict[str, Any]:
    """``["lr=1e-4", "views=1"]`` -> ``{"lr": 0.0001, "views": 1}`` (InputError for a malformed item)."""
    out: Dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(None, f"--set {item!r}: write key=value")
        out[key.strip()] = _coerce(key.strip(), value.strip(), f"--set {item}")
    return out


def config_from_dict(values: Mapping[str, Any], source: str = "checkpoint") -> TrainConfig:
    """A config from a saved dict (a checkpoint's), ignoring keys this version does not know."""
    return replace(TrainConfig(), **{k: _coerce(k, v, source) for k, v in values.items() if k in _FIELDS})


def config_differences(a: TrainConfig, b: TrainConfig, ignore: Sequence[str] = ()) -> Dict[str, tuple]:
    """``{key: (a value, b value)}`` for every key that differs, except ``ignore``."""
    da, db = a.to_dict(), b.to_dict()
    return {k: (da[k], db[k]) for k in da if k not in ignore and da[k] != db[k]}


ConfigLike = Union[TrainConfig, Mapping[str, Any]]


def _check_default_file() -> None:
    """Refuse (at import) a default file with unknown settings or values of the wrong type."""
    unknown = sorted(set(_DEFAULTS) - set(_FIELDS))
    if unknown:
        raise RuntimeError(f"{DEFAULT_CONFIG}: unknown setting(s) {', '.join(unknown)}")
    for key, value in _DEFAULTS.items():
        coerced = _coerce(key, value, str(DEFAULT_CONFIG))
        if type(coerced) is not type(value):
            raise RuntimeError(f"{DEFAULT_CONFIG}: setting {key}={value!r} is not a {_FIELDS[key].type}")
    TrainConfig().validate()


_check_default_file()
