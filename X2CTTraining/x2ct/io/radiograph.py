"""Read one chest radiograph from DICOM, PNG/JPEG/TIFF or NRRD/MHA/NIfTI into a normalised 2D array.

``read_radiograph`` is the only function the rest of x2ct uses to read a radiograph. Whatever the
file format, it returns a :class:`Radiograph` whose ``pixels`` are float32 in [0, 1] with dense
structures (bone) bright, rows top to bottom exactly as stored (no flipping or rotation).

DICOM pixel pipeline (each step exactly once, PS3.3 C.11):

1. decode with pydicom (compressed syntaxes through its plugins; pydicom 2.4 or 3.x, see ``dicom_compat``);
2. modality LUT (``apply_modality_lut``: ModalityLUTSequence or RescaleSlope/RescaleIntercept);
3. VOI: the first VOILUTSequence item if present, else the first WindowCenter/WindowWidth pair
   (the order ``apply_voi_lut(prefer_lut=True)`` uses), else the min..max of the modality values;
4. inversion ``x = (lo + hi) - x`` over the VOI output range when PresentationLUTShape is INVERSE,
   or when the shape is absent and PhotometricInterpretation is MONOCHROME1;
5. scaling of the VOI output range ``lo..hi`` onto [0, 1].

Non-DICOM files carry no display transform: 8- and 16-bit unsigned integer images are divided by
their type's maximum (255 or 65535), so 0 is black and the type maximum white; every other pixel
type (float, signed or 32-bit integers) is scaled min..max. Such files are assumed to store dense
structures bright already and are never inverted.

Every user-caused problem raises :class:`x2ct.errors.InputError` with a one-line message. What the
libraries print or warn while a file is read (pydicom, GDCM, ITK, Pillow) never reaches the terminal:
it becomes ``Radiograph.warnings`` lines, or ends the InputError's message (:mod:`x2ct.io.library_output`).

A pixel spacing outside MIN_SPACING_MM..MAX_SPACING_MM (or a magnification factor outside
MIN_MAGNIFICATION..MAX_MAGNIFICATION) is not a radiograph's: it is ignored with a warning, as if absent.

Size and memory (docs/large_inputs.md): an image over MAX_SIDE_PX per side or MAX_PIXELS in all is
refused from its header (PNG IHDR, TIFF tags, NRRD/MHA/NIfTI header, DICOM Rows/Columns and, for JPEG
2000, the codestream's own SIZ marker) before any pixel is decoded; deflated DICOM data sets are
inflated with a cap (``dicom_compat.dcmread``). The decoded image is then converted in bands of rows
(the display transform in float64, one band at a time) and, when a side exceeds WORKING_MAX_SIDE_PX,
reduced by an integer factor f as it is converted: each pixel of ``Radiograph.pixels`` is the mean of
an f x f block (``block_mean``), the spacing is multiplied by f, and ``metadata`` records
``stored_size`` and ``reduction``.
"""

from __future__ import annotations

import math
import struct
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import SimpleITK as sitk
from PIL import Image, UnidentifiedImageError
from pydicom import uid as dicom_uid
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from .. import views
from ..errors import InputError, PathLike
from .dicom_compat import (
    HTJ2K,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEGLossless,
    apply_modality_lut,
    apply_voi,
    apply_windowing,
    dcmread,
    decoder_exists,
    decoder_installed,
    get_expected_length,
    pixel_array,
)
from .kind import not_radiograph_reason
from .library_output import library_output

MAX_SIDE_PX = 12000
"""Largest accepted rows or columns (pixels). Real detectors are at most ~4300 px (43 cm at 0.1 mm);
long stitched images stay within MAX_PIXELS."""

MAX_PIXELS = 36_000_000
"""Largest accepted rows x columns (pixels), checked from the header before any pixel is decoded.
About twice the largest chest detector (43 x 43 cm at 0.1 mm: 4300 x 4300 = 18.5 Mpx). It bounds
the decode, which needs the whole image at once: the slowest decoder, JPEG 2000, takes about 13 bytes
per pixel and 0.2 s per megapixel on one core, so about 0.5 GB and 7-9 s here (docs/large_inputs.md)."""

WORKING_MAX_SIDE_PX = 2048
"""Longest side (pixels) of ``Radiograph.pixels``. A larger image is reduced while it is converted, by
the smallest integer factor that brings its longer side to at most this (``reduction_factor``): a
4300 px detector image becomes 1434 px (0.3 mm pixels at 0.1 mm), still 11x the generators' 128 px
input and 5x the report's 256 px tiles. It bounds what every later step (preprocessing, heat maps
on the radiograph, outputs) holds and writes per image to 2048 x 2048 float32 pixels."""

_BAND_PIXELS = 2**21  # pixels per band of rows converted at once (its float64 copies are ~16 MiB each)
_ITEM_TAG = b"\xfe\xff\x00\xe0"  # (FFFE,E000) Item, little endian: encapsulated pixel data items
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"  # SOC then SIZ marker: how every JPEG 2000 codestream begins
_CODESTREAM_SEARCH_BYTES = 65536  # how far into the first fragment a frame header (SOF, SIZ) is looked for

MIN_SIDE_PX = 32
"""Smallest accepted rows or columns (pixels); anything smaller cannot be a usable radiograph."""

MIN_SPACING_MM = 0.01
"""Smallest plausible pixel spacing of a radiograph (mm): finer than any X-ray detector (mammography
~0.05 mm, intra-oral ~0.02 mm). A smaller spacing in a header is treated as unknown, with a warning."""

MAX_SPACING_MM = 5.0
"""Largest plausible pixel spacing of a radiograph (mm): a 43 cm chest field in fewer than 86 pixels.
A larger spacing in a header is treated as unknown, with a warning."""

MIN_MAGNIFICATION = 1.0
"""Smallest plausible EstimatedRadiographicMagnificationFactor: a projection never shrinks the patient."""

