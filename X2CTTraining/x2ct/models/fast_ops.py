"""Exact, cheaper evaluations of three expensive parts of the generators, used in eval mode.

All three give the plain result up to float rounding (summation order); the generators' tests and
``bench/generator.py`` check the difference (max |Δ| well below 1e-4).

1. Skip links (Connection-B) and the convolution that consumes them (:func:`linker_planes`,
   :func:`conv_cat_planes`).

A linker copies a 2D map along a new depth axis and applies a 3³ convolution (zero padding 1),
instance norm and ReLU. Its (N,C,D,H,W) output therefore has only three distinct depth planes: the
first, the last, and one plane shared by all D-2 interior planes (first and last see the zero
padding through one kernel tap). The level's compress convolution acts on cat[decoder, linker];
being linear, it splits into conv(decoder, W[:, :Cx]) + conv(linker, W[:, Cx:]) + bias, and the
second term has only five distinct planes: out[0], out[1], out[2..D-3] (all equal), out[D-2], out[D-1].

Both are computed here on depth-3 and depth-5 stand-in volumes, never materialising the
(N,C,D,H,W) linker volume or its convolution. The result equals the plain evaluation up to float
rounding (summation order). Valid for depth D >= 4 (every linker of a grid >= 64).

2. ConvTranspose3d (k3, s2, p1, output_padding 1) as one 2³ convolution producing the 8 output
   parity classes as channels, then a 3D pixel shuffle (:func:`conv_transpose_subpixel`). Along one
   axis out[2j] = w[1]·x[j] and out[2j+1] = w[2]·x[j] + w[0]·x[j+1]. PyTorch has no fast CPU kernel
   for 3D transposed convolutions; this form runs on the ordinary convolution kernel.

3. The 7³ output head (one output channel, a poor case for direct convolution) as an FFT
   convolution (:func:`conv3d_fft`).
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _instance_norm_planes(y: Tensor, counts: Sequence[int], eps: float) -> Tensor:
    """Instance norm of a volume whose depth plane k (of y: (N,C,P,H,W)) occurs ``counts[k]`` times."""
    weights = torch.tensor(counts, dtype=torch.float64, device=y.device).view(1, 1, -1, 1, 1)
    weights = weights / (weights.sum() * y.shape[3] * y.shape[4])
    y64 = y.double()
    mean = (y64 * weights).sum(dim=(2, 3, 4), keepdim=True)
    var = ((y64 - mean).square() * weights).sum(dim=(2, 3, 4), keepdim=True)
    return ((y64 - mean) * torch.rsqrt(var + eps)).to(y.dtype)


def linker_planes(linker: nn.Module, skip: Tensor) -> Tensor:
    """Connection-B as its distinct planes: skip (N,Cin,h,w) -> (N,C,3,h,w) = [first, interior, last].

    ``linker`` is a :class:`~x2ct.models.x2ct_gan.Linker`; the full output would be (N,C,h,h,w).
    """
    mapped = linker.compress_block(skip)  # (N,C,h,w)
    conv, norm, relu = linker.conv_block
    depth = skip.shape[2]
    y = conv(mapped.unsqueeze(2).expand(-1, -1, 3, -1, -1))  # zero padding makes planes 0 and 2 the boundaries
    return relu(_instance_norm_planes(y, (1, depth - 2, 1), norm.eps))


def conv_cat_planes(block: nn.Sequential, x: Tensor, planes: Tensor) -> Tensor:
    """``block(cat[x, L])`` for block = [Conv3d 3³ pad 1, IN, ReLU] and L given by :func:`linker_planes`.

    x (N,Cx,D,H,W), planes (N,CL,3,H,W) with D >= 4 -> (N,Cout,D,H,W).
    """
    conv, norm, relu = block
    cx, depth = x.shape[1], x.shape[2]
    y = F.conv3d(x, conv.weight[:, :cx].contiguous(), conv.bias, padding=1)  # contiguous: oneDNN path
    first, interior, last = planes[:, :, :1], planes[:, :, 1:2], planes[:, :, 2:]
    stand_in = torch.cat([first, interior.expand(-1, -1, 3, -1, -1), last], 2)  # [first, int, int, int, last]
    z = F.conv3d(stand_in, conv.weight[:, cx:].contiguous(), None, padding=1)  # its 5 planes are the 5 distinct ones
    y[:, :, :2] += z[:, :, :2]
    y[:, :, 2 : depth - 2] += z[:, :, 2:3]
    y[:, :, depth - 2 :] += z[:, :, 3:]
    return relu(norm(y))


# Kernel tap used by output parity p at input offset d (out[2j+p] takes x[j+d]); -1: no tap.
_SUBPIXEL_TAP = ((1, -1), (2, 0))


def conv_transpose_subpixel(conv: nn.ConvTranspose3d, x: Tensor) -> Tensor:
    """``conv(x)`` for ConvTranspose3d(k3, s2, p1, output_padding 1): (N,Cin,n,n,n) -> (N,Cout,2n,2n,2n)."""
    weight = conv.weight  # (Cin, Cout, 3, 3, 3)
    cin, cout = weight.shape[:2]
    sub = weight.new_zeros(2, 2, 2, cout, cin, 2, 2, 2)  # (parity a,b,c, Cout, Cin, offset a,b,c)
    for pa in range(2):
        for pb in range(2):
            for pc in range(2):
                for da in range(2):
                    for db in range(2):
                        for dc in range(2):
                            ka, kb, kc = _SUBPIXEL_TAP[pa][da], _SUBPIXEL_TAP[pb][db], _SUBPIXEL_TAP[pc][dc]
                            if min(ka, kb, kc) >= 0:
                                sub[pa, pb, pc, :, :, da, db, dc] = weight[:, :, ka, kb, kc].T
    bias = None if conv.bias is None else conv.bias.repeat(8)
    y = F.conv3d(F.pad(x, (0, 1, 0, 1, 0, 1)), sub.view(8 * cout, cin, 2, 2, 2), bias)
    n, _, d, h, w = y.shape
    y = y.view(n, 2, 2, 2, cout, d, h, w).permute(0, 4, 5, 1, 6, 2, 7, 3)
    return y.reshape(n, cout, 2 * d, 2 * h, 2 * w)


def _fft_size(n: int) -> int:
    """Smallest m >= n whose only prime factors are 2, 3 and 5 (fast FFT lengths)."""
    m = n
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def conv3d_fft(conv: nn.Conv3d, x: Tensor) -> Tensor:
    """``conv(x)`` for a stride-1 Conv3d with one output channel and 'same' zero padding (odd cubic kernel), by FFT."""
    k = conv.kernel_size[0]
    pad = k // 2
    sizes: Tuple[int, ...] = tuple(_fft_size(s + k - 1) for s in x.shape[2:])
    spectrum = torch.fft.rfftn(x, s=sizes, dim=(2, 3, 4))  # (N, Cin, ...)
    kernel = torch.fft.rfftn(conv.weight.flip(2, 3, 4), s=sizes, dim=(2, 3, 4))  # (Cout, Cin, ...)
    y = torch.fft.irfftn(spectrum.mul_(kernel).sum(1, keepdim=True), s=sizes, dim=(2, 3, 4))
    d, h, w = x.shape[2:]
    y = y[:, :, pad : pad + d, pad : pad + h, pad : pad + w]
    return y if conv.bias is None else y + conv.bias.view(1, -1, 1, 1, 1)
