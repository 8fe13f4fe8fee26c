"""docs/compare_generators.py: a generator's lesion contrast minus the template's, lesion by lesion on the same
test lesions, with a bootstrap CI over cases; only lesions both evaluations could score count."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).parents[1] / "docs"


@pytest.fixture
def compare(monkeypatch):
    monkeypatch.syspath_prepend(str(DOCS))  # the script imports its neighbour bundle_demo_generators
    spec = importlib.util.spec_from_file_location("compare_generators", DOCS / "compare_generators.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def _lesions(work: Path, key: str, rows):
    folder = work / "evals" / key
    folder.mkdir(parents=True)
    with open(folder / "lesions_per_lesion.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case_id", "kind", "index", "relative_contrast"])
        writer.writerows(rows)


def test_difference_to_template_pairs_the_same_lesions(compare, tmp_path):
    _lesions(tmp_path, "template", [("a", "cavity", 0, 0.0), ("a", "nodule", 1, 0.1), ("b", "cavity", 0, 0.2),
                                    ("c", "cavity", 0, "")])  # fmt: skip
    _lesions(tmp_path, "bp", [("a", "cavity", 0, 0.5), ("a", "nodule", 1, 0.3), ("b", "cavity", 0, 0.6),
                              ("c", "cavity", 0, 0.9), ("d", "cavity", 0, 0.9)])  # fmt: skip
    diff = compare.difference_to_template(tmp_path, "bp")
    assert diff["lesions"] == 3 and diff["cases"] == 2  # c: not usable in the template; d: not in it
    assert diff["mean"] == pytest.approx((0.5 + 0.2 + 0.4) / 3)
    low, high = diff["ci"]
    assert 0.2 <= low <= diff["mean"] <= high <= 0.4  # case means are 0.35 and 0.4


def test_the_learning_rows_are_compared_with_the_template(compare):
    keys = [row.key for row in compare.ROWS]
    assert keys[0] == "template" and {"x2ct_gan_s", "x2ct_gan_b", "bp_unet_s", "bp_unet_b"} <= set(keys)
    assert {row.key for row in compare.ROWS if row.biplanar} >= {"x2ct_gan_b", "bp_unet_b", "dual_unet_64_b"}
    assert compare.LESION.startswith("lesion_weight=")  # the bundled recipe's weight, not a copy of it