MAX_MAGNIFICATION = 3.0
"""Largest plausible EstimatedRadiographicMagnificationFactor (magnification views reach about 2)."""

_DICOM_EXTENSIONS = (".dcm", ".dicom", ".dic")
_PILLOW_EXTENSIONS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff"}
_SITK_EXTENSIONS = {".nrrd": "nrrd", ".nhdr": "nrrd", ".mha": "mha", ".mhd": "mha", ".nii": "nifti", ".nii.gz": "nifti"}
_SITK_IMAGE_IO = {"nrrd": "NrrdImageIO", "mha": "MetaImageIO", "nifti": "NiftiImageIO"}
# What prints to fd 2 while each format is read (x2ct.io.library_output); NRRD/MHA/NIfTI: ITK.
_NATIVE_LABELS = {"dicom": "DICOM decoder", "png": "Pillow", "jpeg": "Pillow", "tiff": "Pillow"}
# Pillow's format names -> ours; the keys are the decoders tried. Pillow's JPEG decoder reports
# multi-picture camera JPEGs as "MPO".
_PILLOW_FORMATS = {"PNG": "png", "JPEG": "jpeg", "TIFF": "tiff"}
# Pillow modes read as gray without conversion (16-bit modes differ only in byte order).
_PILLOW_GRAY_MODES = ("L", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")

# Which PyPI package provides a decoder for a compressed transfer syntax (named in the error message).
_OPENJPEG = "pylibjpeg and pylibjpeg-openjpeg"
_DECODER_PACKAGES = {
    dicom_uid.JPEGBaseline8Bit: "Pillow or python-gdcm",
    dicom_uid.JPEGExtended12Bit: "pylibjpeg-libjpeg (GPL-3.0, not installed by x2ct)",
    JPEGLossless: "python-gdcm",
    dicom_uid.JPEGLosslessSV1: "python-gdcm",
    dicom_uid.JPEGLSLossless: "pyjpegls",
    dicom_uid.JPEGLSNearLossless: "pyjpegls",
    dicom_uid.JPEG2000Lossless: _OPENJPEG,
    dicom_uid.JPEG2000: _OPENJPEG,
    HTJ2KLossless: _OPENJPEG,
    HTJ2KLosslessRPCL: _OPENJPEG,
    HTJ2K: _OPENJPEG,
    dicom_uid.RLELossless: "pylibjpeg-rle",
}
_J2K_SYNTAXES = (dicom_uid.JPEG2000Lossless, dicom_uid.JPEG2000, HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K)
_JPEG_SYNTAXES = (
    dicom_uid.JPEGBaseline8Bit,
    dicom_uid.JPEGExtended12Bit,
    JPEGLossless,
    dicom_uid.JPEGLosslessSV1,
    dicom_uid.JPEGLSLossless,
    dicom_uid.JPEGLSNearLossless,
)
# Frame header (SOF) markers: T.81 SOF0-3, 5-7, 9-11, 13-15 (not DHT C4, JPG C8, DAC CC) and JPEG-LS SOF55 (F7).
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}

_SPACING_RANGE = f"the plausible {MIN_SPACING_MM:g}-{MAX_SPACING_MM:g} mm of a radiograph"
_UNDEFINED_LENGTH = 0xFFFFFFFF
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # (FFFE,E0DD) with length 0, little endian
_FOR_PROCESSING_SOP_CLASSES = (
    dicom_uid.DigitalXRayImageStorageForProcessing,
    dicom_uid.DigitalMammographyXRayImageStorageForProcessing,
    dicom_uid.DigitalIntraOralXRayImageStorageForProcessing,
)
# PatientOrientation (row\column direction) of a chest radiograph in radiological display:
# frontal L\F (column 0 is the patient's right), lateral P\F (column 0 is anterior), see x2ct.views.
_EXPECTED_ORIENTATIONS = (("L", "F"), ("P", "F"))

METADATA_KEYS = (
    "path",
    "format",
    "size",
    "photometric",
    "inverted",
    "body_part",
    "transfer_syntax",
    "view_source",
    "spacing_source",
    "voi",
    "modality",
    "sop_class_uid",
    "sop_instance_uid",
    "study_instance_uid",
    "series_instance_uid",
    "presentation_intent",
    "bits_stored",
    "not_radiograph",
    "stored_size",
    "reduction",
)
"""Keys always present in ``Radiograph.metadata`` (value None when unknown).

``not_radiograph`` is None, or for a DICOM whose Modality or SOP class cannot be a chest radiograph
(:func:`x2ct.io.kind.not_radiograph_reason`) the one-line reason; the image is still read, and the
caller decides (``x2ct predict`` refuses it unless ``--force``).

``voi`` is "VOILUTSequence", "window", "none-minmax" (no VOI: min..max of the values) or
"none-fullrange" (no VOI: divided by the full range of the 8/16-bit type or of BitsStored).

``stored_size`` is [rows, columns] as stored in the file and ``reduction`` the integer factor f by
which it was reduced (1: not reduced); ``size`` is the shape of ``pixels``, ceil(stored_size / f).
"""


