"""CycleGAN for radiograph style transfer (real radiograph -> DRR look), in one readable file.

Zhu, Park, Isola and Efros, *Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial
Networks*, ICCV 2017 (arXiv:1703.10593), and their code (junyanz/pytorch-CycleGAN-and-pix2pix):

* **generators** G: real -> DRR and F: DRR -> real, each :class:`ResnetGenerator` (the paper's
  ``c7s1-k, d2k, d4k, R4k x n, u2k, uk, c7s1-1``: reflection padding, instance norm without affine
  parameters, ReLU; 6 residual blocks for 128 px images, 9 for 256 px) or :class:`UNetGenerator`
  (the pix2pix U-Net of the official code's ``unet_128`` / ``unet_256``);
* **discriminators**: the 70 x 70 :class:`PatchDiscriminator` (``C64-C128-C256-C512``, 4 x 4
  convolutions, LeakyReLU 0.2, no norm on the first layer), one per domain;
* **losses**: least-squares GAN (:func:`lsgan_loss`, Mao et al. 2017), cycle consistency
  ``lambda * (|F(G(x)) - x|_1 + |G(F(y)) - y|_1)`` (:func:`cycle_loss`, lambda = 10 in the paper) and
  the optional identity loss ``lambda_idt * lambda * (|G(y) - y|_1 + |F(x) - x|_1)``
  (:func:`identity_loss`; the official code's ``lambda_identity`` 0.5);
* :class:`ExponentialMovingAverage` of a generator's weights. X2CT-GAN (Ying et al., CVPR 2019, §5.1)
  translated 200 real radiographs to the DRR style with a CycleGAN; XprospeCT (Paulson et al., "XprospeCT:
  CT Volume Generation from Paired X-Rays", §3.1) trained theirs with NAdam, a much lower learning rate,
  cycle lambda 20 and an exponential moving average of the weights.

Images are (N, 1, S, S) float in [0, 1], dense (bone) bright, rows superior -> inferior
(:mod:`x2ct.views`); the networks work on ``2x - 1`` (the paper's [-1, 1] with a tanh output) and
return [0, 1]. S must be a multiple of 4 (ResNet) or of ``2**levels`` (U-Net).
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

RESNET = "cyclegan_resnet"
UNET = "cyclegan_unet"
ARCHITECTURES = (RESNET, UNET)
"""Generator architectures (the ``network.architecture`` of a style model's metadata)."""


def _norm(channels: int) -> nn.Module:
    """The paper's instance norm (official code: no affine parameters, no running statistics)."""
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


def _to_signed(image: torch.Tensor) -> torch.Tensor:
    return image * 2.0 - 1.0


def _to_unit(signed: torch.Tensor) -> torch.Tensor:
    return (torch.tanh(signed) + 1.0) * 0.5


# ---------------------------------------------------------------------------------------- generators


class ResidualBlock(nn.Module):
    """``R k``: two 3 x 3 convolutions (reflection padding, instance norm, ReLU after the first) plus the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """The paper's generator: ``c7s1-w, d2w, d4w, R4w x blocks, u2w, uw, c7s1-1`` (w = ``width``, 64 in the paper).

    (N, 1, S, S) [0, 1] -> (N, 1, S, S) [0, 1]; S a multiple of 4.
    """

    architecture = RESNET

    def __init__(self, width: int = 64, blocks: int = 9) -> None:
        super().__init__()
        if width < 1 or blocks < 0:
            raise ValueError(f"width {width} must be positive and blocks {blocks} not negative")
        self.width, self.blocks = width, blocks
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(1, width, 7), _norm(width), nn.ReLU(True)]  # c7s1-w
        for k in (1, 2):  # d2w, d4w: stride-2 3 x 3 convolutions
            layers += [nn.Conv2d(width * k, width * 2 * k, 3, stride=2, padding=1), _norm(width * 2 * k), nn.ReLU(True)]
        layers += [ResidualBlock(width * 4) for _ in range(blocks)]
        for k in (4, 2):  # u2w, uw: fractionally strided 3 x 3 convolutions
            up = nn.ConvTranspose2d(width * k, width * k // 2, 3, stride=2, padding=1, output_padding=1)
            layers += [up, _norm(width * k // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(width, 1, 7)]  # c7s1-1, then tanh
        self.model = nn.Sequential(*layers)

    def config(self) -> Dict[str, Any]:
        return {"width": self.width, "blocks": self.blocks}

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return _to_unit(self.model(_to_signed(image)))


class UNetLevel(nn.Module):
    """One level of the pix2pix U-Net: down (4 x 4 stride 2), the inner levels, up (4 x 4 transposed), concatenated
    with the level's input (the skip connection) except at the outermost level."""

    def __init__(self, outer: int, inner: int, inside: Optional[nn.Module], outermost: bool = False) -> None:
        super().__init__()
        self.outermost = outermost
        down = [nn.Conv2d(outer, inner, 4, stride=2, padding=1)]
        if not outermost:
            down = [nn.LeakyReLU(0.2, True), *down] + ([_norm(inner)] if inside is not None else [])
        up_in = inner if inside is None else inner * 2
        up = [nn.ReLU(True), nn.ConvTranspose2d(up_in, outer, 4, stride=2, padding=1)]
        if not outermost:
            up.append(_norm(outer))
        self.block = nn.Sequential(*down, *([inside] if inside is not None else []), *up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return y if self.outermost else torch.cat([x, y], dim=1)


class UNetGenerator(nn.Module):
    """The official code's U-Net generator with ``levels`` stride-2 levels (7 for 128 px, 8 for 256 px): channels
    w, 2w, 4w, then 8w for the inner levels (w = ``width``, 64 officially).

    (N, 1, S, S) [0, 1] -> (N, 1, S, S) [0, 1]; S a multiple of ``2**levels``.
    """

    architecture = UNET

    def __init__(self, width: int = 64, levels: int = 7) -> None:
        super().__init__()
        if width < 1 or levels < 2:
            raise ValueError(f"width {width} must be positive and levels {levels} at least 2")
        self.width, self.levels = width, levels
        channels = [min(width * 2**k, width * 8) for k in range(levels)]  # input side of each level but the first
        inside: Optional[nn.Module] = None
        for k in range(levels - 1, 0, -1):
            inside = UNetLevel(channels[k - 1], channels[k], inside)
        self.model = UNetLevel(1, width, inside, outermost=True)

    def config(self) -> Dict[str, Any]:
        return {"width": self.width, "levels": self.levels}

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return _to_unit(self.model(_to_signed(image)))


def build_generator(architecture: str, config: Mapping[str, Any]) -> nn.Module:
    """An untrained generator of ``architecture`` (:data:`ARCHITECTURES`) with ``config`` (its ``config()``);
    ValueError for an unknown architecture or a bad config."""
    kinds = {RESNET: ResnetGenerator, UNET: UNetGenerator}
    if architecture not in kinds:
        raise ValueError(f"unknown style architecture {architecture!r}; use one of {', '.join(ARCHITECTURES)}")
    try:
        return kinds[architecture](**dict(config))
    except TypeError as err:
        raise ValueError(f"bad {architecture} config {dict(config)} ({err})") from None


def size_multiple(architecture: str, config: Mapping[str, Any]) -> int:
    """The number an image edge must be a multiple of for a generator of ``architecture`` with ``config``."""
    return 2 ** int(config["levels"]) if architecture == UNET else 4


# ------------------------------------------------------------------------------------- discriminator


class PatchDiscriminator(nn.Module):
    """The 70 x 70 PatchGAN (``layers`` = 3): ``C w, C 2w, C 4w`` stride 2, ``C 8w`` stride 1, then a 1-channel
    4 x 4 convolution; one real/fake score per overlapping patch, (N, 1, S', S'). Input (N, 1, S, S) in [0, 1]."""

    def __init__(self, width: int = 64, layers: int = 3) -> None:
        super().__init__()
        blocks = [nn.Conv2d(1, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        channels = width
        for k in range(1, layers + 1):
            out = width * min(2**k, 8)
            stride = 2 if k < layers else 1
            blocks += [nn.Conv2d(channels, out, 4, stride=stride, padding=1), _norm(out), nn.LeakyReLU(0.2, True)]
            channels = out
        blocks.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*blocks)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(_to_signed(image))


# --------------------------------------------------------------------------------------------- losses


def lsgan_loss(scores: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN loss: mean of ``(score - 1)^2`` for ``real`` targets, of ``score^2`` for fake ones (in
    at least single precision)."""
    scores = scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores
    return F.mse_loss(scores, torch.full_like(scores, 1.0 if real else 0.0))


def discriminator_loss(discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """``0.5 * (LSGAN(D(real), 1) + LSGAN(D(fake), 0))``: the paper halves D's objective to slow it against G."""
    return 0.5 * (lsgan_loss(discriminator(real), True) + lsgan_loss(discriminator(fake), False))


def cycle_loss(reconstructed: torch.Tensor, original: torch.Tensor, weight: float) -> torch.Tensor:
    """``weight * mean |reconstructed - original|`` (the paper's lambda-weighted L1 cycle term for one direction)."""
    return weight * F.l1_loss(reconstructed, original)


def identity_loss(mapped: torch.Tensor, original: torch.Tensor, weight: float) -> torch.Tensor:
    """``weight * mean |G(y) - y|`` for an image ``y`` already in G's target domain (weight = lambda_idt * lambda)."""
    return weight * F.l1_loss(mapped, original)


# ------------------------------------------------------------------------------------------------ EMA


class ExponentialMovingAverage:
    """A copy of a network whose floating-point parameters follow ``ema = d * ema + (1 - d) * current`` after
    every :meth:`update`; other tensors (buffers) are copied.

    ``d`` is ``decay``, or with ``warmup`` ``min(decay, (1 + n) / (10 + n))`` after n earlier updates (the
    ``num_updates`` rule of TensorFlow's ExponentialMovingAverage), so that a short run does not export
    mostly its initial weights.
    """

    def __init__(self, network: nn.Module, decay: float, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay {decay} must be in [0, 1)")
        self.decay, self.warmup, self.updates = decay, warmup, 0
        self.module = copy.deepcopy(network).eval().requires_grad_(False)

    def decay_now(self) -> float:
        """The ``d`` of the next :meth:`update`."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, network: nn.Module) -> None:
        """Move the average towards ``network``'s current weights (same architecture)."""
        d = self.decay_now()
        current = network.state_dict()
        for name, value in self.module.state_dict().items():
            if value.is_floating_point():
                value.mul_(d).add_(current[name].detach(), alpha=1.0 - d)
            else:
                value.copy_(current[name])
        self.updates += 1

    def state_dict(self) -> Dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
