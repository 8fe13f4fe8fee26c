"""Small conventions: intensity scaling, view names, atomic writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from x2ct import views
from x2ct.atomic import atomic_dir, atomic_path, write_text_atomic
from x2ct.intensity import hu_to_unit, unit_to_hu


def test_intensity_round_trip_and_clipping():
    hu = np.array([-2000.0, -1024.0, 0.0, 1476.0, 3000.0])
    unit = hu_to_unit(hu)
    assert unit.dtype == np.float32
    np.testing.assert_allclose(unit, [0.0, 0.0, 1024 / 2500, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(unit_to_hu(unit), [-1024, -1024, 0, 1476, 1476], atol=1e-3)
    # Official inference clamps the generator output to [0, 1] before converting to HU.
    np.testing.assert_allclose(unit_to_hu(np.array([-0.5, 1.5])), [-1024, 1476], atol=1e-3)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("pa", "PA"),
        ("AP", "AP"),
        ("LL", "LATERAL"),
        ("rl", "LATERAL"),
        ("lateral", "LATERAL"),
        ("RLD", None),
        ("", None),
    ],
)
def test_view_names(text, expected):
    assert views.normalize_view(text) == expected


def test_view_codes_and_patient_orientation():
    assert views.view_from_code("272479007") == "PA"
    assert views.view_from_code("399348003") == "AP"
    assert views.view_from_code("399173006") == "LATERAL"
    assert views.view_from_patient_orientation("L", "F") == "PA"
    assert views.view_from_patient_orientation("P", "F") == "LATERAL"
    assert views.view_from_patient_orientation("F", "L") is None


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path):
    target = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.name.endswith(".nii.gz")  # writers that sniff the suffix still work
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_whole_folder_only_on_success(tmp_path: Path):
    target = tmp_path / "series"
    with atomic_dir(target) as tmp:
        (tmp / "a.dcm").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "b.dcm").write_text("2")
            raise RuntimeError("crash")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]
    assert [p.name for p in target.iterdir()] == ["a.dcm"]
    write_text_atomic(tmp_path / "x.json", "{}")
    assert (tmp_path / "x.json").read_text() == "{}"
