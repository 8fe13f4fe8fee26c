"""A whole reader study: ``x2ct reader-study build`` -> simulated readers answer -> ``x2ct reader-study analyze``,
and the built study read in the X2CTReaderStudy panel's logic on real MRML.

The study is built from a case list made here (:data:`N_CASES` cases from the sample PA radiograph, two of them with
a real CT) with the tiny untrained generators of the ``resources`` fixture. The simulated readers answer in their
stored order through the public records (``load_or_create_order``, ``append_answer`` with ``Answer`` records, the
answers the panel writes: a call and an integer 0-100 score), the truth taken from ``coordinator/key.json``.

Reader model (binormal, no reader effects): the latent score of reader j, phase t, case k is
``truth_k mu_t + c_k + e_tjk`` with a case effect ``c_k ~ N(0, CASE_VAR)`` shared by every read of the case and
``e_tjk ~ N(0, 1 - CASE_VAR)``. Every reader then has AUC ``Phi(mu_t / sqrt 2)`` in phase t, and the call "present"
when the latent score exceeds ``mu_t / 2`` is right with probability ``Phi(mu_t / 2)`` for diseased and non-diseased
cases alike (the known accuracy). The score written is ``round(100 Phi((latent - mu_t / 2) / 1.5))``, monotone in
the latent score (up to the rounding's rare ties).

The checks are the analysis' 95 % CIs on one fixed seed (:data:`SEED`). The random draws are made up front by
(reader, phase, case number), so the result does not depend on the opaque ids and the reader orders, which
differ from build to build (``reader-study build`` draws its ids unseeded on purpose). Over 300 seeds of this model
(5 readers, 60 cases, x2ct.evaluate.mrmc directly) each single-modality CI held its AUC in 92-95 % of studies, the
RRRC CI the gain in 94 %, and the pooled Wilson CI the accuracy in about 90 % (it ignores the case effect that
readers share; analyze's POOLED note), so a failure on another seed is not by itself a bug.
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import shutil
from importlib.util import find_spec
from pathlib import Path
from statistics import NormalDist
from typing import Dict, List

import numpy as np
import pytest
import SimpleITK as sitk

from test_predict import PA_PNG
from test_reader_study_build import _small_ct
from test_reader_study_panel import _answersFor, _volumeNodes, needs_mrml, panel  # noqa: F401 (panel: fixture)
from x2ct.cli import main
from x2ct.readerstudy import study as st

pytestmark = pytest.mark.usefixtures("one_thread")

needs_eval = pytest.mark.skipif(
    find_spec("statsmodels") is None,
    reason="statsmodels (x2ct's eval extra, needed by reader-study analyze) is missing",
)

N_CASES = 60
"""Cases in the study: every even-numbered one diseased (30 + 30)."""
WITH_REAL_CT = (0, 1)
"""Case numbers whose case list row has a real CT (they get the real-vs-synthetic items)."""
READERS = ("R1", "R2", "R3", "R4", "R5")
AUC = {st.XRAY: 0.65, st.XRAY_CT: 0.85}
"""Known AUC of every reader in each phase; the known gain is their difference, 0.20."""
CASE_VAR = 0.1
SEED = 15
SECONDS = {st.XRAY: 20.0, st.XRAY_CT: 35.0, st.REAL_VS_SYNTHETIC: 15.0}
"""Reading time of every answer of a task / phase (reader j adds j seconds)."""
PHI = NormalDist()


def mu_of(phase: str) -> float:
    """Binormal separation of a phase with AUC ``AUC[phase]`` (unit variance per class)."""
    return PHI.inv_cdf(AUC[phase]) * math.sqrt(2.0)


def known_accuracy(phase: str) -> float:
    """Probability that a call (threshold mu / 2) is right, for diseased and non-diseased cases alike."""
    return PHI.cdf(mu_of(phase) / 2)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@pytest.fixture(scope="module")
def built(resources: Path, tmp_path_factory) -> Path:
    """The study folder made by ``x2ct reader-study build`` (orders written for :data:`READERS`)."""
    root = tmp_path_factory.mktemp("e2e")
    sitk.WriteImage(_small_ct(), str(root / "ct.nrrd"))
    cases = root / "cases.csv"
    with open(cases, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case_id", "pa", "ct", "truth"])
        for k in range(N_CASES):
            writer.writerow([f"c{k:03d}", str(PA_PNG), "ct.nrrd" if k in WITH_REAL_CT else "", int(k % 2 == 0)])
    out = root / "study"
    args = ["reader-study", "build", str(cases), str(out), "--disease", "pulmonary embolism", "--seed", "3",
            "--readers", ",".join(READERS), "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    return out


def simulate_readers(folder: Path, rng: np.random.Generator) -> Dict[str, object]:
    """Every reader answers every item of their stored order (binormal model, module doc); returns the truth by case
    number and the real-vs-synthetic calls that were right."""
    items = {it.item_id: it for it in st.load_items(folder)}
    key = {c.case_id: c for c in st.load_key(folder).cases}
    number = {case_id: int(c.source_label[1:]) for case_id, c in key.items()}
    truth = np.zeros(N_CASES, dtype=int)
    for case_id, c in key.items():
        truth[number[case_id]] = c.truth
    case_effect = rng.normal(0.0, math.sqrt(CASE_VAR), N_CASES)
    # drawn up front by (reader, phase, case number): the opaque ids, and so the stored orders, differ per build
    noise = rng.normal(0.0, math.sqrt(1 - CASE_VAR), (len(READERS), len(st.PHASES), N_CASES))
    right_rvs = 0
    for j, reader in enumerate(READERS):
        order = st.load_or_create_order(folder, reader)
        for item_id in order.item_ids:
            item = items[item_id]
            case = key[item.case_id]
            if item.task == st.DIAGNOSIS:
                mu = mu_of(item.phase)
                k = number[case.case_id]
                latent = case.truth * mu + case_effect[k] + noise[j, st.PHASES.index(item.phase), k]
                z = latent - mu / 2
                answers = {st.CALL: "present" if z > 0 else "absent", st.CONFIDENCE: int(round(100 * PHI.cdf(z / 1.5)))}
                seconds = SECONDS[item.phase] + j
            else:
                is_real = item.volume == case.real_volume
                right = not (j == 0 and is_real)  # reader R1 calls every real CT synthetic; the others are right
                right_rvs += right
                called = "real" if is_real == right else "synthetic"
                answers = {st.CALL: called, st.CONFIDENCE: 4, st.ANATOMY: 4 if is_real else 2, st.CONSISTENCY: 3}
                seconds = SECONDS[st.REAL_VS_SYNTHETIC] + j
            st.append_answer(folder, st.Answer(reader, item_id, answers, seconds, _now()))
    return {"truth": truth, "right_rvs": right_rvs}


@needs_eval
def test_build_answers_analyze_recovers_the_known_aucs_gain_and_accuracy(built: Path, tmp_path: Path, capsys):
    folder = tmp_path / "study"
    shutil.copytree(built, folder)
    items = items_by_id(st.load_items(folder))
    assert len(items) == 2 * N_CASES + 2 * len(WITH_REAL_CT)
    sim = simulate_readers(folder, np.random.default_rng(SEED))
    assert list(sim["truth"]) == [int(k % 2 == 0) for k in range(N_CASES)]  # the key kept the case list's truth
    for reader in READERS:  # sequential design: each case's xray item directly before its xray+ct item
        order = st.load_or_create_order(folder, reader).item_ids
        phases = [(items[i].task, items[i].phase) for i in order]
        assert phases[: 2 * N_CASES] == [(st.DIAGNOSIS, st.XRAY), (st.DIAGNOSIS, st.XRAY_CT)] * N_CASES
        assert st.next_unanswered(st.ReaderOrder(reader, 0, order), st.read_answers(folder, reader)) is None

    report = tmp_path / "report"
    assert main(["reader-study", "analyze", str(folder), "-o", str(report)]) == 0
    assert "RRRC" in capsys.readouterr().out
    result = json.loads((report / "analysis.json").read_text(encoding="utf-8"))

    mrmc = result["mrmc"]
    assert mrmc["modalities"] == [st.XRAY, st.XRAY_CT] and mrmc["readers"] == list(READERS)
    assert (mrmc["n_cases"], mrmc["n_positive"], mrmc["n_negative"]) == (N_CASES, N_CASES // 2, N_CASES // 2)
    for entry in mrmc["modality_aucs"]:
        assert entry["ci_low"] < AUC[entry["modality"]] < entry["ci_high"], entry
    rrrc = mrmc["rrrc"]
    gain = AUC[st.XRAY_CT] - AUC[st.XRAY]
    assert rrrc["ci_low"] < gain < rrrc["ci_high"], rrrc
    assert rrrc["ci_low"] > 0 and rrrc["p_value"] < 0.05  # a gain of 0.20 is found
    calls = {(r["reader"], r["modality"]): r for r in result["calls"]}
    for phase in st.PHASES:
        pooled = calls[("pooled", phase)]["accuracy"]
        assert pooled["n"] == len(READERS) * N_CASES
        assert pooled["ci_low"] < known_accuracy(phase) < pooled["ci_high"], (phase, pooled)
    mcnemar = {r["reader"]: r for r in result["mcnemar"]}["pooled"]
    assert mcnemar["n_pairs"] == len(READERS) * N_CASES and mcnemar["c"] > mcnemar["b"]

    rvs = {r["reader"]: r for r in result["real_vs_synthetic"]}
    n_rvs = 2 * len(WITH_REAL_CT)
    assert rvs["pooled"]["accuracy"]["successes"] == sim["right_rvs"] == len(READERS) * n_rvs - len(WITH_REAL_CT)
    assert rvs["pooled"]["accuracy"]["n"] == len(READERS) * n_rvs
    assert rvs["R1"]["accuracy"]["successes"] == n_rvs - len(WITH_REAL_CT)
    likert = {(r["reader"], r["scale"], r["volume"]): r["median"] for r in result["likert"]}
    assert (likert[("pooled", "anatomy", "real")], likert[("pooled", "anatomy", "synthetic")]) == (4, 2)
    times = {(r["reader"], r["task"]): r for r in result["reading_times"]}
    assert times[("R3", "diagnosis xray+ct")]["median_s"] == SECONDS[st.XRAY_CT] + 2
    assert times[("R5", "real_vs_synthetic")]["n"] == n_rvs

    with open(report / "scores.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(READERS) * 2 * N_CASES
    by_case = {c.case_id: c.truth for c in st.load_key(folder).cases}
    assert all(int(r["truth"]) == by_case[r["case"]] for r in rows)


def items_by_id(items: List[st.ReadingItem]) -> Dict[str, st.ReadingItem]:
    return {it.item_id: it for it in items}


@needs_mrml
def test_the_panel_reads_the_built_study(built: Path, panel, tmp_path: Path):  # noqa: F811 (the panel fixture)
    """The build's layout is the panel's: a new reader answers two items (appended to the answer file), and every
    item of the study shows, each file loaded into the scene with the voxels the study holds."""
    module, fake = panel
    import slicer

    folder = tmp_path / "study"
    shutil.copytree(built, folder, ignore=shutil.ignore_patterns("coordinator"))  # what readers get
    logic = module.X2CTReaderStudyLogic()
    assert logic.openStudy(str(folder), "P1") == 0
    order = st.load_or_create_order(folder, "P1")
    assert logic.itemCount() == len(order.item_ids) == 2 * N_CASES + 2 * len(WITH_REAL_CT)
    locked = []
    for index in range(2):
        item = logic.showCurrentItem()
        assert item.item_id == order.item_ids[index] and item.task == st.DIAGNOSIS
        locked.append(logic.lockAnswer(_answersFor(logic.currentQuestions(), index)))
    lines = st.read_answers(folder, "P1")
    assert [(a.item_id, a.answers) for a in lines] == [(a.item_id, a.answers) for a in locked]
    assert st.next_unanswered(order, lines) == 2 and logic.answeredCount() == 2

    items = items_by_id(st.load_items(folder))
    names = {module.RADIOGRAPH_NAMES[view]: view for view in module.RADIOGRAPH_NAMES}
    for position, item_id in enumerate(order.item_ids):
        logic.position = position
        item = logic.showCurrentItem()
        assert item == items[item_id]
        shown = {node.GetName(): node for node in _volumeNodes(fake)}
        files = {name: folder / st.RADIOGRAPHS_DIR / item.radiographs[view] for name, view in names.items()
                 if view in item.radiographs}  # fmt: skip
        if item.volume:
            files[module.CASE_CT_NAME] = folder / st.VOLUMES_DIR / item.volume
        assert set(shown) == set(files)
        for name, path in files.items():
            expected = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
            np.testing.assert_array_equal(slicer.util.arrayFromVolume(shown[name]).reshape(expected.shape), expected)
    logic.clearCase()
    assert _volumeNodes(fake) == []
    assert len(st.read_answers(folder, "P1")) == 2
