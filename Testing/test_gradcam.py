"""Grad-CAM (x2ct.gradcam): map shapes and range, geometry, alignment with lesions, no side effects, saving.

Geometry is tested twice: exactly, on networks with constant positive weights (symmetric kernels, so an
impulse's response is centred on it and the map's centroid must come back onto the impulse, on every
axis, for every architecture); and as the issue asks, on tiny networks trained to find a bright blob in
noise, whose CAM peak must land on the blob (hit rate) and on the correct side (no flips or swaps).
"""

from __future__ import annotations

import copy
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage
from torch import Tensor, nn

from test_classifiers import TINY
from x2ct.gradcam import (
    cam_overlay_rgb,
    cam_volume_image,
    constant_along_ap,
    grad_cam,
    grad_cam_and_guided,
    guided_grad_cam,
)
from x2ct.models import CLASSIFIER_ARCHS, build_classifier

pytestmark = pytest.mark.usefixtures("one_thread")

EXPECTED_KEYS = {
    "densenet2d": {"pa"},
    "hemis-densenet2d": {"pa", "lateral"},
    "cnn3d": {"ct"},
    "cnn3d-2slice": {"ct"},
    "densenet3d": {"ct"},
    "concat-cnn3d": {"pa", "ct"},
    "concat-cnn3d-2slice": {"pa", "ct"},
    "late-fusion": {"pa", "ct"},
}
S, CT = 16, (32, 32, 32)


def tiny(arch: str, num_outputs: int = 2, **extra):
    torch.manual_seed(0)
    return build_classifier(arch, num_outputs, **{**TINY[arch], **extra})


def random_batch(seed: int = 1) -> Dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "pa": torch.rand(1, 1, S, S, generator=gen),
        "lateral": torch.rand(1, 1, S, S, generator=gen),
        "ct": torch.rand(1, 1, *CT, generator=gen),
    }


def test_expected_keys_cover_the_registry():
    # latent-densenet3d ({"ct"}) needs a latent diffusion model's VAE on disk: Testing/test_latent_classifier.py
    assert set(EXPECTED_KEYS) | {"latent-densenet3d"} == set(CLASSIFIER_ARCHS)


@pytest.mark.parametrize("explain", [grad_cam, guided_grad_cam])
@pytest.mark.parametrize("arch", sorted(TINY))
def test_maps_have_the_inputs_shapes_and_lie_in_0_1(arch, explain):
    batch = random_batch()
    maps = explain(tiny(arch), batch, 1)
    assert set(maps) == EXPECTED_KEYS[arch]
    for key, cam in maps.items():
        assert cam.shape == tuple(batch[key].shape[2:]) and cam.dtype == np.float32
        assert cam.min() >= 0 and cam.max() <= 1
        assert cam.max() in (0.0, 1.0)  # normalised by its maximum; an all-zero map stays zero


def test_hemis_without_lateral_gives_only_the_pa_map():
    maps = grad_cam(tiny("hemis-densenet2d"), {"pa": random_batch()["pa"]}, 0)
    assert set(maps) == {"pa"} and maps["pa"].shape == (S, S)


