"""A clinical-radiograph (CR/DX) simulator: from an x2ct DRR to an image that looks like a processed clinical chest
radiograph, with every parameter seeded, recorded and drawn from documented ranges (docs/clinical_simulator.md).

It is a controlled simulation of the domain gap between DRRs and clinical radiographs, used as training
augmentation (:func:`simulate_batch`, the generator setting ``clinical_augment``) and as the "real" domain of the
experiments (``x2ct simulate-radiographs``). It is not a validated physics model.

Input: an x2ct DRR, (rows, cols) float in [0, 1], dense bright, display orientation: the per-image min-max of
cone-beam line integrals of mu (:mod:`x2ct.drr`, docs/datasets.md). The min-max lost the absolute attenuation,
so the DRR is first mapped back to line integrals ``mu*L = mu_l_min + drr * (mu_l_max - mu_l_min)`` with a
sampled range. Then, in the physical order (each step a small function below, each switchable by name in
``ClinicalParams.effects``):

* ``pose``: patient positioning: small rotation, shift and magnification change (field of view), applied to the line
  integrals (:func:`pose_line_integrals`);
* ``marker``: a lead side marker (letter L or R on a plastic block) in a corner of the field (:func:`add_marker`);
* ``heel``: anode heel effect, the fluence falls off linearly along the anode-cathode axis (:func:`heel_fluence`);
* always: primary fluence ``heel * exp(-mu*L)``, zero outside the collimated field;
* ``scatter``: scatter = SPR x a broad Gaussian low-pass of the primary, and the anti-scatter grid's transmissions
  for primary and scatter (:func:`scatter_field`);
* ``noise``: quantum noise, Poisson in absorbed quanta per pixel at a detector air kerma (:func:`quantum_noise`);
* ``mtf``: detector blur, a Gaussian PSF with the sampled MTF50 in lp/mm (:func:`detector_mtf`);
* always: the log of the detector signal (dense bright);
* ``usm``: vendor multi-scale processing, large-kernel dynamic-range compression and multi-scale unsharp masking
  (:func:`multiscale_unsharp`);
* ``lut``: a film-like sigmoid tone curve over a window taken from the histogram of the exposed field
  (:func:`tone_curve`); without it the window maps linearly;
* ``collimation``: the collimator's shutters expose a rectangle (:func:`collimation_mask`); outside it the processed
  image shows the vendor's border value, white or black.

With no effect switched on the output is the DRR itself (min-max). Geometry happens before exposure (a patient
and a marker are positioned before the beam is switched on); only the border fill is a display step.

Units: lengths in mm in the detector plane (``pixel_mm`` = detector pixel pitch), spatial frequency in lp/mm,
dose as detector air kerma in µGy. Arrays (rows, cols), row 0 at the top of the displayed image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy import ndimage

from ..drr_geometry import DRRGeometry

EFFECTS = ("pose", "marker", "heel", "scatter", "noise", "mtf", "usm", "lut", "collimation")
"""Every effect, in the order the simulator applies them (module doc)."""

MODALITIES = ("CR", "DX")
"""Computed radiography (storage phosphor) and digital radiography (flat panel)."""

PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")
"""How stored values are shown: MONOCHROME1 stores dense structures dark (inverted), MONOCHROME2 bright."""

MARKER_CORNERS = ("top-left", "top-right")
"""Where the side marker sits inside the collimated field."""

ANODE_SIDES = ("top", "bottom", "left", "right")
"""The image side the anode (and so the weaker fluence) lies on."""

QUANTA_PER_MM2_PER_UGY = 3.0e4
"""X-ray quanta per mm² per µGy of air kerma: IEC 62220-1-1:2015 tabulates the squared input signal-to-noise ratio
of its standard beam qualities, 30 174 /(mm²·µGy) for RQA5 (70 kV, 21 mm Al) and about 2.2e4-3.2e4 from RQA3 to
RQA9 (50-120 kV). The same number follows from fluence/kerma = 1 / (E · (mu_en/rho)_air) at ~60 keV
(NIST tables: 0.0304 cm²/g) = 3.4e4 /(mm²·µGy)."""

LINE_INTEGRAL_FLOOR = 1e-4
"""Smallest relative exposure taken into the log (a pixel with no detected quanta)."""

MARKER_LEAD_MU_L = 7.0
"""Line integral of mu added by the lead letter of a side marker (~1 mm lead: opaque to a chest beam)."""

MARKER_BLOCK_MU_L = 0.3
"""Line integral of mu added by the plastic block that holds the letter (~15 mm of acrylic)."""

USM_BANDS = 4
"""Bands of the multi-scale unsharp masking: Gaussian scales base, 2·base, 4·base, 8·base (mm)."""

_GLYPHS = {
    "L": ("X....", "X....", "X....", "X....", "X....", "X....", "XXXXX"),
    "R": ("XXXX.", "X...X", "X...X", "XXXX.", "X.X..", "X..X.", "X...X"),
}
"""5 x 7 bitmaps of the marker letters."""


Range = Tuple[float, float]


@dataclass(frozen=True)
class SimulatorRanges:
    """The range each parameter is drawn from (uniform unless said otherwise); docs/clinical_simulator.md lists
    them with their sources. Lengths in mm in the detector plane, dose in µGy, frequencies in lp/mm."""

    mu_l_min: Range = (0.0, 1.0)
    """Smallest line integral of mu in the image (air beside the body ~0; the lungs behind the chest wall ~1).
    x2ct's own DRRs of the bundled CT span 0.63-5.8 (PA) and 0-7.1 (lateral) at mu_water = 0.0206 /mm."""
    mu_l_max: Range = (4.5, 8.0)
    """Largest line integral (mediastinum, spine, diaphragm): mu_water x 220-390 mm of water-equivalent path;
    chest PA 4.5-6, lateral 6-8. The spread also stands in for beam quality (kV) and patient size."""
    rotation_deg: Range = (-4.0, 4.0)
    """In-plane patient rotation (degrees)."""
    shift_fraction: Range = (-0.04, 0.04)
    """Patient shift along rows and along columns, as a fraction of the image side."""
    fov_scale: Range = (0.92, 1.12)
    """Magnification relative to the DRR geometry: >1 the anatomy appears larger (a smaller field of view, a
    patient farther from the detector); the DICOM pixel spacing still states the nominal geometry, so this is
    also the error of an assumed magnification factor (~1.1 for PA chest, Bushberg et al. 2012)."""
    collimation_margin: Range = (0.0, 0.10)
    """Unexposed band at each of the four sides, as a fraction of the image side."""
    border_white_probability: float = 0.5
    """Chance the vendor shows the unexposed border white (as acquired) rather than black (electronic shutter)."""
    marker_probability: float = 0.9
    """Chance a side marker is in the field."""
    marker_height_mm: Range = (12.0, 25.0)
    """Height of the marker letter block (mm; common lead markers are 1-2.5 cm)."""
    heel_fraction: Range = (0.10, 0.25)
    """Fluence drop across the field along the anode-cathode axis (Bushberg et al. 2012: the heel effect
    reduces the anode-side intensity by tens of percent at large fields)."""
    grid_probability: float = 0.5
    """Chance an anti-scatter grid is used (PA chest with a grid is usual; bedside and CR cassettes often
    without)."""
    spr: Range = (0.5, 1.5)
    """Field-mean scatter-to-primary ratio without a grid (Niklason et al. 1981: of order 1 behind the lungs of a
    PA chest, several times more behind the mediastinum, which the low-pass model reproduces)."""
    scatter_sigma_mm: Range = (25.0, 60.0)
    """Standard deviation of the Gaussian scatter kernel (mm): scatter point-spread functions of a chest are
    several centimetres wide (Boone & Seibert 1988; Love & Kruger 1987)."""
    grid_primary_transmission: Range = (0.60, 0.75)
    """Fraction of the primary a focused grid (ratio 8-12) passes (Chan & Doi 1982; IEC 60627)."""
    grid_scatter_transmission: Range = (0.08, 0.20)
    """Fraction of the scatter the grid passes (Chan & Doi 1982)."""
    dose_ugy: Range = (1.0, 10.0)
    """Detector air kerma at the median exposure of the field (µGy), drawn log-uniformly: IEC 62494-1 and AAPM
    TG-116 (Shepard et al. 2009) define the exposure index EI = 100 x this kerma; chest targets are a few µGy
    (EI a few hundred), under- and over-exposure reach a factor 2-3 either way."""
    efficiency_cr: Range = (0.20, 0.35)
    """Effective quantum efficiency of CR (the low-frequency DQE; Samei & Flynn 2002)."""
    efficiency_dx: Range = (0.50, 0.70)
    """Effective quantum efficiency of flat-panel DR (the low-frequency DQE; Samei & Flynn 2003)."""
    mtf50_cr: Range = (1.0, 2.5)
    """Frequency where the MTF of a CR system falls to 0.5 (lp/mm; Samei & Flynn 2002)."""
    mtf50_dx: Range = (2.0, 3.5)
    """MTF50 of a flat-panel DR system (lp/mm; Samei & Flynn 2003)."""
    usm_base_mm: Range = (0.5, 2.0)
    """Gaussian scale of the finest unsharp-masking band (mm); the others are 2, 4 and 8 times it."""
    usm_gain: Range = (0.2, 2.0)
    """Gain of each unsharp-masking band (drawn per band): vendor edge enhancement amplifies the detail
    frequencies 1.5-3 fold (Prokop et al. 2003; Vuylsteke & Schoeters 1994)."""
    drc_gain: Range = (0.0, 0.5)
    """Dynamic-range compression: the fraction of the large-scale signal subtracted (Prokop et al. 2003)."""
    drc_sigma_mm: Range = (20.0, 50.0)
    """Gaussian scale of the dynamic-range compression (mm)."""
    window_low_percentile: Range = (0.5, 3.0)
    """Percentile of the exposed field's histogram at the low end of the display window."""
    window_high_percentile: Range = (97.0, 99.5)
    """Percentile at the high end of the display window."""
    lut_slope: Range = (4.0, 9.0)
    """Slope of the sigmoid tone curve over the window (a film's characteristic curve: toe and shoulder)."""
    lut_center: Range = (0.42, 0.58)
    """Position of the tone curve's midpoint in the window (0..1)."""
    dx_probability: float = 0.5
    """Chance the simulated system is DX (flat panel) rather than CR."""
    monochrome1_probability: float = 0.5
    """Chance the DICOM is MONOCHROME1 (common for CR) rather than MONOCHROME2."""
    bits_stored: Tuple[int, int] = (12, 16)
    """BitsStored of the DICOM pixel data (inclusive range)."""


