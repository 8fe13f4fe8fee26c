"""The out-of-distribution warning (x2ct.inference.ood) and its calibration (x2ct calibrate-ood), at a tiny size:
a reference from the DRRs of a 10-case synthetic data set, clinical radiographs simulated from its test split."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
from scipy import ndimage

from x2ct.cli import main
from x2ct.data.radiograph_folder import read_radiograph_folder
from x2ct.errors import InputError
from x2ct.inference.models import load_model
from x2ct.inference.ood import FEATURES, OODReference, ViewReference, image_features, ledoit_wolf, ood_score
from x2ct.inference.ood_calibration import drr_cases
from x2ct.inference.preprocess import preprocess, read_input
from x2ct.inference.types import PreparedView
from x2ct.models.checkpoints import build_generator, save_generator
from x2ct.views import LATERAL, PA

pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(*args: object) -> Tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def domain(tmp_path_factory) -> Dict[str, Path]:
    """A 10-case 64 px synthetic data set (6 train, 2 val, 2 test), clinical radiographs simulated from its test
    split and a tiny untrained biplanar generator of the data's input size (the reference ignores its weights)."""
    root = tmp_path_factory.mktemp("ood")
    code, _, stderr = run_cli("build-dataset", "--synthetic-from", "sample", "--cases", "10", "--seed", "3",
                              "--size", "64", "--split", "0.6,0.2,0.2", root / "data")  # fmt: skip
    assert code == 0, stderr
    code, _, stderr = run_cli("simulate-radiographs", "--data", root / "data", "--split", "test", "--seed", "1",
                              "-o", root / "simulated")  # fmt: skip
    assert code == 0, stderr
    net = build_generator("x2ct_gan_biplanar", {"grid_size": 64, "width": 0.0625})
    save_generator(net, root / "model")
    return {"data": root / "data", "simulated": root / "simulated", "model": root / "model"}


def prepared(path: Path, view: str, model) -> PreparedView:
    return preprocess(read_input(path, view), model.spec)


def test_ledoit_wolf_shrinks_towards_the_scaled_identity():
    rng = np.random.default_rng(0)
    few = rng.normal(size=(6, 16))
    covariance, shrinkage = ledoit_wolf(few - few.mean(axis=0))
    assert 0 < shrinkage <= 1 and np.all(np.linalg.eigvalsh(covariance) > 0)  # invertible though n < p
    mixed = rng.normal(size=(4000, 3)) @ np.array([[1.0, 0.9, 0.0], [0.0, 0.4, 0.0], [0.0, 0.0, 1.0]])
    covariance, shrinkage = ledoit_wolf(mixed - mixed.mean(axis=0))
    assert shrinkage < 0.01 and covariance[0, 1] == pytest.approx(0.9, abs=0.05)  # plenty of data: ~no shrinkage
    reference = ViewReference.fit(rng.normal(size=(50, len(FEATURES))))
    near, far = reference.distance(reference.mean), reference.distance(reference.mean + 5 * reference.scale)
    assert near == pytest.approx(0.0) and far > 5


def test_features_see_edge_enhancement_tone_and_borders():
    y, x = np.mgrid[0:64, 0:64] / 63.0
    image = 0.2 + 0.6 * np.exp(-((x - 0.5) ** 2 + (y - 0.5) ** 2) / 0.1) * (1 + 0.2 * np.sin(40 * x))
    base = dict(zip(FEATURES, image_features(image)))
    sharpened = np.clip(image + 2.0 * (image - ndimage.gaussian_filter(image, 2.0)), 0, 1)  # unsharp masking
    sharp = dict(zip(FEATURES, image_features(sharpened)))
    toned = dict(zip(FEATURES, image_features(image**0.5)))  # a brighter tone curve
    framed = image.copy()
    framed[:, :6] = framed[:, -6:] = 1.0  # collimator shutters shown white
    border = dict(zip(FEATURES, image_features(framed)))
    assert sharp["log_band_energy_1_2px"] > base["log_band_energy_1_2px"] + 0.5
    assert toned["quantile_0.5"] > base["quantile_0.5"] + 0.1
    assert border["border_mean"] > base["border_mean"] + 0.3 and border["fraction_white"] > 0.15


def test_no_reference_means_no_score(domain):
    model = load_model(str(domain["model"]))
    case = read_radiograph_folder(domain["simulated"], (PA, LATERAL))[0]
    views = {view: prepared(case.files[view], view, model) for view in (PA, LATERAL)}
    assert ood_score(model, views) is None


def test_calibrate_ood_writes_the_reference_and_scores_simulated_radiographs_higher(domain, tmp_path):
    code, stdout, stderr = run_cli("calibrate-ood", "--model", domain["model"], "--data", domain["data"],
                                   "--simulated", domain["simulated"])  # fmt: skip
    assert code == 0, stderr
    path = domain["model"] / "ood_reference.json"
    assert f"wrote {path}" in stdout and "detected simulated radiographs" in stdout
    record = json.loads(path.read_text())
    assert record["features"] == list(FEATURES) and set(record["views"]) == {PA, LATERAL}
    calibration = record["calibration"]
    assert calibration["reference"]["cases"] == 6 and calibration["heldout"]["cases"] == 4
    assert calibration["simulated"]["detection"]["n"] == 2

    reference = OODReference.from_dict(record, path)
    model = load_model(str(domain["model"]))
    drrs = drr_cases(domain["data"], "test", model.views, model.spec, progress=False)
    drr_scores = [reference.score(case) for case in drrs]
    simulated_scores = []
    for case in read_radiograph_folder(domain["simulated"], (PA, LATERAL)):
        score = ood_score(model, {view: prepared(case.files[view], view, model) for view in (PA, LATERAL)})
        assert score is not None and set(score.per_view) == {PA, LATERAL}
        assert score.threshold == pytest.approx(record["threshold"]) and score.flagged == (
            score.score > score.threshold
        )
        assert json.loads(json.dumps(score.to_dict()))["method"] == record["method"]
        simulated_scores.append(score.score)
    assert min(simulated_scores) > max(drr_scores)  # the same test cases: as DRRs vs as simulated clinical CR/DX


def test_a_broken_reference_is_one_line(domain, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("model.json", "model.safetensors"):
        (folder / name).write_bytes((domain["model"] / name).read_bytes())
    (folder / "ood_reference.json").write_text('{"schema": "something else"}')
    model = load_model(str(folder))
    case = read_radiograph_folder(domain["simulated"], (PA, LATERAL))[0]
    with pytest.raises(InputError, match="not an x2ct OOD reference"):
        ood_score(model, {PA: prepared(case.files[PA], PA, model)})
    code, _, stderr = run_cli("calibrate-ood", "--model", folder, "--data", domain["data"], "--percentile", "100")
    assert code == 2 and stderr.count("\n") == 1 and "--percentile 100" in stderr
