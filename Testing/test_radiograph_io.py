"""read_radiograph: DICOM display pipeline, compressed syntaxes, spacing, view, formats and bad inputs."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image, ImageFile
from pydicom import uid
from pydicom.data import get_testdata_file

import x2ct.io.radiograph as radiograph_module
from radiograph_factory import (
    COLS,
    ROWS,
    bad_input_corpus,
    chest_phantom,
    landmarks,
    write_cr,
    write_dicom,
    write_dx,
    write_picture,
    write_png_header_only,
    write_sc,
    write_sitk_image,
)
from x2ct.errors import InputError
from x2ct.io.dicom_compat import PYDICOM_3, JPEGLossless, save_part10
from x2ct.io.radiograph import MAX_PIXELS, MAX_SIDE_PX, METADATA_KEYS, MIN_SIDE_PX, read_radiograph

PHANTOM = chest_phantom()
LSB12 = 1.0 / 4095


def stored12(display: np.ndarray) -> np.ndarray:
    """The factory's 12-bit quantisation of a display image."""
    return np.rint(display * 4095)


def linear_window(m: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR window mapped to [0, 1]."""
    return np.clip((m - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def assert_chest_upright_bone_bright(pixels: np.ndarray) -> None:
    """Dense bright and stored orientation: marker top-left white, air black, spine brighter than lungs."""
    marks = landmarks(*pixels.shape)
    assert pixels.dtype == np.float32
    assert 0.0 <= pixels.min() and pixels.max() <= 1.0
    assert pixels[marks["marker"]] > 0.95
    assert pixels[marks["air"]] < 0.05
    assert pixels[marks["spine"]] > pixels[marks["right_lung"]] + 0.5
    assert pixels[marks["spine"]] > pixels[marks["left_lung"]] + 0.5


# --------------------------------------------------------------------------------------------------
# Photometric interpretation x presentation LUT x modality/VOI LUT


@pytest.mark.parametrize(
    "writer, options, inverted",
    [
        (write_dx, dict(photometric="MONOCHROME2", presentation_lut_shape="IDENTITY"), False),
        (write_dx, dict(photometric="MONOCHROME1", presentation_lut_shape="INVERSE"), True),
        (write_cr, dict(photometric="MONOCHROME1"), True),
        (write_cr, dict(photometric="MONOCHROME2"), False),
        (write_dx, dict(photometric="MONOCHROME1", presentation_lut_shape="INVERSE", bits_stored=16), True),
    ],
    ids=["DX-M2-IDENTITY", "DX-M1-INVERSE", "CR-M1-noshape", "CR-M2-noshape", "DX-M1-INVERSE-16bit"],
)
def test_gray_dicom_is_bone_bright_and_matches_phantom(tmp_path, writer, options, inverted):
    path = writer(tmp_path / "image.dcm", **options)
    result = read_radiograph(path)
    assert_chest_upright_bone_bright(result.pixels)
    np.testing.assert_allclose(result.pixels, PHANTOM, atol=1.5 / 4095)
    assert result.metadata["inverted"] is inverted
    assert result.metadata["voi"] == "none-minmax"
    assert result.metadata["photometric"] == options["photometric"]


def test_monochrome1_inverse_equals_monochrome2(tmp_path):
    m1 = write_dx(tmp_path / "m1.dcm", photometric="MONOCHROME1", presentation_lut_shape="INVERSE")
    m2 = write_dx(tmp_path / "m2.dcm", photometric="MONOCHROME2", presentation_lut_shape="IDENTITY")
    import pydicom

    stored = pydicom.dcmread(m1).pixel_array
    marks = landmarks()
    assert stored[marks["spine"]] < stored[marks["right_lung"]]  # the file really stores bone dark
    # Identical up to one LSB (rint ties of the two quantisations round to even in opposite directions).
    np.testing.assert_allclose(read_radiograph(m1).pixels, read_radiograph(m2).pixels, atol=1.01 * LSB12)


def test_secondary_capture_8bit(tmp_path):
    result = read_radiograph(write_sc(tmp_path / "sc.dcm"))
    assert result.metadata["modality"] == "OT" and result.metadata["bits_stored"] == 8
    np.testing.assert_allclose(result.pixels, PHANTOM, atol=0.5 / 255 + 1e-6)


@pytest.mark.parametrize(
    "photometric, shape, expect_inverted",
    [("MONOCHROME2", "INVERSE", True), ("MONOCHROME1", "IDENTITY", False)],
)
def test_presentation_lut_shape_decides_over_photometric(tmp_path, photometric, shape, expect_inverted):
    path = write_dx(tmp_path / "odd.dcm", photometric=photometric, presentation_lut_shape=shape)
    result = read_radiograph(path)
    # The factory stores MONOCHROME1 bone dark and MONOCHROME2 bone bright; the shape flips the display.
    stored_display = 1.0 - PHANTOM if photometric == "MONOCHROME1" else PHANTOM
    expected = 1.0 - stored_display if expect_inverted else stored_display
    np.testing.assert_allclose(result.pixels, expected, atol=1.5 * LSB12)
    assert result.metadata["inverted"] is expect_inverted
    assert any("unusual PresentationLUTShape" in w for w in result.warnings)


def test_modality_lut_applied_once_before_window(tmp_path):
    slope, intercept, center, width = 2.0, -1024.0, 1500.0, 4000.0
    path = write_dx(tmp_path / "w.dcm", rescale=(slope, intercept), window=(center, width))
    result = read_radiograph(path)
    expected = linear_window(slope * stored12(PHANTOM) + intercept, center, width)
    np.testing.assert_allclose(result.pixels, expected, atol=1e-5)
    assert result.metadata["voi"] == "window"
    # The window really clips: some lung and all bone saturate; a missing or double rescale would not match.
    assert 0.0 < result.pixels[landmarks()["right_lung"]] < 0.5 and result.pixels[landmarks()["spine"]] == 1.0


def test_window_then_single_inversion_for_monochrome1(tmp_path):
    slope, intercept, center, width = 1.0, 0.0, 1500.0, 2000.0
    path = write_dx(
        tmp_path / "w1.dcm",
        photometric="MONOCHROME1",
        presentation_lut_shape="INVERSE",
        rescale=(slope, intercept),
        window=(center, width),
    )
    result = read_radiograph(path)
    expected = 1.0 - linear_window(stored12(1.0 - PHANTOM), center, width)
    np.testing.assert_allclose(result.pixels, expected, atol=1e-5)
    assert_chest_upright_bone_bright(result.pixels)


def test_window_output_range_is_stored_range_not_unit(tmp_path):
    # A window exactly spanning the 12-bit stored range must give the phantom back, i.e. the
    # windowed values (0..4095) are normalised by the stored range and not clipped to [0, 1].
    result = read_radiograph(write_cr(tmp_path / "full.dcm", window=(2048.0, 4096.0)))
    np.testing.assert_allclose(result.pixels, PHANTOM, atol=1.5 * LSB12)


@pytest.mark.parametrize("rescale", [None, (1.0, 100.0)], ids=["no-rescale", "intercept-100"])
def test_voi_lut_sequence_applied(tmp_path, rescale):
    gamma = 0.5
    path = write_dx(tmp_path / "lut.dcm", voi_lut_gamma=gamma, rescale=rescale)
    result = read_radiograph(path)
    expected = np.rint(65535 * (stored12(PHANTOM) / 4095) ** gamma) / 65535
    np.testing.assert_allclose(result.pixels, expected, atol=1e-6)
    assert result.metadata["voi"] == "VOILUTSequence"


def test_voi_lut_sequence_preferred_over_window(tmp_path):
    path = write_dx(tmp_path / "both.dcm", voi_lut_gamma=2.0, window=(500.0, 200.0))
    result = read_radiograph(path)
    np.testing.assert_allclose(result.pixels, np.rint(65535 * (stored12(PHANTOM) / 4095) ** 2.0) / 65535, atol=1e-6)
    assert result.metadata["voi"] == "VOILUTSequence"


def test_voi_lut_then_inversion_for_monochrome1(tmp_path):
    path = write_dx(
        tmp_path / "lut1.dcm", photometric="MONOCHROME1", presentation_lut_shape="INVERSE", voi_lut_gamma=0.5
    )
    result = read_radiograph(path)
    expected = 1.0 - np.rint(65535 * (stored12(1.0 - PHANTOM) / 4095) ** 0.5) / 65535
    np.testing.assert_allclose(result.pixels, expected, atol=1e-6)
    assert result.metadata["inverted"] is True


def test_rgb_secondary_capture_becomes_gray_with_warning(tmp_path):
    result = read_radiograph(write_sc(tmp_path / "rgb.dcm", rgb=True))
    gray = np.rint(PHANTOM * 255)
    expected = (0.299 * np.floor(gray / 2) + (0.587 + 0.114) * gray) / 255  # the factory halves red
    np.testing.assert_allclose(result.pixels, expected, atol=1e-6)
    assert any("RGB image converted to grayscale" in w for w in result.warnings)


def test_ybr_full_secondary_capture_is_read_as_rgb(tmp_path):
    # pydicom 3 returns YBR_FULL as RGB; on pydicom 2.4 x2ct converts it itself: same gray either way.
    import pydicom

    try:
        from pydicom.pixels import convert_color_space
    except ImportError:  # pydicom 2.4
        from pydicom.pixel_data_handlers.util import convert_color_space

    rgb_path = write_sc(tmp_path / "rgb.dcm", rgb=True)
    ds = pydicom.dcmread(rgb_path)
    ds.PixelData = convert_color_space(ds.pixel_array, "RGB", "YBR_FULL").tobytes()
    ds.PhotometricInterpretation = "YBR_FULL"
    save_part10(ds, tmp_path / "ybr.dcm")
    result = read_radiograph(tmp_path / "ybr.dcm")
    assert result.metadata["photometric"] == "YBR_FULL"
    np.testing.assert_allclose(result.pixels, read_radiograph(rgb_path).pixels, atol=2.01 / 255)
    assert any("YBR_FULL image converted to grayscale" in w for w in result.warnings)


def test_for_processing_is_read_with_warning(tmp_path):
    result = read_radiograph(write_dx(tmp_path / "raw.dcm", for_processing=True))
    np.testing.assert_allclose(result.pixels, PHANTOM, atol=LSB12)
    assert result.metadata["presentation_intent"] == "FOR PROCESSING"
    assert any("For Processing" in w and "raw detector data" in w for w in result.warnings)


# --------------------------------------------------------------------------------------------------
# Compressed transfer syntaxes


LOSSLESS = [
    (uid.RLELossless, {}),
    (uid.JPEGLSLossless, {}),
    (uid.JPEG2000Lossless, {}),
    (uid.JPEGLosslessSV1, {}),  # encoded by GDCM (no Python encoder exists)
    (JPEGLossless, {}),  # encoded by GDCM (pydicom 2.4's uid.JPEGLossless is the SV1 UID)
]


@pytest.mark.parametrize("syntax, options", LOSSLESS, ids=[s.name for s, _ in LOSSLESS])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_lossless_syntaxes_round_trip_exactly(tmp_path, syntax, options, photometric):
    plain = read_radiograph(write_dx(tmp_path / "plain.dcm", photometric=photometric))
    packed = read_radiograph(write_dx(tmp_path / "packed.dcm", photometric=photometric, transfer_syntax=syntax))
    assert packed.metadata["transfer_syntax"] == syntax.name
    np.testing.assert_array_equal(packed.pixels, plain.pixels)


@pytest.mark.parametrize(
    "syntax, options, writer, tolerance",
    [
        (uid.JPEGLSNearLossless, dict(jls_error=2), write_dx, 2.01 / 4095),
        (uid.JPEG2000, dict(j2k_cr=[4]), write_dx, 0.2),
        (uid.JPEGBaseline8Bit, {}, write_sc, 3.01 / 255),  # encoded by GDCM
    ],
    ids=["JPEG-LS-near-lossless", "JPEG2000-lossy", "JPEG-baseline"],
)
def test_lossy_syntaxes_decode_close(tmp_path, syntax, options, writer, tolerance):
    plain = read_radiograph(writer(tmp_path / "plain.dcm"))
    packed = read_radiograph(writer(tmp_path / "packed.dcm", transfer_syntax=syntax, **options))
    assert packed.metadata["transfer_syntax"] == syntax.name
    assert np.abs(packed.pixels - plain.pixels).max() <= tolerance
    assert np.abs(packed.pixels - plain.pixels).mean() < 0.01


def _uninstall_decoders(monkeypatch: pytest.MonkeyPatch, syntax: uid.UID) -> None:
    """Make pydicom see every decoder of ``syntax`` as not installed (3.x: plugins; 2.4: handlers)."""
    if PYDICOM_3:
        from pydicom.pixels import get_decoder

        monkeypatch.setattr(get_decoder(syntax), "_available", {})
    else:
        import pydicom.config

        for handler in pydicom.config.pixel_data_handlers:
            if handler.supports_transfer_syntax(syntax):
                monkeypatch.setattr(handler, "is_available", lambda: False)


@pytest.mark.parametrize(
    "syntax, package",
    [
        (uid.JPEGLosslessSV1, "python-gdcm"),
        (uid.JPEG2000Lossless, "pylibjpeg-openjpeg"),
        (uid.JPEGLSLossless, "pyjpegls"),
    ],
)
def test_missing_decoder_names_syntax_and_package(tmp_path, monkeypatch, syntax, package):
    path = write_dx(tmp_path / "packed.dcm", transfer_syntax=syntax)
    _uninstall_decoders(monkeypatch, syntax)
    with pytest.raises(InputError) as err:
        read_radiograph(path)
    assert syntax.name in str(err.value) and package in str(err.value)


def test_jpeg_extended_12bit_without_decoder_is_input_error():
    path = get_testdata_file("JPGExtended.dcm", download=False)
    if path is None:
        pytest.skip("pydicom test file JPGExtended.dcm not shipped")
    # Only the GPL pylibjpeg-libjpeg decodes 12-bit JPEG Extended; gdcm and Pillow refuse it.
    with pytest.raises(InputError) as err:
        read_radiograph(path)
    assert "JPEG Extended" in str(err.value) and "pylibjpeg-libjpeg" in str(err.value)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------------------------------
# Spacing


@pytest.mark.parametrize(
    "options, spacing, source, warning",
    [
        (
            dict(pixel_spacing=(0.15, 0.16), imager_pixel_spacing=(0.2, 0.2), magnification=1.1),
            (0.15, 0.16),
            "PixelSpacing",
            None,
        ),
        (
            dict(imager_pixel_spacing=(0.22, 0.33), magnification=1.1),
            (0.2, 0.3),
            "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor",
            None,
        ),
        (dict(imager_pixel_spacing=(0.2, 0.3)), (0.2, 0.3), "ImagerPixelSpacing", "detector plane"),
        (
            dict(pixel_spacing=(0.0, 0.0), imager_pixel_spacing=(0.2, 0.3)),
            (0.2, 0.3),
            "ImagerPixelSpacing",
            "detector plane",
        ),
        (dict(imager_pixel_spacing=(0.2, 0.3), magnification=0.0), (0.2, 0.3), "ImagerPixelSpacing", "detector plane"),
        (dict(), None, None, "spacing unknown"),
        (dict(pixel_spacing=(0.0, 0.0)), None, None, "spacing unknown"),
    ],
    ids=["calibrated-wins", "magnification", "detector", "zero-calibrated", "zero-magnification", "absent", "zero"],
)
def test_dicom_spacing_precedence(tmp_path, options, spacing, source, warning):
    result = read_radiograph(write_dx(tmp_path / "s.dcm", **options))
    if spacing is None:
        assert result.spacing_mm is None
    else:
        assert result.spacing_mm == pytest.approx(spacing)
    assert result.metadata["spacing_source"] == source
    if warning:
        assert any(warning in w for w in result.warnings)
    else:
        assert not any("spacing" in w for w in result.warnings)


def test_picture_dpi_is_not_spacing(tmp_path):
    path = tmp_path / "dpi.png"
    Image.fromarray(np.rint(PHANTOM * 255).astype(np.uint8)).save(path, dpi=(300, 300))
    result = read_radiograph(path)
    assert result.spacing_mm is None and result.metadata["spacing_source"] is None
    assert any("DPI is not a physical pixel spacing" in w for w in result.warnings)


# --------------------------------------------------------------------------------------------------
# View and body part


@pytest.mark.parametrize(
    "options, view, source",
    [
        (dict(view_position="PA"), "PA", "ViewPosition"),
        (dict(view_position="AP"), "AP", "ViewPosition"),
        (dict(view_position="LL"), "LATERAL", "ViewPosition"),
        (dict(view_position="RL", view_code="PA"), "LATERAL", "ViewPosition"),
        (dict(view_code="AP", patient_orientation=("P", "F")), "AP", "ViewCodeSequence"),
        (dict(view_code="LATERAL"), "LATERAL", "ViewCodeSequence"),
        (dict(patient_orientation=("P", "F")), "LATERAL", "PatientOrientation"),
        (dict(patient_orientation=("L", "F")), "PA", "PatientOrientation"),
        (dict(), None, None),
    ],
)
def test_view_precedence(tmp_path, options, view, source):
    result = read_radiograph(write_cr(tmp_path / "v.dcm", **options))
    assert result.view == view
    assert result.metadata["view_source"] == source


def test_explicit_view_wins_and_conflict_is_warned(tmp_path):
    path = write_dx(tmp_path / "v.dcm", view_position="PA")
    result = read_radiograph(path, view="lat")
    assert result.view == "LATERAL" and result.metadata["view_source"] == "argument"
    assert any("overrides ViewPosition" in w for w in result.warnings)
    assert read_radiograph(write_picture(tmp_path / "v.png"), view="ap").view == "AP"


def test_unknown_view_argument_is_input_error(tmp_path):
    path = write_dx(tmp_path / "v.dcm")
    with pytest.raises(InputError, match="unknown view 'oblique'"):
        read_radiograph(path, view="oblique")


def test_oblique_view_position_gives_no_view(tmp_path):
    result = read_radiograph(write_cr(tmp_path / "o.dcm", view_position="RLO", patient_orientation=("L", "F")))
    assert result.view is None and result.metadata["view_source"] is None
    assert any("ViewPosition 'RLO'" in w for w in result.warnings)


def test_flipped_patient_orientation_is_warned(tmp_path):
    result = read_radiograph(write_cr(tmp_path / "f.dcm", view_position="PA", patient_orientation=("R", "F")))
    assert result.view == "PA"
    assert any("flipped or rotated" in w for w in result.warnings)
    assert not any(
        "flipped" in w for w in read_radiograph(write_cr(tmp_path / "ok.dcm", patient_orientation=("L", "F"))).warnings
    )


def test_body_part_recorded(tmp_path):
    assert read_radiograph(write_dx(tmp_path / "c.dcm", body_part="CHEST")).metadata["body_part"] == "CHEST"
    assert read_radiograph(write_dx(tmp_path / "n.dcm", body_part=None)).metadata["body_part"] is None


def test_metadata_complete_and_json_serialisable(tmp_path):
    import pydicom

    path = write_dx(tmp_path / "m.dcm", view_position="PA", pixel_spacing=(0.2, 0.2))
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    result = read_radiograph(path)
    assert set(result.metadata) == set(METADATA_KEYS)
    json.dumps(result.metadata)
    assert result.metadata["size"] == [ROWS, COLS] and result.pixels.shape == (ROWS, COLS)
    for key, tag in [
        ("sop_instance_uid", "SOPInstanceUID"),
        ("sop_class_uid", "SOPClassUID"),
        ("study_instance_uid", "StudyInstanceUID"),
        ("series_instance_uid", "SeriesInstanceUID"),
    ]:
        assert result.metadata[key] == str(ds[tag].value)
    assert result.metadata["transfer_syntax"] == "Explicit VR Little Endian"
    assert result.metadata["modality"] == "DX" and result.metadata["bits_stored"] == 12


def test_dicom_without_extension_is_recognised(tmp_path):
    path = write_dx(tmp_path / "x.dcm")
    renamed = path.rename(tmp_path / "1.2.840.113619.2.55.3.604688")
    assert read_radiograph(renamed).metadata["format"] == "dicom"


# --------------------------------------------------------------------------------------------------
# PNG, JPEG, TIFF, NRRD, MHA, NIfTI


@pytest.mark.parametrize(
    "name, bits, tolerance",
    [
        ("a.png", 8, 0.5 / 255),
        ("a.png", 16, 0.5 / 65535),
        ("a.tif", 8, 0.5 / 255),
        ("a.tiff", 16, 0.5 / 65535),
        ("a.jpg", 8, 0.25),
    ],  # lossy JPEG rings at the phantom's sharp edges
)
def test_pictures_scale_by_type_maximum(tmp_path, name, bits, tolerance):
    result = read_radiograph(write_picture(tmp_path / name, bits=bits))
    assert np.abs(result.pixels - PHANTOM).max() <= tolerance + 1e-6
    assert np.abs(result.pixels - PHANTOM).mean() < 0.02
    assert result.metadata["photometric"] == "L" and result.metadata["bits_stored"] == bits
    assert result.metadata["voi"] == "none-fullrange" and result.metadata["inverted"] is False
    assert result.view is None and result.spacing_mm is None


def test_dark_16bit_png_is_not_stretched(tmp_path):
    # Scaling by the type maximum (not min..max) keeps a 12-bit image stored in a 16-bit PNG dim.
    path = tmp_path / "dim.png"
    Image.fromarray(np.rint(PHANTOM * 4095).astype(np.uint16)).save(path)
    np.testing.assert_allclose(read_radiograph(path).pixels, np.rint(PHANTOM * 4095) / 65535, atol=1e-6)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_colour_pictures_become_gray_with_warning(tmp_path, mode):
    result = read_radiograph(write_picture(tmp_path / "c.png", mode=mode))
    np.testing.assert_allclose(result.pixels, PHANTOM, atol=1.01 / 255)
    assert result.metadata["photometric"] == mode
    assert any(f"{mode} image converted to grayscale" in w for w in result.warnings)


def test_multipage_tiff_is_refused(tmp_path):
    path = tmp_path / "pages.tif"
    page = Image.fromarray(np.rint(PHANTOM * 255).astype(np.uint8))
    page.save(path, save_all=True, append_images=[page])
    with pytest.raises(InputError, match="holds 2 images"):
        read_radiograph(path)


@pytest.mark.parametrize("name", ["a.nrrd", "a.mha", "a.nii", "a.nii.gz"])
@pytest.mark.parametrize("as_3d_slice", [False, True], ids=["2d", "3d-one-slice"])
def test_volume_formats_holding_one_image(tmp_path, name, as_3d_slice):
    result = read_radiograph(write_sitk_image(tmp_path / name, spacing_mm=(0.5, 0.4), as_3d_slice=as_3d_slice))
    np.testing.assert_allclose(result.pixels, PHANTOM, atol=0.5 / 65535 + 1e-6)
    assert result.spacing_mm == pytest.approx((0.5, 0.4))
    assert result.metadata["spacing_source"] == "header"
    assert (
        result.metadata["format"] == {"nrrd": "nrrd", "mha": "mha", "nii": "nifti", "gz": "nifti"}[name.split(".")[-1]]
    )


def test_float_image_is_min_max_scaled(tmp_path):
    path = tmp_path / "f.nrrd"
    image = sitk.GetImageFromArray((PHANTOM * 300.0 - 50.0).astype(np.float32))
    sitk.WriteImage(image, str(path))
    result = read_radiograph(path)
    np.testing.assert_allclose(result.pixels, PHANTOM, atol=1e-5)
    assert result.metadata["voi"] == "none-minmax"


# --------------------------------------------------------------------------------------------------
# Bad inputs and size limits


def test_every_bad_input_is_a_one_line_input_error(tmp_path):
    corpus = bad_input_corpus(tmp_path / "bad")
    assert {
        "truncated_dicom",
        "text_as_dicom",
        "empty_file",
        "ct_volume",
        "multiframe_dicom",
        "tiny_image",
        "huge_header_dicom",
        "huge_header_png",
        "unsupported_extension",
    } <= set(corpus)
    expected = {
        "truncated_dicom": "truncated",
        "text_as_dicom": "not a DICOM file",
        "empty_file": "empty file",
        "ct_volume": "holds a 3D volume (40 x 40 x 40 voxels), not a radiograph",
        "multiframe_dicom": "multi-frame",
        "tiny_image": "too small",
        "huge_header_dicom": "too large",
        "huge_header_png": "too large",
        "unsupported_extension": "unsupported file type '.bmp'",
    }
    for name, path in corpus.items():
        with pytest.raises(InputError) as err:
            read_radiograph(path)
        message = str(err.value)
        assert "\n" not in message, name
        assert path.name in message, name
        assert expected[name] in message, name


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_radiograph(tmp_path / "nope.dcm")
    with pytest.raises(InputError, match="is a folder"):
        read_radiograph(tmp_path)


def test_corrupt_png_is_input_error(tmp_path):
    path = write_picture(tmp_path / "cut.png")
    path.write_bytes(path.read_bytes()[:-60])
    with pytest.raises(InputError, match="corrupt or truncated PNG"):
        read_radiograph(path)
    text = tmp_path / "text.png"
    text.write_text("not an image")
    with pytest.raises(InputError, match="not a readable PNG image"):
        read_radiograph(text)


def _no_decode(*args, **kwargs):
    raise AssertionError("pixel data must not be decoded for an image refused by its header")


@pytest.mark.parametrize(
    "header_size, problem",
    [
        ((65535, 65535), "too large"),
        ((MAX_SIDE_PX + 1, 40), "too large"),
        ((11000, 10000), "too large"),  # each side allowed, but over MAX_PIXELS
        ((MIN_SIDE_PX - 1, 500), "too small"),
    ],
)
def test_dicom_size_checked_from_header_before_decoding(tmp_path, monkeypatch, header_size, problem):
    assert header_size[0] * header_size[1] > MAX_PIXELS or max(header_size) > MAX_SIDE_PX or problem == "too small"
    path = write_dx(tmp_path / "h.dcm", header_size=header_size)
    monkeypatch.setattr(radiograph_module, "pixel_array", _no_decode)
    start = time.perf_counter()
    with pytest.raises(InputError, match=problem):
        read_radiograph(path)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize(
    "size, problem",
    [
        ((100000, 100000), "too large"),
        ((MAX_SIDE_PX + 1, 64), "too large"),
        ((5000, 7000), "corrupt or truncated"),
        ((16, 64), "too small"),
    ],
)
def test_png_size_checked_before_load(tmp_path, monkeypatch, size, problem):
    path = write_png_header_only(tmp_path / "h.png", *size)
    if problem != "corrupt or truncated":  # 5000 x 7000 passes the limits and must reach (a failing) load
        monkeypatch.setattr(ImageFile.ImageFile, "load", _no_decode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning (> ~89 Mpx) must not escape
        with pytest.raises(InputError, match=problem):
            read_radiograph(path)


def test_volume_size_checked_from_header(tmp_path, monkeypatch):
    path = write_sitk_image(tmp_path / "small.nrrd", rows=20, cols=64)
    monkeypatch.setattr(sitk.ImageFileReader, "Execute", _no_decode)
    with pytest.raises(InputError, match="too small"):
        read_radiograph(path)


def test_smallest_accepted_image(tmp_path):
    result = read_radiograph(write_picture(tmp_path / "min.png", rows=MIN_SIDE_PX, cols=MIN_SIDE_PX))
    assert result.pixels.shape == (MIN_SIDE_PX, MIN_SIDE_PX)


def test_truncated_dicom_names_sizes(tmp_path):
    path = write_dicom(tmp_path / "t.dcm")
    data = path.read_bytes()
    Path(path).write_bytes(data[:-100])
    with pytest.raises(InputError, match=r"truncated DICOM: pixel data is \d+ bytes, the header needs 15360"):
        read_radiograph(path)


def test_invalid_window_is_input_error(tmp_path):
    with pytest.raises(InputError, match="invalid modality LUT or VOI"):
        read_radiograph(write_dx(tmp_path / "w0.dcm", window=(100.0, 0.0)))
