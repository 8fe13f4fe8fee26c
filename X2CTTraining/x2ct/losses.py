"""X2CT-GAN losses, as resolved from the official configs (kylekma/X2CT ``3DGAN/experiment/*/d2_*2500.yml``).

Generator:      0.1 · LSGAN(D(x, G(x)) -> 1)  +  10 · MSE(G(x), ct)  +  (10/3) · Σ_axes L1(proj G(x), proj ct)
Discriminator:  0.1 · (MSE(D(x, ct), 1) + MSE(D(x, G(x)), 0))        (no ½; no image pool)

``x`` is the radiograph(s) the conditional discriminator also sees; ``proj`` is the orthographic
mean projection over D, H and W of the volume's absolute value (official ``output_map``). All
volumes are (N, 1, D, H, W) on the [0, 1] learning scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor

from .drr import mean_projections

GAN_WEIGHT = 0.1
RECON_WEIGHT = 10.0
PROJECTION_WEIGHT = 10.0
"""Weight of the *mean* of the three projection L1 losses, i.e. 10/3 on each."""


def lsgan(prediction: Tensor, real: bool) -> Tensor:
    """Least-squares GAN loss: mean (prediction - target)², target 1 for real and 0 for fake."""
    target = torch.ones_like(prediction) if real else torch.zeros_like(prediction)
    return F.mse_loss(prediction, target)


def reconstruction(fake: Tensor, real: Tensor) -> Tensor:
    """Voxel-wise MSE between the generated and the real volume (official ``idt`` loss, mean reduction)."""
    return F.mse_loss(fake, real)


def projection(fake: Tensor, real: Tensor) -> Tensor:
    """Mean over the three axes of the L1 distance between orthographic mean projections of |volume|."""
    fake_maps, real_maps = mean_projections(fake.abs()), mean_projections(real.abs())
    return sum(F.l1_loss(fake_maps[k], real_maps[k]) for k in fake_maps) / len(fake_maps)


@dataclass(frozen=True)
class LossWeights:
    """Weights of the generator and discriminator losses; the defaults are the official ones."""

    gan: float = GAN_WEIGHT
    recon: float = RECON_WEIGHT
    projection: float = PROJECTION_WEIGHT


def generator_loss(d_fake: Tensor, fake: Tensor, real: Tensor, w: LossWeights = LossWeights()) -> Dict[str, Tensor]:
    """Generator loss terms; ``d_fake`` is D's output on the generated volume. Key ``g_total`` is what to backprop."""
    terms = {"g_gan": lsgan(d_fake, True), "g_recon": reconstruction(fake, real), "g_proj": projection(fake, real)}
    terms["g_total"] = w.gan * terms["g_gan"] + w.recon * terms["g_recon"] + w.projection * terms["g_proj"]
    return terms


def discriminator_loss(d_real: Tensor, d_fake: Tensor, w: LossWeights = LossWeights()) -> Dict[str, Tensor]:
    """Discriminator loss terms; ``d_fake`` must come from a detached generated volume. Key ``d_total`` to backprop."""
    terms = {"d_real": lsgan(d_real, True), "d_fake": lsgan(d_fake, False)}
    terms["d_total"] = w.gan * (terms["d_real"] + terms["d_fake"])
    return terms
