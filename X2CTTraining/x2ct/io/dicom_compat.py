"""The one place where x2ct's DICOM code differs between pydicom 2.4 and pydicom 3.x.

x2ct runs inside 3D Slicer, whose own pydicom must never be replaced: Slicer 5.8 and 5.10 bundle
pydicom 2.4.4, Slicer 5.12 bundles pydicom 3.0. The 2.4 support below exists for those bundled
copies; a pip install of x2ct may get either. The rest of x2ct imports the names below instead of
pydicom's pixel API, and gets the same results with both versions.

Where each difference is handled (pydicom 3.x | pydicom 2.4):

* modality LUT, VOI LUT, windowing, expected pixel data length: ``apply_modality_lut``,
  ``apply_voi``, ``apply_windowing`` from ``pydicom.pixels`` and ``get_expected_length`` from
  ``pydicom.pixels.utils`` | the same functions (same results) from ``pydicom.pixel_data_handlers.util``.
* is there a decoder for a transfer syntax, and is it installed (``decoder_exists``,
  ``decoder_installed``): ``pydicom.pixels.get_decoder(ts)`` (NotImplementedError) and its
  ``is_available`` | the handlers in ``pydicom.config.pixel_data_handlers``: ``supports_transfer_syntax(ts)``
  and ``is_available()``, plus the installed plugins of the pylibjpeg handler.
* decoding (``pixel_array``): ``pydicom.pixels.pixel_array(ds)``, which returns YBR_FULL and
  YBR_FULL_422 as RGB and decodes 12-bit JPEG Extended only with pylibjpeg-libjpeg | ``ds.pixel_array``,
  YBR_FULL/YBR_FULL_422 converted to RGB here, 12-bit JPEG Extended through the pylibjpeg handler alone.
* filling the Image Pixel module from an array (``set_pixel_data``): ``Dataset.set_pixel_data`` |
  the same elements, values and VR set here.
* writing a DICOM Part 10 file (``save_part10``): ``save_as(path, enforce_file_format=True)`` |
  ``save_as(path, write_like_original=False)`` after filling the Media Storage SOP UIDs as 3.x does.
* (0008,001C) Synthetic Data: keyword ``SyntheticData`` | keyword unknown (``ds.SyntheticData = ...``
  only sets a Python attribute): both use the tag ``SYNTHETIC_DATA``.
* UIDs: ``pydicom.uid.JPEGLossless`` is Process 14 (...4.57), HTJ2K constants exist |
  ``pydicom.uid.JPEGLossless`` is the SV1 UID (...4.70), no HTJ2K constants and no HTJ2K decoder:
  use ``JPEGLossless`` and the HTJ2K UIDs defined here.

Colour JPEGs stored as YBR may differ by a rounding step between the versions, because pydicom 3's
JPEG plugins convert YBR to RGB themselves while pydicom 2.4's return YBR that is converted here.

Deflated data sets (``dcmread``): both versions' ``dcmread`` inflate a Deflated Explicit VR Little Endian
data set whole, in memory, before parsing even one element (also with ``stop_before_pixels``), so a
file of a few kilobytes can claim gigabytes. ``dcmread`` here reads such a file with pydicom's own
element parser (``pydicom.filereader.read_dataset``, the same in 2.4 and 3.x) from a file object
that inflates on demand with a cap: first the part before the Pixel Data (at most
``DEFLATE_HEADER_MAX_BYTES``), then, when pixels are wanted, at most that part plus the pixel data
its header declares (Rows x Columns x SamplesPerPixel x BitsAllocated / 8 x NumberOfFrames) plus
``DEFLATE_SLACK_BYTES``. A stream that inflates to more is refused (InputError) without being kept.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.tag import Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, JPEGExtended12Bit

from ..errors import InputError, PathLike

try:  # pydicom 3.x
    from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing, get_decoder
    from pydicom.pixels import pixel_array as _pixel_array_v3
    from pydicom.pixels.utils import get_expected_length

    PYDICOM_3 = True
except ImportError:  # pydicom 2.4
    from pydicom.pixel_data_handlers.util import (
        apply_modality_lut,
        apply_voi,
        apply_windowing,
        convert_color_space,
        get_expected_length,
    )

    PYDICOM_3 = False

__all__ = [
    "PYDICOM_3",
    "JPEGLossless",
    "HTJ2KLossless",
    "HTJ2KLosslessRPCL",
    "HTJ2K",
    "SYNTHETIC_DATA",
    "apply_modality_lut",
    "apply_voi",
    "apply_windowing",
    "get_expected_length",
    "decoder_exists",
    "decoder_installed",
    "pixel_array",
    "set_pixel_data",
    "save_part10",
    "dcmread",
    "DEFLATE_HEADER_MAX_BYTES",
    "DEFLATE_SLACK_BYTES",
]

JPEGLossless = UID("1.2.840.10008.1.2.4.57")
"""JPEG Lossless, Non-Hierarchical (Process 14); pydicom 2.4's ``uid.JPEGLossless`` is the SV1 UID."""
HTJ2KLossless = UID("1.2.840.10008.1.2.4.201")
"""High-Throughput JPEG 2000 (Lossless Only); not in pydicom 2.4."""
HTJ2KLosslessRPCL = UID("1.2.840.10008.1.2.4.202")
"""High-Throughput JPEG 2000 with RPCL Options (Lossless Only); not in pydicom 2.4."""
HTJ2K = UID("1.2.840.10008.1.2.4.203")
"""High-Throughput JPEG 2000; not in pydicom 2.4."""

