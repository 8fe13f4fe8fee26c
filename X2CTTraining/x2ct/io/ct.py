"""Reading CT volumes in HU: DICOM series (GDCM), NIfTI, NRRD and MHA/MHD.

Every reader returns a 3D scalar :class:`SimpleITK.Image` whose intensities are Hounsfield units
(DICOM/NIfTI rescale already applied; integer files keep their integer type, 64-bit floats become
float32) and whose physical frame is ITK's LPS (+x patient left, +y posterior, +z superior; mm).
Spacing, origin and direction come from the file; nothing is resampled or reoriented here.

Problems a user can cause (missing file, no DICOM series, corrupt data, a radiograph where a CT is
expected, too few slices, colour data, absurd size) raise :class:`~x2ct.errors.InputError` with one
line naming the file. Header information is checked before any pixels are read.

Non-finite voxels (NaN, +-inf; only floating-point files can hold them): when more than
:data:`MAX_NON_FINITE_FRACTION` of the voxels are non-finite the file is refused (InputError: it is not
a usable CT); otherwise they are set to :data:`x2ct.intensity.AIR_HU` (-1024 HU, air; e.g. the padding
of a resampled volume) with a :class:`NonFiniteVoxelsWarning` that counts them.
"""

from __future__ import annotations

import gzip
import math
import os
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, PathLike
from ..intensity import AIR_HU
from .library_output import library_output

MIN_SLICES = 16
"""Fewest voxels a CT may have along its shortest axis."""

MAX_VOXELS_PER_SIDE = 2048
"""Largest accepted voxel count along any axis."""

MAX_VOXELS = 1.5e9
"""Largest accepted total voxel count."""

_NRRD_HEADER_MAX_BYTES = 1 << 20  # how much of a NRRD file is searched for the end of its header

MAX_NON_FINITE_FRACTION = 0.5
"""Largest fraction of NaN or infinite voxels a CT may hold (they are read as air); more is refused."""

PROJECTION_MODALITIES = frozenset({"CR", "DX", "MG", "XA", "RF", "IO", "PX", "RG", "DF"})
"""DICOM modalities of projection radiographs (never a CT volume)."""

_TAG_SERIES_UID = "0020|000e"
_TAG_SERIES_DESCRIPTION = "0008|103e"
_TAG_MODALITY = "0008|0060"
_TAG_ORIENTATION = "0020|0037"
_TAG_POSITION = "0020|0032"


class SeriesChoiceWarning(UserWarning):
    """A folder held several DICOM series; the largest was read. The message lists all of them."""


class NonFiniteVoxelsWarning(UserWarning):
    """Some voxels were NaN or infinite and were set to air (-1024 HU). The message counts them."""


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series found in a folder: its SeriesInstanceUID, sorted files and description."""

    uid: str
    files: Sequence[str]
    description: str

    def summary(self) -> str:
        """One-line description: ``<uid> (<n> files, '<description>')``."""
        return f"{self.uid} ({len(self.files)} files, '{self.description}')"


def read_ct(path: PathLike) -> sitk.Image:
    """Read a CT volume in HU (LPS physical frame, mm) from a DICOM folder/slice, NIfTI, NRRD or MHA/MHD.

    A folder is searched for DICOM series (its subfolders too when it holds none itself); when there
    are several, the one with the most files is read and a :class:`SeriesChoiceWarning` lists all.
    A single DICOM file stands for its whole series in its folder. What GDCM and ITK print or warn
    while scanning and reading is kept off the terminal (:mod:`x2ct.io.library_output`) and dropped,
    or ends the InputError's message when the read fails.
    """
    with library_output("ITK/GDCM"):
        return _read_ct(Path(os.fspath(path)))


def _read_ct(p: Path) -> sitk.Image:
    """:func:`read_ct` without the capture of library output."""
    if not p.exists():
        raise InputError(p, "no such file or folder")
    if p.is_dir():
        series = find_dicom_series(p)
        chosen = max(series, key=lambda s: len(s.files))
        if len(series) > 1:
            listing = "; ".join(s.summary() for s in series)
            warnings.warn(
                f"{p}: {len(series)} DICOM series found, reading the largest {chosen.uid}. All: {listing}",
                SeriesChoiceWarning,
                stacklevel=3,
            )
        return _read_dicom_files(p, chosen.files)
    if sitk.ImageFileReader.GetImageIOFromFileName(str(p)) == "GDCMImageIO":
        return _read_dicom_files(p, _series_of_file(p))
    return _read_single_file(p)


def find_dicom_series(folder: PathLike) -> List[DicomSeries]:
    """All DICOM series directly in ``folder`` or, if there are none, in its subfolders.

    Raises InputError when the folder is empty or holds no DICOM series.
    """
    folder = Path(os.fspath(folder))
    if not any(folder.iterdir()):
        raise InputError(folder, "is an empty folder")
    found = _series_in(folder)
    if not found:
        for sub, _, _ in sorted(os.walk(folder))[1:]:
            found.extend(_series_in(Path(sub)))
    if not found:
        raise InputError(folder, "holds no DICOM series")
    return found


def _series_in(folder: Path) -> List[DicomSeries]:
    found = []
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)):
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
        if files:
            found.append(DicomSeries(uid, tuple(files), _header(files[0]).get(_TAG_SERIES_DESCRIPTION, "").strip()))
    return found


def _header(file: str) -> Dict[str, str]:
    """The metadata of one DICOM file (tag 'gggg|eeee' -> value); empty if it cannot be read."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return {}
    return {key: reader.GetMetaData(key) for key in reader.GetMetaDataKeys()}