class _GuidedReLUFunction(torch.autograd.Function):
    """ReLU whose backward passes gradient only where both the input and the gradient are positive."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * (x > 0)


class _GuidedReLU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return _GuidedReLUFunction.apply(x)


def _with_guided_relus(net: nn.Module) -> nn.Module:
    """A copy of ``net`` whose nn.ReLU modules are replaced by :class:`_GuidedReLU` (a second, independent
    implementation of guided backpropagation)."""
    net = copy.deepcopy(net)
    for module in list(net.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.ReLU):
                setattr(module, name, _GuidedReLU())
    return net


@pytest.mark.parametrize("arch", ["cnn3d", "cnn3d-2slice", "densenet2d", "concat-cnn3d"])
def test_guided_grad_cam_is_grad_cam_times_the_guided_input_gradient(arch):
    net = tiny(arch).eval()
    batch = {key: value for key, value in random_batch(3).items() if key in EXPECTED_KEYS[arch]}
    coarse = grad_cam(net, batch, 1)
    guided = guided_grad_cam(net, batch, 1)
    inputs = {key: value.clone().requires_grad_(True) for key, value in batch.items()}
    logit = _with_guided_relus(net)(inputs)[0, 1]
    grads = dict(zip(inputs, torch.autograd.grad(logit, list(inputs.values()), allow_unused=True)))
    assert set(guided) == set(coarse)
    for key, cam in coarse.items():
        saliency = grads[key][0].sum(0).clamp(min=0).numpy()
        if constant_along_ap(cam):
            saliency = np.broadcast_to(saliency.sum(1, keepdims=True), cam.shape)
            assert constant_along_ap(guided[key])
        expected = cam * saliency
        if expected.max() > 0:
            expected = expected / expected.max()
        np.testing.assert_allclose(guided[key], expected, atol=1e-5)
        assert guided[key].max() == 1.0  # not a vacuous comparison of two zero maps
    both = grad_cam_and_guided(net, batch, 1)  # one pass, the same two results
    assert all(np.array_equal(both[0][k], coarse[k]) and np.array_equal(both[1][k], guided[k]) for k in coarse)


# ---- exact geometry on constant-weight networks -------------------------------------------------

G = 48  # input edge for the geometry test: the DenseNet responses (about +-15 pixels) stay inside


def constant_weights(net: nn.Module) -> nn.Module:
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.Linear)):
            nn.init.constant_(module.weight, 0.05)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return net  # batch norms keep their initial identity statistics


def impulse(shape: Sequence[int], start: Sequence[int], width: int) -> Tensor:
    x = torch.zeros(1, 1, *shape)
    x[(0, 0, *(slice(s, s + width) for s in start))] = 1.0
    return x


def centroid(cam: np.ndarray) -> np.ndarray:
    weights = cam.astype(np.float64) / cam.sum()
    grids = np.meshgrid(*(np.arange(n) for n in cam.shape), indexing="ij")
    return np.array([(g * weights).sum() for g in grids])


# DenseNet cam cells (1/4 grid) are centred on multiples of 4 (a one-pixel impulse there is centred);
# Zunair cells on 4u + 1.5 (a two-voxel impulse starting at 4u + 1 is centred). Distinct coordinates per
# axis, so a swap of axes shows as well as a flip or a shift.
DN_PA, DN_CT = (20, 28), (20, 24, 28)
ZU_CT = (17, 25, 29)  # centre (17.5, 25.5, 29.5)
ZU_PA = (17, 29)  # centre (17.5, 29.5) in the (D, W) frame


def geometry_case(arch: str) -> Tuple[Dict[str, Tensor], Dict[str, Tuple[float, ...]]]:
    """Inputs with an impulse, and the centroid each map must have (2-slice "ct": its (D, W) centroid)."""
    z2, z3 = torch.zeros(1, 1, G, G), torch.zeros(1, 1, G, G, G)
    zu_ct = tuple(s + 0.5 for s in ZU_CT)
    zu_dw = (zu_ct[0], zu_ct[2])
    if arch == "densenet2d":
        return {"pa": impulse((G, G), DN_PA, 1)}, {"pa": DN_PA}
    if arch == "hemis-densenet2d":  # the same picture in both views: the variance branch gets no gradient
        return {"pa": impulse((G, G), DN_PA, 1), "lateral": impulse((G, G), DN_PA, 1)}, {"pa": DN_PA, "lateral": DN_PA}
    if arch == "densenet3d":
        return {"ct": impulse((G, G, G), DN_CT, 1)}, {"ct": DN_CT}
    if arch == "cnn3d":
        return {"ct": impulse((G, G, G), ZU_CT, 2)}, {"ct": zu_ct}
    if arch == "cnn3d-2slice":  # the square is on both central coronal slices (H = 23 and 24)
        ct = impulse((G, G, G), (ZU_CT[0], G // 2 - 1, ZU_CT[2]), 2)
        return {"ct": ct}, {"ct": zu_dw}
    if arch == "concat-cnn3d":
        return {"pa": z2, "ct": impulse((G, G, G), ZU_CT, 2)}, {"ct": zu_ct, "pa": zu_dw}
    if arch == "concat-cnn3d-2slice":
        return {"pa": impulse((G, G), ZU_PA, 2), "ct": z3}, {"pa": zu_dw, "ct": zu_dw}
    if arch == "late-fusion":
        return {"pa": impulse((G, G), DN_PA, 1), "ct": impulse((G, G, G), ZU_CT, 2)}, {"pa": DN_PA, "ct": zu_ct}
    raise AssertionError(arch)


@pytest.mark.parametrize("arch", sorted(TINY))
def test_cam_geometry_brings_an_impulse_back_onto_itself(arch):
    net = constant_weights(tiny(arch, num_outputs=1))
    batch, expected = geometry_case(arch)
    maps = grad_cam(net, batch, 0)
    assert set(maps) == set(expected)
    for key, where in expected.items():
        cam = maps[key]
        if "2slice" in arch and key == "ct":  # one (D, W) map repeated along A->P
            assert np.array_equal(cam, np.broadcast_to(cam[:, :1, :], cam.shape))
            cam = cam[:, 0, :]
        np.testing.assert_allclose(centroid(cam), where, atol=0.2, err_msg=f"{arch} {key}")
    if arch == "concat-cnn3d":  # "pa" is the CT map's maximum along A->P (same grid here, G = D = W)
        np.testing.assert_allclose(maps["pa"], maps["ct"].max(axis=1), atol=1e-6)


# ---- alignment with lesions on trained networks ---------------------------------------------------

Sampler = Callable[[np.random.Generator, bool], np.ndarray]
"""(rng, positive) -> one (D, H, W) training volume, with a lesion at a random place when positive."""


def ball(shape: Sequence[int], centre: Sequence[int], radius: float) -> np.ndarray:
    grids = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, centre)) <= radius**2


def train_detector(arch: str, sample: Sampler, steps: int) -> nn.Module:
    """A tiny ``arch`` trained (Adam, BCE) on batches of 4 noise volumes with a blob and 4 without."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = build_classifier(arch, 1, width=0.125, dropout=0.0)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    labels = torch.tensor([[1.0], [0.0]] * 4)
    for _ in range(steps):
        volumes = [sample(rng, bool(y)) for y in labels[:, 0]]
        logits = net({"ct": torch.from_numpy(np.stack(volumes))[:, None]})
        loss = nn.functional.binary_cross_entropy_with_logits(logits, labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return net.eval()


def peak(cam: np.ndarray) -> Tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(np.argmax(cam), cam.shape))


