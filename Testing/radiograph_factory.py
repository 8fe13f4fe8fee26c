"""Write real radiograph files (DICOM, PNG/JPEG/TIFF, NRRD/MHA/NIfTI) and a bad-input corpus for tests.

Every good file shows the same synthetic chest, ``chest_phantom()``, with dense structures bright
once displayed: a bright spine band down the middle, dark lung ellipses either side, a brighter
heart on the image right (the patient's left in radiological display), soft tissue around, air
(0) outside the body and a white (1) marker square in the top-left corner. The marker and the
air fix orientation: top-left is 1, bottom corners are 0.

Plain functions, not fixtures, so the CLI tests can use them too.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any, Union

import gdcm
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from x2ct.io.dicom_compat import JPEGLossless, save_part10

try:  # pydicom 3: RLE, JPEG-LS and JPEG 2000 encoders
    from pydicom.pixels import get_encoder
except ImportError:  # pydicom 2.4: RLE Lossless only
    from pydicom.encoders import get_encoder

PathLike = Union[str, "os.PathLike[str]"]

ROWS = 96
"""Default phantom height in pixels (above the reader's 32 px minimum, small enough to be fast)."""
COLS = 80
"""Default phantom width in pixels."""

# SNOMED CT codes of CID 4010, used in ViewCodeSequence.
VIEW_CODES = {"PA": "272479007", "AP": "399348003", "LATERAL": "399067008"}

# No Python encoder exists for these; GDCM transcodes an uncompressed file (python-gdcm).
_GDCM_SYNTAXES = {
    JPEGLosslessSV1: gdcm.TransferSyntax.JPEGLosslessProcess14_1,
    JPEGLossless: gdcm.TransferSyntax.JPEGLosslessProcess14,
    JPEGBaseline8Bit: gdcm.TransferSyntax.JPEGBaselineProcess1,
}


def chest_phantom(rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    """The synthetic chest as displayed: float64 (rows, cols) in [0, 1], dense bright, exact 0 and 1 present."""
    r, c = np.mgrid[0:rows, 0:cols].astype(np.float64)
    y, x = r / max(rows - 1, 1), c / max(cols - 1, 1)  # 0..1 top->bottom, left->right
    image = np.zeros((rows, cols))
    body = ((x - 0.5) / 0.45) ** 2 + ((y - 0.55) / 0.5) ** 2 <= 1.0
    image[body] = 0.45
    for centre in (0.3, 0.7):  # image-left lung is the patient's right lung
        lung = ((x - centre) / 0.15) ** 2 + ((y - 0.42) / 0.28) ** 2 <= 1.0
        image[lung] = 0.12
    heart = ((x - 0.6) / 0.12) ** 2 + ((y - 0.62) / 0.12) ** 2 <= 1.0
    image[heart] = 0.6
    image[body & (np.abs(x - 0.5) <= 0.06)] = 0.9  # spine band
    image[: max(3, rows // 12), : max(3, cols // 12)] = 1.0  # "R" marker
    return image


def landmarks(rows: int = ROWS, cols: int = COLS) -> dict[str, tuple[int, int]]:
    """(row, col) of a pixel inside each phantom structure, for orientation and brightness checks."""
    return {
        "spine": (int(0.5 * (rows - 1)), int(0.5 * (cols - 1))),
        "right_lung": (int(0.42 * (rows - 1)), int(0.3 * (cols - 1))),
        "left_lung": (int(0.3 * (rows - 1)), int(0.7 * (cols - 1))),
        "marker": (1, 1),
        "air": (rows - 1, cols - 1),
    }


def _stored_values(display: np.ndarray, bits_stored: int, inverted: bool) -> np.ndarray:
    """Quantise a [0, 1] display image to unsigned stored values; ``inverted`` stores dense dark."""
    level = 1.0 - display if inverted else display
    dtype = np.uint8 if bits_stored <= 8 else np.uint16
    return np.rint(level * (2**bits_stored - 1)).astype(dtype)


def write_dicom(
    path: PathLike,
    *,
    kind: str = "DX",
    photometric: str = "MONOCHROME2",
    presentation_lut_shape: str | None = None,
    bits_stored: int = 12,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    voi_lut_gamma: float | None = None,
    view_position: str | None = None,
    view_code: str | None = None,
    patient_orientation: tuple[str, str] | None = None,
    pixel_spacing: tuple[float, float] | None = None,
    imager_pixel_spacing: tuple[float, float] | None = None,
    magnification: float | None = None,
    body_part: str | None = "CHEST",
    for_processing: bool = False,
    rgb: bool = False,
    frames: int = 1,
    rows: int = ROWS,
    cols: int = COLS,
    header_size: tuple[int, int] | None = None,
    transfer_syntax: str | None = None,
    **compress_options: Any,
) -> Path:
    """Write one radiograph DICOM of the phantom and return its path.

    Args:
        kind: "DX" (Digital X-Ray, For Presentation unless ``for_processing``), "CR" or "SC".
        photometric: "MONOCHROME1" stores dense structures dark, "MONOCHROME2" bright.
        presentation_lut_shape: "IDENTITY", "INVERSE" or None (absent).
        bits_stored: 8..16; BitsAllocated is 8 for 8-bit data, else 16.
        rescale: (RescaleSlope, RescaleIntercept); modality value = slope * stored + intercept.
        window: (WindowCenter, WindowWidth) in modality units.
        voi_lut_gamma: add a VOILUTSequence mapping modality value m to
            ``65535 * ((m - first) / (2**bits_stored - 1)) ** gamma`` (16-bit entries); needs slope 1.
        view_position, view_code, patient_orientation: ViewPosition, a ViewCodeSequence view name
            ("PA", "AP", "LATERAL") or any raw SNOMED code, and PatientOrientation (row, column).
        pixel_spacing, imager_pixel_spacing: (row, column) in mm; magnification is
            EstimatedRadiographicMagnificationFactor.
        rgb: store a 3-sample RGB secondary capture (8-bit) instead of a gray image.
        frames: NumberOfFrames (each frame holds the phantom).
        header_size: (Rows, Columns) to claim in the header while storing only a few bytes of pixel
            data (the "huge header" bad input). At most 65535 each: Rows/Columns are US.
        transfer_syntax: compress with this UID (pydicom encoders, or GDCM for JPEG Lossless and
            JPEG baseline); ``compress_options`` go to ``Dataset.compress`` (e.g. ``j2k_cr``). The
            calling test is skipped when the installed pydicom has no encoder for it (pydicom 2.4
            encodes only RLE Lossless).
    """
    path = Path(path)
    sop_class = {
        "CR": ComputedRadiographyImageStorage,
        "SC": SecondaryCaptureImageStorage,
        "DX": DigitalXRayImageStorageForProcessing if for_processing else DigitalXRayImageStorageForPresentation,
    }[kind]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Phantom^Chest"
    ds.PatientID = "PHANTOM"
    ds.Modality = {"CR": "CR", "DX": "DX", "SC": "OT"}[kind]
    if kind == "DX":
        ds.PresentationIntentType = "FOR PROCESSING" if for_processing else "FOR PRESENTATION"
    if kind == "SC":
        ds.ConversionType = "WSD"
    if body_part:
        ds.BodyPartExamined = body_part

    if rgb:
        bits_stored = 8
    display = chest_phantom(rows, cols)
    stored = _stored_values(display, bits_stored, inverted=photometric == "MONOCHROME1")
    if rgb:
        stored = np.repeat(stored[..., None], 3, axis=2)
        stored[..., 0] = stored[..., 0] // 2  # a colour cast, so gray conversion is exercised
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else photometric
    if rgb:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = header_size or (rows, cols)
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = b"\0" * 64 if header_size else np.ascontiguousarray(np.stack([stored] * frames)).tobytes()

    if presentation_lut_shape:
        ds.PresentationLUTShape = presentation_lut_shape
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut_gamma is not None:
        slope, intercept = rescale or (1, 0)
        assert slope == 1, "the VOI LUT helper assumes RescaleSlope 1"
        entries = 2**bits_stored
        item = Dataset()
        item.add_new(0x00283002, "US", [entries % 65536, int(intercept), 16])  # LUTDescriptor
        table = np.rint(65535 * (np.arange(entries) / (entries - 1)) ** voi_lut_gamma).astype(int)
        item.add_new(0x00283006, "US", table.tolist())  # LUTData
        ds.VOILUTSequence = Sequence([item])
    if view_position is not None:
        ds.ViewPosition = view_position
    if view_code is not None:
        code = Dataset()
        code.CodeValue = VIEW_CODES.get(view_code, view_code)
        code.CodingSchemeDesignator = "SCT"
        code.CodeMeaning = view_code
        ds.ViewCodeSequence = Sequence([code])
    if patient_orientation is not None:
        ds.PatientOrientation = list(patient_orientation)
    if pixel_spacing is not None:
        ds.PixelSpacing = list(pixel_spacing)
    if imager_pixel_spacing is not None:
        ds.ImagerPixelSpacing = list(imager_pixel_spacing)
    if magnification is not None:
        ds.EstimatedRadiographicMagnificationFactor = magnification

    path.parent.mkdir(parents=True, exist_ok=True)
    if transfer_syntax is None:
        save_part10(ds, path)
    elif UID(transfer_syntax) in _GDCM_SYNTAXES:
        _save_with_gdcm(ds, path, _GDCM_SYNTAXES[UID(transfer_syntax)])
    else:
        _require_encoder(UID(transfer_syntax))
        ds.compress(transfer_syntax, **compress_options)
        save_part10(ds, path)
    return path


def _require_encoder(transfer_syntax: UID) -> None:
    """Skip the calling test when the installed pydicom cannot encode ``transfer_syntax``."""
    try:
        get_encoder(transfer_syntax)
    except NotImplementedError:
        pytest.skip(
            f"needs pydicom 3's encoders to write the test file "
            f"(pydicom {pydicom.__version__} installed, no {transfer_syntax.name} encoder)"
        )


def _save_with_gdcm(ds: Dataset, path: Path, syntax: int) -> None:
    """Save ``ds`` uncompressed, then let GDCM transcode it to ``syntax`` (no Python encoder exists)."""
    with tempfile.TemporaryDirectory() as tmp:
        plain = os.path.join(tmp, "plain.dcm")
        save_part10(ds, plain)
        reader = gdcm.ImageReader()
        reader.SetFileName(plain)
        if not reader.Read():
            raise RuntimeError(f"GDCM could not read {plain}")
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(syntax))
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise RuntimeError(f"GDCM could not transcode to transfer syntax {syntax}")
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(path))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise RuntimeError(f"GDCM could not write {path}")


def write_dx(path: PathLike, **options: Any) -> Path:
    """A DX (Digital X-Ray) radiograph; see ``write_dicom`` for the options."""
    return write_dicom(path, kind="DX", **options)


def write_cr(path: PathLike, **options: Any) -> Path:
    """A CR (Computed Radiography) radiograph; see ``write_dicom`` for the options."""
    return write_dicom(path, kind="CR", **options)


def write_sc(path: PathLike, **options: Any) -> Path:
    """A Secondary Capture radiograph (8-bit by default); see ``write_dicom`` for the options."""
    options.setdefault("bits_stored", 8)
    return write_dicom(path, kind="SC", **options)


def write_picture(path: PathLike, *, bits: int = 8, mode: str = "L", rows: int = ROWS, cols: int = COLS) -> Path:
    """Write the phantom as PNG/JPEG/TIFF (format from the suffix).

    Args:
        bits: 8 or 16 (16-bit only for gray PNG/TIFF); values are phantom x (2**bits - 1).
        mode: "L" (gray), "RGB" or "RGBA" (gray copied to every colour channel, alpha opaque).
    """
    path = Path(path)
    stored = _stored_values(chest_phantom(rows, cols), bits, inverted=False)
    image = Image.fromarray(stored)
    if mode != "L":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def write_sitk_image(
    path: PathLike,
    *,
    spacing_mm: tuple[float, float] = (0.5, 0.4),
    as_3d_slice: bool = False,
    dtype: type = np.uint16,
    rows: int = ROWS,
    cols: int = COLS,
) -> Path:
    """Write the phantom as NRRD/MHA/NIfTI (format from the suffix) with spacing (row, col) in mm.

    ``dtype`` uint8/uint16 stores phantom x type maximum; a float type stores the phantom itself.
    ``as_3d_slice`` writes a 3D image of one slice (size cols x rows x 1).
    """
    display = chest_phantom(rows, cols)
    if np.issubdtype(dtype, np.integer):
        array = np.rint(display * np.iinfo(dtype).max).astype(dtype)
    else:
        array = display.astype(dtype)
    image = sitk.GetImageFromArray(array[None] if as_3d_slice else array)
    image.SetSpacing((spacing_mm[1], spacing_mm[0], 1.0) if as_3d_slice else (spacing_mm[1], spacing_mm[0]))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return Path(path)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png_header_only(path: PathLike, rows: int, cols: int) -> Path:
    """A PNG whose IHDR claims rows x cols 8-bit gray pixels but whose data holds a few bytes."""
    header = struct.pack(">IIBBBBB", cols, rows, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
    data += _png_chunk(b"IDAT", zlib.compress(b"\0" * 16)) + _png_chunk(b"IEND", b"")
    Path(path).write_bytes(data)
    return Path(path)


def bad_input_corpus(folder: PathLike) -> dict[str, Path]:
    """Write every bad input into ``folder``; each must give a one-line InputError (CLI exit 2).

    Keys: truncated_dicom, text_as_dicom, empty_file, ct_volume, multiframe_dicom, tiny_image,
    huge_header_dicom (Rows = Columns = 65535, the US maximum), huge_header_png (100000 x 100000
    IHDR) and unsupported_extension.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    corpus: dict[str, Path] = {}

    full = write_dx(folder / "full.dcm").read_bytes()
    corpus["truncated_dicom"] = folder / "truncated.dcm"
    corpus["truncated_dicom"].write_bytes(full[: len(full) - ROWS * COLS])  # half of the 16-bit pixel data
    (folder / "full.dcm").unlink()

    corpus["text_as_dicom"] = folder / "notes.dcm"
    corpus["text_as_dicom"].write_text("This is a text file, not a DICOM image.\n", encoding="utf-8")

    corpus["empty_file"] = folder / "empty.dcm"
    corpus["empty_file"].write_bytes(b"")

    corpus["ct_volume"] = folder / "ct_volume.nii.gz"
    volume = sitk.GetImageFromArray(np.full((40, 40, 40), -1000, dtype=np.int16))
    volume.SetSpacing((1.0, 1.0, 2.5))
    sitk.WriteImage(volume, str(corpus["ct_volume"]))

    corpus["multiframe_dicom"] = write_dx(folder / "multiframe.dcm", frames=2)
    corpus["tiny_image"] = write_picture(folder / "tiny.png", rows=1, cols=1)
    corpus["huge_header_dicom"] = write_dx(folder / "huge.dcm", header_size=(65535, 65535))
    corpus["huge_header_png"] = write_png_header_only(folder / "huge.png", 100000, 100000)

    corpus["unsupported_extension"] = folder / "radiograph.bmp"
    Image.fromarray(_stored_values(chest_phantom(), 8, inverted=False)).save(corpus["unsupported_extension"])
    return corpus