DEFAULT_RANGES = SimulatorRanges()
"""The documented default ranges."""


@dataclass(frozen=True)
class ClinicalParams:
    """Every parameter of one simulated radiograph (drawn by :func:`sample_params`; JSON via :meth:`to_dict`).

    Units as in :class:`SimulatorRanges`. ``effects`` names the effects applied (:data:`EFFECTS`);
    ``collimation`` is the unexposed fraction (top, bottom, left, right); ``shift`` (rows, cols) a fraction of the
    image side; ``usm_gains`` one gain per band (finest first).
    """

    effects: Tuple[str, ...]
    modality: str
    mu_l_min: float
    mu_l_max: float
    rotation_deg: float
    shift: Tuple[float, float]
    fov_scale: float
    collimation: Tuple[float, float, float, float]
    border_white: bool
    marker_letter: str
    marker_corner: str
    marker_height_mm: float
    heel_fraction: float
    anode_side: str
    grid: bool
    spr: float
    scatter_sigma_mm: float
    grid_primary_transmission: float
    grid_scatter_transmission: float
    dose_ugy: float
    quantum_efficiency: float
    mtf50_lp_mm: float
    usm_base_mm: float
    usm_gains: Tuple[float, ...]
    drc_gain: float
    drc_sigma_mm: float
    window_percentiles: Tuple[float, float]
    lut_slope: float
    lut_center: float
    photometric: str
    bits_stored: int

    def __post_init__(self) -> None:
        unknown = [e for e in self.effects if e not in EFFECTS]
        if unknown:
            raise ValueError(f"unknown effect(s) {', '.join(unknown)}; choose from {', '.join(EFFECTS)}")
        if self.modality not in MODALITIES or self.photometric not in PHOTOMETRICS:
            raise ValueError(f"modality {self.modality!r} / photometric {self.photometric!r} not supported")
        if not 8 < self.bits_stored <= 16 or not self.mu_l_max > self.mu_l_min >= 0:
            raise ValueError("need 8 < bits_stored <= 16 and 0 <= mu_l_min < mu_l_max")

    def with_effects(self, effects: Sequence[str]) -> ClinicalParams:
        """The same parameters with only ``effects`` switched on (in :data:`EFFECTS` order)."""
        return replace(self, effects=tuple(e for e in EFFECTS if e in effects))

    def to_dict(self) -> Dict[str, Any]:
        """JSON-serialisable record (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ClinicalParams:
        """Inverse of :meth:`to_dict`."""
        return cls(**{f.name: tuple(values[f.name]) if isinstance(values[f.name], list) else values[f.name]
                      for f in fields(cls)})  # fmt: skip


@dataclass(frozen=True)
class SimulatedRadiograph:
    """One simulated radiograph. ``image``: float32 (rows, cols) in [0, 1], dense bright, as a reader displays it;
    ``stored``: uint16 values as the DICOM stores them (``params.bits_stored`` bits, inverted for MONOCHROME1);
    ``collimation``: bool, True where the field was exposed; ``params``: what made it."""

    image: np.ndarray
    stored: np.ndarray
    collimation: np.ndarray
    params: ClinicalParams


# ------------------------------------------------------------------------------------------- parameters


def _uniform(rng: np.random.Generator, bounds: Range) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def sample_params(
    rng: np.random.Generator,
    ranges: SimulatorRanges = DEFAULT_RANGES,
    *,
    modality: Optional[str] = None,
    photometric: Optional[str] = None,
    grid: Optional[bool] = None,
    dose_ugy: Optional[float] = None,
    effects: Sequence[str] = EFFECTS,
) -> ClinicalParams:
    """Draw every parameter from ``ranges``. The keyword arguments fix one choice instead; every draw is made
    either way, so fixing one leaves the others as they would have been."""
    r, u = ranges, partial(_uniform, rng)
    drawn_dx = rng.random() < r.dx_probability
    chosen_modality = modality or ("DX" if drawn_dx else "CR")
    dx = chosen_modality == "DX"
    mu_min, mu_max = u(r.mu_l_min), u(r.mu_l_max)
    rotation, shift, scale = u(r.rotation_deg), (u(r.shift_fraction), u(r.shift_fraction)), u(r.fov_scale)
    collimation = tuple(u(r.collimation_margin) for _ in range(4))
    border_white = bool(rng.random() < r.border_white_probability)
    has_marker = rng.random() < r.marker_probability
    letter = str(rng.choice(sorted(_GLYPHS)))
    corner = str(rng.choice(MARKER_CORNERS))
    marker_height = u(r.marker_height_mm)
    heel, anode = u(r.heel_fraction), str(rng.choice(ANODE_SIDES))
    drawn_grid = bool(rng.random() < r.grid_probability)
    spr, sigma = u(r.spr), u(r.scatter_sigma_mm)
    t_primary, t_scatter = u(r.grid_primary_transmission), u(r.grid_scatter_transmission)
    drawn_dose = float(np.exp(u((np.log(r.dose_ugy[0]), np.log(r.dose_ugy[1])))))
    efficiency_cr, efficiency_dx = u(r.efficiency_cr), u(r.efficiency_dx)
    mtf50_cr, mtf50_dx = u(r.mtf50_cr), u(r.mtf50_dx)
    usm_base, gains = u(r.usm_base_mm), tuple(u(r.usm_gain) for _ in range(USM_BANDS))
    drc, drc_sigma = u(r.drc_gain), u(r.drc_sigma_mm)
    window = (u(r.window_low_percentile), u(r.window_high_percentile))
    slope, center = u(r.lut_slope), u(r.lut_center)
    drawn_m1 = rng.random() < r.monochrome1_probability
    bits = int(rng.integers(r.bits_stored[0], r.bits_stored[1] + 1))
    return ClinicalParams(
        effects=tuple(e for e in EFFECTS if e in effects and (e != "marker" or has_marker)),
        modality=chosen_modality,
        mu_l_min=mu_min,
        mu_l_max=mu_max,
        rotation_deg=rotation,
        shift=shift,
        fov_scale=scale,
        collimation=collimation,  # type: ignore[arg-type]
        border_white=border_white,
        marker_letter=letter,
        marker_corner=corner,
        marker_height_mm=marker_height,
        heel_fraction=heel,
        anode_side=anode,
        grid=drawn_grid if grid is None else bool(grid),
        spr=spr,
        scatter_sigma_mm=sigma,
        grid_primary_transmission=t_primary,
        grid_scatter_transmission=t_scatter,
        dose_ugy=drawn_dose if dose_ugy is None else float(dose_ugy),
        quantum_efficiency=efficiency_dx if dx else efficiency_cr,
        mtf50_lp_mm=mtf50_dx if dx else mtf50_cr,
        usm_base_mm=usm_base,
        usm_gains=gains,
        drc_gain=drc,
        drc_sigma_mm=drc_sigma,
        window_percentiles=window,
        lut_slope=slope,
        lut_center=center,
        photometric=photometric or ("MONOCHROME1" if drawn_m1 else "MONOCHROME2"),
        bits_stored=bits,
    )


# ------------------------------------------------------------------------------------------- the effects


def drr_to_line_integrals(drr: np.ndarray, mu_l_min: float, mu_l_max: float) -> np.ndarray:
    """Undo a DRR's min-max: ``mu*L = mu_l_min + drr * (mu_l_max - mu_l_min)`` (dimensionless), float64."""
    return mu_l_min + np.clip(np.asarray(drr, np.float64), 0.0, 1.0) * (mu_l_max - mu_l_min)