def hit(position: Tuple[int, ...], mask: np.ndarray) -> bool:
    """``position`` is inside ``mask`` or within one voxel of it (26- / 8-neighbourhood)."""
    return bool(ndimage.binary_dilation(mask, np.ones((3,) * mask.ndim, bool))[position])


def random_centre(rng: np.random.Generator, shape: Sequence[int], margin: int) -> np.ndarray:
    return rng.integers(margin, np.array(shape) - margin)


BLOB_GRID, BLOB_RADIUS, BLOB_MARGIN = (24, 24, 24), 3.0, 4


def blob_volume(rng: np.random.Generator, centre: Optional[np.ndarray]) -> np.ndarray:
    """(D, H, W) noise (mean 0.3, sd 0.1) plus 0.5 in a ball of radius 3 voxels around ``centre``."""
    volume = rng.normal(0.3, 0.1, BLOB_GRID).astype(np.float32)
    if centre is not None:
        volume[ball(BLOB_GRID, centre, BLOB_RADIUS)] += 0.5
    return volume


def ct_cam(net: nn.Module, volume: np.ndarray) -> np.ndarray:
    return grad_cam(net, {"ct": torch.from_numpy(volume)[None, None]}, 0)["ct"]


def accuracy(net: nn.Module, sample: Sampler, rng: np.random.Generator) -> float:
    labels = [i % 2 == 0 for i in range(20)]
    volumes = [sample(rng, y) for y in labels]
    with torch.no_grad():
        logits = net({"ct": torch.from_numpy(np.stack(volumes))[:, None]})[:, 0]
    return float(((logits > 0).numpy() == np.array(labels)).mean())


