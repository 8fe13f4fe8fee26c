"""Evaluation of synthetic CTs against ground truth under the declared metric protocol.

See ``docs/metric_protocol.md``; :mod:`x2ct.evaluate.image_metrics` implements it.
"""

from __future__ import annotations

from .image_metrics import (
    METRIC_NAMES,
    PROTOCOL_DESCRIPTION,
    PROTOCOL_VERSION,
    case_metrics,
    default_body_mask,
    honest_metrics,
    official_metrics,
    summarize,
    write_metrics,
)

__all__ = [
    "METRIC_NAMES",
    "PROTOCOL_DESCRIPTION",
    "PROTOCOL_VERSION",
    "case_metrics",
    "default_body_mask",
    "honest_metrics",
    "official_metrics",
    "summarize",
    "write_metrics",
]
