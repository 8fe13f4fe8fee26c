"""X2CT-GAN generators (+S single view, +B biplanar) and the conditional 3D PatchGAN discriminator.

A clean-room reimplementation from a prose description of the official code
(kylekma/X2CT, ``3DGAN/lib/model/nets``). Module names,
``nn.Sequential`` indices and parameter shapes reproduce the official ``state_dict`` exactly, so an
official checkpoint loads with ``load_state_dict(strict=True)``. With the default
:class:`GeneratorConfig` the parameter counts are the official ones: 29,384,481 (+S),
61,740,467 (+B), 11,055,169 (D, 3 input channels) and 11,051,073 (D, 2 input channels).

Shapes (S = ``grid_size``, 128 officially; s = S/32; widths at ``width=1``)::

    radiograph (N,1,S,S) in [0,1]
      encoder (2D):   stem 64@S² -> stage0 128@(S/2)² -> stage1 256@(S/4)² -> stage2 512@(S/8)²
                      -> stage3 512@(S/16)² -> stage4 704@(S/32)² -> global average pool 704
      Connection-A:   Linear 704 -> 256·s³, Dropout 0.5 (GeneratorConfig.dropout), ReLU, reshape (N,256,s,s,s)
      Connection-B:   linker i lifts encoder skip i to 3D by copying it along a new dim 2
                      (the ray axis): 16@S³, 16@(S/2)³, 32@(S/4)³, 64@(S/8)³, 128@(S/16)³
      decoder (3D):   256@s³ -> 128@(S/16)³ -> 64 -> 32 -> 16 -> 16@S³, each level
                      cat[decoder, linker] -> compress conv -> convs -> ConvTranspose ×2
      head:           Conv3d 16->1 7³, ReLU -> (N,1,S,S,S)

Axis orders. A view branch works in its *view-local* order (ray, image rows, image columns). The
canonical CT order of :mod:`x2ct.geometry` is (D, H, W) = (rows of both radiographs = S->I,
PA ray = A->P, PA columns = lateral ray = R->L), i.e. the official "CT order". Local -> canonical
is the permutation ``VIEW1_TO_CT`` = (0,1,3,2,4) for the PA branch and ``VIEW2_TO_CT`` = (0,1,3,4,2)
for the lateral branch (Connection-C). Both public generators return canonical order.

Official inference semantics, reproduced here:

* Dropout off (``eval()``).
* Instance normalisation always uses the statistics of the instance itself. The official layers are
  ``InstanceNorm(affine=False, track_running_stats=True)``: they own running buffers (which the
  checkpoints contain) but the official test scripts put them back in train mode, so the buffers
  are never used. :class:`InstanceNorm2d`/:class:`InstanceNorm3d` keep the buffers (for strict
  loading) and never read or update them, in any mode.
* In eval mode the output is clamped to [0,1] (official ``post_process``); in training mode the raw
  ReLU output is returned, as the official losses see it.
* The biplanar model's per-view heads (``view*Model.decoder_layer-1`` and ``view*Model.decoder_layer``)
  feed only an auxiliary loss with weight 0: :meth:`X2CTBiplanar.forward` skips them (identical fused
  output, about 35% cheaper); :meth:`X2CTBiplanar.forward_with_view_heads` computes all three outputs.
* In eval mode, by default, the skip links, the transposed convolutions and the 7³ head are
  evaluated in cheaper forms that are exact up to float rounding (:mod:`.fast_ops`). Set
  ``model.fast_inference = False`` for the plain path (training always uses the plain path).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fast_ops import conv3d_fft, conv_cat_planes, conv_transpose_subpixel, linker_planes

VIEW1_TO_CT = (0, 1, 3, 2, 4)
"""Permutation of a PA-branch volume (N,C,ray,rows,cols) into canonical (N,C,D,H,W)."""
VIEW2_TO_CT = (0, 1, 3, 4, 2)
"""Permutation of a lateral-branch volume (N,C,ray,rows,cols) into canonical (N,C,D,H,W)."""
CT_TO_VIEW1 = (0, 1, 3, 2, 4)
"""Inverse of ``VIEW1_TO_CT``."""
CT_TO_VIEW2 = (0, 1, 4, 2, 3)
"""Inverse of ``VIEW2_TO_CT``."""

DENSE_LAYERS = (6, 12, 24, 16, 6)
"""Dense layers per encoder stage."""
BRANCH_DECODER_CONVS = (1, 2, 2, 2, 2, 0)
"""Convs after the compress conv in a view branch, indexed by level + 1 (levels -1..4)."""
FUSED_DECODER_CONVS = (1, 1, 1, 1, 1, 0)
"""Convs after the compress conv in the biplanar model's fused decoder, indexed by level + 1."""
LEVELS = (4, 3, 2, 1, 0, -1)
"""Decoder levels in execution order (4 = coarsest, -1 = full resolution without upsampling)."""


