"""``report.png`` of one prediction: inputs, re-projections, three slices of the synthetic CT, a SYNTHETIC banner.

Layout (tiles of ``TILE`` pixels)::

    title line (model, device, consistency)
    red banner: SYNTHETIC CT ... not for diagnosis
    row 1: per input view, the radiograph as the model saw it | the re-projection of the synthetic CT (ncc, ssim)
    row 2: axial | coronal | sagittal central slices of the synthetic CT (HU window, orientation letters)

Radiographs are shown in their display convention (x2ct.views): PA with the patient's right on the
image left, lateral with anterior on the left, superior up. Slices follow x2ct.preview's radiological
display of the canonical (D, H, W) array.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .preview import DEFAULT_WINDOW_HU, three_plane_slices
from .views import LATERAL

if TYPE_CHECKING:
    from .pipeline import Prediction

TILE = 256
"""Edge of one picture tile in pixels."""

BANNER = "SYNTHETIC CT generated from radiographs - research use only, NOT FOR DIAGNOSIS"

_HEADER = 24
_BANNER_HEIGHT = 26
_LABEL = 18

_RADIOGRAPH_LETTERS = {"PA": ("S", "I", "R", "L"), LATERAL: ("S", "I", "A", "P")}  # top, bottom, left, right
_SLICE_LETTERS = {
    "axial": ("A", "P", "R", "L"),
    "coronal": ("S", "I", "R", "L"),
    "sagittal": ("S", "I", "A", "P"),
}


def _tile(gray_unit: np.ndarray) -> Image.Image:
    """A [0, 1] float image as an RGB tile of TILE x TILE pixels."""
    pixels = (np.clip(gray_unit, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Image.fromarray(pixels).resize((TILE, TILE), Image.BILINEAR).convert("RGB")


def _window(slice_hu: np.ndarray, window: Tuple[float, float] = DEFAULT_WINDOW_HU) -> np.ndarray:
    low, high = window
    return (slice_hu - low) / (high - low)


def _letters(draw: ImageDraw.ImageDraw, x0: int, y0: int, letters: Tuple[str, str, str, str], font) -> None:
    top, bottom, left, right = letters
    draw.text((x0 + TILE // 2 - 4, y0 + 2), top, fill="yellow", font=font)
    draw.text((x0 + TILE // 2 - 4, y0 + TILE - 18), bottom, fill="yellow", font=font)
    draw.text((x0 + 3, y0 + TILE // 2 - 8), left, fill="yellow", font=font)
    draw.text((x0 + TILE - 12, y0 + TILE // 2 - 8), right, fill="yellow", font=font)


def report_picture(prediction: Prediction) -> Image.Image:
    """The report of ``prediction`` as an RGB picture (see the module doc for the layout)."""
    font = ImageFont.load_default(size=14)
    row1: List[Tuple[Image.Image, str, Tuple[str, str, str, str]]] = []
    for view, prepared in prediction.views.items():
        letters = _RADIOGRAPH_LETTERS.get(view, _RADIOGRAPH_LETTERS["PA"])
        scores = prediction.consistency[view]
        row1.append((_tile(prepared.model_input), f"{view} input", letters))
        row1.append(
            (
                _tile(prediction.reprojections[view]),
                f"{view} re-proj ncc {scores['ncc']:.2f} ssim {scores['ssim']:.2f}",
                letters,
            )
        )
    row2 = [
        (_tile(_window(image)), f"synthetic CT {name}", _SLICE_LETTERS[name])
        for name, image in three_plane_slices(prediction.volume_hu).items()
    ]
    width = TILE * max(len(row1), len(row2))
    top = _HEADER + _BANNER_HEIGHT
    height = top + 2 * (_LABEL + TILE)
    canvas = Image.new("RGB", (width, height), "black")
    draw = ImageDraw.Draw(canvas)
    model = prediction.model
    title = f"x2ct predict - model {model.name} ({model.architecture}) on {model.device} - "
    title += f"consistency {prediction.consistency_score:.2f}"
    draw.text((6, 4), title, fill="white", font=font)
    draw.rectangle([0, _HEADER, width, top], fill=(170, 0, 0))
    draw.text((6, _HEADER + 4), BANNER, fill="white", font=font)
    for row, tiles in enumerate((row1, row2)):
        y_label = top + row * (_LABEL + TILE)
        for n, (tile, label, letters) in enumerate(tiles):
            x0 = n * TILE
            draw.text((x0 + 3, y_label + 1), label, fill="white", font=font)
            canvas.paste(tile, (x0, y_label + _LABEL))
            _letters(draw, x0, y_label + _LABEL, letters, font)
    return canvas