@dataclass
class Radiograph:
    """One chest radiograph, ready for the model.

    Attributes:
        pixels: float32 array (rows, columns) in [0, 1]; dense/bone bright; rows top to bottom as stored.
        view: "PA", "AP", "LATERAL" or None when unknown (see ``metadata["view_source"]``).
        spacing_mm: pixel spacing (row, column) in millimetres, or None when unknown.
        metadata: JSON-serialisable facts about the source; always holds every key of ``METADATA_KEYS``.
        warnings: human-readable notes about anything doubtful (one line each).
    """

    pixels: np.ndarray
    view: str | None
    spacing_mm: tuple[float, float] | None
    metadata: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def read_radiograph(path: PathLike, view: str | None = None) -> Radiograph:
    """Read one chest radiograph.

    Args:
        path: a DICOM (CR, DX, secondary capture; any extension or none), PNG, JPEG, TIFF, NRRD,
            MHA/MHD or NIfTI file holding a single 2D image.
        view: the view if known ("PA", "AP", "LATERAL", "LAT", "LL", "RL", any case). It wins over
            anything in the file; a conflicting DICOM tag only adds a warning.

    Returns:
        The :class:`Radiograph` (pixels float32 in [0, 1], bone bright; spacing in mm).

    Raises:
        InputError: the file is missing, empty, unreadable, of an unsupported type, not a single 2D
            image, too large or too small, needs a decoder that is not installed, or ``view`` is unknown.
    """
    path = Path(path)
    requested_view = views.normalize_view(view)
    if view is not None and str(view).strip() and requested_view is None:
        raise InputError(path, f"unknown view '{view}'; expected PA, AP or LATERAL")
    _check_file(path)
    fmt = _detect_format(path)
    metadata: dict[str, Any] = dict.fromkeys(METADATA_KEYS)
    metadata.update(path=str(path), format=fmt, inverted=False)
    notes: list[str] = []
    with library_output(_NATIVE_LABELS.get(fmt, "ITK")) as library_lines:
        if fmt == "dicom":
            pixels, spacing, found_view = _read_dicom(path, metadata, notes)
        elif fmt in _PILLOW_EXTENSIONS.values():
            pixels, spacing, found_view = _read_pillow(path, metadata, notes)
        else:
            pixels, spacing, found_view = _read_sitk(path, fmt, metadata, notes)
    notes.extend(library_lines)
    if requested_view is not None:
        if found_view is not None and found_view != requested_view:
            notes.append(f"view argument {requested_view} overrides {metadata['view_source']} which says {found_view}")
        found_view = requested_view
        metadata["view_source"] = "argument"
    metadata["size"] = [int(pixels.shape[0]), int(pixels.shape[1])]
    factor = metadata["reduction"]
    if factor > 1:
        stored_rows, stored_cols = metadata["stored_size"]
        notes.append(
            f"{stored_rows} x {stored_cols} px image reduced {factor}x (mean of {factor} x {factor} px blocks) to "
            f"{pixels.shape[0]} x {pixels.shape[1]} px; sizes, positions and maps refer to the reduced image"
        )
        spacing = (spacing[0] * factor, spacing[1] * factor) if spacing else None
    return Radiograph(pixels=pixels, view=found_view, spacing_mm=spacing, metadata=metadata, warnings=notes)


# --------------------------------------------------------------------------------------------------
# Files, formats and size limits


def _check_file(path: Path) -> None:
    """Refuse a missing path, a folder or an empty file."""
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a folder, not a radiograph file")
    if path.stat().st_size == 0:
        raise InputError(path, "empty file")


def _has_dicom_preamble(path: Path) -> bool:
    """True when bytes 128..131 are b"DICM" (a DICOM Part 10 file)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError as exc:
        raise InputError(path, f"cannot read file ({exc.strerror})") from exc


def _detect_format(path: Path) -> str:
    """Format from the file name; files with an unknown or no extension are accepted if they are DICOM."""
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return "nifti"
    suffix = path.suffix.lower()
    if suffix in _DICOM_EXTENSIONS:
        return "dicom"
    if suffix in _PILLOW_EXTENSIONS:
        return _PILLOW_EXTENSIONS[suffix]
    if suffix in _SITK_EXTENSIONS:
        return _SITK_EXTENSIONS[suffix]
    if _has_dicom_preamble(path):  # PACS exports are often named by UID (".123") or have no extension
        return "dicom"
    raise InputError(
        path,
        f"unsupported file type '{suffix or 'no extension'}'; expected DICOM, PNG, JPEG, TIFF, NRRD, MHA or NIfTI",
    )


def _check_size(path: Path, rows: int, cols: int) -> None:
    """Refuse images outside MIN_SIDE_PX..MAX_SIDE_PX per side or above MAX_PIXELS, before decoding."""
    if rows > MAX_SIDE_PX or cols > MAX_SIDE_PX or rows * cols > MAX_PIXELS:
        raise InputError(
            path,
            f"image is {rows} x {cols} pixels, too large to be a radiograph "
            f"(limits: {MAX_SIDE_PX} px per side, {MAX_PIXELS // 1_000_000} megapixels)",
        )
    if rows < MIN_SIDE_PX or cols < MIN_SIDE_PX:
        raise InputError(
            path, f"image is {rows} x {cols} pixels, too small to be a radiograph (minimum {MIN_SIDE_PX} px per side)"
        )


def reduction_factor(rows: int, cols: int) -> int:
    """The integer factor by which an image of ``rows`` x ``cols`` pixels is reduced: the smallest that brings
    its longer side to at most WORKING_MAX_SIDE_PX (1: not reduced)."""
    return max(1, -(-max(rows, cols) // WORKING_MAX_SIDE_PX))


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Area mean of ``factor`` x ``factor`` pixel blocks of a 2D array, as float32 of shape
    (ceil(rows / factor), ceil(cols / factor)); the last block row and column average the pixels that
    remain. Output pixel (i, j) covers input rows i*f..i*f+f-1 and columns j*f..j*f+f-1, so its centre is
    input position (i*f + (f-1)/2, j*f + (f-1)/2). ``factor`` 1 returns ``image`` as float32."""
    if factor == 1:
        return image.astype(np.float32, copy=False)
    rows, cols = image.shape
    row_starts, col_starts = np.arange(0, rows, factor), np.arange(0, cols, factor)
    sums = np.add.reduceat(np.add.reduceat(image, row_starts, axis=0, dtype=np.float64), col_starts, axis=1)
    counts = np.outer(np.diff(np.append(row_starts, rows)), np.diff(np.append(col_starts, cols)))
    return (sums / counts).astype(np.float32)


