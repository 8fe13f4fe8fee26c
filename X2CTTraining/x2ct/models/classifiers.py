"""Disease classifiers on radiographs, CT (real or synthetic) and both; the registry that builds them.

Every network is a :class:`ClassifierNet`: ``forward(batch)`` takes a dict of float32 tensors and
returns logits (N, K) (apply a sigmoid for probabilities; the tasks are multi-label). Batch keys:

* ``"pa"``: (N, 1, S, S) PA radiograph in [0, 1]; rows superior->inferior, columns patient right->left.
* ``"lateral"``: (N, 1, S, S) lateral radiograph in [0, 1]; rows superior->inferior, columns
  anterior->posterior.
* ``"ct"``: (N, 1, D, H, W) CT in the unit scale of :mod:`x2ct.intensity` ((HU + 1024) / 2500 clipped to
  [0, 1]), on the canonical (D, H, W) axes of :mod:`x2ct.geometry`.

So a PA image is a (D, W) picture and a coronal CT slice (fixed H) is the same frame.

Every network also carries ``arch`` (its registry name), ``inputs`` (the batch keys it reads),
``optional_inputs`` (those it can do without), ``num_outputs`` and ``options`` (its constructor
options), and ``cam_layers``: input key -> the layer whose activations are spatially aligned with that
input, for :func:`x2ct.gradcam.grad_cam`. :meth:`ClassifierNet.cam_maps` maps class-activation maps on
those layers' grids back onto the inputs' grids.

Architectures (registry name, inputs):

* ``densenet2d`` (pa): DenseNet-121 on the PA (MONAI's ``DenseNet121``, ``spatial_dims=2``).
* ``hemis-densenet2d`` (pa, lateral optional): HeMIS fusion of two per-view DenseNets (Havaei et al.
  2016; the synthetic-CT TB classification paper's "HeMIS model with DenseNet-PA architecture").
* ``cnn3d`` (ct): the 3D CNN of Zunair et al. 2020 that the shape-induction and synthetic-CT TB papers
  use for CT.
* ``cnn3d-2slice`` (ct): the same CNN on the two central coronal slices only (the synthetic-CT TB
  paper's "2-slice CT").
* ``densenet3d`` (ct): DenseNet-121 3D (MONAI, ``spatial_dims=3``).
* ``concat-cnn3d`` (pa, ct): the PA repeated along A->P as a second CT channel (the synthetic-CT TB
  paper's "X-ray and CT concatenated").
* ``concat-cnn3d-2slice`` (pa, ct): the PA stacked with the two central coronal slices.
* ``late-fusion`` (pa, ct): a DenseNet branch on the PA and a Zunair branch on the CT, pooled features
  concatenated, then one linear layer.
* ``latent-densenet3d`` (ct): DenseNet-121 3D on the latents of a latent diffusion model's frozen slice VAE
  (the X-ray2CTPA seed's latent classifier); option ``vae`` names that model.

Build them with :func:`build_classifier`; :func:`classifier_config` gives the JSON-able arguments that
rebuild a network (``build_classifier(**classifier_config(net))``). Small ``width`` /
``init_features`` / ``growth_rate`` / ``block_config`` values give networks that train in seconds on a
CPU (tests, demo models). MONAI is imported only when a DenseNet is built.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Type

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Batch = Mapping[str, Tensor]
"""A classifier batch: input key -> float32 tensor (see the module docstring)."""

DENSENET121_BLOCKS = (6, 12, 24, 16)
"""Dense layers per block of DenseNet-121."""
ZUNAIR_CHANNELS = (64, 64, 128, 256)
"""Output channels of the four conv blocks of Zunair et al.'s 3D CNN (at ``width`` 1)."""
ZUNAIR_HIDDEN = 512
"""Width of the hidden fully connected layer of Zunair et al.'s 3D CNN (at ``width`` 1)."""
ZUNAIR_CAM_BLOCK = 1
"""Index of the Zunair conv block whose ReLU output Grad-CAM uses (the second; see :class:`ZunairTrunk`)."""


def _scaled(channels: int, width: float) -> int:
    """A channel count times ``width``, rounded, at least 1."""
    return max(1, int(round(channels * width)))


