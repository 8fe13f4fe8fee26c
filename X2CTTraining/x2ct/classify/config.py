"""Settings of a classifier training run: one flat JSON file, overridable with ``--set key=value``.

The same design as the generator's (:mod:`x2ct.train.config`): ``x2ct/train/classifier_default.json``
is the single source of the default values (checked at import), then a config file, then
``key=value`` overrides; :func:`x2ct.train.config.config_differences` tells which settings forbid a
resume. Defaults follow the seed (synthetic-CT TB classification): Adam, lr 1e-4, 50 epochs with the
best validation epoch kept, random rotation augmentation. docs/classifiers.md lists every key.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional

from ..errors import InputError, PathLike
from ..train.config import TENSORBOARD_MODES, read_settings

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "train" / "classifier_default.json"
"""The default config file; the only place the default values are written (as for the generator)."""

_DEFAULTS = read_settings(DEFAULT_CONFIG)


def _default(key: str) -> Any:
    """The value of ``key`` in the default config file (a packaging error when it is missing)."""
    try:
        return _DEFAULTS[key]
    except KeyError:
        raise RuntimeError(f"{DEFAULT_CONFIG}: the default of setting {key!r} is missing") from None


@dataclass(frozen=True)
class ClassifierConfig:
    """Every setting of ``x2ct train-classifier``; see docs/classifiers.md for the meaning of each key.

    Default values come from :data:`DEFAULT_CONFIG`; only the names and types are declared here.
    """

    # data and run folder
    data: Optional[str] = _default("data")
    out: Optional[str] = _default("out")
    labels: Optional[str] = _default("labels")
    task: str = _default("task")
    ct_source: str = _default("ct_source")
    train_split: str = _default("train_split")
    val_split: str = _default("val_split")
    cache: bool = _default("cache")
    # model
    arch: str = _default("arch")
    arch_options: Dict[str, Any] = field(default_factory=lambda: dict(_default("arch_options")))
    inputs: Optional[str] = _default("inputs")
    size_xray: int = _default("size_xray")
    size_ct: int = _default("size_ct")
    # optimisation
    lr: float = _default("lr")
    beta1: float = _default("beta1")
    beta2: float = _default("beta2")
    weight_decay: float = _default("weight_decay")
    epochs: int = _default("epochs")
    batch_size: int = _default("batch_size")
    class_weights: bool = _default("class_weights")
    augment: bool = _default("augment")
    rotation_degrees: float = _default("rotation_degrees")
    seed: int = _default("seed")
    # execution
    device: str = _default("device")
    threads: int = _default("threads")
    # bookkeeping
    checkpoint_every_steps: int = _default("checkpoint_every_steps")
    max_steps: int = _default("max_steps")
    progress: bool = _default("progress")
    tensorboard: str = _default("tensorboard")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def input_list(self) -> Optional[tuple]:
        """``inputs`` as a tuple of keys, or None to take the architecture's own."""
        return tuple(k.strip() for k in self.inputs.split(",") if k.strip()) if self.inputs else None

    def validate(self) -> ClassifierConfig:
        """Raise :class:`InputError` (one line naming the key) for an impossible value; returns self."""

        def bad(key: str, why: str) -> InputError:
            return InputError(None, f"setting {key}={getattr(self, key)!r}: {why}")

        for key in ("lr", "batch_size", "epochs", "size_xray", "size_ct"):
            if not getattr(self, key) > 0:
                raise bad(key, "must be positive")
        if self.batch_size < 2:
            raise bad("batch_size", "must be at least 2 (batch normalisation in training mode)")
        for key in ("weight_decay", "rotation_degrees", "threads", "checkpoint_every_steps", "max_steps"):
            if getattr(self, key) < 0:
                raise bad(key, "must not be negative")
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise bad(key, "must be in [0, 1)")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise bad("device", "use auto, cpu or cuda[:index]")
        if not isinstance(self.arch_options, dict):
            raise bad("arch_options", "must be a JSON object of architecture options")
        if self.tensorboard not in TENSORBOARD_MODES:
            raise bad("tensorboard", "use auto (when installed), on (required) or off")
        return self


