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

Every user-caused problem raises :class:`x2ct.errors.InputError` with a one-line message.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from PIL import Image, UnidentifiedImageError
from pydicom import uid as dicom_uid
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
    decoder_exists,
    decoder_installed,
    get_expected_length,
    pixel_array,
)

MAX_SIDE_PX = 12000
"""Largest accepted rows or columns (pixels). Real detectors are at most ~4300 px (43 cm at 0.1 mm)."""

MAX_PIXELS = 100_000_000
"""Largest accepted rows x columns (pixels), checked from the header before any pixel is decoded."""

MIN_SIDE_PX = 32
"""Smallest accepted rows or columns (pixels); anything smaller cannot be a usable radiograph."""

_DICOM_EXTENSIONS = (".dcm", ".dicom", ".dic")
_PILLOW_EXTENSIONS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff"}
_SITK_EXTENSIONS = {".nrrd": "nrrd", ".nhdr": "nrrd", ".mha": "mha", ".mhd": "mha", ".nii": "nifti", ".nii.gz": "nifti"}
_SITK_IMAGE_IO = {"nrrd": "NrrdImageIO", "mha": "MetaImageIO", "nifti": "NiftiImageIO"}
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

_FOR_PROCESSING_SOP_CLASSES = (
    dicom_uid.DigitalXRayImageStorageForProcessing,
    dicom_uid.DigitalMammographyXRayImageStorageForProcessing,
    dicom_uid.DigitalIntraOralXRayImageStorageForProcessing,
)
_CROSS_SECTIONAL_MODALITIES = ("CT", "MR", "PT", "NM", "US")
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
)
"""Keys always present in ``Radiograph.metadata`` (value None when unknown).

``voi`` is "VOILUTSequence", "window", "none-minmax" (no VOI: min..max of the values) or
"none-fullrange" (no VOI: divided by the full range of the 8/16-bit type or of BitsStored).
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
    if fmt == "dicom":
        pixels, spacing, found_view = _read_dicom(path, metadata, notes)
    elif fmt in _PILLOW_EXTENSIONS.values():
        pixels, spacing, found_view = _read_pillow(path, metadata, notes)
    else:
        pixels, spacing, found_view = _read_sitk(path, fmt, metadata, notes)
    if requested_view is not None:
        if found_view is not None and found_view != requested_view:
            notes.append(f"view argument {requested_view} overrides {metadata['view_source']} which says {found_view}")
        found_view = requested_view
        metadata["view_source"] = "argument"
    metadata["size"] = [int(pixels.shape[0]), int(pixels.shape[1])]
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


def _scale_to_unit(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``lo -> 0`` and ``hi -> 1`` linearly (``lo > hi`` is allowed), clip, return float32."""
    if hi == lo:
        return np.zeros(values.shape, dtype=np.float32)
    unit = (np.asarray(values, dtype=np.float64) - lo) / (hi - lo)
    return np.clip(unit, 0.0, 1.0).astype(np.float32)


