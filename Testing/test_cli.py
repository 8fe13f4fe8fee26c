"""The x2ct command line: --version, info, convert, drr, the one-line error contract (predict, demo: test_predict)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

import x2ct
from radiograph_factory import bad_input_corpus, write_dx
from x2ct.cli import main
from x2ct.errors import InputError
from x2ct.io import read_radiograph


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """Run the installed console entry point in a fresh interpreter, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "x2ct.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_version_matches_package():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"x2ct {x2ct.__version__}"


def test_info_radiograph_json_has_the_documented_keys(tmp_path: Path):
    pixels = np.zeros((256, 200), np.uint8)
    pixels[:, 90:110] = 250  # a bright "spine" column
    path = tmp_path / "chest.png"
    Image.fromarray(pixels).save(path)
    result = run_cli("info", str(path), "--json", "--view", "pa")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["kind"] == "radiograph"
    for key in ("size", "spacing_mm", "view", "photometric", "inverted", "body_part", "transfer_syntax"):
        assert key in data
    assert data["size"] == [256, 200]
    assert data["view"] == "PA"
    assert data["spacing_mm"] is None  # a PNG carries no physical spacing


def test_info_dicom_radiograph_reports_tags(tmp_path: Path):
    path = write_dx(
        tmp_path / "dx.dcm",
        photometric="MONOCHROME1",
        presentation_lut_shape="INVERSE",
        view_position="LL",
        imager_pixel_spacing=(0.15, 0.15),
        magnification=1.5,
        transfer_syntax="1.2.840.10008.1.2.5",  # RLE Lossless
    )
    result = run_cli("info", str(path), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["view"] == "LATERAL"
    assert data["photometric"] == "MONOCHROME1" and data["inverted"] is True
    assert data["body_part"] == "CHEST"
    assert data["spacing_mm"] == pytest.approx([0.1, 0.1])
    assert "RLE" in data["transfer_syntax"]


def test_info_ct_json_has_the_documented_keys(sample_ct_path: Path, capsys):
    assert main(["info", str(sample_ct_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kind"] == "ct"
    assert data["size"] == [144, 144, 133]
    assert data["spacing_mm"] == pytest.approx([2.5, 2.5, 2.5])
    assert len(data["direction"]) == 9
    low, high = data["hu_range"]
    assert low <= -1000 and high >= 1000  # air and bone are present in a real chest CT


def test_info_text_output_is_readable(sample_ct_path: Path, capsys):
    assert main(["info", str(sample_ct_path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["kind", "ct"]


def test_convert_to_canonical_grid(sample_ct_path: Path, tmp_path: Path):
    out = tmp_path / "canonical.nrrd"
    assert main(["convert", str(sample_ct_path), str(out), "--canonical", "--size", "64"]) == 0
    image = sitk.ReadImage(str(out))
    assert image.GetSize() == (64, 64, 64)
    assert image.GetSpacing() == pytest.approx((5.0, 5.0, 5.0))
    assert image.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, -1))
    assert [p.name for p in tmp_path.iterdir()] == ["canonical.nrrd"]  # no temporary files left


def test_convert_preview_draws_three_planes(sample_ct_path: Path, tmp_path: Path):
    args = ["convert", str(sample_ct_path), str(tmp_path / "c.nrrd"), "--canonical", "--size", "64"]
    assert main([*args, "--preview", str(tmp_path / "p.png")]) == 0
    with Image.open(tmp_path / "p.png") as picture:
        assert picture.size == (3 * 256, 24 + 256)
    assert main(["convert", str(sample_ct_path), str(tmp_path / "d.nrrd"), "--preview", str(tmp_path / "q.png")]) == 2
    assert not (tmp_path / "d.nrrd").exists() and not (tmp_path / "q.png").exists()


@pytest.mark.parametrize(
    "name",
    [
        "truncated_dicom",
        "text_as_dicom",
        "empty_file",
        "ct_volume",
        "multiframe_dicom",
        "tiny_image",
        "huge_header_dicom",
        "huge_header_png",
        "unsupported_extension",
    ],
)
def test_bad_input_gives_one_line_exit_2_and_no_output(name: str, tmp_path: Path):
    corpus = bad_input_corpus(tmp_path / "bad")
    bad = corpus[name]
    if name == "ct_volume":
        # A CT is a valid input for `info` and `convert`; it is bad where a radiograph is expected,
        # which `info --view` declares.
        result = run_cli("info", str(bad), "--view", "PA")
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"x2ct: error: {bad}: ")
        assert "not a radiograph" in result.stderr and "Traceback" not in result.stderr
        with pytest.raises(InputError) as err:
            read_radiograph(bad)
        assert str(err.value).startswith(f"{bad}: ") and "\n" not in str(err.value)
        return
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = run_cli("info", str(bad), "--json")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"x2ct: error: {bad}: ")
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    result = run_cli("convert", str(bad), str(out_dir / "x.nrrd"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert list(out_dir.iterdir()) == []


def test_missing_file_is_a_user_error(tmp_path: Path, capsys):
    missing = tmp_path / "nope.dcm"
    assert main(["info", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"x2ct: error: {missing}: ") and "\n" not in err


def test_convert_unknown_output_format_is_a_user_error(sample_ct_path: Path, tmp_path: Path, capsys):
    assert main(["convert", str(sample_ct_path), str(tmp_path / "ct.xyz")]) == 2
    assert "x2ct: error:" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage:" in capsys.readouterr().out


def test_drr_writes_16_bit_pngs_and_nrrds(sample_ct_path: Path, tmp_path: Path):
    out = tmp_path / "drr"
    args = ["drr", str(sample_ct_path), "-o", str(out), "--size", "32", "--sid", "1000", "--detector-mm", "400"]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["lateral.nrrd", "lateral.png", "pa.nrrd", "pa.png"]
    with Image.open(out / "pa.png") as png:
        assert png.mode.startswith("I;16") and png.size == (32, 32)
    nrrd = sitk.ReadImage(str(out / "pa.nrrd"))
    assert nrrd.GetSpacing() == pytest.approx((400 / 32, 400 / 32))
    normal = tmp_path / "normal.txt"
    normal.write_text("x")  # outputs get the permissions of a normal create, not mkstemp's private 0600
    assert (out / "pa.png").stat().st_mode & 0o777 == normal.stat().st_mode & 0o777


def test_drr_rejects_impossible_geometry(sample_ct_path: Path, tmp_path: Path, capsys):
    assert main(["drr", str(sample_ct_path), "-o", str(tmp_path / "drr"), "--sid", "100"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("x2ct: error: ") and "\n" not in err
    assert not (tmp_path / "drr").exists()


def test_convert_checkpoint_official_pth_to_safetensors(tmp_path: Path):
    import torch

    from x2ct.models.checkpoints import load_generator
    from x2ct.models.x2ct_gan import GeneratorConfig, X2CTSingleView

    torch.manual_seed(0)
    model = X2CTSingleView(GeneratorConfig(grid_size=64, width=0.0625)).eval()
    official = tmp_path / "30_net_G.pth"
    torch.save({"iters": 1, "epoch": 30, "lr": 2e-4, "state_dict": model.state_dict()}, official)
    out = tmp_path / "converted.safetensors"
    result = run_cli("convert-checkpoint", str(official), str(out))
    assert result.returncode == 0, result.stderr
    converted = load_generator(out)
    pa = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(converted(pa), model(pa))


def test_convert_checkpoint_refuses_a_pickle_with_code(tmp_path: Path):
    import pickle

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"state_dict": Payload()}))
    result = run_cli("convert-checkpoint", str(evil), str(tmp_path / "out.safetensors"))
    assert result.returncode == 2
    assert "this must never run" not in result.stdout
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith(f"x2ct: error: {evil}: ")
    assert not (tmp_path / "out.safetensors").exists()


def test_shared_options_are_declared_once_with_their_defaults():
    from x2ct.cli import build_parser
    from x2ct.drr import DRRGeometry

    parser = build_parser()
    geometry = (DRRGeometry.sad_mm, DRRGeometry.sid_mm, DRRGeometry.detector_mm)
    for command in (["drr", "ct.nii", "-o", "out"], ["build-dataset", "out"]):
        args = parser.parse_args(command)
        assert (args.sad, args.sid, args.detector_mm) == geometry
    devices = {
        "drr": (["ct.nii", "-o", "out"], "cpu"),
        "predict": (["-o", "out"], "auto"),
        "demo": ([], "auto"),
        "synthesize-ct": (["--model", "m", "--data", "d", "-o", "out"], "auto"),
        "evaluate-generator": (["--model", "m", "--data", "d", "-o", "out"], "auto"),
        "evaluate-classifier": (["--model", "m", "--data", "d", "-o", "out"], "auto"),
        "train-generator": ([], None),  # the config file's default
        "train-classifier": ([], None),
    }
    for command, (rest, default) in devices.items():
        assert parser.parse_args([command, *rest]).device == default, command
    assert parser.parse_args(["drr", "ct.nii", "-o", "out", "--device", "cuda:1"]).device == "cuda:1"


def test_under_torchrun_errors_name_the_rank_and_single_process_commands_refuse(
    sample_ct_path: Path, tmp_path: Path, capsys, monkeypatch
):
    import x2ct.inference
    from x2ct.distributed import PeerFailure

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    for args in (["info", str(sample_ct_path)], ["predict", "--pa", "x.png", "-o", str(tmp_path / "p")]):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"x2ct: error: rank 1: {args[0]}") and "one process" in err and "\n" not in err
    manifest = tmp_path / "missing.csv"
    assert main(["predict", "--manifest", str(manifest), "-o", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"x2ct: error: rank 1: {manifest}: manifest file not found"

    def peer_gone(*args, **kwargs):
        raise PeerFailure("gathering results failed: another rank stopped or cannot be reached (closed)")

    monkeypatch.setattr(x2ct.inference, "predict_manifest", peer_gone)
    assert main(["predict", "--manifest", str(manifest), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("x2ct: error: rank 1: gathering results failed") and "\n" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "p").exists()