def _series_of_file(p: Path) -> List[str]:
    """The files of the series ``p`` belongs to (just ``p`` if the series cannot be listed)."""
    uid = _header(str(p)).get(_TAG_SERIES_UID, "").strip().rstrip("\x00")
    if uid:
        files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(p.parent), uid))
        if any(os.path.samefile(f, p) for f in files):
            return files
    return [str(p)]


def _read_dicom_files(p: Path, files: Sequence[str]) -> sitk.Image:
    """Read one DICOM series (or one multi-frame file) after checking its first header."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0])
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(p, f"unreadable or corrupt DICOM file {Path(files[0]).name}: {_itk_reason(exc)}") from None
    modality = reader.GetMetaData(_TAG_MODALITY).strip() if reader.HasMetaDataKey(_TAG_MODALITY) else ""
    if modality.upper() in PROJECTION_MODALITIES:
        raise InputError(p, f"holds a 2D image (a {modality} radiograph), not a CT volume")
    size = list(reader.GetSize()) + [1] * (3 - reader.GetDimension())
    size[2] *= len(files)
    _check_header(p, size, reader.GetNumberOfComponents())
    if len(files) == 1:
        return _execute(p, reader)
    series_reader = sitk.ImageSeriesReader()
    series_reader.SetFileNames(list(files))
    series_reader.MetaDataDictionaryArrayUpdateOn()
    image = _execute(p, series_reader)
    _check_slice_spacing(p, series_reader, len(files))
    return image


def _check_slice_spacing(p: Path, reader: sitk.ImageSeriesReader, count: int) -> None:
    """Refuse a series with missing or unevenly spaced slices (ITK would assume the first gap everywhere).

    GDCM silently leaves unreadable files out of a series, so a corrupt slice shows up here as a gap.
    """
    try:
        orientation = [float(v) for v in reader.GetMetaData(0, _TAG_ORIENTATION).split("\\")]
        positions = [[float(v) for v in reader.GetMetaData(n, _TAG_POSITION).split("\\")] for n in range(count)]
    except (RuntimeError, ValueError):
        return  # no plane geometry in the headers (e.g. secondary capture); nothing to compare
    normal = np.cross(orientation[:3], orientation[3:6])
    steps = np.diff(np.asarray(positions) @ normal)
    typical = float(np.median(np.abs(steps)))
    uneven = np.flatnonzero(np.abs(np.abs(steps) - typical) > max(0.01 * typical, 1e-3))
    if typical <= 0 or len(uneven):
        n = int(uneven[0]) if len(uneven) else 0
        raise InputError(
            p,
            f"has missing, unreadable or unevenly spaced slices (gap of {abs(steps[n]):.2f} mm after slice {n + 1} "
            f"of {count}; typical {typical:.2f} mm)",
        )


def _read_single_file(p: Path) -> sitk.Image:
    """Read a NIfTI/NRRD/MHA/MHD (or any single-file volume SimpleITK knows) after checking its header."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(
            p, f"cannot be read as a CT volume (expected a DICOM series, NIfTI, NRRD or MHA): {_itk_reason(exc)}"
        ) from None
    if reader.GetDimension() > 3:
        raise InputError(p, f"holds a {reader.GetDimension()}D image, not a single CT volume")
    size = list(reader.GetSize()) + [1] * (3 - reader.GetDimension())
    _check_header(p, size, reader.GetNumberOfComponents())
    if not (_nifti_data_complete(p, reader) and _nrrd_data_complete(p, reader)):
        raise InputError(p, "unreadable or corrupt image data: the file is truncated")
    return _execute(p, reader)