def _plain_to_unit(arr: np.ndarray, metadata: dict[str, Any], notes: list[str]) -> np.ndarray:
    """Scale a non-DICOM gray array: uint8/uint16 by the type maximum, anything else min..max."""
    if arr.dtype in (np.uint8, np.uint16):
        metadata["voi"] = "none-fullrange"
        metadata["bits_stored"] = arr.dtype.itemsize * 8
        return _scale_to_unit(arr, 0.0, float(np.iinfo(arr.dtype).max))
    values = arr.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        raise InputError(metadata["path"], "image holds no finite pixel values")
    lo, hi = float(values[finite].min()), float(values[finite].max())
    if not finite.all():
        notes.append("non-finite pixel values (NaN/inf) were set to the image minimum")
        values[~finite] = lo
    if hi == lo:
        notes.append("image has a single value everywhere")
    metadata["voi"] = "none-minmax"
    return _scale_to_unit(values, lo, hi)


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
    arr = arr.astype(arr.dtype.newbyteorder("="))  # "I;16B" arrives big-endian
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
    arr = sitk.GetArrayViewFromImage(image).reshape(rows, cols).copy()
    metadata["photometric"] = "L"

    direction = np.asarray(reader.GetDirection(), dtype=float).reshape(dim, dim)[:2, :2]
    if not np.allclose(direction, np.eye(2), atol=1e-6):
        notes.append("header direction is not the identity; pixels are returned in stored order, not reoriented")
    col_spacing, row_spacing = (float(s) for s in reader.GetSpacing()[:2])
    spacing: tuple[float, float] | None = None
    if _valid_spacing(row_spacing) and _valid_spacing(col_spacing):
        spacing = (row_spacing, col_spacing)
        metadata["spacing_source"] = "header"
    else:
        notes.append("header pixel spacing is zero or invalid; spacing unknown")
    return _plain_to_unit(arr, metadata, notes), spacing, None


# --------------------------------------------------------------------------------------------------
# DICOM