def pose_line_integrals(line: np.ndarray, rotation_deg: float, shift: Tuple[float, float], scale: float) -> np.ndarray:
    """Rotate (degrees, counter-clockwise as displayed), magnify by ``scale`` and shift by ``shift`` (fraction of
    the side, rows then columns) about the image centre; bilinear, the edge values continued outwards (mirroring
    would fold the anatomy's gradients into ridges that the unsharp masking turns into lines)."""
    rows, cols = line.shape
    angle = np.deg2rad(rotation_deg)
    c, s = np.cos(angle), np.sin(angle)
    inverse = np.array([[c, s], [-s, c]]) / scale  # output (row, col) offset -> input offset
    centre = np.array([(rows - 1) / 2.0, (cols - 1) / 2.0])
    offset = centre - inverse @ (centre + np.array([shift[0] * rows, shift[1] * cols]))
    return ndimage.affine_transform(line, inverse, offset=offset, order=1, mode="nearest")


def collimation_mask(shape: Tuple[int, int], margins: Sequence[float]) -> np.ndarray:
    """bool (rows, cols), True inside the exposed rectangle: ``margins`` = unexposed fraction (top, bottom, left,
    right) of the side, rounded to whole pixels. Its area is ``(1 - top - bottom) * (1 - left - right)`` of the
    image within one pixel row and column."""
    rows, cols = shape
    top, bottom = int(round(margins[0] * rows)), rows - int(round(margins[1] * rows))
    left, right = int(round(margins[2] * cols)), cols - int(round(margins[3] * cols))
    mask = np.zeros(shape, bool)
    mask[top:bottom, left:right] = True
    return mask


