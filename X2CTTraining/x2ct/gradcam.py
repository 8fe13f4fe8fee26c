"""Grad-CAM (Selvaraju et al. 2017) for the classifiers of :mod:`x2ct.models.classifiers`, and saving the maps.

:func:`grad_cam` computes, for one case and one output logit, a map per input of the network (PA,
lateral, CT) on that input's own grid and axis order: (S, S) for a radiograph (rows S->I; PA columns
R->L, lateral columns A->P), (D, H, W) on the canonical axes of :mod:`x2ct.geometry` for a CT. Maps
are float32 in [0, 1]: the ReLU of the gradient-weighted sum of the layer's channels, resampled
(bilinear / trilinear) to the input grid, divided by its maximum (an all-zero map stays zero; values
are comparable within a map, not between maps or cases).

:func:`guided_grad_cam` multiplies each map by guided backpropagation at the input's resolution
(Selvaraju et al. 2017, section 3.1): a finer map whose peak marks the voxels inside Grad-CAM's region
that drive the logit (the CAM hit rate of ``x2ct evaluate-classifier`` scores both).
:func:`grad_cam_and_guided` gives both from one pass.

:func:`cam_volume_image` puts a CT map in patient space (aligned with the synthetic CT);
:func:`cam_overlay_rgb` draws a map over a grey image (a radiograph or a CT slice).
"""

from __future__ import annotations

import operator
from typing import Dict, List, Mapping, Tuple

import numpy as np
import SimpleITK as sitk
import torch
from torch import Tensor, nn

from .models.classifiers import ClassifierNet


def _layer_cams(model: ClassifierNet, batch: Mapping[str, Tensor], output_index: int) -> Dict[str, Tensor]:
    """Grad-CAM on each of ``model.cam_layers`` that ran: key -> (1, *layer_spatial), ReLU'd, not normalised.

    Each layer's output is replaced (by a forward hook) with a detached copy that requires grad, so
    ``torch.autograd.grad`` gives the logit's gradient with respect to exactly those activations and
    nothing upstream is differentiated; no parameter's ``.grad`` is touched.
    """
    activations: Dict[str, Tensor] = {}

    def capture(key: str):
        def hook(module: nn.Module, args: object, output: Tensor) -> Tensor:
            leaf = output.detach().requires_grad_(True)
            activations[key] = leaf
            return leaf

        return hook

    handles = [layer.register_forward_hook(capture(key)) for key, layer in model.cam_layers.items()]
    try:
        logits = model(batch)
    finally:
        for handle in handles:
            handle.remove()
    if logits.ndim != 2 or logits.shape[0] != 1:
        raise ValueError(f"{model.arch} returned logits of shape {tuple(logits.shape)}, expected (1, K)")
    if not 0 <= output_index < logits.shape[1]:
        raise ValueError(f"output_index {output_index} is out of range for {logits.shape[1]} outputs")
    keys: List[str] = list(activations)
    grads = torch.autograd.grad(logits[0, output_index], [activations[k] for k in keys], allow_unused=True)
    cams: Dict[str, Tensor] = {}
    for key, grad in zip(keys, grads):
        act = activations[key].detach()
        if grad is None:  # the chosen logit does not depend on this layer
            cams[key] = torch.zeros_like(act[:, 0])
            continue
        weights = grad.flatten(2).mean(2)  # (1, C): spatially averaged gradients
        weighted = (weights.reshape(*weights.shape, *([1] * (act.ndim - 2))) * act).sum(1)
        cams[key] = torch.relu(weighted)
    return cams


def _positive_gradient(module: nn.Module, grad_input: Tuple[Tensor, ...], grad_output: Tuple[Tensor, ...]):
    """Backward hook of a ReLU for guided backpropagation: pass only positive gradients (where its input was > 0)."""
    return (grad_input[0].clamp(min=0),)


