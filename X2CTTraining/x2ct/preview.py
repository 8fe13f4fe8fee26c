"""Three-plane preview pictures of a canonical-grid volume, with orientation letters.

Slices are shown in the usual radiological display, which the canonical (D, H, W) array gives
without any flips: axial = (H rows, W columns), coronal = (D, W), sagittal = (D, H). So the
patient's right is on the image left, anterior is up (axial) or left (sagittal), superior is up.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .atomic import atomic_path
from .errors import PathLike

DEFAULT_WINDOW_HU = (-1100.0, 500.0)
"""(low, high) HU window that shows lungs and mediastinum together."""

SLICE_LETTERS = {
    "axial": ("A", "P", "R", "L"),
    "coronal": ("S", "I", "R", "L"),
    "sagittal": ("S", "I", "A", "P"),
}
"""Orientation letters (top, bottom, left, right) of each slice of :func:`three_plane_slices`."""


def _to_uint8(slice_hu: np.ndarray, window: Tuple[float, float]) -> np.ndarray:
    low, high = window
    return (np.clip((slice_hu - low) / (high - low), 0.0, 1.0) * 255).astype(np.uint8)


def three_plane_slices(volume_dhw: np.ndarray) -> dict:
    """Central axial, coronal and sagittal slices of a (D, H, W) array, in display orientation."""
    d, h, w = volume_dhw.shape
    return {
        "axial": volume_dhw[d // 2],
        "coronal": volume_dhw[:, h // 2, :],
        "sagittal": volume_dhw[:, :, w // 2],
    }


def draw_orientation_letters(
    draw: ImageDraw.ImageDraw, x0: int, y0: int, tile: int, letters: Tuple[str, str, str, str], font
) -> None:
    """Write ``letters`` (top, bottom, left, right) in yellow at the edge midpoints of the ``tile``-pixel
    square whose top-left corner is (``x0``, ``y0``)."""
    top, bottom, left, right = letters
    draw.text((x0 + tile // 2 - 4, y0 + 2), top, fill="yellow", font=font)
    draw.text((x0 + tile // 2 - 4, y0 + tile - 18), bottom, fill="yellow", font=font)
    draw.text((x0 + 3, y0 + tile // 2 - 8), left, fill="yellow", font=font)
    draw.text((x0 + tile - 12, y0 + tile // 2 - 8), right, fill="yellow", font=font)


def three_plane_picture(
    volume_dhw: np.ndarray,
    title: str,
    banner: Optional[str] = None,
    window: Tuple[float, float] = DEFAULT_WINDOW_HU,
    tile: int = 256,
) -> Image.Image:
    """An RGB picture: title line, optional red banner, then axial | coronal | sagittal tiles (HU window)."""
    font = ImageFont.load_default(size=14)
    top = 24 + (26 if banner else 0)
    canvas = Image.new("RGB", (3 * tile, top + tile), "black")
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 4), title, fill="white", font=font)
    if banner:
        draw.rectangle([0, 24, canvas.width, 48], fill=(170, 0, 0))
        draw.text((6, 28), banner, fill="white", font=font)
    for n, (name, image) in enumerate(three_plane_slices(volume_dhw).items()):
        tile_img = Image.fromarray(_to_uint8(image, window)).resize((tile, tile), Image.BILINEAR)
        x0 = n * tile
        canvas.paste(tile_img.convert("RGB"), (x0, top))
        draw_orientation_letters(draw, x0, top, tile, SLICE_LETTERS[name], font)
        draw.text((x0 + 3, top + 2), name, fill="white", font=font)
    return canvas


def save_picture(picture: Image.Image, path: PathLike) -> None:
    """Save a PNG atomically."""
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
