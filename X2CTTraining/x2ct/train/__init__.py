"""Training loops: :func:`train_generator` (X2CT-GAN +B/+S) driven by a :class:`TrainConfig` (docs/training.md)."""

from __future__ import annotations

from .config import DEFAULT_CONFIG, TrainConfig, load_config, parse_overrides
from .generator import TrainResult, generator_from_checkpoint, load_checkpoint, train_generator

__all__ = [
    "DEFAULT_CONFIG",
    "TrainConfig",
    "TrainResult",
    "generator_from_checkpoint",
    "load_checkpoint",
    "load_config",
    "parse_overrides",
    "train_generator",
]