def _guided_backprop(model: ClassifierNet, batch: Mapping[str, Tensor], output_index: int) -> Dict[str, Tensor]:
    """Guided backpropagation (Springenberg et al. 2015) of one logit to every input: key -> (1, *spatial).

    Every ``nn.ReLU`` of the network passes back only positive gradients (a backward hook; in-place ReLUs
    are switched to out-of-place meanwhile, as hooks need). The input gradient is summed over channels
    and its positive part kept: where raising the input's value raises the logit.
    """
    relus = [module for module in model.modules() if isinstance(module, nn.ReLU)]
    inplace = [module.inplace for module in relus]
    handles = []
    try:
        for module in relus:
            module.inplace = False
            handles.append(module.register_full_backward_hook(_positive_gradient))
        inputs = {key: value.detach().requires_grad_(True) for key, value in batch.items()}
        logit = model(inputs)[0, output_index]
        grads = torch.autograd.grad(logit, list(inputs.values()), allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in zip(relus, inplace):
            module.inplace = flag
    return {
        key: torch.zeros_like(value[:, 0]) if grad is None else grad.sum(1).clamp(min=0)
        for (key, value), grad in zip(inputs.items(), grads)
    }


def constant_along_ap(cam: np.ndarray) -> bool:
    """True for a (D, H, W) map that is the same on every coronal slice: the map of a two-slice model,
    which sees only the central coronal slices and so carries no A->P position."""
    return cam.ndim == 3 and cam.shape[1] > 1 and bool(np.all(cam == cam[:, :1, :]))


def _unit(cam: Tensor) -> np.ndarray:
    """A map divided by its maximum (an all-zero map stays zero), float32 in [0, 1] on the CPU."""
    peak = cam.max()
    if peak > 0:
        cam = cam / peak
    return cam.clamp(0, 1).cpu().numpy().astype(np.float32)


def _explain(
    model: ClassifierNet, batch: Mapping[str, Tensor], output_index: object, guided: bool
) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """(Grad-CAM maps, Guided Grad-CAM maps or {} when not ``guided``): the body of the public functions."""
    try:
        index = operator.index(output_index)
    except TypeError:
        raise ValueError(f"output_index must be an integer, got {output_index!r}") from None
    sizes = {key: value.shape[0] for key, value in batch.items() if value is not None}
    if any(n != 1 for n in sizes.values()):
        raise ValueError(f"grad_cam takes a batch of one case, got batch sizes {sizes}")
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            # clone: tensors created under inference mode cannot take part in autograd
            own = {key: value.clone() for key, value in batch.items() if value is not None}
            cams = model.cam_maps(_layer_cams(model, own, index), own)
            saliency = _guided_backprop(model, own, index) if guided else {}
    finally:
        for module, training in modes.items():
            module.training = training
    coarse: Dict[str, np.ndarray] = {}
    fine: Dict[str, np.ndarray] = {}
    for key, cam in cams.items():
        cam = cam[0].detach().float()
        coarse[key] = _unit(cam)
        if guided:
            gradient = saliency[key][0].detach().float()
            if constant_along_ap(coarse[key]):  # a coronal map: the saliency of the slices, summed along A->P
                gradient = gradient.sum(1, keepdim=True).expand_as(cam)
            fine[key] = _unit(cam * gradient)
    return coarse, fine


def grad_cam(model: ClassifierNet, batch: Mapping[str, Tensor], output_index: int) -> Dict[str, np.ndarray]:
    """Grad-CAM maps of logit ``output_index`` for ONE case (N = 1): input key -> float32 map in [0, 1].

    ``batch`` is a classifier batch (see :mod:`x2ct.models.classifiers`) with tensors on the model's
    device (CPU or CUDA). The result has one map per key of ``model.cam_layers`` whose input is in the
    batch (a HeMIS model run without a lateral gives no "lateral" map), plus the maps a network derives
    from those (concatenation models: "pa" from the CT map). Shapes: (S, S) for "pa" / "lateral",
    (D, H, W) for "ct", in the input's axis order. Two-slice models only see the central coronal slices,
    so their "ct" map is one (D, W) map repeated along H (:func:`constant_along_ap`).

    The model runs in eval mode (dropout off, batch-norm running statistics). Afterwards every
    module's training flag is what it was, no hook is left registered, no ``requires_grad`` flag and no
    parameter ``.grad`` is changed. Works under a caller's ``torch.no_grad()`` or
    ``torch.inference_mode()`` (gradients are switched on locally).
    """
    return _explain(model, batch, output_index, guided=False)[0]


def guided_grad_cam(model: ClassifierNet, batch: Mapping[str, Tensor], output_index: int) -> Dict[str, np.ndarray]:
    """Guided Grad-CAM (Selvaraju et al. 2017, section 3.1) of logit ``output_index`` for ONE case.

    The Grad-CAM map times guided backpropagation at the input's own resolution, divided by its maximum:
    same keys, shapes, range and guarantees as :func:`grad_cam` (in-place ReLUs come back in place).
    Grad-CAM says which region drives the logit, on its layer's grid (2-4 voxels a cell here) and up to a
    cell or two off where the learned filters respond beside a small lesion rather than on it; the guided
    gradient picks the input voxels inside that region. Its peak is the finer answer to "where", which is
    why the CAM hit rate reports it next to Grad-CAM's (docs/classifiers.md). Two-slice models: the
    saliency of the two central slices is summed along A->P, so the map stays constant along H.
    """
    return _explain(model, batch, output_index, guided=True)[1]


def grad_cam_and_guided(
    model: ClassifierNet, batch: Mapping[str, Tensor], output_index: int
) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """(:func:`grad_cam`, :func:`guided_grad_cam`) of the same case and logit from one pass (the Grad-CAM
    part is computed once), for callers that need both."""
    return _explain(model, batch, output_index, guided=True)


def cam_volume_image(cam: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A (D, H, W) map as a float32 SimpleITK image with the origin, spacing (mm) and direction of ``reference``.

    ``reference`` is the volume the map was computed on (e.g. the synthetic CT on the canonical grid),
    whose array (``sitk.GetArrayFromImage``) is (D, H, W); the map must have that shape.
    """
    expected = tuple(reversed(reference.GetSize()))
    if cam.shape != expected:
        raise ValueError(f"CAM shape {cam.shape} does not match the reference volume's array shape {expected}")
    image = sitk.GetImageFromArray(np.asarray(cam, dtype=np.float32))
    image.CopyInformation(reference)
    return image


_JET_CENTRES = (3.0, 2.0, 1.0)
"""Where the red, green and blue ramps of the classic "jet" colour map peak, on 4 x the value in [0, 1]
(dark blue, cyan, yellow, dark red): channel = clip(1.5 - |4 value - centre|, 0, 1)."""


def cam_overlay_rgb(gray: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """A heat map over a grey image: (H, W) grey in [0, 1] and (H, W) CAM in [0, 1] -> (H, W, 3) uint8.

    Each pixel is ``(1 - alpha·c)·grey + alpha·c·jet(c)`` with c the CAM value, so the colour's weight
    grows with the CAM and a pixel with c = 0 keeps its grey value. Inputs are clipped to [0, 1]; the
    arithmetic is float32, one colour channel at a time (8-bit output; a 2048 x 2048 map needs about
    70 MB of temporaries).
    """
    gray = np.asarray(gray, dtype=np.float32)
    cam = np.asarray(cam, dtype=np.float32)
    if gray.ndim != 2 or gray.shape != cam.shape:
        raise ValueError(f"grey image {gray.shape} and CAM {cam.shape} must be 2D arrays of the same shape")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    cam = np.clip(cam, 0.0, 1.0)
    weight = np.float32(alpha) * cam
    base = (1.0 - weight) * np.clip(gray, 0.0, 1.0)
    scaled = 4.0 * cam
    rgb = np.empty((*gray.shape, 3), dtype=np.uint8)
    for channel, centre in enumerate(_JET_CENTRES):
        value = np.abs(scaled - centre)
        np.clip(np.subtract(1.5, value, out=value), 0.0, 1.0, out=value)  # the jet ramp
        value *= weight
        value += base
        value *= 255.0
        rgb[..., channel] = np.round(value)
    return rgb
