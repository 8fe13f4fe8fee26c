"""Pictures of every procedural lesion kind in CT and in PA and lateral DRRs (docs/images/lesions_<kind>.png).

Reproducible: the bundled real chest CT and its label map on the 128³ canonical grid, one fixed seed.
For each kind the CT is augmented geometrically (x2ct.data.augment.deform), the lesion is inserted
(x2ct.data.lesions.INSERTERS) and intensity changes and noise are applied (adjust_intensity), as in
x2ct.data.synthetic.synthetic_case. Each picture shows

* top row: a 4x zoom of the axial slice through the lesion (no outline), then axial, coronal and
  sagittal slices through it with the lesion mask outlined in yellow (for the miliary pattern the
  envelope of its specks);
* bottom row: PA and lateral DRRs (x2ct.drr.render, min-max) of the final CT, with the outline of the
  lesion mask projected by x2ct.drr.project (chord > 1 mm), and the lesion's own contribution to each
  DRR (line integral with lesion minus without, before noise; red = denser, blue = less dense).

Run from the repository root: ``python docs/make_lesion_figures.py [--out docs/images] [--seed 3]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Tuple

import numpy as np
import SimpleITK as sitk
import torch
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from x2ct.data.augment import AugmentConfig, adjust_intensity, deform
from x2ct.data.lesions import INSERTERS
from x2ct.data.synthetic import KIND_LABELS, LESION_KINDS, case_rng
from x2ct.drr import LATERAL, PA, project, render
from x2ct.geometry import CanonicalGrid, labels_to_canonical, to_canonical
from x2ct.intensity import AIR_HU
from x2ct.preview import save_picture
from x2ct.resources import sample_ct_path, sample_labels_path

TILE = 256
"""Edge of one picture tile in pixels."""
DRR_SIZE = 256
"""DRR pixels per edge."""
LUNG_WINDOW_HU = (-1100.0, 500.0)
MEDIASTINAL_WINDOW_HU = (-160.0, 340.0)
ZOOM_VOXELS = 48
"""Edge of the zoomed axial crop in voxels (120 mm at 2.5 mm)."""
OUTLINE = (255, 230, 0)


def canonical_sample(size: int) -> Tuple[np.ndarray, np.ndarray, float]:
    """The bundled CT (HU, clipped at air) and labels on the ``size``³ canonical grid, and the spacing (mm)."""
    ct = to_canonical(sitk.ReadImage(str(sample_ct_path())), size=size)
    labels = labels_to_canonical(sitk.ReadImage(str(sample_labels_path())), ct)
    hu = np.maximum(sitk.GetArrayFromImage(ct), AIR_HU).astype(np.float32)
    return hu, sitk.GetArrayFromImage(labels), CanonicalGrid(size=size).spacing_mm


def grey(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """(h, w) values -> (h, w, 3) uint8 grey with ``[low, high]`` mapped to black..white."""
    g = (np.clip((image - low) / (high - low), 0.0, 1.0) * 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def with_outline(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Upscale ``rgb`` (nearest) to the tile and draw a one-pixel ring just outside ``mask``."""
    factor = TILE // rgb.shape[0]
    big = np.kron(rgb, np.ones((factor, factor, 1), dtype=np.uint8))
    up = np.kron(mask, np.ones((factor, factor), dtype=bool)) if factor > 1 else mask
    ring = ndimage.binary_dilation(up, iterations=2) & ~ndimage.binary_dilation(up)
    big[ring] = OUTLINE
    return big


def signed_colour(diff: np.ndarray) -> np.ndarray:
    """Line-integral difference -> RGB: red where positive (denser), blue where negative, symmetric scale."""
    scale = max(float(np.abs(diff).max()), 1e-6)
    v = np.clip(diff / scale, -1.0, 1.0)
    rgb = np.zeros((*diff.shape, 3), dtype=np.uint8)
    rgb[..., 0] = (np.clip(v, 0, 1) * 255).astype(np.uint8)
    rgb[..., 2] = (np.clip(-v, 0, 1) * 255).astype(np.uint8)
    return rgb


def line_integrals(hu: np.ndarray, spacing: float, view: str) -> np.ndarray:
    """Raw DRR line integrals (DRR_SIZE², view display) of a canonical HU volume."""
    with torch.no_grad():
        return project(torch.from_numpy(hu)[None, None], spacing, view, DRR_SIZE, units="hu")[0, 0].numpy()


