"""Large inputs and decompression bombs: refused from their headers, never decoded; large images reduced early.

Every bomb here is a few kilobytes that declares a huge image (or inflates far beyond what it declares);
each must be refused with one line naming the file before the decoder runs. The working-size reduction
is tested with WORKING_MAX_SIDE_PX patched down to a few dozen pixels, so that every image stays tiny.
The time and memory of real large inputs are measured by bench/large_inputs.py (docs/large_inputs.md),
not here.
"""

from __future__ import annotations

import gzip
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image, ImageFile, TiffImagePlugin
from pydicom import uid
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info

import x2ct.io.dicom_compat as dicom_compat
import x2ct.io.radiograph as radiograph_module
from radiograph_factory import COLS, ROWS, write_dicom, write_dx, write_picture, write_png_header_only
from x2ct.cli import main
from x2ct.errors import InputError
from x2ct.io import read_ct, read_radiograph
from x2ct.io.radiograph import MAX_PIXELS, block_mean, reduction_factor

REPO = Path(__file__).resolve().parents[1]


def _no_decode(*args, **kwargs):
    raise AssertionError("pixels must not be decoded for an image refused by its header")


def _one_line_refusal(path: Path, capsys: pytest.CaptureFixture, problem: str) -> None:
    """``x2ct info path`` exits 2 with exactly one stderr line ``x2ct: error: <path>: ...problem...``."""
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"x2ct: error: {path}: "), err
    assert problem in err, err


# --------------------------------------------------------------------------------------------------
# Hand-made bombs


def _png_bomb(path: Path) -> Path:
    """A PNG whose IHDR declares 60000 x 60000 8-bit gray pixels, with an IDAT of a few bytes."""
    return write_png_header_only(path, 60000, 60000)


def _patched_tiff(path: Path, rows: int, cols: int) -> Path:
    """A real 96 x 80 deflate-compressed TIFF (Pillow) whose ImageLength/ImageWidth tags are patched to rows x cols."""
    write_picture(path.with_suffix(".png"), rows=ROWS, cols=COLS)
    Image.open(path.with_suffix(".png")).save(path, compression="tiff_adobe_deflate")
    data = bytearray(path.read_bytes())
    assert data[:4] == b"II*\x00"
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    patched = set()
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        tag, kind = struct.unpack_from("<HH", data, entry)
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (3) or LONG (4), value in the entry
            struct.pack_into("<H" if kind == 3 else "<I", data, entry + 8, cols if tag == 256 else rows)
            patched.add(tag)
    assert patched == {256, 257}
    path.write_bytes(bytes(data))
    return path


def _nrrd(path: Path, sizes: tuple[int, ...], encoding: str = "gzip", payload: bytes = bytes(1000)) -> Path:
    """A NRRD of 16-bit voxels declaring ``sizes`` whose data is ``payload`` (gzip or raw): a few bytes."""
    header = (
        f"NRRD0004\ntype: short\ndimension: {len(sizes)}\nsizes: {' '.join(map(str, sizes))}\n"
        f"encoding: {encoding}\nendian: little\n\n"
    )
    path.write_bytes(header.encode() + (gzip.compress(payload) if encoding == "gzip" else payload))
    return path


def _deflated_dicom(
    path: Path, rows: int, cols: int, pixel_bytes: int | None = None, private_bytes: int = 0
) -> Path:
    """A Deflated Explicit VR Little Endian DX whose header says ``rows`` x ``cols`` 16-bit pixels and whose
    Pixel Data holds ``pixel_bytes`` zero bytes (default: what the header says), after a private OB element of
    ``private_bytes`` zeros when asked. The zeros are deflated 1 MiB at a time: nothing large is held."""
    ds = pydicom.dcmread(write_dx(path.with_suffix(".plain.dcm"), header_size=(rows, cols)))
    del ds.PixelData
    body, meta = DicomBytesIO(), DicomBytesIO()
    for buffer in (body, meta):
        buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(body, ds)
    ds.file_meta.TransferSyntaxUID = uid.DeflatedExplicitVRLittleEndian
    write_file_meta_info(meta, ds.file_meta)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [b"\0" * 128 + b"DICM" + meta.getvalue(), packer.compress(body.getvalue())]
    zeros = bytes(2**20)

    def element(group: int, element: int, vr: bytes, length: int) -> None:
        parts.append(packer.compress(struct.pack("<HH2sHI", group, element, vr, 0, length)))
        for start in range(0, length, len(zeros)):
            parts.append(packer.compress(zeros[: min(len(zeros), length - start)]))

    if private_bytes:
        parts.append(packer.compress(struct.pack("<HH2sH", 0x7FDF, 0x0010, b"LO", 10) + b"X2CT TEST "))
        element(0x7FDF, 0x1000, b"OB", private_bytes)
    element(0x7FE0, 0x0010, b"OW", rows * cols * 2 if pixel_bytes is None else pixel_bytes)
    parts.append(packer.flush())
    path.write_bytes(b"".join(parts))
    return path


