"""Settings of a training run: a frozen dataclass whose defaults come from one flat JSON file.

The generator (:mod:`x2ct.train.config`) and the classifier (:mod:`x2ct.classify.config`) declare their
settings the same way: a :class:`DefaultSettings` reads the default file, the dataclass fields take
their defaults from it (``lr: float = DEFAULTS["lr"]``: names and types only, never a value), and a
:class:`Settings` built on the finished dataclass checks the file at import (a missing, unknown or
mistyped setting is a packaging error) and parses the user's settings: the defaults, then a config
file, then ``--set key=value`` overrides, each value coerced to its field's type.

Field types understood: ``bool`` (true/false, 1/0, yes/no, on/off), ``int``, ``float``, ``str``,
``Optional[str]`` (none, null or empty -> None) and ``Dict[str, Any]`` (a JSON object; after ``--set``
written as JSON text).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Dict, Generic, Iterable, Mapping, Optional, Type, TypeVar

from ..errors import InputError, PathLike
from ..userfiles import read_text

TENSORBOARD_MODES = ("auto", "on", "off")
"""``tensorboard`` setting: use it when installed / require it / never."""

Config = TypeVar("Config")

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def read_settings(file: Path) -> Dict[str, Any]:
    """The settings of a flat JSON config file (UTF-8, :func:`x2ct.userfiles.read_text`), minus keys starting with
    ``_`` (comments); InputError if unreadable."""
    if not file.exists():
        raise InputError(file, "config file not found")
    try:
        document = json.loads(read_text(file))
    except json.JSONDecodeError as err:
        raise InputError(file, f"not a readable JSON config ({' '.join(str(err).split())})") from None
    if not isinstance(document, dict):
        raise InputError(file, "a config file must hold one JSON object of settings")
    return {k: v for k, v in document.items() if not k.startswith("_")}


class DefaultSettings:
    """The default config file of one kind of run; ``defaults[key]`` is a field default of its dataclass."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.values = read_settings(file)

    def __getitem__(self, key: str) -> Any:
        """The default of setting ``key`` (RuntimeError, a packaging error, when the file lacks it)."""
        try:
            return self.values[key]
        except KeyError:
            raise RuntimeError(f"{self.file}: the default of setting {key!r} is missing") from None


class Settings(Generic[Config]):
    """Parsing for the settings dataclass ``kind``, whose field defaults come from ``defaults``.

    Construction checks the default file: no setting the dataclass lacks, every value of its field's
    type, and the defaults pass ``kind().validate()``. ``resumable``: the settings that may differ
    between a run's checkpoint and the call that resumes it.
    """

    def __init__(self, kind: Type[Config], defaults: DefaultSettings, resumable: Iterable[str]) -> None:
        self.kind = kind
        self.default_file = defaults.file
        self.resumable = frozenset(resumable)
        self._fields = {f.name: f for f in fields(kind)}  # type: ignore[arg-type]
        unknown = sorted(set(defaults.values) - set(self._fields))
        if unknown:
            raise RuntimeError(f"{defaults.file}: unknown setting(s) {', '.join(unknown)}")
        for key, value in defaults.values.items():
            if type(self.coerce(key, value, str(defaults.file))) is not type(value):
                raise RuntimeError(f"{defaults.file}: setting {key}={value!r} is not a {self._fields[key].type}")
        kind().validate()  # type: ignore[attr-defined]

    def coerce(self, key: str, value: Any, source: str) -> Any:
        """``value`` (JSON value, or a string from ``--set``) converted to the type of setting ``key``."""
        if key not in self._fields:
            raise InputError(None, f"{source}: unknown setting {key!r} (known: {', '.join(self._fields)})")
        kind = str(self._fields[key].type)
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

    def parse_overrides(self, overrides: Iterable[str]) -> Dict[str, Any]:
        """``["lr=1e-4", "seed=2"]`` -> ``{"lr": 0.0001, "seed": 2}`` (InputError for a malformed item)."""
        out: Dict[str, Any] = {}
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise InputError(None, f"--set {item!r}: write key=value")
            out[key.strip()] = self.coerce(key.strip(), value.strip(), f"--set {item}")
        return out

    def load(self, path: Optional[PathLike] = None, overrides: Iterable[str] = ()) -> Config:
        """The defaults, updated by the JSON file ``path`` (flat object of settings), then by ``key=value``
        overrides; validated."""
        values: Dict[str, Any] = {}
        if path is not None:
            file = Path(os.fspath(path))
            values = {k: self.coerce(k, v, str(file)) for k, v in read_settings(file).items()}
        values.update(self.parse_overrides(overrides))
        return replace(self.kind(), **values).validate()  # type: ignore[type-var]

    def from_dict(self, values: Mapping[str, Any], source: str = "checkpoint") -> Config:
        """Settings from a saved dict (a checkpoint's), ignoring keys this version does not know."""
        known = {k: self.coerce(k, v, source) for k, v in values.items() if k in self._fields}
        return replace(self.kind(), **known)  # type: ignore[type-var]

    def check_resume(self, saved: Mapping[str, Any], config: Config, run: Path) -> None:
        """InputError naming the first setting, other than the resumable ones, in which ``config`` differs from
        ``saved`` (the settings stored in the checkpoint of the run folder ``run``)."""
        old, new = self.from_dict(saved).to_dict(), config.to_dict()  # type: ignore[attr-defined]
        for key in old:
            if key not in self.resumable and old[key] != new[key]:
                raise InputError(
                    run,
                    f"holds a run with {key}={old[key]!r}, not {new[key]!r}; resume with the same settings "
                    "or choose a new run folder",
                )


ENGINE_COUNTS = ("threads", "checkpoint_every_steps", "keep_every_epochs", "max_steps", "max_minutes",
                 "val_every_epochs")  # fmt: skip
"""Settings of the training engine (x2ct.train.engine.RunSettings) that count something and may be 0 (= off)."""


def check_shared_settings(config: Any) -> None:
    """The rules of the settings every kind of run has: ``beta1``, ``beta2`` in [0, 1) (Adam), the engine's
    counts (:data:`ENGINE_COUNTS`) not negative, ``device`` auto, cpu or cuda[:index], ``tensorboard`` one of
    :data:`TENSORBOARD_MODES`. InputError naming the key."""
    for key in ENGINE_COUNTS:
        if getattr(config, key) < 0:
            raise setting_error(config, key, "must not be negative")
    for key in ("beta1", "beta2"):
        if not 0 <= getattr(config, key) < 1:
            raise setting_error(config, key, "must be in [0, 1)")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", config.device):
        raise setting_error(config, "device", "use auto, cpu or cuda[:index]")
    if config.tensorboard not in TENSORBOARD_MODES:
        raise setting_error(config, "tensorboard", "use auto (when installed), on (required) or off")


def setting_error(config: Any, key: str, why: str) -> InputError:
    """The one-line error for an impossible value of setting ``key``."""
    return InputError(None, f"setting {key}={getattr(config, key)!r}: {why}")
