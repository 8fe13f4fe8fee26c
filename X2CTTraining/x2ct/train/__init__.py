"""Training: the one engine (:mod:`.engine`) and the generator trainer (:func:`train_generator`, docs/training.md).

The classifier trainer is :mod:`x2ct.classify.train`; both are :class:`~x2ct.train.engine.Trainer` s run by
:func:`~x2ct.train.engine.run_training`, with settings parsed by :mod:`.settings`.
"""

from __future__ import annotations

from .config import DEFAULT_CONFIG, TrainConfig, load_config, parse_overrides
from .engine import TrainResult, run_training
from .generator import generator_from_checkpoint, train_generator

__all__ = [
    "DEFAULT_CONFIG",
    "TrainConfig",
    "TrainResult",
    "generator_from_checkpoint",
    "load_config",
    "parse_overrides",
    "run_training",
    "train_generator",
]