def _patch_frame_header(path: Path, marker: bytes, offset: int, fmt: str, values: tuple[int, ...]) -> Path:
    """Overwrite the size fields that follow the first ``marker`` in ``path`` (a compressed DICOM)."""
    data = bytearray(path.read_bytes())
    at = data.find(marker)
    assert at > 0, f"{marker!r} not found in {path}"
    struct.pack_into(fmt, data, at + offset, *values)
    path.write_bytes(bytes(data))
    return path


# --------------------------------------------------------------------------------------------------
# Bombs per format: refused from the header with one line naming the file


def test_png_bomb_is_refused_before_decoding(tmp_path, monkeypatch, capsys):
    path = _png_bomb(tmp_path / "bomb.png")
    assert path.stat().st_size < 200
    monkeypatch.setattr(ImageFile.ImageFile, "load", _no_decode)
    _one_line_refusal(path, capsys, "too large")


@pytest.mark.parametrize("rows, cols", [(60000, 60000), (7000, 7000)])  # over Pillow's own bomb limit; only ours
def test_tiff_with_patched_size_is_refused_before_decoding(tmp_path, monkeypatch, capsys, rows, cols):
    assert rows * cols > MAX_PIXELS
    path = _patched_tiff(tmp_path / "bomb.tif", rows, cols)
    monkeypatch.setattr(ImageFile.ImageFile, "load", _no_decode)
    monkeypatch.setattr(TiffImagePlugin.TiffImageFile, "load", _no_decode)
    _one_line_refusal(path, capsys, "too large")


def test_nrrd_radiograph_bomb_is_refused_before_decoding(tmp_path, monkeypatch, capsys):
    path = _nrrd(tmp_path / "bomb.nrrd", (60000, 60000))
    monkeypatch.setattr(sitk.ImageFileReader, "Execute", _no_decode)
    _one_line_refusal(path, capsys, "too large")


@pytest.mark.parametrize("encoding", ["gzip", "raw"])
def test_ct_sized_nrrd_without_its_data_is_refused_before_itk_allocates(tmp_path, monkeypatch, capsys, encoding):
    """512 x 512 x 400 voxels pass the CT size limits, but a few bytes cannot hold them: ITK would allocate and
    fill 200 MB (2.5 GB for 2048 x 2048 x 300) before noticing."""
    path = _nrrd(tmp_path / "ct.nrrd", (512, 512, 400), encoding)
    monkeypatch.setattr(sitk.ImageFileReader, "Execute", _no_decode)
    with pytest.raises(InputError, match="truncated"):
        read_ct(path)
    _one_line_refusal(path, capsys, "truncated")


def test_complete_gzip_nrrd_ct_still_reads(tmp_path):
    volume = np.arange(16 * 17 * 18, dtype=np.int16).reshape(16, 17, 18) - 1000
    image = sitk.GetImageFromArray(volume)
    sitk.WriteImage(image, str(tmp_path / "ct.nrrd"), useCompression=True)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_ct(tmp_path / "ct.nrrd")), volume)


def test_deflated_pixel_data_larger_than_declared_is_refused(tmp_path, capsys):
    """64 x 64 pixels declared (8 KiB), 64 MiB of zeros deflated (64 KiB on disk)."""
    path = _deflated_dicom(tmp_path / "bomb.dcm", 64, 64, pixel_bytes=64 * 2**20)
    assert path.stat().st_size < 200_000
    with pytest.raises(InputError, match="inflates to more than .* bytes, more than its header declares"):
        read_radiograph(path)
    _one_line_refusal(path, capsys, "decompression bomb")


