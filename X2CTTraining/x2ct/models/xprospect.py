"""The XprospeCT generator family (Paulson et al., "XprospeCT: CT Volume Generation from Paired X-Rays"),
a template baseline, and the back-projection they share.

Read top to bottom:

1. :class:`BackProjector`: one view's radiograph spread back into the canonical S³ grid along the rays of
   the cone-beam geometry the model's training DRRs were rendered with. It is the exact adjoint
   ``Pᵀ`` of :func:`x2ct.drr.project` (obtained by automatic differentiation of the linear
   projector), normalised by ``Pᵀ1``: each voxel gets the ray-length-weighted mean of the detector
   values whose rays cross it, so values stay on the radiograph's [0, 1] scale; voxels no ray crosses
   get 0. With two views a structure seen on both lands where its rays meet.
2. :class:`BackProjectionUNet` (``bp_unet``): the back-projected views (and, optionally, the mean
   training CT as a prior channel) into a 3D U-Net (MONAI ``UNet``). With the prior the network
   predicts the difference to the mean CT, so it starts from anatomy and learns what the radiographs
   change; the back-projected differences between each radiograph and the prior's DRR (and their
   product over the two views) point it at where this case departs from the average one. This is the
   paper's "back projection injection" with the projector made exact and the network kept small, so
   that it learns in CPU-minutes.
3. :class:`DenseUNetGenerator` (``dual_unet``): the paper's main variants: a 2D U-Net encoder per view,
   a dense bottleneck (64 or 512 units, "64-Dense" / "512-Dense"), a 3D decoder per view whose skip
   connections are the encoder's 2D features repeated along that view's rays, the views' decoded
   features averaged, SELU activations throughout (self-normalising, no normalisation layers).
4. :class:`TemplateGenerator` (``template``): the mean training CT whatever the input: the baseline every
   generator must beat to have learned anything from the radiographs.

Every generator here has the interface of the X2CT-GAN ones (:mod:`x2ct.models.x2ct_gan`):
``forward(pa, lateral=None)`` takes (N, 1, S, S) radiographs in [0, 1] (rows superior->inferior; PA
columns patient right->left, lateral columns anterior->posterior, :mod:`x2ct.views`) and returns
(N, 1, S, S, S) on the unit scale of :mod:`x2ct.intensity` on the canonical axes of
:mod:`x2ct.geometry`, clamped to [0, 1] in eval mode; ``architecture``, ``views`` and ``config`` (a
frozen dataclass with ``grid_size`` and ``to_dict()``) describe it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..drr import normalize, project
from ..drr_geometry import DRRGeometry
from ..geometry import EXTENT_MM, GRID_SIZES
from ..intensity import unit_to_hu_unclamped
from ..views import LATERAL, PA


def _check_common(grid_size: int, views: int) -> None:
    if grid_size not in GRID_SIZES:
        raise ValueError(f"grid_size must be one of {GRID_SIZES}, got {grid_size}")
    if views not in (1, 2):
        raise ValueError(f"views must be 1 (PA) or 2 (PA + lateral), got {views}")


def _view_names(views: int) -> Tuple[str, ...]:
    return (PA,) if views == 1 else (PA, LATERAL)


class _Generator(nn.Module):
    """What every generator of this module shares: the view list, metadata slot and eval-mode clamping."""

    architecture = ""
    config: Any

    def __init__(self) -> None:
        super().__init__()
        self.metadata: Optional[Any] = None
        """The model's :class:`x2ct.models.metadata.ModelMetadata`, set by :func:`x2ct.models.load_generator`."""

    @property
    def views(self) -> Tuple[str, ...]:
        return _view_names(self.config.views)

    def _inputs(self, pa: Tensor, lateral: Optional[Tensor]) -> List[Tensor]:
        if (lateral is None) != (self.config.views == 1):
            raise ValueError(f"{self.architecture} with views={self.config.views} takes "
                             f"{'a PA only' if self.config.views == 1 else 'a PA and a lateral'}")  # fmt: skip
        return [pa] if lateral is None else [pa, lateral]

    def _finish(self, volume: Tensor) -> Tensor:
        return volume if self.training else volume.clamp(0.0, 1.0)


