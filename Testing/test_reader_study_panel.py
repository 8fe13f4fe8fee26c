"""The X2CTReaderStudy module: its logic on Slicer's real MRML (slicer-core) behind Testing/slicer_shim.py, and its
pure helpers (X2CTReaderStudyLib.reading) everywhere.

The studies are written in each test with x2ct.readerstudy.study's records and SimpleITK
(X2CTReaderStudyLib.selftest.makeStudy, the study X2CTReaderStudyTest reads inside Slicer). The widget
is GUI only and not exercised here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

import slicer_shim

needs_mrml = pytest.mark.skipif(not slicer_shim.available(), reason=slicer_shim.MISSING_REASON)

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "X2CTReaderStudy"
RECON_DIR = REPO / "X2CTRecon"
MODULE_NAMES = ("X2CTReaderStudy", "X2CTReaderStudyLib", "X2CTReaderStudyLib.reading", "X2CTReaderStudyLib.selftest",
                "X2CTReconLib")


class Clock:
    """A monotonic clock the test moves by hand (reading times are checked exactly, without waiting)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def lib(monkeypatch):
    """X2CTReaderStudyLib without slicer: its reading helpers and the study maker."""
    monkeypatch.setattr(sys, "path", [str(MODULE_DIR), str(RECON_DIR), *sys.path])
    for name in MODULE_NAMES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    from X2CTReaderStudyLib import reading, selftest

    yield types.SimpleNamespace(reading=reading, selftest=selftest)
    for name in MODULE_NAMES:
        sys.modules.pop(name, None)


@pytest.fixture()
def panel(monkeypatch, tmp_path):
    """(X2CTReaderStudy module, slicer) with a layout manager and slice views, like the Slicer window."""
    fake = slicer_shim.install(monkeypatch, str(tmp_path / "slicer-temp"), withViews=True)
    monkeypatch.setattr(sys, "path", [str(MODULE_DIR), str(RECON_DIR), *sys.path])
    for name in MODULE_NAMES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    import X2CTReaderStudy

    yield X2CTReaderStudy, fake
    for name in MODULE_NAMES:
        sys.modules.pop(name, None)


def _answersFor(questions, pick: int = 0):
    """A valid answer to every question: choice ``pick`` and the rating ``low + pick``."""
    return {q.key: (q.choices[pick % len(q.choices)] if q.choices else q.low + pick) for q in questions}


def _answerLines(folder: Path, reader: str):
    path = folder / "readers" / reader / "answers.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _volumeNodes(fake):
    scene = fake.mrmlScene
    return [scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]


VIEW_CLASSES = {"vtkMRMLSliceNode", "vtkMRMLSliceCompositeNode", "vtkMRMLSliceDisplayNode", "vtkMRMLModelNode",
                "vtkMRMLModelDisplayNode", "vtkMRMLLinearTransformNode"}
"""What a slice view brings (its slice, composite and display nodes, the slice model and its transform)."""


def _nodeClasses(fake):
    """The class names of the scene's nodes."""
    scene = fake.mrmlScene
    return {scene.GetNthNode(i).GetClassName() for i in range(scene.GetNumberOfNodes())}


# --- pure helpers (both venvs) --------------------------------------------------------------------------------


def test_reading_constants_are_the_studys(lib):
    from x2ct.readerstudy import study

    reading = lib.reading
    assert (reading.CALL, reading.CONFIDENCE, reading.ANATOMY, reading.CONSISTENCY) == (
        study.CALL, study.CONFIDENCE, study.ANATOMY, study.CONSISTENCY)
    assert (reading.REAL_VS_SYNTHETIC, reading.DIAGNOSIS, reading.XRAY, reading.XRAY_CT) == (
        study.REAL_VS_SYNTHETIC, study.DIAGNOSIS, study.XRAY, study.XRAY_CT)


def test_questions_follow_the_study_scales(lib):
    from x2ct.readerstudy import study

    reading = lib.reading
    definition = study.StudyDefinition(name="s", disease="tuberculosis", confidence_scale="0-100", likert_points=7)
    rvs = reading.questionsFor(definition, study.ReadingItem("a", study.REAL_VS_SYNTHETIC, "k", volume="v.nrrd"))
    assert [(q.key, q.choices, q.low, q.high) for q in rvs] == [
        ("call", ("real", "synthetic"), 0, 0), ("confidence", (), 0, 100), ("anatomy", (), 1, 7),
        ("consistency", (), 1, 7)]
    diagnosis = reading.questionsFor(definition, study.ReadingItem("b", study.DIAGNOSIS, "k", study.XRAY))
    assert [(q.key, q.choices, q.low, q.high) for q in diagnosis] == [
        ("call", ("present", "absent"), 0, 0), ("confidence", (), 0, 100)]
    assert "tuberculosis" in diagnosis[0].label