def _dcmread(path: Path, header_only: bool) -> Dataset:
    """``pydicom.dcmread(force=False)`` with every parse failure turned into an InputError."""
    try:
        return pydicom.dcmread(path, force=False, stop_before_pixels=header_only)
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
    """Read a single-frame CR/DX/SC DICOM; header checks run before the pixel data is read."""
    header = _dcmread(path, header_only=True)
    rows, cols = header.get("Rows"), header.get("Columns")
    if not rows or not cols:
        raise InputError(path, "DICOM file holds no image (no Rows/Columns)")
    try:
        frames = int(header.get("NumberOfFrames") or 1)
    except (TypeError, ValueError) as exc:
        raise InputError(path, f"invalid NumberOfFrames '{header.get('NumberOfFrames')}'") from exc
    if frames > 1:
        raise InputError(path, f"multi-frame DICOM ({frames} frames); expected a single radiograph")
    _check_size(path, int(rows), int(cols))

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
    if metadata["modality"] in _CROSS_SECTIONAL_MODALITIES:
        notes.append(f"Modality {metadata['modality']} is a cross-sectional image, not a projection radiograph")

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
        luma = stored[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        metadata["voi"] = "none-fullrange"
        pixels = _scale_to_unit(luma, 0.0, float(2 ** int(ds.BitsStored) - 1))
    else:
        raise InputError(path, f"unsupported DICOM PhotometricInterpretation '{photometric}' for a radiograph")

    spacing, metadata["spacing_source"] = _dicom_spacing(ds, notes)
    found_view, metadata["view_source"] = _dicom_view(ds, notes)
    _check_patient_orientation(ds, notes)
    return pixels, spacing, found_view


def _decode_dicom_pixels(path: Path, ds: Dataset) -> np.ndarray:
    """Decode the pixel data; missing decoders, truncation and corrupt streams become InputErrors."""
    if "PixelData" not in ds:
        raise InputError(path, "DICOM file holds no pixel data")
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
    try:
        return pixel_array(ds)
    except Exception as exc:  # each plugin raises its own types; all mean "these bytes did not decode"
        reason = "; ".join(line.strip() for line in str(exc).splitlines()[1:] if line.strip()) or str(exc)
        hint = f"; a missing decoder may be the cause: {package}" if transfer_syntax.is_compressed else ""
        raise InputError(path, f"cannot decode {transfer_syntax.name} pixel data ({reason[:300]}){hint}") from exc


def _dicom_gray_to_unit(stored: np.ndarray, ds: Dataset, metadata: dict[str, Any], notes: list[str]) -> np.ndarray:
    """Modality LUT -> VOI -> presentation inversion -> [0, 1], each exactly once.

    The VOI output range ``(lo, hi)`` (the values mapped to 0 and 1) is known, not measured:

    * VOILUTSequence: the smallest and largest entry of the LUT table itself (robust to LUT
      descriptors that declare 16 bits for 12-bit entries);
    * window: pydicom's ``apply_windowing`` writes ``y_min`` below and ``y_max`` above the window,
      where ``y_min..y_max`` is the stored-value range (0..2**BitsStored-1, or the signed range)
      passed through RescaleSlope/RescaleIntercept, or 0..2**n-1 after a ModalityLUTSequence of n bits;
    * no VOI: the min..max of the modality values.
    """
    values = apply_modality_lut(stored, ds)
    voi_sequence = ds.get("VOILUTSequence")
    if voi_sequence and "LUTDescriptor" in voi_sequence[0] and "LUTData" in voi_sequence[0]:
        if values.dtype.kind == "f":
            values = np.rint(values).astype(np.int64)  # LUT inputs are integers; rescale made them float
        entries, first_mapped = int(voi_sequence[0].LUTDescriptor[0]) or 65536, int(voi_sequence[0].LUTDescriptor[1])
        table = apply_voi(np.arange(first_mapped, first_mapped + entries), ds, 0)
        lo, hi = float(table.min()), float(table.max())
        values = apply_voi(values, ds, 0)
        metadata["voi"] = "VOILUTSequence"
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        values = apply_windowing(values, ds, 0)
        lo, hi = _windowing_output_range(ds)
        metadata["voi"] = "window"
    else:
        lo, hi = float(values.min()), float(values.max())
        if hi == lo:
            notes.append("image has a single value everywhere")
        metadata["voi"] = "none-minmax"

    shape = _text(ds.get("PresentationLUTShape"))
    photometric = metadata["photometric"]
    invert = shape == "INVERSE" or (shape is None and photometric == "MONOCHROME1")
    if (shape == "IDENTITY" and photometric == "MONOCHROME1") or (shape == "INVERSE" and photometric == "MONOCHROME2"):
        notes.append(f"unusual PresentationLUTShape {shape} with {photometric}; followed PresentationLUTShape")
    if invert:
        values = (lo + hi) - np.asarray(values, dtype=np.float64)
    metadata["inverted"] = invert
    return _scale_to_unit(values, lo, hi)


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


def _valid_spacing(value: float) -> bool:
    """True for a finite, positive spacing in mm."""
    return math.isfinite(value) and value > 0


def _spacing_pair(ds: Dataset, keyword: str) -> tuple[float, float] | None:
    """A (row, column) spacing tag in mm if it holds two positive numbers, else None."""
    try:
        value = ds.get(keyword)
        pair = tuple(float(v) for v in value) if value is not None else ()
    except (TypeError, ValueError):
        return None
    if len(pair) == 2 and all(_valid_spacing(v) for v in pair):
        return pair[0], pair[1]
    return None


def _dicom_spacing(ds: Dataset, notes: list[str]) -> tuple[tuple[float, float] | None, str | None]:
    """Spacing (row, column) in mm and its source: PixelSpacing (calibrated at the patient), else ImagerPixelSpacing
    divided by EstimatedRadiographicMagnificationFactor (DICOM PS3.3 C.8.11.7 and C.16.1)."""
    calibrated = _spacing_pair(ds, "PixelSpacing")
    if calibrated:
        return calibrated, "PixelSpacing"
    detector = _spacing_pair(ds, "ImagerPixelSpacing")
    if detector:
        try:
            magnification = float(ds.get("EstimatedRadiographicMagnificationFactor") or 0.0)
        except (TypeError, ValueError):
            magnification = 0.0
        if _valid_spacing(magnification):
            return (
                (detector[0] / magnification, detector[1] / magnification),
                "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor",
            )
        notes.append(
            "spacing is ImagerPixelSpacing in the detector plane, not corrected for magnification (~1.1 for PA)"
        )
        return detector, "ImagerPixelSpacing"
    notes.append("no usable PixelSpacing or ImagerPixelSpacing (absent or zero); spacing unknown")
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