def test_trained_cnn3d_cam_peaks_on_the_lesion():
    """Hit rate of the CAM peak on new positive cases; and the peak on the patient's side of the blob."""

    def sample(rng: np.random.Generator, positive: bool) -> np.ndarray:
        return blob_volume(rng, random_centre(rng, BLOB_GRID, BLOB_MARGIN) if positive else None)

    net = train_detector("cnn3d", sample, steps=100)
    rng = np.random.default_rng(123)
    assert accuracy(net, sample, rng) >= 0.9  # it learned the task
    hits: List[bool] = []
    inside: List[bool] = []  # Guided Grad-CAM: strictly inside, no one-voxel slack
    for _ in range(20):
        centre = random_centre(rng, BLOB_GRID, BLOB_MARGIN)
        volume, blob = blob_volume(rng, centre), ball(BLOB_GRID, centre, BLOB_RADIUS)
        hits.append(hit(peak(ct_cam(net, volume)), blob))
        inside.append(bool(blob[peak(guided_grad_cam(net, {"ct": torch.from_numpy(volume)[None, None]}, 0)["ct"])]))
    assert np.mean(hits) >= 0.7, f"CAM peak on the blob in {np.mean(hits):.0%} of cases"
    assert np.mean(inside) >= 0.7, f"Guided Grad-CAM peak inside the blob in {np.mean(inside):.0%} of cases"
    # canonical axes (D, H, W) = (S->I, A->P, R->L): a blob inferior, anterior and on the patient's left
    # must give a peak there, and the opposite blob a peak on the opposite sides
    mid = BLOB_GRID[0] // 2
    for centre, sides in (((17, 5, 18), (1, -1, 1)), ((6, 18, 5), (-1, 1, -1))):
        where = peak(ct_cam(net, blob_volume(rng, np.array(centre))))
        assert hit(where, ball(BLOB_GRID, centre, BLOB_RADIUS)), (centre, where)
        assert all(np.sign(w - mid + 0.5) == s for w, s in zip(where, sides)), (centre, where)


SLAB_GRID, DISK_RADIUS, DISK_MARGIN = (32, 6, 32), 3.0, 4