def test_answer_checks(lib):
    from x2ct.readerstudy import study

    reading = lib.reading
    questions = reading.questionsFor(study.StudyDefinition(name="s", disease="PE"),
                                     study.ReadingItem("a", study.REAL_VS_SYNTHETIC, "k", volume="v"))
    good = {"call": "synthetic", "confidence": 5, "anatomy": 1, "consistency": 3}
    assert reading.checkAnswers(questions, good) == good
    for bad in ({**good, "call": None}, {**good, "call": "maybe"}, {**good, "confidence": 6},
                {**good, "anatomy": 0}, {**good, "consistency": 2.5}, {**good, "anatomy": True},
                {k: v for k, v in good.items() if k != "consistency"}, {**good, "extra": 1}):
        with pytest.raises(ValueError):
            reading.checkAnswers(questions, bad)


def test_shortcuts_fill_the_next_empty_rating(lib):
    from x2ct.readerstudy import study

    reading = lib.reading
    item = study.ReadingItem("a", study.REAL_VS_SYNTHETIC, "k", volume="v")
    questions = reading.questionsFor(study.StudyDefinition(name="s", disease="PE"), item)
    assert reading.ratingForDigit(questions, {}, 4) == "confidence"
    assert reading.ratingForDigit(questions, {"confidence": 4}, 2) == "anatomy"
    assert reading.ratingForDigit(questions, {"confidence": 4, "anatomy": 2}, 5) == "consistency"
    assert reading.ratingForDigit(questions, {"confidence": 4, "anatomy": 2, "consistency": 5}, 1) is None
    assert reading.ratingForDigit(questions, {}, 6) is None  # outside every 1-5 scale
    assert reading.callForKey(questions, "s") == "synthetic" and reading.callForKey(questions, "P") is None
    percent = reading.questionsFor(study.StudyDefinition(name="s", disease="PE"),
                                   study.ReadingItem("b", study.DIAGNOSIS, "k", study.XRAY))
    assert reading.ratingForDigit(percent, {}, 3) is None  # digits never set a 0-100 score
    assert reading.callForKey(percent, "p") == "present" and reading.callForKey(percent, "a") == "absent"


def test_layouts(lib):
    import xml.etree.ElementTree as ET

    from x2ct.readerstudy import study

    reading = lib.reading
    pa, both = {"pa": "r1.nrrd"}, {"pa": "r1.nrrd", "lateral": "r2.nrrd"}
    cases = {
        reading.LAYOUT_PA: study.ReadingItem("a", study.DIAGNOSIS, "k", study.XRAY, radiographs=pa),
        reading.LAYOUT_PA_LATERAL: study.ReadingItem("a", study.DIAGNOSIS, "k", study.XRAY, radiographs=both),
        reading.LAYOUT_PA_CT: study.ReadingItem("a", study.DIAGNOSIS, "k", study.XRAY_CT, volume="v", radiographs=pa),
        reading.LAYOUT_PA_LATERAL_CT: study.ReadingItem("a", study.DIAGNOSIS, "k", study.XRAY_CT, volume="v",
                                                        radiographs=both),
        reading.LAYOUT_CT: study.ReadingItem("a", study.REAL_VS_SYNTHETIC, "k", volume="v"),
    }
    for layout, item in cases.items():
        assert reading.layoutFor(item) == layout
        views = reading.layoutViews(layout)
        roles = {role for _, role, _ in views}
        assert roles == set(item.radiographs) | ({"ct"} if item.volume else set())
        tags = [v.get("singletontag") for v in ET.fromstring(reading.layoutDescription(layout)).iter("view")]
        assert tags == [name for name, _, _ in views] and len(set(tags)) == len(tags)


def test_study_records_import_without_torch(lib):
    """What the panel imports (the module's helpers and x2ct.readerstudy.study) never pulls in torch."""
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
            "import X2CTReaderStudyLib.reading, X2CTReaderStudyLib.selftest\n"
            "from X2CTReaderStudyLib import studyModule; studyModule()\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    result = subprocess.run([sys.executable, "-c", code, str(MODULE_DIR), str(RECON_DIR)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr


# --- the logic on real MRML ------------------------------------------------------------------------------------


@needs_mrml
def test_open_answer_and_resume(panel, tmp_path):
    module, fake = panel
    from X2CTReaderStudyLib import selftest

    from x2ct.readerstudy import study

    folder = tmp_path / "study"
    selftest.makeStudy(folder)
    clock = Clock()
    logic = module.X2CTReaderStudyLogic(clock=clock)
    assert logic.openStudy(str(folder), "reader01") == 0
    order = study.load_or_create_order(folder, "reader01")
    assert order.item_ids == study.make_order(study.load_definition(folder), study.load_items(folder),
                                              "reader01").item_ids
    locked = []
    for index, seconds in enumerate((12.5, 3.25, 40.0)):
        item = logic.showCurrentItem()
        assert item.item_id == order.item_ids[index]
        clock.now += seconds
        answer = logic.lockAnswer(_answersFor(logic.currentQuestions(), index))
        assert answer.reading_time_s == seconds
        locked.append(answer)
    lines = _answerLines(folder, "reader01")
    assert [line["item_id"] for line in lines] == order.item_ids[:3]
    assert [line["reading_time_s"] for line in lines] == [12.5, 3.25, 40.0]
    assert [line["answers"] for line in lines] == [a.answers for a in locked]
    assert all(line["reader"] == "reader01" and line["locked_at"].endswith("+00:00") for line in lines)

    resumed = module.X2CTReaderStudyLogic()  # Slicer closed and opened again
    assert resumed.openStudy(str(folder), "reader01") == 3
    assert resumed.showCurrentItem().item_id == order.item_ids[3]
    assert resumed.answeredCount() == 3 and resumed.itemCount() == len(order.item_ids)


@needs_mrml
def test_module_test_runs_as_in_slicer(panel):
    """X2CTReaderStudyTest.runTest, as "Reload and Test" runs it in Slicer."""
    module, fake = panel
    module.X2CTReaderStudyTest().runTest()
    assert _volumeNodes(fake) == []


@needs_mrml
def test_answer_is_checked_before_writing(panel, tmp_path):
    module, fake = panel
    from X2CTReaderStudyLib import selftest

    folder = tmp_path / "study"
    selftest.makeStudy(folder)
    logic = module.X2CTReaderStudyLogic()
    logic.openStudy(str(folder), "r1")
    with pytest.raises(ValueError):
        logic.lockAnswer(_answersFor(logic.currentQuestions()))  # nothing shown yet
    logic.showCurrentItem()
    answers = _answersFor(logic.currentQuestions())
    with pytest.raises(ValueError):
        logic.lockAnswer({**answers, "call": None})
    assert not (folder / "readers" / "r1" / "answers.jsonl").exists()
    assert logic.position == 0


@needs_mrml
def test_bad_reader_id_or_folder_is_one_line_error(panel, tmp_path):
    module, fake = panel
    from X2CTReaderStudyLib import selftest

    from x2ct.errors import InputError

    folder = tmp_path / "study"
    selftest.makeStudy(folder)
    logic = module.X2CTReaderStudyLogic()
    for reader in ("", "../escape", "a b", ".hidden"):
        with pytest.raises(InputError):
            logic.openStudy(str(folder), reader)
    assert not (folder / "readers").exists() and not (tmp_path / "escape").exists()
    with pytest.raises(InputError, match="study.json"):
        logic.openStudy(str(tmp_path), "r1")
    (folder / "volumes" / selftest.CASE_VOLUMES["c1"][0]).unlink()
    logic.openStudy(str(folder), "r1")
    message = ""
    while logic.currentItem is not None and not message:
        try:
            logic.showCurrentItem()
            logic.lockAnswer(_answersFor(logic.currentQuestions()))
        except InputError as err:
            message = logic.errorMessage(err)
    assert "is missing from the study folder" in message and "\n" not in message


