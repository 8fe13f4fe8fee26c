"""``x2ct lesion-check`` (x2ct.evaluate.lesion_check): a painted solid lesion, its DRRs, and whether a generator's
synthetic CT shows it in place. The mechanics are checked with a template generator (which ignores its inputs,
so it can never show a lesion); the bundled biplanar model's result is checked in test_bundled_generators.py."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Tuple

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from x2ct.cli import main
from x2ct.errors import InputError
from x2ct.evaluate.lesion_check import LOBES, check_lesions, lesion_centre, paint_sphere
from x2ct.models.checkpoints import save_generator
from x2ct.models.xprospect import TemplateConfig, TemplateGenerator

pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(*args: object) -> Tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def test_painted_sphere_and_its_centre():
    labels = np.zeros((20, 20, 20), np.int16)
    labels[2:18, 3:12, 4:16] = 12
    centre = lesion_centre(labels, 12, 3.0, np.random.default_rng(0))
    assert labels[tuple(centre)] == 12
    assert 4 <= centre[0] <= 15 and 5 <= centre[1] <= 9 and 6 <= centre[2] <= 13  # 3 voxels from every edge
    painted = paint_sphere(np.full((20, 20, 20), -850.0, np.float32), (10, 10, 10), 2.0)
    assert painted[10, 10, 10] == 40.0 and painted[10, 10, 12] == 40.0 and painted[10, 10, 13] == -850.0
    assert int((painted == 40.0).sum()) == 33  # voxel centres within 2 voxels
    with pytest.raises(InputError, match="no voxel of lobe 13"):
        lesion_centre(labels, 13, 3.0, np.random.default_rng(0))


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A template generator whose volume is flat lung-like tissue."""
    net = TemplateGenerator(TemplateConfig(64, 2))
    net.set_prior(torch.full((64, 64, 64), (-850.0 + 1024.0) / 2500.0))
    folder = tmp_path_factory.mktemp("template") / "model"
    save_generator(net.eval(), folder)
    return folder


def test_a_generator_that_ignores_the_radiographs_shows_no_lesion(template):
    results = check_lesions(template, lobes=(12, 14), diameter_mm=25.0)
    assert [r.lobe for r in results] == [12, 14] and [r.lobe_name for r in results] == ["right upper", "right lower"]
    for r in results:
        assert r.rise_hu == 0.0 and not r.clear and not r.shows
        assert 700.0 < r.real_rise_hu < 950.0  # a soft-tissue sphere in aerated lung
        assert r.distance_mm >= 0.0 and len(r.found_voxel) == 3


def test_lesion_check_command(template, tmp_path, sample_ct_path, sample_labels_path):
    code, stdout, stderr = run_cli("lesion-check", "--model", template, "--lobe", "10", "--device", "cpu", "--json")
    assert code == 0, stderr
    document = json.loads(stdout)
    assert document["clear_rise_hu"] == 100.0 and [r["lobe"] for r in document["results"]] == [10]
    code, stdout, _ = run_cli("lesion-check", "--model", template, "--lobe", "13", "--device", "cpu")
    assert code == 0 and "lobe 13 (right middle): 25 mm lesion" in stdout and "0/1 lesions show" in stdout
    # your own CT and labels: a label map without the lobe is one line
    labels = sitk.ReadImage(str(sample_labels_path))
    array = sitk.GetArrayFromImage(labels)
    array[array == 13] = 0
    edited = sitk.GetImageFromArray(array)
    edited.CopyInformation(labels)
    sitk.WriteImage(edited, str(tmp_path / "labels.nii.gz"))
    code, _, stderr = run_cli("lesion-check", "--model", template, "--lobe", "13", "--ct", sample_ct_path,
                              "--labels", tmp_path / "labels.nii.gz", "--device", "cpu")  # fmt: skip
    assert code == 2 and "no voxel of lobe 13" in stderr and len(stderr.strip().splitlines()) == 1
    for args, message in ((["--lobe", "9"], "lobe(s) [9]"), (["--diameter-mm", "2"], "choose 4 to 120 mm")):
        code, _, stderr = run_cli("lesion-check", "--model", template, *args, "--device", "cpu")
        assert code == 2 and message in stderr, stderr
    assert set(LOBES) == {10, 11, 12, 13, 14}