SYNTHETIC_DATA = Tag(0x0008, 0x001C)
"""(0008,001C) Synthetic Data (CS); set and read it by this tag, its keyword is not in pydicom 2.4."""

DEFLATE_HEADER_MAX_BYTES = 64 * 2**20
"""Most bytes the elements before the Pixel Data of a deflated data set may inflate to (headers are kilobytes;
this leaves room for large private blocks and icon images)."""

DEFLATE_SLACK_BYTES = 2**20
"""Inflated bytes allowed beyond the header and the pixel data it declares (elements after the Pixel Data,
such as padding or digital signatures)."""

_INFLATE_CHUNK = 2**20  # bytes read from the file, and most bytes inflated, per step
_PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00009, 0x7FE00008)  # (Float/Double Float) Pixel Data: where headers end

_YBR_AS_RGB = ("YBR_FULL", "YBR_FULL_422")
_GRAY = ("MONOCHROME1", "MONOCHROME2")


def _handlers(transfer_syntax: UID) -> list[Any]:
    """pydicom 2.4: the configured pixel data handlers that can decode ``transfer_syntax``."""
    return [h for h in pydicom.config.pixel_data_handlers if h.supports_transfer_syntax(transfer_syntax)]


def _handler_ready(handler: Any, transfer_syntax: UID) -> bool:
    """pydicom 2.4: the handler's packages are installed (for pylibjpeg, also the syntax's plugin)."""
    plugins = getattr(handler, "_DECODERS", None)  # pylibjpeg's installed plugins, by transfer syntax
    return bool(handler.is_available()) and (plugins is None or transfer_syntax in plugins)


def decoder_exists(transfer_syntax: UID) -> bool:
    """True when the installed pydicom can decode ``transfer_syntax`` at all, given the right packages."""
    if PYDICOM_3:
        try:
            get_decoder(transfer_syntax)
        except NotImplementedError:
            return False
        return True
    return bool(_handlers(transfer_syntax))


def decoder_installed(transfer_syntax: UID) -> bool:
    """True when a package that decodes ``transfer_syntax`` is installed (``decoder_exists`` must hold)."""
    if PYDICOM_3:
        return bool(get_decoder(transfer_syntax).is_available)
    return any(_handler_ready(h, transfer_syntax) for h in _handlers(transfer_syntax))


