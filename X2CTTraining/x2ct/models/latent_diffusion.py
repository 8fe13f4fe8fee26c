"""Latent diffusion generator after X-ray2CTPA (Cahan et al., "X-ray2CTPA: leveraging diffusion models to
enhance pulmonary embolism classification", code NoaCahan/X-ray2CTPA), with radiograph-consistent sampling.

Read top to bottom:

1. :class:`LatentDiffusionConfig`: every architecture setting (recorded as ``network.config`` in model.json).
2. :class:`SliceVAE`: a 2D KL autoencoder (MONAI ``AutoencoderKL``) applied to each axial slice (slices run
   along D), compressing in-plane by ``2 ** (len(vae_channels) - 1)`` (8 in the seed, 4 in the demo).
   ``encode_volume`` turns a (N, 1, D, H, W) unit-scale CT into (N, C, D', h, w) latents, ``decode_volume``
   goes back. The latents are multiplied by ``latent_scale`` (1 / the standard deviation of the training
   latents, set by the ``ldm`` training stage) so that the diffusion sees unit-variance data, as latent
   diffusion does (Rombach et al. 2022, "scale factor"; 0.18215 for the KL-f8 VAE the seed uses).
3. :class:`RadiographEncoder`: a small trainable 2D CNN per view -> a 512-d embedding per view (the
   seed's BiomedCLIP image embedding is 512-d); the views' embeddings are concatenated. An encoder trained
   elsewhere can be supplied as a safetensors file with a JSON architecture description
   (:func:`load_radiograph_encoder`; never a pickle).
4. :class:`DenoisingUNet`: a 3D U-Net over the latent volume that predicts the noise (epsilon; or x0 or v,
   ``prediction``), optionally with the radiographs' back-projections as extra input channels
   (:class:`GeometryPrior`, ``geometry_prior``), with a
   sinusoidal timestep embedding added in every residual block and the radiograph embedding, projected
   per block to ``cond_channels`` channels, **concatenated as constant extra channels to the input of every
   residual block at every resolution** (the seed: "concatenation of the CXR embedding throughout the 3D
   U-net layers"). MONAI's ``DiffusionModelUNet`` conditions through cross-attention or class embeddings
   only, so it cannot take this concatenation; this U-Net is ours and small.
5. :class:`NoiseSchedule`: linear (Ho et al. 2020) or cosine (Nichol & Dhariwal 2021; the seed's) betas
   over ``timesteps`` steps (1000 in the seed); ``q_sample``, the x0 prediction, and one DDPM (ancestral,
   posterior variance beta-tilde) or DDIM (Song et al. 2021, ``eta``) step.
6. LoRA (Hu et al. 2022): :func:`add_lora` wraps every Conv3d / Linear of the U-Net in :class:`LoRALayer`
   (frozen base + ``alpha / rank`` x up(down(x))); :func:`lora_parameter_count` counts the adapters.
7. :class:`LatentDiffusionGenerator` (``latent_diffusion``): ``forward(pa, lateral=None)`` is one DDIM
   sample (the model's ``sample_steps``, seed 0: deterministic); :meth:`~LatentDiffusionGenerator.sample`
   draws K samples with DDPM or DDIM and optional **radiograph-consistent guidance** (diffusion posterior
   sampling, Chung et al. 2023, "Diffusion posterior sampling for general noisy inverse problems"): each
   step predicts x0 (from epsilon, v or directly), decodes it, renders its cone-beam DRRs with
   :func:`x2ct.drr.project` in the model's DRR geometry, min-max normalises them like the inputs, and moves
   z_{t-1} against the gradient of sum_views ||DRR - radiograph||_2 with respect to z_t, times ``guidance``.

Axes and units everywhere: volumes (N, 1, D, H, W) on the canonical axes of :mod:`x2ct.geometry`
(superior->inferior, anterior->posterior, right->left), values on the unit scale of :mod:`x2ct.intensity`
(clip(HU + 1024, 0, 2500) / 2500); radiographs (N, 1, S, S) in [0, 1], per-image min-max, display
orientation of :mod:`x2ct.views`. Inside the model the CT lives in the seed's "model scale": the HU window
``[hu_low, hu_high]`` mapped linearly onto [-1, 1] (the seed min-max normalises its windowed CTs to (-1, 1)).
With ``depth_stride`` k > 1 the model works on every k-th axial slice (the seed's 128 slices split into two
interleaved 64-slice halves is k = 2) and its output is interpolated linearly back to D slices.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..drr import normalize, project
from ..drr_geometry import DRRGeometry
from ..errors import InputError, PathLike
from ..geometry import EXTENT_MM, GRID_SIZES
from ..intensity import HU_OFFSET, UNIT_RANGE
from ..views import LATERAL, PA
from .xprospect import BackProjector

SCHEDULES = ("cosine", "linear")
"""Noise schedules: ``cosine`` (Nichol & Dhariwal 2021, s = 0.008; the seed's) and ``linear`` (Ho et al. 2020)."""
SAMPLERS = ("ddim", "ddpm")
"""``ddpm``: ancestral sampling over every timestep; ``ddim``: ``steps`` evenly spaced timesteps, ``eta``."""
PREDICTIONS = ("epsilon", "x0", "v")
"""What the denoiser predicts: ``epsilon`` the noise (DDPM; the seed's), ``x0`` the clean latent, ``v`` the
velocity sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022, "Progressive distillation")."""
ENCODER_KINDS = ("cnn",)
"""Radiograph encoders this version builds from an architecture description (``{"kind": "cnn", ...}``)."""

ProgressFn = Callable[[float], None]


# ------------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class LatentDiffusionConfig:
    """The architecture of a ``latent_diffusion`` generator.

    ``grid_size``: output cube edge S (D = H = W = S, 320 mm, :mod:`x2ct.geometry`); ``views``: 1 (PA) or 2
    (PA + lateral). ``hu_low``/``hu_high``: HU window mapped onto the model scale [-1, 1] (the seed: -100 / 900
    for CTPA; default the whole unit scale -1024 / 1476, so nothing is clipped). ``depth_stride``: the
    model generates every k-th axial slice. VAE: ``vae_channels`` per level (in-plane compression
    2^(levels-1)), ``vae_res_blocks`` per level, ``latent_channels``. Encoder: ``encoder`` architecture
    description (``kind`` "cnn", ``channels``, ``embed_dim`` per view). U-Net: ``unet_channels`` per level
    (each level halves D', h and w), ``cond_channels`` (the embedding's channels concatenated at every
    block), ``time_dim``. Diffusion: ``timesteps``, ``schedule``, ``sample_steps`` (DDIM steps of
    ``forward``), ``prediction`` (:data:`PREDICTIONS`; the seed's ``epsilon``). ``geometry_prior``: the
    radiographs' cone-beam back-projections on the latent grid are extra input channels of the U-Net
    (:class:`GeometryPrior`; off in the seed). LoRA: ``lora_rank`` (0 = none) and ``lora_alpha``. DRR geometry
    (mm) of the training radiographs, used by guided sampling: ``sad_mm``, ``sid_mm``, ``detector_mm``,
    ``drr_size`` (pixels).
    """

    grid_size: int = 64
    views: int = 2
    hu_low: float = -1024.0
    hu_high: float = 1476.0
    depth_stride: int = 1
    vae_channels: Tuple[int, ...] = (32, 64, 64)
    vae_res_blocks: int = 1
    latent_channels: int = 4
    encoder: Dict[str, Any] = field(default_factory=lambda: {"kind": "cnn", "channels": [16, 32, 64, 64],
                                                             "embed_dim": 512})  # fmt: skip
    unet_channels: Tuple[int, ...] = (32, 64, 64)
    cond_channels: int = 8
    time_dim: int = 64
    timesteps: int = 1000
    schedule: str = "cosine"
    sample_steps: int = 20
    prediction: str = "epsilon"
    geometry_prior: bool = False
    lora_rank: int = 0
    lora_alpha: float = 1.0
    sad_mm: float = DRRGeometry.sad_mm
    sid_mm: float = DRRGeometry.sid_mm
    detector_mm: float = DRRGeometry.detector_mm
    drr_size: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "vae_channels", tuple(int(c) for c in self.vae_channels))
        object.__setattr__(self, "unet_channels", tuple(int(c) for c in self.unet_channels))
        object.__setattr__(self, "encoder", dict(self.encoder))
        if self.grid_size not in GRID_SIZES:
            raise ValueError(f"grid_size must be one of {GRID_SIZES} (the canonical grids), got {self.grid_size}")
        if self.views not in (1, 2):
            raise ValueError(f"views must be 1 (PA) or 2 (PA + lateral), got {self.views}")
        if not self.hu_low < self.hu_high:
            raise ValueError(f"need hu_low < hu_high, got {self.hu_low} / {self.hu_high}")
        if self.depth_stride < 1 or self.grid_size % self.depth_stride:
            raise ValueError(f"depth_stride must divide grid_size {self.grid_size}, got {self.depth_stride}")
        if len(self.vae_channels) < 1 or self.grid_size % self.compression:
            raise ValueError(f"grid_size {self.grid_size} is not divisible by the VAE compression {self.compression}")
        levels = 2 ** (len(self.unet_channels) - 1)
        if len(self.unet_channels) < 1 or (self.grid_size // self.compression) % levels or self.depth % levels:
            halvings = len(self.unet_channels) - 1
            raise ValueError(f"the latent grid {self.latent_shape} cannot be halved {halvings} times")
        if self.encoder.get("kind") not in ENCODER_KINDS:
            kind = self.encoder.get("kind")
            raise ValueError(f"encoder kind must be one of {', '.join(ENCODER_KINDS)}, got {kind!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {self.prediction!r}")
        if self.timesteps < 2 or not 1 <= self.sample_steps <= self.timesteps:
            raise ValueError(f"need timesteps >= 2 and 1 <= sample_steps <= timesteps, got {self.timesteps}, "
                             f"{self.sample_steps}")  # fmt: skip
        for key in ("latent_channels", "cond_channels", "time_dim", "vae_res_blocks"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be positive")
        if self.lora_rank < 0:
            raise ValueError("lora_rank must not be negative")
        DRRGeometry(self.sad_mm, self.sid_mm, self.detector_mm)  # raises for an impossible geometry

    @property
    def compression(self) -> int:
        """In-plane compression of the VAE (each of its levels after the first halves H and W)."""
        return 2 ** (len(self.vae_channels) - 1)

    @property
    def depth(self) -> int:
        """Axial slices the model generates (D / depth_stride)."""
        return self.grid_size // self.depth_stride

    @property
    def latent_shape(self) -> Tuple[int, int, int, int]:
        """(C, D', h, w) of one case's latent volume."""
        side = self.grid_size // self.compression
        return (self.latent_channels, self.depth, side, side)

    @property
    def geometry(self) -> DRRGeometry:
        return DRRGeometry(self.sad_mm, self.sid_mm, self.detector_mm)

    def to_dict(self) -> Dict[str, Any]:
        return {**asdict(self), "vae_channels": list(self.vae_channels), "unet_channels": list(self.unet_channels)}


# ------------------------------------------------------------------------------------------ intensity map


def unit_to_model(x: Tensor, config: LatentDiffusionConfig) -> Tensor:
    """Unit scale -> model scale: HU clipped to the window ``[hu_low, hu_high]``, mapped linearly onto [-1, 1]."""
    hu = x * UNIT_RANGE - HU_OFFSET
    return 2.0 * (hu.clamp(config.hu_low, config.hu_high) - config.hu_low) / (config.hu_high - config.hu_low) - 1.0


def model_to_unit(y: Tensor, config: LatentDiffusionConfig) -> Tensor:
    """Model scale [-1, 1] -> unit scale (HU = window low + (y + 1) / 2 x window width; not clamped)."""
    hu = config.hu_low + (y + 1.0) * 0.5 * (config.hu_high - config.hu_low)
    return (hu + HU_OFFSET) / UNIT_RANGE


# --------------------------------------------------------------------------------------------- slice VAE


class SliceVAE(nn.Module):
    """MONAI ``AutoencoderKL`` (2D) applied to every axial slice; latents scaled by ``latent_scale``."""

    def __init__(self, config: LatentDiffusionConfig) -> None:
        super().__init__()
        from monai.networks.nets import AutoencoderKL

        self.config = config
        levels = len(config.vae_channels)
        self.autoencoder = AutoencoderKL(
            spatial_dims=2,
            in_channels=1,
            out_channels=1,
            channels=config.vae_channels,
            latent_channels=config.latent_channels,
            num_res_blocks=(config.vae_res_blocks,) * levels,
            attention_levels=(False,) * levels,
            norm_num_groups=min(8, *config.vae_channels),
            with_encoder_nonlocal_attn=False,
            with_decoder_nonlocal_attn=False,
        )
        self.register_buffer("latent_scale", torch.ones(()))
        """1 / standard deviation of the training latents (set by the ldm stage; 1 until then)."""
        self.register_buffer("latent_bound", torch.full((), float("inf")))
        """Largest absolute value of the scaled training latents: sampling clamps x0 predictions to it (set by
        the ldm stage; no clamping until then)."""

    @staticmethod
    def to_slices(volume: Tensor) -> Tensor:
        """(N, C, D, H, W) -> (N·D, C, H, W): the axial slices, case-major."""
        n, c, d, h, w = volume.shape
        return volume.permute(0, 2, 1, 3, 4).reshape(n * d, c, h, w)

    @staticmethod
    def to_volume(slices: Tensor, n: int) -> Tensor:
        """(N·D, C, H, W) -> (N, C, D, H, W), the inverse of :meth:`to_slices`."""
        nd, c, h, w = slices.shape
        return slices.reshape(n, nd // n, c, h, w).permute(0, 2, 1, 3, 4)

    def encode_volume(self, x: Tensor, phase: int = 0) -> Tensor:
        """(N, 1, D, H, W) unit scale -> (N, C, D', h, w) scaled latents (the posterior means) of slices
        ``phase``, ``phase + k``, ... (k = ``depth_stride``)."""
        slices = self.to_slices(unit_to_model(x[:, :, phase :: self.config.depth_stride], self.config))
        mu, _ = self.autoencoder.encode(slices)
        return self.to_volume(mu, x.shape[0]) * self.latent_scale

    def decode_volume(self, z: Tensor) -> Tensor:
        """(N, C, D', h, w) scaled latents -> (N, 1, D, H, W) on the unit scale (not clamped); with
        ``depth_stride`` k > 1 the D' decoded slices are interpolated linearly along D to D = grid_size, each
        placed at the centre of its slab of k slices (training mixes all k phases, so a generated slice stands
        for its slab)."""
        slices = self.autoencoder.decode(self.to_slices(z / self.latent_scale))
        volume = model_to_unit(self.to_volume(slices, z.shape[0]), self.config)
        if self.config.depth_stride > 1:
            size = self.config.grid_size
            volume = F.interpolate(volume, size=(size, size, size), mode="trilinear", align_corners=False)
        return volume


# -------------------------------------------------------------------------------------- radiograph encoder


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the largest of 8, 4, 2, 1 groups that divides ``channels``."""
    return nn.GroupNorm(next(g for g in (8, 4, 2, 1) if channels % g == 0), channels)


class RadiographEncoder(nn.Module):
    """One view: (N, 1, S, S) in [0, 1] -> (N, embed_dim). Strided 3x3 convolutions with GroupNorm and SiLU
    (``channels`` per stage), adaptive average pooling to 4 x 4 (keeps the coarse layout of the image), and
    a linear layer."""

    def __init__(self, channels: Sequence[int], embed_dim: int) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        previous = 1
        for c in channels:
            layers += [nn.Conv2d(previous, c, 3, stride=2, padding=1), group_norm(c), nn.SiLU()]
            previous = c
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.head = nn.Linear(previous * 16, embed_dim)

    def forward(self, image: Tensor) -> Tensor:
        return self.head(self.features(image))


def build_radiograph_encoder(description: Mapping[str, Any]) -> RadiographEncoder:
    """The encoder an architecture description names (``{"kind": "cnn", "channels": [...], "embed_dim": 512}``)."""
    if description.get("kind") != "cnn":
        raise ValueError(f"unknown radiograph encoder kind {description.get('kind')!r} (known: {ENCODER_KINDS})")
    return RadiographEncoder([int(c) for c in description["channels"]], int(description["embed_dim"]))


def load_radiograph_encoder(path: PathLike) -> Tuple[Dict[str, Any], Dict[str, Tensor]]:
    """(architecture description, weights) of a pretrained encoder file: ``NAME.safetensors`` with
    ``NAME.json`` beside it, holding ``{"architecture": {...}, "sha256": "..."}`` (the weights' sha256 is
    checked). Read with safetensors only, never unpickled. InputError for a missing or mismatching file."""
    from ..atomic import sha256_file
    from .safetensors_io import read_weights

    weights = Path(path)
    meta = weights.with_suffix(".json")
    for file in (weights, meta):
        if not file.is_file():
            raise InputError(file, "no such file (a pretrained encoder is NAME.safetensors + NAME.json)")
    try:
        document = json.loads(meta.read_text(encoding="utf-8"))
        description = dict(document["architecture"])
        expected = str(document["sha256"])
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(meta, f"not an encoder description ({err})") from None
    if sha256_file(weights) != expected:
        raise InputError(weights, "sha256 does not match the one in its .json: corrupted or replaced")
    try:
        encoder = build_radiograph_encoder(description)
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(meta, f"bad encoder architecture ({err})") from None
    state = read_weights(weights)
    expected_keys = encoder.state_dict()
    if set(state) != set(expected_keys) or any(state[k].shape != v.shape for k, v in expected_keys.items()):
        raise InputError(weights, "the weights do not match the architecture in the .json")
    return description, state


# ------------------------------------------------------------------------------------------ denoising U-Net


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding (Vaswani et al. 2017; DDPM) of integer timesteps (N,) -> (N, dim)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * frequencies[None]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    return F.pad(embedding, (0, dim % 2))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv3d twice with a residual; the timestep embedding is added after the first
    convolution, and the radiograph embedding (projected to ``cond`` channels) is concatenated as constant
    channels to the block's input."""

    def __init__(self, in_ch: int, out_ch: int, time_dim: int, embed_dim: int, cond: int) -> None:
        super().__init__()
        self.cond = nn.Linear(embed_dim, cond)
        self.norm1 = group_norm(in_ch + cond)
        self.conv1 = nn.Conv3d(in_ch + cond, out_ch, 3, padding=1)
        self.time = nn.Linear(time_dim, out_ch)
        self.norm2 = group_norm(out_ch)
        self.conv2 = nn.Conv3d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv3d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, time: Tensor, embedding: Tensor) -> Tensor:
        cond = self.cond(embedding)[:, :, None, None, None].expand(-1, -1, *x.shape[2:])
        h = self.conv1(F.silu(self.norm1(torch.cat([x, cond], dim=1))))
        h = h + self.time(time)[:, :, None, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class GeometryPrior(nn.Module):
    """The radiographs' geometry on the latent grid: per view the normalised cone-beam back-projection
    ``Pᵀy / Pᵀ1`` (:class:`x2ct.models.xprospect.BackProjector`, the adjoint of the DRR projector, as ``bp_unet``
    uses it) on the ``grid_size``³ canonical grid, average-pooled by the VAE compression in-plane and by
    ``depth_stride`` along D (each latent slice stands for its slab): (N, 1, S, S) in [0, 1] per view ->
    (N, views, D', h, w), values in [0, 1] (0 outside the beams). No parameters."""

    def __init__(self, config: LatentDiffusionConfig) -> None:
        super().__init__()
        views = (PA,) if config.views == 1 else (PA, LATERAL)
        self.projectors = nn.ModuleList(BackProjector(view, config.grid_size, config.geometry) for view in views)
        self.kernel = (config.depth_stride, config.compression, config.compression)

    def forward(self, radiographs: Sequence[Tensor]) -> Tensor:
        backs = [projector(image) for projector, image in zip(self.projectors, radiographs)]
        return F.avg_pool3d(torch.cat(backs, dim=1), self.kernel)


class DenoisingUNet(nn.Module):
    """(N, C, D', h, w) noisy latents, timesteps (N,), embedding (N, E) [, prior (N, views, D', h, w)] -> the
    prediction (noise, x0 or v: ``config.prediction``), (N, C, D', h, w).

    Level i has ``channels[i]`` channels; each level but the last halves D', h and w (stride-2 convolution);
    the decoder upsamples (nearest, then a 3x3 convolution), concatenates the encoder's features of that
    level and runs one :class:`ResBlock`. Every block sees the timestep and the radiograph embedding. With
    ``geometry_prior`` the :class:`GeometryPrior` channels are concatenated to the noisy latents at the input.
    """

    def __init__(self, config: LatentDiffusionConfig, embed_dim: int) -> None:
        super().__init__()
        ch, t, cond = config.unet_channels, config.time_dim, config.cond_channels
        self.time_dim = t
        self.time_mlp = nn.Sequential(nn.Linear(t, t), nn.SiLU(), nn.Linear(t, t))
        self.prior_channels = config.views if config.geometry_prior else 0
        self.stem = nn.Conv3d(config.latent_channels + self.prior_channels, ch[0], 3, padding=1)
        self.down = nn.ModuleList(ResBlock(ch[max(i - 1, 0)], ch[i], t, embed_dim, cond) for i in range(len(ch)))
        self.pool = nn.ModuleList(nn.Conv3d(ch[i], ch[i], 3, stride=2, padding=1) for i in range(len(ch) - 1))
        self.middle = ResBlock(ch[-1], ch[-1], t, embed_dim, cond)
        self.up = nn.ModuleList(nn.Conv3d(ch[i + 1], ch[i], 3, padding=1) for i in range(len(ch) - 1))
        self.merge = nn.ModuleList(ResBlock(2 * ch[i], ch[i], t, embed_dim, cond) for i in range(len(ch) - 1))
        self.out_norm = group_norm(ch[0])
        self.out = nn.Conv3d(ch[0], config.latent_channels, 3, padding=1)

    def forward(self, z: Tensor, t: Tensor, embedding: Tensor, prior: Optional[Tensor] = None) -> Tensor:
        if (prior is not None) != bool(self.prior_channels):
            raise ValueError("the geometry prior must be given exactly when the U-Net was built with geometry_prior")
        time = self.time_mlp(timestep_embedding(t, self.time_dim))
        h = self.stem(z if prior is None else torch.cat([z, prior], dim=1))
        skips: List[Tensor] = []
        for i, block in enumerate(self.down):
            h = block(h, time, embedding)
            if i < len(self.pool):
                skips.append(h)
                h = self.pool[i](h)
        h = self.middle(h, time, embedding)
        for i in reversed(range(len(self.up))):
            h = self.up[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
            h = self.merge[i](torch.cat([h, skips[i]], dim=1), time, embedding)
        return self.out(F.silu(self.out_norm(h)))


class ConditionalDenoiser(nn.Module):
    """The trainable part of the generator: radiograph encoders + U-Net (+ the parameter-free
    :class:`GeometryPrior` with ``geometry_prior``), ``forward(z_t, t, radiographs[, prior])`` -> the prediction.
    (One module, so that data-parallel training wraps one forward.)"""

    def __init__(self, config: LatentDiffusionConfig) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(build_radiograph_encoder(config.encoder) for _ in range(config.views))
        self.embed_dim = int(config.encoder["embed_dim"]) * config.views
        self.unet = DenoisingUNet(config, self.embed_dim)
        self.prior = GeometryPrior(config) if config.geometry_prior else None

    def embed(self, radiographs: Sequence[Tensor]) -> Tensor:
        """(N, 1, S, S) per view -> (N, views · embed_dim): the views' embeddings, concatenated (PA first)."""
        return torch.cat([encoder(image) for encoder, image in zip(self.encoders, radiographs)], dim=1)

    def geometry(self, radiographs: Sequence[Tensor]) -> Optional[Tensor]:
        """The :class:`GeometryPrior` of the radiographs, (N, views, D', h, w); None without ``geometry_prior``."""
        return None if self.prior is None else self.prior(radiographs)

    def forward(self, z: Tensor, t: Tensor, radiographs: Sequence[Tensor], prior: Optional[Tensor] = None) -> Tensor:
        """``prior``: the radiographs' :meth:`geometry` if already computed (training caches it)."""
        if prior is None:
            prior = self.geometry(radiographs)
        return self.unet(z, t, self.embed(radiographs), prior)


# ------------------------------------------------------------------------------------------ noise schedule


class NoiseSchedule:
    """The forward process q(z_t | z_0) = N(sqrt(abar_t) z_0, (1 - abar_t) I), t = 0..T-1, and the reverse steps.

    ``linear``: betas from 1e-4 to 0.02 scaled by 1000 / T (Ho et al. 2020; Nichol & Dhariwal's scaling for
    other T). ``cosine``: abar_t = f(t + 1) / f(0), f(t) = cos((t / T + s) / (1 + s) · pi / 2)^2, s = 0.008,
    betas clipped at 0.999 (Nichol & Dhariwal 2021). Computed in float64, used in float32.
    """

    def __init__(self, timesteps: int, kind: str = "cosine") -> None:
        self.timesteps, self.kind = int(timesteps), kind
        if kind == "linear":
            scale = 1000.0 / timesteps
            betas = torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
        elif kind == "cosine":
            s = 0.008
            steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
            f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
            betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        else:
            raise ValueError(f"unknown schedule {kind!r}; use one of {', '.join(SCHEDULES)}")
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)

    def _at(self, values: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """values[t] as (N, 1, 1, 1, 1) on ``like``'s device and dtype."""
        return values.to(like.device)[t.to(like.device)].to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, z0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) noise."""
        abar = self._at(self.alphas_cumprod, t, z0)
        return abar.sqrt() * z0 + (1 - abar).sqrt() * noise

    def target(self, z0: Tensor, t: Tensor, noise: Tensor, prediction: str = "epsilon") -> Tensor:
        """What the denoiser learns to output for z_t = q_sample(z0, t, noise): ``epsilon`` the noise, ``x0`` z_0,
        ``v`` = sqrt(abar_t) noise - sqrt(1 - abar_t) z_0 (Salimans & Ho 2022)."""
        if prediction == "epsilon":
            return noise
        if prediction == "x0":
            return z0
        if prediction == "v":
            abar = self._at(self.alphas_cumprod, t, z0)
            return abar.sqrt() * noise - (1 - abar).sqrt() * z0
        raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")

    def predict_x0(self, z: Tensor, t: Tensor, output: Tensor, prediction: str = "epsilon") -> Tensor:
        """z_0 estimate from z_t and the denoiser's ``output``: epsilon -> (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t);
        x0 -> itself; v -> sqrt(abar_t) z_t - sqrt(1 - abar_t) v. The samplers take only this x0 (and the noise it
        implies, :meth:`ddim_step`), so every prediction target samples through the same steps."""
        if prediction == "x0":
            return output
        abar = self._at(self.alphas_cumprod, t, z)
        if prediction == "v":
            return abar.sqrt() * z - (1 - abar).sqrt() * output
        if prediction == "epsilon":
            return (z - (1 - abar).sqrt() * output) / abar.sqrt()
        raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")

    def ddpm_step(self, z: Tensor, t: int, x0: Tensor, noise: Tensor) -> Tensor:
        """z_{t-1} ~ q(z_{t-1} | z_t, z_0 = x0): the posterior mean plus sqrt(beta-tilde_t) noise (no noise at t = 0).
        Mean = (sqrt(abar_{t-1}) beta_t x0 + sqrt(alpha_t) (1 - abar_{t-1}) z_t) / (1 - abar_t)."""
        abar = float(self.alphas_cumprod[t])
        abar_prev = float(self.alphas_cumprod[t - 1]) if t > 0 else 1.0
        beta = float(self.betas[t])
        mean = (math.sqrt(abar_prev) * beta * x0 + math.sqrt(1 - beta) * (1 - abar_prev) * z) / (1 - abar)
        if t == 0:
            return mean
        variance = beta * (1 - abar_prev) / (1 - abar)
        return mean + math.sqrt(variance) * noise

    def ddim_step(self, z: Tensor, t: int, t_prev: int, x0: Tensor, eta: float, noise: Tensor) -> Tensor:
        """DDIM (Song et al. 2021, eq. 12) from t to t_prev (t_prev = -1: to z_0), with the noise implied by x0,
        eps = (z_t - sqrt(abar_t) x0) / sqrt(1 - abar_t):
        z_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma noise,
        sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)."""
        abar = float(self.alphas_cumprod[t])
        abar_prev = float(self.alphas_cumprod[t_prev]) if t_prev >= 0 else 1.0
        eps = (z - math.sqrt(abar) * x0) / math.sqrt(1 - abar)
        sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
        direction = math.sqrt(max(1 - abar_prev - sigma**2, 0.0)) * eps
        return math.sqrt(abar_prev) * x0 + direction + (sigma * noise if sigma > 0 else 0.0)

    def ddim_timesteps(self, steps: int) -> List[int]:
        """``steps`` timesteps, evenly spaced from T-1 down to 0 (the last step lands on z_0)."""
        steps = max(1, min(int(steps), self.timesteps))
        return sorted({round(i * (self.timesteps - 1) / max(steps - 1, 1)) for i in range(steps)}, reverse=True)


# -------------------------------------------------------------------------------------------------- LoRA


class LoRALayer(nn.Module):
    """A frozen Conv3d or Linear plus a low-rank update: ``base(x) + (alpha / rank) · up(down(x))``.

    Conv3d: ``down`` is a convolution of the base's kernel, stride and padding to ``rank`` channels, ``up``
    a 1x1x1 convolution to the base's outputs, so the adapter has rank · (in · k³ + out) parameters; Linear:
    rank · (in + out). ``up`` starts at zero, so the wrapped layer starts equal to the base.
    """

    def __init__(self, base: nn.Module, rank: int, alpha: float) -> None:
        super().__init__()
        self.base, self.scale = base, alpha / rank
        base.requires_grad_(False)
        if isinstance(base, nn.Conv3d):
            self.down: nn.Module = nn.Conv3d(base.in_channels, rank, base.kernel_size, base.stride, base.padding,
                                             bias=False)  # fmt: skip
            self.up: nn.Module = nn.Conv3d(rank, base.out_channels, 1, bias=False)
        else:
            self.down = nn.Linear(base.in_features, rank, bias=False)
            self.up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scale * self.up(self.down(x))


def add_lora(module: nn.Module, rank: int, alpha: float) -> int:
    """Wrap every Conv3d and Linear inside ``module`` (in place) in a :class:`LoRALayer`, freeze everything
    else in ``module``; returns the number of wrapped layers."""
    module.requires_grad_(False)
    targets = [(name, child) for name, child in module.named_modules() if isinstance(child, (nn.Conv3d, nn.Linear))]
    for name, child in targets:
        parent_name, _, attribute = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attribute, LoRALayer(child, rank, alpha))
    return len(targets)


def lora_parameter_count(module: nn.Module) -> int:
    """Trainable parameters of the LoRA adapters inside ``module``."""
    return sum(p.numel() for m in module.modules() if isinstance(m, LoRALayer)
               for p in (*m.down.parameters(), *m.up.parameters()) if p.requires_grad)  # fmt: skip


# -------------------------------------------------------------------------------------------- the generator


def drr_distance(volume: Tensor, radiographs: Mapping[str, Tensor], geometry: DRRGeometry, drr_size: int) -> Tensor:
    """Per case, the sum over views of || minmax(DRR(volume)) - radiograph ||_2, (N,).

    ``volume`` (N, 1, S, S, S) unit scale; DRRs in HU through :func:`x2ct.drr.project` at ``drr_size`` pixels,
    resized (bilinear, anti-aliased) to the radiograph's size and min-max normalised per image, as
    :func:`x2ct.inference.run.reproject` prepares the re-projection it scores. Differentiable in ``volume``.
    """
    spacing = EXTENT_MM / volume.shape[-1]
    hu = volume * UNIT_RANGE - HU_OFFSET
    total = volume.new_zeros(volume.shape[0])
    for view, image in radiographs.items():
        drr = project(hu, spacing, view, drr_size, geometry, units="hu")
        if drr_size != image.shape[-1]:
            drr = F.interpolate(drr, size=image.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
        total = total + (normalize(drr, "minmax") - image).flatten(1).norm(dim=1)
    return total


class LatentDiffusionGenerator(nn.Module):
    """Radiograph(s) -> synthetic CT by latent diffusion (module doc). ``vae``: :class:`SliceVAE`;
    ``denoiser``: :class:`ConditionalDenoiser`; ``schedule``: :class:`NoiseSchedule` (not a parameter)."""

    architecture = "latent_diffusion"
    stochastic = True

    def __init__(self, config: Optional[LatentDiffusionConfig] = None) -> None:
        super().__init__()
        self.config = config = config or LatentDiffusionConfig()
        self.metadata: Optional[Any] = None
        """The model's :class:`x2ct.models.metadata.ModelMetadata`, set by :func:`x2ct.models.load_generator`."""
        self.vae = SliceVAE(config)
        self.denoiser = ConditionalDenoiser(config)
        self.schedule = NoiseSchedule(config.timesteps, config.schedule)
        if config.lora_rank:
            add_lora(self.denoiser.unet, config.lora_rank, config.lora_alpha)

    @property
    def views(self) -> Tuple[str, ...]:
        return (PA,) if self.config.views == 1 else (PA, LATERAL)

    def enable_lora(self, rank: int, alpha: float) -> int:
        """Add LoRA adapters to the U-Net (its base frozen) and record them in ``config``; returns the number of
        wrapped layers. ValueError when the U-Net already has adapters."""
        from dataclasses import replace

        if self.config.lora_rank:
            raise ValueError("this generator already has LoRA adapters")
        self.config = replace(self.config, lora_rank=int(rank), lora_alpha=float(alpha))
        return add_lora(self.denoiser.unet, rank, alpha)

    def _radiographs(self, pa: Tensor, lateral: Optional[Tensor]) -> List[Tensor]:
        if (lateral is None) != (self.config.views == 1):
            raise ValueError(f"{self.architecture} with views={self.config.views} takes "
                             f"{'a PA only' if self.config.views == 1 else 'a PA and a lateral'}")  # fmt: skip
        return [pa] if lateral is None else [pa, lateral]

    def forward(self, pa: Tensor, lateral: Optional[Tensor] = None) -> Tensor:
        """(N, 1, S, S) radiograph(s) -> (N, 1, S, S, S) unit scale: one DDIM sample with ``sample_steps`` steps,
        seed 0 (the same inputs give the same CT), clamped to [0, 1] in eval mode."""
        volume = self.sample(pa, lateral, samples=1)[0]
        return volume if self.training else volume.clamp(0.0, 1.0)

    def sample(
        self,
        pa: Tensor,
        lateral: Optional[Tensor] = None,
        *,
        samples: int = 8,
        steps: Optional[int] = None,
        sampler: str = "ddim",
        guidance: float = 0.0,
        geometry: Optional[DRRGeometry] = None,
        drr_size: Optional[int] = None,
        seed: int = 0,
        eta: float = 0.0,
        progress: Optional[ProgressFn] = None,
    ) -> Tensor:
        """K = ``samples`` synthetic CTs per case: (K, N, 1, S, S, S) on the unit scale (not clamped).

        ``sampler`` "ddim" takes ``steps`` (default ``config.sample_steps``) evenly spaced timesteps with
        ``eta`` (0: deterministic given the initial noise); "ddpm" takes every one of the ``timesteps`` steps
        (``steps`` ignored). ``seed`` seeds every random draw (a generator on the inputs' device): the same
        seed, inputs and settings give the same samples. ``guidance`` > 0 steers each step towards DRRs that
        match the radiographs (module doc, item 7) in ``geometry`` (default: the model's training DRR geometry)
        at ``drr_size`` pixels (default: the model's ``drr_size``, else the radiographs' size).
        ``progress(fraction)`` is called after every step.
        """
        z = self.sample_latents(
            pa,
            lateral,
            samples=samples,
            steps=steps,
            sampler=sampler,
            guidance=guidance,
            geometry=geometry,
            drr_size=drr_size,
            seed=seed,
            eta=eta,
            progress=progress,
        )
        with torch.no_grad():
            volume = self.vae.decode_volume(z)
        return volume.reshape(samples, pa.shape[0], *volume.shape[1:])

    def sample_latents(
        self,
        pa: Tensor,
        lateral: Optional[Tensor] = None,
        *,
        samples: int = 8,
        steps: Optional[int] = None,
        sampler: str = "ddim",
        guidance: float = 0.0,
        geometry: Optional[DRRGeometry] = None,
        drr_size: Optional[int] = None,
        seed: int = 0,
        eta: float = 0.0,
        progress: Optional[ProgressFn] = None,
    ) -> Tensor:
        """The sampling loop of :meth:`sample` (same arguments) without the decoding: (K·N, C, D', h, w) scaled
        latents, sample-major (sample k of case i at k·N + i)."""
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        if samples < 1:
            raise ValueError(f"samples must be at least 1, got {samples}")
        radiographs = self._radiographs(pa, lateral)
        device = pa.device
        schedule = self.schedule
        timesteps = list(range(schedule.timesteps - 1, -1, -1)) if sampler == "ddpm" else \
            schedule.ddim_timesteps(steps or self.config.sample_steps)  # fmt: skip
        generator = torch.Generator(device=device).manual_seed(int(seed))
        shape = (samples * pa.shape[0], *self.config.latent_shape)
        z = torch.randn(shape, generator=generator, device=device, dtype=pa.dtype)
        repeated = [image.repeat(samples, 1, 1, 1) for image in radiographs]
        targets = {view: image.detach().clone() for view, image in zip(self.views, repeated)}
        geometry = geometry or self.config.geometry
        size = int(drr_size or self.config.drr_size or pa.shape[-1])
        with torch.no_grad():
            embedding = self.denoiser.embed(repeated)
            prior = self.denoiser.geometry(radiographs)
            prior = None if prior is None else prior.repeat(samples, 1, 1, 1, 1)
        for i, t in enumerate(timesteps):
            index = torch.full((shape[0],), t, dtype=torch.long, device=device)
            noise = torch.randn(shape, generator=generator, device=device, dtype=z.dtype)
            if guidance > 0:
                z = self._guided_step(z, t, index, embedding, prior, timesteps, i, sampler, eta, noise, guidance,
                                      targets, geometry, size)  # fmt: skip
            else:
                with torch.no_grad():
                    x0 = self._x0(z, index, self.denoiser.unet(z, index, embedding, prior))
                    z = self._step(z, t, timesteps, i, sampler, x0, eta, noise)
            if progress is not None:
                progress((i + 1) / len(timesteps))
        return z

    def _x0(self, z: Tensor, index: Tensor, output: Tensor) -> Tensor:
        """The x0 prediction from the U-Net's ``output`` (``config.prediction``), clamped to the training latents'
        range (``vae.latent_bound``; the seed clamps its x0 predictions to its latents' normalised range too,
        ``clip_denoised``)."""
        bound = self.vae.latent_bound
        return self.schedule.predict_x0(z, index, output, self.config.prediction).clamp(-bound, bound)

    def _step(self, z: Tensor, t: int, timesteps: Sequence[int], i: int, sampler: str, x0: Tensor, eta: float,
              noise: Tensor) -> Tensor:  # fmt: skip
        if sampler == "ddpm":
            return self.schedule.ddpm_step(z, t, x0, noise)
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        return self.schedule.ddim_step(z, t, t_prev, x0, eta, noise)

    def _guided_step(self, z: Tensor, t: int, index: Tensor, embedding: Tensor, prior: Optional[Tensor],
                     timesteps: Sequence[int], i: int, sampler: str, eta: float, noise: Tensor, guidance: float,
                     targets: Mapping[str, Tensor], geometry: DRRGeometry, drr_size: int) -> Tensor:  # fmt: skip
        """One sampler step, then minus ``guidance`` x the gradient w.r.t. z_t of the DRR distance of the decoded
        x0 prediction (diffusion posterior sampling). Runs with gradients also under ``torch.inference_mode``."""
        with torch.inference_mode(False), torch.enable_grad():
            z_in = z.detach().clone().requires_grad_(True)
            prior = None if prior is None else prior.clone()
            x0 = self._x0(z_in, index.clone(), self.denoiser.unet(z_in, index.clone(), embedding.clone(), prior))
            volume = self.vae.decode_volume(x0)
            distance = drr_distance(volume, {k: v.clone() for k, v in targets.items()}, geometry, drr_size).sum()
            (gradient,) = torch.autograd.grad(distance, z_in)
            z_next = self._step(z_in.detach(), t, timesteps, i, sampler, x0.detach(), eta, noise.clone())
        return (z_next - guidance * gradient).detach()