def disk_volume(rng: np.random.Generator, centre: Optional[np.ndarray]) -> np.ndarray:
    """(D, H, W) noise plus 0.5 in a disk of radius 3 at (d, w) = ``centre`` on the two central coronal slices."""
    volume = rng.normal(0.3, 0.1, SLAB_GRID).astype(np.float32)
    if centre is not None:
        disk = ball((SLAB_GRID[0], SLAB_GRID[2]), centre, DISK_RADIUS)
        for h in (SLAB_GRID[1] // 2 - 1, SLAB_GRID[1] // 2):
            volume[:, h, :][disk] += 0.5
    return volume


def test_trained_two_slice_cam_peaks_on_the_lesion_in_the_coronal_plane():
    """The 2D analogue: a lesion in the central coronal slices; its (D, W) = PA-frame map."""
    shape_dw = (SLAB_GRID[0], SLAB_GRID[2])

    def sample(rng: np.random.Generator, positive: bool) -> np.ndarray:
        return disk_volume(rng, random_centre(rng, shape_dw, DISK_MARGIN) if positive else None)

    net = train_detector("cnn3d-2slice", sample, steps=150)
    rng = np.random.default_rng(321)
    assert accuracy(net, sample, rng) >= 0.9
    hits: List[bool] = []
    for _ in range(20):
        centre = random_centre(rng, shape_dw, DISK_MARGIN)
        volume = disk_volume(rng, centre)
        cam = ct_cam(net, volume)
        hits.append(hit(peak(cam[:, 0, :]), ball(shape_dw, centre, DISK_RADIUS)))
        guided = guided_grad_cam(net, {"ct": torch.from_numpy(volume)[None, None]}, 0)["ct"]
        assert constant_along_ap(guided)  # the slices' saliency summed along A->P, like the Grad-CAM map
        hits.append(hit(peak(guided[:, 0, :]), ball(shape_dw, centre, DISK_RADIUS)))
    assert np.mean(hits) >= 0.7, f"CAM peak on the lesion in {np.mean(hits):.0%} of maps"
    mid = shape_dw[0] // 2
    for centre, sides in (((26, 25), (1, 1)), ((5, 6), (-1, -1))):  # inferior-left, then superior-right
        where = peak(ct_cam(net, disk_volume(rng, np.array(centre)))[:, 0, :])
        assert hit(where, ball(shape_dw, centre, DISK_RADIUS)), (centre, where)
        assert all(np.sign(w - mid + 0.5) == s for w, s in zip(where, sides)), (centre, where)


# ---- no side effects ----------------------------------------------------------------------------


def hook_counts(net: nn.Module) -> Dict[str, Tuple[int, ...]]:
    return {
        name: (
            len(m._forward_hooks),
            len(m._forward_pre_hooks),
            len(m._backward_hooks),
            len(getattr(m, "_backward_pre_hooks", {})),
        )
        for name, m in net.named_modules()
    }


def test_grad_cam_leaves_no_hooks_modes_or_gradients_behind():
    net = tiny("late-fusion", dropout=0.5)
    net.train()
    net.pa_encoder.eval()  # mixed modes must come back exactly
    first = next(net.parameters())
    first.requires_grad_(False)
    user_hook = net.head.register_forward_hook(lambda *args: None)
    modes = {name: m.training for name, m in net.named_modules()}
    flags = {name: p.requires_grad for name, p in net.named_parameters()}
    hooks = hook_counts(net)
    batch = random_batch()

    maps = grad_cam(net, batch, 0)

    assert hook_counts(net) == hooks
    assert {name: m.training for name, m in net.named_modules()} == modes
    assert {name: p.requires_grad for name, p in net.named_parameters()} == flags
    assert all(p.grad is None for p in net.parameters())
    # eval mode inside: dropout (p = 0.5) off, so repeated calls agree
    again = grad_cam(net, batch, 0)
    assert all(np.array_equal(maps[k], again[k]) for k in maps)
    # a failure after the forward pass cleans up too
    with pytest.raises(ValueError, match="out of range"):
        grad_cam(net, batch, 2)
    assert hook_counts(net) == hooks
    assert {name: m.training for name, m in net.named_modules()} == modes
    # callers inside no_grad / inference_mode get the same maps
    with torch.no_grad():
        assert all(np.array_equal(maps[k], v) for k, v in grad_cam(net, batch, 0).items())
    with torch.inference_mode():
        frozen_batch = {k: v.clone() for k, v in batch.items()}
        assert all(np.array_equal(maps[k], v) for k, v in grad_cam(net, frozen_batch, 0).items())
    user_hook.remove()


def test_grad_cam_takes_one_case_and_an_integer_index():
    net = tiny("cnn3d")
    with pytest.raises(ValueError, match="batch of one case"):
        grad_cam(net, {"ct": torch.rand(2, 1, *CT)}, 0)
    with pytest.raises(ValueError, match="must be an integer"):
        grad_cam(net, {"ct": torch.rand(1, 1, *CT)}, 1.0)
    with pytest.raises(ValueError, match="batch of one case"):
        guided_grad_cam(net, {"ct": torch.rand(2, 1, *CT)}, 0)
    assert grad_cam(net, {"ct": torch.rand(1, 1, *CT)}, np.int64(1))["ct"].shape == CT


def test_guided_grad_cam_restores_in_place_relus_and_leaves_no_hooks_or_gradients():
    net = tiny("hemis-densenet2d")  # MONAI's DenseNet uses in-place ReLUs, which backward hooks cannot wrap
    net.train()
    inplace = {name: m.inplace for name, m in net.named_modules() if isinstance(m, nn.ReLU)}
    assert any(inplace.values())
    modes = {name: m.training for name, m in net.named_modules()}
    hooks = hook_counts(net)
    batch = random_batch()
    maps = guided_grad_cam(net, batch, 0)
    assert {name: m.inplace for name, m in net.named_modules() if isinstance(m, nn.ReLU)} == inplace
    assert hook_counts(net) == hooks
    assert {name: m.training for name, m in net.named_modules()} == modes
    assert all(p.grad is None for p in net.parameters())
    with torch.inference_mode():
        again = guided_grad_cam(net, {k: v.clone() for k, v in batch.items()}, 0)
    assert all(np.array_equal(maps[k], again[k]) for k in maps)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("explain", [grad_cam, guided_grad_cam])
def test_grad_cam_on_cuda_matches_cpu(explain):
    net = tiny("late-fusion")
    batch = random_batch()
    on_cpu = explain(net, batch, 1)
    on_gpu = explain(net.cuda(), {k: v.cuda() for k, v in batch.items()}, 1)
    for key, cam in on_cpu.items():
        np.testing.assert_allclose(on_gpu[key], cam, atol=1e-4)


# ---- saving -------------------------------------------------------------------------------------


def test_cam_volume_image_copies_the_reference_geometry():
    reference = sitk.Image([5, 4, 3], sitk.sitkInt16)  # (W, H, D) -> array (D, H, W) = (3, 4, 5)
    reference.SetSpacing((1.5, 2.0, 2.5))
    reference.SetOrigin((10.0, -20.0, 30.0))
    reference.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))
    cam = np.random.default_rng(0).random((3, 4, 5)).astype(np.float32)
    image = cam_volume_image(cam, reference)
    assert image.GetPixelID() == sitk.sitkFloat32
    assert image.GetSize() == reference.GetSize()
    assert image.GetSpacing() == reference.GetSpacing()
    assert image.GetOrigin() == reference.GetOrigin()
    assert image.GetDirection() == reference.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), cam)
    with pytest.raises(ValueError, match="does not match"):
        cam_volume_image(cam.transpose(2, 1, 0), reference)


def test_cam_overlay_rgb():
    gray = np.linspace(0, 1, 12 * 10).reshape(12, 10)
    plain = cam_overlay_rgb(gray, np.zeros_like(gray))
    assert plain.shape == (12, 10, 3) and plain.dtype == np.uint8
    expected = np.round(gray * 255).astype(np.uint8)
    for channel in range(3):
        np.testing.assert_array_equal(plain[..., channel], expected)
    cam = np.zeros_like(gray)
    cam[0, 0], cam[0, 1] = 1.0, 0.1  # on black pixels: hot is red, cool is blue
    hot = cam_overlay_rgb(np.zeros_like(gray), cam, alpha=1.0)
    assert hot[0, 0, 0] > hot[0, 0, 1] and hot[0, 0, 0] > hot[0, 0, 2]
    assert hot[0, 1, 2] > hot[0, 1, 0] and hot[0, 1, 2] > hot[0, 1, 1]
    np.testing.assert_array_equal(hot[1:], 0)
    with pytest.raises(ValueError, match="same shape"):
        cam_overlay_rgb(gray, np.zeros((10, 12)))