def pixel_array(ds: Dataset) -> np.ndarray:
    """The decoded pixel data of ``ds``; 3-sample YBR_FULL and YBR_FULL_422 data come back as RGB."""
    if PYDICOM_3:
        return _pixel_array_v3(ds)
    photometric = str(ds.get("PhotometricInterpretation", ""))
    twelve_bit_jpeg = ds.file_meta.get("TransferSyntaxUID") == JPEGExtended12Bit and ds.get("BitsStored") != 8
    # pydicom 3 decodes 12-bit JPEG Extended only with pylibjpeg-libjpeg (never GDCM or Pillow): so here.
    ds.convert_pixel_data("pylibjpeg" if twelve_bit_jpeg else "")
    arr = ds.pixel_array
    if photometric in _YBR_AS_RGB and int(ds.get("SamplesPerPixel", 1)) == 3:
        arr = convert_color_space(arr, "YBR_FULL", "RGB")  # 2.4's handlers already upsampled YBR_FULL_422
    return arr


def set_pixel_data(ds: Dataset, arr: np.ndarray, photometric: str, bits_stored: int) -> None:
    """Put one gray frame ``arr`` (rows, columns; int8/16 or uint8/16) into ``ds`` with its Image Pixel module.

    pydicom 3's ``Dataset.set_pixel_data`` (keeping SOPInstanceUID); on pydicom 2.4 the same
    elements are set by hand: Rows, Columns, SamplesPerPixel 1, PhotometricInterpretation,
    BitsAllocated, BitsStored, HighBit, PixelRepresentation and PixelData (OB or OW), with
    NumberOfFrames and PlanarConfiguration removed.

    Raises:
        ValueError: ``arr`` is not a 2D 8/16-bit integer array, ``photometric`` is not
            MONOCHROME1/2, or a value does not fit in ``bits_stored`` bits.
    """
    if PYDICOM_3:
        ds.set_pixel_data(arr, photometric, bits_stored, generate_instance_uid=False)
        return
    if arr.ndim != 2 or arr.dtype.kind not in "iu" or arr.dtype.itemsize not in (1, 2) or photometric not in _GRAY:
        raise ValueError(f"need one {'/'.join(_GRAY)} frame of 8/16-bit integers, not {arr.dtype} {arr.shape}")
    signed = arr.dtype.kind == "i"
    low, high = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1) if signed else (0, 2**bits_stored - 1)
    if not 0 < bits_stored <= arr.dtype.itemsize * 8 or arr.min() < low or arr.max() > high:
        raise ValueError(f"values {arr.min()}..{arr.max()} do not fit in {bits_stored} stored bits")
    for keyword in ("NumberOfFrames", "PlanarConfiguration"):
        if keyword in ds:
            del ds[keyword]
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(signed)
    data = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    ds.PixelData = data + b"\0" * (len(data) % 2)
    ds["PixelData"].VR = "OB" if ds.BitsAllocated <= 8 else "OW"
    if not hasattr(ds, "file_meta"):
        ds.file_meta = FileMetaDataset()
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if not syntax or syntax.is_compressed:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian


def save_part10(ds: Dataset, path: str | Path) -> None:
    """Write ``ds`` as a DICOM Part 10 file (preamble and valid File Meta Information).

    The Media Storage SOP Class/Instance UIDs follow SOPClassUID/SOPInstanceUID, and the data set
    is encoded as its TransferSyntaxUID says, with both pydicom versions.
    """
    if PYDICOM_3:
        ds.save_as(path, enforce_file_format=True)
        return
    meta = ds.file_meta
    for meta_keyword, keyword in (
        ("MediaStorageSOPClassUID", "SOPClassUID"),
        ("MediaStorageSOPInstanceUID", "SOPInstanceUID"),
    ):
        value = ds.get(keyword)
        if meta.get(meta_keyword) is None or (value and value != meta.get(meta_keyword)):
            setattr(meta, meta_keyword, value)
    ds.save_as(path, write_like_original=False)


class _InflateLimit(Exception):
    """The deflated stream inflated past the cap of an ``_InflatingFile``."""