def _glyph(letter: str, rows: int, cols: int) -> np.ndarray:
    """The 5 x 7 bitmap of ``letter`` area-sampled onto rows x cols pixels (fraction of each pixel covered)."""
    bitmap = np.array([[ch == "X" for ch in line] for line in _GLYPHS[letter]], np.float64)
    sub = 4
    r = np.minimum(((np.arange(rows * sub) + 0.5) / (rows * sub) * bitmap.shape[0]).astype(int), bitmap.shape[0] - 1)
    c = np.minimum(((np.arange(cols * sub) + 0.5) / (cols * sub) * bitmap.shape[1]).astype(int), bitmap.shape[1] - 1)
    return bitmap[np.ix_(r, c)].reshape(rows, sub, cols, sub).mean(axis=(1, 3))


def add_marker(line: np.ndarray, letter: str, corner: str, height_mm: float, pixel_mm: float,
               field: np.ndarray) -> np.ndarray:  # fmt: skip
    """Line integrals with a lead side marker added: a plastic block (:data:`MARKER_BLOCK_MU_L`) holding the
    lead ``letter`` (:data:`MARKER_LEAD_MU_L`), ``height_mm`` high, in ``corner`` of the exposed ``field``."""
    rows_in = np.flatnonzero(field.any(axis=1))
    cols_in = np.flatnonzero(field.any(axis=0))
    if not rows_in.size:
        return line
    height = int(np.clip(round(height_mm / pixel_mm), 3, max(3, rows_in.size // 3)))
    width = max(3, int(round(height * 0.8)))
    inset = max(1, height // 3)
    top = rows_in[0] + inset
    left = cols_in[0] + inset if corner == "top-left" else cols_in[-1] + 1 - inset - width
    top, left = max(0, min(top, line.shape[0] - height)), max(0, min(left, line.shape[1] - width))
    pad = max(1, height // 8)
    letter_map = np.zeros((height, width))
    letter_map[pad : height - pad, pad : width - pad] = _glyph(letter, height - 2 * pad, width - 2 * pad)
    out = line.copy()
    out[top : top + height, left : left + width] += MARKER_BLOCK_MU_L + MARKER_LEAD_MU_L * letter_map
    return out


def heel_fluence(shape: Tuple[int, int], fraction: float, anode_side: str) -> np.ndarray:
    """Relative primary fluence (rows, cols) of the heel effect: 1 at the cathode-side edge, falling linearly to
    ``1 - fraction`` at the edge on ``anode_side``."""
    rows, cols = shape
    vertical = anode_side in ("top", "bottom")
    ramp = np.linspace(0.0, 1.0, rows if vertical else cols)  # 0 at the top / left edge
    if anode_side in ("top", "left"):
        ramp = ramp[::-1]
    along = ramp[:, None] if vertical else ramp[None, :]
    return np.broadcast_to(1.0 - fraction * along, shape).copy()


def scatter_field(primary: np.ndarray, spr: float, sigma_mm: float, pixel_mm: float) -> np.ndarray:
    """Scatter reaching the detector without a grid: ``spr * G_sigma * primary`` (a Gaussian low-pass of the
    primary, reflecting at the image edges; Boone & Seibert 1988). The field-mean scatter is ``spr`` times the
    field-mean primary; locally the ratio is higher where the primary is low (mediastinum) and lower in the lungs."""
    return spr * ndimage.gaussian_filter(primary, sigma_mm / pixel_mm, mode="reflect")


def quantum_noise(exposure: np.ndarray, reference: float, dose_ugy: float, efficiency: float, pixel_mm: float,
                  rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Poisson quantum noise. A pixel at relative exposure ``reference`` absorbs on average
    ``q = dose_ugy * QUANTA_PER_MM2_PER_UGY * pixel_mm² * efficiency`` quanta; each pixel's count is Poisson with
    mean ``q * exposure / reference`` and is returned in exposure units, so its relative variance is
    ``reference / (q * exposure)``: halving the dose doubles it."""
    quanta = dose_ugy * QUANTA_PER_MM2_PER_UGY * pixel_mm**2 * efficiency
    counts = rng.poisson(np.maximum(exposure, 0.0) * (quanta / reference))
    return counts * (reference / quanta)


def gaussian_sigma_mm(mtf50_lp_mm: float) -> float:
    """Standard deviation (mm) of the Gaussian PSF whose MTF ``exp(-2 pi² sigma² f²)`` is 0.5 at ``mtf50_lp_mm``."""
    return float(np.sqrt(np.log(2.0) / 2.0) / (np.pi * mtf50_lp_mm))


def detector_mtf(exposure: np.ndarray, mtf50_lp_mm: float, pixel_mm: float) -> np.ndarray:
    """Detector blur: a Gaussian PSF with MTF50 ``mtf50_lp_mm`` (its 10-90 % edge width is 2.563 sigma); the
    phosphor spreads the absorbed quanta, so it follows the noise (the noise is blurred too, as in CR and
    indirect DR)."""
    return ndimage.gaussian_filter(exposure, gaussian_sigma_mm(mtf50_lp_mm) / pixel_mm, mode="nearest")


def _filled(signal: np.ndarray, field: np.ndarray) -> np.ndarray:
    """``signal`` with the unexposed border set to the field's median, so filters do not see the collimator edge
    (vendors detect the field before processing)."""
    return np.where(field, signal, np.median(signal[field]))


def multiscale_unsharp(signal: np.ndarray, field: np.ndarray, pixel_mm: float, base_mm: float,
                       gains: Sequence[float], drc_gain: float, drc_sigma_mm: float) -> np.ndarray:  # fmt: skip
    """Vendor-like processing of the log signal: dynamic-range compression ``-drc_gain * (G_drc s - mean)``, then
    multi-scale unsharp masking ``+ sum_k gains[k] * (G_{k-1} s - G_k s)`` with Gaussian scales ``base_mm * 2^k``
    (``G_{-1}`` the identity): band k holds the detail between those scales (Vuylsteke & Schoeters 1994)."""
    filled = _filled(signal, field)
    mean = float(filled[field].mean())
    out = signal - drc_gain * (ndimage.gaussian_filter(filled, drc_sigma_mm / pixel_mm, mode="reflect") - mean)
    finer = filled
    for k, gain in enumerate(gains):
        coarser = ndimage.gaussian_filter(filled, base_mm * 2**k / pixel_mm, mode="reflect")
        out = out + gain * (finer - coarser)
        finer = coarser
    return out


def tone_curve(signal: np.ndarray, field: np.ndarray, percentiles: Tuple[float, float], slope: float,
               center: float, sigmoid: bool = True) -> np.ndarray:  # fmt: skip
    """Display values in [0, 1]: the window ``lo..hi`` = the two percentiles of the exposed field's histogram,
    ``z = (s - lo) / (hi - lo)``, then the film-like ``1 / (1 + exp(-slope (z - center)))`` (or, with
    ``sigmoid=False``, ``z`` clipped: a linear window)."""
    lo, hi = np.percentile(signal[field], percentiles)
    z = (signal - lo) / max(hi - lo, 1e-12)
    if sigmoid:
        return 1.0 / (1.0 + np.exp(-slope * (z - center)))
    return np.clip(z, 0.0, 1.0)


def stored_values(image: np.ndarray, bits_stored: int, photometric: str) -> np.ndarray:
    """uint16 stored values of a [0, 1] dense-bright image: ``round(image * (2^bits - 1))``, inverted
    (``max - v``) for MONOCHROME1."""
    top = 2**bits_stored - 1
    values = np.rint(np.clip(image, 0.0, 1.0) * top).astype(np.uint16)
    return (top - values).astype(np.uint16) if photometric == "MONOCHROME1" else values


# ------------------------------------------------------------------------------------------- the simulator


def simulate(drr: np.ndarray, params: ClinicalParams, pixel_mm: float, rng: np.random.Generator) -> SimulatedRadiograph:
    """One simulated radiograph of ``drr`` ((rows, cols) float [0, 1], dense bright, display orientation) with
    detector pixel pitch ``pixel_mm`` (mm); ``rng`` draws the quantum noise. See the module doc for the steps."""
    on = set(params.effects)
    line = drr_to_line_integrals(drr, params.mu_l_min, params.mu_l_max)
    if "pose" in on:
        line = pose_line_integrals(line, params.rotation_deg, params.shift, params.fov_scale)
    full = np.ones(line.shape, bool)
    field = collimation_mask(line.shape, params.collimation) if "collimation" in on else full
    if "marker" in on:
        line = add_marker(line, params.marker_letter, params.marker_corner, params.marker_height_mm, pixel_mm, field)
    fluence = heel_fluence(line.shape, params.heel_fraction, params.anode_side) if "heel" in on else 1.0
    primary = np.where(field, fluence * np.exp(-line), 0.0)
    exposure = primary
    if "scatter" in on:
        scatter = scatter_field(primary, params.spr, params.scatter_sigma_mm, pixel_mm)
        if params.grid:
            primary, scatter = primary * params.grid_primary_transmission, scatter * params.grid_scatter_transmission
        exposure = primary + scatter
    if "noise" in on:
        reference = float(np.median(exposure[field]))
        exposure = quantum_noise(exposure, reference, params.dose_ugy, params.quantum_efficiency, pixel_mm, rng)
    if "mtf" in on:
        exposure = detector_mtf(exposure, params.mtf50_lp_mm, pixel_mm)
    signal = -np.log(np.maximum(exposure, LINE_INTEGRAL_FLOOR))
    if "usm" in on:
        signal = multiscale_unsharp(signal, field, pixel_mm, params.usm_base_mm, params.usm_gains, params.drc_gain,
                                    params.drc_sigma_mm)  # fmt: skip
    if "lut" in on:
        image = tone_curve(signal, field, params.window_percentiles, params.lut_slope, params.lut_center)
    else:
        image = tone_curve(signal, field, (0.0, 100.0), 1.0, 0.5, sigmoid=False)
    if "collimation" in on:
        image = np.where(field, image, 1.0 if params.border_white else 0.0)
    image = image.astype(np.float32)
    return SimulatedRadiograph(image, stored_values(image, params.bits_stored, params.photometric), field, params)


def default_pixel_mm(size: int) -> float:
    """Detector pixel pitch (mm) of a ``size``-pixel DRR in the official X2CT-GAN geometry (500 mm detector)."""
    return DRRGeometry().detector_spacing_mm(size)


def simulate_batch(
    images: torch.Tensor,
    generator: torch.Generator,
    ranges: SimulatorRanges = DEFAULT_RANGES,
    pixel_mm: Optional[float] = None,
) -> torch.Tensor:
    """Training augmentation: each (1, S, S) DRR of ``images`` ((N, 1, S, S) in [0, 1]) replaced by a simulated
    radiograph with its own parameters, min-max normalised and quantised to 8 bits as the stored DRRs the models
    learn from (docs/datasets.md). ``generator`` draws one seed per image (so results follow its state only);
    ``pixel_mm`` defaults to :func:`default_pixel_mm`. Returns float32 on ``images``' device; no gradients."""
    size = images.shape[-1]
    pitch = default_pixel_mm(size) if pixel_mm is None else pixel_mm
    out = []
    for image in images.detach().float().cpu().numpy():
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        rng = np.random.default_rng(seed)
        simulated = simulate(image[0], sample_params(rng, ranges), pitch, rng).image.astype(np.float64)
        span = simulated.max() - simulated.min()
        unit = (simulated - simulated.min()) / span if span > 0 else np.zeros_like(simulated)
        out.append(np.round(unit * 255.0) / 255.0)
    return torch.from_numpy(np.stack(out)[:, None].astype(np.float32)).to(images.device)


def augment_inputs(radiographs: Mapping[str, torch.Tensor], probability: float,
                   pixel_mm: Optional[float] = None) -> Dict[str, torch.Tensor]:  # fmt: skip
    """The generator setting ``clinical_augment``: each image of each view (``radiographs``: view key -> (N, 1,
    S, S)) is replaced with probability ``probability`` by a simulated radiograph (:func:`simulate_batch`).
    With a positive probability exactly one number is drawn from torch's global RNG per call (the training engine
    checkpoints that RNG, so a resumed run is identical) and the choices and simulations follow from it; with
    probability 0 nothing is drawn and the inputs come back unchanged."""
    if probability <= 0:
        return dict(radiographs)
    generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
    out: Dict[str, torch.Tensor] = {}
    for key in sorted(radiographs):
        images = radiographs[key]
        chosen = (torch.rand(images.shape[0], generator=generator) < probability).nonzero().flatten()
        augmented = images.clone()
        if chosen.numel():
            index = chosen.to(images.device)
            augmented[index] = simulate_batch(images[index], generator, pixel_mm=pixel_mm).to(images.dtype)
        out[key] = augmented
    return out
