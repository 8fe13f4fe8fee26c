"""``report.png`` of one prediction: inputs, re-projections, three slices of the synthetic CT, a SYNTHETIC banner;
and :func:`cases_picture`, several cases side by side with their known lesions (``x2ct demo``).

Layout (tiles of ``TILE`` pixels)::

    title line (model, device, consistency)
    info line (only with a style, an OOD score or sampling): style model; samples, steps, guidance, seed;
              OOD score vs threshold, in red words "out of distribution" when flagged
    red banner: SYNTHETIC CT ... not for diagnosis
    row 1: per input view, [with a style: the preprocessed radiograph before the style model |] the radiograph as
           the model saw it | the re-projection of the synthetic CT (ncc, ssim)
    row 2: axial | coronal | sagittal central slices of the synthetic CT (HU window, orientation letters)
    row 2b (stochastic generators, K >= 2 samples): the per-voxel SD over the samples as a heat map over the
           central coronal slice of the mean CT | its colour bar in HU (0 to the map's 99th percentile)
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

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

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
_INFO = 20
_BANNER_HEIGHT = 26
_LABEL = 18

_RADIOGRAPH_LETTERS = {PA: ("S", "I", "R", "L"), LATERAL: ("S", "I", "A", "P")}  # top, bottom, left, right


def _tile(gray_unit: np.ndarray) -> Image.Image:
    """A [0, 1] float image as an RGB tile of TILE x TILE pixels."""
    pixels = (np.clip(gray_unit, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Image.fromarray(pixels).resize((TILE, TILE), Image.BILINEAR).convert("RGB")


def _tile_sized(image: np.ndarray) -> np.ndarray:
    """A 2D float image resized (bilinear, Pillow's anti-aliased downscaling) to TILE x TILE, float32."""
    resized = Image.fromarray(np.asarray(image, dtype=np.float32)).resize((TILE, TILE), Image.BILINEAR)
    return np.asarray(resized)


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


def ct_peak_index(lps_mm: Sequence[Optional[float]], prediction: Prediction) -> Tuple[float, Optional[float], float]:
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
            overlay = Image.fromarray(cam_overlay_rgb(_tile_sized(pixels), _tile_sized(cam)))  # at tile size: cheap
            peak = peaks.get(output, {}).get(input_key(view))
            if peak is not None:
                _mark(overlay, *_tile_xy(peak.pixel_rc, pixels.shape))
            radiograph_row.append((overlay, f"{view} {captions[output]}", _RADIOGRAPH_LETTERS[view]))
    ct_row = []
    depth, _, width = prediction.volume_hu.shape
    for output, cam in prediction.heat_maps.ct.items():
        peak = peaks.get(output, {}).get(CT_KEY)
        d, h_peak, w = ct_peak_index(peak.lps_mm, prediction) if peak is not None else (None, None, None)
        h = _peak_coronal_index(cam) if h_peak is None else int(np.clip(round(h_peak), 0, cam.shape[1] - 1))
        gray = np.clip(_window(prediction.volume_hu[:, h, :]), 0.0, 1.0)
        overlay = Image.fromarray(cam_overlay_rgb(gray, cam[:, h, :])).resize((TILE, TILE), Image.BILINEAR)
        if peak is not None:
            _mark(overlay, *_tile_xy((d, w), (depth, width)))
        ct_row.append((overlay, f"CT h{h} {captions[output]}", SLICE_LETTERS["coronal"]))
    return [row for row in (radiograph_row, ct_row) if row]


SD_ALPHA = 0.7
"""Opacity of the SD heat map at its top value over the CT slice (:func:`x2ct.gradcam.cam_overlay_rgb`)."""
SD_SCALE_PERCENTILE = 99.0
"""The SD heat map's colour scale runs from 0 HU to this percentile of the map (so a few voxels cannot flatten it)."""
OOD_WORDS = "out of distribution"


def info_segments(prediction: Prediction) -> List[Tuple[str, str]]:
    """The report's info line as (text, colour) pieces: style, sampling and OOD; empty when none applies."""
    pieces: List[Tuple[str, str]] = []
    if prediction.style is not None:
        pieces.append((f"style {prediction.style.name}   ", "white"))
    sampling = prediction.sampling
    if sampling is not None:
        steps = "default" if sampling.steps is None else sampling.steps
        pieces.append(
            (f"{sampling.samples} samples ({sampling.sampler}, {steps} steps, guidance {sampling.guidance:g}, seed "
             f"{sampling.seed})   ", "white")
        )  # fmt: skip
    ood = prediction.ood
    if ood is not None:
        threshold = "uncalibrated" if ood.threshold is None else f"threshold {ood.threshold:.2f}"
        pieces.append((f"OOD score {ood.score:.2f} ({threshold})", "white"))
        if ood.flagged:
            pieces.append((f": {OOD_WORDS}", "red"))
    return pieces


def _colour_bar(top_hu: float, font: ImageFont.ImageFont) -> Image.Image:
    """A TILE² tile: the SD heat map's colours (over mid-grey, as over tissue) from 0 (bottom) to ``top_hu``."""
    ramp = np.repeat(np.linspace(1.0, 0.0, TILE - 20, dtype=np.float32)[:, None], 40, axis=1)
    bar = cam_overlay_rgb(np.full(ramp.shape, 0.5, np.float32), ramp, SD_ALPHA)
    tile = Image.new("RGB", (TILE, TILE), "black")
    tile.paste(Image.fromarray(bar), (20, 10))
    draw = ImageDraw.Draw(tile)
    for fraction in (1.0, 0.5, 0.0):
        y = 10 + (1.0 - fraction) * (TILE - 21)
        draw.line([(60, y), (66, y)], fill="white")
        draw.text((70, y - 7), f"{fraction * top_hu:.0f} HU", fill="white", font=font)
    return tile


def _uncertainty_row(prediction: Prediction, font: ImageFont.ImageFont):
    """Row 2b: the SD map over the central coronal slice of the mean CT, and its colour bar in HU."""
    sd = prediction.uncertainty_sd_hu
    if sd is None:
        return []
    h = sd.shape[1] // 2
    top = float(np.percentile(sd, SD_SCALE_PERCENTILE))
    scaled = sd[:, h, :] / top if top > 0 else np.zeros_like(sd[:, h, :])
    gray = np.clip(_window(prediction.volume_hu[:, h, :]), 0.0, 1.0)
    overlay = Image.fromarray(cam_overlay_rgb(gray, scaled, SD_ALPHA)).resize((TILE, TILE), Image.BILINEAR)
    samples = prediction.sampling.samples if prediction.sampling else "?"
    return [
        (overlay, f"SD over {samples} samples, CT h{h}", SLICE_LETTERS["coronal"]),
        (_colour_bar(top, font), "SD (HU)", ("", "", "", "")),
    ]


def report_picture(prediction: Prediction) -> Image.Image:
    """The report of ``prediction`` as an RGB picture (see the module doc for the layout)."""
    font = ImageFont.load_default(size=14)
    row1: List[Tuple[Image.Image, str, Tuple[str, str, str, str]]] = []
    for view, prepared in prediction.views.items():
        letters = _RADIOGRAPH_LETTERS.get(view, _RADIOGRAPH_LETTERS[PA])
        scores = prediction.consistency[view]
        if prepared.before_style is not None:
            row1.append((_tile(prepared.before_style), f"{view} input before style", letters))
        styled = "" if prediction.style is None else f" ({prediction.style.name} style)"
        row1.append((_tile(prepared.model_input), f"{view} input{styled}", letters))
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
    rows = [row for row in (row1, row2, _uncertainty_row(prediction, font)) if row] + _finding_rows(prediction)
    width = TILE * max(len(row) for row in rows)
    info = info_segments(prediction)
    header = _HEADER + (_INFO if info else 0)
    top = header + _BANNER_HEIGHT
    height = top + len(rows) * (_LABEL + TILE)
    canvas = Image.new("RGB", (width, height), "black")
    draw = ImageDraw.Draw(canvas)
    model = prediction.model
    title = f"x2ct predict - model {model.name} ({model.architecture}) on {model.device} - "
    title += f"consistency {prediction.consistency_score:.2f}"
    draw.text((6, 4), title, fill="white", font=font)
    x = 6.0
    for text, colour in info:
        draw.text((x, _HEADER), text, fill=colour, font=font)
        x += draw.textlength(text, font=font)
    draw.rectangle([0, header, width, top], fill=(170, 0, 0))
    draw.text((6, header + 4), BANNER, fill="white", font=font)
    for row, tiles in enumerate(rows):
        y_label = top + row * (_LABEL + TILE)
        for n, (tile, label, letters) in enumerate(tiles):
            x0 = n * TILE
            draw.text((x0 + 3, y_label + 1), label, fill="white", font=font)
            canvas.paste(tile, (x0, y_label + _LABEL))
            draw_orientation_letters(draw, x0, y_label + _LABEL, TILE, letters, font)
    return canvas


# --------------------------------------------------------------------------------------------------
# Several cases side by side


@dataclass
class CaseRow:
    """One case of :func:`cases_picture`: ``predictions`` by a short label (e.g. "+B", "+S"), the first one's
    inputs and Grad-CAM drawn; ``lesions``: the case's known lesion mask, bool (D, H, W) on the canonical
    cube at any grid size (the cube the radiographs were rendered from), or None; ``notes``: extra text lines;
    ``focus``: the output whose CT Grad-CAM map and Guided Grad-CAM peak are drawn (default: the first finding
    with a CT map)."""

    title: str
    predictions: Dict[str, Prediction]
    lesions: Optional[np.ndarray] = None
    notes: List[str] = field(default_factory=list)
    focus: Optional[str] = None


def lesions_on_grid(lesions: np.ndarray, size: int) -> np.ndarray:
    """A bool (D, H, W) lesion mask of the canonical cube on a ``size``³ grid: a voxel is lesion when the
    nearest source voxel of its centre is."""
    index = np.minimum(((np.arange(size) + 0.5) * lesions.shape[0] / size).astype(int), lesions.shape[0] - 1)
    return lesions[np.ix_(index, index, index)]


def _outline(tile: Image.Image, mask_2d: np.ndarray) -> None:
    """Draw the edge pixels of a 2D mask (resized to the tile) in green."""
    big = np.asarray(Image.fromarray(mask_2d.astype(np.uint8) * 255).resize((TILE, TILE), Image.NEAREST)) > 0
    inner = big.copy()
    inner[1:-1, 1:-1] = big[1:-1, 1:-1] & big[:-2, 1:-1] & big[2:, 1:-1] & big[1:-1, :-2] & big[1:-1, 2:]
    pixels = np.asarray(tile).copy()
    pixels[big & ~inner] = (0, 255, 0)
    tile.paste(Image.fromarray(pixels))


def _ct_finding(prediction: Prediction, focus: Optional[str]) -> Optional[Finding]:
    """The finding ``focus`` when it has a CT Grad-CAM map, else the first finding with one (None without)."""
    mapped = [f for f in prediction.findings if f.output in prediction.heat_maps.ct]
    return next((f for f in mapped if f.output == focus), mapped[0] if mapped else None)


def _case_tiles(case: CaseRow) -> List[Tuple[Image.Image, str, Tuple[str, str, str, str]]]:
    """PA input, then per prediction the coronal synthetic-CT slice through the lesions (the centre without),
    then the first prediction's CT Grad-CAM on that slice; lesions outlined, Guided Grad-CAM peaks crossed."""
    first = next(iter(case.predictions.values()))
    tiles = [(_tile(first.views[PA].model_input), f"{case.title}: PA", _RADIOGRAPH_LETTERS[PA])]
    for label, prediction in case.predictions.items():
        depth, rows, width = prediction.volume_hu.shape
        lesions = None if case.lesions is None else lesions_on_grid(case.lesions, depth)
        h = rows // 2 if lesions is None or not lesions.any() else int(np.argmax(lesions.sum(axis=(0, 2))))
        gray = np.clip(_window(prediction.volume_hu[:, h, :]), 0.0, 1.0)
        finding = _ct_finding(prediction, case.focus)
        shown = [(_tile(gray), f"{label} synthetic CT h{h}")]
        if finding is not None and prediction is first:
            overlay = cam_overlay_rgb(gray, prediction.heat_maps.ct[finding.output][:, h, :])
            heat = Image.fromarray(overlay).resize((TILE, TILE), Image.BILINEAR)
            shown.append((heat, f"{label} {finding.output} map"))
        peak = None if finding is None else finding.guided_peak.get(CT_KEY)
        for image, caption in shown:
            if lesions is not None:
                _outline(image, lesions[:, h, :])
            if peak is not None:
                d, _, w = ct_peak_index(peak.lps_mm, prediction)
                _mark(image, *_tile_xy((d, w), (depth, width)))
            tiles.append((image, caption, SLICE_LETTERS["coronal"]))
    return tiles


def _case_text(case: CaseRow) -> List[str]:
    lines = []
    for label, prediction in case.predictions.items():
        lines.append(f"{label} {prediction.model.name}")
        lines += [f"  {_finding_caption(f)}" for f in prediction.findings] or ["  (no classifier)"]
    return lines + case.notes


def cases_picture(cases: Sequence[CaseRow], title: str) -> Image.Image:
    """One row per case (:func:`_case_tiles`) with its findings in words on the right; green outlines: the known
    lesions; crosses: the Guided Grad-CAM peak of each row's focus finding (:class:`CaseRow`); a SYNTHETIC banner."""
    font = ImageFont.load_default(size=14)
    rows = [_case_tiles(case) for case in cases]
    texts = [_case_text(case) for case in cases]
    text_width = 2 * TILE
    width = TILE * max(len(row) for row in rows) + text_width
    top = _HEADER + _BANNER_HEIGHT
    height = top + sum(max(_LABEL + TILE, 18 * len(text) + _LABEL) for text in texts)
    canvas = Image.new("RGB", (width, height), "black")
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 4), title, fill="white", font=font)
    draw.rectangle([0, _HEADER, width, top], fill=(170, 0, 0))
    draw.text((6, _HEADER + 4), BANNER, fill="white", font=font)
    y = top
    for tiles, text in zip(rows, texts):
        for n, (tile, label, letters) in enumerate(tiles):
            draw.text((n * TILE + 3, y + 1), label, fill="white", font=font)
            canvas.paste(tile, (n * TILE, y + _LABEL))
            draw_orientation_letters(draw, n * TILE, y + _LABEL, TILE, letters, font)
        x_text = TILE * len(tiles) + 8
        for i, line in enumerate(text):
            colour = "orange" if line.rstrip().endswith("POS") else "white"
            draw.text((x_text, y + _LABEL + 18 * i), line, fill=colour, font=font)
        y += max(_LABEL + TILE, 18 * len(text) + _LABEL)
    return canvas
