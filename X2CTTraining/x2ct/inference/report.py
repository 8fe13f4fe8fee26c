"""``report.png`` of one prediction: inputs, re-projections, three slices of the synthetic CT, a SYNTHETIC banner.

Layout (tiles of ``TILE`` pixels)::

    title line (model, device, consistency)
    red banner: SYNTHETIC CT ... not for diagnosis
    row 1: per input view, the radiograph as the model saw it | the re-projection of the synthetic CT (ncc, ssim)
    row 2: axial | coronal | sagittal central slices of the synthetic CT (HU window, orientation letters)
    row 3 (when classifiers ran): per finding with a radiograph map, its Grad-CAM over the PA (or lateral)
    row 4 (when classifiers ran): per finding with a CT map, its Grad-CAM over a coronal synthetic-CT
           slice: through the finding's Guided Grad-CAM peak when that has an anterior-posterior
           position, else through the Grad-CAM map's peak (the central slice for two-slice classifiers)

Finding labels read ``tb_present 0.73 >= 0.41 POS`` (probability, frozen threshold, call); CT tiles name
the coronal slice (``h32`` = H index 32); heat maps use x2ct.gradcam.cam_overlay_rgb. A small cross marks
the finding's Guided Grad-CAM peak (:attr:`x2ct.inference.types.Finding.guided_peak`) on every heat-map tile.

Radiographs are shown in their display convention (x2ct.views): PA with the patient's right on the
image left, lateral with anterior on the left, superior up. Slices follow x2ct.preview's radiological
display of the canonical (D, H, W) array.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..gradcam import cam_overlay_rgb
from ..preview import DEFAULT_WINDOW_HU, SLICE_LETTERS, draw_orientation_letters, three_plane_slices
from ..views import CT_KEY, LATERAL, PA, RADIOGRAPH_VIEWS, input_key
from .types import Finding, Prediction

TILE = 256
"""Edge of one picture tile in pixels."""

BANNER = "SYNTHETIC CT generated from radiographs - research use only, NOT FOR DIAGNOSIS"

_HEADER = 24
_BANNER_HEIGHT = 26
_LABEL = 18

_RADIOGRAPH_LETTERS = {PA: ("S", "I", "R", "L"), LATERAL: ("S", "I", "A", "P")}  # top, bottom, left, right


def _tile(gray_unit: np.ndarray) -> Image.Image:
    """A [0, 1] float image as an RGB tile of TILE x TILE pixels."""
    pixels = (np.clip(gray_unit, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Image.fromarray(pixels).resize((TILE, TILE), Image.BILINEAR).convert("RGB")


def _window(slice_hu: np.ndarray, window: Tuple[float, float] = DEFAULT_WINDOW_HU) -> np.ndarray:
    low, high = window
    return (slice_hu - low) / (high - low)


def _finding_caption(finding: Finding) -> str:
    positive = finding.call == "positive"
    relation, call = (">=", "POS") if positive else ("<", "neg")
    return f"{finding.output} {finding.probability:.2f} {relation} {finding.threshold:.2f} {call}"


def _peak_coronal_index(cam: np.ndarray) -> int:
    """The coronal slice (H index) holding the map's peak; the central one when the map is the same on
    every coronal slice (two-slice classifiers see only the central slices)."""
    per_slice = cam.max(axis=(0, 2))
    return cam.shape[1] // 2 if np.ptp(per_slice) == 0 else int(np.argmax(per_slice))


def _tile_xy(pixel_rc: Tuple[float, float], shape: Tuple[int, int]) -> Tuple[float, float]:
    """A (row, column) position on an image of ``shape`` (radiograph, CT slice) -> (x, y) on its TILE² tile."""
    rows, cols = shape
    return (pixel_rc[1] + 0.5) * TILE / cols - 0.5, (pixel_rc[0] + 0.5) * TILE / rows - 0.5


def _ct_peak_index(lps_mm: Sequence[Optional[float]], prediction: Prediction) -> Tuple[float, Optional[float], float]:
    """A guided peak's LPS (mm; y may be None) -> continuous (d, h, w) on the synthetic CT's grid (h None with y)."""
    centre = prediction.grid.center_lps
    point = [centre[axis] if value is None else value for axis, value in enumerate(lps_mm)]
    i, j, k = (np.linalg.inv(prediction.grid.ijk_to_lps()) @ np.array([*point, 1.0]))[:3]
    return float(k), None if lps_mm[1] is None else float(j), float(i)


def _mark(tile: Image.Image, x: float, y: float) -> None:
    """Draw a small cross (white on a black outline) centred on (x, y) of ``tile``."""
    draw = ImageDraw.Draw(tile)
    for width, colour in ((4, "black"), (2, "white")):
        draw.line([(x - 7, y), (x + 7, y)], fill=colour, width=width)
        draw.line([(x, y - 7), (x, y + 7)], fill=colour, width=width)


def _finding_rows(prediction: Prediction) -> List[List[Tuple[Image.Image, str, Tuple[str, str, str, str]]]]:
    """Rows 3 and 4 of the report: Grad-CAM over the radiograph and over the coronal CT slice at the peak."""
    captions = {f.output: _finding_caption(f) for f in prediction.findings}
    peaks = {f.output: f.guided_peak for f in prediction.findings}
    radiograph_row = []
    for view in RADIOGRAPH_VIEWS:
        for output, cam in prediction.heat_maps.radiographs.get(view, {}).items():
            pixels = prediction.views[view].radiograph.pixels
            overlay = Image.fromarray(cam_overlay_rgb(pixels, cam)).resize((TILE, TILE), Image.BILINEAR)
            peak = peaks.get(output, {}).get(input_key(view))
            if peak is not None:
                _mark(overlay, *_tile_xy(peak.pixel_rc, pixels.shape))
            radiograph_row.append((overlay, f"{view} {captions[output]}", _RADIOGRAPH_LETTERS[view]))
    ct_row = []
    depth, _, width = prediction.volume_hu.shape
    for output, cam in prediction.heat_maps.ct.items():
        peak = peaks.get(output, {}).get(CT_KEY)
        d, h_peak, w = _ct_peak_index(peak.lps_mm, prediction) if peak is not None else (None, None, None)
        h = _peak_coronal_index(cam) if h_peak is None else int(np.clip(round(h_peak), 0, cam.shape[1] - 1))
        gray = np.clip(_window(prediction.volume_hu[:, h, :]), 0.0, 1.0)
        overlay = Image.fromarray(cam_overlay_rgb(gray, cam[:, h, :])).resize((TILE, TILE), Image.BILINEAR)
        if peak is not None:
            _mark(overlay, *_tile_xy((d, w), (depth, width)))
        ct_row.append((overlay, f"CT h{h} {captions[output]}", SLICE_LETTERS["coronal"]))
    return [row for row in (radiograph_row, ct_row) if row]


def report_picture(prediction: Prediction) -> Image.Image:
    """The report of ``prediction`` as an RGB picture (see the module doc for the layout)."""
    font = ImageFont.load_default(size=14)
    row1: List[Tuple[Image.Image, str, Tuple[str, str, str, str]]] = []
    for view, prepared in prediction.views.items():
        letters = _RADIOGRAPH_LETTERS.get(view, _RADIOGRAPH_LETTERS[PA])
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
        (_tile(_window(image)), f"synthetic CT {name}", SLICE_LETTERS[name])
        for name, image in three_plane_slices(prediction.volume_hu).items()
    ]
    rows = [row1, row2, *_finding_rows(prediction)]
    width = TILE * max(len(row) for row in rows)
    top = _HEADER + _BANNER_HEIGHT
    height = top + len(rows) * (_LABEL + TILE)
    canvas = Image.new("RGB", (width, height), "black")
    draw = ImageDraw.Draw(canvas)
    model = prediction.model
    title = f"x2ct predict - model {model.name} ({model.architecture}) on {model.device} - "
    title += f"consistency {prediction.consistency_score:.2f}"
    draw.text((6, 4), title, fill="white", font=font)
    draw.rectangle([0, _HEADER, width, top], fill=(170, 0, 0))
    draw.text((6, _HEADER + 4), BANNER, fill="white", font=font)
    for row, tiles in enumerate(rows):
        y_label = top + row * (_LABEL + TILE)
        for n, (tile, label, letters) in enumerate(tiles):
            x0 = n * TILE
            draw.text((x0 + 3, y_label + 1), label, fill="white", font=font)
            canvas.paste(tile, (x0, y_label + _LABEL))
            draw_orientation_letters(draw, x0, y_label + _LABEL, TILE, letters, font)
    return canvas