def _nifti_data_complete(p: Path, reader: sitk.ImageFileReader) -> bool:
    """Whether a single-file NIfTI holds all its voxel bytes (ITK would silently zero-fill the rest).

    Other formats return True (their ITK readers fail on short data themselves).
    Uncompressed: compares the file size. Gzipped: the trailer's uncompressed length, or, when that
    does not match (multi-member streams), a streaming decompression up to the expected length.
    """
    if not p.name.lower().endswith((".nii", ".nii.gz")):
        return True
    try:
        ndim = int(reader.GetMetaData("dim[0]"))
        voxels = math.prod(int(reader.GetMetaData(f"dim[{n}]")) for n in range(1, ndim + 1))
        expected = int(float(reader.GetMetaData("vox_offset"))) + voxels * int(reader.GetMetaData("bitpix")) // 8
    except (RuntimeError, ValueError):
        return True  # not the NIfTI header layout this check knows; leave it to ITK
    if not p.name.lower().endswith(".gz"):
        return p.stat().st_size >= expected
    return _gzip_holds(p, 0, expected)


def _gzip_holds(p: Path, offset: int, expected: int) -> bool:
    """Whether the gzip data from byte ``offset`` of ``p`` to the end of the file inflates to at least ``expected``
    bytes: the trailer's uncompressed length (ISIZE, modulo 2**32) when it matches, else a streaming
    decompression (4 MiB at a time, never kept) up to the expected length."""
    with open(p, "rb") as fh:
        fh.seek(-4, os.SEEK_END)
        if int.from_bytes(fh.read(4), "little") == expected % 2**32:
            return True
    total = 0
    try:
        with open(p, "rb") as raw:
            raw.seek(offset)
            with gzip.GzipFile(fileobj=raw, mode="rb") as fh:
                while total < expected:
                    chunk = fh.read(1 << 22)
                    if not chunk:
                        break
                    total += len(chunk)
    except (OSError, EOFError, zlib.error):
        return False
    return total >= expected


def _nrrd_data_complete(p: Path, reader: sitk.ImageFileReader) -> bool:
    """Whether a single-file NRRD with raw or gzip data holds all the voxel bytes its header declares.

    ITK allocates and fills the whole declared volume before it notices missing data, so a file of a
    few hundred bytes declaring 2048 x 2048 x 300 voxels (within MAX_VOXELS) would cost 2.5 GB. The
    header (up to its first empty line) is read here; detached data, skips and other encodings are left
    to ITK (True).
    """
    if not p.name.lower().endswith(".nrrd"):
        return True
    with open(p, "rb") as fh:
        head = fh.read(_NRRD_HEADER_MAX_BYTES)
    end = head.find(b"\n\n")
    if end < 0:
        return True  # no attached data found in the first bytes; leave it to ITK
    fields = {}
    for line in head[:end].decode("latin-1").splitlines()[1:]:
        key, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            fields[key.strip().lower().replace(" ", "")] = value.strip().lower()
    if fields.keys() & {"datafile", "lineskip", "byteskip"}:
        return True
    component = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID(), reader.GetNumberOfComponents())
    expected = math.prod(reader.GetSize()) * reader.GetNumberOfComponents() * component.GetSizeOfPixelComponent()
    offset = end + 2
    if fields.get("encoding") == "raw":
        return p.stat().st_size - offset >= expected
    if fields.get("encoding") in ("gzip", "gz"):
        return _gzip_holds(p, offset, expected)
    return True


