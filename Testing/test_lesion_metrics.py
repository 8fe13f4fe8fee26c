"""Lesion metrics (x2ct.evaluate.lesion_metrics) on painted lesions with hand-computed shells, mask resampling,
the case bootstrap and the Wilson interval of the summary, and ``x2ct evaluate-generator`` on a tiny synthetic
benchmark (four 64³ cases built once for the module) with a template model that returns one case's own CT."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Dict, List, Tuple

import h5py
import numpy as np
import pytest
import torch
from scipy import ndimage

from x2ct.cli import main
from x2ct.data.loader import ct_to_unit
from x2ct.evaluate import lesion_metrics as lm
from x2ct.evaluate.classifier_stats import wilson_interval
from x2ct.models.checkpoints import save_generator
from x2ct.models.xprospect import TemplateConfig, TemplateGenerator

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 64
"""Model grid of the painted tests: 5 mm voxels, so the 5 mm shell is one voxel (a 6-neighbour cross)."""

LUNG_HU, NODULE_HU = -850.0, 40.0


def _lung(seed: int = 0) -> np.ndarray:
    """A 64³ lung-like background: -850 HU with seeded noise (sigma 10 HU), float32."""
    rng = np.random.default_rng(seed)
    return (LUNG_HU + rng.normal(0.0, 10.0, (SIZE,) * 3)).astype(np.float32)


def _sphere(centre: Tuple[int, int, int], radius: float) -> np.ndarray:
    d, h, w = np.ogrid[:SIZE, :SIZE, :SIZE]
    return (d - centre[0]) ** 2 + (h - centre[1]) ** 2 + (w - centre[2]) ** 2 <= radius**2


def _shell(mask: np.ndarray, all_lesions: np.ndarray) -> np.ndarray:
    """By hand: one 6-connected dilation step (5 mm at 5 mm voxels) less every lesion voxel."""
    return ndimage.binary_dilation(mask, ndimage.generate_binary_structure(3, 1)) & ~all_lesions


def _painted(seed: int = 0) -> Tuple[np.ndarray, np.ndarray, float]:
    """(real CT with a 40 HU ball of radius 3 voxels at the centre, its mask, the mean of its shell)."""
    mask = _sphere((32, 32, 32), 3)
    real = _lung(seed)
    real[mask] = NODULE_HU
    return real, mask, float(real[_shell(mask, mask)].mean(dtype=np.float64))


# ----------------------------------------------------------------------------------------------- one lesion


def test_reproduced_lesion_has_relative_contrast_one_and_shows():
    real, mask, surround = _painted()
    (lesion,) = lm.measure_case("a", real, real.copy(), {"solid_nodule": mask})
    assert (lesion.case_id, lesion.kind, lesion.index, lesion.voxels) == ("a", "solid_nodule", 1, int(mask.sum()))
    assert lesion.shell_voxels == int(_shell(mask, mask).sum())
    assert lesion.real_inside_hu == pytest.approx(NODULE_HU)
    assert lesion.real_surround_hu == pytest.approx(surround, abs=1e-9)
    assert lesion.real_contrast_hu == pytest.approx(NODULE_HU - surround, abs=1e-9)
    assert lesion.relative_contrast == 1.0 and lesion.shows is True
    assert lesion.diameter_mm == pytest.approx((6 * mask.sum() / math.pi) ** (1 / 3) * 5.0)
    assert (lesion.centroid_d, lesion.centroid_h, lesion.centroid_w) == (32.0, 32.0, 32.0)


def test_missing_lesion_has_relative_contrast_zero_and_does_not_show():
    real, mask, surround = _painted()
    without = real.copy()
    without[mask] = surround  # the lesion replaced by its surroundings' values
    (lesion,) = lm.measure_case("a", real, without, {"solid_nodule": mask})
    assert abs(lesion.synthetic_contrast_hu) < 1e-3 and abs(lesion.relative_contrast) < 1e-5
    assert lesion.shows is False


def test_half_strength_lesion_has_relative_contrast_one_half():
    real, mask, surround = _painted()
    half = real.copy()
    half[mask] = surround + 0.5 * (NODULE_HU - surround)
    (lesion,) = lm.measure_case("a", real, half, {"solid_nodule": mask})
    assert lesion.relative_contrast == pytest.approx(0.5, abs=1e-6) and lesion.shows is True


@pytest.mark.parametrize(("fraction", "expected"), [(0.26, True), (0.24, False), (-1.0, False), (3.0, True)])
def test_shows_means_same_sign_and_a_quarter_of_the_real_contrast(fraction, expected):
    real, mask, surround = _painted()
    pred = real.copy()
    pred[mask] = surround + fraction * (NODULE_HU - surround)
    (lesion,) = lm.measure_case("a", real, pred, {"solid_nodule": mask})
    assert lesion.relative_contrast == pytest.approx(fraction, abs=1e-6) and lesion.shows is expected


def test_two_components_are_two_lesions_and_shells_exclude_every_lesion():
    real = _lung(1)
    nodules = _sphere((20, 20, 20), 2) | _sphere((40, 40, 40), 2)
    granuloma = _sphere((20, 20, 24), 1)  # touches the first nodule (kinds are measured apart)
    real[nodules] = NODULE_HU
    real[granuloma] = 900.0
    assert not (nodules & granuloma).any() and (_shell(nodules, nodules) & granuloma).any()
    lesions = lm.measure_case("b", real, real, {"solid_nodule": nodules, "calcified_granuloma": granuloma})
    expected = [("solid_nodule", 1), ("solid_nodule", 2), ("calcified_granuloma", 1)]
    assert [(x.kind, x.index) for x in lesions] == expected
    every = nodules | granuloma
    for lesion, centre, radius in zip(lesions, [(20, 20, 20), (40, 40, 40), (20, 20, 24)], [2, 2, 1]):
        own = _sphere(centre, radius)
        shell = _shell(own, every)
        assert lesion.voxels == int(own.sum()) and lesion.shell_voxels == int(shell.sum())
        assert lesion.real_surround_hu == pytest.approx(float(real[shell].mean(dtype=np.float64)), abs=1e-9)
        assert lesion.real_surround_hu < -800  # no 40 or 900 HU lesion voxel in any shell
    assert lesions[0].shell_voxels < lesions[1].shell_voxels  # the granuloma took part of the first one's shell
    corners = np.zeros((SIZE,) * 3, dtype=bool)
    corners[10, 10, 10] = corners[11, 11, 11] = True  # touching at a corner: one lesion (26-connectivity)
    (lesion,) = lm.measure_case("b", real, real, {"miliary": corners})
    assert lesion.voxels == 2


def test_lesion_below_the_minimum_real_contrast_has_no_relative_contrast_and_is_left_out():
    real, mask, _ = _painted()
    faint = _sphere((15, 45, 45), 2)
    real[faint] = 0.0
    faint_surround = float(real[_shell(faint, mask | faint)].mean(dtype=np.float64))
    real[faint] = faint_surround + 30.0  # |real contrast| 30 HU < 50 HU
    pred = real.copy()
    pred[faint] = 1000.0  # a ratio of about 60 if it were counted
    lesions = lm.measure_case("c", real, pred, {"solid_nodule": mask, "consolidation": faint})
    strong, weak = lesions
    assert weak.real_contrast_hu == pytest.approx(30.0, abs=1e-4)
    assert weak.relative_contrast is None and weak.shows is None
    summary = lm.summarize_lesions(lesions)
    assert (summary.overall.n_lesions, summary.overall.n_usable, summary.overall.n_show) == (2, 1, 1)
    assert summary.overall.relative_contrast_mean == 1.0 and summary.overall.show_fraction == 1.0
    assert summary.overall.real_contrast_mean_hu == pytest.approx(strong.real_contrast_hu)
    assert summary.by_kind["consolidation"].n_usable == 0
    assert summary.by_kind["consolidation"].relative_contrast_mean is None


# ----------------------------------------------------------------------------------------------- resampling


def test_resampling_128_to_64_keeps_a_two_voxel_lesion():
    inside = np.zeros((128,) * 3, dtype=bool)
    inside[10, 10, 10] = inside[10, 10, 11] = True  # 2 of the 8 voxels of model voxel (5, 5, 5)
    assert np.argwhere(lm.resample_mask(inside, 64)).tolist() == [[5, 5, 5]]
    across = np.zeros((128,) * 3, dtype=bool)
    across[11, 11, 11] = across[12, 11, 11] = True  # one voxel in each of two model voxels
    assert np.argwhere(lm.resample_mask(across, 64)).tolist() == [[5, 5, 5], [6, 5, 5]]
    real = _lung()
    (lesion,) = lm.measure_case("d", real, real, {"calcification_flecks": inside})
    assert lesion.voxels == 1 and (lesion.centroid_d, lesion.centroid_h, lesion.centroid_w) == (5.0, 5.0, 5.0)


def test_resampling_takes_the_majority_of_covered_voxels():
    stored = np.zeros((8, 8, 8), dtype=bool)
    stored[:5, :5, :5] = True  # model voxels with an index 2 get 4 of 8 (one such index) or fewer (two or three)
    expected = np.zeros((4, 4, 4), dtype=bool)
    index = np.indices((3, 3, 3))
    expected[:3, :3, :3] = (index == 2).sum(axis=0) <= 1
    assert np.array_equal(lm.resample_mask(stored, 4), expected)
    assert np.array_equal(lm.resample_mask(expected, 8), expected.repeat(2, 0).repeat(2, 1).repeat(2, 2))
    with pytest.raises(ValueError, match="divide"):
        lm.resample_mask(np.zeros((6, 6, 6), dtype=bool), 4)


# ----------------------------------------------------------------------------------------------- summary


def _lesion(case_id: str, kind: str, relative: float) -> lm.Lesion:
    """A one-voxel lesion with a real contrast of 100 HU over a -100 HU shell and ``relative`` of it synthetic."""
    return lm.Lesion(
        case_id=case_id, kind=kind, index=1, voxels=1, diameter_mm=6.2, centroid_d=0.0, centroid_h=0.0,
        centroid_w=0.0, real_inside_hu=0.0, synthetic_inside_hu=-100.0 + 100.0 * relative, shell_voxels=6,
        real_surround_hu=-100.0, synthetic_surround_hu=-100.0, real_contrast_hu=100.0,
        synthetic_contrast_hu=100.0 * relative, relative_contrast=relative, shows=relative >= lm.SHOWS_FRACTION,
    )  # fmt: skip


def _cohort() -> List[lm.Lesion]:
    rng = np.random.default_rng(5)
    lesions = []
    for case in range(8):
        kind = "solid_nodule" if case % 2 else "cavity"
        lesions += [_lesion(f"case{case}", kind, float(rng.uniform(-0.2, 1))) for _ in range(int(rng.integers(1, 5)))]
    return lesions


def test_bootstrap_ci_is_seeded_and_contains_the_mean():
    lesions = _cohort()
    first, second = lm.summarize_lesions(lesions), lm.summarize_lesions(list(lesions))
    assert first == second
    pool = first.overall
    assert pool.n_usable == len(lesions) and pool.n_cases == 8
    mean = float(np.mean([x.relative_contrast for x in lesions]))
    assert pool.relative_contrast_mean == pytest.approx(mean)
    assert pool.relative_contrast_ci_low < mean < pool.relative_contrast_ci_high
    assert (pool.show_ci_low, pool.show_ci_high) == wilson_interval(pool.n_show, pool.n_usable)
    assert pool.n_show == sum(x.relative_contrast >= 0.25 for x in lesions)
    assert set(first.by_kind) == {"cavity", "solid_nodule"}
    assert sum(p.n_lesions for p in first.by_kind.values()) == len(lesions)
    other_seed = lm.bootstrap_mean_ci([[x.relative_contrast] for x in lesions], seed=1)
    assert other_seed != lm.bootstrap_mean_ci([[x.relative_contrast] for x in lesions])


def test_bootstrap_resamples_cases_not_lesions():
    # Case A: 100 lesions at 0; case B: 1 lesion at 1. Drawing two cases gives B twice a quarter of the time
    # (mean 1), so the upper bound is 1; drawing lesions would put it near 0.03.
    groups = [[0.0] * 100, [1.0]]
    low, high = lm.bootstrap_mean_ci(groups)
    assert low == 0.0 and high == 1.0
    assert lm.bootstrap_mean_ci([[0.5, 0.7]]) is None  # one case: no interval


# ----------------------------------------------------------------------------------------------- evaluate-generator


def run_cli(*args: object) -> Tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def _evaluate(model: Path, data: Path, out: Path) -> Tuple[int, str, str]:
    return run_cli("evaluate-generator", "--model", model, "--data", data, "--split", "all", "-o", out,
                   "--device", "cpu")  # fmt: skip


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lesion_data") / "data"
    code, _, stderr = run_cli("build-dataset", "--synthetic-from", "sample", "--cases", "4", "--seed", "7", "--size",
                              "64", out)  # fmt: skip
    assert code == 0, stderr
    return out


@pytest.fixture(scope="module")
def template(benchmark, tmp_path_factory) -> Path:
    """A template model whose output is case synth-s7-00003's own ground truth (64³, two views)."""
    with h5py.File(benchmark / "synth-s7-00003" / "ct_xray_data.h5", "r") as f:
        unit = ct_to_unit(f["ct"][...], SIZE)
    net = TemplateGenerator(TemplateConfig(SIZE, 2))
    net.set_prior(torch.from_numpy(unit))
    folder = tmp_path_factory.mktemp("template") / "model"
    save_generator(net, folder)
    return folder