def _take(batch: Batch, key: str, ndim: int, arch: str) -> Tensor:
    """``batch[key]`` checked to be (N, C, *spatial) with ``ndim`` spatial axes."""
    if key not in batch or batch[key] is None:
        raise ValueError(f"{arch} needs the batch key {key!r}; got keys {sorted(batch)}")
    x = batch[key]
    if x.ndim != ndim + 2:
        raise ValueError(f"{arch}: batch[{key!r}] must have {ndim + 2} dimensions (N, C, ...), got {tuple(x.shape)}")
    return x


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """(N, C, *spatial) resampled to ``size`` (bilinear / trilinear, half-pixel centres); unchanged if equal."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


def resample_map(cam: Tensor, size: Sequence[int], shift: float = 0.0) -> Tensor:
    """A map on a layer's grid (N, *grid) resampled (bilinear / trilinear) onto the input grid ``size``.

    Along an axis where the layer is s = size / grid times coarser, cell u is centred on input position
    ``s·u + (s - 1)/2 + shift`` (shift 0 is the usual half-pixel convention of ``align_corners=False``:
    each cell centred on the block of s input pixels it pooled); beyond the first and last cell centres
    the edge value is kept.
    """
    coords = []
    for n_in, n_out in zip(cam.shape[1:], size):
        s = n_out / n_in
        u = (torch.arange(n_out, dtype=cam.dtype, device=cam.device) - (s - 1) / 2 - shift) / s
        coords.append(2 * u / (n_in - 1) - 1 if n_in > 1 else torch.zeros_like(u))
    grid = torch.stack(torch.meshgrid(*coords, indexing="ij")[::-1], dim=-1)  # grid_sample wants (x, y[, z])
    grid = grid.unsqueeze(0).expand(cam.shape[0], *grid.shape)
    return F.grid_sample(cam.unsqueeze(1), grid, mode="bilinear", padding_mode="border", align_corners=True)[:, 0]


def central_coronal_slab(ct: Tensor) -> Tensor:
    """The two central coronal slices of a CT as a depth-2 volume.

    ``ct`` (N, C, D, H, W) -> (N, C, 2, D, W): slices ``H//2 - 1`` and ``H//2`` along the A->P axis,
    each a (D, W) = (S->I rows, R->L columns) image, i.e. the PA frame.
    """
    h = ct.shape[3]
    if h < 2:
        raise ValueError(f"the CT needs at least 2 voxels along A->P for two central slices, got {h}")
    return ct[:, :, :, h // 2 - 1 : h // 2 + 1, :].permute(0, 1, 3, 2, 4)


class HalvingMaxPool3d(nn.Module):
    """Max-pooling that halves every spatial axis longer than one voxel and leaves length-1 axes alone.

    Kernel and stride are 2 along an axis of length >= 2 and 1 along an axis of length 1; odd lengths
    round up (``ceil_mode``), so no voxel is dropped. On a full CT this is plain 2³ max-pooling. It is
    what lets the depth-2 (or depth-3) slab of the two-slice variants pass the four blocks of the Zunair
    CNN: depth 2 -> 1 -> 1 -> 1 -> 1 (3 -> 2 -> 1 -> 1 -> 1), while rows and columns keep halving.
    """

    def forward(self, x: Tensor) -> Tensor:
        kernel = tuple(2 if n > 1 else 1 for n in x.shape[2:])
        return F.max_pool3d(x, kernel_size=kernel, stride=kernel, ceil_mode=True)


class ZunairBlock(nn.Sequential):
    """3³ convolution (padding 1) -> ReLU -> :class:`HalvingMaxPool3d` -> batch norm (Zunair et al.'s order).

    The padding keeps the grid centred on the input's, so activations stay aligned with it (the
    original Keras model uses unpadded convolutions, which crop one voxel per side at every block).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.ReLU(),
            HalvingMaxPool3d(),
            nn.BatchNorm3d(out_channels),
        )


class ZunairTrunk(nn.Module):
    """The four conv blocks of Zunair et al. 2020 (64, 64, 128, 256 channels times ``width``).

    (N, in_channels, D, H, W) -> (N, ``out_channels``, D/16, H/16, W/16) (length-1 axes stay 1).

    ``cam_layer`` is the ReLU output of the second block, before its max-pooling: at 1/2 of the input
    grid (32³ cells of 2 voxels, 10 mm, on a 64³ CT), receptive field about 10 voxels. The last block's
    grid (1/16: 4³ cells of 80 mm on 64³) cannot say where a 5-20 mm lesion is, since an upsampled map
    peaks near a cell centre. The second block is the deepest whose features are lesion-sized; its
    channels are still weighted by the gradient of the whole head, so the map stays class-specific.
    Before the pooling rather than after it halves the cell (the pooled grid is 1/4): on the synthetic
    benchmark's 64³ real-CT TB classifier the Grad-CAM peak lies inside a lesion mask in 24 of 58
    held-out positives instead of 16, and the first or third block does worse (9 and 15; the table in
    docs/classifier_reproduction.md). Taking the activations before the batch norm matters too:
    Grad-CAM assumes non-negative activations, and in eval mode the norm is a per-channel affine map whose
    offsets only add a constant that can push the whole ReLU'd map to zero.
    """

    def __init__(self, in_channels: int, width: float) -> None:
        super().__init__()
        channels = [_scaled(c, width) for c in ZUNAIR_CHANNELS]
        self.blocks = nn.Sequential(
            *(ZunairBlock(c_in, c_out) for c_in, c_out in zip([in_channels, *channels[:-1]], channels))
        )
        self.out_channels = channels[-1]

    @property
    def cam_layer(self) -> nn.Module:
        return self.blocks[ZUNAIR_CAM_BLOCK][1]

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)


class ZunairHead(nn.Module):
    """Global average pooling -> FC 512·width -> ReLU -> dropout -> FC K (Zunair et al.)."""

    def __init__(self, in_channels: int, num_outputs: int, width: float, dropout: float) -> None:
        super().__init__()
        hidden = _scaled(ZUNAIR_HIDDEN, width)
        self.fc = nn.Linear(in_channels, hidden)
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, num_outputs)

    def forward(self, features: Tensor) -> Tensor:
        pooled = features.flatten(2).mean(2)
        return self.out(self.dropout(self.act(self.fc(pooled))))