def test_deflated_header_bomb_is_refused_also_where_only_the_header_is_read(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dicom_compat, "DEFLATE_HEADER_MAX_BYTES", 2**20)
    path = _deflated_dicom(tmp_path / "bomb.dcm", 64, 64, private_bytes=4 * 2**20)
    with pytest.raises(InputError, match="elements before its Pixel Data inflate to more than 1,048,576 bytes"):
        dicom_compat.dcmread(path, stop_before_pixels=True)
    _one_line_refusal(path, capsys, "decompression bomb")


def test_deflated_size_is_checked_before_its_pixel_data_is_inflated(tmp_path, monkeypatch, capsys):
    """7000 x 7000 declared: refused from the header; no more than one inflate step of the stream is ever held."""
    path = _deflated_dicom(tmp_path / "large.dcm", 7000, 7000)
    inflated = []

    class Recording(dicom_compat._InflatingFile):
        def _fill(self, size):
            super()._fill(size)
            inflated.append(len(self._data))

    monkeypatch.setattr(dicom_compat, "_InflatingFile", Recording)
    monkeypatch.setattr(radiograph_module, "pixel_array", _no_decode)
    _one_line_refusal(path, capsys, "too large")
    assert inflated and max(inflated) <= 2 * dicom_compat._INFLATE_CHUNK  # of 98 MB of pixel data


def test_deflated_dicom_reads_like_the_uncompressed_one(tmp_path):
    plain = write_dx(tmp_path / "plain.dcm", pixel_spacing=(0.2, 0.2), window=(2000.0, 3000.0))
    ds = pydicom.dcmread(plain)
    ds.file_meta.TransferSyntaxUID = uid.DeflatedExplicitVRLittleEndian
    dicom_compat.save_part10(ds, tmp_path / "deflated.dcm")
    header = dicom_compat.dcmread(tmp_path / "deflated.dcm", stop_before_pixels=True)
    assert "PixelData" not in header and header.Rows == ROWS and header.file_meta.TransferSyntaxUID.is_deflated
    expected, result = read_radiograph(plain), read_radiograph(tmp_path / "deflated.dcm")
    np.testing.assert_array_equal(result.pixels, expected.pixels)
    assert result.spacing_mm == expected.spacing_mm and result.metadata["voi"] == "window"


def test_jpeg2000_codestream_size_is_checked_before_decoding(tmp_path, monkeypatch, capsys):
    path = write_dicom(tmp_path / "j2k.dcm", transfer_syntax=uid.JPEG2000Lossless)
    siz = b"\xff\x4f\xff\x51"  # SOC, SIZ; then Lsiz, Rsiz, Xsiz, Ysiz (big endian)
    monkeypatch.setattr(radiograph_module, "pixel_array", _no_decode)
    _patch_frame_header(path, siz, 8, ">II", (COLS, ROWS + 1))
    mismatch = f"stream is {ROWS + 1} x {COLS} pixels, but Rows x Columns is {ROWS} x {COLS}"
    with pytest.raises(InputError, match=mismatch):
        read_radiograph(path)
    _patch_frame_header(path, siz, 8, ">II", (60000, 60000))
    _one_line_refusal(path, capsys, "image is 60000 x 60000 pixels, too large")


@pytest.mark.parametrize(
    "syntax, marker, bits",
    [(uid.JPEGBaseline8Bit, b"\xff\xc0", 8), (uid.JPEGLSLossless, b"\xff\xf7", 12)],  # SOF0; JPEG-LS SOF55
)
def test_jpeg_frame_header_size_is_checked_before_decoding(tmp_path, monkeypatch, capsys, syntax, marker, bits):
    """A JPEG-LS frame header declaring 60000 x 60000 made CharLS abort the whole process before this check."""
    path = write_dicom(tmp_path / "jpeg.dcm", transfer_syntax=syntax, bits_stored=bits)
    monkeypatch.setattr(radiograph_module, "pixel_array", _no_decode)
    _patch_frame_header(path, marker, 5, ">HH", (60000, 60000))  # after the marker: Lf, P, then Y, X
    _one_line_refusal(path, capsys, "image is 60000 x 60000 pixels, too large")