@dataclass(frozen=True)
class GeneratorConfig:
    """Size hyper-parameters. The defaults are the official ones (width 1, 128² in, 128³ out).

    Every channel count is the official one times ``width`` (rounded, at least 1); ``grid_size``
    is both the radiograph size and the output cube edge and must be a multiple of 32, at least 64.
    ``dropout``: the probability of Connection-A's dropout in training (0.5 officially).
    """

    grid_size: int = 128
    width: float = 1.0
    dropout: float = 0.5

    def __post_init__(self) -> None:
        if self.grid_size < 64 or self.grid_size % 32:
            raise ValueError(f"grid_size must be a multiple of 32 and at least 64, got {self.grid_size}")
        if not self.width > 0:
            raise ValueError(f"width must be positive, got {self.width}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def channels(self, official: int) -> int:
        """An official channel count scaled by ``width``."""
        return max(1, int(round(official * self.width)))

    @property
    def growth(self) -> int:
        """Dense-block growth rate (32 officially); the bottleneck is 4× this."""
        return self.channels(32)

    @property
    def encoder_channels(self) -> Tuple[int, ...]:
        """Channels of the stem and the five stage outputs: (64, 128, 256, 512, 512, 704) officially."""
        chans = [self.channels(64)]
        for stage, n_layers in enumerate(DENSE_LAYERS):
            grown = chans[-1] + n_layers * self.growth
            chans.append(grown // 2 if stage < 4 else grown)
        return tuple(chans)

    @property
    def decoder_channels(self) -> Tuple[int, ...]:
        """Decoder channels per level 0..5: (16, 16, 32, 64, 128, 256) officially."""
        return tuple(self.channels(c) for c in (16, 16, 32, 64, 128, 256))

    @property
    def bottom_size(self) -> int:
        """Edge of the cube produced by Connection-A (4 officially)."""
        return self.grid_size // 32

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------------


class InstanceNorm2d(nn.InstanceNorm2d):
    """``InstanceNorm2d(affine=False, track_running_stats=True)`` that always normalises with the
    statistics of each instance. The running buffers exist only so official state_dicts load strictly."""

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features, affine=False, track_running_stats=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.instance_norm(x, eps=self.eps)


class InstanceNorm3d(nn.InstanceNorm3d):
    """3D counterpart of :class:`InstanceNorm2d` (per-instance statistics, buffers never used)."""

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features, affine=False, track_running_stats=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.instance_norm(x, eps=self.eps)


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


class _Nest(nn.Module):
    """Holds one module under the attribute ``block`` (reproduces the official ``….block.block.0`` keys)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class _FastSwitch:
    """Mixin: ``fast`` (set by the generator's ``fast_inference``) selects the :mod:`.fast_ops` form in eval mode."""

    fast = False
    training: bool

    def use_fast(self) -> bool:
        return self.fast and not self.training


class Upsample(_FastSwitch, nn.Module):
    """ConvTranspose3d (k3, s2, p1, output_padding 1) + IN + ReLU: (N,cin,n,n,n) -> (N,cout,2n,2n,2n)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ConvTranspose3d(cin, cout, 3, stride=2, padding=1, output_padding=1),
            InstanceNorm3d(cout),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        if not self.use_fast():
            return self.block(x)
        conv, norm, relu = self.block
        return relu(norm(conv_transpose_subpixel(conv, x)))


class HeadConv3d(_FastSwitch, nn.Conv3d):
    """The output head's Conv3d (C -> 1, 7³, padding 3); FFT-evaluated in fast eval mode."""

    def __init__(self, cin: int) -> None:
        super().__init__(cin, 1, 7, padding=3)

    def forward(self, x: Tensor) -> Tensor:
        return conv3d_fft(self, x) if self.use_fast() else super().forward(x)


def conv3d_block(cin: int, cout: int) -> List[nn.Module]:
    """Conv3d 3³ (padding 1) + IN + ReLU, as three Sequential slots."""
    return [nn.Conv3d(cin, cout, 3, padding=1), InstanceNorm3d(cout), nn.ReLU(inplace=True)]


def upsample_block(cin: int, cout: int) -> nn.Module:
    """An :class:`Upsample` nested as in the official keys (``<slot>.block.block.0`` is the ConvTranspose3d)."""
    return _Nest(Upsample(cin, cout))


def head(cin: int) -> nn.Sequential:
    """Output head ``decoder_layer``: Conv3d 7³ -> 1 channel, ReLU."""
    return nn.Sequential(HeadConv3d(cin), nn.ReLU(inplace=True))


def set_fast_inference(model: nn.Module, on: bool) -> None:
    """Switch every fast-capable submodule of ``model``."""
    for module in model.modules():
        if isinstance(module, _FastSwitch):
            module.fast = on


class DenseLayer2d(nn.Module):
    """Pre-activation dense layer: IN, ReLU, 1×1 conv -> 4·growth, IN, ReLU, 3×3 conv -> growth; returns cat[x, new]."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm1 = InstanceNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, 4 * growth, 1)
        self.norm2 = InstanceNorm2d(4 * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        # The first ReLU must not act in place on x, which is also concatenated.
        new = self.conv1(F.relu(self.norm1(x)))
        new = self.conv2(self.relu2(self.norm2(new)))
        return torch.cat([x, new], 1)


class DenseBlock2d(nn.Module):
    """``n_layers`` dense layers: (N,cin,h,w) -> (N,cin + n_layers·growth,h,w)."""

    def __init__(self, cin: int, n_layers: int, growth: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(*(DenseLayer2d(cin + j * growth, growth) for j in range(n_layers)))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_block(x)


class Linker(nn.Module):
    """Connection-B: (N,cin,h,w) -> 1×1 conv, IN, ReLU -> copy along a new dim 2 -> (N,c,h,h,w) -> 3³ conv, IN, ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.compress_block = nn.Sequential(nn.Conv2d(cin, cout, 1), InstanceNorm2d(cout), nn.ReLU(inplace=True))
        self.conv_block = nn.Sequential(*conv3d_block(cout, cout))

    def forward(self, x: Tensor) -> Tensor:
        x = self.compress_block(x)
        n, c, h, w = x.shape
        return self.conv_block(x.unsqueeze(2).expand(n, c, h, h, w))


# --------------------------------------------------------------------------------------------------
# One view branch (UNetLike_DownStep5) = the whole single-view generator
# --------------------------------------------------------------------------------------------------


class ViewBranch(nn.Module):
    """The official ``UNetLike_DownStep5``: one radiograph -> volume in view-local order.

    Modules: ``encoder_layer`` (stem), ``encoder_layer0..4``, ``base_link`` (Connection-A),
    ``linker_layer0..4`` (Connection-B), ``decoder_layer4..0``, ``decoder_layer-1`` and the head
    ``decoder_layer``. With ``split_compress`` (the biplanar branches) the compress conv block of
    each level lives in its own ``decoder_compress_layer{level}``, so the fusion can act between it
    and the rest of the level.
    """

    def __init__(self, config: GeneratorConfig, split_compress: bool) -> None:
        super().__init__()
        self.config = config
        self.split_compress = split_compress
        enc = config.encoder_channels
        dec = config.decoder_channels

        self.encoder_layer = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(1, enc[0], 7), InstanceNorm2d(enc[0]), nn.ReLU(inplace=True)
        )
        for stage, n_layers in enumerate(DENSE_LAYERS):
            cin = enc[stage]
            grown = cin + n_layers * config.growth
            layers: List[nn.Module] = [
                InstanceNorm2d(cin),
                nn.ReLU(inplace=True),
                nn.Conv2d(cin, cin, 3, stride=2, padding=1),
                DenseBlock2d(cin, n_layers, config.growth),
            ]
            if stage < 4:
                layers += [InstanceNorm2d(grown), nn.ReLU(inplace=True), nn.Conv2d(grown, grown // 2, 1)]
            else:
                layers += [nn.AdaptiveAvgPool2d(1)]
            self.add_module(f"encoder_layer{stage}", nn.Sequential(*layers))

        self.base_link = nn.Sequential(
            nn.Linear(enc[5], dec[5] * config.bottom_size**3), nn.Dropout(config.dropout), nn.ReLU(inplace=True)
        )
        for i in range(5):
            self.add_module(f"linker_layer{i}", nn.Sequential(Linker(enc[i], dec[i])))

        for level in (0, 1, 2, 3, 4, -1):  # official registration order
            if level == 4:
                self.add_module("decoder_layer4", nn.Sequential(upsample_block(dec[5], dec[4])))
                continue
            c = dec[level + 1]
            compress = conv3d_block(2 * c, c)
            rest: List[nn.Module] = []
            for _ in range(BRANCH_DECODER_CONVS[level + 1]):
                rest += conv3d_block(c, c)
            if level >= 0:
                rest.append(upsample_block(c, dec[level]))
            if split_compress:
                self.add_module(f"decoder_compress_layer{level}", nn.Sequential(*compress))
                self.add_module(f"decoder_layer{level}", nn.Sequential(*rest))
            else:
                self.add_module(f"decoder_layer{level}", nn.Sequential(*compress, *rest))
        self.decoder_layer = head(dec[0])

    def level(self, level: int) -> nn.Sequential:
        """``decoder_layer{level}`` (the name ``decoder_layer-1`` is not a Python identifier)."""
        return getattr(self, f"decoder_layer{level}")

    def encode(self, image: Tensor) -> Tuple[List[Tensor], Tensor]:
        """(N,1,S,S) -> (five 2D skip maps for linkers 0..4, bottom volume (N,256,s,s,s))."""
        skips = [self.encoder_layer(image)]
        for stage in range(4):
            skips.append(getattr(self, f"encoder_layer{stage}")(skips[-1]))
        pooled = self.encoder_layer4(skips[-1]).flatten(1)
        n, s = image.shape[0], self.config.bottom_size
        return skips, self.base_link(pooled).view(n, -1, s, s, s)

    def link(self, i: int, skip: Tensor) -> Tensor:
        """Connection-B ``i`` as a full volume in view-local order."""
        return getattr(self, f"linker_layer{i}")(skip)

    def compress(self, level: int, x: Tensor, skip: Tensor, fast: bool) -> Tensor:
        """Split branches only: ``decoder_compress_layer{level}(cat[x, linker(level+1)])`` in local order."""
        block = getattr(self, f"decoder_compress_layer{level}")
        if fast:
            planes = linker_planes(getattr(self, f"linker_layer{level + 1}")[0], skip)
            return conv_cat_planes(block, x, planes)
        return block(torch.cat([x, self.link(level + 1, skip)], 1))

    def decode_local(self, image: Tensor, fast: bool) -> Tensor:
        """Unsplit branch (the single-view generator): (N,1,S,S) -> raw head output (N,1,S,S,S), local order."""
        skips, x = self.encode(image)
        x = self.decoder_layer4(x)
        for level in LEVELS[1:]:
            layer = self.level(level)
            if fast:
                planes = linker_planes(getattr(self, f"linker_layer{level + 1}")[0], skips[level + 1])
                x = layer[3:](conv_cat_planes(layer[:3], x, planes))
            else:
                x = layer(torch.cat([x, self.link(level + 1, skips[level + 1])], 1))
        return self.decoder_layer(x)


def _check_view(x: Tensor, size: int, name: str) -> None:
    if x.dim() != 4 or x.shape[1] != 1 or x.shape[2] != size or x.shape[3] != size:
        raise ValueError(f"{name} must be (N,1,{size},{size}), got {tuple(x.shape)}")


def postprocess(volume: Tensor, training: bool) -> Tensor:
    """Clamp to [0,1] in eval mode (official test-time post-processing); the raw ReLU output in training."""
    return volume if training else volume.clamp(0.0, 1.0)


class _GeneratorAPI:
    """What both public generators share: identity, metadata and the ``fast_inference`` switch."""

    architecture: str
    views: Tuple[str, ...]
    training: bool
    _fast = True

    def _init_api(self) -> None:
        self.metadata: Optional[Any] = None
        """The model's :class:`x2ct.models.metadata.ModelMetadata`, set by :func:`x2ct.models.load_generator`."""
        self.fast_inference = True

    @property
    def fast_inference(self) -> bool:
        """Eval mode only: use the exact cheaper forms of :mod:`.fast_ops` (default True)."""
        return self._fast

    @fast_inference.setter
    def fast_inference(self, on: bool) -> None:
        self._fast = bool(on)
        set_fast_inference(self, self._fast)  # type: ignore[arg-type]

    def _fast_now(self) -> bool:
        return self._fast and not self.training


class X2CTSingleView(_GeneratorAPI, ViewBranch):
    """X2CT-GAN+S: ``forward(pa) -> (N,1,S,S,S)`` in canonical (D,H,W) order; keys are the branch keys, unprefixed."""

    architecture = "x2ct_gan_singleview"
    views = ("PA",)

    def __init__(self, config: Optional[GeneratorConfig] = None) -> None:
        super().__init__(config or GeneratorConfig(), split_compress=False)
        self._init_api()

    def forward(self, pa: Tensor, lateral: Optional[Tensor] = None) -> Tensor:
        """pa (N,1,S,S) in [0,1] -> (N,1,D,H,W) canonical order; in eval mode clamped to [0,1]."""
        if lateral is not None:
            raise ValueError("a single-view (+S) model takes no lateral radiograph")
        _check_view(pa, self.config.grid_size, "pa")
        local = self.decode_local(pa, fast=self._fast_now())
        return postprocess(local.permute(VIEW1_TO_CT), self.training).contiguous()


# --------------------------------------------------------------------------------------------------
# Biplanar generator
# --------------------------------------------------------------------------------------------------


def _fuse(view1: Tensor, view2: Tensor) -> Tensor:
    """Connection-C: average of the two branch features (local order each) in canonical order."""
    return (view1.permute(VIEW1_TO_CT) + view2.permute(VIEW2_TO_CT)) / 2


class X2CTBiplanar(_GeneratorAPI, nn.Module):
    """X2CT-GAN+B (official ``MultiView_UNetLike_DenseDimensionNet``): PA + lateral -> (N,1,S,S,S) canonical.

    Modules: ``view1Model`` (PA branch) and ``view2Model`` (lateral branch), both split
    :class:`ViewBranch` es, and the fused decoder ``decoder_layer4..0``, ``decoder_layer-1`` (one
    conv per level) with the head ``decoder_layer``.

    Connection-C, at every level 4..-1: each branch's compressed feature is permuted into canonical
    order, the two are averaged, and the average (permuted back) replaces each branch's feature
    before the branch continues. The fused decoder takes the average at level 4 and
    cat[average, previous fused feature] (compress 2C -> C) below.
    """

    architecture = "x2ct_gan_biplanar"
    views = ("PA", "LATERAL")

    def __init__(self, config: Optional[GeneratorConfig] = None) -> None:
        super().__init__()
        self.config = config or GeneratorConfig()
        self.view1Model = ViewBranch(self.config, split_compress=True)
        self.view2Model = ViewBranch(self.config, split_compress=True)
        dec = self.config.decoder_channels
        for level in (0, 1, 2, 3, 4, -1):
            if level == 4:
                self.add_module("decoder_layer4", nn.Sequential(upsample_block(dec[5], dec[4])))
                continue
            c = dec[level + 1]
            layers = conv3d_block(2 * c, c)
            for _ in range(FUSED_DECODER_CONVS[level + 1]):
                layers += conv3d_block(c, c)
            if level >= 0:
                layers.append(upsample_block(c, dec[level]))
            self.add_module(f"decoder_layer{level}", nn.Sequential(*layers))
        self.decoder_layer = head(dec[0])
        self._init_api()

    def level(self, level: int) -> nn.Sequential:
        """Fused ``decoder_layer{level}``."""
        return getattr(self, f"decoder_layer{level}")

    def _decode(self, pa: Tensor, lateral: Tensor, view_heads: bool) -> Tuple[Tensor, ...]:
        """Raw outputs: (fused,) canonical, or (fused, PA-branch, lateral-branch) all canonical with ``view_heads``."""
        _check_view(pa, self.config.grid_size, "pa")
        _check_view(lateral, self.config.grid_size, "lateral")
        fast = self._fast_now()
        b1, b2 = self.view1Model, self.view2Model
        skips1, c1 = b1.encode(pa)
        skips2, c2 = b2.encode(lateral)
        avg = _fuse(c1, c2)  # level 4: the branches have no compress step
        fused = self.decoder_layer4(avg)
        x1 = b1.decoder_layer4(avg.permute(CT_TO_VIEW1))
        x2 = b2.decoder_layer4(avg.permute(CT_TO_VIEW2))
        for level in LEVELS[1:]:
            avg = _fuse(
                b1.compress(level, x1, skips1[level + 1], fast),
                b2.compress(level, x2, skips2[level + 1], fast),
            )
            fused = self.level(level)(torch.cat([avg, fused], 1))
            if level > -1 or view_heads:  # the branches' level -1 only feeds their own heads
                x1 = b1.level(level)(avg.permute(CT_TO_VIEW1))
                x2 = b2.level(level)(avg.permute(CT_TO_VIEW2))
        fused = self.decoder_layer(fused)
        if not view_heads:
            return (fused,)
        return fused, b1.decoder_layer(x1).permute(VIEW1_TO_CT), b2.decoder_layer(x2).permute(VIEW2_TO_CT)

    def forward(self, pa: Tensor, lateral: Optional[Tensor] = None) -> Tensor:
        """pa, lateral (N,1,S,S) in [0,1] -> fused (N,1,D,H,W) canonical; in eval mode clamped to [0,1]."""
        if lateral is None:
            raise ValueError("a biplanar (+B) model needs a lateral radiograph")
        return postprocess(self._decode(pa, lateral, view_heads=False)[0], self.training)

    def forward_with_view_heads(self, pa: Tensor, lateral: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """All three official outputs (fused, PA branch, lateral branch), each (N,1,D,H,W) canonical.

        What the official forward computes; the branch outputs feed only the auxiliary loss. Same
        post-processing as :meth:`forward`; the fused output is bit-identical to it when
        ``fast_inference`` is off (and equal up to rounding when on).
        """
        fused, v1, v2 = self._decode(pa, lateral, view_heads=True)
        return tuple(postprocess(v, self.training).contiguous() for v in (fused, v1, v2))  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# Discriminator
# --------------------------------------------------------------------------------------------------


def conditional_input(ct: Tensor, pa: Tensor, lateral: Optional[Tensor] = None) -> Tensor:
    """Official conditional-D input: [PA broadcast along H, lateral broadcast along W, CT] -> (N,2|3,D,H,W).

    Each radiograph is copied along its own ray axis of the canonical volume: PA rows/columns are
    D/W, lateral rows/columns are D/H.
    """
    shape = ct.shape
    channels = [pa.unsqueeze(3).expand(shape)]
    if lateral is not None:
        channels.append(lateral.unsqueeze(4).expand(shape))
    return torch.cat([*channels, ct], 1)


class PatchDiscriminator3D(nn.Module):
    """Conditional 3D PatchGAN (official ``NLayer_3D_Discriminator``, 3 layers, ndf 64, IN, no sigmoid).

    ``model.0`` Conv3d k4 s2 p2 (bias) + LeakyReLU 0.2; ``model.2/5`` Conv3d k4 s2 p2 without bias + IN
    + LeakyReLU; ``model.8`` the same with stride 1; ``model.11`` Conv3d k4 s1 p2 -> 1 (bias). The
    missing biases reproduce an official quirk. (N,views+1,128³) -> patch logits (N,1,19,19,19).
    """

    def __init__(self, views: int = 2, ndf: int = 64) -> None:
        super().__init__()
        self.views = views

        def down(cin: int, cout: int, stride: int) -> List[nn.Module]:
            return [nn.Conv3d(cin, cout, 4, stride, 2, bias=False), InstanceNorm3d(cout), nn.LeakyReLU(0.2, True)]

        self.model = nn.Sequential(
            nn.Conv3d(views + 1, ndf, 4, 2, 2),
            nn.LeakyReLU(0.2, True),
            *down(ndf, 2 * ndf, 2),
            *down(2 * ndf, 4 * ndf, 2),
            *down(4 * ndf, 8 * ndf, 1),
            nn.Conv3d(8 * ndf, 1, 4, 1, 2),
        )

    def forward(self, ct: Tensor, pa: Tensor, lateral: Optional[Tensor] = None) -> Tensor:
        """ct (N,1,D,H,W), radiographs (N,1,S,S) -> logits; ``lateral`` is required iff ``views == 2``."""
        if (lateral is not None) != (self.views == 2):
            raise ValueError(f"this discriminator is conditioned on {self.views} view(s)")
        return self.model(conditional_input(ct, pa, lateral))