def projected_outline(drr: np.ndarray, mask: np.ndarray, spacing: float, view: str) -> np.ndarray:
    """Min-max DRR as RGB with the contour of the projected lesion mask (chord > 1 mm)."""
    with torch.no_grad():
        chord = project(torch.from_numpy(mask.astype(np.float32))[None, None], spacing, view, DRR_SIZE)[0, 0].numpy()
    return with_outline(grey(drr, 0.0, 1.0), chord > 1.0)


def figure(kind: str, hu: np.ndarray, labels: np.ndarray, spacing: float, seed: int) -> Image.Image:
    """The picture of one lesion kind (see module doc)."""
    rng = case_rng(seed, LESION_KINDS.index(kind))
    deformed, warped = deform(hu, labels, rng, spacing, AugmentConfig())
    lesioned, mask = INSERTERS[kind](deformed, warped, rng, spacing)
    final = adjust_intensity(lesioned, rng, AugmentConfig())
    d = int(mask.sum(axis=(1, 2)).argmax())
    h = int(mask.sum(axis=(0, 2)).argmax())
    w = int(mask.sum(axis=(0, 1)).argmax())
    density = ndimage.uniform_filter(mask[d].astype(np.float32), size=15) * mask[d]
    centre = np.unravel_index(int(density.argmax()), density.shape)
    half = ZOOM_VOXELS // 2
    r0 = int(np.clip(centre[0] - half, 0, hu.shape[1] - ZOOM_VOXELS))
    c0 = int(np.clip(centre[1] - half, 0, hu.shape[2] - ZOOM_VOXELS))
    zoom_window = MEDIASTINAL_WINDOW_HU if kind == "pulmonary_embolism" else LUNG_WINDOW_HU
    zoom = grey(final[d, r0 : r0 + ZOOM_VOXELS, c0 : c0 + ZOOM_VOXELS], *zoom_window)
    zoom = np.asarray(Image.fromarray(zoom).resize((TILE, TILE), Image.NEAREST))
    image = CanonicalGrid(size=hu.shape[0]).image_from_array(final)
    voxels = int(mask.sum())
    if kind == "miliary":  # thousands of specks: outline their envelope, not each one
        mask = ndimage.binary_closing(mask, iterations=3) & (warped > 0)
    tiles: List[Tuple[np.ndarray, str]] = [
        (zoom, f"axial {d}, {ZOOM_VOXELS * spacing:g} mm crop"),
        (with_outline(grey(final[d], *LUNG_WINDOW_HU), mask[d]), f"axial {d}"),
        (with_outline(grey(final[:, h, :], *LUNG_WINDOW_HU), mask[:, h, :]), f"coronal {h}"),
        (with_outline(grey(final[:, :, w], *LUNG_WINDOW_HU), mask[:, :, w]), f"sagittal {w}"),
    ]
    for view in (PA, LATERAL):
        tiles.append((projected_outline(render(image, view, DRR_SIZE), mask, spacing, view), f"DRR {view}"))
    for view in (PA, LATERAL):
        diff = line_integrals(lesioned, spacing, view) - line_integrals(deformed, spacing, view)
        tiles.append((signed_colour(diff), f"{view} lesion - none (max {np.abs(diff).max():.2f})"))
    font = ImageFont.load_default(size=14)
    top = 50
    canvas = Image.new("RGB", (4 * TILE, top + 2 * TILE), "black")
    draw = ImageDraw.Draw(canvas)
    labels_text = ", ".join(f"{k}={int(v)}" for k, v in vars(KIND_LABELS[kind]).items())
    draw.text((6, 4), f"{kind}: {voxels} voxels at {spacing:g} mm; {labels_text}", fill="white", font=font)
    draw.rectangle([0, 24, canvas.width, 48], fill=(170, 0, 0))
    draw.text((6, 28), "SYNTHETIC lesion in a real CT (x2ct.data.lesions) - research use only", fill="white", font=font)
    for n, (tile, title) in enumerate(tiles):
        x, y = (n % 4) * TILE, top + (n // 4) * TILE
        canvas.paste(Image.fromarray(tile), (x, y))
        draw.rectangle(draw.textbbox((x + 4, y + 2), title, font=font), fill="black")
        draw.text((x + 4, y + 2), title, fill="white", font=font)
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "images")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    hu, labels, spacing = canonical_sample(128)
    for kind in LESION_KINDS:
        path = args.out / f"lesions_{kind}.png"
        save_picture(figure(kind, hu, labels, spacing, args.seed), path)
        print(path)


if __name__ == "__main__":
    main()