class DenseNetEncoder(nn.Module):
    """MONAI ``DenseNet121``'s feature extractor (stem, dense blocks, transitions, final norm) + ReLU.

    (N, in_channels, *spatial) -> (N, ``out_channels``, *spatial / (4·2^(B-1))), B = len(block_config)
    (1/32 for DenseNet-121). MONAI's classification layers are not used; the heads here add dropout and
    fusion.

    ``cam_layer`` is the 1x1 convolution of the last transition, just before its pooling: the map that
    enters the last dense block, at 1/16 of the input for DenseNet-121 (8x8 for a 128² radiograph,
    4³ for a 64³ CT) instead of the final 1/32 (4x4, 2³), after all but the last dense block. With a
    single block there is no transition and the final ReLU'd features are used.

    Grid: the stem's 7-wide stride-2 convolution (padding 3) centres output j on input 2j and its
    3-wide stride-2 max-pool (padding 1) centres cell k on input 4k; each transition's 2x2 average
    keeps that, so a cell of a 1/s grid is centred on input ``s·u + s/2 - 2``: :data:`CAM_SHIFT` = -1.5
    pixels from the half-pixel convention, on every axis and level.

    DenseNet maps are region-level: the 7-wide stem and the dense layers give even the 1/4 grid of a
    two-block net a receptive field of about ±13 pixels. Trained on a 3-pixel-radius blob in 32² to 64²
    noise, tiny DenseNets' CAMs cover the blob's region, but their peak lands within a pixel of the blob
    in 3 % to 97 % of cases depending on the seed (the Zunair CNN: 95-100 %).
    """

    CAM_SHIFT = -1.5

    def __init__(
        self, spatial_dims: int, in_channels: int, init_features: int, growth_rate: int, block_config: Tuple[int, ...]
    ) -> None:
        super().__init__()
        from monai.networks.nets import DenseNet121  # imported here: MONAI takes seconds to import

        net = DenseNet121(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=1,
            init_features=init_features,
            growth_rate=growth_rate,
            block_config=block_config,
        )
        self.features = net.features
        self.relu = nn.ReLU()
        self.out_channels: int = net.class_layers.out.in_features
        self.num_blocks = len(block_config)

    @property
    def min_size(self) -> int:
        """Smallest input edge (pixels / voxels): the stem quarters it (rounding up), then B-1 transitions halve it."""
        return 4 * (2 ** (self.num_blocks - 1) - 1) + 1

    @property
    def cam_layer(self) -> nn.Module:
        if self.num_blocks == 1:
            return self.relu
        return getattr(self.features, f"transition{self.num_blocks - 1}").conv

    def forward(self, x: Tensor) -> Tensor:
        if min(x.shape[2:]) < self.min_size:
            raise ValueError(
                f"a DenseNet with {self.num_blocks} blocks needs inputs of at least {self.min_size} "
                f"pixels per axis, got {tuple(x.shape[2:])}"
            )
        return self.relu(self.features(x))