def _components(data: Path) -> Dict[str, int]:
    """Case id -> lesions counted independently: 26-connected components of every non-empty stored mask."""
    counts = {}
    for path in sorted(data.glob("*/ct_xray_data.h5")):
        with h5py.File(path, "r") as f:
            masks = [f["lesions"][kind][...] > 0 for kind in f["lesions"]]
        total = sum(ndimage.label(m, np.ones((3, 3, 3)))[1] for m in masks)
        if total:
            counts[path.parent.name] = total
    return counts


def test_evaluate_generator_writes_lesion_rows_and_summary(benchmark, template, tmp_path):
    out = tmp_path / "eval"
    code, stdout, stderr = _evaluate(template, benchmark, out)
    assert code == 0, stderr
    section = json.loads((out / "metrics_summary.json").read_text())["lesions"]
    with open(out / lm.CSV_NAME, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert tuple(reader.fieldnames or ()) == lm.CSV_COLUMNS and lm.CSV_COLUMNS[0] == "case_id"
    pool = section["overall"]
    expected = _components(benchmark)  # stored 64³ = model 64³: no resampling
    assert len(expected) >= 2 and "synth-s7-00001" not in expected  # case 1 is a normal case
    assert {c: sum(r["case_id"] == c for r in rows) for c in expected} == expected
    assert len(rows) == pool["n_lesions"] == sum(expected.values()) and section["n_cases"] == len(expected)
    usable = [r for r in rows if r["relative_contrast"]]
    assert pool["n_usable"] == len(usable) and pool["n_show"] == sum(r["shows"] == "1" for r in usable)
    assert all(r["shows"] == "" for r in rows if not r["relative_contrast"])
    assert pool["relative_contrast_mean"] == pytest.approx(np.mean([float(r["relative_contrast"]) for r in usable]))
    assert sum(p["n_lesions"] for p in section["by_kind"].values()) == len(rows)
    assert section["protocol"]["version"] == lm.PROTOCOL_VERSION and section["shell_radius_voxels"] == 1
    assert section["constants"]["min_real_contrast_hu"] == lm.MIN_REAL_CONTRAST_HU
    # the template returns case 3's own CT: its lesions are reproduced exactly
    own = [r for r in usable if r["case_id"] == "synth-s7-00003"]
    assert own and all(r["relative_contrast"] == "1.0" and r["shows"] == "1" for r in own)
    assert all(r["real_contrast_hu"] == r["synthetic_contrast_hu"] for r in rows if r["case_id"] == "synth-s7-00003")
    line = next(x for x in stdout.splitlines() if x.startswith("lesions: "))
    assert f"{len(usable)} of {len(rows)} with |real contrast| >= 50 HU (all split)" in line
    assert f"{pool['n_show']}/{len(usable)} show" in line


def test_data_without_masks_writes_no_lesion_metrics(benchmark, template, tmp_path):
    out = tmp_path / "eval"
    assert _evaluate(template, benchmark, out)[0] == 0 and (out / lm.CSV_NAME).is_file()
    plain = tmp_path / "plain"
    shutil.copytree(benchmark, plain)
    for path in plain.glob("*/ct_xray_data.h5"):
        with h5py.File(path, "r+") as f:
            del f["lesions"]  # as a data set built from real CTs
    code, stdout, stderr = _evaluate(template, plain, out)  # into the same folder: the earlier table goes
    assert code == 0, stderr
    assert not (out / lm.CSV_NAME).exists()
    assert "lesions" not in json.loads((out / "metrics_summary.json").read_text())
    assert "lesions:" not in stdout and "4 cases: MAE body" in stdout


def test_malformed_lesion_mask_is_one_line_error(benchmark, template, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(benchmark, bad)
    with h5py.File(bad / "synth-s7-00000" / "ct_xray_data.h5", "r+") as f:
        del f["lesions/pulmonary_embolism"]
        f["lesions/pulmonary_embolism"] = np.ones((10, 10, 10), dtype=np.uint8)
    code, _, stderr = _evaluate(template, bad, tmp_path / "eval")
    last = stderr.strip().splitlines()[-1]  # after the progress bar
    assert code == 2 and last.startswith("x2ct: error: ") and "Traceback" not in stderr
    assert "lesions/pulmonary_embolism has shape (10, 10, 10), expected a cube with edges of 64, 128, 256" in last
    assert not (tmp_path / "eval").exists()
