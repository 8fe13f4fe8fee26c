"""Generator and discriminator losses: the X2CT-GAN ones, as resolved from the official configs (kylekma/X2CT
``3DGAN/experiment/*/d2_*2500.yml``), and two more (MAE, as XprospeCT trains; a cone-beam re-projection loss).

Generator:      gan · LSGAN(D(x, G(x)) -> 1)  +  recon · MSE(G(x), ct)  +  projection · mean_axes L1(proj G(x), proj ct)
                +  l1 · MAE(G(x), ct)  +  reprojection · mean_views L1(minmax DRR(G(x)), x_view)
                +  lesion · MAE over the lesion voxels of the training cases (masks of the synthetic benchmark)
Discriminator:  gan · (MSE(D(x, ct), 1) + MSE(D(x, G(x)), 0))        (no ½; no image pool)

Official weights: gan 0.1, recon 10, projection 10 (i.e. 10/3 per axis), l1 0, reprojection 0, lesion 0.
The lesion term is a task-aware loss in the spirit of X-ray2CTPA's classifier loss: where the training
data mark lesions, errors there count as much as the errors of the whole volume, although lesions are a
thousandth of it. ``x``
is the radiograph(s) the conditional discriminator also sees; ``proj`` is the orthographic mean
projection over D, H and W of the volume's absolute value (official ``output_map``); ``DRR`` is the
cone-beam projector of :mod:`x2ct.drr` in the geometry of the training radiographs. All volumes are
(N, 1, D, H, W) on the [0, 1] learning scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .drr import mean_projections, normalize, project
from .drr_geometry import DRRGeometry
from .geometry import EXTENT_MM
from .intensity import unit_to_hu_unclamped

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


def absolute(fake: Tensor, real: Tensor) -> Tensor:
    """Voxel-wise mean absolute error (MAE), XprospeCT's reconstruction loss."""
    return F.l1_loss(fake, real)


def reprojection(fake: Tensor, radiographs: Mapping[str, Tensor], geometry: DRRGeometry) -> Tensor:
    """Mean over the views of the L1 distance between the cone-beam DRR of ``fake`` (unit scale -> HU ->
    attenuation, :func:`x2ct.drr.project` with the training ``geometry``, per-image min-max like the training
    DRRs) and that view's input radiograph (N, 1, S', S') in [0, 1]; ``radiographs`` by view name."""
    spacing = EXTENT_MM / fake.shape[-1]
    hu = unit_to_hu_unclamped(fake)
    distances = []
    for view, image in radiographs.items():
        drr = normalize(project(hu, spacing, view, image.shape[-1], geometry, units="hu"), "minmax")
        distances.append(F.l1_loss(drr, image))
    return torch.stack(distances).mean()


@dataclass(frozen=True)
class LossWeights:
    """Weights of the generator and discriminator losses; the defaults are the official ones."""

    gan: float = GAN_WEIGHT
    recon: float = RECON_WEIGHT
    projection: float = PROJECTION_WEIGHT
    l1: float = 0.0
    reprojection: float = 0.0
    lesion: float = 0.0


def lesion_absolute(fake: Tensor, real: Tensor, lesions: Tensor) -> Tensor:
    """Mean absolute error over the voxels of the ``lesions`` mask (N, 1, D, H, W) 0/1 of the batch and the voxels
    next to them (the mask dilated by one voxel, so that a blurred lesion costs as much as a missing one); 0 when
    the batch holds no lesion voxel."""
    region = F.max_pool3d(lesions, kernel_size=3, stride=1, padding=1)
    return ((fake - real).abs() * region).sum() / region.sum().clamp_min(1.0)


def generator_loss(
    d_fake: Optional[Tensor],
    fake: Tensor,
    real: Tensor,
    w: LossWeights = LossWeights(),
    radiographs: Optional[Mapping[str, Tensor]] = None,
    geometry: Optional[DRRGeometry] = None,
    lesions: Optional[Tensor] = None,
) -> Dict[str, Tensor]:
    """Generator loss terms. ``d_fake``: D's output on the generated volume (None without a discriminator).
    ``radiographs`` (by view name) and the DRR ``geometry`` are needed when ``w.reprojection`` is set, the
    training cases' ``lesions`` masks when ``w.lesion`` is. The official terms are always there; ``g_l1``,
    ``g_reproj`` and ``g_lesion`` when weighted. Key ``g_total`` is what to backprop."""
    terms = {} if d_fake is None else {"g_gan": lsgan(d_fake, True)}
    terms.update(g_recon=reconstruction(fake, real), g_proj=projection(fake, real))
    if w.l1:
        terms["g_l1"] = absolute(fake, real)
    if w.reprojection:
        if radiographs is None or geometry is None:
            raise ValueError("the re-projection loss needs the input radiographs and the DRR geometry")
        terms["g_reproj"] = reprojection(fake, radiographs, geometry)
    if w.lesion:
        if lesions is None:
            raise ValueError("the lesion loss needs the training cases' lesion masks")
        terms["g_lesion"] = lesion_absolute(fake, real, lesions)
    weight = {"g_gan": w.gan, "g_recon": w.recon, "g_proj": w.projection, "g_l1": w.l1, "g_reproj": w.reprojection,
              "g_lesion": w.lesion}  # fmt: skip
    terms["g_total"] = sum(weight[name] * value for name, value in terms.items())  # type: ignore[assignment]
    return terms


def discriminator_loss(d_real: Tensor, d_fake: Tensor, w: LossWeights = LossWeights()) -> Dict[str, Tensor]:
    """Discriminator loss terms; ``d_fake`` must come from a detached generated volume. Key ``d_total`` to backprop."""
    terms = {"d_real": lsgan(d_real, True), "d_fake": lsgan(d_fake, False)}
    terms["d_total"] = w.gan * (terms["d_real"] + terms["d_fake"])
    return terms