class LinearHead(nn.Module):
    """Dropout -> Linear, on a pooled feature vector (N, C) -> (N, K)."""

    def __init__(self, in_features: int, num_outputs: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(in_features, num_outputs)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.out(self.dropout(pooled))


def _global_pool(features: Tensor) -> Tensor:
    """(N, C, *spatial) -> (N, C) spatial mean."""
    return features.flatten(2).mean(2)


class ClassifierNet(nn.Module):
    """Base of every classifier: registry name, inputs, options and Grad-CAM geometry."""

    arch: str = ""
    inputs: Tuple[str, ...] = ()
    optional_inputs: Tuple[str, ...] = ()

    def __init__(self, num_outputs: int, options: Dict[str, Any]) -> None:
        super().__init__()
        self.num_outputs = num_outputs
        self.options = dict(options)

    @property
    def cam_layers(self) -> Dict[str, nn.Module]:
        """Input key -> the layer whose activations are spatially aligned with that input."""
        raise NotImplementedError

    def forward(self, batch: Batch) -> Tensor:
        raise NotImplementedError

    @property
    def cam_shifts(self) -> Dict[str, float]:
        """Input key -> ``shift`` of :func:`resample_map` for that key's cam layer (absent: 0)."""
        return {}

    def cam_maps(self, layer_maps: Mapping[str, Tensor], batch: Batch) -> Dict[str, Tensor]:
        """Class-activation maps on the ``cam_layers`` grids -> maps on the inputs' grids.

        ``layer_maps[key]`` is (N, *layer_spatial); the result's ``[key]`` is (N, *input_spatial) in the
        input's axis order. Here: :func:`resample_map` of each map onto its own input with the layer's
        ``cam_shifts``; networks whose layers are not in their inputs' frames override this.
        """
        shifts = self.cam_shifts
        return {
            key: resample_map(cam, batch[key].shape[2:], shifts.get(key, 0.0))
            for key, cam in layer_maps.items()
            if key in batch and batch[key] is not None
        }


class DenseNet2d(ClassifierNet):
    """``densenet2d``: DenseNet-121 on the PA radiograph.

    ``batch["pa"]`` (N, 1, S, S) in [0, 1] -> logits (N, K). Head: ReLU'd final features, global average
    pooling, dropout ``dropout``, linear. S >= 29 for four blocks (see :class:`DenseNetEncoder`).
    :class:`DenseNet3d` is the same network on the CT (``spatial_dims`` and the input key differ).
    """

    arch = "densenet2d"
    inputs = ("pa",)
    spatial_dims = 2

    def __init__(
        self,
        num_outputs: int,
        *,
        init_features: int = 64,
        growth_rate: int = 32,
        block_config: Tuple[int, ...] = DENSENET121_BLOCKS,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(
            num_outputs,
            dict(init_features=init_features, growth_rate=growth_rate, block_config=block_config, dropout=dropout),
        )
        self.encoder = DenseNetEncoder(self.spatial_dims, 1, init_features, growth_rate, block_config)
        self.head = LinearHead(self.encoder.out_channels, num_outputs, dropout)

    @property
    def cam_layers(self) -> Dict[str, nn.Module]:
        return {self.inputs[0]: self.encoder.cam_layer}

    @property
    def cam_shifts(self) -> Dict[str, float]:
        return {self.inputs[0]: DenseNetEncoder.CAM_SHIFT}

    def forward(self, batch: Batch) -> Tensor:
        return self.head(_global_pool(self.encoder(_take(batch, self.inputs[0], self.spatial_dims, self.arch))))


class HeMISDenseNet2d(ClassifierNet):
    """``hemis-densenet2d``: HeMIS fusion (Havaei et al. 2016) of a PA and an optional lateral radiograph.

    ``batch["pa"]`` (N, 1, S, S) and optionally ``batch["lateral"]`` (N, 1, S, S), both in [0, 1] ->
    logits (N, K). Each view has its own DenseNet (the HeMIS "back-end" per modality); its ReLU'd
    features are globally average-pooled to a vector; the vectors of the views present are fused by
    their mean and their variance (population variance, so 0 with one view), concatenated (2C), then
    dropout and a linear layer.

    **Fusion level: after global pooling.** HeMIS fuses feature maps elementwise because its MRI
    modalities are co-registered voxel by voxel. A PA and a lateral share only the row axis (S->I): a
    PA column is a position along R->L, a lateral column a position along A->P, so the mean and
    variance of the two maps at one pixel would mix unrelated anatomy (Hashir et al. 2020 fuse the maps
    anyway, after the second dense block). Pooled descriptors have no position, so their moments
    compare like with like; each view keeps its own full-resolution map for Grad-CAM; and a missing
    lateral gives exactly (PA features, 0), the single-view input the head also sees in training.

    **Missing lateral.** Without ``"lateral"`` in the batch (or ``None``) the lateral branch is not run
    and the fusion sees the PA alone, in training and at inference. ``view_dropout`` p: in training
    mode each case's lateral is dropped with probability p (HeMIS's random modality dropping, so the
    head learns the single-view case); only the lateral is dropped because the PA is always present in
    this project. Off (p = 0) by default and never applied in eval mode.
    """

    arch = "hemis-densenet2d"
    inputs = ("pa", "lateral")
    optional_inputs = ("lateral",)

    def __init__(
        self,
        num_outputs: int,
        *,
        init_features: int = 64,
        growth_rate: int = 32,
        block_config: Tuple[int, ...] = DENSENET121_BLOCKS,
        dropout: float = 0.0,
        view_dropout: float = 0.0,
    ) -> None:
        super().__init__(
            num_outputs,
            dict(
                init_features=init_features,
                growth_rate=growth_rate,
                block_config=block_config,
                dropout=dropout,
                view_dropout=view_dropout,
            ),
        )
        self.view_dropout = view_dropout
        self.encoders = nn.ModuleDict(
            {view: DenseNetEncoder(2, 1, init_features, growth_rate, block_config) for view in ("pa", "lateral")}
        )
        self.head = LinearHead(2 * self.encoders["pa"].out_channels, num_outputs, dropout)

    @property
    def cam_layers(self) -> Dict[str, nn.Module]:
        return {view: encoder.cam_layer for view, encoder in self.encoders.items()}

    @property
    def cam_shifts(self) -> Dict[str, float]:
        return {view: DenseNetEncoder.CAM_SHIFT for view in self.encoders}

    def fuse(self, pa: Tensor, lateral: Optional[Tensor], lateral_present: Optional[Tensor]) -> Tensor:
        """HeMIS abstraction layer: [mean, variance] over the views present, (N, C) each -> (N, 2C).

        ``lateral_present`` (N,) in {0, 1} says per case whether ``lateral`` counts (all cases when None).
        """
        if lateral is None:
            return torch.cat([pa, torch.zeros_like(pa)], dim=1)
        m = torch.ones_like(pa[:, :1]) if lateral_present is None else lateral_present.to(pa.dtype)[:, None]
        mean = (pa + m * lateral) / (1 + m)
        var = ((pa - mean) ** 2 + m * (lateral - mean) ** 2) / (1 + m)
        return torch.cat([mean, var], dim=1)

    def forward(self, batch: Batch) -> Tensor:
        pa = _global_pool(self.encoders["pa"](_take(batch, "pa", 2, self.arch)))
        lateral = present = None
        if batch.get("lateral") is not None:
            lateral = _global_pool(self.encoders["lateral"](_take(batch, "lateral", 2, self.arch)))
            if self.training and self.view_dropout > 0:
                present = (torch.rand(pa.shape[0], device=pa.device) >= self.view_dropout).to(pa.dtype)
        return self.head(self.fuse(pa, lateral, present))


class CNN3d(ClassifierNet):
    """``cnn3d``: the 3D CNN of Zunair et al. 2020 on the whole CT.

    ``batch["ct"]`` (N, 1, D, H, W), unit intensity, canonical axes -> logits (N, K). Four blocks
    (3³ conv, ReLU, max-pool 2, batch norm; 64/64/128/256 channels times ``width``), global average
    pooling, FC 512·width, ReLU, dropout ``dropout`` (0.3 as in Zunair et al.'s code), FC K. Grad-CAM
    layer: the second block (see :class:`ZunairTrunk`).
    """

    arch = "cnn3d"
    inputs = ("ct",)

    def __init__(self, num_outputs: int, *, width: float = 1.0, dropout: float = 0.3) -> None:
        super().__init__(num_outputs, dict(width=width, dropout=dropout))
        self.trunk = ZunairTrunk(1, width)
        self.head = ZunairHead(self.trunk.out_channels, num_outputs, width, dropout)

    @property
    def cam_layers(self) -> Dict[str, nn.Module]:
        return {"ct": self.trunk.cam_layer}

    def forward(self, batch: Batch) -> Tensor:
        return self.head(self.trunk(_take(batch, "ct", 3, self.arch)))


class CNN3dTwoSlice(CNN3d):
    """``cnn3d-2slice``: the Zunair CNN on the two central coronal CT slices only (the synthetic-CT TB paper's
    "2-slice CT").

    ``batch["ct"]`` (N, 1, D, H, W) -> :func:`central_coronal_slab` (N, 1, 2, D, W) (slices H//2-1 and
    H//2, each in the PA frame) -> the :class:`CNN3d` layers. The slab's depth is pooled to 1 by the
    first block and stays 1 (:class:`HalvingMaxPool3d`). The seed found the central slices of a synthetic
    CT sharper than the rest; the network never sees any other slice.

    Grad-CAM: the map over the slab is reduced to one (D, W) map (maximum over the two slices) and
    repeated along H, so the "ct" map of a two-slice model is the same on every coronal slice; it says
    where in the coronal plane the central slices drove the output, nothing about A->P position.
    """

    arch = "cnn3d-2slice"

    def forward(self, batch: Batch) -> Tensor:
        return self.head(self.trunk(central_coronal_slab(_take(batch, "ct", 3, self.arch))))

    def cam_maps(self, layer_maps: Mapping[str, Tensor], batch: Batch) -> Dict[str, Tensor]:
        ct = batch["ct"]
        coronal = _slab_cam(layer_maps["ct"], (2, ct.shape[2], ct.shape[4]))
        return {"ct": coronal.unsqueeze(2).expand(-1, -1, ct.shape[3], -1)}


def _slab_cam(cam: Tensor, slab_shape: Tuple[int, int, int]) -> Tensor:
    """(N, *layer grid of a slab) -> (N, D, W): resampled onto the slab (n, D, W), maximum over its n slices."""
    return resample_map(cam, slab_shape).amax(dim=1)


class DenseNet3d(DenseNet2d):
    """``densenet3d``: DenseNet-121 3D (MONAI, ``spatial_dims=3``) on the whole CT.

    ``batch["ct"]`` (N, 1, D, H, W) -> logits (N, K); head as :class:`DenseNet2d`. Edges >= 29 voxels
    for four blocks.
    """

    arch = "densenet3d"
    inputs = ("ct",)
    spatial_dims = 3


class ConcatCNN3d(ClassifierNet):
    """``concat-cnn3d``: the PA as a second CT channel, then the Zunair CNN (the synthetic-CT TB paper's input
    concatenation).

    ``batch["pa"]`` (N, 1, S, S) is resampled (bilinear) to the CT's (D, W) when S differs (both cover
    the chest; the alignment is only as good as the radiograph's field of view matches the CT cube),
    repeated along A->P to (N, 1, D, H, W) and concatenated with ``batch["ct"]`` -> (N, 2, D, H, W).

    Grad-CAM: the network's only map is on the CT grid, so ``cam_layers`` has just "ct";
    :meth:`cam_maps` adds "pa" = the CT map's maximum along A->P (the axis the PA was repeated along),
    resampled to (S, S).
    """

    arch = "concat-cnn3d"
    inputs = ("pa", "ct")
    trunk_channels = 2
    """Input channels of the Zunair trunk (CT and PA as channels here; one channel for the two-slice stack)."""

    def __init__(self, num_outputs: int, *, width: float = 1.0, dropout: float = 0.3) -> None:
        super().__init__(num_outputs, dict(width=width, dropout=dropout))
        self.trunk = ZunairTrunk(self.trunk_channels, width)
        self.head = ZunairHead(self.trunk.out_channels, num_outputs, width, dropout)

    @property
    def cam_layers(self) -> Dict[str, nn.Module]:
        return {"ct": self.trunk.cam_layer}

    def forward(self, batch: Batch) -> Tensor:
        ct = _take(batch, "ct", 3, self.arch)
        d, h, w = ct.shape[2:]
        pa = _resize(_take(batch, "pa", 2, self.arch), (d, w))
        return self.head(self.trunk(torch.cat([ct, pa.unsqueeze(3).expand(-1, -1, -1, h, -1)], dim=1)))

    def cam_maps(self, layer_maps: Mapping[str, Tensor], batch: Batch) -> Dict[str, Tensor]:
        ct_map = resample_map(layer_maps["ct"], batch["ct"].shape[2:])
        pa_map = _resize(ct_map.amax(dim=2).unsqueeze(1), batch["pa"].shape[2:])[:, 0]
        return {"ct": ct_map, "pa": pa_map}


class ConcatCNN3dTwoSlice(ConcatCNN3d):
    """``concat-cnn3d-2slice``: the PA stacked with the two central coronal CT slices, then the Zunair CNN.

    ``batch["pa"]`` (N, 1, S, S), resampled to (D, W) when needed, and :func:`central_coronal_slab` of
    ``batch["ct"]`` form a depth-3 volume (N, 1, 3, D, W): [PA, slice H//2-1, slice H//2], all in the
    PA frame (the synthetic-CT TB paper's "X-ray and CT concatenated" with 2-slice CT). Depth 3 -> 2 -> 1 -> 1 -> 1
    through the blocks (:class:`HalvingMaxPool3d`).

    Grad-CAM: the slab map's maximum over its three slices is one (D, W) map; "ct" repeats it along H
    (as :class:`CNN3dTwoSlice`), "pa" is it resampled to (S, S).
    """

    arch = "concat-cnn3d-2slice"
    trunk_channels = 1

    def forward(self, batch: Batch) -> Tensor:
        ct = _take(batch, "ct", 3, self.arch)
        pa = _resize(_take(batch, "pa", 2, self.arch), (ct.shape[2], ct.shape[4]))
        return self.head(self.trunk(torch.cat([pa.unsqueeze(2), central_coronal_slab(ct)], dim=2)))

    def cam_maps(self, layer_maps: Mapping[str, Tensor], batch: Batch) -> Dict[str, Tensor]:
        d, h, w = batch["ct"].shape[2:]
        coronal = _slab_cam(layer_maps["ct"], (3, d, w))
        pa_map = _resize(coronal.unsqueeze(1), batch["pa"].shape[2:])[:, 0]
        return {"ct": coronal.unsqueeze(2).expand(-1, -1, h, -1), "pa": pa_map}


class LateFusion(ClassifierNet):
    """``late-fusion``: a DenseNet branch on the PA and a Zunair branch on the CT, fused after pooling.

    ``batch["pa"]`` (N, 1, S, S) -> :class:`DenseNetEncoder` -> global average pool (C₁);
    ``batch["ct"]`` (N, 1, D, H, W) -> :class:`ZunairTrunk` -> global average pool (C₂);
    concatenated (C₁ + C₂) -> dropout -> linear K. Grad-CAM layers: the DenseNet's for "pa", the
    Zunair trunk's second block for "ct".
    """

    arch = "late-fusion"
    inputs = ("pa", "ct")

    def __init__(
        self,
        num_outputs: int,
        *,
        width: float = 1.0,
        init_features: int = 64,
        growth_rate: int = 32,
        block_config: Tuple[int, ...] = DENSENET121_BLOCKS,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(
            num_outputs,
            dict(
                width=width,
                init_features=init_features,
                growth_rate=growth_rate,
                block_config=block_config,
                dropout=dropout,
            ),
        )
        self.pa_encoder = DenseNetEncoder(2, 1, init_features, growth_rate, block_config)
        self.ct_trunk = ZunairTrunk(1, width)
        self.head = LinearHead(self.pa_encoder.out_channels + self.ct_trunk.out_channels, num_outputs, dropout)

    @property
    def cam_layers(self) -> Dict[str, nn.Module]:
        return {"pa": self.pa_encoder.cam_layer, "ct": self.ct_trunk.cam_layer}

    @property
    def cam_shifts(self) -> Dict[str, float]:
        return {"pa": DenseNetEncoder.CAM_SHIFT}

    def forward(self, batch: Batch) -> Tensor:
        pa = _global_pool(self.pa_encoder(_take(batch, "pa", 2, self.arch)))
        ct = _global_pool(self.ct_trunk(_take(batch, "ct", 3, self.arch)))
        return self.head(torch.cat([pa, ct], dim=1))


def latent_to_ct_map(cam: Tensor, size: Sequence[int]) -> Tensor:
    """A map on a latent grid (N, D', h, w) resampled (trilinear) onto the CT grid ``size`` = (D, H, W).

    The slice VAE of :mod:`x2ct.models.latent_diffusion` codes each axial slice on its own and decodes latent cell
    (i, j) into the block of ``H / h`` x ``W / w`` pixels it covers, and latent slice k into CT slices around
    ``k·D/D'`` (``D' = D`` unless the model keeps every k-th slice): half-pixel centres on every axis,
    :func:`resample_map` with shift 0.
    """
    return resample_map(cam, size)


class LatentEncoder:
    """The frozen slice VAE a :class:`LatentDenseNet3d` encodes CTs with; deliberately not an ``nn.Module``, so its
    weights stay out of the classifier's ``state_dict`` and optimiser (the classifier's metadata names the model
    and its sha256 instead).

    ``vae``: a latent diffusion generator (bundled name or model folder, :func:`x2ct.models.load_generator`) whose
    ``vae`` has ``encode_volume``; ``sha256``: the weights the classifier was trained with (InputError when they
    differ; None: take what is there and record it).
    """

    def __init__(self, vae: str, sha256: Optional[str]) -> None:
        from ..errors import InputError
        from .checkpoints import load_generator

        generator = load_generator(vae, device="cpu")
        module = getattr(generator, "vae", None)
        if module is None or not hasattr(module, "encode_volume"):
            raise InputError(vae, "is not a latent diffusion model: latent-densenet3d needs one with a slice VAE")
        found = getattr(getattr(generator, "metadata", None), "sha256", None)
        if sha256 is not None and found != sha256:
            problem = f"weights sha256 {found} differ from {sha256}, the VAE this latent classifier was trained with"
            raise InputError(vae, problem)
        self.name, self.sha256, self.module = vae, found, module.eval().requires_grad_(False)
        self.config = module.config
        """The VAE's :class:`x2ct.models.latent_diffusion.LatentDiffusionConfig` (grid, latent channels)."""

    def encode(self, ct: Tensor) -> Tensor:
        """(N, 1, S, S, S) unit scale on the VAE's grid -> (N, C, D', h, w) latents; differentiable with respect to
        ``ct`` when it requires grad (guided backpropagation), else computed without a graph."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and ct.requires_grad):
            return self.module.encode_volume(ct)


class LatentDenseNet3d(ClassifierNet):
    """``latent-densenet3d``: DenseNet-121 3D on the latents of a frozen slice VAE (the X-ray2CTPA seed's latent
    classifier).

    ``batch["ct"]`` (N, 1, D, H, W) unit scale -> resampled (trilinear) to the VAE's grid when it differs ->
    :class:`LatentEncoder` ``encode`` (frozen, on the fly: nothing is stored) -> (N, C, D', h, w) latents ->
    MONAI ``DenseNet121`` (``spatial_dims=3``, ``in_channels`` = the VAE's latent channels) -> pooled features ->
    dropout -> linear K. The latents are already compressed in-plane by the VAE (4 or 8), so the DenseNet's stem
    keeps the grid (7³ convolution with stride 1, no max-pool); each transition halves it, so every edge of
    the latent grid needs 2^(B-1) cells (8 for DenseNet-121: a 64³ CT through a 4x VAE gives 64 x 16 x 16).
    Defaults are the real DenseNet-121 (``init_features`` 64, ``growth_rate`` 32, blocks 6/12/24/16); the tests
    use one-layer blocks.

    Options ``vae`` (bundled name or folder of the latent diffusion model) and ``vae_sha256`` (filled in from the
    loaded weights, then checked on every load) are saved with the classifier, so ``x2ct predict`` finds the VAE.

    Grad-CAM: the last transition's convolution on the latent grid, resampled onto the latent grid and then
    (:func:`latent_to_ct_map`) onto the CT's (D, H, W).
    """

    arch = "latent-densenet3d"
    inputs = ("ct",)

    def __init__(
        self,
        num_outputs: int,
        *,
        vae: str = "",
        vae_sha256: Optional[str] = None,
        init_features: int = 64,
        growth_rate: int = 32,
        block_config: Tuple[int, ...] = DENSENET121_BLOCKS,
        dropout: float = 0.0,
    ) -> None:
        if not vae:
            raise ValueError("latent-densenet3d needs the option vae (the latent diffusion model whose VAE it uses)")
        encoder = LatentEncoder(vae, vae_sha256)
        options = dict(vae=vae, vae_sha256=encoder.sha256, init_features=init_features, growth_rate=growth_rate,
                       block_config=block_config, dropout=dropout)  # fmt: skip
        super().__init__(num_outputs, options)
        self.latent_encoder = encoder
        self.grid = int(encoder.config.grid_size)
        side = self.grid // int(encoder.config.compression)
        self.latent_grid = (self.grid // int(encoder.config.depth_stride), side, side)
        """(D', h, w) of the VAE's latents."""
        if min(self.latent_grid) < 2 ** (len(block_config) - 1):
            raise ValueError(f"the latent grid {self.latent_grid} is too small for {len(block_config)} dense blocks")
        self.encoder = DenseNetEncoder(3, int(encoder.config.latent_channels), init_features, growth_rate, block_config)
        self.encoder.features.conv0.stride = (1, 1, 1)  # the latents are already compressed: keep the grid
        self.encoder.features.pool0 = nn.Identity()
        self.head = LinearHead(self.encoder.out_channels, num_outputs, dropout)

    def _apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> LatentDenseNet3d:
        """Move / cast the frozen VAE along with the network (``.to``, ``.cuda``, ``.float``, ...)."""
        super()._apply(fn, *args, **kwargs)
        self.latent_encoder.module._apply(fn, *args, **kwargs)
        return self

    def latents(self, ct: Tensor) -> Tensor:
        """(N, 1, D, H, W) unit scale -> (N, C, D', h, w) latents of the frozen VAE."""
        return self.latent_encoder.encode(_resize(ct, (self.grid,) * 3))

    @property
    def cam_layers(self) -> Dict[str, nn.Module]:
        return {"ct": self.encoder.cam_layer}

    def forward(self, batch: Batch) -> Tensor:
        latents = self.latents(_take(batch, "ct", 3, self.arch))
        return self.head(_global_pool(self.encoder.relu(self.encoder.features(latents))))

    def cam_maps(self, layer_maps: Mapping[str, Tensor], batch: Batch) -> Dict[str, Tensor]:
        latent = resample_map(layer_maps["ct"], self.latent_grid)
        return {"ct": latent_to_ct_map(latent, batch["ct"].shape[2:])}


CLASSIFIER_ARCHS: Dict[str, Type[ClassifierNet]] = {
    cls.arch: cls
    for cls in (
        DenseNet2d,
        HeMISDenseNet2d,
        CNN3d,
        CNN3dTwoSlice,
        DenseNet3d,
        ConcatCNN3d,
        ConcatCNN3dTwoSlice,
        LateFusion,
        LatentDenseNet3d,
    )
}
"""Registry name -> network class (options: the class's keyword arguments)."""


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("must be an integer >= 1")
    return value


def _positive_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError("must be a number > 0")
    return float(value)


def _probability(value: Any, upper_inclusive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be a number")
    if not (0 <= value < 1 or (upper_inclusive and value == 1)):
        raise ValueError("must be in [0, 1]" if upper_inclusive else "must be in [0, 1)")
    return float(value)


def _model_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a model name or folder")
    return value


def _sha256(value: Any) -> Optional[str]:
    if value is not None and not (isinstance(value, str) and len(value) == 64):
        raise ValueError("must be a 64-digit hexadecimal sha256 or null")
    return value


def _blocks(value: Any) -> Tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise ValueError("must be a non-empty list of integers >= 1")
    return tuple(_positive_int(v) for v in value)


_OPTION_CHECKS: Dict[str, Callable[[Any], Any]] = {
    "vae": _model_name,
    "vae_sha256": _sha256,
    "width": _positive_float,
    "init_features": _positive_int,
    "growth_rate": _positive_int,
    "block_config": _blocks,
    "dropout": lambda v: _probability(v, upper_inclusive=False),
    "view_dropout": lambda v: _probability(v, upper_inclusive=True),
}
"""Option name -> checker returning the normalised value or raising ValueError (the problem)."""


def arch_options(arch: str) -> Dict[str, Any]:
    """The options of ``arch`` and their defaults."""
    if arch not in CLASSIFIER_ARCHS:
        raise ValueError(f"unknown classifier arch {arch!r}; valid: {', '.join(CLASSIFIER_ARCHS)}")
    params = inspect.signature(CLASSIFIER_ARCHS[arch].__init__).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def build_classifier(arch: str, num_outputs: int, **options: Any) -> ClassifierNet:
    """A new network ``arch`` with ``num_outputs`` logits; ``options`` override the defaults of :func:`arch_options`.

    Raises ValueError naming the valid archs or options on an unknown arch, an unknown option or a bad
    value. Initialisation draws from torch's global generator: seed it (``torch.manual_seed``) for
    reproducible weights.
    """
    valid = arch_options(arch)
    try:
        num_outputs = _positive_int(num_outputs)
    except ValueError as err:
        raise ValueError(f"{arch}: num_outputs {err}, got {num_outputs!r}") from None
    checked: Dict[str, Any] = {}
    for name, value in options.items():
        if name not in valid:
            raise ValueError(f"{arch}: unknown option {name!r}; valid options: {', '.join(valid)}")
        try:
            checked[name] = _OPTION_CHECKS[name](value)
        except ValueError as err:
            raise ValueError(f"{arch}: option {name} {err}, got {value!r}") from None
    return CLASSIFIER_ARCHS[arch](num_outputs, **checked)


def classifier_config(net: ClassifierNet) -> Dict[str, Any]:
    """JSON-able arguments that rebuild ``net``: ``build_classifier(**classifier_config(net))``.

    ``{"arch", "num_outputs", **options}`` with every option spelled out (defaults included, tuples as
    lists), so a checkpoint keeps its shape even if a default changes later.
    """
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in net.options.items()}
    return {"arch": net.arch, "num_outputs": net.num_outputs, **options}