def _bands(stored: np.ndarray, factor: int = 1) -> Iterator[np.ndarray]:
    """Consecutive bands of rows of ``stored`` (views), about _BAND_PIXELS each, a multiple of ``factor`` rows."""
    rows_per_band = factor * max(1, _BAND_PIXELS // (stored.shape[1] * factor))
    for top in range(0, stored.shape[0], rows_per_band):
        yield stored[top : top + rows_per_band]


def _unit_in_bands(stored: np.ndarray, to_unit: Callable[[np.ndarray], np.ndarray], factor: int) -> np.ndarray:
    """``block_mean(to_unit(stored), factor)`` computed band by band: ``to_unit`` maps rows of stored values to
    float32 [0, 1], and only one band is ever converted at a time."""
    rows, cols = stored.shape[:2]
    out = np.empty((-(-rows // factor), -(-cols // factor)), dtype=np.float32)
    top = 0
    for band in _bands(stored, factor):
        reduced = block_mean(to_unit(band), factor)
        out[top : top + reduced.shape[0]] = reduced
        top += reduced.shape[0]
    return out


def _value_range(stored: np.ndarray, transform: Callable[[np.ndarray], np.ndarray]) -> tuple[float, float]:
    """(min, max) of ``transform`` over all rows of ``stored``, computed band by band."""
    ranges = [(float(np.min(values)), float(np.max(values))) for values in map(transform, _bands(stored))]
    return min(lo for lo, _ in ranges), max(hi for _, hi in ranges)


def _reduction(metadata: dict[str, Any], shape: tuple[int, ...]) -> int:
    """Record the stored (rows, columns) and the reduction factor in ``metadata``; return the factor."""
    metadata["stored_size"] = [int(shape[0]), int(shape[1])]
    metadata["reduction"] = reduction_factor(int(shape[0]), int(shape[1]))
    return metadata["reduction"]


def _scale_to_unit(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``lo -> 0`` and ``hi -> 1`` linearly (``lo > hi`` is allowed), clip, return float32."""
    if hi == lo:
        return np.zeros(values.shape, dtype=np.float32)
    unit = (np.asarray(values, dtype=np.float64) - lo) / (hi - lo)
    return np.clip(unit, 0.0, 1.0).astype(np.float32)


def _finite_range(arr: np.ndarray) -> tuple[float, float, bool]:
    """(min, max) of the finite values of ``arr`` (inf, -inf when there are none) and whether any is not finite."""
    lo, hi, all_finite = math.inf, -math.inf, True
    for band in _bands(arr):
        values = band.astype(np.float64, copy=False)
        finite = np.isfinite(values)
        all_finite = all_finite and bool(finite.all())
        if finite.any():
            lo, hi = min(lo, float(values[finite].min())), max(hi, float(values[finite].max()))
    return lo, hi, not all_finite


def _plain_to_unit(arr: np.ndarray, metadata: dict[str, Any], notes: list[str]) -> np.ndarray:
    """Scale a non-DICOM gray array (reduced, see ``_reduction``): uint8/uint16 by the type maximum, anything else
    min..max of its finite values (non-finite values become the minimum)."""
    factor = _reduction(metadata, arr.shape)
    if arr.dtype in (np.uint8, np.uint16):
        metadata["voi"] = "none-fullrange"
        metadata["bits_stored"] = arr.dtype.itemsize * 8
        top = float(np.iinfo(arr.dtype).max)
        return _unit_in_bands(arr, lambda band: _scale_to_unit(band, 0.0, top), factor)
    lo, hi, has_non_finite = _finite_range(arr)
    if lo > hi:
        raise InputError(metadata["path"], "image holds no finite pixel values")
    if has_non_finite:
        notes.append("non-finite pixel values (NaN/inf) were set to the image minimum")
    if hi == lo:
        notes.append("image has a single value everywhere")
    metadata["voi"] = "none-minmax"

    def to_unit(band: np.ndarray) -> np.ndarray:
        values = band.astype(np.float64)
        values[~np.isfinite(values)] = lo
        return _scale_to_unit(values, lo, hi)

    return _unit_in_bands(arr, to_unit, factor)


# --------------------------------------------------------------------------------------------------
# PNG, JPEG, TIFF (Pillow)


def _read_pillow(
    path: Path, metadata: dict[str, Any], notes: list[str]
) -> tuple[np.ndarray, tuple[float, float] | None, str | None]:
    """Read a PNG/JPEG/TIFF; the size is checked from the header before pixels are loaded."""
    try:
        # Our own limits apply below; Pillow's bomb warning (> ~89 Mpx) would only be noise, and
        # Pillow's bomb error (> ~179 Mpx, raised on open) is reported as "too large".
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path, formats=list(_PILLOW_FORMATS))
    except Image.DecompressionBombError as exc:
        raise InputError(path, f"too large to be a radiograph ({exc})") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(path, f"not a readable {metadata['format'].upper()} image") from exc
    with image:
        metadata["format"] = _PILLOW_FORMATS.get(image.format, "jpeg")
        frames = int(getattr(image, "n_frames", 1))
        if frames > 1:
            raise InputError(path, f"holds {frames} images (multi-page or animated); expected one radiograph")
        cols, rows = image.size
        _check_size(path, rows, cols)
        try:
            image.load()
            mode = image.mode
            if mode in _PILLOW_GRAY_MODES:
                arr = np.asarray(image)
                metadata["photometric"] = "L"
            else:
                notes.append(f"{mode} image converted to grayscale (ITU-R 601-2 luma); colour and alpha are ignored")
                arr = np.asarray(image.convert("L"))
                metadata["photometric"] = mode
        except (OSError, ValueError, SyntaxError) as exc:
            raise InputError(path, f"corrupt or truncated {metadata['format'].upper()} image ({exc})") from exc
        has_dpi = bool(image.info.get("dpi"))
    arr = arr.astype(arr.dtype.newbyteorder("="), copy=False)  # "I;16B" arrives big-endian
    if has_dpi:
        notes.append("file DPI is not a physical pixel spacing; spacing unknown")
    else:
        notes.append(f"{metadata['format'].upper()} files carry no pixel spacing; spacing unknown")
    return _plain_to_unit(arr, metadata, notes), None, None


# --------------------------------------------------------------------------------------------------
# NRRD, MHA, NIfTI (SimpleITK)


def _read_sitk(
    path: Path, fmt: str, metadata: dict[str, Any], notes: list[str]
) -> tuple[np.ndarray, tuple[float, float] | None, str | None]:
    """Read a 2D NRRD/MHA/NIfTI image (a 3D image with one slice counts); spacing from the header."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO(_SITK_IMAGE_IO[fmt])
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(path, f"not a readable {fmt.upper()} image") from exc
    size = [int(s) for s in reader.GetSize()]
    dim = len(size)
    if not (dim == 2 or (dim == 3 and size[2] == 1)):
        shape = " x ".join(str(s) for s in size)
        raise InputError(path, f"holds a {dim}D volume ({shape} voxels), not a radiograph")
    if reader.GetNumberOfComponents() != 1:
        raise InputError(path, f"has {reader.GetNumberOfComponents()} components per pixel; expected one gray channel")
    cols, rows = size[0], size[1]
    _check_size(path, rows, cols)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(path, f"corrupt or truncated {fmt.upper()} image") from exc
    arr = sitk.GetArrayViewFromImage(image).reshape(rows, cols)  # a view: ``image`` lives until converted
    metadata["photometric"] = "L"

    direction = np.asarray(reader.GetDirection(), dtype=float).reshape(dim, dim)[:2, :2]
    if not np.allclose(direction, np.eye(2), atol=1e-6):
        notes.append("header direction is not the identity; pixels are returned in stored order, not reoriented")
    col_spacing, row_spacing = (float(s) for s in reader.GetSpacing()[:2])
    spacing: tuple[float, float] | None = None
    if _plausible_spacing(row_spacing) and _plausible_spacing(col_spacing):
        spacing = (row_spacing, col_spacing)
        metadata["spacing_source"] = "header"
    else:
        notes.append(
            f"header pixel spacing {row_spacing:g} x {col_spacing:g} mm is outside {_SPACING_RANGE}; spacing unknown"
        )
    return _plain_to_unit(arr, metadata, notes), spacing, None


# --------------------------------------------------------------------------------------------------
# DICOM


def _dcmread(path: Path, header_only: bool) -> Dataset:
    """``pydicom.dcmread(force=False)`` with every parse failure turned into an InputError; deflated data sets
    are inflated with a cap (``dicom_compat.dcmread``)."""
    try:
        return dcmread(path, stop_before_pixels=header_only)
    except InputError:
        raise
    except InvalidDicomError as exc:
        raise InputError(path, "not a DICOM file (no DICM preamble)") from exc
    except Exception as exc:  # pydicom raises many types (struct.error, EOFError, KeyError, ...) on bad files
        raise InputError(path, f"corrupt DICOM file ({type(exc).__name__})") from exc


def _text(value: Any) -> str | None:
    """A DICOM string value as a stripped str, or None when absent or empty."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _read_dicom(
    path: Path, metadata: dict[str, Any], notes: list[str]
) -> tuple[np.ndarray, tuple[float, float] | None, str | None]:
    """Read a single-frame CR/DX/SC DICOM; header checks run before the pixel data is read.

    A Modality or SOP class that cannot be a chest radiograph is recorded in ``metadata["not_radiograph"]``
    and starts the message of any header problem (e.g. "DICOM Segmentation Storage object, ...: multi-frame").
    """
    header = _dcmread(path, header_only=True)
    metadata["not_radiograph"] = not_radiograph_reason(_text(header.get("Modality")), _text(header.get("SOPClassUID")))
    try:
        _check_size(path, *_single_image_size(path, header))
    except InputError as err:
        if metadata["not_radiograph"]:
            raise InputError(path, f"{metadata['not_radiograph']}: {err.problem}") from err
        raise

    ds = _dcmread(path, header_only=False)
    transfer_syntax = ds.file_meta.get("TransferSyntaxUID")
    bits_stored = ds.get("BitsStored")
    metadata.update(
        photometric=_text(ds.get("PhotometricInterpretation")),
        body_part=_text(ds.get("BodyPartExamined")),
        transfer_syntax=transfer_syntax.name if transfer_syntax else None,
        modality=_text(ds.get("Modality")),
        sop_class_uid=_text(ds.get("SOPClassUID")),
        sop_instance_uid=_text(ds.get("SOPInstanceUID")),
        study_instance_uid=_text(ds.get("StudyInstanceUID")),
        series_instance_uid=_text(ds.get("SeriesInstanceUID")),
        presentation_intent=_text(ds.get("PresentationIntentType")),
        bits_stored=int(bits_stored) if bits_stored else None,
    )
    if metadata["presentation_intent"] == "FOR PROCESSING" or metadata["sop_class_uid"] in _FOR_PROCESSING_SOP_CLASSES:
        notes.append("'For Processing' image: raw detector data, not display-ready; contrast will differ")

    stored = _decode_dicom_pixels(path, ds)
    photometric = metadata["photometric"]
    if photometric in ("MONOCHROME1", "MONOCHROME2") and stored.ndim == 2:
        try:
            pixels = _dicom_gray_to_unit(stored, ds, metadata, notes)
        except InputError:
            raise
        except (ValueError, TypeError, AttributeError, IndexError, KeyError, NotImplementedError) as exc:
            # pydicom's LUT functions reject malformed LUTs and windows (e.g. width < 1, 9-bit LUT entries)
            raise InputError(path, f"invalid modality LUT or VOI (window/LUT) in the header ({exc})") from exc
    elif photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT") and stored.ndim == 3:
        # pixel_array returns YBR data converted to RGB; colour has no modality/VOI transforms.
        notes.append(f"{photometric} image converted to grayscale (ITU-R 601-2 luma)")
        metadata["voi"] = "none-fullrange"
        top = float(2 ** int(ds.BitsStored) - 1)
        pixels = _unit_in_bands(stored, lambda band: _luma_to_unit(band, top), _reduction(metadata, stored.shape))
    else:
        raise InputError(path, f"unsupported DICOM PhotometricInterpretation '{photometric}' for a radiograph")

    spacing, metadata["spacing_source"] = _dicom_spacing(ds, notes)
    found_view, metadata["view_source"] = _dicom_view(ds, notes)
    _check_patient_orientation(ds, notes)
    return pixels, spacing, found_view


def _single_image_size(path: Path, header: Dataset) -> tuple[int, int]:
    """(Rows, Columns) of a header that describes one image; InputError for no image, a cut-off file or frames."""
    rows, cols = header.get("Rows"), header.get("Columns")
    if not rows or not cols:
        raise InputError(path, _truncation(path) or "DICOM file holds no image (no Rows/Columns)")
    try:
        frames = float(header.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        frames = math.nan
    if not (math.isfinite(frames) and frames >= 1 and frames == int(frames)):
        raise InputError(path, f"invalid NumberOfFrames '{header.get('NumberOfFrames')}'")
    if frames > 1:
        raise InputError(path, f"multi-frame DICOM ({int(frames)} frames); expected a single radiograph")
    return int(rows), int(cols)


def _truncation(path: Path) -> str | None:
    """"truncated DICOM: <where the file ends>" when the file is cut short, else None.

    pydicom reads a cut-off file without complaint (the last value is simply short, or a compressed
    PixelData and everything with it is dropped), so the raw header is inspected: the last element
    before the pixel data runs past the end of the file; too few bytes follow it for an element header;
    or, for a compressed transfer syntax, the file does not end with the sequence delimiter that closes
    the encapsulated PixelData (PS3.5 A.4).
    """
    size = path.stat().st_size
    try:
        header = dcmread(path, stop_before_pixels=True)
    except Exception:  # pydicom raises many types on bad files; the caller's message stands
        return None
    syntax = header.file_meta.get("TransferSyntaxUID")
    if syntax is not None and syntax.is_deflated:  # offsets below would be in the inflated stream
        return None
    tags = sorted(header.keys())
    if not tags:
        return f"truncated DICOM: the file ends after its file meta information ({size} bytes), before any data element"
    last = header.get_item(tags[-1])
    tell, length = getattr(last, "value_tell", None), getattr(last, "length", None)
    if tell is None or length is None or length == _UNDEFINED_LENGTH:
        return None
    name = f"({last.tag.group:04X},{last.tag.element:04X}) {keyword_for_tag(last.tag) or 'element'}"
    if tell + length > size:
        return f"truncated DICOM: the file ends inside {name} ({size - tell} of its {length} bytes), in the header"
    rest = size - (tell + length)
    element_header = 8 if syntax is not None and syntax.is_implicit_VR else 12
    if 0 < rest < element_header:
        return f"truncated DICOM: the file ends inside the header of the element after {name}"
    if rest and syntax is not None and syntax.is_compressed:
        with open(path, "rb") as fh:
            fh.seek(size - len(_SEQUENCE_DELIMITER))
            if fh.read() != _SEQUENCE_DELIMITER:
                return "truncated DICOM: the file ends inside the compressed PixelData (no closing sequence delimiter)"
    return None


def _luma_to_unit(rgb: np.ndarray, top: float) -> np.ndarray:
    """ITU-R 601-2 luma of (..., 3+) colour values, scaled from 0..``top`` to [0, 1]."""
    return _scale_to_unit(rgb[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114]), 0.0, top)


def _decode_dicom_pixels(path: Path, ds: Dataset) -> np.ndarray:
    """Decode the pixel data (then drop the encoded bytes from ``ds``); missing decoders, truncation, corrupt
    streams and a JPEG 2000 or JPEG stream whose own size disagrees with the header or the limits become
    InputErrors."""
    if "PixelData" not in ds:
        raise InputError(path, _truncation(path) or "DICOM file holds no pixel data")
    transfer_syntax = ds.file_meta.get("TransferSyntaxUID")
    if transfer_syntax is None:
        raise InputError(path, "DICOM file meta has no TransferSyntaxUID")
    if not decoder_exists(transfer_syntax):
        raise InputError(path, f"unsupported transfer syntax {transfer_syntax.name} ({transfer_syntax})")
    package = _DECODER_PACKAGES.get(transfer_syntax, "python-gdcm")
    if not decoder_installed(transfer_syntax):
        raise InputError(path, f"no decoder installed for {transfer_syntax.name}; install {package}")
    if not transfer_syntax.is_compressed:
        expected = get_expected_length(ds, unit="bytes")
        actual = len(ds.PixelData)
        if actual < expected:
            raise InputError(path, f"truncated DICOM: pixel data is {actual} bytes, the header needs {expected}")
    if transfer_syntax in _J2K_SYNTAXES or transfer_syntax in _JPEG_SYNTAXES:
        _check_codestream_size(path, ds, transfer_syntax)
    try:
        stored = pixel_array(ds)
        del ds.PixelData  # the encoded bytes are not needed any more
        return stored
    except Exception as exc:  # each plugin raises its own types; all mean "these bytes did not decode"
        reason = "; ".join(line.strip() for line in str(exc).splitlines()[1:] if line.strip()) or str(exc)
        hint = f"; a missing decoder may be the cause: {package}" if transfer_syntax.is_compressed else ""
        raise InputError(path, f"cannot decode {transfer_syntax.name} pixel data ({reason[:300]}){hint}") from exc


def _first_fragment(pixel_data: bytes) -> bytes:
    """The first fragment of encapsulated pixel data (PS3.5 A.4): the item after the Basic Offset Table item;
    empty when the items are not there."""
    header = struct.Struct("<4sI")
    at = 0
    for _ in range(2):
        if len(pixel_data) < at + header.size:
            return b""
        tag, length = header.unpack_from(pixel_data, at)
        if tag != _ITEM_TAG:
            return b""
        start, at = at + header.size, at + header.size + length
    return pixel_data[start:at]


def _j2k_size(fragment: bytes) -> tuple[int, int] | None:
    """(rows, columns) from a JPEG 2000 codestream's SIZ marker segment (ISO/IEC 15444-1 A.5.1: Xsiz, Ysiz,
    XOsiz, YOsiz after Lsiz and Rsiz), None when there is none. A JP2 file wrapper puts boxes before it."""
    at = fragment.find(_J2K_SOC_SIZ, 0, _CODESTREAM_SEARCH_BYTES)
    if at < 0 or len(fragment) < at + 24:
        return None
    x_end, y_end, x_start, y_start = struct.unpack_from(">4I", fragment, at + 8)
    return y_end - y_start, x_end - x_start


def _jpeg_size(fragment: bytes) -> tuple[int, int] | None:
    """(rows, columns) from the first frame header (SOF0-15, ITU-T T.81 B.2.2; SOF55, JPEG-LS) of a JPEG stream:
    Y and X after Lf and P. None when the stream has none before its first scan. Y = 0 (rows given later by a
    DNL marker) is returned as 0."""
    if fragment[:2] != b"\xff\xd8":
        return None
    at = 2
    while at + 4 <= min(len(fragment), _CODESTREAM_SEARCH_BYTES):
        if fragment[at] != 0xFF:
            return None
        marker = fragment[at + 1]
        if marker == 0xFF or 0xD0 <= marker <= 0xD8 or marker == 0x01:  # fill byte; markers without a length
            at += 1 if marker == 0xFF else 2
            continue
        if marker in _JPEG_SOF_MARKERS:
            return struct.unpack_from(">HH", fragment, at + 5) if len(fragment) >= at + 9 else None
        if marker in (0xDA, 0xD9):  # start of scan or end of image before any frame header
            return None
        at += 2 + int.from_bytes(fragment[at + 2 : at + 4], "big")
    return None


def _check_codestream_size(path: Path, ds: Dataset, transfer_syntax: dicom_uid.UID) -> None:
    """Refuse JPEG 2000 or JPEG(-LS) pixel data whose own frame header declares an image over the limits or of
    another size than Rows x Columns, before the decoder allocates that image (a decoder trusts the stream)."""
    fragment = _first_fragment(ds.PixelData)
    size = _j2k_size(fragment) if transfer_syntax in _J2K_SYNTAXES else _jpeg_size(fragment)
    if size is None:
        raise InputError(path, f"{transfer_syntax.name} pixel data has no frame header (cannot tell its size)")
    rows, cols = size[0] or int(ds.Rows), size[1]
    _check_size(path, rows, cols)
    if (rows, cols) != (int(ds.Rows), int(ds.Columns)):
        raise InputError(
            path,
            f"{transfer_syntax.name} stream is {rows} x {cols} pixels, but Rows x Columns is {ds.Rows} x {ds.Columns}",
        )


def _dicom_gray_to_unit(stored: np.ndarray, ds: Dataset, metadata: dict[str, Any], notes: list[str]) -> np.ndarray:
    """Modality LUT -> VOI -> presentation inversion -> [0, 1], each exactly once.

    The VOI output range ``(lo, hi)`` (the values mapped to 0 and 1) is known, not measured:

    * VOILUTSequence: the smallest and largest entry of the LUT table itself (robust to LUT
      descriptors that declare 16 bits for 12-bit entries);
    * window: pydicom's ``apply_windowing`` writes ``y_min`` below and ``y_max`` above the window,
      where ``y_min..y_max`` is the stored-value range (0..2**BitsStored-1, or the signed range)
      passed through RescaleSlope/RescaleIntercept, or 0..2**n-1 after a ModalityLUTSequence of n bits;
    * no VOI: the min..max of the modality values.

    The chain runs band by band on the stored values, which are reduced as they are converted (``_reduction``).
    """
    voi: Callable[[np.ndarray], np.ndarray] | None = None
    voi_sequence = ds.get("VOILUTSequence")
    if voi_sequence and "LUTDescriptor" in voi_sequence[0] and "LUTData" in voi_sequence[0]:
        entries, first_mapped = int(voi_sequence[0].LUTDescriptor[0]) or 65536, int(voi_sequence[0].LUTDescriptor[1])
        table = apply_voi(np.arange(first_mapped, first_mapped + entries), ds, 0)
        lo, hi = float(table.min()), float(table.max())
        voi = partial(_apply_voi_lut, ds=ds)
        metadata["voi"] = "VOILUTSequence"
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        voi = partial(apply_windowing, ds=ds, index=0)
        lo, hi = _windowing_output_range(ds)
        metadata["voi"] = "window"
    else:
        lo, hi = _value_range(stored, partial(apply_modality_lut, ds=ds))
        if hi == lo:
            notes.append("image has a single value everywhere")
        metadata["voi"] = "none-minmax"

    shape = _text(ds.get("PresentationLUTShape"))
    photometric = metadata["photometric"]
    invert = shape == "INVERSE" or (shape is None and photometric == "MONOCHROME1")
    if (shape == "IDENTITY" and photometric == "MONOCHROME1") or (shape == "INVERSE" and photometric == "MONOCHROME2"):
        notes.append(f"unusual PresentationLUTShape {shape} with {photometric}; followed PresentationLUTShape")
    metadata["inverted"] = invert

    def to_unit(band: np.ndarray) -> np.ndarray:
        values = apply_modality_lut(band, ds)
        if voi is not None:
            values = voi(values)
        if invert:
            values = (lo + hi) - np.asarray(values, dtype=np.float64)
        return _scale_to_unit(values, lo, hi)

    return _unit_in_bands(stored, to_unit, _reduction(metadata, stored.shape))


def _apply_voi_lut(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """The first VOILUTSequence item applied to modality values (rounded first: LUT inputs are integers)."""
    if values.dtype.kind == "f":
        values = np.rint(values).astype(np.int64)  # rescale made them float
    return apply_voi(values, ds, 0)


def _windowing_output_range(ds: Dataset) -> tuple[float, float]:
    """``(y_min, y_max)`` that pydicom's ``apply_windowing`` maps the window ends to (PS3.3 C.11.2.1.2).

    ``y_min`` is written below the window and ``y_max`` above it; with a negative RescaleSlope
    ``y_min > y_max``, which ``_scale_to_unit`` handles.
    """
    modality_lut = ds.get("ModalityLUTSequence")
    if modality_lut:
        y_min, y_max = 0.0, float(2 ** int(modality_lut[0].LUTDescriptor[2]) - 1)
    elif int(ds.get("PixelRepresentation", 0)) == 0:
        y_min, y_max = 0.0, float(2 ** int(ds.BitsStored) - 1)
    else:
        y_min, y_max = float(-(2 ** (int(ds.BitsStored) - 1))), float(2 ** (int(ds.BitsStored) - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        y_min = y_min * float(slope) + float(intercept)
        y_max = y_max * float(slope) + float(intercept)
    return y_min, y_max


def _plausible_spacing(value: float) -> bool:
    """True for a pixel spacing (mm) within MIN_SPACING_MM..MAX_SPACING_MM (NaN is not)."""
    return MIN_SPACING_MM <= value <= MAX_SPACING_MM


def _spacing_pair(ds: Dataset, keyword: str, notes: list[str]) -> tuple[float, float] | None:
    """A (row, column) spacing tag in mm if it holds two plausible numbers, else None.

    Zero (the conventional "unknown") and malformed values give None silently; two non-zero numbers
    outside MIN_SPACING_MM..MAX_SPACING_MM give None with a warning.
    """
    try:
        value = ds.get(keyword)
        pair = tuple(float(v) for v in value) if value is not None else ()
    except (TypeError, ValueError):
        return None
    if len(pair) != 2 or not all(pair):
        return None
    if all(_plausible_spacing(v) for v in pair):
        return pair[0], pair[1]
    notes.append(f"{keyword} {pair[0]:g}\\{pair[1]:g} mm is outside {_SPACING_RANGE}; ignored")
    return None


def _dicom_spacing(ds: Dataset, notes: list[str]) -> tuple[tuple[float, float] | None, str | None]:
    """Spacing (row, column) in mm and its source: PixelSpacing (calibrated at the patient), else ImagerPixelSpacing
    divided by EstimatedRadiographicMagnificationFactor (DICOM PS3.3 C.8.11.7 and C.16.1)."""
    calibrated = _spacing_pair(ds, "PixelSpacing", notes)
    if calibrated:
        return calibrated, "PixelSpacing"
    detector = _spacing_pair(ds, "ImagerPixelSpacing", notes)
    if detector:
        try:
            magnification = float(ds.get("EstimatedRadiographicMagnificationFactor") or 0.0)
        except (TypeError, ValueError):
            magnification = 0.0
        if MIN_MAGNIFICATION <= magnification <= MAX_MAGNIFICATION:
            return (
                (detector[0] / magnification, detector[1] / magnification),
                "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor",
            )
        if magnification:
            notes.append(
                f"EstimatedRadiographicMagnificationFactor {magnification:g} is outside "
                f"{MIN_MAGNIFICATION:g}-{MAX_MAGNIFICATION:g}; ignored"
            )
        notes.append(
            "spacing is ImagerPixelSpacing in the detector plane, not corrected for magnification (~1.1 for PA)"
        )
        return detector, "ImagerPixelSpacing"
    notes.append("no usable PixelSpacing or ImagerPixelSpacing (absent, zero or implausible); spacing unknown")
    return None, None


def _dicom_view(ds: Dataset, notes: list[str]) -> tuple[str | None, str | None]:
    """View and its source tag: the first present of ViewPosition, ViewCodeSequence, PatientOrientation.

    The first tag that is present decides; a value that is not PA, AP or lateral (oblique,
    decubitus) gives None with a warning rather than falling through to a weaker tag.
    """
    position = _text(ds.get("ViewPosition"))
    if position:
        found = views.normalize_view(position)
        if found is None:
            notes.append(f"ViewPosition '{position}' is not PA, AP or lateral; view unknown")
        return found, "ViewPosition" if found else None
    codes = ds.get("ViewCodeSequence")
    if codes:
        code = _text(codes[0].get("CodeValue"))
        found = views.view_from_code(code)
        if found is None:
            notes.append(f"ViewCodeSequence code '{code}' is not PA, AP or lateral; view unknown")
        return found, "ViewCodeSequence" if found else None
    orientation = ds.get("PatientOrientation")
    if orientation is not None and len(orientation) == 2:
        found = views.view_from_patient_orientation(str(orientation[0]), str(orientation[1]))
        if found == views.PA:
            notes.append("view inferred from PatientOrientation: frontal, assumed PA (AP cannot be told apart)")
        return found, "PatientOrientation" if found else None
    return None, None


def _check_patient_orientation(ds: Dataset, notes: list[str]) -> None:
    """Warn when PatientOrientation suggests a flipped or rotated image (expected L\\F or P\\F)."""
    orientation = ds.get("PatientOrientation")
    if orientation is None or len(orientation) != 2:
        return
    pair = (str(orientation[0]).strip().upper(), str(orientation[1]).strip().upper())
    if pair not in _EXPECTED_ORIENTATIONS:
        notes.append(
            f"PatientOrientation {pair[0]}\\{pair[1]} is unusual (expected L\\F or P\\F): "
            "the image may be flipped or rotated"
        )