@needs_mrml
def test_layout_window_and_previous_case_removed(panel, tmp_path):
    module, fake = panel
    from X2CTReaderStudyLib import reading, selftest

    from x2ct.readerstudy import study

    folder = tmp_path / "study"
    selftest.makeStudy(folder, windowHU=(40.0, 400.0))
    logic = module.X2CTReaderStudyLogic()
    logic.openStudy(str(folder), "r2")
    layoutManager = fake.app.layoutManager()
    seen = set()
    baseline = _nodeClasses(fake)
    while logic.currentItem is not None:
        item = logic.showCurrentItem()
        volumes = _volumeNodes(fake)
        expected = {module.RADIOGRAPH_NAMES[v] for v in item.radiographs} | ({"Case CT"} if item.volume else set())
        assert sorted(v.GetName() for v in volumes) == sorted(expected)  # the previous item's nodes are gone
        layout = reading.layoutFor(item)
        seen.add(layout)
        assert layoutManager.layout == layout
        byName = {v.GetName(): v for v in volumes}
        for viewName, role, _ in reading.layoutViews(layout):
            sliceWidget = layoutManager.sliceWidget(viewName)
            composite = sliceWidget.sliceLogic().GetSliceCompositeNode()
            shown = byName["Case CT" if role == "ct" else module.RADIOGRAPH_NAMES[role]]
            assert composite.GetBackgroundVolumeID() == shown.GetID()
            assert composite.GetForegroundVolumeID() is None and composite.GetLabelVolumeID() is None
            sliceNode = sliceWidget.mrmlSliceNode()
            assert sliceNode.GetRulerType() == sliceNode.RulerTypeNone
            assert sliceNode.GetOrientationMarkerType() == sliceNode.OrientationMarkerTypeNone
        if item.volume:
            display = byName["Case CT"].GetScalarVolumeDisplayNode()
            assert (display.GetAutoWindowLevel(), display.GetWindow(), display.GetLevel()) == (0, 400.0, 40.0)
        logic.lockAnswer(_answersFor(logic.currentQuestions()))
    assert seen == {reading.LAYOUT_PA, reading.LAYOUT_PA_LATERAL, reading.LAYOUT_PA_CT, reading.LAYOUT_PA_LATERAL_CT,
                    reading.LAYOUT_CT}
    assert _volumeNodes(fake) == [] and _nodeClasses(fake) - baseline <= VIEW_CLASSES  # only the new views' nodes
    assert logic.showCurrentItem() is None and "All 6 items are answered" in logic.statusText()
    assert len(study.read_answers(folder, "r2")) == 6


@needs_mrml
def test_no_node_reveals_the_source(panel, tmp_path):
    """Every node's name, description, attributes and storage file names, for every item: no study path, no file
    name or volume id, no 'real' or 'synthetic'."""
    module, fake = panel
    from X2CTReaderStudyLib import selftest

    folder = tmp_path / "study"
    files = selftest.makeStudy(folder)
    secrets = selftest.blindingSecrets(folder, files)
    assert selftest.revealingTexts(fake.mrmlScene, secrets) == []  # Slicer's own nodes say nothing
    logic = module.X2CTReaderStudyLogic()
    logic.openStudy(str(folder), "r3")
    shown = 0
    while logic.currentItem is not None:
        logic.showCurrentItem()
        shown += len(_volumeNodes(fake))
        assert selftest.revealingTexts(fake.mrmlScene, secrets) == []
        logic.lockAnswer(_answersFor(logic.currentQuestions()))
    assert shown == 10  # 2 + 3 (case 1), 1 + 2 (case 2), 1 + 1 (real vs synthetic): the scan saw every volume
    # the scan itself finds a leak
    leak = fake.util.addVolumeFromArray(__import__("numpy").zeros((1, 2, 2)), name=f"x {files[0]}")
    assert selftest.revealingTexts(fake.mrmlScene, secrets) == [f"{leak.GetID()}: x {files[0]}"]


@needs_mrml
def test_no_going_back_unless_allowed(panel, tmp_path):
    module, fake = panel
    from X2CTReaderStudyLib import selftest

    from x2ct.readerstudy import study

    strict, lenient = tmp_path / "strict", tmp_path / "lenient"
    selftest.makeStudy(strict, allowBack=False)
    selftest.makeStudy(lenient, allowBack=True)
    logic = module.X2CTReaderStudyLogic()
    logic.openStudy(str(strict), "r4")
    logic.showCurrentItem()
    logic.lockAnswer(_answersFor(logic.currentQuestions()))
    logic.showCurrentItem()
    assert not logic.canGoBack()
    with pytest.raises(ValueError, match="does not allow going back"):
        logic.goBack()
    assert logic.position == 1

    clock = Clock()
    logic = module.X2CTReaderStudyLogic(clock=clock)
    logic.openStudy(str(lenient), "r4")
    order = study.load_or_create_order(lenient, "r4").item_ids
    for pick in (0, 0):
        logic.showCurrentItem()
        logic.lockAnswer(_answersFor(logic.currentQuestions(), pick))
    logic.showCurrentItem()
    assert logic.position == 2 and logic.canGoBack()
    assert logic.goBack().item_id == order[1]
    assert logic.goBack().item_id == order[0] and not logic.canGoBack()
    clock.now += 7.0
    changed = _answersFor(logic.currentQuestions(), 1)
    logic.lockAnswer(changed)  # a new answer for the first item
    assert logic.position == 2  # back to the first unanswered item
    answers = study.read_answers(lenient, "r4")
    assert [a.item_id for a in answers] == [order[0], order[1], order[0]]
    assert answers[0].answers != changed
    latest = study.latest_answers(answers)[order[0]]
    assert latest.answers == changed and latest.reading_time_s == 7.0