def _check_header(p: Path, size: Sequence[int], components: int) -> None:
    """Refuse 2D images, thin stacks, multi-component data and absurd sizes (size is [x, y, z] voxels)."""
    dims = "x".join(str(n) for n in size)
    if min(size) <= 1:
        raise InputError(p, f"holds a 2D image, not a CT volume (size {dims})")
    if components != 1:
        raise InputError(p, f"holds {components}-component (colour/vector) data, not a greyscale CT volume")
    if max(size) > MAX_VOXELS_PER_SIDE or math.prod(size) > MAX_VOXELS:
        raise InputError(
            p, f"is too large ({dims} voxels; at most {MAX_VOXELS_PER_SIDE} per side and {MAX_VOXELS:.1e} in all)"
        )
    if min(size) < MIN_SLICES:
        raise InputError(p, f"has too few slices for a CT volume (size {dims}; at least {MIN_SLICES} per axis)")


def _execute(p: Path, reader: sitk.ImageReaderBase) -> sitk.Image:
    """Read the pixels; corrupt data becomes an InputError; float64 becomes float32; non-finite voxels are
    refused or repaired (:func:`_finite`)."""
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(p, f"unreadable or corrupt image data: {_itk_reason(exc)}") from None
    if image.GetPixelID() == sitk.sitkFloat64:
        image = sitk.Cast(image, sitk.sitkFloat32)
    return _finite(p, image)


def _finite(p: Path, image: sitk.Image) -> sitk.Image:
    """``image`` with its NaN / infinite voxels set to air (AIR_HU) and a warning counting them; InputError when
    more than MAX_NON_FINITE_FRACTION of the voxels are non-finite. Integer images are returned as they are."""
    if image.GetPixelID() != sitk.sitkFloat32:
        return image
    array = sitk.GetArrayViewFromImage(image)
    bad = ~np.isfinite(array)
    count = int(np.count_nonzero(bad))
    if not count:
        return image
    what = f"{count} of {array.size} voxels are NaN or infinite"
    if count > MAX_NON_FINITE_FRACTION * array.size:
        raise InputError(p, f"{what}; not a usable CT (at most {MAX_NON_FINITE_FRACTION:.0%} may be, read as air)")
    repaired = sitk.GetImageFromArray(np.where(bad, np.float32(AIR_HU), array))
    repaired.CopyInformation(image)
    for key in image.GetMetaDataKeys():
        repaired.SetMetaData(key, image.GetMetaData(key))
    warnings.warn(f"{p}: {what}; set to {AIR_HU:g} HU (air)", NonFiniteVoxelsWarning, stacklevel=2)
    return repaired


def _itk_reason(exc: Exception, limit: int = 160) -> str:
    """The useful tail of an ITK exception message, on one line."""
    text = str(exc)
    if "ERROR:" in text:  # "ITK ERROR: Class(0x...): reason" or "sitk::ERROR: reason"
        text = text.rsplit("ERROR:", 1)[1]
        head, sep, tail = text.partition("): ")
        text = tail if sep and "(0x" in head else text
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def ct_info(image: sitk.Image) -> Dict[str, object]:
    """JSON-serialisable summary of a CT: size [x, y, z] voxels, spacing_mm, origin_mm (LPS),
    direction (9 floats, row-major, columns are the index axes in LPS) and hu_range [min, max] in HU."""
    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(image)
    return {
        "size": [int(n) for n in image.GetSize()],
        "spacing_mm": [float(s) for s in image.GetSpacing()],
        "origin_mm": [float(o) for o in image.GetOrigin()],
        "direction": [float(d) for d in image.GetDirection()],
        "hu_range": [float(stats.GetMinimum()), float(stats.GetMaximum())],
    }
