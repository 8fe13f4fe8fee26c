"""Training augmentation of classifier batches: a small random in-plane rotation (the synthetic-CT TB
classification paper's "random rotation augmentations"; Zunair et al. rotate CT volumes by small angles).

Each case of a batch gets one angle, uniform in [-max_degrees, max_degrees], applied to every input
of that case so that pixel-aligned inputs stay aligned:

* ``pa``: rotation of the image plane (rows S->I, columns R->L);
* ``ct``: the same rotation of every coronal (D, W) plane, i.e. about the anterior-posterior axis, so
  the CT turns with its PA (the concatenation models stack them voxel to voxel);
* ``lateral``: the same angle in its own plane (rows S->I, columns A->P).

Bilinear (trilinear) resampling; what comes in from outside is 0 (air on the unit scales). The angles
come from a generator seeded with (seed, step), so they do not touch the global RNG and a resumed run
draws the same angles as an uninterrupted one.
"""

from __future__ import annotations

import math
from typing import Dict, Mapping

import torch
import torch.nn.functional as F

from ..views import CT_KEY, LATERAL_KEY, PA_KEY


def rotation_angles(seed: int, step: int, n: int, max_degrees: float) -> torch.Tensor:
    """(n,) angles in radians for training step ``step`` (a pure function of its arguments)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step + 7_919)
    unit = torch.rand(n, generator=generator, dtype=torch.float64) * 2.0 - 1.0
    return (unit * math.radians(max_degrees)).float()


def _rotate_2d(image: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(image), list(image.shape), align_corners=False)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _rotate_coronal(volume: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # affine_grid's coordinates are (x, y, z) = (W, H, D); rotate (x, z) like the PA's (column, row).
    zero, one = torch.zeros_like(cos), torch.ones_like(cos)
    theta = torch.stack(
        [
            torch.stack([cos, zero, -sin, zero], 1),
            torch.stack([zero, one, zero, zero], 1),
            torch.stack([sin, zero, cos, zero], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta.to(volume), list(volume.shape), align_corners=False)
    return F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def rotate_batch(images: Mapping[str, torch.Tensor], angles: torch.Tensor) -> Dict[str, torch.Tensor]:
    """A copy of a batch's ``images`` (input key -> tensor) with ``pa``, ``lateral`` and ``ct`` rotated by
    ``angles`` (radians, one per case)."""
    cos, sin = torch.cos(angles), torch.sin(angles)
    out = dict(images)
    for key in (PA_KEY, LATERAL_KEY):
        if key in images:
            out[key] = _rotate_2d(images[key], cos, sin)
    if CT_KEY in images:
        out[CT_KEY] = _rotate_coronal(images[CT_KEY], cos, sin)
    return out