# --------------------------------------------------------------------------------------------------
# Reduction to the working size


def test_block_mean_is_the_area_mean_of_each_block():
    image = np.random.default_rng(1).random((7, 10))
    reduced = block_mean(image, 3)
    assert reduced.shape == (3, 4) and reduced.dtype == np.float32
    for i in range(3):
        for j in range(4):  # last row and column blocks are partial: 1 row, 1 column
            np.testing.assert_allclose(reduced[i, j], image[3 * i : 3 * i + 3, 3 * j : 3 * j + 3].mean(), rtol=1e-6)
    assert block_mean(image.astype(np.float32), 1) is not None
    np.testing.assert_array_equal(block_mean(image.astype(np.float32), 1), image.astype(np.float32))


def test_reduction_factor_brings_the_longer_side_within_the_working_size():
    side = radiograph_module.WORKING_MAX_SIDE_PX
    assert reduction_factor(side, 10) == 1 and reduction_factor(side + 1, 10) == 2
    assert reduction_factor(10, 3 * side) == 3 and reduction_factor(4300, 4300) == -(-4300 // side)


@pytest.mark.parametrize(
    "writer, spacing",
    [
        (lambda p: write_dx(p / "r.dcm", pixel_spacing=(0.2, 0.3), window=(2000.0, 3000.0)), (0.2, 0.3)),
        (lambda p: write_dicom(p / "m1.dcm", photometric="MONOCHROME1", imager_pixel_spacing=(0.2, 0.2)), (0.2, 0.2)),
        (lambda p: write_picture(p / "r.png", bits=16), None),
    ],
)
@pytest.mark.parametrize("working, factor", [(48, 2), (32, 3)])
def test_reduced_image_is_the_block_mean_and_its_spacing_scales(tmp_path, monkeypatch, writer, spacing, working,
                                                               factor):
    path = writer(tmp_path)
    full = read_radiograph(path)
    monkeypatch.setattr(radiograph_module, "WORKING_MAX_SIDE_PX", working)
    reduced = read_radiograph(path)
    assert reduced.metadata["reduction"] == factor and reduced.metadata["stored_size"] == [ROWS, COLS]
    assert reduced.pixels.shape == (-(-ROWS // factor), -(-COLS // factor)) == tuple(reduced.metadata["size"])
    np.testing.assert_allclose(reduced.pixels, block_mean(full.pixels, factor), atol=1e-6)
    if spacing is None:
        assert reduced.spacing_mm is None
    else:
        np.testing.assert_allclose(reduced.spacing_mm, np.array(full.spacing_mm) * factor)
    assert any(f"reduced {factor}x" in note for note in reduced.warnings)
    assert full.metadata["reduction"] == 1 and not any("reduced" in note for note in full.warnings)


def test_conversion_in_bands_equals_one_band(tmp_path, monkeypatch):
    path = write_dx(tmp_path / "r.dcm", rescale=(2.0, -100.0))  # no VOI: min..max of the modality values
    whole = read_radiograph(path).pixels
    monkeypatch.setattr(radiograph_module, "_BAND_PIXELS", 100)  # bands of one row
    np.testing.assert_array_equal(read_radiograph(path).pixels, whole)
    monkeypatch.setattr(radiograph_module, "WORKING_MAX_SIDE_PX", 48)
    np.testing.assert_allclose(read_radiograph(path).pixels, block_mean(whole, 2), atol=1e-6)


def test_info_reports_the_stored_size_and_the_reduction(tmp_path, monkeypatch, capsys):
    from x2ct.cli import info_dict

    path = write_dx(tmp_path / "r.dcm", pixel_spacing=(0.2, 0.2))
    monkeypatch.setattr(radiograph_module, "WORKING_MAX_SIDE_PX", 48)
    info = info_dict(str(path))
    assert info["size"] == [48, 40] and info["stored_size"] == [ROWS, COLS] and info["reduction"] == 2
    assert info["spacing_mm"] == pytest.approx([0.4, 0.4])


def test_preprocessing_sees_the_same_field_of_view_in_mm(tmp_path, monkeypatch):
    from x2ct.inference.preprocess import preprocess
    from x2ct.inference.types import InputSpec

    spec = InputSpec()
    dicom = write_dx(tmp_path / "r.dcm", pixel_spacing=(3.0, 3.0))
    drr = tmp_path / "drr.nrrd"  # an x2ct DRR: its isocentre pitch comes from its own header key
    image = sitk.GetImageFromArray(np.zeros((ROWS, COLS), np.uint16) + 1000)
    image.SetMetaData("x2ct_isocenter_spacing_mm", "3.0")
    sitk.WriteImage(image, str(drr))
    full = {path: preprocess(read_radiograph(path), spec).record for path in (dicom, drr)}
    monkeypatch.setattr(radiograph_module, "WORKING_MAX_SIDE_PX", 48)
    for path in (dicom, drr):
        record = preprocess(read_radiograph(path), spec).record
        assert record["spacing_at_patient_mm"] == pytest.approx([6.0, 6.0])
        assert full[path]["spacing_at_patient_mm"] == pytest.approx([3.0, 3.0])
        np.testing.assert_allclose(record["window_mm"], full[path]["window_mm"], atol=6.0)  # within one reduced px


def test_slicer_heat_map_of_a_reduced_radiograph_covers_the_node_grid(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "X2CTRecon"))
    monkeypatch.delitem(sys.modules, "X2CTReconLib", raising=False)
    monkeypatch.delitem(sys.modules, "X2CTReconLib.results", raising=False)
    from X2CTReconLib import results

    y, x = np.mgrid[0:30, 0:21]
    node = (0.2 + 0.6 * (y / 30) ** 2 + 0.1 * np.sin(x / 3.0)).astype(np.float32)  # the file's pixels, in Slicer
    x2ct_pixels = block_mean(node, 4)  # (8, 6): as x2ct read the file, reduced 4x
    heat = np.zeros((8, 6), np.float32)
    heat[2, 1] = 1.0
    voxels = results.radiographHeatMapVoxels(heat, node, x2ct_pixels, reduction=4)
    assert voxels.shape == (1, 30, 21)
    rows, cols = np.nonzero(voxels[0])
    assert set(rows) == set(range(8, 12)) and set(cols) == set(range(4, 8))  # the 4 x 4 block it was the mean of
    flipped = results.radiographHeatMapVoxels(heat, node[::-1].copy(), x2ct_pixels, reduction=4)  # rows reversed
    rows, cols = np.nonzero(flipped[0])
    assert set(rows) == set(range(29 - 11, 29 - 7)) and set(cols) == set(range(4, 8))
    with pytest.raises(ValueError, match="holds"):
        results.radiographHeatMapVoxels(heat, node, x2ct_pixels, reduction=1)


def test_prediction_outputs_of_a_reduced_radiograph_stay_on_its_grid(tmp_path, monkeypatch):
    """summary.json sizes, Grad-CAM maps (spacing, origin at the file's pixel 0) and peaks all use the reduced grid."""
    import json

    from x2ct.inference.predict import predict_to_folder

    path = write_dx(tmp_path / "r.dcm", pixel_spacing=(3.0, 3.0), view_position="PA")
    monkeypatch.setattr(radiograph_module, "WORKING_MAX_SIDE_PX", 48)
    out = tmp_path / "out"
    predict_to_folder(out, path, device="cpu")
    summary = json.loads((out / "summary.json").read_text())
    record = summary["inputs"]["PA"]
    assert record["size_px"] == [48, 40] and record["spacing_at_patient_mm"] == [6.0, 6.0]
    assert any("reduced 2x" in warning for warning in summary["warnings"])
    findings = json.loads((out / "findings.json").read_text())["findings"]
    assert findings
    for finding in findings:
        row, col = finding["guided_peak"]["pa"]["pixel_rc"]
        assert -0.5 <= row <= 47.5 and -0.5 <= col <= 39.5
        cam = sitk.ReadImage(str(out / "gradcam" / f"{finding['output']}_pa.nrrd"))
        assert cam.GetSize() == (40, 48) and cam.GetSpacing() == (6.0, 6.0) and cam.GetOrigin() == (1.5, 1.5)
        with Image.open(out / "gradcam" / f"{finding['output']}_pa.png") as overlay:
            assert overlay.size == (40, 48)