@needs_mrml
def test_washout_holds_the_second_session(panel, tmp_path):
    module, fake = panel
    from X2CTReaderStudyLib import selftest

    from x2ct.readerstudy import study

    folder = tmp_path / "study"
    selftest.makeStudy(folder, design=study.INDEPENDENT, washoutDays=28)
    logic = module.X2CTReaderStudyLogic()
    logic.openStudy(str(folder), "r5")
    items = {it.item_id: it for it in study.load_items(folder)}
    firstSession = sum(1 for i in logic.order.item_ids if items[i].session == 1)
    for _ in range(firstSession):
        logic.showCurrentItem()
        logic.lockAnswer(_answersFor(logic.currentQuestions()))
    assert logic.currentItem.session == 2
    assert logic.showCurrentItem() is None and _volumeNodes(fake) == []
    assert "Session 2 opens on" in logic.statusText()

    noWashout = tmp_path / "no-washout"
    selftest.makeStudy(noWashout, design=study.INDEPENDENT, washoutDays=0)
    logic = module.X2CTReaderStudyLogic()
    logic.openStudy(str(noWashout), "r5")
    for _ in range(firstSession):
        logic.showCurrentItem()
        logic.lockAnswer(_answersFor(logic.currentQuestions()))
    assert logic.showCurrentItem().session == 2


KILLED_READER = textwrap.dedent("""
    import sys
    import pytest
    sys.path[:0] = sys.argv[1:4]
    import slicer_shim
    monkeypatch = pytest.MonkeyPatch()
    slicer_shim.install(monkeypatch, sys.argv[5], withViews=True)
    import X2CTReaderStudy
    logic = X2CTReaderStudy.X2CTReaderStudyLogic()
    logic.openStudy(sys.argv[4], "killed")
    for _ in range(int(sys.argv[6])):
        item = logic.showCurrentItem()
        questions = logic.currentQuestions()
        logic.lockAnswer({q.key: (q.choices[-1] if q.choices else q.high) for q in questions})
        print("locked", item.item_id, flush=True)
    print("showing", logic.showCurrentItem().item_id, flush=True)
    assert "torch" not in sys.modules
    sys.stdin.readline()  # the reader is looking at the case when Slicer dies
""")


@needs_mrml
@pytest.mark.parametrize("before", [0, 1, 3])
def test_killed_reader_loses_no_locked_answer(tmp_path, before, lib):
    """SIGKILL a reader session midway: every answer it reported locked is in the answer file, and a new session
    resumes at the item that was on screen (the first unanswered one)."""
    from x2ct.readerstudy import study

    folder = tmp_path / "study"
    lib.selftest.makeStudy(folder)
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_READER, str(MODULE_DIR), str(RECON_DIR), str(Path(__file__).parent),
         str(folder), str(tmp_path / "temp"), str(before)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reported = []
    try:
        for line in process.stdout:
            word, itemId = line.split()
            if word == "showing":
                onScreen = itemId
                break
            reported.append(itemId)
        else:
            pytest.fail(f"the reader session ended early: {process.stderr.read()}")
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
        for stream in (process.stdin, process.stdout, process.stderr):
            stream.close()
    assert process.returncode == -signal.SIGKILL
    order = study.load_or_create_order(folder, "killed")
    assert reported == order.item_ids[:before]
    assert [a.item_id for a in study.read_answers(folder, "killed")] == reported
    resumed = study.next_unanswered(order, study.read_answers(folder, "killed"))
    assert resumed == before and order.item_ids[resumed] == onScreen
    if before == 0:
        assert not (folder / "readers" / "killed" / "answers.jsonl").exists()
    assert os.path.exists(folder / "readers" / "killed" / "order.json")