RESUMABLE_KEYS = frozenset(
    {
        "data",
        "out",
        "labels",
        "ct_source",
        "cache",
        "device",
        "threads",
        "checkpoint_every_steps",
        "max_steps",
        "progress",
    }
)
"""Keys that may differ between a checkpoint's config and the resuming run (the labels and CT source are
checked through the case lists and contents they give, not their paths)."""

_FIELDS = {f.name: f for f in fields(ClassifierConfig)}
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _coerce(key: str, value: Any, source: str) -> Any:
    """``value`` (JSON value, or a string from ``--set``) converted to the type of setting ``key``."""
    if key not in _FIELDS:
        raise InputError(None, f"{source}: unknown setting {key!r} (known: {', '.join(_FIELDS)})")
    kind = str(_FIELDS[key].type)
    text = isinstance(value, str)
    try:
        if kind.startswith("Optional"):
            return None if value is None or (text and value.lower() in ("none", "null", "")) else str(value)
        if kind.startswith("Dict"):
            parsed = json.loads(value) if text else value
            if isinstance(parsed, dict):
                return parsed
        elif kind == "bool":
            if isinstance(value, bool):
                return value
            if text and value.lower() in _TRUE | _FALSE:
                return value.lower() in _TRUE
        elif kind == "int":
            if not isinstance(value, bool) and not (isinstance(value, float) and not value.is_integer()):
                return int(value, 10) if text else int(value)
        elif kind == "float":
            if not isinstance(value, bool):
                return float(value)
        elif kind == "str" and isinstance(value, str):
            return value
    except (TypeError, ValueError):
        pass
    raise InputError(None, f"{source}: setting {key}={value!r} is not a valid {kind.split('[')[0].lower()}")


def parse_overrides(overrides: Iterable[str]) -> Dict[str, Any]:
    """``["lr=1e-3", "arch=cnn3d"]`` -> ``{"lr": 0.001, "arch": "cnn3d"}`` (InputError for a malformed item)."""
    out: Dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(None, f"--set {item!r}: write key=value")
        out[key.strip()] = _coerce(key.strip(), value.strip(), f"--set {item}")
    return out


def load_config(path: Optional[PathLike] = None, overrides: Iterable[str] = ()) -> ClassifierConfig:
    """The defaults, updated by the JSON file ``path`` (flat object of settings), then by ``key=value`` overrides."""
    values: Dict[str, Any] = {}
    if path is not None:
        file = Path(os.fspath(path))
        values = {k: _coerce(k, v, str(file)) for k, v in read_settings(file).items()}
    values.update(parse_overrides(overrides))
    return replace(ClassifierConfig(), **values).validate()


def config_from_dict(values: Mapping[str, Any], source: str = "checkpoint") -> ClassifierConfig:
    """A config from a saved dict (a checkpoint's), ignoring keys this version does not know."""
    return replace(ClassifierConfig(), **{k: _coerce(k, v, source) for k, v in values.items() if k in _FIELDS})


def _check_default_file() -> None:
    """Refuse (at import) a default file with unknown settings or values of the wrong type."""
    unknown = sorted(set(_DEFAULTS) - set(_FIELDS))
    if unknown:
        raise RuntimeError(f"{DEFAULT_CONFIG}: unknown setting(s) {', '.join(unknown)}")
    for key, value in _DEFAULTS.items():
        coerced = _coerce(key, value, str(DEFAULT_CONFIG))
        if type(coerced) is not type(value):
            raise RuntimeError(f"{DEFAULT_CONFIG}: setting {key}={value!r} is not a {_FIELDS[key].type}")
    ClassifierConfig().validate()


_check_default_file()