# ------------------------------------------------------------------------------------------ back-projection


class BackProjector(nn.Module):
    """Normalised cone-beam back-projection ``Pᵀy / Pᵀ1`` of a ``view`` radiograph (N, 1, S', S') into the
    canonical grid of ``grid_size``³ voxels (320 mm cube, :mod:`x2ct.geometry`), for the DRR ``geometry``
    (mm) the model's inputs follow (:class:`x2ct.drr_geometry.DRRGeometry`: the radiograph's S' pixels
    span the detector). No parameters; ``Pᵀ1`` is computed once per device and dtype."""

    def __init__(self, view: str, grid_size: int, geometry: DRRGeometry) -> None:
        super().__init__()
        self.view, self.grid_size, self.geometry = view, int(grid_size), geometry
        self.spacing_mm = EXTENT_MM / self.grid_size
        self._weights: Dict[Tuple[str, torch.dtype, int], Tensor] = {}

    def adjoint(self, images: Tensor) -> Tensor:
        """``Pᵀ images``: (N, 1, S', S') -> (N, 1, S, S, S), the exact adjoint of :func:`x2ct.drr.project` (line
        integrals of attenuation, ``units="mu"``). Not differentiable with respect to ``images``."""
        n, _, size, _ = images.shape
        shape = (n, 1, self.grid_size, self.grid_size, self.grid_size)
        # Autograd gives the adjoint, also when the caller runs under no_grad or inference_mode.
        with torch.inference_mode(False), torch.enable_grad():
            volume = torch.zeros(shape, device=images.device, dtype=images.dtype, requires_grad=True)
            projection = project(volume, self.spacing_mm, self.view, size, self.geometry, units="mu")
            (back,) = torch.autograd.grad(projection, volume, grad_outputs=images.detach().clone())
        return back

    def ray_weight(self, size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """``Pᵀ1`` for radiographs of ``size`` pixels: (1, 1, S, S, S), the summed ray length through each voxel."""
        key = (str(device), dtype, int(size))
        if key not in self._weights:
            ones = torch.ones(1, 1, size, size, device=device, dtype=dtype)
            self._weights[key] = self.adjoint(ones)
        return self._weights[key]

    def forward(self, images: Tensor) -> Tensor:
        weight = self.ray_weight(images.shape[-1], images.device, images.dtype)
        covered = weight > 1e-6 * weight.max()
        return torch.where(covered, self.adjoint(images) / weight.clamp_min(1e-12), torch.zeros_like(weight))


# ---------------------------------------------------------------------------------------------- bp_unet


@dataclass(frozen=True)
class BackProjectionConfig:
    """``bp_unet``: ``channels`` of the U-Net levels (each level halves the grid), ``res_units`` residual
    units per level, ``prior``: the mean training CT as an input channel and the base the network adds
    to; ``residual``: also the back-projection of each radiograph minus the DRR of the prior (where this
    case differs from the average one) and, with two views, the product of those (large only where both
    views see a difference); the DRR geometry (mm) of the training radiographs, which the back-projection
    follows."""

    grid_size: int = 128
    views: int = 2
    channels: Tuple[int, ...] = (16, 32, 64, 128)
    res_units: int = 2
    prior: bool = True
    residual: bool = True
    sad_mm: float = DRRGeometry.sad_mm
    sid_mm: float = DRRGeometry.sid_mm
    detector_mm: float = DRRGeometry.detector_mm

    def __post_init__(self) -> None:
        _check_common(self.grid_size, self.views)
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if len(self.channels) < 2 or min(self.channels) < 1:
            raise ValueError(f"channels needs two or more positive counts, got {self.channels}")
        if self.grid_size % 2 ** (len(self.channels) - 1):
            raise ValueError(f"grid_size {self.grid_size} cannot be halved {len(self.channels) - 1} times")
        DRRGeometry(self.sad_mm, self.sid_mm, self.detector_mm)  # raises for an impossible geometry
        if self.residual and not self.prior:
            raise ValueError("residual channels need the prior (prior=true)")

    @property
    def geometry(self) -> DRRGeometry:
        return DRRGeometry(self.sad_mm, self.sid_mm, self.detector_mm)

    def to_dict(self) -> Dict[str, Any]:
        return {**asdict(self), "channels": list(self.channels)}


class BackProjectionUNet(_Generator):
    """Back-projected radiographs (+ the mean CT) through a 3D U-Net (module doc, item 2)."""

    architecture = "bp_unet"

    def __init__(self, config: Optional[BackProjectionConfig] = None) -> None:
        super().__init__()
        from monai.networks.nets import UNet

        self.config = config = config or BackProjectionConfig()
        self.projectors = nn.ModuleList(BackProjector(v, config.grid_size, config.geometry) for v in self.views)
        size = config.grid_size
        self.register_buffer("prior", torch.zeros(1, 1, size, size, size) if config.prior else None)
        residual = len(self.views) + int(len(self.views) == 2) if config.residual else 0
        self.unet = UNet(
            spatial_dims=3,
            in_channels=len(self.views) + int(config.prior) + residual,
            out_channels=1,
            channels=config.channels,
            strides=(2,) * (len(config.channels) - 1),
            num_res_units=config.res_units,
        )

    def set_prior(self, mean_ct: Tensor) -> None:
        """Store the mean training CT (S, S, S) on the unit scale as the prior."""
        if self.prior is None:
            raise ValueError("this bp_unet was built without a prior (prior=false)")
        self.prior.copy_(mean_ct.reshape(self.prior.shape).to(self.prior))

    def prior_drr(self, view: str, size: int) -> Tensor:
        """The prior's DRR in the training geometry, min-max normalised like the training radiographs, (1, 1,
        ``size``, ``size``) (no gradient)."""
        with torch.no_grad():
            hu = unit_to_hu_unclamped(self.prior)
            spacing = EXTENT_MM / self.config.grid_size
            return normalize(project(hu, spacing, view, size, self.config.geometry, units="hu"), "minmax")

    def forward(self, pa: Tensor, lateral: Optional[Tensor] = None) -> Tensor:
        images = self._inputs(pa, lateral)
        channels = [projector(image) for projector, image in zip(self.projectors, images)]
        if self.prior is None:
            return self._finish(self.unet(torch.cat(channels, dim=1)))
        if self.config.residual:
            differences = [
                projector(image - self.prior_drr(view, image.shape[-1]))
                for projector, image, view in zip(self.projectors, images, self.views)
            ]
            channels += differences + ([differences[0] * differences[1]] if len(differences) == 2 else [])
        prior = self.prior.expand(pa.shape[0], -1, -1, -1, -1)
        return self._finish(prior + self.unet(torch.cat([*channels, prior], dim=1)))


# --------------------------------------------------------------------------------------------- dual_unet


@dataclass(frozen=True)
class DenseUNetConfig:
    """``dual_unet``: ``levels`` down-samplings of the 2D encoders (channels ``base_channels`` doubling per
    level up to ``max_channels``), a dense bottleneck of ``dense_units`` (64 or 512 in the paper)."""

    grid_size: int = 128
    views: int = 2
    base_channels: int = 16
    max_channels: int = 128
    levels: int = 4
    dense_units: int = 512

    def __post_init__(self) -> None:
        _check_common(self.grid_size, self.views)
        if self.levels < 1 or self.grid_size % 2**self.levels:
            raise ValueError(f"grid_size {self.grid_size} cannot be halved levels={self.levels} times")
        for key in ("base_channels", "max_channels", "dense_units"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be positive")

    def channels(self, level: int) -> int:
        """Channels at ``level`` (0 = full resolution)."""
        return min(self.base_channels * 2**level, self.max_channels)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _selu_conv(conv: nn.Module) -> nn.Sequential:
    return nn.Sequential(conv, nn.SELU())


class _Branch(nn.Module):
    """One view: 2D encoder, dense bottleneck, 3D decoder with 2D skips repeated along the view's rays."""

    def __init__(self, config: DenseUNetConfig, ray_axis: int) -> None:
        super().__init__()
        self.ray_axis = ray_axis  # 3 (H) for a PA, 4 (W) for a lateral, in (N, C, D, H, W)
        c = config.channels
        self.stem = _selu_conv(nn.Conv2d(1, c(0), 3, padding=1))
        self.down = nn.ModuleList(
            nn.Sequential(_selu_conv(nn.Conv2d(c(k), c(k + 1), 3, stride=2, padding=1)),
                          _selu_conv(nn.Conv2d(c(k + 1), c(k + 1), 3, padding=1)))  # fmt: skip
            for k in range(config.levels)
        )
        self.bottom = config.grid_size // 2**config.levels
        top = c(config.levels)
        self.dense = nn.Sequential(
            nn.Flatten(),
            nn.Linear(top * self.bottom**2, config.dense_units),
            nn.SELU(),
            nn.Linear(config.dense_units, top * self.bottom**3),
            nn.SELU(),
        )
        self.up = nn.ModuleList(
            _selu_conv(nn.ConvTranspose3d(c(k + 1), c(k), 2, stride=2)) for k in reversed(range(config.levels))
        )
        self.merge = nn.ModuleList(
            _selu_conv(nn.Conv3d(2 * c(k), c(k), 3, padding=1)) for k in reversed(range(config.levels))
        )

    def _to_3d(self, features: Tensor, depth: int) -> Tensor:
        """(N, C, rows, cols) 2D features -> (N, C, D, H, W), repeated ``depth`` times along the view's rays
        (rows run along D; PA columns along W, lateral columns along H)."""
        n, c, rows, cols = features.shape
        if self.ray_axis == 3:
            return features.unsqueeze(3).expand(n, c, rows, depth, cols)
        return features.unsqueeze(4).expand(n, c, rows, cols, depth)

    def forward(self, image: Tensor) -> Tensor:
        skips = [self.stem(image)]
        for block in self.down:
            skips.append(block(skips[-1]))
        top = skips.pop()
        x = self.dense(top).view(image.shape[0], top.shape[1], self.bottom, self.bottom, self.bottom)
        for up, merge in zip(self.up, self.merge):
            x = up(x)
            x = merge(torch.cat([x, self._to_3d(skips.pop(), x.shape[-1])], dim=1))
        return x


class DenseUNetGenerator(_Generator):
    """Dual 2D U-Net encoders with a dense bottleneck, SELU (module doc, item 3)."""

    architecture = "dual_unet"

    def __init__(self, config: Optional[DenseUNetConfig] = None) -> None:
        super().__init__()
        self.config = config = config or DenseUNetConfig()
        self.branches = nn.ModuleList(_Branch(config, 3 if view == PA else 4) for view in self.views)
        self.head = nn.Conv3d(config.channels(0), 1, 1)
        for module in self.modules():  # LeCun normal initialisation, as SELU's self-normalisation assumes
            if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose3d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="linear")
                nn.init.zeros_(module.bias)

    def forward(self, pa: Tensor, lateral: Optional[Tensor] = None) -> Tensor:
        features = [branch(image) for branch, image in zip(self.branches, self._inputs(pa, lateral))]
        return self._finish(self.head(torch.stack(features).mean(dim=0)))


# ---------------------------------------------------------------------------------------------- template


@dataclass(frozen=True)
class TemplateConfig:
    """``template``: a fixed volume of ``grid_size``³, whatever the ``views`` given."""

    grid_size: int = 128
    views: int = 2

    def __post_init__(self) -> None:
        _check_common(self.grid_size, self.views)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


class TemplateGenerator(_Generator):
    """The mean training CT, whatever the radiographs (module doc, item 4)."""

    architecture = "template"

    def __init__(self, config: Optional[TemplateConfig] = None) -> None:
        super().__init__()
        self.config = config = config or TemplateConfig()
        size = config.grid_size
        self.register_buffer("prior", torch.zeros(1, 1, size, size, size))

    def set_prior(self, mean_ct: Tensor) -> None:
        """Store the mean training CT (S, S, S) on the unit scale."""
        self.prior.copy_(mean_ct.reshape(self.prior.shape).to(self.prior))

    def forward(self, pa: Tensor, lateral: Optional[Tensor] = None) -> Tensor:
        self._inputs(pa, lateral)
        return self._finish(self.prior.expand(pa.shape[0], -1, -1, -1, -1).clone())