class _InflatingFile:
    """A read-only, seekable binary file over the raw deflate stream that starts at ``fh``'s position,
    inflated only as far as it is read, never past ``limit`` bytes (``_InflateLimit``). The file ends
    where the stream ends, or where ``fh`` does (then pydicom sees a short file)."""

    def __init__(self, fh: BinaryIO, limit: int, name: str) -> None:
        self.name = name
        self._fh, self._limit = fh, limit
        self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
        self._data = bytearray()
        self._pending = b""
        self._pos = 0

    def _fill(self, size: Optional[int]) -> None:
        """Inflate until ``size`` bytes are there (all when None) or the stream ends."""
        while (size is None or len(self._data) < size) and not self._zlib.eof:
            if not self._pending:
                self._pending = self._fh.read(_INFLATE_CHUNK)
            out = self._zlib.decompress(self._pending, min(_INFLATE_CHUNK, self._limit + 1 - len(self._data)))
            self._pending = self._zlib.unconsumed_tail
            if not out and not self._pending:
                return  # the file ends inside the stream
            self._data += out
            if len(self._data) > self._limit:
                raise _InflateLimit

    def read(self, size: int = -1) -> bytes:
        self._fill(None if size is None or size < 0 else self._pos + size)
        end = len(self._data) if size is None or size < 0 else self._pos + size
        with memoryview(self._data) as view:
            chunk = bytes(view[self._pos : end])  # one copy, not two
        self._pos += len(chunk)
        return chunk

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_END:
            self._fill(None)
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: len(self._data)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


def _declared_pixel_bytes(header: Dataset) -> int:
    """Bytes of native pixel data ``header`` declares (0 when it declares no image)."""
    try:
        return int(get_expected_length(header, unit="bytes"))
    except (AttributeError, KeyError, TypeError, ValueError):
        return 0


def _read_deflated(
    path: PathLike, fh: BinaryIO, start: int, limit: int, stop_when: Optional[Callable[..., bool]]
) -> tuple[Dataset, int]:
    """The data set deflated from ``start`` of ``fh`` (up to ``stop_when``) and the inflated bytes it spans;
    InputError when it inflates past ``limit`` bytes."""
    fh.seek(start)
    inflated = _InflatingFile(fh, limit, os.fspath(path))
    try:
        dataset = read_dataset(inflated, False, True, stop_when=stop_when)
    except _InflateLimit:
        raise InputError(path, _bomb_message(limit, stop_when is not None)) from None
    except zlib.error as exc:
        raise InputError(path, f"corrupt deflated DICOM data set ({exc})") from None
    return dataset, inflated.tell()


def _bomb_message(limit: int, header: bool) -> str:
    """The one-line problem of a deflated data set that inflated past ``limit`` bytes (in its header part or not)."""
    what = "the elements before its Pixel Data inflate" if header else "it inflates"
    also = "" if header else ", more than its header declares"
    return f"deflated DICOM data set: {what} to more than {limit:,} bytes{also} (decompression bomb?)"


def dcmread(path: PathLike, stop_before_pixels: bool = False) -> Dataset:
    """``pydicom.dcmread(path, force=False, stop_before_pixels=...)``, but a Deflated Explicit VR Little Endian
    data set is inflated with a cap (module doc), so that a decompression bomb is refused (InputError) instead of
    filling memory. Other parse failures raise what pydicom raises."""
    with open(path, "rb") as fh:
        preamble = read_preamble(fh, False)
        file_meta = _read_file_meta_info(fh)
        if file_meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            fh.seek(0)
            return pydicom.dcmread(fh, force=False, stop_before_pixels=stop_before_pixels)
        start = fh.tell()
        header, header_bytes = _read_deflated(
            path, fh, start, DEFLATE_HEADER_MAX_BYTES, lambda tag, vr, length: tag in _PIXEL_DATA_TAGS
        )
        dataset = header
        if not stop_before_pixels:
            limit = header_bytes + _declared_pixel_bytes(header) + DEFLATE_SLACK_BYTES
            dataset, _ = _read_deflated(path, fh, start, limit, None)
    ds = FileDataset(os.fspath(path), dataset, preamble, file_meta, False, True)
    ds.set_original_encoding(False, True, dataset._character_set)
    return ds
